"""musetalk.genavatar and ultralight.genavatar: upstream's folders that load back, from a real
video through the command line, and frames without a face named with nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from avatar_build import AvatarError
from lightreal import load_ultralight_avatar
from musetalk.avatar import load_muse_avatar
from musetalk.faceparse import NECK, NOSE, SKIN, UPPER_LIP, BiSeNet, mode_mask
from musetalk.genavatar import make_avatar as make_muse_avatar
from musetalk.weights import load_vae
from test_genavatar import shifted, write_video
from tiny_models import portrait_frames, write_musetalk_models, write_ultralight_avatar
from ultralight.genavatar import make_avatar as make_light_avatar

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    return write_musetalk_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    frame = portrait_frames(1)[0]
    return write_video(tmp_path_factory.mktemp("video") / "talk.mp4", [shifted(frame, i) for i in range(4)])


def cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_musetalk_avatar_from_a_video_loads_back(models, video, tmp_path):
    done = cli("musetalk.genavatar", "--video_path", str(video), "--avatar_id", "me", "--models_dir", str(models),
               "--out_root", str(tmp_path))
    assert done.returncode == 0, done.stderr
    avatar = load_muse_avatar(tmp_path / "me")
    assert len(avatar) == 4 and avatar.has_face.all()
    assert avatar.latents.shape == (4, 8, 32, 32)
    for i in range(4):
        x1, y1, x2, y2 = avatar.coords[i]
        xs, ys, xe, ye = avatar.mask_coords[i]
        assert xs <= x1 < x2 <= xe and ys <= y1 < y2 <= ye  # the mask box holds the face box
        mask = avatar.masks[i]
        assert mask.shape == (ye - ys, xe - xs)
        # The lower half only, its edge blurred over a tenth of the width as upstream does.
        assert mask[: mask.shape[0] // 2 - mask.shape[1] // 10].max() == 0 and mask.max() == 255
    # The face follows the video's motion (3 px right, 2 px down per frame).
    assert avatar.coords[3][0] - avatar.coords[0][0] in range(6, 13)
    assert (tmp_path / "me" / "avator_info.json").is_file()


def test_a_frame_without_a_face_is_named_and_nothing_is_written(models, tmp_path):
    frames = portrait_frames(3)
    frames[1] = np.full_like(frames[1], 128)
    vae = load_vae(models)
    with pytest.raises(AvatarError, match="no face found in frame 1 of"):
        make_muse_avatar(frames, tmp_path / "me", vae, progress=False)
    with pytest.raises(AvatarError, match="no face found in frame 1 of"):
        make_light_avatar(frames, tmp_path / "light", write_ultralight_avatar(tmp_path / "ref") / "ultralight.pth",
                          progress=False)
    assert not (tmp_path / "me").exists() and not (tmp_path / "light").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ref"]  # no work folders left either


def test_ultralight_avatar_from_a_video_loads_back(video, tmp_path):
    checkpoint = write_ultralight_avatar(tmp_path / "ref") / "ultralight.pth"
    done = cli("ultralight.genavatar", "--video_path", str(video), "--avatar_id", "me", "--checkpoint",
               str(checkpoint), "--out_root", str(tmp_path))
    assert done.returncode == 0, done.stderr
    avatar = load_ultralight_avatar(tmp_path / "me")
    assert len(avatar) == 4 and avatar.faces.shape == (4, 168, 168, 3)
    x1, y1, x2, y2 = avatar.coords[0]
    assert x2 - x1 == y2 - y1 > 100  # a square around the face
    assert (tmp_path / "me" / "ultralight.pth").read_bytes() == checkpoint.read_bytes()
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    done = cli("ultralight.genavatar", "--video_path", str(video), "--avatar_id", "x", "--checkpoint", str(bad),
               "--out_root", str(tmp_path))
    assert done.returncode == 2 and "cannot read checkpoint" in done.stderr and not (tmp_path / "x").exists()


COMPAT = ROOT.parent / "shared" / "compat"


@pytest.mark.skipif(not COMPAT.is_dir(), reason="needs ../shared/compat")
def test_bisenet_has_the_names_and_shapes_of_79999_iter():
    rows = [line.split("\t") for line in (COMPAT / "bisenet_face_parsing_state_dict.tsv").read_text().splitlines()[1:]]
    assert {k: str(list(v.shape)) for k, v in BiSeNet().state_dict().items()} == {k: s for k, s, *_ in rows}


def test_parsing_modes_follow_upstream():
    labels = np.zeros((512, 512), np.uint8)
    labels[100:300, 150:360] = SKIN
    labels[180:230, 230:280] = NOSE
    labels[250:270, 220:290] = UPPER_LIP
    labels[300:340, 200:310] = NECK
    raw, neck, jaw = (mode_mask(labels, m) for m in ("raw", "neck", "jaw"))
    assert raw[150, 200] == 255 and raw[200, 250] == 0 and raw[260, 250] == 255 and raw[320, 250] == 0
    assert neck[320, 250] == 255
    assert jaw[200, 250] == 0  # no nose
    assert jaw[260, 250] == 255  # the lips
    # The dilation's kernel (cv2 semantics: its lower rows reach up) grows the skin 16 rows up
    # and, through its triangle's tip, 6 rows down.
    assert jaw[88, 250] == 255 and raw[88, 250] == 0 and jaw[80, 250] == 0
    assert jaw[305, 255] == 255 and raw[305, 255] == 0 and jaw[306, 255] == 0


def test_musetalk_masks_come_from_bisenet_when_the_user_has_it(models, video, tmp_path):
    import shutil

    import torch

    root = tmp_path / "models"
    shutil.copytree(models, root)
    (root / "face-parse-bisent").mkdir()
    torch.manual_seed(0)
    torch.save(BiSeNet().state_dict(), root / "face-parse-bisent" / "79999_iter.pth")
    done = cli("musetalk.genavatar", "--video_path", str(video), "--avatar_id", "parsed", "--models_dir", str(root),
               "--out_root", str(tmp_path), "--parsing_mode", "raw")
    assert done.returncode == 0, done.stderr
    assert "blend masks from BiSeNet face parsing" in done.stderr
    avatar = load_muse_avatar(tmp_path / "parsed")
    assert len(avatar) == 4 and all(m.shape == (ye - ys, xe - xs) for m, (xs, ys, xe, ye) in
                                    zip(avatar.masks, avatar.mask_coords, strict=True))
    (root / "face-parse-bisent" / "79999_iter.pth").write_bytes(b"junk")
    done = cli("musetalk.genavatar", "--video_path", str(video), "--avatar_id", "x", "--models_dir", str(root),
               "--out_root", str(tmp_path))
    assert done.returncode == 2 and "79999_iter.pth" in done.stderr and not (tmp_path / "x").exists()
