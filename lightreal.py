"""Ultralight as a LiveTalking model: users' own avatar folders and HuBERT files, unchanged.

    python app.py --model ultralight --avatar_id ultralight_avatar1

The avatar folder is upstream's: `full_imgs/`, `face_imgs/` (168x168 crops), `coords.pkl`
(one `(x1, y1, x2, y2)` box per frame, numpy ints allowed) and `ultralight.pth`, the network
trained for that person. HuBERT comes from `models/hubert-large-ls960-ft/` (hubertasr.py).
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from avatar_files import check_counts, load_boxes, numbered_images, read_images
from baseasr import BaseASR
from basereal import LipModel, LoopedFramesRenderer, Renderer, avatar_dir, mirror_index, models_dir
from hubertasr import Hubert, HubertASR
from ultralight.checkpoint import load_unet
from ultralight.render import CROP, paste_back, predict

log = logging.getLogger(__name__)

CHECKPOINT = "ultralight.pth"


@dataclass(frozen=True)
class UltralightAvatar:
    frames: list[np.ndarray]  # full frames, BGR uint8
    faces: np.ndarray  # [N, 168, 168, 3] BGR uint8
    coords: list[tuple[int, int, int, int]]  # (x1, y1, x2, y2) per frame
    # The network trained for this person (each Ultralight avatar has its own); None: the
    # model's, for the avatar loaded with it.
    net: nn.Module | None = None

    def __len__(self) -> int:
        return len(self.frames)


def load_ultralight_avatar(folder: Path) -> UltralightAvatar:
    started = time.perf_counter()
    coords = load_boxes(folder / "coords.pkl")
    frames = read_images(numbered_images(folder / "full_imgs"), "full_imgs")
    faces = read_images(numbered_images(folder / "face_imgs"), "face_imgs")
    check_counts(folder, full_imgs=len(frames), face_imgs=len(faces), coords=len(coords))
    for i, (x1, y1, x2, y2) in enumerate(coords):
        if x2 <= x1 or y2 <= y1:
            raise ValueError(f"avatar {folder}: face box {(x1, y1, x2, y2)} of frame {i} is empty")
    bad = next((i for i, f in enumerate(faces) if f.shape[:2] != (CROP, CROP)), None)
    if bad is not None:
        raise ValueError(f"avatar {folder}: face_imgs frame {bad} is {faces[bad].shape[1]}x{faces[bad].shape[0]}, "
                         f"Ultralight crops are {CROP}x{CROP}")
    faces_arr = np.stack(faces)
    faces_arr.setflags(write=False)
    log.info("avatar %s: %d frames loaded in %.1fs", folder.name, len(frames), time.perf_counter() - started)
    return UltralightAvatar(frames, faces_arr, coords)


class UltralightSession(LoopedFramesRenderer):
    def __init__(self, net: nn.Module, avatar: UltralightAvatar) -> None:
        self.net = net
        self.avatar = avatar

    def infer(self, feats: np.ndarray, indices: Sequence[int]) -> Sequence[np.ndarray]:
        n = len(self.avatar)
        return list(predict(self.net, feats, self.avatar.faces[[mirror_index(i, n) for i in indices]]))

    def paste_back(self, pred: np.ndarray, index: int) -> np.ndarray:
        k = mirror_index(index, len(self.avatar))
        return paste_back(self.avatar.frames[k], self.avatar.faces[k], pred, self.avatar.coords[k])


class Ultralight(LipModel):
    name = "ultralight"
    default_avatar_id = "ultralight_avatar1"
    default_batch_size = 16

    def __init__(self, net: nn.Module, hubert: Hubert, avatar: UltralightAvatar) -> None:
        self.net = net
        self.hubert = hubert
        self.avatar = avatar
        self.cpu_bf16 = False  # how load_avatar loads another avatar's network

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--cpu_bf16", action="store_true",
                            help="on a CPU with native bfloat16, the UNet in bfloat16 (HuBERT stays fp32)")

    @classmethod
    def load(cls, opt: argparse.Namespace) -> Ultralight:
        folder = avatar_dir(opt.avatar_id, getattr(opt, "avatar_root", None))
        started = time.perf_counter()
        net = load_unet(folder / CHECKPOINT, cpu_bf16=bool(getattr(opt, "cpu_bf16", False)))
        hubert = Hubert.load(models_dir(opt))
        log.info("ultralight %s loaded in %.1fs", folder / CHECKPOINT, time.perf_counter() - started)
        model = cls(net, hubert, load_ultralight_avatar(folder))
        model.cpu_bf16 = bool(getattr(opt, "cpu_bf16", False))
        return model

    def load_avatar(self, folder: Path) -> UltralightAvatar:
        net = load_unet(folder / CHECKPOINT, cpu_bf16=self.cpu_bf16)
        return replace(load_ultralight_avatar(folder), net=net)

    def make_asr(self, left: int, right: int) -> BaseASR:
        return HubertASR(self.hubert, left=left, right=right)

    def renderer(self, sessionid: int, avatar: Any = None) -> Renderer:
        avatar = avatar or self.avatar
        return UltralightSession(avatar.net or self.net, avatar)
