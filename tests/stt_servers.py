"""Local speech-to-text servers speaking the real protocols, for the --asr engine tests.

- `OpenAITranscriber`: `POST /v1/audio/transcriptions` as OpenAI documents it: a
  multipart/form-data body with the audio in `file` and the form fields `model` (required),
  `language`, `prompt`, `response_format`, `temperature`...; an unknown field, a missing
  one or audio that does not decode is a 400 with OpenAI's error body
  `{"error": {"message", "type", "param", "code"}}`; `response_format` json answers
  `{"text": ...}`.
- `FunAsrServer`: the FunASR runtime websocket (runtime/docs/websocket_protocol.md): a JSON
  configuration first, binary PCM audio, `{"is_speaking": false}`, then the result
  `{"mode": "offline", "wav_name", "text", "is_final"}`.

Both record what they were sent and misbehave on demand (a delay, an HTTP error, an answer
that is not JSON, a connection closed without an answer). They run on 127.0.0.1 from their
own event loop thread (tts_local.ServerThread), so any test loop can use them.
"""

from __future__ import annotations

import asyncio
import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soundfile as sf
from aiohttp import web
from tts_local import ServerThread

# --- OpenAI audio/transcriptions -------------------------------------------------------------------

OPENAI_FIELDS = {
    "file", "model", "language", "prompt", "response_format", "temperature",
    "timestamp_granularities[]", "include[]", "chunking_strategy", "stream",
}
OPENAI_FORMATS = {"json", "text", "srt", "verbose_json", "vtt"}
OPENAI_AUDIO_SUFFIXES = (".flac", ".mp3", ".mp4", ".mpeg", ".mpga", ".m4a", ".ogg", ".wav", ".webm")


@dataclass
class Transcription:
    """One request the OpenAI stand-in received."""

    fields: dict[str, str]  # the form fields other than the file
    filename: str | None = None
    content_type: str | None = None  # of the file part
    wav_seconds: float | None = None
    wav_rate: int | None = None
    wav_channels: int | None = None
    wav_subtype: str | None = None  # soundfile's name for the sample format, e.g. PCM_16
    authorization: str | None = None  # the header, verbatim


def openai_error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.json_response(body, status=status)


class OpenAITranscriber:
    """The endpoint, at `url` (the API base, like https://api.openai.com/v1)."""

    def __init__(self) -> None:
        self.text = "What is the capital of France?"
        self.delay = 0.0  # seconds before answering
        self.status = 200  # anything else answers an OpenAI error body with this status
        self.message = "The server had an error while processing your request."
        self.raw_answer: bytes | None = None  # answered with 200 instead of JSON when set
        self.requests: list[Transcription] = []
        app = web.Application(client_max_size=25 << 20)  # OpenAI's file limit is 25 MB
        app.router.add_post("/v1/audio/transcriptions", self._transcriptions)
        self._server = ServerThread(app)

    @property
    def url(self) -> str:
        return f"{self._server.url}/v1"

    def stop(self) -> None:
        self._server.stop()

    async def _transcriptions(self, request: web.Request) -> web.StreamResponse:
        if not request.content_type.startswith("multipart/form-data"):
            return openai_error(400, "Could not parse multipart form")
        record = Transcription(fields={}, authorization=request.headers.get("Authorization"))
        self.requests.append(record)
        audio: bytes | None = None
        reader = await request.multipart()
        async for part in reader:
            name = part.name or ""
            if name not in OPENAI_FIELDS:
                return openai_error(400, f"Unrecognized request argument supplied: {name}")
            if name == "file":
                record.filename, record.content_type = part.filename, part.headers.get("Content-Type")
                audio = bytes(await part.read())
            else:
                record.fields[name] = await part.text()
        if audio is None:
            return openai_error(400, "you must provide a file parameter", param="file")
        if not record.fields.get("model"):
            return openai_error(400, "you must provide a model parameter", param="model")
        fmt = record.fields.get("response_format", "json")
        if fmt not in OPENAI_FORMATS:
            return openai_error(400, f"'{fmt}' is not one of {sorted(OPENAI_FORMATS)} - 'response_format'",
                                param="response_format")
        if not (record.filename or "").lower().endswith(OPENAI_AUDIO_SUFFIXES):
            return openai_error(400, f"Invalid file format. Supported formats: {list(OPENAI_AUDIO_SUFFIXES)}",
                                param="file")
        try:
            info = sf.info(io.BytesIO(audio or b""))
        except Exception:
            return openai_error(400, "Audio file might be corrupted or unsupported", param="file",
                                code="invalid_value")
        record.wav_seconds, record.wav_rate = info.frames / info.samplerate, info.samplerate
        record.wav_channels, record.wav_subtype = info.channels, info.subtype
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status != 200:
            return openai_error(self.status, self.message, kind="server_error")
        if self.raw_answer is not None:
            return web.Response(body=self.raw_answer, content_type="text/html")
        if fmt == "text":
            return web.Response(text=self.text)
        return web.json_response({"text": self.text})


# --- FunASR runtime websocket ----------------------------------------------------------------------

FUNASR_MODES = {"offline", "online", "2pass"}


@dataclass
class FunAsrSession:
    """One connection to the FunASR stand-in."""

    config: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)  # where the client broke the protocol
    audio_bytes: int = 0
    messages: list[int] = field(default_factory=list)  # the size of each binary message
    pcm: bytearray = field(default_factory=bytearray)
    ended: bool = False  # {"is_speaking": false} arrived
    protocol: str | None = None  # the websocket subprotocol agreed

    @property
    def audio(self) -> np.ndarray:
        return np.frombuffer(bytes(self.pcm), dtype="<i2").astype(np.float32) / 32768.0

    @property
    def seconds(self) -> float:
        return self.audio_bytes / 2 / 16000


def check_config(config: Any) -> list[str]:
    """What is wrong with a first message, by the protocol's table of parameters."""
    if not isinstance(config, dict):
        return [f"the first message is not a JSON object: {config!r}"]
    problems = []
    expect = {
        "mode": lambda v: v in FUNASR_MODES,
        "wav_name": lambda v: isinstance(v, str) and v != "",
        "wav_format": lambda v: v == "pcm",
        "audio_fs": lambda v: v in (8000, 16000) and isinstance(v, int),
        "is_speaking": lambda v: v is True,
        "chunk_size": lambda v: isinstance(v, list) and len(v) == 3 and all(isinstance(x, int) for x in v),
        "chunk_interval": lambda v: isinstance(v, int) and v > 0,
        "itn": lambda v: isinstance(v, bool),
        "hotwords": lambda v: isinstance(v, str),
    }
    for name, valid in expect.items():
        if name not in config:
            problems.append(f"no {name}")
        elif not valid(config[name]):
            problems.append(f"bad {name}: {config[name]!r}")
    return problems


class FunAsrServer:
    """The websocket server at `url` (ws://127.0.0.1:PORT, as FunASR listens on any path)."""

    def __init__(self) -> None:
        self.text = "What is the capital of France?"
        self.is_final: bool | None = True  # None leaves the field out
        self.mode = "offline"  # the result's mode
        self.before: list[dict[str, Any]] = []  # results sent before the final one
        self.delay = 0.0  # seconds between {"is_speaking": false} and the result
        self.close_without_answer = False
        self.sessions: list[FunAsrSession] = []
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._serve)
        self._server = ServerThread(app)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self._server.port}"

    def stop(self) -> None:
        self._server.stop()

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(protocols=("binary",), max_msg_size=4 << 20)
        await ws.prepare(request)
        session = FunAsrSession(protocol=ws.ws_protocol)
        self.sessions.append(session)
        async for msg in ws:
            if msg.type == web.WSMsgType.BINARY:
                if session.config is None:
                    session.problems.append("audio before the configuration")
                session.audio_bytes += len(msg.data)
                session.messages.append(len(msg.data))
                session.pcm.extend(msg.data)
                continue
            if msg.type != web.WSMsgType.TEXT:
                break
            try:
                data = json.loads(msg.data)
            except ValueError:
                session.problems.append(f"a text message that is not JSON: {msg.data[:80]!r}")
                break
            if session.config is None:
                session.config = data
                session.problems.extend(check_config(data))
                continue
            if isinstance(data, dict) and data.get("is_speaking") is False:
                session.ended = True
                await self._answer(ws, session)
                if self.close_without_answer:
                    break
        await ws.close()
        return ws

    async def _answer(self, ws: web.WebSocketResponse, session: FunAsrSession) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.close_without_answer or ws.closed:
            return
        wav_name = (session.config or {}).get("wav_name", "wav-default-id")
        result: dict[str, Any] = {"mode": self.mode, "wav_name": wav_name, "text": self.text}
        if self.is_final is not None:
            result["is_final"] = self.is_final
        try:
            for extra in self.before:
                await ws.send_str(json.dumps({"wav_name": wav_name, **extra}))
            await ws.send_str(json.dumps(result, ensure_ascii=False))
        except ConnectionResetError:
            pass  # the client gave up waiting (the slow-server tests)
