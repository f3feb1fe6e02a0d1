"""Tools for testing the network TTS engines against local servers that speak their protocols.

- `ServerThread` serves an aiohttp application on 127.0.0.1 from its own event loop thread.
- `Speech` makes real speech with Piper, in the formats those servers send.
- `Control` is shared by a test and its server: it can hold a response half-way (to prove
  the client plays audio before the server is done), see the client hang up, and make the
  next requests fail in a chosen way.
- `Collector` is a session sink that timestamps chunks and events.
"""

from __future__ import annotations

import asyncio
import io
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
from aiohttp import web
from scipy.signal import correlate, resample_poly

from audio_util import CHUNK, SAMPLE_RATE, to_16k_mono
from ttsreal import BaseTTS, PiperEngine, TTSEngine

# --- servers -------------------------------------------------------------------------------


class ServerThread:
    """An aiohttp application on 127.0.0.1 (a given port, or a free one)."""

    def __init__(self, app: web.Application, port: int = 0) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="tts-test-server", daemon=True)
        self._thread.start()
        self.runner = web.AppRunner(app, handler_cancellation=False)
        self.port = asyncio.run_coroutine_threadsafe(self._start(port), self.loop).result(10)

    async def _start(self, port: int) -> int:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port, reuse_address=True)
        await site.start()
        return site._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


def free_port() -> int:
    """A port nothing listens on (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- what the servers say ----------------------------------------------------------------------

_piper: PiperEngine | None = None
_piper_lock = threading.Lock()


def piper() -> PiperEngine:
    global _piper
    with _piper_lock:
        if _piper is None:
            _piper = PiperEngine()
        return _piper


class Speech:
    """Piper's speech for a text, cached, converted to what each server sends."""

    _cache: dict[str, tuple[np.ndarray, int]] = {}
    _lock = threading.Lock()

    @classmethod
    def native(cls, text: str) -> tuple[np.ndarray, int]:
        with cls._lock:
            if text not in cls._cache:
                pieces = list(piper().synthesize(text))
                cls._cache[text] = (np.concatenate([a for a, _ in pieces]), pieces[0][1])
            return cls._cache[text]

    @classmethod
    def at(cls, text: str, rate: int) -> np.ndarray:
        audio, native = cls.native(text)
        if rate == native:
            return audio
        from math import gcd

        g = gcd(rate, native)
        return np.clip(resample_poly(audio, rate // g, native // g), -1, 1).astype(np.float32)

    @classmethod
    def expected_16k(cls, text: str) -> np.ndarray:
        """What the pipeline should play: the same speech resampled straight to 16 kHz."""
        audio, native = cls.native(text)
        return to_16k_mono(audio, native)

    @classmethod
    def pcm16(cls, text: str, rate: int) -> bytes:
        return (cls.at(text, rate) * 32767).astype("<i2").tobytes()

    @classmethod
    def mp3(cls, text: str, rate: int = 24000) -> bytes:
        """MP3 frames without an ID3 tag, like Edge's audio-24khz-48kbitrate-mono-mp3."""
        samples = (cls.at(text, rate) * 32767).astype(np.int16)
        codec = av.CodecContext.create("libmp3lame", "w")
        codec.sample_rate = rate
        codec.layout = "mono"
        codec.format = "s16p"
        codec.bit_rate = 48000
        out = io.BytesIO()
        frame_size = codec.frame_size or 1152
        for start in range(0, samples.size, frame_size):
            block = samples[start : start + frame_size]
            if block.size < frame_size:
                block = np.pad(block, (0, frame_size - block.size))
            frame = av.AudioFrame.from_ndarray(block[None, :], format="s16p", layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            for packet in codec.encode(frame):
                out.write(bytes(packet))
        for packet in codec.encode(None):
            out.write(bytes(packet))
        return out.getvalue()


def wav_header(rate: int, channels: int = 1, bits: int = 16, data_size: int = 0) -> bytes:
    """A PCM WAV header; data_size 0 is what streaming servers send (length unknown)."""
    block = channels * bits // 8
    riff_size = 36 + data_size
    return (
        b"RIFF" + riff_size.to_bytes(4, "little") + b"WAVE"
        + b"fmt " + (16).to_bytes(4, "little") + (1).to_bytes(2, "little") + channels.to_bytes(2, "little")
        + rate.to_bytes(4, "little") + (rate * block).to_bytes(4, "little") + block.to_bytes(2, "little")
        + bits.to_bytes(2, "little") + b"data" + data_size.to_bytes(4, "little")
    )


def wav_file(text: str, rate: int) -> bytes:
    pcm = Speech.pcm16(text, rate)
    return wav_header(rate, data_size=len(pcm)) + pcm


GARBAGE = bytes(np.random.default_rng(7).integers(0, 256, 20000, dtype=np.uint8))
# Raw PCM has no header to check: what a proxy in front of a server sends instead of audio.
ERROR_PAGE = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"


# --- the test's hold on its server -------------------------------------------------------------


@dataclass
class Control:
    """Shared by a test (any thread) and a server (its loop)."""

    hold: bool = False  # stop half-way through the audio until released
    failures: list[str] = field(default_factory=list)  # how the next requests fail, in order
    requests: list[dict] = field(default_factory=list)
    halfway: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    hung_up: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)

    def reset(self) -> None:
        self.hold = False
        self.failures.clear()
        self.requests.clear()
        for event in (self.halfway, self.release, self.hung_up, self.finished):
            event.clear()

    def next_failure(self) -> str | None:
        return self.failures.pop(0) if self.failures else None

    def record(self, **request: Any) -> None:
        self.requests.append(request)

    async def midway(self, gone: Callable[[], bool]) -> bool:
        """Called by a server half-way through its audio. While held, wait for the release;
        False when the client went away meanwhile (recorded as a hang-up)."""
        self.halfway.set()
        while self.hold and not self.release.is_set():
            if gone():
                self.hung_up.set()
                return False
            await asyncio.sleep(0.005)
        return True


async def stream_http(
    request: web.Request, control: Control, parts: list[bytes], content_type: str, cut: bool = False
) -> web.StreamResponse:
    """Send parts as a chunked response, pausing half-way as the control says; with `cut`,
    drop the connection half-way instead, as a crashing server does."""
    resp = web.StreamResponse(headers={"Content-Type": content_type})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    half = len(parts) // 2

    def gone() -> bool:
        return request.transport is None or request.transport.is_closing()

    try:
        for i, part in enumerate(parts):
            if i == half and not await control.midway(gone):
                return resp
            if i == half and cut and request.transport is not None:
                request.transport.close()
                return resp
            await resp.write(part)
            await asyncio.sleep(0)  # let each part leave as its own chunk
        await resp.write_eof()
        control.finished.set()
    except (ConnectionResetError, RuntimeError):
        control.hung_up.set()
    return resp


def split_bytes(data: bytes, size: int) -> list[bytes]:
    """Cut at odd sizes on purpose: samples and headers must survive any cut."""
    return [data[i : i + size] for i in range(0, len(data), size)]


# --- the session side ------------------------------------------------------------------------


class Collector:
    """A session sink recording chunks, events and when the first chunk came."""

    def __init__(self) -> None:
        self.chunks: list[np.ndarray] = []
        self.events: list[dict] = []
        self.errors: list[dict] = []
        self.first_chunk_at: float | None = None
        self._cond = threading.Condition()

    def __call__(self, chunk: np.ndarray, event: dict | None) -> bool:
        with self._cond:
            if self.first_chunk_at is None:
                self.first_chunk_at = time.perf_counter()
            assert chunk.dtype == np.float32 and chunk.shape == (CHUNK,), (chunk.dtype, chunk.shape)
            self.chunks.append(np.array(chunk))
            if event is not None:
                self.events.append({**event, "chunk": len(self.chunks) - 1})
            self._cond.notify_all()
        return True

    def on_error(self, event: dict) -> None:
        with self._cond:
            self.errors.append(event)
            self.events.append(event)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[Collector], bool], timeout: float = 15.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)

    def statuses(self) -> list[tuple[str, str]]:
        with self._cond:
            return [(e["status"], e["text"]) for e in self.events]

    def audio(self, first: int = 0) -> np.ndarray:
        with self._cond:
            chunks = self.chunks[first:]
        return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


def start_tts(engine: TTSEngine, sink: Collector) -> BaseTTS:
    tts = BaseTTS(engine, sink, name="test-net-tts", on_error=sink.on_error)
    tts.start()
    return tts


def wait_idle(tts: BaseTTS, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while tts.is_busy:
        assert time.monotonic() < deadline, "TTS worker still busy"
        time.sleep(0.01)


def interrupt_mid_request_then_speak_again(stand: Any, sink: Collector, tts: BaseTTS, text: str) -> int:
    """Interrupt a sentence whose engine request the stand-in holds open; check the service saw
    the hang-up at once and it counted as no failure, then speak again. Returns where the
    sink's chunks of the new sentence begin (the engine modules share `stand.control`)."""
    stand.control.hold = True
    tts.put_msg_txt(text)
    assert sink.wait_for(lambda s: len(s.chunks) >= 5)
    interrupted = time.perf_counter()
    tts.flush()
    assert stand.control.hung_up.wait(3), "the service never saw the client hang up"
    assert time.perf_counter() - interrupted < 1.0
    wait_idle(tts, 2)
    assert not stand.control.finished.is_set()
    assert sink.errors == []  # an interrupt is not a failure

    stand.control.reset()
    after = len(sink.chunks)
    tts.put_msg_txt("Speaking again after the interrupt.")
    wait_idle(tts)
    return after


def similarity(got: np.ndarray, expected: np.ndarray, max_lag: int = 2400) -> float:
    """Best normalised correlation of two recordings of the same speech over small shifts
    (onset trimming and MP3 delay move it a little)."""
    n = min(got.size, expected.size) - 2 * max_lag
    if n <= 0:
        return 0.0
    ref = expected[max_lag : max_lag + n].astype(np.float64)
    seg = got[: n + 2 * max_lag].astype(np.float64)
    dots = correlate(seg, ref, mode="valid", method="fft")  # every shift of got against ref
    energy = np.concatenate([[0.0], np.cumsum(seg**2)])
    norms = np.sqrt(energy[n:] - energy[:-n]) * np.linalg.norm(ref)
    return float(np.max(dots / np.maximum(norms, 1e-12)))


def seconds(samples: np.ndarray | int) -> float:
    return (samples if isinstance(samples, int) else samples.size) / SAMPLE_RATE
