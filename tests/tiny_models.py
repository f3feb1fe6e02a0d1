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
