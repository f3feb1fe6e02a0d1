"""Tencent Cloud streaming speech synthesis (TextToStreamAudio), as upstream used it.

    POST https://tts.cloud.tencent.com/stream, JSON parameters, header Authorization: the
    base64 HMAC-SHA1 (key TENCENT_SECRET_KEY) of "POST" + host + path + "?" + the parameters
    sorted by name as k=v joined by "&".

The answer streams raw 16-bit PCM at the requested 16 kHz; a refusal also comes with status
200, as a JSON body {"Response": {"Error": {"Code", "Message"}}}, recognised by its first byte.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import numpy as np

from audio_stream import PcmDecoder, looks_like_text, preview
from tts.base import CloudEngine
from tts.http_stream import AudioStream, Emit, stream_request
from ttsreal import TTSError, Voice

URL = "https://tts.cloud.tencent.com/stream"
SAMPLE_RATE = 16000


class TencentEngine(CloudEngine):
    name = "tencent"
    env = ("TENCENT_APPID", "TENCENT_SECRET_ID", "TENCENT_SECRET_KEY")
    default_voice_name = "101001"  # VoiceType 101001, a standard Mandarin female voice

    def __init__(self, voice: str | None = None, keys: dict[str, str | None] | None = None, url: str = URL) -> None:
        super().__init__(voice, keys)
        self.url = url
        _voice_type(self.name, self.voice)  # a wrong --REF_FILE is a startup error

    def request(self, text: str, voice: Voice | None) -> tuple[dict, str]:
        """The JSON parameters and their signature."""
        keys = self.require_keys()
        now = int(time.time())
        params = {
            "Action": "TextToStreamAudio",
            "AppId": _app_id(self.name, keys["TENCENT_APPID"]),
            "SecretId": keys["TENCENT_SECRET_ID"],
            "ModelType": 1,
            "VoiceType": _voice_type(self.name, self.voice_name(voice)),
            "Codec": "pcm",
            "SampleRate": SAMPLE_RATE,
            "Speed": 0,
            "Volume": 0,
            "SessionId": str(uuid.uuid4()),
            "Text": text,
            "Timestamp": now,
            "Expired": now + 24 * 60 * 60,
        }
        return params, sign(keys["TENCENT_SECRET_KEY"], self.url, params)

    def synthesize(self, text: str, voice: Voice | None = None) -> Iterator[tuple[np.ndarray, int]]:
        params, signature = self.request(text, voice)
        headers = {"Content-Type": "application/json", "Authorization": signature}

        async def produce(emit: Emit) -> None:
            refusal: bytearray | None = None
            started = False

            def take(data: bytes) -> None:
                nonlocal refusal, started
                if refusal is None and not started and looks_like_text(data):
                    refusal = bytearray()
                started = True
                if refusal is not None:
                    refusal += data
                else:
                    emit(data)

            await stream_request(self.name, "POST", self.url, take, data=json.dumps(params), headers=headers)
            if refusal is not None:
                raise TTSError(f"{self.name}: {_error_message(bytes(refusal))}")

        return AudioStream(self.name, produce, PcmDecoder(SAMPLE_RATE, label=f"{self.name} PCM"))


def sign(secret_key: str, url: str, params: dict) -> str:
    """Tencent's v1 signature of a POST to `url` with these parameters."""
    parts = urlsplit(url)
    query = "&".join(f"{name}={params[name]}" for name in sorted(params))
    message = f"POST{parts.netloc}{parts.path}?{query}"
    digest = hmac.new(secret_key.encode("utf-8"), message.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def _voice_type(label: str, voice: str) -> int:
    try:
        return int(voice)
    except ValueError:
        raise TTSError(f"{label}: the voice must be a numeric VoiceType such as 101001, got {voice!r}") from None


def _app_id(label: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise TTSError(f"{label}: TENCENT_APPID must be a number, got {value!r}") from None


def _error_message(body: bytes) -> str:
    try:
        error = json.loads(body)["Response"]["Error"]
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}".strip()
    except (ValueError, KeyError, TypeError):
        return f"the service answered: {preview(body, 300)}"
