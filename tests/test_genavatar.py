"""wav2lip.genavatar: upstream avatar folder format from a real video, face boxes, and its errors."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from wav2lip.face_detect import FaceDetector, clamp_box, pad_box, smooth_boxes
from wav2lip.genavatar import AvatarError, make_avatar

ROOT = Path(__file__).resolve().parent.parent
PORTRAIT = ROOT / "data" / "avatars" / "portrait_astronaut" / "full_imgs" / "00000000.png"
N_FRAMES = 12
SHIFT = (3, 2)  # pixels per frame (x, y)


def shifted(image: np.ndarray, i: int) -> np.ndarray:
    m = np.float32([[1, 0, SHIFT[0] * i], [0, 1, SHIFT[1] * i]])
    return cv2.warpAffine(image, m, (image.shape[1], image.shape[0]), borderMode=cv2.BORDER_REPLICATE)


def write_video(path: Path, frames: list[np.ndarray]) -> Path:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (w, h))
    assert writer.isOpened()
    for f in frames:
        writer.write(f)
    writer.release()
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wav2lip.genavatar", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def portrait() -> np.ndarray:
    image = cv2.imread(str(PORTRAIT), cv2.IMREAD_COLOR)
    assert image is not None
    return image


@pytest.fixture(scope="module")
def face_box(portrait: np.ndarray) -> tuple[float, float, float, float]:
    with FaceDetector() as d:
        box = d.detect(portrait)
    assert box is not None
    return box


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory, portrait: np.ndarray) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "talk.mp4", [shifted(portrait, i) for i in range(N_FRAMES)])


@pytest.fixture(scope="module")
def avatar(tmp_path_factory: pytest.TempPathFactory, video: Path) -> Path:
    out_root = tmp_path_factory.mktemp("avatars")
    done = run_cli(
        "--video_path", str(video), "--avatar_id", "talker", "--img_size", "256", "--out_root", str(out_root)
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out_root / "talker")
    return out_root / "talker"


def test_the_detector_finds_the_portrait_face_where_it_is(face_box) -> None:
    x1, y1, x2, y2 = face_box
    # The astronaut's face in the shipped 512x512 portrait: forehead to chin, cheek to cheek.
    assert 120 < x1 < 170 and 350 < x2 < 400 and 60 < y1 < 110 and 320 < y2 < 370


def test_avatar_folder_has_upstream_wav2lip_layout(avatar: Path, video: Path) -> None:
    full = sorted(p.name for p in (avatar / "full_imgs").iterdir())
    faces = sorted(p.name for p in (avatar / "face_imgs").iterdir())
    assert full == faces == [f"{i:08d}.png" for i in range(N_FRAMES)]
    coords = pickle.loads((avatar / "coords.pkl").read_bytes())
    assert isinstance(coords, list) and len(coords) == N_FRAMES
    for c in coords:
        assert isinstance(c, tuple) and len(c) == 4 and all(type(v) is int for v in c)
    for name in faces:
        crop = cv2.imread(str(avatar / "face_imgs" / name))
        assert crop.shape == (256, 256, 3)
    # Full frames are the video's frames, losslessly.
    cap = cv2.VideoCapture(str(video))
    ok, first = cap.read()
    cap.release()
    assert ok and np.array_equal(cv2.imread(str(avatar / "full_imgs" / "00000000.png")), first)
    assert not any(p.name.startswith(".") for p in avatar.parent.iterdir())  # no work folders left behind


def test_coords_are_inside_frames_and_follow_the_face(avatar: Path, face_box) -> None:
    coords = pickle.loads((avatar / "coords.pkl").read_bytes())
    x1, y1, x2, y2 = pad_box(face_box, (0, 10, 0, 0))
    for i, (cy1, cy2, cx1, cx2) in enumerate(coords):
        assert 0 <= cy1 < cy2 <= 512 and 0 <= cx1 < cx2 <= 512
        dx, dy = SHIFT[0] * i, SHIFT[1] * i
        # Within a few pixels of the face in that frame (video compression and smoothing blur it).
        assert abs(cx1 - (x1 + dx)) < 8 and abs(cx2 - (x2 + dx)) < 8, (i, coords[i])
        assert abs(cy1 - (y1 + dy)) < 8 and abs(cy2 - (y2 + dy)) < 8, (i, coords[i])
    assert coords[-1][2] - coords[0][2] > 20  # moved right with the face (33 px over the clip)


def test_face_crop_is_the_box_resized(avatar: Path) -> None:
    coords = pickle.loads((avatar / "coords.pkl").read_bytes())
    y1, y2, x1, x2 = coords[5]
    full = cv2.imread(str(avatar / "full_imgs" / "00000005.png"))
    crop = cv2.imread(str(avatar / "face_imgs" / "00000005.png"))
    want = cv2.resize(full[y1:y2, x1:x2], (256, 256), interpolation=cv2.INTER_AREA)
    assert np.abs(crop.astype(int) - want.astype(int)).mean() < 1.0


def test_blank_video_fails_naming_the_frames_and_writes_nothing(tmp_path: Path) -> None:
    blank = write_video(tmp_path / "blank.mp4", [np.full((240, 320, 3), 90, np.uint8)] * 4)
    done = run_cli("--video_path", str(blank), "--avatar_id", "nobody", "--out_root", str(tmp_path / "av"))
    assert done.returncode == 2
    assert f"no face found in frames 0, 1, 2, 3 of {blank}" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "av" / "nobody").exists()
    assert list((tmp_path / "av").iterdir()) == []


def test_unreadable_input_exits_2_with_the_path(tmp_path: Path) -> None:
    for path in (tmp_path / "missing.mp4", tmp_path / "garbage.mp4"):
        if path.name == "garbage.mp4":
            path.write_bytes(b"not a video at all" * 100)
        done = run_cli("--video_path", str(path), "--avatar_id", "x", "--out_root", str(tmp_path / "av"))
        assert done.returncode == 2
        assert f"cannot read video {path}" in done.stderr
        assert "Traceback" not in done.stderr


def test_frames_without_a_face_are_listed_by_index_at_most_ten(tmp_path: Path, portrait: np.ndarray) -> None:
    blank = np.full_like(portrait, 90)
    frames = [blank if i in (3, 7) else portrait for i in range(9)]
    with pytest.raises(AvatarError, match=r"no face found in frames 3, 7 of the given frames"):
        make_avatar(frames, tmp_path / "a", progress=False)
    with pytest.raises(AvatarError) as err:
        make_avatar([portrait] + [blank] * 13, tmp_path / "b", progress=False)
    assert "frames 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 and 3 more of" in str(err.value)


def test_a_failed_run_keeps_the_previous_avatar(tmp_path: Path, portrait: np.ndarray) -> None:
    out = make_avatar([portrait], tmp_path / "me", img_size=96, progress=False)
    before = (out / "coords.pkl").read_bytes()
    with pytest.raises(AvatarError):
        make_avatar([np.zeros((64, 64, 3), np.uint8)], out, progress=False)
    assert (out / "coords.pkl").read_bytes() == before
    assert cv2.imread(str(out / "face_imgs" / "00000000.png")).shape == (96, 96, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["me"]


def test_an_image_path_makes_a_one_frame_avatar(tmp_path: Path) -> None:
    out = make_avatar(PORTRAIT, tmp_path / "still", pads=(5, 20, 5, 5), progress=False)
    coords = pickle.loads((out / "coords.pkl").read_bytes())
    assert len(coords) == 1 and len(list((out / "full_imgs").iterdir())) == 1
    y1, y2, x1, x2 = coords[0]
    assert 330 < y2 <= 390 and 50 < y1 < 110  # padded downwards past the chin


def test_boxes_are_smoothed_padded_and_clamped() -> None:
    boxes = np.array([[10, 10, 50, 50]] * 7, dtype=float)
    boxes[3] += 35  # one jumpy detection
    smooth = smooth_boxes(boxes, 5)
    assert np.allclose(smooth[0], [10, 10, 50, 50])  # the jump is outside frame 0's window
    assert np.allclose(smooth[3], [17, 17, 57, 57])  # averaged over five frames
    assert np.allclose(smooth_boxes(boxes[:1], 5), boxes[:1])
    assert pad_box((10, 20, 30, 40), (1, 2, 3, 4)) == (7, 19, 34, 42)
    assert clamp_box((-5.0, -3.0, 700.2, 20.6), 640, 480) == (0, 21, 0, 640)
