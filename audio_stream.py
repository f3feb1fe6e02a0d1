"""Incremental decoders for audio that arrives over the network in pieces of any size.

A TTS server streams its answer as a WAV stream (a header, then PCM of unknown length), raw
PCM at a rate agreed in advance, or MP3. Network reads cut that stream anywhere, even inside
a sample or a header, so each decoder keeps what it cannot use yet and returns every sample
it can as soon as it can. Output is (float32 mono samples, sample rate); resampling to the
pipeline's 16 kHz is done once, by the TTS worker (audio_util.StreamResampler).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import av
import numpy as np

from audio_util import to_mono_float

Pieces = list[tuple[np.ndarray, int]]


class BadAudio(ValueError):
    """The bytes are not audio in the expected format; the message shows what they were."""


def preview(data: bytes, limit: int = 120) -> str:
    """A short readable rendering of bytes for error messages (servers often send text)."""
    head = data[:limit]
    text = head.decode("utf-8", "replace")
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    shown = text.strip() if text and printable / len(text) > 0.9 else repr(head)
    return shown + ("..." if len(data) > limit else "")


class StreamDecoder(ABC):
    """Bytes in, (float32 mono samples, rate) pieces out."""

    @abstractmethod
    def feed(self, data: bytes) -> Pieces:
        """Add bytes; return the audio they complete (maybe none)."""

    def finish(self) -> Pieces:
        """The stream ended; return what is left. Raises BadAudio if it ended mid-header."""
        return []


class PcmDecoder(StreamDecoder):
    """Headerless little-endian PCM (int16 by default) at a rate known from the protocol."""

    def __init__(self, rate: int, channels: int = 1, dtype: str = "<i2", label: str = "PCM") -> None:
        self.rate = int(rate)
        self.channels = int(channels)
        self.dtype = np.dtype(dtype)
        self.label = label
        self._frame = self.dtype.itemsize * self.channels
        self._carry = b""
        self._seen_any = False

    def feed(self, data: bytes) -> Pieces:
        if not self._seen_any and data:
            self._seen_any = True
            _reject_text(data, self.label)
        data = self._carry + data if self._carry else data
        usable = len(data) - len(data) % self._frame
        self._carry = data[usable:]
        if not usable:
            return []
        samples = np.frombuffer(data[:usable], dtype=self.dtype)
        if self.channels > 1:
            samples = samples.reshape(-1, self.channels)
        return [(to_mono_float(samples), self.rate)]


def looks_like_text(data: bytes) -> bool:
    """True when bytes start like JSON, HTML or XML rather than audio samples."""
    head = data[:64]
    return head[:1] in (b"{", b"[", b"<") and all(32 <= b < 127 or b in (9, 10, 13) for b in head)


def _reject_text(data: bytes, label: str) -> None:
    """Raw PCM has no header to check, but an error page or JSON sent in its place starts
    with text: refuse that rather than play it as noise."""
    if looks_like_text(data):
        raise BadAudio(f"expected {label} audio, got text: {preview(data)}")


# WAV format tags
_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE
# A data size streaming servers write when they do not know the length yet.
_UNKNOWN_SIZES = {0, 0xFFFFFFFF, 0x7FFFFFFF}
_MAX_HEADER = 1 << 20  # a WAV header bigger than this is not a header


class WavDecoder(StreamDecoder):
    """A WAV stream read as it arrives: RIFF header, fmt chunk, then PCM.

    Streaming servers (GPT-SoVITS, XTTS, Fish Speech) send a header whose data size is 0 or
    0xFFFFFFFF and then PCM until the connection ends, so such sizes mean "until the end".
    A real size is honoured, so chunks after the data (LIST tags) are not played as noise.
    """

    def __init__(self, label: str = "WAV") -> None:
        self.label = label
        self._header = b""
        self._pcm: PcmDecoder | None = None
        self._remaining: int | None = None  # data bytes still expected; None: until the end

    @property
    def rate(self) -> int | None:
        return self._pcm.rate if self._pcm else None

    def feed(self, data: bytes) -> Pieces:
        if self._pcm is None:
            self._header += data
            parsed = self._parse_header()
            if parsed is None:
                return []
            data = parsed
        if self._remaining is not None:
            data = data[: self._remaining]
            self._remaining -= len(data)
        return self._pcm.feed(data) if data else []

    def finish(self) -> Pieces:
        if self._pcm is None and self._header:
            raise BadAudio(f"{self.label} stream ended inside its header: {preview(self._header)}")
        return []

    def _parse_header(self) -> bytes | None:
        """Return the bytes after the data chunk header once it is complete, else None."""
        buf = self._header
        if not b"RIFF".startswith(buf[:4]) or len(buf) >= 12 and buf[8:12] != b"WAVE":
            raise BadAudio(f"expected a {self.label} stream, got: {preview(buf)}")
        if len(buf) > _MAX_HEADER:
            raise BadAudio(f"{self.label} stream has no data chunk in its first {_MAX_HEADER} bytes")
        pos = 12
        fmt: tuple[int, int, int, int] | None = None
        while len(buf) >= pos + 8:
            chunk_id, size = buf[pos : pos + 4], int.from_bytes(buf[pos + 4 : pos + 8], "little")
            body_at = pos + 8
            if chunk_id == b"data":
                if fmt is None:
                    raise BadAudio(f"{self.label} stream has no fmt chunk before its data")
                self._start_pcm(*fmt, size)
                self._header = b""
                return buf[body_at:]
            end = body_at + size + (size & 1)
            if len(buf) < end:
                return None
            if chunk_id == b"fmt ":
                fmt = self._parse_fmt(buf[body_at:end])
            pos = end
        return None

    def _parse_fmt(self, body: bytes) -> tuple[int, int, int, int]:
        if len(body) < 16:
            raise BadAudio(f"{self.label} fmt chunk is {len(body)} bytes, too short")
        tag = int.from_bytes(body[0:2], "little")
        channels = int.from_bytes(body[2:4], "little")
        rate = int.from_bytes(body[4:8], "little")
        bits = int.from_bytes(body[14:16], "little")
        if tag == _EXTENSIBLE and len(body) >= 26:
            tag = int.from_bytes(body[24:26], "little")  # the sub-format GUID starts with the tag
        if channels < 1 or rate < 1:
            raise BadAudio(f"{self.label} header gives {channels} channels at {rate} Hz")
        return tag, channels, rate, bits

    def _start_pcm(self, tag: int, channels: int, rate: int, bits: int, size: int) -> None:
        if tag == _PCM and bits in (8, 16, 32):
            dtype = {8: "u1", 16: "<i2", 32: "<i4"}[bits]
        elif tag == _FLOAT and bits in (32, 64):
            dtype = {32: "<f4", 64: "<f8"}[bits]
        else:
            raise BadAudio(f"{self.label} sample format {tag} with {bits} bits is not supported")
        self._pcm = PcmDecoder(rate, channels, dtype, label=self.label)
        self._pcm._seen_any = True  # the header was already checked
        self._remaining = None if size in _UNKNOWN_SIZES else size


def _skip_id3(data: bytes) -> int | None:
    """Length of a leading ID3v2 tag (which FFmpeg's MP3 parser does not skip), 0 if none,
    None if more bytes are needed to tell."""
    if len(data) < 3:
        return None if b"ID3".startswith(data) else 0
    if data[:3] != b"ID3":
        return 0
    if len(data) < 10:
        return None
    size = 0
    for byte in data[6:10]:  # "syncsafe": 7 bits per byte
        size = (size << 7) | (byte & 0x7F)
    footer = 10 if data[5] & 0x10 else 0
    return 10 + size + footer


class CodecDecoder(StreamDecoder):
    """A compressed elementary stream (MP3 by default) through FFmpeg's parser and decoder,
    which find frame boundaries in arbitrary pieces of the stream."""

    def __init__(self, codec: str = "mp3", label: str | None = None) -> None:
        self.codec = codec
        self.label = label or codec.upper()
        self._ctx = av.CodecContext.create(codec, "r")
        self._lead = b""  # bytes held until any ID3 tag before the first frame is skipped
        self._skip: int | None = None

    def feed(self, data: bytes) -> Pieces:
        if self._skip is None:
            self._lead += data
            skip = _skip_id3(self._lead)
            if skip is None or len(self._lead) < skip:
                return []
            if self._lead[skip : skip + 1] in (b"{", b"<"):
                _reject_text(self._lead[skip:], self.label)
            data, self._lead, self._skip = self._lead[skip:], b"", skip
        return self._decode(data)

    def finish(self) -> Pieces:
        if self._skip is None:
            pieces = self._decode(self._lead) if self._lead else []
        else:
            pieces = []
        pieces += self._decode(None)
        return pieces

    def _decode(self, data: bytes | None) -> Pieces:
        pieces: Pieces = []
        try:
            packets = self._ctx.parse(data if data is not None else b"")
            if data is None:
                packets.append(None)  # flush the decoder after the parser
            for packet in packets:
                for frame in self._ctx.decode(packet):
                    pieces.append((_frame_samples(frame), frame.sample_rate))
        except av.FFmpegError as exc:
            raise BadAudio(f"{self.label} stream does not decode: {exc}") from None
        return pieces


def _frame_samples(frame: av.AudioFrame) -> np.ndarray:
    array = frame.to_ndarray()
    channels = frame.layout.nb_channels
    if frame.format.is_planar:
        samples = array.T  # (channels, n) -> (n, channels)
    else:
        samples = array.reshape(-1, channels)  # interleaved: (1, n * channels)
    return to_mono_float(samples if channels > 1 else samples[:, 0])
