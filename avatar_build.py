"""What every avatar maker shares: reading a video's frames, writing numbered images, naming
the frames without a face, and building the folder beside its target so that a failure never
leaves a half-written avatar (or destroys a working one)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
MAX_LISTED_FRAMES = 10

# Told of every frame a maker's pass has done: (the pass's name, frames done, frames in the pass
# if known). The server's avatar tasks show progress with it, and stop a cancelled task by
# raising from it (the staged folder is then removed like on any other failure).
FrameHook = Callable[[str, int, int | None], None]


class AvatarError(ValueError):
    """The input cannot make an avatar (unreadable, or frames without a face)."""


def frame_name(index: int) -> str:
    return f"{index:08d}.png"


def read_frames(path: Path) -> tuple[Iterator[np.ndarray], int | None]:
    """BGR frames of a video or the one frame of an image, and the count if known.

    Raises AvatarError when the file has no readable frame.
    """
    # Checking the path first avoids OpenCV's own warnings about a file it cannot open.
    if not path.is_file():
        raise AvatarError(f"cannot read video {path}")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise AvatarError(f"cannot read image {path}")
        return iter([image]), 1
    cap = cv2.VideoCapture(str(path))
    ok, first = cap.read() if cap.isOpened() else (False, None)
    if not ok:
        cap.release()
        raise AvatarError(f"cannot read video {path}")
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))  # container metadata: a hint for progress only
    return _rest_of(cap, first), count if count > 0 else None


def frames_source(frames_or_path: str | Path | Iterable[np.ndarray]) -> tuple[Iterable[np.ndarray], int | None, str]:
    """The frames of a video or image path (or the frames given), their count if known, and
    how to name the source in messages."""
    if isinstance(frames_or_path, (str, Path)):
        frames, total = read_frames(Path(frames_or_path))
        return frames, total, str(frames_or_path)
    return frames_or_path, None, "the given frames"


def _rest_of(cap: cv2.VideoCapture, first: np.ndarray) -> Iterator[np.ndarray]:
    try:
        frame: np.ndarray | None = first
        while frame is not None:
            yield frame
            ok, frame = cap.read()
            frame = frame if ok else None
    finally:
        cap.release()


def tracked(
    frames: Iterable[np.ndarray], desc: str, total: int | None = None, progress: bool = True,
    hook: FrameHook | None = None,
) -> Iterator[np.ndarray]:
    """`frames` with a tqdm bar, telling `hook` before the first frame and after each one."""
    if total is None and isinstance(frames, Sequence):
        total = len(frames)
    if hook is not None:
        hook(desc, 0, total)
    for done, frame in enumerate(tqdm(frames, desc, total, unit="frame", disable=not progress), 1):
        yield frame
        if hook is not None:
            hook(desc, done, total)


def as_bgr(frame: np.ndarray, source: str) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim not in (2, 3) or frame.size == 0:
        raise AvatarError(f"cannot read video {source}: frames must be BGR uint8 images")
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(frame[:, :, :3])


def write_image(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise OSError(f"cannot write {path}")


def no_face_message(missing: Sequence[int], source: str) -> str:
    shown = ", ".join(str(i) for i in missing[:MAX_LISTED_FRAMES])
    if len(missing) > MAX_LISTED_FRAMES:
        shown += f" and {len(missing) - MAX_LISTED_FRAMES} more"
    noun = "frame" if len(missing) == 1 else "frames"
    return f"no face found in {noun} {shown} of {source}; every frame needs a clearly visible face"


@contextmanager
def staged_folder(out_dir: Path) -> Iterator[Path]:
    """A work folder beside `out_dir` that replaces it when the block succeeds and is removed
    when it fails."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        yield work
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        if out_dir.exists():
            out_dir.rename(old)
        work.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
