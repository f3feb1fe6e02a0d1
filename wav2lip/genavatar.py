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
import pickle
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np

from avatar_build import (
    AvatarError,
    FrameHook,
    as_bgr,
    frame_name,
    frames_source,
    no_face_message,
    staged_folder,
    tracked,
    write_image,
)
from wav2lip.face_detect import FaceDetector, clamp_box, pad_box, smooth_boxes

log = logging.getLogger("wav2lip.genavatar")

SMOOTH_WINDOW = 5


def make_avatar(
    frames_or_path: str | Path | Iterable[np.ndarray],
    out_dir: str | Path,
    img_size: int = 256,
    pads: Sequence[int] = (0, 10, 0, 0),
    smooth: bool = True,
    progress: bool = True,
    hook: FrameHook | None = None,
) -> Path:
    """Write a Wav2Lip avatar folder to `out_dir` and return it.

    `frames_or_path` is a video or image path, or BGR uint8 frames. `pads` (top, bottom, left,
    right) grow each face box in pixels. Raises AvatarError when the input cannot be read or a
    frame has no face; then `out_dir` is left as it was. `hook` is told of each frame of both
    passes (avatar_build.FrameHook); what it raises stops the work, leaving `out_dir` as it was.
    """
    out_dir = Path(out_dir)
    frames, total, source = frames_source(frames_or_path)
    with staged_folder(out_dir) as work:
        _build(frames, total, work, source, img_size, pads, smooth, progress, hook)
    log.info("wrote avatar to %s", out_dir)
    return out_dir


def _build(
    frames: Iterable[np.ndarray],
    total: int | None,
    work: Path,
    source: str,
    img_size: int,
    pads: Sequence[int],
    smooth: bool,
    progress: bool,
    hook: FrameHook | None = None,
) -> None:
    full_dir, face_dir = work / "full_imgs", work / "face_imgs"
    full_dir.mkdir()
    face_dir.mkdir()
    boxes: list[tuple[float, float, float, float] | None] = []
    sizes: list[tuple[int, int]] = []
    # Frames go to disk as they are read and come back for cropping: a long video never has to
    # fit in memory.
    with FaceDetector() as detector:
        for i, frame in enumerate(tracked(frames, "detecting faces", total, progress, hook)):
            frame = as_bgr(frame, source)
            write_image(full_dir / frame_name(i), frame)
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
    for i, (y1, y2, x1, x2) in enumerate(tracked(coords, "cropping faces", None, progress, hook)):
        frame = cv2.imread(str(full_dir / frame_name(i)), cv2.IMREAD_COLOR)
        crop = frame[y1:y2, x1:x2]
        interp = cv2.INTER_AREA if crop.shape[0] > img_size else cv2.INTER_CUBIC
        write_image(face_dir / frame_name(i), cv2.resize(crop, (img_size, img_size), interpolation=interp))
    with open(work / "coords.pkl", "wb") as f:
        pickle.dump(coords, f)


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
