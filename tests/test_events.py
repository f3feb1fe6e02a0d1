"""Session events over GET /sse: what the listeners of a real session see while a real aiortc
peer receives its speech, and the event hub's fan-out on its own."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from events import SessionEvents
from livepeer import LivePeer
from portrait_geometry import sway_box
from sseclient import SseClient
from waiting import post_json as post
from waiting import wait_until

SPEECH_RMS = 0.02


def run(coro):
    return asyncio.run(coro)


def test_sse_fans_out_in_order_with_attached_fields_and_closes_with_the_session(server):
    async def scenario():
        async with aiohttp.ClientSession() as http:
            peer = LivePeer(server.url, sway_box())
            await peer.connect(http)
            await peer.wait_for_media()
            sid = peer.sessionid
            listeners = [SseClient(f"{server.url}/sse?sessionid={sid}") for _ in range(3)]
            for listener in listeners:
                await listener.connect(http)
            first, second, gone = listeners
            hub = server.live.events[sid]
            count_before = hub.listener_count
            await gone.close()  # a listener that goes away must not disturb the others
            body = {"sessionid": sid, "text": "Hello there. How are you?", "type": "echo", "seq": 7, "who": "test"}
            sent = time.monotonic()
            status, _ = await post(http, f"{server.url}/human", body)
            assert status == 200
            for listener in (first, second):
                await listener.wait_for(lambda e: e["status"] == "end" and e["text"] == "How are you?", 15)
                await listener.wait_for(lambda e: e["status"] == "speaking" and e["speaking"] is False, 5)
            count_after = hub.listener_count
            first_audio = next(a.arrival for a in peer.audio_since(sent) if a.rms > SPEECH_RMS)
            await peer.close()
            for listener in (first, second):
                await listener.wait_for(lambda e: e["status"] == "closed", 10)
            ended = await wait_until(lambda: first.ended and second.ended, 5)
            async with http.get(f"{server.url}/sse?sessionid={sid}") as resp:
                after = resp.status, await resp.json()
            return first, second, count_before, count_after, first_audio, ended, after, sid

    first, second, count_before, count_after, first_audio, ended, after, sid = run(scenario())
    expected = [("start", "Hello there."), ("end", "Hello there."), ("start", "How are you?"), ("end", "How are you?")]
    for listener in (first, second):
        assert [(e["status"], e["text"]) for e in listener.of("start", "end")] == expected
        assert all(e["seq"] == 7 and e["who"] == "test" for e in listener.of("start", "end"))
        kinds = [e["status"] for e in listener.events]
        # speaking comes before the first start, idle after the last end, closed last of all.
        assert kinds[0] == "speaking" and listener.events[0]["speaking"] is True
        assert kinds.index("speaking", 1) > kinds.index("end") and kinds[-1] == "closed"
    # Both listeners got the very same events.
    strip = [{k: v for k, v in e.items() if k != "_at"} for e in first.events]
    assert strip == [{k: v for k, v in e.items() if k != "_at"} for e in second.events]
    # "start" fires when the speech leaves on the track, not when it was queued.
    assert abs(first.of("start")[0]["_at"] - first_audio) < 0.3, first.of("start")[0]["_at"] - first_audio
    assert count_before == 3 and count_after == 2
    assert ended
    assert after[0] == 404 and str(sid) in after[1]["msg"]
    assert sid not in server.live.events


def test_sse_refuses_unknown_sessions(server):
    async def scenario():
        async with aiohttp.ClientSession() as http:
            results = []
            for query in ("?sessionid=1234567890123456", "", "?sessionid=abc"):
                async with http.get(f"{server.url}/sse{query}") as resp:
                    results.append((resp.status, (await resp.json())["msg"]))
            return results

    unknown, missing, bad = run(scenario())
    assert unknown[0] == 404 and "no session 1234567890123456" in unknown[1]
    assert missing[0] == 400 and "sessionid" in missing[1]
    assert bad[0] == 400 and "integer" in bad[1]


def test_hub_drops_a_listener_that_falls_behind_and_publishes_from_any_thread():
    async def scenario():
        hub = SessionEvents(1, asyncio.get_running_loop(), maxsize=4)
        slow, fast = hub.subscribe(), hub.subscribe()
        for n in range(5):
            hub.publish({"status": "start", "n": n})
            assert await fast.get(1) is not None  # fast reads everything as it comes
        # slow never read: its queue filled at the 5th event and it was dropped, the backlog too.
        assert hub.listener_count == 1 and slow.ended
        assert await slow.get(1) is None
        # A worker thread (the TTS) publishes; delivery happens on the loop.
        await asyncio.to_thread(hub.publish, {"status": "error", "msg": "from a thread"})
        message = await fast.get(1)
        hub.close("bye")
        closed = await fast.get(1)
        return message, closed, await fast.get(1), hub.subscribe()

    message, closed, end, late = run(scenario())
    assert json.loads(message.decode().split("data: ", 1)[1])["msg"] == "from a thread"
    assert json.loads(closed.decode().split("data: ", 1)[1]) == {"status": "closed", "reason": "bye"}
    assert end is None and late.ended


def test_a_session_has_a_bounded_number_of_listeners_each_bounded_in_bytes():
    """Finding 6: 1000 listeners that never read, plus one 5 MB field, kept 2.9 GB. A session
    now takes MAX_LISTENERS, and one that falls LISTENER_BYTES behind is dropped."""
    from events import LISTENER_BYTES, MAX_LISTENERS, TooManyListeners

    async def scenario():
        hub = SessionEvents(1, asyncio.get_running_loop())
        listeners = [hub.subscribe() for _ in range(MAX_LISTENERS)]
        try:
            hub.subscribe()
            raise AssertionError("a listener past the limit was accepted")
        except TooManyListeners as exc:
            refused = str(exc)
        reader = listeners[0]
        for n in range(LISTENER_BYTES // 4000 + 10):  # ~4 KB events, the most a request can attach
            hub.publish({"status": "start", "text": f"piece {n}", "blob": "x" * 4000})
            await reader.get(1.0)  # this one keeps up
        return hub.listener_count, [listener.ended for listener in listeners], refused

    count, ended, refused = asyncio.run(scenario())
    assert "event listeners" in refused
    assert count == 1 and ended == [False] + [True] * 7
