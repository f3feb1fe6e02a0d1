"""Tell the avatar's own voice, coming back through the user's speakers and microphone, from
the user talking.

The browser's echo canceller removes most of it; what is left still carries the loudness
contour of what the session just sent, a little later. So the guard keeps the last seconds
of the sound sent (the reference) and of the microphone, and compares their loudness envelopes
in six bands of the speech range (log energy per 10 ms, which survives the codec, the room
and the canceller's filtering, unlike the waveform) over every plausible delay. A mic signal that
follows the reference closely is echo; a different voice, or the user talking over the avatar,
does not follow it.

The delay is not one number: a receiver's jitter buffer stretches the sound when packets come
late and squeezes it when they bunch up, so the echo of one second may be 40 ms later at its
end than at its start (one fixed delay then scored 0.6-0.8 for a pure echo with one 40 ms
gap). So the window is compared in 250 ms pieces, each at its own delay, the delays of
neighbouring pieces at most 50 ms apart, and the best such path is its score.
"""

from __future__ import annotations

import numpy as np

from inputs.vad import SAMPLE_RATE

HOP = SAMPLE_RATE // 100  # 10 ms envelope frames
FRAME = 2 * HOP  # each frame's spectrum is taken over 20 ms
HISTORY_S = 3.0
MAX_DELAY_S = 1.2  # speakers, room, capture, both network paths and their jitter on a busy machine
# Envelope correlation along the best delays at or above which the mic is echo (measured over
# 1 s: see inputs.listener.ECHO_WINDOW_S).
ECHO_CORRELATION = 0.8
PIECE = 25  # frames (250 ms) compared at one delay
DRIFT = 5  # frames (50 ms) the delay may change from one piece to the next
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


class EchoGuard:
    """The reference (what the session sent) and the mic of one session, in step."""

    def __init__(self) -> None:
        self._reference = _Ring(HISTORY_S)
        self._mic = _Ring(HISTORY_S)
        self._speech_samples_ago: int | None = None  # reference samples since its last speech
        self.delay_s = 0.0  # the best delay of the last comparison (for the logs)

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
        """How closely the mic's last `seconds` follow the reference along the best path of
        delays (-1..1)."""
        frames = int(seconds * SAMPLE_RATE) // HOP
        delay = int(MAX_DELAY_S * SAMPLE_RATE) // HOP
        mic = envelope(self._mic.last((frames - 1) * HOP + FRAME))
        reference = envelope(self._reference.last((frames + delay - 1) * HOP + FRAME))
        if mic.shape[0] < 5:
            return 0.0
        score, offset = follows(mic, reference)
        self.delay_s = (reference.shape[0] - mic.shape[0] - offset) * HOP / SAMPLE_RATE
        return score

    def is_echo(self, seconds: float) -> bool:
        return self.echo_correlation(seconds) >= ECHO_CORRELATION


def _piece_scores(mic: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Correlation of each PIECE of the mic envelope with the reference at every offset
    (pieces x offsets), and how much contour each piece has (its weight: silence has none)."""
    offsets = reference.shape[0] - mic.shape[0] + 1
    count = max(1, mic.shape[0] // PIECE)
    size = mic.shape[0] // count
    scores = np.empty((count, offsets), np.float32)
    weights = np.empty(count, np.float32)
    for k in range(count):
        piece = mic[k * size : (k + 1) * size]
        spread = piece.std(axis=0)
        weights[k] = spread.mean()
        piece = (piece - piece.mean(axis=0)) / (spread + 1e-3)
        # Every offset's stretch of the reference: offsets x bands x frames.
        stretches = np.lib.stride_tricks.sliding_window_view(reference[k * size : k * size + offsets - 1 + size],
                                                             size, axis=0)
        stretches = (stretches - stretches.mean(axis=2, keepdims=True)) / (stretches.std(axis=2, keepdims=True) + 1e-3)
        scores[k] = np.einsum("fb,obf->o", piece, stretches) / piece.size
    return scores, weights


def follows(mic: np.ndarray, reference: np.ndarray) -> tuple[float, int]:
    """How closely the mic envelope follows the longer reference envelope, each piece at its
    own offset (offset d: mic frame i echoes reference frame d + i) and neighbouring offsets
    at most DRIFT apart: the weighted mean correlation along the best path, and the last
    piece's offset."""
    scores, weights = _piece_scores(mic, reference)
    total = weights.sum()
    if total <= 0:
        return 0.0, 0
    best = weights[0] * scores[0]
    for k in range(1, scores.shape[0]):
        reachable = np.lib.stride_tricks.sliding_window_view(
            np.pad(best, DRIFT, constant_values=-np.inf), 2 * DRIFT + 1)
        best = reachable.max(axis=1) + weights[k] * scores[k]
    offset = int(best.argmax())
    return float(best[offset] / total), offset
