"""Fish Speech through its API server: POST /v1/tts with "streaming": true.

The server streams a WAV header (44.1 kHz, data size 0), then raw 16-bit PCM segment by
segment. The voice is either a reference stored on the server (`reference_id`, upstream's
use of --REF_FILE) or, when --REF_FILE / tts.ref_file is a local audio file, that audio and
its text sent inline as `references` (base64 in JSON, which the server decodes).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import numpy as np

import voices
from audio_stream import WavDecoder
from tts.base import ServerEngine
from tts.http_stream import AudioStream, Emit, read_ref_audio, stream_request
from ttsreal import Voice


class FishEngine(ServerEngine):
    name = "fishtts"
    request_ref = voices.NAME_OR_AUDIO_FILE

    def request(self, text: str, voice: Voice | None) -> dict:
        """The JSON body of POST /v1/tts."""
        v = self.voice_for(voice)
        body: dict = {
            "text": text,
            "format": "wav",  # the only format Fish Speech streams
            "streaming": True,
            "use_memory_cache": "on",  # the server keeps the reference's encoding between requests
        }
        if v.ref_file and Path(v.ref_file).suffix.lower() in voices.AUDIO_SUFFIXES:
            audio = read_ref_audio(self.name, v.ref_file)
            body["references"] = [{"audio": base64.b64encode(audio).decode("ascii"), "text": v.ref_text or ""}]
        elif v.ref_file:
            body["reference_id"] = v.ref_file
        return body

    def synthesize(self, text: str, voice: Voice | None = None) -> Iterator[tuple[np.ndarray, int]]:
        body = self.request(text, voice)

        async def produce(emit: Emit) -> None:
            await stream_request(self.name, "POST", f"{self.server}/v1/tts", emit, json=body)

        return AudioStream(self.name, produce, WavDecoder(f"{self.name} WAV"))
