"""Ultralight with users' files: upstream's checkpoint names, HuBERT folder and avatar folder,
the feature windows and image numerics of the facts file, and a real server streaming it."""

from __future__ import annotations

import argparse
import pickle
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from checkpoints import CheckpointMismatch
from hubertasr import Hubert, HubertASR, frame_windows
from lightreal import Ultralight, load_ultralight_avatar
from model_stream import assert_lip_synced_stream, watch_model_server
from tiny_models import FACE_BOX, write_hubert_folder, write_ultralight_avatar
from ultralight.checkpoint import save_unet
from ultralight.model import UltralightUNet
from ultralight.render import network_input, paste_back

COMPAT = Path(__file__).resolve().parent.parent.parent / "shared" / "compat"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ultralight")
    write_hubert_folder(root / "models" / "hubert-large-ls960-ft")
    write_ultralight_avatar(root / "avatars" / "ul_test")
    return root


def options(root: Path, avatar: str = "ul_test") -> argparse.Namespace:
    return argparse.Namespace(avatar_id=avatar, avatar_root=str(root / "avatars"), models_dir=str(root / "models"))


@pytest.mark.skipif(not COMPAT.is_dir(), reason="needs ../shared/compat")
def test_unet_names_and_shapes_are_upstreams():
    rows = [line.split("\t") for line in (COMPAT / "ultralight_hubert_state_dict.tsv").read_text().splitlines()[1:]]
    upstream = {key: shape for key, shape, *_ in rows}
    ours = {key: str(list(v.shape)) for key, v in UltralightUNet().state_dict().items()}
    assert ours == upstream


def test_hubert_windows_are_centred_on_each_frames_audio():
    hidden = np.arange(51, dtype=np.float32)[:, None] * np.ones(1024, np.float32)  # row k holds k
    feats = frame_windows(hidden, left=10, n_frames=16)
    assert feats.shape == (16, 16, 32, 32)
    for i in (0, 7, 15):
        rows = feats[i, :, 0, 0]
        assert list(rows) == list(range(2 * i + 2, 2 * i + 18))  # [center - 8, center + 8), center 2i + 10
    edge = frame_windows(hidden[:20], left=0, n_frames=1)[0, :, 0, 0]
    assert list(edge) == [0] * 8 + list(range(8))  # before the window: its first row repeated


def test_network_input_puts_the_reference_first_and_masks_the_rectangle():
    crop = np.full((1, 168, 168, 3), 200, np.uint8)
    x = network_input(crop)
    assert x.shape == (1, 6, 160, 160)
    assert np.allclose(x[0, :3], 200 / 255)  # reference: the whole crop
    masked = x[0, 3]
    assert (masked[5:150, 5:155] == 0).all()
    assert masked[4, 80] > 0 and masked[150, 80] > 0 and masked[80, 4] > 0 and masked[80, 155] > 0


def test_paste_back_truncates_and_fills_the_box_and_keeps_a_box_past_the_edge():
    frame = np.zeros((200, 200, 3), np.uint8)
    crop = np.full((168, 168, 3), 50, np.uint8)
    pred = np.full((160, 160, 3), 99.9, np.float32)
    out = paste_back(frame, crop, pred, (20, 30, 188, 198))  # 168 square: no resize
    assert out[30 + 80, 20 + 80, 0] == 99  # truncated, not rounded
    assert out[30, 20, 0] == 50 and out[29, 20, 0] == 0 and out[30, 19, 0] == 0
    assert (frame == 0).all()  # the avatar's frame is never written
    # A box reaching past the frame: the part inside is drawn, the frame is not dropped.
    past = paste_back(frame, crop, pred, (100, 100, 268, 268))
    assert past[100, 100, 0] == 50 and past[199, 199, 0] == 99 and past[99, 99, 0] == 0


def test_users_files_load_with_their_quirks(files):
    model = Ultralight.load(options(files))
    # numpy ints in coords.pkl, a HubertForCTC .bin with weight_g/weight_v names
    assert model.avatar.coords[0] == FACE_BOX and all(type(v) is int for v in model.avatar.coords[0])
    assert model.avatar.faces.shape == (4, 168, 168, 3)
    asr = model.make_asr(10, 10)
    assert isinstance(asr, HubertASR)
    speech = np.random.default_rng(0).normal(0, 0.1, (52, 320)).astype(np.float32)
    feats = asr.features(speech, 10, 10, 16)
    assert feats.shape == (16, 16, 32, 32) and feats.std() > 0.1
    renderer = model.renderer(1)
    preds = renderer.infer(feats[:2], [0, 1])
    frame = renderer.paste_back(preds[0], 0)
    x1, y1, x2, y2 = FACE_BOX
    changed = np.abs(frame.astype(int) - renderer.idle_frame(0).astype(int))
    assert changed[y1:y2, x1:x2].mean() > 5 and changed[:y1].max() == 0 and changed[:, :x1].max() == 0


def test_weight_norm_and_prefixes_of_the_hubert_file_are_read(files):
    hubert = Hubert.load(files / "models")
    raw = torch.load(files / "models" / "hubert-large-ls960-ft" / "pytorch_model.bin")
    assert "hubert.encoder.pos_conv_embed.conv.weight_g" in raw and "lm_head.weight" in raw
    got = hubert.model.state_dict()["encoder.pos_conv_embed.conv.parametrizations.weight.original1"]
    assert torch.equal(got, raw["hubert.encoder.pos_conv_embed.conv.weight_v"])


def test_bad_files_say_which_file_and_what_is_wrong(files, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(files, root)
    avatar = root / "avatars" / "ul_test"
    # No HuBERT folder: named, with what goes in it.
    shutil.move(root / "models" / "hubert-large-ls960-ft", tmp_path / "hubert")
    with pytest.raises(FileNotFoundError, match="hubert-large-ls960-ft.*facebook/hubert-large-ls960-ft"):
        Ultralight.load(options(root))
    shutil.move(tmp_path / "hubert", root / "models" / "hubert-large-ls960-ft")
    # A checkpoint with names that do not fit.
    state = UltralightUNet().state_dict()
    state["extra.weight"] = state.pop("outc.conv.weight")
    torch.save(state, avatar / "ultralight.pth")
    with pytest.raises(CheckpointMismatch, match=r"ultralight.pth does not fit .*1 missing: outc.conv.weight.*"
                                                  r"1 unexpected: extra.weight"):
        Ultralight.load(options(root))
    # A later anliyuan variant with another audio input.
    state = UltralightUNet().state_dict()
    state["audio_model.conv1.conv.0.weight"] = torch.zeros(64, 32, 1, 1)
    torch.save(state, avatar / "ultralight.pth")
    with pytest.raises(CheckpointMismatch, match="variant"):
        Ultralight.load(options(root))
    save_unet(UltralightUNet(), avatar / "ultralight.pth")
    # Lists of different lengths.
    with (avatar / "coords.pkl").open("wb") as f:
        pickle.dump([FACE_BOX] * 3, f)
    with pytest.raises(ValueError, match="4 full_imgs, 4 face_imgs, 3 coords"):
        load_ultralight_avatar(avatar)
    with (avatar / "coords.pkl").open("wb") as f:
        pickle.dump([FACE_BOX] * 4, f)
    # An unreadable frame.
    (avatar / "face_imgs" / "00000002.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image .*face_imgs/00000002.png"):
        load_ultralight_avatar(avatar)
    cv2.imwrite(str(avatar / "face_imgs" / "00000002.png"), np.zeros((100, 100, 3), np.uint8))
    with pytest.raises(ValueError, match="frame 2 is 100x100, Ultralight crops are 168x168"):
        load_ultralight_avatar(avatar)


def test_server_streams_ultralight_speech_to_a_peer(files):
    assert_lip_synced_stream(watch_model_server("ultralight", files, "ul_test", FACE_BOX))
