"""The HTTP API of a session's outputs: upstream's /record, /push, and WHEP viewers.

    POST   /record {sessionid, type: "start_record" | "end_record"}
    GET    /record/{sessionid}              the last finished recording (video/mp4)
    POST   /push {sessionid, url[, token]}  rtmp(s):// pushes RTMP, http(s):// pushes WHIP
    DELETE /push {sessionid}                (or ?sessionid=N)
    POST   /whep?sessionid=N                an SDP offer in, 201 + answer + Location out (RFC 9725 style)
    DELETE /whep/{resource}
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

import webrtc
from httpapi import ApiError, offload, ok, read_body, read_json, require_str
from outputs.base import OutputError
from outputs.record import record_path
from outputs.whep import WhepViewer

if TYPE_CHECKING:
    from app import LiveTalking

log = logging.getLogger(__name__)

PUSH_NAME = "push"  # a session has at most one /push at a time, as upstream
MAX_VIEWERS = 16  # WHEP viewers per session (each costs a video encoder)
WHEP_SDP_LIMIT = 32 * 1024


def push_kind(url: str) -> str:
    """The output a push URL asks for: RTMP or WHIP (upstream's rtcpush)."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("rtmp", "rtmps"):
        return "rtmp"
    if scheme in ("http", "https"):
        return "rtcpush"
    raise ApiError(400, "field 'url' must be an rtmp:// (RTMP) or http(s):// (WHIP) address")


class OutputsApi:
    def __init__(self, live: LiveTalking) -> None:
        self.live = live
        self._viewers: dict[str, tuple[int, str]] = {}  # WHEP resource -> (sessionid, output name)

    def add_routes(self, api: Callable[[str, str, Any], None]) -> None:
        api("POST", "/record", self.record)
        api("GET", "/record/{sessionid}", self.download)
        api("POST", "/push", self.push)
        api("DELETE", "/push", self.unpush)
        api("POST", "/whep", self.whep)
        api("DELETE", "/whep/{resource}", self.whep_delete)
        api("PATCH", "/whep/{resource}", self.whep_patch)

    def _outputs(self, value: Any) -> tuple[int, Any]:
        session = self.live.get_session(value)
        outputs = self.live.outputs.get(session.sessionid)
        if outputs is None:
            raise ApiError(404, f"no session {session.sessionid}")
        return session.sessionid, outputs

    # --- recording ---------------------------------------------------------------------------
    async def record(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        sessionid, outputs = self._outputs(body.get("sessionid"))
        kind = body.get("type")
        if kind == "start_record":
            try:
                await outputs.add("record")
            except OutputError as exc:
                msg = "already recording; end it with type end_record" if exc.status == 409 else exc.msg
                raise ApiError(exc.status, msg) from None
            return ok()
        if kind == "end_record":
            recorder = await outputs.remove("record")
            if recorder is None:
                raise ApiError(409, f"session {sessionid} is not recording; start with type start_record")
            if not getattr(recorder, "completed", False):
                raise ApiError(500, "the recording could not be finished; see the server log")
            return ok({"url": f"/record/{sessionid}"})
        raise ApiError(400, "field 'type' must be 'start_record' or 'end_record'")

    async def download(self, request: web.Request) -> web.StreamResponse:
        sessionid = self.live.resolve_sessionid(request.match_info["sessionid"])
        path = record_path(self.live.opt, sessionid)
        if not path.is_file():
            raise ApiError(404, f"no finished recording of session {sessionid}")
        return web.FileResponse(path, headers={"Content-Type": "video/mp4"})

    # --- pushes ------------------------------------------------------------------------------
    async def push(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        sessionid, outputs = self._outputs(body.get("sessionid"))
        url = require_str(body, "url")
        if len(url) > 2048:
            raise ApiError(400, "field 'url' is longer than 2048 characters")
        token = body.get("token")
        if token is not None and not isinstance(token, str):
            raise ApiError(400, "field 'token' must be a string")
        kind = push_kind(url)
        try:
            output = await outputs.add(kind, url, name=PUSH_NAME, token=token)
        except OutputError as exc:
            msg = "the session already pushes; DELETE /push first" if exc.status == 409 else exc.msg
            raise ApiError(exc.status, msg) from None
        return ok({"type": output.kind})

    async def unpush(self, request: web.Request) -> web.Response:
        value = request.query.get("sessionid")
        if value is None:
            value = (await read_json(request)).get("sessionid")
        sessionid, outputs = self._outputs(value)
        if await outputs.remove(PUSH_NAME) is None:
            raise ApiError(409, f"session {sessionid} is not pushing")
        return ok()

    # --- WHEP viewers ------------------------------------------------------------------------
    async def whep(self, request: web.Request) -> web.Response:
        sessionid, outputs = self._outputs(request.query.get("sessionid"))
        if request.content_type != "application/sdp":
            raise ApiError(415, "send the offer as Content-Type: application/sdp")
        sdp = (await read_body(request, WHEP_SDP_LIMIT)).decode("utf-8", "replace")
        try:  # the checks /offer makes, off the loop, before aiortc parses it
            await offload(request, webrtc.check_offer, sdp)
        except ValueError as exc:
            raise ApiError(400, f"could not use the SDP offer: {exc}") from None
        if sum(1 for r in self._viewers.values() if r[0] == sessionid) >= MAX_VIEWERS:
            raise ApiError(429, f"session {sessionid} has {MAX_VIEWERS} viewers, the limit")
        resource = secrets.token_urlsafe(16)
        name = f"whep-{resource}"
        viewer = WhepViewer(outputs.player, sessionid, None, self.live.opt, outputs.notify, sdp=sdp,
                            on_gone=lambda: self._viewer_gone(resource))
        try:
            await outputs.adopt(name, viewer)
        except OutputError as exc:
            raise ApiError(exc.status, exc.msg) from None
        self._viewers[resource] = (sessionid, name)
        return web.Response(status=201, text=viewer.answer, content_type="application/sdp",
                            headers={"Location": f"/whep/{resource}"})

    def _viewer_gone(self, resource: str) -> None:
        entry = self._viewers.pop(resource, None)
        if entry is None:
            return
        outputs = self.live.outputs.get(entry[0])
        if outputs is not None:
            outputs.forget(entry[1])

    async def whep_delete(self, request: web.Request) -> web.Response:
        entry = self._viewers.pop(request.match_info["resource"], None)
        if entry is None:
            raise ApiError(404, "no such WHEP viewer")
        outputs = self.live.outputs.get(entry[0])
        if outputs is not None:
            await outputs.remove(entry[1])
        return ok()

    async def whep_patch(self, request: web.Request) -> web.Response:
        if request.match_info["resource"] not in self._viewers:
            raise ApiError(404, "no such WHEP viewer")
        # RFC 9725: a server without trickle ICE answers 405; the offer carried every candidate.
        raise ApiError(405, "trickle ICE is not supported: send every candidate in the offer")
