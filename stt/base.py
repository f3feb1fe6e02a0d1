"""The interface every speech-to-text engine implements, and what the network engines share.

An engine turns one utterance (float32 mono 16 kHz samples in [-1, 1], already cut by the
session's VAD) into text. One engine object serves the whole server, so `transcribe` may be
awaited by several sessions at once; it never blocks the event loop.
"""

from __future__ import annotations

import argparse
import os
from abc import ABC, abstractmethod
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import numpy as np

SAMPLE_RATE = 16000
MIN_SECONDS = 0.1  # shorter is a click, not a word (and OpenAI refuses audio under 0.1 s)
DEFAULT_TIMEOUT_S = 10.0
MAX_CONNECT_S = 5.0  # a server that has not accepted the connection by then is not there


class SttError(Exception):
    """An utterance could not be transcribed (endpoint down, too slow, a bad answer).

    `msg` is one line the user may see; the session carries on with the next utterance.
    """

    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.msg = msg


class SttNotAvailable(Exception):
    """The engine cannot be used at all: a start-up error that says what to change."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.msg = msg


class SpeechToText(ABC):
    """One speech-to-text engine, shared by all sessions of the server."""

    name: ClassVar[str]
    # True when transcribing the growing utterance again and again for partial transcripts
    # costs little enough (a local model); remote engines would pay a round trip each time.
    partials: ClassVar[bool] = False
    description: str = ""  # one line for the start-up log; never holds a key

    @classmethod
    @abstractmethod
    def load(cls, opt: argparse.Namespace) -> SpeechToText:
        """Build the engine from the server's flags; SttNotAvailable when it cannot work."""

    @abstractmethod
    async def transcribe(self, audio: np.ndarray, partial: bool = False) -> str:
        """The words of `audio`, stripped; "" when it holds no speech. Raises SttError."""

    async def aclose(self) -> None:
        """Release clients and threads; calling it again does nothing."""
        return None  # an engine that holds nothing has nothing to release


# --- options -------------------------------------------------------------------------------------


def option(opt: Any, name: str, default: Any = None) -> Any:
    """A flag's value; tests and embedders may pass a Namespace without our flags."""
    value = getattr(opt, name, None)
    return default if value is None or value == "" else value


def timeout_s(opt: Any) -> float:
    """--asr_timeout: the most one utterance may take, connection included."""
    try:
        value = float(option(opt, "asr_timeout", DEFAULT_TIMEOUT_S))
    except (TypeError, ValueError):
        raise SttNotAvailable(
            f"--asr_timeout must be a number of seconds, not {getattr(opt, 'asr_timeout', None)!r}"
        ) from None
    if not value > 0:
        raise SttNotAvailable(f"--asr_timeout must be more than 0 seconds, not {value:g}")
    return value


def client_timeout(total_s: float) -> aiohttp.ClientTimeout:
    """The whole request within total_s, and a refused or silent connect reported sooner."""
    return aiohttp.ClientTimeout(total=total_s, sock_connect=min(MAX_CONNECT_S, total_s))


class LazySession:
    """An engine's one HTTP client, made on first use: aiohttp wants a running loop for it."""

    def __init__(self, total_s: float) -> None:
        self.total_s = total_s
        self._session: aiohttp.ClientSession | None = None

    def get(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # trust_env: HTTPS_PROXY / NO_PROXY apply, as they do to the TTS engines.
            self._session = aiohttp.ClientSession(timeout=client_timeout(self.total_s), trust_env=True)
        return self._session

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()


# --- audio ---------------------------------------------------------------------------------------


def as_samples(audio: np.ndarray) -> np.ndarray:
    """The utterance as a 1-D float32 array (a copy is made only when needed)."""
    samples = np.asarray(audio, dtype=np.float32)
    if samples.ndim != 1:
        samples = samples.reshape(-1)
    return samples


def pcm16(audio: np.ndarray) -> bytes:
    """16-bit little-endian PCM; clipped first, since a sample just past 1.0 would wrap."""
    samples = np.clip(as_samples(audio), -1.0, 1.0)
    return (samples * 32767.0).round().astype("<i2").tobytes()


def wav_bytes(audio: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    """A 16-bit mono PCM WAV file of the utterance."""
    data = pcm16(audio)
    header = b"".join([
        b"RIFF", (36 + len(data)).to_bytes(4, "little"), b"WAVE",
        b"fmt ", (16).to_bytes(4, "little"),
        (1).to_bytes(2, "little"),  # PCM
        (1).to_bytes(2, "little"),  # mono
        rate.to_bytes(4, "little"), (rate * 2).to_bytes(4, "little"),
        (2).to_bytes(2, "little"), (16).to_bytes(2, "little"),
        b"data", len(data).to_bytes(4, "little"),
    ])
    return header + data


# --- messages ------------------------------------------------------------------------------------


def shown_url(url: str) -> str:
    """The URL as messages and logs may show it: no user:password, no query (tokens live there)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def describe(exc: BaseException) -> str:
    """A network exception as words (timeouts and some aiohttp errors have no text)."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"its TLS certificate is not trusted ({exc.certificate_error})"
    if isinstance(exc, aiohttp.ClientConnectorError):
        # Its str() repeats the host; the OS error (e.g. "Connection refused") is what matters.
        error = getattr(exc, "os_error", None)
        code = getattr(error, "errno", None)
        if code:  # asyncio's text ("Connect call failed (...)") hides what happened: say it
            return os.strerror(code).lower()
        return str(error or "") or str(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__


def one_line(text: str, limit: int = 200) -> str:
    """Text from a server squeezed onto one line and cut to `limit` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
