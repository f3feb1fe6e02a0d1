"""The demo page's microphone in a real headless Chromium: its fake capture device plays espeak-ng
speech ("What is the capital of France?"), the page sends it on the session's own WebRTC connection,
the server's speech input hears the question, the LLM stand-in answers and the avatar says it.
Also: a microphone the user refuses, and the speech mode set from the page (POST /asr_mode)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from conftest import RunningServer, llm_server
from fakellm import FakeLLM, Script
from test_page import CHROMIUM, CHROMIUM_ARGS

playwright_api = pytest.importorskip("playwright.sync_api")
sf = pytest.importorskip("soundfile")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (./setup.sh --dev)"),
    pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (./setup.sh --dev)"),
]

QUESTION = "What is the capital of France?"
ANSWER = "Paris is the capital of France."
SILENCE_S = 2.0  # after the question: the server's end of speech; Chromium then loops the file
# The browser asks for the microphone: a fake device, and either a fake "allow" or a refusal.
FAKE_MIC = ["--use-fake-device-for-media-stream"]

STARTED = "document.querySelector('#sessionid').textContent !== 'none'"
PLAYING = "(() => { const v = document.querySelector('#video'); return v.videoWidth > 0 && v.currentTime > 0.5; })()"
MIC_READY = "!document.querySelector('#mic').disabled"
MIC_ON = "document.querySelector('#mic').dataset.on === 'true'"
# Set once the listening badge has been on, however briefly (it ends with the final transcript).
WATCH_LISTENING = """() => {
  window.sawListening = false;
  const badge = document.querySelector('#listening');
  new MutationObserver(() => { if (badge.dataset.listening === 'true') window.sawListening = true; })
    .observe(badge, { attributes: true, attributeFilter: ['data-listening'] });
}"""
QUESTION_LINE = """[...document.querySelectorAll('#transcript li.user:not(.partial)')]
  .some((li) => /capital/i.test(li.textContent) && /france/i.test(li.textContent))"""
# The answer's said pieces, on an avatar line below the question's line.
ANSWER_SAID = """(() => {
  const lines = [...document.querySelectorAll('#transcript li')];
  const asked = lines.findIndex((li) => li.classList.contains('user') && /capital/i.test(li.textContent));
  return asked >= 0 && lines.slice(asked + 1).some((li) => li.classList.contains('avatar')
    && [...li.querySelectorAll('.piece.said')].some((s) => s.textContent.includes('Paris')));
})()"""


def speech_wav(folder: Path) -> Path:
    """The question as 16-bit PCM WAV, then silence: Chromium's fake microphone loops it."""
    try:
        from speech_samples import espeak_speech
    except ImportError:
        espeak_speech = None
    if espeak_speech is not None:
        rate = 16000
        speech = np.asarray(espeak_speech(QUESTION, voice="en-us", rate=rate), dtype=np.float32)
    else:
        raw = folder / "espeak.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), QUESTION], check=True, timeout=60)
        speech, rate = sf.read(raw, dtype="float32")
    if speech.ndim > 1:
        speech = speech.mean(axis=1)
    padded = np.concatenate([speech, np.zeros(int(SILENCE_S * rate), dtype=np.float32)])
    out = folder / "question.wav"
    sf.write(out, padded, rate, subtype="PCM_16")
    return out


@pytest.fixture(scope="module")
def question_wav(tmp_path_factory) -> Path:
    return speech_wav(tmp_path_factory.mktemp("mic"))


@pytest.fixture(scope="module")
def voice_server(fake_llm: FakeLLM) -> Iterator[RunningServer]:
    """A server with speech input (whisper) and an LLM stand-in."""
    srv = llm_server(fake_llm.url)
    yield srv
    srv.stop()


class Browser:
    """Chromium with the fake microphone, a page on the server, and every page error it raised."""

    def __init__(self, pw, profile: str, url: str, mic_args: list[str]) -> None:
        self.context = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=[*CHROMIUM_ARGS, *mic_args]
        )
        self.errors: list[str] = []
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        self.page.on("console", self._console)
        self.page.goto(url + "/")

    def _console(self, msg) -> None:
        if msg.type == "error" and "favicon" not in (msg.location or {}).get("url", ""):
            self.errors.append(f"console error: {msg.text}")

    def start(self) -> int:
        self.page.click("#start")
        self.page.wait_for_function(STARTED, timeout=20000)
        self.page.wait_for_function(PLAYING, timeout=20000)
        return int(self.page.locator("#sessionid").inner_text())

    def close(self) -> None:
        self.context.close()


def session_mode(server: RunningServer, sid: int) -> str:
    """The speech mode the server keeps for session `sid`."""
    return server.live.inputs[sid].mode


def test_the_mic_asks_a_spoken_question_and_the_avatar_answers(voice_server, fake_llm, question_wav):
    fake_llm.scripts.clear()
    # Every question gets the answer: Chromium loops the file, so a second, cut-off question can
    # reach the server before the mic turns itself off.
    fake_llm.default = Script([ANSWER])
    asked_before = len(fake_llm.requests)
    mic_args = [*FAKE_MIC, "--use-fake-ui-for-media-stream", f"--use-file-for-fake-audio-capture={question_wav}"]
    with playwright_api.sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        browser = Browser(pw, profile, voice_server.url, mic_args)
        try:
            page = browser.page
            assert page.locator("#mic").is_disabled()  # until connected
            browser.start()
            page.wait_for_function(MIC_READY, timeout=10000)
            assert page.locator("#mic").get_attribute("aria-pressed") == "false"
            page.evaluate(WATCH_LISTENING)
            page.click("#mic")
            page.wait_for_function(MIC_ON, timeout=10000)
            assert page.locator("#mic").get_attribute("aria-pressed") == "true"
            page.wait_for_function("window.sawListening === true", timeout=30000)
            page.wait_for_function(QUESTION_LINE, timeout=90000)
            page.wait_for_function(ANSWER_SAID, timeout=60000)
            questions = [
                m["content"] for r in fake_llm.requests[asked_before:] for m in r["messages"] if m["role"] == "user"
            ]
            assert any("capital of france" in q.lower() for q in questions), questions
            # Push-to-talk: the mic turned itself off after the question.
            assert page.locator("#mic").get_attribute("data-on") == "false"
            assert page.locator("#mic").get_attribute("aria-pressed") == "false"
            assert not page.locator("#hands-free").is_checked()
            assert page.locator("#listening").get_attribute("data-listening") == "false"
            assert page.locator("#status").inner_text() == ""
            assert browser.errors == []
            page.click("#stop")
            assert page.locator("#mic").is_disabled()
        finally:
            browser.close()


def test_a_refused_microphone_is_said_and_the_session_streams_on(voice_server, question_wav):
    mic_args = [*FAKE_MIC, "--deny-permission-prompts", f"--use-file-for-fake-audio-capture={question_wav}"]
    with playwright_api.sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        browser = Browser(pw, profile, voice_server.url, mic_args)
        try:
            page = browser.page
            browser.start()
            page.wait_for_function(MIC_READY, timeout=10000)
            page.click("#mic")
            page.wait_for_function(
                "document.querySelector('#status').textContent.includes('microphone unavailable')", timeout=15000
            )
            status = page.locator("#status").inner_text()
            assert "NotAllowedError" in status, status
            assert page.locator("#mic").get_attribute("data-on") == "false"
            assert page.locator("#mic").get_attribute("aria-pressed") == "false"
            # The picture keeps coming.
            then = page.evaluate("document.querySelector('#video').currentTime")
            page.wait_for_function(f"document.querySelector('#video').currentTime > {then} + 1", timeout=15000)
            assert not page.locator("#mic").is_disabled()  # the user may allow it and try again
            assert browser.errors == []
        finally:
            browser.close()


def test_the_speech_mode_select_posts_asr_mode_and_the_next_start_asks_for_it(voice_server, question_wav):
    mic_args = [*FAKE_MIC, "--use-fake-ui-for-media-stream", f"--use-file-for-fake-audio-capture={question_wav}"]
    with playwright_api.sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        browser = Browser(pw, profile, voice_server.url, mic_args)
        try:
            page = browser.page
            # Nothing chosen yet: the server picks (chat, since it has an LLM) and the select shows it.
            with page.expect_response(lambda r: r.url.endswith("/offer")) as offered:
                sid = browser.start()
            assert "asr_mode" not in offered.value.request.post_data_json
            assert offered.value.json()["asr"] == {"engine": "whisper", "mode": "chat", "barge_in": True}
            page.wait_for_function(MIC_READY, timeout=10000)
            assert page.locator("#asr-mode").input_value() == "chat"
            with page.expect_response(lambda r: r.url.endswith("/asr_mode")) as answered:
                page.select_option("#asr-mode", "echo")
            assert answered.value.request.post_data_json == {"sessionid": sid, "mode": "echo"}
            reply = answered.value.json()
            assert reply == {"code": 0, "msg": "ok", "data": {"mode": "echo"}}, reply
            assert session_mode(voice_server, sid) == "echo"
            # The choice holds for the next session of the page.
            page.click("#stop")
            with page.expect_response(lambda r: r.url.endswith("/offer")) as offered:
                sid = browser.start()
            assert offered.value.request.post_data_json["asr_mode"] == "echo"
            assert offered.value.json()["asr"]["mode"] == "echo"
            assert session_mode(voice_server, sid) == "echo"
            assert page.locator("#asr-mode").input_value() == "echo"
            assert page.locator("#status").inner_text() == ""
            # Stop closes the peer and DELETEs the session at once: whichever the server sees
            # second finds it gone and answers 404, which the browser logs; nothing else may fail.
            assert [e for e in browser.errors if "status of 404" not in e] == []
        finally:
            browser.close()


def test_a_server_without_speech_input_leaves_the_mic_controls_off(question_wav):
    srv = RunningServer(["--max_session", "2", "--asr", "off"])
    mic_args = [*FAKE_MIC, "--use-fake-ui-for-media-stream", f"--use-file-for-fake-audio-capture={question_wav}"]
    try:
        with playwright_api.sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
            browser = Browser(pw, profile, srv.url, mic_args)
            try:
                page = browser.page
                with page.expect_response(lambda r: r.url.endswith("/offer")) as offered:
                    browser.start()
                assert offered.value.json()["asr"] is None
                for control in ("#mic", "#hands-free", "#asr-mode"):
                    assert page.locator(control).is_disabled(), control
                    assert "no speech input" in page.locator(control).get_attribute("title"), control
                assert page.locator("#say").is_enabled()  # the rest of the page works as before
                assert browser.errors == []
            finally:
                browser.close()
    finally:
        srv.stop()
