"""Tell the avatar's own voice, coming back through the user's speakers and microphone, from
the user talking.

The browser's echo canceller removes most of it; what is left still carries the loudness
contour of what the session just sent, a little later. So the guard keeps the last seconds
of the sound sent (the reference) and of the microphone, and compares their loudness envelopes
in six bands of the speech range (log energy per 10 ms, which survives the codec, the room
and the canceller's filtering, unlike the waveform) over every plausible delay. A mic signal that follows the
reference closely at some delay is echo; a different voice, or the user talking over the
avatar, does not follow it.
"""

from __future__ import annotations

import numpy as np

from inputs.vad import SAMPLE_RATE

HOP = SAMPLE_RATE // 100  # 10 ms envelope frames
FRAME = 2 * HOP  # each frame's spectrum is taken over 20 ms
HISTORY_S = 3.0
MAX_DELAY_S = 1.2  # speakers, room, capture, both network paths and their jitter on a busy machine
# Envelope correlation at the best delay at or above which the mic is echo (measured over 1 s:
# see inputs.listener.ECHO_WINDOW_S).
ECHO_CORRELATION = 0.8
_BAND_EDGES = np.geomspace(150.0, 4000.0, 7)  # six bands across the speech range
_DYNAMIC_RANGE = 3.0  # decades of energy per band: quieter is floor (pauses are not contour)
_WINDOW = np.hanning(FRAME).astype(np.float32)
_FREQS = np.fft.rfftfreq(FRAME, 1.0 / SAMPLE_RATE)
_BANDS = [(_FREQS >= lo) & (_FREQS < hi) for lo, hi in zip(_BAND_EDGES[:-1], _BAND_EDGES[1:], strict=True)]


class _Ring:
    """The last `seconds` of a 16 kHz stream."""

    def __init__(self, seconds: float) -> None:
        self._buf = np.zeros(int(seconds * SAMPLE_RATE), np.float32)
        self.total = 0  # samples ever added

    def add(self, samples: np.ndarray) -> None:
        n = min(samples.size, self._buf.size)
        if n == 0:
            return
        self._buf = np.roll(self._buf, -n)
        self._buf[-n:] = samples[-n:]
        self.total += samples.size

    def last(self, n: int) -> np.ndarray:
        return self._buf[-n:]


def envelope(samples: np.ndarray) -> np.ndarray:
    """Log energy per band of each 10 ms hop (frames x bands), clipped to its loudest
    _DYNAMIC_RANGE decades."""
    count = (samples.size - FRAME) // HOP + 1
    if count <= 0:
        return np.zeros((0, len(_BANDS)), np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(samples, FRAME)[::HOP][:count] * _WINDOW
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    energy = np.log10(np.stack([power[:, band].sum(axis=1) for band in _BANDS], axis=1) + 1e-9)
    return np.maximum(energy, energy.max(axis=0) - _DYNAMIC_RANGE)


def _standardise(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-3)


class EchoGuard:
    """The reference (what the session sent) and the mic of one session, in step."""

    def __init__(self) -> None:
        self._reference = _Ring(HISTORY_S)
        self._mic = _Ring(HISTORY_S)
        self._speech_samples_ago: int | None = None  # reference samples since its last speech

    def add_reference(self, samples: np.ndarray, speech: bool) -> None:
        """A packet of the session's sound as it left (float32 16 kHz)."""
        self._reference.add(samples)
        if speech:
            self._speech_samples_ago = 0
        elif self._speech_samples_ago is not None:
            self._speech_samples_ago += samples.size

    def add_mic(self, samples: np.ndarray) -> None:
        self._mic.add(samples)

    def avatar_spoke_within(self, seconds: float) -> bool:
        """Whether the session sent speech in the last `seconds` (its echo may still arrive)."""
        return self._speech_samples_ago is not None and self._speech_samples_ago <= seconds * SAMPLE_RATE

    def echo_correlation(self, seconds: float) -> float:
        """How closely the mic's last `seconds` follow the reference at the best delay (-1..1)."""
        frames = int(seconds * SAMPLE_RATE) // HOP
        delay = int(MAX_DELAY_S * SAMPLE_RATE) // HOP
        mic = envelope(self._mic.last((frames - 1) * HOP + FRAME))
        reference = envelope(self._reference.last((frames + delay - 1) * HOP + FRAME))
        if mic.shape[0] < 5:
            return 0.0
        mic = _standardise(mic)
        best = -1.0
        # Offset d: the mic's frame i is the echo of the reference's frame d + i.
        for d in range(reference.shape[0] - frames + 1):
            part = _standardise(reference[d : d + frames])
            best = max(best, float(np.mean(mic * part)))
        return best

    def is_echo(self, seconds: float) -> bool:
        return self.echo_correlation(seconds) >= ECHO_CORRELATION
