"""Create a MuseTalk 1.5 avatar from a video (or one image), in upstream LiveTalking's format.

    python -m musetalk.genavatar --video_path v.mp4 --avatar_id me [--bbox_shift 0]
        [--extra_margin 10] [--parsing_mode jaw] [--models_dir models] [--out_root data/avatars]

Writes data/avatars/<id>/: full_imgs/, coords.pkl ([x1, y1, x2, y2] per frame), latents.pt
(the user's VAE's latents of each face crop, masked and reference), mask/ and mask_coords.pkl.
The face box follows upstream's rule on MediaPipe face-mesh landmarks: the chin is the
bottom, the top lies as far above the nose bridge as the chin below it (moved down by
--bbox_shift), the jaw line gives the sides, and --extra_margin pixels go below the chin.
The blend mask is the lower half of the face region, blurred as upstream does it: from
BiSeNet face parsing in upstream's --parsing_mode when models/face-parse-bisent/79999_iter.pth
is there, otherwise from the face mesh (the face oval; with 'neck' down to the box's bottom).
Every frame needs a face: otherwise nothing is written and the command names the frames
without one (upstream writes a folder whose latents no longer line up with its frames).
Frames carry no watermark.
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import sys
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
import torch

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
from avatar_files import paste_clipped
from musetalk.latents import crop_latents, face_crop
from portrait.landmarks import CHIN, FACE_OVAL, detect_landmarks

log = logging.getLogger("musetalk.genavatar")

NOSE_BRIDGE = 5  # face-mesh point on the nose ridge below the eyes (dlib's point 29)
# The jaw line, ear to ear through the chin (dlib's points 0-16): the box's sides.
JAW = FACE_OVAL[FACE_OVAL.index(454) : FACE_OVAL.index(234) + 1]
MASK_EXPAND = 1.5  # the mask box is this much larger than the face box, centred on it
UPPER_BOUNDARY = 0.5  # rows of the mask box above this share stay the photo's
PARSING_MODES = ("jaw", "raw", "neck")


def face_box(points: np.ndarray, height: int, bbox_shift: int, extra_margin: int) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) from face-mesh landmarks, by upstream's rule (v15 margin included)."""
    jaw = points[JAW]
    bridge_y = points[NOSE_BRIDGE, 1] + bbox_shift
    bottom = max(points[CHIN, 1], jaw[:, 1].max())
    y1 = max(0, int(bridge_y - (bottom - bridge_y)))
    x1, x2 = int(jaw[:, 0].min()), int(jaw[:, 0].max())
    y2 = min(int(bottom) + extra_margin, height)
    return max(x1, 0), y1, x2, y2


def mask_box(box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """Upstream's blend-mask square around the face box; not clipped to the frame."""
    x1, y1, x2, y2 = box
    xc, yc = (x1 + x2) // 2, (y1 + y2) // 2
    s = int(max(x2 - x1, y2 - y1) // 2 * MASK_EXPAND)
    return xc - s, yc - s, xc + s, yc + s


def mesh_region(points: np.ndarray, box: tuple[int, int, int, int], mbox: tuple[int, int, int, int],
                mode: str) -> np.ndarray:
    """0/255 face region (mask box size) from face-mesh landmarks: the face oval, and with
    'neck' the neck below the jaw down to the face box's bottom."""
    xs, ys, xe, ye = mbox
    region = np.zeros((ye - ys, xe - xs), np.uint8)
    outline = (points[FACE_OVAL] - np.float32([xs, ys])).astype(np.int32)
    cv2.fillPoly(region, [cv2.convexHull(outline)], 255)
    if mode == "neck":
        jaw = (points[JAW] - np.float32([xs, ys])).astype(np.int32)
        bottom = box[3] - ys
        cv2.fillPoly(region, [np.concatenate([jaw, [[jaw[-1, 0], bottom], [jaw[0, 0], bottom]]]).astype(np.int32)], 255)
    return region


def parsed_region(net: torch.nn.Module, frame: np.ndarray, mbox: tuple[int, int, int, int], mode: str) -> np.ndarray:
    """0/255 face region (mask box size) from BiSeNet on the mask box's crop of the frame
    (zero outside the frame), in upstream's parsing mode, resized back bicubically."""
    from musetalk.faceparse import mode_mask, parse

    xs, ys, xe, ye = mbox
    crop = np.zeros((ye - ys, xe - xs, 3), np.uint8)
    paste_clipped(crop, frame, -xs, -ys)
    labels = parse(net, cv2.cvtColor(crop, cv2.COLOR_BGR2RGB))
    return cv2.resize(mode_mask(labels, mode), (xe - xs, ye - ys), interpolation=cv2.INTER_CUBIC)


def blend_mask(region: np.ndarray, box: tuple[int, int, int, int], mbox: tuple[int, int, int, int]) -> np.ndarray:
    """The gray mask (mask box size): the region inside the face box, lower half only,
    blurred with upstream's kernel (a tenth of the mask's width)."""
    xs, ys, _, _ = mbox
    x1, y1, x2, y2 = box
    mask = np.zeros(region.shape, np.uint8)
    mask[y1 - ys : y2 - ys, x1 - xs : x2 - xs] = region[y1 - ys : y2 - ys, x1 - xs : x2 - xs]
    mask[: int(mask.shape[0] * UPPER_BOUNDARY)] = 0
    k = int(0.1 * mask.shape[1] // 2 * 2) + 1
    return cv2.GaussianBlur(mask, (k, k), 0)


def make_avatar(
    frames_or_path: str | Path | Iterable[np.ndarray],
    out_dir: Path,
    vae: torch.nn.Module,
    bbox_shift: int = 0,
    extra_margin: int = 10,
    parsing_mode: str = "jaw",
    progress: bool = True,
    seed: int = 0,
    parser: torch.nn.Module | None = None,
    hook: FrameHook | None = None,
) -> Path:
    """Write the avatar folder `out_dir`; `parser` is the user's BiSeNet (face-mesh masks
    without it). Raises AvatarError, leaving `out_dir` as it was, when the input cannot be
    read or a frame has no face. `hook` is told of each frame of both passes; what it raises
    stops the work, leaving `out_dir` as it was."""
    if parsing_mode not in PARSING_MODES:
        raise AvatarError(f"unknown --parsing_mode {parsing_mode!r}; choose one of {', '.join(PARSING_MODES)}")
    frames, total, source = frames_source(frames_or_path)
    with staged_folder(out_dir) as work:
        (work / "full_imgs").mkdir()
        (work / "mask").mkdir()
        landmarks: list[np.ndarray | None] = []
        heights: list[int] = []
        for i, frame in enumerate(tracked(frames, "finding faces", total, progress, hook)):
            frame = as_bgr(frame, source)
            write_image(work / "full_imgs" / frame_name(i), frame)
            landmarks.append(detect_landmarks(frame))
            heights.append(frame.shape[0])
        if not landmarks:
            raise AvatarError(f"cannot read video {source}")
        missing = [i for i, p in enumerate(landmarks) if p is None]
        if missing:
            raise AvatarError(no_face_message(missing, source))
        coords, mask_coords, latents = [], [], []
        generator = torch.Generator().manual_seed(seed)  # the posterior sample, reproducible
        for i, points in enumerate(tracked(landmarks, "encoding faces", None, progress, hook)):
            frame = cv2.imread(str(work / "full_imgs" / frame_name(i)), cv2.IMREAD_COLOR)
            box = face_box(points, heights[i], bbox_shift, extra_margin)
            if box[2] <= box[0] or box[3] <= box[1]:
                raise AvatarError(f"the face box of frame {i} of {source} is empty; try a smaller --bbox_shift")
            mbox = mask_box(box)
            latents.append(crop_latents(vae, face_crop(frame, box), generator))
            region = (mesh_region(points, box, mbox, parsing_mode) if parser is None
                      else parsed_region(parser, frame, mbox, parsing_mode))
            write_image(work / "mask" / frame_name(i), blend_mask(region, box, mbox))
            coords.append(list(box))
            mask_coords.append(list(mbox))
        with (work / "coords.pkl").open("wb") as f:
            pickle.dump(coords, f)
        with (work / "mask_coords.pkl").open("wb") as f:
            pickle.dump(mask_coords, f)
        torch.save(latents, work / "latents.pt")
        info = {"avatar_id": out_dir.name, "video_path": source, "bbox_shift": bbox_shift}
        (work / "avator_info.json").write_text(json.dumps(info))  # upstream's spelling
    log.info("wrote avatar to %s (%d frames)", out_dir, len(coords))
    return out_dir


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m musetalk.genavatar", description=__doc__.split("\n")[0])
    p.add_argument("--video_path", required=True, help="video (or image) showing one face in every frame")
    p.add_argument("--avatar_id", required=True, help="name of the avatar folder")
    p.add_argument("--bbox_shift", type=int, default=0, help="move the face box's top down (+) or up (-) in pixels")
    p.add_argument("--extra_margin", type=int, default=10, help="pixels below the chin (default 10)")
    p.add_argument("--parsing_mode", default="jaw", choices=PARSING_MODES, help="blend mask region (default jaw)")
    p.add_argument("--models_dir", default="models", help="holds sd-vae/ (default models)")
    p.add_argument("--out_root", default="data/avatars", help="folder holding avatars (default data/avatars)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parse_args(argv)
    from musetalk.faceparse import load_bisenet
    from musetalk.weights import load_vae

    try:
        vae = load_vae(Path(args.models_dir)).eval()
        parser = load_bisenet(Path(args.models_dir))
        log.info("blend masks from %s", "BiSeNet face parsing" if parser else "face-mesh landmarks "
                 "(no models/face-parse-bisent/79999_iter.pth)")
        out = make_avatar(args.video_path, Path(args.out_root) / args.avatar_id, vae, args.bbox_shift,
                          args.extra_margin, args.parsing_mode, parser=parser)
    except (AvatarError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
