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

A contour alone cannot tell a voice that has only just begun: 100 ms of onset after a second
of quiet matches some onset in the reference. The echo's level can. An echo is the reference
through a fixed path, so while the reference was loud the mic showed how loud its echo comes
back at each delay (or that it does not come back at all: headphones). A voice louder than
that echo level at every plausible delay, by a margin, is not the echo, however its contour
looks (`over_echo`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from inputs.vad import SAMPLE_RATE

HOP = SAMPLE_RATE // 100  # 10 ms envelope frames
FRAME = 2 * HOP  # each frame's spectrum is taken over 20 ms
MAX_DELAY_S = 1.2  # speakers, room, capture, both network paths and their jitter on a busy machine
LEVEL_WINDOW_S = 3.0  # the mic the echo's level is read over (see over_echo)
HISTORY_S = LEVEL_WINDOW_S + MAX_DELAY_S + 0.3
# Envelope correlation along the best delays at or above which the mic is echo (measured over
# 1 s: see inputs.listener.ECHO_WINDOW_S).
ECHO_CORRELATION = 0.8
PIECE = 25  # frames (250 ms) compared at one delay
DRIFT = 5  # frames (50 ms) the delay may change from one piece to the next
# The level test (over_echo): reference frames within LOUD_REFERENCE decades of its loudest
# show the echo's gain; MIN_GAIN_FRAMES of them (100 ms) make a delay's gain known; a voice
# LOUDER_MARGIN decades (10 dB) over the echo at every delay is not the echo.
LOUD_REFERENCE = 1.5
MIN_GAIN_FRAMES = 10
LOUDER_MARGIN = 1.0
KNOWN_SHARE = 0.5  # delays read (the shortest first) before the gain of the others is bounded
UNKNOWN_GAIN = 1.0  # the loudest an echo may come back where its gain is unknown (10 dB over the reference)
ONSET_MATCH = 0.4  # a voice whose contour follows the reference this closely at a delay may be its echo
MIN_VOICE_FRAMES = 5  # the voice judged is at least its last 50 ms
MAX_VOICE_FRAMES = 30  # and at most its last 300 ms
# Frames just before the voice are not read for the echo's gain: the VAD may have been slow to
# count the voice's first sounds, which would make the echo seem as loud as the voice.
VOICE_GUARD_FRAMES = 10
# A voice that has gone on this long without counting is read for the echo's gain too, but for
# its last second: a quiet echo near the noise floor can sound for seconds without a pause.
MAX_UNREAD_FRAMES = 100
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


def band_energy(samples: np.ndarray) -> np.ndarray:
    """Log energy per band of each 10 ms hop (frames x bands)."""
    count = (samples.size - FRAME) // HOP + 1
    if count <= 0:
        return np.zeros((0, len(_BANDS)), np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(samples, FRAME)[::HOP][:count] * _WINDOW
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    return np.log10(np.stack([power[:, band].sum(axis=1) for band in _BANDS], axis=1) + 1e-9)


def envelope(samples: np.ndarray) -> np.ndarray:
    """band_energy clipped to its loudest _DYNAMIC_RANGE decades per band."""
    return _clipped(band_energy(samples))


def _clipped(energy: np.ndarray) -> np.ndarray:
    if energy.shape[0] == 0:
        return energy
    return np.maximum(energy, energy.max(axis=0) - _DYNAMIC_RANGE)


def _level(energy: np.ndarray) -> np.ndarray:
    """Log energy of each frame over the speech bands."""
    return np.log10(np.sum(10.0 ** energy, axis=1) + 1e-9)


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

    def compare(self, seconds: float, voice_s: float = 0.0) -> Comparison:
        """The mic's last `seconds` against the reference: how closely they follow it along
        the best path of delays, and how much louder its last `voice_s` (the voice being
        judged) is than the echo could be, the echo's level read over LEVEL_WINDOW_S."""
        frames = int(seconds * SAMPLE_RATE) // HOP
        level_frames = max(frames, int(LEVEL_WINDOW_S * SAMPLE_RATE) // HOP)
        delay = int(MAX_DELAY_S * SAMPLE_RATE) // HOP
        # Both spans end with the newest sample, so their last frames line up.
        mic = band_energy(self._mic.last((level_frames - 1) * HOP + FRAME))
        reference = band_energy(self._reference.last((level_frames + delay - 1) * HOP + FRAME))
        if mic.shape[0] < 5:
            return Comparison(0.0, -UNKNOWN_GAIN)
        near_mic, near_reference = mic[-frames:], reference[-(frames + delay) :]
        score, offset = follows(_clipped(near_mic), _clipped(near_reference))
        self.delay_s = (near_reference.shape[0] - near_mic.shape[0] - offset) * HOP / SAMPLE_RATE
        voice = max(MIN_VOICE_FRAMES, round(voice_s * SAMPLE_RATE / HOP))
        return Comparison(score, over_echo(mic, reference, voice))

    def is_echo(self, seconds: float) -> bool:
        """Whether the mic's last `seconds` follow the reference as closely as its echo does."""
        return self.compare(seconds).correlation >= ECHO_CORRELATION


@dataclass(frozen=True)
class Comparison:
    correlation: float  # -1..1 (see follows)
    over_echo: float  # decades the voice is louder than the echo at any delay (see over_echo)

    @property
    def louder_than_echo(self) -> bool:
        """The voice cannot be the echo at any delay."""
        return self.over_echo >= LOUDER_MARGIN


def over_echo(mic_bands: np.ndarray, reference_bands: np.ndarray, voice: int) -> float:
    """How much louder (log10 of power) the mic's last `voice` frames are than the echo of the
    reference at the delay that explains them best (mic frame i echoing reference frame d + i,
    as in follows); both given as band_energy.

    The echo's gain at a delay is read off the frames before the voice (but the last
    VOICE_GUARD_FRAMES; before its last MAX_UNREAD_FRAMES if longer) where the reference was
    loud (LOUD_REFERENCE): the median of mic minus reference level; at most its neighbours'
    within DRIFT. A delay with fewer than MIN_GAIN_FRAMES such frames was not heard yet (the
    avatar had only just started to speak): once KNOWN_SHARE of the delays are read, its gain
    is the highest read at any; before that, the echo may be as loud as UNKNOWN_GAIN there if
    the voice follows the reference's contour at that delay (it would be the echo of the
    avatar's first words).
    """
    mic, reference = _level(mic_bands), _level(reference_bands)
    frames = mic.shape[0]
    offsets = reference.shape[0] - frames + 1
    learn = frames - min(voice, MAX_UNREAD_FRAMES) - VOICE_GUARD_FRAMES  # frames the echo's gain is read from
    judged = min(voice, MAX_VOICE_FRAMES)  # the voice's frames compared with the echo
    if offsets <= 0 or voice <= 0 or learn <= 0:
        return -UNKNOWN_GAIN
    stretches = np.lib.stride_tricks.sliding_window_view(reference, frames)[:offsets]  # offsets x frames
    excess = mic[None, :] - stretches  # how much louder the mic is than the reference, per delay and frame
    loud = stretches[:, :learn] >= reference.max() - LOUD_REFERENCE
    known = loud.sum(axis=1) >= MIN_GAIN_FRAMES
    gain = np.full(offsets, UNKNOWN_GAIN)  # log10 of the echo's power gain per delay
    if known.any():
        gain[known] = _masked_median(excess[known, :learn], loud[known])
    if known.mean() >= KNOWN_SHARE:
        # Read at a wrong delay the gain comes out lower (the echo's quiet moments meet the
        # reference's loud ones), so the echo's own is the highest read.
        gain[~known] = gain[known].max()
    elif not known.all():
        scores, _ = _piece_scores(_clipped(mic_bands)[-judged:], _clipped(reference_bands)[frames - judged :])
        gain[~known & (scores[0] < ONSET_MATCH)] = -np.inf  # the voice does not follow the reference there
    # The delay drifts (a jitter buffer): the echo's gain at a delay is its neighbours' at most.
    gain = np.lib.stride_tricks.sliding_window_view(np.pad(gain, DRIFT, mode="edge"), 2 * DRIFT + 1).max(axis=1)
    return float(np.min(np.median(excess[:, -judged:], axis=1) - gain))


def _masked_median(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The median of each row's values where `mask` is set (every row has one at least):
    np.nanmedian's result, without its masked-array path, which took a third of a comparison."""
    ordered = np.sort(np.where(mask, values, np.inf), axis=1)
    count = mask.sum(axis=1)
    rows = np.arange(values.shape[0])
    return (ordered[rows, (count - 1) // 2] + ordered[rows, count // 2]) / 2


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
