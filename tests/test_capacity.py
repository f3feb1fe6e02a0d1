"""Finding 5: four sessions speaking at once (the default --max_session) lost their speech: the
sound fell seconds behind and most sentences never got their start event. Now the server
admits only the sessions it measured it can keep speaking in real time, and each of them,
speaking at once, is heard whole: every sentence's start and end, the sound on time.

`app.py` runs as its own process on its defaults; each peer comes from its own address
(X-Forwarded-For through a trusted local proxy), as real visitors do."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import numpy as np

from appprocess import AppProcess
from conftest import RunningServer
from livepeer import LivePeer
from portrait_geometry import sway_box
from sseclient import SseClient

SENTENCES = [
    "The first sentence starts the answer.",
    "Here comes a second one, a little longer than the first.",
    "A third sentence keeps the avatar busy.",
    "The fourth is here as well.",
    "Number five talks about the weather today.",
    "Six is the last but two.",
    "Seven sentences and counting.",
    "And the eighth one ends the answer.",
]
MAX_LAG_S = 0.5  # the sound may arrive this much later than its timestamps say, at most
SPEECH_RMS = 0.02


async def open_until_refused(url: str, http: aiohttp.ClientSession, limit: int = 8) -> tuple[list, tuple]:
    peers: list[LivePeer] = []
    for n in range(limit):
        peer = LivePeer(url, sway_box(), audio_prefetch=0, inspect_video=False,
                        headers={"X-Forwarded-For": f"198.51.100.{n + 1}"})
        try:
            await peer.connect(http)
        except AssertionError as refused:
            await peer.close()
            return peers, refused.args
        await peer.wait_for_media()
        peers.append(peer)
    return peers, ()


def test_the_sessions_admitted_by_default_all_speak_at_once_and_are_heard_whole():
    srv = AppProcess(["--forwarded_allow_ips", "127.0.0.1"])

    async def scenario():
        async with aiohttp.ClientSession() as http:
            await srv.wait_ready(http)
            peers, refusal = await open_until_refused(srv.url, http)
            listeners = []
            for peer in peers:
                listener = SseClient(f"{srv.url}/sse?sessionid={peer.sessionid}")
                await listener.connect(http)
                listeners.append(listener)
            started = time.monotonic()
            for peer in peers:
                async with http.post(srv.url + "/human",
                                     json={"sessionid": peer.sessionid, "text": " ".join(SENTENCES)}) as resp:
                    assert resp.status == 200
            for listener in listeners:
                await listener.wait_for(lambda e: e["status"] == "end" and e["text"] == SENTENCES[-1], 90)
            ended = time.monotonic()
            async with http.get(srv.url + "/stats") as resp:
                stats = (await resp.json())["data"]
            for listener in listeners:
                await listener.close()
            for peer in peers:
                await peer.close()
            return peers, listeners, refusal, started, ended, stats

    try:
        peers, listeners, refusal, started, ended, stats = asyncio.run(scenario())
    finally:
        log = srv.log()
        srv.stop()
    assert 1 <= len(peers) <= 4, log[-2000:]
    assert "capacity:" in log
    refused = str(refusal)
    assert "503" in refused or "at capacity" in refused or "sessions are in use" in refused, refused
    for peer, listener in zip(peers, listeners, strict=True):
        spoken = [(e["status"], e["text"]) for e in listener.events if e["status"] in ("start", "end")]
        # Every sentence was heard from its start to its end, in order; none was lost.
        assert [t for s, t in spoken if s == "start"] == [t for s, t in spoken if s == "end"]
        heard = " ".join(t for s, t in spoken if s == "end")
        assert heard.replace(" ", "") == "".join(SENTENCES).replace(" ", ""), heard
        audio = peer.audio_since(started)
        span = audio[-1].arrival - audio[0].arrival
        assert len(audio) / span > 45  # 50 packets a second, the whole time
        speech = [a for a in audio if a.arrival <= ended]
        assert np.mean([a.rms > SPEECH_RMS for a in speech]) > 0.4  # audible, not gaps
        lag = [(a.arrival - audio[0].arrival) - (a.pts - audio[0].pts) / 48000 for a in audio]
        assert max(lag) - min(lag) < MAX_LAG_S, max(lag) - min(lag)
    assert all(s["events_late"] == 0 and s["track_errors"] == 0 for s in stats["sessions"]), stats


def test_a_full_server_says_it_is_at_capacity():
    srv = RunningServer(["--max_session", "4", "--capacity", "1"])

    async def scenario():
        async with aiohttp.ClientSession() as http:
            first = LivePeer(srv.url, sway_box())
            await first.connect(http)
            second, refusal = await open_until_refused(srv.url, http, limit=1)
            await first.close()
            return second, refusal

    try:
        second, refusal = asyncio.run(scenario())
    finally:
        srv.stop()
    assert second == []
    assert "at capacity" in str(refusal) and "keeps 1 session speaking" in str(refusal)
