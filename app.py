"""LiveTalking server: the web demo and the HTTP API, one session per WebRTC connection.

    python app.py                       # embedded CPU portrait model, offline TTS, port 8010
    python app.py --model wav2lip --avatar_id wav2lip256_avatar1
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription

import events
import httpapi
import peerwatch
from audio_util import decode_audio_bytes
from basereal import BaseReal, EventCallback
from chat import Conversation
from httpapi import ApiError, extra_fields, ok, optional_bool, parse_sessionid, read_json, require_str
from llm import ChatBackend, LLMError, LLMNotConfigured, make_backend
from ttsreal import TTS_ENGINES, TTSEngine, Voice, load_tts_engine

log = logging.getLogger("livetalking")

WEB_DIR = Path(__file__).resolve().parent / "web"
# --model name -> "module:SessionClass"; a model is imported only when chosen.
MODELS = {
    "portrait": "portraitreal:PortraitReal",
    "wav2lip": "lipreal:LipReal",
}
CONNECT_TIMEOUT_S = 30.0  # an offer whose peer never connects is dropped after this
MAX_UPLOAD_SECONDS = 600.0
# /human fields of the API itself; any others are the caller's, echoed in the session's events.
HUMAN_FIELDS = {"sessionid", "text", "type", "interrupt", "tts"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="LiveTalking: real-time streaming digital human")
    p.add_argument("--model", default="portrait", help=f"lip-sync model: {', '.join(MODELS)} (default portrait)")
    p.add_argument("--avatar_id", default=None, help="folder under data/avatars (default: the model's own)")
    p.add_argument("--avatar_root", default=None, help="where avatar folders live (default data/avatars)")
    p.add_argument("--model_path", default=None, help="checkpoint file (default models/wav2lip.pth for wav2lip)")
    p.add_argument(
        "--cpu_bf16", action="store_true",
        help="wav2lip on a CPU with native bfloat16: about 2x faster, pixels differ by about 1/255",
    )
    p.add_argument(
        "--batch_size", type=int, default=None, help="video frames inferred together (default: per model)"
    )
    p.add_argument("--tts", default="piper", help=f"TTS engine: {', '.join(TTS_ENGINES)} (default piper, offline)")
    p.add_argument("--REF_FILE", default=None, help="voice: espeak voice name (e.g. cmn) or a piper .onnx voice")
    p.add_argument("--REF_TEXT", default=None, help="text of the reference audio (voice-cloning engines)")
    p.add_argument("--TTS_SERVER", default="http://127.0.0.1:9880", help="self-hosted TTS server address")
    p.add_argument("--transport", default="webrtc", choices=["webrtc"], help="output transport")
    p.add_argument("--push_url", default=None, help="push address (rtmp/rtcpush transports; not in this build)")
    p.add_argument("--max_session", type=int, default=4, help="concurrent sessions (default 4)")
    p.add_argument("--listenport", type=int, default=8010, help="HTTP port (default 8010)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--max_upload_mb", type=float, default=50, help="largest /humanaudio upload (default 50)")
    p.add_argument("-l", type=int, default=10, help="audio left context in 20 ms frames (default 10)")
    p.add_argument(
        "-m", type=int, default=8, help="middle context (upstream's NeRF window; the lip models use the batch)"
    )
    p.add_argument("-r", type=int, default=10, help="audio right context (look-ahead) in 20 ms frames (default 10)")
    p.add_argument(
        "--llm", default="openai", choices=["openai", "local"],
        help="chat backend: openai (any OpenAI-compatible endpoint, default) or local (in-process GGUF model)",
    )
    p.add_argument("--llm_url", default=None, help="OpenAI-compatible base URL (default $OPENAI_BASE_URL)")
    p.add_argument("--llm_model", default=None, help="model name (local: a .gguf file; default the packaged one)")
    p.add_argument(
        "--llm_system_prompt", default=None, help="system prompt of every chat (default: short spoken answers)"
    )
    p.add_argument("--llm_history", type=int, default=10, help="question/answer turns a chat remembers (default 10)")
    p.add_argument("--log_level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    opt = p.parse_args(argv)
    if opt.model not in MODELS:
        p.error(f"unknown --model '{opt.model}'; choose one of: {', '.join(MODELS)}")
    if opt.batch_size is not None and opt.batch_size < 1:
        p.error("--batch_size must be at least 1")
    if opt.max_session < 1:
        p.error("--max_session must be at least 1")
    if opt.llm_history < 0:
        p.error("--llm_history must be 0 or more")
    return opt


def session_class(model: str) -> type[BaseReal]:
    module_name, class_name = MODELS[model].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise RuntimeError(f"--model {model} needs the Python package '{exc.name}'; run ./setup.sh") from None
    return getattr(module, class_name)


class LiveTalking:
    """Shared resources (weights, avatar, TTS engine) loaded once, and the live sessions."""

    def __init__(self, opt: argparse.Namespace) -> None:
        self.opt = opt
        self.session_cls = session_class(opt.model)
        if opt.avatar_id is None:
            opt.avatar_id = self.session_cls.default_avatar_id
        started = time.perf_counter()
        self.model = self.session_cls.load_model(opt)
        self.avatar = self.session_cls.load_avatar(opt)
        self.session_cls.warm_up(opt, self.model, self.avatar)
        self.tts_engine: TTSEngine = load_tts_engine(opt)
        self.llm: ChatBackend | None = None
        self.llm_off = ""  # why chat is off, told to whoever asks for it
        try:
            self.llm = make_backend(opt)
            log.info("chat: %s", self.llm.description)
        except LLMNotConfigured as exc:
            self.llm_off = str(exc)
            log.info("chat: off (no LLM configured; --llm_url or OPENAI_BASE_URL turns it on)")
        log.info(
            "loaded model %s, avatar %s, tts %s in %.1fs",
            opt.model, opt.avatar_id, opt.tts, time.perf_counter() - started,
        )
        self.sessions: dict[int, BaseReal] = {}
        self.peers: dict[int, RTCPeerConnection] = {}
        self.events: dict[int, events.SessionEvents] = {}
        self.chats: dict[int, Conversation] = {}
        self._closing: dict[int, asyncio.Future] = {}  # sessions being closed, by id
        self._watchers: dict[int, asyncio.Task] = {}  # per connected peer: notices it vanishing
        self._opening = 0  # sessions being built, counted against --max_session

    # --- sessions ----------------------------------------------------------------------------
    def new_session(self, sessionid: int, on_event: EventCallback | None = None) -> BaseReal:
        """Build one session (blocking; runs in an executor)."""
        return self.session_cls(self.opt, self.model, self.avatar, self.tts_engine, sessionid, on_event)

    def get_session(self, value: Any) -> BaseReal:
        sessionid = parse_sessionid(value)
        session = self.sessions.get(sessionid)
        if session is None:
            raise ApiError(404, f"no session {sessionid}; open one with POST /offer")
        return session

    def request_close(self, sessionid: int, reason: str) -> asyncio.Future:
        """Close a session once, however many events ask for it; the task is owned here so
        shutdown can wait for it."""
        task = self._closing.get(sessionid)
        if task is None:
            task = asyncio.ensure_future(self._close_session(sessionid, reason))
            self._closing[sessionid] = task
            task.add_done_callback(lambda _: self._closing.pop(sessionid, None))
        return task

    async def close_session(self, sessionid: int, reason: str) -> None:
        await self.request_close(sessionid, reason)

    async def _close_session(self, sessionid: int, reason: str) -> None:
        session = self.sessions.pop(sessionid, None)
        pc = self.peers.pop(sessionid, None)
        watcher = self._watchers.pop(sessionid, None)
        if watcher is not None:
            watcher.cancel()
        conversation = self.chats.pop(sessionid, None)
        if session is None and pc is None:
            return
        log.info("closing session %s (%s)", sessionid, reason)
        if conversation is not None:
            await conversation.close()  # no answer may feed a closing session
        if pc is not None:
            await pc.close()
        if session is not None:
            await asyncio.get_running_loop().run_in_executor(None, session.close)
        hub = self.events.pop(sessionid, None)
        if hub is not None:
            hub.close(reason)

    async def close_all(self) -> None:
        for sid in list(self.peers):
            self.request_close(sid, "server shutdown")
        await asyncio.gather(*list(self._closing.values()), return_exceptions=True)

    def _new_sessionid(self) -> int:
        while True:
            sid = httpapi.SESSION_ID_MIN + secrets.randbelow(httpapi.SESSION_ID_MAX - httpapi.SESSION_ID_MIN)
            if sid not in self.sessions:
                return sid

    # --- handlers ------------------------------------------------------------------------------
    async def offer(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        sdp = require_str(body, "sdp")
        kind = body.get("type", "offer")
        if kind != "offer":
            raise ApiError(400, f"field 'type' must be 'offer', got {kind!r}")
        if len(self.sessions) + self._opening >= self.opt.max_session:
            raise ApiError(503, f"all {self.opt.max_session} sessions are in use (--max_session); try again later")
        sessionid = self._new_sessionid()
        loop = asyncio.get_running_loop()
        self._opening += 1
        hub = events.SessionEvents(sessionid, loop)
        try:
            session = await loop.run_in_executor(None, self.new_session, sessionid, hub.publish)
        finally:
            self._opening -= 1
        pc = RTCPeerConnection()
        self.sessions[sessionid] = session
        self.events[sessionid] = hub
        if self.llm is not None:
            prompt = self.opt.llm_system_prompt if self.opt.llm_system_prompt is not None else self.llm.system_prompt
            conversation = Conversation(self.llm, session.say, hub.publish, sessionid, prompt, self.opt.llm_history)
            hub.observe(conversation.on_event)  # its history keeps what was heard
            self.chats[sessionid] = conversation
        self.peers[sessionid] = pc
        self._watch_peer(sessionid, pc)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            pc.addTrack(session.player.audio)
            pc.addTrack(session.player.video)
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            await self.close_session(sessionid, "bad offer")
            raise ApiError(400, f"could not use the SDP offer: {exc}") from None
        session.start()
        log.info("session %s opened (%d live)", sessionid, len(self.sessions))
        return web.json_response(
            {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type, "sessionid": sessionid}
        )

    def _watch_peer(self, sessionid: int, pc: RTCPeerConnection) -> None:
        loop = asyncio.get_running_loop()
        timers: dict[str, asyncio.TimerHandle] = {}

        def close_later(delay: float, reason: str) -> None:
            cancel()
            timers["close"] = loop.call_later(delay, self.request_close, sessionid, reason)

        def cancel() -> None:
            timer = timers.pop("close", None)
            if timer is not None:
                timer.cancel()

        close_later(CONNECT_TIMEOUT_S, "peer never connected")

        def vanished(silent: float) -> None:
            self.request_close(sessionid, f"peer vanished: no RTCP report for {silent:.0f} s")

        @pc.on("connectionstatechange")
        def on_state() -> None:
            state = pc.connectionState
            log.info("session %s peer %s", sessionid, state)
            if state == "connected":
                cancel()
                if sessionid in self.peers and sessionid not in self._watchers:
                    self._watchers[sessionid] = loop.create_task(
                        peerwatch.watch_reports(pc, vanished), name=f"peerwatch-{sessionid}"
                    )
            elif state in ("failed", "closed"):
                cancel()
                self.request_close(sessionid, f"peer {state}")

    async def human(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        session = self.get_session(body.get("sessionid"))
        text = require_str(body, "text")
        voice = httpapi.optional_voice(body)  # {"tts": {"ref_file", "ref_text"}}: this text's voice
        kind = body.get("type", "echo")
        if kind not in ("echo", "chat"):
            raise ApiError(400, f"field 'type' must be 'echo' or 'chat', got {kind!r}")
        conversation = self._conversation(session) if kind == "chat" else None
        datainfo = extra_fields(body, HUMAN_FIELDS)
        if optional_bool(body, "interrupt"):
            await self._interrupt(session)
        if conversation is not None:
            await self._ask(conversation, text, datainfo, voice)
        else:
            session.say(text, datainfo, voice)
        return ok()

    def _conversation(self, session: BaseReal) -> Conversation:
        conversation = self.chats.get(session.sessionid)
        if conversation is None:
            raise ApiError(400, self.llm_off or f"session {session.sessionid} has no chat")
        return conversation

    async def _ask(self, conversation: Conversation, text: str, datainfo: dict, voice: Voice | None) -> None:
        try:
            await conversation.ask(text, datainfo, voice)
        except LLMError as exc:
            raise ApiError(exc.status, exc.msg) from None

    async def _interrupt(self, session: BaseReal) -> None:
        """Silence the session now, then stop its answer in flight (closing the LLM stream)."""
        session.interrupt()
        conversation = self.chats.get(session.sessionid)
        if conversation is not None:
            await conversation.cancel()

    async def humanaudio(self, request: web.Request) -> web.Response:
        if not request.content_type.startswith("multipart/"):
            raise ApiError(400, "send the audio as multipart/form-data with fields 'file' and 'sessionid'")
        form = await request.post()
        session = self.get_session(form.get("sessionid"))
        upload = form.get("file")
        if upload is None or not hasattr(upload, "file"):
            raise ApiError(400, "missing file field 'file'")
        data = upload.file.read()
        loop = asyncio.get_running_loop()
        try:
            audio = await loop.run_in_executor(
                None, lambda: decode_audio_bytes(data, upload.filename or "", max_seconds=MAX_UPLOAD_SECONDS)
            )
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        session.say_audio(audio, {"file": upload.filename or ""})
        return ok()

    async def interrupt_talk(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        await self._interrupt(self.get_session(body.get("sessionid")))
        return ok()

    async def sse(self, request: web.Request) -> web.StreamResponse:
        """GET /sse?sessionid=N: the session's events as Server-Sent Events."""
        sessionid = parse_sessionid(request.query.get("sessionid"))
        hub = self.events.get(sessionid)
        if hub is None or sessionid not in self.sessions:
            raise ApiError(404, f"no session {sessionid}; open one with POST /offer")
        return await events.stream(request, hub)

    async def is_speaking(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        return ok(self.get_session(body.get("sessionid")).is_speaking)

    async def stats(self, request: web.Request) -> web.Response:
        """Per-session counters for operators and bench/: slots rendered in time vs late.

        Session ids are left out on purpose: they are the sessions' only credential.
        """
        return ok({"sessions": [
            {
                "speaking": s.is_speaking,
                "slots_played": s.player.slots_played,
                "slots_missed": s.player.slots_missed,
                "frames_fresh": s.player.frames_fresh,
                "frames_repeated": s.player.frames_repeated,
                "idle_units_dropped": s.player.idle_units_dropped,
                "frames_sent": s.player.frames_sent,
                "audio_packets_sent": s.player.audio_packets_sent,
            }
            for s in self.sessions.values()
        ]})


LIVE = web.AppKey("live", LiveTalking)


async def index_page(_: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB_DIR / "index.html")


def build_app(opt: argparse.Namespace) -> web.Application:
    live = LiveTalking(opt)
    app = web.Application(
        client_max_size=int(opt.max_upload_mb * 1024 * 1024),
        middlewares=[httpapi.envelope_middleware(opt.max_upload_mb)],
    )
    app[LIVE] = live
    app.router.add_post("/offer", live.offer)
    app.router.add_post("/human", live.human)
    app.router.add_post("/humanaudio", live.humanaudio)
    app.router.add_post("/interrupt_talk", live.interrupt_talk)
    app.router.add_post("/is_speaking", live.is_speaking)
    app.router.add_get("/stats", live.stats)
    app.router.add_get("/sse", live.sse)
    app.router.add_get("/", index_page)
    app.router.add_static("/", WEB_DIR)

    async def on_shutdown(_: web.Application) -> None:
        await live.close_all()
        if live.llm is not None:
            await live.llm.aclose()

    app.on_shutdown.append(on_shutdown)
    return app


def main(argv: list[str] | None = None) -> int:
    opt = parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(opt.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        app = build_app(opt)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        log.error("%s", exc)
        return 2
    log.info("open http://localhost:%d/ in a browser", opt.listenport)
    web.run_app(app, host=opt.host, port=opt.listenport, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
