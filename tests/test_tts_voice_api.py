"""The per-request voice of /human (`tts: {"ref_file", "ref_text"}`) from the HTTP API to the
engine, and a session's TTS failures reaching its event callback."""

from __future__ import annotations

import asyncio
import logging
import threading

import aiohttp
import pytest

from httpapi import ApiError, optional_voice
from livepeer import LivePeer
from portrait_geometry import sway_box
from ttsreal import Voice


def test_optional_voice_reads_the_tts_object() -> None:
    assert optional_voice({}) is None
    assert optional_voice({"tts": None}) is None
    assert optional_voice({"tts": {}}) is None
    assert optional_voice({"tts": {"ref_file": "", "ref_text": None}}) is None
    assert optional_voice({"tts": {"ref_file": "b.wav"}}) == Voice("b.wav", None)
    assert optional_voice({"tts": {"ref_file": "b.wav", "ref_text": "words"}}) == Voice("b.wav", "words")
    for body, words in [
        ({"tts": "b.wav"}, "must be an object"),
        ({"tts": {"ref_file": 3}}, "'tts.ref_file' must be a string, got int"),
        ({"tts": {"ref_text": ["a"]}}, "'tts.ref_text' must be a string, got list"),
        ({"tts": {"voice": "x"}}, "unknown keys ['voice']"),
    ]:
        with pytest.raises(ApiError) as refused:
            optional_voice(body)
        assert refused.value.status == 400 and words in refused.value.msg


def test_voice_override_travels_from_human_to_the_engine(server, caplog) -> None:
    """/human validates `tts`, then the session speaks the text in that voice: with the default
    Piper engine a ref_file is a .onnx voice, so a missing one shows the override arrived."""

    async def scenario() -> dict:
        async with aiohttp.ClientSession() as http:
            peer = LivePeer(server.url, sway_box())
            await peer.connect(http)
            results = {}
            for name, tts in {
                "not_object": "voice.onnx",
                "bad_type": {"ref_file": 5},
                "override": {"ref_file": "/nonexistent/other-voice.onnx", "ref_text": "unused by piper"},
            }.items():
                body = {"sessionid": peer.sessionid, "text": "Hello in another voice.", "tts": tts}
                async with http.post(f"{server.url}/human", json=body) as resp:
                    results[name] = (resp.status, await resp.json())
            for _ in range(100):  # the TTS worker reports the failure shortly after
                if "other-voice.onnx" in caplog.text:
                    break
                await asyncio.sleep(0.05)
            await peer.close()
            return results

    with caplog.at_level(logging.ERROR, logger="ttsreal"):
        results = asyncio.run(scenario())
    assert results["not_object"][0] == 400 and "must be an object" in results["not_object"][1]["msg"]
    assert results["bad_type"][0] == 400 and "'tts.ref_file' must be a string" in results["bad_type"][1]["msg"]
    assert results["override"] == (200, {"code": 0, "msg": "ok"})
    assert "piper voice not found: /nonexistent/other-voice.onnx" in caplog.text


def test_session_reports_tts_failures_as_events(server) -> None:
    """BaseReal hands the TTS worker's error events to the session's on_event callback."""
    live = server.live
    events: list[dict] = []
    arrived = threading.Event()

    def on_event(event: dict) -> None:
        events.append(event)
        if event.get("status") == "error":
            arrived.set()

    session = live.session_cls(live.opt, live.model, live.avatar, live.tts_engine, 4242, on_event)
    session.tts.start()  # only the TTS worker: no audio will be produced
    try:
        session.say("Speak with a voice that is not there.", {"msg_id": 9}, Voice(ref_file="/nope/voice.onnx"))
        assert arrived.wait(10)
    finally:
        session.close()
    (error,) = [e for e in events if e.get("status") == "error"]
    assert error["text"] == "Speak with a voice that is not there." and error["msg_id"] == 9
    assert "piper voice not found: /nope/voice.onnx" in error["msg"]
