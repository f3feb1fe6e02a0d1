"""A WebRTC client that connects, receives media, prints its session id, then waits to be
killed: `python vanishing_peer.py URL`. Killed with SIGKILL, it vanishes the way a crashed
browser or a pulled network cable does, sending nothing more."""

from __future__ import annotations

import asyncio
import sys

import aiohttp

from livepeer import LivePeer


async def main(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        peer = LivePeer(url, (0, 0, 1, 1), inspect_video=False)
        await peer.connect(http)
        await peer.wait_for_media()
        print(peer.sessionid, flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
