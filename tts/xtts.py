"""XTTS through coqui's xtts-streaming-server: POST /clone_speaker, then POST /tts_stream.

The server turns reference audio into a speaker (conditioning latents and an embedding,
as JSON); each sentence then posts the speaker with the text and receives a WAV header
(24 kHz, data size 0) followed by raw 16-bit PCM as the model produces it. Speakers are
cloned once per reference file content and kept, as upstream cloned its one speaker at start.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import aiohttp
import numpy as np

import voices
from audio_stream import WavDecoder
from tts.base import ServerEngine
from tts.http_stream import AudioStream, Emit, read_ref_audio, request_json, stream_request
from ttsreal import TTSError, Voice


class XttsEngine(ServerEngine):
    name = "xtts"
    request_ref = voices.AUDIO_FILE

    def __init__(
        self,
        server: str,
        ref_file: str | None = None,
        ref_text: str | None = None,
        language: str = "zh-cn",
        stream_chunk_size: str = "20",
    ) -> None:
        super().__init__(server, ref_file, ref_text)
        self.language = language
        # Upstream's value: smaller starts sooner but sounds worse.
        self.stream_chunk_size = stream_chunk_size
        # Reference audio digest -> speaker JSON; only touched on the I/O loop.
        self._speakers: dict[str, dict] = {}

    def synthesize(self, text: str, voice: Voice | None = None) -> Iterator[tuple[np.ndarray, int]]:
        ref_file = self.voice_for(voice).ref_file
        audio = read_ref_audio(self.name, ref_file)  # here, so a bad path fails before any request
        key = hashlib.sha256(audio).hexdigest()

        async def produce(emit: Emit) -> None:
            speaker = self._speakers.get(key)
            if speaker is None:
                speaker = await self._clone(ref_file or "reference.wav", audio)
                self._speakers[key] = speaker
            body = {
                **speaker,
                "text": text,
                "language": self.language,
                "stream_chunk_size": self.stream_chunk_size,
                "add_wav_header": True,
            }
            await stream_request(self.name, "POST", f"{self.server}/tts_stream", emit, json=body)

        return AudioStream(self.name, produce, WavDecoder(f"{self.name} WAV"))

    async def _clone(self, ref_file: str, audio: bytes) -> dict:
        form = aiohttp.FormData()
        form.add_field("wav_file", audio, filename="reference.wav", content_type="audio/wav")
        speaker = await request_json(self.name, "POST", f"{self.server}/clone_speaker", data=form)
        if not isinstance(speaker, dict) or not {"gpt_cond_latent", "speaker_embedding"} <= speaker.keys():
            raise TTSError(f"{self.name}: /clone_speaker gave no speaker for {ref_file!r}: {str(speaker)[:200]}")
        return speaker
