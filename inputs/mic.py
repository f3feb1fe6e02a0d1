"""The user's microphone as it arrives on the session's WebRTC connection, made 16 kHz mono.

Browsers send Opus, which aiortc decodes to 48 kHz stereo; another client may send any rate
or layout, and may change it mid-stream. Each frame is converted on arrival with the
project's one streaming resampler, so the rest of the input side only sees the server's one
audio format.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from audio_util import StreamResampler

log = logging.getLogger(__name__)


def frame_samples(frame) -> tuple[np.ndarray, int]:
    """An av.AudioFrame as (frames, channels) samples and its rate."""
    data = frame.to_ndarray()
    channels = max(1, len(frame.layout.channels))
    samples = data.T if frame.format.is_planar else data.reshape(-1, channels)
    return samples, frame.sample_rate


async def mic_chunks(track: MediaStreamTrack) -> AsyncIterator[np.ndarray]:
    """The track's audio as float32 16 kHz mono pieces, until the track ends."""
    resampler: StreamResampler | None = None
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        samples, rate = frame_samples(frame)
        if resampler is None or resampler.rate != rate:
            if resampler is not None:
                log.info("microphone changed its rate from %d to %d Hz", resampler.rate, rate)
            resampler = StreamResampler(rate)
        piece = resampler.process(samples)
        if piece.size:
            yield piece
