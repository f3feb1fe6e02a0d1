"""MuseTalk 1.5 with users' files: upstream's UNet/VAE names, whisper and VAE folders and
avatar folder with their quirks, the feature windows and blend of the facts file, and a real
server streaming it."""

from __future__ import annotations

import argparse
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from checkpoints import CheckpointMismatch
from model_stream import assert_lip_synced_stream, watch_model_server
from museasr import Whisper, frame_windows
from musereal import MuseTalk
from musetalk.avatar import load_muse_avatar
from musetalk.render import blend_face, positional_encoding
from tiny_models import MUSE_BOX, write_musetalk_avatar, write_musetalk_models, write_whisper_folder

COMPAT = Path(__file__).resolve().parent.parent.parent / "shared" / "compat"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("musetalk")
    write_whisper_folder(root / "models" / "whisper")
    write_musetalk_models(root / "models")
    write_musetalk_avatar(root / "avatars" / "mt_test", root / "models")
    return root


def options(root: Path) -> argparse.Namespace:
    return argparse.Namespace(avatar_id="mt_test", avatar_root=str(root / "avatars"), models_dir=str(root / "models"))


def tsv_names(name: str) -> set[str]:
    return {line.split("\t")[0] for line in (COMPAT / name).read_text().splitlines()[1:]}


@pytest.mark.skipif(not COMPAT.is_dir(), reason="needs ../shared/compat")
def test_test_files_have_upstreams_names(files):
    unet = torch.load(files / "models" / "musetalkV15" / "unet.pth")
    assert set(unet) == tsv_names("musetalk_unet_state_dict.tsv")  # 686 names, no prefix
    vae = torch.load(files / "models" / "sd-vae" / "diffusion_pytorch_model.bin")
    assert set(vae) == tsv_names("sd_vae_state_dict_legacy_names.tsv")  # the 0.4.x era names
    whisper = torch.load(files / "models" / "whisper" / "pytorch_model.bin")
    encoder = {k.removeprefix("model.") for k in whisper if k.startswith("model.encoder.")}
    assert encoder == tsv_names("whisper_tiny_encoder_state_dict.tsv")


def test_whisper_windows_start_at_each_frames_audio():
    states = np.arange(1500, dtype=np.float32)[:, None, None] * np.ones((1, 5, 384), np.float32)
    states[:, :, 0] += np.arange(5)[None, :] / 10  # the hidden state's number, to see the order
    feats = frame_windows(states, left=10, n_frames=16)
    assert feats.shape == (16, 50, 384)
    for i in (0, 9, 15):
        tokens = feats[i, :, 0]
        expected = [2 * i + 10 + j // 5 + (j % 5) / 10 for j in range(50)]  # time-major, state-minor
        assert np.allclose(tokens, expected)
    assert frame_windows(states, left=1496, n_frames=1)[0, -1, 1] == 1499  # past the end: the edge


def test_positional_encoding_is_the_standard_sinusoid():
    pe = positional_encoding()
    assert pe.shape == (50, 384)
    assert pe[0, 0] == 0 and pe[0, 1] == 1
    assert np.isclose(pe[7, 10], np.sin(7 / 10000 ** (10 / 384)), atol=1e-6)
    assert np.isclose(pe[7, 11], np.cos(7 / 10000 ** (10 / 384)), atol=1e-6)


def test_blend_keeps_the_unmasked_frame_and_a_box_past_the_edge():
    frame = np.full((100, 100, 3), 10, np.uint8)
    face = np.full((256, 256, 3), 250, np.uint8)
    mask = np.zeros((80, 80), np.uint8)
    mask[40:, :] = 255  # the lower half of the mask box
    out = blend_face(frame, face, (20, -10, 60, 50), mask, (0, -30, 80, 50))
    assert (frame == 10).all()  # the avatar's frame is never written
    assert out[30, 40, 0] == 250  # inside the face box and the mask's lower half
    assert out[5, 40, 0] == 10  # the mask's upper half: the photo
    assert out[30, 70, 0] == 10  # masked in, but outside the face box
    assert (out[50:] == 10).all()  # below the mask box


def test_users_files_load_with_their_quirks(files):
    model = MuseTalk.load(options(files))
    avatar = model.avatar
    assert len(avatar) == 4 and avatar.coords[0] == MUSE_BOX
    # Frame 1 has no face: upstream left its latents out; each latent is back with its frame.
    assert list(avatar.has_face) == [True, False, True, True]
    raw = torch.load(files / "avatars" / "mt_test" / "latents.pt")
    assert len(raw) == 3 and raw[0].dtype == torch.float16
    assert np.array_equal(avatar.latents[2], raw[1][0].float().numpy())
    assert not avatar.latents[1].any()
    assert avatar.mask_coords[3][1] < 0  # a mask box past the top edge
    # The VAE's legacy attention names were read into the current ones.
    legacy = torch.load(files / "models" / "sd-vae" / "diffusion_pytorch_model.bin")
    assert torch.equal(model.net.vae.state_dict()["decoder.mid_block.attentions.0.to_q.weight"],
                       legacy["decoder.mid_block.attentions.0.query.weight"])
    asr, renderer = model.make_asr(10, 10), model.renderer(1)
    speech = np.random.default_rng(0).normal(0, 0.1, (52, 320)).astype(np.float32)
    feats = asr.features(speech, 10, 10, 4)
    assert feats.shape == (4, 50, 384)
    preds = renderer.infer(feats, [0, 1, 2, 3])
    assert preds[0].shape == (256, 256, 3) and preds[0].dtype == np.uint8
    frames = [renderer.paste_back(p, i) for i, p in enumerate(preds)]
    x1, y1, x2, y2 = MUSE_BOX
    changed = np.abs(frames[0].astype(int) - renderer.idle_frame(0).astype(int)).sum(axis=2)
    assert changed[(y1 + y2) // 2 : y2, x1:x2].mean() > 5  # the mouth half of the face
    assert not changed[: (y1 + y2) // 2 - 20].any() and not changed[y2 + 1 :].any()
    assert np.array_equal(frames[1], renderer.idle_frame(1))  # no face: the frame as it is
    assert np.abs(frames[3].astype(int) - renderer.idle_frame(3).astype(int)).any()  # past the edge: drawn


def test_whisper_states_are_transformers_own_and_the_fast_mode_is_shorter(files, tmp_path):
    whisper = Whisper.load(files / "models")
    samples = np.random.default_rng(1).normal(0, 0.1, 16640).astype(np.float32)
    states = whisper.hidden_states(samples)
    assert states.shape == (1500, 5, 384)  # 30 s of whisper frames, 5 hidden states each
    mel = whisper.extractor(samples, sampling_rate=16000, return_tensors="pt").input_features
    assert mel.shape == (1, 80, 3000)  # padded to 30 s
    with torch.inference_mode():
        theirs = torch.stack(whisper.encoder(mel, output_hidden_states=True).hidden_states, dim=2)[0]
    assert np.allclose(states, theirs.numpy(), atol=1e-5)
    fast = whisper.hidden_states(samples, fast=True)
    assert fast.shape == (52, 5, 384)  # the window's own 52 frames
    # Before attention the same (but the last frame, whose convolution sees the cut).
    assert np.allclose(fast[:51, 0], states[:51, 0], atol=1e-5)
    assert not np.allclose(fast[:, 4], states[:52, 4], atol=1e-3)  # after it: no padding seen
    with pytest.raises(FileNotFoundError, match="whisper.*openai/whisper-tiny"):
        Whisper.load(tmp_path)


def test_bad_files_say_which_file_and_what_is_wrong(files, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(files, root)
    models, avatar = root / "models", root / "avatars" / "mt_test"
    (models / "musetalkV15" / "unet.pth").rename(tmp_path / "unet.pth")
    with pytest.raises(FileNotFoundError, match="musetalkV15/unet.pth"):
        MuseTalk.load(options(root))
    state = torch.load(tmp_path / "unet.pth")
    state["conv_out.weight"] = state["conv_out.weight"][:2]
    state["module.extra"] = state.pop("conv_in.bias")
    torch.save(state, models / "musetalkV15" / "unet.pth")
    with pytest.raises(CheckpointMismatch, match=r"unet.pth does not fit .*1 missing: conv_in.bias.*"
                                                  r"1 unexpected: extra.*first shape mismatch: conv_out.weight"):
        MuseTalk.load(options(root))
    (tmp_path / "unet.pth").rename(models / "musetalkV15" / "unet.pth")
    shutil.rmtree(models / "sd-vae")
    with pytest.raises(FileNotFoundError, match="sd-vae.*stabilityai/sd-vae-ft-mse"):
        MuseTalk.load(options(root))
    torch.save(torch.load(avatar / "latents.pt")[:2], avatar / "latents.pt")
    with pytest.raises(ValueError, match="4 full_imgs but 2 latents"):
        load_muse_avatar(avatar)
    shutil.copy(files / "avatars" / "mt_test" / "latents.pt", avatar / "latents.pt")
    with (avatar / "mask_coords.pkl").open("wb") as f:
        pickle.dump([(0, 0, 10, 10)] * 4, f)
    with pytest.raises(ValueError, match="mask 0 is 270x270 but its box"):
        load_muse_avatar(avatar)
    (avatar / "mask" / "00000003.png").unlink()
    with pytest.raises(ValueError, match="4 full_imgs, 4 coords, 3 mask, 4 mask_coords"):
        load_muse_avatar(avatar)


def test_server_streams_musetalk_speech_to_a_peer(files):
    assert_lip_synced_stream(watch_model_server("musetalk", files, "mt_test", MUSE_BOX))
