"""A WHEP viewer: a standard player (or OBS) watching a session over its own peer connection.

Each viewer has its own pair of tracks on the session's clock (webrtc.session_tracks): the
session renders once, and each viewer's picture is encoded for it alone, so a slow viewer
only loses its own frames. A viewer that never connects, fails or closes is removed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiortc import RTCSessionDescription

import webrtc
from outputs.base import Output, OutputError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0


class WhepViewer(Output):
    kind = "whep"

    def __init__(self, *args: Any, sdp: str, on_gone: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._offer = sdp
        self._on_gone = on_gone
        self.pc = webrtc.new_peer(self.opt.ice)
        self.answer = ""
        self._timer: asyncio.TimerHandle | None = None
        self._stopped = False

    async def start(self) -> None:
        pc = self.pc
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=self._offer, type="offer"))
            for track in webrtc.session_tracks(self.player, "whep"):
                pc.addTrack(track)
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            raise OutputError(f"could not use the SDP offer: {str(exc)[:200]}") from None
        self.answer = pc.localDescription.sdp
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(CONNECT_TIMEOUT_S, self._gone, "never connected")

        @pc.on("connectionstatechange")
        def on_state() -> None:
            state = pc.connectionState
            if state == "connected":
                if self._timer is not None:
                    self._timer.cancel()
                self.tell("running", "a WHEP viewer connected")
            elif state in ("failed", "closed"):
                self._gone(state)

    def _gone(self, why: str) -> None:
        if self._stopped:
            return
        log.info("session %s: WHEP viewer %s", self.sessionid, why)
        self._on_gone()
        asyncio.ensure_future(self.stop())

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
        await self.pc.close()
        self.state_name = "closed"
