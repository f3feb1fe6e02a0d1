"""The self-hosted engines (gpt-sovits, xtts, cosyvoice, fishtts, indextts2) against local
servers speaking their real APIs with real speech: what they ask, streaming, the voice
override, interrupt and every failure path."""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from tts_local import (
    Collector,
    Control,
    ServerThread,
    Speech,
    free_port,
    interrupt_mid_request_then_speak_again,
    seconds,
    similarity,
    start_tts,
    wait_idle,
    wav_file,
)
from tts_server_apps import cosyvoice_app, fish_app, indextts_app, sovits_app, xtts_app

from ttsreal import TTSEngine, Voice, load_tts_engine

TEXT = "Streaming speech reaches the avatar early."
REF_A_TEXT = "This is the first reference voice."
REF_B_TEXT = "And this is another reference voice."


@dataclass
class Case:
    tts: str  # the --tts name
    app: Callable[[Control], web.Application]
    synth_path: str  # the request that makes speech (others, like uploads, are not counted)
    # (ref_file, ref_text) as the server saw them, to check which voice was asked for
    voice_of: Callable[[dict], tuple]
    uploads_reference: bool  # the engine sends the audio (else the server reads a path)


def _digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


CASES = {
    "gpt-sovits": Case(
        "gpt-sovits", sovits_app, "/tts",
        lambda r: (r["body"]["ref_audio_path"], r["body"]["prompt_text"]), uploads_reference=False,
    ),
    "xtts": Case("xtts", xtts_app, "/tts_stream", lambda r: (r["speaker"], None), uploads_reference=True),
    "cosyvoice": Case(
        "cosyvoice", cosyvoice_app, "/inference_zero_shot",
        lambda r: (r["prompt_digest"], r["prompt_text"]), uploads_reference=True,
    ),
    "fishtts": Case(
        "fishtts", fish_app, "/v1/tts",
        lambda r: (r["references"][0]["digest"], r["references"][0]["text"]) if r["references"]
        else (r["reference_id"], None),
        uploads_reference=True,
    ),
    "indextts2": Case(
        "indextts2", indextts_app, "/gradio_api/call/gen_single", lambda r: (r["prompt"], None), uploads_reference=True,
    ),
}


@pytest.fixture(scope="module")
def refs(tmp_path_factory) -> dict[str, str]:
    """Two real reference recordings."""
    folder = tmp_path_factory.mktemp("refs")
    paths = {}
    for name, text in (("a", REF_A_TEXT), ("b", REF_B_TEXT)):
        path = folder / f"ref_{name}.wav"
        path.write_bytes(wav_file(text, 22050))
        paths[name] = str(path)
    return paths


class Stand:
    """One engine's local server, its control and the engine pointed at it."""

    def __init__(self, case: Case, refs: dict[str, str]) -> None:
        self.case = case
        self.refs = refs
        self.control = Control()
        self.server = ServerThread(case.app(self.control))
        self.engine = self.make_engine(self.server.url)

    def default_ref(self) -> str:
        # Fish's upstream use of --REF_FILE is a reference id stored on its server.
        return "alice" if self.case.tts == "fishtts" else self.refs["a"]

    def make_engine(self, url: str) -> TTSEngine:
        opt = argparse.Namespace(tts=self.case.tts, TTS_SERVER=url, REF_FILE=self.default_ref(), REF_TEXT=REF_A_TEXT)
        return load_tts_engine(opt)

    def synth_requests(self) -> list[dict]:
        return [r for r in self.control.requests if r["path"] == self.case.synth_path]

    def expected_voice(self, ref: str, text: str | None) -> tuple:
        """What the server should see for a reference file and its text."""
        case = self.case.tts
        if case == "gpt-sovits":
            return (ref, text)
        if case == "fishtts" and ref == "alice":
            return ("alice", None)
        digest = _digest(ref)
        return (digest, text) if case in ("cosyvoice", "fishtts") else (digest, None)


@pytest.fixture(scope="module", params=list(CASES))
def stand(request, refs) -> Iterator[Stand]:
    stand = Stand(CASES[request.param], refs)
    yield stand
    stand.server.stop()





def test_speech_streams_before_the_server_is_done(running_tts, caplog) -> None:
    stand, sink, tts = running_tts
    caplog.set_level(logging.INFO, logger="ttsreal")
    stand.control.hold = True  # the server stops half-way until the test has seen audio
    tts.put_msg_txt(TEXT, {"msg_id": 7})
    assert sink.wait_for(lambda s: len(s.chunks) >= 10), "no audio while the server was half-way"
    assert stand.control.halfway.wait(5) and not stand.control.finished.is_set()
    assert ("end", TEXT) not in sink.statuses()
    stand.control.release.set()
    wait_idle(tts)

    assert sink.statuses() == [("start", TEXT), ("end", TEXT)]
    # The log tells each sentence's time to first audio, per engine.
    assert re.search(rf"{stand.case.tts} spoke {len(TEXT)} chars: first chunk after \d+ ms", caplog.text)
    assert all(e["msg_id"] == 7 for e in sink.events)
    expected = Speech.expected_16k(TEXT)
    got = sink.audio()
    # Same speech, correctly decoded and resampled from the server's rate to 16 kHz.
    assert abs(seconds(got) - seconds(expected)) < 0.12, (seconds(got), seconds(expected))
    assert similarity(got, expected) > 0.98

    (req,) = stand.synth_requests()
    assert stand.case.voice_of(req) == stand.expected_voice(stand.default_ref(), REF_A_TEXT)
    check_request(stand, req)


def check_request(stand: Stand, req: dict) -> None:
    """The engine's own parameters, as upstream sent them."""
    case = stand.case.tts
    if case == "gpt-sovits":
        assert req["method"] == "POST"
        assert req["body"] == {
            "text": TEXT, "text_lang": "zh", "ref_audio_path": stand.refs["a"], "prompt_text": REF_A_TEXT,
            "prompt_lang": "zh", "media_type": "wav", "streaming_mode": True,
        }
    elif case == "xtts":
        assert (req["text"], req["language"], req["stream_chunk_size"], req["add_wav_header"]) == (
            TEXT, "zh-cn", "20", True,
        )
        clones = [r for r in stand.control.requests if r["path"] == "/clone_speaker"]
        assert [c["digest"] for c in clones] == [_digest(stand.refs["a"])]
    elif case == "cosyvoice":
        assert (req["method"], req["tts_text"]) == ("POST", TEXT)
    elif case == "fishtts":
        assert (req["text"], req["format"], req["streaming"], req["use_memory_cache"]) == (TEXT, "wav", True, "on")
    elif case == "indextts2":
        assert (req["text"], req["inputs"], req["emo_control_method"]) == (TEXT, 24, "Same as the voice reference")
        assert req["prompt_name"] == "ref_a.wav"


def test_voice_override_applies_to_that_message_only(running_tts) -> None:
    stand, sink, tts = running_tts
    b = stand.refs["b"]
    tts.put_msg_txt("Spoken in another voice.", voice=Voice(ref_file=b, ref_text=REF_B_TEXT))
    tts.put_msg_txt("Only the file changes here.", voice=Voice(ref_file=b))
    tts.put_msg_txt("Back to the default voice.")
    wait_idle(tts)
    assert [s for s, _ in sink.statuses()] == ["start", "end"] * 3
    seen = [stand.case.voice_of(r) for r in stand.synth_requests()]
    assert seen == [
        stand.expected_voice(b, REF_B_TEXT),
        stand.expected_voice(b, REF_A_TEXT),  # an unset field keeps --REF_TEXT
        stand.expected_voice(stand.default_ref(), REF_A_TEXT),
    ]
    if stand.case.tts == "xtts":  # each reference is cloned once, then reused
        clones = [r["digest"] for r in stand.control.requests if r["path"] == "/clone_speaker"]
        assert sorted(set(clones)) == sorted(clones)


def test_interrupt_closes_the_request_in_flight(running_tts) -> None:
    stand, sink, tts = running_tts
    after = interrupt_mid_request_then_speak_again(stand, sink, tts, TEXT)
    assert sink.statuses()[-2:] == [
        ("start", "Speaking again after the interrupt."), ("end", "Speaking again after the interrupt."),
    ]
    assert seconds(sink.audio(after)) > 1.0


ERROR_WORDS = {
    # the HTTP error, then the bytes that are not audio, as each engine reports them
    "gpt-sovits": ("HTTP 500 Internal Server Error", "expected a gpt-sovits WAV stream"),
    "xtts": ("HTTP 500 Internal Server Error", "expected a xtts WAV stream"),
    "cosyvoice": ("HTTP 500 Internal Server Error", "expected cosyvoice PCM audio, got text: <html>"),
    "fishtts": ("HTTP 500 Internal Server Error", "expected a fishtts WAV stream"),
    "indextts2": ("gen_single failed on the server", "expected a indextts2 WAV stream"),
}


def test_server_errors_and_bad_audio_are_reported_and_speech_goes_on(running_tts) -> None:
    stand, sink, tts = running_tts
    stand.control.failures[:] = ["http500", "garbage"]
    tts.put_msg_txt("The first sentence fails. The second is noise. The third one plays.", {"msg_id": 3})
    wait_idle(tts)
    assert sink.statuses() == [
        ("error", "The first sentence fails."),
        ("error", "The second is noise."),
        ("start", "The third one plays."),
        ("end", "The third one plays."),
    ]
    http_error, bad_audio = ERROR_WORDS[stand.case.tts]
    assert http_error in sink.errors[0]["msg"]
    assert bad_audio in sink.errors[1]["msg"]
    assert all(e["msg_id"] == 3 and e["msg"].startswith(stand.case.tts) for e in sink.errors)
    assert seconds(sink.audio()) > 0.8



@pytest.mark.parametrize("stand", ["gpt-sovits"], indirect=True)  # one engine shows it: the path is shared
def test_server_dying_mid_sentence_closes_it_and_reports(stand) -> None:
    stand.control.reset()
    stand.control.failures[:] = ["cut"]
    sink = Collector()
    tts = start_tts(stand.engine, sink)
    try:
        tts.put_msg_txt("This sentence is cut short. The next one plays.")
        wait_idle(tts)
    finally:
        tts.stop()
    # What was heard is closed with "end" (the avatar stops talking), then the error follows.
    assert sink.statuses() == [
        ("start", "This sentence is cut short."),
        ("end", "This sentence is cut short."),
        ("error", "This sentence is cut short."),
        ("start", "The next one plays."),
        ("end", "The next one plays."),
    ]
    assert "Response payload is not completed" in sink.errors[0]["msg"]


def test_refused_connection_is_reported_then_speech_resumes(stand) -> None:
    port = free_port()
    engine = stand.make_engine(f"http://127.0.0.1:{port}")
    sink = Collector()
    tts = start_tts(engine, sink)
    server = None
    try:
        tts.put_msg_txt("Nobody is listening yet.")
        wait_idle(tts)
        (error,) = sink.errors
        assert error["text"] == "Nobody is listening yet."
        assert f"127.0.0.1:{port}" in error["msg"] and "Connect call failed" in error["msg"]
        server = ServerThread(stand.case.app(Control()), port=port)
        tts.put_msg_txt("Now somebody is.")
        wait_idle(tts)
        assert sink.statuses()[-2:] == [("start", "Now somebody is."), ("end", "Now somebody is.")]
    finally:
        tts.stop()
        if server is not None:
            server.stop()


@pytest.mark.parametrize(
    ("ref_file", "words"),
    [("/no/such/voice.wav", "cannot read reference audio"), ("/etc/passwd", "must be one of .wav")],
)
@pytest.mark.parametrize("stand", [n for n, c in CASES.items() if c.uploads_reference], indirect=True)
def test_unusable_reference_audio_is_an_error_not_an_upload(running_tts, ref_file, words) -> None:
    stand, sink, tts = running_tts
    tts.put_msg_txt("Who am I?", voice=Voice(ref_file=ref_file))
    tts.put_msg_txt("Still here.")
    wait_idle(tts)
    if stand.case.tts == "fishtts" and ref_file == "/etc/passwd":
        # Not an audio file: Fish takes it as the id of a reference stored on its server.
        assert [r["reference_id"] for r in stand.synth_requests()] == ["/etc/passwd", "alice"]
        assert all(r["references"] == [] for r in stand.synth_requests())
        return
    assert words in sink.errors[0]["msg"] and sink.errors[0]["text"] == "Who am I?"
    assert sink.statuses()[-1] == ("end", "Still here.")
    assert len(stand.synth_requests()) == 1  # nothing was sent for the bad reference


def test_cosyvoice_needs_the_reference_text(refs) -> None:
    control = Control()
    server = ServerThread(cosyvoice_app(control))
    engine = load_tts_engine(argparse.Namespace(tts="cosyvoice", TTS_SERVER=server.url, REF_FILE=refs["a"]))
    sink = Collector()
    tts = start_tts(engine, sink)
    try:
        tts.put_msg_txt("No words for the reference.")
        wait_idle(tts)
        assert "no reference text; set --REF_TEXT" in sink.errors[0]["msg"]
        assert control.requests == []
    finally:
        tts.stop()
        server.stop()

