"""Microsoft Edge's online read-aloud voices, streamed (upstream's default engine).

The edge-tts package knows what the service demands of a client and changes with it: the
Sec-MS-GEC token, the browser version and headers, clock-skew correction. We take those
from it. Its Communicate class cannot be used as is: its endpoint is fixed (so it cannot be
tested against a local stand-in) and it gives no way to close a request early. So the
websocket exchange itself is done here:

    -> text "Path:speech.config"   output format audio-24khz-48kbitrate-mono-mp3
    -> text "Path:ssml"            the voice and the text
    <- text turn.start, response, audio.metadata ...
    <- binary: 2-byte header length, "Path:audio" headers, MP3 bytes (as they are synthesised)
    <- text "Path:turn.end"
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import aiohttp
import numpy as np

from audio_stream import CodecDecoder
from tts.base import CloudEngine
from tts.http_stream import AudioStream, Emit, HandshakeRefused, websocket
from ttsreal import TTSError, Voice

PACKAGE = "edge-tts==7.3.1"  # the version requirements.txt pins
OUTPUT_FORMAT = "audio-24khz-48kbitrate-mono-mp3"
_SHORT_NAME = re.compile(r"^([a-z]{2,})-([A-Z]{2,})-(.+Neural)$")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")  # characters the service rejects


def _edge_tts() -> Any:
    """The edge-tts modules we use, or an error saying how to install the package."""
    try:
        from edge_tts import constants
        from edge_tts.drm import DRM
    except ImportError:
        raise RuntimeError(f"--tts edgetts needs the Python package edge-tts: pip install {PACKAGE}") from None
    return constants, DRM


class EdgeEngine(CloudEngine):
    name = "edgetts"
    default_voice_name = "zh-CN-YunxiaNeural"

    def __init__(self, voice: str | None = None, endpoint: str | None = None) -> None:
        super().__init__(voice, keys={})
        self._constants, self._drm = _edge_tts()
        self.endpoint = endpoint or self._constants.WSS_URL

    def connect_url(self) -> str:
        sep = "&" if "?" in self.endpoint else "?"
        return (
            f"{self.endpoint}{sep}ConnectionId={uuid.uuid4().hex}"
            f"&Sec-MS-GEC={self._drm.generate_sec_ms_gec()}"
            f"&Sec-MS-GEC-Version={self._constants.SEC_MS_GEC_VERSION}"
        )

    def synthesize(self, text: str, voice: Voice | None = None) -> Iterator[tuple[np.ndarray, int]]:
        messages = [speech_config(), ssml_message(text, self.voice_name(voice))]

        async def produce(emit: Emit) -> None:
            try:
                await self._exchange(messages, emit)
            except HandshakeRefused as exc:
                # 403 is what a wrong clock gets (the token is time-based): correct it from the
                # server's Date header and try once more, as edge-tts does.
                if exc.status != 403 or not self._adjust_clock(exc.headers):
                    raise
                await self._exchange(messages, emit)

        return AudioStream(self.name, produce, CodecDecoder("mp3", label=f"{self.name} MP3"))

    async def _exchange(self, messages: list[str], emit: Emit) -> None:
        headers = self._drm.headers_with_muid(self._constants.WSS_HEADERS)
        async with websocket(self.name, self.connect_url(), headers=headers, compress=15) as ws:
            for message in messages:
                await ws.send_str(message)
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    if _text_path(msg.data) == "turn.end":
                        return
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    emit(_audio_bytes(self.name, msg.data))
                else:
                    break
            raise TTSError(f"{self.name}: the service closed the connection before the end ({ws.close_code})")

    def _adjust_clock(self, headers: Any) -> bool:
        server_time = self._drm.parse_rfc2616_date(headers.get("Date", "")) if headers else None
        if server_time is None:
            return False
        self._drm.adj_clock_skew_seconds(server_time - self._drm.get_unix_timestamp())
        return True


def _timestamp() -> str:
    return time.strftime("%a %b %d %Y %H:%M:%S GMT+0000 (Coordinated Universal Time)", time.gmtime())


def speech_config() -> str:
    config = {
        "context": {
            "synthesis": {
                "audio": {
                    "metadataoptions": {"sentenceBoundaryEnabled": "false", "wordBoundaryEnabled": "false"},
                    "outputFormat": OUTPUT_FORMAT,
                }
            }
        }
    }
    return (
        f"X-Timestamp:{_timestamp()}\r\nContent-Type:application/json; charset=utf-8\r\n"
        f"Path:speech.config\r\n\r\n{json.dumps(config)}\r\n"
    )


def long_voice_name(voice: str) -> str:
    """"zh-CN-YunxiaNeural" -> the service's "Microsoft Server Speech Text to Speech Voice
    (zh-CN, YunxiaNeural)"; names already long, or unknown shapes, are kept."""
    match = _SHORT_NAME.match(voice)
    if not match:
        return voice
    lang, region, name = match.groups()
    if "-" in name:  # a regional variant: "zh-CN-liaoning-XiaobeiNeural"
        variant, name = name.split("-", 1)
        region = f"{region}-{variant}"
    return f"Microsoft Server Speech Text to Speech Voice ({lang}-{region}, {name})"


def ssml_message(text: str, voice: str) -> str:
    speech = escape(_CONTROL.sub(" ", text))
    ssml = (
        "<speak version='1.0' xmlns='http://www.w3.org/2001/10/synthesis' xml:lang='en-US'>"
        f"<voice name={quoteattr(long_voice_name(voice))}>"
        f"<prosody pitch='+0Hz' rate='+0%' volume='+0%'>{speech}</prosody></voice></speak>"
    )
    return (
        f"X-RequestId:{uuid.uuid4().hex}\r\nContent-Type:application/ssml+xml\r\n"
        f"X-Timestamp:{_timestamp()}Z\r\nPath:ssml\r\n\r\n{ssml}"
    )


def _headers(block: bytes) -> dict[str, str]:
    headers = {}
    for line in block.decode("utf-8", "replace").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip()] = value.strip()
    return headers


def _text_path(message: str) -> str:
    return _headers(message.split("\r\n\r\n", 1)[0].encode()).get("Path", "")


def _audio_bytes(label: str, data: bytes) -> bytes:
    """The MP3 bytes of a binary message (empty for the end-of-audio marker)."""
    if len(data) < 2:
        raise TTSError(f"{label}: a binary message of {len(data)} bytes has no header length")
    size = int.from_bytes(data[:2], "big")
    headers = _headers(data[2 : 2 + size])
    if headers.get("Path") != "audio":
        raise TTSError(f"{label}: a binary message for {headers.get('Path')!r}, not audio")
    return data[2 + size :]
