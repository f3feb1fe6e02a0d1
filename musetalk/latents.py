"""The latents an avatar frame's face crop gives MuseTalk: the VAE's encoding of the crop with
its lower half blanked (what the UNet redraws) and of the whole crop (the reference)."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from musetalk.render import FACE
from musetalk.weights import scaling_factor


def face_crop(frame: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The 256x256 crop of box (x1, y1, x2, y2), resized as upstream does (Lanczos)."""
    x1, y1, x2, y2 = box
    return cv2.resize(frame[y1:y2, x1:x2], (FACE, FACE), interpolation=cv2.INTER_LANCZOS4)


def crop_latents(vae: torch.nn.Module, crop: np.ndarray, generator: torch.Generator | None = None) -> torch.Tensor:
    """[1, 8, 32, 32]: masked then reference latents of a 256x256 BGR crop, sampled from the
    VAE's posterior and scaled, as upstream stores them."""
    rgb = torch.from_numpy(np.ascontiguousarray(crop[..., ::-1])).float().permute(2, 0, 1) / 255.0
    masked = rgb.clone()
    masked[:, FACE // 2 :, :] = 0.0
    param = next(vae.parameters())
    batch = torch.stack([masked, rgb]).to(param.device, param.dtype) * 2.0 - 1.0  # Normalize(0.5, 0.5)
    with torch.inference_mode():
        dist = vae.encode(batch).latent_dist
        noise = torch.randn(dist.mean.shape, generator=generator, dtype=dist.mean.dtype).to(dist.mean.device)
        latents = (dist.mean + dist.std * noise) * scaling_factor(vae)
    return torch.cat([latents[0], latents[1]], dim=0)[None].float().cpu()
