"""Idle life: a soft-weighted head sway with breathing, and a per-session blink schedule.

The head moves (a small roll about the neck plus a pixel or two of drift) with a weight that is
1 on the head and fades to 0 around it, so the background and frame edges stay still. For such
small angles the rotation is linear in the angle, so the per-frame warp is a mix of precomputed
bases followed by one whole-frame remap.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import cv2
import numpy as np

from portrait import landmarks as L
from portrait.geometry import frozen, smoothstep

SWAY_DEG = 0.8  # peak head roll
DRIFT_PX = (1.6, 0.9)  # peak head drift in x and y at 512 px; scales with the face size
BREATH_PX = 0.6  # shoulders rise and fall
BREATH_HZ = 0.25  # 15 breaths a minute
NOD_PX = 1.5  # extra downward bob while the mouth is open (speech emphasis)
BLINK_GAP_S = (2.0, 6.0)
BLINK_S = 0.16
DOUBLE_BLINK = 0.12  # share of blinks that come as a quick pair


@dataclass(frozen=True, repr=False)  # arrays make the default repr unreadable
class HeadField:
    base_x: np.ndarray
    base_y: np.ndarray
    weight: np.ndarray  # 1 on the head, fading to 0 around it
    rot_x: np.ndarray  # map change per radian of roll (x part)
    rot_y: np.ndarray
    body: np.ndarray  # breathing weight: torso below the chin
    scale: float  # face size relative to a 512 px frame with a half-height face

    @staticmethod
    def build(lm: np.ndarray, size: tuple[int, int]) -> HeadField:
        h, w = size
        top, chin = lm[L.FOREHEAD_TOP].astype(np.float64), lm[L.CHIN].astype(np.float64)
        face_h = float(np.linalg.norm(chin - top))
        face_w = float(np.linalg.norm(lm[L.CHEEK_RIGHT] - lm[L.CHEEK_LEFT]))
        center = (top + chin) / 2.0 - np.array([0.0, 0.1 * face_h])  # include the hair
        rx, ry = 0.62 * face_w, 0.62 * face_h
        pivot = chin + np.array([0.0, 0.25 * face_h])  # roughly the base of the neck
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        r = np.sqrt(((xs - center[0]) / rx) ** 2 + ((ys - center[1]) / ry) ** 2)
        weight = 1.0 - smoothstep(1.0, 1.55, r)
        qx, qy = xs - pivot[0], ys - pivot[1]
        # Forward displacement of a roll by theta: (-theta*qy, theta*qx); the map subtracts it.
        body = smoothstep(chin[1], chin[1] + 0.5 * face_h, ys)
        return HeadField(
            base_x=frozen(xs),
            base_y=frozen(ys),
            weight=frozen(weight),
            rot_x=frozen(weight * qy),
            rot_y=frozen(-weight * qx),
            body=frozen(body),
            scale=face_h / 256.0,
        )

    def maps(self, roll: float, dx: float, dy: float, breath: float,
             map_x: np.ndarray, map_y: np.ndarray) -> None:
        """Fill map_x/map_y (frame-sized scratch) for a head roll (rad), drift and breath (px)."""
        cv2.scaleAdd(self.rot_x, roll, self.base_x, map_x)
        cv2.scaleAdd(self.weight, -dx, map_x, map_x)
        cv2.scaleAdd(self.rot_y, roll, self.base_y, map_y)
        cv2.scaleAdd(self.weight, -dy, map_y, map_y)
        cv2.scaleAdd(self.body, -breath, map_y, map_y)


class IdleMotion:
    """Smooth, never-repeating head sway for one session (its own phases)."""

    def __init__(self, rng: np.random.Generator, scale: float) -> None:
        self._phase = rng.uniform(0.0, 2.0 * math.pi, size=7)
        self._scale = scale

    def at(self, t: float) -> tuple[float, float, float, float]:
        """(roll rad, dx px, dy px, breath px) at media time t; incommensurate sines."""
        p = self._phase

        def wave(hz: float, phase: float) -> float:
            return math.sin(2.0 * math.pi * hz * t + phase)

        roll = math.radians(SWAY_DEG) * (0.6 * wave(0.11, p[0]) + 0.4 * wave(0.29, p[1]))
        dx = DRIFT_PX[0] * (0.6 * wave(0.07, p[2]) + 0.4 * wave(0.19, p[3]))
        dy = DRIFT_PX[1] * (0.7 * wave(0.13, p[4]) + 0.3 * wave(0.31, p[5]))
        breath = BREATH_PX * wave(BREATH_HZ, p[6])
        k = self._scale
        return roll, dx * k, dy * k, breath * k


class BlinkSchedule:
    """Blink start times drawn lazily from a per-session RNG; closure(t) is a pure lookup."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._starts: list[float] = [float(rng.uniform(0.8, 3.0))]

    def closure(self, t: float) -> float:
        """0 = eyes open, 1 = shut, at media time t (seconds)."""
        while self._starts[-1] <= t:
            gap = BLINK_S + 0.12 if self._rng.random() < DOUBLE_BLINK else self._rng.uniform(*BLINK_GAP_S)
            self._starts.append(self._starts[-1] + float(gap))
        i = bisect.bisect_right(self._starts, t) - 1
        if i < 0:
            return 0.0
        tau = (t - self._starts[i]) / BLINK_S
        if tau >= 1.0:
            return 0.0
        # Lids fall fast, stay shut for a moment, and rise more slowly.
        if tau < 0.35:
            return float(smoothstep(0.0, 0.35, tau))
        if tau < 0.5:
            return 1.0
        return float(1.0 - smoothstep(0.5, 1.0, tau))
