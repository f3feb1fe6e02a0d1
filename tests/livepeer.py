"""A real WebRTC client for the tests: it posts an offer, receives RTP and records what a
viewer would see and hear (frame times, RTP timestamps, audio loudness, the mouth region)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiohttp
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamError


@dataclass
class VideoSample:
    arrival: float
    pts: int
    mouth: np.ndarray  # crop of the mouth region, uint8 BGR
    size: tuple[int, int]  # width, height


@dataclass
class AudioSample:
    arrival: float
    pts: int
    rms: float  # 0..1 loudness of this 20 ms
    samples: int  # samples per channel


@dataclass
class LivePeer:
    base_url: str
    mouth_box: tuple[int, int, int, int]  # x1, y1, x2, y2 in the avatar frame
    video: list[VideoSample] = field(default_factory=list)
    audio: list[AudioSample] = field(default_factory=list)
    # None: aiortc's stock receiver, which holds 4 audio packets (80 ms) before playing but no
    # video. 0: audio is taken on arrival like video, so offsets reflect what the server sent.
    audio_prefetch: int | None = None
    # False: count decoded frames without converting them (a load client that only needs rates).
    inspect_video: bool = True
    token: str | None = None  # the server's --api_token, when it has one
    headers: dict[str, str] = field(default_factory=dict)  # more headers for /offer (X-Forwarded-For)
    sessionid: int | None = None
    # True: watch session `sessionid` as a WHEP player (POST /whep, DELETE its Location).
    whep: bool = False
    location: str = ""
    last_image: np.ndarray | None = None
    # A microphone sent on the audio transceiver (sendrecv, as the page's), and more /offer fields.
    mic: object | None = None
    offer_fields: dict = field(default_factory=dict)
    on_audio: object | None = None  # called with each received audio frame (a loopback mic)
    _pc: RTCPeerConnection | None = None
    _tasks: list[asyncio.Task] = field(default_factory=list)

    async def connect(self, http: aiohttp.ClientSession) -> dict:
        pc = self._pc = RTCPeerConnection()
        pc.addTransceiver("video", direction="recvonly")
        audio = pc.addTransceiver(self.mic or "audio", direction="sendrecv" if self.mic else "recvonly")
        if self.audio_prefetch is not None:
            audio.receiver._RTCRtpReceiver__jitter_buffer = JitterBuffer(capacity=16, prefetch=self.audio_prefetch)

        @pc.on("track")
        def on_track(track) -> None:
            self._tasks.append(asyncio.ensure_future(self._consume(track)))

        await pc.setLocalDescription(await pc.createOffer())
        headers = {**self.headers, **({"Authorization": f"Bearer {self.token}"} if self.token else {})}
        if self.whep:
            return await self._whep_offer(http, headers)
        async with http.post(
            f"{self.base_url}/offer",
            json={"sdp": pc.localDescription.sdp, "type": pc.localDescription.type, **self.offer_fields},
            headers=headers,
        ) as resp:
            answer = await resp.json()
            assert resp.status == 200, answer
        self.sessionid = answer["sessionid"]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        return answer

    async def _whep_offer(self, http: aiohttp.ClientSession, headers: dict[str, str]) -> dict:
        assert self._pc is not None
        async with http.post(f"{self.base_url}/whep?sessionid={self.sessionid}", data=self._pc.localDescription.sdp,
                             headers={**headers, "Content-Type": "application/sdp"}) as resp:
            answer = await resp.text()
            assert resp.status == 201, answer
            assert resp.content_type == "application/sdp"
            self.location = resp.headers["Location"]
        await self._pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        return {"sdp": answer, "location": self.location}

    async def leave(self, http: aiohttp.ClientSession) -> int:
        """A WHEP player's goodbye: DELETE its Location; the HTTP status."""
        async with http.delete(self.base_url + self.location) as resp:
            return resp.status

    def ended(self) -> bool:
        """Every track this peer received has ended (the server closed it)."""
        return bool(self._tasks) and all(task.done() for task in self._tasks)

    async def _consume(self, track) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            if track.kind == "video" and not self.inspect_video:
                size = (frame.width, frame.height)
                self.video.append(VideoSample(now, frame.pts, np.zeros((0, 0, 3), np.uint8), size))
            elif track.kind == "video":
                image = frame.to_ndarray(format="bgr24")
                self.last_image = image
                x1, y1, x2, y2 = self.mouth_box
                self.video.append(VideoSample(now, frame.pts, image[y1:y2, x1:x2].copy(), (frame.width, frame.height)))
            else:
                if self.on_audio is not None:
                    self.on_audio(frame)
                pcm = frame.to_ndarray().astype(np.float32) / 32768.0
                self.audio.append(AudioSample(now, frame.pts, float(np.sqrt(np.mean(pcm**2))), frame.samples))

    async def wait_for_media(self, timeout: float = 20.0) -> None:
        """Wait until both video and audio flow."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.video) > 5 and len(self.audio) > 10:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"no media after {timeout}s: {len(self.video)} video, {len(self.audio)} audio frames")

    async def close(self) -> None:
        if self._pc is not None:
            await self._pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def audio_since(self, t: float) -> list[AudioSample]:
        return [a for a in self.audio if a.arrival >= t]

    def video_since(self, t: float) -> list[VideoSample]:
        return [v for v in self.video if v.arrival >= t]
