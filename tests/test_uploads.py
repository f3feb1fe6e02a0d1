"""Uploads decoded in budgeted child processes (finding 3): the same audio as decoding in
place, and a file that needs more CPU, memory or time than its budget is refused with the
reason while the server's own process stays small."""

from __future__ import annotations

import io
import resource

import numpy as np
import pytest
import soundfile as sf

from audio_util import SAMPLE_RATE, decode_audio_bytes
from uploads import UploadDecoder, UploadRefused


@pytest.fixture(scope="module")
def decoder():
    d = UploadDecoder()
    d.start()
    yield d
    d.close()


def wav(seconds: float, rate: int = 48000, channels: int = 1) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    tone = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, np.stack([tone] * channels, axis=1), rate, format="WAV")
    return buf.getvalue()


def test_a_child_decodes_exactly_what_decoding_in_place_gives(decoder):
    data = wav(2.0, 44100, 2)
    got = decoder.decode_blocking(data, "tone.wav", 600)
    assert np.array_equal(got, decode_audio_bytes(data, "tone.wav", 600))
    assert got.size == 2 * SAMPLE_RATE


def test_the_reason_a_file_is_refused_reaches_the_caller(decoder):
    with pytest.raises(UploadRefused, match="too long: 3.0 s, the limit is 2 s"):
        decoder.decode_blocking(wav(3.0), "long.wav", 2)
    with pytest.raises(UploadRefused, match="could not decode audio file 'junk.bin'"):
        decoder.decode_blocking(b"\x00junk" * 100, "junk.bin", 600)
    buf = io.BytesIO()
    sf.write(buf, np.zeros((100, 9), np.float32), 8000, format="WAV")
    with pytest.raises(UploadRefused, match="9 channels; 1-8 are accepted"):
        decoder.decode_blocking(buf.getvalue(), "nine.wav", 600)


def test_a_file_over_the_memory_budget_is_refused_not_decoded_into_the_server():
    small = UploadDecoder(memory_mb=20)
    try:
        data = wav(400.0, 16000)  # 25 MB of samples once decoded
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with pytest.raises(UploadRefused, match="more than 20 MB|gave up"):
            small.decode_blocking(data, "big.wav", 600)
        grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        # This process only held the file's bytes; the decoding happened elsewhere.
        assert grown_mb < 40
        assert small.decode_blocking(wav(1.0), "fine.wav", 600).size == SAMPLE_RATE  # and it goes on
    finally:
        small.close()


def test_a_file_over_the_cpu_or_time_budget_is_stopped():
    slow = UploadDecoder(cpu_seconds=1, wall_seconds=1)
    try:
        # Ten minutes of stereo 88.2 kHz: 104 million samples to mix and resample, seconds of
        # work (44.1 kHz sometimes fitted in the budget on a fast core).
        data = wav(590.0, 88200, 2)
        with pytest.raises(UploadRefused, match="more than (1 s of CPU|1 s of time)|gave up"):
            slow.decode_blocking(data, "slow.wav", 600)
    finally:
        slow.close()


def test_closing_stops_the_helper_process():
    d = UploadDecoder()
    d.start()
    helper = d._helper
    assert helper is not None and helper.poll() is None
    d.close()
    assert helper.poll() is not None
