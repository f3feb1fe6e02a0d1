"""H.264 + AAC into a container through PyAV: one copy for the recorder (mp4) and RTMP (FLV).

The container is opened (a push connects) when the muxer is made, at the size of the
session's pictures; sound before the first picture is dropped, so both streams start at the
same slot. Time stamps come from the clock's slot and
packet numbers, not from arrival: a picture dropped by a slow encoder leaves a gap in the
video (players hold the last frame), and a gap in the sound is filled with silence, so the
sound never slides against the picture.
"""

from __future__ import annotations

import fractions
from typing import Any

import av
import cv2
import numpy as np

from baseasr import CHUNK, SAMPLE_RATE
from outputs.player import FPS
from outputs.tap import Media, Picture, Sound

AAC_RATE = 48000  # what streaming platforms ask for; the 16 kHz speech is resampled once
AAC_BITRATE = 64000
MAX_FILL_PACKETS = 250  # silence inserted for a gap in the sound, at most (5 s)
_SILENT_PCM = np.zeros(CHUNK, dtype=np.int16)


class AVMux:
    """Write a session's media to `target` (a path or an rtmp:// URL) as H.264 + AAC.

    `live` chooses the encoder's low-latency settings (no B-frames, zerolatency) for a push;
    a recording takes the default look-ahead for a smaller file. Either way a keyframe comes
    at least every second, so a viewer joining late sees a picture at once.
    """

    def __init__(self, target: str, fmt: str, size: tuple[int, int], *, live: bool,
                 options: dict[str, str] | None = None, timeout_s: float = 10.0) -> None:
        w, h = size
        self._size = (w - w % 2, h - h % 2)  # H.264 4:2:0 needs even sides
        self._first_slot: int | None = None
        self._next_packet = 0  # the next sound packet the audio stream expects (clock numbering)
        self.pictures = 0
        self.packets = 0
        self.container: Any = av.open(target, mode="w", format=fmt, options=options or {},
                                      timeout=(timeout_s, timeout_s))
        try:
            self._add_streams(live)
            # Open the encoders and write the header now: for a push this is the connection,
            # which PyAV would otherwise make at the first packet, after "running" was told.
            self.container.start_encoding()
        except BaseException:
            self.container.close()
            raise

    def write(self, item: Media) -> None:
        if isinstance(item, Picture):
            if self._first_slot is None:
                self._first_slot = item.slot
                self._next_packet = 2 * item.slot
            self._write_picture(item)
        elif self._first_slot is not None:
            self._write_sound(item)

    def _add_streams(self, live: bool) -> None:
        video = self.container.add_stream("libx264", rate=FPS)
        video.width, video.height = self._size
        video.pix_fmt = "yuv420p"
        video.time_base = fractions.Fraction(1, FPS)
        x264 = {"preset": "veryfast", "g": str(FPS), "keyint_min": str(FPS), "sc_threshold": "0"}
        if live:
            x264.update({"tune": "zerolatency", "bf": "0"})
        video.codec_context.options = x264
        audio = self.container.add_stream("aac", rate=AAC_RATE)
        audio.layout = "mono"
        audio.bit_rate = AAC_BITRATE
        self._video, self._audio = video, audio
        self._resampler = av.AudioResampler(format="fltp", layout="mono", rate=AAC_RATE)

    def _write_picture(self, picture: Picture) -> None:
        assert self._first_slot is not None
        w, h = self._size
        image = picture.image
        if image.shape[:2] == (h, w):
            i420 = picture.i420  # shared with the session's other outputs
        else:
            # An odd side loses its last row or column; a frame of another size (the avatar
            # changed) is scaled to the stream's.
            odd_only = 0 <= image.shape[0] - h <= 1 and 0 <= image.shape[1] - w <= 1
            image = image[:h, :w] if odd_only else cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
            i420 = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_BGR2YUV_I420)
        frame = av.VideoFrame.from_ndarray(i420, format="yuv420p")
        frame.pts = picture.slot - self._first_slot
        frame.time_base = fractions.Fraction(1, FPS)
        self.container.mux(self._video.encode(frame))
        self.pictures += 1

    def _write_sound(self, sound: Sound) -> None:
        if sound.index < self._next_packet:
            return  # before the first picture, or a duplicate
        gap = sound.index - self._next_packet
        if gap > MAX_FILL_PACKETS:  # a long pause (a reconnect): the sound restarts there
            self._next_packet = sound.index
            gap = 0
        for _ in range(gap):
            self._encode_pcm(_SILENT_PCM)
        self._encode_pcm(sound.pcm)

    def _encode_pcm(self, pcm: np.ndarray) -> None:
        assert self._first_slot is not None
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, CHUNK), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = (self._next_packet - 2 * self._first_slot) * CHUNK
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self._next_packet += 1
        for resampled in self._resampler.resample(frame):
            self.container.mux(self._audio.encode(resampled))
        self.packets += 1

    def close(self, flush: bool = True) -> None:
        """Flush the encoders (when `flush`) and close the container, which is released even
        when the flush fails (a broken connection); the failure is raised after."""
        container, self.container = self.container, None
        if container is None:
            return
        try:
            if flush and self._first_slot is not None:
                container.mux(self._video.encode(None))
                container.mux(self._audio.encode(None))
        finally:
            container.close()
