"""End-to-end figures as a browser would see them, against `app.py` started as a subprocess.

    .venv/bin/python bench/e2e.py [--repeats 5] [--max_sessions 6]

Prints JSON: time from POST /human to the first speech audio and to the first mouth-moving
frame arriving at the client, their offset (audio is timed on arrival like video; aiortc's
stock receiver would hold it 80 ms more, while a browser delays both together), interrupt to
silence, server CPU per idle and per speaking session, and how many speaking sessions hold
24+ fps. The client peers (which decode the video) run in this process on the same machine,
so they compete with the server for its cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from machine import machine_name  # noqa: E402

from appprocess import AppProcess  # noqa: E402
from livepeer import LivePeer  # noqa: E402
from portrait_geometry import mouth_change, sway_box  # noqa: E402
from waiting import post_json, wait_until  # noqa: E402

SPEECH_RMS = 0.02
MOUTH_MOVED = 6.0  # mean absolute pixel change of the mouth region from the rest pose
LONG_TEXT = " ".join(["This is a long answer that keeps the avatar talking for a while."] * 8)


class Server(AppProcess):
    """app.py quiet (warnings only), with the benchmark's flags."""

    def __init__(self, extra: list[str]) -> None:
        super().__init__(["--log_level", "WARNING", *extra])

    async def wait_ready(self, http: aiohttp.ClientSession, token: str | None = None) -> None:
        await super().wait_ready(http)


def rest_pose(peer: LivePeer) -> np.ndarray:
    return peer.video[-1].mouth


async def latency_round(srv: Server, http: aiohttp.ClientSession, peer: LivePeer) -> dict:
    await asyncio.sleep(1.0)  # idle, so the round starts from silence
    rest = rest_pose(peer)
    sent = time.monotonic()
    await post_json(http, srv.url + "/human", {"sessionid": peer.sessionid, "text": "Hello, how are you?"})
    await wait_until(lambda: any(a.rms > SPEECH_RMS for a in peer.audio_since(sent)), 10)
    await wait_until(
        lambda: any(mouth_change(v.mouth, rest) > MOUTH_MOVED for v in peer.video_since(sent)), 10
    )
    first_audio = next(a.arrival for a in peer.audio_since(sent) if a.rms > SPEECH_RMS)
    first_mouth = next(
        v.arrival for v in peer.video_since(sent) if mouth_change(v.mouth, rest) > MOUTH_MOVED
    )
    await asyncio.sleep(2.5)  # let the sentence finish
    return {
        "first_audio_ms": (first_audio - sent) * 1000,
        "first_mouth_ms": (first_mouth - sent) * 1000,
        "av_offset_ms": (first_mouth - first_audio) * 1000,
    }


async def interrupt_round(srv: Server, http: aiohttp.ClientSession, peer: LivePeer) -> float:
    sent = time.monotonic()
    await post_json(http, srv.url + "/human", {"sessionid": peer.sessionid, "text": LONG_TEXT})
    await wait_until(lambda: any(a.rms > SPEECH_RMS for a in peer.audio_since(sent)), 10)
    await asyncio.sleep(1.0)
    asked = time.monotonic()
    await post_json(http, srv.url + "/interrupt_talk", {"sessionid": peer.sessionid})
    await asyncio.sleep(1.5)
    loud = [a.arrival for a in peer.audio_since(asked) if a.rms > SPEECH_RMS]
    return (max(loud) - asked) * 1000 if loud else 0.0


async def cpu_share(srv: Server, seconds: float) -> float:
    start_cpu, start = srv.cpu_seconds(), time.monotonic()
    await asyncio.sleep(seconds)
    return (srv.cpu_seconds() - start_cpu) / (time.monotonic() - start)


async def fresh_fps(http: aiohttp.ClientSession, srv: Server, seconds: float) -> list[float]:
    """Per session: video frames per second that were freshly rendered (not repeats)."""
    async def snapshot():
        async with http.get(srv.url + "/stats") as resp:
            return (await resp.json())["data"]["sessions"]

    before, start = await snapshot(), time.monotonic()
    await asyncio.sleep(seconds)
    after, elapsed = await snapshot(), time.monotonic() - start
    return [(a["frames_fresh"] - b["frames_fresh"]) / elapsed for a, b in zip(after, before, strict=False)]


async def keep_talking(http: aiohttp.ClientSession, srv: Server, peers: list[LivePeer]) -> None:
    for p in peers:
        await post_json(http, srv.url + "/human", {"sessionid": p.sessionid, "text": LONG_TEXT, "interrupt": True})


async def main_async(args: argparse.Namespace) -> dict:
    n = str(args.max_sessions + 1)
    # Scaling is measured, so admission must not stop it: as many sessions as asked for.
    srv = Server(["--max_session", n, "--max_sessions_per_ip", n, "--capacity", n])
    result: dict = {"bench": "e2e", "machine": machine_name(), "model": "portrait"}
    try:
        async with aiohttp.ClientSession() as http:
            await srv.wait_ready(http)
            # Audio is timed on arrival, as video is (see LivePeer.audio_prefetch).
            peer = LivePeer(srv.url, sway_box(), audio_prefetch=0)
            await peer.connect(http)
            await peer.wait_for_media()
            rounds = [await latency_round(srv, http, peer) for _ in range(args.repeats)]
            for key in ("first_audio_ms", "first_mouth_ms", "av_offset_ms"):
                result[key] = round(statistics.median(r[key] for r in rounds), 1)
            result["interrupt_to_silence_ms"] = round(
                statistics.median([await interrupt_round(srv, http, peer) for _ in range(args.repeats)]), 1
            )
            await asyncio.sleep(1.0)
            result["cpu_idle_session"] = round(await cpu_share(srv, 5.0), 3)
            await keep_talking(http, srv, [peer])
            await asyncio.sleep(1.0)
            result["cpu_speaking_session"] = round(await cpu_share(srv, 5.0), 3)
            await peer.close()

            peers: list[LivePeer] = []
            scale = {}
            for n in range(1, args.max_sessions + 1):
                extra = LivePeer(srv.url, sway_box(), inspect_video=False)
                await extra.connect(http)
                await extra.wait_for_media()
                peers.append(extra)
                await keep_talking(http, srv, peers)
                await asyncio.sleep(1.0)
                fps = await fresh_fps(http, srv, 5.0)
                scale[n] = round(min(fps), 1) if fps else 0.0
            result["speaking_sessions_min_fps"] = scale
            result["speaking_sessions_at_24fps"] = max([n for n, f in scale.items() if f >= 24] or [0])
            for p in peers:
                await p.close()
    finally:
        srv.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max_sessions", type=int, default=6)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main_async(args)), indent=2))


if __name__ == "__main__":
    main()
