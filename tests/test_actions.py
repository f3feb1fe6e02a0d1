"""Actions (upstream's custom video): clips played on /set_audiotype with their sound, clips
shown while a /human text is spoken, the idle loop replaced, and bad configurations named."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import cv2
import numpy as np
import pytest
from avatar_folders import FRAME, PORTRAIT, closest, colour_clip, tinted_portrait, tone_wav

import app as livetalking
from conftest import RunningServer
from livepeer import LivePeer
from sseclient import SseClient
from waiting import post_json, wait_until

BOX = (200, 200, 300, 300)
BLUE, GREEN, RED = (255, 0, 0), (0, 255, 0), (0, 0, 255)
CLIP_SOUND_S = 1.6


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    base = tmp_path_factory.mktemp("customvideo")
    colour_clip(base / "wave", BLUE, 10)
    colour_clip(base / "nod", GREEN, 30)
    tinted_portrait(base, "talking_clip", (0.4, 1.6, 1.6))  # an avatar folder: lip-synced
    tone_wav(base / "wave.wav", CLIP_SOUND_S)
    tone_wav(base / "talk.wav", CLIP_SOUND_S, hz=140)
    config = [
        {"audiotype": 2, "imgpath": str(base / "wave"), "audiopath": str(base / "wave.wav")},
        {"audiotype": 3, "imgpath": str(base / "nod")},
        {"audiotype": 4, "imgpath": str(base / "talking_clip"), "audiopath": str(base / "talk.wav")},
    ]
    (base / "custom_config.json").write_text(json.dumps(config))
    return base


@pytest.fixture(scope="module")
def action_server(clips):
    srv = RunningServer(["--customvideo_config", str(clips / "custom_config.json"), "--asr", "off"])
    yield srv
    srv.stop()


def refs(clips) -> dict[str, np.ndarray]:
    x1, y1, x2, y2 = BOX
    solid = {name: np.full((y2 - y1, x2 - x1, 3), bgr, np.uint8) for name, bgr in
             (("blue", BLUE), ("green", GREEN), ("red", RED))}
    return {"avatar": cv2.imread(str(PORTRAIT / FRAME))[y1:y2, x1:x2],
            "talking_clip": cv2.imread(str(clips / "talking_clip" / FRAME))[y1:y2, x1:x2], **solid}


def seen_between(peer: LivePeer, looks: dict, start: float, end: float) -> list[str]:
    return [closest(v.mouth, looks) for v in peer.video if start <= v.arrival < end]


async def watch(srv, body_url: list[str], bodies: list[dict], until, timeout: float = 30.0, gap: float = 0.0):
    """A viewer and its events while `bodies` are posted to `body_url` in turn; returns the
    peer, the events and the time of each post."""
    async with aiohttp.ClientSession() as http:
        peer = LivePeer(srv.url, BOX)
        try:
            await peer.connect(http)
            await peer.wait_for_media()
            events = SseClient(f"{srv.url}/sse?sessionid={peer.sessionid}")
            await events.connect(http)
            posted = []
            for url, body in zip(body_url, bodies, strict=True):
                if posted:
                    await asyncio.sleep(gap)
                posted.append(time.monotonic())
                status, reply = await post_json(http, srv.url + url, {"sessionid": peer.sessionid, **body})
                assert status == 200, reply
            assert await wait_until(lambda: until(peer, events), timeout), events.events
            await asyncio.sleep(0.5)  # a little of what follows
            await events.close()
            return peer, events, posted
        finally:
            await peer.close()


def test_set_audiotype_plays_the_clip_with_its_sound_then_returns_to_idle(action_server, clips):
    srv = action_server

    def done(peer, events):
        ends = [e for e in events.events if e.get("status") == "end" and e.get("audiotype") == 2]
        return ends and peer.video[-1].arrival > ends[0]["_at"] + 1.0

    peer, events, (posted,) = asyncio.run(watch(srv, ["/set_audiotype"], [{"audiotype": 2}], done))
    start = next(e for e in events.events if e.get("status") == "start")
    end = next(e for e in events.events if e.get("status") == "end")
    assert start["audiotype"] == 2 and start["action"] == 2
    looks = refs(clips)
    during = seen_between(peer, looks, start["_at"] + 0.3, end["_at"] - 0.3)
    after = seen_between(peer, looks, end["_at"] + 0.6, float("inf"))
    before = seen_between(peer, looks, 0, posted)
    assert set(before) == {"avatar"}, before
    assert during and set(during) == {"blue"}, during
    assert after and set(after) == {"avatar"}, after
    # Its sound is heard: loud for about the clip's length.
    loud = [a for a in peer.audio if a.rms > 0.05]
    assert abs(len(loud) * 0.02 - CLIP_SOUND_S) < 0.3, len(loud)


def test_a_clip_without_sound_plays_once_and_a_human_text_can_play_a_clip(action_server, clips):
    srv = action_server
    text = "I nod while I say this."

    def done(peer, events):
        ends = [e for e in events.events if e.get("status") == "end" and e.get("text") == text]
        return ends and peer.video[-1].arrival > ends[0]["_at"] + 1.0

    peer, events, (cued, spoken) = asyncio.run(watch(
        srv, ["/set_audiotype", "/human"], [{"audiotype": 3}, {"text": text, "action": 3}], done, gap=2.0))
    looks = refs(clips)
    start = next(e for e in events.events if e.get("status") == "start")
    end = next(e for e in events.events if e.get("status") == "end")
    assert start["action"] == 3
    # The nod (30 frames, 1.2 s) once when it is cued, then the avatar until the text is
    # spoken, with the nod again.
    cue = seen_between(peer, looks, cued, spoken)
    assert cue[0] == "avatar" and "green" in cue and cue[-1] == "avatar", cue
    during = seen_between(peer, looks, start["_at"] + 0.2, end["_at"] - 0.2)
    assert during and set(during) == {"green"}, during
    assert set(seen_between(peer, looks, end["_at"] + 0.6, float("inf"))) == {"avatar"}


def test_an_avatar_clip_is_lip_synced_and_an_interrupt_stops_a_clip(action_server, clips):
    srv = action_server

    def started(peer, events):
        return any(e.get("status") == "start" for e in events.events) and len(peer.video) > 40

    async def scenario():
        async with aiohttp.ClientSession() as http:
            peer = LivePeer(srv.url, BOX)
            try:
                await peer.connect(http)
                await peer.wait_for_media()
                events = SseClient(f"{srv.url}/sse?sessionid={peer.sessionid}")
                await events.connect(http)
                sid = peer.sessionid
                assert (await post_json(http, srv.url + "/set_audiotype", {"sessionid": sid, "audiotype": 4}))[0] == 200
                start = await events.wait_for(lambda e: e.get("status") == "start", 20)
                await asyncio.sleep(0.8)
                interrupted = time.monotonic()
                assert (await post_json(http, srv.url + "/interrupt_talk", {"sessionid": sid}))[0] == 200
                await asyncio.sleep(1.5)
                await events.close()
                return peer, start, interrupted
            finally:
                await peer.close()

    peer, start, interrupted = asyncio.run(scenario())
    looks = refs(clips)
    during = [v for v in peer.video if start["_at"] + 0.2 <= v.arrival < interrupted]
    assert during and {closest(v.mouth, looks) for v in during} == {"talking_clip"}
    # Lip-synced: the clip's mouth moves with its sound (its frames are one photo otherwise).
    assert max(float(np.abs(v.mouth.astype(int) - during[0].mouth.astype(int)).mean()) for v in during) > 2
    after = seen_between(peer, looks, interrupted + 0.6, float("inf"))
    assert after and set(after) == {"avatar"}, after
    assert all(a.rms < 0.01 for a in peer.audio if a.arrival > interrupted + 0.6)


def test_audiotype_1_replaces_the_idle_loop(clips, tmp_path):
    config = tmp_path / "idle.json"
    config.write_text(json.dumps([{"audiotype": 1, "imgpath": str(clips / "wave")}]))
    srv = RunningServer(["--customvideo_config", str(config), "--asr", "off"])
    try:
        def done(peer, events):
            return any(e.get("status") == "end" for e in events.events) and len(peer.video) > 80

        peer, events, (posted,) = asyncio.run(watch(srv, ["/human"], [{"text": "Now I speak."}], done))
    finally:
        srv.stop()
    looks = refs(clips)
    start = next(e for e in events.events if e.get("status") == "start")
    end = next(e for e in events.events if e.get("status") == "end")
    assert set(seen_between(peer, looks, 0, posted)) == {"blue"}  # idle: the clip
    assert set(seen_between(peer, looks, start["_at"] + 0.2, end["_at"] - 0.2)) == {"avatar"}  # speaking
    assert set(seen_between(peer, looks, end["_at"] + 0.6, float("inf"))) == {"blue"}


def test_unknown_actions_and_bad_clips_are_refused_with_their_names(action_server, clips, tmp_path):
    srv = action_server

    async def scenario():
        async with aiohttp.ClientSession() as http:
            status, reply = await post_json(http, srv.url + "/session", {})
            sid = reply["sessionid"]
            try:
                answers = {
                    "unknown": await post_json(http, srv.url + "/set_audiotype", {"sessionid": sid, "audiotype": 9}),
                    "text": await post_json(http, srv.url + "/set_audiotype", {"sessionid": sid, "audiotype": "two"}),
                    "human": await post_json(http, srv.url + "/human", {"sessionid": sid, "text": "hi", "action": 9}),
                    "bool": await post_json(http, srv.url + "/human", {"sessionid": sid, "text": "hi", "action": True}),
                    "outside": await post_json(http, srv.url + "/session", {"custom_config": [
                        {"audiotype": 5, "imgpath": str(clips / "nod")}]}),
                    "missing": await post_json(http, srv.url + "/session", {"custom_config": [
                        {"audiotype": 5, "imgpath": "data/customvideo/none"}]}),
                    "shape": await post_json(http, srv.url + "/session", {"custom_config": [{"imgpath": "x"}]}),
                    "string": await post_json(http, srv.url + "/set_audiotype", {"sessionid": sid, "audiotype": "3"}),
                }
                return answers, len(srv.live.sessions)
            finally:
                async with http.delete(f"{srv.url}/session/{sid}"):
                    pass

    answers, live = asyncio.run(scenario())
    assert answers.pop("string")[0] == 200  # upstream's pages send form values as strings
    for name, (status, reply) in answers.items():
        assert status == 400 and reply["code"] == -1, (name, reply)
    assert "2, 3, 4" in answers["unknown"][1]["msg"]
    assert "outside" in answers["outside"][1]["msg"]
    assert live == 1

    # At start-up: a missing folder, an unreadable frame, a bad file: exit 2, the log names it.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "00000000.png").write_bytes(b"not a png")
    for entries in ([{"audiotype": 2, "imgpath": str(tmp_path / "nowhere")}],
                    [{"audiotype": 2, "imgpath": str(broken)}],
                    "not json"):
        config = tmp_path / "bad.json"
        config.write_text(entries if isinstance(entries, str) else json.dumps(entries))
        with pytest.raises(ValueError) as refused:
            livetalking.LiveTalking(livetalking.parse_args(["--customvideo_config", str(config), "--asr", "off",
                                                            "--capacity", "1"]))
        assert "bad.json" in str(refused.value) or "nowhere" in str(refused.value) or "00000000.png" in str(
            refused.value), refused.value


def test_a_requests_clips_are_loaded_once_and_bounded(tmp_path):
    root, clip_dir = tmp_path / "avatars", tmp_path / "customvideo"
    tinted_portrait(root, "portrait_astronaut", (1.0, 1.0, 1.0))
    tinted_portrait(root, "pointing", (0.5, 1.5, 0.5))
    tinted_portrait(clip_dir, "stray_avatar", (1.5, 0.5, 0.5))
    colour_clip(clip_dir / "wave", BLUE, 10)
    colour_clip(clip_dir / "long", GREEN, 200)
    srv = RunningServer(["--avatar_root", str(root), "--customvideo_dir", str(clip_dir), "--asr", "off"])

    def entries(folder, n):
        return [{"audiotype": 2 + i, "imgpath": str(folder)} for i in range(n)]

    async def scenario():
        async with aiohttp.ClientSession() as http:
            opened = []
            for _ in range(2):
                status, reply = await post_json(http, srv.url + "/session", {"custom_config": [
                    *entries(clip_dir / "wave", 30), {"audiotype": 99, "imgpath": str(root / "pointing")}]})
                assert status == 200, reply
                opened.append(reply["sessionid"])
            refused = {
                "too many frames": await post_json(http, srv.url + "/session",
                                                   {"custom_config": entries(clip_dir / "long", 16)}),
                "avatar elsewhere": await post_json(http, srv.url + "/session", {"custom_config": [
                    {"audiotype": 2, "imgpath": str(clip_dir / "stray_avatar")}]}),
            }
            sessions = [srv.live.sessions[sid] for sid in opened]
            for sid in opened:
                async with http.delete(f"{srv.url}/session/{sid}"):
                    pass
            return sessions, refused

    try:
        sessions, refused = asyncio.run(scenario())
        loads = srv.live.avatars.loads
    finally:
        srv.stop()
    clips = [s.stage.clips for s in sessions]
    # One copy of the frames for every clip and session naming the folder; the avatar clip
    # comes from the avatar cache, loaded once.
    assert len({id(c[k].frames) for c in clips for k in range(2, 32)}) == 1
    assert clips[0][99].avatar is clips[1][99].avatar and loads == 1
    for name, (status, reply) in refused.items():
        assert status == 400, (name, reply)
    assert "at most 3000" in refused["too many frames"][1]["msg"]
    assert "outside the avatar root" in refused["avatar elsewhere"][1]["msg"]


def test_hostile_bodies_to_the_new_calls_are_refused_and_the_session_streams_on(action_server):
    srv = action_server

    async def scenario():
        async with aiohttp.ClientSession() as http:
            status, reply = await post_json(http, srv.url + "/session", {})
            sid = reply["sessionid"]
            session = srv.live.sessions[sid]
            played = session.player.slots_played
            bodies = [
                ("/set_audiotype", {"sessionid": sid, "audiotype": "²"}),
                ("/set_audiotype", {"sessionid": sid, "audiotype": "9" * 5000}),
                ("/set_audiotype", {"sessionid": sid, "audiotype": 2**80}),
                ("/set_audiotype", {"sessionid": sid, "audiotype": [2]}),
                ("/set_avatar", {"sessionid": sid, "avatar": "portrait\x00astronaut"}),
                ("/set_avatar", {"sessionid": sid, "avatar": "ａｖａｔａｒ"}),
                ("/set_avatar", {"sessionid": sid, "avatar": {"name": "x"}}),
                ("/human", {"sessionid": sid, "text": "hi", "action": -1}),
                ("/session", {"custom_config": "[" * 10000}),
                ("/session", {"custom_config": [{"audiotype": 2, "imgpath": "\x00" * 300}]}),
                ("/session", {"custom_config": [{"audiotype": 2, "imgpath": "x" * 5000}]}),
                ("/session", {"custom_config": [{"audiotype": i, "imgpath": "x"} for i in range(2, 200)]}),
            ]
            answers = [(url, await post_json(http, srv.url + url, body)) for url, body in bodies]
            async with http.post(srv.url + "/session", data=b'{"custom_config": "' + b"x" * (300 * 1024) + b'"}',
                                 headers={"Content-Type": "application/json"}) as resp:
                huge = resp.status
            await wait_until(lambda: session.player.slots_played > played + 25, 10)
            streamed = session.player.slots_played - played
            async with http.delete(f"{srv.url}/session/{sid}"):
                pass
            return answers, huge, streamed, session.avatar_id, len(srv.live.sessions)

    answers, huge, streamed, avatar, live = asyncio.run(scenario())
    for url, (status, reply) in answers:
        assert 400 <= status < 500 and reply["code"] == -1, (url, status, reply)
    assert huge == 413
    assert streamed > 25 and avatar == srv.live.opt.avatar_id and live == 0
