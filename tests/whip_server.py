"""A WHIP endpoint (RFC 9725) for the tests, on a real aiortc receiver: what SRS or a
Cloudflare Stream input is to a push, without one being packaged here.

    POST   /whip/{stream}          Content-Type: application/sdp (else 415); the bearer token
                                   when one is required (else 401); 201 + the answer SDP,
                                   Location: /whip/resource/<id> (relative) and an ETag
    DELETE /whip/resource/{id}     ends that resource: 200; 404 when there is none
    PATCH  /whip/resource/{id}     405: no trickle ICE (the offer carries every candidate)

Each resource's peer records what a viewer of the stream would get: the pictures (pts, a crop
of the mouth, the mean) and the loudness of each audio frame, and which video codec its
answer chose. `refuse` makes every POST answer a status (503: down for maintenance), and
`drop()` closes every peer without a DELETE (the server restarting under its pushers).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field

import numpy as np
from aiohttp import web
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import SessionDescription


@dataclass
class Picture:
    arrival: float
    pts: int
    mean: float  # of the whole picture
    mouth: np.ndarray  # crop of `mouth_box`, uint8 BGR
    size: tuple[int, int]  # width, height


@dataclass
class Loudness:
    arrival: float
    rms: float  # 0..1 over this frame


@dataclass
class Resource:
    """One push: a peer connection of the endpoint and what arrived on it."""

    id: str
    stream: str
    pc: RTCPeerConnection
    codec: str  # the video codec of the answer, e.g. "H264"
    video: list[Picture] = field(default_factory=list)
    audio: list[Loudness] = field(default_factory=list)
    deleted: bool = False  # its client sent the DELETE
    closed: bool = False  # its peer is closed (DELETE, drop(), or the client went away)
    tasks: list[asyncio.Task] = field(default_factory=list)

    def video_since(self, t: float) -> list[Picture]:
        return [p for p in self.video if p.arrival >= t]

    def audio_since(self, t: float) -> list[Loudness]:
        return [a for a in self.audio if a.arrival >= t]


class WhipEndpoint:
    """Served from the caller's event loop on 127.0.0.1 (`port` 0: any free one)."""

    def __init__(self, *, token: str | None = None, video_codecs: tuple[str, ...] = ("H264", "VP8"),
                 mouth_box: tuple[int, int, int, int] = (0, 0, 1, 1), port: int = 0) -> None:
        self.token = token
        self.video_codecs = video_codecs  # what the endpoint accepts, in its order of preference
        self.mouth_box = mouth_box
        self.port = port
        self.refuse: int | None = None  # answer every POST with this status instead
        self.resources: dict[str, Resource] = {}  # every resource made, closed ones included
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) of each request
        self._runner: web.AppRunner | None = None

    def url(self, stream: str = "live") -> str:
        return f"http://127.0.0.1:{self.port}/whip/{stream}"

    async def start(self) -> WhipEndpoint:
        app = web.Application(middlewares=[self._record])
        app.router.add_post("/whip/{stream}", self._post)
        app.router.add_delete("/whip/resource/{id}", self._delete)
        app.router.add_patch("/whip/resource/{id}", self._patch)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        await self.drop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> WhipEndpoint:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    # --- what the tests look at --------------------------------------------------------------
    def live(self) -> list[Resource]:
        return [r for r in self.resources.values() if not r.closed]

    def latest(self) -> Resource | None:
        return list(self.resources.values())[-1] if self.resources else None

    def statuses(self, method: str) -> list[int]:
        return [status for m, _, status in self.requests if m == method]

    async def drop(self) -> None:
        """Close every peer, as a restarting server does: no DELETE, the clients see it end."""
        for resource in self.live():
            await self._close(resource)

    # --- RFC 9725 ----------------------------------------------------------------------------
    @web.middleware
    async def _record(self, request: web.Request, handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            self.requests.append((request.method, request.path, exc.status))
            raise
        self.requests.append((request.method, request.path, response.status))
        return response

    def _authorized(self, request: web.Request) -> bool:
        return self.token is None or request.headers.get("Authorization") == f"Bearer {self.token}"

    async def _post(self, request: web.Request) -> web.Response:
        if self.refuse is not None:
            return web.Response(status=self.refuse, text="the endpoint is refusing pushes for now")
        if not self._authorized(request):
            return web.Response(status=401, text="a valid bearer token is required",
                                headers={"WWW-Authenticate": "Bearer"})
        if request.content_type != "application/sdp":
            return web.Response(status=415, text="the offer must be application/sdp")
        offer = await request.text()
        pc = RTCPeerConnection()
        resource = Resource(secrets.token_urlsafe(12), request.match_info["stream"], pc, codec="")
        # A transceiver made before the offer is applied carries the endpoint's codecs.
        video = pc.addTransceiver("video", direction="recvonly")
        codecs = RTCRtpReceiver.getCapabilities("video").codecs
        video.setCodecPreferences([c for name in self.video_codecs for c in codecs
                                   if c.mimeType.lower() == f"video/{name.lower()}"])

        @pc.on("track")
        def on_track(track) -> None:
            resource.tasks.append(asyncio.ensure_future(self._consume(resource, track)))

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                asyncio.ensure_future(self._close(resource))

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            await pc.close()
            return web.Response(status=400, text=f"unusable offer: {exc}")
        answer = pc.localDescription.sdp
        resource.codec = next((m.rtp.codecs[0].mimeType.split("/")[1] for m in SessionDescription.parse(answer).media
                               if m.kind == "video" and m.rtp.codecs), "")
        self.resources[resource.id] = resource
        return web.Response(status=201, text=answer, content_type="application/sdp",
                            headers={"Location": f"/whip/resource/{resource.id}", "ETag": f'"{resource.id}"'})

    def _resource(self, request: web.Request) -> Resource | None:
        resource = self.resources.get(request.match_info["id"])
        return None if resource is None or resource.deleted else resource

    async def _delete(self, request: web.Request) -> web.Response:
        resource = self._resource(request)
        if resource is None:
            return web.Response(status=404, text="no such resource")
        if not self._authorized(request):
            return web.Response(status=401, text="a valid bearer token is required")
        resource.deleted = True
        await self._close(resource)
        return web.Response(status=200)

    async def _patch(self, request: web.Request) -> web.Response:
        if self._resource(request) is None:
            return web.Response(status=404, text="no such resource")
        return web.Response(status=405, text="no trickle ICE or ICE restart", headers={"Allow": "DELETE"})

    # --- the receiver ------------------------------------------------------------------------
    async def _close(self, resource: Resource) -> None:
        if resource.closed:
            return
        resource.closed = True
        await resource.pc.close()
        for task in resource.tasks:
            task.cancel()
        await asyncio.gather(*resource.tasks, return_exceptions=True)

    async def _consume(self, resource: Resource, track) -> None:
        x1, y1, x2, y2 = self.mouth_box
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            if track.kind == "video":
                image = frame.to_ndarray(format="bgr24")
                resource.video.append(Picture(now, frame.pts, float(image.mean()), image[y1:y2, x1:x2].copy(),
                                              (frame.width, frame.height)))
            else:
                pcm = frame.to_ndarray().astype(np.float32) / 32768.0
                resource.audio.append(Loudness(now, float(np.sqrt(np.mean(pcm**2)))))
