"""Tiny checkpoints and avatar folders in upstream's exact formats, for the model tests.

Real weights cannot be had here; these have the real names, file layouts and quirks (a
HubertForCTC `.bin` with its `hubert.` prefix, CTC head and weight-norm `weight_g`/`weight_v`
names; numpy ints in pickles; fp16 latents), at a fraction of the width."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
PORTRAIT = ROOT / "data/avatars/portrait_astronaut/full_imgs/00000000.png"
# Where the astronaut's face is in the 512x512 portrait (x1, y1, x2, y2), for boxes and crops.
FACE_BOX = (176, 120, 336, 280)


def _legacy_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weight-norm parameters under their pre-parametrization names, as old files have them."""
    new = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}
    out = {}
    for key, value in state.items():
        for old, legacy in new.items():
            key = key.replace(old, legacy)
        out[key] = value
    return out


def write_hubert_folder(folder: Path, seed: int = 0) -> Path:
    """models/hubert-large-ls960-ft as users have it, with a 1-layer HuBERT of width 1024."""
    from safetensors.torch import load_file
    from transformers import HubertConfig, HubertForCTC

    torch.manual_seed(seed)
    config = HubertConfig(
        hidden_size=1024, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
        conv_dim=(16,) * 7, feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True,
        feat_proj_layer_norm=True, num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16, vocab_size=32,
    )
    HubertForCTC(config).save_pretrained(folder)
    weights = folder / "model.safetensors"
    torch.save(_legacy_names(load_file(weights)), folder / "pytorch_model.bin")
    weights.unlink()
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": True, "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1,
        "padding_side": "right", "padding_value": 0, "return_attention_mask": True, "sampling_rate": 16000,
    }))
    return folder


def portrait_frames(n: int) -> list[np.ndarray]:
    frame = cv2.imread(str(PORTRAIT))
    return [frame.copy() for _ in range(n)]


def write_ultralight_avatar(folder: Path, n_frames: int = 4, seed: int = 0) -> Path:
    """data/avatars/<id>/ as upstream's ultralight genavatar writes it, with a random network."""
    from ultralight.checkpoint import save_unet
    from ultralight.random_init import random_ultralight

    (folder / "full_imgs").mkdir(parents=True)
    (folder / "face_imgs").mkdir()
    x1, y1, x2, y2 = FACE_BOX
    for i, frame in enumerate(portrait_frames(n_frames)):
        cv2.imwrite(str(folder / "full_imgs" / f"{i:08d}.png"), frame)
        cv2.imwrite(str(folder / "face_imgs" / f"{i:08d}.png"), cv2.resize(frame[y1:y2, x1:x2], (168, 168)))
    with (folder / "coords.pkl").open("wb") as f:
        pickle.dump([(np.int64(x1), np.int64(y1), np.int32(x2), np.int32(y2))] * n_frames, f)
    save_unet(random_ultralight(seed), folder / "ultralight.pth")
    return folder


MUSE_WIDTHS = [32, 64, 128, 128]  # the real files' key names at a fraction of the width
# The VAE decodes 256x256 pictures, which at those widths takes 0.3 s a frame here: a quarter
# of them (and 8 groups per norm) gives the same 248 names at a sixteenth of the cost.
VAE_WIDTHS = [8, 16, 32, 32]


def write_whisper_folder(folder: Path, seed: int = 0) -> Path:
    """models/whisper as users have it: a WhisperForConditionalGeneration .bin ("model."
    prefix) of whisper-tiny's width and depth with a small feed-forward."""
    from safetensors.torch import load_file
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    torch.manual_seed(seed)
    config = WhisperConfig(
        d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=64, decoder_layers=1,
        decoder_attention_heads=6, decoder_ffn_dim=64, num_mel_bins=80, max_source_positions=1500,
        max_target_positions=32, vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=1,
    )
    WhisperForConditionalGeneration(config).save_pretrained(folder)
    weights = folder / "model.safetensors"
    state = load_file(weights)
    assert all(k.startswith("model.") or k.startswith("proj_out") for k in state)
    torch.save(state, folder / "pytorch_model.bin")
    weights.unlink()
    WhisperFeatureExtractor().save_pretrained(folder)
    return folder


def write_musetalk_models(models: Path, seed: int = 0) -> Path:
    """models/musetalkV15 (musetalk.json + plain unet.pth) and models/sd-vae (a .bin with the
    legacy mid-block attention names and a config without scaling_factor)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import load_file

    compat = ROOT.parent / "shared" / "compat"
    unet_config = json.loads((compat / "musetalk_v15_unet_config.json").read_text()) if compat.is_dir() else None
    unet_config = unet_config or MUSETALK_JSON
    torch.manual_seed(seed)
    (models / "musetalkV15").mkdir(parents=True)
    small = dict(unet_config, block_out_channels=MUSE_WIDTHS)
    (models / "musetalkV15" / "musetalk.json").write_text(json.dumps(small, indent=2))
    unet = UNet2DConditionModel(**{k: v for k, v in small.items() if not k.startswith("_")})
    torch.save(unet.state_dict(), models / "musetalkV15" / "unet.pth")
    vae = AutoencoderKL(**{k: v for k, v in VAE_CONFIG.items() if not k.startswith("_")})
    vae.save_pretrained(models / "sd-vae")
    weights = models / "sd-vae" / "diffusion_pytorch_model.safetensors"
    legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    state = {}
    for key, value in load_file(weights).items():
        if ".mid_block.attentions.0." in key:
            for new, old in legacy.items():
                key = key.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
        state[key] = value
    torch.save(state, models / "sd-vae" / "diffusion_pytorch_model.bin")
    weights.unlink()
    config = json.loads((models / "sd-vae" / "config.json").read_text())
    config.pop("scaling_factor", None)
    config["_diffusers_version"] = "0.4.2"
    (models / "sd-vae" / "config.json").write_text(json.dumps(config))
    return models


# musetalk.json as upstream ships it (used when ../shared/compat is not beside the checkout).
MUSETALK_JSON = {
    "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.6.0.dev0", "act_fn": "silu",
    "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False,
    "cross_attention_dim": 384,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 8, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
VAE_CONFIG = {
    "act_fn": "silu", "block_out_channels": VAE_WIDTHS, "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 8, "out_channels": 3,
    "sample_size": 256, "up_block_types": ["UpDecoderBlock2D"] * 4,
}
# The astronaut's face box for MuseTalk; the last frame of an avatar is the photo moved up by
# SHIFT rows, so that its mask box (upstream's rule: 1.5x the face, centred) leaves the frame.
MUSE_BOX = (176, 120, 336, 300)
SHIFT = 100


def mask_box(box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = box
    xc, yc, s = (x1 + x2) // 2, (y1 + y2) // 2, int(max(x2 - x1, y2 - y1) // 2 * 1.5)
    return xc - s, yc - s, xc + s, yc + s


def write_musetalk_avatar(folder: Path, models: Path, n_frames: int = 4, no_face: int | None = 1) -> Path:
    """data/avatars/<id>/ as upstream's musetalk genavatar writes it: numpy ints in the boxes,
    fp16 latents in a list, frame `no_face` with the placeholder box and no latents, and the
    last frame's mask box past the frame's top edge."""
    from diffusers import AutoencoderKL

    from musetalk.latents import crop_latents, face_crop

    vae = AutoencoderKL.from_pretrained(models / "sd-vae", local_files_only=True).eval()
    (folder / "full_imgs").mkdir(parents=True)
    (folder / "mask").mkdir()
    coords, latents, mask_coords = [], [], []
    gen = torch.Generator().manual_seed(0)
    for i, frame in enumerate(portrait_frames(n_frames)):
        box = MUSE_BOX
        if i == n_frames - 1:
            frame = np.concatenate([frame[SHIFT:], np.zeros_like(frame[:SHIFT])])
            box = (box[0], box[1] - SHIFT, box[2], box[3] - SHIFT)
        cv2.imwrite(str(folder / "full_imgs" / f"{i:08d}.png"), frame)
        xs, ys, xe, ye = mask_box(box)
        x1, y1, x2, y2 = box
        mask = np.zeros((ye - ys, xe - xs), np.uint8)
        mask[(y1 + y2) // 2 - ys : y2 - ys, x1 - xs : x2 - xs] = 255  # the lower face
        cv2.imwrite(str(folder / "mask" / f"{i:08d}.png"), cv2.GaussianBlur(mask, (25, 25), 0))
        mask_coords.append([np.int64(v) for v in (xs, ys, xe, ye)])
        if i == no_face:
            coords.append((0.0, 0.0, 0.0, 0.0))
            continue
        coords.append([np.int32(v) for v in box])
        latents.append(crop_latents(vae, face_crop(frame, box), gen).half())
    with (folder / "coords.pkl").open("wb") as f:
        pickle.dump(coords, f)
    with (folder / "mask_coords.pkl").open("wb") as f:
        pickle.dump(mask_coords, f)
    torch.save(latents, folder / "latents.pt")
    return folder
