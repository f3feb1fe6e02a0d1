"""How many sessions this machine can keep speaking in real time, measured, not guessed.

A session that speaks costs, every second: 25 rendered frames, 25 VP8 encodes, 50 Opus
packets with their RTP and SRTP work on the event loop, and the TTS's synthesis. At start-up
the server times each part on its own model, avatar and voice (a probe session renders and
encodes a few frames; the TTS speaks one sentence), and admits sessions only while all of
them speaking at once fit in BUDGET of the machine's cores; the rest get 503. A model slower
than real time renders fewer frames rather than more (its stride grows), so its render cost
counts at most the cores it can use.

While it runs, the server also watches its own CPU: past the budget, no new session is
admitted whatever the estimate said (another program may share the machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

BUDGET = 0.7  # share of the cores sessions may take; the rest is the event loop's and the OS's
# Per speaking session, what the probe does not time: RTP packetization, SRTP, RTCP, asyncio
# scheduling, the feeder thread and the event stream (measured with bench/soak.py).
TRANSPORT_CORES = 0.17
NETWORK_TTS_CORES = 0.02  # decoding and resampling a network engine's audio
CPU_WINDOW_S = 5.0
PROBE_SENTENCE = "Hello, this is how long a short sentence takes to say."


@dataclass(frozen=True)
class SessionCost:
    """Cores one speaking session takes, by part, as measured at start-up."""

    render: float
    encode: float
    tts: float
    transport: float = TRANSPORT_CORES

    @property
    def total(self) -> float:
        return self.render + self.encode + self.tts + self.transport


class Capacity:
    """The admission rule: how many sessions may be open, and whether the machine is busy."""

    def __init__(self, cores: int, cost: SessionCost | None, fixed: int | None = None) -> None:
        self.cores = cores
        self.cost = cost
        self.fixed = fixed
        self._cpu_share = 0.0  # the server's own CPU over the last window, share of all cores
        self._watch: asyncio.Task | None = None

    @property
    def sessions(self) -> int:
        """Sessions that can all speak at once in real time (always at least one)."""
        if self.fixed is not None:
            return self.fixed
        assert self.cost is not None
        return max(1, int(self.cores * BUDGET / self.cost.total))

    def busy(self) -> str | None:
        """Why no session should be admitted now (the server's CPU is past the budget)."""
        if self.fixed is None and self._cpu_share > BUDGET:
            return f"the server is using {100 * self._cpu_share:.0f}% of its {self.cores} cores"
        return None

    def describe(self) -> str:
        if self.fixed is not None:
            return f"capacity: {self.fixed} sessions (--capacity)"
        assert self.cost is not None
        c = self.cost
        return (
            f"capacity: {self.sessions} sessions speaking at once on {self.cores} cores; one costs "
            f"{c.total:.2f} cores (render {c.render:.2f}, encode {c.encode:.2f}, tts {c.tts:.2f}, "
            f"transport {c.transport:.2f})"
        )

    def start(self) -> None:
        """Start watching the server's CPU (on the event loop; stopped by `stop`)."""
        if self.fixed is None and self._watch is None:
            self._watch = asyncio.get_running_loop().create_task(self._watch_cpu(), name="capacity-cpu")

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None

    async def _watch_cpu(self) -> None:
        samples: list[tuple[float, float]] = []
        while True:
            times = os.times()
            samples.append((time.monotonic(), times.user + times.system))
            samples = [s for s in samples if s[0] >= samples[-1][0] - CPU_WINDOW_S]
            if len(samples) > 1:
                (t0, c0), (t1, c1) = samples[0], samples[-1]
                self._cpu_share = (c1 - c0) / max(t1 - t0, 1e-6) / self.cores
            await asyncio.sleep(1.0)


def parse_capacity(value: str) -> int | None:
    """--capacity: "auto" (measured, None) or a fixed number of sessions."""
    if value == "auto":
        return None
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"--capacity must be 'auto' or a number of sessions, got {value!r}") from None
    if number < 1:
        raise ValueError("--capacity must be at least 1")
    return number


def measure(probe: Any, tts_engine: Any, cores: int) -> SessionCost:
    """Time the parts of a speaking session on a probe session (blocking, a second or two)."""
    idle_s, inferred_s = probe.frame_costs()
    # A slow model renders every n-th frame (basereal's stride) on one thread per session,
    # so a session's render cost is at most the cores that thread's work can use.
    render = min(25 * inferred_s, float(cores))
    encode = 25 * vp8_seconds([probe.renderer.idle_frame(i) for i in range(16)])
    tts = tts_cores(tts_engine)
    cost = SessionCost(render=render, encode=encode, tts=tts)
    log.info("session cost: %.1f ms per inferred frame, %.1f ms per idle frame, VP8 %.1f ms per frame, "
             "TTS %.3f cores while speaking", 1000 * inferred_s, 1000 * idle_s, 1000 * encode / 25, tts)
    return cost


def vp8_seconds(images: list[Any]) -> float:
    """Median seconds aiortc's VP8 encoder takes for one of these frames (after a warm-up)."""
    import fractions

    from aiortc.codecs.vpx import Vp8Encoder

    from outputs.player import VIDEO_CLOCK
    from webrtc import video_frame

    encoder = Vp8Encoder()
    times = []
    for i, image in enumerate(images):
        frame = video_frame(image)
        frame.pts = i * 3600
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        started = time.perf_counter()
        encoder.encode(frame, force_keyframe=i == 0)
        if i >= 4:  # the first frames set the encoder up and are keyframes
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def tts_cores(engine: Any) -> float:
    """Cores the engine takes per second of speech: timed for a local engine, small for one
    that synthesizes elsewhere."""
    if engine.name not in ("piper", "espeak"):
        return NETWORK_TTS_CORES
    started = time.process_time()
    samples = 0
    for audio, rate in engine.synthesize(PROBE_SENTENCE):
        samples += audio.size / rate
    return (time.process_time() - started) / max(samples, 0.1)
