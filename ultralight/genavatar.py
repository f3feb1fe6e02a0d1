"""Create an Ultralight avatar from a video (or one image), in upstream LiveTalking's format.

    python -m ultralight.genavatar --video_path v.mp4 --avatar_id me --checkpoint ultralight.pth
        [--out_root data/avatars]

Writes data/avatars/<id>/: full_imgs/ (the frames as they are), face_imgs/ (168x168 crops),
coords.pkl ((x1, y1, x2, y2) per frame) and ultralight.pth (a copy of the checkpoint, which is
loaded first so that a wrong file is refused before any work). The crop follows upstream's
rule with MediaPipe face-mesh landmarks in place of its PFLD ones: a square as wide as the
face from cheek to cheek, its top at the level between the eyes, clipped at the frame's edge.
Every frame needs a face: otherwise nothing is written and the command names the frames
without one.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import shutil
import sys
from collections.abc import Iterable
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
from portrait.landmarks import CHEEK_LEFT, CHEEK_RIGHT, detect_landmarks
from ultralight.render import CROP

log = logging.getLogger("ultralight.genavatar")

BETWEEN_EYES = 168  # face-mesh point on the nose bridge between the eyes: the crop's top


def crop_box(points: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2): the square from the left cheek's x and the between-the-eyes y, as
    wide as the face, clipped to the frame."""
    x1 = int(points[CHEEK_LEFT, 0])
    y1 = int(points[BETWEEN_EYES, 1])
    side = int(points[CHEEK_RIGHT, 0]) - x1
    x1, y1 = max(x1, 0), max(y1, 0)
    return x1, y1, min(x1 + side, width), min(y1 + side, height)


def make_avatar(frames_or_path: str | Path | Iterable[np.ndarray], out_dir: Path, checkpoint: Path,
                progress: bool = True, hook: FrameHook | None = None) -> Path:
    """Write the avatar folder `out_dir`. Raises AvatarError, leaving `out_dir` as it was, when
    the input cannot be read or a frame has no face; `hook` is told of each frame, and what it
    raises stops the work the same way."""
    from ultralight.checkpoint import load_unet

    load_unet(checkpoint)  # refuse a checkpoint that does not fit before any work
    frames, total, source = frames_source(frames_or_path)
    with staged_folder(out_dir) as work:
        (work / "full_imgs").mkdir()
        (work / "face_imgs").mkdir()
        coords: list[tuple[int, int, int, int] | None] = []
        for i, frame in enumerate(tracked(frames, "cropping faces", total, progress, hook)):
            frame = as_bgr(frame, source)
            write_image(work / "full_imgs" / frame_name(i), frame)
            points = detect_landmarks(frame)
            box = None if points is None else crop_box(points, frame.shape[1], frame.shape[0])
            if box is None or box[2] - box[0] < 16 or box[3] - box[1] < 16:
                coords.append(None)
                continue
            x1, y1, x2, y2 = box
            write_image(work / "face_imgs" / frame_name(i), cv2.resize(frame[y1:y2, x1:x2], (CROP, CROP)))
            coords.append(box)
        if not coords:
            raise AvatarError(f"cannot read video {source}")
        missing = [i for i, box in enumerate(coords) if box is None]
        if missing:
            raise AvatarError(no_face_message(missing, source))
        with (work / "coords.pkl").open("wb") as f:
            pickle.dump(coords, f)
        shutil.copyfile(checkpoint, work / "ultralight.pth")
    log.info("wrote avatar to %s (%d frames)", out_dir, len(coords))
    return out_dir


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="python -m ultralight.genavatar", description=__doc__.split("\n")[0])
    p.add_argument("--video_path", required=True, help="video (or image) showing one face in every frame")
    p.add_argument("--avatar_id", required=True, help="name of the avatar folder")
    p.add_argument("--checkpoint", required=True, help="the person's ultralight.pth (anliyuan train.py --asr hubert)")
    p.add_argument("--out_root", default="data/avatars", help="folder holding avatars (default data/avatars)")
    args = p.parse_args(argv)
    try:
        out = make_avatar(args.video_path, Path(args.out_root) / args.avatar_id, Path(args.checkpoint))
    except (AvatarError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
