"""MuseTalk's image side: one UNet pass at t=0 on the avatar's latents and the audio, the VAE
decode, and the mouth blended back into the frame through the avatar's mask."""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
import torch

from avatar_files import paste_clipped
from museasr import TOKENS, WIDTH

FACE = 256  # the VAE's crop size


@lru_cache(maxsize=1)
def positional_encoding() -> np.ndarray:
    """The standard sinusoid for the 50 audio tokens (MuseTalk adds it; it has no weights):
    pe[pos, 2k] = sin(pos / 10000^(2k/384)), pe[pos, 2k+1] = cos(...)."""
    pos = np.arange(TOKENS, dtype=np.float64)[:, None]
    freq = np.exp(-np.log(10000.0) * np.arange(0, WIDTH, 2, dtype=np.float64) / WIDTH)
    pe = np.zeros((TOKENS, WIDTH), dtype=np.float64)
    pe[:, 0::2] = np.sin(pos * freq)
    pe[:, 1::2] = np.cos(pos * freq)
    pe = pe.astype(np.float32)
    pe.setflags(write=False)
    return pe


class MuseTalkNet:
    """UNet and VAE on one device in one dtype, shared read-only by every session."""

    def __init__(self, unet: torch.nn.Module, vae: torch.nn.Module, scale: float,
                 device: torch.device, dtype: torch.dtype) -> None:
        self.unet = unet.eval().requires_grad_(False).to(device=device, dtype=dtype)
        self.vae = vae.eval().requires_grad_(False).to(device=device, dtype=dtype)
        self.scale = scale
        self.device = device
        self.dtype = dtype
        self._timestep = torch.tensor([0], device=device)

    def faces(self, latents: np.ndarray, audio: np.ndarray) -> np.ndarray:
        """[n, 256, 256, 3] BGR uint8 mouths from [n, 8, 32, 32] latents (masked, reference)
        and [n, 50, 384] whisper features."""
        with torch.inference_mode():
            lat = torch.from_numpy(latents).to(self.device, self.dtype)
            cond = torch.from_numpy(audio + positional_encoding()).to(self.device, self.dtype)
            pred = self.unet(lat, self._timestep, encoder_hidden_states=cond).sample
            image = self.vae.decode(pred / self.scale).sample
            image = (image.float() / 2 + 0.5).clamp(0, 1)
            out = (image * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return np.ascontiguousarray(out[..., ::-1])  # RGB -> BGR


def blend_face(frame: np.ndarray, face: np.ndarray, box: tuple[int, int, int, int], mask: np.ndarray,
               mask_box: tuple[int, int, int, int]) -> np.ndarray:
    """A copy of `frame` with `face` (256x256) resized into `box` (x1, y1, x2, y2), blended
    through `mask` (gray uint8, the size of `mask_box` (x1, y1, x2, y2)). Boxes may reach past
    the frame: only the part inside is drawn (upstream drops such a frame)."""
    out = frame.copy()
    x1, y1, x2, y2 = box
    xs, ys, xe, ye = mask_box
    h, w = frame.shape[:2]
    cx1, cy1, cx2, cy2 = max(xs, 0), max(ys, 0), min(xe, w), min(ye, h)
    if x2 <= x1 or y2 <= y1 or cx2 <= cx1 or cy2 <= cy1:
        return out
    original = frame[cy1:cy2, cx1:cx2]
    composed = original.copy()
    paste_clipped(composed, cv2.resize(face, (x2 - x1, y2 - y1)), x1 - cx1, y1 - cy1)
    m = mask[cy1 - ys : cy2 - ys, cx1 - xs : cx2 - xs].astype(np.float32)[..., None] / 255.0
    blended = m * composed.astype(np.float32) + (1.0 - m) * original.astype(np.float32)
    out[cy1:cy2, cx1:cx2] = (blended + 0.5).astype(np.uint8)
    return out
