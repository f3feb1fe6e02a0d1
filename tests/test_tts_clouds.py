"""The cloud engines (edgetts, tencent, doubao, azuretts) against local stand-ins of their
protocols: what they send (tokens, signatures, keys, voice), streaming, the voice override,
interrupt, missing or wrong keys and the other failure paths."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from aiohttp import web
from tts_cloud_apps import (
    AZURE_KEYS,
    DOUBAO_KEYS,
    EDGE_PATH,
    TENCENT_KEYS,
    azure_app,
    doubao_app,
    edge_app,
    tencent_app,
)
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
)

from tts.azure import AzureEngine
from tts.doubao import DoubaoEngine
from tts.edge import EdgeEngine
from tts.tencent import TencentEngine
from ttsreal import TTSEngine, Voice, load_tts_engine

TEXT = "Streaming speech reaches the avatar early."


def short_voice(long_name: str) -> str:
    """"Microsoft Server Speech Text to Speech Voice (zh-CN, YunxiaNeural)" -> "zh-CN-YunxiaNeural"."""
    locale, name = long_name.split("(", 1)[1].rstrip(")").split(", ")
    return f"{locale}-{name}"


@dataclass
class Case:
    tts: str
    app: Callable[[Control], web.Application]
    keys: dict[str, str]
    default_voice: str  # what --REF_FILE gives
    other_voice: str  # a per-message override
    endpoint: Callable[[str], dict]  # base URL -> from_opt keyword for the endpoint
    voice_of: Callable[[dict], str]
    http_words: str  # how "http500" shows in the error message
    wrong_key_words: str  # the service's own message for a wrong key


CASES = {
    "edgetts": Case(
        "edgetts", edge_app, {}, "zh-CN-YunxiaNeural", "en-US-AriaNeural",
        lambda url: {"endpoint": f"{url.replace('http', 'ws')}{EDGE_PATH}?TrustedClientToken=6A5AA1D4"},
        lambda r: short_voice(r["voice"]), "refused the websocket: HTTP 500", "",
    ),
    "tencent": Case(
        "tencent", tencent_app, TENCENT_KEYS, "101001", "101016",
        lambda url: {"url": f"{url}/stream"}, lambda r: str(r["params"]["VoiceType"]),
        "HTTP 500 Internal Server Error", "AuthFailure.SignatureFailure: The provided credentials could not",
    ),
    "doubao": Case(
        "doubao", doubao_app, DOUBAO_KEYS, "BV001_streaming", "BV700_streaming",
        lambda url: {"url": f"{url.replace('http', 'ws')}/api/v1/tts/ws_binary"},
        lambda r: r["request"]["audio"]["voice_type"], "refused the websocket: HTTP 500", "HTTP 401",
    ),
    "azuretts": Case(
        "azuretts", azure_app, AZURE_KEYS, "zh-CN-XiaoxiaoMultilingualNeural", "en-US-JennyNeural",
        lambda url: {"url": f"{url}/cognitiveservices/v1"}, lambda r: r["voice"],
        "HTTP 500 Internal Server Error", "HTTP 401 Unauthorized",
    ),
}
ENGINE_CLASSES = {"edgetts": EdgeEngine, "tencent": TencentEngine, "doubao": DoubaoEngine, "azuretts": AzureEngine}


def make_engine(case: Case, url: str, keys: dict[str, str], ref_file: str | None = None) -> TTSEngine:
    """The engine as the server builds it: flags from opt, keys from the environment."""
    opt = argparse.Namespace(tts=case.tts, REF_FILE=ref_file, REF_TEXT=None, TTS_SERVER=None)
    with pytest.MonkeyPatch.context() as env:
        for name in ("TENCENT_APPID", "TENCENT_SECRET_ID", "TENCENT_SECRET_KEY", "DOUBAO_APPID", "DOUBAO_TOKEN",
                     "AZURE_SPEECH_KEY", "AZURE_TTS_REGION"):
            env.delenv(name, raising=False)
        for name, value in keys.items():
            env.setenv(name, value)
        return ENGINE_CLASSES[case.tts].from_opt(opt, **case.endpoint(url))


class Stand:
    def __init__(self, case: Case) -> None:
        self.case = case
        self.control = Control()
        self.server = ServerThread(case.app(self.control))
        self.engine = make_engine(case, self.server.url, case.keys)


@pytest.fixture(scope="module", params=list(CASES))
def stand(request) -> Iterator[Stand]:
    stand = Stand(CASES[request.param])
    yield stand
    stand.server.stop()





def test_speech_streams_before_the_service_is_done(running_tts, caplog) -> None:
    stand, sink, tts = running_tts
    caplog.set_level(logging.INFO, logger="ttsreal")
    stand.control.hold = True
    tts.put_msg_txt(TEXT)
    assert sink.wait_for(lambda s: len(s.chunks) >= 10), "no audio while the service was half-way"
    assert stand.control.halfway.wait(5) and not stand.control.finished.is_set()
    assert ("end", TEXT) not in sink.statuses()
    stand.control.release.set()
    wait_idle(tts)

    assert sink.statuses() == [("start", TEXT), ("end", TEXT)]
    # The log tells each sentence's time to first audio, per engine.
    assert re.search(rf"{stand.case.tts} spoke {len(TEXT)} chars: first chunk after \d+ ms", caplog.text)
    expected = Speech.expected_16k(TEXT)
    got = sink.audio()
    assert abs(seconds(got) - seconds(expected)) < 0.15, (seconds(got), seconds(expected))
    # MP3 (Edge) is lossy; the PCM services give the speech back almost exactly.
    assert similarity(got, expected) > (0.95 if stand.case.tts == "edgetts" else 0.98)
    (req,) = stand.control.requests
    assert stand.case.voice_of(req) == stand.case.default_voice
    check_request(stand.case.tts, req)


def check_request(name: str, req: dict) -> None:
    if name == "edgetts":
        assert req["query"]["TrustedClientToken"] == "6A5AA1D4" and req["muid"]
        assert (req["config_path"], req["ssml_path"]) == ("speech.config", "ssml")
        assert req["output_format"] == "audio-24khz-48kbitrate-mono-mp3"
        assert req["text"] == TEXT
    elif name == "tencent":
        params = req["params"]
        assert req["signed"]
        assert (params["Action"], params["AppId"], params["Codec"], params["SampleRate"], params["Text"]) == (
            "TextToStreamAudio", 1300000000, "pcm", 16000, TEXT,
        )
    elif name == "doubao":
        body = req["request"]
        assert req["header"] == "11101100" and req["gzipped"]
        assert body["app"] == {"appid": DOUBAO_KEYS["DOUBAO_APPID"], "token": "access_token", "cluster": "volcano_tts"}
        assert (body["audio"]["encoding"], body["audio"]["rate"]) == ("pcm", 16000)
        assert (body["request"]["text"], body["request"]["operation"]) == (TEXT, "submit")
    elif name == "azuretts":
        assert (req["key"], req["content_type"], req["output_format"]) == (
            "azkey", "application/ssml+xml", "raw-16khz-16bit-mono-pcm",
        )
        assert (req["text"], req["lang"]) == (TEXT, "zh-CN")


@pytest.mark.parametrize("stand", ["edgetts"], indirect=True)
def test_edge_sends_the_long_voice_name(running_tts) -> None:
    stand, sink, tts = running_tts
    tts.put_msg_txt("Names & <tags> are escaped.")
    wait_idle(tts)
    (req,) = stand.control.requests
    assert req["voice"] == "Microsoft Server Speech Text to Speech Voice (zh-CN, YunxiaNeural)"
    assert req["text"] == "Names & <tags> are escaped."


def test_voice_override_applies_to_that_message_only(running_tts) -> None:
    stand, sink, tts = running_tts
    tts.put_msg_txt("Spoken in another voice.", voice=Voice(ref_file=stand.case.other_voice))
    tts.put_msg_txt("Back to the default voice.")
    wait_idle(tts)
    assert [s for s, _ in sink.statuses()] == ["start", "end"] * 2
    voices = [stand.case.voice_of(r) for r in stand.control.requests]
    assert voices == [stand.case.other_voice, stand.case.default_voice]


def test_interrupt_closes_the_connection_in_flight(running_tts) -> None:
    stand, sink, tts = running_tts
    interrupt_mid_request_then_speak_again(stand, sink, tts, TEXT)
    assert sink.statuses()[-1] == ("end", "Speaking again after the interrupt.")


def test_service_errors_and_bad_audio_are_reported_and_speech_goes_on(running_tts) -> None:
    stand, sink, tts = running_tts
    stand.control.failures[:] = ["http500", "garbage"]
    tts.put_msg_txt("The first sentence fails. The second is noise. The third one plays.")
    wait_idle(tts)
    assert sink.statuses() == [
        ("error", "The first sentence fails."),
        ("error", "The second is noise."),
        ("start", "The third one plays."),
        ("end", "The third one plays."),
    ]
    assert stand.case.http_words in sink.errors[0]["msg"]
    bad = sink.errors[1]["msg"]
    if stand.case.tts == "edgetts":
        assert "MP3 stream does not decode" in bad or "no audio in them" in bad
    elif stand.case.tts == "tencent":
        assert "the service answered: <html>" in bad  # a body that is text is the service's refusal
    else:
        assert "got text: <html>" in bad
    assert all(e["msg"].startswith(stand.case.tts) for e in sink.errors)


def test_refused_connection_is_reported(stand) -> None:
    engine = make_engine(stand.case, f"http://127.0.0.1:{free_port()}", stand.case.keys)
    sink = Collector()
    tts = start_tts(engine, sink)
    try:
        tts.put_msg_txt("Nobody is listening.")
        tts.put_msg_txt("Still nobody.")
        wait_idle(tts)
        assert [e["text"] for e in sink.errors] == ["Nobody is listening.", "Still nobody."]
        assert "Connect call failed" in sink.errors[0]["msg"]
    finally:
        tts.stop()


KEYED = [name for name, case in CASES.items() if case.keys]  # Edge needs no key


@pytest.mark.parametrize("stand", KEYED, indirect=True)
def test_missing_keys_are_named_and_nothing_is_sent(stand) -> None:
    stand.control.reset()
    names = sorted(stand.case.keys)
    engine = make_engine(stand.case, stand.server.url, {names[0]: stand.case.keys[names[0]]})
    sink = Collector()
    tts = start_tts(engine, sink)
    try:
        tts.put_msg_txt("No key, no speech.")
        wait_idle(tts)
        (error,) = sink.errors
        assert all(name in error["msg"] for name in names[1:]) and "not set" in error["msg"]
        assert stand.control.requests == []
    finally:
        tts.stop()


@pytest.mark.parametrize("stand", KEYED, indirect=True)
def test_a_wrong_key_gives_the_services_own_message(stand) -> None:
    stand.control.reset()
    keys = dict(stand.case.keys)
    secret = {"tencent": "TENCENT_SECRET_KEY", "doubao": "DOUBAO_TOKEN", "azuretts": "AZURE_SPEECH_KEY"}[stand.case.tts]
    keys[secret] = "wrong"
    engine = make_engine(stand.case, stand.server.url, keys)
    sink = Collector()
    tts = start_tts(engine, sink)
    try:
        tts.put_msg_txt("Wrong key.")
        wait_idle(tts)
        (error,) = sink.errors
        assert stand.case.wrong_key_words in error["msg"]
    finally:
        tts.stop()


def test_edge_corrects_its_clock_after_a_403_and_retries() -> None:
    control = Control()
    server = ServerThread(edge_app(control))
    engine = make_engine(CASES["edgetts"], server.url, {})
    sink = Collector()
    tts = start_tts(engine, sink)
    try:
        control.failures[:] = ["forbidden"]
        tts.put_msg_txt("A second try works.")
        wait_idle(tts)
        assert sink.statuses() == [("start", "A second try works."), ("end", "A second try works.")]
        assert len(control.requests) == 1  # the refused attempt never got to send anything
    finally:
        tts.stop()
        server.stop()


def test_engines_are_chosen_by_upstreams_names(monkeypatch) -> None:
    for name in ("TENCENT_APPID", "TENCENT_SECRET_ID", "TENCENT_SECRET_KEY"):
        monkeypatch.setenv(name, TENCENT_KEYS[name])
    engine = load_tts_engine(argparse.Namespace(tts="tencent", REF_FILE="101016"))
    assert isinstance(engine, TencentEngine) and engine.voice == "101016" and engine.keys == TENCENT_KEYS
    assert load_tts_engine(argparse.Namespace(tts="edgetts", REF_FILE=None)).voice == "zh-CN-YunxiaNeural"
    with pytest.raises(Exception, match="numeric VoiceType"):
        load_tts_engine(argparse.Namespace(tts="tencent", REF_FILE="zh-CN-YunxiaNeural"))


def test_missing_edge_tts_package_names_what_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "edge_tts", None)  # as if it were not installed
    with pytest.raises(RuntimeError, match=r"pip install edge-tts==7\.3\.1"):
        EdgeEngine()

