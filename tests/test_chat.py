"""LLM chat and session events end to end: app.py's server on loopback talks to a real
OpenAI-compatible server (tests/fakellm.py) through the openai package, a real aiortc peer
receives the speech, and /sse listeners watch the session."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import aiohttp
import pytest

from conftest import RunningServer, llm_server
from fakellm import FakeLLM, Script, tokens
from livepeer import LivePeer
from llm import Endpoint, OpenAIBackend
from portrait_geometry import sway_box
from sseclient import SseClient
from waiting import post_json as post
from waiting import wait_until

SPEECH_RMS = 0.02
LLM_ENV = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "DASHSCOPE_API_KEY")


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def chat_server(fake_llm: FakeLLM) -> Iterator[RunningServer]:
    srv = llm_server(fake_llm.url)
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def fresh_script(fake_llm: FakeLLM) -> None:
    fake_llm.scripts.clear()
    fake_llm.default = Script()


async def open_session(server: RunningServer, http: aiohttp.ClientSession, media: bool = True):
    """A connected peer and one /sse listener of its session."""
    peer = LivePeer(server.url, sway_box())
    await peer.connect(http)
    if media:
        await peer.wait_for_media()
    events = SseClient(f"{server.url}/sse?sessionid={peer.sessionid}")
    await events.connect(http)
    return peer, events


def spoken(events: SseClient) -> list[tuple[str, str]]:
    return [(e["status"], e["text"]) for e in events.of("start", "end")]


def test_chat_without_an_llm_names_the_flags(server):
    async def scenario():
        async with aiohttp.ClientSession() as http:
            peer = LivePeer(server.url, sway_box())
            await peer.connect(http)
            status, body = await post(
                http, f"{server.url}/human", {"sessionid": peer.sessionid, "text": "hi", "type": "chat"}
            )
            await peer.close()
            return status, body

    status, body = run(scenario())
    assert status == 400 and body["code"] == -1
    for name in ("--llm_url", "OPENAI_BASE_URL", "OPENAI_API_KEY"):
        assert name in body["msg"], body["msg"]


def test_first_clause_is_heard_while_the_llm_still_writes_then_a_follow_up_has_history(chat_server, fake_llm):
    gate = threading.Event()
    answer = "Sure thing, the capital of France is Paris. It is lovely in spring."
    # The stream stops after " the": the first clause is complete, the first sentence is not.
    fake_llm.script(Script(tokens(answer), gate=gate, gate_at=3), Script(tokens("It has about two million people.")))
    attached = {"turn": 1, "tag": "q-1"}

    async def scenario():
        async with aiohttp.ClientSession() as http:
            peer, events = await open_session(chat_server, http)
            sid = peer.sessionid
            asked = time.monotonic()
            status, body = await post(
                http,
                f"{chat_server.url}/human",
                {"sessionid": sid, "text": "What is the capital of France?", "type": "chat", **attached},
            )
            assert (status, body) == (200, {"code": 0, "msg": "ok"})
            first = await events.wait_for(lambda e: e["status"] == "start", 10)
            heard = await wait_until(lambda: any(a.rms > SPEECH_RMS for a in peer.audio_since(asked)), 5)
            held_back = not gate.is_set() and len(fake_llm.streams[-1].sent) == 3
            gate.set()
            await events.wait_for(lambda e: e["status"] == "end" and e["text"] == "It is lovely in spring.", 20)
            await events.wait_for(lambda e: e["status"] == "speaking" and not e["speaking"], 5)
            # The follow-up question is asked with the first answer in its history.
            follow_up = {"sessionid": sid, "text": "How many people live there?", "type": "chat"}
            status2, _ = await post(http, f"{chat_server.url}/human", follow_up)
            await events.wait_for(lambda e: e["status"] == "end" and e["text"].startswith("It has about"), 20)
            await peer.close()
            await events.close()
            return first, heard, held_back, events.events, status2

    first, heard, held_back, seen, status2 = run(scenario())
    assert first["text"] == "Sure thing," and first["turn"] == 1 and first["tag"] == "q-1"
    assert heard and held_back, "the first clause was not spoken before the LLM wrote the rest"
    pieces = [(e["status"], e["text"]) for e in seen if e["status"] in ("start", "end")]
    assert pieces[:6] == [
        ("start", "Sure thing,"), ("end", "Sure thing,"),
        ("start", "the capital of France is Paris."), ("end", "the capital of France is Paris."),
        ("start", "It is lovely in spring."), ("end", "It is lovely in spring."),
    ]
    assert all(e["turn"] == 1 and e["tag"] == "q-1" for e in [e for e in seen if e["status"] in ("start", "end")][:6])
    assert seen[0]["status"] == "speaking" and seen[0]["speaking"] is True  # speaking comes before the first start
    assert status2 == 200
    request = fake_llm.requests[-1]
    assert request["model"] == "test" and request["stream"] is True
    assert [m["role"] for m in request["messages"]] == ["system", "user", "assistant", "user"]
    assert request["messages"][1:] == [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "How many people live there?"},
    ]


def test_interrupt_closes_the_llm_stream_and_forgets_the_answer(chat_server, fake_llm):
    rambling = tokens(" ".join(f"Sentence number {n} goes on." for n in range(200)))
    fake_llm.script(
        Script(rambling, interval=0.03),
        Script(rambling, interval=0.03),
        Script(tokens("Fine, I will stop.")),
        Script(rambling, interval=0.03),
    )

    async def scenario():
        async with aiohttp.ClientSession() as http:
            peer, events = await open_session(chat_server, http)
            sid = peer.sessionid
            url = f"{chat_server.url}/human"
            await post(http, url, {"sessionid": sid, "text": "Tell me a long story.", "type": "chat"})
            await events.wait_for(lambda e: e["status"] == "start", 10)
            first_stream = fake_llm.streams[-1]
            await post(http, f"{chat_server.url}/interrupt_talk", {"sessionid": sid})
            closed_by_interrupt = await wait_until(lambda: first_stream.client_closed_at is not None, 2)
            interrupted = time.monotonic()
            await asyncio.sleep(1.0)
            loud_after = [a.rms for a in peer.audio_since(interrupted + 0.3) if a.rms > SPEECH_RMS]

            await post(http, url, {"sessionid": sid, "text": "Another long one.", "type": "chat"})
            await wait_until(lambda: len(fake_llm.streams[-1].sent) > 5, 5)
            second_stream = fake_llm.streams[-1]
            status, _ = await post(
                http, url, {"sessionid": sid, "text": "Stop, please.", "type": "chat", "interrupt": True}
            )
            closed_by_new_question = await wait_until(lambda: second_stream.client_closed_at is not None, 2)
            await events.wait_for(lambda e: e["status"] == "end" and e["text"] == "Fine, I will stop.", 10)
            # A long answer is streaming when the peer leaves: the session ends with no answer left.
            await post(http, url, {"sessionid": sid, "text": "One more story?", "type": "chat"})
            await peer.close()
            await events.wait_for(lambda e: e["status"] == "closed", 10)
            await events.close()
            # The fake server learns of the close at its next write, up to one chunk interval later.
            closed_with_session = await wait_until(lambda: fake_llm.streams[-1].client_closed_at is not None, 2)
            answers_left = [t for t in asyncio.all_tasks(chat_server.loop) if t.get_name() == f"llm-{sid}"]
            threads_left = [t.name for t in threading.enumerate() if t.name.endswith(f"-{sid}")]
            left = sid in chat_server.live.chats or answers_left or threads_left
            return (
                closed_by_interrupt, loud_after, closed_by_new_question, first_stream, second_stream, status,
                closed_with_session, left,
            )

    closed_by_interrupt, loud_after, closed_by_new_question, first, second, status, closed_with_session, left = run(
        scenario()
    )
    assert closed_by_interrupt and not first.done, "interrupt did not close the LLM stream"
    assert not loud_after, "speech went on after the interrupt"
    assert status == 200
    assert closed_by_new_question and not second.done, "interrupt: true did not close the stream in flight"
    # Neither cancelled answer (nor its question) is in the history of the next request.
    assert [m["content"] for m in fake_llm.requests[-2]["messages"][1:]] == ["Stop, please."]
    assert closed_with_session, "closing the session left the LLM streaming"
    assert not left, "the session left an answer, its conversation or a thread behind"


def test_history_keeps_what_was_heard_of_an_answer_cut_while_speaking(chat_server, fake_llm):
    # The LLM writes each answer at once; speaking it takes seconds, so interrupts land after
    # the stream ended. The history must hold what the user heard, not what the LLM wrote.
    first = "The tower is tall. It was finished in eighteen eighty nine for a world fair. People climb it daily."
    second = "Sorry, I will keep it short. Paris has many museums and the Louvre is the largest of them all."
    fake_llm.script(Script(tokens(first)), Script(tokens(second)), Script(tokens("Yes.")))

    async def scenario():
        async with aiohttp.ClientSession() as http:
            peer, events = await open_session(chat_server, http)
            sid = peer.sessionid
            url = f"{chat_server.url}/human"
            await post(http, url, {"sessionid": sid, "text": "Tell me about the tower.", "type": "chat"})
            await events.wait_for(lambda e: e["status"] == "end" and e["text"] == "The tower is tall.", 10)
            await events.wait_for(lambda e: e["status"] == "start" and e["text"].startswith("It was"), 5)
            # Cut in the middle of the second sentence: the new question carries interrupt.
            ask = {"sessionid": sid, "text": "Something shorter?", "type": "chat", "interrupt": True}
            await post(http, url, ask)
            await events.wait_for(lambda e: e["status"] == "start" and e["text"].startswith("Sorry"), 10)
            # Asked while the second answer is still being spoken, without interrupting it:
            # it will be heard whole, so the history has all of it.
            await post(http, url, {"sessionid": sid, "text": "Is that all?", "type": "chat"})
            await events.wait_for(lambda e: e["status"] == "end" and e["text"] == "Yes.", 20)
            await peer.close()
            await events.close()
            return [r["messages"][1:] for r in fake_llm.requests[-2:]]

    after_cut, after_whole = run(scenario())
    assert after_cut == [
        {"role": "user", "content": "Tell me about the tower."},
        {"role": "assistant", "content": "The tower is tall."},
        {"role": "user", "content": "Something shorter?"},
    ]
    assert after_whole == [
        *after_cut[:2],
        {"role": "user", "content": "Something shorter?"},
        {"role": "assistant", "content": second},
        {"role": "user", "content": "Is that all?"},
    ]


def test_llm_failures_are_reported_and_the_session_keeps_talking(chat_server, fake_llm):
    async def scenario():
        async with aiohttp.ClientSession() as http:
            peer, events = await open_session(chat_server, http)
            sid = peer.sessionid
            url = f"{chat_server.url}/human"
            results = {}
            fake_llm.script(Script(status=500, message="model exploded"))
            results["http_500"] = await post(http, url, {"sessionid": sid, "text": "hi", "type": "chat"})
            fake_llm.script(Script(status=401, message="Incorrect API key provided"))
            results["http_401"] = await post(http, url, {"sessionid": sid, "text": "hi", "type": "chat"})
            fake_llm.go_down()
            try:
                started = time.monotonic()
                results["refused"] = await post(http, url, {"sessionid": sid, "text": "hi", "type": "chat"})
                results["refused_s"] = time.monotonic() - started
            finally:
                fake_llm.come_back()
            fake_llm.script(
                Script(tokens("Let me think, the answer is"), error_after=5, message="backend overloaded"),
                Script(tokens("Well, this one breaks off"), drop_after=3),
            )
            results["mid_stream"] = await post(
                http, url, {"sessionid": sid, "text": "hi", "type": "chat", "ticket": 41}
            )
            results["error_event"] = await events.wait_for(lambda e: e["status"] == "error", 10)
            results["dropped"] = await post(http, url, {"sessionid": sid, "text": "hi", "type": "chat"})
            results["drop_event"] = await events.wait_for(
                lambda e: e["status"] == "error" and e is not results["error_event"], 10
            )
            # A chat answer speaks in the request's voice: one that does not load is a TTS error event.
            fake_llm.script(Script(tokens("This voice does not exist.")))
            bad_voice = {"ref_file": "broken"}
            results["bad_voice"] = await post(
                http, url, {"sessionid": sid, "text": "hi", "type": "chat", "tts": bad_voice, "ticket": 42}
            )
            results["tts_error"] = await events.wait_for(lambda e: e["status"] == "error" and e.get("ticket") == 42, 10)
            # The session is unharmed: an echo is spoken, and chat works again.
            await post(http, url, {"sessionid": sid, "text": "Still here.", "type": "echo"})
            results["echo"] = await events.wait_for(lambda e: e["status"] == "end" and e["text"] == "Still here.", 15)
            results["chat_again"] = await post(http, url, {"sessionid": sid, "text": "hi", "type": "chat"})
            results["spoken_again"] = await events.wait_for(
                lambda e: e["status"] == "end" and e["text"] == "Hello there.", 15
            )
            await peer.close()
            await events.close()
            return results

    r = run(scenario())
    status, body = r["http_500"]
    assert status == 502 and body["code"] == -1 and "model exploded" in body["msg"] and "HTTP 500" in body["msg"]
    status, body = r["http_401"]
    assert status == 502 and "Incorrect API key provided" in body["msg"] and "OPENAI_API_KEY" in body["msg"]
    status, body = r["refused"]
    assert status == 503 and "unreachable" in body["msg"] and fake_llm.url in body["msg"], body
    assert r["refused_s"] < 2.0
    assert r["mid_stream"][0] == 200 and r["dropped"][0] == 200
    event = r["error_event"]
    assert event["source"] == "llm" and "backend overloaded" in event["msg"] and event["ticket"] == 41
    assert "broke" in r["drop_event"]["msg"]
    assert r["chat_again"][0] == 200
    assert r["bad_voice"][0] == 200
    assert "broken.onnx" in r["tts_error"]["msg"] and r["tts_error"]["text"] == "This voice does not exist."


def test_a_question_after_a_pause_reuses_the_connection_to_the_llm(fake_llm):
    # A new connection costs a TCP and a TLS handshake before the first token; the HTTP
    # client's default kept an idle one 5 s, less than most pauses in a conversation.
    fake_llm.script(Script(tokens("Hello there.")), Script(tokens("Hello again.")))

    async def ask_twice() -> list[str]:
        backend = OpenAIBackend(Endpoint(fake_llm.url, "test", "no-key"))
        answers = []
        try:
            for pause in (0.0, 6.0):
                await asyncio.sleep(pause)
                reply = await backend.open([{"role": "user", "content": "Hi"}], "test")
                answers.append("".join([delta async for delta in reply]))
                await reply.aclose()
        finally:
            await backend.aclose()
        return answers

    assert run(ask_twice()) == ["Hello there.", "Hello again."]
    first, second = fake_llm.streams[-2:]
    assert first.peer is not None and first.peer == second.peer
