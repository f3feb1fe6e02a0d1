"""One batch through Wav2Lip with numpy in and out, in the input layout the weights were trained on."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from wav2lip.model import IMG_SIZE, MEL_BANDS, MEL_STEPS


def model_placement(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where the model's weights live and in which precision (inputs must follow)."""
    p = next(model.parameters())
    return p.device, p.dtype


def make_inputs(model: nn.Module, mel: np.ndarray, faces: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensors for `model` from mel windows [B,80,16] (or [B,1,80,16]) and face crops [B,256,256,3] BGR uint8.

    The face input is the crop with its lower half zeroed (the mouth to be drawn) stacked on
    channels with the unmasked crop (the reference for identity and pose), scaled to 0..1.
    """
    mel = np.asarray(mel, dtype=np.float32).reshape(-1, 1, MEL_BANDS, MEL_STEPS)
    faces = np.asarray(faces)
    if faces.shape[1:] != (IMG_SIZE, IMG_SIZE, 3) or len(faces) != len(mel):
        raise ValueError(f"faces must be [{len(mel)},{IMG_SIZE},{IMG_SIZE},3], got {list(faces.shape)}")
    device, dtype = model_placement(model)
    ref = torch.from_numpy(np.ascontiguousarray(faces)).to(device)
    masked = ref.clone()
    masked[:, IMG_SIZE // 2 :] = 0
    # NHWC uint8 -> NCHW view with channels_last strides: no copy, and the layout oneDNN wants.
    # Scaled in fp32 and only then cast, so a bf16/fp16 model sees the nearest value to x/255.
    face = torch.cat((masked, ref), dim=3).permute(0, 3, 1, 2).float().div_(255.0).to(dtype)
    mel_t = torch.from_numpy(mel).to(device=device, dtype=dtype)
    if device.type == "cpu":
        face = face.contiguous(memory_format=torch.channels_last)
        mel_t = mel_t.contiguous(memory_format=torch.channels_last)
    return mel_t, face


def predict(model: nn.Module, mel: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Mouths for a batch: [B,256,256,3] BGR uint8 from mel windows and face crops (see make_inputs)."""
    mel_t, face = make_inputs(model, mel, faces)
    with torch.inference_mode():
        out = model(mel_t, face)
        out = out.float().mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
        return out.permute(0, 2, 3, 1).contiguous().cpu().numpy()
