"""One session's conversation with the LLM: history, the answer in flight, interruption.

Answers run as asyncio tasks on the server's event loop (network-bound, so they never block
it), one at a time and in the order asked, so each question sees the answers before it. Each
piece of an answer goes to the session's TTS the moment the splitter completes it. Cancelling
(interrupt, a new question with interrupt: true, session end) closes the HTTP stream, and an
answer that did not finish is not kept in the history: the user never heard it whole.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from llm import ChatBackend, LLMError
from speakable import PieceSplitter

log = logging.getLogger(__name__)

# How long /human waits for the endpoint to accept a question before answering "ok" anyway;
# a refusal after that arrives as an error event. Longer than the connect timeout, so an
# endpoint that is down is still reported in the /human answer.
OPEN_WAIT_S = 4.0

Say = Callable[[str, dict, Any, bool], None]  # (piece, datainfo, voice, opening): BaseReal.say
Publish = Callable[[dict], None]


class Conversation:
    """The chat of one session."""

    def __init__(
        self,
        backend: ChatBackend,
        say: Say,
        publish: Publish,
        sessionid: int,
        system_prompt: str = "",
        history_turns: int = 10,
    ) -> None:
        self.backend = backend
        self.sessionid = sessionid
        self.system_prompt = system_prompt
        self._say = say
        self._publish = publish
        self._turns: deque[tuple[str, str]] = deque(maxlen=max(0, history_turns))  # (question, answer)
        self._tasks: list[asyncio.Task[None]] = []  # answers: the one streaming, then those queued
        self._closed = False

    @property
    def history(self) -> list[dict[str, str]]:
        """The kept turns as chat messages, oldest first."""
        messages: list[dict[str, str]] = []
        for question, answer in self._turns:
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return messages

    @property
    def busy(self) -> bool:
        return bool(self._tasks)

    def messages_for(self, question: str) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*system, *self.history, {"role": "user", "content": question}]

    async def ask(self, question: str, datainfo: dict | None = None, voice: Any = None) -> None:
        """Answer `question` out loud (in `voice`, passed through to `say`). Returns once the
        endpoint accepted it (or at most OPEN_WAIT_S); raises LLMError when it refused, so
        the caller can say so at once.

        Asked while another answer is still streaming, the question waits for it and returns
        at once; its failures then arrive as error events.
        """
        if self._closed:
            raise LLMError(503, f"session {self.sessionid} is closing")
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[None] = loop.create_future()
        previous = self._tasks[-1] if self._tasks else None
        task = loop.create_task(
            self._answer(question, dict(datainfo or {}), voice, previous, opened), name=f"llm-{self.sessionid}"
        )
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)
        task.add_done_callback(lambda _: _resolve(opened))
        if previous is not None:
            opened.cancel()  # nobody waits: failures go to the event stream
            return
        try:
            await asyncio.wait_for(asyncio.shield(opened), OPEN_WAIT_S)
        except TimeoutError:
            opened.cancel()
            log.info("session %s: LLM slow to accept; answering the request now", self.sessionid)

    async def cancel(self) -> None:
        """Stop every answer, streaming or queued, and wait until their streams are closed."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def close(self) -> None:
        self._closed = True
        await self.cancel()

    async def _answer(
        self, question: str, datainfo: dict, voice: Any, previous: asyncio.Task | None, opened: asyncio.Future
    ) -> None:
        if previous is not None:
            await asyncio.wait([previous])  # in order: this question must see that answer
        try:
            await self._stream_answer(question, datainfo, voice, opened)
        except LLMError as exc:
            self._fail(exc, datainfo, opened)
        except Exception as exc:  # a bug here must not pass silently nor end the session
            log.exception("session %s: chat failed", self.sessionid)
            self._fail(LLMError(502, f"chat failed: {exc}"), datainfo, opened)

    async def _stream_answer(self, question: str, datainfo: dict, voice: Any, opened: asyncio.Future) -> None:
        started = time.perf_counter()
        reply = await self.backend.open(self.messages_for(question), f"{self.sessionid}")
        if not opened.done():
            opened.set_result(None)
        splitter = PieceSplitter()
        words: list[str] = []
        spoken = 0
        try:
            async for delta in reply:
                if not words:
                    log.info("session %s: LLM first token after %.0f ms", self.sessionid, _ms(started))
                words.append(delta)
                for piece in splitter.feed(delta):
                    spoken += 1
                    self._speak(piece, datainfo, voice, spoken, started)
            for piece in splitter.finish():
                spoken += 1
                self._speak(piece, datainfo, voice, spoken, started)
        except asyncio.CancelledError:
            log.info("session %s: LLM answer cancelled after %d pieces", self.sessionid, spoken)
            raise
        finally:
            await reply.aclose()  # closes the HTTP stream: the endpoint stops generating
        answer = "".join(words).strip()
        if not answer:
            raise LLMError(502, f"the LLM ({self.backend.description}) answered nothing")
        self._turns.append((question, answer))  # only a whole answer is kept: a cut one was not said
        log.info("session %s: LLM answered %d chars in %.0f ms", self.sessionid, len(answer), _ms(started))

    def _speak(self, piece: str, datainfo: dict, voice: Any, number: int, started: float) -> None:
        log.info("session %s: piece %d to TTS after %.0f ms: %r", self.sessionid, number, _ms(started), piece[:80])
        # The splitter already cut the first piece at its first clause: TTS keeps pieces whole.
        self._say(piece, datainfo, voice, False)

    def _fail(self, exc: LLMError, datainfo: dict, opened: asyncio.Future | None = None) -> None:
        """Report to the waiting /human call if there is one, else as an error event."""
        if opened is not None and not opened.done():
            opened.set_exception(exc)
            return
        log.warning("session %s: %s", self.sessionid, exc.msg)
        self._publish({**datainfo, "status": "error", "source": "llm", "msg": exc.msg})


def _resolve(opened: asyncio.Future) -> None:
    """An answer cancelled before the endpoint accepted it: the request waiting on it is done."""
    if not opened.done():
        opened.set_result(None)


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000
