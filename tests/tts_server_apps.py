"""Local stand-ins for the self-hosted TTS servers, speaking their real HTTP APIs.

Paths, parameters, validation answers and streamed formats follow each project's server:
GPT-SoVITS api_v2.py, coqui xtts-streaming-server, CosyVoice runtime/python/fastapi,
Fish Speech's API server and IndexTTS2's Gradio web UI. The speech is real (Piper). Each
records what it was asked in its Control and fails on demand:
"http500" (an unhandled server error), "garbage" (200 with bytes that are not audio), and for
GPT-SoVITS "cut" (the connection dropped half-way through the audio).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import uuid

import soundfile as sf
from aiohttp import web
from tts_local import ERROR_PAGE, GARBAGE, Control, Speech, split_bytes, stream_http, wav_file, wav_header

INTERNAL_ERROR = "Internal Server Error"  # what uvicorn answers for an unhandled exception


def _fail_500() -> web.Response:
    return web.Response(status=500, text=INTERNAL_ERROR, content_type="text/plain")


async def _speech(text: str, rate: int) -> bytes:
    # Piper runs in a thread so one slow synthesis does not stall the server's loop.
    return await asyncio.get_running_loop().run_in_executor(None, Speech.pcm16, text, rate)


def _is_audio(data: bytes) -> bool:
    try:
        sf.info(io.BytesIO(data))
        return True
    except Exception:
        return False


# --- GPT-SoVITS api_v2 ---------------------------------------------------------------------------

SOVITS_RATE = 32000
SOVITS_LANGS = {"auto", "auto_yue", "en", "zh", "ja", "yue", "ko", "all_zh", "all_ja", "all_yue", "all_ko"}


def sovits_app(control: Control) -> web.Application:
    async def tts(request: web.Request) -> web.StreamResponse:
        req = await request.json()
        control.record(path=request.path, method=request.method, body=req)
        # api_v2's check_params, same messages
        for name in ("text", "text_lang", "ref_audio_path", "prompt_lang"):
            if req.get(name) in (None, ""):
                return web.json_response({"message": f"{name} is required"}, status=400)
        if req["text_lang"].lower() not in SOVITS_LANGS:
            message = f"text_lang: {req['text_lang']} is not supported in version v2"
            return web.json_response({"message": message}, status=400)
        if req.get("media_type", "wav") not in ("wav", "raw", "ogg", "aac"):
            return web.json_response({"message": f"media_type: {req['media_type']} is not supported"}, status=400)
        failure = control.next_failure()
        if failure == "http500":
            return _fail_500()
        if not req.get("streaming_mode") or req.get("media_type") != "wav":
            return web.json_response({"message": "this stand-in streams wav only"}, status=400)
        pcm = GARBAGE if failure == "garbage" else await _speech(req["text"], SOVITS_RATE)
        # The first fragment is preceded by a header with no length; fragments follow as ready.
        header = b"" if failure == "garbage" else wav_header(SOVITS_RATE)
        parts = [header + pcm[:6401], *split_bytes(pcm[6401:], 12801)]
        return await stream_http(request, control, parts, "audio/wav", cut=failure == "cut")

    app = web.Application()
    app.router.add_post("/tts", tts)
    return app


# --- coqui xtts-streaming-server -----------------------------------------------------------------

XTTS_RATE = 24000
XTTS_LANGS = {"en", "de", "fr", "es", "it", "pl", "pt", "tr", "ru", "nl", "cs", "ar", "zh-cn", "ja", "hu", "ko", "hi"}


def _speaker_for(audio: bytes) -> dict:
    """Conditioning of the real shapes (32 x 1024 latents, 512 embedding), derived from the audio."""
    seed = int.from_bytes(hashlib.sha256(audio).digest()[:4], "big")
    marker = (seed % 10000) / 10000
    return {
        "gpt_cond_latent": [[marker] * 1024 for _ in range(32)],
        "speaker_embedding": [marker] * 512,
    }


def xtts_app(control: Control) -> web.Application:
    speakers: dict[float, str] = {}  # embedding marker -> uploaded file's digest

    async def clone_speaker(request: web.Request) -> web.Response:
        form = await request.post()
        upload = form.get("wav_file")
        if upload is None or not hasattr(upload, "file"):
            return web.json_response({"detail": [{"loc": ["body", "wav_file"], "msg": "field required"}]}, status=422)
        audio = upload.file.read()
        control.record(path=request.path, digest=hashlib.sha256(audio).hexdigest())
        if not _is_audio(audio):
            return _fail_500()
        speaker = _speaker_for(audio)
        speakers[speaker["speaker_embedding"][0]] = hashlib.sha256(audio).hexdigest()
        return web.json_response(speaker)

    async def tts_stream(request: web.Request) -> web.StreamResponse:
        req = await request.json()
        embedding = req.get("speaker_embedding")
        control.record(
            path=request.path,
            text=req.get("text"),
            language=req.get("language"),
            stream_chunk_size=req.get("stream_chunk_size"),
            add_wav_header=req.get("add_wav_header"),
            speaker=speakers.get(embedding[0]) if isinstance(embedding, list) and embedding else None,
        )
        missing = [k for k in ("speaker_embedding", "gpt_cond_latent", "text", "language") if k not in req]
        if missing or req["language"] not in XTTS_LANGS:
            detail = [{"loc": ["body", k], "msg": "field required"} for k in missing] or [
                {"loc": ["body", "language"], "msg": "unexpected value"}
            ]
            return web.json_response({"detail": detail}, status=422)
        failure = control.next_failure()
        if failure == "http500":
            return _fail_500()
        pcm = GARBAGE if failure == "garbage" else await _speech(req["text"], XTTS_RATE)
        header = wav_header(XTTS_RATE) if req.get("add_wav_header", True) and failure != "garbage" else b""
        parts = [header, *split_bytes(pcm, 9601)]
        return await stream_http(request, control, parts, "audio/wav")

    app = web.Application()
    app.router.add_post("/clone_speaker", clone_speaker)
    app.router.add_post("/tts_stream", tts_stream)
    return app


# --- CosyVoice FastAPI server --------------------------------------------------------------------

COSY_RATE = 24000


def cosyvoice_app(control: Control) -> web.Application:
    async def inference_zero_shot(request: web.Request) -> web.StreamResponse:
        form = await request.post()
        upload = form.get("prompt_wav")
        prompt = upload.file.read() if upload is not None and hasattr(upload, "file") else None
        control.record(
            path=request.path,
            method=request.method,
            tts_text=form.get("tts_text"),
            prompt_text=form.get("prompt_text"),
            prompt_digest=hashlib.sha256(prompt).hexdigest() if prompt else None,
        )
        missing = [k for k in ("tts_text", "prompt_text") if form.get(k) is None]
        missing += [] if prompt else ["prompt_wav"]
        if missing:
            return web.json_response({"detail": [{"loc": ["body", k], "msg": "field required"} for k in missing]}, 422)
        failure = control.next_failure()
        if failure == "http500" or not _is_audio(prompt):  # load_wav raising is a 500 there
            return _fail_500()
        pcm = ERROR_PAGE if failure == "garbage" else await _speech(str(form["tts_text"]), COSY_RATE)
        # Raw 16-bit PCM, model output piece by piece, no header.
        return await stream_http(request, control, split_bytes(pcm, 7777), "application/octet-stream")

    app = web.Application()
    app.router.add_route("GET", "/inference_zero_shot", inference_zero_shot)
    app.router.add_post("/inference_zero_shot", inference_zero_shot)
    return app


# --- Fish Speech API server ----------------------------------------------------------------------

FISH_RATE = 44100


def fish_app(control: Control) -> web.Application:
    async def tts(request: web.Request) -> web.StreamResponse:
        req = await request.json()
        references = [
            {"digest": hashlib.sha256(base64.b64decode(r["audio"])).hexdigest(), "text": r.get("text")}
            for r in req.get("references") or []
        ]
        control.record(
            path=request.path,
            text=req.get("text"),
            format=req.get("format"),
            streaming=req.get("streaming"),
            reference_id=req.get("reference_id"),
            references=references,
            use_memory_cache=req.get("use_memory_cache"),
        )
        if not isinstance(req.get("text"), str):
            return web.json_response({"detail": [{"loc": ["body", "text"], "msg": "field required"}]}, status=422)
        if req.get("streaming") and req.get("format", "wav") != "wav":
            return web.Response(status=400, text="Streaming only supports WAV format")
        failure = control.next_failure()
        if failure == "http500":
            return _fail_500()
        pcm = GARBAGE if failure == "garbage" else await _speech(req["text"], FISH_RATE)
        header = b"" if failure == "garbage" else wav_header(FISH_RATE)
        parts = [header, *split_bytes(pcm, 17641)]
        return await stream_http(request, control, parts, "audio/wav")

    app = web.Application()
    app.router.add_post("/v1/tts", tts)
    return app


# --- IndexTTS2 Gradio web UI ---------------------------------------------------------------------

INDEX_RATE = 22050
EMO_CHOICES = [
    "Same as the voice reference",
    "Use emotion reference audio",
    "Use emotion vectors",
    "Use text description to control emotion",
]
GEN_SINGLE_INPUTS = 24


def indextts_app(control: Control) -> web.Application:
    uploads: dict[str, bytes] = {}
    outputs: dict[str, bytes] = {}
    calls: dict[str, list] = {}

    async def upload(request: web.Request) -> web.Response:
        form = await request.post()
        files = form.getall("files", [])
        paths = []
        for item in files:
            path = f"/tmp/gradio/{uuid.uuid4().hex}/{item.filename}"
            uploads[path] = item.file.read()
            paths.append(path)
        return web.json_response(paths)

    async def call(request: web.Request) -> web.Response:
        body = await request.json()
        data = body.get("data")
        if not isinstance(data, list):
            return web.json_response({"detail": "data must be a list"}, status=422)
        event_id = uuid.uuid4().hex
        calls[event_id] = data
        return web.json_response({"event_id": event_id})

    async def result(request: web.Request) -> web.StreamResponse:
        data = calls.pop(request.match_info["event_id"], None)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if data is None:
            await resp.write(b"event: error\ndata: null\n\n")
            return resp
        prompt = data[1] if len(data) > 1 and isinstance(data[1], dict) else {}
        control.record(
            path="/gradio_api/call/gen_single",
            inputs=len(data),
            emo_control_method=data[0] if data else None,
            text=data[2] if len(data) > 2 else None,
            prompt=hashlib.sha256(uploads[prompt["path"]]).hexdigest() if prompt.get("path") in uploads else None,
            prompt_name=prompt.get("orig_name"),
        )
        failure = control.next_failure()
        await resp.write(b"event: heartbeat\ndata: null\n\n")
        if (
            len(data) != GEN_SINGLE_INPUTS
            or data[0] not in EMO_CHOICES
            or prompt.get("path") not in uploads
            or failure == "http500"
        ):
            # What Gradio sends when the function raises (without show_error).
            await resp.write(b"event: error\ndata: null\n\n")
            return resp
        audio = GARBAGE if failure == "garbage" else wav_file(str(data[2]), INDEX_RATE)
        path = f"/tmp/gradio/{uuid.uuid4().hex}/spk_{len(outputs)}.wav"
        outputs[path] = audio
        value = {
            "path": path,
            "url": f"http://{request.host}/gradio_api/file={path}",
            "size": None,
            "orig_name": path.rsplit("/", 1)[-1],
            "mime_type": None,
            "is_stream": False,
            "meta": {"_type": "gradio.FileData"},
        }
        message = json.dumps([{"__type__": "update", "visible": True, "value": value}])
        await resp.write(f"event: complete\ndata: {message}\n\n".encode())
        return resp

    async def file(request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        if path not in outputs:
            return web.json_response({"detail": "File not allowed"}, status=403)
        return await stream_http(request, control, split_bytes(outputs[path], 8192), "audio/wav")

    app = web.Application()
    app.router.add_post("/gradio_api/upload", upload)
    app.router.add_post("/gradio_api/call/gen_single", call)
    app.router.add_get("/gradio_api/call/gen_single/{event_id}", result)
    app.router.add_get("/gradio_api/file={path:.+}", file)
    return app
