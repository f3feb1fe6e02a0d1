"""--asr funasr: a FunASR runtime server (Paraformer, SenseVoice...) over its websocket protocol.

Per utterance, as FunASR's runtime/docs/websocket_protocol.md describes for offline
recognition: open a websocket to --asr_url (ws:// or wss://, e.g. ws://host:10095), send the
JSON configuration (mode "offline", is_speaking true), the audio as binary 16 kHz PCM16-LE
messages, then {"is_speaking": false}; read JSON results until the final one; close.

Which message is final differs between FunASR's servers. The offline servers (the C++
funasr-wss-server and the Python demo server) send one result with mode "offline" and mark it
is_final false, so that message ends the utterance. The 2pass server, even in offline mode,
may send a "2pass-offline" result per VAD segment and ends with is_final true (its text may
be empty, and without a mode, when there was nothing to hear).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import uuid
from urllib.parse import urlsplit

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
    pcm16,
    shown_url,
    timeout_s,
)

# chunk_size [5, 10, 5] and chunk_interval 10 are the protocol's defaults for the streaming
# models (600 ms chunks, sent in tenths); an offline server ignores them, but they say how
# much audio one message holds: 60 * chunk_size[1] / chunk_interval = 60 ms.
CHUNK_SIZE = [5, 10, 5]
CHUNK_INTERVAL = 10
MESSAGE_BYTES = SAMPLE_RATE * 60 // 1000 * 2
MAX_MESSAGE_BYTES = 1 << 20  # a transcript is a few KB even with timestamps
CLOSE_S = 1.0  # how long to wait for the server's goodbye once we have the text
OFFLINE_MODES = ("offline", "2pass-offline")
STREAMING_MODES = ("online", "2pass-online")
# SenseVoice's rich-transcription tags (language, emotion, event), when a server passes them on.
_TAGS = re.compile(r"<\|[^|<>]*\|>")


class FunAsrStt(SpeechToText):
    name = "funasr"
    partials = False  # one connection and a server-side decode per call

    def __init__(self, url: str, total_s: float) -> None:
        self.url = url
        self.total_s = total_s
        self._client = LazySession(total_s)
        self.description = f"FunASR server {shown_url(url)} (offline mode; the server's model decides the language)"

    @classmethod
    def load(cls, opt: argparse.Namespace) -> FunAsrStt:
        url = str(option(opt, "asr_url", "")).strip()
        if not url:
            raise SttNotAvailable("--asr funasr needs --asr_url, the FunASR server's websocket, e.g. ws://127.0.0.1:10095")
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise SttNotAvailable(
                f"--asr_url {shown_url(url)!r}: --asr funasr speaks websocket; give a ws:// or wss:// address, "
                "e.g. ws://127.0.0.1:10095"
            )
        return cls(url, timeout_s(opt))

    @property
    def where(self) -> str:
        return f"FunASR server {shown_url(self.url)}"

    async def transcribe(self, audio: np.ndarray, partial: bool = False) -> str:
        samples = as_samples(audio)
        if samples.size < MIN_SECONDS * SAMPLE_RATE:
            return ""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.total_s
        ws: aiohttp.ClientWebSocketResponse | None = None
        try:
            async with asyncio.timeout_at(deadline):
                ws = await self._client.get().ws_connect(
                    self.url,
                    protocols=("binary",),  # the subprotocol FunASR's own clients ask for
                    timeout=aiohttp.ClientWSTimeout(ws_receive=self.total_s, ws_close=CLOSE_S),
                    max_msg_size=MAX_MESSAGE_BYTES,
                    autoclose=True,
                )
                return await self._exchange(ws, pcm16(samples))
        except aiohttp.WSServerHandshakeError as exc:
            raise SttError(f"{self.where} refused the websocket: HTTP {exc.status} {exc.message}") from None
        except aiohttp.ConnectionTimeoutError:
            connect_s = min(MAX_CONNECT_S, self.total_s)
            raise SttError(f"{self.where} is unreachable: no connection within {connect_s:g} s") from None
        except TimeoutError:
            raise SttError(f"{self.where} did not answer within {self.total_s:g} s (--asr_timeout)") from None
        except aiohttp.ClientConnectorError as exc:
            hint = " (a self-signed certificate? start the server with --certfile 0 and use ws://)" if isinstance(
                exc, aiohttp.ClientConnectorCertificateError) else " (check --asr_url)"
            raise SttError(f"{self.where} is unreachable: {describe(exc)}{hint}") from None
        except aiohttp.ClientError as exc:
            raise SttError(f"{self.where} failed: {describe(exc)}") from None
        finally:
            if ws is not None:
                # Outside the deadline: the text is already in hand; ws_close bounds the wait.
                await ws.close()

    async def _exchange(self, ws: aiohttp.ClientWebSocketResponse, pcm: bytes) -> str:
        wav_name = f"livetalking-{uuid.uuid4().hex[:12]}"
        await ws.send_str(json.dumps({
            "mode": "offline",
            "wav_name": wav_name,
            "wav_format": "pcm",
            "audio_fs": SAMPLE_RATE,
            "is_speaking": True,
            "chunk_size": CHUNK_SIZE,
            "chunk_interval": CHUNK_INTERVAL,
            "itn": True,
            "hotwords": "",
        }))
        for start in range(0, len(pcm), MESSAGE_BYTES):
            await ws.send_bytes(pcm[start : start + MESSAGE_BYTES])
        await ws.send_str(json.dumps({"is_speaking": False}))
        return await self._result(ws)

    async def _result(self, ws: aiohttp.ClientWebSocketResponse) -> str:
        """Read results until the final one; the utterance's text."""
        pieces: list[str] = []
        while True:
            msg = await ws.receive()
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                raise SttError(f"{self.where} closed the connection without a transcript")
            if msg.type == aiohttp.WSMsgType.ERROR:
                raise SttError(f"{self.where} failed: {describe(ws.exception() or msg.data)}")
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise SttError(f"{self.where} sent a {msg.type.name.lower()} message instead of a JSON result")
            try:
                result = json.loads(msg.data)
            except ValueError:
                raise SttError(f"{self.where} sent something that is not JSON: {preview(msg.data.encode())}") from None
            if not isinstance(result, dict):
                raise SttError(f"{self.where} sent a result that is not a JSON object: {one_line(msg.data)}")
            mode = result.get("mode", "")
            text = result.get("text", "")
            if not isinstance(text, str):
                raise SttError(f'{self.where} sent a result whose "text" is not a string: {one_line(msg.data)}')
            if mode in STREAMING_MODES:
                continue  # a streaming model's guess; the offline result follows
            pieces.append(text)
            if result.get("is_final") is True or mode == "offline":
                return _joined(pieces)

    async def aclose(self) -> None:
        await self._client.close()


def _joined(pieces: list[str]) -> str:
    """The segments' text as one line; a space between two words of a spaced language only."""
    text = ""
    for piece in (_TAGS.sub("", piece).strip() for piece in pieces):
        if not piece:
            continue
        if text and text[-1].isascii() and text[-1].isalnum() and piece[0].isascii() and piece[0].isalnum():
            text += " "
        elif text and text[-1] in ".,!?;:" and piece[0].isascii():
            text += " "
        text += piece
    return text
