"""One session's conversation with the LLM: history, the answer in flight, interruption.

Answers run as asyncio tasks on the server's event loop (network-bound, so they never block
it), one at a time and in the order asked, so each question sees the answers before it. Each
piece of an answer goes to the session's TTS the moment the splitter completes it. Cancelling
(interrupt, a new question with interrupt: true, session end) closes the HTTP stream.

The history keeps what the user heard, not what the LLM wrote: the session's "end" events
(the piece's last audio left on the track) mark pieces heard, and an interrupt cuts every
answer still playing down to its heard pieces, or drops the turn when none was heard. The LLM
usually finishes writing long before the avatar finishes speaking, so most interrupts land
after the stream is complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from llm import ChatBackend, LLMError, Reply
from speakable import PieceSplitter, is_cjk
from ttsreal import Hold, SpeechRefused

log = logging.getLogger(__name__)

# How long /human waits for the endpoint to accept a question before answering "ok" anyway;
# a refusal after that arrives as an error event. Longer than the connect timeout, so an
# endpoint that is down is still reported in the /human answer.
OPEN_WAIT_S = 4.0
QUEUE_FULL_RETRY_S = 0.25  # how often a piece waiting for room in the speech queue tries again
# How long after the LLM's first token the first piece waits for its clause before it is cut
# at a word (speakable.PieceSplitter.overdue). A fast LLM reaches the clause sooner and loses
# nothing; at 30 tokens a second this starts the voice about 130 ms sooner (a shorter first
# piece is also synthesised faster).
FIRST_PIECE_WAIT_S = 0.1
# A held answer (a speculation) cannot be heard before its question ends: its first piece waits
# for the clause until this long before then (about what TTS takes to say a few words here),
# however long or short that is after the first token.
FIRST_PIECE_LEAD_S = 0.1

Say = Callable[[str, dict, Any, bool, Hold | None], None]  # (piece, datainfo, voice, opening, hold): BaseReal.say
Publish = Callable[[dict], None]


@dataclass
class _Held:
    """A speculative answer kept back: its speech synthesised and waiting, its failure untold."""

    hold: Hold = field(default_factory=Hold)
    released: asyncio.Event = field(default_factory=asyncio.Event)
    release_at: float | None = None  # time.perf_counter() it is expected to be released at


@dataclass
class _Turn:
    """A question and the answer as far as the user heard it."""

    question: str
    held: _Held | None = None  # a speculation's turn
    written: str = ""  # the LLM's whole answer, once its stream ended
    heard: list[str] = field(default_factory=list)  # pieces played to their end, in order
    cut: bool = False  # interrupted before all of it was heard

    @property
    def answer(self) -> str:
        """What the history says the assistant answered ("" when nothing of it counts)."""
        if self.written and not self.cut:
            return self.written  # heard, or being heard, in full
        return join_pieces(self.heard)


@dataclass
class _Piece:
    turn: _Turn
    text: str
    left: str  # its text not yet heard, without spaces (TTS may end it as several sentences)


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
        self._turns: deque[_Turn] = deque(maxlen=max(0, history_turns))
        self._playing: deque[_Piece] = deque()  # pieces sent to TTS whose end was not heard yet, oldest first
        self._tasks: list[asyncio.Task[None]] = []  # answers: the one streaming, then those queued
        self._closed = False

    @property
    def history(self) -> list[dict[str, str]]:
        """The kept turns as chat messages, oldest first."""
        messages: list[dict[str, str]] = []
        for turn in self._turns:
            if turn.answer:
                messages += [
                    {"role": "user", "content": turn.question},
                    {"role": "assistant", "content": turn.answer},
                ]
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

    def speculate(
        self, question: str, datainfo: dict | None = None, voice: Any = None, release_at: float | None = None
    ) -> Speculation:
        """Start answering a question that may still change (the user paused, and may go on):
        the answer streams and is synthesised, but nothing of it is heard (nor any error told)
        until released, expected at `release_at` (time.perf_counter()) if it is. A withdrawn
        speculation leaves no trace in the history."""
        if self._closed:
            raise LLMError(503, f"session {self.sessionid} is closing")
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[None] = loop.create_future()
        opened.cancel()  # nobody waits for the endpoint to accept it: failures are events
        held = _Held(release_at=release_at)
        previous = self._tasks[-1] if self._tasks else None
        task = loop.create_task(
            self._answer(question, dict(datainfo or {}), voice, previous, opened, held), name=f"llm-{self.sessionid}"
        )
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)
        return Speculation(self, task, held)

    def on_event(self, event: dict) -> None:
        """Follow the session's events (on the event loop): an "end" marks its piece heard.

        TTS speaks pieces in the order they were sent, so an end that matches a later piece
        means those before it were skipped (a TTS error, nothing speakable) and never heard.
        """
        if event.get("status") != "end" or not self._playing:
            return
        said = _letters(str(event.get("text", "")))
        if not said:
            return
        index = next((i for i, piece in enumerate(self._playing) if piece.left.startswith(said)), None)
        if index is None:
            return  # not ours: an echo spoken in between
        piece = self._playing[index]
        for _ in range(index):
            self._playing.popleft()
        piece.left = piece.left[len(said) :]
        if not piece.left:
            self._playing.popleft()
            piece.turn.heard.append(piece.text)

    async def cancel(self) -> None:
        """Stop every answer, streaming or queued, and wait until their streams are closed.

        The session was silenced first: what is still playing will not be heard, so the
        history keeps only the heard part of each answer.
        """
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        while self._playing:
            turn = self._playing.popleft().turn
            if not turn.cut:
                turn.cut = True
                log.info("session %s: answer cut; the history keeps what was heard: %r", self.sessionid, turn.answer)
        self.forget_unsaid()

    def forget_held(self, held: _Held) -> None:
        """A withdrawn speculation: its turn and its pieces were never heard."""
        kept = [piece for piece in self._playing if piece.turn.held is not held]
        self._playing.clear()
        self._playing.extend(kept)
        turns = [turn for turn in self._turns if turn.held is not held]
        self._turns.clear()
        self._turns.extend(turns)

    def forget_unsaid(self) -> None:
        """Drop turns of which nothing counts as said (cut unheard, failed before a word)."""
        playing = {id(piece.turn) for piece in self._playing}
        kept = [turn for turn in self._turns if turn.answer or id(turn) in playing]
        self._turns.clear()
        self._turns.extend(kept)

    async def close(self) -> None:
        self._closed = True
        await self.cancel()

    async def _answer(
        self,
        question: str,
        datainfo: dict,
        voice: Any,
        previous: asyncio.Task | None,
        opened: asyncio.Future,
        held: _Held | None = None,
    ) -> None:
        if previous is not None:
            await asyncio.wait([previous])  # in order: this question must see that answer
        try:
            await self._stream_answer(question, datainfo, voice, opened, held)
        except LLMError as exc:
            self.forget_unsaid()
            if held is not None:
                await held.released.wait()  # a speculation's failure is told only if it is released
            self._fail(exc, datainfo, opened)
        except Exception as exc:  # a bug here must not pass silently nor end the session
            log.exception("session %s: chat failed", self.sessionid)
            self.forget_unsaid()
            self._fail(LLMError(502, f"chat failed: {exc}"), datainfo, opened)

    async def _stream_answer(
        self, question: str, datainfo: dict, voice: Any, opened: asyncio.Future, held: _Held | None
    ) -> None:
        started = time.perf_counter()
        reply = await self.backend.open(self.messages_for(question), f"{self.sessionid}")
        if not opened.done():
            opened.set_result(None)
        turn = _Turn(question, held)
        # In the history from now on: a stream cut by an error or interrupt still leaves its
        # heard pieces said (its `written` stays empty).
        self._turns.append(turn)
        splitter = PieceSplitter()
        words: list[str] = []
        spoken = 0
        deadline: float | None = None  # when the first piece may be cut at a word
        overdue = False  # that time passed with the first piece not spoken

        def first_piece_wait() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.perf_counter())

        try:
            async with contextlib.aclosing(_with_deadlines(reply, first_piece_wait)) as deltas:
                async for delta in deltas:
                    pieces: list[str] = []
                    if delta is None:
                        overdue, deadline = True, None
                    else:
                        if not words:
                            deadline = _first_piece_deadline(held)
                            log.info("session %s: LLM first token after %.0f ms", self.sessionid, _ms(started))
                        words.append(delta)
                        pieces = splitter.feed(delta)
                    if overdue and not spoken and not pieces:
                        pieces = splitter.overdue()  # nothing when its words are too few yet
                    if pieces:
                        deadline, overdue = None, False
                    for piece in pieces:
                        spoken += 1
                        await self._speak(turn, piece, datainfo, voice, spoken, started)
            for piece in splitter.finish():
                spoken += 1
                await self._speak(turn, piece, datainfo, voice, spoken, started)
        except asyncio.CancelledError:
            log.info("session %s: LLM answer cancelled after %d pieces", self.sessionid, spoken)
            raise
        finally:
            await reply.aclose()  # closes the HTTP stream: the endpoint stops generating
        answer = "".join(words).strip()
        if not answer:
            self._turns.remove(turn)
            raise LLMError(502, f"the LLM ({self.backend.description}) answered nothing")
        turn.written = answer  # the history's answer once all of it is heard
        log.info("session %s: LLM answered %d chars in %.0f ms", self.sessionid, len(answer), _ms(started))

    async def _speak(self, turn: _Turn, piece: str, datainfo: dict, voice: Any, number: int, started: float) -> None:
        log.info("session %s: piece %d to TTS after %.0f ms: %r", self.sessionid, number, _ms(started), piece[:80])
        while True:
            try:
                # The splitter already cut the first piece (at its clause or first words): TTS keeps pieces whole.
                self._say(piece, datainfo, voice, False, turn.held.hold if turn.held else None)
                break
            except SpeechRefused as exc:
                if exc.status != 429:
                    raise LLMError(502, f"the answer could not be spoken: {exc.msg}") from None
                # The session's speech queue is full (a very long answer): wait for it to
                # drain; the LLM's stream waits meanwhile (TCP back-pressure).
                await asyncio.sleep(QUEUE_FULL_RETRY_S)
        left = _letters(piece)
        if left:
            self._playing.append(_Piece(turn, piece, left))

    def _fail(self, exc: LLMError, datainfo: dict, opened: asyncio.Future | None = None) -> None:
        """Report to the waiting /human call if there is one, else as an error event."""
        if opened is not None and not opened.done():
            opened.set_exception(exc)
            return
        log.warning("session %s: %s", self.sessionid, exc.msg)
        self._publish({**datainfo, "status": "error", "source": "llm", "msg": exc.msg})


class Speculation:
    """An answer held back until its question is final (Conversation.speculate)."""

    def __init__(self, conversation: Conversation, task: asyncio.Task, held: _Held) -> None:
        self._conversation = conversation
        self._task = task
        self._held = held

    def release(self) -> bool:
        """The question stands: let the answer be heard (what of it is synthesised plays at
        once). False when it was cancelled meanwhile (an interrupt), and the question must be
        asked afresh."""
        if self._task.cancelled():
            return False
        self._held.released.set()
        self._held.hold.release()
        return True

    def drop_speech(self) -> None:
        """Throw away what is synthesised of it now (withdraw finishes the job)."""
        self._held.hold.drop()

    async def withdraw(self) -> None:
        """The user went on talking: drop the answer, its speech and its stream."""
        self.drop_speech()
        if not self._task.done():
            self._task.cancel()
            await asyncio.wait([self._task])
        self._conversation.forget_held(self._held)
        self._conversation.forget_unsaid()


async def _with_deadlines(reply: Reply, wait: Callable[[], float | None]) -> AsyncIterator[str | None]:
    """The reply's deltas, and None each time `wait()` seconds pass with none arriving
    (`wait()` None: no deadline). The pending read is kept across a deadline, not cancelled:
    cancelling it would end the stream."""
    deltas = aiter(reply)
    pending: asyncio.Future[str] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(deltas))
            done, _ = await asyncio.wait([pending], timeout=wait())
            if not done:
                yield None
                continue
            arrived, pending = pending, None
            try:
                delta = arrived.result()
            except StopAsyncIteration:
                return
            yield delta
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending


def _first_piece_deadline(held: _Held | None) -> float:
    """When an answer's first piece, its first token just come, stops waiting for its clause."""
    now = time.perf_counter()
    if held is None or held.release_at is None:
        return now + FIRST_PIECE_WAIT_S
    return max(now, held.release_at - FIRST_PIECE_LEAD_S)


def _resolve(opened: asyncio.Future) -> None:
    """An answer cancelled before the endpoint accepted it: the request waiting on it is done."""
    if not opened.done():
        opened.set_result(None)


def join_pieces(pieces: list[str]) -> str:
    """Pieces back into one text: a space between them, none after Chinese or Japanese."""
    text = ""
    for piece in pieces:
        if text and not is_cjk(text[-1]) and not is_cjk(piece[0]):
            text += " "
        text += piece
    return text


def _letters(text: str) -> str:
    """Text compared by its letters and digits only: TTS may re-space and re-punctuate it."""
    return "".join(ch for ch in text if ch.isalnum()).lower()


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000
