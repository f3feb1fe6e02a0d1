"""CosyVoice through its FastAPI server (runtime/python/fastapi): /inference_zero_shot.

A multipart form carries the text, the reference text and the reference audio; the answer is
headerless 16-bit PCM streamed as the model produces it, at the model's rate: 24 kHz for
CosyVoice 2 and 3 (upstream's value), 22.05 kHz for CosyVoice 1 (set COSYVOICE_SAMPLE_RATE).
The route accepts GET and POST; POST is used because the request has a body.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import aiohttp
import numpy as np

import voices
from audio_stream import PcmDecoder
from tts.base import ServerEngine
from tts.http_stream import AudioStream, Emit, read_ref_audio, stream_request
from ttsreal import TTSError, Voice


class CosyVoiceEngine(ServerEngine):
    name = "cosyvoice"
    request_ref = voices.AUDIO_FILE

    def __init__(
        self, server: str, ref_file: str | None = None, ref_text: str | None = None, sample_rate: int | None = None
    ) -> None:
        super().__init__(server, ref_file, ref_text)
        self.sample_rate = int(sample_rate or os.environ.get("COSYVOICE_SAMPLE_RATE") or 24000)

    def synthesize(self, text: str, voice: Voice | None = None) -> Iterator[tuple[np.ndarray, int]]:
        v = self.voice_for(voice)
        audio = read_ref_audio(self.name, v.ref_file)
        if not v.ref_text:
            # Zero-shot cloning needs the words of the reference; the server would only say 422.
            raise TTSError(f"{self.name}: no reference text; set --REF_TEXT or send tts.ref_text")

        async def produce(emit: Emit) -> None:
            form = aiohttp.FormData()
            form.add_field("tts_text", text)
            form.add_field("prompt_text", v.ref_text or "")
            form.add_field("prompt_wav", audio, filename="prompt_wav", content_type="application/octet-stream")
            await stream_request(self.name, "POST", f"{self.server}/inference_zero_shot", emit, data=form)

        return AudioStream(self.name, produce, PcmDecoder(self.sample_rate, label=f"{self.name} PCM"))
