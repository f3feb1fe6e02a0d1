"""The demo page in a real headless Chromium: Start, Say, the video plays, the badge and the event log
follow the session's /sse events, and the chat box reports a server without an LLM."""

from __future__ import annotations

import shutil
import tempfile

import pytest

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (./setup.sh --dev)")

# The closed network of this machine: no background connections, no QUIC, no first-run work.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]


def test_page_starts_a_session_and_the_avatar_speaks(server):
    with playwright_api.sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        browser = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page()
            page.goto(server.url + "/")
            assert page.locator("#sessionid").inner_text() == "none"
            page.click("#start")
            # The session id appears and the video starts playing frames from the server.
            page.wait_for_function("document.querySelector('#sessionid').textContent !== 'none'", timeout=20000)
            sessionid = int(page.locator("#sessionid").inner_text())
            assert sessionid in server.live.sessions
            page.wait_for_function(
                "(() => { const v = document.querySelector('#video');"
                " return v.videoWidth === 512 && v.currentTime > 0.5; })()",
                timeout=20000,
            )
            assert page.locator("#speaking").inner_text() == "idle"
            page.fill("#text", "Hello, how are you?")
            page.click("#say")
            page.wait_for_function("document.querySelector('#speaking').dataset.speaking === 'true'", timeout=15000)
            # Until every piece has been said and the avatar is idle again (on a busy machine the
            # TTS can leave a pause between the two sentences, idle for a moment).
            page.wait_for_function(
                "[...document.querySelectorAll('#transcript .piece.said')].map((e) => e.textContent)"
                ".join(' ').split(/\\s+/).filter(Boolean).length === 4"
                " && document.querySelector('#speaking').dataset.speaking === 'false'",
                timeout=30000,
            )
            assert page.locator("#status").inner_text() == ""
            # The badge follows /sse; the conversation shows the spoken pieces, none still highlighted.
            spoken = " ".join(page.locator("#transcript .piece.said").all_inner_texts())
            assert spoken.split() == ["Hello,", "how", "are", "you?"], spoken
            assert page.locator("#transcript .piece.now").count() == 0
            log = page.locator("#event-log").inner_text()
            assert "start" in log and "end" in log and '"turn":1' in log, log
            # This server has no LLM: the chat box says which flag turns it on.
            page.fill("#question", "What is the capital of France?")
            page.click("#ask")
            page.wait_for_function("document.querySelector('#status').textContent.includes('--llm_url')", timeout=5000)
            page.click("#stop")
            assert page.locator("#sessionid").inner_text() == "none"
        finally:
            browser.close()


def test_a_page_on_a_server_with_an_api_token_asks_for_it_once_and_keeps_it_in_the_tab():
    from conftest import RunningServer

    srv = RunningServer(["--max_session", "2", "--api_token", "page-token"])
    asked: list[str] = []
    try:
        with playwright_api.sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
            browser = pw.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            try:
                page = browser.new_page()

                def answer(dialog) -> None:
                    asked.append(dialog.message)
                    dialog.accept("page-token")

                page.on("dialog", answer)
                page.goto(srv.url + "/")
                page.click("#start")
                page.wait_for_function("document.querySelector('#sessionid').textContent !== 'none'", timeout=20000)
                page.fill("#text", "The token works.")
                page.click("#say")
                # The event stream carries the token too: the spoken piece reaches the page.
                page.wait_for_function(
                    "[...document.querySelectorAll('#transcript .piece.said')]"
                    ".some(s => s.textContent.includes('works'))",
                    timeout=20000,
                )
                assert page.evaluate("sessionStorage.getItem('livetalking-api-token')") == "page-token"
                page.click("#stop")
            finally:
                browser.close()
    finally:
        srv.stop()
    assert asked == ["This server needs its API token:"]  # asked once, for the first call only
