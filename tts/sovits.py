"""GPT-SoVITS through its api_v2.py server: POST /tts, streamed WAV.

With `streaming_mode` the server sends a WAV header whose data size is 0 as soon as the
first fragment is ready, then raw 16-bit PCM fragment by fragment at the model's rate
(32 kHz for v2). Upstream asked for media_type "ogg", which arrives as one complete Ogg
file per fragment; WAV is the same audio without the per-fragment container.
The reference audio path is read by the GPT-SoVITS server, so it is a path on that machine.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

import voices
from audio_stream import WavDecoder
from tts.base import ServerEngine
from tts.http_stream import AudioStream, Emit, stream_request
from ttsreal import Voice


class SovitsEngine(ServerEngine):
    name = "gpt-sovits"
    request_ref = voices.REMOTE_PATH

    def __init__(
        self, server: str, ref_file: str | None = None, ref_text: str | None = None, language: str = "zh"
    ) -> None:
        super().__init__(server, ref_file, ref_text)
        # Upstream's language for both the text and the reference ("zh" reads Chinese mixed
        # with English).
        self.language = language

    def request(self, text: str, voice: Voice | None) -> dict:
        """The JSON body of POST /tts."""
        v = self.voice_for(voice)
        return {
            "text": text,
            "text_lang": self.language,
            "ref_audio_path": v.ref_file or "",
            "prompt_text": v.ref_text or "",
            "prompt_lang": self.language,
            "media_type": "wav",
            "streaming_mode": True,
        }

    def synthesize(self, text: str, voice: Voice | None = None) -> Iterator[tuple[np.ndarray, int]]:
        body = self.request(text, voice)

        async def produce(emit: Emit) -> None:
            await stream_request(self.name, "POST", f"{self.server}/tts", emit, json=body)

        return AudioStream(self.name, produce, WavDecoder(f"{self.name} WAV"))
