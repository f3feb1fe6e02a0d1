"""Face boxes for Wav2Lip avatars, from MediaPipe models shipped inside the pip wheel.

The box is the extent of the face mesh: forehead to chin, cheek to cheek, the region Wav2Lip's
face crops cover. MediaPipe's face mesh finds its face with a short-range detector (a face
filling a good part of the picture); when it misses, the full-range detector locates a smaller
face and the mesh runs again on an enlarged crop around it.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType

import cv2
import numpy as np

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels

CROP_GROW = 2.0  # side of the crop around a small face, in detector box sides (mesh wants context)
MIN_CONFIDENCE = 0.5


class FaceDetector:
    """Reusable detector: one MediaPipe graph for many frames. Not thread-safe."""

    def __init__(self) -> None:
        import mediapipe as mp  # imported lazily: only avatar creation needs it, not serving

        # static_image_mode: every frame detected on its own, so one bad frame cannot drag
        # a tracked face along the following ones (boxes are smoothed afterwards anyway).
        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=1, min_detection_confidence=MIN_CONFIDENCE
        )
        self._finder = mp.solutions.face_detection.FaceDetection(
            model_selection=1, min_detection_confidence=MIN_CONFIDENCE
        )

    def detect(self, frame_bgr: np.ndarray) -> Box | None:
        """The face box (x1, y1, x2, y2) of the most prominent face, or None."""
        rgb = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)
        box = self._mesh_box(rgb)
        if box is not None:
            return box
        found = self._finder.process(rgb).detections
        if not found:
            return None
        h, w = rgb.shape[:2]
        rel = max(found, key=lambda d: d.score[0]).location_data.relative_bounding_box
        side = max(rel.width * w, rel.height * h) * CROP_GROW
        cx, cy = (rel.xmin + rel.width / 2) * w, (rel.ymin + rel.height / 2) * h
        x0, y0 = max(0, round(cx - side / 2)), max(0, round(cy - side / 2))
        x1, y1 = min(w, round(cx + side / 2)), min(h, round(cy + side / 2))
        if x1 - x0 < 8 or y1 - y0 < 8:
            return None
        box = self._mesh_box(np.ascontiguousarray(rgb[y0:y1, x0:x1]))
        if box is None:
            return None
        return box[0] + x0, box[1] + y0, box[2] + x0, box[3] + y0

    def _mesh_box(self, rgb: np.ndarray) -> Box | None:
        res = self._mesh.process(rgb)
        if not res.multi_face_landmarks:
            return None
        h, w = rgb.shape[:2]
        pts = np.array([(p.x * w, p.y * h) for p in res.multi_face_landmarks[0].landmark], dtype=np.float64)
        x1, y1 = pts.min(axis=0)
        x2, y2 = pts.max(axis=0)
        return float(x1), float(y1), float(x2), float(y2)

    def close(self) -> None:
        self._mesh.close()
        self._finder.close()

    def __enter__(self) -> FaceDetector:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def pad_box(box: Box, pads: Sequence[int]) -> Box:
    """Grow a box by pads (top, bottom, left, right) pixels, upstream's --pads meaning."""
    top, bottom, left, right = pads
    x1, y1, x2, y2 = box
    return x1 - left, y1 - top, x2 + right, y2 + bottom


def smooth_boxes(boxes: np.ndarray, window: int = 5) -> np.ndarray:
    """Centred moving average of boxes [N, 4] over `window` frames (shorter at the ends).

    Per-frame detections jitter by a few pixels; pasting the mouth with jittering boxes makes
    the face shimmer, so boxes are averaged over time.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    if window <= 1 or len(boxes) <= 1:
        return boxes.copy()
    half = window // 2
    csum = np.vstack([np.zeros((1, boxes.shape[1])), np.cumsum(boxes, axis=0)])
    idx = np.arange(len(boxes))
    lo, hi = np.maximum(idx - half, 0), np.minimum(idx + half + 1, len(boxes))
    return (csum[hi] - csum[lo]) / (hi - lo)[:, None]


def clamp_box(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """Integer (y1, y2, x1, x2) inside a width x height frame, at least one pixel each way."""
    x1, y1, x2, y2 = box
    x1 = int(min(max(round(x1), 0), width - 1))
    y1 = int(min(max(round(y1), 0), height - 1))
    x2 = int(min(max(round(x2), x1 + 1), width))
    y2 = int(min(max(round(y2), y1 + 1), height))
    return y1, y2, x1, x2
