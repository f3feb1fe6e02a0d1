"""Create a Wav2Lip avatar from a video (or one image), in upstream LiveTalking's folder format.

    python -m wav2lip.genavatar --video_path in.mp4 --avatar_id NAME [--img_size 256]
                                [--pads 0 10 0 0] [--out_root data/avatars] [--nosmooth]

Writes data/avatars/NAME/: full_imgs/00000000.png ... (every frame), face_imgs/00000000.png ...
(the face box resized to img_size x img_size) and coords.pkl (a pickled list of (y1, y2, x1, x2)
per frame). Every frame must show a face; otherwise nothing is written and the command names
the frames without one.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import shutil
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from wav2lip.face_detect import FaceDetector, clamp_box, pad_box, smooth_boxes

log = logging.getLogger("wav2lip.genavatar")

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
SMOOTH_WINDOW = 5
MAX_LISTED_FRAMES = 10


class AvatarError(ValueError):
    """The input cannot make an avatar (unreadable, or frames without a face)."""


def frame_name(index: int) -> str:
    return f"{index:08d}.png"


def make_avatar(
    frames_or_path: str | Path | Iterable[np.ndarray],
    out_dir: str | Path,
    img_size: int = 256,
    pads: Sequence[int] = (0, 10, 0, 0),
    smooth: bool = True,
    progress: bool = True,
) -> Path:
    """Write a Wav2Lip avatar folder to `out_dir` and return it.

    `frames_or_path` is a video or image path, or BGR uint8 frames. `pads` (top, bottom, left,
    right) grow each face box in pixels. Raises AvatarError when the input cannot be read or a
    frame has no face; then `out_dir` is left as it was.
    """
    out_dir = Path(out_dir)
    total: int | None = None
    if isinstance(frames_or_path, (str, Path)):
        source = str(frames_or_path)
        frames: Iterable[np.ndarray]
        frames, total = read_frames(Path(frames_or_path))
    else:
        source, frames = "the given frames", frames_or_path
    # Built beside the target and moved into place at the end, so a failure never leaves a
    # half-written avatar (or destroys a working one).
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        _build(frames, total, work, source, img_size, pads, smooth, progress)
        _replace(work, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("wrote avatar to %s", out_dir)
    return out_dir


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


def _rest_of(cap: cv2.VideoCapture, first: np.ndarray) -> Iterator[np.ndarray]:
    try:
        frame: np.ndarray | None = first
        while frame is not None:
            yield frame
            ok, frame = cap.read()
            frame = frame if ok else None
    finally:
        cap.release()


def _build(
    frames: Iterable[np.ndarray],
    total: int | None,
    work: Path,
    source: str,
    img_size: int,
    pads: Sequence[int],
    smooth: bool,
    progress: bool,
) -> None:
    full_dir, face_dir = work / "full_imgs", work / "face_imgs"
    full_dir.mkdir(parents=True)
    face_dir.mkdir()
    boxes: list[tuple[float, float, float, float] | None] = []
    sizes: list[tuple[int, int]] = []
    # Frames go to disk as they are read and come back for cropping: a long video never has to
    # fit in memory.
    with FaceDetector() as detector:
        for i, frame in enumerate(tqdm(frames, "detecting faces", total, unit="frame", disable=not progress)):
            frame = _as_bgr(frame, source)
            _write(full_dir / frame_name(i), frame)
            boxes.append(detector.detect(frame))
            sizes.append((frame.shape[1], frame.shape[0]))
    if not boxes:
        raise AvatarError(f"cannot read video {source}")
    missing = [i for i, b in enumerate(boxes) if b is None]
    if missing:
        raise AvatarError(no_face_message(missing, source))
    padded = np.array([pad_box(b, pads) for b in boxes if b is not None])
    if smooth:
        padded = smooth_boxes(padded, SMOOTH_WINDOW)
    coords = [clamp_box(b, w, h) for b, (w, h) in zip(padded, sizes, strict=True)]
    for i, (y1, y2, x1, x2) in enumerate(tqdm(coords, desc="cropping faces", unit="frame", disable=not progress)):
        frame = cv2.imread(str(full_dir / frame_name(i)), cv2.IMREAD_COLOR)
        crop = frame[y1:y2, x1:x2]
        interp = cv2.INTER_AREA if crop.shape[0] > img_size else cv2.INTER_CUBIC
        _write(face_dir / frame_name(i), cv2.resize(crop, (img_size, img_size), interpolation=interp))
    with open(work / "coords.pkl", "wb") as f:
        pickle.dump(coords, f)


def no_face_message(missing: Sequence[int], source: str) -> str:
    shown = ", ".join(str(i) for i in missing[:MAX_LISTED_FRAMES])
    if len(missing) > MAX_LISTED_FRAMES:
        shown += f" and {len(missing) - MAX_LISTED_FRAMES} more"
    noun = "frame" if len(missing) == 1 else "frames"
    return f"no face found in {noun} {shown} of {source}; every frame needs a clearly visible face"


def _as_bgr(frame: np.ndarray, source: str) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim not in (2, 3) or frame.size == 0:
        raise AvatarError(f"cannot read video {source}: frames must be BGR uint8 images")
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(frame[:, :, :3])


def _write(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise OSError(f"cannot write {path}")


def _replace(work: Path, out_dir: Path) -> None:
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    if out_dir.exists():
        out_dir.rename(old)
    work.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m wav2lip.genavatar", description=__doc__.split("\n")[0])
    p.add_argument("--video_path", required=True, help="video (or image) showing one face in every frame")
    p.add_argument("--avatar_id", required=True, help="name of the avatar folder")
    p.add_argument("--img_size", type=int, default=256, help="side of the face crops (default 256)")
    p.add_argument(
        "--pads",
        type=int,
        nargs=4,
        default=[0, 10, 0, 0],
        metavar=("TOP", "BOTTOM", "LEFT", "RIGHT"),
        help="pixels added to each side of the face box (default 0 10 0 0: include the chin)",
    )
    p.add_argument("--out_root", default="data/avatars", help="folder holding avatars (default data/avatars)")
    p.add_argument("--nosmooth", action="store_true", help="do not average face boxes over neighbouring frames")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parse_args(argv)
    if args.img_size < 16:
        print("error: --img_size must be at least 16", file=sys.stderr)
        return 2
    try:
        out = make_avatar(
            args.video_path, Path(args.out_root) / args.avatar_id, args.img_size, args.pads, smooth=not args.nosmooth
        )
    except AvatarError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
