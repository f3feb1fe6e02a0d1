"""Cut a stream of VAD-scored windows into utterances.

An utterance starts once enough voiced audio has come (a click or a breath is not speech) and
ends after a stretch of silence; it keeps a little audio from before its onset, so the first
syllable is not clipped. Along the way it reports what the stages after it can overlap with
the user still talking: the audio so far for partial transcripts, the first moment of silence
(a pause), when a transcript can start speculatively, and a little later the moment an answer
can (speculate), both thrown away if the user resumes. A monologue is cut into utterances of
at most `max_utterance_s`, so memory stays bounded however long someone talks.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from inputs.vad import WINDOW_SECONDS


@dataclass(frozen=True)
class SegmenterConfig:
    speech_prob: float = 0.5  # a window at or above this is voiced
    silence_prob: float = 0.35  # below this it is silent (in between keeps the current state)
    onset_s: float = 0.096  # voiced audio before an utterance counts as one
    # Silence after which a transcript may start speculatively: one window. Over 20 espeak
    # questions it comes 47 ms after the last loud sample instead of 79 with two windows, at the
    # cost of 23 transcriptions thrown away (stops inside words) instead of 5.
    pause_s: float = 0.032
    # Silence after which an answer may start speculatively: the LLM is a paid request, and it
    # waits for the transcript anyway.
    speculate_s: float = 0.064
    end_silence_s: float = 0.6  # silence that ends an utterance
    preroll_s: float = 0.3  # audio kept from before the onset
    tail_s: float = 0.2  # silence kept after the last voiced window
    partial_every_s: float = 1.0  # audio between two partial transcripts
    max_utterance_s: float = 30.0  # a longer one is cut here and continues as the next
    # Inside an utterance a window this far below the voice's typical level is silent, whatever
    # the VAD says: Silero is recurrent and rates the 60-130 ms after the last word as speech,
    # even when they are digital silence. Over a noise floor closer to the voice than this
    # (no noise suppression) the VAD alone decides. None: the VAD alone always.
    quiet_db: float | None = -35.0


@dataclass
class Event:
    """kind: "onset", "partial", "pause", "speculate", "resume" or "end" (audio: 16 kHz float32
    so far; for "end" the whole utterance; `cut` when it was cut at max_utterance_s)."""

    kind: str
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    cut: bool = False


# The sound just before the VAD's first voiced window, down to this far under that window,
# belongs to the same voice: Silero rates a word's first 60-130 ms as speech only late when it
# starts with a fricative or a breathy onset ("Stop", "Hold"). At most MAX_LEAD_IN_S of it counts.
LEAD_IN_DB = -20.0
MAX_LEAD_IN_S = 0.128
LEVEL_WINDOWS = 100  # voiced windows the voice's level is the median of (3.2 s)
MIN_LEVEL_WINDOWS = 3  # fewer and the level is not known yet


def _windows(seconds: float) -> int:
    return max(1, round(seconds / WINDOW_SECONDS))


class Segmenter:
    """One stream's utterances; `feed` takes each window with its speech probability."""

    def __init__(self, config: SegmenterConfig | None = None) -> None:
        self.config = c = config or SegmenterConfig()
        self._onset = _windows(c.onset_s)
        self._pause = _windows(c.pause_s)
        self._speculate = max(self._pause, _windows(c.speculate_s))
        self._end = _windows(c.end_silence_s)
        self._tail = _windows(c.tail_s)
        self._partial = _windows(c.partial_every_s)
        self._max = _windows(c.max_utterance_s)
        self._preroll: deque[np.ndarray] = deque(maxlen=_windows(c.preroll_s))
        self._quiet_ratio = None if c.quiet_db is None else 10 ** (c.quiet_db / 20)
        self._levels: deque[float] = deque(maxlen=LEVEL_WINDOWS)  # RMS of the voice's recent windows
        self._max_lead_in = _windows(MAX_LEAD_IN_S)
        self._reset()

    def _reset(self) -> None:
        self.in_speech = False
        self.voiced = 0  # voiced windows of the candidate or utterance
        self.lead_in = 0  # windows of its sound just before the first voiced one (LEAD_IN_DB)
        self._quiet = 0  # silent windows in a row
        self._windows: list[np.ndarray] = []
        self._since_partial = 0
        self._paused = False

    @property
    def sounding_s(self) -> float:
        """How long the voice of the current utterance (or candidate) has sounded: its voiced
        windows and the lead-in the VAD was slow to rate as speech."""
        return (self.voiced + self.lead_in) * WINDOW_SECONDS

    def feed(self, window: np.ndarray, prob: float) -> list[Event]:
        c = self.config
        voiced, silent = prob >= c.speech_prob, prob < c.silence_prob
        if not self.in_speech:
            return self._candidate(window, voiced, silent)
        if self._quiet_ratio is not None:
            rms = _rms(window)
            if len(self._levels) >= MIN_LEVEL_WINDOWS and rms < self._quiet_ratio * float(np.median(self._levels)):
                voiced, silent = False, True
            elif voiced:
                self._levels.append(rms)
        events: list[Event] = []
        self._windows.append(window)
        self._since_partial += 1
        if silent:
            self._quiet += 1
            if self._quiet == self._pause and not self._paused:
                self._paused = True
                events.append(Event("pause", self._audio(trim=True)))
            if self._quiet == self._speculate and self._paused:
                events.append(Event("speculate"))
            if self._quiet >= self._end:
                events.append(Event("end", self._audio(trim=True)))
                self._reset()
                return events
        elif voiced:
            self.voiced += 1
            self._quiet = 0
            if self._paused:
                self._paused = False
                events.append(Event("resume"))
        if len(self._windows) >= self._max:
            events.append(Event("end", self._audio(trim=False), cut=True))
            self._windows, self._since_partial, self.voiced = [], 0, 0
            events.append(Event("onset"))  # the talk goes on: the next utterance is already listening
        elif self._since_partial >= self._partial and not self._paused:
            self._since_partial = 0
            events.append(Event("partial", self._audio(trim=False)))
        return events

    def _candidate(self, window: np.ndarray, voiced: bool, silent: bool) -> list[Event]:
        if voiced:
            if self.voiced == 0:
                self.lead_in = self._lead_in(_rms(window))
            self.voiced += 1
            self._quiet = 0
            self._windows.append(window)
            if self.voiced >= self._onset:
                self.in_speech = True
                self._windows = [*self._preroll, *self._windows]
                self._preroll.clear()
                return [Event("onset")]
            return []
        if silent:
            self._quiet += 1
            if self._quiet >= 2:  # the voiced bit was a click or a breath: forget it
                for w in self._windows:
                    self._preroll.append(w)
                self.voiced, self.lead_in, self._windows = 0, 0, []
        if self._windows:
            self._windows.append(window)
        else:
            self._preroll.append(window)
        return []

    def _lead_in(self, level: float) -> int:
        """Windows right before a first voiced window of `level` that sound like its start."""
        floor = level * 10 ** (LEAD_IN_DB / 20)
        count = 0
        for window in reversed(self._preroll):
            if count >= self._max_lead_in or _rms(window) < floor:
                break
            count += 1
        return count

    def _audio(self, trim: bool) -> np.ndarray:
        """The utterance so far; `trim` drops silence past `tail_s` after the last voice."""
        windows = self._windows
        if trim and self._quiet > self._tail:
            windows = windows[: len(windows) - (self._quiet - self._tail)]
        return np.concatenate(windows) if windows else np.zeros(0, np.float32)

    def reset(self) -> None:
        """Forget the utterance in progress (the avatar's echo, a mode switched off)."""
        self._preroll.clear()
        self._reset()


def _rms(window: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(window, dtype=np.float32))))
