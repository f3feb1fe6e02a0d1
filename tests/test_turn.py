"""A browser behind NAT connects through TURN: a real coturn on loopback, the real server told about
it with --ice_servers, and headless Chromium opening the page with ?relay=1 (relay-only ICE), so
the session's media can only reach the page through the relay. A wrong TURN password makes the
page say why it cannot connect; GET /ice_servers gives the page what the flags configured, and
flags no peer could use stop app.py at start."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from conftest import ROOT, RunningServer
from turnserver import TurnServer

try:  # the page's tests launch Chromium the same way; without playwright only the flag tests run here
    from test_page import CHROMIUM, CHROMIUM_ARGS, playwright_api
except pytest.skip.Exception:
    CHROMIUM, CHROMIUM_ARGS, playwright_api = None, [], None
browser_needed = pytest.mark.skipif(CHROMIUM is None or playwright_api is None,
                                    reason="playwright or Debian's chromium is not installed (./setup.sh --dev)")

MIN_FPS = 15  # the session plays 25; a loaded 2-core machine decodes fewer, a stalled relay none
MEASURE_MS = 3000

# The page's peer (window.livetalkingPeer): the local candidate of its selected candidate pair.
SELECTED_LOCAL_CANDIDATE = """async () => {
  const stats = await window.livetalkingPeer.getStats();
  let pair = null;
  stats.forEach((s) => {
    if (s.type === "transport" && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
  });
  if (!pair) {
    stats.forEach((s) => { if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s; });
  }
  if (!pair) return null;
  const local = stats.get(pair.localCandidateId);
  const remote = stats.get(pair.remoteCandidateId);
  return { local: { type: local.candidateType, address: local.address, port: local.port,
                    relayProtocol: local.relayProtocol, url: local.url },
           remote: { type: remote.candidateType, address: remote.address },
           bytesReceived: pair.bytesReceived };
}"""

# Frames the video element presented over MEASURE_MS, and the time it took, in the page's clock.
FRAME_RATE = """async (ms) => {
  const v = document.querySelector("#video");
  const q0 = v.getVideoPlaybackQuality(), t0 = performance.now();
  await new Promise((r) => setTimeout(r, ms));
  const q1 = v.getVideoPlaybackQuality(), t1 = performance.now();
  return { frames: q1.totalVideoFrames - q0.totalVideoFrames,
           dropped: q1.droppedVideoFrames - q0.droppedVideoFrames, seconds: (t1 - t0) / 1000 };
}"""


@contextmanager
def page_of(url: str) -> Iterator:
    with playwright_api.sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        browser = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page()
            page.goto(url)
            yield page
        finally:
            browser.close()


@contextmanager
def server_with(ice_servers: list[dict], *flags: str) -> Iterator[RunningServer]:
    srv = RunningServer(["--max_session", "2", "--ice_servers", json.dumps(ice_servers), *flags])
    try:
        yield srv
    finally:
        srv.stop()


@browser_needed
def test_a_relay_only_page_plays_the_session_through_the_turn_server():
    with TurnServer() as turn, server_with(turn.ice_servers()) as srv, page_of(srv.url + "/?relay=1") as page:
        page.click("#start")
        page.wait_for_function("document.querySelector('#sessionid').textContent !== 'none'", timeout=30000)
        assert int(page.locator("#sessionid").inner_text()) in srv.live.sessions
        page.wait_for_function(
            "(() => { const v = document.querySelector('#video');"
            " return v.videoWidth > 0 && v.currentTime > 0.5; })()",
            timeout=30000,
        )
        # Relay-only: the browser's end of the pair that carries the media is coturn's relay.
        # Its stats are refreshed now and then: on a busy machine the pair just selected may
        # still say 0 bytes while the video already plays, so they are read until they count.
        deadline = time.monotonic() + 10
        selected = page.evaluate(SELECTED_LOCAL_CANDIDATE)
        while selected is not None and selected["bytesReceived"] == 0 and time.monotonic() < deadline:
            page.wait_for_timeout(200)
            selected = page.evaluate(SELECTED_LOCAL_CANDIDATE)
        assert selected is not None, "the page's peer has no selected candidate pair"
        assert selected["local"]["type"] == "relay", selected
        assert selected["local"]["address"] == "127.0.0.1", selected
        assert selected["bytesReceived"] > 0, selected
        # ... and the session plays at about its 25 frames a second across it.
        rate = page.evaluate(FRAME_RATE, MEASURE_MS)
        assert rate["frames"] >= MIN_FPS * rate["seconds"], rate
        assert page.locator("#status").inner_text() == ""
        # coturn allocated a relay for the page (and, with the same flags, for the server's peer).
        assert "ALLOCATE processed, success" in turn.log(), turn.log()[-3000:]
        page.click("#stop")
        assert page.locator("#sessionid").inner_text() == "none"
        assert page.evaluate("window.livetalkingPeer") is None


@browser_needed
def test_a_wrong_turn_password_makes_the_relay_only_page_say_it_cannot_connect():
    with (TurnServer() as turn, server_with(turn.ice_servers(password="wrong")) as srv,
          page_of(srv.url + "/?relay=1") as page):
        page.click("#start")
        page.wait_for_function("document.querySelector('#status').textContent !== ''", timeout=30000)
        status = page.locator("#status").inner_text()
        assert status.startswith("could not start: relay-only (?relay=1) but no TURN relay address"), status
        assert "401" in status, status  # coturn's answer to the wrong password, as the browser heard it
        # Nothing half-open: no session on the server, and the page can try again.
        assert page.locator("#sessionid").inner_text() == "none"
        assert page.locator("#start").is_enabled()
        assert not srv.live.sessions
        assert "401" in turn.log(), turn.log()[-3000:]


@browser_needed
def test_a_relay_that_refuses_every_peer_makes_the_relay_only_page_say_the_connection_failed():
    # The page gets its relay address, but coturn forbids relaying to any peer (403): every
    # candidate pair fails, and the page says so once the browser gives up.
    with (TurnServer(extra=("--denied-peer-ip", "0.0.0.0-255.255.255.255")) as turn,
          server_with(turn.ice_servers()) as srv, page_of(srv.url + "/?relay=1") as page):
        page.click("#start")
        page.wait_for_function("document.querySelector('#status').textContent !== ''", timeout=45000)
        status = page.locator("#status").inner_text()
        assert status.startswith("the connection failed: no network path to the server worked through the TURN"), status
        assert page.locator("#sessionid").inner_text() == "none"
        assert page.locator("#start").is_enabled()
        assert page.evaluate("window.livetalkingPeer") is None
        assert "403" in turn.log(), turn.log()[-3000:]


@browser_needed
def test_a_page_whose_ice_servers_call_fails_connects_without_them_and_says_so(server):
    with page_of(server.url + "/") as page:
        page.route("**/ice_servers", lambda route: route.fulfill(status=500, body="boom"))
        page.click("#start")
        page.wait_for_function(
            "(() => { const v = document.querySelector('#video');"
            " return document.querySelector('#sessionid').textContent !== 'none' && v.currentTime > 0.5; })()",
            timeout=30000,
        )
        status = page.locator("#status").inner_text()
        assert "GET /ice_servers failed" in status and "connecting without them" in status, status
        page.click("#stop")


def get_json(url: str, token: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_get_ice_servers_answers_what_the_flags_configured():
    configured = [{"urls": ["turn:127.0.0.1:3478", "turn:127.0.0.1:3478?transport=tcp"],
                   "username": "u", "credential": "p"}]
    srv = RunningServer(["--stun", "stun:127.0.0.1:3478", "--ice_servers", json.dumps(configured),
                         "--api_token", "ice-token"])
    try:
        status, _ = get_json(srv.url + "/ice_servers")
        assert status == 401  # an API path: the servers' credentials need the token
        status, reply = get_json(srv.url + "/ice_servers", token="ice-token")
        assert status == 200 and reply["code"] == 0, reply
        assert reply["data"]["iceServers"] == [{"urls": ["stun:127.0.0.1:3478"]}, *configured]
    finally:
        srv.stop()


def test_get_ice_servers_without_flags_is_an_empty_list(server):
    status, reply = get_json(server.url + "/ice_servers")
    assert status == 200 and reply == {"code": 0, "msg": "ok", "data": {"iceServers": []}}


@pytest.mark.parametrize(("flags", "message"), [
    (["--ice_servers", "[{urls: turn:x}]"], "--ice_servers is not JSON"),
    (["--ice_servers", '{"urls": ["turn:x"]}'], "--ice_servers must be a JSON list"),
    (["--ice_servers", '[{"urls": ["http://turn.example.com"]}]'], "must be stun:, turn: or turns: URLs"),
    (["--ice_servers", '[{"urls": ["turn:"], "username": "u", "credential": "p"}]'], "is not a STUN/TURN URL"),
    (["--ice_servers", '[{"urls": ["turn:127.0.0.1:3478"]}]'], "needs a username and a credential"),
    (["--ice_servers", '[{"urls": "stun:x", "password": "p"}]'], "unknown keys ['password']"),
    (["--stun", "stun.l.google.com:19302"], "--stun: 'stun.l.google.com:19302' is not a STUN/TURN URL"),
])
def test_ice_server_flags_no_peer_could_use_stop_app_py_with_the_reason(flags, message):
    done = subprocess.run([sys.executable, str(ROOT / "app.py"), *flags], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert message in done.stderr, done.stderr[-2000:]
