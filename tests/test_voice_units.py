"""The parts of speech input on their own: utterances cut from VAD scores, the real Silero VAD
on speech, silence and noise, and the echo guard telling the avatar's voice from the user's."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from inputs.echo import LOUDER_MARGIN, EchoGuard
from inputs.listener import ECHO_WINDOW_S, Heard, Listener, MediaClock
from inputs.utterance import Segmenter, SegmenterConfig
from inputs.vad import WINDOW, VoiceActivity
from inputs.voice import Hooks, VoiceInput
from speech_samples import espeak_speech
from stt.base import SpeechToText

W = np.zeros(WINDOW, np.float32)


def feed(segmenter: Segmenter, probs: list[float]) -> list[str]:
    kinds = []
    for p in probs:
        kinds += [e.kind for e in segmenter.feed(W + p, p)]
    return kinds


def test_an_utterance_starts_after_enough_voice_and_ends_after_the_silence():
    seg = Segmenter(SegmenterConfig(partial_every_s=10))
    assert feed(seg, [0.9, 0.1, 0.1, 0.9, 0.1, 0.1]) == []  # clicks: never three voiced windows
    kinds = feed(seg, [0.9] * 10 + [0.1] * 1 + [0.9] * 2 + [0.1] * 2 + [0.9] * 5 + [0.1] * 19)
    # A transcript may start at the first silent window, an answer only at the second.
    assert kinds == ["onset", "pause", "resume", "pause", "speculate", "resume", "pause", "speculate", "end"]


def test_the_end_holds_the_utterance_with_its_preroll_and_a_short_tail():
    seg = Segmenter(SegmenterConfig(partial_every_s=10))
    events = []
    for p in [0.0] * 20 + [0.9] * 30 + [0.0] * 19:
        events += seg.feed(W + p, p)
    end = events[-1]
    assert end.kind == "end" and not end.cut
    voiced = int(np.sum(end.audio > 0.5)) // WINDOW
    assert voiced == 30  # all of the speech
    assert end.audio.size // WINDOW == 30 + round(0.3 / 0.032) + round(0.2 / 0.032)  # preroll, tail


def test_the_silence_after_the_last_word_counts_even_while_the_vad_still_says_speech():
    # Silero is recurrent: it rates the first 60-130 ms of silence after a word as speech.
    def kinds(config: SegmenterConfig, after: float) -> list[str]:
        seg = Segmenter(config)
        out = []
        for window, prob in [(W + 0.1, 0.9)] * 10 + [(W + after, 0.9)] * 3:
            out += [e.kind for e in seg.feed(window, prob)]
        return out

    assert kinds(SegmenterConfig(partial_every_s=10), 0.0) == ["onset", "pause", "speculate"]  # digital silence
    assert kinds(SegmenterConfig(partial_every_s=10, quiet_db=None), 0.0) == ["onset"]  # the VAD alone: not yet
    # Over a noise floor 20 dB under the voice (no noise suppression) the VAD alone decides.
    assert kinds(SegmenterConfig(partial_every_s=10), 0.01) == ["onset"]


def test_the_sound_the_vad_is_slow_to_call_speech_counts_for_the_voice():
    # "Stop": Silero rates the "s" (a fricative) as speech only 100 ms after it starts.
    seg = Segmenter(SegmenterConfig(partial_every_s=10))
    for rms, prob in [(0.0005, 0.0)] * 10 + [(0.02, 0.1)] * 3 + [(0.05, 0.9)]:
        seg.feed(W + rms, prob)
    assert seg.lead_in == 3 and seg.sounding_s == 4 * 0.032
    # A lead-in is the start of the voice, not whatever sound came before it, and is bounded.
    seg = Segmenter(SegmenterConfig(partial_every_s=10))
    for rms, prob in [(0.02, 0.1)] * 20 + [(0.3, 0.9)]:
        seg.feed(W + rms, prob)
    assert seg.lead_in == 0
    seg = Segmenter(SegmenterConfig(partial_every_s=10))
    for rms, prob in [(0.02, 0.1)] * 20 + [(0.05, 0.9)]:
        seg.feed(W + rms, prob)
    assert seg.lead_in == 4


def test_a_monologue_is_cut_into_bounded_utterances():
    seg = Segmenter(SegmenterConfig(max_utterance_s=2.0, partial_every_s=100))
    ends = []
    for _ in range(int(20 / 0.032)):  # 20 s without a pause
        ends += [e for e in seg.feed(W + 0.9, 0.9) if e.kind == "end"]
    assert len(ends) >= 9 and all(e.cut for e in ends)
    assert max(e.audio.size for e in ends) <= 2.0 * 16000 + WINDOW


def test_silero_scores_speech_high_and_silence_and_noise_low():
    speech = espeak_speech("What is the capital of France?")
    vad = VoiceActivity()
    probs = [vad.probability(speech[i : i + WINDOW]) for i in range(0, speech.size - WINDOW, WINDOW)]
    assert max(probs) > 0.9 and np.mean(np.array(probs) > 0.5) > 0.4
    vad.reset()
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.05, 16000 * 3).astype(np.float32)
    quiet = [vad.probability(noise[i : i + WINDOW]) for i in range(0, noise.size - WINDOW, WINDOW)]
    assert max(quiet) < 0.5


def _guard(reference: np.ndarray, mic: np.ndarray) -> EchoGuard:
    guard = EchoGuard()
    for i in range(0, min(reference.size, mic.size) - 320, 320):
        guard.add_reference(reference[i : i + 320], True)
        guard.add_mic(mic[i : i + 320])
    return guard


def test_the_echo_guard_knows_the_avatars_voice_from_another():
    avatar = espeak_speech("The capital of France is Paris, a city on the river Seine with many museums.")
    user = espeak_speech("Stop, wait a moment please, I have another question for you.", voice="en-gb")
    user = np.pad(user, (0, max(0, avatar.size - user.size)))[: avatar.size]
    rng = np.random.default_rng(1)
    delayed = np.concatenate([np.zeros(2400, np.float32), avatar])[: avatar.size] * 0.3
    echo = delayed + rng.normal(0, 0.003, avatar.size).astype(np.float32)
    for cut in (int(1.6 * 16000), int(2.5 * 16000)):  # moments in the middle of both
        assert _guard(avatar[:cut], echo[:cut]).is_echo(ECHO_WINDOW_S)
        assert not _guard(avatar[:cut], user[:cut]).is_echo(ECHO_WINDOW_S)
        assert not _guard(avatar[:cut], (user + delayed)[:cut]).is_echo(ECHO_WINDOW_S)  # the user talks over it


def test_a_voice_far_louder_than_the_avatars_echo_is_not_the_echo():
    avatar = espeak_speech("The capital of France is Paris, a city on the river Seine with many museums.")
    user = espeak_speech("What about Germany?", voice="en-gb")
    rng = np.random.default_rng(2)
    start = int(2.0 * 16000)
    voiced = start + int(np.flatnonzero(np.abs(user) > 0.01)[0]) + int(0.15 * 16000)  # 150 ms into the voice
    delayed = np.concatenate([np.zeros(2400, np.float32), avatar])[: avatar.size]
    for echo_gain, louder in ((0.0, True), (0.03, True), (0.3, False)):  # headphones, a good canceller, none
        mic = delayed * echo_gain + rng.normal(0, 0.002, avatar.size).astype(np.float32)
        mic[start : start + user.size] += user[: avatar.size - start]
        compared = _guard(avatar[:voiced], mic[:voiced]).compare(ECHO_WINDOW_S, 0.15)
        assert compared.louder_than_echo == louder, (echo_gain, compared)
    # The echo itself is never louder than the echo, however the avatar's loudness changes.
    echo = delayed * 0.3 + rng.normal(0, 0.002, avatar.size).astype(np.float32)
    for cut in range(int(1.5 * 16000), avatar.size, 1600):
        assert _guard(avatar[:cut], echo[:cut]).compare(ECHO_WINDOW_S, 0.15).over_echo < LOUDER_MARGIN / 2, cut


def _jittered(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`audio` as a receiver's jitter buffer plays it on a busy network: 150 ms late at first,
    40-100 ms of silence put in where packets came late, and as much skipped (never more than
    it is behind) where they bunched up."""
    out, behind, last = [np.zeros(2400, np.float32)], 2400, 0
    for at in sorted(int(x) for x in rng.integers(0, audio.size, 4)):
        out.append(audio[last:at])
        gap, last = int(rng.integers(640, 1600)), at
        if rng.random() < 0.5:
            out.append(np.zeros(gap, np.float32))
            behind += gap
        else:
            skip = min(gap, behind - 2400)
            last += skip
            behind -= skip
    out.append(audio[last:])
    return np.pad(np.concatenate(out), (0, audio.size))[: audio.size]


def test_the_echo_guard_follows_an_echo_stretched_and_squeezed_by_a_jitter_buffer():
    avatar = espeak_speech("This is a long answer that keeps the avatar talking for a good while, so that the "
                           "user has time to talk over it.")
    user = espeak_speech("Hold on, I want to ask you something different about the weather.")
    user = np.pad(user, (0, max(0, avatar.size - user.size)))[: avatar.size]
    rng = np.random.default_rng(3)
    for trial in range(6):
        echo = _jittered(avatar, rng) * 0.3 + rng.normal(0, 0.003, avatar.size).astype(np.float32)
        for cut in (int(2.0 * 16000), int(3.0 * 16000)):
            assert _guard(avatar[:cut], echo[:cut]).is_echo(ECHO_WINDOW_S), (trial, cut)
            assert not _guard(avatar[:cut], (user * 0.5 + echo)[:cut]).is_echo(ECHO_WINDOW_S), (trial, cut)


def _listen(reference: np.ndarray, mic: np.ndarray) -> list[tuple[str, float]]:
    """What a listener reports (kind, at seconds of mic audio) for a mic heard while the session
    sends `reference`, packet by packet in step, as its thread would take them."""
    heard: list[Heard] = []
    listener = Listener("listen-test", heard.append)
    listener.close()  # its thread is not needed: the pieces are given here
    reports = []
    for i in range(0, min(reference.size, mic.size) - 320, 320):
        listener._echo.add_reference(reference[i : i + 320], True)
        before = len(heard)
        listener._hear(mic[i : i + 320])
        reports += [(h.kind, (i + 320) / 16000) for h in heard[before:]]
    return reports


AVATAR_TALK = [
    ("This is a long answer that keeps the avatar talking for a good while, so that the user has time.", "en-us"),
    ("Paris is the capital of France, and it is a lovely city on the river Seine, with many museums.", "en-gb"),
    ("Sure, here is a short joke for you. Why did the chicken cross the road? To get to the other side!", "en-us+f3"),
]


def test_the_avatars_echo_through_a_jittery_receiver_never_barges_in():
    # A jitter buffer's gaps and skips make the echo's contour unlike the avatar's now and
    # then; with the contour alone most such echoes interrupted the avatar (46 of 75 offline).
    rng = np.random.default_rng(7)
    for text, voice in AVATAR_TALK:
        avatar = espeak_speech(text, voice=voice)
        # No echo canceller (5-50% of the avatar's loudness), and what one leaves (1-5%, near
        # the noise floor: its contour is unclear, and it can sound for seconds unbroken).
        for gain in (0.05, 0.2, 0.5, 0.02, 0.03, 0.04):
            echo = _jittered(avatar, rng) * gain
            echo += rng.normal(0, 0.002, avatar.size).astype(np.float32)
            vad = VoiceActivity()
            voiced = sum(vad.probability(echo[i : i + WINDOW]) >= 0.5 for i in range(0, echo.size - WINDOW, WINDOW))
            assert voiced * WINDOW / 16000 > 1.0, f"the VAD hardly hears an echo at {gain}: it proves nothing"
            reports = _listen(avatar, echo)
            assert "barge_in" not in {kind for kind, _ in reports}, (text, gain, reports)


def test_a_voice_over_the_avatar_interrupts_it_once_it_is_an_utterance_and_loses_no_words():
    # Through headphones the avatar's voice does not come back: the user's is not its echo
    # from its first window on, and interrupts as soon as it is long enough to be speech
    # (a fricative's lead-in counting, which the VAD calls speech late).
    rng = np.random.default_rng(3)
    avatar = espeak_speech(AVATAR_TALK[1][0], voice=AVATAR_TALK[1][1])
    for text, voice in [("Stop, wait a moment please.", "en-gb"), ("What about Germany?", "en-us"),
                        ("Sorry, can you repeat that?", "en-gb"), ("Hold on, I want to ask you something.", "en-us")]:
        user = espeak_speech(text, voice=voice) * 0.6
        start = int(2.0 * 16000)
        mic = rng.normal(0, 0.002, avatar.size).astype(np.float32)
        mic[start : start + user.size] += user[: avatar.size - start]
        reports = _listen(avatar, mic)
        kinds = [kind for kind, _ in reports]
        assert kinds.count("barge_in") == 1 and "echo" not in kinds, (text, reports)
        onset = (start + int(np.flatnonzero(np.abs(user) > 0.01)[0])) / 16000
        at = next(t for kind, t in reports if kind == "barge_in")
        assert at - onset <= 0.3, (text, at - onset)  # of audio, not of wall-clock time


def test_the_listener_reports_a_monologue_in_bounded_pieces_and_stops():
    heard: list[Heard] = []
    speech = espeak_speech("One two three four five six seven eight nine ten.")
    listener = Listener("listen-test", heard.append, config=SegmenterConfig(max_utterance_s=1.5))
    try:
        for _ in range(4):
            for i in range(0, speech.size - 320, 320):
                while listener._pieces.qsize() > 100:  # faster than real time, but none dropped
                    time.sleep(0.01)
                listener.put(speech[i : i + 320])
        for _ in range(100):
            listener.put(np.zeros(320, np.float32))
    finally:
        listener.close()
    assert not listener._thread.is_alive() and listener.dropped == 0
    ends = [h for h in heard if h.kind == "end"]
    assert ends and max(h.audio.size for h in ends) <= 1.5 * 16000 + WINDOW
    assert heard[0].kind == "listening"


def test_media_clock_stamps_late_and_bunched_pieces_with_the_time_they_should_have_come():
    clock = MediaClock()
    stamps = []
    for i in range(60):
        media = i * 0.02
        # Pieces 10-29 are held up by a stall and all arrive together when it ends.
        arrival = 100.0 + (30 * 0.02 if 10 <= i < 30 else media)
        stamps.append(clock.time(arrival, media))
    # Every piece gets its place on the media clock, as if none had been late.
    assert np.allclose(stamps, [100.0 + i * 0.02 for i in range(60)], atol=0.002)
    # A sender whose clock runs a little slow is followed, not held to its first packet.
    slow = MediaClock()
    last = [slow.time(200.0 + 1.0005 * i, float(i)) for i in range(100)][-1]
    assert last - (200.0 + 99) > 0.03


class WrittenStt(SpeechToText):
    """Speech-to-text that hears the same words in any audio, at once."""

    name = "written"

    @classmethod
    def load(cls, opt):
        return cls()

    async def transcribe(self, audio, partial=False):
        return "Tell me a joke"


class HeldAnswer:
    """What Conversation.speculate returns, recording what became of it."""

    def __init__(self) -> None:
        self.fate: list[str] = []

    def release(self) -> bool:
        self.fate.append("released")
        return True

    def drop_speech(self) -> None:
        self.fate.append("dropped")

    async def withdraw(self) -> None:
        self.fate.append("withdrawn")


def test_an_answer_held_for_an_utterance_nobody_finishes_is_dropped():
    # Speech held for an answer waits in the session's TTS, and what is said after it waits
    # behind it: when the utterance will never end (the mode goes off, the input closes),
    # its answer must be dropped, not left holding the voice.
    async def scenario(end) -> list[str]:
        held = HeldAnswer()
        hooks = Hooks(interrupt=None, say=None, ask=None, speculate=lambda text, extra, release_at: held,
                      publish=lambda event: None)
        voice = VoiceInput(1, WrittenStt(), hooks)
        voice._on_heard(Heard("listening", 1))
        voice._on_heard(Heard("pause", 1, np.zeros(16000, np.float32)))
        voice._on_heard(Heard("speculate", 1))
        for _ in range(20):  # the transcript, then the speculation started on it
            await asyncio.sleep(0)
        assert held.fate == []  # held: neither heard nor dropped
        await end(voice)
        await asyncio.sleep(0)
        return held.fate

    async def off(voice):
        voice.set_mode("off")

    async def closed(voice):
        await voice.close()

    assert asyncio.run(scenario(off))[0] == "dropped"
    assert asyncio.run(scenario(closed))[0] == "dropped"
