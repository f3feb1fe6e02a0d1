"""A hostile client against `app.py` run as its own process, while a real peer watches a live
session: no cheap request may freeze, starve or silence it. Each test is one finding of the
hardening issue; the freeze is measured as the longest gap between video frames at the peer.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import struct
import time
import wave

import aiohttp
import numpy as np
import pytest
import soundfile as sf

from appprocess import AppProcess
from livepeer import LivePeer
from portrait_geometry import sway_box
from sseclient import SseClient

JSON = {"Content-Type": "application/json"}
FAKE_ID = "1234567890123456"
# Longest pause between two video frames at the peer that still looks live. The server
# froze 2-7.5 s on these requests before; a busy test machine alone pauses 100-300 ms.
FROZEN_S = 1.0
SPEECH_RMS = 0.02


@pytest.fixture(scope="module")
def app_server():
    srv = AppProcess(["--max_session", "4", "--max_sessions_per_ip", "4", "--capacity", "4", "--upload_timeout", "3"])
    asyncio.run(_ready(srv))
    yield srv
    srv.stop()


async def _ready(srv: AppProcess) -> None:
    async with aiohttp.ClientSession() as http:
        await srv.wait_ready(http)


def run(coro):
    return asyncio.run(coro)


def longest_gap(peer: LivePeer, since: float, until: float) -> float:
    times = [since] + [v.arrival for v in peer.video if since <= v.arrival <= until] + [until]
    return float(np.max(np.diff(times)))


async def watched(srv: AppProcess, http: aiohttp.ClientSession) -> LivePeer:
    peer = LivePeer(srv.url, sway_box(), inspect_video=False)
    await peer.connect(http)
    await peer.wait_for_media()
    return peer


async def send(http: aiohttp.ClientSession, method: str, url: str, wait: float = 60.0,
               **kwargs) -> tuple[int | str, dict | None]:
    """The status and envelope of a request, or the name of the error when the server hung up."""
    try:
        async with http.request(method, url, timeout=aiohttp.ClientTimeout(total=wait), **kwargs) as resp:
            body = await resp.json() if resp.content_type == "application/json" else None
            return resp.status, body
    except (aiohttp.ClientError, TimeoutError) as exc:
        return type(exc).__name__, None


def test_huge_or_deep_bodies_are_refused_and_no_stream_freezes(app_server):
    """Finding 2: a 29.5 MB SDP froze every stream for 7.5 s and a 47 MB JSON list for 2.1 s.
    Now a body is refused by its declared size before it is read, and one within the limit
    is parsed off the event loop, so the peer's video never pauses."""
    sdp = "v=0\r\n" + "a=x-filler:" + "y" * 200 + "\r\n"
    hostile = [
        ("/offer", json.dumps({"sdp": sdp * 140_000, "type": "offer"}).encode(), 413),  # 29.5 MB
        ("/is_speaking", json.dumps({"sessionid": FAKE_ID, "pad": [0] * 15_700_000}).encode(), 413),  # 47 MB
        ("/is_speaking", json.dumps([0] * 85_000).encode(), 400),  # 250 KB, within the limit
        ("/human", b"[" * 100_000 + b"]" * 100_000, 400),  # nested 100 000 deep
        ("/asr_mode", json.dumps({"sessionid": FAKE_ID, "mode": "echo", "pad": "x" * 3_000_000}).encode(), 413),
        ("/offer", json.dumps({"sdp": sdp * 160, "type": "offer"}).encode(), 413),  # 35 KB of SDP
    ]

    async def scenario():
        async with aiohttp.ClientSession() as http:
            peer = await watched(app_server, http)
            results = []
            for path, body, _ in hostile:
                started = time.monotonic()
                status, reply = await send(http, "POST", app_server.url + path, data=body, headers=JSON)
                await asyncio.sleep(0.5)
                results.append((status, reply, longest_gap(peer, started, time.monotonic())))
            await peer.close()
            return results

    for (path, body, expected), (status, reply, gap) in zip(hostile, run(scenario()), strict=True):
        assert status == expected, (path, len(body), status, reply)
        assert reply["code"] == -1 and reply["msg"]
        assert gap < FROZEN_S, (path, len(body), gap)


def silent_flac(rate: int, seconds: float) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(int(rate * seconds), np.int16), rate, format="FLAC")
    return buf.getvalue()


def wav_at(rate: int, frames: int = 1500) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(min(rate, 2**31 - 1))
        w.writeframes(b"\0\0" * frames)
    data = bytearray(buf.getvalue())
    data[24:28] = struct.pack("<I", rate)  # the header's rate, whatever wave allows
    return bytes(data)


def upload_form(sessionid: str, data: bytes, filename: str) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("file", data, filename=filename, content_type="application/octet-stream")
    form.add_field("sessionid", sessionid)
    return form


def test_tiny_uploads_asking_for_huge_work_are_refused_and_cost_the_server_nothing(app_server):
    """Finding 3: a 1.47 MB silent FLAC at 655 350 Hz cost 17-25 s of CPU and 3.5 GB, a 3.2 KB
    WAV at a prime rate near 1 MHz 3.4 s, and six uploads at once froze a live session for
    13.8 s. Now absurd headers are refused before decoding, decoding runs in a budgeted
    child process, and one address has at most two uploads in flight."""
    flac = silent_flac(655_350, 600)  # about 1.4 MB: silence compresses to nothing

    async def scenario():
        async with aiohttp.ClientSession() as http:
            peer = await watched(app_server, http)
            sid = str(peer.sessionid)
            url = app_server.url + "/humanaudio"
            rss_before, cpu_before = app_server.rss_mb(), app_server.cpu_seconds()
            await asyncio.sleep(2.0)  # what the live session alone costs the server
            streaming = (app_server.cpu_seconds() - cpu_before) / 2.0
            cpu_before = app_server.cpu_seconds()
            started = time.monotonic()
            answers = {}
            for name, data in [("flac_655k.flac", flac), ("prime_rate.wav", wav_at(999_983)),
                               ("rate_2_31.wav", wav_at(2**31 - 1))]:
                answers[name] = await send(http, "POST", url, data=upload_form(sid, data, name))
            long_flac = silent_flac(192_000, 120)  # two minutes at 192 kHz: decodable, real work
            six = await asyncio.gather(*[
                # Accepted ones are decoded one after another at a low priority: on a busy machine
                # the second waits for the first.
                send(http, "POST", url, wait=180.0, data=upload_form(sid, long_flac, f"six-{i}.flac"))
                for i in range(6)
            ])
            gap = longest_gap(peer, started, time.monotonic())
            cost = app_server.cpu_seconds() - cpu_before - streaming * (time.monotonic() - started)
            rss_growth = app_server.rss_mb() - rss_before
            await peer.close()
            return answers, six, gap, cost, rss_growth

    answers, six, gap, cost, rss_growth = run(scenario())
    for name in ("flac_655k.flac", "prime_rate.wav", "rate_2_31.wav"):
        status, reply = answers[name]
        assert status == 400, (name, status, reply)
        assert "sample rate" in reply["msg"] and "8000-192000 Hz is accepted" in reply["msg"], reply
    statuses = sorted(str(status) for status, _ in six)
    assert statuses.count("200") >= 2 and set(statuses) <= {"200", "429", "503"}, six
    refused = [reply["msg"] for status, reply in six if status == 429]
    assert all("uploads open" in msg for msg in refused), refused
    assert gap < FROZEN_S, gap
    # Beyond idle streaming: the accepted uploads are then spoken (rendered mouths), a few
    # seconds on a busy machine; decoding them here cost 17-25 s each before.
    assert cost < 6.0, cost
    assert rss_growth < 150, rss_growth  # no gigabytes kept after the decode


def raw_upload(sessionid: int | str, filename: bytes, data: bytes) -> dict:
    """A multipart upload written out by hand, so its filename can hold any byte."""
    boundary = "b0undary"
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"sessionid\"\r\n\r\n{sessionid}\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"".encode()
        + filename + b"\"\r\nContent-Type: audio/wav\r\n\r\n" + data + f"\r\n--{boundary}--\r\n".encode()
    )
    return {"data": body, "headers": {"Content-Type": f"multipart/form-data; boundary={boundary}"}}


RAW_TEXT = '{"sessionid": %s, "text": "\\ud800 Hello there, still talking. \\udfff", "mood": "\\ud83d", "x\\ud800": 1}'


def test_a_lone_surrogate_or_a_bad_filename_cannot_silence_a_session(app_server):
    """Finding 4: "\\ud800" in text or in an extra field, or a 0xFF byte in an upload's filename,
    crashed the event encoding inside the audio track: audio went from 50 to 0 packets/s for
    good. Now text is cleaned at the edge and the sound goes on."""

    async def scenario():
        async with aiohttp.ClientSession() as http:
            peer = await watched(app_server, http)
            events = SseClient(f"{app_server.url}/sse?sessionid={peer.sessionid}")
            await events.connect(http)
            status, _ = await send(http, "POST", app_server.url + "/human",
                                   data=(RAW_TEXT % peer.sessionid).encode(), headers=JSON)
            assert status == 200
            said = await events.wait_for(lambda e: e["status"] == "end" and "talking" in e["text"], 20)
            # An upload whose filename is not UTF-8 (a 0xFF byte), written out by hand.
            speech = io.BytesIO()
            sf.write(speech, 0.3 * np.sin(np.arange(16000) * 0.06), 16000, format="WAV")
            status, reply = await send(http, "POST", app_server.url + "/humanaudio",
                                       **raw_upload(peer.sessionid, b"voice\xff.wav", speech.getvalue()))
            assert status == 200, reply
            played = await events.wait_for(lambda e: e["status"] == "end" and "file" in e, 20)
            after = time.monotonic()
            await asyncio.sleep(2.0)
            rate = len(peer.audio_since(after)) / 2.0
            await events.close()
            await peer.close()
            return said, played, rate, peer

    said, played, rate, peer = run(scenario())
    assert said["text"] == "still talking.\ufffd"  # the first clause, "\ufffd Hello there,", went before
    assert said["mood"] == "\ufffd" and said["x\ufffd"] == 1
    assert played["file"] == "voice\ufffd.wav"
    assert 45 <= rate <= 55, rate  # the audio track is alive
    assert max(a.rms for a in peer.audio) > SPEECH_RMS  # and it spoke


def test_one_session_cannot_grow_the_server_without_bound(app_server):
    """Finding 6: the text queue had no limit (20 x 40 MB /human added 957 MB) and extra
    fields were copied into every event for every listener. Now every queue has a bound and
    passing it is a clear 413 or 429."""

    async def scenario():
        async with aiohttp.ClientSession() as http:
            peer = await watched(app_server, http)
            sid = peer.sessionid
            human = app_server.url + "/human"
            rss_before = app_server.rss_mb()
            huge = [await send(http, "POST", human, data=b'{"text": "' + b"a" * 40_000_000 + b'"}', headers=JSON)
                    for _ in range(20)]
            too_long = await send(http, "POST", human, json={"sessionid": sid, "text": "word " * 2001})
            queued = [await send(http, "POST", human, json={"sessionid": sid, "text": "Long text here. " * 600})
                      for _ in range(8)]
            extra = await send(http, "POST", human, json={"sessionid": sid, "text": "hi", "blob": "x" * 5000})
            await send(http, "POST", app_server.url + "/interrupt_talk", json={"sessionid": sid})
            listeners = []
            for _ in range(9):
                listener = SseClient(f"{app_server.url}/sse?sessionid={sid}")
                try:
                    await listener.connect(http)
                    listeners.append(listener)
                except AssertionError as exc:
                    ninth = str(exc)
            rss_growth = app_server.rss_mb() - rss_before
            for listener in listeners:
                await listener.close()
            await peer.close()
            return huge, too_long, queued, extra, len(listeners), ninth, rss_growth

    huge, too_long, queued, extra, listening, ninth, rss_growth = run(scenario())
    assert all(status == 413 for status, _ in huge), huge[:2]
    assert too_long[0] == 413 and "10000" in too_long[1]["msg"]
    statuses = [status for status, _ in queued]
    assert statuses[:5] == [200] * 5 and 429 in statuses, statuses  # 50 000 characters may wait
    assert "speech queue is full" in queued[statuses.index(429)][1]["msg"]
    assert extra[0] == 413 and "extra fields" in extra[1]["msg"]
    assert listening == 8 and "event listeners" in ninth
    assert rss_growth < 100, rss_growth


def _trickle(port: int, length: int) -> socket.socket:
    """An upload that sends its headers and then a byte now and then."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        f"POST /humanaudio HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=zz\r\n"
        f"Content-Length: {length}\r\n\r\n--zz\r\n".encode()
    )
    return sock


def _answer(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    try:
        return sock.recv(4096)
    except TimeoutError:
        return b""


def test_slow_uploads_time_out_and_cannot_exhaust_the_server(app_server):
    """Finding 7: 1100 trickling uploads made the server unreachable. Now an upload must
    arrive within --upload_timeout (3 s here), one address has two in flight at most, and
    the others are refused at once."""

    async def reachable() -> int:
        async with aiohttp.ClientSession() as http:
            status, _ = await send(http, "GET", app_server.url + "/stats")
            return status

    socks = [_trickle(app_server.port, 1_000_000) for _ in range(40)]
    try:
        assert run(reachable()) == 200  # while all of them trickle
        started = time.monotonic()
        answers = [_answer(s, 10.0) for s in socks]
        waited = time.monotonic() - started
    finally:
        for s in socks:
            s.close()
    statuses = [a[:12] for a in answers]
    assert statuses.count(b"HTTP/1.1 429") == 38, statuses
    assert statuses.count(b"HTTP/1.1 408") == 2, statuses
    assert any(b"--upload_timeout" in a for a in answers)
    assert waited < 8.0


def test_no_bad_input_is_a_server_error(app_server):
    """Finding 11: 18 of 207 bad inputs answered 500 with a traceback. Every one of these is
    the caller's mistake and gets a 4xx in the envelope."""
    deep = b'{"sessionid": 1, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    cases = [
        ("/human", {"data": deep, "headers": JSON}),
        ("/human", {"json": {"sessionid": "²", "text": "hi"}}),
        ("/human", {"json": {"sessionid": "9" * 5000, "text": "hi"}}),
        ("/human", {"data": b'{"sessionid": ' + b"9" * 5000 + b', "text": "hi"}', "headers": JSON}),
        ("/human", {"json": {"sessionid": "1\nERROR forged line", "text": "hi"}}),
        ("/human", {"data": b'{"sessionid": NaN, "text": "hi"}', "headers": JSON}),
        ("/human", {"data": b'{"sessionid": Infinity, "text": "hi"}', "headers": JSON}),
        ("/human", {"data": b'{"sessionid": 1e400, "text": "hi"}', "headers": JSON}),
        ("/human", {"data": b'\xff\xfe{"a": 1}', "headers": JSON}),
        ("/human", {"json": {"sessionid": [1], "text": "hi"}}),
        ("/human", {"json": {"sessionid": {"a": 1}, "text": "hi"}}),
        ("/human", {"json": {"sessionid": FAKE_ID, "text": ["hi"]}}),
        ("/human", {"json": {"sessionid": FAKE_ID, "text": "hi", "tts": {"ref_file": "x\u0000.wav"}}}),
        ("/interrupt_talk", {"data": b"null", "headers": JSON}),
        ("/asr_mode", {"json": {"sessionid": "1\nERROR forged line", "mode": "echo"}}),
        ("/asr_mode", {"json": {"sessionid": FAKE_ID, "mode": "\u0000" * 1000}}),
        ("/asr_mode", {"json": {"sessionid": FAKE_ID, "mode": ["echo"]}}),
        ("/asr_mode", {"data": b"[1, 2]", "headers": JSON}),
        ("/asr_mode", {"data": b"mode=echo", "headers": {"Content-Type": "text/plain"}}),
        ("/is_speaking", {"data": b'"text"', "headers": JSON}),
        ("/offer", {"json": {"sdp": "v=0\r\nm=audio 9 RTP/AVP 0\r\n", "type": "offer"}}),
        ("/offer", {"json": {"sdp": "\u0000" * 100, "type": "offer"}}),
        ("/offer", {"json": {"sdp": "v=0\r\n" + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\n" * 10, "type": "offer"}}),
        ("/humanaudio", {"data": b"--x\r\n", "headers": {"Content-Type": "multipart/form-data"}}),
        ("/humanaudio", {"data": b"garbage", "headers": {"Content-Type": "multipart/form-data; boundary=x"}}),
        ("/humanaudio", {"data": upload_form(FAKE_ID, wav_at(2**31 - 1), "a.wav")}),
        ("/humanaudio", {"data": upload_form("²", b"RIFF", "a.wav")}),
        ("/humanaudio", raw_upload(FAKE_ID, b"nul\x00in\xffname.wav", b"RIFF")),
    ]

    async def scenario():
        async with aiohttp.ClientSession() as http:
            answers = [await send(http, "POST", app_server.url + path, **kwargs) for path, kwargs in cases]
            sse = [await send(http, "GET", app_server.url + f"/sse?sessionid={value}")
                   for value in ("²", "9" * 5000, "1%0AERROR%20forged", "", "-1")]
            return answers + sse

    answers = run(scenario())
    for case, (status, reply) in zip(cases + [("/sse", {})] * 5, answers, strict=True):
        assert isinstance(status, int) and 400 <= status < 500, (case[0], str(case[1])[:120], status, reply)
        assert reply is not None and reply["code"] == -1, (case, reply)
    # A newline in a caller's value never starts a log line of its own.
    log = app_server.log()
    assert "forged line" in log
    assert not any(line.startswith(("ERROR forged", "ERROR%20forged")) for line in log.splitlines())


def test_the_access_log_never_shows_a_session_id(app_server):
    """Finding 12: session ids, the only credential, were in the access log on every /sse."""

    async def scenario():
        async with aiohttp.ClientSession() as http:
            peer = await watched(app_server, http)
            events = SseClient(f"{app_server.url}/sse?sessionid={peer.sessionid}&token=whatever")
            await events.connect(http)
            await events.close()
            await send(http, "POST", app_server.url + "/is_speaking", json={"sessionid": peer.sessionid})
            await peer.close()
            await asyncio.sleep(0.5)
            return peer.sessionid

    sid = run(scenario())
    access = [line for line in app_server.log().splitlines() if "aiohttp.access" in line]
    assert any('"GET /sse"' in line for line in access), access[-5:]
    assert not any(str(sid) in line or "whatever" in line for line in access)


def test_after_a_huge_text_and_an_interrupt_the_next_sentence_starts_at_once(app_server):
    """Finding 9: after a 45 MB /human and an interrupt, the next sentence started 12.8 s late
    (the split of the whole text ran first). Now such a text is refused at the door, the
    longest one accepted is split as it is spoken, and the next sentence starts promptly."""

    async def scenario():
        async with aiohttp.ClientSession() as http:
            peer = await watched(app_server, http)
            sid = peer.sessionid
            events = SseClient(f"{app_server.url}/sse?sessionid={sid}")
            await events.connect(http)
            human = app_server.url + "/human"
            huge = await send(http, "POST", human, data=b'{"sessionid": %d, "text": "' % sid
                              + b"Mr. Smith went on. " * 2_400_000 + b'"}', headers=JSON)
            longest = await send(http, "POST", human, json={"sessionid": sid, "text": "Mr. Smith went on. " * 520})
            await events.wait_for(lambda e: e["status"] == "start", 20)
            await send(http, "POST", app_server.url + "/interrupt_talk", json={"sessionid": sid})
            asked = time.monotonic()
            await send(http, "POST", human, json={"sessionid": sid, "text": "Right after this."})
            started = await events.wait_for(lambda e: e["status"] == "start" and e["text"] == "Right after this.", 20)
            await events.close()
            await peer.close()
            return huge, longest, started["_at"] - asked

    huge, longest, delay = run(scenario())
    assert huge[0] == 413
    assert longest[0] == 200
    assert delay < 3.0, delay
