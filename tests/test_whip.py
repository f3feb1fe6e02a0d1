"""WHIP push (upstream's rtcpush, RFC 9725) to a real WHIP endpoint on a real aiortc receiver."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import numpy as np

from appprocess import AppProcess, free_port
from portrait_geometry import mouth_change, sway_box
from sseclient import SseClient
from waiting import post_json, wait_until
from whip_server import Resource, WhipEndpoint

SPEECH_RMS = 0.02  # louder than this in 20 ms is speech
SENTENCE = "Hello, how are you? I am streaming live to you."
TOKEN = "s3cret-token"


def run(coro):
    return asyncio.run(coro)


async def post(http: aiohttp.ClientSession, url: str, body: dict) -> dict:
    status, reply = await post_json(http, url, body)
    assert status == 200, reply
    return reply


async def flowing(endpoint: WhipEndpoint, timeout: float = 30.0) -> Resource:
    """The endpoint's live resource, once pictures and sound arrive on it."""
    def ready() -> bool:
        live = endpoint.live()
        return bool(live) and len(live[-1].video) > 10 and len(live[-1].audio) > 10
    assert await wait_until(ready, timeout, 0.05), f"no media pushed: {endpoint.requests}"
    return endpoint.live()[-1]


async def speak(http: aiohttp.ClientSession, url: str, sessionid: int, resource: Resource) -> tuple[bool, float, float]:
    """Say a sentence; whether the stream got loud, and the mouth's largest change from its
    rest pose while it spoke against its idle motion before."""
    await asyncio.sleep(0.5)
    rest = resource.video[-1].mouth
    idle = max(mouth_change(p.mouth, rest) for p in resource.video[-10:])
    sent = time.monotonic()
    await post(http, url + "/human", {"sessionid": sessionid, "text": SENTENCE, "type": "echo"})
    heard = await wait_until(lambda: any(a.rms > SPEECH_RMS for a in resource.audio_since(sent)), 15, 0.05)

    def quiet_again() -> bool:
        last_loud = max((a.arrival for a in resource.audio_since(sent) if a.rms > SPEECH_RMS), default=sent)
        return time.monotonic() - last_loud > 1.0

    await wait_until(quiet_again, 15, 0.05)
    changes = [mouth_change(p.mouth, rest) for p in resource.video_since(sent)]
    return heard, max(changes, default=0.0), idle


def output_events(events: SseClient, state: str) -> list[dict]:
    return [e for e in events.of("output") if e["output"] == "rtcpush" and e["state"] == state]


def test_transport_rtcpush_streams_the_avatar_to_a_whip_endpoint_and_deletes_it_at_shutdown():
    """`--transport rtcpush --push_url --push_token`, as upstream: the background session
    pushes at start-up; the endpoint gets 25 fps H.264 and Opus, speech on session 0 is heard
    with moving lips, and the server's shutdown ends the WHIP resource with a DELETE."""

    async def scenario() -> tuple[Resource, dict, str, WhipEndpoint]:
        async with WhipEndpoint(token=TOKEN, mouth_box=sway_box()) as endpoint, aiohttp.ClientSession() as http:
            srv = AppProcess(["--transport", "rtcpush", "--push_url", endpoint.url("live") + "?key=hidden-key",
                              "--push_token", TOKEN, "--capacity", "4"])
            try:
                await srv.wait_ready(http)
                resource = await flowing(endpoint)
                start = time.monotonic()
                await asyncio.sleep(3.0)
                video, audio = resource.video_since(start), resource.audio_since(start)
                heard, moved, idle = await speak(http, srv.url, 0, resource)
                facts = {
                    "fps": (len(video) - 1) / (video[-1].arrival - video[0].arrival),
                    "audio_per_s": (len(audio) - 1) / (audio[-1].arrival - audio[0].arrival),
                    "pts_step": float(np.median(np.diff([p.pts for p in video]))),
                    "heard": heard, "moved": moved, "idle": idle,
                }
                srv.proc.terminate()  # as a user's Ctrl-C or systemd stop does
                facts["deleted"] = await wait_until(lambda: resource.deleted, 20, 0.05)
                facts["exited"] = await wait_until(lambda: srv.proc.poll() is not None, 20, 0.05)
                log = srv.log()
            finally:
                await asyncio.get_running_loop().run_in_executor(None, srv.stop)
            return resource, facts, log, endpoint

    resource, facts, log, endpoint = run(scenario())
    assert resource.stream == "live" and resource.codec == "H264", resource.codec
    assert resource.video[-1].size == (512, 512)
    assert facts["pts_step"] == 90000 // 25
    assert 20 <= facts["fps"] <= 30, facts
    assert 40 <= facts["audio_per_s"] <= 60, facts  # 20 ms Opus frames
    assert facts["heard"], "the speech never reached the WHIP endpoint"
    assert facts["moved"] > max(3 * facts["idle"], 6.0), facts
    assert facts["deleted"] and facts["exited"], (facts, endpoint.requests)
    assert endpoint.statuses("POST") == [201] and endpoint.statuses("DELETE") == [200], endpoint.requests
    assert "rtcpush running" in log and "http://127.0.0.1" in log
    assert "hidden-key" not in log and TOKEN not in log  # neither the query nor the token is logged


def test_push_to_whip_on_a_session_a_wrong_token_reconnects_and_delete_push_ends_it(server):
    """POST /push with an http(s) URL pushes WHIP from any session; a refused token is said
    on /sse (401) while the session plays on; DELETE /push DELETEs the resource and leaves no
    track on the session's clock. An endpoint without H.264 gets VP8."""

    async def scenario() -> dict:
        async with WhipEndpoint(token=TOKEN, video_codecs=("VP8",), mouth_box=sway_box()) as endpoint, \
                aiohttp.ClientSession() as http:
            sid = (await post(http, server.url + "/session", {}))["sessionid"]
            player = server.live.sessions[sid].player
            taps_before = len(player.taps)
            events = SseClient(f"{server.url}/sse?sessionid={sid}")
            await events.connect(http)
            reply = await post(http, server.url + "/push", {"sessionid": sid, "url": endpoint.url(), "token": "wrong"})
            assert reply["data"]["type"] == "rtcpush", reply
            refused = await events.wait_for(lambda e: e.get("state") == "reconnecting", 20)
            status, speaking = await post_json(http, server.url + "/is_speaking", {"sessionid": sid})
            async with http.delete(f"{server.url}/push?sessionid={sid}") as resp:
                assert resp.status == 200, await resp.text()

            await post(http, server.url + "/push", {"sessionid": sid, "url": endpoint.url("show"), "token": TOKEN})
            await events.wait_for(lambda e: e.get("state") == "running", 20)
            resource = await flowing(endpoint)
            heard, moved, idle = await speak(http, server.url, sid, resource)
            async with http.delete(f"{server.url}/push", json={"sessionid": sid}) as resp:
                assert resp.status == 200, await resp.text()
            deleted = resource.deleted  # DELETE /push answers once the push is stopped
            frames = len(resource.video)
            await asyncio.sleep(1.0)
            facts = {
                "refused": refused, "status": status, "speaking": speaking, "resource": resource,
                "heard": heard, "moved": moved, "idle": idle, "deleted": deleted,
                "frames_after_delete": len(resource.video) - frames,
                "taps": (taps_before, len(player.taps)),
                "tasks": server.call(whip_tasks()), "requests": endpoint.requests,
            }
            async with http.delete(f"{server.url}/session/{sid}") as resp:
                assert resp.status == 200
            await events.close()
            return facts

    facts = run(scenario())
    assert "could not connect" in facts["refused"]["detail"] and "401" in facts["refused"]["detail"], facts["refused"]
    assert facts["status"] == 200 and facts["speaking"]["data"] is False, facts["speaking"]
    resource = facts["resource"]
    assert resource.stream == "show" and resource.codec == "VP8", resource.codec
    assert facts["heard"], "the speech never reached the WHIP endpoint"
    assert facts["moved"] > max(3 * facts["idle"], 6.0), facts
    assert facts["deleted"] and facts["frames_after_delete"] <= 2, facts
    assert facts["taps"][1] == facts["taps"][0], facts["taps"]
    assert facts["tasks"] == [], facts["tasks"]
    assert [s for m, _, s in facts["requests"] if m == "POST"][0] == 401, facts["requests"]


async def whip_tasks() -> list[str]:
    return [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("whip-")]


def test_a_push_waits_for_an_endpoint_that_is_down_and_reconnects_when_it_drops(server):
    """The endpoint is down, then refuses (503), then takes the push; later it drops every
    peer (a restart): each time the push says so on /sse and comes back by itself."""

    async def scenario() -> dict:
        endpoint = WhipEndpoint(mouth_box=sway_box(), port=free_port())
        async with aiohttp.ClientSession() as http:
            sid = (await post(http, server.url + "/session", {}))["sessionid"]
            events = SseClient(f"{server.url}/sse?sessionid={sid}")
            await events.connect(http)
            await post(http, server.url + "/push", {"sessionid": sid, "url": endpoint.url()})
            down = await events.wait_for(lambda e: e.get("state") == "reconnecting", 20)
            endpoint.refuse = 503
            await endpoint.start()
            try:
                refused = await events.wait_for(lambda e: "503" in e.get("detail", ""), 20)
                endpoint.refuse = None
                await events.wait_for(lambda e: e.get("state") == "running", 30)
                first = await flowing(endpoint)
                await endpoint.drop()
                assert await wait_until(lambda: len(output_events(events, "running")) >= 2, 30), events.events
                second = await flowing(endpoint)
                status, _ = await post_json(http, server.url + "/is_speaking", {"sessionid": sid})
                async with http.delete(f"{server.url}/session/{sid}") as resp:
                    assert resp.status == 200
                await events.close()
                return {"down": down, "refused": refused, "first": first, "second": second, "status": status,
                        "dropped": [e for e in output_events(events, "reconnecting") if "dropped" in e["detail"]]}
            finally:
                await endpoint.stop()

    facts = run(scenario())
    assert "could not connect" in facts["down"]["detail"] and "next try in" in facts["down"]["detail"], facts["down"]
    assert "could not connect" in facts["refused"]["detail"], facts["refused"]
    assert facts["dropped"], "the drop was not said on /sse"
    assert facts["first"] is not facts["second"] and facts["first"].closed
    assert facts["second"].deleted, "closing the session did not DELETE the resource"
    assert facts["status"] == 200


def test_push_refuses_a_bad_whip_url_and_stops_cleanly_while_the_endpoint_hangs(server):
    """A URL that is no WHIP endpoint is refused with a reason; a push whose endpoint takes
    the connection and never answers stops at once on DELETE /push and leaves nothing behind."""

    async def scenario() -> dict:
        held: list[asyncio.StreamWriter] = []

        async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)

        silent = await asyncio.start_server(hold, "127.0.0.1", 0)
        port = silent.sockets[0].getsockname()[1]
        async with aiohttp.ClientSession() as http:
            sid = (await post(http, server.url + "/session", {}))["sessionid"]
            player = server.live.sessions[sid].player
            taps_before = len(player.taps)
            refusals = [await post_json(http, server.url + "/push", {"sessionid": sid, "url": url})
                        for url in ("http://", "https:///whip")]
            await post(http, server.url + "/push", {"sessionid": sid, "url": f"http://127.0.0.1:{port}/whip"})
            assert await wait_until(lambda: held, 10), "the push never called the endpoint"
            async with http.delete(f"{server.url}/push?sessionid={sid}") as resp:
                stopped = resp.status
            facts = {"refusals": refusals, "stopped": stopped, "tasks": server.call(whip_tasks()),
                     "taps": (taps_before, len(player.taps))}
            async with http.delete(f"{server.url}/session/{sid}") as resp:
                assert resp.status == 200
        for writer in held:
            writer.close()
        silent.close()
        await silent.wait_closed()
        return facts

    facts = run(scenario())
    for status, reply in facts["refusals"]:
        assert status == 400 and "http:// or https://" in reply["msg"], (status, reply)
    assert facts["stopped"] == 200
    assert facts["tasks"] == [] and facts["taps"][1] == facts["taps"][0], facts
