"""What a listener hears when several sessions speak at once for a long time, with a hostile
client alongside: against `app.py` started as a subprocess.

    .venv/bin/python bench/soak.py --scan 6                 # 1..6 sessions, 40 s each
    .venv/bin/python bench/soak.py --minutes 10 --hostile   # the sessions the server admits

Each session speaks a three-sentence reply, then the next as soon as the last `end` event of
the one before arrives, so it talks all the time. Per session, at its real WebRTC peer: audio
packets per second, the audio lag (how far the sound arrives behind its own timestamps, which
grows when the server's audio falls behind the clock), the longest gap between two audio
packets, the share of packets with audible sound, and start/end events received against the
sentences sent. The server process is sampled for RSS, open files and threads over time.

`--scan N` ramps from 1 to N speaking sessions and reports how many this machine holds with
continuous audio (no event lost, lag under LAG_OK_S, 49+ packets/s at every peer).
`--minutes M` opens as many sessions as the server admits by default (its measured capacity)
and keeps them speaking for M minutes. Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import sys
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from e2e import Server  # noqa: E402
from machine import machine_name  # noqa: E402

from livepeer import LivePeer  # noqa: E402
from portrait_geometry import sway_box  # noqa: E402
from sseclient import SseClient  # noqa: E402

REPLY = [
    "The quick brown fox jumps over the lazy dog.",
    "It is a sunny day in the park today.",
    "We will talk again soon.",
]
AUDIBLE_RMS = 0.01
LAG_OK_S = 0.25  # sound arriving later than this behind its timestamps is no longer live
OPUS_RATE = 48000


@dataclass
class Speaker:
    """One session kept talking, and what its listener received."""

    peer: LivePeer
    events: SseClient
    sent: list[str] = field(default_factory=list)
    replies: int = 0

    async def talk(self, http: aiohttp.ClientSession, url: str, headers: dict, until: float) -> None:
        while time.monotonic() < until:
            body = {"sessionid": self.peer.sessionid, "text": " ".join(REPLY), "type": "echo",
                    "reply": self.replies}
            try:
                async with http.post(url + "/human", json=body, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=10)) as resp:
                    await resp.read()
                    if resp.status != 200:
                        await asyncio.sleep(0.5)
                        continue
            except (aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(0.5)
                continue
            self.sent += REPLY
            reply = self.replies
            self.replies += 1
            await self._wait_end(reply, 30.0)

    async def _wait_end(self, reply: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(e["status"] == "end" and e.get("reply") == reply and e.get("text") == REPLY[-1]
                   for e in self.events.events[-20:]):
                return
            await asyncio.sleep(0.05)

    def report(self, since: float) -> dict:
        audio = [a for a in self.peer.audio if a.arrival >= since]
        if len(audio) < 2:
            return {"audio_packets_per_s": 0.0}
        span = audio[-1].arrival - audio[0].arrival
        lags = [(a.arrival - audio[0].arrival) - (a.pts - audio[0].pts) / OPUS_RATE for a in audio]
        base = min(lags)
        lags = [lag - base for lag in lags]
        gaps = np.diff([a.arrival for a in audio])
        starts = [e["text"] for e in self.events.events if e["status"] == "start" and "reply" in e]
        ends = [e["text"] for e in self.events.events if e["status"] == "end" and "reply" in e]
        return {
            "audio_packets_per_s": round(len(audio) / span, 2) if span else 0.0,
            "audio_lag_final_s": round(lags[-1], 3),
            "audio_lag_max_s": round(max(lags), 3),
            "audio_gap_max_ms": round(float(gaps.max()) * 1000, 1),
            # Packets that arrived more than LAG_OK_S behind their timestamps, in seconds of sound.
            "audio_late_s": round(sum(lag > LAG_OK_S for lag in lags) * 0.02, 2),
            "audible_share": round(sum(a.rms > AUDIBLE_RMS for a in audio) / len(audio), 3),
            "sentences_sent": len(self.sent),
            "starts": len(starts),
            "ends": len(ends),
            "events_lost": max(0, len(self.sent) - len(starts)) + max(0, len(self.sent) - len(ends)),
        }


def sample_process(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return {
        "rss_mb": round(rss_kb / 1024, 1),
        "fds": len(list(Path(f"/proc/{pid}/fd").iterdir())),
        "threads": len(list(Path(f"/proc/{pid}/task").iterdir())),
    }


def silent_flac(rate: int = 96000, seconds: float = 1.0) -> bytes:
    """A tiny file whose header asks for a lot of decoding (a hostile upload)."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.zeros(int(rate * seconds), np.int16), rate, format="FLAC")
    return buf.getvalue()


def odd_rate_wav(rate: int = 999_983) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\0\0" * 1500)
    return buf.getvalue()


HOSTILE_SDP = "v=0\r\n" + "a=x-filler:" + "y" * 200 + "\r\n" * 1


async def hostile(http: aiohttp.ClientSession, url: str, headers: dict, until: float, counts: dict) -> None:
    """Cheap requests that once froze or silenced sessions, one every half second."""
    big_list = json.dumps({"sessionid": "1234567890123456", "pad": [0] * 2_000_000}).encode()
    big_sdp = json.dumps({"sdp": HOSTILE_SDP * 50_000, "type": "offer"}).encode()
    flac, wav = silent_flac(), odd_rate_wav()
    attacks = [
        ("POST", "/is_speaking", {"data": big_list, "headers": {"Content-Type": "application/json"}}),
        ("POST", "/offer", {"data": big_sdp, "headers": {"Content-Type": "application/json"}}),
        ("POST", "/offer", {"data": b'{"sdp": "v=0", "type": "offer"}', "headers": {"Content-Type": "text/plain"}}),
        ("POST", "/human", {"json": {"sessionid": "\ud800", "text": "\ud800"}}),
        ("POST", "/humanaudio", {"files": ("flac", flac)}),
        ("POST", "/humanaudio", {"files": ("wav", wav)}),
        ("POST", "/human", {"json": {"sessionid": "1\nERROR forged line", "text": "hi"}}),
    ]
    i = 0
    while time.monotonic() < until:
        method, path, kwargs = attacks[i % len(attacks)]
        i += 1
        if "files" in kwargs:
            form = aiohttp.FormData()
            form.add_field("sessionid", "1234567890123456")
            form.add_field("file", kwargs["files"][1], filename=kwargs["files"][0])
            kwargs = {"data": form}
        kwargs = {**kwargs, "headers": {**headers, **kwargs.get("headers", {})}}
        try:
            async with http.request(method, url + path, timeout=aiohttp.ClientTimeout(total=30), **kwargs) as resp:
                await resp.read()
                counts[str(resp.status)] = counts.get(str(resp.status), 0) + 1
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            counts[type(exc).__name__] = counts.get(type(exc).__name__, 0) + 1
        await asyncio.sleep(0.5)


async def open_speakers(srv: Server, http: aiohttp.ClientSession, n: int, token: str | None) -> list[Speaker]:
    speakers = []
    for _ in range(n):
        peer = LivePeer(srv.url, sway_box(), audio_prefetch=0, inspect_video=False, token=token)
        try:
            await peer.connect(http)
            await peer.wait_for_media()
        except BaseException:
            await peer.close()
            raise
        query = f"&token={token}" if token else ""
        events = SseClient(f"{srv.url}/sse?sessionid={peer.sessionid}{query}")
        await events.connect(http)
        speakers.append(Speaker(peer, events))
    return speakers


async def speak_for(srv: Server, http: aiohttp.ClientSession, speakers: list[Speaker], seconds: float,
                    token: str | None, with_hostile: bool, sample_every: float = 5.0) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    start = time.monotonic()
    until = start + seconds
    hostile_counts: dict[str, int] = {}
    samples: list[dict] = []

    async def sampler() -> None:
        while time.monotonic() < until:
            samples.append({"t_s": round(time.monotonic() - start, 1), **sample_process(srv.proc.pid)})
            await asyncio.sleep(sample_every)

    jobs = [s.talk(http, srv.url, headers, until) for s in speakers] + [sampler()]
    attacker = None
    if with_hostile:
        # Its own process, niced: a real attacker's CPU is on another machine, so building and
        # sending its bodies must not take the cores from the server or the listening peers.
        attacker = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--attack", srv.url, "--minutes", str(seconds / 60),
            *(["--token", token] if token else []), stdout=asyncio.subprocess.PIPE,
            preexec_fn=lambda: os.nice(10),
        )
    await asyncio.gather(*jobs)
    if attacker is not None:
        out, _ = await attacker.communicate()
        hostile_counts = json.loads(out)
    await asyncio.sleep(4.0)  # the last replies finish
    per_session = [s.report(start + 2.0) for s in speakers]
    return {"per_session": per_session, "process": samples, "hostile_answers": hostile_counts}


def holds(result: dict) -> bool:
    return all(
        s.get("events_lost", 1) == 0 and s.get("audio_lag_max_s", 9) <= LAG_OK_S
        and s.get("audio_packets_per_s", 0) >= 49
        for s in result["per_session"]
    )


def summary(result: dict) -> dict:
    per = result["per_session"]
    return {
        "audio_lag_max_s": max(s.get("audio_lag_max_s", 0) for s in per),
        "audio_packets_per_s_min": min(s.get("audio_packets_per_s", 0) for s in per),
        "audio_gap_max_ms": max(s.get("audio_gap_max_ms", 0) for s in per),
        "audio_late_s": round(sum(s.get("audio_late_s", 0) for s in per), 2),
        "audible_share_median": statistics.median(s.get("audible_share", 0) for s in per),
        "events_lost": sum(s.get("events_lost", 0) for s in per),
        "sentences_sent": sum(s.get("sentences_sent", 0) for s in per),
    }


async def server_stats(http: aiohttp.ClientSession, srv: Server, token: str | None) -> list[dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.get(srv.url + "/stats", headers=headers) as resp:
        return (await resp.json())["data"]["sessions"]


async def scan(args: argparse.Namespace, http: aiohttp.ClientSession) -> dict:
    """1..N sessions, each step speaking for args.seconds (admission off: the scan finds the limit)."""
    n = str(args.scan)
    srv = Server(["--max_session", n, "--max_sessions_per_ip", n, "--capacity", n, *args.server_args])
    steps: dict[int, dict] = {}
    try:
        await srv.wait_ready(http)
        for count in range(1, args.scan + 1):
            speakers = await open_speakers(srv, http, count, None)
            run = await speak_for(srv, http, speakers, args.seconds, None, False)
            stats = await server_stats(http, srv, None)
            steps[count] = {**summary(run), "server_audio_lag_max_ms": max(s["audio_lag_max_ms"] for s in stats),
                            "holds": holds(run)}
            print(f"soak: {count} sessions: {json.dumps(steps[count])}", file=sys.stderr, flush=True)
            await close_speakers(speakers)
            await asyncio.sleep(2.0)
    finally:
        srv.stop()
    held = [c for c in steps if all(steps[k]["holds"] for k in range(1, c + 1))]
    return {"scan": steps, "scan_seconds": args.seconds, "speaking_sessions_with_continuous_audio": max(held or [0])}


async def soak(args: argparse.Namespace, http: aiohttp.ClientSession) -> dict:
    """The sessions the server admits (or --sessions of them) speaking for args.minutes."""
    # The server's own --max_session and capacity decide; one test address may open them all.
    extra = ["--max_sessions_per_ip", "16", "--capacity", args.capacity, *args.server_args]
    if args.token:
        extra += ["--api_token", args.token]
    srv = Server(extra)
    try:
        await srv.wait_ready(http)
        speakers: list[Speaker] = []
        while not args.sessions or len(speakers) < args.sessions:
            try:
                speakers += await open_speakers(srv, http, 1, args.token)
            except AssertionError:  # refused: the server's capacity is reached
                break
        print(f"soak: {len(speakers)} sessions admitted", file=sys.stderr, flush=True)
        run = await speak_for(srv, http, speakers, args.minutes * 60, args.token, args.hostile)
        stats = await server_stats(http, srv, args.token)
        await close_speakers(speakers)
        if args.keep_log:
            Path(args.keep_log).write_text(srv.log())
        first, last = run["process"][0], run["process"][-1]
        run["process"] = run["process"][::6]  # every 30 s in the report
        return {"sessions": len(speakers), "minutes": args.minutes, "hostile": args.hostile, **summary(run),
                "holds": holds(run),
                "rss_growth_mb": round(last["rss_mb"] - first["rss_mb"], 1),
                "fds_growth": last["fds"] - first["fds"], "threads_growth": last["threads"] - first["threads"],
                "server_audio_lag_max_ms": max((s["audio_lag_max_ms"] for s in stats), default=None),
                "server_events_late": sum(s["events_late"] for s in stats), "server": stats, **run}
    finally:
        srv.stop()


async def attack(args: argparse.Namespace) -> dict:
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    counts: dict[str, int] = {}
    async with aiohttp.ClientSession() as http:
        await hostile(http, args.attack, headers, time.monotonic() + args.minutes * 60, counts)
    return counts


async def main_async(args: argparse.Namespace) -> dict:
    if args.attack:
        return await attack(args)
    result: dict = {"bench": "soak", "machine": machine_name(), "model": "portrait"}
    async with aiohttp.ClientSession() as http:
        if args.scan:
            result.update(await scan(args, http))
        if args.minutes:
            result["soak"] = await soak(args, http)
            for key in ("sessions", "audio_lag_max_s", "audio_late_s", "server_audio_lag_max_ms", "events_lost",
                        "rss_growth_mb", "fds_growth", "threads_growth"):
                result[f"soak_{key}"] = result["soak"][key]
    return result


async def close_speakers(speakers: list[Speaker]) -> None:
    for s in speakers:
        await s.events.close()
        await s.peer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scan", type=int, default=0, help="ramp 1..N speaking sessions")
    parser.add_argument("--seconds", type=float, default=40.0, help="seconds per scan step")
    parser.add_argument("--sessions", type=int, default=0,
                        help="sessions of the long soak (default 0: as many as the server admits)")
    parser.add_argument("--minutes", type=float, default=0.0, help="length of the long soak (default 0: none)")
    parser.add_argument("--hostile", action="store_true", help="a hostile client alongside the soak")
    parser.add_argument("--token", default=None, help="run the server with this --api_token")
    parser.add_argument("--capacity", default="auto",
                        help="the server's --capacity (auto: the server admits what it measured it holds)")
    parser.add_argument("--keep_log", default=None, help="write the server's log of the soak to this file")
    parser.add_argument("--attack", default=None, help=argparse.SUPPRESS)  # the hostile client's own process
    parser.add_argument("server_args", nargs="*", help="more app.py flags (after --)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main_async(args)), indent=2))


if __name__ == "__main__":
    main()
