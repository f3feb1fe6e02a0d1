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
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from audio_stream import BadAudio, StreamDecoder, preview
from ttsreal import TTSError

log = logging.getLogger(__name__)

Emit = Callable[[bytes], None]
Producer = Callable[[Emit], Awaitable[None]]

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0  # silence allowed between two reads; a self-hosted GPU server may be slow to start
ERROR_BODY_BYTES = 4096  # read this much of an error response for the message


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


def timeout(read_s: float = READ_TIMEOUT_S) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT_S, sock_read=read_s)


# --- errors ------------------------------------------------------------------------------------


def describe(exc: BaseException) -> str:
    """A network exception as a message (timeouts have no text of their own)."""
    if isinstance(exc, TimeoutError):
        return f"timed out ({type(exc).__name__})"
    return str(exc) or type(exc).__name__


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


async def stream_request(
    label: str, method: str, url: str, emit: Emit, read_timeout: float = READ_TIMEOUT_S, **kwargs: Any
) -> None:
    """Make a request and emit its body as it arrives; TTSError for any failure."""
    session = await client_session()
    try:
        async with session.request(method, url, timeout=timeout(read_timeout), **kwargs) as resp:
            await check_status(label, resp)
            try:
                async for data in resp.content.iter_any():
                    emit(data)
            except asyncio.CancelledError:
                resp.close()  # interrupted: drop the connection, do not drain it
                raise
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise TTSError(f"{label}: {method} {plain_url(url)} failed: {describe(exc)}") from None


async def request_json(
    label: str, method: str, url: str, read_timeout: float = READ_TIMEOUT_S, **kwargs: Any
) -> Any:
    """Make a request whose answer is JSON; TTSError for any failure."""
    session = await client_session()
    try:
        async with session.request(method, url, timeout=timeout(read_timeout), **kwargs) as resp:
            await check_status(label, resp)
            body = await resp.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise TTSError(f"{label}: {method} {plain_url(url)} failed: {describe(exc)}") from None
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
    label: str, url: str, headers: dict[str, str] | None = None, read_timeout: float = READ_TIMEOUT_S, **kwargs: Any
) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """A websocket to a cloud engine; connection failures become TTSError."""
    session = await client_session()
    try:
        ws = await session.ws_connect(
            url,
            headers=headers,
            # A short close: when interrupted we do not wait long for the server's goodbye.
            timeout=aiohttp.ClientWSTimeout(ws_receive=read_timeout, ws_close=2.0),
            **kwargs,
        )
    except aiohttp.WSServerHandshakeError as exc:
        raise HandshakeRefused(
            f"{label}: {plain_url(url)} refused the websocket: HTTP {exc.status} {exc.message}", exc.status, exc.headers
        ) from None
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise TTSError(f"{label}: cannot connect to {plain_url(url)}: {describe(exc)}") from None
    try:
        yield ws
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise TTSError(f"{label}: websocket {plain_url(url)} failed: {describe(exc)}") from None
    finally:
        await ws.close()


# --- configuration helpers ---------------------------------------------------------------------

# Reference audio a request may name: only audio files, so that a /human request cannot make
# the server upload some other local file to the TTS server.
AUDIO_SUFFIXES = (".wav", ".mp3", ".flac", ".ogg", ".m4a", ".opus", ".aac")


def read_ref_audio(label: str, path: str | None) -> bytes:
    """The bytes of a local reference audio file, or TTSError saying what is wrong."""
    if not path:
        raise TTSError(f"{label}: no reference audio; set --REF_FILE or send tts.ref_file")
    file = Path(path).expanduser()
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
        self._future = asyncio.run_coroutine_threadsafe(self._run(producer), io_loop())

    async def _run(self, producer: Producer) -> None:
        try:
            await producer(self._emit)
        except asyncio.CancelledError:
            self._items.put(_END)
            raise
        except TTSError as exc:
            self._items.put(_Failed(exc))
        except Exception as exc:  # a protocol the code did not expect: keep the details in the log
            log.exception("%s: request failed", self.label)
            self._items.put(_Failed(TTSError(f"{self.label}: {type(exc).__name__}: {exc}")))
        else:
            self._items.put(_END)

    def _emit(self, data: bytes) -> None:
        if data and not self._aborted.is_set():
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
