"""Microphones for the test clients: aiortc tracks that send what a user would say, at the
pace of real time, as a browser's microphone does."""

from __future__ import annotations

import asyncio
import fractions
import time
from collections import deque

import numpy as np
from aiortc.mediastreams import MediaStreamTrack
from av import AudioFrame

from audio_util import to_16k_mono

PACKET_S = 0.02


def _resample_from_16k(audio: np.ndarray, rate: int) -> np.ndarray:
    if rate == 16000:
        return audio
    from scipy.signal import resample_poly

    return resample_poly(audio, rate, 16000).astype(np.float32)


class PacedTrack(MediaStreamTrack):
    """Sends 20 ms frames at real-time pace; subclasses say what each frame holds."""

    kind = "audio"

    def __init__(self, rate: int = 48000, channels: int = 1) -> None:
        super().__init__()
        self.rate = rate
        self.channels = channels
        self.samples = int(rate * PACKET_S)
        self._pts = 0
        self._start: float | None = None

    def next_samples(self) -> np.ndarray:
        """The next packet's mono float32 samples at `self.rate`."""
        return np.zeros(self.samples, np.float32)

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            from aiortc.mediastreams import MediaStreamError

            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._pts / self.rate - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        mono = self.next_samples()
        pcm = (np.clip(mono, -1, 1) * 32767).astype(np.int16)
        layout = "mono" if self.channels == 1 else "stereo"
        data = np.repeat(pcm, self.channels).reshape(1, -1)
        frame = AudioFrame.from_ndarray(data, format="s16", layout=layout)
        frame.sample_rate = self.rate
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, self.rate)
        self._pts += self.samples
        return frame


class SpeechTrack(PacedTrack):
    """A microphone that says the clips given to `say` (16 kHz float32), silence otherwise.
    `voiced_from` and `voiced_until` are when the first and the last non-silent packet of the
    last clip left."""

    def __init__(self, rate: int = 48000, channels: int = 1, noise: float = 0.0) -> None:
        super().__init__(rate, channels)
        self._queue: deque[np.ndarray] = deque()
        self._noise = noise
        self.voiced_from: float | None = None
        self.voiced_until: float | None = None
        self.clips_done = 0

    def say(self, audio_16k: np.ndarray) -> None:
        audio = _resample_from_16k(audio_16k, self.rate)
        pieces = [audio[i : i + self.samples] for i in range(0, audio.size, self.samples)]
        pieces[-1] = np.pad(pieces[-1], (0, self.samples - pieces[-1].size))
        voiced = [float(np.sqrt(np.mean(p * p))) > 0.01 for p in pieces]
        first = min((i for i, v in enumerate(voiced) if v), default=-1)
        last = max((i for i, v in enumerate(voiced) if v), default=-1)
        for i, piece in enumerate(pieces):
            self._queue.append((piece, i == first, i == last, i == len(pieces) - 1))

    @property
    def speaking(self) -> bool:
        return bool(self._queue)

    def next_samples(self) -> np.ndarray:
        noise = np.random.randn(self.samples).astype(np.float32) * self._noise if self._noise else 0.0
        if not self._queue:
            return np.zeros(self.samples, np.float32) + noise
        piece, first_voiced, last_voiced, last = self._queue.popleft()
        if first_voiced:
            self.voiced_from = time.monotonic()
        if last_voiced:
            self.voiced_until = time.monotonic()
        if last:
            self.clips_done += 1
        return piece + noise


class LoopbackTrack(PacedTrack):
    """A microphone that hears the client's loudspeaker: what the client received from the
    server (fed with `hear`) comes back as its mic.

    The loudspeaker plays as a browser's jitter buffer does: each packet at its own media
    time, `delay_s` after the earliest arrival seen for its media time, however unevenly
    packets arrive; one that comes after its turn is lost (a moment of silence), and when the
    sender skips ahead (a server that was behind) the speaker follows rather than stay behind.
    So a busy machine leaves holes in the echo but does not stretch it, and the echo is as
    late as the network plus `delay_s`."""

    HOLD_S = 3.0  # the most the loudspeaker holds ahead

    def __init__(self, delay_s: float = 0.1, rate: int = 48000) -> None:
        super().__init__(rate)
        self.delay_s = delay_s
        self.late_packets = 0
        self._earliest: float | None = None  # the least arrival time minus media time seen (s)
        self._ahead = np.zeros(0, np.float32)  # what plays from the mic's next packet on

    def hear(self, frame: AudioFrame) -> None:
        if self._start is None:
            return  # the mic has not started: nobody is listening yet
        data = frame.to_ndarray()
        channels = len(frame.layout.channels)
        samples = data.T if frame.format.is_planar else data.reshape(-1, channels)
        audio = _resample_from_16k(to_16k_mono(samples, frame.sample_rate), self.rate)
        media = float(frame.pts * frame.time_base)
        early = time.monotonic() - media
        self._earliest = early if self._earliest is None else min(self._earliest, early)
        plays_at = self._earliest + self.delay_s + media
        at = round((plays_at - self._start) * self.rate) - self._pts  # from the next packet on
        if at < 0:
            self.late_packets += 1
            return
        end = at + audio.size
        if end > self.HOLD_S * self.rate:
            return
        if end > self._ahead.size:
            self._ahead = np.concatenate([self._ahead, np.zeros(end - self._ahead.size, np.float32)])
        self._ahead[at:end] = audio

    def next_samples(self) -> np.ndarray:
        out = np.zeros(self.samples, np.float32)
        n = min(self.samples, self._ahead.size)
        out[:n] = self._ahead[:n]
        self._ahead = self._ahead[n:]
        return out
