"""What an output sees of a session: its pictures and sound, as they leave the one clock.

The clock (outputs.player) puts every 40 ms picture and every 20 ms packet of sound into each
attached tap. A tap is bounded: an output that falls behind loses its oldest media (counted
and logged), never the session's time or another output's. A tap is read either from the
event loop (`aget`, WebRTC tracks) or from an output's own thread (`get`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from functools import cached_property

import cv2
import numpy as np

log = logging.getLogger(__name__)

_DROP_LOG_EVERY_S = 5.0


@dataclass(frozen=True, eq=False)
class Picture:
    """The frame shown in 40 ms slot `slot` (HxWx3 uint8 BGR, shared: read it, never write)."""

    slot: int
    image: np.ndarray

    @cached_property
    def i420(self) -> np.ndarray | None:
        """The picture as I420 (what VP8 and H.264 encode; BT.601 studio range, as FFmpeg
        converts), made once for all the outputs that encode it; None when a side is odd."""
        h, w = self.image.shape[:2]
        if h % 2 or w % 2:
            return None
        return cv2.cvtColor(self.image, cv2.COLOR_BGR2YUV_I420)


@dataclass(frozen=True, eq=False)
class Sound:
    """20 ms packet `index` of the session's sound: 320 int16 samples at 16 kHz (shared),
    played at `at` (time.monotonic; a peer's track stamps the copy it sends with when it sent it)."""

    index: int
    pcm: np.ndarray
    speech: bool
    at: float = field(default_factory=time.monotonic)


Media = Picture | Sound


class Tap:
    """A bounded queue of one output's media. Put from the event loop (the clock); read from
    the loop or from a thread. When full, the oldest item goes: for a live output the newest
    media is the one worth having."""

    def __init__(self, name: str, *, video: bool = True, audio: bool = True, limit: int = 150,
                 interruptible: bool = False) -> None:
        self.name = name
        self.video = video
        self.audio = audio
        # A live peer's: an interrupt hushes the speech it has not sent yet (see hush). Not a
        # recording's, which keeps what was played, nor the echo guard's reference.
        self.interruptible = interruptible
        self.limit = limit
        self.dropped = 0  # items lost because the output was behind
        self.closed = False
        self._items: deque[Media | None] = deque()
        self._cond = threading.Condition()
        self._ready = asyncio.Event()  # wakes an event-loop reader
        self._loop: asyncio.AbstractEventLoop | None = None  # the reader's loop, once it waited
        self._logged = 0.0

    def put(self, item: Media) -> None:
        """Clock side (event loop)."""
        with self._cond:
            if self.closed:
                return
            if len(self._items) >= self.limit:
                self._items.popleft()
                self.dropped += 1
                now = time.monotonic()
                if now - self._logged >= _DROP_LOG_EVERY_S:
                    self._logged = now
                    log.warning("output %s is behind: %d items dropped so far", self.name, self.dropped)
            self._items.append(item)
            self._cond.notify()
        self._wake()

    def hush(self, silence: np.ndarray) -> None:
        """Make the speech not yet read silent (an interrupt): an output that is behind must
        not go on talking for its backlog. Its timing stays: the packets are kept, silent."""
        with self._cond:
            self._items = deque(replace(item, pcm=silence, speech=False)
                                if isinstance(item, Sound) and item.speech else item for item in self._items)

    def close(self) -> None:
        """No more media: readers get None once the queue is empty. Any thread."""
        with self._cond:
            if self.closed:
                return
            self.closed = True
            self._items.append(None)
            self._cond.notify_all()
        self._wake()

    def _wake(self) -> None:
        loop = self._loop
        if loop is None:
            return  # no event-loop reader (yet): a thread reader was notified above
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._ready.set()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(self._ready.set)

    def get(self, timeout: float | None = None) -> Media | None:
        """Thread side: the next item, None once closed; TimeoutError when none came."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items, timeout):
                raise TimeoutError
            item = self._items.popleft()
            if item is None:
                self._items.append(None)  # every later read sees the end too
            return item

    async def aget(self) -> Media | None:
        """Event-loop side: the next item, None once closed."""
        while True:
            with self._cond:
                if self._items:
                    item = self._items.popleft()
                    if item is None:
                        self._items.append(None)
                    return item
                self._ready.clear()
                self._loop = asyncio.get_running_loop()
            await self._ready.wait()

    def backlog(self) -> int:
        with self._cond:
            return len(self._items)
