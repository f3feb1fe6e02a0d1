"""Read back what an output produced (an RTMP stream, an mp4) with PyAV, as a viewer would:
each picture's time and mouth crop, each stretch of sound's time and loudness."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import av
import numpy as np

from portrait_geometry import sway_box


@dataclass
class Decoded:
    video: list[tuple[float, np.ndarray]] = field(default_factory=list)  # (seconds, mouth crop)
    audio: list[tuple[float, float, float]] = field(default_factory=list)  # (seconds, duration, rms)
    video_codec: str = ""
    audio_codec: str = ""
    size: tuple[int, int] = (0, 0)
    audio_rate: int = 0

    def fps(self) -> float:
        times = [t for t, _ in self.video]
        return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0

    def audio_seconds(self) -> float:
        return sum(d for _, d, _ in self.audio)

    def first_loud(self, rms: float, after: float = -1.0) -> float | None:
        return next((t for t, _, r in self.audio if r > rms and t > after), None)


def decode(source: str, stop: threading.Event | None = None, timeout_s: float = 10.0,
           out: Decoded | None = None) -> Decoded:
    """Decode `source` until it ends or `stop` is set (checked every packet), into `out`."""
    out = out if out is not None else Decoded()
    x1, y1, x2, y2 = sway_box()
    with av.open(source, timeout=(timeout_s, timeout_s)) as container:
        streams = [s for s in container.streams if s.type in ("video", "audio")]
        for s in streams:
            if s.type == "video":
                out.video_codec = s.codec_context.name
            else:
                out.audio_codec = s.codec_context.name
                out.audio_rate = s.codec_context.sample_rate
        for packet in container.demux(streams):
            if stop is not None and stop.is_set():
                break
            for frame in packet.decode():
                if frame.pts is None:
                    continue
                t = float(frame.pts * frame.time_base)
                if isinstance(frame, av.VideoFrame):
                    image = frame.to_ndarray(format="bgr24")
                    out.size = (frame.width, frame.height)
                    out.video.append((t, image[y1:y2, x1:x2].copy()))
                else:
                    pcm = frame.to_ndarray().astype(np.float32)
                    if frame.format.name in ("s16", "s16p"):
                        pcm /= 32768.0
                    out.audio.append((t, frame.samples / frame.sample_rate, float(np.sqrt(np.mean(pcm**2)))))
    return out


class BackgroundReader:
    """Decode a live stream on a thread until stopped."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.stop_event = threading.Event()
        self.result = Decoded()  # filled as the stream is decoded
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="test-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            decode(self.source, self.stop_event, out=self.result)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def stop(self, timeout: float = 15.0) -> Decoded:
        self.stop_event.set()
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        assert not self._thread.is_alive(), "the reader did not finish"
        return self.result
