"""Notice a WebRTC peer that vanished (a crashed tab, a lost network) long before ICE does.

aiortc has no "disconnected" state: it learns that a peer is gone only when ICE consent
expires (RFC 7675), 25-35 s after the last answer, and until then the session holds its slot
of --max_session. Every receiver sends RTCP reports about the streams it gets, browsers about
once a second for video and aiortc every 0.5-1.5 s, so when no report has come for
SILENCE_S the peer is gone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from aiortc import RTCPeerConnection

log = logging.getLogger(__name__)

SILENCE_S = 10.0  # no RTCP report for this long: the peer is gone
CHECK_EVERY_S = 1.0


async def last_report(pc: RTCPeerConnection) -> datetime | None:
    """When the newest RTCP receiver report about any stream we send arrived (None: none yet)."""
    newest: datetime | None = None
    for sender in pc.getSenders():
        if sender.track is None:
            continue
        stats = await sender.getStats()
        for stat in stats.values():
            if stat.type == "remote-inbound-rtp" and (newest is None or stat.timestamp > newest):
                newest = stat.timestamp
    return newest


async def watch_reports(
    pc: RTCPeerConnection,
    on_silent: Callable[[float], None],
    silence_s: float = SILENCE_S,
    every_s: float = CHECK_EVERY_S,
) -> None:
    """Run until the peer has sent no report for `silence_s`, then call `on_silent(seconds)`.

    Start it when the peer connects; the silence is counted from then until the first report.
    """
    since = datetime.now(UTC)
    while True:
        await asyncio.sleep(every_s)
        if pc.connectionState != "connected":
            return  # closing already: the connection's own state change handles it
        reported = await last_report(pc)
        if reported is not None and reported > since:
            since = reported
        silent = (datetime.now(UTC) - since).total_seconds()
        if silent >= silence_s:
            on_silent(silent)
            return
