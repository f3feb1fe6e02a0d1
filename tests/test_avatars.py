"""Avatars per session: `avatar` at /offer and POST /session, POST /set_avatar, the shared
cache, and names that are not plain avatar folders refused."""

from __future__ import annotations

import asyncio
import itertools
import time

import aiohttp
import cv2
import numpy as np
import pytest
from avatar_folders import FRAME, closest, tinted_portrait
from chromium import headless_page

from conftest import RunningServer
from livepeer import LivePeer
from sseclient import SseClient
from waiting import post_json, wait_until

BOX = (200, 200, 300, 300)  # x1, y1, x2, y2: the middle of the face


@pytest.fixture(scope="module")
def avatar_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("avatars")
    tinted_portrait(root, "portrait_astronaut", (1.0, 1.0, 1.0))
    tinted_portrait(root, "blue_one", (1.7, 0.5, 0.5))
    tinted_portrait(root, "red_one", (0.5, 0.5, 1.7))
    outside = tmp_path_factory.mktemp("elsewhere")
    tinted_portrait(outside, "sneaky", (1.0, 1.0, 1.0))
    (root / "linked_out").symlink_to(outside / "sneaky", target_is_directory=True)
    (root / "not_an_avatar").mkdir()
    srv = RunningServer(["--avatar_root", str(root), "--asr", "off", "--max_session", "4"])
    srv.root = root
    yield srv
    srv.stop()


def looks(root) -> dict[str, np.ndarray]:
    x1, y1, x2, y2 = BOX
    return {name: cv2.imread(str(root / name / FRAME))[y1:y2, x1:x2]
            for name in ("portrait_astronaut", "blue_one", "red_one")}


def seen(peer: LivePeer, refs: dict[str, np.ndarray], since: float = 0.0) -> list[str]:
    return [closest(v.mouth, refs) for v in peer.video if v.arrival >= since]


def test_two_sessions_with_different_avatars_never_show_each_others_face(avatar_server):
    srv = avatar_server
    refs = looks(srv.root)

    async def scenario():
        async with aiohttp.ClientSession() as http:
            blue = LivePeer(srv.url, BOX, offer_fields={"avatar": "blue_one"})
            red = LivePeer(srv.url, BOX, offer_fields={"avatar": "red_one"})
            plain = LivePeer(srv.url, BOX)
            peers = (blue, red, plain)
            try:
                for peer in peers:
                    await peer.connect(http)
                for peer in peers:
                    await peer.wait_for_media()
                for peer in (blue, red):  # both speak at once: each with its own face
                    status, reply = await post_json(http, srv.url + "/human",
                                                    {"sessionid": peer.sessionid, "text": "Good morning to you all."})
                    assert status == 200, reply
                await wait_until(lambda: all(len(p.video) > 60 for p in peers), 30)
                await wait_until(lambda: not any(s.speaking for s in srv.live.sessions.values()), 30)
                return [seen(p, refs) for p in peers]
            finally:
                for peer in peers:
                    await peer.close()

    blue_seen, red_seen, plain_seen = asyncio.run(scenario())
    assert set(blue_seen) == {"blue_one"}, blue_seen
    assert set(red_seen) == {"red_one"}, red_seen
    assert set(plain_seen) == {"portrait_astronaut"}, plain_seen
    # Loaded once each, shared by whoever asks again.
    assert srv.live.avatars.loads == 2


def test_set_avatar_switches_one_session_mid_sentence_and_the_sound_goes_on(avatar_server):
    srv = avatar_server
    refs = looks(srv.root)

    async def scenario():
        async with aiohttp.ClientSession() as http:
            mover = LivePeer(srv.url, BOX, audio_prefetch=0)
            other = LivePeer(srv.url, BOX)
            try:
                for peer in (mover, other):
                    await peer.connect(http)
                    await peer.wait_for_media()
                events = SseClient(f"{srv.url}/sse?sessionid={mover.sessionid}")
                await events.connect(http)
                text = "This sentence goes on while my face changes colour, and it is not cut short."
                status, _ = await post_json(http, srv.url + "/human", {"sessionid": mover.sessionid, "text": text})
                assert status == 200
                await events.wait_for(lambda e: e.get("status") == "start", 20)
                switched = time.monotonic()
                status, reply = await post_json(http, srv.url + "/set_avatar",
                                                {"sessionid": mover.sessionid, "avatar": "red_one"})
                assert status == 200 and reply["data"] == {"avatar": "red_one"}, reply
                end = await events.wait_for(lambda e: e.get("status") == "end" and "short" in e.get("text", ""), 30)
                await events.close()
                return seen(mover, refs), seen(mover, refs, switched + 1.0), seen(other, refs), mover, end, text
            finally:
                for peer in (mover, other):
                    await peer.close()

    before_and_after, after, other_seen, mover, end, text = asyncio.run(scenario())
    assert before_and_after[0] == "portrait_astronaut" and after and set(after) == {"red_one"}, before_and_after
    assert set(other_seen) == {"portrait_astronaut"}, other_seen
    assert text.endswith(end["text"])  # the sentence was spoken to its end
    # The sound never skipped: every audio packet follows the one before it by 20 ms.
    steps = {b.pts - a.pts for a, b in itertools.pairwise(mover.audio)}
    assert steps == {mover.audio[0].samples}, steps


def test_a_background_session_takes_an_avatar_too(avatar_server):
    srv = avatar_server

    async def scenario():
        async with aiohttp.ClientSession() as http:
            status, reply = await post_json(http, srv.url + "/session", {"avatar": "blue_one"})
            assert status == 200, reply
            sid = reply["sessionid"]
            assert srv.live.sessions[sid].avatar_id == "blue_one"
            async with http.delete(f"{srv.url}/session/{sid}") as resp:
                assert resp.status == 200

    asyncio.run(scenario())


@pytest.mark.parametrize("name", ["../portrait_astronaut", "a/b", "x" * 65, "", "blue one", "nowhere",
                                  "linked_out", "not_an_avatar", 7, None])
def test_names_that_are_not_avatar_folders_are_refused(avatar_server, name):
    srv = avatar_server

    async def scenario():
        async with aiohttp.ClientSession() as http:
            status, reply = await post_json(http, srv.url + "/session", {"avatar": "blue_one"})
            sid = reply["sessionid"]
            try:
                results = [await post_json(http, srv.url + "/set_avatar", {"sessionid": sid, "avatar": name})]
                if name is not None:
                    results.append(await post_json(http, srv.url + "/session", {"avatar": name}))
                return results, srv.live.sessions[sid].avatar_id, len(srv.live.sessions)
            finally:
                async with http.delete(f"{srv.url}/session/{sid}"):
                    pass

    results, kept, live = asyncio.run(scenario())
    for status, reply in results:
        assert status == 400 and reply["code"] == -1, reply
    assert kept == "blue_one" and live == 1  # nothing changed, nothing opened


def test_the_cache_is_bounded_and_the_avatar_of_a_session_stays_with_it(tmp_path):
    root = tmp_path
    for name, gain in (("one", (1.5, 1, 1)), ("two", (1, 1.5, 1)), ("three", (1, 1, 1.5))):
        tinted_portrait(root, name, gain)
    tinted_portrait(root, "portrait_astronaut", (1.0, 1.0, 1.0))
    srv = RunningServer(["--avatar_root", str(root), "--asr", "off", "--max_avatars", "1"])
    try:
        cache = srv.live.avatars
        first = cache.get("one")
        cache.get("two")  # pushes "one" out
        assert cache.cached() == ["portrait_astronaut", "two"]
        assert cache.get("one") is not first and cache.loads == 3  # loaded again
        assert cache.get("portrait_astronaut") is srv.live.model.avatar  # the default never leaves
        two = cache.get("two")
        cache.forget("two")  # its folder was made anew (an avatar task's overwrite)
        assert cache.get("two") is not two
    finally:
        srv.stop()


def test_the_page_opens_a_session_with_the_avatar_of_its_address_and_switches_it(avatar_server):
    srv = avatar_server
    with headless_page() as page:
        page.goto(srv.url + "/?avatar=blue_one")
        page.click("#start")
        page.wait_for_function("document.querySelector('#sessionid').textContent !== 'none'", timeout=20000)
        sid = int(page.locator("#sessionid").inner_text())
        assert srv.live.sessions[sid].avatar_id == "blue_one"
        page.fill("#avatar", "red_one")
        page.click("#set-avatar")
        page.wait_for_function("document.querySelector('#status').textContent === 'avatar: red_one'",
                               timeout=10000)
        assert srv.live.sessions[sid].avatar_id == "red_one"
        page.fill("#avatar", "nowhere")
        page.click("#set-avatar")
        page.wait_for_function("document.querySelector('#status').textContent.includes('no avatar')",
                               timeout=10000)
        assert srv.live.sessions[sid].avatar_id == "red_one"
        page.click("#stop")
