"""POST /api/avatar/task end to end: real servers make portrait and wav2lip avatars from videos,
with rising progress, a preview, webhooks in order (retried), cancels that leave nothing, and
bad inputs refused before any task exists."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import aiohttp
import cv2
import numpy as np
import pytest
from aiohttp import web
from chromium import create_on_avatar_page, headless_page

from conftest import RunningServer
from test_genavatar import shifted, write_video
from tiny_models import PORTRAIT

torch = pytest.importorskip("torch")

from lipreal import load_lip_avatar  # noqa: E402
from portrait.render import PortraitAvatar  # noqa: E402
from wav2lip.checkpoint import save_checkpoint  # noqa: E402
from wav2lip.genavatar import make_avatar  # noqa: E402
from wav2lip.random_init import random_wav2lip  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FINISHED = {"completed", "failed", "cancelled"}
TASK_TIMEOUT_S = 180.0  # a bound for a slow machine, not a speed requirement
UPLOAD_MB = 2


def run(coro):
    return asyncio.run(coro)


def portrait() -> np.ndarray:
    image = cv2.imread(str(PORTRAIT))
    assert image is not None
    return image


def files_under(folder: Path) -> list[Path]:
    return [Path(d) / f for d, _, names in os.walk(folder) for f in names]


def leftovers(root: Path) -> list[str]:
    """Work folders of the staged builds (.NAME.partial-PID, .NAME.old-PID)."""
    return [p.name for p in root.iterdir() if p.name.startswith(".")]


def form(fields: dict[str, str], video: bytes | None = None, filename: str = "talk.mp4") -> aiohttp.FormData:
    data = aiohttp.FormData()
    for name, value in fields.items():
        data.add_field(name, value)
    if video is not None:
        data.add_field("video_file", video, filename=filename, content_type="application/octet-stream")
    return data


async def submit(http: aiohttp.ClientSession, url: str, data: aiohttp.FormData) -> tuple[int, dict]:
    async with http.post(url + "/api/avatar/task", data=data) as resp:
        return resp.status, await resp.json()


async def task_state(http: aiohttp.ClientSession, url: str, task_id: str) -> dict:
    async with http.get(f"{url}/api/avatar/task/{task_id}") as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.json())["data"]


async def follow(http: aiohttp.ClientSession, url: str, task_id: str) -> tuple[dict, list[int]]:
    """Poll a task until it ends; its last state and every progress value seen."""
    seen: list[int] = []
    deadline = time.monotonic() + TASK_TIMEOUT_S
    while time.monotonic() < deadline:
        state = await task_state(http, url, task_id)
        seen.append(state["progress"])
        if state["status"] in FINISHED:
            return state, seen
        await asyncio.sleep(0.05)
    raise AssertionError(f"task {task_id} did not end: {state}")


async def wait_status(http: aiohttp.ClientSession, url: str, task_id: str, status: str) -> dict:
    deadline = time.monotonic() + TASK_TIMEOUT_S
    while time.monotonic() < deadline:
        state = await task_state(http, url, task_id)
        if state["status"] == status or state["status"] in FINISHED:
            return state
        await asyncio.sleep(0.02)
    raise AssertionError(f"task {task_id} never became {status}")


class Receiver:
    """A webhook receiver on loopback: records each JSON body; fails the first `fail_first`
    calls with 500."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.calls = 0
        self.bodies: list[dict] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        if self.calls <= self.fail_first:
            return web.Response(status=500, text="not yet")
        self.bodies.append(await request.json())
        return web.json_response({"ok": True})

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/hook?secret=abc"
        return self

    async def __aexit__(self, *_) -> None:
        await self.runner.cleanup()

    async def wait_final(self) -> list[dict]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (self.bodies and self.bodies[-1]["status"] in FINISHED):
            await asyncio.sleep(0.02)
        return self.bodies


def statuses(bodies: list[dict]) -> list[str]:
    """The status changes of the notifications (progress ones repeat 'running')."""
    out: list[str] = []
    for body in bodies:
        if not out or out[-1] != body["status"]:
            out.append(body["status"])
    return out


# --- a portrait server (the default model) -----------------------------------------------------
@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("avatar_tasks")
    root, uploads, videos = tmp / "avatars", tmp / "uploads", tmp / "videos"
    shutil.copytree(ROOT / "data" / "avatars" / "portrait_astronaut", root / "portrait_astronaut")
    videos.mkdir()
    frame = portrait()
    write_video(videos / "short.mp4", [shifted(frame, i) for i in range(4)])
    small = cv2.resize(frame, (256, 256))
    # Long enough (about 10 s of face detection) to be cancelled while it runs.
    write_video(videos / "long.mp4", [shifted(small, i % 8) for i in range(400)])
    write_video(videos / "blank.mp4", [np.full((128, 128, 3), 90, np.uint8)] * 3)
    (tmp / "outside.mp4").write_bytes((videos / "short.mp4").read_bytes())
    (videos / "escape.mp4").symlink_to(tmp / "outside.mp4")
    return {"root": root, "uploads": uploads, "videos": videos, "tmp": tmp}


@pytest.fixture(scope="module")
def srv(folders) -> RunningServer:
    server = RunningServer([
        "--capacity", "2", "--asr", "off", "--avatar_root", str(folders["root"]),
        "--avatar_upload_dir", str(folders["uploads"]), "--avatar_video_dir", str(folders["videos"]),
        "--avatar_upload_mb", str(UPLOAD_MB),
    ])
    yield server
    server.stop()


def test_portrait_avatar_from_an_uploaded_video(srv, folders):
    video = (folders["videos"] / "short.mp4").read_bytes()

    async def scenario():
        async with aiohttp.ClientSession() as http, Receiver() as hook:
            status, reply = await submit(http, srv.url, form({"avatar_id": "astro_new", "size": "256",
                                                              "notifyurl": hook.url}, video))
            assert status == 200 and reply["code"] == 0, reply
            task_id = reply["data"]["task_id"]
            state, seen = await follow(http, srv.url, task_id)
            async with http.get(srv.url + state["preview"]) as resp:
                preview = (resp.status, resp.content_type, await resp.read())
            async with http.get(srv.url + "/api/avatar/tasks") as resp:
                listed = (await resp.json())["data"]["tasks"]
            # The new avatar is one a session can show at once.
            async with http.post(srv.url + "/session", json={"avatar": "astro_new"}) as resp:
                opened = await resp.json()
            shown = srv.live.sessions[opened["sessionid"]].avatar_id
            async with http.delete(f"{srv.url}/session/{opened['sessionid']}"):
                pass
            return state, seen, preview, listed, await hook.wait_final(), shown

    state, seen, preview, listed, bodies, shown = run(scenario())
    assert shown == "astro_new"
    assert state["status"] == "completed", state
    assert state["model"] == "portrait" and state["avatar_id"] == "astro_new" and state["error_msg"] == ""
    assert state["created_at"].endswith("Z") and state["started_at"] and state["finished_at"]
    assert seen == sorted(seen) and seen[-1] == 100 and all(p < 100 for p in seen[:-1])
    avatar = PortraitAvatar.load(folders["root"] / "astro_new")
    assert avatar is not None
    status, kind, data = preview
    assert status == 200 and kind == "image/png"
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (256, 256, 3)
    assert state["task_id"] in [t["task_id"] for t in listed]
    assert statuses(bodies) == ["pending", "running", "completed"]
    assert bodies[-1] == state
    assert files_under(folders["uploads"]) == [] and leftovers(folders["root"]) == []


def test_a_cancelled_task_leaves_nothing_running_or_pending(srv, folders):
    """A long wav2lip build is cancelled while it runs, a task queued behind it while pending."""

    async def scenario():
        async with aiohttp.ClientSession() as http, Receiver() as hook:
            _, long = await submit(http, srv.url, form({"avatar_id": "long_one", "model": "wav2lip",
                                                        "video_path": "long.mp4", "notifyurl": hook.url}))
            long_id = long["data"]["task_id"]
            running = await wait_status(http, srv.url, long_id, "running")
            video = (folders["videos"] / "short.mp4").read_bytes()
            _, queued = await submit(http, srv.url, form({"avatar_id": "queued_one"}, video))
            queued_id = queued["data"]["task_id"]
            pending = await task_state(http, srv.url, queued_id)
            async with http.delete(f"{srv.url}/api/avatar/task/{queued_id}") as resp:
                cancel_pending = (resp.status, await resp.json())
            uploads_after_pending = files_under(folders["uploads"])
            async with http.delete(f"{srv.url}/api/avatar/task/{long_id}") as resp:
                cancel_running = (resp.status, await resp.json())
            final, _ = await follow(http, srv.url, long_id)
            async with http.delete(f"{srv.url}/api/avatar/task/{long_id}") as resp:
                again = resp.status
            async with http.delete(f"{srv.url}/api/avatar/task/{'0' * 32}") as resp:
                unknown = resp.status
            return (running, pending, cancel_pending, uploads_after_pending, cancel_running, final, again, unknown,
                    await hook.wait_final())

    running, pending, cancel_pending, uploads_after, cancel_running, final, again, unknown, bodies = run(scenario())
    assert running["status"] == "running", running
    assert pending["status"] == "pending"
    assert cancel_pending[0] == 200 and cancel_pending[1]["data"]["status"] == "cancelled"
    assert uploads_after == []  # the queued task's upload went with it
    assert cancel_running[0] == 200, cancel_running
    assert final["status"] == "cancelled" and final["progress"] < 100, final
    assert again == 409 and unknown == 404
    assert not (folders["root"] / "long_one").exists() and not (folders["root"] / "queued_one").exists()
    assert leftovers(folders["root"]) == [] and files_under(folders["uploads"]) == []
    assert statuses(bodies) == ["pending", "running", "cancelled"]


def test_a_video_without_a_face_fails_with_the_makers_message(srv, folders):
    async def scenario():
        async with aiohttp.ClientSession() as http:
            _, reply = await submit(http, srv.url, form({"avatar_id": "faceless", "model": "wav2lip",
                                                         "video_path": "blank.mp4"}))
            return await follow(http, srv.url, reply["data"]["task_id"])

    state, seen = run(scenario())
    assert state["status"] == "failed" and "no face found" in state["error_msg"], state
    assert "blank.mp4" in state["error_msg"] and str(folders["videos"]) not in state["error_msg"]
    assert state["preview"] is None and max(seen) < 100
    assert not (folders["root"] / "faceless").exists() and leftovers(folders["root"]) == []


def test_a_photo_upload_makes_an_avatar_and_a_full_queue_answers_503(srv, folders):
    """A PNG upload for the default model, a JSON body naming a video_path; then one task running
    and MAX_PENDING waiting: the next is refused with 503 before its body is read, and
    cancelling them leaves nothing."""
    from avatar_tasks import MAX_PENDING

    async def scenario():
        async with aiohttp.ClientSession() as http:
            _, reply = await submit(http, srv.url, form({"avatar_id": "from_photo"}, PORTRAIT.read_bytes(),
                                                        "me.png"))
            photo, _ = await follow(http, srv.url, reply["data"]["task_id"])
            async with http.post(srv.url + "/api/avatar/task",
                                 json={"avatar_id": "by_json", "video_path": "short.mp4", "size": 128}) as resp:
                assert resp.status == 200, await resp.text()
                by_json, _ = await follow(http, srv.url, (await resp.json())["data"]["task_id"])
            _, long = await submit(http, srv.url, form({"avatar_id": "busy", "model": "wav2lip",
                                                        "video_path": "long.mp4"}))
            ids = [long["data"]["task_id"]]
            await wait_status(http, srv.url, ids[0], "running")
            for i in range(MAX_PENDING):
                status, reply = await submit(http, srv.url, form({"avatar_id": f"wait{i}", "video_path": "short.mp4"}))
                assert status == 200, reply
                ids.append(reply["data"]["task_id"])
            full = await submit(http, srv.url, form({"avatar_id": "one_more", "video_path": "short.mp4"}))
            for task_id in reversed(ids):  # the pending ones first, so none starts
                async with http.delete(f"{srv.url}/api/avatar/task/{task_id}") as resp:
                    assert resp.status == 200, await resp.text()
            ends = [(await follow(http, srv.url, task_id))[0]["status"] for task_id in ids]
            return photo, by_json, full, ends

    photo, by_json, full, ends = run(scenario())
    assert photo["status"] == "completed", photo
    assert by_json["status"] == "completed" and by_json["options"] == {"size": 128}, by_json
    assert PortraitAvatar.load(folders["root"] / "from_photo") is not None
    assert full[0] == 503 and str(MAX_PENDING) in full[1]["msg"]
    assert ends == ["cancelled"] * (MAX_PENDING + 1)
    names = {p.name for p in folders["root"].iterdir()}
    assert not names & {"busy", "one_more", *(f"wait{i}" for i in range(MAX_PENDING))}
    assert leftovers(folders["root"]) == [] and files_under(folders["uploads"]) == []


def chunked_form(fields: dict[str, str], payload_size: int) -> tuple[object, str]:
    """A multipart body sent without a length (chunked), its file part `payload_size` bytes."""
    boundary = "avatarboundary"
    head = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                    for k, v in fields.items())
    head += (f'--{boundary}\r\nContent-Disposition: form-data; name="video_file"; filename="big.mp4"\r\n'
             "Content-Type: application/octet-stream\r\n\r\n").encode()

    async def body():
        yield head
        for _ in range(payload_size // 65536):
            yield b"\x00\x00\x00\x18ftypmp42" + b"\x00" * (65536 - 12)
        yield f"\r\n--{boundary}--\r\n".encode()

    return body(), f"multipart/form-data; boundary={boundary}"


def test_bad_inputs_are_refused_before_any_task(srv, folders):
    video = (folders["videos"] / "short.mp4").read_bytes()
    cases = {
        "text_as_mp4": ({"avatar_id": "t1"}, b"just some text, not a video\n" * 40, 400, "neither a video"),
        "too_large": ({"avatar_id": "t2"}, b"\x00" * ((UPLOAD_MB + 1) * 2**20), 413, f"{UPLOAD_MB} MB"),
        "dotdot_id": ({"avatar_id": "../x"}, video, 400, "avatar_id"),
        "slash_id": ({"avatar_id": "a/b"}, video, 400, "avatar_id"),
        "long_id": ({"avatar_id": "a" * 65}, video, 400, "avatar_id"),
        "no_id": ({}, video, 400, "avatar_id"),
        "outside": ({"avatar_id": "t3", "video_path": "../outside.mp4"}, None, 400, "inside --avatar_video_dir"),
        "absolute": ({"avatar_id": "t3", "video_path": str(folders["tmp"] / "outside.mp4")}, None, 400,
                     "inside --avatar_video_dir"),
        "symlink": ({"avatar_id": "t3", "video_path": "escape.mp4"}, None, 400, "inside --avatar_video_dir"),
        "missing_path": ({"avatar_id": "t3", "video_path": "nope.mp4"}, None, 400, "no file"),
        "both": ({"avatar_id": "t3", "video_path": "short.mp4"}, video, 400, "not both"),
        "no_video": ({"avatar_id": "t3"}, None, 400, "video_file"),
        "unknown_model": ({"avatar_id": "t4", "model": "nerf"}, video, 400, "'model'"),
        "existing": ({"avatar_id": "portrait_astronaut"}, video, 409, "overwrite"),
        "bad_size": ({"avatar_id": "t5", "size": "huge"}, video, 400, "'size'"),
        "small_size": ({"avatar_id": "t5", "size": "8"}, video, 400, "'size'"),
        "bad_pads": ({"avatar_id": "t5", "model": "wav2lip", "pads": "1 2 3"}, video, 400, "'pads'"),
        "bad_img_size": ({"avatar_id": "t5", "model": "wav2lip", "img_size": "4"}, video, 400, "'img_size'"),
        "other_models_option": ({"avatar_id": "t5", "bbox_shift": "3"}, video, 400, "'bbox_shift'"),
        "bad_mode": ({"avatar_id": "t5", "model": "musetalk", "parsing_mode": "x"}, video, 400, "'parsing_mode'"),
        "bad_overwrite": ({"avatar_id": "t5", "overwrite": "maybe"}, video, 400, "'overwrite'"),
        "ftp_notify": ({"avatar_id": "t6", "notifyurl": "ftp://example.com/x"}, video, 400, "'notifyurl'"),
        "long_notify": ({"avatar_id": "t6", "notifyurl": "http://a.example/" + "x" * 2050}, video, 400,
                        "'notifyurl'"),
        "no_checkpoint": ({"avatar_id": "t7", "model": "ultralight"}, video, 400, "'checkpoint'"),
    }

    async def scenario():
        async with aiohttp.ClientSession() as http:
            async with http.get(srv.url + "/api/avatar/tasks") as resp:
                before = len((await resp.json())["data"]["tasks"])
            results = {}
            for name, (fields, data, _, _) in cases.items():
                results[name] = await submit(http, srv.url, form(fields, data))
            body, kind = chunked_form({"avatar_id": "t8"}, (UPLOAD_MB + 1) * 2**20)
            async with http.post(srv.url + "/api/avatar/task", data=body, headers={"Content-Type": kind}) as resp:
                results["chunked_too_large"] = (resp.status, await resp.json())
            async with http.post(srv.url + "/api/avatar/task", data=b"x", headers={"Content-Type": "text/plain"}) \
                    as resp:
                results["not_a_form"] = (resp.status, await resp.json())
            async with http.post(srv.url + "/api/avatar/task", data={"avatar_id": "../x", "video_path": "short.mp4"}) \
                    as resp:
                results["urlencoded_bad_id"] = (resp.status, await resp.json())
            async with http.get(srv.url + "/api/avatar/tasks") as resp:
                after = len((await resp.json())["data"]["tasks"])
            async with http.get(f"{srv.url}/api/avatar/task/nope") as resp:
                unknown = resp.status
            async with http.get(f"{srv.url}/api/avatar/preview/nobody") as resp:
                no_preview = resp.status
            async with http.get(f"{srv.url}/api/avatar/preview/..%2Fx") as resp:
                bad_preview = resp.status
            return before, results, after, unknown, no_preview, bad_preview

    before, results, after, unknown, no_preview, bad_preview = run(scenario())
    for name, (_, _, status, words) in cases.items():
        got, reply = results[name]
        assert got == status and reply["code"] == -1 and words in reply["msg"], (name, got, reply)
    assert results["chunked_too_large"][0] == 413, results["chunked_too_large"]
    assert results["not_a_form"][0] == 400
    assert results["urlencoded_bad_id"][0] == 400 and "avatar_id" in results["urlencoded_bad_id"][1]["msg"]
    assert after == before  # not one task was made
    assert unknown == 404 and no_preview == 404 and bad_preview in (400, 404)
    assert files_under(folders["uploads"]) == [] and leftovers(folders["root"]) == []


# --- a wav2lip server --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def w2l(tmp_path_factory) -> tuple[RunningServer, Path, Path]:
    tmp = tmp_path_factory.mktemp("w2l_tasks")
    checkpoint = tmp / "wav2lip.pth"
    save_checkpoint(random_wav2lip(seed=3), checkpoint, prefix_module=True)
    make_avatar([portrait()] * 4, tmp / "avatars" / "w2l_test", img_size=256, progress=False)
    server = RunningServer([
        "--model", "wav2lip", "--model_path", str(checkpoint), "--avatar_root", str(tmp / "avatars"),
        "--avatar_id", "w2l_test", "--batch_size", "4", "--max_session", "1", "--capacity", "2", "--asr", "off",
        "--avatar_upload_dir", str(tmp / "uploads"),
    ])
    yield server, tmp / "avatars", tmp / "uploads"
    server.stop()


def test_wav2lip_avatar_with_webhooks_delivered_in_order_and_retried(w2l):
    server, root, uploads = w2l
    video = write_video(root.parent / "talk.mp4", [shifted(portrait(), i) for i in range(8)]).read_bytes()

    async def scenario():
        async with aiohttp.ClientSession() as http, Receiver() as hook, Receiver(fail_first=1) as flaky:
            status, reply = await submit(http, server.url, form({"avatar_id": "w2l_new", "img_size": "96",
                                                                 "pads": "0,10,0,0", "notifyurl": hook.url}, video))
            assert status == 200, reply
            state, seen = await follow(http, server.url, reply["data"]["task_id"])
            async with http.get(server.url + state["preview"]) as resp:
                preview = (resp.status, await resp.read())
            again = await submit(http, server.url, form({"avatar_id": "w2l_new"}, video))
            _, replaced = await submit(http, server.url, form({"avatar_id": "w2l_new", "overwrite": "true",
                                                               "nosmooth": "true", "notifyurl": flaky.url}, video))
            second, _ = await follow(http, server.url, replaced["data"]["task_id"])
            by_path = await submit(http, server.url, form({"avatar_id": "w2l_path", "video_path": "talk.mp4"}))
            return state, seen, preview, again, second, await hook.wait_final(), await flaky.wait_final(), \
                flaky.calls, by_path

    state, seen, preview, again, second, bodies, flaky_bodies, flaky_calls, by_path = run(scenario())
    assert state["status"] == "completed" and state["model"] == "wav2lip", state
    assert seen == sorted(seen) and seen[-1] == 100
    avatar = load_lip_avatar(root / "w2l_new")
    assert len(avatar) == 8
    assert preview[0] == 200 and cv2.imdecode(np.frombuffer(preview[1], np.uint8), cv2.IMREAD_COLOR).shape[:2] \
        == (512, 512)
    assert statuses(bodies) == ["pending", "running", "completed"]
    progress = [b["progress"] for b in bodies]
    assert progress == sorted(progress) and progress[-1] == 100
    assert again[0] == 409
    assert second["status"] == "completed" and second["options"]["nosmooth"] is True
    assert len(load_lip_avatar(root / "w2l_new")) == 8
    # The first try answered 500: retried, and every status change still arrived in order.
    assert flaky_calls == len(flaky_bodies) + 1
    assert statuses(flaky_bodies) == ["pending", "running", "completed"]
    assert by_path[0] == 400 and "--avatar_video_dir" in by_path[1]["msg"]
    assert files_under(uploads) == [] and leftovers(root) == []


def test_the_page_uploads_a_video_and_shows_progress_and_the_preview(srv, folders):
    """web/avatar.html in headless Chromium (skipped without it)."""
    with headless_page() as page:
        width = create_on_avatar_page(page, srv.url, str(folders["videos"] / "short.mp4"), "from_page")
        assert "completed" in page.locator("#task-status").inner_text()
    assert width == 128
    assert (folders["root"] / "from_page" / "full_imgs").is_dir()


def test_containers_are_told_from_other_files_by_their_first_bytes():
    from avatar_fields import sniff

    assert sniff(PORTRAIT.read_bytes()[:512]) == ".png"
    assert sniff(b"\x00\x00\x00\x20ftypisom" + b"\x00" * 100) == ".mp4"
    assert sniff(b"\x1a\x45\xdf\xa3" + b"\x00" * 100) == ".mkv"
    assert sniff(b"RIFF\x00\x00\x00\x00AVI LIST") == ".avi"
    assert sniff(b"RIFF\x00\x00\x00\x00WAVEfmt ") is None  # sound only
    assert sniff(b"\xff\xd8\xff\xe0") == ".jpg"
    assert sniff(bytes([0x47] + [0] * 187 + [0x47] + [0] * 10)) == ".ts"
    assert sniff(b"<html><body>not a video</body></html>") is None
    assert sniff(b"") is None


def test_only_the_last_finished_tasks_are_remembered(tmp_path):
    import argparse

    from avatar_tasks import FINISHED, KEEP_FINISHED, AvatarTask, AvatarTasks

    tasks = AvatarTasks(argparse.Namespace(avatar_root=str(tmp_path)), "portrait")
    for i in range(KEEP_FINISHED + 5):
        task = AvatarTask(f"{i:032x}", f"a{i}", "portrait", {}, tmp_path / "v.mp4", "v.mp4", None, False, None)
        task.status = "completed" if i else "pending"  # the oldest still waits: it is kept
        tasks.tasks[task.task_id] = task
    tasks._forget_old()
    kept = list(tasks.tasks.values())
    assert len([t for t in kept if t.status in FINISHED]) == KEEP_FINISHED
    assert kept[0].status == "pending" and kept[-1].avatar_id == f"a{KEEP_FINISHED + 4}"
