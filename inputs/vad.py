"""Voice activity detection with Silero VAD, the ONNX model shipped inside the `silero-vad`
wheel, run with onnxruntime directly (numpy in, numpy out: no torch on the audio path).

The model scores 32 ms windows (512 samples at 16 kHz) and is recurrent: each stream keeps its
own state and the last 64 samples of the window before, which the model reads as context.
One inference session is loaded per process and shared by every stream (onnxruntime's run
is safe to call from several threads).
"""

from __future__ import annotations

import threading
from importlib import resources

import numpy as np

SAMPLE_RATE = 16000
WINDOW = 512  # samples the model scores at once at 16 kHz (32 ms)
WINDOW_SECONDS = WINDOW / SAMPLE_RATE
_CONTEXT = 64  # samples of the previous window prepended to each one
_STATE_SHAPE = (2, 1, 128)

_session = None
_session_lock = threading.Lock()


class VadUnavailable(Exception):
    """The Silero model could not be loaded (the package is missing or broken)."""


def _shared_session():
    global _session
    with _session_lock:
        if _session is None:
            try:
                import onnxruntime

                model = resources.files("silero_vad") / "data" / "silero_vad.onnx"
                options = onnxruntime.SessionOptions()
                # A window costs about 0.25 ms on one thread; more threads only add wake-ups.
                options.intra_op_num_threads = 1
                options.inter_op_num_threads = 1
                _session = onnxruntime.InferenceSession(
                    model.read_bytes(), options, providers=["CPUExecutionProvider"]
                )
            except Exception as exc:  # ImportError, a missing file, a corrupt model
                raise VadUnavailable(f"Silero VAD could not be loaded ({exc}); run ./setup.sh") from None
        return _session


def load() -> None:
    """Load the shared model now (at server start) rather than at the first voice."""
    _shared_session()


class VoiceActivity:
    """Speech probability of one audio stream, window by window."""

    def __init__(self) -> None:
        self._session = _shared_session()
        self._rate = np.array(SAMPLE_RATE, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._context = np.zeros(_CONTEXT, dtype=np.float32)

    def probability(self, window: np.ndarray) -> float:
        """P(speech) of the next WINDOW float32 samples of the stream."""
        if window.shape != (WINDOW,):
            raise ValueError(f"a VAD window is {WINDOW} samples, got {window.shape}")
        x = np.concatenate([self._context, window.astype(np.float32, copy=False)])[None, :]
        out, self._state = self._session.run(None, {"input": x, "state": self._state, "sr": self._rate})
        self._context = x[0, -_CONTEXT:]
        return float(out[0, 0])
