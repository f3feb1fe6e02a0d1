"""Loading users' MuseTalk 1.5 files: `models/musetalkV15/{musetalk.json, unet.pth}` (a plain
diffusers UNet2DConditionModel state dict, 686 names) and `models/sd-vae/` (the Hugging Face
folder of stabilityai/sd-vae-ft-mse, old or new attention names)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from checkpoints import check_fit, load_data, load_hf_model, state_dict_of

log = logging.getLogger(__name__)

UNET_DIR = "musetalkV15"
VAE_DIR = "sd-vae"
VAE_WHAT = ("the Hugging Face folder of stabilityai/sd-vae-ft-mse (config.json, "
            "diffusion_pytorch_model.bin or .safetensors)")
UNET_HINT = "MuseTalk 1.5's musetalkV15/unet.pth"
SCALING_FACTOR = 0.18215  # sd-vae-ft-mse's config has none; diffusers' default


def _quiet_diffusers() -> None:
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # its load chatter; our errors name the files


def load_unet(models_dir: Path) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    _quiet_diffusers()
    folder = models_dir / UNET_DIR
    config_path, weights = folder / "musetalk.json", folder / "unet.pth"
    for path in (config_path, weights):
        if not path.is_file():
            raise FileNotFoundError(f"MuseTalk file missing: {path}; copy upstream's models/{UNET_DIR}/ there "
                                    "(musetalk.json and unet.pth)")
    try:
        config = json.loads(config_path.read_text())
    except (ValueError, OSError) as exc:
        raise ValueError(f"cannot read {config_path}: {exc}") from None
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    try:
        unet = UNet2DConditionModel(**config)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{config_path} is not a UNet2DConditionModel config: {exc}") from None
    state = state_dict_of(load_data(weights, UNET_HINT), weights)
    check_fit(unet, state, str(weights), f"the UNet of {config_path.name} (is it {UNET_HINT}?)")
    unet.load_state_dict(state)
    return unet


def load_vae(models_dir: Path) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    _quiet_diffusers()
    return load_hf_model(AutoencoderKL, models_dir / VAE_DIR, VAE_WHAT)


def scaling_factor(vae: torch.nn.Module) -> float:
    return float(getattr(vae.config, "scaling_factor", None) or SCALING_FACTOR)
