"""Live push over RTMP (FLV: H.264 + AAC), upstream's `--transport rtmp`.

Low-latency x264 with a keyframe every second, so a viewer who joins late sees a picture at
once. When the server refuses or drops the stream, the push reconnects with back-off
(ThreadedOutput) and says so in the log and on the session's events.

PyAV makes the connection (TCP, then the RTMP handshake) holding the GIL, with no timeout: a
host that drops packets, or a listener that never answers, would freeze the whole server for
as long as the kernel tries. So before each connection the push checks the server itself,
with timeouts: a TCP connect and the first half of the RTMP handshake (C0+C1 out, S0+S1 back).
Only a server that just answered is handed to PyAV, whose writes then release the GIL.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
from urllib.parse import urlsplit

from outputs.avmux import AVMux
from outputs.base import OutputError, ThreadedOutput, safe_url
from outputs.tap import Media

IO_TIMEOUT_S = 5.0  # connect, and any one write: a server that stops reading is a dropped one
RTMP_VERSION = 3
HANDSHAKE_BYTES = 1536  # C1 / S1: time, zero, random


def check_rtmp_server(url: str, timeout_s: float = IO_TIMEOUT_S) -> None:
    """Connect to the server of `url` and do the first half of the RTMP handshake; OSError
    (TimeoutError, ConnectionRefusedError, ...) saying why when it does not answer in time."""
    parts = urlsplit(url)
    secure = parts.scheme == "rtmps"
    host, port = parts.hostname or "", parts.port or (443 if secure else 1935)
    with socket.create_connection((host, port), timeout_s) as raw:
        raw.settimeout(timeout_s)
        conn = ssl.create_default_context().wrap_socket(raw, server_hostname=host) if secure else raw
        conn.sendall(bytes([RTMP_VERSION]) + bytes(8) + os.urandom(HANDSHAKE_BYTES - 8))
        got = b""
        while len(got) < 1 + HANDSHAKE_BYTES:
            chunk = conn.recv(1 + HANDSHAKE_BYTES - len(got))
            if not chunk:
                raise ConnectionResetError("the server closed the connection during the RTMP handshake")
            got += chunk
        if got[0] != RTMP_VERSION:
            raise ConnectionError(f"not an RTMP server (handshake version {got[0]})")


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
        check_rtmp_server(str(self.url))
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
