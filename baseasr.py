"""Audio features for lip sync: 20 ms audio frames in, one feature row per video frame out.

Speech (from TTS or an upload) arrives through `put_audio_frame`; the session's feeder thread
calls `get_window` for the next `n` video frames (two audio frames each) and its inference
thread turns the window into the model's `features`. Each batch sees a sliding
window: `left` frames already played, the batch's own `2n` frames (the middle) and `right`
frames of look-ahead. When no speech is queued the window is padded with *filler* silence.

Filler silence is virtual: if speech arrives while filler is still waiting in the look-ahead,
the filler is dropped, so the look-ahead costs no latency when someone starts talking.
"""

from __future__ import annotations

import queue
import threading
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, replace

import numpy as np

SAMPLE_RATE = 16000
CHUNK = 320  # 20 ms at 16 kHz
AUDIO_FRAMES_PER_VIDEO_FRAME = 2  # 25 fps video, 50 audio frames per second

_SILENT_SAMPLES = np.zeros(CHUNK, dtype=np.float32)
_SILENT_SAMPLES.setflags(write=False)


@dataclass(frozen=True)
class AudioFrame:
    """20 ms of mono 16 kHz audio and what it is."""

    samples: np.ndarray  # float32 (320,)
    speech: bool  # True for real audio (TTS, upload); False for filler silence
    # Published as this frame's audio leaves on the track: {"status": "start"|"end", "text": ...}
    # on sentence edges, and a TTS "error" in its place in the stream.
    events: tuple[dict, ...] = ()


SILENCE = AudioFrame(_SILENT_SAMPLES, speech=False)


class BaseASR(ABC):
    """Sliding-window feature extraction shared by every model.

    Thread use: `put_audio_frame` from the speech producer (TTS worker), `get_window` from the
    feeder thread, `features` from the inference thread, `flush` from the event loop. The
    input queue is bounded, so a producer that runs ahead of playback blocks (back-pressure)
    instead of growing memory.
    """

    def __init__(self, left: int = 10, right: int = 10, max_queued_frames: int = 250) -> None:
        if left < 0 or right < 0:
            raise ValueError("left and right context must be >= 0")
        self.left = left
        self.right = right
        # (epoch, frame): flush() bumps the epoch, so a frame whose put was blocked while the
        # queue was being emptied is recognised as stale and dropped.
        self._input: queue.Queue[tuple[int | None, AudioFrame]] = queue.Queue(maxsize=max_queued_frames)
        self._epoch = 0
        self._lock = threading.Lock()  # guards the window against flush() during get_window()
        # Frames already played (left context); warm-up fills them with silence.
        self._history: deque[AudioFrame] = deque([SILENCE] * left, maxlen=max(left, 1))
        # Frames pulled from the input but not yet played (the previous batch's look-ahead).
        self._pending: deque[AudioFrame] = deque()
        self._closed = threading.Event()

    # --- producer side -------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        return self._epoch

    def put_audio_frame(self, samples: np.ndarray, event: dict | None = None, epoch: int | None = None) -> bool:
        """Queue 20 ms of speech; blocks while the queue is full. False once closed.

        `epoch` (default: now) is when the caller decided to speak; frames from before the
        latest flush() are dropped.
        """
        epoch = self._epoch if epoch is None else epoch
        samples = np.asarray(samples, dtype=np.float32).reshape(CHUNK)
        return self._put((epoch, AudioFrame(samples, True, (event,) if event is not None else ())))

    def put_event(self, event: dict) -> bool:
        """Queue an event to be published in its place in the stream: after the speech queued
        before it has left (a sentence the TTS skipped is reported after the one before it
        ended). It rides on filler silence, which speech arriving after it replaces, taking
        the event along. Interrupts do not drop it."""
        return self._put((None, AudioFrame(_SILENT_SAMPLES, False, (event,))))

    def _put(self, item: tuple[int | None, AudioFrame]) -> bool:
        while not self._closed.is_set():
            try:
                self._input.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def queued_frames(self) -> int:
        return self._input.qsize()

    # --- consumer side -------------------------------------------------------------------
    def get_batch(self, n_frames: int) -> tuple[list[AudioFrame], np.ndarray | None]:
        """The next `2*n_frames` audio frames and the features of the `n_frames` video frames.

        Features are None when the whole batch is silence: the caller shows idle frames and
        skips inference.
        """
        batch, window = self.get_window(n_frames)
        if window is None:
            return batch, None
        return batch, self.features(window, self.left, self.right, n_frames)

    def get_window(self, n_frames: int) -> tuple[list[AudioFrame], np.ndarray | None]:
        """The next `2*n_frames` audio frames and the audio window their features are made
        of, [left + 2*n_frames + right, 320] (None when the whole batch is silence). The
        session computes the features later, on its inference thread."""
        middle = n_frames * AUDIO_FRAMES_PER_VIDEO_FRAME
        with self._lock:
            self._fill(middle + self.right)
            batch = [self._pending.popleft() for _ in range(middle)]
            window = list(self._history)[-self.left :] if self.left else []
            window += batch + list(self._pending)[: self.right]
            self._history.extend(batch)
        if not any(f.speech for f in batch):
            return batch, None
        return batch, np.stack([f.samples for f in window])

    def _fill(self, needed: int) -> None:
        while True:
            try:
                epoch, frame = self._input.get_nowait()
            except queue.Empty:
                break
            if frame.speech and epoch != self._epoch:
                continue
            if frame.speech:
                # Speech replaces filler that has not been played yet (no look-ahead latency),
                # keeping the events the filler carried.
                carried: list[dict] = []
                while self._pending and not self._pending[-1].speech:
                    carried[:0] = self._pending.pop().events
                if carried:
                    frame = replace(frame, events=(*carried, *frame.events))
            self._pending.append(frame)
            if len(self._pending) >= needed:
                break
        while len(self._pending) < needed:
            self._pending.append(SILENCE)

    def flush(self) -> None:
        """Drop all queued and look-ahead speech (interrupt)."""
        with self._lock:
            self._epoch += 1
            kept = [frame for frame in self._pending if frame.events and not frame.speech]
            self._pending.clear()
            while True:
                try:
                    _, frame = self._input.get_nowait()
                except queue.Empty:
                    break
                if not frame.speech:
                    kept.append(frame)
            self._pending.extend(kept)  # events queued on their own still go out

    def close(self) -> None:
        """Release a producer blocked in put_audio_frame; later puts are refused."""
        self._closed.set()
        self.flush()

    @abstractmethod
    def features(self, chunks: np.ndarray, left: int, right: int, n_frames: int) -> np.ndarray:
        """Features [n_frames, ...] from `chunks` [left + 2*n_frames + right, 320]."""
