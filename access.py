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
- The operator's routes (/api/admin/*, /api/avatar/*, /metrics): `--admin_token` (or
  LIVETALKING_ADMIN_TOKEN) as a bearer token, the API token being no substitute; without one,
  they answer to this machine (loopback) only.
- Routes are guarded by their pattern (`/session/{sessionid}`), never by the path asked for,
  so a route with a parameter in its path is guarded like any other.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import re
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


class _Gate:
    """The checks AccessPolicy and AdminGuard share: which routes they guard (by route pattern),
    other origins and their preflights, and a bearer token compared in constant time."""

    def __init__(self, token: str | None, cors_origins: Iterable[str]) -> None:
        self._token = token.encode() if token else None
        self._origins = set(cors_origins)

    def _guards(self, pattern: str) -> bool:
        raise NotImplementedError

    def _refusal(self, request: web.Request) -> web.Response | None:
        """None when the caller may go on, else the answer that refuses it."""
        raise NotImplementedError

    def middleware(self) -> Callable:
        @web.middleware
        async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
            if not self._guards(await route_pattern(request, self._guards)):
                return await handler(request)
            origin = request.headers.get("Origin")
            cross = origin is not None and not _same_origin(origin, request.host)
            if cross and not self._allowed(origin):
                return _refuse(403, f"cross-origin call from {origin[:80]!r} refused; allow it with --cors_origins")
            if request.method == "OPTIONS":
                return self._preflight(request, origin)
            refusal = self._refusal(request)
            if refusal is not None:
                return refusal
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
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, PATCH, DELETE, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
            response.headers["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE_S)
        return response


async def route_pattern(request: web.Request, wanted: Callable[[str], bool] | None = None) -> str:
    """The pattern of the route a request is for ("/session/{sessionid}"), as routes are
    registered, so a guard keyed by pattern sees every id in the path.

    A request no route of its method matches (a preflight's OPTIONS, a wrong method) has no
    route: the resource whose pattern matches its path, among those `wanted`, names it; else
    its path does (which no pattern with parameters equals)."""
    resource = request.match_info.route.resource
    if resource is not None:
        return resource.canonical
    if wanted is not None:
        for candidate in request.app.router.resources():
            if not wanted(candidate.canonical):
                continue
            _, allowed = await candidate.resolve(request)
            if allowed:  # the path matched; only the method did not
                return candidate.canonical
    return request.path


class AccessPolicy(_Gate):
    """The token, origin and content checks of every API call, as an aiohttp middleware."""

    def __init__(self, token: str | None, cors_origins: Iterable[str], api_paths: set[str]) -> None:
        super().__init__(token, cors_origins)
        self.api_paths = api_paths  # route patterns, filled as the routes are added; static pages are open

    @property
    def needs_token(self) -> bool:
        return self._token is not None

    def _guards(self, pattern: str) -> bool:
        return pattern in self.api_paths

    def _refusal(self, request: web.Request) -> web.Response | None:
        if self._authorized(request):
            return None
        return _refuse(401, "this server needs an API token: send Authorization: Bearer <token>")


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


class AdminGuard(_Gate):
    """Who may call the operator's routes (`paths`: /api/admin/*, /api/avatar/*, /metrics).

    With an admin token: `Authorization: Bearer <admin token>` (or `?token=` on a GET), the API
    token being no substitute. Without one: loopback callers only, asking by a loopback name
    (a page elsewhere whose name a rebinding DNS points at 127.0.0.1 names its own host), with
    no forwarding header naming a client elsewhere (a proxy on this machine relays others)."""

    def __init__(self, token: str | None, cors_origins: Iterable[str], limits: AddressLimits) -> None:
        super().__init__(token, cors_origins)
        self._limits = limits
        self.paths: set[str] = set()  # route patterns, filled as the routes are added

    @property
    def needs_token(self) -> bool:
        return self._token is not None

    def _guards(self, pattern: str) -> bool:
        return pattern in self.paths

    def _allowed(self, origin: str) -> bool:
        # Without an admin token the only credential is being on this machine, which every page
        # open in its browser shares: no other origin may call, whatever --cors_origins says.
        return self._token is not None and super()._allowed(origin)

    def _refusal(self, request: web.Request) -> web.Response | None:
        if self._token is not None:
            if self._authorized(request):
                return None
            return _refuse(401, "this route needs the admin token: send Authorization: Bearer <admin token> "
                                "(--admin_token)")
        if _local_request(request, self._limits.address(request)):
            return None
        return _refuse(403, "admin routes answer only to this machine (loopback) without an admin token; "
                            f"set --admin_token (or {ADMIN_TOKEN_ENV}) to call them from elsewhere")


_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "[::1]", "::1"}
_FORWARDED_FOR = re.compile(r"for=\"?\[?([^\]\";,]*)", re.IGNORECASE)


def _local_request(request: web.Request, client: str) -> bool:
    """The connection, the client a trusted proxy names, every forwarding header's hop and the
    Host asked for are all this machine's."""
    if not (_loopback(request.remote or "") and _loopback(client)):
        return False
    headers = request.headers
    hops = [hop for value in headers.getall("X-Forwarded-For", []) for hop in value.split(",")]
    hops += headers.getall("X-Real-IP", [])
    hops += [m.group(1) for value in headers.getall("Forwarded", []) for m in _FORWARDED_FOR.finditer(value)]
    hops = [hop.strip() for hop in hops]
    if not all(_loopback(h) for h in hops if h):
        return False
    host = request.headers.get("Host", "").strip().lower()
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return name in _LOOPBACK_NAMES or _loopback(name)


def _loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack socket's view of 127.0.0.1
    return ip.is_loopback
