"""A network TTS that stalls must fail fast (finding 8): each sentence waited 60 s for its error
and a server trickling two bytes every few seconds never failed. Against GPT-SoVITS stand-ins
that accept the request and then go silent or trickle."""

from __future__ import annotations

import argparse
import asyncio
import time

import pytest
from aiohttp import web
from tts_local import Collector, Control, ServerThread, start_tts, wait_idle, wav_header
from tts_server_apps import SOVITS_RATE, sovits_app

import ttsreal
from tts import http_stream
from ttsreal import load_tts_engine

FIRST_BYTE_S = 1.5
STALL_S = 1.0


def gone(request: web.Request) -> bool:
    return request.transport is None or request.transport.is_closing()


def stalling_app(mode: str) -> web.Application:
    """POST /tts answered with headers and then silence ("silent") or a WAV header and two
    bytes every half second ("trickle")."""

    async def tts(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "audio/wav"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            if mode == "trickle":
                await resp.write(wav_header(SOVITS_RATE))
            while not gone(request):
                await asyncio.sleep(0.5)
                if mode == "trickle":
                    await resp.write(b"\x01\x00")
        except (ConnectionResetError, RuntimeError):
            pass
        return resp

    app = web.Application()
    app.router.add_post("/tts", tts)
    return app


@pytest.fixture
def engine_for():
    saved = http_stream.TIMEOUTS
    servers: list[ServerThread] = []

    def make(app: web.Application):
        server = ServerThread(app)
        servers.append(server)
        opt = argparse.Namespace(
            tts="gpt-sovits", TTS_SERVER=server.url, REF_FILE="/srv/ref.wav", REF_TEXT="words",
            tts_connect_timeout=1.0, tts_first_byte_timeout=FIRST_BYTE_S, tts_stall_timeout=STALL_S,
        )
        return load_tts_engine(opt)

    yield make
    http_stream.TIMEOUTS = saved
    for server in servers:
        server.stop()


def speak(engine, text: str, timeout: float = 30.0) -> tuple[Collector, float]:
    sink = Collector()
    tts = start_tts(engine, sink)
    started = time.monotonic()
    try:
        tts.put_msg_txt(text)
        wait_idle(tts, timeout)
        return sink, time.monotonic() - started
    finally:
        tts.stop()


def test_a_silent_server_fails_the_sentence_after_the_first_byte_timeout(engine_for):
    sink, took = speak(engine_for(stalling_app("silent")), "Anybody there?")
    (error,) = sink.errors
    assert error["text"] == "Anybody there?"
    assert f"no audio within {FIRST_BYTE_S:g} s" in error["msg"] and "--tts_first_byte_timeout" in error["msg"]
    assert took < FIRST_BYTE_S + 3


def test_a_trickling_server_fails_as_a_stall(engine_for):
    sink, took = speak(engine_for(stalling_app("trickle")), "Speak up.")
    (error,) = sink.errors
    assert "stalled" in error["msg"] and "--tts_stall_timeout" in error["msg"]
    assert took < FIRST_BYTE_S + STALL_S + 3


def test_a_long_reply_to_a_stalled_server_fails_in_seconds_not_minutes(engine_for):
    """After one sentence timed out, the rest of the reply is reported at once instead of each
    sentence waiting again; every sentence still gets its error event, in order."""
    sentences = [f"This is sentence number {n}." for n in range(1, 11)]
    sink, took = speak(engine_for(stalling_app("silent")), " ".join(sentences))
    assert [e["text"] for e in sink.errors] == sentences
    assert "no audio within" in sink.errors[0]["msg"]
    assert all("did not answer a sentence just before" in e["msg"] for e in sink.errors[1:])
    assert took < FIRST_BYTE_S + 4


def test_after_the_pause_a_recovered_server_speaks_again(engine_for, monkeypatch):
    monkeypatch.setattr(ttsreal, "UNAVAILABLE_SKIP_S", 0.5)
    stalled = {"on": True}

    @web.middleware
    async def stall(request: web.Request, handler) -> web.StreamResponse:
        while stalled["on"] and not gone(request):
            await asyncio.sleep(0.1)
        return await handler(request)

    app = sovits_app(Control())
    app.middlewares.append(stall)
    engine = engine_for(app)
    sink = Collector()
    worker = start_tts(engine, sink)
    try:
        worker.put_msg_txt("The server is stuck.")
        wait_idle(worker)
        stalled["on"] = False
        time.sleep(0.6)
        worker.put_msg_txt("Now it answers.")
        wait_idle(worker)
    finally:
        worker.stop()
    assert [e["text"] for e in sink.errors] == ["The server is stuck."]
    assert sink.statuses()[-2:] == [("start", "Now it answers."), ("end", "Now it answers.")]
