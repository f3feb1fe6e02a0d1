"""Avatar creation over HTTP: upload a video (or photo), get a task, watch it become an avatar.

    POST   /api/avatar/task            multipart: video_file (or video_path), avatar_id, model,
                                       the model's genavatar options, overwrite, notifyurl
    GET    /api/avatar/task/{task_id}  the task (status, progress 0-100, error_msg, preview, ...)
    GET    /api/avatar/tasks           every task still remembered (the last 100 finished)
    DELETE /api/avatar/task/{task_id}  cancel a pending or running task
    GET    /api/avatar/preview/{id}    the first frame of an avatar (PNG or JPEG)

Tasks run one at a time on a worker thread of their own at a low CPU priority, so that live
sessions keep their cores; the avatar folder appears whole or not at all (avatar_build's
staged folder), under the server's avatar root, so /offer can name it at once. An upload goes
to a temporary file as it arrives (never held in memory), is checked to be a readable video or
image before a task is made, and is removed when its task ends, however it ends. Each status
change is POSTed to the task's notifyurl from the event loop, in order, with retries, never
holding the task up. Times are ISO 8601 in UTC ("2025-01-02T03:04:05.678Z").

This module keeps the tasks: their records, the queue and its worker, the makers per model and
the HTTP handlers. Reading and checking a request's fields and its video is avatar_fields';
delivering the webhooks is webhooks' (a notifier other features can use as well).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import queue
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

import priority
from avatar_build import AvatarError, frame_name, read_frames, staged_folder
from avatar_fields import (
    MAX_FIELDS,
    MODELS,
    first_of,
    inside,
    json_fields,
    model_options,
    parse_avatar_id,
    parse_bool,
    parse_notifyurl,
    probe,
    with_kind,
)
from avatars import NAME
from basereal import AVATAR_ROOT, models_dir
from httpapi import FILENAME_LIMIT, ApiError, offload, ok, read_body, read_json, read_part
from safetext import clean_text, shown
from webhooks import Webhooks

log = logging.getLogger("livetalking.avatar_tasks")

TASK_ID = re.compile(r"[0-9a-f]{32}")
PENDING, RUNNING, COMPLETED, FAILED, CANCELLED = "pending", "running", "completed", "failed", "cancelled"
FINISHED = frozenset({COMPLETED, FAILED, CANCELLED})

MAX_PENDING = 8  # tasks waiting behind the running one; more are refused with 503
KEEP_FINISHED = 100  # finished tasks remembered for GET; the oldest are forgotten first
MAX_UPLOADS = 2  # uploads arriving at once (each may fill --avatar_upload_mb of disk)
AVATAR_NICE = 10  # below the renderers (5): a new avatar can wait, a live frame cannot
FIELD_LIMIT = 2048 + 64  # bytes of a form field other than the file (a notifyurl fits)
WRITE_BYTES = 1 << 20  # an upload reaches the disk in pieces this big, from the control pool
CANCEL_WAIT_S = 10.0  # DELETE waits this long for a running task to stop at its next frame
STOP_WAIT_S = 30.0  # shutdown waits this long for the worker's current frame
PROGRESS_STEP = 25  # a notification each time progress passes a multiple of this
DONE_BUILDING = 99  # progress once the frames are done; 100 only when the folder is in place

# Where each model's passes put progress: (tqdm stage of the maker, from %, to %). The first
# pass reads, writes and looks at every frame; the second crops (or encodes, musetalk's VAE).
STAGES: dict[str, dict[str, tuple[int, int]]] = {
    "wav2lip": {"detecting faces": (0, 75), "cropping faces": (75, 95)},
    "musetalk": {"finding faces": (0, 35), "encoding faces": (35, 95)},
    "ultralight": {"cropping faces": (5, 95)},
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The avatar task API's flags."""
    parser.add_argument("--avatar_video_dir", default=None,
                        help="the only folder whose files POST /api/avatar/task may name by video_path (and "
                             "ultralight's checkpoint) (default: none, uploads only)")
    parser.add_argument("--avatar_upload_mb", type=float, default=200,
                        help="largest video or image POST /api/avatar/task takes (default 200)")
    parser.add_argument("--avatar_upload_timeout", type=float, default=1800.0,
                        help="seconds an avatar task's upload may take to arrive (default 1800: 200 MB "
                             "at 1 Mbit/s)")
    parser.add_argument("--avatar_upload_dir", default=None,
                        help="where uploads for avatar tasks wait for their task (default: the system's "
                             "temporary folder)")


class Cancelled(Exception):
    """A task cancelled while it ran: raised at its next frame."""


def utc_iso(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class AvatarTask:
    """One avatar being made. The worker thread and the loop both change it: under `lock`."""

    task_id: str
    avatar_id: str
    model: str
    options: dict[str, Any]
    source: Path  # what the maker reads
    shown_as: str  # how messages name the source (never the temporary file's path)
    upload: Path | None  # our temporary copy, removed when the task ends
    overwrite: bool
    notifyurl: str | None
    checkpoint: Path | None = None  # ultralight's network, as a server path (never shown)
    created_at: float = field(default_factory=time.time)
    status: str = PENDING
    progress: int = 0
    error_msg: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # set on the loop when finished

    def snapshot(self) -> dict[str, Any]:
        """What GET answers and the webhook receives."""
        return {
            "task_id": self.task_id,
            "status": self.status,
            "progress": self.progress,
            "error_msg": self.error_msg,
            "avatar_id": self.avatar_id,
            "model": self.model,
            "options": dict(self.options),
            "created_at": utc_iso(self.created_at),
            "started_at": utc_iso(self.started_at),
            "finished_at": utc_iso(self.finished_at),
            "preview": f"/api/avatar/preview/{self.avatar_id}" if self.status == COMPLETED else None,
        }


def remove_file(path: Path | None) -> None:
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def first_frame(folder: Path) -> Path | None:
    """The first numbered image of an avatar's full_imgs (ours are 00000000.png)."""
    frames = folder / "full_imgs"
    ours = frames / frame_name(0)
    if ours.is_file():
        return ours
    if not frames.is_dir():
        return None
    images = sorted(p for p in frames.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg") and p.is_file())
    return images[0] if images else None


# --- the makers, on the worker thread ----------------------------------------------------------
def build_portrait(task: AvatarTask, out_dir: Path, check: Callable[[], None], step: Callable[[int], None]) -> None:
    """The portrait model takes one photo: a video's first frame."""
    from portrait.make_avatar import make_avatar

    image = first_of(read_frames(task.source)[0])
    if image is None:
        raise AvatarError(f"cannot read video {task.shown_as}")
    check()
    step(10)
    with staged_folder(out_dir) as work:
        try:
            make_avatar(image, work, size=task.options["size"], source=task.shown_as)
        except AvatarError:
            raise
        except ValueError as exc:  # the portrait maker's "no face found"
            raise AvatarError(str(exc)) from None
        step(95)
        check()  # the last moment a cancel still leaves nothing behind


def build_wav2lip(task: AvatarTask, out_dir: Path, hook: Callable[[str, int, int | None], None],
                  opt: argparse.Namespace) -> None:
    from wav2lip.genavatar import make_avatar

    o = task.options
    make_avatar(str(task.source), out_dir, o["img_size"], o["pads"], smooth=not o["nosmooth"], progress=False,
                hook=hook)


def build_musetalk(task: AvatarTask, out_dir: Path, hook: Callable[[str, int, int | None], None],
                   opt: argparse.Namespace) -> None:
    # The weights load per task and go with it: a server not running musetalk keeps no VAE.
    from musetalk.faceparse import load_bisenet
    from musetalk.genavatar import make_avatar
    from musetalk.weights import load_vae

    root = models_dir(opt)
    vae = load_vae(root).eval()
    o = task.options
    make_avatar(str(task.source), out_dir, vae, o["bbox_shift"], o["extra_margin"], o["parsing_mode"],
                progress=False, parser=load_bisenet(root), hook=hook)


def build_ultralight(task: AvatarTask, out_dir: Path, hook: Callable[[str, int, int | None], None],
                     opt: argparse.Namespace) -> None:
    from ultralight.genavatar import make_avatar

    assert task.checkpoint is not None  # checked when the task was made
    make_avatar(str(task.source), out_dir, task.checkpoint, progress=False, hook=hook)


BUILDERS = {"wav2lip": build_wav2lip, "musetalk": build_musetalk, "ultralight": build_ultralight}


class AvatarTasks:
    """The task queue, its worker thread, its webhooks and the HTTP handlers."""

    def __init__(self, opt: argparse.Namespace, model_name: str) -> None:
        self.opt = opt
        self.model_name = model_name
        self.root = Path(opt.avatar_root) if getattr(opt, "avatar_root", None) else AVATAR_ROOT
        video_dir = getattr(opt, "avatar_video_dir", None)
        self.video_dir = Path(video_dir) if video_dir else None
        self.upload_limit = int(float(getattr(opt, "avatar_upload_mb", 200)) * 2**20)
        if self.upload_limit <= 0:
            raise ValueError("--avatar_upload_mb must be more than 0")
        self.upload_timeout = float(getattr(opt, "avatar_upload_timeout", 1800.0))
        self.upload_parent = getattr(opt, "avatar_upload_dir", None)
        self.upload_dir: Path | None = None
        self.tasks: OrderedDict[str, AvatarTask] = OrderedDict()
        self.on_built: list[Callable[[str], None]] = []  # told of each new avatar's id, on the loop
        self._lock = threading.Lock()  # guards self.tasks and every task's fields
        self._queue: queue.Queue[AvatarTask | None] = queue.Queue()  # bounded by MAX_PENDING in submit
        self._worker: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._webhooks = Webhooks("avatar task")
        self._uploads = 0
        self._closing = False

    def add_routes(self, route: Any) -> None:
        """`route(method, path, handler)` adds an admin-guarded route."""
        route("POST", "/api/avatar/task", self.submit)
        route("GET", "/api/avatar/task/{task_id}", self.get_task)
        route("DELETE", "/api/avatar/task/{task_id}", self.cancel_task)
        route("GET", "/api/avatar/tasks", self.list_tasks)
        route("GET", "/api/avatar/preview/{avatar_id}", self.preview)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.upload_parent:
            Path(self.upload_parent).mkdir(parents=True, exist_ok=True)
        self.upload_dir = Path(tempfile.mkdtemp(prefix="livetalking-avatar-uploads-", dir=self.upload_parent))
        self._webhooks.start()
        self._worker = threading.Thread(target=self._work, name="avatar-tasks", daemon=True)
        self._worker.start()

    async def close(self) -> None:
        """Cancel what is queued or running, let the last notifications go, remove the uploads."""
        self._closing = True
        with self._lock:
            tasks = [t for t in self.tasks.values() if t.status not in FINISHED]
        for task in tasks:
            task.cancel.set()
            self._cancel_pending(task)
        self._queue.put(None)
        if self._worker is not None and self._worker.is_alive():
            await asyncio.get_running_loop().run_in_executor(None, self._worker.join, STOP_WAIT_S)
        await self._webhooks.close()
        if self.upload_dir is not None:
            shutil.rmtree(self.upload_dir, ignore_errors=True)

    # --- HTTP ------------------------------------------------------------------------------------
    async def submit(self, request: web.Request) -> web.Response:
        """POST /api/avatar/task: a new task, or a 4xx/5xx naming what is wrong."""
        self._check_room()
        if request.content_length is not None and request.content_length > self.upload_limit + FIELD_LIMIT * 8:
            raise ApiError(413, self._too_big())
        if request.content_type == "application/json":
            fields, upload, filename = json_fields(await read_json(request)), None, ""
        elif request.content_type.startswith("multipart/"):
            fields, upload, filename = await self._read_form(request)
        elif request.content_type == "application/x-www-form-urlencoded":  # video_path only
            raw = await read_body(request, FIELD_LIMIT * MAX_FIELDS, self.upload_timeout)
            pairs = parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True)[:MAX_FIELDS]
            fields, upload, filename = {clean_text(k)[:64]: clean_text(v) for k, v in pairs}, None, ""
        else:
            raise ApiError(400, "send the video as multipart/form-data with fields 'video_file' (or 'video_path') "
                                "and 'avatar_id'")
        task = await self._make_task(request, fields, upload, filename)
        log.info("avatar task %s queued: avatar %s, model %s, from %s", task.task_id, task.avatar_id, task.model,
                 shown(task.shown_as, 80))
        return ok({"task_id": task.task_id})

    async def get_task(self, request: web.Request) -> web.Response:
        task = self._find(request.match_info["task_id"])
        with self._lock:
            return ok(task.snapshot())

    async def list_tasks(self, _: web.Request) -> web.Response:
        with self._lock:
            return ok({"tasks": [t.snapshot() for t in reversed(self.tasks.values())]})

    async def cancel_task(self, request: web.Request) -> web.Response:
        """DELETE: a pending task ends at once; a running one at its next frame (waited for)."""
        task = self._find(request.match_info["task_id"])
        with self._lock:
            status = task.status
        if status in FINISHED:
            raise ApiError(409, f"task {task.task_id} has already {status_word(status)}")
        task.cancel.set()
        if not self._cancel_pending(task):
            log.info("avatar task %s: cancel asked while running; it stops at its next frame", task.task_id)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(task.ended.wait(), CANCEL_WAIT_S)
        with self._lock:
            if task.status == COMPLETED:
                raise ApiError(409, f"task {task.task_id} completed before it could be cancelled")
            return ok(task.snapshot())

    async def preview(self, request: web.Request) -> web.StreamResponse:
        """The first frame of an avatar under the avatar root, as the file it is (PNG or JPEG)."""
        name = request.match_info["avatar_id"]
        if not NAME.fullmatch(name):
            raise ApiError(400, f"an avatar id is 1-64 letters, digits, '_' or '-', got {shown(name)}")
        root = self.root.resolve()
        folder = (root / name).resolve()
        if folder.parent != root or not folder.is_dir():
            raise ApiError(404, f"no avatar '{name}'")
        image = await offload(request, first_frame, folder)
        if image is None or not image.resolve().is_relative_to(folder):
            raise ApiError(404, f"avatar '{name}' has no frames")
        kind = "image/png" if image.suffix.lower() == ".png" else "image/jpeg"
        return web.FileResponse(image, headers={"Content-Type": kind, "Cache-Control": "no-store"})

    # --- submission ------------------------------------------------------------------------------
    def _check_room(self) -> None:
        if self._closing or self._loop is None:
            raise ApiError(503, "the server is shutting down; avatar tasks are not taken")
        if self._pending_count() >= MAX_PENDING:
            raise ApiError(503, f"{MAX_PENDING} avatar tasks are already waiting; try again when one is done")

    def _pending_count(self) -> int:
        with self._lock:
            return sum(1 for t in self.tasks.values() if t.status == PENDING)

    def _too_big(self) -> str:
        return f"the video is larger than {self.upload_limit / 2**20:g} MB (--avatar_upload_mb)"

    async def _make_task(self, request: web.Request, fields: dict[str, str], upload: Path | None,
                         filename: str) -> AvatarTask:
        """Validate the fields and the video, then queue the task; an upload that makes no
        task is removed."""
        holder = {"upload": upload}
        try:
            return await self._validated_task(request, fields, holder, filename)
        except BaseException:
            remove_file(holder["upload"])  # one unlink, done even while the handler is cancelled
            raise

    async def _validated_task(self, request: web.Request, fields: dict[str, str], holder: dict[str, Path | None],
                              filename: str) -> AvatarTask:
        """The cheap checks first, the video's last (it is opened in the control pool)."""
        upload = holder["upload"]
        model = fields.get("model", "").strip() or self.model_name
        if model not in MODELS:
            raise ApiError(400, f"field 'model' must be one of {', '.join(MODELS)}, got {shown(model)}")
        avatar_id = parse_avatar_id(fields)
        overwrite = parse_bool(fields, "overwrite")
        options = model_options(fields, model)
        checkpoint = None
        if model == "ultralight":
            given = fields.get("checkpoint", "").strip()
            checkpoint = self._checkpoint(given)
            options["checkpoint"] = given or "the running avatar's"  # answers never show server paths
        notifyurl = parse_notifyurl(fields)
        self._check_free(avatar_id, overwrite)
        source, shown_as = self._source(fields, upload, filename)
        try:
            kind, count = await offload(request, probe, source, shown_as)
        except AvatarError as exc:
            raise ApiError(400, str(exc)) from None
        except OSError as exc:
            raise ApiError(400, f"cannot read {shown_as}: {exc.strerror or exc}") from None
        if upload is not None:
            source = upload = holder["upload"] = await offload(request, with_kind, upload, kind)
        task = AvatarTask(uuid.uuid4().hex, avatar_id, model, options, source, shown_as, upload, overwrite, notifyurl,
                          checkpoint)
        self._enqueue(task)
        log.debug("avatar task %s: %s, %s frames", task.task_id, kind, count or "unknown")
        return task

    def _source(self, fields: dict[str, str], upload: Path | None, filename: str) -> tuple[Path, str]:
        video_path = fields.get("video_path", "").strip()
        if upload is not None and video_path:
            raise ApiError(400, "send either a 'video_file' or a 'video_path', not both")
        if upload is not None:
            return upload, filename or "the uploaded video"
        if not video_path:
            raise ApiError(400, "missing the video: send a file in field 'video_file' (or name one with 'video_path')")
        if self.video_dir is None:
            raise ApiError(400, "field 'video_path' is refused: this server takes no file paths; upload the video "
                                "as 'video_file', or start the server with --avatar_video_dir FOLDER to allow "
                                "paths inside FOLDER")
        return inside(self.video_dir, video_path, "video_path"), video_path

    def _checkpoint(self, value: str) -> Path:
        """Ultralight's trained network: a file inside --avatar_video_dir, or by default the
        running ultralight avatar's own."""
        if value:
            if self.video_dir is None:
                raise ApiError(400, "field 'checkpoint' is refused: start the server with --avatar_video_dir "
                                    "FOLDER to name checkpoint files inside FOLDER")
            return inside(self.video_dir, value, "checkpoint")
        running = getattr(self.opt, "avatar_id", None)
        if self.model_name == "ultralight" and running:
            own = self.root / running / "ultralight.pth"
            if own.is_file():
                return own
        raise ApiError(400, "field 'checkpoint' is needed for model ultralight: the person's ultralight.pth, "
                            "inside --avatar_video_dir")

    def _check_free(self, avatar_id: str, overwrite: bool) -> None:
        if overwrite:
            return
        if (self.root / avatar_id).exists():
            raise ApiError(409, f"avatar '{avatar_id}' already exists; send overwrite=true to replace it")
        with self._lock:
            if any(t.avatar_id == avatar_id and t.status in (PENDING, RUNNING) for t in self.tasks.values()):
                raise ApiError(409, f"a task is already making avatar '{avatar_id}'")

    def _enqueue(self, task: AvatarTask) -> None:
        with self._lock:
            if self._closing:
                raise ApiError(503, "the server is shutting down; avatar tasks are not taken")
            if sum(1 for t in self.tasks.values() if t.status == PENDING) >= MAX_PENDING:
                raise ApiError(503, f"{MAX_PENDING} avatar tasks are already waiting; try again when one is done")
            self.tasks[task.task_id] = task
            snapshot = task.snapshot()
        self._publish(task, snapshot)
        self._queue.put(task)

    async def _read_form(self, request: web.Request) -> tuple[dict[str, str], Path | None, str]:
        """The form's small fields, and its video_file written to a temporary file as it
        arrives; 413 / 408 / 400 for a body too big, too slow or not a form."""
        if self._uploads >= MAX_UPLOADS:
            raise ApiError(503, f"{MAX_UPLOADS} avatar uploads are arriving already; try again shortly")
        self._uploads += 1
        state: dict[str, Any] = {"upload": None}
        try:
            async with asyncio.timeout(self.upload_timeout):
                return await self._read_parts(request, state)
        except TimeoutError:
            remove_file(state["upload"])
            raise ApiError(408, f"the upload did not arrive within {self.upload_timeout:g} s "
                                "(--avatar_upload_timeout)") from None
        except (ValueError, AssertionError, KeyError, HttpProcessingError) as exc:
            remove_file(state["upload"])
            raise ApiError(400, f"not a multipart form: {shown(str(exc), 80)}") from None
        except BaseException:  # a refusal, or the client gone: one unlink, not awaited
            remove_file(state["upload"])
            raise
        finally:
            self._uploads -= 1

    async def _read_parts(self, request: web.Request, state: dict[str, Any]) -> tuple[dict[str, str], Path | None,
                                                                                           str]:
        fields: dict[str, str] = {}
        filename = ""
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not hasattr(part, "read_chunk"):
                raise ApiError(400, "nested multipart forms are not accepted")
            name = clean_text(part.name or "")[:64]
            if name == "video_file":
                if state["upload"] is not None:
                    raise ApiError(400, "send one 'video_file' per task")
                state["upload"] = self.upload_dir / f"{uuid.uuid4().hex}.upload"
                filename = clean_text(part.filename or "")[:FILENAME_LIMIT]
                await self._save_part(request, part, state["upload"])
                continue
            if len(fields) >= MAX_FIELDS:
                raise ApiError(400, f"the form has more than {MAX_FIELDS} fields")
            value = await read_part(part, FIELD_LIMIT, f"form field {shown(name)} is too long")
            fields[name] = clean_text(value.decode("utf-8", "replace"))
        return fields, state["upload"], filename

    async def _save_part(self, request: web.Request, part: Any, path: Path) -> None:
        """Stream a file part to `path`, checking its size as it grows; the disk writes run
        in the control pool, a megabyte at a time."""
        handle = await offload(request, open, path, "xb")
        try:
            size, buf = 0, bytearray()
            while chunk := await part.read_chunk(65536):
                size += len(chunk)
                if size > self.upload_limit:
                    raise ApiError(413, self._too_big())
                buf += chunk
                if len(buf) >= WRITE_BYTES:
                    await offload(request, handle.write, bytes(buf))
                    buf.clear()
            if buf:
                await offload(request, handle.write, bytes(buf))
        finally:
            handle.close()  # the data went out with the writes: at most a buffer's flush left

    def _find(self, task_id: str) -> AvatarTask:
        with self._lock:
            task = self.tasks.get(task_id) if TASK_ID.fullmatch(task_id) else None
        if task is None:
            raise ApiError(404, f"no avatar task {shown(task_id)}")
        return task

    def _cancel_pending(self, task: AvatarTask) -> bool:
        """End a task that has not started (the worker skips it); False if it has."""
        with self._lock:
            if task.status != PENDING:
                return False
            task.status, task.finished_at, task.error_msg = CANCELLED, time.time(), "cancelled before it started"
            snapshot = task.snapshot()
        remove_file(task.upload)  # one unlink: quick enough for the loop
        log.info("avatar task %s cancelled while pending", task.task_id)
        self._publish(task, snapshot)
        self._forget_old()
        return True

    # --- the worker thread -----------------------------------------------------------------------
    def _work(self) -> None:
        # On Linux a new thread starts at its creator's nice value: the threads made for this
        # thread's work (MediaPipe's graph, the OpenMP team of the VAE's ops) yield to sessions too.
        priority.lower_current_thread(AVATAR_NICE)
        while (task := self._queue.get()) is not None:
            try:
                self._run(task)
            except Exception:  # the worker must outlive any one task
                log.exception("avatar task %s: the worker failed", task.task_id)

    def _run(self, task: AvatarTask) -> None:
        with self._lock:
            if task.status != PENDING:
                return  # cancelled while it waited
            task.status, task.started_at = RUNNING, time.time()
        self._emit(task)
        log.info("avatar task %s started: avatar %s, model %s", task.task_id, task.avatar_id, task.model)
        status, error = COMPLETED, ""
        try:
            self._build(task)
        except Cancelled:
            status, error = CANCELLED, "cancelled while running"
        except AvatarError as exc:
            status, error = FAILED, str(exc).replace(str(task.source), task.shown_as)
        except (FileNotFoundError, ValueError, RuntimeError, ImportError, OSError) as exc:
            status, error = FAILED, f"{type(exc).__name__}: {exc}".replace(str(task.source), task.shown_as)
        except Exception as exc:
            log.exception("avatar task %s failed unexpectedly", task.task_id)
            status, error = FAILED, f"internal error ({type(exc).__name__}); see the server log"
        finally:
            remove_file(task.upload)
        self._finish(task, status, error)

    def _build(self, task: AvatarTask) -> None:
        out_dir = self.root / task.avatar_id
        if not task.overwrite and out_dir.exists():
            raise AvatarError(f"avatar '{task.avatar_id}' already exists; send overwrite=true to replace it")

        def check() -> None:
            if task.cancel.is_set():
                raise Cancelled()

        if task.model == "portrait":
            build_portrait(task, out_dir, check, lambda value: self._progress(task, value))
            return
        stages = STAGES[task.model]

        def hook(stage: str, done: int, total: int | None) -> None:
            check()
            low, high = stages.get(stage, (0, 0))
            if total:
                self._progress(task, low + (high - low) * min(done / total, 1.0))
            elif done == 0:
                self._progress(task, low)

        BUILDERS[task.model](task, out_dir, hook, self.opt)

    def _progress(self, task: AvatarTask, value: float) -> None:
        """Progress only rises, and stays below 100 until the folder is in place."""
        value = min(int(value), DONE_BUILDING)
        with self._lock:
            before = task.progress
            if value <= before:
                return
            task.progress = value
        if value // PROGRESS_STEP > before // PROGRESS_STEP:
            self._emit(task)

    def _finish(self, task: AvatarTask, status: str, error: str) -> None:
        with self._lock:
            task.status, task.error_msg, task.finished_at = status, error, time.time()
            if status == COMPLETED:
                task.progress = 100
            took = task.finished_at - (task.started_at or task.finished_at)
        if status == COMPLETED:
            log.info("avatar task %s completed in %.1fs: avatar %s", task.task_id, took, task.avatar_id)
        else:
            log.info("avatar task %s %s after %.1fs: %s", task.task_id, status, took, shown(error, 300))
        self._emit(task)
        self._forget_old()

    def _forget_old(self) -> None:
        with self._lock:
            finished = [k for k, t in self.tasks.items() if t.status in FINISHED]
            for key in finished[: max(0, len(finished) - KEEP_FINISHED)]:
                del self.tasks[key]

    # --- notifications (on the loop) -------------------------------------------------------------
    def _emit(self, task: AvatarTask) -> None:
        """From the worker thread: hand the task's state as it is now to the loop."""
        with self._lock:
            snapshot = task.snapshot()
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody to tell
                self._loop.call_soon_threadsafe(self._publish, task, snapshot)

    def _publish(self, task: AvatarTask, snapshot: dict[str, Any]) -> None:
        status = snapshot["status"]
        if status in FINISHED:
            task.ended.set()
            if status == COMPLETED:
                self._tell_built(task.avatar_id)
        if task.notifyurl is None:
            return
        # A slow receiver may miss a progress notification, never a status change.
        self._webhooks.send(task.task_id, task.notifyurl, snapshot, what=status, last=status in FINISHED,
                            droppable=status == RUNNING and snapshot["progress"] > 0)

    def _tell_built(self, avatar_id: str) -> None:
        for listener in self.on_built:
            try:
                listener(avatar_id)
            except Exception:
                log.exception("avatar %s: a listener of new avatars failed", avatar_id)


def status_word(status: str) -> str:
    return {COMPLETED: "completed", FAILED: "failed", CANCELLED: "been cancelled"}.get(status, status)

