"""Wav2Lip 256 as a LiveTalking model: users' own `models/wav2lip.pth` and avatar folders.

    python app.py --model wav2lip --avatar_id wav2lip256_avatar1

The avatar folder is upstream's: `full_imgs/`, `face_imgs/` (256x256 crops) and `coords.pkl`
(one `(y1, y2, x1, x2)` face box per frame), played forward then backward.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from torch import nn

from avatar_files import check_counts, load_boxes, numbered_images, read_images
from baseasr import BaseASR
from basereal import LipModel, LoopedFramesRenderer, Renderer, avatar_dir, mirror_index, models_dir
from outputs.player import FPS
from wav2lip.audio import mel_chunks, melspectrogram
from wav2lip.checkpoint import load_model
from wav2lip.infer import predict
from wav2lip.model import IMG_SIZE

log = logging.getLogger(__name__)

MEL_COLUMNS_PER_CHUNK = 80 / 50  # 80 mel columns per second, 50 audio chunks per second
# The model redraws the lower half of the crop; its upper half is blended out so the eyes stay
# the photo's own, and every edge fades over this share of the box so no seam shows.
FEATHER = 0.08
MOUTH_TOP = 0.45


class LipASR(BaseASR):
    """Mel windows of 16 columns (200 ms) per video frame, starting at the frame's own audio."""

    def features(self, chunks: np.ndarray, left: int, right: int, n_frames: int) -> np.ndarray:
        mel = melspectrogram(chunks.reshape(-1))
        return mel_chunks(mel, n_frames, FPS, start=left * MEL_COLUMNS_PER_CHUNK)


@dataclass(frozen=True)
class LipAvatar:
    """A wav2lip avatar folder in memory; read-only, shared by every session."""

    frames: list[np.ndarray]  # full frames, BGR uint8
    faces: np.ndarray  # [N, 256, 256, 3] BGR uint8
    coords: list[tuple[int, int, int, int]]  # (y1, y2, x1, x2) per frame

    def __len__(self) -> int:
        return len(self.frames)


def load_lip_avatar(folder: Path) -> LipAvatar:
    """Read an upstream wav2lip avatar folder, with errors that name what is wrong."""
    started = time.perf_counter()
    coords = load_boxes(folder / "coords.pkl")
    frames = read_images(numbered_images(folder / "full_imgs"), "full_imgs")
    faces = read_images(numbered_images(folder / "face_imgs"), "face_imgs")
    check_counts(folder, full_imgs=len(frames), face_imgs=len(faces), coords=len(coords))
    for i, (frame, box) in enumerate(zip(frames, coords, strict=True)):
        y1, y2, x1, x2 = box
        if not (0 <= y1 < y2 <= frame.shape[0] and 0 <= x1 < x2 <= frame.shape[1]):
            size = f"{frame.shape[1]}x{frame.shape[0]}"
            raise ValueError(f"avatar {folder}: face box {box} of frame {i} lies outside the {size} frame")
    square = (IMG_SIZE, IMG_SIZE)
    faces_arr = np.stack([f if f.shape[:2] == square else cv2.resize(f, square) for f in faces])
    faces_arr.setflags(write=False)
    log.info("avatar %s: %d frames loaded in %.1fs", folder.name, len(frames), time.perf_counter() - started)
    return LipAvatar(frames, faces_arr, coords)


@lru_cache(maxsize=64)
def paste_mask(height: int, width: int) -> np.ndarray:
    """Blend weights [h, w, 1] for a predicted face pasted into an h x w box."""
    def ramp(n: int, start: float, fade: float) -> np.ndarray:
        x = (np.arange(n) + 0.5) / n
        return np.clip((x - start) / fade, 0.0, 1.0)

    fade = FEATHER
    rows = np.minimum(ramp(height, MOUTH_TOP, fade), ramp(height, 0.0, fade)[::-1])
    cols = np.minimum(ramp(width, 0.0, fade), ramp(width, 0.0, fade)[::-1])
    mask = (rows[:, None] * cols[None, :]).astype(np.float32)[..., None]
    mask.setflags(write=False)
    return mask


def paste_face(frame: np.ndarray, face: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """A copy of `frame` with `face` resized into `box`, blended with soft edges."""
    y1, y2, x1, x2 = box
    out = frame.copy()
    h, w = y2 - y1, x2 - x1
    resized = cv2.resize(face, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    mask = paste_mask(h, w)
    region = out[y1:y2, x1:x2].astype(np.float32)
    out[y1:y2, x1:x2] = (region + mask * (resized - region) + 0.5).astype(np.uint8)
    return out


class Wav2LipSession(LoopedFramesRenderer):
    """Wav2Lip keeps nothing per session: every frame is the model's and the avatar's."""

    def __init__(self, net: nn.Module, avatar: LipAvatar) -> None:
        self.net = net
        self.avatar = avatar

    def infer(self, feats: np.ndarray, indices: Sequence[int]) -> Sequence[np.ndarray]:
        n = len(self.avatar)
        faces = self.avatar.faces[[mirror_index(i, n) for i in indices]]
        return list(predict(self.net, feats, faces))

    def paste_back(self, pred: np.ndarray, index: int) -> np.ndarray:
        k = mirror_index(index, len(self.avatar))
        return paste_face(self.avatar.frames[k], pred, self.avatar.coords[k])


class Wav2Lip(LipModel):
    name = "wav2lip"
    default_avatar_id = "wav2lip256_avatar1"
    default_batch_size = 16  # upstream's default: GPUs like big batches
    default_model_file = "wav2lip.pth"

    def __init__(self, net: nn.Module, avatar: LipAvatar) -> None:
        self.net = net
        self.avatar = avatar

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--model_path", default=None, help=f"checkpoint file (default models/{cls.default_model_file})"
        )
        parser.add_argument(
            "--cpu_bf16", action="store_true",
            help="on a CPU with native bfloat16: about 2x faster, pixels differ by about 1/255",
        )

    @classmethod
    def load(cls, opt: argparse.Namespace) -> Wav2Lip:
        path = Path(opt.model_path) if getattr(opt, "model_path", None) else models_dir(opt) / cls.default_model_file
        started = time.perf_counter()
        net = load_model(path, cpu_bf16=bool(getattr(opt, "cpu_bf16", False)))
        device = next(net.parameters()).device
        log.info("wav2lip weights %s loaded on %s in %.1fs", path, device, time.perf_counter() - started)
        return cls(net, load_lip_avatar(avatar_dir(opt.avatar_id, getattr(opt, "avatar_root", None))))

    def load_avatar(self, folder: Path) -> LipAvatar:
        return load_lip_avatar(folder)

    def make_asr(self, left: int, right: int) -> BaseASR:
        return LipASR(left=left, right=right)

    def renderer(self, sessionid: int, avatar: Any = None) -> Renderer:
        return Wav2LipSession(self.net, avatar or self.avatar)
