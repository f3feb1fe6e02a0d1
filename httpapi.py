"""The HTTP API's envelope and request validation, shared by every handler.

Success: {"code": 0, "msg": "ok"[, "data": ...]}; error: {"code": -1, "msg": "..."} with a real
HTTP status, as upstream LiveTalking clients expect.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ttsreal import Voice

log = logging.getLogger(__name__)

# Unguessable ids that still survive a JavaScript Number round trip (parseInt in clients).
SESSION_ID_MIN = 10**15
SESSION_ID_MAX = 2**53  # exclusive


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


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 that says why not."""
    raw = await request.read()
    try:
        body = json.loads(raw or b"")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(body).__name__}")
    return body


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
        raise ApiError(400, f"field '{name}' must be true or false, got {json.dumps(value)}")
    return value


def extra_fields(body: dict[str, Any], known: set[str]) -> dict[str, Any]:
    """The fields a caller attached beyond the API's own, echoed back in its session events."""
    return {k: v for k, v in body.items() if k not in known}


def parse_sessionid(value: Any) -> int:
    """A session id given as a JSON number or a numeric string."""
    if value is None:
        raise ApiError(400, "missing field 'sessionid'")
    if isinstance(value, bool) or not isinstance(value, (int, str, float)):
        raise ApiError(400, f"field 'sessionid' must be an integer, got {type(value).__name__}")
    if isinstance(value, float):
        if not value.is_integer():
            raise ApiError(400, f"field 'sessionid' must be an integer, got {value}")
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if not text.isdigit():
            raise ApiError(400, f"field 'sessionid' must be an integer, got '{value}'")
        return int(text)
    return value


VOICE_FIELDS = ("ref_file", "ref_text")


def optional_voice(body: dict[str, Any], name: str = "tts") -> Voice | None:
    """The optional per-request voice {"ref_file": str, "ref_text": str}; None when absent.

    An empty or missing field keeps the server's default (--REF_FILE / --REF_TEXT).
    """
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        allowed = " and/or ".join(VOICE_FIELDS)
        raise ApiError(400, f"field '{name}' must be an object with {allowed}, got {json.dumps(value)}")
    unknown = sorted(set(value) - set(VOICE_FIELDS))
    if unknown:
        raise ApiError(400, f"field '{name}' has unknown keys {unknown}; allowed: {', '.join(VOICE_FIELDS)}")
    fields: dict[str, str | None] = {}
    for key in VOICE_FIELDS:
        item = value.get(key)
        if item is not None and not isinstance(item, str):
            raise ApiError(400, f"field '{name}.{key}' must be a string, got {type(item).__name__}")
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
            return error(exc.status, exc.msg)
        except web.HTTPRequestEntityTooLarge:
            msg = f"upload is larger than {max_upload_mb:g} MB (--max_upload_mb)"
            log.info("%s %s -> 413 %s", request.method, request.path, msg)
            return error(413, msg)
        except web.HTTPException as exc:
            if request.method == "GET" and exc.status == 404:
                raise  # static files: a plain 404 page
            return error(exc.status, exc.reason or "error")
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return error(500, "internal server error; see the server log")

    return middleware
