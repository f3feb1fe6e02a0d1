"""A real OpenAI-compatible chat-completions server on loopback, for the chat tests and the bench.

It speaks the streaming protocol exactly as OpenAI, DashScope, vLLM and Ollama do: POST
/v1/chat/completions with "stream": true answers text/event-stream, one `data: {json}` chunk
per delta in `choices[0].delta.content`, then `data: [DONE]`. Each request takes the next
queued `Script` (how to answer: text chunks, pace, an HTTP error, a failure mid-stream, a gate
to hold the rest back), and the server records what it was asked and what it saw: the
messages of every request, when each chunk left, and the streams the client closed early.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Script:
    chunks: list[str] = field(default_factory=lambda: ["Hello", " there."])
    interval: float = 0.0  # seconds between chunks
    first_delay: float = 0.0  # seconds before the first chunk (a model's time to first token)
    status: int = 200  # anything else answers {"error": {"message": message}} with this status
    message: str = "scripted failure"
    error_after: int | None = None  # send an error chunk instead of chunk N (mid-stream failure)
    drop_after: int | None = None  # close the connection instead of sending chunk N
    gate: threading.Event | None = None  # wait for it before sending chunk `gate_at`
    gate_at: int = 0
    # The answer as a function of the question (the last user message), word by word, instead
    # of `chunks`: a script that can stand for several requests of unknown order.
    respond: Callable[[str], str] | None = None


@dataclass
class Stream:
    """What happened to one streamed answer."""

    request: dict
    sent: list[tuple[float, str]] = field(default_factory=list)  # (monotonic time, chunk) as written
    done: bool = False  # [DONE] was written
    client_closed_at: float | None = None  # the client closed the stream before its end
    peer: tuple | None = None  # the client's address: one per TCP connection it opened


def tokens(text: str) -> list[str]:
    """One token per word with its leading space, as LLM tokenizers stream English (a word is
    known to be whole only when the next token comes)."""
    return [word if i == 0 else " " + word for i, word in enumerate(text.split(" "))]


def chunk(text: str | None, model: str, first: bool = False, finish: str | None = None) -> bytes:
    delta: dict = {}
    if first:
        delta["role"] = "assistant"
    if text is not None:
        delta["content"] = text
    body = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n".encode()


class FakeLLM:
    """The server, on its own event loop thread so any test loop can talk to it."""

    def __init__(self) -> None:
        self.scripts: deque[Script] = deque()
        self.default = Script()
        self.streams: list[Stream] = []
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fake-llm-loop", daemon=True)
        self._thread.start()
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._call(self._start())

    # --- control (test thread) ----------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def requests(self) -> list[dict]:
        return [s.request for s in self.streams]

    def script(self, *scripts: Script) -> None:
        self.scripts.extend(scripts)

    def go_down(self) -> None:
        """Stop listening and drop open connections: connecting is refused until `come_back`."""
        self._call(self._go_down())

    def come_back(self) -> None:
        self._call(self._listen(self.port))

    def stop(self) -> None:
        if self._runner is not None:
            self._call(self._runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    # --- server (its loop) --------------------------------------------------------------
    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await self._listen(0)

    async def _go_down(self) -> None:
        await self._site.stop()
        for handler in list(self._runner.server.connections):  # pooled keep-alive connections
            if handler.transport is not None:
                handler.transport.close()

    async def _listen(self, port: int) -> None:
        self._site = web.TCPSite(self._runner, "127.0.0.1", port)
        await self._site.start()
        self.port = self._site._server.sockets[0].getsockname()[1]

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        stream = Stream(body, peer=request.transport.get_extra_info("peername") if request.transport else None)
        self.streams.append(stream)
        script = self.scripts.popleft() if self.scripts else self.default
        if script.status != 200:
            return web.json_response(
                {"error": {"message": script.message, "type": "server_error", "code": script.status}},
                status=script.status,
            )
        if not body.get("stream"):
            return web.json_response({"error": {"message": "this server only streams"}}, status=400)
        model = body.get("model", "")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        try:
            if script.first_delay:
                await asyncio.sleep(script.first_delay)
            chunks = script.chunks
            if script.respond is not None:
                question = next((m["content"] for m in reversed(body.get("messages", [])) if m["role"] == "user"), "")
                chunks = tokens(script.respond(question))
            for i, text in enumerate(chunks):
                if script.gate is not None and i == script.gate_at:
                    while not script.gate.is_set():
                        await asyncio.sleep(0.01)
                if i == script.error_after:
                    await response.write(f"data: {json.dumps({'error': {'message': script.message}})}\n\n".encode())
                    return response
                if i == script.drop_after:
                    request.transport.close()  # no terminating chunk: the body is cut off
                    return response
                await response.write(chunk(text, model, first=i == 0))
                stream.sent.append((time.monotonic(), text))
                if script.interval:
                    await asyncio.sleep(script.interval)
            await response.write(chunk(None, model, finish="stop"))
            await response.write(b"data: [DONE]\n\n")
            stream.done = True
        except ConnectionResetError:
            stream.client_closed_at = time.monotonic()
        return response
