"""audio_util: conversion to 16 kHz mono, chunking and decoding of uploaded audio files."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
import soundfile as sf

from audio_util import (
    CHUNK,
    SAMPLE_RATE,
    StreamResampler,
    decode_audio_bytes,
    split_chunks,
    to_16k_mono,
)


def tone(rate: int, seconds: float, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_freq(x: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.argmax(spectrum) * rate / x.size)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def encode_with_pyav(fmt: str, codec: str, rate: int, layout: str = "mono") -> bytes:
    """A 1 s 440 Hz tone at amplitude 0.5, encoded the way a user's recorder might."""
    channels = 2 if layout == "stereo" else 1
    samples = np.tile(tone(rate, 1.0), (channels, 1))
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=fmt) as container:
        # FFmpeg's own Vorbis encoder is marked experimental (and only does stereo).
        stream = container.add_stream(codec, rate=rate, options={"strict": "experimental"})
        stream.layout = layout
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout=layout)
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


# --- resampling -------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [8000, 22050, 24000, 44100, 48000])
def test_resampling_gives_16k_length_and_keeps_pitch(rate: int) -> None:
    out = to_16k_mono(tone(rate, 2.0), rate)
    assert out.dtype == np.float32
    assert out.ndim == 1
    assert out.size == 2 * SAMPLE_RATE
    assert dominant_freq(out) == pytest.approx(440.0, abs=2.0)
    assert rms(out) == pytest.approx(0.5 / np.sqrt(2), rel=0.05)


def test_int16_stereo_becomes_scaled_float_mono() -> None:
    left = (tone(48000, 1.0) * 32767).astype(np.int16)
    stereo = np.stack([left, left], axis=1)
    out = to_16k_mono(stereo, 48000)
    assert out.dtype == np.float32
    assert out.shape == (SAMPLE_RATE,)
    assert np.abs(out).max() == pytest.approx(0.5, abs=0.02)


def test_16k_input_is_left_as_is() -> None:
    x = tone(SAMPLE_RATE, 0.5)
    np.testing.assert_array_equal(to_16k_mono(x, SAMPLE_RATE), x)


def test_stream_resampler_matches_resampling_the_whole_signal() -> None:
    # Pieces of any size must join seamlessly: same samples as one big resample.
    rng = np.random.default_rng(1)
    x = rng.standard_normal(22050 * 2).astype(np.float32) * 0.3
    whole = to_16k_mono(x, 22050)
    resampler = StreamResampler(22050)
    pieces, pos = [], 0
    while pos < x.size:
        n = int(rng.integers(1, 4000))
        pieces.append(resampler.process(x[pos : pos + n]))
        pos += n
    pieces.append(resampler.flush())
    streamed = np.concatenate(pieces)
    assert streamed.size == whole.size
    np.testing.assert_allclose(streamed, whole, atol=1e-6)


def test_split_chunks_pads_only_the_last_chunk() -> None:
    x = np.linspace(-1, 1, 1000, dtype=np.float32)
    chunks = split_chunks(x)
    assert len(chunks) == 4
    assert all(c.shape == (CHUNK,) and c.dtype == np.float32 for c in chunks)
    joined = np.concatenate(chunks)
    np.testing.assert_array_equal(joined[:1000], x)
    assert not joined[1000:].any()
    assert split_chunks(np.zeros(0, np.float32)) == []


# --- decoding files ---------------------------------------------------------------------


def test_decode_wav_int16_stereo_44k() -> None:
    x = tone(44100, 1.5)
    stereo = np.stack([x, x], axis=1)
    buf = io.BytesIO()
    sf.write(buf, stereo, 44100, format="WAV", subtype="PCM_16")
    out = decode_audio_bytes(buf.getvalue(), "speech.wav")
    assert out.dtype == np.float32 and out.ndim == 1
    assert out.size == int(1.5 * SAMPLE_RATE)
    assert dominant_freq(out) == pytest.approx(440.0, abs=2.0)
    assert rms(out) == pytest.approx(0.5 / np.sqrt(2), rel=0.05)


@pytest.mark.parametrize(
    ("name", "fmt", "codec", "rate", "layout"),
    [
        ("a.flac", "flac", "flac", 44100, "mono"),
        ("a.ogg", "ogg", "vorbis", 44100, "stereo"),
        ("a.mp3", "mp3", "libmp3lame", 44100, "mono"),
        ("a.m4a", "ipod", "aac", 44100, "mono"),
        ("a.opus", "ogg", "libopus", 48000, "mono"),
    ],
)
def test_decode_compressed_formats(name: str, fmt: str, codec: str, rate: int, layout: str) -> None:
    out = decode_audio_bytes(encode_with_pyav(fmt, codec, rate, layout), name)
    assert out.dtype == np.float32 and out.ndim == 1
    # Lossy codecs add encoder delay/padding (AAC about 45 ms), never a truncated clip.
    assert out.size / SAMPLE_RATE == pytest.approx(1.0, abs=0.06)
    assert dominant_freq(out) == pytest.approx(440.0, abs=3.0)
    # Stereo is averaged, not summed: the level stays that of one channel.
    assert rms(out) == pytest.approx(0.5 / np.sqrt(2), rel=0.15)


@pytest.mark.parametrize(
    "data", [b"this is not audio, just some text " * 50, bytes(range(256)) * 20]
)
def test_garbage_raises_value_error_naming_the_file(data: bytes) -> None:
    with pytest.raises(ValueError, match=r"could not decode audio file 'upload\.bin'"):
        decode_audio_bytes(data, "upload.bin")


def test_empty_file_raises_value_error_naming_the_file() -> None:
    with pytest.raises(ValueError, match=r"'empty\.wav'.*empty"):
        decode_audio_bytes(b"", "empty.wav")


def test_video_without_audio_is_rejected() -> None:
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for _ in range(5):
            img = np.zeros((64, 64, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    with pytest.raises(ValueError, match=r"'clip\.mp4'.*no audio stream"):
        decode_audio_bytes(buf.getvalue(), "clip.mp4")


def test_max_seconds_rejects_long_files_on_both_decoders() -> None:
    buf = io.BytesIO()
    sf.write(buf, tone(16000, 3.0), 16000, format="WAV")
    wav = buf.getvalue()
    mp3 = encode_with_pyav("mp3", "libmp3lame", 44100)  # 1 s, decoded by FFmpeg
    with pytest.raises(ValueError, match=r"'long\.wav' is too long"):
        decode_audio_bytes(wav, "long.wav", max_seconds=2.0)
    with pytest.raises(ValueError, match=r"'long\.mp3' is too long"):
        decode_audio_bytes(mp3, "long.mp3", max_seconds=0.5)
    assert decode_audio_bytes(wav, "ok.wav", max_seconds=3.5).size == 3 * SAMPLE_RATE
    assert decode_audio_bytes(mp3, "ok.mp3", max_seconds=2.0).size > 0
