"""The interface every output of a session implements, and the thread most of them run on.

An output consumes the session's clock through its own tap (outputs.tap): it never slows the
session or another output. Its life: `start` (event loop; may fail with OutputError, which
the caller turns into a 4xx), media until `stop` (event loop; idempotent, leaves no thread,
socket or file behind), and `state()` for /stats. What happens to it (connected, dropped,
reconnecting, failed) is logged and published on the session's events as
{"status": "output", "output": kind, "state": ..., "detail": ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar
from urllib.parse import urlsplit

from outputs.player import BLACK, HumanPlayer
from outputs.tap import Media, Tap

log = logging.getLogger(__name__)

Notify = Callable[[dict], None]  # publishes an event to the session (any thread)
TAP_SECONDS = 4.0  # media a threaded output may fall behind by before its oldest is dropped
STOP_WAIT_S = 10.0  # how long stopping waits for an output's thread to finish its file or socket
RECONNECT_FIRST_S = 1.0
RECONNECT_MAX_S = 30.0


class Backoff:
    """How long a push waits before its next try: 1 s, doubling to 30 s, from 1 s again once
    a connection came up."""

    def __init__(self) -> None:
        self.delay = RECONNECT_FIRST_S

    def reset(self) -> None:
        self.delay = RECONNECT_FIRST_S

    def next(self) -> float:
        delay = self.delay
        self.delay = min(2 * delay, RECONNECT_MAX_S)
        return delay


def safe_url(url: str, hide_last: bool = False) -> str:
    """A push URL for the log and events: no user:password, query or fragment (tokens live
    there), and with `hide_last` not its last path part either (an RTMP stream key)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    path = re.sub(r"/[^/]+$", "/***", parts.path) if hide_last else parts.path
    return f"{parts.scheme}://{host}{port}{path}"


class OutputError(Exception):
    """An output that cannot start, with a message for the client (a 4xx)."""

    def __init__(self, msg: str, status: int = 400) -> None:
        super().__init__(msg)
        self.msg = msg
        self.status = status


class Output(ABC):
    """One destination of a session's pictures and sound."""

    kind: ClassVar[str]  # the registry name: --transport and the outputs of POST /session
    needs_url: ClassVar[bool] = False  # whether it takes --push_url / a request's url

    def __init__(self, player: HumanPlayer, sessionid: int, url: str | None, opt: argparse.Namespace,
                 notify: Notify, **options: Any) -> None:
        self.player = player
        self.sessionid = sessionid
        self.url = url
        self.opt = opt
        self.options = options  # what the request added (a push's token)
        self._notify = notify
        self.state_name = "starting"

    @abstractmethod
    async def start(self) -> None:
        """Begin consuming the clock (event loop); OutputError when it cannot."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop for good and release everything (event loop; idempotent)."""

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "state": self.state_name}

    def picture_size(self) -> tuple[int, int]:
        """(width, height) of the session's pictures: its avatar's, known from its poster."""
        image = self.player.poster if self.player.poster is not None else BLACK
        return image.shape[1], image.shape[0]

    def tell(self, state: str, detail: str = "", level: int = logging.INFO) -> None:
        """Log a change of state and publish it on the session's events."""
        self.state_name = state
        log.log(level, "session %s output %s %s%s", self.sessionid, self.kind, state, f": {detail}" if detail else "")
        event = {"status": "output", "output": self.kind, "state": state}
        if detail:
            event["detail"] = detail
        try:
            self._notify(event)
        except Exception:
            log.exception("session %s: publishing an output event failed", self.sessionid)


class ThreadedOutput(Output):
    """An output that encodes on a thread of its own, reading a tap of both kinds of media.

    Subclasses implement `open` (connect or create), `write` (one picture or packet) and
    `finish` (flush and release). When `open` or `write` raises, a push output
    (`reconnects`) closes, waits with back-off and opens again, telling each step; any
    other output stops. Either way the session plays on.
    """

    reconnects: ClassVar[bool] = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tap = Tap(f"{self.kind} of session {self.sessionid}", limit=int(TAP_SECONDS * 75))
        self._thread = threading.Thread(target=self._run, name=f"{self.kind}-{self.sessionid}", daemon=True)
        self._stopping = threading.Event()
        self.failures = 0

    @abstractmethod
    def open(self) -> None:
        """Connect or create the destination (output thread)."""

    @abstractmethod
    def write(self, item: Media) -> None:
        """Encode and send one picture or packet (output thread)."""

    @abstractmethod
    def finish(self, completed: bool) -> None:
        """Flush and release; `completed` False after a failure (output thread). Must not raise."""

    async def start(self) -> None:
        self.player.attach(self.tap)
        self._thread.start()

    async def stop(self) -> None:
        self._stopping.set()
        self.player.detach(self.tap)
        if self._thread.ident is None:
            return
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join, STOP_WAIT_S)
        if self._thread.is_alive():
            log.error("session %s output %s did not stop in %g s", self.sessionid, self.kind, STOP_WAIT_S)

    def _run(self) -> None:
        backoff = Backoff()
        while not self._stopping.is_set():
            opened = False
            try:
                self.open()
                opened = True
                self.tell("running", self.describe())
                backoff.reset()
                self._pump()
                self.finish(completed=True)
                return
            except Exception as exc:
                self.failures += 1
                self.finish(completed=False)
                if self._stopping.is_set():
                    return
                reason = f"{type(exc).__name__}: {exc}"[:300]
                if not self.reconnects:
                    self.tell("failed", reason, logging.ERROR)
                    self.player.detach(self.tap)
                    return
                delay = backoff.next()
                self.tell("reconnecting", f"{'dropped' if opened else 'could not connect'} ({reason}); "
                                          f"next try in {delay:g} s", logging.WARNING)
                if self._stopping.wait(delay):
                    return
                self._skip_backlog()

    def _pump(self) -> None:
        while True:
            item = self.tap.get()
            if item is None:
                return
            self.write(item)

    def _skip_backlog(self) -> None:
        """After a reconnect, start from now: what queued while away is stale."""
        while self.tap.backlog():
            try:
                item = self.tap.get(0)
            except TimeoutError:
                return
            if item is None:
                return  # the end stays queued for _pump

    def describe(self) -> str:
        """What the log says once the output runs (its destination, made safe)."""
        return ""

    def state(self) -> dict[str, Any]:
        return {**super().state(), "dropped": self.tap.dropped, "failures": self.failures}
