"""One streaming session, written once for every model, and the seam a model plugs into.

    speech (TTS text or uploaded audio) -> BaseASR window -> features + batched inference ->
    mouth pasted into the full frame -> HumanPlayer units -> the 40 ms clock -> outputs

A model is a component the session holds, not the session itself:
- a `LipModel`: weights and avatar, loaded once per server and shared read-only by every
  session; it declares its own command-line flags and makes the two per-session parts:
- a `BaseASR` subclass: the sliding audio window and the model's features over it, and
- a `Renderer`: inference of one batch, paste-back and idle frames for one session.
Features are computed on the session's inference thread, inside the timed render, so a model
whose features cost real time (whisper, HuBERT) is planned with its true speed. Everything
else (threads, queues, interrupt, idle frames, speaking state, logs) lives here. Adding a
model is its own module plus one line in app.py's MODELS.
"""

from __future__ import annotations

import argparse
import logging
import math
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

import priority
from baseasr import CHUNK, AudioFrame, BaseASR
from outputs.player import SLOT_SECONDS, HumanPlayer, Unit
from safetext import shown
from ttsreal import BaseTTS, Hold, TTSEngine, Voice

log = logging.getLogger(__name__)

PROJECT_DIR = Path(__file__).resolve().parent
AVATAR_ROOT = PROJECT_DIR / "data" / "avatars"
MODEL_ROOT = PROJECT_DIR / "models"

# Units the player may hold beyond one batch: enough to ride over scheduling jitter, small
# enough that speech reaches the wire quickly (each unit is 40 ms of latency).
PLAYER_SLACK_UNITS = 2
STATS_INTERVAL_S = 5.0
REPLY_WAIT_S = 60.0  # speech starting later than this after a request is not its reply
MAX_BATCH_WAIT_S = 60.0  # how long closing waits for a batch being rendered
WARM_UP_CONTEXT = 10  # audio frames each side of the warm-up's one video frame (the -l/-r default)

EventCallback = Callable[[dict], None]
# Which renderer draws a video frame, at which of its own frames, and whether it infers the
# mouth there (an action's clip or the idle clip may be shown instead of the avatar).
Look = tuple["Renderer", int, bool]


def avatar_dir(avatar_id: str, root: str | Path | None = None) -> Path:
    """The folder of an avatar id, with a clear error when it does not exist."""
    root = Path(root) if root else AVATAR_ROOT
    path = root / avatar_id
    if not path.is_dir():
        known = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise FileNotFoundError(f"avatar '{avatar_id}' not found in {root} (have: {', '.join(known) or 'none'})")
    return path


def models_dir(opt: argparse.Namespace) -> Path:
    """Where the users' model files live (--models_dir, default models/)."""
    value = getattr(opt, "models_dir", None)
    return Path(value) if value else MODEL_ROOT


def mirror_index(index: int, count: int) -> int:
    """Walk an avatar's frames forward then backward, so a short loop has no jump."""
    if count <= 1:
        return 0
    turn, pos = divmod(index, count)
    return pos if turn % 2 == 0 else count - 1 - pos


class Renderer(ABC):
    """The pictures of one session: what a model keeps per session (random state, caches)."""

    lip_sync: ClassVar[bool] = True  # False: pictures only (an action's plain frames), no inference

    @abstractmethod
    def infer(self, feats: np.ndarray, indices: Sequence[int]) -> Sequence[Any]:
        """One prediction per video frame of the batch; `indices` are session frame numbers."""

    @abstractmethod
    def paste_back(self, pred: Any, index: int) -> np.ndarray:
        """The full BGR frame for session frame `index` with the predicted mouth in place."""

    @abstractmethod
    def idle_frame(self, index: int) -> np.ndarray:
        """The full BGR frame for session frame `index` when nobody speaks."""


class LoopedFramesRenderer(Renderer):
    """For avatars of recorded frames (`self.avatar.frames`): at rest they play forward then
    backward, untouched."""

    avatar: Any

    def idle_frame(self, index: int) -> np.ndarray:
        return self.avatar.frames[mirror_index(index, len(self.avatar.frames))]


class LipModel(ABC):
    """A lip-sync model with its avatar, loaded once per server, shared read-only."""

    name: ClassVar[str]
    default_avatar_id: ClassVar[str]
    default_batch_size: ClassVar[int] = 16

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """The model's own command-line flags (added only when it is the chosen --model)."""
        return None

    avatar: Any  # the avatar named by --avatar_id, loaded with the weights

    @classmethod
    @abstractmethod
    def load(cls, opt: argparse.Namespace) -> LipModel:
        """Weights and the avatar named by opt.avatar_id, with errors that name what is wrong."""

    @abstractmethod
    def load_avatar(self, folder: Path) -> Any:
        """Another avatar folder of this model (blocking), read-only and shareable by
        sessions; FileNotFoundError / ValueError naming what is wrong."""

    @abstractmethod
    def make_asr(self, left: int, right: int) -> BaseASR:
        """A session's audio window with this model's features."""

    @abstractmethod
    def renderer(self, sessionid: int, avatar: Any = None) -> Renderer:
        """A session's renderer of `avatar` (one from load_avatar; default: self.avatar)."""

    def warm_up(self) -> None:
        """Run features and inference once, so the first session does not pay for lazy
        initialisation (kernels chosen, memory allocated)."""
        started = time.perf_counter()
        asr = self.make_asr(WARM_UP_CONTEXT, WARM_UP_CONTEXT)
        window = np.zeros((2 * WARM_UP_CONTEXT + 2, CHUNK), dtype=np.float32)
        feats = asr.features(window, WARM_UP_CONTEXT, WARM_UP_CONTEXT, 1)
        renderer = self.renderer(0)
        renderer.paste_back(renderer.infer(feats, [0])[0], 0)
        log.info("%s warm-up in %.2fs", self.name, time.perf_counter() - started)


class BaseReal:
    """A session: one model's renderer and audio window driven by the pipeline's threads."""

    # --- the pipeline ---------------------------------------------------------------------
    def __init__(
        self,
        opt: argparse.Namespace,
        model: LipModel,
        tts_engine: TTSEngine,
        sessionid: int,
        on_event: EventCallback | None = None,
        avatar: Any = None,
        avatar_id: str | None = None,
        clips: dict | None = None,
    ) -> None:
        from actions import Stage  # actions builds on this module's Renderer

        self.opt = opt
        self.model = model
        self.sessionid = sessionid
        self.batch_size = int(getattr(opt, "batch_size", None) or model.default_batch_size)
        self._on_event = on_event
        self.asr = model.make_asr(opt.l, opt.r)
        self.renderer = model.renderer(sessionid, avatar)
        self.avatar = avatar  # None: the model's own (--avatar_id)
        self._restage = threading.Event()  # the look changed: queued idle frames are stale
        self.stage = Stage(clips or {}, lambda clip_avatar: model.renderer(sessionid, clip_avatar), self._frame_size)
        self.tts = BaseTTS(tts_engine, self.put_audio_frame, name=f"tts-{sessionid}", on_error=self._tts_error)
        self.player = HumanPlayer(self.batch_size + PLAYER_SLACK_UNITS, on_audio_sent=self._audio_sent)
        self.speaking = False
        self._lock = threading.Lock()  # guards _generation and _reject_until_start
        self._generation = 0  # bumped by interrupt; batches rendered before it are dropped
        self._reject_until_start = False
        self._stop = threading.Event()
        self._jobs: queue.Queue[_Job] = queue.Queue()  # bounded by the player's capacity
        self._frame_seconds = {False: 0.0, True: 0.0}  # running cost of an idle / inferred frame
        self._batch_seconds = 0.0  # what rendering one batch takes at the current stride
        # (thread, extra seconds closing waits for it): a batch being rendered cannot be cut
        # short, and a slow model's (a CPU MuseTalk frame takes seconds) is waited out.
        self._threads = [
            (threading.Thread(target=self._feed_loop, name=f"feed-{sessionid}", daemon=True), 0.0),
            (threading.Thread(target=self._infer_loop, name=f"infer-{sessionid}", daemon=True), MAX_BATCH_WAIT_S),
        ]
        self._started = False
        self.avatar_id: str = avatar_id or getattr(opt, "avatar_id", "") or ""
        # Time to first audio of a reply: from the request (say, an upload, a question to the
        # chat) to its first packet leaving; `on_reply_latency` (event loop) hears each one.
        self.last_reply_latency_s: float | None = None
        self.on_reply_latency: Callable[[float], None] | None = None
        self._reply_asked: float | None = None

    def start(self) -> None:
        self._started = True
        # The avatar at rest is on screen from the first packet, before any batch is rendered.
        renderer, index, _ = self.stage.resting(self.renderer)
        self.player.poster = renderer.idle_frame(index)
        self.tts.start()
        for thread, _ in self._threads:
            thread.start()

    def close(self, timeout: float = 2.0) -> None:
        """Stop and join every thread of the session; idempotent. Blocking: call off-loop."""
        self._stop.set()
        self.asr.close()  # releases a TTS worker blocked on a full audio queue
        self.player.close()  # releases the feeder waiting for room
        self.tts.stop(timeout)
        if self._started:
            deadline = time.monotonic() + timeout
            for thread, extra in self._threads:
                thread.join(max(0.0, deadline + extra - time.monotonic()))
                if thread.is_alive():
                    log.error("session %s: %s did not stop in time", self.sessionid, thread.name)
        log.info("session %s closed", self.sessionid)

    # --- input -----------------------------------------------------------------------------
    def say(
        self, text: str, datainfo: dict | None = None, voice: Voice | None = None, opening: bool = True,
        hold: Hold | None = None,
    ) -> None:
        """Queue text to be spoken, in `voice` when given (its fields override the defaults).

        `opening` False marks a later piece of a streamed answer, `hold` speech synthesised
        ahead and played once released (see BaseTTS.put_msg_txt)."""
        if opening:
            self.reply_requested()
        self.tts.put_msg_txt(text, datainfo, voice, opening, hold)

    def set_avatar(self, avatar_id: str, avatar: Any) -> None:
        """Show another avatar from the next batch of frames fed; the sound goes on as it was."""
        self.renderer = self.model.renderer(self.sessionid, avatar)
        self.avatar, self.avatar_id = avatar, avatar_id
        self.player.poster = self.renderer.idle_frame(0)  # outputs started from now on take its size
        self.stage.refit()
        self._look_changed()
        log.info("session %s now shows avatar %s", self.sessionid, avatar_id)

    def play_action(self, audiotype: int, datainfo: dict | None = None) -> None:
        """Play the session's clip `audiotype` now (upstream's /set_audiotype): its sound,
        when it has one, interrupts what the avatar was saying; 1 returns to the idle loop."""
        sound = self.stage.play(audiotype)
        if sound is not None:
            self.interrupt()
            self.say_audio(sound, {**(datainfo or {}), "audiotype": audiotype, "action": audiotype})
        else:
            self._look_changed()

    def _frame_size(self) -> tuple[int, int]:
        poster = self.player.poster
        return (poster if poster is not None else self.renderer.idle_frame(0)).shape[1::-1]

    def reply_requested(self) -> None:
        """A reply was asked for now (its latency is timed from the first request)."""
        if self._reply_asked is None:
            self._reply_asked = time.monotonic()

    def _tts_error(self, event: dict) -> None:
        """A sentence the engine could not speak (TTS worker thread): the client hears of it in
        its place, after the end of the sentence before it."""
        self.asr.put_event(event)

    def say_audio(self, audio: np.ndarray, datainfo: dict | None = None) -> None:
        """Queue 16 kHz mono speech (an uploaded file) to be played with moving lips."""
        self.reply_requested()
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
        self.stage.stop()
        self._reply_asked = None
        log.info("session %s interrupted", self.sessionid)

    @property
    def is_speaking(self) -> bool:
        return self.speaking

    # --- output side (event loop) ---------------------------------------------------------
    def _audio_sent(self, frame: AudioFrame, late: list[dict]) -> None:
        """A 20 ms packet left (event loop); `late` are the events of skipped audio before it."""
        for event in late:
            log.info("session %s %s (late: its audio was skipped)", self.sessionid, event.get("status"))
            if self._on_event is not None:
                self._on_event(event)
        if frame.speech != self.speaking:
            self.speaking = frame.speech
            log.debug("session %s speaking=%s", self.sessionid, frame.speech)
            if self._on_event is not None:
                # Before this frame's "start" (and after the last frame's "end"): a page sees
                # speaking, start, ..., end, idle, as the listener hears it.
                self._on_event({"status": "speaking", "speaking": frame.speech})
        if frame.speech and self._reply_asked is not None and any(e.get("status") == "start" for e in frame.events):
            self._reply_started(time.monotonic() - self._reply_asked)
        for event in frame.events:
            log.info("session %s %s: %s", self.sessionid, event.get("status"), shown(event.get("text", ""), 80))
            if self._on_event is not None:
                self._on_event(event)

    def _reply_started(self, latency: float) -> None:
        self._reply_asked = None
        if latency > REPLY_WAIT_S:
            return  # not the reply of that request: it got none (a chat that failed)
        self.last_reply_latency_s = latency
        if self.on_reply_latency is not None:
            self.on_reply_latency(latency)

    # --- feeder thread: audio and features at the pace of playback ------------------------
    def _feed_loop(self) -> None:
        index = 0
        while not self._stop.is_set():
            if not self.player.wait_for_room(self.batch_size, timeout=0.1, urgent=self._urgent):
                continue
            self._restage.clear()  # the frames fed from now on show the new look
            frames, window = self.asr.get_window(self.batch_size)
            units = [Unit(None, (frames[2 * k], frames[2 * k + 1])) for k in range(self.batch_size)]
            looks = self.stage.looks(units, index, self.renderer)
            with self._lock:
                job = _Job(self._generation, units, window, range(index, index + self.batch_size), looks)
                for unit in units:
                    self.player.push(unit)
            self._jobs.put(job)
            index += self.batch_size

    def _speech_waiting(self) -> bool:
        return self.asr.queued_frames() > 0

    def _urgent(self) -> bool:
        """Idle frames queued for playback may be dropped for what comes next: speech, or a new
        look (another avatar, a clip) that should show without waiting behind them."""
        return self._restage.is_set() or self._speech_waiting()

    def _look_changed(self) -> None:
        self._restage.set()
        self.player.poke()

    # --- inference thread: pictures for the queued units ---------------------------------
    def _infer_loop(self) -> None:
        priority.lower_current_thread(priority.RENDER)  # a late frame is skipped; late sound is not
        self._calibrate()
        stats = _RenderStats(self.sessionid)
        backlog: list[_Job] = []
        while not self._stop.is_set():
            if not backlog:
                try:
                    backlog.append(self._jobs.get(timeout=0.1))
                except queue.Empty:
                    continue
            while True:  # take everything queued, so a late batch can be skipped for a newer one
                try:
                    backlog.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
            job, skipped, backlog = self._pick_job(backlog)
            stats.frames_skipped += skipped
            if job is None:
                continue
            inferred = job.window is not None
            stride = self._stride(inferred)
            live = [k for k, unit in enumerate(job.units) if not unit.gone and job.indices[k] % stride == 0]
            if not live:
                continue
            started = time.perf_counter()
            images = self._render_batch(job.window, job.indices, live, job.looks)
            elapsed = time.perf_counter() - started
            for k, image in zip(live, images, strict=True):
                job.units[k].image = image
            stats.batch_done(len(live), inferred, elapsed, self.player)
            self._adapt(inferred, elapsed / len(live))

    def _pick_job(self, backlog: list[_Job]) -> tuple[_Job | None, int, list[_Job]]:
        """The oldest job that can still be rendered before it plays (else the newest), the
        number of frames skipped as too late, and the jobs left for later."""
        with self._lock:
            generation = self._generation
        need = math.ceil(self._batch_seconds / SLOT_SECONDS)
        skipped = 0
        for i, job in enumerate(backlog):
            if job.generation != generation:
                continue  # interrupted: its units were dropped
            # A batch's pictures are handed over together when it is done, so the first unit
            # that gets one must not have played by then.
            stride = self._stride(job.window is not None)
            first = next((u for k, u in enumerate(job.units) if job.indices[k] % stride == 0 and not u.gone), None)
            ahead = None if first is None else self.player.slots_until(first)
            if ahead is not None and (ahead >= need or i == len(backlog) - 1):
                return job, skipped, backlog[i + 1 :]
            skipped += sum(not unit.gone for unit in job.units)
        return None, skipped, []

    def _calibrate(self) -> None:
        """Time one idle and one inferred frame before the first speech, so the first batches
        are already planned with the model's real speed."""
        window = np.zeros((self.asr.left + 2 + self.asr.right, CHUNK), dtype=np.float32)
        for inferred in (False, True):
            for _ in range(2):  # the first call on a new thread pays one-time set-up costs
                if self._stop.is_set():
                    return
                started = time.perf_counter()
                self._render_batch(window if inferred else None, range(1), [0])
                self._frame_seconds[inferred] = time.perf_counter() - started
        self._adapt(True, self._frame_seconds[True])
        log.info(
            "session %s: a frame takes %.1f ms idle, %.1f ms inferred",
            self.sessionid, 1000 * self._frame_seconds[False], 1000 * self._frame_seconds[True],
        )

    def frame_costs(self) -> tuple[float, float]:
        """Seconds one idle and one inferred frame take to render, a small batch at a time
        (blocking; the session need not be started). The admission estimate uses them."""
        n = min(self.batch_size, 4)
        window = np.zeros((self.asr.left + 2 * n + self.asr.right, CHUNK), dtype=np.float32)
        costs = []
        for inferred in (False, True):
            for _ in range(2):  # the first batch pays one-time set-up costs
                started = time.perf_counter()
                self._render_batch(window if inferred else None, range(n), list(range(n)))
                elapsed = (time.perf_counter() - started) / n
            costs.append(elapsed)
        return costs[0], costs[1]

    def _stride(self, inferred: bool) -> int:
        """Render every n-th frame when a frame costs more than its 40 ms: the others repeat
        the frame before, so each picture stays close to the sound playing with it."""
        stride = math.ceil(1.25 * self._frame_seconds[inferred] / SLOT_SECONDS)
        return min(max(1, stride), self.batch_size)  # every batch still renders a frame

    def _adapt(self, inferred: bool, frame_seconds: float) -> None:
        """Track the cost of a frame, and queue enough units ahead of playback that a batch is
        rendered before it plays: a slow model costs latency and frame rate, never sound."""
        # Rise fast, fall slowly: underestimating the cost makes frames late.
        weight = 0.5 if frame_seconds > self._frame_seconds[inferred] else 0.2
        self._frame_seconds[inferred] += weight * (frame_seconds - self._frame_seconds[inferred])
        self._batch_seconds = max(
            math.ceil(self.batch_size / self._stride(kind)) * self._frame_seconds[kind] for kind in (False, True)
        )
        lead = max(PLAYER_SLACK_UNITS, math.ceil(1.5 * self._batch_seconds / SLOT_SECONDS))
        self.player.capacity = self.batch_size + lead
        # Rounded down: the speech's first picture may come up to one slot late (the frame
        # before shows once more, during its first consonant) rather than every reply waiting
        # one slot longer; a fast model (a batch within a slot) keeps no idle unit ahead of it.
        self.player.preempt_keep = math.floor(1.25 * self._batch_seconds / SLOT_SECONDS)

    def _render_batch(self, window: np.ndarray | None, indices: Sequence[int], live: list[int],
                      looks: Sequence[Look] | None = None) -> list[np.ndarray]:
        """Frames `live` (positions in the batch) of a batch of session frames `indices`: the
        features of `window` (the whole batch's audio), inferred and pasted back, or idle
        frames when `window` is None (silence). `looks` say which renderer draws each frame
        and at which of its frames (default: the avatar, at the session's frame)."""
        if looks is None:
            looks = [(self.renderer, i, True) for i in indices]
        wanted = [looks[k] for k in live]
        if window is not None:
            try:
                feats = self.asr.features(window, self.asr.left, self.asr.right, len(indices))[live]
                return self._infer_looks(feats, wanted)
            except Exception:
                # A broken batch must not end the session: show idle frames, keep the audio.
                log.exception("session %s: inference failed; showing idle frames", self.sessionid)
        return [renderer.idle_frame(i) for renderer, i, _ in wanted]

    @staticmethod
    def _infer_looks(feats: np.ndarray, looks: Sequence[Look]) -> list[np.ndarray]:
        """Each renderer infers its own frames of the batch together (a batch mixes two only
        where a clip starts or ends)."""
        images: list[np.ndarray | None] = [None] * len(looks)
        groups: dict[int, list[int]] = {}
        for j, (renderer, index, lip) in enumerate(looks):
            if lip and renderer.lip_sync:
                groups.setdefault(id(renderer), []).append(j)
            else:
                images[j] = renderer.idle_frame(index)
        for js in groups.values():
            renderer = looks[js[0]][0]
            frames = [looks[j][1] for j in js]
            preds = renderer.infer(feats[js], frames)
            for j, pred, index in zip(js, preds, frames, strict=True):
                images[j] = renderer.paste_back(pred, index)
        return images  # type: ignore[return-value]


@dataclass
class _Job:
    """A batch handed from the feeder to the inference thread."""

    generation: int
    units: list[Unit]
    window: np.ndarray | None  # the batch's audio window; None when it is all silence
    indices: range
    looks: list[Look]  # which renderer draws each frame, at which of its frames


class _RenderStats:
    """Periodic log of the frame rates, as upstream prints them: how fast the model infers,
    how many frames per second reach the viewer freshly rendered, and the rate sent."""

    def __init__(self, sessionid: int) -> None:
        self.sessionid = sessionid
        self.since = time.monotonic()
        self.frames_skipped = 0
        self.infer_frames = 0
        self.infer_seconds = 0.0
        self._start_counts = (0, 0, 0)

    def batch_done(self, n: int, inferred: bool, seconds: float, player: HumanPlayer) -> None:
        if inferred:
            self.infer_frames += n
            self.infer_seconds += seconds
        now = time.monotonic()
        if now - self.since < STATS_INTERVAL_S:
            return
        elapsed = now - self.since
        counts = (player.frames_fresh, player.frames_repeated, player.frames_sent)
        fresh, repeated, sent = (c - c0 for c, c0 in zip(counts, self._start_counts, strict=True))
        log.info(
            "session %s: inference fps %.1f, fresh fps %.1f (%d repeated, %d skipped), final fps %.1f",
            self.sessionid,
            self.infer_frames / self.infer_seconds if self.infer_seconds else 0.0,
            fresh / elapsed,
            repeated,
            self.frames_skipped,
            sent / elapsed,
        )
        self.since, self.infer_frames, self.infer_seconds, self.frames_skipped = now, 0, 0.0, 0
        self._start_counts = counts
