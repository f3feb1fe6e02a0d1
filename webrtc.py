"""WebRTC output: one audio and one video track per session, paced by one clock.

A session's feeder pushes *units*: two 20 ms audio frames and the video frame made from them,
which its inference thread fills in a little later. Time is cut into 40 ms slots counted from
the moment the first track starts; slot k plays unit k. Whichever track reaches a slot first
takes the next unit from the queue, and the other track finds it in a short history, so the
picture and sound of a unit leave together even when one track runs a little behind.

Audio never waits for pictures: when a unit's frame is not rendered by its slot (a model
slower than real time), the video repeats the newest frame it has and the sound plays on.
Only when the feeder itself is late does a slot have no unit, and then it plays silence.
Nothing drifts, because slots follow the clock, not the queues: a track that falls behind
the clock (a stalled event loop, a slow encoder) skips ahead instead of sending late media,
the video as soon as it is a slot late, the sound past MAX_AUDIO_LAG_S, and the events of
whatever was skipped are still published, late rather than never.

The sound is encoded to Opus here, on the event loop (80 us per packet), and handed to aiortc
as packets: aiortc would encode each 20 ms frame in the default thread pool, where it queues
behind every VP8 encode and anything else that pool runs, and the sound then falls behind.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import av
import cv2
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from baseasr import CHUNK, SAMPLE_RATE, SILENCE, AudioFrame

log = logging.getLogger(__name__)

FPS = 25
SLOT_SECONDS = 1 / FPS
VIDEO_CLOCK = 90000
RECENT_SLOTS = 50  # slots a lagging track can still find its unit in (2 s)
# Sound later than this behind the clock is skipped, not sent: a listener would hear it
# that much late for the rest of the session.
MAX_AUDIO_LAG_S = 0.5
OPUS_BITRATE = 32000  # 16 kHz mono speech: Opus wideband is transparent well below this
_SILENT_PCM = np.zeros((1, CHUNK), dtype=np.int16)
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
    """Bounded unit queue between a session's render thread and its two tracks.

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
        self.audio = PlayerStreamTrack(self, "audio")
        self.video = PlayerStreamTrack(self, "video")
        self.frames_sent = 0
        self.audio_packets_sent = 0
        self.slots_played = 0  # slots that had a unit (their audio played)
        self.slots_missed = 0  # slots the feeder was late for (silence, frame repeated)
        self.frames_fresh = 0  # video slots showing their own rendered frame
        self.frames_repeated = 0  # video slots repeating an older frame (inference late)
        self.idle_units_dropped = 0  # idle units skipped so speech could start sooner
        self.video_slots_skipped = 0  # video slots not sent because the track was behind the clock
        self.audio_packets_skipped = 0  # 20 ms packets not sent because the sound was too late
        self.events_late = 0  # events published with later audio, their own having been skipped
        self.audio_lag_s = 0.0  # how late the newest audio packet left, behind the clock
        self.audio_lag_max_s = 0.0
        self.track_errors = 0  # exceptions caught inside the tracks (logged, the track went on)

    # --- render-thread side --------------------------------------------------------------
    def wait_for_room(self, n_units: int, timeout: float, urgent: Callable[[], bool] | None = None) -> bool:
        """Wait until `n_units` fit without passing capacity. False on timeout or close.

        Idle units are only a placeholder for silence: when `urgent()` says speech is waiting
        and the queue ends in idle units, they are dropped (all but `preempt_keep`, the time
        the speech's pictures need to be rendered) and the speech goes out next instead of
        waiting behind them.
        """
        need = max(self.capacity - n_units, 0)
        keep = max(1, self.preempt_keep)

        def preempt() -> bool:
            return urgent is not None and len(self._units) > keep and not self._units[-1].speech and urgent()

        with self._cond:
            self._cond.wait_for(lambda: self._closed or len(self._units) <= need or preempt(), timeout)
            if self._closed:
                return False
            if len(self._units) > need:
                if not preempt():
                    return False
                while len(self._units) > keep and not self._units[-1].speech:
                    self._units.pop().gone = True
                    self.idle_units_dropped += 1
            return True

    def poke(self) -> None:
        """Wake a render thread waiting for room (new speech may let it preempt idle units)."""
        with self._cond:
            self._cond.notify_all()

    def push(self, unit: Unit) -> None:
        with self._cond:
            if not self._closed:
                self._units.append(unit)

    def clear(self) -> None:
        """Drop every unit not yet played (interrupt)."""
        with self._cond:
            for unit in self._units:
                unit.gone = True
            self._units.clear()
            self._cond.notify_all()

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
        with self._cond:
            self._closed = True
            self._units.clear()
            self._cond.notify_all()
        self.audio.stop()
        self.video.stop()

    # --- track side (event loop) ---------------------------------------------------------
    def slot_deadline(self, slot: float) -> float:
        """Wall-clock time at which `slot` (may be fractional for audio) starts playing."""
        with self._cond:
            if self._start is None:
                self._start = self._clock()
            return self._start + slot * SLOT_SECONDS

    def now(self) -> float:
        """The player's clock (time.monotonic, unless a test gives another)."""
        return self._clock()

    def slot_now(self, unit_seconds: float = SLOT_SECONDS) -> int:
        """The slot (or, with unit_seconds 0.02, the audio packet) playing now on the clock."""
        with self._cond:
            if self._start is None:
                return 0
            return max(0, int((self._clock() - self._start) / unit_seconds))

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
        """The audio track jumps from packet `first_packet` to `next_packet`: what it skips is
        not played, but its events go out with the next packet sent."""
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
            self._on_audio_sent(frame, late)
        return frame


class OpusPackets:
    """20 ms of 16 kHz mono PCM in, one Opus packet out, timed by its packet number."""

    def __init__(self) -> None:
        codec = av.CodecContext.create("libopus", "w")
        codec.sample_rate = SAMPLE_RATE
        codec.format = "s16"
        codec.layout = "mono"
        codec.bit_rate = OPUS_BITRATE
        codec.time_base = fractions.Fraction(1, SAMPLE_RATE)
        codec.options = {"application": "voip"}
        codec.open()
        self._codec = codec

    def encode(self, pcm: np.ndarray, index: int) -> av.Packet:
        frame = av.AudioFrame(format="s16", layout="mono", samples=CHUNK)
        frame.planes[0].update(pcm.tobytes())
        frame.sample_rate = SAMPLE_RATE
        frame.pts = index * CHUNK
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        packets = self._codec.encode(frame)
        # libopus gives exactly one packet per 20 ms frame; its own pts carries the encoder's
        # look-ahead, so the packet is stamped with the frame's place on the clock instead.
        packet = packets[0] if packets else av.Packet(b"")
        packet.pts = index * CHUNK
        packet.time_base = fractions.Fraction(1, SAMPLE_RATE)
        return packet


class PlayerStreamTrack(MediaStreamTrack):
    """An aiortc track that plays the player's units on the shared slot clock.

    Nothing that goes wrong inside a track may end its stream: an exception is logged and
    the slot is played as silence (audio) or the previous picture (video).
    """

    def __init__(self, player: HumanPlayer, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._player = player
        self._count = 0  # frames (video) or 20 ms packets (audio) produced
        self._last_image: np.ndarray | None = None
        self._opus: OpusPackets | None = None
        self._error_logged = 0.0

    async def recv(self) -> av.frame.Frame | av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        if self.kind == "video":
            return await self._recv_video()
        return await self._recv_audio()

    async def _wait(self, slot: float) -> float:
        """Sleep until `slot` starts; how late that already was (0 when on time)."""
        delay = self._player.slot_deadline(slot) - self._player.now()
        if delay > 0:
            await asyncio.sleep(delay)
        if self.readyState != "live":
            raise MediaStreamError
        return max(0.0, -delay)

    def _failed(self, what: str) -> None:
        self._player.track_errors += 1
        now = time.monotonic()
        if now - self._error_logged >= _ERROR_LOG_EVERY_S:
            self._error_logged = now
            log.exception("%s track: %s failed; playing on (%d errors so far)", self.kind, what,
                          self._player.track_errors)

    async def _recv_video(self) -> av.VideoFrame:
        late = await self._wait(self._count)
        skipped = range(0)
        if late > SLOT_SECONDS:
            # A late frame is worthless (the sound has moved on): show the one due now.
            now_slot = self._player.slot_now()
            if now_slot > self._count:
                self._player.video_slots_skipped += now_slot - self._count
                skipped = range(self._count, now_slot)
                self._count = now_slot
        slot = self._count
        try:
            for old in skipped:
                # A picture rendered for a skipped slot is still the newest one the viewer
                # can have: a slow model's rare fresh frames must not vanish with the slot.
                passed = self._player.unit_for_slot(old)
                if passed is not None and passed.image is not None:
                    self._last_image = passed.image
            unit = self._player.unit_for_slot(slot)
            if unit is not None and unit.image is not None:
                self._last_image = unit.image
                self._player.frames_fresh += 1
            else:
                self._player.frames_repeated += 1
            image = self._last_image if self._last_image is not None else self._player.poster
            if image is None:  # no poster either: a black frame keeps the stream alive
                image = np.zeros((64, 64, 3), dtype=np.uint8)
            frame = video_frame(image)
        except Exception:
            self._failed("a frame")
            self._last_image = None
            frame = video_frame(np.zeros((64, 64, 3), dtype=np.uint8))
        frame.pts = slot * (VIDEO_CLOCK // FPS)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self._count += 1
        self._player.frames_sent += 1
        return frame

    async def _recv_audio(self) -> av.Packet:
        late = await self._wait(self._count / 2)
        if late > MAX_AUDIO_LAG_S:
            now_packet = self._player.slot_now(SLOT_SECONDS / 2)
            if now_packet > self._count:
                log.warning("audio track %.2f s behind the clock: skipping %d packets", late, now_packet - self._count)
                self._player.skip_audio(self._count, now_packet)
                self._count = now_packet
                late = 0.0
        index = self._count
        self._count += 1
        pcm = _SILENT_PCM
        try:
            unit = self._player.unit_for_slot(index // 2)
            sent = self._player.audio_sent(unit, index % 2, late)
            if sent.speech:
                pcm = _to_pcm16(sent.samples)
        except Exception:
            self._failed("a packet")
        if self._opus is None:
            self._opus = OpusPackets()
        return self._opus.encode(pcm, index)


def video_frame(image: np.ndarray) -> av.VideoFrame:
    """A frame in the encoder's own format: OpenCV converts to I420 (BT.601, studio range, as
    FFmpeg would) in 0.2 ms where the encoder's converter takes 1.1 ms (512x512)."""
    h, w = image.shape[:2]
    if h % 2 or w % 2:
        return av.VideoFrame.from_ndarray(image, format="bgr24")
    return av.VideoFrame.from_ndarray(cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420), format="yuv420p")


def _to_pcm16(samples: np.ndarray) -> np.ndarray:
    return (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16).reshape(1, CHUNK)

