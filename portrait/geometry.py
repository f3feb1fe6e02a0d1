"""Small geometric helpers shared by the mouth, eye and head rigs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    """Hermite ramp from 0 at e0 to 1 at e1 (e0 > e1 gives the falling ramp)."""
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def frozen(a: np.ndarray) -> np.ndarray:
    """float32, contiguous and read-only: rig data is shared by every session's thread."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    a.flags.writeable = False
    return a


@dataclass(frozen=True)
class Box:
    """Axis-aligned pixel box [x0, x1) x [y0, y1)."""

    x0: int
    y0: int
    x1: int
    y1: int

    @staticmethod
    def around(points: np.ndarray, width: int, height: int) -> Box:
        lo = np.floor(points.min(axis=0)).astype(int)
        hi = np.ceil(points.max(axis=0)).astype(int) + 1
        return Box(
            max(int(lo[0]), 0), max(int(lo[1]), 0), min(int(hi[0]), width), min(int(hi[1]), height)
        )

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Absolute pixel coordinates (X, Y) of every pixel in the box, float32."""
        ys, xs = np.mgrid[self.y0 : self.y1, self.x0 : self.x1]
        return xs.astype(np.float32), ys.astype(np.float32)


@dataclass(frozen=True)
class LocalFrame:
    """Coordinates along a feature's axis (a: left→right corner) and across it (b: downwards).

    Working in this frame keeps the rigs correct for faces that are slightly rolled.
    """

    origin: np.ndarray
    ex: np.ndarray
    ey: np.ndarray

    @staticmethod
    def from_corners(left: np.ndarray, right: np.ndarray) -> LocalFrame:
        axis = np.asarray(right, np.float64) - np.asarray(left, np.float64)
        ex = axis / max(float(np.linalg.norm(axis)), 1e-6)
        ey = np.array([-ex[1], ex[0]])  # image y points down, so this is "below" the axis
        return LocalFrame((np.asarray(left, np.float64) + right) / 2.0, ex, ey)

    def to_local(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dx, dy = x - self.origin[0], y - self.origin[1]
        return dx * self.ex[0] + dy * self.ex[1], dx * self.ey[0] + dy * self.ey[1]

    def to_image(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = np.asarray(a)[..., None], np.asarray(b)[..., None]
        return self.origin + a * self.ex + b * self.ey


def curve(frame: LocalFrame, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A landmark contour as (a, b) samples sorted by a, for np.interp."""
    a, b = frame.to_local(points[:, 0], points[:, 1])
    order = np.argsort(a)
    return a[order], b[order]
