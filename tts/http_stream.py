"""What the network engines share: one I/O loop, streamed requests, readable errors.

A session's TTS worker is a plain thread that iterates over an engine's audio. The network
side runs as a coroutine on one event loop thread for the whole process (aiohttp, one shared
connection pool, so a cloud's TLS connection is reused between sentences), and hands the
bytes over through a queue as they arrive. That split is what makes interrupt immediate:
`abort()` cancels the coroutine, which closes the connection even while the server is
silent, and wakes the worker at once instead of after its next read.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from audio_stream import BadAudio, StreamDecoder, preview
from ttsreal import TTSError, TTSUnavailable
from voices import AUDIO_SUFFIXES

log = logging.getLogger(__name__)

Emit = Callable[[bytes], None]
Producer = Callable[[Emit], Awaitable[None]]

ERROR_BODY_BYTES = 4096  # read this much of an error response for the message


@dataclass
class Timeouts:
    """How long a network engine may take, per sentence (--tts_connect_timeout and friends).

    connect: to open the connection; first_byte: from the request to its first audio byte
    (a self-hosted engine that writes a whole sentence first needs most of this); stall:
    after that, the longest stretch that may bring fewer than MIN_PROGRESS_BYTES, so a server
    that trickles a byte now and then fails as surely as a silent one.
    """

    connect_s: float = 5.0
    first_byte_s: float = 10.0
    stall_s: float = 5.0


TIMEOUTS = Timeouts()  # the process's settings: load_tts_engine sets them from the flags
MIN_PROGRESS_BYTES = 512  # per stall period; the slowest codec here (MP3 at 32 kbit/s) sends 4 KB/s
WATCH_EVERY_S = 0.25


# --- the I/O loop ------------------------------------------------------------------------------

_loop_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_session: aiohttp.ClientSession | None = None


def io_loop() -> asyncio.AbstractEventLoop:
    """The process's event loop for TTS network I/O, on a daemon thread started on first use."""
    global _loop
    with _loop_lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="tts-io", daemon=True).start()
            atexit.register(_close_session, loop)
            _loop = loop
        return _loop


async def client_session() -> aiohttp.ClientSession:
    """The shared HTTP client; only ever touched from the I/O loop, so it needs no lock."""
    global _session
    if _session is None or _session.closed:
        # trust_env: honour HTTPS_PROXY / NO_PROXY as upstream's requests-based engines did.
        _session = aiohttp.ClientSession(trust_env=True)
    return _session


def _close_session(loop: asyncio.AbstractEventLoop) -> None:
    async def close() -> None:
        if _session is not None:
            await _session.close()

    if loop.is_running():
        try:
            asyncio.run_coroutine_threadsafe(close(), loop).result(2)
        except Exception:  # exiting anyway
            pass


def timeout() -> aiohttp.ClientTimeout:
    """Connect timeout of one request; ByteStream watches the rest (first byte, stalls) and
    says which flag to change, so the socket's own read timeout is only a backstop."""
    return aiohttp.ClientTimeout(
        total=None, connect=TIMEOUTS.connect_s, sock_connect=TIMEOUTS.connect_s,
        sock_read=TIMEOUTS.first_byte_s + TIMEOUTS.stall_s + 1.0,
    )


# --- errors ------------------------------------------------------------------------------------


def describe(exc: BaseException) -> str:
    """A network exception as a message (timeouts have no text of their own)."""
    if isinstance(exc, TimeoutError):
        return f"timed out ({type(exc).__name__})"
    return str(exc) or type(exc).__name__


def network_error(msg: str, exc: BaseException) -> TTSError:
    """TTSUnavailable when the server did not answer in time (the next sentences would wait
    as long), plain TTSError otherwise (a refusal is quick to repeat, and may be over soon)."""
    return (TTSUnavailable if isinstance(exc, TimeoutError) else TTSError)(msg)


def plain_url(url: Any) -> str:
    """The URL without its query string, which may carry tokens."""
    return str(url).split("?", 1)[0]


async def check_status(label: str, resp: aiohttp.ClientResponse) -> None:
    """Raise TTSError with the status and the start of the body for an HTTP error."""
    if resp.status < 400:
        return
    try:
        body = await asyncio.wait_for(resp.content.read(ERROR_BODY_BYTES), 5)
    except (aiohttp.ClientError, TimeoutError):
        body = b""
    raise TTSError(
        f"{label}: HTTP {resp.status} {resp.reason or ''} from {plain_url(resp.url)}: "
        f"{preview(body, 300) if body else '(empty body)'}"
    )


async def stream_request(label: str, method: str, url: str, emit: Emit, **kwargs: Any) -> None:
    """Make a request and emit its body as it arrives; TTSError for any failure."""
    session = await client_session()
    try:
        async with session.request(method, url, timeout=timeout(), **kwargs) as resp:
            await check_status(label, resp)
            try:
                async for data in resp.content.iter_any():
                    emit(data)
            except asyncio.CancelledError:
                resp.close()  # interrupted: drop the connection, do not drain it
                raise
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise network_error(f"{label}: {method} {plain_url(url)} failed: {describe(exc)}", exc) from None


async def request_json(label: str, method: str, url: str, **kwargs: Any) -> Any:
    """Make a request whose answer is JSON; TTSError for any failure."""
    session = await client_session()
    try:
        async with session.request(method, url, timeout=timeout(), **kwargs) as resp:
            await check_status(label, resp)
            body = await resp.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise network_error(f"{label}: {method} {plain_url(url)} failed: {describe(exc)}", exc) from None
    try:
        return json.loads(body)
    except ValueError:
        raise TTSError(f"{label}: {plain_url(url)} answered with something that is not JSON: {preview(body)}") from None


class HandshakeRefused(TTSError):
    """A websocket server answered the upgrade with an HTTP error."""

    def __init__(self, msg: str, status: int, headers: Any) -> None:
        super().__init__(msg)
        self.status = status
        self.headers = headers


@contextlib.asynccontextmanager
async def websocket(
    label: str, url: str, headers: dict[str, str] | None = None, **kwargs: Any
) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """A websocket to a cloud engine; connection failures become TTSError."""
    session = await client_session()
    try:
        async with asyncio.timeout(TIMEOUTS.connect_s + TIMEOUTS.first_byte_s):  # the handshake, however slow
            ws = await session.ws_connect(
                url,
                headers=headers,
                # A short close: when interrupted we do not wait long for the server's goodbye.
                timeout=aiohttp.ClientWSTimeout(
                    ws_receive=TIMEOUTS.first_byte_s + TIMEOUTS.stall_s + 1.0, ws_close=2.0
                ),
                **kwargs,
            )
    except aiohttp.WSServerHandshakeError as exc:
        raise HandshakeRefused(
            f"{label}: {plain_url(url)} refused the websocket: HTTP {exc.status} {exc.message}", exc.status, exc.headers
        ) from None
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise network_error(f"{label}: cannot connect to {plain_url(url)}: {describe(exc)}", exc) from None
    try:
        yield ws
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise network_error(f"{label}: websocket {plain_url(url)} failed: {describe(exc)}", exc) from None
    finally:
        await ws.close()


# --- configuration helpers ---------------------------------------------------------------------

def read_ref_audio(label: str, path: str | None) -> bytes:
    """The bytes of a local reference audio file, or TTSError saying what is wrong."""
    if not path:
        raise TTSError(f"{label}: no reference audio; set --REF_FILE or send tts.ref_file")
    file = Path(path).expanduser()
    # Requests can only name files in the voices folder (voices.py); this guards --REF_FILE.
    if file.suffix.lower() not in AUDIO_SUFFIXES:
        raise TTSError(f"{label}: reference audio {path!r} must be one of {', '.join(AUDIO_SUFFIXES)}")
    try:
        return file.read_bytes()
    except OSError as exc:
        raise TTSError(f"{label}: cannot read reference audio {path!r}: {exc.strerror or exc}") from None


def env_keys(names: Iterable[str]) -> dict[str, str | None]:
    """The named environment variables (None when unset or empty)."""
    return {name: os.environ.get(name) or None for name in names}


def missing_keys(keys: dict[str, str | None]) -> list[str]:
    return [name for name, value in keys.items() if not value]


def require_keys(label: str, keys: dict[str, str | None]) -> dict[str, str]:
    """The keys, or TTSError naming the environment variables that are not set."""
    missing = missing_keys(keys)
    if missing:
        raise TTSError(f"{label}: environment variable {', '.join(missing)} not set (README: TTS engines)")
    return {name: value for name, value in keys.items() if value}


# --- byte and audio streams --------------------------------------------------------------------

_END = object()


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class ByteStream:
    """Runs a producer coroutine on the I/O loop; iterating yields the bytes it emits.

    Thread-safe `abort()` cancels the producer (closing its connection) and ends iteration.
    """

    def __init__(self, label: str, producer: Producer) -> None:
        self.label = label
        self._items: queue.Queue[Any] = queue.Queue()
        self._aborted = threading.Event()
        self._done = False
        self._started_at = 0.0
        self._first_byte_at: float | None = None
        self._arrivals: deque[tuple[float, int]] = deque()  # (time, bytes) of the last stall period
        self._future = asyncio.run_coroutine_threadsafe(self._run(producer), io_loop())

    async def _run(self, producer: Producer) -> None:
        loop = asyncio.get_running_loop()
        self._started_at = loop.time()
        work = asyncio.ensure_future(producer(self._emit))
        try:
            while not work.done():
                await asyncio.wait([work], timeout=WATCH_EVERY_S)
                problem = None if work.done() else self._stalled(loop.time())
                if problem is not None:
                    work.cancel()
                    await asyncio.gather(work, return_exceptions=True)
                    raise TTSUnavailable(f"{self.label}: {problem}")
            work.result()
        except asyncio.CancelledError:
            work.cancel()
            self._items.put(_END)
            raise
        except TTSError as exc:
            self._items.put(_Failed(exc))
        except Exception as exc:  # a protocol the code did not expect: keep the details in the log
            log.exception("%s: request failed", self.label)
            self._items.put(_Failed(TTSError(f"{self.label}: {type(exc).__name__}: {exc}")))
        else:
            self._items.put(_END)

    def _stalled(self, now: float) -> str | None:
        """Why the request should be given up now, if it should (on the I/O loop)."""
        if self._first_byte_at is None:
            if now - self._started_at > TIMEOUTS.first_byte_s:
                return f"no audio within {TIMEOUTS.first_byte_s:g} s of the request (--tts_first_byte_timeout)"
            return None
        while self._arrivals and self._arrivals[0][0] < now - TIMEOUTS.stall_s:
            self._arrivals.popleft()
        recent = sum(n for _, n in self._arrivals)
        if now - self._first_byte_at > TIMEOUTS.stall_s and recent < MIN_PROGRESS_BYTES:
            return (f"stalled: {recent} bytes of audio in the last {TIMEOUTS.stall_s:g} s "
                    f"(--tts_stall_timeout)")
        return None

    def _emit(self, data: bytes) -> None:
        if data and not self._aborted.is_set():
            now = asyncio.get_running_loop().time()
            if self._first_byte_at is None:
                self._first_byte_at = now
            self._arrivals.append((now, len(data)))
            self._items.put(bytes(data))

    @property
    def aborted(self) -> bool:
        return self._aborted.is_set()

    def __iter__(self) -> ByteStream:
        return self

    def __next__(self) -> bytes:
        if self._done:
            raise StopIteration
        item = self._items.get()
        if item is _END:
            self._done = True
            raise StopIteration
        if isinstance(item, _Failed):
            self._done = True
            raise item.exc
        return item

    def abort(self) -> None:
        if not self._aborted.is_set():
            self._aborted.set()
            self._future.cancel()
            self._items.put(_END)  # wake a reader blocked in __next__ now

    close = abort


class AudioStream:
    """One engine request as (float32 mono samples, rate) pieces, decoded as bytes arrive.

    A stream that ends without audio, or with bytes that are not audio, raises TTSError
    showing what the server sent; an aborted stream just ends.
    """

    def __init__(self, label: str, producer: Producer, decoder: StreamDecoder) -> None:
        self.label = label
        self._decoder = decoder
        self._started = time.perf_counter()
        self._bytes = ByteStream(label, producer)
        self._pending: deque[tuple[np.ndarray, int]] = deque()
        self._ended = False
        self._head = b""  # the first bytes, to show what a server sent instead of audio
        self.bytes_received = 0
        self.samples = 0
        self.first_audio_ms: float | None = None

    def __iter__(self) -> AudioStream:
        return self

    def __next__(self) -> tuple[np.ndarray, int]:
        while not self._pending:
            if self._ended:
                raise StopIteration
            try:
                self._fill()
            except BadAudio as exc:
                self.abort()
                raise TTSError(f"{self.label}: {exc}") from None
        audio, rate = self._pending.popleft()
        if self.first_audio_ms is None:
            self.first_audio_ms = (time.perf_counter() - self._started) * 1000
            log.debug("%s: first audio after %.0f ms", self.label, self.first_audio_ms)
        self.samples += audio.size
        return audio, rate

    def _fill(self) -> None:
        try:
            data = next(self._bytes)
        except StopIteration:
            self._ended = True
            if not self._bytes.aborted:
                self._take(self._decoder.finish())
                self._check_complete()
            return
        if len(self._head) < 160:
            self._head += data[: 160 - len(self._head)]
        self.bytes_received += len(data)
        self._take(self._decoder.feed(data))

    def _take(self, pieces: list[tuple[np.ndarray, int]]) -> None:
        self._pending.extend(piece for piece in pieces if piece[0].size)

    def _check_complete(self) -> None:
        if self.samples or self._pending:
            return
        if not self.bytes_received:
            raise TTSError(f"{self.label}: the server answered without any audio")
        raise TTSError(f"{self.label}: {self.bytes_received} bytes but no audio in them: {preview(self._head)}")

    def abort(self) -> None:
        self._bytes.abort()

    close = abort
