"""The embedded default model: a CPU talking portrait that needs no downloaded weights.

The avatar's facial landmarks were found once, when the avatar was made
(`python -m portrait.make_avatar`); here the mouth is warped per frame from audio features.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np

from baseasr import BaseASR
from basereal import BaseReal, avatar_dir
from portrait.features import FEATURE_DIM, frame_features
from portrait.render import PortraitAvatar, PortraitRenderer
from webrtc import FPS


class PortraitASR(BaseASR):
    def features(self, chunks: np.ndarray, left: int, right: int, n_frames: int) -> np.ndarray:
        return frame_features(chunks, left, right, n_frames)


class PortraitReal(BaseReal):
    model_name = "portrait"
    default_avatar_id = "portrait_astronaut"
    # Rendering takes a few ms per frame, so small batches keep latency low at no cost.
    default_batch_size = 4

    @classmethod
    def load_model(cls, opt: argparse.Namespace) -> None:
        return None  # no learned weights

    @classmethod
    def load_avatar(cls, opt: argparse.Namespace) -> PortraitAvatar:
        return PortraitAvatar.load(avatar_dir(opt.avatar_id, getattr(opt, "avatar_root", None)))

    @classmethod
    def warm_up(cls, opt: argparse.Namespace, model: None, avatar: PortraitAvatar) -> None:
        renderer = PortraitRenderer(avatar)
        renderer.render(np.full(FEATURE_DIM, 0.5, dtype=np.float32), 0.0)

    def __init__(self, opt: argparse.Namespace, model: None, avatar: PortraitAvatar, *args, **kwargs) -> None:
        super().__init__(opt, model, avatar, *args, **kwargs)
        self._renderer = PortraitRenderer(avatar, seed=self.sessionid % 2**32)
        self._rest = np.zeros(FEATURE_DIM, dtype=np.float32)

    def make_asr(self) -> BaseASR:
        return PortraitASR(left=self.opt.l, right=self.opt.r)

    def infer(self, feats: np.ndarray, indices: Sequence[int]) -> Sequence[np.ndarray]:
        return list(feats)  # the features drive the warp directly

    def paste_back(self, pred: np.ndarray, index: int) -> np.ndarray:
        return self._renderer.render(pred, index / FPS)

    def idle_frame(self, index: int) -> np.ndarray:
        return self._renderer.render(self._rest, index / FPS)
