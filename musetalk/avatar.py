"""A MuseTalk avatar folder as upstream's genavatar writes it (`data/avatars/<id>/`):
`full_imgs/`, `coords.pkl` ([x1, y1, x2, y2] per frame, numpy ints allowed, a no-face frame
(0, 0, 0, 0)), `latents.pt` (a list of [1, 8, 32, 32] tensors, often fp16 saved on CUDA),
`mask/` (gray blend masks) and `mask_coords.pkl` (their boxes, which may leave the frame)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from avatar_files import check_counts, load_boxes, numbered_images, read_images
from checkpoints import load_data

log = logging.getLogger(__name__)

LATENT_SHAPE = (8, 32, 32)  # masked crop's latents (4) then the reference's (4)


@dataclass(frozen=True)
class MuseAvatar:
    frames: list[np.ndarray]  # full frames, BGR uint8
    coords: list[tuple[int, int, int, int]]  # face box (x1, y1, x2, y2) per frame
    has_face: np.ndarray  # bool per frame: False where genavatar found no face
    latents: np.ndarray  # [N, 8, 32, 32] float32 (zeros where there is no face)
    masks: list[np.ndarray]  # gray uint8, the size of its mask box
    mask_coords: list[tuple[int, int, int, int]]

    def __len__(self) -> int:
        return len(self.frames)


def _latents(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"avatar file missing: {path}")
    data = load_data(path, "a MuseTalk avatar's latents.pt")
    items = list(data) if isinstance(data, (list, tuple)) else None
    if isinstance(data, torch.Tensor):
        items = list(data.reshape(-1, *LATENT_SHAPE))
    if not items or not all(isinstance(t, torch.Tensor) and t.numel() == np.prod(LATENT_SHAPE) for t in items):
        raise ValueError(f"{path} is not a list of [1, 8, 32, 32] latents")
    return torch.stack([t.reshape(LATENT_SHAPE).float() for t in items]).numpy()


def load_muse_avatar(folder: Path) -> MuseAvatar:
    started = time.perf_counter()
    coords = load_boxes(folder / "coords.pkl")
    mask_coords = load_boxes(folder / "mask_coords.pkl")
    latents = _latents(folder / "latents.pt")
    frames = read_images(numbered_images(folder / "full_imgs"), "full_imgs")
    masks = read_images(numbered_images(folder / "mask"), "mask", cv2.IMREAD_GRAYSCALE)
    check_counts(folder, full_imgs=len(frames), coords=len(coords), mask=len(masks), mask_coords=len(mask_coords))
    has_face = np.array([x2 > x1 and y2 > y1 for x1, y1, x2, y2 in coords])
    if len(latents) != len(frames):
        if len(latents) != int(has_face.sum()):
            raise ValueError(f"avatar {folder} is inconsistent: {len(frames)} full_imgs but {len(latents)} latents "
                             f"({int(has_face.sum())} frames with a face)")
        # Upstream's genavatar leaves no-face frames out of latents.pt, so its player pairs the
        # later frames with the wrong latents; here each latent goes back to its own frame.
        log.warning("avatar %s: %d frames have no face; their latents were left out, realigned",
                    folder.name, len(frames) - len(latents))
        full = np.zeros((len(frames), *LATENT_SHAPE), np.float32)
        full[has_face] = latents
        latents = full
    for i, (mask, (xs, ys, xe, ye)) in enumerate(zip(masks, mask_coords, strict=True)):
        if mask.shape != (ye - ys, xe - xs):
            raise ValueError(f"avatar {folder}: mask {i} is {mask.shape[1]}x{mask.shape[0]} but its box "
                             f"{(xs, ys, xe, ye)} is {xe - xs}x{ye - ys}")
    latents.setflags(write=False)
    log.info("avatar %s: %d frames loaded in %.1fs", folder.name, len(frames), time.perf_counter() - started)
    return MuseAvatar(frames, coords, has_face, latents, masks, mask_coords)
