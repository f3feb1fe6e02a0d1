"""Mouth rig: a landmark-guided warp that opens, spreads and rounds the lips of a still photo.

Everything that depends only on the photo is computed once in `MouthRig.build`; per frame the
warp is a linear mix of precomputed displacement bases (a handful of scaleAdds), one remap of a
small ROI, and a soft-edged mouth interior with a teeth hint drawn into the opening.

Displacements are defined in output coordinates and the warp samples `source = p - D(p)`, so the
opening in the output is known in closed form and the interior can be drawn exactly into it.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from portrait import landmarks as L
from portrait.geometry import Box, LocalFrame, curve, frozen, smoothstep

GAP = 0.6  # lip gap at full opening, in mouth half-widths (about 30% of the mouth width)
UPPER_SHARE = 0.15  # the upper lip rises by this share of the lower lip's drop
SPREAD = 0.12  # corners move out by this share of the half-width for "ee" (width +1)
ROUND = 0.16  # ... and in by this share for "oo" (width -1)
NARROW_WHEN_OPEN = 0.25  # an open jaw pulls the corners in a little
TEETH = 0.15  # visible length of the upper teeth, in mouth widths
EDGE_PX = 1.8  # softness of the opening's outline


def _lip_profile(a: np.ndarray, half: float) -> np.ndarray:
    """How far each column of the lips opens: 1 in the middle, 0 at the corners."""
    return np.clip(1.0 - (a / half) ** 2, 0.0, 1.0) ** 0.6


@dataclass(frozen=True, repr=False)  # arrays make the default repr unreadable
class MouthRig:
    box: Box  # warp ROI
    base_x: np.ndarray
    base_y: np.ndarray
    # Forward displacement bases, already multiplied by the axis direction (x and y parts).
    open_x: np.ndarray  # per unit opening at width 0
    open_y: np.ndarray
    dopen: dict  # {+1/-1: (x, y)} change of the opening basis per unit |width| of that sign
    width: dict  # {+1/-1: (x, y)} corner displacement per unit width, for that sign of width
    # Mouth-interior overlay, on a smaller box inside `box`.
    inner: Box
    d_split: np.ndarray  # distance below the lips' parting line, px
    lat0: np.ndarray
    dlat: dict  # {+1/-1: change of the lateral profile per unit |width|}
    corner_shade: np.ndarray
    tooth_shade: np.ndarray  # darker towards the corners, with faint gaps between teeth
    teeth_len: np.ndarray
    gap_px: float
    dark: np.ndarray  # BGR float32 colours
    tongue: np.ndarray
    teeth: np.ndarray

    @staticmethod
    def build(image: np.ndarray, lm: np.ndarray) -> MouthRig:
        h, w = image.shape[:2]
        frame = LocalFrame.from_corners(lm[L.LIP_CORNER_LEFT], lm[L.LIP_CORNER_RIGHT])
        half = float(np.linalg.norm(lm[L.LIP_CORNER_RIGHT] - lm[L.LIP_CORNER_LEFT])) / 2.0
        gap_px = GAP * half
        # The lower lip's inner edge is the parting line: everything below it moves with the
        # jaw. For a photo that already shows teeth, the teeth stay above it, with the upper jaw.
        split_a, split_b = curve(frame, lm[L.LOWER_INNER])
        up_a, up_b = curve(frame, lm[L.UPPER_INNER])
        # The mesh puts the lower inner lip line a few pixels inside the lip; on a photo that
        # shows teeth, pull the line up to the teeth's lower edge so no strip of lower lip
        # stays behind with the upper jaw.
        lift = _teeth_edge_lift(image, frame, (split_a, split_b), (up_a, up_b), half)
        split_b = split_b - lift * _lip_profile(split_a, half)
        split0 = float(np.interp(0.0, split_a, split_b))
        _, chin_b = frame.to_local(*lm[L.CHIN])
        _, nose_b = frame.to_local(*lm[L.SUBNASALE])
        _, lip_top_b = frame.to_local(*lm[L.UPPER_LIP_TOP])
        jaw_a = np.array(frame.to_local(*lm[[L.JAW_LEFT, L.JAW_RIGHT]].T)[0])
        jaw_half = max(float(np.abs(jaw_a).mean()), 1.5 * half)
        chin_d = max(float(chin_b) - split0, 0.8 * half)
        nose_d = max(split0 - float(nose_b), 0.4 * half)
        upper_hold = min(0.8 * (split0 - float(lip_top_b)), 0.5 * nose_d)
        fall = max(1.8 * gap_px, 0.7 * chin_d)

        # ROI in the mouth frame, mapped to an image box.
        a_ext = 1.25 * jaw_half
        b_lo, b_hi = split0 - 1.1 * nose_d, split0 + chin_d + fall + 2.0
        corners = frame.to_image(np.array([-a_ext, a_ext, -a_ext, a_ext]), np.array([b_lo, b_lo, b_hi, b_hi]))
        box = Box.around(corners, w, h)
        X, Y = box.grid()
        a, b = frame.to_local(X, Y)
        d = b - np.interp(a, split_a, split_b)
        taper = _border_taper(box, w, h, margin=8.0)

        def vertical(half_w: float) -> np.ndarray:
            """Forward vertical displacement per unit opening (px) for a given mouth half-width."""
            lip = _lip_profile(a, half_w)
            jaw = 0.5 * (1.0 + np.cos(np.pi * np.clip(a / (1.2 * jaw_half), -1.0, 1.0)))
            # Near the lips the profile is exactly the lips' opening so that the drawn interior
            # meets the lower lip; deeper down the whole jaw (chin) moves, fading into the neck.
            t = smoothstep(gap_px, gap_px + 0.6 * chin_d, d)
            lower = ((1.0 - t) * lip + t * jaw) * (1.0 - smoothstep(chin_d, chin_d + fall, d))
            upper = -UPPER_SHARE * lip * (1.0 - smoothstep(upper_hold, nose_d, -d))
            return gap_px * np.where(d >= 0.0, lower, upper) * taper

        def along(field: np.ndarray, axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return frozen(field * axis[0]), frozen(field * axis[1])

        v0 = vertical(half)
        dopen = {s: along(vertical(half * (1 + s * k)) - v0, frame.ey) for s, k in ((1, SPREAD), (-1, ROUND))}
        # Corners slide along the mouth axis; the bump keeps the cheeks beyond them nearly still.
        g = (a / half) * np.exp(-0.5 * ((a / (0.9 * half)) ** 2 - 1.0 / 0.81))
        vert = np.exp(-0.5 * (d / (0.7 * half)) ** 2)
        width = {s: along(k * half * g * vert * taper, frame.ex) for s, k in ((1, SPREAD), (-1, ROUND))}
        open_x, open_y = along(v0, frame.ey)

        # Overlay box: where the opening can appear at most.
        ia = 1.05 * half * (1 + SPREAD)
        ib_lo, ib_hi = split0 - UPPER_SHARE * gap_px - 3.0, split0 + gap_px + 3.0
        icorners = frame.to_image(np.array([-ia, ia, -ia, ia]), np.array([ib_lo, ib_lo, ib_hi, ib_hi]))
        inner = Box.around(icorners, w, h)
        iX, iY = inner.grid()
        ia_, ib_ = frame.to_local(iX, iY)
        lat0 = _lip_profile(ia_, half)
        dlat = {s: frozen(_lip_profile(ia_, half * (1 + s * k)) - lat0) for s, k in ((1, SPREAD), (-1, ROUND))}
        rest_gap = np.maximum(np.interp(ia_, split_a, split_b) - np.interp(ia_, up_a, up_b), 0.0)
        # A photo that already shows its teeth keeps them (above the parting line); only a closed
        # mouth gets a drawn hint of upper teeth.
        central = np.abs(ia_) < 0.5 * half
        shows_teeth = bool(central.any()) and float(np.median(rest_gap[central])) > 0.08 * half
        teeth_len = np.full_like(ia_, 0.0 if shows_teeth else TEETH * 2.0 * half)
        dark, tongue, teeth = _colours(image, lm, shows_teeth)
        corner = np.clip(1.0 - (ia_ / half) ** 2, 0.0, 1.0) ** 0.35
        return MouthRig(
            box=box,
            base_x=frozen(X),
            base_y=frozen(Y),
            open_x=open_x,
            open_y=open_y,
            dopen=dopen,
            width=width,
            inner=inner,
            d_split=frozen(ib_ - np.interp(ia_, split_a, split_b)),
            lat0=frozen(lat0),
            dlat=dlat,
            corner_shade=frozen(corner),
            tooth_shade=frozen((0.55 + 0.45 * corner) * _tooth_gaps(ia_, half)),
            teeth_len=frozen(teeth_len),
            gap_px=gap_px,
            dark=dark,
            tongue=tongue,
            teeth=teeth,
        )

    def apply(self, src: np.ndarray, dst: np.ndarray, opening: float, width: float, teeth: float,
              map_x: np.ndarray, map_y: np.ndarray) -> None:
        """Warp the mouth of `src` into `dst` (same size). map_x/map_y: scratch of box.shape."""
        w = float(np.clip(width - NARROW_WHEN_OPEN * opening, -1.0, 1.0))
        sign = 1 if w >= 0.0 else -1
        mag = abs(w)
        dx, dy = self.dopen[sign]
        wx, wy = self.width[sign]
        # source = p - D(p): subtract the weighted forward displacement bases from the grid.
        cv2.scaleAdd(self.open_x, -opening, self.base_x, map_x)
        cv2.scaleAdd(dx, -opening * mag, map_x, map_x)
        cv2.scaleAdd(wx, -w, map_x, map_x)
        cv2.scaleAdd(self.open_y, -opening, self.base_y, map_y)
        cv2.scaleAdd(dy, -opening * mag, map_y, map_y)
        cv2.scaleAdd(wy, -w, map_y, map_y)
        dst[self.box.slices] = cv2.remap(src, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        if opening > 0.0:
            self._draw_interior(dst, opening, sign, mag, teeth)

    def _draw_interior(self, dst: np.ndarray, opening: float, sign: int, mag: float, teeth: float) -> None:
        lat = self.lat0 + mag * self.dlat[sign]
        low = (opening * self.gap_px) * lat  # lower lip edge, below the parting line
        up = UPPER_SHARE * low  # upper lip edge, above it
        gap = low + up
        from_top = self.d_split + up  # distance below the upper lip's edge
        from_bottom = low - self.d_split  # distance above the lower lip's edge
        inside = np.clip(from_top / EDGE_PX + 0.5, 0.0, 1.0)
        inside *= np.clip(from_bottom / (1.6 * EDGE_PX) + 0.3, 0.0, 1.0)  # wet, softer lower rim
        alpha = inside * np.clip(gap / 1.5, 0.0, 1.0)
        if not alpha.any():
            return
        depth = np.clip(from_top / np.maximum(gap, 1e-3), 0.0, 1.0)
        # Darkest under the upper teeth and in the corners; warmer towards the bottom, where a
        # wide opening shows the tongue.
        warm = smoothstep(0.1, 1.0, depth) * self.corner_shade
        warm *= 0.55 + 0.45 * min(1.0, 1.6 * opening)
        col = self.dark + (self.tongue - self.dark) * warm[..., None]
        band = np.minimum(self.teeth_len, 0.5 * gap)
        if band.max() > 0.5:
            # Opaque upper teeth with soft tips, shaded towards the corners and under the lip.
            upper_t = np.clip((band - from_top) / 1.5 + 0.5, 0.0, 1.0) * (band > 0.5)
            lit = (0.8 + 0.2 * smoothstep(0.0, 2.5, from_top)) * self.tooth_shade
            upper_t *= 0.75 + 0.25 * teeth
            col += (self.teeth * lit[..., None] - col) * upper_t[..., None]
        # Lower teeth peek over the lower lip for fricatives and spread vowels.
        show = 0.45 * max(teeth, 0.4 * max(mag * sign, 0.0)) * smoothstep(0.1, 0.35, opening)
        if show > 0.0:
            lower_t = np.clip(1.0 - from_bottom / (0.15 * gap + 1.0), 0.0, 1.0) * self.corner_shade**2 * show
            col += (self.teeth * 0.8 - col) * lower_t[..., None]
        roi = dst[self.inner.slices]
        a3 = alpha[..., None]
        roi[:] = (roi * (1.0 - a3) + col * a3 + 0.5).astype(np.uint8)


def _tooth_gaps(a: np.ndarray, half: float) -> np.ndarray:
    """Faint dark lines between teeth: central incisors meet at a = 0, teeth get narrower outwards."""
    pos = np.abs(a) / (0.24 * half)  # in central-incisor widths
    phase = np.sqrt(pos * (pos + 1.0))  # stretches out to the sides, so outer teeth look smaller
    dist = np.abs(phase - np.round(phase))
    return 1.0 - 0.12 * np.exp(-((dist / 0.1) ** 2))


def _teeth_edge_lift(
    image: np.ndarray, frame: LocalFrame, split: tuple[np.ndarray, np.ndarray],
    upper: tuple[np.ndarray, np.ndarray], half: float,
) -> float:
    """How far (px) the teeth's lower edge lies above the mesh's lower inner lip line (0: none)."""
    cols = np.linspace(-0.5 * half, 0.5 * half, 15)
    top = np.interp(cols, *upper)
    bottom = np.interp(cols, *split) + 2.0
    if float(np.median(bottom - top)) < 5.0:  # closed mouth: no teeth to find
        return 0.0
    steps = np.linspace(0.0, 1.0, 40)
    b = top[:, None] + (bottom - top)[:, None] * steps[None, :]
    pts = frame.to_image(np.broadcast_to(cols[:, None], b.shape), b).astype(np.float32)
    samples = cv2.remap(image, pts[..., 0], pts[..., 1], cv2.INTER_LINEAR).astype(np.float32)
    whiteness = samples.min(axis=2)  # teeth are bright in every channel, lips are not
    whiteness = cv2.GaussianBlur(whiteness, (1, 5), 0)
    drop = whiteness[:, :-4] - whiteness[:, 4:]  # fall over four samples, going down
    k = drop.argmax(axis=1)
    found = drop[np.arange(len(cols)), k] > 25.0
    if found.sum() < len(cols) // 2:
        return 0.0
    edge_b = b[np.arange(len(cols)), k + 2]
    return float(max(np.median((bottom - 2.0 - edge_b)[found]), 0.0))


def _border_taper(box: Box, width: int, height: int, margin: float) -> np.ndarray:
    """1 inside the box, 0 on the edges that lie inside the image, so the warp has no seam."""
    hh, ww = box.shape
    ys = np.arange(hh, dtype=np.float32)[:, None]
    xs = np.arange(ww, dtype=np.float32)[None, :]
    t = np.ones((hh, ww), np.float32)
    if box.y0 > 0:
        t *= smoothstep(0.0, margin, ys)
    if box.y1 < height:
        t *= smoothstep(0.0, margin, hh - 1 - ys)
    if box.x0 > 0:
        t *= smoothstep(0.0, margin, xs)
    if box.x1 < width:
        t *= smoothstep(0.0, margin, ww - 1 - xs)
    return t


def _colours(image: np.ndarray, lm: np.ndarray, shows_teeth: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mouth interior, tongue and teeth colours matched to this photo's lips and lighting."""
    h, w = image.shape[:2]
    outer = np.concatenate([lm[L.UPPER_OUTER], lm[L.LOWER_OUTER][::-1]]).astype(np.int32)
    inner = np.concatenate([lm[L.UPPER_INNER], lm[L.LOWER_INNER][::-1]]).astype(np.int32)
    lips = np.zeros((h, w), np.uint8)
    cv2.fillPoly(lips, [outer], 255)
    gap = np.zeros((h, w), np.uint8)
    cv2.fillPoly(gap, [inner], 255)
    lips[gap > 0] = 0
    lip = np.median(image[lips > 0], axis=0) if (lips > 0).sum() > 10 else np.float32([90, 90, 160])
    lip = lip.astype(np.float32)
    luma = float(lip @ np.float32([0.114, 0.587, 0.299]))
    teeth = np.float32([212, 226, 236]) * np.clip((luma + 60.0) / 190.0, 0.55, 1.05)
    shown = image[gap > 0].astype(np.float32)
    if shows_teeth and len(shown) > 30:  # reuse the real teeth's colour
        y = shown @ np.float32([0.114, 0.587, 0.299])
        bright = shown[y >= np.percentile(y, 60)]
        teeth = bright.mean(axis=0) * 0.92
    dark = lip * 0.12 + np.float32([4, 4, 8])
    tongue = lip * 0.5 + np.float32([0, 0, 20])
    return frozen(dark), frozen(tongue), frozen(teeth)
