"""Shared audio helpers: the server's one audio format is 16 kHz mono float32 in 20 ms chunks.

Everything that enters the pipeline (TTS output, uploaded files) goes through these helpers
so that the rest of the code never has to think about sample rates, channels or dtypes.
"""

from __future__ import annotations

import io
from fractions import Fraction
from functools import lru_cache

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


# The resampling filter has 20 taps per unit of the larger ratio term, and its design and
# memory grow with it: a prime rate near 1 MHz would need a 20-million-tap filter. Terms are
# kept to this bound; every usual rate (8k-192k, the 44.1k family) is exact within it.
MAX_RATIO_TERM = 1000


def _ratio(rate: int) -> tuple[int, int]:
    """Reduced up/down factors that take `rate` to SAMPLE_RATE.

    An odd rate whose exact ratio has larger terms gets the nearest ratio within
    MAX_RATIO_TERM: a speed error of at most 0.05 % (checked for every rate of 8-192 kHz),
    under a cent of pitch, which nobody hears.
    """
    if rate <= 0:
        raise ValueError(f"invalid sample rate {rate}")
    ratio = Fraction(SAMPLE_RATE, int(rate))
    if max(ratio.numerator, ratio.denominator) > MAX_RATIO_TERM:
        ratio = ratio.limit_denominator(MAX_RATIO_TERM)
        if ratio.numerator > MAX_RATIO_TERM:  # rates under 16 kHz: bound the other term
            ratio = 1 / (1 / Fraction(SAMPLE_RATE, int(rate))).limit_denominator(MAX_RATIO_TERM)
    return ratio.numerator, ratio.denominator


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

# What an upload's header may ask for before any decoding starts.
MIN_RATE = 8000
MAX_RATE = 192000
MAX_CHANNELS = 8


class _UseFFmpeg(Exception):
    pass


class _TooLong(Exception):
    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds


def check_header(rate: int, channels: int, seconds: float | None, max_seconds: float | None) -> None:
    """Refuse, before decoding, what no speech file needs: an absurd rate or channel count,
    or a declared length over the limit (the cost of decoding grows with all three)."""
    if not MIN_RATE <= rate <= MAX_RATE:
        raise ValueError(f"its sample rate is {rate} Hz; {MIN_RATE}-{MAX_RATE} Hz is accepted")
    if not 1 <= channels <= MAX_CHANNELS:
        raise ValueError(f"it has {channels} channels; 1-{MAX_CHANNELS} are accepted")
    if max_seconds is not None and seconds is not None and seconds > max_seconds:
        raise _TooLong(seconds)


class _Output:
    """Decoded audio resampled to 16 kHz as it arrives, so memory follows the 16 kHz result
    (38 MB for 10 minutes), never the source rate, and the length limit stops decoding early."""

    def __init__(self, rate: int, max_seconds: float | None) -> None:
        self.resampler = StreamResampler(rate)
        self.limit = None if max_seconds is None else int(max_seconds * SAMPLE_RATE)
        self.pieces: list[np.ndarray] = []
        self.total = 0

    def add(self, mono: np.ndarray) -> None:
        self._keep(self.resampler.process(mono))

    def finish(self) -> np.ndarray:
        self._keep(self.resampler.flush())
        return np.concatenate(self.pieces) if self.pieces else np.zeros(0, dtype=np.float32)

    def _keep(self, piece: np.ndarray) -> None:
        if piece.size:
            self.pieces.append(piece)
            self.total += piece.size
        if self.limit is not None and self.total > self.limit:
            raise _TooLong(self.total / SAMPLE_RATE)


def _decode_soundfile(data: bytes, max_seconds: float | None) -> np.ndarray:
    with sf.SoundFile(io.BytesIO(data)) as f:
        if f.format in _LEAVE_TO_FFMPEG:
            raise _UseFFmpeg
        declared = f.frames / f.samplerate if f.frames > 0 and f.samplerate > 0 else None
        check_header(f.samplerate, f.channels, declared, max_seconds)
        out = _Output(f.samplerate, max_seconds)
        while True:
            block = f.read(_READ_BLOCK, dtype="float32", always_2d=True)
            if not len(block):
                break
            out.add(to_mono_float(block))
        return out.finish()


def _decode_pyav(data: bytes, max_seconds: float | None) -> np.ndarray:
    with av.open(io.BytesIO(data), mode="r") as container:
        if not container.streams.audio:
            raise ValueError("the file has no audio stream")
        stream = container.streams.audio[0]
        declared = None
        if stream.duration is not None and stream.time_base is not None:
            declared = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            declared = container.duration / 1_000_000
        check_header(stream.rate or 0, stream.channels or 0, declared, max_seconds)
        # FFmpeg only converts the sample format (and a rate change mid-stream, if any);
        # downmixing and resampling are ours so every decode path gives the same result
        # (libswresample's stereo-to-mono sums at -3 dB, which can clip).
        converter: av.AudioResampler | None = None
        out: _Output | None = None
        for frame in container.decode(stream):
            if converter is None:
                check_header(frame.sample_rate, len(frame.layout.channels), None, max_seconds)
                converter = av.AudioResampler(format="fltp", rate=frame.sample_rate)
                out = _Output(frame.sample_rate, max_seconds)
            assert out is not None
            for converted in converter.resample(frame):
                out.add(converted.to_ndarray().mean(axis=0))
        if converter is None or out is None:
            return np.zeros(0, dtype=np.float32)
        for converted in converter.resample(None):
            out.add(converted.to_ndarray().mean(axis=0))
        return out.finish()


def decode_audio_bytes(
    data: bytes, filename: str = "", max_seconds: float | None = None
) -> np.ndarray:
    """Decode a whole audio file (wav, flac, ogg, mp3, m4a, opus...) to 16 kHz mono float32.

    Raises ValueError naming the file when it is empty, undecodable, has no audio, asks for
    an absurd rate or channel count, or is longer than `max_seconds`.
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
        except ValueError as e:
            raise ValueError(f"could not decode audio file {label}: {e}") from e
    except _TooLong as e:
        raise ValueError(
            f"audio file {label} is too long: {e.seconds:.1f} s, the limit is {max_seconds:g} s"
        ) from None
    if audio.size == 0:
        raise ValueError(f"could not decode audio file {label}: it contains no audio samples")
    return audio
