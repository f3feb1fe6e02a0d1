"""audio_stream: WAV, raw PCM and MP3 decoded from pieces cut anywhere, and refusals that say
what the bytes were."""

from __future__ import annotations

import numpy as np
import pytest
from tts_local import GARBAGE, Speech, split_bytes, wav_header

from audio_stream import BadAudio, CodecDecoder, PcmDecoder, WavDecoder

TEXT = "Decoders see the stream in pieces."


def feed_all(decoder, pieces: list[bytes]) -> tuple[np.ndarray, set[int]]:
    out = []
    for piece in pieces:
        out += decoder.feed(piece)
    out += decoder.finish()
    rates = {rate for _, rate in out}
    return (np.concatenate([a for a, _ in out]) if out else np.zeros(0, np.float32)), rates


def expected(rate: int) -> np.ndarray:
    return (Speech.at(TEXT, rate) * 32767).astype(np.int16).astype(np.float32) / 32768


@pytest.mark.parametrize("size", [1, 3, 44, 45, 1001, 65536])
def test_streamed_wav_decodes_the_same_whatever_the_cuts(size) -> None:
    data = wav_header(32000) + Speech.pcm16(TEXT, 32000)  # data size 0: "until the end"
    audio, rates = feed_all(WavDecoder(), split_bytes(data, size))
    assert rates == {32000}
    np.testing.assert_array_equal(audio, expected(32000))


def test_wav_with_a_real_size_ignores_what_follows_the_data() -> None:
    pcm = Speech.pcm16(TEXT, 24000)
    tag = b"LIST" + (12).to_bytes(4, "little") + b"INFOISFT\x00\x00\x00\x00"
    data = wav_header(24000, data_size=len(pcm)) + pcm + tag
    audio, _ = feed_all(WavDecoder(), split_bytes(data, 777))
    np.testing.assert_array_equal(audio, expected(24000))


def test_wav_float_stereo_with_extra_chunks_before_the_data() -> None:
    left = Speech.at(TEXT, 16000)
    stereo = np.stack([left, -left], axis=1).astype("<f4")  # mono mix is silence: proves the mixing
    fmt = (3).to_bytes(2, "little") + (2).to_bytes(2, "little") + (16000).to_bytes(4, "little")
    fmt += (16000 * 8).to_bytes(4, "little") + (8).to_bytes(2, "little") + (32).to_bytes(2, "little")
    body = b"WAVE" + b"fmt " + (16).to_bytes(4, "little") + fmt + b"fact" + (4).to_bytes(4, "little") + b"\0\0\0\0"
    body += b"data" + (0xFFFFFFFF).to_bytes(4, "little") + stereo.tobytes()
    data = b"RIFF" + (0xFFFFFFFF).to_bytes(4, "little") + body
    audio, rates = feed_all(WavDecoder(), split_bytes(data, 333))
    assert rates == {16000} and audio.size == left.size
    assert np.abs(audio).max() < 1e-6


def test_pcm_keeps_half_samples_for_the_next_piece() -> None:
    data = Speech.pcm16(TEXT, 24000)
    audio, rates = feed_all(PcmDecoder(24000), split_bytes(data, 4097))
    assert rates == {24000}
    np.testing.assert_array_equal(audio, expected(24000))


def test_mp3_decodes_incrementally_like_the_whole_file() -> None:
    data = Speech.mp3(TEXT)
    whole, _ = feed_all(CodecDecoder("mp3"), [data])
    pieces, rates = feed_all(CodecDecoder("mp3"), split_bytes(data, 501))
    assert rates == {24000}
    np.testing.assert_allclose(pieces, whole, atol=1e-6)
    # MP3 adds encoder delay and padding but keeps the speech.
    assert abs(whole.size - Speech.at(TEXT, 24000).size) < 24000 * 0.15


def test_mp3_after_an_id3_tag() -> None:
    tag = b"ID3\x04\x00\x00" + bytes([0, 0, 1, 0]) + b"\x00" * 128  # syncsafe size 128
    audio, _ = feed_all(CodecDecoder("mp3"), split_bytes(tag + Speech.mp3(TEXT), 7))
    assert audio.size > 24000


def test_refusals_show_what_was_sent() -> None:
    with pytest.raises(BadAudio, match=r'expected a WAV stream, got: \{"message": "tts failed"'):
        WavDecoder().feed(b'{"message": "tts failed", "Exception": "CUDA out of memory"}')
    with pytest.raises(BadAudio, match="got text: <html>"):
        PcmDecoder(16000).feed(b"<html><body>502 Bad Gateway</body></html>")
    decoder = WavDecoder()
    decoder.feed(b"RIFF\x00\x00\x00\x00WAVEfmt ")
    with pytest.raises(BadAudio, match="ended inside its header"):
        decoder.finish()
    with pytest.raises(BadAudio, match="sample format 85"):
        fmt = (85).to_bytes(2, "little") + (1).to_bytes(2, "little") + (16000).to_bytes(4, "little") + bytes(6)
        fmt += (16).to_bytes(2, "little")
        WavDecoder().feed(b"RIFF\0\0\0\0WAVEfmt " + (16).to_bytes(4, "little") + fmt + b"data\0\0\0\0")


def test_mp3_garbage_is_refused_or_gives_no_audio() -> None:
    # Depending on the bytes FFmpeg rejects them or finds no frame; the stream's caller turns
    # "bytes but no audio" into an error too.
    for garbage in (GARBAGE, GARBAGE[::-1], GARBAGE[:999]):
        try:
            audio, _ = feed_all(CodecDecoder("mp3"), split_bytes(garbage, 4096))
        except BadAudio as exc:
            assert "MP3 stream does not decode" in str(exc)
        else:
            assert audio.size == 0
