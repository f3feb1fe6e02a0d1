"""--asr openai: any OpenAI-compatible transcription endpoint (OpenAI, vLLM, speaches, LocalAI...).

Each utterance is one `POST {--asr_url}/audio/transcriptions`: a multipart form with the
utterance as a 16-bit WAV in `file`, `model`, `response_format` "json" and, when set,
`language`; the answer is `{"text": ...}`. The key comes from OPENAI_API_KEY and is sent only
when set (local servers need none).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import numpy as np

from audio_stream import preview
from stt.base import (
    MAX_CONNECT_S,
    MIN_SECONDS,
    SAMPLE_RATE,
    LazySession,
    SpeechToText,
    SttError,
    SttNotAvailable,
    as_samples,
    describe,
    one_line,
    option,
    shown_url,
    timeout_s,
    wav_bytes,
)

DEFAULT_MODEL = "whisper-1"
PATH = "/audio/transcriptions"
MAX_BODY_BYTES = 1 << 20  # a transcript is a few hundred bytes; more is not an answer
READ_CHUNK = 64 * 1024


class _TooLarge(Exception):
    pass


class OpenAIStt(SpeechToText):
    name = "openai"
    partials = False  # a network round trip per partial would cost more than it shows

    def __init__(self, url: str, model: str, language: str | None, total_s: float, key: str | None) -> None:
        self.url = url
        self.model = model
        self.language = language
        self.total_s = total_s
        self._key = key
        self._client = LazySession(total_s)
        self.description = (
            f"openai-compatible transcription at {shown_url(url)} (model {model}, "
            f"language {language or 'auto'}, {'key from OPENAI_API_KEY' if key else 'no key'})"
        )

    @classmethod
    def load(cls, opt: argparse.Namespace) -> OpenAIStt:
        url = option(opt, "asr_url")
        if not url:
            raise SttNotAvailable("--asr openai needs --asr_url, e.g. https://api.openai.com/v1")
        language = option(opt, "asr_language")
        return cls(
            transcriptions_url(str(url)), str(option(opt, "asr_model", DEFAULT_MODEL)),
            str(language).strip() if language else None, timeout_s(opt), os.environ.get("OPENAI_API_KEY") or None,
        )

    @property
    def where(self) -> str:
        return f"speech-to-text endpoint {shown_url(self.url)}"

    async def transcribe(self, audio: np.ndarray, partial: bool = False) -> str:
        samples = as_samples(audio)
        if samples.size < MIN_SECONDS * SAMPLE_RATE:
            return ""
        form = aiohttp.FormData()
        form.add_field("file", wav_bytes(samples), filename="speech.wav", content_type="audio/wav")
        form.add_field("model", self.model)
        form.add_field("response_format", "json")
        if self.language:
            form.add_field("language", self.language)
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        try:
            async with asyncio.timeout(self.total_s):
                async with self._client.get().post(self.url, data=form, headers=headers) as resp:
                    status, reason = resp.status, resp.reason or ""
                    body = await _read_capped(resp, MAX_BODY_BYTES)
        except _TooLarge:
            raise SttError(f"{self.where} answered with more than {MAX_BODY_BYTES >> 20} MB") from None
        except aiohttp.ConnectionTimeoutError:
            connect_s = min(MAX_CONNECT_S, self.total_s)
            raise SttError(f"{self.where} is unreachable: no connection within {connect_s:g} s") from None
        except TimeoutError:
            raise SttError(f"{self.where} did not answer within {self.total_s:g} s (--asr_timeout)") from None
        except aiohttp.ClientConnectorError as exc:
            raise SttError(f"{self.where} is unreachable: {describe(exc)} (check --asr_url)") from None
        except aiohttp.ClientError as exc:
            raise SttError(f"{self.where} failed: {describe(exc)}") from None
        if not 200 <= status < 300:
            raise SttError(f"{self.where} answered HTTP {status} {reason}: {_error_message(body)}{self._hint(status)}")
        try:
            answer = json.loads(body)
        except ValueError:
            raise SttError(f"{self.where} answered with something that is not JSON: {preview(body)}") from None
        text = answer.get("text") if isinstance(answer, dict) else None
        if not isinstance(text, str):
            raise SttError(f'{self.where} answered without a "text" field: {preview(body)}')
        return text.strip()

    def _hint(self, status: int) -> str:
        if status in (401, 403):
            return " (check OPENAI_API_KEY)"
        if status == 404:
            return f" (check --asr_url and --asr_model {self.model})"
        return ""

    async def aclose(self) -> None:
        await self._client.close()


def transcriptions_url(url: str) -> str:
    """The endpoint's POST address from --asr_url: a base like http://host:8000/v1, or the
    full .../audio/transcriptions address."""
    url = url.strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise SttNotAvailable(
            f"--asr_url {shown_url(url)!r} is not an http(s) address; give the API base, e.g. https://api.openai.com/v1"
        )
    path = parts.path.rstrip("/")
    if not path.endswith(PATH):
        path += PATH
    # The query stays: some gateways want one (Azure's ?api-version=...).
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


async def _read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The response body, or _TooLarge as soon as it passes `limit` bytes."""
    if resp.content_length is not None and resp.content_length > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(READ_CHUNK):
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _error_message(body: bytes) -> str:
    """The endpoint's own words: OpenAI's {"error": {"message"}}, FastAPI's {"detail"}, or the text."""
    if not body:
        return "(empty body)"
    try:
        answer: Any = json.loads(body)
    except ValueError:
        return one_line(preview(body, 400))
    if isinstance(answer, dict):
        error = answer.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return one_line(error["message"])
        for value in (error, answer.get("detail"), answer.get("message")):
            if isinstance(value, str) and value.strip():
                return one_line(value)
    return one_line(preview(body, 400))
