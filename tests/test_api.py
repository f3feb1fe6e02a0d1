"""Every bad request gets the envelope, a message naming the problem and a real status; the
server keeps running and leaks no session."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from conftest import RunningServer
from livepeer import LivePeer
from portrait_geometry import sway_box

JSON = {"Content-Type": "application/json"}


def run(coro):
    return asyncio.run(coro)


async def call(url: str, path: str, **kwargs) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.post(url + path, **kwargs) as resp:
            return resp.status, await resp.json()


def expect_error(server, path: str, status: int, words: str, **kwargs) -> dict:
    got_status, body = run(call(server.url, path, **kwargs))
    assert got_status == status, body
    assert body["code"] == -1
    assert words.lower() in body["msg"].lower(), body["msg"]
    return body


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "words"),
    [
        ("/human", {"data": b"{not json", "headers": JSON}, 400, "not valid JSON"),
        ("/human", {"data": b'{"sessionid": 1, "text": "hi"}'}, 415, "Content-Type: application/json"),
        ("/human", {"json": [1, 2]}, 400, "JSON object"),
        ("/human", {"json": {"text": "hi"}}, 400, "missing field 'sessionid'"),
        ("/human", {"json": {"sessionid": "abc", "text": "hi"}}, 400, "must be an integer"),
        ("/human", {"json": {"sessionid": True, "text": "hi"}}, 400, "must be an integer"),
        ("/human", {"json": {"sessionid": 1234567890123456, "text": "hi"}}, 404, "no session 1234567890123456"),
        ("/interrupt_talk", {"json": {"sessionid": 1234567890123456}}, 404, "no session"),
        ("/is_speaking", {"json": {"sessionid": "1234567890123456"}}, 404, "no session"),
        ("/is_speaking", {"data": b"", "headers": JSON}, 400, "not valid JSON"),
        ("/offer", {"json": {"type": "offer"}}, 400, "missing field 'sdp'"),
        ("/offer", {"json": {"sdp": 5, "type": "offer"}}, 400, "must be a string"),
        ("/offer", {"json": {"sdp": "v=0", "type": "answer"}}, 400, "must be 'offer'"),
        ("/humanaudio", {"json": {"sessionid": 1}}, 400, "multipart"),
    ],
)
def test_bad_requests_get_envelope_and_status(server, path, kwargs, status, words):
    expect_error(server, path, status, words, **kwargs)


def test_garbage_sdp_is_refused_without_leaking_a_session(server):
    before = len(server.live.sessions)
    expect_error(server, "/offer", 400, "SDP", json={"sdp": "this is not sdp", "type": "offer"})
    assert len(server.live.sessions) == before


def test_session_field_errors(server):
    async def scenario():
        async with aiohttp.ClientSession() as http:
            peer = LivePeer(server.url, sway_box())
            await peer.connect(http)
            sid = peer.sessionid
            results = {}
            for name, body in {
                "missing_text": {"sessionid": sid},
                "text_not_string": {"sessionid": sid, "text": 5},
                "empty_text": {"sessionid": sid, "text": "  "},
                "bad_type": {"sessionid": sid, "text": "hi", "type": "shout"},
                "chat_without_llm": {"sessionid": sid, "text": "hi", "type": "chat"},
                "bad_interrupt": {"sessionid": sid, "text": "hi", "interrupt": "yes"},
                "id_as_string": {"sessionid": str(sid), "text": "hi"},
            }.items():
                async with http.post(f"{server.url}/human", json=body) as resp:
                    results[name] = (resp.status, await resp.json())
            form = aiohttp.FormData()
            form.add_field("sessionid", str(sid))
            form.add_field("file", b"\x00\x01garbage" * 100, filename="noise.mp3")
            async with http.post(f"{server.url}/humanaudio", data=form) as resp:
                results["undecodable"] = (resp.status, await resp.json())
            form = aiohttp.FormData()
            form.add_field("sessionid", str(sid))
            async with http.post(f"{server.url}/humanaudio", data=form) as resp:
                results["no_file"] = (resp.status, await resp.json())
            big = aiohttp.FormData()
            big.add_field("sessionid", str(sid))
            big.add_field("file", b"\x00" * (51 * 1024 * 1024), filename="big.wav")
            async with http.post(f"{server.url}/humanaudio", data=big) as resp:
                results["too_big"] = (resp.status, await resp.json())
            await peer.close()
            return results

    results = run(scenario())
    expected = {
        "missing_text": (400, "missing field 'text'"),
        "text_not_string": (400, "must be a string"),
        "empty_text": (400, "empty"),
        "bad_type": (400, "'echo' or 'chat'"),
        "chat_without_llm": (400, "LLM"),
        "bad_interrupt": (400, "true or false"),
        "undecodable": (400, "noise.mp3"),
        "no_file": (400, "'file'"),
        "too_big": (413, "50 MB"),
    }
    for name, (status, words) in expected.items():
        got_status, body = results[name]
        assert got_status == status, (name, body)
        assert body["code"] == -1 and words in body["msg"], (name, body)
    assert results["id_as_string"] == (200, {"code": 0, "msg": "ok"})


def test_sessions_beyond_max_session_get_503():
    srv = RunningServer(["--max_session", "1"])
    try:
        async def scenario():
            async with aiohttp.ClientSession() as http:
                first = LivePeer(srv.url, sway_box())
                await first.connect(http)
                second = LivePeer(srv.url, sway_box())
                with pytest.raises(AssertionError) as refused:
                    await second.connect(http)
                await second.close()
                await first.close()
                return str(refused.value)

        message = run(scenario())
        assert "all 1 sessions are in use" in message
        assert len(srv.live.sessions) <= 1
    finally:
        srv.stop()


def test_page_and_api_still_served_after_bad_input(server):
    async def scenario():
        async with aiohttp.ClientSession() as http:
            async with http.get(server.url + "/") as resp:
                return resp.status, await resp.text()

    status, html = run(scenario())
    assert status == 200 and "LiveTalking" in html
