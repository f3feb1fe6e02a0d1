"""Who may call the API, from where, and how much one address may hold at once.

- `--api_token` (or LIVETALKING_API_TOKEN): every API call needs `Authorization: Bearer
  <token>` (`/sse` may carry it as `?token=`, since a browser's EventSource sends no headers),
  compared in constant time; a missing or wrong token is a 401 and is never logged.
- Cross-origin calls: a browser names the page's origin in `Origin`. Calls from the server's
  own pages (same host) and from `--cors_origins` are served, with CORS headers for the
  latter and answers to their preflights; any other origin is refused with 403, so a web page
  elsewhere cannot drive the API through a visitor's browser.
- Per address: sessions open or being connected (`--max_sessions_per_ip`), offers not yet
  connected, uploads in flight and event streams, so one client cannot take every slot.
  Behind a reverse proxy the address is taken from X-Forwarded-For only when the connection
  comes from one of `--forwarded_allow_ips`.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

from aiohttp import web

from httpapi import ApiError, error

log = logging.getLogger(__name__)

TOKEN_ENV = "LIVETALKING_API_TOKEN"
ADMIN_TOKEN_ENV = "LIVETALKING_ADMIN_TOKEN"
PREFLIGHT_MAX_AGE_S = 600

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def api_token(flag: str | None) -> str | None:
    """The token from --api_token, else the environment; None when the API is open."""
    token = flag if flag is not None else os.environ.get(TOKEN_ENV)
    return token or None


def parse_origins(value: str | None) -> set[str]:
    """--cors_origins "https://a.example,https://b.example:8443" (or "*") as a set of origins."""
    origins = set()
    for item in (value or "").split(","):
        item = item.strip().rstrip("/")
        if not item:
            continue
        if item != "*":
            parts = urlsplit(item)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
                raise ValueError(f"--cors_origins: {item!r} is not an origin like https://example.com")
            item = f"{parts.scheme}://{parts.netloc.lower()}"
        origins.add(item)
    return origins


class AccessPolicy:
    """The token, origin and content checks of every API call, as an aiohttp middleware."""

    def __init__(self, token: str | None, cors_origins: Iterable[str], api_paths: set[str]) -> None:
        self._token = token.encode() if token else None
        self._origins = set(cors_origins)
        self.api_paths = api_paths  # filled as the routes are added; static pages are open

    @property
    def needs_token(self) -> bool:
        return self._token is not None

    def middleware(self) -> Callable:
        @web.middleware
        async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.path not in self.api_paths:
                return await handler(request)
            origin = request.headers.get("Origin")
            cross = origin is not None and not _same_origin(origin, request.host)
            if cross and not self._allowed(origin):
                return _refuse(403, f"cross-origin call from {origin[:80]!r} refused; allow it with --cors_origins")
            if request.method == "OPTIONS":
                return self._preflight(request, origin)
            if not self._authorized(request):
                return _refuse(401, "this server needs an API token: send Authorization: Bearer <token>")
            response = await handler(request)
            if cross:
                _cors_headers(response, origin)
            return response

        return check

    def _allowed(self, origin: str) -> bool:
        return "*" in self._origins or origin.rstrip("/").lower() in self._origins

    def _authorized(self, request: web.Request) -> bool:
        if self._token is None:
            return True
        given = ""
        header = request.headers.get("Authorization", "")
        if header[:7].lower() == "bearer ":
            given = header[7:].strip()
        elif request.method == "GET":
            given = request.query.get("token", "")
        return hmac.compare_digest(given.encode("utf-8", "replace"), self._token)

    def _preflight(self, request: web.Request, origin: str | None) -> web.StreamResponse:
        response = web.Response(status=204)
        if origin is not None:
            _cors_headers(response, origin)
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
            response.headers["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE_S)
        return response


def _refuse(status: int, msg: str) -> web.Response:
    response = error(status, msg)
    response.force_close()  # its body, if any, is not read
    return response


def _cors_headers(response: web.StreamResponse, origin: str) -> None:
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Vary"] = "Origin"


def _same_origin(origin: str, host: str) -> bool:
    """The page that calls is served by this server (its host and port, whatever the scheme:
    behind a TLS proxy the page is https while this server sees http)."""
    netloc = urlsplit(origin).netloc.lower()
    return bool(netloc) and netloc == host.lower()


class AddressLimits:
    """Counts, per client address, what it holds; ApiError(429) when it would pass a limit."""

    def __init__(self, sessions: int, pending_offers: int, uploads: int, streams: int,
                 trusted_proxies: Iterable[str] = ()) -> None:
        self.limits = {"session": sessions, "pending offer": pending_offers, "upload": uploads,
                       "event stream": streams}
        self._held: dict[str, Counter[str]] = {kind: Counter() for kind in self.limits}
        self._proxies = [ipaddress.ip_network(p.strip(), strict=False) for p in trusted_proxies if p.strip()]

    def address(self, request: web.Request) -> str:
        """The client's address: the connection's, or X-Forwarded-For's last hop added by a
        trusted proxy."""
        peer = request.remote or "unknown"
        if self._proxies and self._trusted(peer):
            forwarded = request.headers.get("X-Forwarded-For", "")
            hops = [h.strip() for h in forwarded.split(",") if h.strip()]
            for hop in reversed(hops):  # the nearest untrusted hop is the client
                if not self._trusted(hop):
                    return hop[:64]
        return peer

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self._proxies)

    def take(self, kind: str, address: str) -> None:
        held = self._held[kind]
        if held[address] >= self.limits[kind]:
            raise ApiError(429, f"this address already has {held[address]} {kind}s open (limit {self.limits[kind]})")
        held[address] += 1

    def release(self, kind: str, address: str) -> None:
        held = self._held[kind]
        held[address] -= 1
        if held[address] <= 0:
            del held[address]

    def held(self, kind: str, address: str) -> int:
        return self._held[kind][address]


def admin_token(flag: str | None) -> str | None:
    """The token from --admin_token, else the environment; None: admin calls from loopback only."""
    token = flag if flag is not None else os.environ.get(ADMIN_TOKEN_ENV)
    return token or None


class AdminGuard:
    """Who may call the operator's routes (stub, filled in by its owner)."""

    def __init__(self, token: str | None, cors_origins: Iterable[str], limits: AddressLimits) -> None:
        self._token = token
        self.paths: set[str] = set()

    def middleware(self) -> Callable:
        @web.middleware
        async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
            return await handler(request)

        return check
