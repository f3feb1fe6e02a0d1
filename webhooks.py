"""Webhooks: JSON notifications POSTed to a caller's URL, in order, never holding the caller up.

A feature that tells an outside service about its work (the avatar task API tells a task's
notifyurl of each status change) hands each notification to `Webhooks.send` and carries on:
the send returns at once, from the event loop or from any thread. Each key (a task) gets one
ordered outbox and one sender task on the event loop that delivers its notifications one after
another, so a receiver sees them in the order they happened; a key's last notification ends
its sender. A failed delivery is retried with back-off, every call has a timeout (connecting
included), and redirects are not followed (a webhook goes where the caller said, nowhere
else). URLs are logged without their query or user info, which may carry a secret.

An outbox is bounded: past half full, notifications marked droppable (progress, say) are
skipped, so that a slow receiver still gets every one that matters. The owner starts the
notifier on its loop and closes it at shutdown, which gives the last notifications a moment
to go out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any
from urllib.parse import urlsplit

import aiohttp

log = logging.getLogger("livetalking.webhooks")

TRIES = 3
TIMEOUT_S = 5.0  # per webhook call, connecting included
BACKOFF_S = 0.5  # before the second try; doubled before each later one
QUEUE = 16  # notifications waiting per key; droppable ones are skipped past half
FLUSH_S = 3.0  # close lets the last notifications go out for this long


def url_for_log(url: str) -> str:
    """A webhook's address without its query or user info (either may carry a secret)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}{parts.path}"


class Webhooks:
    """Ordered, retried webhook delivery per key; `label` names a key's owner in the log
    ("avatar task 1f3e...: webhook ... failed")."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._loop: asyncio.AbstractEventLoop | None = None
        self._http: aiohttp.ClientSession | None = None  # None: not started, or closed
        self._outbox: dict[str, asyncio.Queue[tuple[dict[str, Any], str, bool]]] = {}
        self._senders: set[asyncio.Task] = set()

    def start(self) -> None:
        """Begin taking notifications; call on the event loop that will deliver them."""
        self._loop = asyncio.get_running_loop()
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S))

    def send(self, key: str, url: str, body: dict[str, Any], *, what: str = "webhook", last: bool = False,
             droppable: bool = False) -> None:
        """Queue `body` for `url` behind `key`'s earlier notifications; from any thread.
        `what` names it in the log (e.g. its status); `last` ends `key`'s outbox once sent;
        a `droppable` one is skipped while the receiver is behind."""
        loop = self._loop
        if loop is None:
            return
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:  # a thread without a loop, such as a worker
            on_loop = False
        if on_loop:  # into the outbox now, so that a close() right after still delivers it
            self._queue(key, url, body, what, last, droppable)
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody to tell
            loop.call_soon_threadsafe(self._queue, key, url, body, what, last, droppable)

    async def close(self) -> None:
        """Let the queued notifications go out for up to FLUSH_S, then stop."""
        if self._senders:
            await asyncio.wait(list(self._senders), timeout=FLUSH_S)
            for sender in list(self._senders):
                sender.cancel()
        http, self._http = self._http, None  # no new notification starts from here on
        if http is not None:
            await http.close()

    # --- on the loop -----------------------------------------------------------------------------
    def _queue(self, key: str, url: str, body: dict[str, Any], what: str, last: bool, droppable: bool) -> None:
        if self._http is None:
            return
        outbox = self._outbox.get(key)
        if outbox is None:
            outbox = self._outbox[key] = asyncio.Queue(QUEUE)
            sender = asyncio.ensure_future(self._send_all(key, url, outbox))
            self._senders.add(sender)
            sender.add_done_callback(self._senders.discard)
        if droppable and outbox.qsize() >= QUEUE // 2:
            return  # a slow receiver: these can be skipped, the others cannot
        try:
            outbox.put_nowait((body, what, last))
        except asyncio.QueueFull:
            log.warning("%s %s: webhook queue full; a %s notification is dropped", self.label, key, what)

    async def _send_all(self, key: str, url: str, outbox: asyncio.Queue[tuple[dict[str, Any], str, bool]]) -> None:
        """One key's notifications, one after another (so in order), until its last."""
        try:
            while True:
                body, what, last = await outbox.get()
                await self._deliver(key, url, body, what)
                if last:
                    return
        finally:
            self._outbox.pop(key, None)

    async def _deliver(self, key: str, url: str, body: dict[str, Any], what: str) -> bool:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        for attempt in range(TRIES):
            if attempt:
                await asyncio.sleep(BACKOFF_S * 2 ** (attempt - 1))
            http = self._http
            if http is None:
                return False  # closed
            try:
                async with http.post(url, data=data, headers=headers, allow_redirects=False) as resp:
                    if 200 <= resp.status < 300:
                        return True
                    why = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                why = type(exc).__name__
            log.info("%s %s: webhook %s try %d/%d failed (%s)", self.label, key, url_for_log(url), attempt + 1,
                     TRIES, why)
        log.warning("%s %s: the %s notification to %s was not delivered", self.label, key, what, url_for_log(url))
        return False
