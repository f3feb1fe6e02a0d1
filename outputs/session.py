"""The outputs one session has open, by name: started, listed and stopped together."""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

from outputs import output_class
from outputs.base import Notify, Output, OutputError
from outputs.player import HumanPlayer

log = logging.getLogger(__name__)

MAX_OUTPUTS = 8  # per session: a recording, a few pushes, a camera


class SessionOutputs:
    """A session's outputs. Event loop only."""

    def __init__(self, player: HumanPlayer, sessionid: int, opt: argparse.Namespace, notify: Notify) -> None:
        self.player = player
        self.sessionid = sessionid
        self.opt = opt
        self.notify = notify
        self._outputs: dict[str, Output] = {}
        self._closed = False

    def __contains__(self, name: str) -> bool:
        return name in self._outputs

    def get(self, name: str) -> Output | None:
        return self._outputs.get(name)

    async def add(self, kind: str, url: str | None = None, name: str | None = None, **options: Any) -> Output:
        """Start an output of `kind` (to `url`, with its `options`) under `name` (default: the kind)."""
        name = name or kind
        self._check_room(name)
        cls = output_class(kind)
        if cls.needs_url and not url:
            raise OutputError(f"output {kind} needs a url (--push_url, or the request's 'url')")
        return await self.adopt(name, cls(self.player, self.sessionid, url, self.opt, self.notify, **options))

    def _check_room(self, name: str) -> None:
        if self._closed:
            raise OutputError(f"session {self.sessionid} is closing", 409)
        if name in self._outputs:
            raise OutputError(f"session {self.sessionid} already has a {name} output", 409)
        if len(self._outputs) >= MAX_OUTPUTS:
            raise OutputError(f"session {self.sessionid} has {MAX_OUTPUTS} outputs, the limit", 429)

    async def adopt(self, name: str, output: Output) -> Output:
        """Start an output made elsewhere (a WHEP viewer, with its offer) under `name`."""
        try:
            self._check_room(name)
        except OutputError:
            await output.stop()
            raise
        self._outputs[name] = output
        try:
            await output.start()
        except BaseException:
            self._outputs.pop(name, None)
            await output.stop()
            raise
        return output

    def forget(self, name: str) -> None:
        """Drop an output that stopped by itself (a viewer gone)."""
        self._outputs.pop(name, None)

    async def remove(self, name: str) -> Output | None:
        """Stop and forget the output called `name`; None when there is none."""
        output = self._outputs.pop(name, None)
        if output is not None:
            await output.stop()
        return output

    async def close(self) -> None:
        """Stop every output (session close or shutdown); idempotent."""
        self._closed = True
        outputs, self._outputs = list(self._outputs.values()), {}
        results = await asyncio.gather(*(o.stop() for o in outputs), return_exceptions=True)
        for output, result in zip(outputs, results, strict=True):
            if isinstance(result, BaseException):
                log.error("session %s: stopping output %s failed: %r", self.sessionid, output.kind, result)

    def states(self) -> list[dict[str, Any]]:
        return [{"name": name, **output.state()} for name, output in self._outputs.items()]
