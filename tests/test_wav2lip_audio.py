"""Wav2Lip mel spectrogram: shape, Slaney filterbank, STFT framing, normalisation and per-frame windows."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import get_window

from wav2lip.audio import (
    FMAX,
    FMIN,
    N_FFT,
    hz_to_mel,
    mel_band_edges,
    mel_chunks,
    mel_filterbank,
    mel_to_hz,
    melspectrogram,
    stft_magnitude,
)

SR = 16000
BIN_HZ = SR / N_FFT  # 20 Hz between FFT bins


def tone(hz: float, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_one_second_gives_80_bands_by_81_centred_frames() -> None:
    mel = melspectrogram(tone(440))
    assert mel.shape == (80, 81)
    assert mel.dtype == np.float32


@pytest.mark.parametrize("hz", [1000.0, 3000.0])
def test_a_tone_peaks_in_the_band_around_its_frequency(hz: float) -> None:
    mel = melspectrogram(tone(hz))
    peak = np.bincount(mel[:, 4:-4].argmax(axis=0)).argmax()  # the band that wins most frames
    edges = mel_band_edges()
    assert edges[peak] < hz < edges[peak + 2]  # the tone lies inside the peak band's triangle
    centres = edges[1:-1]
    assert abs(peak - np.abs(centres - hz).argmin()) <= 1


def test_silence_is_minus_four_everywhere() -> None:
    mel = melspectrogram(np.zeros(SR, dtype=np.float32))
    assert mel.shape == (80, 81)
    assert np.all(mel == -4.0)


def test_values_stay_within_plus_minus_four() -> None:
    rng = np.random.default_rng(0)
    noise = rng.uniform(-1, 1, SR).astype(np.float32)
    mels = [melspectrogram(level * noise) for level in (1e-4, 1.0, 100.0)]
    for mel in mels:
        assert mel.min() >= -4.0 and mel.max() <= 4.0
    assert mels[2].max() == 4.0  # an over-range signal is clipped at +4
    assert -4.0 < mels[0].mean() < mels[1].mean() < mels[2].mean()  # level is encoded, not flattened


def test_db_scale_follows_the_recipe() -> None:
    # A 1 kHz tone: normalised value = 8 * (20*log10(mel) - 20 + 100) / 100 - 4 per the recipe.
    wav = tone(1000.0, amp=0.01)
    mag = stft_magnitude(np.append(wav[0], wav[1:] - 0.97 * wav[:-1]))
    band = mel_filterbank() @ mag
    expected = np.clip(8 * (20 * np.log10(np.maximum(1e-5, band)) - 20 + 100) / 100 - 4, -4, 4)
    assert np.allclose(melspectrogram(wav), expected, atol=1e-4)


def test_stft_frames_are_centred_periodic_hann_windows() -> None:
    rng = np.random.default_rng(1)
    y = rng.standard_normal(3000)
    mag = stft_magnitude(y)
    assert mag.shape == (401, 1 + 3000 // 200)
    padded = np.pad(y, 400)  # centre=True: frame k is centred on sample 200*k
    win = get_window("hann", 800, fftbins=True)
    for k in (0, 7, 15):
        want = np.abs(np.fft.rfft(padded[200 * k : 200 * k + 800] * win))
        assert np.allclose(mag[:, k], want)


def test_slaney_mel_scale_is_linear_below_1khz_and_logarithmic_above() -> None:
    assert hz_to_mel(200.0) == pytest.approx(3.0)  # 200/3 Hz per mel
    assert hz_to_mel(1000.0) == pytest.approx(15.0)
    assert hz_to_mel(6400.0) == pytest.approx(42.0)  # 27 mels per factor 6.4 above 1 kHz
    hz = np.array([0.0, 55.0, 999.0, 1000.0, 4321.0, 7600.0])
    assert np.allclose(mel_to_hz(hz_to_mel(hz)), hz)


def test_filterbank_triangles_span_55_to_7600_hz_with_unit_area() -> None:
    fb = mel_filterbank()
    edges = mel_band_edges()
    assert fb.shape == (80, 401)
    assert edges[0] == pytest.approx(FMIN) and edges[-1] == pytest.approx(FMAX)
    fft_hz = np.arange(401) * BIN_HZ
    # First band: starts at 55 Hz and peaks at its centre, about 91 Hz.
    assert np.all(fb[0, fft_hz <= FMIN] == 0) and fb[0, 3] > 0  # bin 3 is 60 Hz
    step = (hz_to_mel(FMAX) - hz_to_mel(FMIN)) / 81  # 82 edges equally spaced in mel
    assert edges[1] == pytest.approx(mel_to_hz(hz_to_mel(FMIN) + step))
    assert 85 < edges[1] < 95
    assert np.all(fb[-1, fft_hz >= FMAX] == 0)
    for i, row in enumerate(fb):
        lo, centre, hi = edges[i], edges[i + 1], edges[i + 2]
        support = np.flatnonzero(row)
        assert np.all(np.diff(support) == 1), f"band {i} is not one contiguous run"
        assert np.all((fft_hz[support] > lo) & (fft_hz[support] < hi))
        rising, falling = row[fft_hz <= centre], row[fft_hz >= centre]
        assert np.all(np.diff(rising) >= 0) and np.all(np.diff(falling) <= 0)
        assert row.max() <= 2 / (hi - lo) + 1e-12  # height of a unit-area triangle
        if hi - lo > 20 * BIN_HZ:  # wide enough for the bin sum to approximate the integral
            assert row.sum() * BIN_HZ == pytest.approx(1.0, rel=0.02)


def test_each_video_frame_reads_16_columns_from_80_i_over_fps() -> None:
    mel = np.tile(np.arange(100, dtype=np.float32), (80, 1))  # column j holds the value j
    chunks = mel_chunks(mel, 30)
    assert chunks.shape == (30, 1, 80, 16) and chunks.dtype == np.float32
    for i in (0, 1, 2, 7, 20):
        start = int(80 * i / 25)
        assert np.array_equal(chunks[i, 0, 0], np.arange(start, start + 16))
        assert np.array_equal(chunks[i, 0, 79], np.arange(start, start + 16))


def test_windows_past_the_end_repeat_the_last_column() -> None:
    mel = np.tile(np.arange(40, dtype=np.float32), (80, 1))
    chunks = mel_chunks(mel, 12)
    last = chunks[11, 0, 0]  # starts at column 35
    assert np.array_equal(last, [35, 36, 37, 38, 39] + [39] * 11)
    assert np.array_equal(mel_chunks(mel, 12, fps=50)[5, 0, 0], np.arange(8, 24))


def test_start_offset_skips_left_context_columns() -> None:
    mel = np.tile(np.arange(60, dtype=np.float32), (80, 1))
    chunks = mel_chunks(mel, 3, start=16.0)  # 10 audio frames of left context = 16 columns
    assert [int(c[0, 0, 0]) for c in chunks] == [16, 19, 22]


def test_mel_chunks_rejects_a_wrong_shape() -> None:
    with pytest.raises(ValueError, match="mel must be"):
        mel_chunks(np.zeros((81, 10), dtype=np.float32), 2)
