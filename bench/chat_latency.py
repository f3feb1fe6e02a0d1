"""Chat latency as a listener hears it: from the LLM's first clause to the first speech audio
at the client.

    .venv/bin/python bench/chat_latency.py [--repeats 5] [--token_ms 25]
    .venv/bin/python bench/chat_latency.py --local     # the --llm local model instead (question -> audio only)

The LLM is tests/fakellm.py, a real OpenAI-compatible streaming server in this process, pacing
its tokens like a local model (--token_ms per token; 25 ms is 40 tokens/s), so the figure is
the server's own share: openai client, piece splitter, TTS, render and WebRTC. app.py runs as a
subprocess; the client (a real aiortc peer, audio taken on arrival) and the LLM share this
process's clock. Prints JSON with, per round and as medians: first clause written by the LLM
-> first audio at the client (the target: 300 ms), first token -> first audio, question ->
first audio, and when the /sse "start" event arrived relative to the first sound (any audio
above the noise floor) and to the first loud packet.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from e2e import Server  # noqa: E402
from machine import machine_name  # noqa: E402

from fakellm import FakeLLM, Script, tokens  # noqa: E402
from livepeer import LivePeer  # noqa: E402
from portrait_geometry import sway_box  # noqa: E402
from sseclient import SseClient  # noqa: E402
from waiting import wait_until  # noqa: E402

SPEECH_RMS = 0.02  # a loud packet: speech is clearly audible
SOUND_RMS = 0.002  # above opus's noise floor: the first quiet onset of the voice
ANSWER = "Sure thing, the capital of France is Paris. It is famous for its museums and its food."
TARGET_MS = 300


def answer_over(sse: SseClient, asked: float, quiet_s: float = 1.5) -> bool:
    """The avatar went idle after the question and stayed idle (a slow LLM leaves gaps)."""
    last = sse.events[-1] if sse.events else None
    return (
        last is not None and last["_at"] > asked and last["status"] == "speaking" and not last["speaking"]
        and time.monotonic() - last["_at"] > quiet_s
    )


async def chat_round(
    srv: Server, http: aiohttp.ClientSession, peer: LivePeer, sse: SseClient, llm: FakeLLM | None
) -> dict:
    await asyncio.sleep(1.0)  # start from silence
    asked = time.monotonic()
    body = {"sessionid": peer.sessionid, "text": "What is the capital of France?", "type": "chat", "interrupt": True}
    async with http.post(srv.url + "/human", json=body) as resp:
        assert resp.status == 200, await resp.text()
    heard = await wait_until(lambda: any(a.rms > SPEECH_RMS for a in peer.audio_since(asked)), 15)
    assert heard, "no speech after the chat question"
    first_audio = next(a.arrival for a in peer.audio_since(asked) if a.rms > SPEECH_RMS)
    first_sound = next(a.arrival for a in peer.audio_since(asked) if a.rms > SOUND_RMS)
    await wait_until(lambda: any(e["status"] == "start" and e["_at"] >= asked for e in sse.events), 5)
    start_event = next(e["_at"] for e in sse.events if e["status"] == "start" and e["_at"] >= asked)
    await wait_until(lambda: answer_over(sse, asked), 60)
    result = {
        "question_to_audio_ms": (first_audio - asked) * 1000,
        "start_event_minus_first_sound_ms": (start_event - first_sound) * 1000,
        "start_event_minus_loud_audio_ms": (start_event - first_audio) * 1000,
    }
    if llm is not None:
        sent = llm.streams[-1].sent
        clause = next(t for t, text in sent if "," in text)  # the token that completes "Sure thing,"
        result["clause_to_audio_ms"] = (first_audio - clause) * 1000
        result["first_token_to_audio_ms"] = (first_audio - sent[0][0]) * 1000
    return result


async def main_async(args: argparse.Namespace) -> dict:
    llm: FakeLLM | None = None
    if args.local:
        srv = Server(["--llm", "local", "--max_session", "2"])
    else:
        llm = FakeLLM()
        llm.default = Script(tokens(ANSWER), interval=args.token_ms / 1000)
        os.environ["OPENAI_API_KEY"] = "sk-bench"
        srv = Server(["--llm_url", llm.url, "--llm_model", "bench", "--max_session", "2"])
    result: dict = {
        "bench": "chat_latency",
        "machine": machine_name(),
        "llm": "local SmolLM2-135M (llama.cpp)" if args.local else f"loopback server, {args.token_ms:g} ms per token",
        "target_clause_to_audio_ms": TARGET_MS,
    }
    try:
        async with aiohttp.ClientSession() as http:
            await srv.wait_ready(http)
            peer = LivePeer(srv.url, sway_box(), audio_prefetch=0)
            await peer.connect(http)
            await peer.wait_for_media()
            sse = SseClient(f"{srv.url}/sse?sessionid={peer.sessionid}")
            await sse.connect(http)
            rounds = [await chat_round(srv, http, peer, sse, llm) for _ in range(args.repeats)]
            await sse.close()
            await peer.close()
    finally:
        srv.stop()
        if llm is not None:
            llm.stop()
    result["rounds"] = [{k: round(v, 1) for k, v in r.items()} for r in rounds]
    for key in rounds[0]:
        result[key] = round(statistics.median(r[key] for r in rounds), 1)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--token_ms", type=float, default=25.0, help="LLM pace: milliseconds per token (default 25)")
    p.add_argument("--local", action="store_true", help="chat with --llm local (needs requirements-llm-local.txt)")
    print(json.dumps(asyncio.run(main_async(p.parse_args())), indent=2))


if __name__ == "__main__":
    main()
