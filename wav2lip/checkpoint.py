"""Loading the public wav2lip256.pth and preparing the network for fast inference.

    model = load_model("models/wav2lip.pth")          # fused, eval, on the best device
    with torch.inference_mode():
        out = model(mel, face)                         # see wav2lip.infer.predict for numpy in/out

The upstream file is a `torch.save` dict whose "state_dict" maps names (often prefixed
"module." by DataParallel) to tensors; a bare state dict is accepted too.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

import checkpoints
from checkpoints import CheckpointMismatch, best_device, cpu_has_bf16, fuse_batchnorm, load_data, state_dict_of
from wav2lip import onednn as onednn_kernels
from wav2lip.model import IMG_SIZE, MEL_BANDS, MEL_STEPS, Wav2Lip256

log = logging.getLogger(__name__)

MODULE_PREFIX = "module."
__all__ = [
    "CheckpointMismatch", "best_device", "cpu_has_bf16", "fuse_batchnorm", "load_model", "prepare", "read_state_dict",
]


def load_model(path: str | Path, device: str | torch.device | None = None, cpu_bf16: bool = False) -> nn.Module:
    """Wav2Lip256 with the weights of `path`, BatchNorm folded, in eval mode, ready on `device`.

    device None means the best one (cuda if available, else cpu); cpu_bf16: see prepare.
    Raises FileNotFoundError for a missing file, CheckpointMismatch when names or shapes do not
    fit, ValueError when the file cannot be read as a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"wav2lip checkpoint not found: {path}; copy wav2lip256.pth to models/wav2lip.pth")
    state = read_state_dict(path)
    model = Wav2Lip256()
    check_fit(model, state, source=str(path))
    # strict=False only because old files lack num_batches_tracked; check_fit vetted the rest.
    model.load_state_dict(state, strict=False)
    return prepare(model, device, cpu_bf16=cpu_bf16)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The checkpoint's state dict with any "module." prefixes stripped."""
    return state_dict_of(load_data(path, "wav2lip256.pth"), path, (MODULE_PREFIX,))


def check_fit(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    checkpoints.check_fit(model, state, source, "Wav2Lip256 (is it wav2lip256.pth?)")


def save_checkpoint(model: nn.Module, path: str | Path, prefix_module: bool = False) -> None:
    """Write `model`'s weights in the upstream format {"state_dict": ...} (optionally "module."-prefixed)."""
    prefix = MODULE_PREFIX if prefix_module else ""
    state = {prefix + k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state}, Path(path))


def prepare(
    model: nn.Module, device: str | torch.device | None = None, onednn: bool = True, cpu_bf16: bool = False
) -> nn.Module:
    """Fold BatchNorm, switch to eval, and lay the weights out for `device`; returns the model.

    CUDA: fp16. CPU: channels_last, which lets oneDNN run the convolutions on NHWC data without
    reordering every activation (inputs should be channels_last too; wav2lip.infer makes them
    so); with `onednn` (and a PyTorch build that has it) each conv block then becomes one oneDNN
    call with its add and ReLU fused and its weights packed once, and batches run one frame at a
    time, which is faster there (wav2lip.onednn). CPU precision
    is fp32, or bfloat16 with `cpu_bf16` on a CPU that computes it natively (AVX512-BF16 or AMX):
    about twice as fast, at a cost of about 1/255 mean and 10/255 worst error per pixel.
    The result is for inference only.
    """
    device = torch.device(device) if device is not None else best_device()
    model = fuse_batchnorm(model.eval())
    model.requires_grad_(False)
    model.to(device)
    if device.type == "cuda":
        model.half()
        log.info("wav2lip ready on %s (fp16)", device)
        return model
    dtype = torch.float32
    if cpu_bf16 and cpu_has_bf16():
        dtype = torch.bfloat16
    elif cpu_bf16:
        # Emulated bfloat16 is several times slower than fp32: not worth its error.
        log.warning("this CPU has no native bfloat16; wav2lip stays in fp32")
    model.to(dtype=dtype, memory_format=torch.channels_last)
    kind = f"{'bf16' if dtype == torch.bfloat16 else 'fp32'} channels_last"
    if onednn and onednn_kernels.available():
        example = (
            torch.zeros(1, 1, MEL_BANDS, MEL_STEPS, dtype=dtype).contiguous(memory_format=torch.channels_last),
            torch.zeros(1, 6, IMG_SIZE, IMG_SIZE, dtype=dtype).contiguous(memory_format=torch.channels_last),
        )
        model = onednn_kernels.FrameByFrame(onednn_kernels.fuse_onednn(model, example))
        kind += " + oneDNN fused conv/add/ReLU, frame by frame"
    log.info("wav2lip ready on %s (%s)", device, kind)
    return model
