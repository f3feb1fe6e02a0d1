"""Whisper audio features, as MuseTalk 1.5's checkpoints were trained on them.

The user's `models/whisper/` (the Hugging Face folder of openai/whisper-tiny) turns the
session's audio window into 5 hidden states per 20 ms: the encoder's input after its two
convolutions and position embedding, the outputs of its layers 0-2, and the final layer
norm, [1500, 5, 384]. As upstream, the window is zero-padded to whisper's 30 s and the log-mel
is clipped to 8 below its maximum over all of it, padding included: attention spans the
padding, so a shorter input would give other features than the checkpoints were trained on.
Video frame i of a batch gets encoder frames [left + 2i, left + 2i + 10) (its own audio and
160 ms ahead, LiveTalking's current alignment), flattened time-major to [50, 384]. Indices
past the encoded frames repeat the edge (never reached with the default 10/10 context).

`--fast_whisper` (opt-in) encodes only the window's own mel frames: about 20x less work per
batch, but attention no longer sees the padding, so the features differ from upstream's
(bench/model_speed.py measures by how much).
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

FOLDER = "whisper"
WHAT = ("the Hugging Face folder of openai/whisper-tiny (config.json, preprocessor_config.json, "
        "pytorch_model.bin or model.safetensors)")
FRAMES_PER_VIDEO_FRAME = 10  # encoder frames (20 ms each) in one video frame's window
HIDDEN_STATES = 5  # the encoder's input and its 4 layers' outputs (the last after layer norm)
WIDTH = 384  # whisper-tiny's d_model, the UNet's cross-attention width
TOKENS = FRAMES_PER_VIDEO_FRAME * HIDDEN_STATES  # 50
MEL_FRAMES_PER_ENCODER_FRAME = 2  # the second convolution's stride
ENCODER_HOP = 320  # samples per encoder frame (20 ms)


class Whisper:
    """The whisper-tiny encoder and its feature extractor, loaded once per server."""

    def __init__(self, encoder: torch.nn.Module, extractor, device: torch.device, dtype: torch.dtype,
                 fast: bool = False) -> None:
        self.encoder = encoder
        self.extractor = extractor
        self.fast = fast
        self.device = device
        self.dtype = dtype
        self._lock = threading.Lock()  # one pass at a time: sessions share the weights

    @classmethod
    def load(cls, models_dir: Path, device: torch.device | None = None, dtype: torch.dtype | None = None,
             fast: bool = False) -> Whisper:
        from transformers import WhisperFeatureExtractor, WhisperModel
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # its load report goes to stdout; ours names the file
        folder = models_dir / FOLDER
        started = time.perf_counter()
        model = load_hf_model(WhisperModel, folder, WHAT)  # drops the file's "model." prefix
        if model.config.d_model != WIDTH:
            raise ValueError(f"{folder}: d_model {model.config.d_model}, MuseTalk needs {WIDTH} (whisper-tiny)")
        if model.config.encoder_layers != HIDDEN_STATES - 1:
            raise ValueError(f"{folder}: {model.config.encoder_layers} encoder layers, MuseTalk needs "
                             f"{HIDDEN_STATES - 1} (whisper-tiny)")
        try:
            extractor = WhisperFeatureExtractor.from_pretrained(folder, local_files_only=True)
        except OSError:
            raise FileNotFoundError(f"{folder} has no preprocessor_config.json: put {WHAT} there") from None
        device = device or best_device()
        dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
        encoder = model.encoder.eval().requires_grad_(False).to(device=device, dtype=dtype)
        log.info("whisper %s loaded on %s in %.1fs", folder, device, time.perf_counter() - started)
        return cls(encoder, extractor, device, dtype, fast)

    def hidden_states(self, samples: np.ndarray, fast: bool | None = None) -> np.ndarray:
        """[frames, 5, 384] float32 for up to 30 s of 16 kHz mono samples: whisper's 1500
        frames, or with `fast` only the frames of the samples themselves."""
        fast = self.fast if fast is None else fast
        mel = self.extractor(samples, sampling_rate=16000, return_tensors="pt").input_features
        if fast:  # the same log-mel (clipped over the padded 30 s), encoded only where the audio is
            frames = -(-len(samples) // ENCODER_HOP)
            mel = mel[..., : MEL_FRAMES_PER_ENCODER_FRAME * frames]
        with self._lock, torch.inference_mode():
            states = self._encode(mel.to(self.device, self.dtype))
        return states.float().cpu().numpy()

    def _encode(self, mel: torch.Tensor) -> torch.Tensor:
        """The encoder's pass written out, so that it can run on fewer than 3000 mel frames
        (transformers refuses them): convolutions, positions, the layers, the final norm."""
        enc = self.encoder
        x = torch.nn.functional.gelu(enc.conv1(mel))
        x = torch.nn.functional.gelu(enc.conv2(x)).permute(0, 2, 1)
        x = x + enc.embed_positions.weight[: x.shape[1]]
        states = [x]
        for layer in enc.layers:
            x = layer(x, None)
            x = x[0] if isinstance(x, tuple) else x
            states.append(x)
        states[-1] = enc.layer_norm(x)  # the last state is the normed output, as upstream's
        return torch.stack(states, dim=2)[0]


def frame_windows(states: np.ndarray, left: int, n_frames: int) -> np.ndarray:
    """[n_frames, 50, 384]: for frame i the encoder frames [left + 2i, left + 2i + 10), each
    with its 5 hidden states (token j = frame left + 2i + j // 5, state j % 5)."""
    starts = left + 2 * np.arange(n_frames)
    rows = np.clip(starts[:, None] + np.arange(FRAMES_PER_VIDEO_FRAME)[None, :], 0, len(states) - 1)
    return states[rows].reshape(n_frames, TOKENS, states.shape[-1])


class MuseASR(BaseASR):
    def __init__(self, whisper: Whisper, left: int = 10, right: int = 10) -> None:
        super().__init__(left=left, right=right)
        self.whisper = whisper

    def features(self, chunks: np.ndarray, left: int, right: int, n_frames: int) -> np.ndarray:
        return frame_windows(self.whisper.hidden_states(chunks.reshape(-1)), left, n_frames)
