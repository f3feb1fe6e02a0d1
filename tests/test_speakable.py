"""Cutting a streamed answer into speakable pieces: early first clause, then whole sentences."""

from __future__ import annotations

import pytest

from speakable import PieceSplitter


def stream(text: str, step: int = 1) -> list[tuple[int, str]]:
    """Feed `text` `step` characters at a time; (characters fed when it came out, piece)."""
    splitter = PieceSplitter()
    out: list[tuple[int, str]] = []
    for k in range(0, len(text), step):
        out += [(min(k + step, len(text)), p) for p in splitter.feed(text[k : k + step])]
    out += [(-1, p) for p in splitter.finish()]
    return out


def pieces(text: str, step: int = 3) -> list[str]:
    return [p for _, p in stream(text, step)]


def test_first_piece_leaves_at_the_first_clause_as_soon_as_the_next_character_arrives():
    text = "Sure thing, the capital of France is Paris. It is lovely, and big."
    out = stream(text)
    assert out[0] == (len("Sure thing, "), "Sure thing,")
    # Later pieces end at sentence ends only, not at their commas.
    assert [p for _, p in out] == ["Sure thing,", "the capital of France is Paris.", "It is lovely, and big."]


def test_chinese_clause_and_sentence_ends_need_no_space():
    expected = ["当然可以，", "巴黎是法国的首都。", "它很美，对吧？"]
    assert pieces("当然可以，巴黎是法国的首都。它很美，对吧？") == expected
    # Two characters are one word: too short a clause to speak alone.
    assert pieces("好的，我来回答。还有别的问题吗？") == ["好的，我来回答。", "还有别的问题吗？"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hi, Sure, ok then, what about this. More.", ["Hi, Sure,", "ok then, what about this.", "More."]),
        ("It costs 3,000 dollars, or 3.14 each. Done.", ["It costs 3,000 dollars,", "or 3.14 each.", "Done."]),
        ("Dr. Smith met J. R. Tolkien, e.g. at home. Yes!", ["Dr. Smith met J. R. Tolkien,", "e.g. at home.", "Yes!"]),
        ("Well... I think so. Really?! Yes.", ["Well...", "I think so.", "Really?!", "Yes."]),
        ("He said \"stop.\" Then he left.", ["He said \"stop.\"", "Then he left."]),
        ("Visit example.com today. Bye.", ["Visit example.com today.", "Bye."]),
    ],
)
def test_english_sentence_ends(text, expected):
    assert pieces(text) == expected


def test_short_greeting_waits_for_more_words():
    # "Hi," alone is not worth a pause: the first piece waits for a longer clause.
    assert stream("Hi, there you are, friend.")[0] == (len("Hi, there you are, "), "Hi, there you are,")


def test_markdown_and_lists_are_spoken_cleanly():
    text = "Here is **the** plan:\n1. Boil the `water`.\n- Add tea\n## Done"
    assert pieces(text) == ["Here is the plan:", "1. Boil the water.", "Add tea", "Done"]


def test_stray_punctuation_and_empty_text_are_not_spoken():
    assert pieces("...") == []
    assert pieces("") == []
    assert pieces("OK then.\n\n...\n") == ["OK then."]


def test_a_piece_without_an_end_is_cut_near_max_length():
    text = " ".join(["word"] * 120)  # 599 characters, no punctuation
    out = pieces(text, step=5)
    assert all(len(p) <= 200 for p in out)
    assert " ".join(out) == text


def test_the_whole_text_survives_any_chunking():
    text = "First, a clause. Then a sentence! 然后，中文。And the tail"
    for step in (1, 2, 5, 100):
        assert "".join(pieces(text, step)).replace(" ", "") == text.replace(" ", "")


def test_an_overdue_first_piece_is_its_first_whole_words_long_enough_to_say():
    splitter = PieceSplitter()
    assert splitter.feed("Paris is") == [] and splitter.overdue() == []  # "is" may go on: one word
    assert splitter.feed(" the capital") == []
    assert splitter.overdue() == ["Paris is"]  # as few words as make a piece, so it is quick to say
    assert splitter.feed(" of France, and more.") == ["the capital of France,"]  # the clause still ends a piece
    assert splitter.overdue() == []  # only the first piece is ever cut at words
    assert splitter.finish() == ["and more."]
    # Nor is it cut after a word that leans on the next: "The capital | of France", not
    # "The capital of | France"; "It is about two | million".
    for text, first in [("The capital of France", "The capital"), ("It is about two million", "It is about two"),
                        ("I think that the answer", "I think")]:
        splitter = PieceSplitter()
        splitter.feed(text)
        assert splitter.overdue() == [first], text
    chinese = PieceSplitter()
    chinese.feed("巴黎是法国的首都")
    assert chinese.overdue() == ["巴黎是"]  # characters are whole as they come
