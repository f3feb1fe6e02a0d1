"""How fast a session changes what it shows, against `app.py` run as a subprocess with a real
WebRTC viewer (aiortc) on loopback.

    .venv/bin/python bench/avatars.py [--repeats 5]

Prints JSON:
- avatar_load_ms: POST /set_avatar of an avatar no session has asked for yet (it is read
  from disk) until its answer;
- avatar_cached_ms: the same call for an avatar already in the cache;
- avatar_switch_to_frame_ms: from POST /set_avatar (cached) to the first frame of the new
  avatar at the viewer (median of --repeats);
- action_to_frame_ms: from POST /set_audiotype (a plain clip) to its first frame at the viewer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import cv2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from avatar_folders import FRAME, closest, colour_clip, tinted_portrait  # noqa: E402
from machine import machine_name  # noqa: E402

from appprocess import AppProcess  # noqa: E402
from livepeer import LivePeer  # noqa: E402
from waiting import post_json, wait_until  # noqa: E402

BOX = (200, 200, 300, 300)
AVATARS = {"portrait_astronaut": (1.0, 1.0, 1.0), "blue_one": (1.7, 0.5, 0.5), "red_one": (0.5, 0.5, 1.7),
           "green_one": (0.5, 1.7, 0.5)}


async def first_frame_of(peer: LivePeer, looks: dict, name: str, since: float, timeout: float = 10.0) -> float:
    """Seconds from `since` to the first frame after it that looks like `name`."""
    found: list[float] = []

    def seen() -> bool:
        for sample in peer.video_since(since):
            if closest(sample.mouth, looks) == name:
                found.append(sample.arrival)
                return True
        return False

    assert await wait_until(seen, timeout), f"{name} never showed"
    return found[0] - since


async def timed_post(http: aiohttp.ClientSession, url: str, body: dict) -> float:
    started = time.monotonic()
    status, reply = await post_json(http, url, body)
    assert status == 200, reply
    return time.monotonic() - started


async def measure(server: AppProcess, root: Path, repeats: int) -> dict:
    x1, y1, x2, y2 = BOX
    looks = {name: cv2.imread(str(root / name / FRAME))[y1:y2, x1:x2] for name in AVATARS}
    looks["clip"] = cv2.imread(str(root / "clips" / "wave" / "00000000.png"))[:1, :1].repeat(y2 - y1, 0).repeat(
        x2 - x1, 1)
    async with aiohttp.ClientSession() as http:
        await server.wait_ready(http)
        peer = LivePeer(server.url, BOX)
        try:
            await peer.connect(http)
            await peer.wait_for_media()
            sid = peer.sessionid
            url = server.url + "/set_avatar"
            load = await timed_post(http, url, {"sessionid": sid, "avatar": "green_one"})
            cached, to_frame, to_action = [], [], []
            for i in range(repeats):
                name = ("blue_one", "red_one")[i % 2]
                await timed_post(http, url, {"sessionid": sid, "avatar": name})  # in the cache from now on
                await first_frame_of(peer, looks, name, time.monotonic())
                await asyncio.sleep(0.5)
            for i in range(repeats):
                name = ("blue_one", "red_one")[(repeats + i) % 2]  # never the avatar already shown
                since = time.monotonic()
                cached.append(await timed_post(http, url, {"sessionid": sid, "avatar": name}))
                to_frame.append(await first_frame_of(peer, looks, name, since))
                await asyncio.sleep(0.5)
            for _ in range(repeats):
                since = time.monotonic()
                await timed_post(http, server.url + "/set_audiotype", {"sessionid": sid, "audiotype": 2})
                to_action.append(await first_frame_of(peer, looks, "clip", since))
                await asyncio.sleep(1.5)  # the clip (20 frames) plays out
        finally:
            await peer.close()
    return {
        "avatar_load_ms": round(1000 * load, 1),
        "avatar_cached_ms": round(1000 * statistics.median(cached), 1),
        "avatar_switch_to_frame_ms": round(1000 * statistics.median(to_frame), 1),
        "avatar_switch_to_frame_all_ms": [round(1000 * t, 1) for t in to_frame],
        "action_to_frame_ms": round(1000 * statistics.median(to_action), 1),
        "action_to_frame_all_ms": [round(1000 * t, 1) for t in to_action],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-avatars-") as tmp:
        root = Path(tmp)
        for name, gain in AVATARS.items():
            tinted_portrait(root, name, gain)
        colour_clip(root / "clips" / "wave", (255, 0, 0), 20)
        config = root / "clips" / "custom_config.json"
        config.write_text(json.dumps([{"audiotype": 2, "imgpath": str(root / "clips" / "wave")}]))
        server = AppProcess(["--avatar_root", str(root), "--asr", "off", "--capacity", "2",
                             "--customvideo_config", str(config)])
        try:
            result = asyncio.run(measure(server, root, args.repeats))
        finally:
            server.stop()
    print(json.dumps({"machine": machine_name(), **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
