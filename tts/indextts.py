"""IndexTTS2 through its Gradio web UI (webui.py), as upstream used it, over Gradio 5's HTTP API.

    POST /gradio_api/upload                   the reference audio -> its path on the server
    POST /gradio_api/call/gen_single          the 24 inputs of gen_single -> an event id
    GET  /gradio_api/call/gen_single/<id>     server-sent events until "complete" (or "error")
    GET  /gradio_api/file=<path>              the generated WAV, decoded as it downloads

IndexTTS2 writes each sentence's WAV whole, so the voice starts after the sentence is
synthesised; the first clause of a message is therefore spoken apart (whole_sentences).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import aiohttp
import numpy as np

import voices
from audio_stream import WavDecoder, preview
from tts.base import ServerEngine
from tts.http_stream import (
    AudioStream,
    Emit,
    check_status,
    client_session,
    describe,
    network_error,
    read_ref_audio,
    request_json,
    stream_request,
    timeout,
)
from ttsreal import TTSError, Voice

API = "/gradio_api"
# The web UI's emotion choice, by its English label (upstream's value): the emotion follows
# the voice reference, so no emotion reference or vector is used.
SAME_AS_VOICE = "Same as the voice reference"
MAX_TEXT_TOKENS_PER_SEGMENT = 120
# Sampling settings of the web UI's advanced section, in its order and with its defaults:
# do_sample, top_p, top_k, temperature, length_penalty, num_beams, repetition_penalty,
# max_mel_tokens.
ADVANCED = [True, 0.8, 30, 0.8, 0.0, 3, 10.0, 1500]


class IndexTTS2Engine(ServerEngine):
    name = "indextts2"
    whole_sentences = True
    request_ref = voices.AUDIO_FILE

    def synthesize(self, text: str, voice: Voice | None = None) -> Iterator[tuple[np.ndarray, int]]:
        ref_file = self.voice_for(voice).ref_file
        audio = read_ref_audio(self.name, ref_file)
        filename = (ref_file or "reference.wav").replace("\\", "/").rsplit("/", 1)[-1]

        async def produce(emit: Emit) -> None:
            ref = await self._upload(filename, audio)
            event_id = await self._call(gen_single_inputs(text, ref))
            path = await self._result(event_id)
            await stream_request(self.name, "GET", f"{self.server}{API}/file={quote(path)}", emit)

        return AudioStream(self.name, produce, WavDecoder(f"{self.name} WAV"))

    async def _upload(self, filename: str, audio: bytes) -> dict:
        form = aiohttp.FormData()
        form.add_field("files", audio, filename=filename, content_type="application/octet-stream")
        paths = await request_json(self.name, "POST", f"{self.server}{API}/upload", data=form)
        if not isinstance(paths, list) or not paths or not isinstance(paths[0], str):
            raise TTSError(f"{self.name}: upload answered {str(paths)[:200]} instead of a file path")
        return {"path": paths[0], "orig_name": filename, "meta": {"_type": "gradio.FileData"}}

    async def _call(self, inputs: list) -> str:
        answer = await request_json(self.name, "POST", f"{self.server}{API}/call/gen_single", json={"data": inputs})
        event_id = answer.get("event_id") if isinstance(answer, dict) else None
        if not event_id:
            raise TTSError(f"{self.name}: gen_single answered {str(answer)[:200]} instead of an event id")
        return str(event_id)

    async def _result(self, event_id: str) -> str:
        """Follow the call's event stream to the generated file's path on the server."""
        url = f"{self.server}{API}/call/gen_single/{event_id}"
        session = await client_session()
        try:
            async with session.get(url, timeout=timeout()) as resp:
                await check_status(self.name, resp)
                event = ""
                async for raw in resp.content:  # one line at a time
                    line = raw.decode("utf-8", "replace").rstrip("\r\n")
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:") and event in ("complete", "error"):
                        return _file_path(self.name, event, line[5:].strip())
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise network_error(f"{self.name}: GET {url} failed: {describe(exc)}", exc) from None
        raise TTSError(f"{self.name}: the event stream of gen_single ended without a result")


def gen_single_inputs(text: str, ref: dict) -> list[Any]:
    """gen_single's inputs in the web UI's order."""
    emotion_vector = [0.5, 0, 0, 0, 0, 0, 0, 0]  # vec1..vec8, unused with SAME_AS_VOICE
    return [
        SAME_AS_VOICE,
        ref,  # prompt: the voice reference
        text,
        ref,  # emo_ref_path, unused with SAME_AS_VOICE
        0.8,  # emo_weight
        *emotion_vector,
        "",  # emo_text
        False,  # emo_random
        MAX_TEXT_TOKENS_PER_SEGMENT,
        *ADVANCED,
    ]


def _file_path(label: str, event: str, data: str) -> str:
    if event == "error":
        # Gradio sends null unless the app shows errors; then it is the exception's message.
        detail = data if data and data != "null" else "no detail (start the web UI with show_error to see it)"
        raise TTSError(f"{label}: gen_single failed on the server: {preview(detail.encode(), 300)}")
    try:
        output = json.loads(data)
    except ValueError:
        raise TTSError(f"{label}: gen_single sent a result that is not JSON: {preview(data.encode())}") from None
    path = _find_path(output)
    if path is None:
        raise TTSError(f"{label}: gen_single's result has no audio file: {preview(data.encode(), 300)}")
    return path


def _find_path(value: Any) -> str | None:
    """The first file path in a Gradio output (a FileData, maybe inside an update dict)."""
    if isinstance(value, dict):
        if isinstance(value.get("path"), str):
            return value["path"]
        value = list(value.values())
    if isinstance(value, list):
        for item in value:
            found = _find_path(item)
            if found is not None:
                return found
    return None
