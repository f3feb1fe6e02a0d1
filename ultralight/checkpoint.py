"""Loading a user's `ultralight.pth` (upstream copies it into the avatar folder)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from checkpoints import (
    CheckpointMismatch,
    best_device,
    check_fit,
    cpu_has_bf16,
    fuse_batchnorm,
    load_data,
    state_dict_of,
)
from ultralight.model import UltralightUNet

log = logging.getLogger(__name__)

HINT = "ultralight.pth, trained with anliyuan's train.py --asr hubert"
# The audio branch's first weight tells the variant: LiveTalking's takes [16, 32, 32] HuBERT
# features; later anliyuan variants feed [32, 32, 32] and cannot run on these features.
VARIANT_KEY = "audio_model.conv1.conv.0.weight"
VARIANT_SHAPE = (32, 16, 1, 1)


def load_unet(path: Path, device: torch.device | None = None, cpu_bf16: bool = False) -> torch.nn.Module:
    if not path.is_file():
        raise FileNotFoundError(f"Ultralight checkpoint not found: {path}; copy your {HINT} there")
    state = state_dict_of(load_data(path, HINT), path)
    if VARIANT_KEY in state and tuple(state[VARIANT_KEY].shape) != VARIANT_SHAPE:
        raise CheckpointMismatch(
            f"{path} is an Ultralight variant whose audio input differs ({VARIANT_KEY} is "
            f"{list(state[VARIANT_KEY].shape)}, LiveTalking's hubert model has {list(VARIANT_SHAPE)})"
        )
    net = UltralightUNet()
    check_fit(net, state, str(path), f"the Ultralight UNet (is it {HINT}?)")
    net.load_state_dict(state, strict=False)  # strict but for num_batches_tracked, checked above
    return prepare(net, device, cpu_bf16)


def prepare(net: torch.nn.Module, device: torch.device | None = None, cpu_bf16: bool = False) -> torch.nn.Module:
    """Inference form: BatchNorm folded into the convolutions, channels_last (oneDNN's
    depthwise kernels are 1.8x faster on NHWC here); fp32 as upstream runs it, or bfloat16 on
    a CPU that computes it natively when asked."""
    device = device or best_device()
    dtype = torch.float32
    if cpu_bf16 and device.type == "cpu":
        if cpu_has_bf16():
            dtype = torch.bfloat16
        else:
            log.warning("this CPU has no native bfloat16; Ultralight stays in fp32")
    net = fuse_batchnorm(net.eval()).requires_grad_(False)
    net.to(device=device, dtype=dtype, memory_format=torch.channels_last)
    log.info("Ultralight UNet ready on %s (%s, channels_last)", device, str(dtype).replace("torch.", ""))
    return net


def save_unet(net: torch.nn.Module, path: Path) -> None:
    """Write `net` as upstream's plain state dict."""
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, path)
