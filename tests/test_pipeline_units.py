"""The session pipeline's own mechanisms, checked directly: the ASR window and the player."""

from __future__ import annotations

import asyncio

import numpy as np

from baseasr import CHUNK, SILENCE, AudioFrame, BaseASR
from outputs.player import HumanPlayer, Unit
from outputs.tap import Tap
from webrtc import session_tracks


class WindowASR(BaseASR):
    """Features = the window's own audio, so tests can see exactly what each batch saw."""

    def features(self, chunks: np.ndarray, left: int, right: int, n_frames: int) -> np.ndarray:
        return chunks.copy()


def speech(value: float) -> np.ndarray:
    return np.full(CHUNK, value, dtype=np.float32)


def test_speech_replaces_filler_lookahead_instead_of_waiting_behind_it():
    asr = WindowASR(left=2, right=10)
    frames, feats = asr.get_batch(2)  # idle: the look-ahead is now 10 frames of filler
    assert feats is None and not any(f.speech for f in frames)
    for i in range(20):
        asr.put_audio_frame(speech(0.1 + i / 100))
    frames, feats = asr.get_batch(2)
    # The very next batch starts with the speech: the 200 ms of filler ahead of it are dropped.
    assert all(f.speech for f in frames)
    assert frames[0].samples[0] == np.float32(0.1)
    assert feats.shape == (2 + 4 + 10, CHUNK)


def test_left_context_starts_as_silence_and_then_follows_the_audio():
    asr = WindowASR(left=3, right=1)
    for i in range(6):
        asr.put_audio_frame(speech(i + 1.0))
    _, feats = asr.get_batch(1)
    assert (feats[:3] == 0).all()  # warm-up: silence on the left
    assert [row[0] for row in feats[3:]] == [1.0, 2.0, 3.0]
    _, feats = asr.get_batch(1)
    assert [row[0] for row in feats] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def test_flush_drops_queued_speech_and_frames_from_before_it():
    asr = WindowASR(left=0, right=0)
    epoch = asr.epoch
    asr.put_audio_frame(speech(0.5))
    asr.flush()
    # A producer that decided to speak before the flush but got its frame in after it.
    asr.put_audio_frame(speech(0.7), epoch=epoch)
    frames, feats = asr.get_batch(1)
    assert feats is None and not any(f.speech for f in frames)
    asr.put_audio_frame(speech(0.9))
    frames, _ = asr.get_batch(1)
    assert frames[0].speech and frames[0].samples[0] == np.float32(0.9)


def events_played(asr: BaseASR, batches: int) -> list[tuple[str, float | None]]:
    """(event status, first sample of its frame, None on filler) in playing order."""
    out = []
    for _ in range(batches):
        frames, _ = asr.get_batch(1)
        out += [(e["status"], f.samples[0] if f.speech else None) for f in frames for e in f.events]
    return out


def test_an_event_put_between_sentences_leaves_after_the_first_and_before_the_second():
    asr = WindowASR(left=0, right=4)
    asr.put_audio_frame(speech(0.1), {"status": "start"})
    asr.put_audio_frame(speech(0.2), {"status": "end"})
    asr.put_event({"status": "error"})
    assert events_played(asr, 1) == [("start", np.float32(0.1)), ("end", np.float32(0.2))]
    # The error sits on filler in the look-ahead; the next sentence replaces that filler and
    # carries the error on its first frame, ahead of its own start.
    asr.put_audio_frame(speech(0.3), {"status": "start"})
    assert events_played(asr, 1) == [("error", np.float32(0.3)), ("start", np.float32(0.3))]


def test_an_event_on_its_own_is_played_out_on_filler_and_survives_a_flush():
    asr = WindowASR(left=0, right=0)
    asr.put_audio_frame(speech(0.5), {"status": "start"})
    asr.put_event({"status": "error"})
    asr.flush()  # the speech is dropped; the report of a failure is not
    assert events_played(asr, 2) == [("error", None)]


def unit(tag: float, is_speech: bool) -> Unit:
    frame = AudioFrame(speech(tag), True) if is_speech else SILENCE
    return Unit(np.full((2, 2, 3), int(tag * 100), np.uint8), (frame, frame))


def test_a_slot_keeps_its_unit_after_the_clock_passed_it_and_an_empty_slot_is_a_gap():
    player = HumanPlayer(capacity=8)
    units = [unit(i / 10, True) for i in range(5)]
    for u in units:
        player.push(u)
    # The clock jumps to slot 3 (a skip); the units of slots 0..3 are still found (a skip keeps
    # the newest picture among them and publishes their events).
    assert player.unit_for_slot(3) is units[3]
    assert [player.unit_for_slot(s) for s in range(4)] == units[:4]
    assert player.unit_for_slot(4) is units[4]
    assert player.unit_for_slot(5) is None  # nothing rendered for it: a gap, not a shift
    assert player.slots_missed == 1 and player.slots_played == 5


def test_waiting_speech_replaces_idle_units_but_never_speech():
    player = HumanPlayer(capacity=6)
    queued = [unit(0.1, True), unit(0.2, True)] + [unit(0, False) for _ in range(4)]
    for u in queued:
        player.push(u)
    assert not player.wait_for_room(4, timeout=0.01)  # full, and nothing urgent
    assert player.wait_for_room(4, timeout=0.01, urgent=lambda: True)
    new = unit(0.3, True)
    player.push(new)
    assert [player.unit_for_slot(s) for s in range(3)] == [*queued[:2], new]  # the speech stays, then the new
    assert player.idle_units_dropped == 4 and all(u.gone for u in queued[2:])


def test_preempted_idle_units_go_only_as_the_speech_comes_so_playback_never_runs_dry():
    player = HumanPlayer(capacity=6)
    player.preempt_keep = 0  # a fast model: its speech may play in the very next slot
    queued = [unit(0, False) for _ in range(6)]
    for u in queued:
        player.push(u)
    assert player.wait_for_room(4, timeout=0.01, urgent=lambda: True)
    # The clock plays before the speech is pushed: it still has an idle unit to play.
    assert player.unit_for_slot(0) is queued[0]
    speech_unit = unit(0.1, True)
    player.push(speech_unit)
    assert player.unit_for_slot(1) is speech_unit
    assert player.idle_units_dropped == 5 and player.slots_missed == 0


def test_a_fast_models_speech_plays_in_the_next_slot():
    player = HumanPlayer(capacity=6)
    player.preempt_keep = 0  # its batch renders within a slot: no idle unit is kept ahead
    for _ in range(4):
        player.push(unit(0, False))
    assert player.wait_for_room(4, timeout=0.01, urgent=lambda: True)
    speech_unit = unit(0.1, True)
    player.push(speech_unit)
    assert player.unit_for_slot(0) is speech_unit


def test_preemption_keeps_as_many_idle_units_as_rendering_needs():
    player = HumanPlayer(capacity=8)
    for _ in range(8):
        player.push(unit(0, False))
    player.preempt_keep = 5  # a slow model needs 5 slots to render the speech's first batch
    assert player.wait_for_room(4, timeout=0.01, urgent=lambda: True)
    player.push(unit(0.1, True))
    assert player.idle_units_dropped == 3


def spoken_unit(n: int) -> Unit:
    """A unit whose two audio frames carry the start and end of sentence `n`."""
    start = AudioFrame(speech(0.1), True, ({"status": "start", "text": f"s{n}"},))
    end = AudioFrame(speech(0.1), True, ({"status": "end", "text": f"s{n}"},))
    return Unit(None, (start, end))


def test_audio_far_behind_the_video_still_publishes_every_event_late_not_never():
    """The clock jumped further than its history keeps (a long-stalled loop): the units it
    skipped are never played, but their events go out, in order, with the next packet that is."""
    published: list[str] = []
    player = HumanPlayer(capacity=100, on_audio_sent=lambda frame, late: published.extend(
        f"{e['status']} {e['text']}" for e in [*late, *frame.events]))
    for n in range(60):
        player.push(spoken_unit(n))
    player.unit_for_slot(59)  # the clock jumps to slot 59
    # Slots 0-9 fell out of the history (it keeps 50): their events are due now.
    sent = player.audio_sent(player.unit_for_slot(10), 0, lag_s=1.2)
    assert sent.events == ({"status": "start", "text": "s10"},)
    expected = [f"{kind} s{n}" for n in range(10) for kind in ("start", "end")] + ["start s10"]
    assert published == expected
    assert player.events_late == 20 and player.audio_lag_max_s == 1.2


def test_audio_that_skips_ahead_publishes_what_it_skipped():
    published: list[str] = []
    player = HumanPlayer(capacity=100, on_audio_sent=lambda frame, late: published.extend(
        f"{e['status']} {e['text']}" for e in [*late, *frame.events]))
    for n in range(10):
        player.push(spoken_unit(n))
    player.audio_sent(player.unit_for_slot(0), 0, 0.0)  # "start s0" played
    player.skip_audio(1, 8)  # from packet 1 (the end of s0) to packet 8 (the start of s4)
    player.audio_sent(player.unit_for_slot(4), 0, 0.0)
    assert published == ["start s0", "end s0", "start s1", "end s1", "start s2", "end s2",
                         "start s3", "end s3", "start s4"]
    assert player.audio_packets_skipped == 7


def test_an_exception_in_an_event_listener_is_logged_and_the_sound_goes_on(caplog):
    """A listener that raises (once, an event with a lone surrogate did) must not end the
    clock: the sound still reaches the peer's track, a real Opus packet every 20 ms."""

    def broken(frame, late):
        raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")

    player = HumanPlayer(capacity=8, on_audio_sent=broken)
    for n in range(3):
        player.push(spoken_unit(n))
    audio, _ = session_tracks(player)

    async def packets():
        try:
            return [await audio.recv() for _ in range(6)]
        finally:
            player.close()

    out = asyncio.run(packets())
    assert [p.pts for p in out] == [i * 320 for i in range(6)]
    assert all(p.size > 0 for p in out)
    assert player.track_errors >= 6
    assert "publishing the events of packet 0 failed; playing on" in caplog.text


def clocked_player(capacity: int) -> tuple[HumanPlayer, dict, Tap]:
    """A player on a clock the test moves, with one output's tap attached (no clock task)."""
    clock = {"now": 100.0}
    player = HumanPlayer(capacity=capacity, clock=lambda: clock["now"])
    player.poster = np.zeros((4, 4, 3), np.uint8)
    tap = Tap("test", audio=False, limit=1000)
    player._taps = (tap,)
    return player, clock, tap


def pictures(tap: Tap) -> list:
    out = []
    while tap.backlog():
        out.append(tap.get(0))
    return out


def test_a_clock_behind_time_shows_the_frame_due_now():
    player, clock, tap = clocked_player(8)
    player.advance()  # slot 0 at t=100 (the clock starts here)
    clock["now"] += 1.0  # a second passes without a tick (a stalled loop)
    player.advance()
    slots = [p.slot for p in pictures(tap)]
    assert slots == [0, 25]  # slot 25, not slots 1-25: late pictures are skipped
    assert player.video_slots_skipped == 24


def test_a_late_clock_keeps_the_newest_picture_of_the_slots_it_skips():
    """A slow model's rare fresh frame must not vanish because its slot was skipped."""
    player, clock, tap = clocked_player(64)
    fresh = np.full((4, 4, 3), 200, np.uint8)
    units = [Unit(None, (SILENCE, SILENCE)) for _ in range(40)]
    units[10].image = fresh  # the only picture rendered, for a slot the clock will skip
    for unit in units:
        player.push(unit)
    player.advance()  # slot 0
    clock["now"] += 1.0  # the clock falls 25 slots behind
    player.advance()
    late = pictures(tap)[-1]
    assert late.slot == 25
    assert late.image.mean() > 150  # the fresh picture, not the poster


def test_every_output_gets_every_slot_and_a_slow_one_loses_only_its_own_oldest():
    player, clock, fast = clocked_player(64)
    slow = Tap("slow", audio=False, limit=3)
    player._taps = (fast, slow)
    for n in range(10):
        unit = Unit(np.full((4, 4, 3), n, np.uint8), (SILENCE, SILENCE))
        player.push(unit)
    for _ in range(10):
        player.advance()
        clock["now"] += 0.04
    assert [p.slot for p in pictures(fast)] == list(range(10))
    assert [int(p.image[0, 0, 0]) for p in pictures(slow)] == [7, 8, 9]  # the newest three
    assert slow.dropped == 7 and fast.dropped == 0


def test_an_interrupt_hushes_the_speech_a_live_peer_has_not_sent_but_a_recording_keeps_it():
    player, clock, _ = clocked_player(64)
    peer = Tap("peer", video=False, limit=100, interruptible=True)  # a WebRTC peer that is behind
    recording = Tap("recording", video=False, limit=100)
    player._taps = (peer, recording)
    for _ in range(10):
        player.push(Unit(None, (AudioFrame(speech(0.5), True), AudioFrame(speech(0.5), True))))
    for _ in range(10):  # about 20 loud packets played, none sent yet
        player.advance()
        clock["now"] += 0.04
    player.clear()  # the interrupt
    sent = [peer.get(0) for _ in range(peer.backlog())]
    kept = [recording.get(0) for _ in range(recording.backlog())]
    assert len(sent) > 15 and [s.index for s in sent] == list(range(len(sent)))  # in step: nothing skipped
    assert not any(s.speech or s.pcm.any() for s in sent)
    assert len(kept) == len(sent) and all(s.speech and s.pcm.any() for s in kept)
