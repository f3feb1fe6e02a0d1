"""Avatar and clip folders for the tests: copies of the embedded portrait tinted so that a
viewer can tell them apart at a glance, and plain colour clips."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
PORTRAIT = ROOT / "data" / "avatars" / "portrait_astronaut"
FRAME = "full_imgs/00000000.png"


def tinted_portrait(root: Path, name: str, bgr_gain: tuple[float, float, float]) -> Path:
    """The astronaut portrait with its colours scaled: same face geometry (its landmarks
    still fit), another look."""
    folder = root / name
    shutil.copytree(PORTRAIT, folder)
    image = cv2.imread(str(folder / FRAME)).astype(np.float32)
    image *= np.array(bgr_gain, dtype=np.float32)
    cv2.imwrite(str(folder / FRAME), np.clip(image, 0, 255).astype(np.uint8))
    return folder


def colour_clip(folder: Path, bgr: tuple[int, int, int], frames: int, size: tuple[int, int] = (96, 96)) -> Path:
    """A plain clip: `frames` numbered images of one colour."""
    folder.mkdir(parents=True)
    image = np.zeros((size[1], size[0], 3), np.uint8)
    image[:] = bgr
    for i in range(frames):
        cv2.imwrite(str(folder / f"{i:08d}.png"), image)
    return folder


def tone_wav(path: Path, seconds: float, hz: float = 220.0) -> Path:
    """A loud voiced buzz (a clip's sound)."""
    t = np.arange(int(seconds * 16000)) / 16000
    buzz = sum(np.sin(2 * np.pi * hz * h * t) / h for h in range(1, 8))
    sf.write(str(path), (0.3 * buzz / np.abs(buzz).max()).astype(np.float32), 16000)
    return path


def mean_bgr(image: np.ndarray) -> np.ndarray:
    return image.reshape(-1, 3).mean(axis=0)


def closest(image: np.ndarray, looks: dict[str, np.ndarray]) -> str:
    """The name of the reference picture `image` looks most like (mean colour distance)."""
    colour = mean_bgr(image)
    return min(looks, key=lambda name: float(np.linalg.norm(colour - mean_bgr(looks[name]))))
