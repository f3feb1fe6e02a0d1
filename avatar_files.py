"""Reading users' avatar folders: numbered frames, pickled boxes, with errors that name the
file at fault. Shared by every model family whose avatars upstream writes."""

from __future__ import annotations

import io
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_PICKLE_BYTES = 64 << 20  # a box list of a million frames is 40 MB


def numbered_images(folder: Path) -> list[Path]:
    """00000000.png, 00000001.png ... in numeric order."""
    if not folder.is_dir():
        raise FileNotFoundError(f"avatar folder missing: {folder}")
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.stem.isdigit()]
    if not files:
        raise ValueError(f"no numbered images (00000000.png ...) in {folder}")
    return sorted(files, key=lambda p: int(p.stem))


def read_images(paths: list[Path], what: str, flags: int = cv2.IMREAD_COLOR) -> list[np.ndarray]:
    """Every image, read-only, with a progress bar; ValueError naming the first unreadable one."""

    def read(path: Path) -> np.ndarray:
        image = cv2.imread(str(path), flags)
        if image is None:
            raise ValueError(f"cannot read image {path}")
        image.setflags(write=False)
        return image

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(tqdm(pool.map(read, paths), total=len(paths), desc=f"loading {what}", unit="img", leave=False))


class _DataUnpickler(pickle.Unpickler):
    """Plain data only: lists, tuples, numbers, and the numpy scalars upstream's pickles hold
    (coordinates computed with numpy). No other class can be named, so a pickle cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED or (module == "numpy" and name.endswith("DType")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not plain data")


def load_pickle(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"avatar file missing: {path}")
    if path.stat().st_size > MAX_PICKLE_BYTES:
        raise ValueError(f"{path} is larger than {MAX_PICKLE_BYTES >> 20} MB; is it a box list?")
    try:
        return _DataUnpickler(io.BytesIO(path.read_bytes())).load()
    except Exception as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None


def load_boxes(path: Path) -> list[tuple[int, int, int, int]]:
    """A pickled list of 4-number boxes (lists, tuples, numpy scalars or arrays) as int tuples."""
    boxes = load_pickle(path)
    try:
        return [tuple(int(round(float(v))) for v in box) for box in boxes]  # type: ignore[misc]
    except (TypeError, ValueError):
        raise ValueError(f"{path} is not a list of boxes of four numbers") from None


def check_counts(folder: Path, **counts: int) -> None:
    """ValueError naming every list when the per-frame lists of an avatar differ in length."""
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{n} {name}" for name, n in counts.items())
        raise ValueError(f"avatar {folder} is inconsistent: {listed}")


def paste_clipped(frame: np.ndarray, image: np.ndarray, x: int, y: int) -> None:
    """Write `image` into `frame` (in place) with its top-left corner at (x, y), keeping only
    the part inside the frame: a box that leaves the frame still shows what is inside it."""
    h, w = image.shape[:2]
    fy1, fx1 = max(y, 0), max(x, 0)
    fy2, fx2 = min(y + h, frame.shape[0]), min(x + w, frame.shape[1])
    if fy2 > fy1 and fx2 > fx1:
        frame[fy1:fy2, fx1:fx2] = image[fy1 - y : fy2 - y, fx1 - x : fx2 - x]
