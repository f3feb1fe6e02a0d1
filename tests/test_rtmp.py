"""RTMP push against a real nginx-rtmp, read back with PyAV as a viewer would."""

from __future__ import annotations

import asyncio
import threading

import aiohttp
import av
import pytest

from appprocess import AppProcess
from avreader import BackgroundReader, Decoded
from nginx_rtmp import NginxRtmp, require_nginx_rtmp
from portrait_geometry import mouth_change
from sseclient import SseClient
from waiting import post_json, wait_until

SPEECH_RMS = 0.02
SENTENCE = "Hello, how are you? I am streaming live to you."

pytestmark = pytest.mark.usefixtures("nginx_available")


@pytest.fixture
def nginx_available() -> None:
    require_nginx_rtmp()


def run(coro):
    return asyncio.run(coro)


async def session_outputs(http: aiohttp.ClientSession, url: str) -> list[dict]:
    async with http.get(url + "/stats") as resp:
        sessions = (await resp.json())["data"]["sessions"]
    return [o for s in sessions for o in s["outputs"]]


async def running(http: aiohttp.ClientSession, url: str, kind: str = "rtmp") -> bool:
    return any(o["kind"] == kind and o["state"] == "running" for o in await session_outputs(http, url))


async def wait_running(http: aiohttp.ClientSession, url: str, timeout: float = 30.0) -> None:
    loop_deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < loop_deadline:
        if await running(http, url):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the push never ran: {await session_outputs(http, url)}")


def lip_sync_offset(stream: Decoded, spoke_at: float) -> float:
    """Seconds from the first loud sound after `spoke_at` to the first picture whose mouth
    has left the rest pose (stream time: what a viewer sees against what they hear)."""
    rest = [crop for t, crop in stream.video if t < spoke_at][-1]
    idle = max(mouth_change(crop, rest) for t, crop in stream.video if spoke_at - 1.0 < t < spoke_at)
    heard = stream.first_loud(SPEECH_RMS, spoke_at)
    assert heard is not None, "the speech never reached the stream"
    moved = next(t for t, crop in stream.video if t > spoke_at and mouth_change(crop, rest) > max(3 * idle, 6.0))
    return moved - heard


def test_transport_rtmp_streams_the_avatar_to_nginx_with_speech_in_sync():
    """`--transport rtmp --push_url` as upstream: a background session pushes at start-up; a
    viewer reading the stream gets 25 fps H.264 + AAC, and `/human` on session 0 (upstream's
    alias of the background session) is heard, with moving lips, in sync."""
    with NginxRtmp() as rtmp:
        srv = AppProcess(["--transport", "rtmp", "--push_url", rtmp.url("avatar"), "--capacity", "4"])

        async def scenario() -> tuple[Decoded, float]:
            async with aiohttp.ClientSession() as http:
                await srv.wait_ready(http)
                await wait_running(http, srv.url)
                reader = BackgroundReader(rtmp.url("avatar"))
                assert await wait_until(lambda: len(reader.result.video) > 50, 20), "no picture from the stream"
                status, reply = await post_json(http, srv.url + "/human", {"sessionid": 0, "text": SENTENCE})
                assert status == 200, reply
                await asyncio.sleep(6.0)
                stream = await asyncio.get_running_loop().run_in_executor(None, reader.stop)
                return stream, stream.video[-1][0] - 6.0

        try:
            stream, spoke_at = run(scenario())
            log = srv.log()
        finally:
            srv.stop()
    assert stream.video_codec == "h264" and stream.audio_codec == "aac", (stream.video_codec, stream.audio_codec)
    assert stream.size == (512, 512)
    assert 24 <= stream.fps() <= 26, stream.fps()
    # The sound is continuous (no gaps) and covers the whole picture.
    first, last = stream.audio[0], stream.audio[-1]
    assert abs(stream.audio_seconds() - (last[0] + last[1] - first[0])) < 0.1, stream.audio_seconds()
    assert first[0] <= stream.video[0][0] + 0.1 and last[0] >= stream.video[-1][0] - 0.3
    # Speech after /human is heard and the lips follow it within 80 ms (2 frames).
    offset = lip_sync_offset(stream, spoke_at - 1.0)
    assert abs(offset) <= 0.08, offset
    assert "streams to rtmp" in log and "rtmp://127.0.0.1" in log
    assert "/live/avatar" not in log  # the stream key stays out of the log


def test_a_push_reconnects_when_the_server_drops_it_and_the_session_plays_on(server):
    """nginx restarts under a live push: the output says so on /sse, reconnects with back-off,
    and the stream is readable again, while the session never stops."""
    with NginxRtmp() as rtmp:

        async def scenario() -> list[dict]:
            async with aiohttp.ClientSession() as http:
                status, opened = await post_json(http, server.url + "/session", {})
                assert status == 200, opened
                sid = opened["sessionid"]
                events = SseClient(f"{server.url}/sse?sessionid={sid}")
                await events.connect(http)
                status, reply = await post_json(http, server.url + "/push", {"sessionid": sid, "url": rtmp.url()})
                assert status == 200 and reply["data"]["type"] == "rtmp", reply
                await events.wait_for(lambda e: e.get("state") == "running", 20)
                rtmp.stop()  # the server goes away under the push
                await events.wait_for(lambda e: e.get("state") == "reconnecting", 20)
                status, reply = await post_json(http, server.url + "/is_speaking", {"sessionid": sid})
                assert status == 200, reply  # the session lives on
                rtmp.start()
                assert await wait_until(lambda: len([e for e in events.events if e.get("state") == "running"]) >= 2,
                                        40), events.events
                reader = BackgroundReader(rtmp.url())
                back = await wait_until(lambda: len(reader.result.video) > 25 and reader.result.audio, 20)
                await asyncio.get_running_loop().run_in_executor(None, reader.stop)
                assert back, ("the stream did not come back", events.events)
                async with http.delete(f"{server.url}/session/{sid}") as resp:
                    assert resp.status == 200
                await events.close()
                return events.of("output")

        outputs = run(scenario())
    reconnecting = [e for e in outputs if e["state"] == "reconnecting"]
    assert reconnecting and "next try in" in reconnecting[0]["detail"], reconnecting


def test_a_stopped_push_lets_go_of_the_stream_and_a_late_viewer_gets_a_keyframe_within_a_second(server):
    """DELETE /push leaves no thread or connection: nginx lets a new push publish the same
    stream name at once (it refuses a second publisher while the first is connected). A viewer
    joining late waits at most a second for a picture: every 25th frame is a keyframe."""
    with NginxRtmp() as rtmp:

        async def scenario() -> list[int]:
            async with aiohttp.ClientSession() as http:
                status, opened = await post_json(http, server.url + "/session", {})
                sid = opened["sessionid"]
                for _ in range(2):
                    status, reply = await post_json(http, server.url + "/push", {"sessionid": sid, "url": rtmp.url()})
                    assert status == 200, reply
                    await wait_running(http, server.url)
                    status, reply = await post_json(http, server.url + "/push", {"sessionid": sid, "url": rtmp.url()})
                    assert status == 409, reply  # one push at a time
                    async with http.delete(f"{server.url}/push?sessionid={sid}") as resp:
                        assert resp.status == 200, await resp.text()
                    assert not [t for t in threading.enumerate() if t.name == f"rtmp-{sid}"]
                status, reply = await post_json(http, server.url + "/push", {"sessionid": sid, "url": rtmp.url()})
                assert status == 200, reply
                await wait_running(http, server.url)
                keyframes = await asyncio.get_running_loop().run_in_executor(None, keyframe_gaps, rtmp.url())
                async with http.delete(f"{server.url}/session/{sid}") as resp:
                    assert resp.status == 200
                return keyframes

        gaps = run(scenario())
    assert gaps and max(gaps) <= 25, gaps


def keyframe_gaps(url: str, packets: int = 120) -> list[int]:
    """Video frames between keyframes in the first `packets` video packets of a live stream."""
    gaps, since = [], None
    with av.open(url, timeout=(10, 10)) as container:
        for n, packet in enumerate(container.demux(container.streams.video[0])):
            if packet.size == 0:
                continue
            if packet.is_keyframe:
                if since is not None:
                    gaps.append(since)
                since = 0
            elif since is not None:
                since += 1
            if n >= packets:
                break
    return gaps


def test_push_refuses_what_it_cannot_push(server):
    async def scenario() -> list[tuple[int, str]]:
        async with aiohttp.ClientSession() as http:
            status, opened = await post_json(http, server.url + "/session", {})
            sid = opened["sessionid"]
            answers = []
            for url in ("ftp://host/x", "rtmp://", "file:///etc/passwd", 5):
                status, reply = await post_json(http, server.url + "/push", {"sessionid": sid, "url": url})
                answers.append((status, reply["msg"]))
            async with http.delete(f"{server.url}/push?sessionid={sid}") as resp:
                answers.append((resp.status, (await resp.json())["msg"]))
            async with http.delete(f"{server.url}/session/{sid}") as resp:
                assert resp.status == 200
            return answers

    answers = run(scenario())
    assert [s for s, _ in answers] == [400, 400, 400, 400, 409], answers
    assert "rtmp://" in answers[0][1] and "not pushing" in answers[-1][1]
    assert all(m for _, m in answers)
