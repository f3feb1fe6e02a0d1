"""The embedded "portrait" model: avatar creation, audio features and rendering, all real parts."""

from __future__ import annotations

import io
import json
import pickle
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.signal import resample_poly
from skimage import data

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from portrait import landmarks as L  # noqa: E402
from portrait.features import FEATURE_DIM, frame_features  # noqa: E402
from portrait.make_avatar import make_avatar  # noqa: E402
from portrait.render import PortraitAvatar, PortraitRenderer  # noqa: E402

SHIPPED = ROOT / "data" / "avatars" / "portrait_astronaut"
FPS = 25
SR = 16000


# ---------------------------------------------------------------- helpers


def chunked(audio: np.ndarray, left: int = 10, right: int = 10) -> tuple[np.ndarray, int]:
    """Audio as [left + 2n + right, 320] chunks with silent context, and n (frames)."""
    n = len(audio) // 640
    chunks = np.zeros((left + 2 * n + right, 320), np.float32)
    chunks[left : left + 2 * n] = audio[: n * 640].reshape(2 * n, 320)
    return chunks, n


def syllable_signal(seconds: float = 2.0, rate_hz: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """A voiced harmonic sound (150 Hz and harmonics) pulsing at syllable rate, and its envelope."""
    t = np.arange(int(seconds * SR)) / SR
    voice = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 15))
    env = 0.2 + 0.8 * (0.5 - 0.5 * np.cos(2 * np.pi * rate_hz * t))  # never silent: 14 dB swings
    return (0.15 * voice * env).astype(np.float32), env


def frame_level(audio: np.ndarray, n: int) -> np.ndarray:
    """RMS of each 40 ms video frame."""
    return np.sqrt((audio[: n * 640].reshape(n, 640) ** 2).mean(axis=1))


def local_peaks(x: np.ndarray, above: float) -> list[int]:
    return [i for i in range(1, len(x) - 1) if x[i] >= x[i - 1] and x[i] > x[i + 1] and x[i] > above]


def espeak(text: str) -> np.ndarray:
    wav = subprocess.run(["espeak-ng", "--stdout", text], capture_output=True, check=True, timeout=30).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768.0
    return resample_poly(pcm, SR, rate).astype(np.float32)


def speaking(opening: float = 0.7, width: float = 0.2, teeth: float = 0.3) -> np.ndarray:
    return np.array([opening, width, teeth], np.float32)


REST = np.zeros(FEATURE_DIM, np.float32)


def mouth_box(lm: np.ndarray) -> tuple[slice, slice]:
    lips = lm[L.UPPER_OUTER + L.LOWER_OUTER]
    x0, y0 = lips.min(axis=0).astype(int)
    x1, y1 = lips.max(axis=0).astype(int)
    return slice(y0, y1 + (y1 - y0)), slice(x0, x1)


def eye_box(lm: np.ndarray, upper: list[int], lower: list[int]) -> tuple[slice, slice]:
    pts = lm[upper + lower]
    x0, y0 = pts.min(axis=0).astype(int)
    x1, y1 = pts.max(axis=0).astype(int)
    return slice(y0 - 2, y1 + 2), slice(x0, x1)


def blink_frames(renderer: PortraitRenderer, lm: np.ndarray, seconds: float = 10.0) -> list[int]:
    """Frame indices where both eyes look shut: their dark iris and lash pixels mostly gone."""
    boxes = [eye_box(lm, L.EYE_LEFT_UPPER, L.EYE_LEFT_LOWER), eye_box(lm, L.EYE_RIGHT_UPPER, L.EYE_RIGHT_LOWER)]
    dark = []
    for i in range(int(seconds * FPS)):
        gray = cv2.cvtColor(renderer.render(REST, i / FPS), cv2.COLOR_BGR2GRAY)
        dark.append([(gray[b] < 90).sum() for b in boxes])
    dark = np.array(dark, dtype=np.float32)
    # Head sway shifts the eyes by a pixel or two; a closed lid hides most of the iris.
    shut = (dark < 0.7 * np.median(dark, axis=0)).all(axis=1)
    return [int(i) for i in np.flatnonzero(shut)]


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    astronaut = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    return make_avatar(astronaut, tmp_path_factory.mktemp("avatars") / "astro", size=512, source="astronaut")


@pytest.fixture(scope="module")
def avatar() -> PortraitAvatar:
    return PortraitAvatar.load(SHIPPED)


# ---------------------------------------------------------------- avatar creation


def test_astronaut_avatar_has_landmarks_inside_frame_with_mouth_below_eyes(made: Path) -> None:
    frame = cv2.imread(str(made / "full_imgs" / "00000000.png"))
    assert frame.shape == (512, 512, 3)
    lm = np.load(made / "landmarks.npy")
    assert lm.shape == (478, 2) and lm.dtype == np.float32
    assert (lm >= 0).all() and (lm < 512).all()
    eyes_y = lm[[159, 145, 386, 374], 1].mean()
    mouth_y = lm[[13, 14], 1].mean()
    assert lm[L.SUBNASALE, 1] > eyes_y
    assert mouth_y > lm[L.SUBNASALE, 1]
    assert lm[L.CHIN, 1] > mouth_y
    # Head and shoulders: the face (forehead to chin) fills about half the height.
    face_h = lm[L.CHIN, 1] - lm[L.FOREHEAD_TOP, 1]
    assert 0.4 * 512 < face_h < 0.6 * 512
    (y1, y2, x1, x2), = pickle.loads((made / "coords.pkl").read_bytes())
    assert 0 <= y1 < mouth_y < y2 <= 512 and 0 <= x1 < lm[13, 0] < x2 <= 512
    meta = json.loads((made / "avatar.json").read_text())
    assert meta == {"model": "portrait", "size": 512, "source": "astronaut"}


@pytest.mark.parametrize("kind", ["noise", "blank"])
def test_make_avatar_without_a_face_says_so(kind: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    if kind == "noise":
        image = rng.integers(0, 256, (320, 320, 3), dtype=np.uint8)
    else:
        image = np.full((320, 320, 3), 128, np.uint8)
    with pytest.raises(ValueError, match="no face found in pic.png; use a frontal photo"):
        make_avatar(image, tmp_path / "x", source="pic.png")
    assert not (tmp_path / "x" / "landmarks.npy").exists()


@pytest.mark.parametrize("content", [None, b"not an image at all"])
def test_cli_unreadable_image_exits_2_with_message(content: bytes | None, tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    if content is not None:
        path.write_bytes(content)
    cmd = [sys.executable, "-m", "portrait.make_avatar", "--image", str(path), "--avatar_id", "x"]
    proc = subprocess.run(cmd + ["--out_root", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"cannot read image {path}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------- features


def test_silence_gives_exact_zero_features() -> None:
    feats = frame_features(np.zeros((10 + 2 * 12 + 10, 320), np.float32), 10, 10, 12)
    assert feats.shape == (12, FEATURE_DIM) and feats.dtype == np.float32
    assert (feats == 0).all()


def test_frames_far_from_sound_stay_at_rest() -> None:
    audio, _ = syllable_signal(1.0)
    silent = np.zeros(SR, np.float32)
    chunks, n = chunked(np.concatenate([silent, audio]))
    feats = frame_features(chunks, 10, 10, n)
    assert (feats[: FPS - 5] == 0).all()  # a second of silence: mouth closed
    assert feats[FPS:, 0].max() > 0.3  # then it talks


def test_opening_follows_syllables_of_a_pulsing_voice() -> None:
    audio, _ = syllable_signal(2.0, rate_hz=4.0)
    chunks, n = chunked(audio)
    opening = frame_features(chunks, 10, 10, n)[:, 0]
    assert opening.max() > 0.3 and opening.max() - opening.min() > 0.25
    corr = np.corrcoef(opening, frame_level(audio, n))[0, 1]
    assert corr > 0.7, corr
    # Eight syllables in two seconds: the opening rises and falls about eight times.
    peaks = local_peaks(opening, 0.2)
    assert 6 <= len(peaks) <= 10, peaks


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_real_speech_opens_and_closes_the_mouth_per_syllable() -> None:
    audio = espeak("hello, my name is Eileen, and I fly the space shuttle")
    chunks, n = chunked(audio)
    feats = frame_features(chunks, 10, 10, n)
    opening = feats[:, 0]
    talking = frame_level(audio, n) > 0.01
    assert opening[talking].max() > 0.4
    # Lips close towards consonants: big swings between neighbouring syllables.
    peaks = local_peaks(opening, 0.25)
    assert len(peaks) >= 6, peaks
    assert np.percentile(opening[talking], 10) < 0.5 * opening.max()
    assert (feats[:, 1] > 0.3).any() and (feats[:, 1] < -0.3).any()  # both spread and rounded lips
    # Batches see the same thing as one long call: context rows make the seams invisible.
    left = right = 10
    batched = np.concatenate([
        frame_features(chunks[s : s + left + 8 + right], left, right, 4) for s in range(0, 2 * (n - n % 4), 8)
    ])
    np.testing.assert_allclose(batched, feats[: len(batched)], atol=1e-5)


def test_features_reject_wrong_shapes() -> None:
    with pytest.raises(ValueError, match="chunks must be"):
        frame_features(np.zeros((30, 320), np.float32), 10, 10, 8)


# ---------------------------------------------------------------- rendering


def test_shipped_avatar_loads(avatar: PortraitAvatar) -> None:
    assert avatar.size == (512, 512)
    assert avatar.landmarks.shape == (478, 2)
    frame = PortraitRenderer(avatar).render(REST, 0.0)
    assert frame.shape == (512, 512, 3) and frame.dtype == np.uint8


def test_load_names_the_missing_file(tmp_path: Path) -> None:
    shutil.copytree(SHIPPED, tmp_path / "a")
    (tmp_path / "a" / "landmarks.npy").unlink()
    with pytest.raises(FileNotFoundError, match="landmarks.npy"):
        PortraitAvatar.load(tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="00000000.png"):
        PortraitAvatar.load(tmp_path / "nothing")


def test_speaking_changes_the_mouth_and_little_else(avatar: PortraitAvatar) -> None:
    # Same seed and time: identical head sway and blinks, so differences come from the mouth.
    rest = PortraitRenderer(avatar, seed=7).render(REST, 0.2).astype(np.float32)
    talk = PortraitRenderer(avatar, seed=7).render(speaking(), 0.2).astype(np.float32)
    diff = np.abs(talk - rest).max(axis=2)
    mouth = diff[mouth_box(avatar.landmarks)]
    assert mouth.mean() > 10.0
    assert (mouth > 60).mean() > 0.1  # a real opening, not a tint
    lm = avatar.landmarks
    # Forehead and eyes, the background and the shoulders: far from the mouth, nearly unchanged.
    far = [
        diff[int(lm[L.FOREHEAD_TOP, 1]) : int(lm[159, 1]) - 10, int(lm[33, 0]) : int(lm[263, 0])],
        diff[:100, :100],
        diff[:100, -100:],
        diff[-60:, :],
    ]
    for region in far:
        assert region.mean() < 2.0


def test_opening_darkens_the_mouth_more_the_wider_it_opens(avatar: PortraitAvatar) -> None:
    box = mouth_box(avatar.landmarks)

    def dark_pixels(opening: float) -> int:
        frame = PortraitRenderer(avatar, seed=7).render(speaking(opening, 0.0, 0.0), 0.2)
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)[box]
        return int((gray < 60).sum())

    counts = [dark_pixels(o) for o in (0.0, 0.3, 0.6, 1.0)]
    assert counts == sorted(counts) and counts[-1] > counts[0] + 500, counts


def test_rest_features_keep_the_photos_mouth(avatar: PortraitAvatar) -> None:
    frame = PortraitRenderer(avatar, seed=3).render(REST, 0.2).astype(np.float32)
    box = mouth_box(avatar.landmarks)
    # Only the sub-pixel head sway separates the rest frame from the photo.
    assert np.abs(frame[box] - avatar.image[box]).mean() < 6.0


def test_blinks_happen_and_are_brief(avatar: PortraitAvatar) -> None:
    frames = blink_frames(PortraitRenderer(avatar, seed=1), avatar.landmarks)
    assert frames, "no blink within 10 s"
    # Blinks last ~150 ms (at most a handful of frames each) and are spread over the time.
    assert len(frames) < 0.1 * 10 * FPS
    runs = np.split(np.array(frames), np.where(np.diff(frames) > 1)[0] + 1)
    assert max(len(r) for r in runs) <= 5


def test_sessions_are_independent(avatar: PortraitAvatar) -> None:
    a1, a2 = PortraitRenderer(avatar, seed=1), PortraitRenderer(avatar, seed=2)
    solo = PortraitRenderer(avatar, seed=1)
    for i in range(60):
        t = i / FPS
        f = speaking(0.5 + 0.4 * np.sin(i), np.cos(i), 0.2)
        out1 = a1.render(f, t)
        a2.render(speaking(0.9, -1.0, 1.0), t)  # another session, interleaved
        np.testing.assert_array_equal(out1, solo.render(f, t))
    # Each session gets its own blink schedule and head sway.
    assert blink_frames(PortraitRenderer(avatar, seed=1), avatar.landmarks) != blink_frames(
        PortraitRenderer(avatar, seed=2), avatar.landmarks
    )


def test_frames_are_new_arrays_and_the_avatar_stays_untouched(avatar: PortraitAvatar) -> None:
    before = avatar.image.copy()
    r = PortraitRenderer(avatar)
    f1 = r.render(speaking(), 0.0)
    f1[:] = 0
    f2 = r.render(speaking(), 0.0)
    assert f2.any() and not np.shares_memory(f1, f2)
    assert not np.shares_memory(f2, avatar.image)
    np.testing.assert_array_equal(avatar.image, before)
    assert not avatar.image.flags.writeable


def test_head_moves_a_little_over_time(avatar: PortraitAvatar) -> None:
    r = PortraitRenderer(avatar, seed=4)
    frames = [r.render(REST, t).astype(np.float32) for t in (0.0, 1.5, 3.0, 4.5)]
    lm = avatar.landmarks
    rows = slice(int(lm[L.FOREHEAD_TOP, 1]), int(lm[L.CHIN, 1]))
    face = (rows, slice(int(lm[L.CHEEK_LEFT, 0]), int(lm[L.CHEEK_RIGHT, 0])))
    moves = [np.abs(f[face] - frames[0][face]).mean() for f in frames[1:]]
    assert min(moves) > 0.5  # never frozen
    gray = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY)[face] for f in frames]
    shift = cv2.phaseCorrelate(gray[0], gray[2])[0]
    assert np.hypot(*shift) < 5.0  # ... but only a pixel or few
