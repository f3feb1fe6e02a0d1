"""Create a "portrait" avatar from one photo.

    python -m portrait.make_avatar --image PATH --avatar_id NAME [--size 512] [--out_root data/avatars]
    python -m portrait.make_avatar --astronaut --avatar_id portrait_astronaut

Writes data/avatars/NAME/: full_imgs/00000000.png, landmarks.npy, coords.pkl, avatar.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import sys
from pathlib import Path

import cv2
import numpy as np

from portrait.landmarks import (
    CHIN,
    FACE_OVAL,
    FOREHEAD_TOP,
    crop_square,
    detect_landmarks,
)

log = logging.getLogger("portrait.make_avatar")

FACE_FRACTION = 0.5  # forehead-to-chin height as a share of the frame: head and shoulders
FACE_CENTER_Y = 0.42  # face centre sits a bit above the middle so shoulders show below
ASTRONAUT_SOURCE = "skimage.data.astronaut (NASA, public domain)"


def no_face_message(source: str) -> str:
    return f"no face found in {source or 'image'}; use a frontal photo with the face clearly visible"


def make_avatar(image_bgr: np.ndarray, out_dir: Path, size: int = 512, source: str = "") -> Path:
    """Detect the face in `image_bgr`, frame it square at `size`, and write the avatar to out_dir.

    Raises ValueError("no face found in ...") when no face is detected.
    """
    image_bgr = _as_bgr(image_bgr, source)
    pts = detect_landmarks(image_bgr)
    if pts is None:
        raise ValueError(no_face_message(source))
    x0, y0, side = _framing(pts)
    log.info("face found; cropping a %d px square at (%d, %d) and resizing to %d", side, x0, y0, size)
    crop = crop_square(image_bgr, x0, y0, side)
    interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    frame = cv2.resize(crop, (size, size), interpolation=interp)

    # Detect again on the final frame: the mesh is more precise on the larger, centred face.
    crop_pts = detect_landmarks(frame)
    if crop_pts is None:
        log.info("no face on the framed crop; reusing the transformed landmarks")
        crop_pts = (pts - np.float32([x0, y0])) * np.float32(size / side)
    crop_pts = crop_pts.astype(np.float32)

    out_dir = Path(out_dir)
    (out_dir / "full_imgs").mkdir(parents=True, exist_ok=True)
    img_path = out_dir / "full_imgs" / "00000000.png"
    if not cv2.imwrite(str(img_path), frame):
        raise OSError(f"cannot write {img_path}")
    np.save(out_dir / "landmarks.npy", crop_pts)
    with open(out_dir / "coords.pkl", "wb") as f:
        pickle.dump([_face_box(crop_pts, size)], f)
    meta = {"model": "portrait", "size": size, "source": source}
    (out_dir / "avatar.json").write_text(json.dumps(meta, indent=2) + "\n")
    log.info("wrote avatar to %s", out_dir)
    return out_dir


def _as_bgr(image: np.ndarray, source: str) -> np.ndarray:
    if image is None or not isinstance(image, np.ndarray) or image.size == 0:
        raise ValueError(f"cannot read image {source}")
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(image[:, :, :3])


def _framing(pts: np.ndarray) -> tuple[int, int, int]:
    """Square crop (x0, y0, side) with the face about half the height, centred horizontally."""
    face_h = float(np.linalg.norm(pts[CHIN] - pts[FOREHEAD_TOP]))
    side = round(face_h / FACE_FRACTION)
    cx = float(pts[FACE_OVAL, 0].mean())
    cy = float(pts[FOREHEAD_TOP, 1] + pts[CHIN, 1]) / 2
    return round(cx - side / 2), round(cy - FACE_CENTER_Y * side), side


def _face_box(pts: np.ndarray, size: int) -> tuple[int, int, int, int]:
    """Face box (y1, y2, x1, x2) in upstream wav2lip's coords.pkl format."""
    x1, y1 = np.floor(pts.min(axis=0)).astype(int)
    x2, y2 = np.ceil(pts.max(axis=0)).astype(int)
    y1, y2, x1, x2 = (int(min(max(v, 0), size)) for v in (y1, y2, x1, x2))
    return y1, y2, x1, x2


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m portrait.make_avatar", description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="photo with one frontal face")
    src.add_argument("--astronaut", action="store_true", help="use the public-domain NASA astronaut photo")
    p.add_argument("--avatar_id", required=True, help="name of the avatar folder")
    p.add_argument("--size", type=int, default=512, help="frame side in pixels (default 512)")
    p.add_argument("--out_root", default="data/avatars", help="folder holding avatars (default data/avatars)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parse_args(argv)
    if args.size < 64:
        print("error: --size must be at least 64", file=sys.stderr)
        return 2
    if args.astronaut:
        from skimage import data  # only this option needs scikit-image

        image, source = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR), ASTRONAUT_SOURCE
    else:
        # Checking the path first avoids OpenCV's own warning about a file it cannot open.
        path = Path(args.image)
        image = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
        source = args.image
        if image is None:
            print(f"error: cannot read image {args.image}", file=sys.stderr)
            return 2
    try:
        out = make_avatar(image, Path(args.out_root) / args.avatar_id, size=args.size, source=source)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
