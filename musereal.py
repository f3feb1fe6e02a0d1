"""MuseTalk 1.5 as a LiveTalking model: users' own files, unchanged.

    python app.py --model musetalk --avatar_id musetalk_avatar1

Models (under --models_dir, default models/): `musetalkV15/musetalk.json` + `unet.pth`,
`sd-vae/` and `whisper/` (Hugging Face folders). The avatar folder is upstream's
(musetalk/avatar.py). On CUDA everything runs in fp16 as upstream; on a CPU in fp32, or the
UNet and VAE in bfloat16 with --cpu_bf16 where the CPU computes it natively.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from baseasr import BaseASR
from basereal import LipModel, LoopedFramesRenderer, Renderer, avatar_dir, mirror_index, models_dir
from checkpoints import best_device, cpu_has_bf16
from museasr import MuseASR, Whisper
from musetalk.avatar import MuseAvatar, load_muse_avatar
from musetalk.render import MuseTalkNet, blend_face
from musetalk.weights import load_unet, load_vae, scaling_factor

log = logging.getLogger(__name__)


class MuseTalkSession(LoopedFramesRenderer):
    def __init__(self, net: MuseTalkNet, avatar: MuseAvatar) -> None:
        self.net = net
        self.avatar = avatar

    def infer(self, feats: np.ndarray, indices: Sequence[int]) -> Sequence[np.ndarray]:
        n = len(self.avatar)
        return list(self.net.faces(self.avatar.latents[[mirror_index(i, n) for i in indices]], feats))

    def paste_back(self, pred: np.ndarray, index: int) -> np.ndarray:
        a = self.avatar
        k = mirror_index(index, len(a))
        if not a.has_face[k]:
            return a.frames[k]
        return blend_face(a.frames[k], pred, a.coords[k], a.masks[k], a.mask_coords[k])


class MuseTalk(LipModel):
    name = "musetalk"
    default_avatar_id = "musetalk_avatar1"
    default_batch_size = 16

    def __init__(self, net: MuseTalkNet, whisper: Whisper, avatar: MuseAvatar) -> None:
        self.net = net
        self.whisper = whisper
        self.avatar = avatar

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--cpu_bf16", action="store_true",
                            help="on a CPU with native bfloat16, the UNet and VAE in bfloat16 (whisper stays fp32)")
        parser.add_argument("--fast_whisper", action="store_true",
                            help="encode only each batch's audio window, not whisper's 30 s: features about 20x "
                                 "cheaper but different from what the checkpoints were trained on")

    @classmethod
    def load(cls, opt: argparse.Namespace) -> MuseTalk:
        root = models_dir(opt)
        folder = avatar_dir(opt.avatar_id, getattr(opt, "avatar_root", None))
        started = time.perf_counter()
        device = best_device()
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        if getattr(opt, "cpu_bf16", False) and device.type == "cpu":
            if cpu_has_bf16():
                dtype = torch.bfloat16
            else:
                log.warning("this CPU has no native bfloat16; MuseTalk stays in fp32")
        vae = load_vae(root)
        net = MuseTalkNet(load_unet(root), vae, scaling_factor(vae), device, dtype)
        whisper = Whisper.load(root, device, fast=bool(getattr(opt, "fast_whisper", False)))
        log.info("musetalk weights from %s on %s (%s) in %.1fs", root, device,
                 str(dtype).replace("torch.", ""), time.perf_counter() - started)
        return cls(net, whisper, load_muse_avatar(folder))

    def load_avatar(self, folder: Path) -> MuseAvatar:
        return load_muse_avatar(folder)

    def make_asr(self, left: int, right: int) -> BaseASR:
        return MuseASR(self.whisper, left=left, right=right)

    def renderer(self, sessionid: int, avatar: Any = None) -> Renderer:
        return MuseTalkSession(self.net, avatar or self.avatar)
