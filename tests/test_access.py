"""Who may call the API: the API token, other origins, content types, and how many slots one
client address may hold (a real server on loopback, real aiortc peers)."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import pytest
from aiortc import RTCPeerConnection

from conftest import RunningServer
from livepeer import LivePeer
from portrait_geometry import sway_box
from sseclient import SseClient

TOKEN = "s3cret-token-for-tests"
GOOD_ORIGIN = "http://good.example:8080"


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def guarded() -> RunningServer:
    srv = RunningServer(["--max_session", "4", "--api_token", TOKEN, "--cors_origins", GOOD_ORIGIN])
    yield srv
    srv.stop()


async def request(url: str, method: str = "POST", **kwargs) -> tuple[int, dict | str, dict]:
    if "form" in kwargs:  # a multipart upload, built anew for each request (it is consumed)
        form = aiohttp.FormData(kwargs.pop("form"))
        form.add_field("file", b"RIFF", filename="a.wav")
        kwargs["data"] = form
    async with aiohttp.ClientSession() as http:
        async with http.request(method, url, **kwargs) as resp:
            body = await resp.json() if resp.content_type == "application/json" else await resp.text()
            return resp.status, body, dict(resp.headers)


def bearer(token: str = TOKEN) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("POST", "/offer", {"json": {"sdp": "v=0", "type": "offer"}}),
        ("POST", "/human", {"json": {"sessionid": 1234567890123456, "text": "hi"}}),
        ("POST", "/interrupt_talk", {"json": {"sessionid": 1234567890123456}}),
        ("POST", "/is_speaking", {"json": {"sessionid": 1234567890123456}}),
        ("POST", "/humanaudio", {"form": {"sessionid": "1234567890123456"}}),
        ("GET", "/sse?sessionid=1234567890123456", {}),
        ("GET", "/stats", {}),
    ],
)
def test_every_api_call_needs_the_token(guarded, method, path, kwargs, caplog):
    url = guarded.url + path
    with caplog.at_level(logging.DEBUG):
        for headers in ({}, bearer("wrong"), {"Authorization": TOKEN}, {"Authorization": "Basic " + TOKEN}):
            status, body, _ = run(request(url, method, headers=headers, **dict(kwargs)))
            assert status == 401, (headers, body)
            assert body == {"code": -1, "msg": "this server needs an API token: send Authorization: Bearer <token>"}
        status, body, _ = run(request(url, method, headers=bearer(), **dict(kwargs)))
    assert status != 401, body  # past the check: the request's own answer (400, 404, 200)
    assert TOKEN not in caplog.text  # neither the right token nor the wrong ones are logged
    assert "wrong" not in caplog.text


def test_pages_load_without_the_token_and_the_event_stream_takes_it_as_a_query(guarded):
    for page in ("/", "/client.js"):
        status, _, _ = run(request(guarded.url + page, "GET"))
        assert status == 200

    async def scenario():
        async with aiohttp.ClientSession() as http:
            peer = LivePeer(guarded.url, sway_box(), token=TOKEN)
            await peer.connect(http)
            await peer.wait_for_media()
            events = SseClient(f"{guarded.url}/sse?sessionid={peer.sessionid}&token={TOKEN}")
            await events.connect(http)
            async with http.post(guarded.url + "/human", headers=bearer(),
                                 json={"sessionid": peer.sessionid, "text": "Token accepted."}) as resp:
                assert resp.status == 200
            await events.wait_for(lambda e: e["status"] == "end" and e["text"] == "Token accepted.", 20)
            async with http.get(f"{guarded.url}/sse?sessionid={peer.sessionid}&token=nope") as resp:
                assert resp.status == 401
            await events.close()
            await peer.close()

    run(scenario())


def test_other_origins_are_refused_unless_allowed(guarded):
    human = guarded.url + "/human"
    body = {"sessionid": 1234567890123456, "text": "hi"}
    # A page elsewhere, in a visitor's browser: refused before anything else happens.
    status, reply, _ = run(request(human, json=body, headers={**bearer(), "Origin": "http://evil.example"}))
    assert status == 403 and "cross-origin" in reply["msg"] and "--cors_origins" in reply["msg"]
    status, _, headers = run(request(human, "OPTIONS", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}))
    assert status == 403 and "Access-Control-Allow-Origin" not in headers
    # The allowed origin: its preflight is answered, and its calls carry the CORS headers.
    status, _, headers = run(request(human, "OPTIONS", headers={
        "Origin": GOOD_ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"}))
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == GOOD_ORIGIN
    assert "Authorization" in headers["Access-Control-Allow-Headers"]
    status, reply, headers = run(request(human, json=body, headers={**bearer(), "Origin": GOOD_ORIGIN}))
    assert status == 404 and headers["Access-Control-Allow-Origin"] == GOOD_ORIGIN
    # The server's own page (same host and port) needs nothing.
    status, reply, headers = run(request(human, json=body, headers={**bearer(), "Origin": guarded.url}))
    assert status == 404 and "Access-Control-Allow-Origin" not in headers


@pytest.mark.parametrize(
    ("path", "content_type", "data"),
    [
        ("/offer", "text/plain", b'{"sdp": "v=0", "type": "offer"}'),  # what a cross-site form can send
        ("/human", "application/x-www-form-urlencoded", b"sessionid=1&text=hi"),
        ("/human", "multipart/form-data; boundary=x", b"--x--"),
        ("/interrupt_talk", None, b'{"sessionid": 1234567890123456}'),
    ],
)
def test_json_calls_take_only_json(server, path, content_type, data):
    headers = {"Content-Type": content_type} if content_type else {}
    status, reply, _ = run(request(server.url + path, data=data, headers=headers))
    assert status == 415, reply
    assert "application/json" in reply["msg"]


async def unconnected_offer(url: str, http: aiohttp.ClientSession, address: str) -> tuple[int, dict, RTCPeerConnection]:
    """A real offer whose peer never connects (it is closed at once): it holds a slot."""
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    body = {"sdp": pc.localDescription.sdp, "type": "offer"}
    async with http.post(url + "/offer", json=body, headers={"X-Forwarded-For": address}) as resp:
        reply = await resp.json()
        return resp.status, reply, pc


def test_one_address_cannot_take_every_slot_and_unconnected_offers_are_dropped():
    """Upstream's finding: 12 offers in 65 s kept a real client out. Here one address holds at
    most --max_sessions_per_ip slots, offers that never connect are dropped after 10 s, and a
    client from another address gets in meanwhile."""
    srv = RunningServer(["--max_session", "4", "--max_sessions_per_ip", "2", "--forwarded_allow_ips", "127.0.0.1"])

    async def scenario():
        async with aiohttp.ClientSession() as http:
            results = [await unconnected_offer(srv.url, http, "203.0.113.66") for _ in range(12)]
            statuses = [status for status, _, _ in results]
            for _, _, pc in results:
                await pc.close()
            held = len(srv.live.sessions)
            real = LivePeer(srv.url, sway_box(), headers={"X-Forwarded-For": "198.51.100.7"})
            await real.connect(http)
            await real.wait_for_media()
            started = time.monotonic()
            while len(srv.live.sessions) > 1 and time.monotonic() - started < 25:
                await asyncio.sleep(0.2)
            dropped_after = time.monotonic() - started
            still_there = real.sessionid in srv.live.sessions
            # The address's slots are free again: it may offer anew.
            status, _, pc = await unconnected_offer(srv.url, http, "203.0.113.66")
            await pc.close()
            await real.close()
            return statuses, held, dropped_after, still_there, status, results[2][1]

    try:
        statuses, held, dropped_after, still_there, again, refused = run(scenario())
    finally:
        srv.stop()
    assert statuses == [200, 200] + [429] * 10
    assert "this address already has 2 sessions open" in refused["msg"]
    assert held == 2
    assert still_there and dropped_after < 20  # the two unconnected offers went after ~10 s
    assert again == 200


def test_cors_origins_and_forwarded_addresses_are_read_strictly():
    from types import SimpleNamespace

    from access import AddressLimits, parse_origins

    assert parse_origins("https://a.example, http://B.example:8443/") == {"https://a.example", "http://b.example:8443"}
    assert parse_origins("*") == {"*"}
    for bad in ("a.example", "ftp://a.example", "https://a.example/path"):
        with pytest.raises(ValueError):
            parse_origins(bad)
    limits = AddressLimits(1, 1, 1, 1, trusted_proxies=["127.0.0.1", "10.0.0.0/8"])

    def request(remote: str, forwarded: str = ""):
        return SimpleNamespace(remote=remote, headers={"X-Forwarded-For": forwarded} if forwarded else {})

    assert limits.address(request("127.0.0.1", "198.51.100.9")) == "198.51.100.9"
    # The nearest hop that is not a trusted proxy is the client; what it claims beyond is not believed.
    assert limits.address(request("127.0.0.1", "6.6.6.6, 198.51.100.9, 10.1.2.3")) == "198.51.100.9"
    assert limits.address(request("192.0.2.5", "198.51.100.9")) == "192.0.2.5"  # not a trusted proxy
    limits.take("session", "a")
    with pytest.raises(Exception, match="already has 1 sessions open"):
        limits.take("session", "a")
    limits.take("session", "b")
    limits.release("session", "a")
    limits.take("session", "a")
