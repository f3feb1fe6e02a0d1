"""End to end: a real server on loopback streams to a real aiortc peer over RTP."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import numpy as np
import soundfile as sf

from livepeer import LivePeer
from portrait_geometry import mouth_change as crop_change
from portrait_geometry import sway_box
from waiting import post_json, wait_until

SPEECH_RMS = 0.02  # louder than this in 20 ms is speech
SILENT_RMS = 0.002  # quieter than this is silence (opus leaves a little noise)


def run(coro):
    return asyncio.run(coro)


def mouth_change(peer: LivePeer, samples, rest: np.ndarray) -> np.ndarray:
    """How far each frame's mouth is from the rest pose (head sway compensated)."""
    return np.array([crop_change(s.mouth, rest) for s in samples])


async def connected_peer(server, http: aiohttp.ClientSession) -> LivePeer:
    peer = LivePeer(server.url, sway_box())
    await peer.connect(http)
    await peer.wait_for_media()
    return peer


async def post(http: aiohttp.ClientSession, url: str, body: dict) -> dict:
    status, reply = await post_json(http, url, body)
    assert status == 200, reply
    return reply


def test_video_at_25fps_and_audio_at_50_packets_per_second(server):
    async def scenario():
        async with aiohttp.ClientSession() as http:
            peer = await connected_peer(server, http)
            start = time.monotonic()
            await asyncio.sleep(3.0)
            video, audio = peer.video_since(start), peer.audio_since(start)
            await peer.close()
        # The RTP clocks say 40 ms per frame and 20 ms per audio packet...
        assert np.median(np.diff([v.pts for v in video])) == 90000 // 25
        assert np.median(np.diff([a.pts for a in audio])) == audio[0].samples
        # ...and the frames really arrive at that rate.
        fps = (len(video) - 1) / (video[-1].arrival - video[0].arrival)
        pps = (len(audio) - 1) / (audio[-1].arrival - audio[0].arrival)
        assert 22 <= fps <= 28, fps
        assert 45 <= pps <= 55, pps
        assert video[-1].size == (512, 512)
        # Idle: silence, but the avatar is alive (blinks, slight motion), not a frozen picture.
        assert max(a.rms for a in audio) < SILENT_RMS

    run(scenario())


def test_echo_speaks_with_moving_lips_then_returns_to_idle(server):
    async def scenario():
        async with aiohttp.ClientSession() as http:
            peer = await connected_peer(server, http)
            await asyncio.sleep(0.5)
            rest = peer.video[-1].mouth
            idle_change = mouth_change(peer, peer.video[-10:], rest).max()
            sent = time.monotonic()
            body = {"sessionid": peer.sessionid, "text": "Hello, how are you?", "type": "echo"}
            await post(http, f"{server.url}/human", body)

            speaking_seen = []

            async def poll_speaking():
                reply = await post(http, f"{server.url}/is_speaking", {"sessionid": peer.sessionid})
                speaking_seen.append(reply["data"])

            heard = await wait_until(lambda: any(a.rms > SPEECH_RMS for a in peer.audio_since(sent)), 10)
            assert heard, "no speech audio arrived after /human"
            await poll_speaking()
            # Speech lasts about 1.5 s; wait for a second of silence after it.
            def quiet_again():
                after = [a for a in peer.audio_since(sent)]
                last_loud = max((a.arrival for a in after if a.rms > SPEECH_RMS), default=sent)
                return time.monotonic() - last_loud > 1.0
            assert await wait_until(quiet_again, 15)
            await poll_speaking()
            during = [v for v in peer.video_since(sent)]
            changes = mouth_change(peer, during, rest)
            tail = mouth_change(peer, peer.video[-8:], rest)
            await peer.close()
        assert speaking_seen == [True, False]
        # Lips move while the voice plays: far more than the idle motion...
        assert changes.max() > max(3 * idle_change, 6.0), (changes.max(), idle_change)
        assert (changes > max(2 * idle_change, 4.0)).sum() >= 5
        # ...and come back to the rest pose afterwards.
        assert tail.max() < max(2 * idle_change, 4.0), (tail.max(), idle_change)

    run(scenario())


def test_interrupt_silences_the_avatar(server):
    long_text = " ".join(["This is a long answer that keeps going so that we can interrupt it."] * 6)

    async def scenario():
        async with aiohttp.ClientSession() as http:
            peer = await connected_peer(server, http)
            sent = time.monotonic()
            await post(http, f"{server.url}/human", {"sessionid": peer.sessionid, "text": long_text})
            assert await wait_until(lambda: any(a.rms > SPEECH_RMS for a in peer.audio_since(sent)), 10)
            await asyncio.sleep(0.5)
            await post(http, f"{server.url}/interrupt_talk", {"sessionid": peer.sessionid})
            interrupted = time.monotonic()
            await asyncio.sleep(2.5)
            after = [a for a in peer.audio_since(interrupted + 0.5)]
            reply = await post(http, f"{server.url}/is_speaking", {"sessionid": peer.sessionid})
            # A new sentence after the interrupt plays normally.
            again = time.monotonic()
            await post(http, f"{server.url}/human", {"sessionid": peer.sessionid, "text": "Yes?"})
            spoke_again = await wait_until(lambda: any(a.rms > SPEECH_RMS for a in peer.audio_since(again)), 10)
            await peer.close()
        assert len(after) > 80
        assert max(a.rms for a in after) < SILENT_RMS, "audio kept playing after the interrupt"
        assert reply["data"] is False
        assert spoke_again

    run(scenario())


def test_uploaded_audio_plays(server):
    voice = server.live.tts_engine
    pieces = [audio for audio, _ in voice.synthesize("Testing the audio upload.")]
    rate = next(iter(voice.synthesize("a")))[1]
    buf = io.BytesIO()
    sf.write(buf, np.concatenate(pieces), rate, format="WAV")

    async def scenario():
        async with aiohttp.ClientSession() as http:
            peer = await connected_peer(server, http)
            form = aiohttp.FormData()
            form.add_field("sessionid", str(peer.sessionid))
            form.add_field("file", buf.getvalue(), filename="speech.wav", content_type="audio/wav")
            sent = time.monotonic()
            async with http.post(f"{server.url}/humanaudio", data=form) as resp:
                assert resp.status == 200, await resp.text()
            heard = await wait_until(lambda: any(a.rms > SPEECH_RMS for a in peer.audio_since(sent)), 10)
            await peer.close()
        assert heard

    run(scenario())


def session_threads(sessionid: int) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.endswith(f"-{sessionid}") or f"-{sessionid}-" in t.name]


def test_closing_the_peer_stops_the_session(server):
    async def scenario():
        async with aiohttp.ClientSession() as http:
            peer = await connected_peer(server, http)
            sid = peer.sessionid
            await post(http, f"{server.url}/human", {"sessionid": sid, "text": "Goodbye, and thanks for all the fish."})
            await asyncio.sleep(0.3)
            assert sid in server.live.sessions
            assert len(session_threads(sid)) >= 2  # render and TTS worker
            await peer.close()
            gone = await wait_until(lambda: sid not in server.live.sessions and not session_threads(sid), 10)
            return sid, gone

    sid, gone = run(scenario())
    assert gone, f"session {sid} left behind: {[t.name for t in session_threads(sid)]}"


def test_a_peer_that_vanishes_is_dropped_before_ice_consent_expires(server):
    # A client killed outright sends nothing more, no close and no RTCP. ICE consent would
    # notice after 25-35 s; the server's watch on RTCP reports drops the session sooner.
    tests_dir = Path(__file__).parent
    client = subprocess.Popen(
        [sys.executable, str(tests_dir / "vanishing_peer.py"), server.url],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tests_dir)},
    )
    try:
        sid = int(client.stdout.readline())
        alive_while_connected = sid in server.live.sessions and bool(session_threads(sid))
    finally:
        client.kill()
        client.wait()
        client.stdout.close()

    async def dropped() -> bool:
        return await wait_until(lambda: sid not in server.live.sessions and not session_threads(sid), 20)

    assert alive_while_connected
    assert run(dropped()), f"session {sid} of a vanished peer is still open"
