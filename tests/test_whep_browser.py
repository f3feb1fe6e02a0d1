"""A WHEP viewer in real headless Chromium: the browser's own WebRTC stack watches a session
through POST /whep and leaves with DELETE on the Location."""

from __future__ import annotations

import asyncio
import tempfile

import aiohttp
import pytest

from test_outputs import end_session, open_background
from test_page import CHROMIUM, CHROMIUM_ARGS

playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (./setup.sh --dev)")

WATCH = """async (sid) => {
  const pc = new RTCPeerConnection();
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.addTransceiver("audio", { direction: "recvonly" });
  const video = document.createElement("video");
  video.muted = true; video.autoplay = true; video.playsInline = true;
  document.body.appendChild(video);
  pc.ontrack = (ev) => { video.srcObject = ev.streams[0] || new MediaStream([ev.track]); };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((done) => {
    if (pc.iceGatheringState === "complete") return done();
    pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && done());
  });
  const res = await fetch(`/whep?sessionid=${sid}`, {
    method: "POST", headers: { "Content-Type": "application/sdp" }, body: pc.localDescription.sdp });
  if (res.status !== 201) throw new Error(`WHEP answered ${res.status}: ${await res.text()}`);
  window.whep = { pc, video, location: res.headers.get("Location") };
  await pc.setRemoteDescription({ type: "answer", sdp: await res.text() });
  return res.headers.get("Content-Type");
}"""

FRAMES = "() => window.whep.video.getVideoPlaybackQuality().totalVideoFrames"


def test_chromium_watches_a_session_over_whep(server):
    async def opened() -> int:
        async with aiohttp.ClientSession() as http:
            return await open_background(http, server.url)

    sid = asyncio.run(opened())
    try:
        with playwright_api.sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
            browser = pw.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            try:
                page = browser.new_page()
                page.goto(server.url + "/")
                assert page.evaluate(WATCH, sid).startswith("application/sdp")
                page.wait_for_function("window.whep.video.videoWidth === 512 && window.whep.video.currentTime > 1",
                                       timeout=20000)
                before = page.evaluate(FRAMES)
                page.wait_for_timeout(2000)
                fps = (page.evaluate(FRAMES) - before) / 2.0
                assert fps >= 15, fps  # about 25 on an idle machine; this one may be loaded
                status = page.evaluate("async () => (await fetch(window.whep.location, { method: 'DELETE' })).status")
                assert status == 200
                assert not [o for o in server.live.outputs[sid].states() if o["kind"] == "whep"]
            finally:
                browser.close()
    finally:
        async def close() -> None:
            async with aiohttp.ClientSession() as http:
                await end_session(http, server.url, sid)

        asyncio.run(close())
