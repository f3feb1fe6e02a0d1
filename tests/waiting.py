"""Small async helpers shared by the end-to-end tests and bench/: polling and JSON posts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp


async def wait_until(predicate: Callable[[], object], timeout: float, step: float = 0.02) -> bool:
    """Poll `predicate` until it holds or `timeout` seconds pass; its last answer as a bool."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(step)
    return bool(predicate())


async def post_json(http: aiohttp.ClientSession, url: str, body: dict) -> tuple[int, dict]:
    """POST a JSON body; the HTTP status and the decoded JSON answer."""
    async with http.post(url, json=body) as resp:
        return resp.status, await resp.json()
