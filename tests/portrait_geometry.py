"""Where the default avatar's mouth is, from the landmarks stored when it was made."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

AVATAR = Path(__file__).resolve().parent.parent / "data" / "avatars" / "portrait_astronaut"
# MediaPipe face-mesh indices of the outer lip contour.
LIP_OUTLINE = [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 185, 40, 39, 37, 0, 267, 269, 270, 409]


@lru_cache(maxsize=1)
def mouth_box(margin: int = 6) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) around the lips, extended down for the opening jaw."""
    points = np.load(AVATAR / "landmarks.npy")[LIP_OUTLINE]
    x1, y1 = points.min(axis=0)
    x2, y2 = points.max(axis=0)
    height = y2 - y1
    return int(x1 - margin), int(y1 - margin), int(x2 + margin), int(y2 + height + margin)


# The idle head sways a few pixels, so the client crops a margin around the mouth box and
# mouth_change() compares at the best alignment: sway cancels out, a moving jaw does not.
SWAY_PX = 4


def sway_box() -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = mouth_box()
    return x1 - SWAY_PX, y1 - SWAY_PX, x2 + SWAY_PX, y2 + SWAY_PX


def mouth_change(crop: np.ndarray, rest: np.ndarray) -> float:
    """Mean absolute difference of a mouth crop (with sway margin) from the rest pose's crop,
    at the shift that matches best."""
    inner = rest[SWAY_PX:-SWAY_PX, SWAY_PX:-SWAY_PX].astype(np.int16)
    h, w = inner.shape[:2]
    best = np.inf
    for dy in range(2 * SWAY_PX + 1):
        for dx in range(2 * SWAY_PX + 1):
            diff = np.abs(crop[dy : dy + h, dx : dx + w].astype(np.int16) - inner).mean()
            best = min(best, diff)
    return float(best)
