"""The HTTP API's envelope and request validation, shared by every handler.

Success: {"code": 0, "msg": "ok"[, "data": ...]}; error: {"code": -1, "msg": "..."} with a real
HTTP status, as upstream LiveTalking clients expect.

Bodies are treated as hostile: their size is checked against a per-endpoint limit before they
are read (and while they arrive, for bodies that do not say their length), they must arrive
within a deadline, and large ones are parsed in the control thread pool, never on the event
loop that paces every stream. Every string in them is cleaned (safetext) before a handler
sees it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any

from aiohttp import web

from safetext import UnsafeJSON, clean_json, shown
from ttsreal import Voice

log = logging.getLogger(__name__)

# Unguessable ids that still survive a JavaScript Number round trip (parseInt in clients).
SESSION_ID_MIN = 10**15
SESSION_ID_MAX = 2**53  # exclusive
_SESSION_ID = re.compile(r"[0-9]{1,16}")  # ASCII digits only: "²" is a digit to str.isdigit

JSON_LIMIT = 256 * 1024  # bytes of a JSON body: room for a long text, nothing like an attack
BODY_TIMEOUT_S = 10.0  # a JSON body must have arrived this long after its headers
PARSE_INLINE_BYTES = 16 * 1024  # smaller bodies parse on the loop faster than a thread hop
EXTRA_FIELDS_LIMIT = 4096  # bytes of the caller's own fields, echoed in every event they cause
EXTRA_FIELDS_MAX = 32

CONTROL_POOL = web.AppKey("control_pool", Executor)  # threads for request work off the loop


class ApiError(Exception):
    """A request the server refuses, with the HTTP status and a message naming the problem."""

    def __init__(self, status: int, msg: str) -> None:
        super().__init__(msg)
        self.status = status
        self.msg = msg


def ok(data: Any = None) -> web.Response:
    body: dict[str, Any] = {"code": 0, "msg": "ok"}
    if data is not None:
        body["data"] = data
    return web.json_response(body)


def error(status: int, msg: str) -> web.Response:
    return web.json_response({"code": -1, "msg": msg}, status=status)


async def offload(request: web.Request, func: Callable[..., Any], *args: Any) -> Any:
    """Run blocking work in the app's control pool (never the pool that encodes media)."""
    pool = request.app.get(CONTROL_POOL)
    return await asyncio.get_running_loop().run_in_executor(pool, func, *args)


async def read_body(request: web.Request, limit: int, timeout_s: float = BODY_TIMEOUT_S) -> bytes:
    """The whole body, refused with 413 as soon as it is known to pass `limit` bytes (before
    reading, when the client says its length) and with 408 when it is slower than `timeout_s`."""
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"request body is {request.content_length} bytes; the limit here is {limit}")
    buf = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                chunk = await request.content.readany()
                if not chunk:
                    break
                buf += chunk
                if len(buf) > limit:
                    raise ApiError(413, f"request body is over {limit} bytes, the limit here")
    except TimeoutError:
        raise ApiError(408, f"request body did not arrive within {timeout_s:g} s") from None
    return bytes(buf)


def decode_json_object(raw: bytes) -> dict[str, Any]:
    """Parse and clean a JSON object body; ApiError(400) saying what is wrong with it."""
    try:
        body = json.loads(raw or b"")
    except RecursionError:
        raise ApiError(400, "request body is not valid JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {shown(str(exc), 120)}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(body).__name__}")
    try:
        return clean_json(body)
    except UnsafeJSON as exc:
        raise ApiError(400, f"request body refused: {exc}") from None


async def read_json(request: web.Request, limit: int = JSON_LIMIT) -> dict[str, Any]:
    """The request body as a cleaned JSON object, or an error that says why not."""
    if request.content_type != "application/json":
        # A browser sends other types cross-site without asking (a form's text/plain), so only
        # JSON marked as JSON is taken: a cross-site page must then pass a CORS preflight.
        raise ApiError(415, f"send the body as JSON with Content-Type: application/json "
                            f"(got {shown(request.content_type or 'none')})")
    raw = await read_body(request, limit)
    if len(raw) <= PARSE_INLINE_BYTES:
        return decode_json_object(raw)
    return await offload(request, decode_json_object, raw)


FILENAME_LIMIT = 255  # characters of an uploaded file's name kept


async def read_part(part: Any, limit: int, too_big: str) -> bytes:
    """A multipart form part read as it arrives, refused with 413 `too_big` past `limit` bytes
    (a nested form with 400)."""
    if not hasattr(part, "read_chunk"):
        raise ApiError(400, "nested multipart forms are not accepted")
    buf = bytearray()
    while chunk := await part.read_chunk(65536):
        buf += chunk
        if len(buf) > limit:
            raise ApiError(413, too_big)
    return bytes(buf)


def require_str(body: dict[str, Any], name: str, allow_empty: bool = False) -> str:
    if name not in body:
        raise ApiError(400, f"missing field '{name}'")
    value = body[name]
    if not isinstance(value, str):
        raise ApiError(400, f"field '{name}' must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise ApiError(400, f"field '{name}' is empty")
    return value


def optional_bool(body: dict[str, Any], name: str, default: bool = False) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise ApiError(400, f"field '{name}' must be true or false, got {shown(json.dumps(value))}")
    return value


def extra_fields(body: dict[str, Any], known: set[str]) -> dict[str, Any]:
    """The fields a caller attached beyond the API's own, echoed back in its session events;
    bounded, since every event of the request carries them to every listener."""
    extra = {k: v for k, v in body.items() if k not in known}
    if len(extra) > EXTRA_FIELDS_MAX:
        raise ApiError(413, f"{len(extra)} extra fields; at most {EXTRA_FIELDS_MAX} are echoed in events")
    size = len(json.dumps(extra, ensure_ascii=False).encode())
    if size > EXTRA_FIELDS_LIMIT:
        raise ApiError(413, f"the extra fields are {size} bytes of JSON; at most {EXTRA_FIELDS_LIMIT} are echoed")
    return extra


def parse_sessionid(value: Any) -> int:
    """A session id given as a JSON number or a numeric string."""
    if value is None:
        raise ApiError(400, "missing field 'sessionid'")
    if isinstance(value, bool) or not isinstance(value, (int, str, float)):
        raise ApiError(400, f"field 'sessionid' must be an integer, got {type(value).__name__}")
    if isinstance(value, float):
        if not value.is_integer():
            raise ApiError(400, f"field 'sessionid' must be an integer, got {shown(value)}")
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if not _SESSION_ID.fullmatch(text):
            raise ApiError(400, f"field 'sessionid' must be an integer, got {shown(value)}")
        return int(text)
    return value


VOICE_FIELDS = ("ref_file", "ref_text")
REF_FILE_LIMIT = 512
REF_TEXT_LIMIT = 2000


def optional_voice(body: dict[str, Any], name: str = "tts") -> Voice | None:
    """The optional per-request voice {"ref_file": str, "ref_text": str}; None when absent.

    An empty or missing field keeps the server's default (--REF_FILE / --REF_TEXT). What a
    ref_file may name depends on the engine (TTSEngine.request_voice checks it).
    """
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        allowed = " and/or ".join(VOICE_FIELDS)
        raise ApiError(400, f"field '{name}' must be an object with {allowed}, got {shown(json.dumps(value))}")
    unknown = sorted(set(value) - set(VOICE_FIELDS))
    if unknown:
        raise ApiError(400, f"field '{name}' has unknown keys {[k[:40] for k in unknown[:5]]}; "
                            f"allowed: {', '.join(VOICE_FIELDS)}")
    fields: dict[str, str | None] = {}
    for key, limit in zip(VOICE_FIELDS, (REF_FILE_LIMIT, REF_TEXT_LIMIT), strict=True):
        item = value.get(key)
        if item is not None and not isinstance(item, str):
            raise ApiError(400, f"field '{name}.{key}' must be a string, got {type(item).__name__}")
        if item is not None and len(item) > limit:
            raise ApiError(413, f"field '{name}.{key}' is {len(item)} characters; the limit is {limit}")
        fields[key] = item or None
    return Voice(**fields) if any(fields.values()) else None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def envelope_middleware(max_upload_mb: float) -> Callable:
    """Turn every failure of an API call into the envelope with a real status."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            log.info("%s %s -> %d %s", request.method, request.path, exc.status, exc.msg)
            response = error(exc.status, exc.msg)
            if exc.status in (408, 413, 415, 429) or not _body_consumed(request):
                response.force_close()  # do not read (or wait for) the rest of a refused body
            return response
        except web.HTTPRequestEntityTooLarge:
            msg = f"upload is larger than {max_upload_mb:g} MB (--max_upload_mb)"
            log.info("%s %s -> 413 %s", request.method, request.path, msg)
            response = error(413, msg)
            response.force_close()
            return response
        except web.HTTPException as exc:
            if request.method == "GET" and exc.status == 404:
                raise  # static files: a plain 404 page
            return error(exc.status, exc.reason or "error")
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return error(500, "internal server error; see the server log")

    return middleware


def _body_consumed(request: web.Request) -> bool:
    return not request.body_exists or request.content.at_eof()
