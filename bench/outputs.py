"""What each output costs and how fast speech reaches its audience, against `app.py` run as a
subprocess, with real receivers: nginx-rtmp read back by PyAV, a WHIP endpoint on aiortc, WHEP
and WebRTC peers on aiortc.

    .venv/bin/python bench/outputs.py [--seconds 8] [--repeats 3] [--max_sessions 4]

Prints JSON:
- cpu_<kind>: server cores one speaking session takes with that output (none: a background
  session feeding no output; webrtc: the page's peer; two_webrtc: the page's peer and a WHEP
  viewer; rtmp, whip, record);
- first_speech_<rtmp|whep>_ms: from POST /human to the first speech sound arriving at an RTMP
  reader (PyAV, through nginx) and at a WHEP viewer (median of --repeats);
- sessions_webrtc_and_record: how many sessions, each with a WebRTC viewer and a recording,
  all hold 24+ fps at their viewer with no slot missed.
The receivers run in this process on the same machine, so they compete with the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import av
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from machine import machine_name  # noqa: E402

from appprocess import AppProcess  # noqa: E402
from livepeer import LivePeer  # noqa: E402
from nginx_rtmp import NginxRtmp  # noqa: E402
from portrait_geometry import sway_box  # noqa: E402
from waiting import post_json, wait_until  # noqa: E402
from whip_server import WhipEndpoint  # noqa: E402

SPEECH_RMS = 0.02
LONG_TEXT = " ".join(["This is a long answer that keeps the avatar talking for a while."] * 8)


class RtmpListener:
    """Reads an RTMP stream on a thread, noting when each loud stretch of sound arrives."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.loud: list[float] = []  # arrival times of loud audio frames
        self.frames = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with av.open(self.url, timeout=(10, 10)) as container:
            for packet in container.demux():
                if self._stop.is_set():
                    return
                for frame in packet.decode():
                    self.frames += 1
                    if isinstance(frame, av.AudioFrame):
                        pcm = frame.to_ndarray()
                        if float(np.sqrt(np.mean(pcm**2))) > SPEECH_RMS:
                            self.loud.append(time.monotonic())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)


async def cpu_share(srv: AppProcess, seconds: float) -> float:
    start_cpu, start = srv.cpu_seconds(), time.monotonic()
    await asyncio.sleep(seconds)
    return (srv.cpu_seconds() - start_cpu) / (time.monotonic() - start)


async def talk(http: aiohttp.ClientSession, srv: AppProcess, sid: int) -> None:
    status, reply = await post_json(http, srv.url + "/human",
                                    {"sessionid": sid, "text": LONG_TEXT, "interrupt": True})
    assert status == 200, reply


async def background(http: aiohttp.ClientSession, srv: AppProcess, outputs: list) -> int:
    status, reply = await post_json(http, srv.url + "/session", {"outputs": outputs})
    assert status == 200, reply
    return reply["sessionid"]


async def end(http: aiohttp.ClientSession, srv: AppProcess, sid: int) -> None:
    async with http.delete(f"{srv.url}/session/{sid}") as resp:
        assert resp.status == 200, await resp.text()


async def speaking_cpu(http: aiohttp.ClientSession, srv: AppProcess, sid: int, seconds: float) -> float:
    await talk(http, srv, sid)
    await asyncio.sleep(1.5)  # past the first sentence's synthesis
    return round(await cpu_share(srv, seconds), 3)


async def cpu_per_output(http: aiohttp.ClientSession, srv: AppProcess, rtmp: NginxRtmp, whip: WhipEndpoint,
                         seconds: float) -> dict[str, float]:
    result = {}
    for kind, outputs in (("none", []), ("record", ["record"]), ("rtmp", [{"type": "rtmp", "url": rtmp.url("cpu")}]),
                          ("whip", [{"type": "rtcpush", "url": whip.url("cpu")}])):
        sid = await background(http, srv, outputs)
        await asyncio.sleep(2.0)  # connected and encoding
        result[f"cpu_{kind}"] = await speaking_cpu(http, srv, sid, seconds)
        await end(http, srv, sid)
    for kind, viewers in (("webrtc", 0), ("two_webrtc", 1)):
        peer = LivePeer(srv.url, sway_box(), inspect_video=False)
        await peer.connect(http)
        await peer.wait_for_media()
        watchers = [LivePeer(srv.url, sway_box(), sessionid=peer.sessionid, whep=True, inspect_video=False)
                    for _ in range(viewers)]
        for w in watchers:
            await w.connect(http)
            await w.wait_for_media()
        result[f"cpu_{kind}"] = await speaking_cpu(http, srv, peer.sessionid, seconds)
        for w in [*watchers, peer]:
            await w.close()  # the page's peer gone closes its session
    return result


async def first_speech(http: aiohttp.ClientSession, srv: AppProcess, sid: int,
                       heard: Callable[[float], float | None], repeats: int) -> float:
    """Median ms from POST /human to the first loud sound `heard(since)` reports."""
    times = []
    for _ in range(repeats):
        await asyncio.sleep(1.5)  # silence first
        sent = time.monotonic()
        status, reply = await post_json(http, srv.url + "/human", {"sessionid": sid, "text": "Hello, how are you?"})
        assert status == 200, reply
        assert await wait_until(lambda sent=sent: heard(sent) is not None, 15), "no speech arrived"
        times.append((heard(sent) - sent) * 1000)
        await asyncio.sleep(2.0)
    return round(statistics.median(times), 1)


async def latencies(http: aiohttp.ClientSession, srv: AppProcess, rtmp: NginxRtmp, repeats: int) -> dict:
    sid = await background(http, srv, [{"type": "rtmp", "url": rtmp.url("latency")}])
    listener = await asyncio.get_running_loop().run_in_executor(None, RtmpListener, rtmp.url("latency"))
    assert await wait_until(lambda: listener.frames > 50, 20), "the RTMP stream did not start"
    viewer = LivePeer(srv.url, sway_box(), sessionid=sid, whep=True, inspect_video=False, audio_prefetch=0)
    await viewer.connect(http)
    await viewer.wait_for_media()
    rtmp_ms = await first_speech(http, srv, sid, lambda t: next((a for a in listener.loud if a >= t), None), repeats)
    whep_ms = await first_speech(
        http, srv, sid, lambda t: next((a.arrival for a in viewer.audio_since(t) if a.rms > SPEECH_RMS), None),
        repeats)
    await viewer.close()
    await asyncio.get_running_loop().run_in_executor(None, listener.stop)
    await end(http, srv, sid)
    return {"first_speech_rtmp_ms": rtmp_ms, "first_speech_whep_ms": whep_ms}


async def scan(http: aiohttp.ClientSession, srv: AppProcess, max_sessions: int, seconds: float) -> dict:
    """Sessions with a WebRTC viewer and a recording each, added one at a time while all speak."""
    peers: list[LivePeer] = []
    per_n = {}
    held = 0
    for n in range(1, max_sessions + 1):
        peer = LivePeer(srv.url, sway_box(), inspect_video=False)
        await peer.connect(http)
        await peer.wait_for_media()
        status, reply = await post_json(http, srv.url + "/record",
                                        {"sessionid": peer.sessionid, "type": "start_record"})
        assert status == 200, reply
        peers.append(peer)
        for p in peers:
            await talk(http, srv, p.sessionid)
        await asyncio.sleep(2.0)
        missed_before = await slots_missed(http, srv)
        start = time.monotonic()
        await asyncio.sleep(seconds)
        fps = [len(p.video_since(start)) / (time.monotonic() - start) for p in peers]
        missed = await slots_missed(http, srv) - missed_before
        ok = min(fps) >= 24 and missed == 0
        per_n[str(n)] = {"min_viewer_fps": round(min(fps), 1), "slots_missed": missed, "held": ok}
        if not ok:
            break
        held = n
    for p in peers:
        await post_json(http, srv.url + "/record", {"sessionid": p.sessionid, "type": "end_record"})
        await p.close()
    return {"sessions_webrtc_and_record": held, "scan": per_n}


async def slots_missed(http: aiohttp.ClientSession, srv: AppProcess) -> int:
    async with http.get(srv.url + "/stats") as resp:
        return sum(s["slots_missed"] for s in (await resp.json())["data"]["sessions"])


async def main_async(args: argparse.Namespace) -> dict:
    n = str(args.max_sessions + 2)
    srv = AppProcess(["--log_level", "WARNING", "--max_session", n, "--max_sessions_per_ip", n, "--capacity", n,
                      "--record_dir", str(Path(args.record_dir))])
    result: dict = {"bench": "outputs", "machine": machine_name(), "model": "portrait"}
    try:
        with NginxRtmp() as rtmp:
            async with aiohttp.ClientSession() as http, WhipEndpoint() as whip:
                await srv.wait_ready(http)
                result.update(await cpu_per_output(http, srv, rtmp, whip, args.seconds))
                result.update(await latencies(http, srv, rtmp, args.repeats))
                result.update(await scan(http, srv, args.max_sessions, args.seconds))
    finally:
        srv.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per figure")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max_sessions", type=int, default=4)
    parser.add_argument("--record_dir", default="/tmp/livetalking-bench-records")
    print(json.dumps(asyncio.run(main_async(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()
