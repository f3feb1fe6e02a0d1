"""Live push over WebRTC to a WHIP endpoint (RFC 9725), upstream's `--transport rtcpush`.

The push is the offerer: it makes a peer with a sendonly audio and video track on the
session's clock, POSTs the offer (every ICE candidate in it: aiortc gathers before
setLocalDescription returns, and WHIP servers need not support trickle), and takes the
`201 Created` answer and the resource's `Location`, which it DELETEs when it stops. A push
that cannot connect, or whose connection fails or closes, tells `reconnecting` on the
session's events and tries again with back-off, as ThreadedOutput does; the session plays on.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.sdp import SessionDescription

import webrtc
from outputs.base import Backoff, Output, OutputError, safe_url
from safetext import shown

log = logging.getLogger(__name__)

HTTP_TIMEOUT = aiohttp.ClientTimeout(total=10, connect=5)
CONNECT_TIMEOUT_S = 15.0  # from the answer to a connected peer (ICE checks and DTLS)
ANSWER_LIMIT = 64 * 1024  # an answer SDP is a few KB
ENDED = ("failed", "closed")
_TOKEN = re.compile(r"[\x21-\x7e]+")  # a bearer token: printable ASCII, no spaces


class WhipError(Exception):
    """What went wrong talking to the endpoint, said for the log and the session's events."""


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, WhipError):
        return str(exc)
    if isinstance(exc, asyncio.TimeoutError):  # aiohttp's timeouts say nothing of themselves
        return f"no answer within {HTTP_TIMEOUT.total:g} s"
    return f"{type(exc).__name__}: {exc}"[:300]


def prefer_h264(pc: RTCPeerConnection) -> None:
    """Offer H.264 before VP8 on the video transceiver: SRS and most media servers forward
    H.264 only, and an answerer picks the first codec of the offer it supports."""
    codecs = RTCRtpSender.getCapabilities("video").codecs
    order = ("video/h264", "video/vp8", "video/rtx")
    ranked = sorted((c for c in codecs if c.mimeType.lower() in order), key=lambda c: order.index(c.mimeType.lower()))
    for transceiver in pc.getTransceivers():
        if transceiver.kind == "video":
            transceiver.setCodecPreferences(ranked)


def answer_codec(sdp: str) -> str:
    """The video codec an answer chose (its video section's first), e.g. "H264"."""
    for media in SessionDescription.parse(sdp).media:
        if media.kind == "video" and media.rtp.codecs:
            return media.rtp.codecs[0].mimeType.split("/", 1)[-1]
    return ""


class WhipPush(Output):
    kind = "rtcpush"
    needs_url = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.token: str | None = self.options.get("token") or self.opt.push_token
        self.failures = 0
        self.codec = ""  # the video codec of the current connection
        self._task: asyncio.Task | None = None
        self._http: aiohttp.ClientSession | None = None
        self._pc: RTCPeerConnection | None = None
        self._tracks: tuple[webrtc.ClockTrack, ...] = ()
        self._location: str | None = None  # the endpoint's resource for the current connection
        self._up = False  # the current connection got connected
        self._stopped = False

    def describe(self) -> str:
        return safe_url(str(self.url))

    async def start(self) -> None:
        url = str(self.url or "")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise OutputError("a WHIP push needs an http:// or https:// endpoint URL, like https://host/whip/stream")
        if self.token is not None and not _TOKEN.fullmatch(self.token):
            raise OutputError("the WHIP token must be printable ASCII without spaces")
        if self.token and (parts.username or parts.password):
            # aiohttp refuses both, and which one the endpoint wants is not ours to guess.
            raise OutputError("give the WHIP endpoint either a token or user:password in the URL, not both")
        self._http = aiohttp.ClientSession(timeout=HTTP_TIMEOUT)
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"whip-{self.sessionid}")
        log.info("session %s output rtcpush pushes to %s", self.sessionid, self.describe())

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._teardown()
        if self._http is not None:
            await self._http.close()
        self.state_name = "closed"
        if task is not None:
            log.info("session %s output rtcpush stopped", self.sessionid)

    def state(self) -> dict[str, Any]:
        return {**super().state(), "failures": self.failures, "codec": self.codec}

    # --- the push's task ---------------------------------------------------------------------
    async def _run(self) -> None:
        backoff = Backoff()
        while True:
            self._up = False
            try:
                reason = await self._push_once()
            except Exception as exc:  # whatever went wrong, the push tries again
                reason = describe_error(exc)
            self.failures += 1
            await self._teardown()
            if self._up:
                backoff.reset()
            delay = backoff.next()
            self.tell("reconnecting", f"{'dropped' if self._up else 'could not connect'} ({reason}); "
                                      f"next try in {delay:g} s", logging.WARNING)
            await asyncio.sleep(delay)

    async def _push_once(self) -> str:
        """Connect and push until the connection ends: why it ended. Raises when it cannot connect."""
        pc = self._pc = webrtc.new_peer(self.opt.ice)
        states: asyncio.Queue[str] = asyncio.Queue()
        pc.on("connectionstatechange", lambda: states.put_nowait(pc.connectionState))
        self._tracks = webrtc.session_tracks(self.player, "whip")
        for track in self._tracks:
            pc.addTransceiver(track, direction="sendonly")
        prefer_h264(pc)
        await pc.setLocalDescription(await pc.createOffer())
        answer = await self._post(pc.localDescription.sdp)
        try:
            self.codec = answer_codec(answer)
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        except Exception as exc:
            raise WhipError(f"the endpoint's answer is not usable SDP ({shown(str(exc), 120)})") from None
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                while (state := await states.get()) != "connected":
                    if state in ENDED:
                        raise WhipError(f"the media connection {state} before it was up (ICE or DTLS)")
        except TimeoutError:
            raise WhipError(f"no media connection within {CONNECT_TIMEOUT_S:g} s (ICE or DTLS)") from None
        self._up = True
        self.tell("running", f"pushes {self.codec or 'video'} + Opus to {self.describe()}")
        while (state := await states.get()) not in ENDED:
            pass
        return f"the media connection {state}"

    def _headers(self, **more: str) -> dict[str, str]:
        return {**more, **({"Authorization": f"Bearer {self.token}"} if self.token else {})}

    async def _post(self, offer: str) -> str:
        """POST the offer; the answer SDP, with the resource's URL kept in self._location."""
        assert self._http is not None
        async with self._http.post(str(self.url), data=offer.encode(),
                                   headers=self._headers(**{"Content-Type": "application/sdp"})) as resp:
            body = await resp.content.read(ANSWER_LIMIT)
            text = body.decode("utf-8", "replace")
            if resp.status != 201:
                raise WhipError(f"the WHIP endpoint answered {resp.status} {resp.reason or ''}".rstrip()
                                + (f": {shown(text.strip(), 120)}" if text.strip() else ""))
            location = resp.headers.get("Location")
            if not location:
                raise WhipError("the WHIP endpoint answered 201 without a Location header (RFC 9725 needs one)")
            # Relative to the URL that answered (after any redirect), as RFC 9725 says.
            self._location = urljoin(str(resp.url), location)
            if resp.content_type != "application/sdp":
                raise WhipError(f"the WHIP endpoint answered {shown(resp.content_type)}, not application/sdp")
            return text

    async def _teardown(self) -> None:
        """Close the current connection's peer and tracks and DELETE its resource (never raises)."""
        pc, self._pc = self._pc, None
        tracks, self._tracks = self._tracks, ()
        location, self._location = self._location, None
        for track in tracks:
            # A sender stops its track when it ends, but one that never started (no answer,
            # no connection) does not: stopping them here leaves no tap on the session's clock.
            track.stop()
        if pc is not None:
            try:
                await pc.close()
            except Exception:
                log.exception("session %s output rtcpush: closing the peer failed", self.sessionid)
        if location is None or self._http is None:
            return
        try:
            async with self._http.delete(location, headers=self._headers()) as resp:
                if resp.status >= 300:
                    log.info("session %s output rtcpush: DELETE of the WHIP resource answered %s",
                             self.sessionid, resp.status)
        except Exception as exc:  # the endpoint may be gone already; its resource times out there
            log.warning("session %s output rtcpush: DELETE of the WHIP resource %s failed: %s",
                        self.sessionid, safe_url(location), describe_error(exc))
