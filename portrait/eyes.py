"""Eye rig: blinks by sliding the upper eyelid down over the eye.

The skin between a line above the eye and the upper lid edge is stretched down to the closing
edge, so the lash line travels with it and meets the lower lid when the eye is shut. Columns
outside the eye corners map to themselves, so the edit has no seam.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from portrait.geometry import Box, LocalFrame, curve, frozen


@dataclass(frozen=True, repr=False)  # arrays make the default repr unreadable
class EyeRig:
    box: Box
    base_x: np.ndarray
    base_y: np.ndarray
    ey: np.ndarray  # unit vector "down" across the eye
    b: np.ndarray  # per-pixel coordinate across the eye
    top: np.ndarray  # per-pixel (by column) start of the stretched lid skin
    upper: np.ndarray  # upper lid edge
    lower: np.ndarray  # lower lid edge

    @staticmethod
    def build(lm: np.ndarray, upper_idx: list[int], lower_idx: list[int], size: tuple[int, int]) -> EyeRig:
        h, w = size
        up_pts, low_pts = lm[upper_idx], lm[lower_idx]
        ends = up_pts[[0, -1]]
        left, right = (ends[0], ends[1]) if ends[0, 0] <= ends[1, 0] else (ends[1], ends[0])
        frame = LocalFrame.from_corners(left, right)
        ua, ub = curve(frame, up_pts)
        la, lb = curve(frame, low_pts)
        eye_w = float(np.linalg.norm(right - left))
        # The lid skin that unfolds: from about half an eye width above the lid edge.
        lift = 0.5 * eye_w
        half = eye_w / 2.0
        corners = frame.to_image(
            np.array([-half - 3, half + 3, -half - 3, half + 3]),
            np.array([ub.min() - lift - 2, ub.min() - lift - 2, lb.max() + 3, lb.max() + 3]),
        )
        box = Box.around(corners, w, h)
        X, Y = box.grid()
        a, b = frame.to_local(X, Y)
        upper = np.interp(a, ua, ub)
        lower = np.maximum(np.interp(a, la, lb), upper)
        return EyeRig(
            box=box,
            base_x=frozen(X),
            base_y=frozen(Y),
            ey=frame.ey.astype(np.float32),
            b=frozen(b),
            top=frozen(upper - lift),
            upper=frozen(upper),
            lower=frozen(lower),
        )

    def apply(self, src: np.ndarray, dst: np.ndarray, closure: float) -> None:
        """Close the eye by `closure` (0 open .. 1 shut), reading `src` and writing `dst`."""
        edge = self.upper + closure * (self.lower - self.upper)
        span = np.maximum(edge - self.top, 1e-3)
        lid = (self.b >= self.top) & (self.b < edge)
        src_b = np.where(lid, self.top + (self.b - self.top) * (self.upper - self.top) / span, self.b)
        shift = src_b - self.b
        map_x = self.base_x + shift * self.ey[0]
        map_y = self.base_y + shift * self.ey[1]
        dst[self.box.slices] = cv2.remap(src, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
