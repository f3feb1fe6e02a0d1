"""One session's ear: a thread that scores the microphone with the VAD, cuts utterances and
decides barge-in, so none of that runs on the event loop.

It reads the mic pieces queued by the event loop and, through an audio-only tap on the
session's clock, the sound the session sent (the echo guard's reference). What it decides
goes back to the event loop as `Heard` items:

    listening (the user started talking), barge_in (talking over the avatar: silence it),
    partial, pause, speculate, resume, end (audio for the transcripts), echo (the avatar's
    own voice, ignored)

While the avatar is speaking, or its voice may still be coming back, an onset must pass a
higher bar before it counts: enough voiced audio to rule out a cough or a click, and a mic
signal that does not follow what the session just sent. With barge-in off the microphone is
ignored while the avatar speaks (upstream's half-duplex).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from audio_util import to_mono_float
from baseasr import CHUNK
from inputs.echo import ECHO_CORRELATION, MAX_DELAY_S, EchoGuard
from inputs.utterance import Event, Segmenter, SegmenterConfig
from inputs.vad import SAMPLE_RATE, WINDOW, VoiceActivity
from outputs.tap import Sound, Tap

log = logging.getLogger(__name__)

MIC_QUEUE = 250  # pieces (about 20 ms each) the listener may fall behind by: 5 s
PACKET_S = CHUNK / SAMPLE_RATE  # the session's sound comes in 20 ms packets
REFERENCE_HELD = 300  # packets of the session's sound (20 ms) held until the mic catches up: 6 s
# After the avatar's last speech its voice may still come back this long: the longest delay the
# guard looks at, and a little more (the echo of a sentence's end, or of the pause between two).
AVATAR_ECHO_S = MAX_DELAY_S + 0.2
# The voice that interrupts the avatar (a click or a cough is shorter): its voiced windows and
# the lead-in just before them (inputs.utterance.LEAD_IN_DB), once it is an utterance.
BARGE_IN_S = 0.16
# The mic audio compared with the reference. Offline (espeak, the echo 150 ms late with 40-100 ms
# gaps and skips as a jitter buffer makes them): the avatar's echo scores 0.73-0.99 over 1 s
# (median 0.94), another voice 0.62 at most, another voice over the echo 0.73 at most (median
# 0.51); through aiortc on a loopback under two busy loops the echo mostly scores 0.85-0.99.
ECHO_WINDOW_S = 1.0
ECHO_CHECKS = 3  # windows (32 ms each) that must not look like echo before barge-in
# Below this a window's contour is not the avatar's echo's; between it and ECHO_CORRELATION it
# looks enough like it to start the count of ECHO_CHECKS again, without dropping the utterance.
UNLIKE_ECHO = 0.7
# A contour unlike the echo's counts only from a voice this far over the echo's level (decades
# of power, 8 dB; see inputs.echo.over_echo). Offline, with the echo through a jitter buffer
# that leaves 40-100 ms gaps: 1 of 75 pure echoes interrupted the avatar, against 46 of 75 with
# the contour alone.
AUDIBLE_OVER_ECHO = 0.8


class MediaClock:
    """When a stream's media should have arrived, from when its pieces did.

    Pieces come late and in bunches on a busy machine (the event loop, the network, the
    sender all stall now and then), but a stream's media time runs evenly: a piece is stamped
    with the earliest arrival seen for its media time, so a late one gets the time it would
    have had. The anchor creeps later by DRIFT per second of media, to follow a sender whose
    clock runs a little slow.
    """

    DRIFT = 0.001

    def __init__(self) -> None:
        self._anchor: float | None = None  # arrival minus media time, at its earliest
        self._media = 0.0

    def time(self, arrival: float, media_s: float) -> float:
        """The stamp of a piece that arrived at `arrival` (time.monotonic) holding media from
        `media_s` on."""
        if self._anchor is None:
            self._anchor = arrival - media_s
        else:
            self._anchor = min(self._anchor + self.DRIFT * max(0.0, media_s - self._media), arrival - media_s)
        self._media = media_s
        return self._anchor + media_s


@dataclass
class Heard:
    kind: str  # listening, barge_in, partial, pause, speculate, resume, end, echo
    utterance: int
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    cut: bool = False


class Listener:
    """The thread that listens to one session's microphone."""

    def __init__(
        self,
        name: str,
        report: Callable[[Heard], None],
        *,
        config: SegmenterConfig | None = None,
        barge_in: bool = True,
        reference: Tap | None = None,
    ) -> None:
        self.name = name
        self.barge_in = barge_in
        self.active = True  # False ("off" mode): the mic is heard by nobody
        self.dropped = 0  # mic pieces lost because this thread was behind
        self.echo_rejected = 0  # onsets found to be the avatar's own voice
        self._report = report
        self._vad = VoiceActivity()
        self._segmenter = Segmenter(config)
        self._echo = EchoGuard()
        self._reference = reference
        # Each mic piece with its time, and the session's sound not yet compared: the guard
        # takes the sound sent up to a piece's time, so how far this thread is behind does
        # not change the echo's delay it sees. Both times are media times (see MediaClock).
        self._pieces: queue.Queue[tuple[np.ndarray, float] | None] = queue.Queue(MIC_QUEUE)
        self._mic_clock = MediaClock()
        self._mic_samples = 0
        self._sent: deque[tuple[Sound, float]] = deque(maxlen=REFERENCE_HELD)
        self._sent_clock = MediaClock()
        self._last_index: int | None = None
        self._pending = np.zeros(0, np.float32)
        self._utterance = 0
        self._confirmed = False  # the utterance in progress passed the onset bar
        self._unlike_echo = 0  # windows in a row of it that did not look like the avatar's echo
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # --- event loop side ------------------------------------------------------------------
    def put(self, piece: np.ndarray) -> None:
        try:
            at = self._mic_clock.time(time.monotonic(), self._mic_samples / SAMPLE_RATE)
            self._mic_samples += piece.size
            self._pieces.put_nowait((piece, at))
        except queue.Full:
            self.dropped += 1

    def close(self, timeout: float = 2.0) -> None:
        """Stop the thread (blocking up to `timeout`; call off-loop or with a short wait)."""
        if self._reference is not None:
            self._reference.close()
        while True:
            try:
                self._pieces.put(None, timeout=0.05)
                break
            except queue.Full:
                try:
                    self._pieces.get_nowait()
                except queue.Empty:
                    pass
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("%s did not stop in time", self.name)

    # --- the thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            item = self._pieces.get()
            if item is None:
                return
            piece, arrived = item
            try:
                self._take_reference(arrived)
                self._hear(piece)
            except Exception:  # a bad piece must not deafen the session for good
                log.exception("%s: a piece of the microphone could not be processed", self.name)

    def _take_reference(self, until: float) -> None:
        """Give the guard the session's sound played up to `until`."""
        if self._reference is not None:
            while True:
                try:
                    item = self._reference.get(timeout=0)
                except TimeoutError:
                    break
                if item is None:
                    break
                if isinstance(item, Sound):
                    self._sent.append((item, self._sent_clock.time(item.at, item.index * PACKET_S)))
        while self._sent and self._sent[0][1] <= until:
            sound = self._sent.popleft()[0]
            # Packets the peer never got (its track was behind) are silence in its speakers:
            # so they are in the reference too, and the echo stays in step with it.
            missing = 0 if self._last_index is None else min(sound.index - self._last_index - 1, REFERENCE_HELD)
            if missing > 0:
                self._echo.add_reference(np.zeros(missing * CHUNK, np.float32), False)
            self._last_index = sound.index
            self._echo.add_reference(to_mono_float(sound.pcm), sound.speech)

    def _hear(self, piece: np.ndarray) -> None:
        self._echo.add_mic(piece)
        self._pending = np.concatenate([self._pending, piece])
        while self._pending.size >= WINDOW:
            window, self._pending = self._pending[:WINDOW], self._pending[WINDOW:]
            prob = self._vad.probability(window)
            if not self.active:
                self._drop_utterance()
                continue
            for event in self._segmenter.feed(window, prob):
                self._on_event(event)
            if not (self._segmenter.in_speech or self._segmenter.voiced):
                self._unlike_echo = 0  # no voice, or one forgotten as a click: its checks with it
            elif not self._confirmed:
                self._check_onset()

    def _avatar_audible(self) -> bool:
        return self._echo.avatar_spoke_within(AVATAR_ECHO_S)

    def _check_onset(self) -> None:
        """An utterance in progress (or a voice not yet long enough to be one) that has not
        counted yet: decide whether it does."""
        started = self._segmenter.in_speech
        if not self._avatar_audible():
            if started:
                self._confirm()
            return
        if not self.barge_in:
            self._drop_utterance()  # half-duplex: nobody listens while the avatar speaks
            return
        # The echo check runs from the first voiced window on, while the voice builds up to the
        # bar, so the two waits overlap instead of adding up.
        sounding_s = self._segmenter.sounding_s
        compared = self._echo.compare(ECHO_WINDOW_S, sounding_s)
        louder = compared.louder_than_echo
        correlation = 0.0 if louder else compared.correlation  # too loud to be the echo: unlike it
        log.debug("%s: %.2f s of voice over the avatar, echo correlation %.2f at %.0f ms, %.0f dB over the echo",
                  self.name, sounding_s, compared.correlation, 1000 * self._echo.delay_s, 10 * compared.over_echo)
        if correlation >= ECHO_CORRELATION:
            self.echo_rejected += 1
            self._report(Heard("echo", self._utterance))
            self._drop_utterance()
            return
        # A window counts for the user when the voice is louder than the avatar's echo could
        # be, or audibly over that echo with a contour unlike the avatar's (a jitter buffer's
        # gaps make a pure echo's contour look unlike it now and then, never louder). One
        # window can miss an echo that has barely begun: ECHO_CHECKS must count, with no window
        # that looks like the echo in between.
        if louder or (correlation < UNLIKE_ECHO and compared.over_echo >= AUDIBLE_OVER_ECHO):
            self._unlike_echo += 1
        elif correlation >= UNLIKE_ECHO:
            self._unlike_echo = 0
        if not started or self._unlike_echo < ECHO_CHECKS or sounding_s < BARGE_IN_S:
            return
        self._report(Heard("barge_in", self._utterance))
        self._confirm()

    def _confirm(self) -> None:
        self._confirmed = True
        self._unlike_echo = 0
        self._report(Heard("listening", self._utterance))

    def _drop_utterance(self) -> None:
        if self._segmenter.in_speech or self._segmenter.voiced:
            self._segmenter.reset()
        self._confirmed = False
        self._unlike_echo = 0

    def _on_event(self, event: Event) -> None:
        if event.kind == "onset":  # the voice checked so far is now an utterance: its checks count
            self._utterance += 1
            self._confirmed = False
            return
        if not self._confirmed:
            if event.kind == "end" and not event.cut:
                self._drop_utterance()
            return
        self._report(Heard(event.kind, self._utterance, event.audio, event.cut))
        if event.kind == "end" and not event.cut:
            self._confirmed = False
