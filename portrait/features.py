"""Audio → mouth features for the portrait renderer (no learned weights).

Per 20 ms chunk we measure the level of the voiced band (what opens the jaw), the balance of the
second-formant region against the first (front vowels "ee" spread the lips, back vowels "oo"
round them) and the share of hiss above 4 kHz (fricatives such as "s" show the teeth). Frames
then average their chunks with a kernel that leans on the future, because the mouth starts moving
slightly before the sound it makes.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000
CHUNK = 320  # 20 ms at 16 kHz; a 25 fps video frame owns two chunks
FEATURE_DIM = 3  # [opening 0..1, width -1..1 (oo .. ee), teeth 0..1]

FLOOR_DB = -50.0  # voiced-band level (dBFS) at which the mouth starts to open
FULL_DB = -16.0  # level at which it is fully open; loud syllables of normalised TTS reach this
OPEN_VOWEL_DB = (-5.0, 15.0)  # F1-region over low-band balance: from closed ("ee") to open ("ah")
SPREAD_DB = (-15.0, 8.0)  # F2-region over F1-region balance: centre (neutral) and span
TEETH_DB = (-6.0, 14.0)  # hiss over voice where teeth start to show, and span to full
DIP_DB = 12.0  # level below the local peak at which the syllable-contrast term reaches zero

# Chunk offsets relative to a frame's first chunk and their weights: ~100 ms of support with
# more weight ahead of the frame (anticipation) than behind it.
_OFFSETS = np.arange(-3, 6)
_WEIGHTS = np.array([0.04, 0.07, 0.11, 0.17, 0.17, 0.14, 0.12, 0.1, 0.08], dtype=np.float32)
_WEIGHTS /= _WEIGHTS.sum()

_FREQS = np.fft.rfftfreq(CHUNK, 1.0 / SAMPLE_RATE)
_WINDOW = np.hanning(CHUNK).astype(np.float32)
# Hann window loses energy; scale so a band's power is comparable to the plain mean square.
_WIN_NORM = 2.0 / float((_WINDOW**2).sum() * CHUNK)


def _band(lo: float, hi: float) -> np.ndarray:
    return ((_FREQS >= lo) & (_FREQS < hi)).astype(np.float32)


_BANDS = np.stack(
    [
        _band(150, 3500),  # voiced speech: drives the opening
        _band(150, 500),  # low band: closed vowels keep their first formant here
        _band(500, 1000),  # first formant of open vowels ("ah", "eh")
        _band(1600, 2600),  # second formant of front vowels ("ee"): lips spread
        _band(4000, 8000),  # fricative hiss ("s", "f", "sh"): teeth show
    ],
    axis=1,
)


def _local_max(x: np.ndarray, radius: int) -> np.ndarray:
    """Running maximum over ±radius samples (edges padded with the edge values)."""
    padded = np.pad(x, radius, mode="edge")
    return np.lib.stride_tricks.sliding_window_view(padded, 2 * radius + 1).max(axis=1)


def chunk_features(chunks: np.ndarray) -> np.ndarray:
    """Per-chunk [opening, width, teeth] for float32 [N, 320] audio; exactly 0 for silence."""
    x = np.asarray(chunks, dtype=np.float32)
    spec = np.fft.rfft(x * _WINDOW, axis=1)
    power = (spec.real**2 + spec.imag**2) * _WIN_NORM
    band_db = 10.0 * np.log10(power @ _BANDS + 1e-10)  # [N, 5]; silence gives -100 dB
    voice_db, low_db, f1_db, f2_db, hiss_db = band_db.T

    loud = np.clip((voice_db - FLOOR_DB) / (FULL_DB - FLOOR_DB), 0.0, 1.0)
    # Open vowels drop the jaw further than closed ones at the same loudness.
    open_vowel = np.clip((f1_db - low_db - OPEN_VOWEL_DB[0]) / OPEN_VOWEL_DB[1], 0.0, 1.0)
    # Syllable contrast: a chunk well below the loudest one within ±120 ms is a consonant or a
    # transition, and the lips close towards it even when the absolute level stays high.
    dip = np.clip(1.0 + (voice_db - _local_max(voice_db, 6)) / DIP_DB, 0.0, 1.0)
    # **1.3: quiet tails barely part the lips.
    opening = loud**1.3 * (0.45 + 0.55 * open_vowel) * (0.35 + 0.65 * dip)
    gate = np.minimum(loud * 4.0, 1.0)  # spectral shape only means something when voiced
    spread = np.clip((f2_db - np.maximum(low_db, f1_db) - SPREAD_DB[0]) / SPREAD_DB[1], -1.0, 1.0)
    # A low second formant means rounded lips, unless the vowel is open ("ah" is not an "oo").
    spread = np.where(spread < 0, spread * (1.0 - 0.6 * open_vowel), spread)
    width = spread * gate
    hiss_gate = np.clip((hiss_db - FLOOR_DB) / 10.0, 0.0, 1.0)
    teeth = np.clip((hiss_db - voice_db - TEETH_DB[0]) / TEETH_DB[1], 0.0, 1.0) * hiss_gate
    feats = np.stack([opening, width, teeth], axis=1).astype(np.float32)
    feats[(loud == 0.0) & (hiss_gate == 0.0)] = 0.0  # exact zeros, no -0.0 from the products
    return feats


def frame_features(chunks: np.ndarray, left: int, right: int, n_frames: int) -> np.ndarray:
    """Mouth features for `n_frames` video frames at 25 fps.

    chunks: float32 [left + 2*n_frames + right, 320] of 16 kHz mono audio; frame i owns chunks
    left+2i and left+2i+1, the `left`/`right` rows are context. Returns float32
    [n_frames, FEATURE_DIM]; rows are exactly zero where the frame's window is silent.
    """
    chunks = np.asarray(chunks, dtype=np.float32)
    expected = left + 2 * n_frames + right
    if chunks.ndim != 2 or chunks.shape[1] != CHUNK or chunks.shape[0] != expected:
        raise ValueError(f"chunks must be [{expected}, {CHUNK}], got {list(chunks.shape)}")
    if n_frames == 0:
        return np.zeros((0, FEATURE_DIM), np.float32)
    per_chunk = chunk_features(chunks)
    idx = left + 2 * np.arange(n_frames)[:, None] + _OFFSETS[None, :]  # [n, K]
    valid = (idx >= 0) & (idx < len(chunks))  # missing context counts as silence
    gathered = per_chunk[np.clip(idx, 0, len(chunks) - 1)] * valid[:, :, None]
    out = np.einsum("nkf,k->nf", gathered, _WEIGHTS).astype(np.float32)
    out[np.abs(out) < 1e-6] = 0.0
    return out
