"""Doubao (Volcano Engine) speech synthesis over its binary websocket protocol, as upstream.

    wss://openspeech.bytedance.com/api/v1/tts/ws_binary, header "Authorization: Bearer; TOKEN"

Every message is a 4-byte header (version 1 and header size 1 word; message type and flags;
serialization and compression; reserved) and a payload. The client sends one "full client
request": gzip'd JSON (app, user, audio, request with operation "submit"). The server answers
with audio-only responses (type 0xB): a signed sequence number, a size and PCM, the number
negative on the last; type 0xF carries an error code and message; 0xC is metadata.
"""

from __future__ import annotations

import gzip
import json
import uuid
from collections.abc import Iterator

import aiohttp
import numpy as np

from audio_stream import PcmDecoder
from tts.base import CloudEngine
from tts.http_stream import AudioStream, Emit, websocket
from ttsreal import TTSError, Voice

URL = "wss://openspeech.bytedance.com/api/v1/tts/ws_binary"
CLUSTER = "volcano_tts"
SAMPLE_RATE = 16000

# Header bytes: version 1 / header size 1 (x 4 bytes); full client request, no flags;
# JSON, gzip; reserved.
REQUEST_HEADER = bytes([0x11, 0x10, 0x11, 0x00])
AUDIO_ONLY, FRONTEND, ERROR = 0xB, 0xC, 0xF
GZIP = 1


class DoubaoEngine(CloudEngine):
    name = "doubao"
    env = ("DOUBAO_APPID", "DOUBAO_TOKEN")
    default_voice_name = "BV001_streaming"  # a general Mandarin female voice

    def __init__(self, voice: str | None = None, keys: dict[str, str | None] | None = None, url: str = URL) -> None:
        super().__init__(voice, keys)
        self.url = url

    def request(self, text: str, voice: Voice | None, appid: str) -> dict:
        """The JSON of the full client request."""
        return {
            "app": {"appid": appid, "token": "access_token", "cluster": CLUSTER},  # the real token is in the header
            "user": {"uid": "livetalking"},
            "audio": {
                "voice_type": self.voice_name(voice),
                "encoding": "pcm",
                "rate": SAMPLE_RATE,
                "speed_ratio": 1.0,
                "volume_ratio": 1.0,
                "pitch_ratio": 1.0,
            },
            "request": {"reqid": str(uuid.uuid4()), "text": text, "text_type": "plain", "operation": "submit"},
        }

    def synthesize(self, text: str, voice: Voice | None = None) -> Iterator[tuple[np.ndarray, int]]:
        keys = self.require_keys()
        frame = pack_request(self.request(text, voice, keys["DOUBAO_APPID"]))
        headers = {"Authorization": f"Bearer; {keys['DOUBAO_TOKEN']}"}

        async def produce(emit: Emit) -> None:
            async with websocket(self.name, self.url, headers=headers) as ws:
                await ws.send_bytes(frame)
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.BINARY:
                        break
                    if read_response(self.name, msg.data, emit):
                        return
                raise TTSError(f"{self.name}: the connection closed before the last audio ({ws.close_code})")

        return AudioStream(self.name, produce, PcmDecoder(SAMPLE_RATE, label=f"{self.name} PCM"))


def pack_request(request: dict) -> bytes:
    payload = gzip.compress(json.dumps(request).encode("utf-8"))
    return REQUEST_HEADER + len(payload).to_bytes(4, "big") + payload


def read_response(label: str, data: bytes, emit: Emit) -> bool:
    """Handle one server message; True when it was the last."""
    if len(data) < 4:
        raise TTSError(f"{label}: a server message of {len(data)} bytes has no header")
    header_size = (data[0] & 0x0F) * 4
    kind, flags = data[1] >> 4, data[1] & 0x0F
    compression = data[2] & 0x0F
    payload = data[header_size:]
    if kind == AUDIO_ONLY:
        if flags == 0:
            return False  # an acknowledgement without audio
        sequence = int.from_bytes(payload[0:4], "big", signed=True)
        size = int.from_bytes(payload[4:8], "big")
        emit(payload[8 : 8 + size])
        return sequence < 0
    if kind == ERROR:
        code = int.from_bytes(payload[0:4], "big")
        size = int.from_bytes(payload[4:8], "big")
        message = payload[8 : 8 + size]
        if compression == GZIP:
            message = gzip.decompress(message)
        raise TTSError(f"{label}: error {code}: {message.decode('utf-8', 'replace')}")
    return False  # FRONTEND metadata (sentence timing) and anything newer: not audio
