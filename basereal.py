"""One streaming session, written once for every model.

    speech (TTS text or uploaded audio) -> BaseASR window -> batched inference ->
    mouth pasted into the full frame -> HumanPlayer units -> WebRTC tracks

A model is a small plug-in: a `BaseReal` subclass that loads its weights and its avatar once
per server (class methods, shared read-only by all sessions), warms up, infers one batch of
frames and pastes the mouth back. Everything else (threads, queues, interrupt, idle frames,
speaking state, logs) lives here.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from baseasr import AudioFrame, BaseASR
from ttsreal import BaseTTS, TTSEngine
from webrtc import HumanPlayer, Unit

log = logging.getLogger(__name__)

PROJECT_DIR = Path(__file__).resolve().parent
AVATAR_ROOT = PROJECT_DIR / "data" / "avatars"
MODEL_ROOT = PROJECT_DIR / "models"

# Units the player may hold beyond one batch: enough to ride over scheduling jitter, small
# enough that speech reaches the wire quickly (each unit is 40 ms of latency).
PLAYER_SLACK_UNITS = 2
STATS_INTERVAL_S = 5.0

EventCallback = Callable[[dict], None]


def avatar_dir(avatar_id: str) -> Path:
    """The folder of an avatar id, with a clear error when it does not exist."""
    path = AVATAR_ROOT / avatar_id
    if not path.is_dir():
        known = sorted(p.name for p in AVATAR_ROOT.iterdir() if p.is_dir()) if AVATAR_ROOT.is_dir() else []
        raise FileNotFoundError(f"avatar '{avatar_id}' not found in {AVATAR_ROOT} (have: {', '.join(known) or 'none'})")
    return path


def mirror_index(index: int, count: int) -> int:
    """Walk an avatar's frames forward then backward, so a short loop has no jump."""
    if count <= 1:
        return 0
    turn, pos = divmod(index, count)
    return pos if turn % 2 == 0 else count - 1 - pos


class BaseReal(ABC):
    """A session. Subclasses implement the model hooks marked abstract."""

    model_name: ClassVar[str]
    default_avatar_id: ClassVar[str]
    default_batch_size: ClassVar[int] = 16

    # --- loaded once per server ----------------------------------------------------------
    @classmethod
    @abstractmethod
    def load_model(cls, opt: argparse.Namespace) -> Any:
        """Weights, shared read-only by every session (None for weight-free models)."""

    @classmethod
    @abstractmethod
    def load_avatar(cls, opt: argparse.Namespace) -> Any:
        """The avatar named by opt.avatar_id, shared read-only by every session."""

    @classmethod
    def warm_up(cls, opt: argparse.Namespace, model: Any, avatar: Any) -> None:
        """Run the model once so the first session does not pay for lazy initialisation."""
        return None

    # --- per session hooks -----------------------------------------------------------------
    @abstractmethod
    def make_asr(self) -> BaseASR:
        """The feature extractor this model needs (left/right context from opt)."""

    @abstractmethod
    def infer(self, feats: np.ndarray, indices: Sequence[int]) -> Sequence[Any]:
        """One prediction per video frame of the batch; `indices` are session frame numbers."""

    @abstractmethod
    def paste_back(self, pred: Any, index: int) -> np.ndarray:
        """The full BGR frame for session frame `index` with the predicted mouth in place."""

    @abstractmethod
    def idle_frame(self, index: int) -> np.ndarray:
        """The full BGR frame for session frame `index` when nobody speaks."""

    # --- the pipeline ---------------------------------------------------------------------
    def __init__(
        self,
        opt: argparse.Namespace,
        model: Any,
        avatar: Any,
        tts_engine: TTSEngine,
        sessionid: int,
        on_event: EventCallback | None = None,
    ) -> None:
        self.opt = opt
        self.model = model
        self.avatar = avatar
        self.sessionid = sessionid
        self.batch_size = int(getattr(opt, "batch_size", None) or self.default_batch_size)
        self._on_event = on_event
        self.asr = self.make_asr()
        self.tts = BaseTTS(tts_engine, self.put_audio_frame, name=f"tts-{sessionid}")
        self.player = HumanPlayer(self.batch_size + PLAYER_SLACK_UNITS, on_audio_sent=self._audio_sent)
        self.speaking = False
        self._lock = threading.Lock()  # guards _generation and _reject_until_start
        self._generation = 0  # bumped by interrupt; batches rendered before it are dropped
        self._reject_until_start = False
        self._stop = threading.Event()
        self._render_thread = threading.Thread(target=self._render_loop, name=f"render-{sessionid}", daemon=True)
        self._started = False

    def start(self) -> None:
        self._started = True
        self.tts.start()
        self._render_thread.start()

    def close(self, timeout: float = 2.0) -> None:
        """Stop and join every thread of the session; idempotent. Blocking: call off-loop."""
        self._stop.set()
        self.asr.close()  # releases a TTS worker blocked on a full audio queue
        self.player.close()  # releases the render thread waiting for room
        self.tts.stop(timeout)
        if self._started:
            self._render_thread.join(timeout)
            if self._render_thread.is_alive():
                log.error("session %s: render thread did not stop within %.1fs", self.sessionid, timeout)
        log.info("session %s closed", self.sessionid)

    def threads(self) -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.endswith(f"-{self.sessionid}")]

    # --- input -----------------------------------------------------------------------------
    def say(self, text: str, datainfo: dict | None = None) -> None:
        """Queue text to be spoken (echo)."""
        self.tts.put_msg_txt(text, datainfo)

    def say_audio(self, audio: np.ndarray, datainfo: dict | None = None) -> None:
        """Queue 16 kHz mono speech (an uploaded file) to be played with moving lips."""
        self.tts.put_audio(audio, datainfo)

    def put_audio_frame(self, samples: np.ndarray, event: dict | None = None) -> bool:
        """The sink of the speech producers. False tells them to drop the rest of a sentence."""
        with self._lock:
            if self._reject_until_start:
                # After an interrupt, only a new sentence may speak.
                if not (event and event.get("status") == "start"):
                    return False
                self._reject_until_start = False
            epoch = self.asr.epoch
        accepted = self.asr.put_audio_frame(samples, event, epoch)
        if event is not None and event.get("status") == "start":
            self.player.poke()  # speech may jump the idle frames queued for playback
        return accepted

    def interrupt(self) -> None:
        """Silence the avatar now: empty every queue from text to the tracks."""
        with self._lock:
            self._generation += 1
            self._reject_until_start = True
            self.asr.flush()
        self.tts.flush()
        self.player.clear()
        log.info("session %s interrupted", self.sessionid)

    @property
    def is_speaking(self) -> bool:
        return self.speaking

    # --- output side (event loop) ---------------------------------------------------------
    def _audio_sent(self, frame: AudioFrame) -> None:
        if frame.speech != self.speaking:
            self.speaking = frame.speech
            log.debug("session %s speaking=%s", self.sessionid, frame.speech)
        if frame.event is not None:
            log.info("session %s %s: %s", self.sessionid, frame.event.get("status"), frame.event.get("text"))
            if self._on_event is not None:
                self._on_event(frame.event)

    # --- render thread ---------------------------------------------------------------------
    def _render_loop(self) -> None:
        index = 0
        stats = _RenderStats(self.sessionid)
        while not self._stop.is_set():
            if not self.player.wait_for_room(self.batch_size, timeout=0.1, urgent=self._speech_waiting):
                continue
            with self._lock:
                generation = self._generation
            frames, feats = self.asr.get_batch(self.batch_size)
            indices = range(index, index + self.batch_size)
            started = time.perf_counter()
            images = self._render_batch(feats, indices)
            stats.batch_done(len(images), feats is not None, time.perf_counter() - started, self.player)
            with self._lock:
                if generation != self._generation:
                    continue  # interrupted while rendering: this speech must not play
                for k, image in enumerate(images):
                    self.player.push(Unit(image, (frames[2 * k], frames[2 * k + 1])))
            index += self.batch_size

    def _speech_waiting(self) -> bool:
        return self.asr.queued_frames() > 0

    def _render_batch(self, feats: np.ndarray | None, indices: range) -> list[np.ndarray]:
        if feats is not None:
            try:
                preds = self.infer(feats, indices)
                return [self.paste_back(p, i) for p, i in zip(preds, indices, strict=True)]
            except Exception:
                # A broken batch must not end the session: show idle frames, keep the audio.
                log.exception("session %s: inference failed; showing idle frames", self.sessionid)
        return [self.idle_frame(i) for i in indices]


class _RenderStats:
    """Periodic log of inference and output frame rates, as upstream prints them."""

    def __init__(self, sessionid: int) -> None:
        self.sessionid = sessionid
        self.since = time.monotonic()
        self.frames = 0
        self.infer_frames = 0
        self.infer_seconds = 0.0
        self.sent_at_start = 0

    def batch_done(self, n: int, inferred: bool, seconds: float, player: HumanPlayer) -> None:
        self.frames += n
        if inferred:
            self.infer_frames += n
            self.infer_seconds += seconds
        now = time.monotonic()
        if now - self.since >= STATS_INTERVAL_S:
            elapsed = now - self.since
            infer_fps = self.infer_frames / self.infer_seconds if self.infer_seconds else 0.0
            final_fps = (player.frames_sent - self.sent_at_start) / elapsed
            log.info(
                "session %s: inference fps %.1f, rendered fps %.1f, final fps %.1f",
                self.sessionid, infer_fps, self.frames / elapsed, final_fps,
            )
            self.since, self.frames, self.infer_frames, self.infer_seconds = now, 0, 0, 0.0
            self.sent_at_start = player.frames_sent
