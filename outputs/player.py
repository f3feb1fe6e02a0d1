"""A session's playback: the units its renderer fills, and the one 40 ms clock that plays them.

A session's feeder pushes *units*: two 20 ms audio frames and the video frame made from them,
which its inference thread fills in a little later. Time is cut into 40 ms slots counted from
the moment the clock starts (the first output attaches); slot k plays unit k, its picture and
then its two packets of sound, into every attached output's tap (outputs.tap) at once. Each
output encodes on its own (a WebRTC peer, a recorder, a push, a camera); one that falls behind
loses its own oldest media, never the session's time or another output's.

Audio never waits for pictures: when a unit's frame is not rendered by its slot (a model
slower than real time), the picture repeats the newest frame and the sound plays on. Only
when the feeder itself is late does a slot have no unit, and then it plays silence. Nothing
drifts, because slots follow the clock, not the queues: a clock that falls behind (a stalled
event loop) skips past MAX_AUDIO_LAG_S instead of sending that late, and the events of what
it skipped are still published, late rather than never. Events (`start`/`end`, `speaking`)
fire here, once, as the sound leaves the clock, however many outputs there are.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from baseasr import CHUNK, SILENCE, AudioFrame
from outputs.tap import Picture, Sound, Tap

log = logging.getLogger(__name__)

FPS = 25
SLOT_SECONDS = 1 / FPS
PACKET_SECONDS = SLOT_SECONDS / 2  # one 20 ms packet of sound
VIDEO_CLOCK = 90000
RECENT_SLOTS = 50  # slots whose units are remembered after they played (2 s)
# Sound later than this behind the clock is skipped, not sent: a listener would hear it
# that much late for the rest of the session.
MAX_AUDIO_LAG_S = 0.5
SILENT_PCM = np.zeros(CHUNK, dtype=np.int16)
SILENT_PCM.setflags(write=False)
BLACK = np.zeros((64, 64, 3), dtype=np.uint8)  # shown when there is not even a poster
BLACK.setflags(write=False)
_ERROR_LOG_EVERY_S = 5.0


@dataclass(eq=False)
class Unit:
    """Two audio frames and the video frame made from them (None until rendered)."""

    image: np.ndarray | None  # HxWx3 uint8 BGR
    audio: tuple[AudioFrame, AudioFrame]
    gone: bool = False  # played or dropped: rendering it now would be wasted
    audio_sent: list[bool] = field(default_factory=lambda: [False, False])  # each frame's events published

    @property
    def speech(self) -> bool:
        return self.audio[0].speech or self.audio[1].speech


class HumanPlayer:
    """Bounded unit queue between a session's render thread and its clock, and the clock.

    `capacity` bounds how far rendering may run ahead of playback (latency); the render
    thread waits in `wait_for_room` (back-pressure) instead of growing the queue.
    """

    def __init__(
        self,
        capacity: int,  # units queued ahead of playback; the session may raise it later
        on_audio_sent: Callable[[AudioFrame, list[dict]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity = capacity
        self.preempt_keep = 1  # units left in place when speech preempts idle ones
        self._preempting = False  # the next unit pushed replaces the idle units queued
        self.poster: np.ndarray | None = None  # shown until the first frame is rendered
        self._units: deque[Unit] = deque()
        self._cond = threading.Condition()
        self._clock = clock
        self._start: float | None = None
        self._next_slot = 0  # the slot the next dequeued unit plays in
        self._recent: deque[tuple[int, Unit | None]] = deque()  # (slot, unit), at most RECENT_SLOTS
        self._late_events: list[dict] = []  # events of audio that was skipped, published next
        self._closed = False
        self._on_audio_sent = on_audio_sent
        self._taps: tuple[Tap, ...] = ()  # the attached outputs' taps (replaced, never mutated)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None  # the clock, from the first attach to close
        self._packet = 0  # the next 20 ms packet the clock plays
        self._last_image: np.ndarray | None = None
        self._error_logged = 0.0
        self.frames_sent = 0
        self.audio_packets_sent = 0
        self.slots_played = 0  # slots that had a unit (their audio played)
        self.slots_missed = 0  # slots the feeder was late for (silence, frame repeated)
        self.frames_fresh = 0  # video slots showing their own rendered frame
        self.frames_repeated = 0  # video slots repeating an older frame (inference late)
        self.idle_units_dropped = 0  # idle units skipped so speech could start sooner
        self.video_slots_skipped = 0  # slots not shown because the clock was behind
        self.audio_packets_skipped = 0  # 20 ms packets not sent because the clock was too late
        self.events_late = 0  # events published with later audio, their own having been skipped
        self.audio_lag_s = 0.0  # how late the newest audio packet left, behind the clock
        self.audio_lag_max_s = 0.0
        self.track_errors = 0  # exceptions caught playing a slot (logged, the clock went on)

    # --- render-thread side --------------------------------------------------------------
    def wait_for_room(self, n_units: int, timeout: float, urgent: Callable[[], bool] | None = None) -> bool:
        """Wait until `n_units` fit without passing capacity. False on timeout or close.

        Idle units are only a placeholder for silence: when `urgent()` says speech is waiting
        and the queue ends in idle units, the next units pushed replace them (all but
        `preempt_keep`, the slots the speech's pictures need to be rendered) and the speech
        goes out next instead of waiting behind them. They are dropped as the next unit is
        pushed, not before: in between, the clock would find nothing to play.
        """
        need = max(self.capacity - n_units, 0)

        def preempt() -> bool:
            return (urgent is not None and len(self._units) > self.preempt_keep and not self._units[-1].speech
                    and urgent())

        with self._cond:
            self._cond.wait_for(lambda: self._closed or len(self._units) <= need or preempt(), timeout)
            if self._closed:
                return False
            if len(self._units) > need:
                if not preempt():
                    return False
                self._preempting = True
            return True

    def poke(self) -> None:
        """Wake a render thread waiting for room (new speech may let it preempt idle units)."""
        with self._cond:
            self._cond.notify_all()

    def push(self, unit: Unit) -> None:
        with self._cond:
            if self._closed:
                return
            if self._preempting:
                self._preempting = False
                while len(self._units) > self.preempt_keep and not self._units[-1].speech:
                    self._units.pop().gone = True
                    self.idle_units_dropped += 1
            self._units.append(unit)

    def clear(self) -> None:
        """Drop every unit not yet played, and silence the speech already played but not yet
        sent by a live peer that is behind (interrupt)."""
        with self._cond:
            for unit in self._units:
                unit.gone = True
            self._units.clear()
            self._cond.notify_all()
        for tap in self._taps:
            if tap.audio and tap.interruptible:
                tap.hush(SILENT_PCM)

    def slots_until(self, unit: Unit) -> int | None:
        """How many slots before `unit` plays; None once it is gone."""
        with self._cond:
            if unit.gone:
                return None
            for position, queued in enumerate(self._units):
                if queued is unit:
                    return position
        return None

    def close(self) -> None:
        """Stop the clock and end every tap (any thread)."""
        with self._cond:
            self._closed = True
            self._units.clear()
            self._cond.notify_all()
            taps, self._taps = self._taps, ()
        for tap in taps:
            tap.close()
        task, loop = self._task, self._loop
        if task is not None and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(task.cancel)

    # --- the clock (event loop) ----------------------------------------------------------
    def attach(self, tap: Tap) -> None:
        """Feed `tap` from the next slot on; the first output to attach starts the clock."""
        with self._cond:
            if self._closed:
                tap.close()
                return
            self._taps = (*self._taps, tap)
        self.start_clock()

    def detach(self, tap: Tap) -> None:
        """Stop feeding `tap` and end it (any thread)."""
        with self._cond:
            self._taps = tuple(t for t in self._taps if t is not tap)
        tap.close()

    @property
    def taps(self) -> tuple[Tap, ...]:
        return self._taps

    def start_clock(self) -> None:
        """Start playing slots now, outputs or not (event loop; idempotent)."""
        if self._task is not None or self._closed:
            return
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run_clock(), name="slot-clock")

    async def _run_clock(self) -> None:
        while not self._closed:
            self.advance()
            delay = self.slot_deadline(self._packet / 2) - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)

    def advance(self) -> None:
        """Play every packet (and, every other one, the slot's picture) due by now. The clock
        task calls it; tests call it with a clock of their own."""
        now = self._clock()
        with self._cond:
            if self._start is None:
                self._start = now
            due = int((now - self._start) / PACKET_SECONDS)
        if self._packet > due:
            return
        late = now - self.slot_deadline(self._packet / 2)
        if late > MAX_AUDIO_LAG_S:
            log.warning("the clock is %.2f s behind: skipping %d packets", late, due - self._packet)
            self._skip_to(due - due % 2)  # to the start of a slot, so its picture is shown
        while self._packet <= due:
            index = self._packet
            self._packet += 1
            self._play(index, max(0.0, now - self.slot_deadline(index / 2)))

    def _skip_to(self, packet: int) -> None:
        """Jump the clock to `packet`: the sound skipped is not played (its events go out with
        the next packet), and the newest picture rendered for a skipped slot is kept, so a
        slow model's rare fresh frames do not vanish with their slots."""
        first_slot, next_slot = (self._packet + 1) // 2, packet // 2
        self.skip_audio(self._packet, packet)
        with self._cond:
            for slot, unit in self._recent:
                if first_slot <= slot < next_slot and unit is not None and unit.image is not None:
                    self._last_image = unit.image
        self.video_slots_skipped += max(0, next_slot - first_slot)
        self._packet = packet

    def _play(self, index: int, lag_s: float) -> None:
        taps = self._taps
        try:
            unit = self.unit_for_slot(index // 2)
            if index % 2 == 0:
                picture = Picture(index // 2, self._picture(unit))
                self.frames_sent += 1
                for tap in taps:
                    if tap.video:
                        tap.put(picture)
            frame = self.audio_sent(unit, index % 2, lag_s)
            pcm = _to_pcm16(frame.samples) if frame.speech else SILENT_PCM
            sound = Sound(index, pcm, frame.speech)
            for tap in taps:
                if tap.audio:
                    tap.put(sound)
        except Exception:
            self._failed(f"playing packet {index}")

    def _failed(self, what: str) -> None:
        self.track_errors += 1
        now = time.monotonic()
        if now - self._error_logged >= _ERROR_LOG_EVERY_S:
            self._error_logged = now
            log.exception("%s failed; playing on (%d errors so far)", what, self.track_errors)

    def _picture(self, unit: Unit | None) -> np.ndarray:
        if unit is not None and unit.image is not None:
            self._last_image = unit.image
            self.frames_fresh += 1
        else:
            self.frames_repeated += 1
        if self._last_image is not None:
            return self._last_image
        return self.poster if self.poster is not None else BLACK

    def slot_deadline(self, slot: float) -> float:
        """Wall-clock time at which `slot` (may be fractional for audio) starts playing."""
        with self._cond:
            if self._start is None:
                self._start = self._clock()
            return self._start + slot * SLOT_SECONDS

    def unit_for_slot(self, slot: int) -> Unit | None:
        """The unit that plays in `slot`; None when the renderer had nothing for it."""
        with self._cond:
            while self._next_slot <= slot:
                unit = self._units.popleft() if self._units else None
                if unit is None:
                    self.slots_missed += 1
                else:
                    unit.gone = True
                    self.slots_played += 1
                self._remember(self._next_slot, unit)
                self._next_slot += 1
                self._cond.notify_all()
            for s, unit in reversed(self._recent):
                if s == slot:
                    return unit
        return None  # so far behind that the unit was forgotten: play a gap

    def _remember(self, slot: int, unit: Unit | None) -> None:
        if len(self._recent) >= RECENT_SLOTS:
            _, old = self._recent.popleft()
            if old is not None:
                self._skip_audio_of(old)  # the sound fell this far behind: it will never play
        self._recent.append((slot, unit))

    def _skip_audio_of(self, unit: Unit, frames: range = range(2)) -> None:
        for k in frames:
            if not unit.audio_sent[k]:
                unit.audio_sent[k] = True
                self._late_events.extend(unit.audio[k].events)

    def skip_audio(self, first_packet: int, next_packet: int) -> None:
        """The clock jumps from packet `first_packet` to `next_packet`: what it skips is not
        played, but its events go out with the next packet sent."""
        self.audio_packets_skipped += next_packet - first_packet
        self.unit_for_slot(next_packet // 2)
        with self._cond:
            for s, unit in self._recent:
                if unit is None:
                    continue
                low = max(first_packet - 2 * s, 0)
                high = min(next_packet - 2 * s, 2)
                if low < high:
                    self._skip_audio_of(unit, range(low, high))

    def audio_sent(self, unit: Unit | None, k: int, lag_s: float) -> AudioFrame:
        """Mark frame `k` of `unit` sent (SILENCE when there is no unit) and publish its events,
        after those of skipped audio."""
        frame = SILENCE
        with self._cond:
            if unit is not None and not unit.audio_sent[k]:
                unit.audio_sent[k] = True
                frame = unit.audio[k]
            elif unit is not None:
                frame = AudioFrame(unit.audio[k].samples, unit.audio[k].speech)  # events already out
            late, self._late_events = self._late_events, []
        self.audio_packets_sent += 1
        self.audio_lag_s = lag_s
        self.audio_lag_max_s = max(self.audio_lag_max_s, lag_s)
        self.events_late += len(late)
        if self._on_audio_sent is not None:
            try:
                self._on_audio_sent(frame, late)
            except Exception:  # a listener's bug must not cost the sound
                self._failed(f"publishing the events of packet {self.audio_packets_sent - 1}")
        return frame




def _to_pcm16(samples: np.ndarray) -> np.ndarray:
    return (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16)
