"""MediaPipe face-mesh landmark detection and the mesh indices the renderer relies on."""

from __future__ import annotations

import logging

import cv2
import numpy as np

log = logging.getLogger(__name__)

N_LANDMARKS = 478  # 468 mesh points + 10 iris points (refine_landmarks=True)

# Mesh indices (MediaPipe canonical face model). "Left"/"right" are as seen in the image.
LIP_CORNER_LEFT = 61
LIP_CORNER_RIGHT = 291
UPPER_LIP_TOP = 0
LOWER_LIP_BOTTOM = 17
UPPER_INNER = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308]
LOWER_INNER = [78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308]
UPPER_OUTER = [61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291]
LOWER_OUTER = [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291]
SUBNASALE = 2
CHIN = 152
FOREHEAD_TOP = 10
CHEEK_LEFT = 234
CHEEK_RIGHT = 454
JAW_LEFT = 58
JAW_RIGHT = 288

# Eyes: upper and lower lid contours, each running from one corner to the other.
EYE_LEFT_UPPER = [33, 246, 161, 160, 159, 158, 157, 173, 133]
EYE_LEFT_LOWER = [33, 7, 163, 144, 145, 153, 154, 155, 133]
EYE_RIGHT_UPPER = [263, 466, 388, 387, 386, 385, 384, 398, 362]
EYE_RIGHT_LOWER = [263, 249, 390, 373, 374, 380, 381, 382, 362]
BROW_LEFT_LOWER = [46, 53, 52, 65, 55]
BROW_RIGHT_LOWER = [276, 283, 282, 295, 285]

FACE_OVAL = [
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
    152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
]


def detect_landmarks(image_bgr: np.ndarray) -> np.ndarray | None:
    """Return float32 [478, 2] pixel landmarks of the most prominent face, or None.

    MediaPipe's own face detector is short-range (it wants a face filling a good part of the
    picture), so when it misses, OpenCV's Haar cascade finds the face box and the mesh is run
    again on a crop around it.
    """
    pts = _mesh(image_bgr)
    if pts is not None:
        return pts
    box = _haar_face(image_bgr)
    if box is None:
        return None
    x, y, w, h = box
    side = int(max(w, h) * 2.2)
    cx, cy = x + w / 2, y + h / 2
    x0, y0 = round(cx - side / 2), round(cy - side / 2)
    crop = crop_square(image_bgr, x0, y0, side)
    pts = _mesh(crop)
    if pts is None:
        return None
    log.info("face mesh found on the Haar-cascade crop at (%d, %d) size %d", x0, y0, side)
    return pts + np.float32([x0, y0])


def _mesh(image_bgr: np.ndarray) -> np.ndarray | None:
    import mediapipe as mp  # imported lazily: only avatar creation needs it, not serving

    rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
    with mp.solutions.face_mesh.FaceMesh(
        static_image_mode=True, refine_landmarks=True, max_num_faces=1, min_detection_confidence=0.5
    ) as mesh:
        res = mesh.process(rgb)
    if not res.multi_face_landmarks:
        return None
    h, w = image_bgr.shape[:2]
    lm = res.multi_face_landmarks[0].landmark
    pts = np.array([[p.x * w, p.y * h] for p in lm], dtype=np.float32)
    return pts if len(pts) == N_LANDMARKS else None


def _haar_face(image_bgr: np.ndarray) -> tuple[int, int, int, int] | None:
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    gray = cv2.equalizeHist(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY))
    min_side = max(24, min(gray.shape) // 20)
    faces = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side))
    if len(faces) == 0:
        return None
    x, y, w, h = max(faces, key=lambda f: f[2] * f[3])
    return int(x), int(y), int(w), int(h)


def crop_square(image: np.ndarray, x0: int, y0: int, side: int) -> np.ndarray:
    """Square crop that may reach past the image border; the outside is edge-replicated."""
    h, w = image.shape[:2]
    pad_l, pad_t = max(0, -x0), max(0, -y0)
    pad_r, pad_b = max(0, x0 + side - w), max(0, y0 + side - h)
    if pad_l or pad_t or pad_r or pad_b:
        image = cv2.copyMakeBorder(image, pad_t, pad_b, pad_l, pad_r, cv2.BORDER_REPLICATE)
    x0 += pad_l
    y0 += pad_t
    return image[y0 : y0 + side, x0 : x0 + side]

