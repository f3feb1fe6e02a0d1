"""Talking to the avatar, timed as the user lives it, against `app.py` run as a subprocess with
the offline speech-to-text (whisper tiny.en) and a stand-in LLM streaming at a realistic pace
(first token after 300 ms, then 30 tokens a second).

    .venv/bin/python bench/voice_latency.py [--repeats 5]

An aiortc client sends espeak-ng questions as its microphone at real-time pace and times, at
its own end (packet arrival):
- voice_to_answer_ms: from the last voiced sample it sent to the first loud answer audio it
  receives (the target: 800 ms); also to the final transcript event;
- barge_in_to_silence_ms: while the avatar speaks, from the first voiced sample of a second
  voice to the last loud avatar packet (the target: 300 ms);
- cpu_listening_session: server cores of one connected session whose microphone sends
  silence, beside the same session with no microphone.
Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from machine import machine_name  # noqa: E402
from mic_tracks import SpeechTrack  # noqa: E402

from appprocess import AppProcess  # noqa: E402
from fakellm import FakeLLM, Script, tokens  # noqa: E402
from livepeer import LivePeer  # noqa: E402
from portrait_geometry import sway_box  # noqa: E402
from speech_samples import espeak_speech  # noqa: E402
from sseclient import SseClient  # noqa: E402

LOUD = 0.02
QUESTIONS = ["What is the capital of France?", "How tall is the Eiffel tower?", "Tell me a short joke.",
             "What time is it in Tokyo?", "Which river flows through Paris?"]
ANSWER = "Paris is the capital of France, and it is a lovely city on the river Seine."
LONG_TEXT = " ".join(["This is a long answer that keeps the avatar talking for a while."] * 4)


def answer_script() -> Script:
    return Script(chunks=tokens(ANSWER), first_delay=0.3, interval=1 / 30)


async def connected(http: aiohttp.ClientSession, srv: AppProcess, mic, **fields):
    peer = LivePeer(srv.url, sway_box(), mic=mic, offer_fields=fields, audio_prefetch=0)
    await peer.connect(http)
    sse = SseClient(f"{srv.url}/sse?sessionid={peer.sessionid}")
    await sse.connect(http)
    await peer.wait_for_media()
    return peer, sse


async def voice_to_answer(http: aiohttp.ClientSession, srv: AppProcess, llm: FakeLLM, repeats: int) -> dict:
    mic = SpeechTrack()
    peer, sse = await connected(http, srv, mic, asr_mode="chat")
    answers, finals = [], []
    try:
        await asyncio.sleep(1.0)
        for i in range(repeats):
            llm.script(answer_script())
            seen = len(sse.events)
            mic.say(espeak_speech(QUESTIONS[i % len(QUESTIONS)]))
            while mic.speaking:
                await asyncio.sleep(0.02)
            voiced = mic.voiced_until
            final = await sse.wait_for(lambda e, n=seen: e["status"] == "transcript" and e["final"]
                                       and sse.events.index(e) >= n, 30)
            # The whole answer, so the next question does not talk over it.
            await sse.wait_for(lambda e, n=seen: e["status"] == "end" and e["text"].endswith(ANSWER[-6:])
                               and sse.events.index(e) >= n, 30)
            loud = [a.arrival for a in peer.audio_since(voiced) if a.rms > LOUD]
            answers.append(1000 * (loud[0] - voiced))
            finals.append(1000 * (final["_at"] - voiced))
            await asyncio.sleep(1.0)
    finally:
        await sse.close()
        await peer.close()
    return {"voice_to_answer_ms": round(statistics.median(answers)),
            "voice_to_answer_all_ms": [round(x) for x in answers],
            "voice_to_transcript_ms": round(statistics.median(finals))}


async def barge_in(http: aiohttp.ClientSession, srv: AppProcess, repeats: int) -> dict:
    results, detections = [], []
    for _ in range(repeats):
        mic = SpeechTrack()
        peer, sse = await connected(http, srv, mic, asr_mode="off")
        try:
            async with http.post(srv.url + "/asr_mode", json={"sessionid": peer.sessionid, "mode": "echo"}):
                pass
            async with http.post(srv.url + "/human", json={"sessionid": peer.sessionid, "text": LONG_TEXT}):
                pass
            await sse.wait_for(lambda e: e["status"] == "start", 30)
            await asyncio.sleep(1.5)
            mic.say(espeak_speech("Stop, wait a moment please.", voice="en-gb"))
            event = await sse.wait_for(lambda e: e["status"] == "barge_in", 15)
            await asyncio.sleep(1.0)
            onset = mic.voiced_from
            detections.append(1000 * (event["_at"] - onset))
            loud = [a.arrival for a in peer.audio_since(onset) if a.rms > LOUD and a.arrival < onset + 1.5]
            results.append(1000 * ((loud[-1] if loud else onset) - onset))
        finally:
            await sse.close()
            await peer.close()
        await asyncio.sleep(1.0)
    return {"barge_in_to_silence_ms": round(statistics.median(results)),
            "barge_in_to_event_ms": round(statistics.median(detections)),
            "barge_in_all_ms": [round(x) for x in results]}


async def cpu_listening(http: aiohttp.ClientSession, srv: AppProcess, seconds: float) -> dict:
    shares = {}
    for name, mic in (("cpu_session_no_mic", None), ("cpu_listening_session", SpeechTrack())):
        peer, sse = await connected(http, srv, mic)
        try:
            await asyncio.sleep(2.0)
            before = srv.cpu_seconds()
            await asyncio.sleep(seconds)
            shares[name] = round((srv.cpu_seconds() - before) / seconds, 3)
        finally:
            await sse.close()
            await peer.close()
        await asyncio.sleep(1.0)
    return shares


async def main_async(args: argparse.Namespace) -> dict:
    llm = FakeLLM()
    srv = AppProcess(["--log_level", "WARNING", "--max_session", "4", "--llm_url", llm.url, "--llm_model", "bench"])
    result: dict = {"bench": "voice_latency", "machine": machine_name(), "model": "portrait", "asr": "whisper tiny.en"}
    try:
        async with aiohttp.ClientSession() as http:
            await srv.wait_ready(http)
            result.update(await voice_to_answer(http, srv, llm, args.repeats))
            result.update(await barge_in(http, srv, args.repeats))
            result.update(await cpu_listening(http, srv, args.seconds))
    finally:
        srv.stop()
        llm.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds of the CPU figures")
    print(json.dumps(asyncio.run(main_async(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()
