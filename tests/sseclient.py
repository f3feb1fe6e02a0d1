"""A Server-Sent Events listener for GET /sse, recording each event and when it arrived."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import aiohttp


@dataclass
class SseClient:
    url: str  # the whole /sse?sessionid=N address
    events: list[dict] = field(default_factory=list)  # each with "_at": monotonic arrival time
    ended: bool = False  # the server finished the stream
    _response: aiohttp.ClientResponse | None = None
    _task: asyncio.Task | None = None

    async def connect(self, http: aiohttp.ClientSession) -> None:
        """Open the stream; once this returns, the server has subscribed this listener."""
        self._response = await http.get(self.url, timeout=aiohttp.ClientTimeout(total=None))
        assert self._response.status == 200, await self._response.text()
        assert self._response.headers["Content-Type"].startswith("text/event-stream")
        self._task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self._response is not None
        data: list[str] = []
        try:
            async for raw in self._response.content:
                line = raw.decode("utf-8").rstrip("\r\n")
                if line.startswith("data:"):
                    data.append(line[5:].lstrip())
                elif not line and data:
                    event = json.loads("\n".join(data))
                    event["_at"] = time.monotonic()
                    self.events.append(event)
                    data = []
        except (aiohttp.ClientError, asyncio.CancelledError):
            return
        self.ended = True

    def of(self, *statuses: str) -> list[dict]:
        return [e for e in self.events if e["status"] in statuses]

    async def wait_for(self, predicate, timeout: float) -> dict:
        """The first event matching predicate(event), waiting for it to arrive."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if predicate(event):
                    return event
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching event in {timeout}s; got {self.events}")
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        """Go away abruptly, as a closed browser tab does."""
        if self._response is not None:
            self._response.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
