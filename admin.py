"""The operator's view of the running service: its sessions (listed, ended), its settings with
every secret redacted, and Prometheus metrics.

Every route here is added through the admin guard (access.AdminGuard): the admin token, or
loopback only. Nothing here blocks the event loop: each answer reads counters the sessions
already keep, and the per-session samples behind `fresh_fps` are taken by a 1 s timer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from aiohttp import web

import metrics
from httpapi import ApiError, ok

log = logging.getLogger(__name__)

Route = Callable[[str, str, Any], None]

REDACTED = "***"
# Setting names (and nested keys) that hold a secret: shown as *** when set.
SECRET_NAME = re.compile(r"token|key|secret|passw|credential|auth|signature", re.IGNORECASE)
# Environment variables whose values are secrets, never shown wherever they turn up (narrower:
# PWD or SSH_AUTH_SOCK hold paths).
SECRET_ENV = re.compile(r"token|secret|passw|api_?key|access_?key|private_?key|credential", re.IGNORECASE)
# URL query (and fragment) parameters that carry one: signed URLs, stream keys, sessions.
SECRET_PARAM = re.compile(r"token|key|secret|pass|pwd|sig|auth|credential|session|^code$", re.IGNORECASE)
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s\"'<>]+")
# Streaming URLs whose last path segment is the stream key (rtmp://host/app/KEY).
KEY_IN_PATH_SCHEMES = {"rtmp", "rtmps", "rtmpt", "rtmpe", "srt"}
JSON_SETTINGS = {"ice_servers"}  # settings given as JSON text, shown (redacted) as JSON
MIN_SCRUBBED = 4  # shorter secrets are not searched for in other text (they would hit words)

SAMPLE_EVERY_S = 1.0
FPS_SAMPLES = 6  # ~5 s of fresh-frame samples per session
FPS_MIN_SPAN_S = 0.5  # a rate over less time than this is noise
LATENCY_BUCKETS = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
RECORDING_STATES = {"starting", "running"}
COUNTED = ("frames_sent", "frames_fresh", "slots_missed")  # player counters kept past a session's close
ERROR_SOURCES = ("tts", "llm", "asr")


# --- config, redacted -------------------------------------------------------------------------
def redacted_config(settings: Mapping[str, Any], env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The settings as JSON-able values with every secret replaced by ***: secret-named
    settings and keys, credentials in URLs (userinfo, key-like query parameters, stream keys),
    and any other text that contains a secret's value (a setting's or the environment's)."""
    secrets = _secret_values(settings, env)
    shown: dict[str, Any] = {}
    for name, value in settings.items():
        if not isinstance(name, str) or name.startswith("_"):
            continue
        if name in JSON_SETTINGS and isinstance(value, str):
            value = _json_or_text(value)
        item = _redact(value, name)
        if item is not _OMIT:
            shown[name] = _scrub(item, secrets)
    return shown


_OMIT = object()  # a value JSON cannot carry: left out


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def _secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name))


def _redact(value: Any, name: str = "") -> Any:
    if name and _secret_name(name):
        return REDACTED if value not in (None, "", [], {}) else value
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, PurePath):
        return redact_text(str(value))
    if isinstance(value, Mapping):
        items = {str(k): _redact(v, str(k)) for k, v in value.items()}
        return {k: v for k, v in items.items() if v is not _OMIT}
    if isinstance(value, (list, tuple, set, frozenset)):
        values = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        return [v for v in (_redact(v) for v in values) if v is not _OMIT]
    return _OMIT


def redact_text(text: str) -> str:
    """`text` with every URL in it redacted (see redact_url)."""
    return _URL.sub(lambda m: redact_url(m.group(0)), text)


def redact_url(url: str) -> str:
    """A URL without its credentials: `user:***@`, key-like query parameters' values, and a
    streaming URL's stream key; a URL that cannot be parsed is hidden whole."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
    except ValueError:
        return REDACTED
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        netloc = f"{userinfo.split(':', 1)[0]}:{REDACTED}@{host}" if ":" in userinfo else f"{REDACTED}@{host}"
    path = parts.path
    segments = path.split("/")
    if parts.scheme.lower() in KEY_IN_PATH_SCHEMES and len(segments) >= 3 and segments[-1]:
        path = "/".join([*segments[:-1], REDACTED])
    return urlunsplit((parts.scheme, netloc, path, _redact_params(parts.query), _redact_params(parts.fragment)))


def _redact_params(query: str) -> str:
    pieces = []
    for piece in query.split("&") if query else []:
        name, sep, _ = piece.partition("=")
        pieces.append(f"{name}={REDACTED}" if sep and SECRET_PARAM.search(unquote(name)) else piece)
    return "&".join(pieces)


def _secret_values(settings: Mapping[str, Any], env: Mapping[str, str]) -> set[str]:
    """Every secret string the settings and the environment hold, to be found in other text."""
    found: set[str] = set()

    def walk(value: Any, secret: bool) -> None:
        if isinstance(value, str):
            if secret:
                found.add(value)
            for match in _URL.finditer(value):
                _add_url_secrets(match.group(0), found)
            if not secret and value[:1] in "[{":
                parsed = _json_or_text(value)
                if not isinstance(parsed, str):
                    walk(parsed, False)
        elif isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, secret or _secret_name(str(k)))
        elif isinstance(value, (list, tuple, set, frozenset)):
            for v in value:
                walk(v, secret)

    walk(dict(settings), False)
    found.update(v for k, v in env.items() if SECRET_ENV.search(k) and v)
    return {s for s in found if len(s) >= MIN_SCRUBBED}


def _add_url_secrets(url: str, found: set[str]) -> None:
    """What redact_url hides of `url`, to be hidden wherever else it turns up."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
    except ValueError:
        return
    hidden: list[str] = []
    if "@" in netloc:
        userinfo = netloc.rsplit("@", 1)[0]
        hidden.append(userinfo.split(":", 1)[1] if ":" in userinfo else userinfo)
    segments = parts.path.split("/")
    if parts.scheme.lower() in KEY_IN_PATH_SCHEMES and len(segments) >= 3:
        hidden.append(segments[-1])
    for query in (parts.query, parts.fragment):
        for piece in query.split("&") if query else []:
            name, sep, value = piece.partition("=")
            if sep and SECRET_PARAM.search(unquote(name)):
                hidden.append(value)
    for value in hidden:
        found.update((value, unquote(value)))


def _scrub(value: Any, secrets: set[str]) -> Any:
    """`value` (already redacted) with any secret's value that is left in its text replaced."""
    if not secrets:
        return value
    if isinstance(value, str):
        for secret in sorted(secrets, key=len, reverse=True):
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {_scrub(k, secrets): _scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, secrets) for v in value]
    return value


# --- what is kept per session --------------------------------------------------------------------
@dataclass
class Tracked:
    """A session from its open to its close: when it opened and its recent fresh-frame counts."""

    session: Any
    hub: Any
    opened: float
    samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=FPS_SAMPLES))

    def sample(self, now: float) -> None:
        self.samples.append((now, self.session.player.frames_fresh))

    def fresh_fps(self, now: float) -> float | None:
        """Fresh frames per second since the oldest sample kept (a few seconds); None at first."""
        if not self.samples:
            return None
        then, fresh = self.samples[0]
        span = now - then
        if span < FPS_MIN_SPAN_S:
            return None
        return round((self.session.player.frames_fresh - fresh) / span, 1)


class ServiceCounters:
    """Totals that only grow: the player counters of open sessions plus those of closed ones,
    the reply latencies, and error events by source. Event loop only."""

    def __init__(self) -> None:
        self.tracked: dict[int, Tracked] = {}
        self.closed_totals = dict.fromkeys(COUNTED, 0)
        self.errors = dict.fromkeys(ERROR_SOURCES, 0)
        self.latency = metrics.Histogram(LATENCY_BUCKETS)

    def opened(self, session: Any, hub: Any, now: float) -> None:
        tracked = Tracked(session, hub, now)
        tracked.sample(now)
        self.tracked[session.sessionid] = tracked
        session.on_reply_latency = self.latency.observe
        hub.observe(lambda event: self.on_event(session.sessionid, event))

    def on_event(self, sessionid: int, event: dict) -> None:
        status = event.get("status")
        if status == "error":
            source = event.get("source")
            # The TTS worker's errors name no source: every error not the chat's or the
            # speech input's is the TTS engine's.
            self.errors[source if source in ("llm", "asr") else "tts"] += 1
        elif status == "closed":
            self.closed(sessionid)

    def closed(self, sessionid: int) -> None:
        """Fold a closed session's counters into the totals (its hub closes after its threads stop)."""
        tracked = self.tracked.pop(sessionid, None)
        if tracked is None:
            return
        for name in COUNTED:
            self.closed_totals[name] += getattr(tracked.session.player, name)

    def total(self, name: str) -> int:
        return self.closed_totals[name] + sum(getattr(t.session.player, name) for t in self.tracked.values())

    def sample_all(self, now: float) -> None:
        for sessionid, tracked in list(self.tracked.items()):
            if tracked.hub.closed:  # closed without its event reaching us: fold it all the same
                self.closed(sessionid)
            else:
                tracked.sample(now)


# --- the routes ------------------------------------------------------------------------------------
class AdminApi:
    """GET/DELETE /api/admin/sessions, GET /api/admin/config and GET /metrics."""

    def __init__(self, live: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.live = live
        self.counters = ServiceCounters()
        self._clock = clock
        self._timer: asyncio.TimerHandle | None = None
        live.on_session_open.append(self._session_opened)

    def add_routes(self, route: Route) -> None:
        """`route(method, path, handler)` adds an admin-guarded route."""
        route("GET", "/api/admin/sessions", self.sessions)
        route("DELETE", "/api/admin/sessions/{sessionid}", self.end_session)
        route("GET", "/api/admin/config", self.config)
        route("GET", "/metrics", self.metrics)

    # --- sampling --------------------------------------------------------------------------
    def _session_opened(self, session: Any, hub: Any) -> None:
        self.counters.opened(session, hub, self._clock())
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(SAMPLE_EVERY_S, self._tick)

    def _tick(self) -> None:
        """Sample every session's fresh frames; the timer stops while no session is open."""
        self.counters.sample_all(self._clock())
        self._timer = None
        if self.counters.tracked:
            self._timer = asyncio.get_running_loop().call_later(SAMPLE_EVERY_S, self._tick)

    # --- handlers --------------------------------------------------------------------------
    async def sessions(self, _: web.Request) -> web.Response:
        now = self._clock()
        return ok([self._describe(sid, s, now) for sid, s in list(self.live.sessions.items())])

    def _describe(self, sessionid: int, session: Any, now: float) -> dict[str, Any]:
        live = self.live
        outputs = live.outputs[sessionid].states() if sessionid in live.outputs else []
        tracked = self.counters.tracked.get(sessionid)
        latency = session.last_reply_latency_s
        return {
            "sessionid": sessionid,
            "model": live.opt.model,
            "avatar": session.avatar_id,
            "outputs": outputs,
            "speaking": bool(session.is_speaking),
            "recording": any(o.get("kind") == "record" and o.get("state") in RECORDING_STATES for o in outputs),
            "fresh_fps": tracked.fresh_fps(now) if tracked is not None else None,
            "slots_missed": session.player.slots_missed,
            "last_reply_latency_ms": None if latency is None else round(1000 * latency, 1),
            "background": sessionid in live.background,
            "browser": sessionid in live.peers,
            "listening": sessionid in live.inputs,
            "age_s": round(now - tracked.opened, 1) if tracked is not None else None,
        }

    async def end_session(self, request: web.Request) -> web.Response:
        """DELETE /api/admin/sessions/{id}: close it as a browser's close does."""
        sessionid = self.live.resolve_sessionid(request.match_info["sessionid"])
        if sessionid not in self.live.sessions:
            raise ApiError(404, f"no session {sessionid}")
        log.info("session %s ended by the admin", sessionid)
        await self.live.close_session(sessionid, "ended by the admin")
        return ok({"sessionid": sessionid})

    async def config(self, _: web.Request) -> web.Response:
        return ok(redacted_config(vars(self.live.opt)))

    async def metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=self.exposition().encode(), headers={"Content-Type": metrics.CONTENT_TYPE})

    def exposition(self) -> str:
        """The /metrics body: what is open now, and totals since the server started."""
        live, counters = self.live, self.counters
        sessions = list(live.sessions)
        background = sum(1 for sid in sessions if sid in live.background)
        out = metrics.Exposition()
        out.gauge("livetalking_sessions", "Open sessions, by kind (browser: a WebRTC peer; background: none).",
                  [({"kind": "browser"}, len(sessions) - background), ({"kind": "background"}, background)])
        out.gauge("livetalking_sessions_speaking", "Sessions whose avatar is speaking now.",
                  sum(1 for s in list(live.sessions.values()) if s.is_speaking))
        out.gauge("livetalking_session_capacity", "Sessions this server admits at once.", live.max_sessions)
        out.gauge("livetalking_event_streams", "Open /sse event streams.",
                  sum(hub.listener_count for hub in list(live.events.values())))
        out.counter("livetalking_frames_sent_total", "Video frames sent to sessions' tracks and outputs.",
                    counters.total("frames_sent"))
        out.counter("livetalking_frames_fresh_total", "Video slots that showed their own newly rendered frame.",
                    counters.total("frames_fresh"))
        out.counter("livetalking_slots_missed_total", "Playback slots the renderer was late for (silence played).",
                    counters.total("slots_missed"))
        out.histogram("livetalking_reply_latency_seconds",
                      "Time from a request to speak (text, upload, chat question) to its first audio.",
                      counters.latency)
        out.counter("livetalking_errors_total", "Error events published to sessions, by source.",
                    _labelled("source", counters.errors))
        out.counter("livetalking_uploads_total", "Uploaded audio files, by result.",
                    [({"result": "decoded"}, live.uploads.decoded), ({"result": "refused"}, live.uploads.refused)])
        return out.text()


def _labelled(label: str, values: Mapping[str, float]) -> Iterable[tuple[dict[str, str], float]]:
    return [({label: name}, value) for name, value in values.items()]
