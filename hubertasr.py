"""HuBERT audio features, as Ultralight's checkpoints were trained on them.

The user's `models/hubert-large-ls960-ft/` (the Hugging Face folder of
facebook/hubert-large-ls960-ft, a HubertForCTC file: its `hubert.` prefix, CTC head and
weight-norm names are fine) turns the session's audio window into one 1024-vector per 20 ms
(row k covers samples [320k, 320k + 400)). Video frame i of a batch gets the 16 rows centred
on its own audio, [left + 2i - 8, left + 2i + 8), each row reshaped to 32x32: [16, 32, 32].
Rows outside the window repeat its edge (never reached with the default 10/10 context).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
import torch

from baseasr import BaseASR
from checkpoints import best_device, load_hf_model

log = logging.getLogger(__name__)

FOLDER = "hubert-large-ls960-ft"
WHAT = ("the Hugging Face folder of facebook/hubert-large-ls960-ft (config.json, preprocessor_config.json, "
        "pytorch_model.bin or model.safetensors)")
ROWS = 16  # HuBERT rows per video frame: 8 before its audio starts, 8 from it
HIDDEN = 1024
NORM_EPS = 1e-7  # the feature extractor's zero-mean unit-variance normalisation


class Hubert:
    """HuBERT loaded once per server, shared by every session (inference only)."""

    def __init__(self, model: torch.nn.Module, normalize: bool, device: torch.device) -> None:
        self.model = model
        self.normalize = normalize
        self.device = device
        # One forward at a time: sessions share the weights, and two interleaved passes on
        # two cores are slower than two in turn.
        self._lock = threading.Lock()

    @classmethod
    def load(cls, models_dir: Path, device: torch.device | None = None) -> Hubert:
        from transformers import HubertModel
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # its load report goes to stdout; ours names the file
        folder = models_dir / FOLDER
        started = time.perf_counter()
        model = load_hf_model(HubertModel, folder, WHAT)
        if model.config.hidden_size != HIDDEN:
            raise ValueError(f"{folder}: hidden size {model.config.hidden_size}, Ultralight needs {HIDDEN} "
                             "(hubert-large)")
        device = device or best_device()
        model.eval().requires_grad_(False).to(device)
        normalize = _reads_normalize(folder)
        log.info("HuBERT %s loaded on %s in %.1fs", folder, device, time.perf_counter() - started)
        return cls(model, normalize, device)

    def hidden_states(self, samples: np.ndarray) -> np.ndarray:
        """[T, 1024] float32 for 16 kHz mono samples, T = (len - 80) // 320."""
        x = samples.astype(np.float64)
        if self.normalize:
            x = (x - x.mean()) / np.sqrt(x.var() + NORM_EPS)
        tensor = torch.from_numpy(x.astype(np.float32))[None].to(self.device)
        with self._lock, torch.inference_mode():
            out = self.model(tensor).last_hidden_state[0]
        return out.float().cpu().numpy()


def _reads_normalize(folder: Path) -> bool:
    import json

    config = folder / "preprocessor_config.json"
    if not config.is_file():
        return True  # hubert-large-ls960-ft's own setting
    try:
        return bool(json.loads(config.read_text()).get("do_normalize", True))
    except (ValueError, OSError) as exc:
        raise ValueError(f"cannot read {config}: {exc}") from None


def frame_windows(hidden: np.ndarray, left: int, n_frames: int) -> np.ndarray:
    """[n_frames, 16, 32, 32]: for frame i the rows [left + 2i - 8, left + 2i + 8), clamped."""
    centers = left + 2 * np.arange(n_frames)
    rows = np.clip(centers[:, None] + np.arange(-ROWS // 2, ROWS // 2)[None, :], 0, len(hidden) - 1)
    return hidden[rows].reshape(n_frames, ROWS, 32, 32)


class HubertASR(BaseASR):
    def __init__(self, hubert: Hubert, left: int = 10, right: int = 10) -> None:
        super().__init__(left=left, right=right)
        self.hubert = hubert

    def features(self, chunks: np.ndarray, left: int, right: int, n_frames: int) -> np.ndarray:
        return frame_windows(self.hubert.hidden_states(chunks.reshape(-1)), left, n_frames)
