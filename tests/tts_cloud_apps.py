"""Local stand-ins for the cloud TTS services, at the protocol level: Edge's read-aloud
websocket, Tencent's signed streaming POST, Doubao's binary websocket and Azure's REST
endpoint. They check what the real services check (tokens, signatures, keys, formats),
answer with real speech (Piper) in the service's format and record what they were asked.

Failures on demand (Control.failures): "http500" (a server error, or a refused websocket
upgrade), "garbage" (bytes that are not audio where audio belongs), "forbidden" (Edge's 403
with the server's Date, which a client with a wrong clock gets).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import hmac
import json
import re
import time
import uuid
from email.utils import formatdate
from xml.etree import ElementTree

from aiohttp import web
from tts_local import ERROR_PAGE, GARBAGE, Control, Speech, split_bytes, stream_http

TENCENT_KEYS = {"TENCENT_APPID": "1300000000", "TENCENT_SECRET_ID": "AKIDtest", "TENCENT_SECRET_KEY": "s3cret"}
DOUBAO_KEYS = {"DOUBAO_APPID": "8000000", "DOUBAO_TOKEN": "tok-123"}
AZURE_KEYS = {"AZURE_SPEECH_KEY": "azkey", "AZURE_TTS_REGION": "eastasia"}


async def _speech(text: str, make, *args) -> bytes:
    return await asyncio.get_running_loop().run_in_executor(None, make, text, *args)


def _http500() -> web.Response:
    return web.Response(status=500, text="Internal Server Error")


async def _watch_close(ws: web.WebSocketResponse, control: Control, closed: asyncio.Event) -> None:
    """Read what the client sends after its request: its close is how it hangs up."""
    async for _ in ws:
        pass
    closed.set()


async def _answer(
    request: web.Request,
    ws: web.WebSocketResponse,
    control: Control,
    messages: list,
    closed: asyncio.Event,
    watcher: asyncio.Future,
) -> None:
    """Send a whole answer; when the client stayed to the end, mark it finished and close."""
    if await _send_held(request, ws, control, messages, closed):
        control.finished.set()
        await ws.close()
    watcher.cancel()


async def _send_held(
    request: web.Request, ws: web.WebSocketResponse, control: Control, messages: list, closed: asyncio.Event
) -> bool:
    """Send websocket messages, pausing half-way as the control says; False if the client left."""

    def gone() -> bool:
        return closed.is_set() or ws.closed or request.transport is None or request.transport.is_closing()

    half = len(messages) // 2
    try:
        for i, message in enumerate(messages):
            if i == half and not await control.midway(gone):
                return False
            if isinstance(message, str):
                await ws.send_str(message)
            else:
                await ws.send_bytes(message)
            await asyncio.sleep(0)
    except (ConnectionResetError, RuntimeError):
        control.hung_up.set()
        return False
    return True


# --- Edge read-aloud -----------------------------------------------------------------------------

EDGE_PATH = "/consumer/speech/synthesize/readaloud/edge/v1"
GEC = re.compile(r"^[0-9A-F]{16}-[0-9A-F]{64}$")


def _edge_text(path: str, body: str, request_id: str) -> str:
    return f"X-RequestId:{request_id}\r\nContent-Type:application/json; charset=utf-8\r\nPath:{path}\r\n\r\n{body}"


def _edge_audio(request_id: str, data: bytes, content_type: bool = True) -> bytes:
    kind = "Content-Type:audio/mpeg\r\n" if content_type else ""  # the end-of-audio marker has none
    headers = f"X-RequestId:{request_id}\r\n{kind}Path:audio\r\n"
    raw = headers.encode()
    return len(raw).to_bytes(2, "big") + raw + data


def _headers_and_body(message: str) -> tuple[dict[str, str], str]:
    head, _, body = message.partition("\r\n\r\n")
    headers = dict(line.split(":", 1) for line in head.split("\r\n") if ":" in line)
    return headers, body


def edge_app(control: Control) -> web.Application:
    async def synthesize(request: web.Request) -> web.StreamResponse:
        query = request.query
        failure = control.next_failure()
        if failure == "forbidden":
            return web.Response(status=403, headers={"Date": formatdate(time.time(), usegmt=True)})
        if failure == "http500":
            return _http500()
        if (
            query.get("TrustedClientToken") is None
            or not re.fullmatch(r"[0-9a-f]{32}", query.get("ConnectionId", ""))
            or not GEC.match(query.get("Sec-MS-GEC", ""))
            or not query.get("Sec-MS-GEC-Version")
        ):
            return web.Response(status=403)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        config_msg = await ws.receive_str(timeout=5)
        ssml_msg = await ws.receive_str(timeout=5)
        config_headers, config_body = _headers_and_body(config_msg)
        ssml_headers, ssml = _headers_and_body(ssml_msg)
        root = ElementTree.fromstring(ssml)
        ns = {"s": "http://www.w3.org/2001/10/synthesis"}
        voice = root.find("s:voice", ns)
        text = "".join(voice.itertext())
        control.record(
            path=request.path,
            query=dict(query),
            muid="muid=" in request.headers.get("Cookie", ""),
            config_path=config_headers.get("Path"),
            output_format=json.loads(config_body)["context"]["synthesis"]["audio"]["outputFormat"],
            ssml_path=ssml_headers.get("Path"),
            voice=voice.get("name"),
            text=text,
        )
        closed = asyncio.Event()
        watcher = asyncio.ensure_future(_watch_close(ws, control, closed))
        request_id = ssml_headers.get("X-RequestId", uuid.uuid4().hex)
        audio = GARBAGE if failure == "garbage" else await _speech(text, Speech.mp3)
        messages: list = [_edge_text("turn.start", '{"context":{"serviceTag":"test"}}', request_id)]
        messages += [_edge_text("response", '{"context":{"serviceTag":"test"},"audio":{"type":"inline"}}', request_id)]
        messages += [_edge_audio(request_id, part) for part in split_bytes(audio, 2881)]
        messages += [_edge_audio(request_id, b"", content_type=False), _edge_text("turn.end", "{}", request_id)]
        await _answer(request, ws, control, messages, closed, watcher)
        return ws

    app = web.Application()
    app.router.add_get(EDGE_PATH, synthesize)
    return app


# --- Tencent TextToStreamAudio -------------------------------------------------------------------


def tencent_app(control: Control) -> web.Application:
    async def stream(request: web.Request) -> web.StreamResponse:
        params = await request.json()
        query = "&".join(f"{k}={params[k]}" for k in sorted(params))
        message = f"POST{request.host}{request.path}?{query}".encode()
        expected = hmac.new(TENCENT_KEYS["TENCENT_SECRET_KEY"].encode(), message, hashlib.sha1).digest()
        signed = hmac.compare_digest(request.headers.get("Authorization", ""), base64.b64encode(expected).decode())
        control.record(path=request.path, params=params, signed=signed)

        def refuse(code: str, message: str) -> web.Response:
            # Tencent refuses with status 200 and JSON.
            body = {"Response": {"Error": {"Code": code, "Message": message}, "RequestId": str(uuid.uuid4())}}
            return web.json_response(body)

        if params.get("SecretId") != TENCENT_KEYS["TENCENT_SECRET_ID"]:
            return refuse("AuthFailure.SecretIdNotFound", "The SecretId is not found.")
        if not signed:
            return refuse("AuthFailure.SignatureFailure", "The provided credentials could not be validated.")
        if params.get("Action") != "TextToStreamAudio" or str(params.get("AppId")) != TENCENT_KEYS["TENCENT_APPID"]:
            return refuse("InvalidParameter", "Action or AppId")
        failure = control.next_failure()
        if failure == "http500":
            return _http500()
        pcm = ERROR_PAGE if failure == "garbage" else await _speech(params["Text"], Speech.pcm16, params["SampleRate"])
        return await stream_http(request, control, split_bytes(pcm, 6401), "application/octet-stream")

    app = web.Application()
    app.router.add_post("/stream", stream)
    return app


# --- Doubao binary websocket ---------------------------------------------------------------------


def _doubao_frame(kind: int, flags: int, payload: bytes, compression: int = 0, serialization: int = 0) -> bytes:
    return bytes([0x11, (kind << 4) | flags, (serialization << 4) | compression, 0]) + payload


def _doubao_audio(sequence: int, audio: bytes) -> bytes:
    flags = 3 if sequence < 0 else 1
    return _doubao_frame(0xB, flags, sequence.to_bytes(4, "big", signed=True) + len(audio).to_bytes(4, "big") + audio)


def doubao_app(control: Control) -> web.Application:
    async def ws_binary(request: web.Request) -> web.StreamResponse:
        failure = control.next_failure()
        if request.headers.get("Authorization") != f"Bearer; {DOUBAO_KEYS['DOUBAO_TOKEN']}":
            return web.json_response({"reqid": "", "code": 3001, "message": "invalid token"}, status=401)
        if failure == "http500":
            return _http500()
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        frame = await ws.receive_bytes(timeout=5)
        header_size = (frame[0] & 0x0F) * 4
        size = int.from_bytes(frame[header_size : header_size + 4], "big")
        payload = frame[header_size + 4 : header_size + 4 + size]
        gzipped = frame[2] & 0x0F == 1
        req = json.loads(gzip.decompress(payload) if gzipped else payload)
        control.record(path=request.path, header=frame[:4].hex(), gzipped=gzipped, request=req)
        closed = asyncio.Event()
        watcher = asyncio.ensure_future(_watch_close(ws, control, closed))
        if req["app"]["appid"] != DOUBAO_KEYS["DOUBAO_APPID"] or not req["audio"]["voice_type"]:
            message = gzip.compress(b"authenticate request: load grant: requested grant not found")
            error = (45000000).to_bytes(4, "big") + len(message).to_bytes(4, "big") + message
            await ws.send_bytes(_doubao_frame(0xF, 0, error, compression=1, serialization=1))
            await ws.close()
            watcher.cancel()
            return ws
        text, rate = req["request"]["text"], req["audio"]["rate"]
        pcm = ERROR_PAGE if failure == "garbage" else await _speech(text, Speech.pcm16, rate)
        parts = split_bytes(pcm, 6000)
        metadata = gzip.compress(json.dumps({"frontend": {"words": []}}).encode())
        messages = [_doubao_frame(0xB, 0, b"")]  # acknowledgement without audio
        messages += [_doubao_frame(0xC, 0, len(metadata).to_bytes(4, "big") + metadata, compression=1, serialization=1)]
        messages += [_doubao_audio(i + 1 if i < len(parts) - 1 else -(i + 1), part) for i, part in enumerate(parts)]
        await _answer(request, ws, control, messages, closed, watcher)
        return ws

    app = web.Application()
    app.router.add_get("/api/v1/tts/ws_binary", ws_binary)
    return app


# --- Azure REST text to speech -------------------------------------------------------------------


def azure_app(control: Control) -> web.Application:
    async def synthesize(request: web.Request) -> web.StreamResponse:
        body = await request.text()
        control.record(
            path=request.path,
            key=request.headers.get("Ocp-Apim-Subscription-Key"),
            content_type=request.headers.get("Content-Type"),
            output_format=request.headers.get("X-Microsoft-OutputFormat"),
            ssml=body,
        )
        if request.headers.get("Ocp-Apim-Subscription-Key") != AZURE_KEYS["AZURE_SPEECH_KEY"]:
            return web.Response(status=401)  # the service sends no body with this one
        if request.headers.get("Content-Type") != "application/ssml+xml":
            return web.Response(status=415)
        if request.headers.get("X-Microsoft-OutputFormat") != "raw-16khz-16bit-mono-pcm":
            return web.Response(status=400, text="unsupported output format")
        try:
            root = ElementTree.fromstring(body)
            voice = root.find("{http://www.w3.org/2001/10/synthesis}voice")
            text = "".join(voice.itertext())
        except (ElementTree.ParseError, AttributeError):
            return web.Response(status=400, text="SSML is invalid")
        control.requests[-1].update(voice=voice.get("name"), text=text, lang=root.get("{http://www.w3.org/XML/1998/namespace}lang"))
        failure = control.next_failure()
        if failure == "http500":
            return _http500()
        pcm = ERROR_PAGE if failure == "garbage" else await _speech(text, Speech.pcm16, 16000)
        return await stream_http(request, control, split_bytes(pcm, 4801), "audio/x-wav")

    app = web.Application()
    app.router.add_post("/cognitiveservices/v1", synthesize)
    return app
