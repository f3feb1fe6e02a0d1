"""The chat history keeps what the user heard: Conversation follows the session's "end" events.

The LLM here is a ChatBackend that writes scripted answers at once, and the events are the ones
a session publishes as each piece's last audio leaves, fed in by hand so every order can be
tried (test_chat.py runs the same end to end through a real server and peer).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from chat import FIRST_PIECE_WAIT_S, Conversation, join_pieces
from fakellm import tokens
from llm import ChatBackend, Reply


class WrittenReply(Reply):
    def __init__(self, text: str) -> None:
        self.tokens = tokens(text)

    async def deltas(self) -> AsyncIterator[str]:
        for token in self.tokens:
            yield token

    async def aclose(self) -> None:
        return None


class WrittenAnswers(ChatBackend):
    """Answers each question with the next scripted text; remembers what it was asked."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.asked: list[list[dict[str, str]]] = []

    async def open(self, messages: list[dict[str, str]], name: str) -> Reply:
        self.asked.append(messages)
        return WrittenReply(self.answers.pop(0))


def conversation(backend: ChatBackend, said: list[str]) -> Conversation:
    return Conversation(backend, lambda piece, *_: said.append(piece), lambda event: None, 1, "", 10)


def end(text: str) -> dict:
    return {"status": "end", "text": text}


async def settle(chat: Conversation) -> None:
    while chat.busy:
        await asyncio.sleep(0)


def answers(chat: Conversation) -> list[str]:
    return [m["content"] for m in chat.history if m["role"] == "assistant"]


def test_an_answer_cut_while_speaking_keeps_its_heard_pieces() -> None:
    async def scenario():
        said: list[str] = []
        chat = conversation(WrittenAnswers("One is here. Two is there. Three is gone. Four is more."), said)
        await chat.ask("Count.")
        await settle(chat)
        chat.on_event(end("One is here."))
        chat.on_event(end("Hello from an echo."))  # spoken in between: not part of the answer
        # "Two is there." failed in TTS (no end), "Three is gone." was heard, then an interrupt.
        chat.on_event(end("Three is gone."))
        await chat.cancel()
        return said, answers(chat)

    said, kept = asyncio.run(scenario())
    assert said == ["One is here.", "Two is there.", "Three is gone.", "Four is more."]
    assert kept == ["One is here. Three is gone."]


def test_a_piece_spoken_as_several_sentences_is_heard_only_at_its_last_end() -> None:
    async def scenario():
        chat = conversation(WrittenAnswers("Yes. It opened in 1889, for the fair; it is 330 m tall."), [])
        await chat.ask("Old?")
        await settle(chat)
        chat.on_event(end("Yes."))
        chat.on_event(end("It opened in 1889,"))  # TTS cut the long piece: half of it heard
        await chat.cancel()
        cut_in_the_middle = answers(chat)

        chat2 = conversation(WrittenAnswers("Yes. It opened in 1889, for the fair; it is 330 m tall."), [])
        await chat2.ask("Old?")
        await settle(chat2)
        for sentence in ("Yes.", "It opened in 1889,", "for the fair;", "it is 330 m tall."):
            chat2.on_event(end(sentence))
        await chat2.cancel()  # nothing left playing: nothing is cut
        return cut_in_the_middle, answers(chat2)

    cut_in_the_middle, whole = asyncio.run(scenario())
    assert cut_in_the_middle == ["Yes."]
    assert whole == ["Yes. It opened in 1889, for the fair; it is 330 m tall."]


def test_an_answer_interrupted_before_a_piece_ended_is_forgotten_and_the_next_one_is_kept_whole() -> None:
    async def scenario():
        backend = WrittenAnswers("Nothing of this is heard.", "This one plays out. All of it.", "Fine.")
        chat = conversation(backend, [])
        await chat.ask("First?")
        await settle(chat)
        await chat.cancel()
        await chat.ask("Second?")
        await settle(chat)
        chat.on_event(end("This one plays out."))
        await chat.ask("Third?")  # asked while the rest still plays: it will be heard whole
        await settle(chat)
        return backend.asked

    asked = asyncio.run(scenario())
    assert [m["content"] for m in asked[1]] == ["Second?"]
    assert [m["content"] for m in asked[2]] == ["Second?", "This one plays out. All of it.", "Third?"]


def test_join_pieces_puts_no_space_after_chinese() -> None:
    assert join_pieces(["你好，", "今天天气很好。", "OK."]) == "你好，今天天气很好。OK."
    assert join_pieces(["Sure,", "it is."]) == "Sure, it is."


# --- how an answer starts: an overdue first piece, a speculation held back -------------------


class StallingReply(Reply):
    """Writes `before` word by word (OpenAI-style: spaces lead), then waits for `go` before
    the rest: an LLM that stalls in its first clause."""

    def __init__(self, before: str, after: str, go: asyncio.Event) -> None:
        self.before, self.after, self.go = tokens(before), after, go

    async def deltas(self) -> AsyncIterator[str]:
        for token in self.before:
            yield token
        await self.go.wait()
        yield self.after

    async def aclose(self) -> None:
        return None


class StallingAnswer(ChatBackend):
    def __init__(self, before: str, after: str) -> None:
        self.reply_args = (before, after)
        self.go: asyncio.Event | None = None

    async def open(self, messages: list[dict[str, str]], name: str) -> Reply:
        self.go = asyncio.Event()
        return StallingReply(*self.reply_args, self.go)


async def wait_said(said: list, n: int, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while len(said) < n:
        assert asyncio.get_running_loop().time() < deadline, f"only {said} said"
        await asyncio.sleep(0.01)


def test_a_first_clause_slow_to_come_is_spoken_from_its_whole_words() -> None:
    async def scenario():
        said: list[str] = []
        backend = StallingAnswer("Paris is the capital", " of France, and it is lovely.")
        chat = conversation(backend, said)
        await chat.ask("Capital?")
        # The LLM stalls before the comma: its whole words are spoken meanwhile ("capital"
        # may still become "capitals", so it waits).
        await wait_said(said, 1)
        first = list(said)
        backend.go.set()
        await settle(chat)
        return first, said, answers(chat)

    first, said, kept = asyncio.run(scenario())
    assert first == ["Paris is"]  # not "Paris is the": "the" leans on the word after it
    # The rest of the first sentence ends at its clause, not held for the sentence's end.
    assert said == ["Paris is", "the capital of France,", "and it is lovely."]


def test_a_held_answers_first_piece_waits_for_its_clause_until_shortly_before_it_can_be_heard() -> None:
    # A speculation is heard only when the user's question ends: its first piece may wait for
    # the clause longer than a typed question's (better said whole), and no longer than that
    # moment allows (TTS must have said it by then).
    async def first_piece(release_in: float) -> str:
        said: list[str] = []
        backend = StallingAnswer("Paris is the capital", " of France, and it is lovely.")
        chat = Conversation(backend, lambda piece, *_: said.append(piece), lambda event: None, 1, "", 10)
        held = chat.speculate("Capital?", release_at=time.perf_counter() + release_in)
        await asyncio.sleep(3 * FIRST_PIECE_WAIT_S)  # the LLM stalls before its comma
        backend.go.set()
        await settle(chat)
        await held.withdraw()
        return said[0]

    assert asyncio.run(first_piece(release_in=10.0)) == "Paris is the capital of France,"
    assert asyncio.run(first_piece(release_in=0.0)) == "Paris is"


def test_a_speculative_answer_is_synthesised_held_and_played_or_dropped() -> None:
    async def scenario():
        said: list[tuple[str, object]] = []
        backend = WrittenAnswers("Paris is. Lovely.", "Never heard.", "Paris again.")
        chat = Conversation(backend, lambda piece, _d, _v, _o, hold: said.append((piece, hold)),
                            lambda event: None, 1, "", 10)
        kept = chat.speculate("Capital?")
        await settle(chat)  # the whole answer streamed while held
        held_then = [(piece, hold is not None and hold.waiting) for piece, hold in said]
        assert kept.release()  # the stream had ended: still released, not asked again
        played = [not hold.waiting and not hold.dropped for _, hold in said]
        chat.on_event(end("Paris is."))
        chat.on_event(end("Lovely."))

        said.clear()
        gone = chat.speculate("Capital of...")
        await settle(chat)
        await gone.withdraw()  # the user went on talking
        dropped = [hold.dropped for _, hold in said]
        await chat.ask("Capital of France?")
        await settle(chat)
        return held_then, played, dropped, backend.asked, answers(chat)

    held_then, played, dropped, asked, kept = asyncio.run(scenario())
    assert held_then == [("Paris is.", True), ("Lovely.", True)]  # sent to TTS at once, held
    assert played == [True, True]
    assert dropped == [True]
    # The withdrawn answer left nothing in the history the next question is asked with.
    assert [m["content"] for m in asked[2]] == ["Capital?", "Paris is. Lovely.", "Capital of France?"]
    assert kept == ["Paris is. Lovely.", "Paris again."]
