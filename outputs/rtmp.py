"""Live push over RTMP (FLV: H.264 + AAC), upstream's `--transport rtmp`.

Low-latency x264 with a keyframe every second, so a viewer who joins late sees a picture at
once. When the server refuses or drops the stream, the push reconnects with back-off
(ThreadedOutput) and says so in the log and on the session's events.
"""

from __future__ import annotations

import re

from outputs.avmux import AVMux
from outputs.base import OutputError, ThreadedOutput, safe_url
from outputs.tap import Media

IO_TIMEOUT_S = 5.0  # connect, and any one write: a server that stops reading is a dropped one


class RtmpPush(ThreadedOutput):
    kind = "rtmp"
    needs_url = True
    reconnects = True

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        if not self.url or not re.match(r"rtmps?://[^/\s]+/\S+$", self.url):
            raise OutputError("an RTMP push needs a url like rtmp://host/app/key")
        self._mux: AVMux | None = None

    def describe(self) -> str:
        return safe_url(str(self.url), hide_last=True)

    def open(self) -> None:
        self._mux = AVMux(str(self.url), "flv", self.picture_size(), live=True, timeout_s=IO_TIMEOUT_S)

    def write(self, item: Media) -> None:
        assert self._mux is not None
        self._mux.write(item)

    def finish(self, completed: bool) -> None:
        mux, self._mux = self._mux, None
        if mux is None:
            return
        try:
            mux.close(flush=completed)
        except Exception:
            pass  # the connection is gone already; it is released either way
