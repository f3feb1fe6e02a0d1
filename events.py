"""Live session events: fan-out to any number of listeners, and their Server-Sent Events stream.

A session publishes `start`/`end` as each piece's audio leaves the session's clock,
`speaking` changes, `error`s, and `closed` when it ends. Every listener has its own bounded
queue: a listener that stops reading is dropped when its queue fills, and one whose
connection is gone is dropped at the next event or heartbeat, so neither costs the session
anything or holds back the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

LISTENER_QUEUE = 256  # events a listener may fall behind by before it is dropped
LISTENER_BYTES = 256 * 1024  # bytes of events a listener may fall behind by
MAX_LISTENERS = 8  # per session: a page, an operator's console, a few tools
HEARTBEAT_S = 15.0  # an idle stream sends a comment this often, which also finds dead connections
RETRY_MS = 3000  # how soon a browser's EventSource reconnects after a dropped stream

_END = object()  # tells a listener's stream to finish


class TooManyListeners(Exception):
    """A session (or the server) has as many event listeners as it allows."""


class Listener:
    """One subscriber's queue of events (already encoded as SSE messages), bounded in count
    and in bytes."""

    def __init__(self, maxsize: int, max_bytes: int = LISTENER_BYTES) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)
        self._max_bytes = max_bytes
        self.queued_bytes = 0
        self.ended = False

    def offer(self, message: bytes) -> bool:
        """Queue a message; False (and the listener ends) when it has fallen too far behind."""
        if self.ended:
            return False
        if self.queued_bytes + len(message) > self._max_bytes:
            self.end()
            return False
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            self.end()
            return False
        self.queued_bytes += len(message)
        return True

    def end(self) -> None:
        """Finish the stream after what is already queued (or at once, when full)."""
        if self.ended:
            return
        self.ended = True
        if self._queue.full() or self.queued_bytes >= self._max_bytes:
            # Too slow to keep: drop its backlog so the end marker fits.
            while not self._queue.empty():
                self._queue.get_nowait()
            self.queued_bytes = 0
        self._queue.put_nowait(_END)

    async def get(self, timeout: float) -> bytes | None:
        """The next message; None when the stream should finish; TimeoutError when idle."""
        item = await asyncio.wait_for(self._queue.get(), timeout)
        if item is _END:
            return None
        self.queued_bytes -= len(item)
        return item


class SessionEvents:
    """The event hub of one session. `publish` may be called from any thread."""

    def __init__(
        self, sessionid: int, loop: asyncio.AbstractEventLoop, maxsize: int = LISTENER_QUEUE,
        max_listeners: int = MAX_LISTENERS,
    ) -> None:
        self.sessionid = sessionid
        self._loop = loop
        self._maxsize = maxsize
        self.max_listeners = max_listeners
        self._listeners: set[Listener] = set()
        self._observers: list[Callable[[dict], None]] = []
        self._seq = 0
        self.closed = False

    @property
    def listener_count(self) -> int:
        return len(self._listeners)

    def publish(self, event: dict) -> None:
        """Send an event to every listener. Thread-safe: the TTS worker reports errors too."""
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._deliver(event)
            return
        with contextlib.suppress(RuntimeError):  # the loop is already closed: nobody listens
            self._loop.call_soon_threadsafe(self._deliver, event)

    def observe(self, observer: Callable[[dict], None]) -> None:
        """Call `observer(event)` on the event loop for every event, before the listeners get it
        (in-process followers such as the chat, which learns from "end" what was heard)."""
        self._observers.append(observer)

    def subscribe(self) -> Listener:
        """A new listener; TooManyListeners when the session has its maximum."""
        listener = Listener(self._maxsize)
        if self.closed:
            listener.end()
        elif len(self._listeners) >= self.max_listeners:
            raise TooManyListeners(f"session already has {len(self._listeners)} event listeners (the limit)")
        else:
            self._listeners.add(listener)
        return listener

    def unsubscribe(self, listener: Listener) -> None:
        self._listeners.discard(listener)

    def close(self, reason: str = "") -> None:
        """Publish `closed` and finish every listener's stream (on the event loop)."""
        if self.closed:
            return
        self._deliver({"status": "closed", "reason": reason})
        self.closed = True
        self._observers.clear()
        for listener in self._listeners:
            listener.end()
        self._listeners.clear()

    def _deliver(self, event: dict) -> None:
        if self.closed:
            return
        for observer in self._observers:
            try:
                observer(event)
            except Exception:  # a follower's bug must not cost the listeners their events
                log.exception("session %s: an event observer failed", self.sessionid)
        self._seq += 1
        try:
            message = encode(event, self._seq)
        except Exception:  # an event no stage could encode must not cost the session its stream
            log.exception("session %s: could not encode an event", self.sessionid)
            return
        for listener in list(self._listeners):
            if not listener.offer(message):
                log.info("session %s: dropped an event listener that fell behind", self.sessionid)
                self._listeners.discard(listener)


def encode(event: dict, seq: int) -> bytes:
    """One SSE message: an id and the event as a JSON object on one data line.

    No `event:` field, so a browser's EventSource.onmessage gets every kind; the kind is the
    object's "status".
    """
    data = json.dumps(event, ensure_ascii=False, default=str)
    # Text is cleaned at the edge; "replace" is the last guard against a lone surrogate.
    return f"id: {seq}\ndata: {data}\n\n".encode("utf-8", "replace")


async def stream(request: web.Request, events: SessionEvents, heartbeat_s: float = HEARTBEAT_S) -> web.StreamResponse:
    """Serve `events` to one listener as text/event-stream until the session or the client ends.

    Raises TooManyListeners before anything is sent when the session has its maximum."""
    listener = events.subscribe()  # before the headers go out: a client that has them misses nothing
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # nginx must not hold events back
        }
    )
    try:
        await response.prepare(request)
        await response.write(f"retry: {RETRY_MS}\n\n".encode())
        while True:
            try:
                message = await listener.get(heartbeat_s)
            except TimeoutError:
                message = b": ping\n\n"
            if message is None:
                break
            await response.write(message)
    except ConnectionResetError:
        log.debug("session %s: an event listener went away", events.sessionid)
    finally:
        events.unsubscribe(listener)
    return response
