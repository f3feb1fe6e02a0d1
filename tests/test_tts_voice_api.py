"""The per-request voice of /human (`tts: {"ref_file", "ref_text"}`) from the HTTP API to the
engine, and a session's TTS failures reaching its event callback."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from httpapi import ApiError, optional_voice
from livepeer import LivePeer
from portrait_geometry import sway_box
from sseclient import SseClient
from ttsreal import Voice
from waiting import post_json


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
    Piper engine a ref_file names a .onnx voice of the voices folder, so one that cannot load
    shows the override arrived. A path, or a voice the folder lacks, is refused at once."""

    async def scenario() -> dict:
        async with aiohttp.ClientSession() as http:
            peer = LivePeer(server.url, sway_box())
            await peer.connect(http)
            results = {}
            for name, tts in {
                "not_object": "voice.onnx",
                "bad_type": {"ref_file": 5},
                "override": {"ref_file": "broken", "ref_text": "unused by piper"},
                "a_path": {"ref_file": "/etc/passwd"},
                "outside": {"ref_file": "../../etc/voice.onnx"},
                "missing": {"ref_file": "nobody-has-this-voice.onnx"},
            }.items():
                body = {"sessionid": peer.sessionid, "text": "Hello in another voice.", "tts": tts}
                async with http.post(f"{server.url}/human", json=body) as resp:
                    results[name] = (resp.status, await resp.json())
            for _ in range(100):  # the TTS worker reports the failure shortly after
                if "broken.onnx could not be loaded" in caplog.text:
                    break
                await asyncio.sleep(0.05)
            await peer.close()
            return results

    with caplog.at_level(logging.ERROR, logger="ttsreal"):
        results = asyncio.run(scenario())
    assert results["not_object"][0] == 400 and "must be an object" in results["not_object"][1]["msg"]
    assert results["bad_type"][0] == 400 and "'tts.ref_file' must be a string" in results["bad_type"][1]["msg"]
    assert results["override"] == (200, {"code": 0, "msg": "ok"})
    assert "piper voice broken.onnx could not be loaded" in caplog.text
    for refused in ("a_path", "outside", "missing"):
        status, reply = results[refused]
        assert status == 400, reply
        assert "voices folder" in reply["msg"], reply
    # What the folder has is shown, so a caller can pick a voice; nothing about other paths.
    assert "broken.onnx" in results["missing"][1]["msg"]


def test_a_tts_failure_is_reported_in_its_place_between_the_sentences_around_it(server) -> None:
    """The sentence Piper cannot speak (its voice file is missing) is reported on /sse after the
    end of the sentence before it was heard, and before the next one starts: in the order a
    listener hears them, though the failure itself happens long before that end is played."""

    async def scenario() -> list[tuple[str, str]]:
        async with aiohttp.ClientSession() as http:
            peer = LivePeer(server.url, sway_box())
            await peer.connect(http)
            await peer.wait_for_media()
            events = SseClient(f"{server.url}/sse?sessionid={peer.sessionid}")
            await events.connect(http)
            human = f"{server.url}/human"
            sid = peer.sessionid
            await post_json(http, human, {"sessionid": sid, "text": "This first sentence takes a while to say."})
            bad = {"ref_file": "broken"}
            await post_json(http, human, {"sessionid": sid, "text": "Not in this voice.", "tts": bad, "msg_id": 9})
            await post_json(http, human, {"sessionid": sid, "text": "The third one is heard."})
            await events.wait_for(lambda e: e["status"] == "end" and e["text"] == "The third one is heard.", 20)
            await peer.close()
            await events.close()
            return events.events

    seen = asyncio.run(scenario())
    order = [(e["status"], e["text"]) for e in seen if e["status"] in ("start", "end", "error")]
    assert order == [
        ("start", "This first sentence takes a while to say."),
        ("end", "This first sentence takes a while to say."),
        ("error", "Not in this voice."),
        ("start", "The third one is heard."),
        ("end", "The third one is heard."),
    ]
    (error,) = [e for e in seen if e["status"] == "error"]
    assert error["msg_id"] == 9 and "piper voice broken.onnx could not be loaded" in error["msg"]
