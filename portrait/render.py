"""Portrait renderer: one shared, read-only avatar; one light renderer per session.

A frame is: copy of the photo → mouth warp + interior (only while speaking) → eyelids (only
while blinking) → one whole-frame remap for head sway and breathing, which also produces the
new output array. All heavy geometry is precomputed in `PortraitAvatar.load`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from portrait import landmarks as L
from portrait.eyes import EyeRig
from portrait.features import FEATURE_DIM
from portrait.motion import NOD_PX, BlinkSchedule, HeadField, IdleMotion
from portrait.mouth import MouthRig

FRAME_FILE = "full_imgs/00000000.png"
LANDMARKS_FILE = "landmarks.npy"
META_FILE = "avatar.json"
NOD_SMOOTHING = 0.15  # per-frame weight of the opening in the nod's running average


@dataclass(frozen=True)
class PortraitAvatar:
    """Everything derived from the avatar's photo; immutable so sessions can share it."""

    image: np.ndarray  # HxWx3 uint8 BGR, read-only
    landmarks: np.ndarray  # [478, 2] float32, read-only
    mouth: MouthRig
    eyes: tuple[EyeRig, EyeRig]
    head: HeadField

    def __repr__(self) -> str:
        w, h = self.size
        return f"PortraitAvatar({w}x{h})"

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the frames."""
        return self.image.shape[1], self.image.shape[0]

    @staticmethod
    def load(avatar_dir: Path) -> PortraitAvatar:
        """Load an avatar made by `python -m portrait.make_avatar` and precompute its rigs."""
        avatar_dir = Path(avatar_dir)
        frame_path, lm_path = avatar_dir / FRAME_FILE, avatar_dir / LANDMARKS_FILE
        for p in (frame_path, lm_path):
            if not p.is_file():
                raise FileNotFoundError(f"portrait avatar file missing: {p}")
        meta_path = avatar_dir / META_FILE
        if meta_path.is_file():
            model = json.loads(meta_path.read_text()).get("model", "portrait")
            if model != "portrait":
                raise ValueError(f"{meta_path} is for model {model!r}, not 'portrait'")
        image = cv2.imread(str(frame_path), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"cannot read image {frame_path}")
        lm = np.load(lm_path).astype(np.float32)
        h, w = image.shape[:2]
        if lm.shape != (L.N_LANDMARKS, 2):
            raise ValueError(f"{lm_path} must hold [{L.N_LANDMARKS}, 2] points, got {list(lm.shape)}")
        inside = (lm >= -0.05 * np.float32([w, h])) & (lm <= 1.05 * np.float32([w, h]))
        if not (np.isfinite(lm).all() and inside.all()):
            raise ValueError(f"{lm_path} has points outside the {w}x{h} frame")
        image.flags.writeable = False
        lm.flags.writeable = False
        return PortraitAvatar(
            image=image,
            landmarks=lm,
            mouth=MouthRig.build(image, lm),
            eyes=(
                EyeRig.build(lm, L.EYE_LEFT_UPPER, L.EYE_LEFT_LOWER, (h, w)),
                EyeRig.build(lm, L.EYE_RIGHT_UPPER, L.EYE_RIGHT_LOWER, (h, w)),
            ),
            head=HeadField.build(lm, (h, w)),
        )


class PortraitRenderer:
    """Per-session renderer: own blink schedule, head-sway phases and scratch buffers.

    Use each renderer from one thread at a time; the avatar it renders may be shared freely.
    """

    def __init__(self, avatar: PortraitAvatar, seed: int = 0) -> None:
        self.avatar = avatar
        rng = np.random.default_rng(seed)
        self._blinks = BlinkSchedule(rng)
        self._idle = IdleMotion(rng, avatar.head.scale)
        self._work = avatar.image.copy()  # this session's editable copy of the photo
        self._work_dirty = False
        mh, mw = avatar.mouth.box.shape
        self._mouth_map = (np.empty((mh, mw), np.float32), np.empty((mh, mw), np.float32))
        h, w = avatar.image.shape[:2]
        self._head_map = (np.empty((h, w), np.float32), np.empty((h, w), np.float32))
        self._nod = 0.0

    def render(self, features: np.ndarray, t: float) -> np.ndarray:
        """One HxWx3 uint8 BGR frame (a new array) for mouth `features` [F] at media time t (s)."""
        f = np.nan_to_num(np.asarray(features, dtype=np.float32).reshape(-1))  # a NaN must not blank the face
        if f.shape[0] < FEATURE_DIM:
            raise ValueError(f"features must have {FEATURE_DIM} values, got {f.shape[0]}")
        opening = float(np.clip(f[0], 0.0, 1.0))
        width = float(np.clip(f[1], -1.0, 1.0))
        teeth = float(np.clip(f[2], 0.0, 1.0))
        av = self.avatar
        src = av.image
        if opening > 0.0 or width != 0.0:
            self._restore()
            av.mouth.apply(av.image, self._work, opening, width, teeth, *self._mouth_map)
            self._work_dirty = True
            src = self._work
        closure = self._blinks.closure(t)
        if closure > 0.0:
            if src is av.image:
                self._restore()
            for eye in av.eyes:
                eye.apply(self._work, self._work, closure)
            self._work_dirty = True
            src = self._work
        self._nod += NOD_SMOOTHING * (opening - self._nod)
        roll, dx, dy, breath = self._idle.at(t)
        dy += NOD_PX * av.head.scale * self._nod
        av.head.maps(roll, dx, dy, breath, *self._head_map)
        return cv2.remap(src, *self._head_map, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    def _restore(self) -> None:
        """Undo the previous frame's edits so each frame starts from the photo."""
        if self._work_dirty:
            np.copyto(self._work, self.avatar.image)
            self._work_dirty = False
