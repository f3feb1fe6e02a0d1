"""The embedded default model: a CPU talking portrait that needs no downloaded weights.

The avatar's facial landmarks were found once, when the avatar was made
(`python -m portrait.make_avatar`); here the mouth is warped per frame from audio features.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from baseasr import BaseASR
from basereal import LipModel, Renderer, avatar_dir
from outputs.player import FPS
from portrait.features import FEATURE_DIM, frame_features
from portrait.render import PortraitAvatar, PortraitRenderer


class PortraitASR(BaseASR):
    def features(self, chunks: np.ndarray, left: int, right: int, n_frames: int) -> np.ndarray:
        return frame_features(chunks, left, right, n_frames)


class PortraitSession(Renderer):
    """One session's portrait: its own blinks and head sway (seeded by the session id)."""

    def __init__(self, avatar: PortraitAvatar, seed: int) -> None:
        self._renderer = PortraitRenderer(avatar, seed=seed)
        self._rest = np.zeros(FEATURE_DIM, dtype=np.float32)

    def infer(self, feats: np.ndarray, indices: Sequence[int]) -> Sequence[np.ndarray]:
        return list(feats)  # the features drive the warp directly

    def paste_back(self, pred: np.ndarray, index: int) -> np.ndarray:
        return self._renderer.render(pred, index / FPS)

    def idle_frame(self, index: int) -> np.ndarray:
        return self._renderer.render(self._rest, index / FPS)


class Portrait(LipModel):
    name = "portrait"
    default_avatar_id = "portrait_astronaut"
    # Rendering takes a few ms per frame, so small batches keep latency low at no cost.
    default_batch_size = 4

    def __init__(self, avatar: PortraitAvatar) -> None:
        self.avatar = avatar  # no learned weights: the avatar is the whole model

    @classmethod
    def load(cls, opt: argparse.Namespace) -> Portrait:
        return cls(PortraitAvatar.load(avatar_dir(opt.avatar_id, getattr(opt, "avatar_root", None))))

    def load_avatar(self, folder: Path) -> PortraitAvatar:
        return PortraitAvatar.load(folder)

    def make_asr(self, left: int, right: int) -> BaseASR:
        return PortraitASR(left=left, right=right)

    def renderer(self, sessionid: int, avatar: Any = None) -> Renderer:
        return PortraitSession(avatar or self.avatar, seed=sessionid % 2**32)
