"""LiveTalking server: the web demo and the HTTP API, one session per WebRTC connection.

    python app.py                       # embedded CPU portrait model, offline TTS, port 8010
    python app.py --model wav2lip --avatar_id wav2lip256_avatar1
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import importlib
import logging
import os
import resource
import secrets
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiortc import RTCPeerConnection, RTCSessionDescription

import access
import actions
import admin
import admission
import avatar_tasks
import config
import events
import httpapi
import peerwatch
import priority
import webrtc
from avatars import AvatarCache, AvatarRefused, check_name
from basereal import AVATAR_ROOT, PROJECT_DIR, BaseReal, EventCallback, LipModel
from chat import Conversation
from httpapi import (
    CONTROL_POOL,
    FILENAME_LIMIT,
    ApiError,
    extra_fields,
    offload,
    ok,
    optional_bool,
    parse_sessionid,
    read_json,
    read_part,
    require_str,
)
from inputs import vad
from inputs.utterance import SegmenterConfig
from inputs.voice import MODES as ASR_MODES
from inputs.voice import Hooks, VoiceInput
from llm import ChatBackend, LLMError, LLMNotConfigured, make_backend
from outputs import OUTPUTS, OutputError
from outputs.http import OutputsApi
from outputs.session import SessionOutputs
from safetext import OneLineFormatter, clean_text, shown
from stt import STT_ENGINES, SttNotAvailable, load_stt
from stt.base import SpeechToText
from ttsreal import TTS_ENGINES, SpeechRefused, TTSEngine, Voice, load_tts_engine
from uploads import DecoderBusy, UploadDecoder, UploadRefused
from voices import VoiceRefused

# Sessions run their models' OpenMP work on several threads at once, beside encoders and TTS:
# OpenMP's default spin-waiting then burns the cores a descheduled peer thread needs (the
# Ultralight UNet: 3x faster so beside two busy processes, 20% slower on an idle machine). Sleep,
# unless the user chose otherwise. It must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

log = logging.getLogger("livetalking")

WEB_DIR = Path(__file__).resolve().parent / "web"
# --model name -> "module:LipModel subclass"; a model is imported only when chosen.
MODELS = {
    "portrait": "portraitreal:Portrait",
    "wav2lip": "lipreal:Wav2Lip",
    "musetalk": "musereal:MuseTalk",
    "ultralight": "lightreal:Ultralight",
}
CONNECT_TIMEOUT_S = 10.0  # an offer whose peer never connects is dropped after this
MAX_UPLOAD_SECONDS = 600.0
OFFER_LIMIT = 64 * 1024  # bytes of an /offer body
PENDING_OFFERS_PER_ADDRESS = 2  # offers not yet connected that one address may hold
UPLOADS_PER_ADDRESS = 2
STREAMS_PER_ADDRESS = 16  # /sse listeners per address
MAX_EVENT_STREAMS = 256  # /sse listeners in all
UPLOAD_FIELD_LIMIT = 1024  # bytes of a form field other than the file
TRIM_AFTER_BYTES = 1 << 20  # after an upload this big, freed heap is handed back to the system
# /human fields of the API itself; any others are the caller's, echoed in the session's events.
HUMAN_FIELDS = {"sessionid", "text", "type", "interrupt", "tts", "action"}
PUSH_TOKEN_ENV = "LIVETALKING_PUSH_TOKEN"
BACKGROUND_ALIAS = 0  # upstream's pages address the one background session as session 0
SESSION_FIELDS = {"avatar", "outputs", "custom_config"}
CUSTOMVIDEO_DIR = PROJECT_DIR / "data" / "customvideo"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="LiveTalking: real-time streaming digital human")
    p.add_argument("--model", default="portrait", help=f"lip-sync model: {', '.join(MODELS)} (default portrait)")
    p.add_argument("--avatar_id", default=None, help="folder under data/avatars (default: the model's own)")
    p.add_argument("--avatar_root", default=None, help="where avatar folders live (default data/avatars)")
    p.add_argument("--max_avatars", type=int, default=4,
                   help="avatars besides --avatar_id kept loaded for sessions that ask for them (default 4)")
    p.add_argument("--customvideo_config", default=None,
                   help='actions: a JSON list of {"audiotype": N, "imgpath": folder, "audiopath": wav} '
                        "(upstream's custom_config.json); 1 replaces the idle loop")
    p.add_argument("--customvideo_dir", default=str(CUSTOMVIDEO_DIR),
                   help="besides the avatar root, the only folder an /offer's custom_config may name "
                        "files in (default data/customvideo)")
    p.add_argument("--models_dir", default=None, help="where model files live (default models)")
    p.add_argument(
        "--batch_size", type=int, default=None, help="video frames inferred together (default: per model)"
    )
    p.add_argument("--tts", default="piper", help=f"TTS engine: {', '.join(TTS_ENGINES)} (default piper, offline)")
    p.add_argument("--REF_FILE", default=None, help="voice: espeak voice name (e.g. cmn) or a piper .onnx voice")
    p.add_argument("--REF_TEXT", default=None, help="text of the reference audio (voice-cloning engines)")
    p.add_argument("--TTS_SERVER", default="http://127.0.0.1:9880", help="self-hosted TTS server address")
    p.add_argument("--transport", default="webrtc", choices=["webrtc", *OUTPUTS],
                   help="webrtc (sessions from the page, default), or also open a background session at "
                        f"start-up with one output: {', '.join(OUTPUTS)}")
    p.add_argument("--push_url", default=None,
                   help="where --transport rtmp (rtmp://host/app/key) or rtcpush (a WHIP http(s) URL) pushes")
    p.add_argument("--push_token", default=None,
                   help=f"bearer token for WHIP pushes (or set {PUSH_TOKEN_ENV})")
    p.add_argument("--record_dir", default=None, help="where /record writes mp4 files (default data/records)")
    p.add_argument("--stun", default=None, help="a STUN server for every peer, e.g. stun:stun.l.google.com:19302")
    p.add_argument("--ice_servers", default=None,
                   help='STUN/TURN servers for the server\'s peers and the page, as JSON: '
                        '[{"urls": ["turn:host:3478"], "username": "u", "credential": "p"}]')
    p.add_argument("--virtualcam_device", default=None,
                   help="--transport virtualcam: the camera device, e.g. /dev/video10 (a v4l2loopback one "
                        "on Linux; default: the first one pyvirtualcam finds)")
    p.add_argument("--virtualcam_backend", default=None,
                   help="--transport virtualcam: pyvirtualcam backend, v4l2loopback (Linux), obs or "
                        "unitycapture (Windows), obs (macOS) (default: the first that works)")
    p.add_argument("--audio_device", default=None,
                   help="--transport virtualcam: a sound output (name, part of one, or index; see "
                        "python -m sounddevice) that plays the avatar's voice (default: none, not played)")
    p.add_argument("--max_session", type=int, default=4, help="concurrent sessions (default 4)")
    p.add_argument("--listenport", type=int, default=8010, help="HTTP port (default 8010)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--max_upload_mb", type=float, default=50, help="largest /humanaudio upload (default 50)")
    p.add_argument("--upload_timeout", type=float, default=60.0,
                   help="seconds an upload may take to arrive (default 60)")
    p.add_argument("--api_token", default=None,
                   help=f"require 'Authorization: Bearer TOKEN' on every API call (or set {access.TOKEN_ENV})")
    p.add_argument("--cors_origins", default="",
                   help="other origins whose pages may call the API, comma-separated (default: none, same origin)")
    p.add_argument("--max_sessions_per_ip", type=int, default=2,
                   help="sessions one client address may hold, connected or not (default 2)")
    p.add_argument("--forwarded_allow_ips", default="",
                   help="reverse proxies (IPs or networks) whose X-Forwarded-For names the client")
    p.add_argument("--capacity", default="auto",
                   help="sessions admitted: 'auto' measures what this machine keeps speaking in real time "
                        "(default), or a number")
    p.add_argument("--voices_dir", default=str(PROJECT_DIR / "data" / "voices"),
                   help="the only folder a request's tts.ref_file may name files in (default data/voices)")
    p.add_argument("--tts_connect_timeout", type=float, default=5.0,
                   help="network TTS: seconds to connect (default 5)")
    p.add_argument("--tts_first_byte_timeout", type=float, default=10.0,
                   help="network TTS: seconds from a sentence's request to its first audio (default 10)")
    p.add_argument("--tts_stall_timeout", type=float, default=5.0,
                   help="network TTS: seconds a stream may go (almost) without audio (default 5)")
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
    p.add_argument("--asr", default="whisper", choices=[*STT_ENGINES, "off"],
                   help="speech-to-text of the page's microphone: whisper (offline, default), openai "
                        "(an OpenAI-compatible /v1/audio/transcriptions at --asr_url), funasr (a FunASR "
                        "WebSocket server at --asr_url), off")
    p.add_argument("--asr_model", default=None,
                   help="whisper: a CTranslate2 whisper folder (default the packaged tiny.en); openai: the model name")
    p.add_argument("--asr_url", default=None, help="the speech-to-text server of --asr openai or funasr")
    p.add_argument("--asr_language", default=None, help="the language spoken, e.g. en, zh (default the model's)")
    p.add_argument("--asr_timeout", type=float, default=10.0,
                   help="seconds a speech-to-text server may take per utterance (default 10)")
    p.add_argument("--asr_silence_ms", type=int, default=600,
                   help="silence that ends an utterance, in ms (default 600)")
    p.add_argument("--asr_mode", default=None, choices=["chat", "echo"],
                   help="where a transcript goes: chat (the LLM; the default with one) or echo (spoken back)")
    p.add_argument("--barge_in", default="on", choices=["on", "off"],
                   help="on: talking over the avatar interrupts it; off: the mic is ignored while it speaks")
    p.add_argument("--log_level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    p.add_argument("--config", default=None,
                   help="a YAML file of settings (upstream V2's keys, the flags' names); flags given win")
    p.add_argument("--admin_token", default=None,
                   help=f"require 'Authorization: Bearer TOKEN' on /api/admin/*, /api/avatar/* and /metrics "
                        f"(or set {access.ADMIN_TOKEN_ENV}); without one they answer only on loopback")
    avatar_tasks.add_arguments(p)
    argv = config.preload(p, argv)  # a config file's `model:` chooses the model's flags too
    add_model_arguments(p, argv)
    config.apply(p, argv)
    opt = p.parse_args(argv)
    if opt.batch_size is not None and opt.batch_size < 1:
        p.error("--batch_size must be at least 1")
    if opt.max_session < 1:
        p.error("--max_session must be at least 1")
    if opt.max_avatars < 0:
        p.error("--max_avatars must be 0 or more")
    if opt.llm_history < 0:
        p.error("--llm_history must be 0 or more")
    if opt.max_sessions_per_ip < 1:
        p.error("--max_sessions_per_ip must be at least 1")
    try:
        opt.capacity_fixed = admission.parse_capacity(str(opt.capacity))
        opt.cors = access.parse_origins(opt.cors_origins)
    except ValueError as exc:
        p.error(str(exc))
    if not 100 <= opt.asr_silence_ms <= 5000:
        p.error("--asr_silence_ms must be between 100 and 5000")
    for name in ("tts_connect_timeout", "tts_first_byte_timeout", "tts_stall_timeout", "upload_timeout", "asr_timeout"):
        if getattr(opt, name) <= 0:
            p.error(f"--{name} must be more than 0")
    try:
        opt.ice = webrtc.parse_ice_servers(opt.stun, opt.ice_servers)
    except ValueError as exc:
        p.error(str(exc))
    opt.push_token = opt.push_token or os.environ.get(PUSH_TOKEN_ENV) or None
    if opt.transport in ("rtmp", "rtcpush") and not opt.push_url:
        p.error(f"--transport {opt.transport} needs --push_url")
    return opt


def add_model_arguments(parser: argparse.ArgumentParser, argv: list[str] | None) -> None:
    """Add the flags of the model `argv` chooses with --model (only that model is imported)."""
    chosen = argparse.ArgumentParser(add_help=False)
    chosen.add_argument("--model", default="portrait")
    name = chosen.parse_known_args(argv)[0].model
    if name not in MODELS:
        parser.error(f"unknown --model '{name}'; choose one of: {', '.join(MODELS)}")
    try:
        model_class(name).add_arguments(parser.add_argument_group(f"--model {name}"))
    except RuntimeError as exc:
        parser.error(str(exc))


def model_class(model: str) -> type[LipModel]:
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
        model_cls = model_class(opt.model)
        if opt.avatar_id is None:
            opt.avatar_id = model_cls.default_avatar_id
        started = time.perf_counter()
        self.model = model_cls.load(opt)
        self.model.warm_up()
        self.avatar_root = Path(opt.avatar_root) if opt.avatar_root else AVATAR_ROOT
        self.avatars = AvatarCache(self.model, self.avatar_root, opt.avatar_id, opt.max_avatars)
        self.frame_size = self.model.renderer(0).idle_frame(0).shape[1::-1]
        self.clips: dict[int, actions.Clip] = {}  # --customvideo_config's, for every session
        self.request_frames = actions.FramesCache()  # requests' plain clips, shared
        if opt.customvideo_config:
            path = Path(opt.customvideo_config)
            loader = actions.ClipLoader(self.model, self.frame_size, Path.cwd())
            self.clips = loader.load_all(actions.read_config_file(path))
            log.info("actions from %s: audiotypes %s", path, ", ".join(map(str, sorted(self.clips))))
        self.tts_engine: TTSEngine = load_tts_engine(opt)
        self.voices_dir = Path(opt.voices_dir)
        self.llm: ChatBackend | None = None
        self.llm_off = ""  # why chat is off, told to whoever asks for it
        try:
            self.llm = make_backend(opt)
            log.info("chat: %s", self.llm.description)
        except LLMNotConfigured as exc:
            self.llm_off = str(exc)
            log.info("chat: off (no LLM configured; --llm_url or OPENAI_BASE_URL turns it on)")
        self.stt: SpeechToText | None = None
        if opt.asr != "off":
            try:
                vad.load()
                self.stt = load_stt(opt)
            except (SttNotAvailable, vad.VadUnavailable) as exc:
                raise RuntimeError(f"speech input (--asr {opt.asr}): {exc}") from None
            log.info("speech input: %s; barge-in %s", self.stt.description, opt.barge_in)
        log.info(
            "loaded model %s, avatar %s, tts %s in %.1fs",
            opt.model, opt.avatar_id, opt.tts, time.perf_counter() - started,
        )
        self.capacity = admission.Capacity(os.cpu_count() or 1, None, getattr(opt, "capacity_fixed", None))
        if self.capacity.fixed is None:
            probe = self.new_session(0)
            try:
                self.capacity.cost = admission.measure(probe, self.tts_engine, self.capacity.cores)
            finally:
                probe.close()
        log.info("%s; --max_session %d", self.capacity.describe(), opt.max_session)
        self.limits = access.AddressLimits(
            sessions=opt.max_sessions_per_ip,
            pending_offers=min(PENDING_OFFERS_PER_ADDRESS, opt.max_sessions_per_ip),
            uploads=UPLOADS_PER_ADDRESS,
            streams=STREAMS_PER_ADDRESS,
            trusted_proxies=[p for p in str(getattr(opt, "forwarded_allow_ips", "") or "").split(",")],
        )
        self.uploads = UploadDecoder()
        self.sessions: dict[int, BaseReal] = {}
        self.peers: dict[int, RTCPeerConnection] = {}
        self.events: dict[int, events.SessionEvents] = {}
        self.chats: dict[int, Conversation] = {}
        self.outputs: dict[int, SessionOutputs] = {}
        self.inputs: dict[int, VoiceInput] = {}  # sessions listening to their peer's microphone
        self.background: set[int] = set()  # sessions without a browser peer (POST /session, --transport)
        self._address: dict[int, str] = {}  # the client address that opened each session
        self._pending: set[int] = set()  # sessions whose peer has not connected yet
        self._closing: dict[int, asyncio.Future] = {}  # sessions being closed, by id
        self._watchers: dict[int, asyncio.Task] = {}  # per connected peer: notices it vanishing
        self._opening = 0  # sessions being built, counted against --max_session
        self._streams = 0  # /sse listeners in all
        # Called with each new session and its events hub once it is registered (admin's
        # counters hang on them).
        self.on_session_open: list[Callable[[BaseReal, events.SessionEvents], None]] = []

    @property
    def max_sessions(self) -> int:
        return min(self.opt.max_session, self.capacity.sessions)

    # --- sessions ----------------------------------------------------------------------------
    def new_session(self, sessionid: int, on_event: EventCallback | None = None, avatar_id: str | None = None,
                    custom_config: list[dict] | None = None) -> BaseReal:
        """Build one session (blocking; runs in an executor): its avatar loaded (or found in
        the cache), its own actions (custom_config) over the server's."""
        avatar = None if avatar_id is None else self.avatars.get(avatar_id)
        clips = dict(self.clips)
        if custom_config:
            clips.update(self.request_clips(custom_config))
        return BaseReal(self.opt, self.model, self.tts_engine, sessionid, on_event, avatar, avatar_id, clips)

    def request_clips(self, entries: list[dict]) -> dict[int, actions.Clip]:
        """A request's clips: files under the avatar root or --customvideo_dir only."""
        roots = [self.avatar_root, Path(self.opt.customvideo_dir)]
        loader = actions.ClipLoader(self.model, self.frame_size, PROJECT_DIR, roots, self.avatars, self.request_frames)
        return loader.load_all(entries)

    def get_session(self, value: Any) -> BaseReal:
        sessionid = self.resolve_sessionid(value)
        session = self.sessions.get(sessionid)
        if session is None:
            raise ApiError(404, f"no session {sessionid}; open one with POST /offer")
        return session

    def resolve_sessionid(self, value: Any) -> int:
        """A request's session id; 0 names the background session while there is only one."""
        sessionid = parse_sessionid(value)
        if sessionid == BACKGROUND_ALIAS:
            if len(self.background) == 1:
                return next(iter(self.background))
            raise ApiError(404 if not self.background else 400,
                           "session 0 names the background session, and there is none" if not self.background
                           else f"there are {len(self.background)} background sessions: name one by its id")
        return sessionid

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
        outputs = self.outputs.pop(sessionid, None)
        listening = self.inputs.pop(sessionid, None)
        self.background.discard(sessionid)
        self._release_address(sessionid)
        if session is None and pc is None:
            return
        log.info("closing session %s (%s)", sessionid, reason)
        if listening is not None:
            await listening.close()  # no transcript may ask a closing session anything
        if conversation is not None:
            await conversation.close()  # no answer may feed a closing session
        if outputs is not None:
            await outputs.close()
        if pc is not None:
            await pc.close()
        if session is not None:
            await asyncio.get_running_loop().run_in_executor(self.control_pool, session.close)
        hub = self.events.pop(sessionid, None)
        if hub is not None:
            hub.close(reason)

    def _release_address(self, sessionid: int) -> None:
        address = self._address.pop(sessionid, None)
        if address is None:
            return
        self.limits.release("session", address)
        if sessionid in self._pending:
            self._pending.discard(sessionid)
            self.limits.release("pending offer", address)

    async def close_all(self) -> None:
        for sid in list(self.sessions):
            self.request_close(sid, "server shutdown")
        await asyncio.gather(*list(self._closing.values()), return_exceptions=True)

    def _new_sessionid(self) -> int:
        while True:
            sid = httpapi.SESSION_ID_MIN + secrets.randbelow(httpapi.SESSION_ID_MAX - httpapi.SESSION_ID_MIN)
            if sid not in self.sessions:
                return sid

    @property
    def control_pool(self) -> ThreadPoolExecutor:
        return self._control_pool

    def set_pools(self, control: ThreadPoolExecutor) -> None:
        self._control_pool = control

    # --- handlers ------------------------------------------------------------------------------
    async def offer(self, request: web.Request) -> web.Response:
        body = await read_json(request, OFFER_LIMIT)
        sdp = require_str(body, "sdp")
        kind = body.get("type", "offer")
        if kind != "offer":
            raise ApiError(400, f"field 'type' must be 'offer', got {shown(kind)}")
        asr_mode = self._asr_mode(body.get("asr_mode"))
        look = self._look(body)
        if len(sdp) > webrtc.SDP_LIMIT:
            raise ApiError(413, f"the SDP offer is {len(sdp)} characters; the limit is {webrtc.SDP_LIMIT}")
        self._admit()
        address = self.limits.address(request)
        self.limits.take("session", address)
        try:
            self.limits.take("pending offer", address)
        except ApiError:
            self.limits.release("session", address)
            raise
        sessionid = self._new_sessionid()
        self._address[sessionid] = address
        self._pending.add(sessionid)
        try:
            return await self._open(request, sessionid, sdp, asr_mode, look)
        except BaseException:
            if sessionid not in self.sessions:
                self._release_address(sessionid)  # never opened: nothing else will release it
            raise

    def _admit(self) -> None:
        """503 unless one more session fits: --max_session, and what this machine can keep
        speaking in real time (measured), and its CPU now."""
        live = len(self.sessions) + self._opening
        if live >= self.opt.max_session:
            raise ApiError(503, f"all {self.opt.max_session} sessions are in use (--max_session); try again later")
        if live >= self.capacity.sessions:
            n = self.capacity.sessions
            raise ApiError(503, f"the server is at capacity: this machine keeps {n} session{'s' * (n != 1)} "
                                f"speaking in real time and all are open; try again later")
        busy = self.capacity.busy()
        if busy is not None:
            raise ApiError(503, f"the server is too busy for another session ({busy}); try again later")

    async def _open(self, request: web.Request, sessionid: int, sdp: str, asr_mode: str | None,
                    look: SessionLook) -> web.Response:
        try:
            await offload(request, webrtc.check_offer, sdp)
        except ValueError as exc:
            raise ApiError(400, f"could not use the SDP offer: {exc}") from None
        session = await self._build_session(sessionid, look)
        pc = webrtc.new_peer(self.opt.ice)
        self.peers[sessionid] = pc
        self._watch_peer(sessionid, pc)
        listening = self._listen(session, asr_mode)

        tracks = webrtc.session_tracks(session.player)

        @pc.on("track")
        def on_track(track) -> None:
            # A page that sends its microphone (a sendrecv audio transceiver); upstream's
            # receive-only pages send none and nothing here runs.
            if track.kind == "audio" and listening is not None:
                webrtc.hear_promptly(pc, track)
                listening.attach(track, tracks[0])

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            for track in tracks:
                pc.addTrack(track)
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            await self.close_session(sessionid, "bad offer")
            raise ApiError(400, f"could not use the SDP offer: {shown(str(exc), 200)}") from None
        session.start()
        log.info("session %s opened (%d live)", sessionid, len(self.sessions))
        asr = None if listening is None else {
            "engine": self.stt.name, "mode": listening.mode, "barge_in": self.opt.barge_in == "on",
        }
        return web.json_response(
            {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type, "sessionid": sessionid, "asr": asr}
        )

    def _asr_mode(self, value: Any) -> str | None:
        if value is None:
            return None
        if value not in ASR_MODES:
            raise ApiError(400, f"field 'asr_mode' must be one of {', '.join(ASR_MODES)}, got {shown(value)}")
        if value == "chat" and self.llm is None:
            raise ApiError(400, f"asr_mode 'chat' needs an LLM: {self.llm_off}")
        return value

    def _listen(self, session: BaseReal, mode: str | None) -> VoiceInput | None:
        """The session's speech input (None with --asr off): what its peer's mic says goes to
        the chat or is spoken back."""
        if self.stt is None:
            return None
        sessionid = session.sessionid
        hub = self.events[sessionid]

        def say(text: str, datainfo: dict) -> None:
            try:
                session.say(text, datainfo)
            except SpeechRefused as exc:
                hub.publish({**datainfo, "status": "error", "source": "tts", "msg": exc.msg})

        async def ask(text: str, datainfo: dict) -> None:
            conversation = self.chats.get(sessionid)
            if conversation is None:
                return say(text, datainfo)
            try:
                await conversation.ask(text, datainfo)
            except LLMError as exc:
                hub.publish({**datainfo, "status": "error", "source": "llm", "msg": exc.msg})

        def speculate(text: str, datainfo: dict, release_at: float | None = None):
            conversation = self.chats.get(sessionid)
            try:
                return conversation.speculate(text, datainfo, release_at=release_at) if conversation else None
            except LLMError:
                return None

        def publish(event: dict) -> None:
            heard = event.get("status") == "transcript" and event.get("final") and event.get("text")
            if heard and getattr(self.inputs.get(sessionid), "mode", "off") != "off":
                session.reply_requested()  # a question heard: its answer's latency runs from here
            hub.publish(event)

        hooks = Hooks(interrupt=lambda: self._interrupt(session), say=say, ask=ask, speculate=speculate,
                      publish=publish)
        default = self.opt.asr_mode or ("chat" if self.llm is not None else "echo")
        listening = VoiceInput(
            sessionid, self.stt, hooks, mode=mode or default, barge_in=self.opt.barge_in == "on",
            config=SegmenterConfig(end_silence_s=self.opt.asr_silence_ms / 1000),
        )
        self.inputs[sessionid] = listening
        return listening

    async def asr_mode(self, request: web.Request) -> web.Response:
        """POST /asr_mode {sessionid, mode: chat|echo|off, ...}: where the session's speech goes;
        the other fields come back in its listening and transcript events."""
        body = await read_json(request)
        session = self.get_session(body.get("sessionid"))
        listening = self.inputs.get(session.sessionid)
        if listening is None:
            why = "this server has no speech input (--asr off)" if self.stt is None else \
                f"session {session.sessionid} has no microphone input (a page's WebRTC session has one)"
            raise ApiError(400, why)
        mode = self._asr_mode(body.get("mode"))
        if mode is None:
            raise ApiError(400, f"missing field 'mode' ({', '.join(ASR_MODES)})")
        listening.set_mode(mode, extra_fields(body, {"sessionid", "mode"}))
        return ok({"mode": mode})

    def _look(self, body: dict) -> SessionLook:
        """A request's `avatar` and `custom_config` (upstream V2's fields), checked."""
        avatar = body.get("avatar")
        try:
            avatar = None if avatar is None else check_name(avatar)
            entries = body.get("custom_config")
            entries = None if entries in (None, "", []) else actions.parse_entries(entries, "field 'custom_config'")
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        return SessionLook(avatar, entries)

    async def _build_session(self, sessionid: int, look: SessionLook | None = None) -> BaseReal:
        """A new session with its events, chat and outputs, registered (not started yet)."""
        loop = asyncio.get_running_loop()
        look = look or SessionLook()
        self._opening += 1
        hub = events.SessionEvents(sessionid, loop)
        try:
            session = await loop.run_in_executor(
                self.control_pool, self.new_session, sessionid, hub.publish, look.avatar, look.custom_config
            )
        except ValueError as exc:  # an avatar or a clip that cannot be used
            raise ApiError(400, str(exc)) from None
        finally:
            self._opening -= 1
        self.sessions[sessionid] = session
        self.events[sessionid] = hub
        self.outputs[sessionid] = SessionOutputs(session.player, sessionid, self.opt, hub.publish)
        if self.llm is not None:
            prompt = self.opt.llm_system_prompt if self.opt.llm_system_prompt is not None else self.llm.system_prompt
            conversation = Conversation(self.llm, session.say, hub.publish, sessionid, prompt, self.opt.llm_history)
            hub.observe(conversation.on_event)  # its history keeps what was heard
            self.chats[sessionid] = conversation
        for hook in self.on_session_open:
            hook(session, hub)
        return session

    async def open_background(self, outputs: list[tuple[str, str | None, dict[str, str]]],
                              address: str | None = None, look: SessionLook | None = None) -> int:
        """A session without a browser: its clock runs at once and feeds `outputs` ((kind,
        url, options) triples). Returns its id; OutputError (nothing left open) when an output
        cannot start."""
        self._admit()
        if address is not None:
            self.limits.take("session", address)
        sessionid = self._new_sessionid()
        if address is not None:
            self._address[sessionid] = address
        try:
            session = await self._build_session(sessionid, look)
        except BaseException:
            self._release_address(sessionid)
            raise
        self.background.add(sessionid)
        session.start()
        session.player.start_clock()
        try:
            for kind, url, options in outputs:
                await self.outputs[sessionid].add(kind, url, **options)
        except BaseException:
            await self.close_session(sessionid, "an output could not start")
            raise
        log.info("session %s opened in the background with outputs %s (%d live)", sessionid,
                 ", ".join(kind for kind, _, _ in outputs) or "none", len(self.sessions))
        return sessionid

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
                if sessionid in self._pending:
                    self._pending.discard(sessionid)
                    self.limits.release("pending offer", self._address[sessionid])
                if sessionid in self.peers and sessionid not in self._watchers:
                    self._watchers[sessionid] = loop.create_task(
                        peerwatch.watch_reports(pc, vanished), name=f"peerwatch-{sessionid}"
                    )
            elif state in ("failed", "closed"):
                cancel()
                self.request_close(sessionid, f"peer {state}")

    async def open_session(self, request: web.Request) -> web.Response:
        """POST /session {"avatar"?, "outputs"?: ["record", {"type": "rtmp", "url": ...}]}: a
        session without a browser; its id in "sessionid" (as /offer answers)."""
        body = await read_json(request)
        unknown = sorted(set(body) - SESSION_FIELDS)
        if unknown:
            raise ApiError(400, f"unknown fields {[k[:40] for k in unknown[:5]]}; allowed: {', '.join(SESSION_FIELDS)}")
        look = self._look(body)
        outputs = parse_outputs(body.get("outputs", []))
        try:
            sessionid = await self.open_background(outputs, self.limits.address(request), look)
        except OutputError as exc:
            raise ApiError(exc.status, exc.msg) from None
        return web.json_response({"code": 0, "msg": "ok", "sessionid": sessionid, "data": {"sessionid": sessionid}})

    async def end_session(self, request: web.Request) -> web.Response:
        """DELETE /session/{id}: close a session (of either kind), as a browser's close does."""
        sessionid = self.resolve_sessionid(request.match_info["sessionid"])
        if sessionid not in self.sessions:
            raise ApiError(404, f"no session {sessionid}")
        await self.close_session(sessionid, "closed by request")
        return ok()

    async def set_avatar(self, request: web.Request) -> web.Response:
        """POST /set_avatar {sessionid, avatar}: the session shows another avatar of the model
        from its next frames; what it says goes on."""
        body = await read_json(request)
        session = self.get_session(body.get("sessionid"))
        try:
            name = check_name(body.get("avatar"))
            avatar = await offload(request, self.avatars.get, name)
        except AvatarRefused as exc:
            raise ApiError(400, str(exc)) from None
        if session.sessionid not in self.sessions:
            raise ApiError(404, f"session {session.sessionid} ended while its avatar loaded")
        session.set_avatar(name, avatar)
        return ok({"avatar": name})

    async def set_audiotype(self, request: web.Request) -> web.Response:
        """POST /set_audiotype {sessionid, audiotype}: play the session's action (upstream's
        custom video) now; 1 returns to the idle loop."""
        body = await read_json(request)
        session = self.get_session(body.get("sessionid"))
        audiotype = self._audiotype(session, body.get("audiotype"), "audiotype")
        clip = session.stage.clips.get(audiotype)
        if clip is not None and clip.audio is not None:
            await self._interrupt(session)  # its sound replaces the speech, and the answer in flight
        session.play_action(audiotype, extra_fields(body, {"sessionid", "audiotype", "reinit"}))
        return ok({"audiotype": audiotype})

    def _audiotype(self, session: BaseReal, value: Any, field: str) -> int:
        """One of the session's actions, or 400 naming those it has."""
        clips = session.stage.clips
        if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 8:
            value = int(value)  # upstream's pages send form values as strings
        if type(value) is not int:
            raise ApiError(400, f"field '{field}' must be a whole number (an audiotype), got {shown(value)}")
        if value not in clips and value != actions.IDLE_AUDIOTYPE:
            known = ", ".join(map(str, sorted(clips))) or "none (--customvideo_config or custom_config at /offer)"
            raise ApiError(400, f"session {session.sessionid} has no action {value}; its actions: {known}")
        return value

    async def ice_servers(self, _: web.Request) -> web.Response:
        """GET /ice_servers: the STUN/TURN servers the page's peer connection should use."""
        return ok({"iceServers": self.opt.ice})

    async def human(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        session = self.get_session(body.get("sessionid"))
        text = require_str(body, "text")
        voice = self._request_voice(body)
        kind = body.get("type", "echo")
        if kind not in ("echo", "chat"):
            raise ApiError(400, f"field 'type' must be 'echo' or 'chat', got {shown(kind)}")
        conversation = self._conversation(session) if kind == "chat" else None
        datainfo = extra_fields(body, HUMAN_FIELDS)
        if body.get("action") is not None:
            datainfo["action"] = self._audiotype(session, body["action"], "action")
        if optional_bool(body, "interrupt"):
            await self._interrupt(session)
        session.reply_requested()
        try:
            if conversation is not None:
                await self._ask(conversation, text, datainfo, voice)
            else:
                session.say(text, datainfo, voice)
        except SpeechRefused as exc:
            raise ApiError(exc.status, exc.msg) from None
        return ok()

    def _request_voice(self, body: dict) -> Voice | None:
        """The request's {"tts": ...} voice, made safe for the engine (names and files of the
        voices folder only)."""
        voice = httpapi.optional_voice(body)
        if voice is None:
            return None
        try:
            return self.tts_engine.request_voice(voice, self.voices_dir)
        except VoiceRefused as exc:
            raise ApiError(400, str(exc)) from None

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
        limit = int(self.opt.max_upload_mb * 1024 * 1024)
        if request.content_length is not None and request.content_length > limit + UPLOAD_FIELD_LIMIT * 4:
            raise ApiError(413, f"upload is larger than {self.opt.max_upload_mb:g} MB (--max_upload_mb)")
        address = self.limits.address(request)
        self.limits.take("upload", address)
        try:
            fields, data, filename = await read_upload(request, limit, self.opt.upload_timeout)
            session = self.get_session(fields.get("sessionid"))
            if data is None:
                raise ApiError(400, "missing file field 'file'")
            try:
                audio = await self.uploads.decode(
                    data, filename, MAX_UPLOAD_SECONDS, lambda *args: offload(request, *args)
                )
            except UploadRefused as exc:
                raise ApiError(400, str(exc)) from None
            except DecoderBusy as exc:
                raise ApiError(503, str(exc)) from None
            finally:
                big = len(data) > TRIM_AFTER_BYTES
                data = None  # the upload's bytes are not needed past the decoder
                if big:
                    await offload(request, trim_memory)
        finally:
            self.limits.release("upload", address)
        try:
            session.say_audio(audio, {"file": filename})
        except SpeechRefused as exc:
            raise ApiError(exc.status, exc.msg) from None
        return ok()

    async def interrupt_talk(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        await self._interrupt(self.get_session(body.get("sessionid")))
        return ok()

    async def sse(self, request: web.Request) -> web.StreamResponse:
        """GET /sse?sessionid=N: the session's events as Server-Sent Events."""
        sessionid = self.resolve_sessionid(request.query.get("sessionid"))
        hub = self.events.get(sessionid)
        if hub is None or sessionid not in self.sessions:
            raise ApiError(404, f"no session {sessionid}; open one with POST /offer")
        if self._streams >= MAX_EVENT_STREAMS:
            raise ApiError(503, f"the server has {self._streams} event streams open (its limit); try again later")
        address = self.limits.address(request)
        self.limits.take("event stream", address)
        self._streams += 1
        try:
            return await events.stream(request, hub)
        except events.TooManyListeners as exc:
            raise ApiError(429, str(exc)) from None
        finally:
            self._streams -= 1
            self.limits.release("event stream", address)

    async def is_speaking(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        return ok(self.get_session(body.get("sessionid")).is_speaking)

    async def stats(self, request: web.Request) -> web.Response:
        """Per-session counters for operators and bench/: slots rendered in time vs late, and
        how the sound keeps up with the clock.

        Session ids are left out on purpose: they are the sessions' only credential.
        """
        return ok({
            "capacity": self.max_sessions,
            "event_streams": self._streams,
            "uploads": {"decoded": self.uploads.decoded, "refused": self.uploads.refused},
            "sessions": [
                {
                    "speaking": s.is_speaking,
                    "slots_played": s.player.slots_played,
                    "slots_missed": s.player.slots_missed,
                    "frames_fresh": s.player.frames_fresh,
                    "frames_repeated": s.player.frames_repeated,
                    "idle_units_dropped": s.player.idle_units_dropped,
                    "frames_sent": s.player.frames_sent,
                    "video_slots_skipped": s.player.video_slots_skipped,
                    "audio_packets_sent": s.player.audio_packets_sent,
                    "audio_packets_skipped": s.player.audio_packets_skipped,
                    "audio_lag_ms": round(1000 * s.player.audio_lag_s, 1),
                    "audio_lag_max_ms": round(1000 * s.player.audio_lag_max_s, 1),
                    "events_late": s.player.events_late,
                    "track_errors": s.player.track_errors,
                    "background": s.sessionid in self.background,
                    "outputs": self.outputs[s.sessionid].states() if s.sessionid in self.outputs else [],
                    "voice": self.inputs[s.sessionid].describe() if s.sessionid in self.inputs else None,
                }
                for s in self.sessions.values()
            ],
        })


@dataclass(frozen=True)
class SessionLook:
    """What a new session shows: an avatar by name (None: --avatar_id) and its own actions."""

    avatar: str | None = None
    custom_config: list[dict] | None = None


def parse_outputs(value: Any) -> list[tuple[str, str | None, dict[str, str]]]:
    """POST /session's "outputs": names, or {"type", "url", "token"} objects; (kind, url,
    options) triples."""
    if not isinstance(value, list) or len(value) > 8:
        raise ApiError(400, "field 'outputs' must be a list of at most 8 outputs")
    parsed: list[tuple[str, str | None, dict[str, str]]] = []
    for item in value:
        if isinstance(item, str):
            item = {"type": item}
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            raise ApiError(400, f"each output must be a name or {{\"type\": name, \"url\": ...}}; "
                                f"the outputs are: {', '.join(OUTPUTS)}")
        if item["type"] not in OUTPUTS:
            raise ApiError(400, f"unknown output {shown(item['type'])}; choose one of: {', '.join(OUTPUTS)}")
        url = item.get("url")
        if url is not None and (not isinstance(url, str) or len(url) > 2048):
            raise ApiError(400, "an output's 'url' must be a string of at most 2048 characters")
        unknown = set(item) - {"type", "url", "token"}
        if unknown:
            raise ApiError(400, f"an output has unknown fields {sorted(k[:40] for k in unknown)[:5]}; "
                                "allowed: type, url, token")
        token = item.get("token")
        if token is not None and not isinstance(token, str):
            raise ApiError(400, "an output's 'token' must be a string")
        parsed.append((item["type"], url, {"token": token} if token else {}))
    return parsed


async def read_upload(request: web.Request, limit: int, timeout_s: float) -> tuple[dict[str, str], bytes | None, str]:
    """The fields of a multipart upload, read as they arrive: the file (at most `limit`
    bytes), its cleaned filename and the small text fields. 413 / 408 / 400 on a body that is
    too big, too slow or not a form."""
    fields: dict[str, str] = {}
    data: bytes | None = None
    filename = ""
    try:
        async with asyncio.timeout(timeout_s):
            reader = await request.multipart()
            while True:
                part = await reader.next()
                if part is None:
                    break
                name = part.name or ""
                if name == "file":
                    too_big = f"upload is larger than {limit / 2**20:g} MB (--max_upload_mb)"
                    data = await read_part(part, limit, too_big)
                    filename = clean_text(part.filename or "")[:FILENAME_LIMIT]
                else:
                    value = await read_part(part, UPLOAD_FIELD_LIMIT, f"form field {shown(name)} is too long")
                    fields[clean_text(name)[:64]] = clean_text(value.decode("utf-8", "replace"))
    except TimeoutError:
        raise ApiError(408, f"the upload did not arrive within {timeout_s:g} s (--upload_timeout)") from None
    except (ValueError, AssertionError, KeyError, HttpProcessingError) as exc:
        raise ApiError(400, f"not a multipart form: {shown(str(exc), 80)}") from None
    return fields, data, filename


def trim_memory() -> None:
    """Hand freed heap back to the system after a big upload (glibc keeps it otherwise)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


LIVE = web.AppKey("live", LiveTalking)
CONTROL_THREADS = 4  # session set-up and close, big JSON, SDP checks, upload hand-off


async def index_page(_: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB_DIR / "index.html")


class AccessLogger(AbstractAccessLogger):
    """The access log without query strings: /sse?sessionid=...&token=... carries the
    session's only credential and maybe the API token."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, duration: float) -> None:
        self.logger.info(
            '%s "%s %s" %d %.3fs', request.remote, request.method, request.rel_url.path, response.status, duration
        )


# How the HTTP server treats connections: one that sends no complete request within
# keepalive_timeout is closed (slow or absent headers), and the rest of a refused body is
# drained for at most lingering_time.
SERVER_OPTIONS: dict[str, Any] = {"access_log_class": AccessLogger, "keepalive_timeout": 15.0, "lingering_time": 2.0}


def build_app(opt: argparse.Namespace) -> web.Application:
    live = LiveTalking(opt)
    control = ThreadPoolExecutor(
        CONTROL_THREADS, thread_name_prefix="control",
        initializer=priority.lower_current_thread, initargs=(priority.CONTROL,),
    )
    live.set_pools(control)
    policy = access.AccessPolicy(access.api_token(opt.api_token), opt.cors, set())
    guard = access.AdminGuard(access.admin_token(opt.admin_token), opt.cors, live.limits)
    app = web.Application(
        client_max_size=httpapi.JSON_LIMIT,  # handlers read bodies themselves, with their own limits
        middlewares=[guard.middleware(), policy.middleware(), httpapi.envelope_middleware(opt.max_upload_mb)],
    )
    app[LIVE] = live
    app[CONTROL_POOL] = control

    def api(method: str, path: str, handler: Any) -> None:
        app.router.add_route(method, path, handler)
        policy.api_paths.add(path)

    api("POST", "/offer", live.offer)
    api("POST", "/human", live.human)
    api("POST", "/humanaudio", live.humanaudio)
    api("POST", "/interrupt_talk", live.interrupt_talk)
    api("POST", "/is_speaking", live.is_speaking)
    api("GET", "/stats", live.stats)
    api("GET", "/sse", live.sse)
    api("POST", "/session", live.open_session)
    api("DELETE", "/session/{sessionid}", live.end_session)
    api("GET", "/ice_servers", live.ice_servers)
    api("POST", "/asr_mode", live.asr_mode)
    api("POST", "/set_avatar", live.set_avatar)
    api("POST", "/set_audiotype", live.set_audiotype)
    OutputsApi(live).add_routes(api)

    def admin_route(method: str, path: str, handler: Any) -> None:
        app.router.add_route(method, path, handler)
        guard.paths.add(path)

    tasks = avatar_tasks.AvatarTasks(opt, opt.model)
    tasks.on_built.append(live.avatars.forget)  # an overwritten avatar is loaded afresh
    admin.AdminApi(live).add_routes(admin_route)
    tasks.add_routes(admin_route)
    app.router.add_get("/", index_page)
    app.router.add_static("/", WEB_DIR)
    if policy.needs_token:
        log.info("API calls need the API token (--api_token / %s)", access.TOKEN_ENV)
    if guard.needs_token:
        log.info("admin routes need the admin token (--admin_token / %s)", access.ADMIN_TOKEN_ENV)
    else:
        log.info("admin routes (/api/admin/*, /api/avatar/*, /metrics) answer on loopback only; "
                 "set --admin_token to call them from elsewhere")

    async def on_startup(_: web.Application) -> None:
        loop = asyncio.get_running_loop()
        # aiortc encodes every video frame in the loop's default executor: it gets a pool of
        # its own, with a thread per session, that nothing else of ours queues work in.
        media = ThreadPoolExecutor(
            opt.max_session + 2, thread_name_prefix="media",
            initializer=priority.lower_current_thread, initargs=(priority.ENCODE,),
        )
        loop.set_default_executor(media)
        app[MEDIA_POOL] = media
        live.capacity.start()
        await tasks.start()
        loop.run_in_executor(control, live.uploads.start)  # the decoders' imports, off the way
        if opt.transport != "webrtc":
            sessionid = await live.open_background([(opt.transport, opt.push_url, {})])
            log.info("background session %s streams to %s (API calls may name it as session %d)",
                     sessionid, opt.transport, BACKGROUND_ALIAS)

    async def on_shutdown(_: web.Application) -> None:
        await tasks.close()
        await live.close_all()
        if live.llm is not None:
            await live.llm.aclose()
        if live.stt is not None:
            await live.stt.aclose()

    async def on_cleanup(_: web.Application) -> None:
        await live.capacity.stop()
        await asyncio.get_running_loop().run_in_executor(control, live.uploads.close)
        control.shutdown(wait=True, cancel_futures=True)
        if MEDIA_POOL in app:
            app[MEDIA_POOL].shutdown(wait=False)

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app


MEDIA_POOL = web.AppKey("media_pool", ThreadPoolExecutor)


def raise_open_files_limit() -> None:
    """Many clients (and their media sockets) need many files: use the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, str(level).upper(), logging.INFO), handlers=[handler])


def main(argv: list[str] | None = None) -> int:
    opt = parse_args(argv)
    setup_logging(opt.log_level)
    config.log_notes(opt)  # keys loaded from --config / .env (names only, never values)
    raise_open_files_limit()
    try:
        app = build_app(opt)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        log.error("%s", exc)
        return 2
    log.info("open http://localhost:%d/ in a browser", opt.listenport)
    try:
        web.run_app(app, host=opt.host, port=opt.listenport, print=None, **SERVER_OPTIONS)
    except OutputError as exc:  # --transport's output could not start
        log.error("cannot start: %s", exc.msg)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
