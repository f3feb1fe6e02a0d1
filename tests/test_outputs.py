"""One session, many outputs: background sessions, recording, WHEP viewers, and what a slow
or failed output may not do to the others."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import aiohttp
import pytest
from aiortc import RTCPeerConnection

from appprocess import AppProcess
from avreader import decode
from livepeer import LivePeer
from portrait_geometry import sway_box
from sseclient import SseClient
from test_rtmp import SPEECH_RMS, lip_sync_offset
from test_streaming import connected_peer
from waiting import post_json, wait_until


def run(coro):
    return asyncio.run(coro)


async def open_background(http: aiohttp.ClientSession, url: str, body: dict | None = None) -> int:
    status, reply = await post_json(http, url + "/session", body or {})
    assert status == 200, reply
    assert reply["data"]["sessionid"] == reply["sessionid"]
    return reply["sessionid"]


async def end_session(http: aiohttp.ClientSession, url: str, sid: int) -> None:
    async with http.delete(f"{url}/session/{sid}") as resp:
        assert resp.status == 200, await resp.text()


async def record(http: aiohttp.ClientSession, url: str, sid: int, kind: str) -> tuple[int, dict]:
    return await post_json(http, url + "/record", {"sessionid": sid, "type": kind})


def test_a_recording_has_the_speech_in_sync_and_a_download_never_sees_a_half_written_file(server, tmp_path):
    async def scenario():
        async with aiohttp.ClientSession() as http:
            sid = await open_background(http, server.url)
            async with http.get(f"{server.url}/record/{sid}") as resp:
                assert resp.status == 404  # nothing recorded yet
            status, reply = await record(http, server.url, sid, "end_record")
            assert status == 409 and "not recording" in reply["msg"], reply
            started = time.monotonic()
            status, reply = await record(http, server.url, sid, "start_record")
            assert status == 200, reply
            status, reply = await record(http, server.url, sid, "start_record")
            assert status == 409 and "already recording" in reply["msg"], reply
            await asyncio.sleep(2.0)
            async with http.get(f"{server.url}/record/{sid}") as resp:
                assert resp.status == 404  # the file being written is not served
            status, reply = await post_json(http, server.url + "/human",
                                            {"sessionid": sid, "text": "Hello, how are you? I am recorded."})
            assert status == 200, reply
            await asyncio.sleep(3.5)
            status, reply = await post_json(http, server.url + "/interrupt_talk", {"sessionid": sid})
            assert status == 200, reply
            await asyncio.sleep(1.5)
            status, reply = await record(http, server.url, sid, "end_record")
            elapsed = time.monotonic() - started
            assert status == 200 and reply["data"]["url"] == f"/record/{sid}", reply
            async with http.get(f"{server.url}/record/{sid}") as resp:
                assert resp.status == 200 and resp.headers["Content-Type"] == "video/mp4"
                (tmp_path / "first.mp4").write_bytes(await resp.read())
            # A second recording: while it is written, the first one is what a download gets.
            status, reply = await record(http, server.url, sid, "start_record")
            assert status == 200, reply
            await asyncio.sleep(1.0)
            async with http.get(f"{server.url}/record/{sid}") as resp:
                assert resp.status == 200
                (tmp_path / "during.mp4").write_bytes(await resp.read())
            await end_session(http, server.url, sid)  # closing the session finishes its recording
            async with http.get(f"{server.url}/record/{sid}") as resp:
                assert resp.status == 200
                (tmp_path / "second.mp4").write_bytes(await resp.read())
            assert not [t for t in threading.enumerate() if t.name == f"record-{sid}"]
            status, reply = await record(http, server.url, sid, "start_record")
            assert status == 404, reply
            return elapsed

    elapsed = run(scenario())
    first = decode(str(tmp_path / "first.mp4"))
    assert first.video_codec == "h264" and first.audio_codec == "aac"
    duration = first.video[-1][0] - first.video[0][0] + 0.04
    assert abs(duration - elapsed) < 1.0, (duration, elapsed)
    assert 24 <= first.fps() <= 26, first.fps()
    # The sound is continuous across idle, speech and the interrupt: silent before /human, then
    # the speech, lip-synced, then silent again after the interrupt.
    first_sound, last_sound = first.audio[0], first.audio[-1]
    assert abs(first.audio_seconds() - (last_sound[0] + last_sound[1] - first_sound[0])) < 0.1
    assert max(r for t, _, r in first.audio if t < 1.5) < 0.002
    spoke_at = first.first_loud(SPEECH_RMS)
    assert spoke_at is not None and spoke_at > 1.5, spoke_at
    assert abs(lip_sync_offset(first, spoke_at - 0.3)) <= 0.08
    assert max(r for t, _, r in first.audio if t > first.audio[-1][0] - 0.8) < 0.002
    assert (tmp_path / "during.mp4").read_bytes() == (tmp_path / "first.mp4").read_bytes()
    second = decode(str(tmp_path / "second.mp4"))
    assert len(second.video) > 10 and second.audio


def test_outputs_share_one_clock_and_each_event_fires_once(server):
    """A page's peer, a recording and two WHEP viewers on one session: the session renders
    once, every viewer gets the full rate, and each sentence's start and end reach /sse once."""

    async def scenario():
        async with aiohttp.ClientSession() as http:
            peer = await connected_peer(server, http)
            sid = peer.sessionid
            events = SseClient(f"{server.url}/sse?sessionid={sid}")
            await events.connect(http)
            status, reply = await record(http, server.url, sid, "start_record")
            assert status == 200, reply
            viewers = [LivePeer(server.url, sway_box(), sessionid=sid, whep=True, inspect_video=False)
                       for _ in range(2)]
            for viewer in viewers:
                await viewer.connect(http)
            assert await wait_until(lambda: all(len(v.video) > 10 for v in viewers), 20)
            session = server.live.sessions[sid]
            sent_before, t0 = session.player.frames_sent, time.monotonic()
            counts_before = [len(v.video) for v in viewers] + [len(peer.video)]
            await post_json(http, server.url + "/human", {"sessionid": sid, "text": "One. Two."})
            await events.wait_for(lambda e: e["status"] == "end" and e.get("text") == "Two.", 20)
            await asyncio.sleep(1.0)
            seconds = time.monotonic() - t0
            rendered = (session.player.frames_sent - sent_before) / seconds
            rates = [(n1 - n0) / seconds for n0, n1 in
                     zip(counts_before, [len(v.video) for v in viewers] + [len(peer.video)], strict=True)]
            loud = [any(a.rms > SPEECH_RMS for a in v.audio) for v in viewers]
            for viewer in viewers:
                assert await viewer.leave(http) == 200
                assert await wait_until(viewer.ended, 15)  # the server closed the viewer's peer
                await viewer.close()
            assert await viewers[0].leave(http) == 404  # already gone
            status, reply = await record(http, server.url, sid, "end_record")
            assert status == 200, reply
            await peer.close()
            await events.close()
            return events.of("start", "end"), rendered, rates, loud

    said, rendered, rates, loud = run(scenario())
    assert [(e["status"], e["text"]) for e in said] == [("start", "One."), ("end", "One."),
                                                        ("start", "Two."), ("end", "Two.")], said
    assert 22 <= rendered <= 27, rendered  # one clock: the slots of one session, not one per output
    # Every viewer kept getting pictures (about 25 fps on an idle machine; the three receivers
    # decode in this one test process, on the server's two cores, so under load they get fewer).
    assert all(rate >= 8 for rate in rates), rates
    assert all(loud), loud


@pytest.mark.parametrize("target", ["nobody listening", "a listener that never answers"])
def test_a_push_that_cannot_connect_costs_the_page_nothing(server, target):
    """An RTMP push to a server that is not there, or that takes the connection and never
    answers the handshake, keeps reconnecting; the page's peer still gets every frame and the
    speech, and stopping the session is not held up by the stuck push."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    if target != "nobody listening":
        hole.listen(8)  # accepts (the kernel does) and never reads
    port = hole.getsockname()[1]

    async def scenario():
        async with aiohttp.ClientSession() as http:
            peer = await connected_peer(server, http)
            sid = peer.sessionid
            status, reply = await post_json(http, server.url + "/push",
                                            {"sessionid": sid, "url": f"rtmp://127.0.0.1:{port}/live/x"})
            assert status == 200, reply
            t0 = time.monotonic()
            await post_json(http, server.url + "/human", {"sessionid": sid, "text": "Still here."})
            heard = await wait_until(lambda: any(a.rms > SPEECH_RMS for a in peer.audio_since(t0)), 15)
            await asyncio.sleep(2.0)
            video = peer.video_since(t0)
            fps = (len(video) - 1) / (video[-1].arrival - video[0].arrival)
            outputs = server.live.outputs[sid].states()
            await end_session(http, server.url, sid)
            await peer.close()
            return heard, fps, outputs, sid

    try:
        heard, fps, outputs, sid = run(scenario())
    finally:
        hole.close()
    assert heard
    assert fps >= 15, fps  # 25 on an idle machine: the stuck push takes nothing from the page
    if target == "nobody listening":
        assert outputs[0]["state"] == "reconnecting" and outputs[0]["failures"] >= 1, outputs
    assert not [t for t in threading.enumerate() if t.name in (f"rtmp-{sid}", f"infer-{sid}")]


def test_background_sessions_and_session_0(server):
    async def scenario():
        async with aiohttp.ClientSession() as http:
            answers = {}
            for name, body in {
                "unknown field": {"avatars": "x"},
                "unknown output": {"outputs": ["fax"]},
                "bad outputs": {"outputs": "record"},
                "wrong avatar": {"avatar": "someone_else"},
                "no url": {"outputs": ["rtmp"]},
            }.items():
                status, reply = await post_json(http, server.url + "/session", body)
                answers[name] = (status, reply["msg"])
            sessions_before = len(server.live.sessions)
            status, reply = await post_json(http, server.url + "/is_speaking", {"sessionid": 0})
            answers["no background"] = (status, reply["msg"])
            sid = await open_background(http, server.url, {"outputs": ["record"]})
            status, reply = await post_json(http, server.url + "/is_speaking", {"sessionid": 0})
            answers["alias"] = (status, reply.get("data"))
            other = await open_background(http, server.url)
            status, reply = await post_json(http, server.url + "/is_speaking", {"sessionid": 0})
            answers["two background"] = (status, reply["msg"])
            await end_session(http, server.url, other)
            events = SseClient(f"{server.url}/sse?sessionid=0")  # the alias works for events too
            await events.connect(http)
            status, reply = await post_json(http, server.url + "/human", {"sessionid": 0, "text": "Hi."})
            answers["human on 0"] = (status, reply["msg"])
            answers["heard on 0"] = (await events.wait_for(lambda e: e["status"] == "end", 20))["text"]
            await events.close()
            await end_session(http, server.url, 0)  # the alias works for closing too
            async with http.delete(f"{server.url}/session/{sid}") as resp:
                answers["closed"] = (resp.status, "")
            return answers, sessions_before, sid

    answers, before, sid = run(scenario())
    assert answers["unknown field"][0] == 400 and "avatars" in answers["unknown field"][1]
    assert answers["unknown output"][0] == 400 and "record" in answers["unknown output"][1]
    assert answers["bad outputs"][0] == 400
    assert answers["wrong avatar"][0] == 400 and "no avatar 'someone_else'" in answers["wrong avatar"][1]
    assert answers["no url"][0] == 400 and "url" in answers["no url"][1]
    assert answers["no background"][0] == 404
    assert answers["alias"] == (200, False)
    assert answers["two background"][0] == 400 and "name one" in answers["two background"][1]
    assert answers["human on 0"][0] == 200 and answers["heard on 0"] == "Hi."
    assert answers["closed"][0] == 404
    assert sid not in server.live.sessions and len(server.live.sessions) == before
    assert not [t for t in threading.enumerate() if t.name.endswith(str(sid))]


def test_whep_refuses_what_is_not_a_whep_offer(server):
    async def scenario():
        async with aiohttp.ClientSession() as http:
            sid = await open_background(http, server.url)
            out = {}
            async with http.post(f"{server.url}/whep?sessionid={sid}", data="v=0", headers={
                    "Content-Type": "application/json"}) as resp:
                out["json"] = resp.status
            async with http.post(f"{server.url}/whep?sessionid={sid}", data="not sdp", headers={
                    "Content-Type": "application/sdp"}) as resp:
                out["garbage"] = resp.status
            async with http.post(f"{server.url}/whep?sessionid=12345", data="v=0", headers={
                    "Content-Type": "application/sdp"}) as resp:
                out["no session"] = resp.status
            async with http.patch(f"{server.url}/whep/nothing", data="x") as resp:
                out["patch unknown"] = resp.status
            pc = RTCPeerConnection()
            pc.addTransceiver("video", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            offer = pc.localDescription.sdp
            await pc.close()
            player = server.live.sessions[sid].player
            sent_before = player.frames_sent
            flood = offer + "".join(f"a=candidate:{i} 1 udp 1 10.0.{i // 250}.{i % 250} 9 typ host\r\n"
                                    for i in range(100))
            for name, body in {"too many candidates": flood, "huge": "v=0\r\n" + "a=x\r\n" * 20000,
                               "odd characters": offer.replace("v=0", "v=0\udcff\u202e\x00", 1)}.items():
                async with http.post(f"{server.url}/whep?sessionid={sid}", data=body.encode("utf-8", "surrogatepass"),
                                     headers={"Content-Type": "application/sdp"}) as resp:
                    out[name] = resp.status
            await asyncio.sleep(0.5)
            out["session still streams"] = player.frames_sent > sent_before
            await end_session(http, server.url, sid)
            return out

    assert run(scenario()) == {"json": 415, "garbage": 400, "no session": 404, "patch unknown": 404,
                               "too many candidates": 400, "huge": 413, "odd characters": 400,
                               "session still streams": True}


@pytest.fixture(autouse=True)
def _no_leftover_outputs(server):
    yield
    assert not [t for t in threading.enumerate() if t.name.startswith(("record-", "rtmp-"))
                and int(t.name.split("-")[1]) not in server.live.sessions]


def test_outputs_leave_no_thread_socket_or_file_behind_and_shutdown_finishes_a_recording(tmp_path):
    """Sessions with a recording, an RTMP push, a WHIP push and a WHEP viewer, opened and
    closed again and again: the server's threads and open files come back to where they were.
    Shutting the server down (SIGTERM) with outputs running finishes the recording."""
    from nginx_rtmp import NginxRtmp, require_nginx_rtmp
    from whip_server import WhipEndpoint

    require_nginx_rtmp()
    with NginxRtmp() as rtmp:
        srv = AppProcess(["--capacity", "4", "--record_dir", str(tmp_path)])

        async def cycle(http: aiohttp.ClientSession, whip: WhipEndpoint, close: bool = True) -> int:
            sid = await open_background(http, srv.url, {"outputs": [
                "record", {"type": "rtmp", "url": rtmp.url()}, {"type": "rtcpush", "url": whip.url()}]})
            viewer = LivePeer(srv.url, sway_box(), sessionid=sid, whep=True, inspect_video=False)
            await viewer.connect(http)
            await viewer.wait_for_media()

            async def all_running() -> bool:
                async with http.get(srv.url + "/stats") as resp:
                    sessions = (await resp.json())["data"]["sessions"]
                states = [o["state"] for s in sessions for o in s["outputs"]]
                return len(states) == 4 and set(states) == {"running"}

            for _ in range(200):
                if await all_running():
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the outputs did not all run")
            if close:
                await end_session(http, srv.url, sid)
                assert await wait_until(viewer.ended, 15)
            await viewer.close()
            return sid

        async def scenario() -> tuple[list[tuple[int, int]], int, int, int]:
            async with aiohttp.ClientSession() as http, WhipEndpoint() as whip:
                await srv.wait_ready(http)
                for _ in range(2):  # the first cycles load codecs and grow the thread pools
                    await cycle(http, whip)
                await asyncio.sleep(1.0)
                counts = [(srv.threads(), srv.fds())]
                for _ in range(4):
                    await cycle(http, whip)
                    await asyncio.sleep(1.0)
                    counts.append((srv.threads(), srv.fds()))
                sid = await cycle(http, whip, close=False)
                await asyncio.sleep(1.0)
                deletes_before = sum(r.deleted for r in whip.resources.values())
                srv.proc.terminate()
                code = await asyncio.get_running_loop().run_in_executor(None, srv.proc.wait, 30)
                return counts, code, sid, sum(r.deleted for r in whip.resources.values()) - deletes_before

        try:
            counts, code, sid, deleted = run(scenario())
        finally:
            srv.stop()
    # A thread or a file left by each cycle would add 4; the pools (media encoders, control
    # work) may still grow by a thread or two, up to their bounds, when work comes at once.
    (threads0, fds0), *later = counts
    assert max(t for t, _ in later) <= threads0 + 3, counts
    assert max(f for _, f in later) <= fds0 + 3, counts
    assert code == 0
    assert deleted == 1  # the WHIP resource was DELETEd at shutdown
    finished = decode(str(tmp_path / f"{sid}.mp4"))
    assert len(finished.video) > 25 and finished.audio
    assert not list(tmp_path.glob("*.part"))
