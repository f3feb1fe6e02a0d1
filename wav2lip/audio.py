"""Wav2Lip's mel spectrogram (the recipe its weights were trained on), in numpy.

16 kHz float audio -> pre-emphasis 0.97 -> |STFT| (n_fft 800, hop 200, Hann 800, centred) ->
80 Slaney mel bands 55..7600 Hz -> 20*log10(max(1e-5, x)) - 20 dB -> scaled to [-4, 4].
That is 80 mel columns per second; video frame i (25 fps) reads columns [int(80*i/25), +16).

librosa is not a dependency; the STFT and the filterbank below reproduce librosa's defaults
for this recipe (librosa.stft center=True, librosa.filters.mel htk=False norm="slaney").
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.signal import lfilter

SAMPLE_RATE = 16000
N_FFT = 800
HOP = 200
WIN = 800
N_MELS = 80
FMIN = 55.0
FMAX = 7600.0
PREEMPHASIS = 0.97
MIN_LEVEL_DB = -100.0
REF_LEVEL_DB = 20.0
MAX_ABS = 4.0
MEL_PER_SECOND = SAMPLE_RATE / HOP  # 80
MEL_STEPS = 16  # columns per video frame window (200 ms)

# Centre padding: librosa >= 0.10 pads with zeros ("constant"), older releases reflected the
# signal. Upstream LiveTalking installs a current librosa, so zeros; this touches only the first
# and last two columns of a window, which lie in the ASR's left/right context anyway.
PAD_MODE = "constant"

# Slaney's mel scale: linear below 1 kHz, logarithmic above.
_F_SP = 200.0 / 3  # Hz per mel in the linear part
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP  # 15
_LOGSTEP = np.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / _F_SP
    log = _MIN_LOG_MEL + np.log(np.maximum(hz, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return np.where(hz >= _MIN_LOG_HZ, log, linear)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * _F_SP
    log = _MIN_LOG_HZ * np.exp(_LOGSTEP * (np.maximum(mel, _MIN_LOG_MEL) - _MIN_LOG_MEL))
    return np.where(mel >= _MIN_LOG_MEL, log, linear)


def mel_band_edges(n_mels: int = N_MELS, fmin: float = FMIN, fmax: float = FMAX) -> np.ndarray:
    """n_mels + 2 frequencies (Hz), equally spaced in mel: band i rises from edge i to i+1, falls to i+2."""
    return mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))


@lru_cache(maxsize=4)
def mel_filterbank(
    sr: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS, fmin: float = FMIN, fmax: float = FMAX
) -> np.ndarray:
    """Slaney mel filterbank [n_mels, 1 + n_fft//2]: triangles of area 1 on the Hz axis."""
    fft_hz = np.linspace(0.0, sr / 2, 1 + n_fft // 2)
    edges = mel_band_edges(n_mels, fmin, fmax)
    lo, centre, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (fft_hz - lo) / (centre - lo)
    falling = (hi - fft_hz) / (hi - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    # Height 2/(hi - lo) gives every triangle unit area, so wide high bands are not louder.
    weights *= 2.0 / (hi - lo)
    weights.setflags(write=False)
    return weights


def _hann(n: int) -> np.ndarray:
    # Periodic Hann (scipy get_window("hann", n, fftbins=True)), as librosa uses for STFT.
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def stft_magnitude(y: np.ndarray, pad_mode: str = PAD_MODE) -> np.ndarray:
    """|STFT| [1 + N_FFT//2, 1 + len(y)//HOP], frames centred on multiples of HOP."""
    y = np.pad(np.asarray(y, dtype=np.float64), N_FFT // 2, mode=pad_mode)
    n_frames = 1 + (len(y) - N_FFT) // HOP
    frames = np.lib.stride_tricks.sliding_window_view(y, N_FFT)[::HOP][:n_frames]
    win = np.zeros(N_FFT)
    start = (N_FFT - WIN) // 2  # a shorter window sits in the middle of the frame
    win[start : start + WIN] = _hann(WIN)
    return np.abs(np.fft.rfft(frames * win, axis=1)).T


def melspectrogram(wav: np.ndarray, pad_mode: str = PAD_MODE) -> np.ndarray:
    """Normalised log-mel [80, 1 + len(wav)//200] float32 in [-4, 4] of 16 kHz float audio."""
    wav = np.asarray(wav, dtype=np.float64).reshape(-1)
    if wav.size == 0:
        return np.zeros((N_MELS, 0), dtype=np.float32)
    emphasised = lfilter([1.0, -PREEMPHASIS], [1.0], wav)
    mel = mel_filterbank() @ stft_magnitude(emphasised, pad_mode)
    db = 20.0 * np.log10(np.maximum(10 ** (MIN_LEVEL_DB / 20), mel)) - REF_LEVEL_DB
    norm = 2 * MAX_ABS * ((db - MIN_LEVEL_DB) / -MIN_LEVEL_DB) - MAX_ABS
    return np.clip(norm, -MAX_ABS, MAX_ABS).astype(np.float32)


def mel_chunks(mel: np.ndarray, n_frames: int, fps: int = 25, start: float = 0.0) -> np.ndarray:
    """Windows [n_frames, 1, 80, 16]: video frame i reads columns [int(start + 80*i/fps), +16).

    `start` is a column offset (e.g. the ASR's left context: 10 audio frames = 16 columns).
    A window that runs past the end repeats the last column, so the last frames still see the
    end of the speech rather than a shifted window.
    """
    mel = np.asarray(mel, dtype=np.float32)
    if mel.ndim != 2 or mel.shape[0] != N_MELS or mel.shape[1] == 0:
        raise ValueError(f"mel must be [{N_MELS}, T>0], got {list(mel.shape)}")
    starts = (start + MEL_PER_SECOND * np.arange(n_frames) / fps).astype(int)
    cols = np.minimum(starts[:, None] + np.arange(MEL_STEPS)[None, :], mel.shape[1] - 1)
    return np.ascontiguousarray(mel[:, cols].transpose(1, 0, 2)[:, None])
