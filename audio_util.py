"""Shared audio helpers: the server's one audio format is 16 kHz mono float32 in 20 ms chunks.

Everything that enters the pipeline (TTS output, uploaded files) goes through these helpers
so that the rest of the code never has to think about sample rates, channels or dtypes.
"""

from __future__ import annotations

import io
from functools import lru_cache
from math import gcd

import av
import numpy as np
import soundfile as sf
from scipy.signal import firwin, resample_poly

SAMPLE_RATE = 16000
CHUNK = 320  # samples per chunk: 20 ms at 16 kHz, the unit the avatar renderer consumes


def to_mono_float(samples: np.ndarray) -> np.ndarray:
    """Return float32 mono in [-1, 1] from (frames,) or (frames, channels) int or float audio."""
    x = np.asarray(samples)
    if np.issubdtype(x.dtype, np.unsignedinteger):
        # Unsigned PCM (8-bit WAV) is centred on half its range.
        mid = float(np.iinfo(x.dtype).max // 2 + 1)
        x = (x.astype(np.float32) - mid) / mid
    elif np.issubdtype(x.dtype, np.integer):
        # Scale by the dtype's full range so int16 and int32 both land in [-1, 1].
        x = x.astype(np.float32) / float(-np.iinfo(x.dtype).min)
    else:
        x = x.astype(np.float32, copy=False)
    if x.ndim == 2:
        x = x.mean(axis=1, dtype=np.float32)
    elif x.ndim != 1:
        raise ValueError(f"expected audio of shape (frames,) or (frames, channels), got {x.shape}")
    return x


def _ratio(rate: int) -> tuple[int, int]:
    """Reduced up/down factors that take `rate` to SAMPLE_RATE."""
    if rate <= 0:
        raise ValueError(f"invalid sample rate {rate}")
    g = gcd(SAMPLE_RATE, int(rate))
    return SAMPLE_RATE // g, int(rate) // g


@lru_cache(maxsize=16)
def _lowpass(up: int, down: int) -> np.ndarray:
    """resample_poly's own default anti-alias filter, designed once per ratio.

    Designing it is most of the cost of resampling a short piece (8821 taps for
    22.05 kHz), and TTS calls this per piece, so it is cached.
    """
    half_len = 10 * max(up, down)
    h = firwin(2 * half_len + 1, 1.0 / max(up, down), window=("kaiser", 5.0))
    h = h.astype(np.float32)
    h.flags.writeable = False  # shared between threads; resample_poly copies it
    return h


def _resample(x: np.ndarray, up: int, down: int) -> np.ndarray:
    y = resample_poly(x, up, down, window=_lowpass(up, down)).astype(np.float32, copy=False)
    # The filter rings a little past a full-scale peak (Piper normalises to exactly 1.0);
    # clip so that int16 conversion downstream cannot wrap around.
    return np.clip(y, -1.0, 1.0, out=y)


def to_16k_mono(samples: np.ndarray, rate: int) -> np.ndarray:
    """Convert any int/float mono or multichannel audio at `rate` to float32 mono at 16 kHz."""
    x = to_mono_float(samples)
    up, down = _ratio(rate)
    if up == down or x.size == 0:
        return x
    return _resample(x, up, down)


class StreamResampler:
    """Resample audio that arrives in pieces, giving the same samples as resampling it whole.

    One instance per stream: feed pieces with process(), then call flush() once at the end.

    Resampling each piece on its own zero-pads both edges of every piece, which dents the
    waveform at each boundary (audible as clicks when pieces are short). Instead we keep a
    little input history and only emit output samples whose filter support is fully known.
    """

    def __init__(self, rate: int) -> None:
        self.rate = int(rate)
        self._up, self._down = _ratio(rate)
        # The filter spans 10 * max(up, down) taps each side in the upsampled domain;
        # in input samples that is this many (plus one for rounding).
        self._half = -(-10 * max(self._up, self._down) // self._up) + 1
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = 0  # global input index of _buf[0]; always a multiple of _down
        self._received = 0  # input samples seen so far
        self._emitted = 0  # output samples produced so far

    def _output_upto(self, n_out: int) -> np.ndarray:
        """Produce output samples [_emitted, n_out) from the buffered input."""
        if n_out <= self._emitted:
            return np.zeros(0, dtype=np.float32)
        # Because _buf_start is a multiple of `down`, the output grid of the buffer lines up
        # with the global output grid: buffer output k is global output k + offset.
        offset = self._buf_start * self._up // self._down
        y = _resample(self._buf, self._up, self._down)
        out = y[self._emitted - offset : n_out - offset].copy()
        self._emitted = n_out
        # Drop input no longer needed: keep `_half` samples before the next output position,
        # rounded down to a multiple of `down` to keep the grids aligned.
        keep_from = (self._emitted * self._down // self._up - self._half) // self._down * self._down
        if keep_from > self._buf_start:
            self._buf = self._buf[keep_from - self._buf_start :]
            self._buf_start = keep_from
        return out

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Feed a piece; return the 16 kHz samples that are now final (maybe none)."""
        x = to_mono_float(samples)
        if self._up == self._down:
            return x.copy()
        self._buf = np.concatenate([self._buf, x])
        self._received += x.size
        # Output m sits at input time m * down / up and needs inputs up to that + _half.
        settled = self._received - self._half
        if settled <= 0:
            return np.zeros(0, dtype=np.float32)
        n_out = -(-settled * self._up // self._down)  # outputs with time < settled
        return self._output_upto(n_out)

    def flush(self) -> np.ndarray:
        """Return the remaining samples; the total then equals resampling the whole input."""
        if self._up == self._down:
            return np.zeros(0, dtype=np.float32)
        total = -(-self._received * self._up // self._down)
        return self._output_upto(total)


def split_chunks(audio: np.ndarray) -> list[np.ndarray]:
    """Cut 16 kHz mono audio into CHUNK-sample float32 chunks, zero-padding the last one."""
    x = to_mono_float(audio)
    if x.size == 0:
        return []
    padded = np.zeros(-(-x.size // CHUNK) * CHUNK, dtype=np.float32)
    padded[: x.size] = x
    return list(padded.reshape(-1, CHUNK))


# libsndfile takes the length of Ogg and MP3 streams from container metadata, which some
# encoders (FFmpeg's Ogg muxer among them) leave wrong: it then silently returns a truncated
# clip, or claims an endless one. FFmpeg decodes packet by packet, so those go to PyAV.
_LEAVE_TO_FFMPEG = {"OGG", "MP3"}
_READ_BLOCK = 65536  # frames per read, so a bogus length in a header cannot size one allocation


class _UseFFmpeg(Exception):
    pass


class _TooLong(Exception):
    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds


def _decode_soundfile(data: bytes, max_seconds: float | None) -> np.ndarray:
    with sf.SoundFile(io.BytesIO(data)) as f:
        if f.format in _LEAVE_TO_FFMPEG:
            raise _UseFFmpeg
        rate = f.samplerate
        limit = None if max_seconds is None else int(max_seconds * rate)
        blocks: list[np.ndarray] = []
        total = 0
        while True:
            block = f.read(_READ_BLOCK, dtype="float32", always_2d=True)
            if not len(block):
                break
            blocks.append(to_mono_float(block))
            total += len(block)
            if limit is not None and total > limit:
                raise _TooLong(total / rate)
    if not blocks:
        return np.zeros(0, dtype=np.float32)
    return to_16k_mono(np.concatenate(blocks), rate)


def _decode_pyav(data: bytes, max_seconds: float | None) -> np.ndarray:
    with av.open(io.BytesIO(data), mode="r") as container:
        if not container.streams.audio:
            raise ValueError("the file has no audio stream")
        stream = container.streams.audio[0]
        limit = None if max_seconds is None else int(max_seconds * SAMPLE_RATE)
        # FFmpeg only converts the sample format (and a rate change mid-stream, if any);
        # downmixing and resampling are ours so every decode path gives the same result
        # (libswresample's stereo-to-mono sums at -3 dB, which can clip).
        converter: av.AudioResampler | None = None
        resampler: StreamResampler | None = None
        pieces: list[np.ndarray] = []
        total = 0
        for frame in container.decode(stream):
            if converter is None:
                converter = av.AudioResampler(format="fltp", rate=frame.sample_rate)
                resampler = StreamResampler(frame.sample_rate)
            assert resampler is not None
            for out in converter.resample(frame):
                pieces.append(resampler.process(out.to_ndarray().mean(axis=0)))
                total += pieces[-1].size
            # Checked per frame so a long upload stops decoding as soon as it is too long.
            if limit is not None and total > limit:
                raise _TooLong(total / SAMPLE_RATE)
        if converter is not None and resampler is not None:
            for out in converter.resample(None):
                pieces.append(resampler.process(out.to_ndarray().mean(axis=0)))
            pieces.append(resampler.flush())
    audio = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    if limit is not None and audio.size > limit:
        raise _TooLong(audio.size / SAMPLE_RATE)
    return audio


def decode_audio_bytes(
    data: bytes, filename: str = "", max_seconds: float | None = None
) -> np.ndarray:
    """Decode a whole audio file (wav, flac, ogg, mp3, m4a, opus...) to 16 kHz mono float32.

    Raises ValueError naming the file when it is empty, undecodable, has no audio, or is
    longer than `max_seconds`.
    """
    label = f"'{filename}'" if filename else "(unnamed)"
    if not data:
        raise ValueError(f"could not decode audio file {label}: the file is empty")
    try:
        try:
            audio = _decode_soundfile(data, max_seconds)
        except _TooLong:
            raise
        except (sf.SoundFileError, RuntimeError, _UseFFmpeg):
            # Not a libsndfile format (m4a, opus in mp4, ...) or one it reads badly: FFmpeg.
            try:
                audio = _decode_pyav(data, max_seconds)
            except _TooLong:
                raise
            except (av.FFmpegError, ValueError, RuntimeError, EOFError) as e:
                reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
                raise ValueError(f"could not decode audio file {label}: {reason}") from e
    except _TooLong as e:
        raise ValueError(
            f"audio file {label} is too long: {e.seconds:.1f} s, the limit is {max_seconds:g} s"
        ) from None
    if audio.size == 0:
        raise ValueError(f"could not decode audio file {label}: it contains no audio samples")
    return audio
