"""Cut a streamed LLM answer into pieces the TTS can speak while the rest is still coming.

The first piece ends at the first clause (a comma, 、, ；, a colon) once it holds a few words,
so the avatar starts talking after a handful of tokens; later pieces end at sentence ends,
which keeps their intonation natural. Chinese and English punctuation are both understood.
When the first clause is slow to come (an LLM writing at 30 tokens a second takes 170 ms to
reach "Paris is the capital of France,"), the caller may cut the first piece at its last
whole word instead (`overdue`): the voice starts sooner, at the cost of a break in the
intonation after those first words.
"""

from __future__ import annotations

import re

_ENDS = "。！？；…!?;."  # end a sentence (English ones only before a space: 3.14, Dr. Smith)
CJK_ENDS = "。！？；…"
_CLAUSES = ",，、:：;；"
_ASCII_NEEDS_SPACE = ",:;.!?"  # English punctuation ends a piece only before a space (3,000, 10:30)
CLOSERS = "\"')]}’”」』）】》"
FIRST_MIN_LENGTH = 6  # spoken length of a first clause worth a pause ("Sure," waits for more)
OVERDUE_MIN_LENGTH = 6  # spoken length of whole words an overdue first piece needs ("Paris is")
# English words a phrase does not end on: they lean on the word after them, and a break after
# one ("Paris is the | capital") sounds broken where a break before it does not ("Paris is | the
# capital"). An overdue first piece is not cut after one.
_LEANING = {
    "a", "an", "the", "of", "to", "in", "on", "at", "by", "for", "from", "with", "into", "about", "as",
    "and", "or", "but", "than", "so", "very", "my", "your", "his", "her", "its", "our", "their",
    "this", "that", "these", "those", "i", "you", "we", "they", "he", "she", "it",
}
MAX_PIECE = 200  # a piece with no end this long is cut at its last comma or space
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "cf", "al", "fig", "approx", "etc", "no"}
_MARKUP = re.compile(r"[*#`_~]+|^\s*[-•]\s+|^\s*>\s*", re.MULTILINE)  # markdown the voice would read out


def is_cjk(ch: str) -> bool:
    code = ord(ch)
    return (
        0x3000 <= code <= 0x30FF  # CJK punctuation, kana
        or 0x3400 <= code <= 0x9FFF  # CJK ideographs
        or 0xAC00 <= code <= 0xD7AF  # Hangul
        or 0xFF00 <= code <= 0xFFEF  # full-width forms
    )


def spoken_length(text: str) -> int:
    """Letters and digits, a CJK character counting as two (it is a whole syllable)."""
    return sum(2 if is_cjk(c) else 1 for c in text if c.isalnum())


def clean_piece(text: str) -> str:
    """The piece as it should be spoken: markdown marks removed, whitespace collapsed."""
    return " ".join(_MARKUP.sub("", text).split())


def period_is_not_an_end(before: str) -> bool:
    """True when a "." after `before` belongs to an abbreviation, an initial or a list number."""
    words = before.split()
    if not words:
        return True
    token = words[-1].lstrip("\"'([{“‘")
    if token.lower() in _ABBREVIATIONS:
        return True
    if len(token) == 1 and token.isalpha() and token.isupper():
        return True  # an initial: "J. R. R. Tolkien"
    parts = token.split(".")
    if len(parts) > 1 and all(p.isalpha() and len(p) <= 2 for p in parts):
        return True  # e.g, i.e, U.S
    line = before.rsplit("\n", 1)[-1].split()
    return len(line) == 1 and token.isdigit()  # "1. Buy milk" at the start of a line


class PieceSplitter:
    """Feed it the deltas of one answer; it returns each piece as soon as it is complete."""

    def __init__(self, first_min_length: int = FIRST_MIN_LENGTH, max_piece: int = MAX_PIECE) -> None:
        self.first_min_length = first_min_length
        self.max_piece = max_piece
        self._buf = ""
        self._scan = 0  # characters before this are known not to end a piece
        self._first = True

    def feed(self, delta: str) -> list[str]:
        """Add streamed text; return the pieces it completed (often none)."""
        self._buf += delta
        return self._cut(final=False)

    def finish(self) -> list[str]:
        """The stream ended: return whatever is left."""
        pieces = self._cut(final=True)
        rest, self._buf, self._scan = self._buf, "", 0
        self._emit(rest, pieces)
        return pieces

    def overdue(self) -> list[str]:
        """The first piece has waited long enough for its clause: return its first whole words
        as a piece, as few as make OVERDUE_MIN_LENGTH (a short piece is synthesised sooner),
        or nothing when there are not enough yet. What follows still ends at its clause, so
        the rest of the first sentence is not held for its end."""
        if not self._first:
            return []
        buf = self._buf
        cut = self._words_end(buf)
        if cut is None:
            return []
        pieces: list[str] = []
        self._emit(buf[:cut], pieces)
        self._buf, self._scan = buf[cut:].lstrip(), 0
        self._first = True
        return pieces

    @staticmethod
    def _words_end(buf: str) -> int | None:
        """Where the first whole words of `buf` reach OVERDUE_MIN_LENGTH and end on a word that
        does not lean on the next (_LEANING): before a space (the token after the last space
        may go on: "capital" -> "capitals"), or after a CJK character (whole when it arrives);
        None when they do not yet."""
        for i, ch in enumerate(buf):
            end = i + 1 if is_cjk(ch) else i if ch.isspace() else 0
            if not end or spoken_length(buf[:end]) < OVERDUE_MIN_LENGTH:
                continue
            last = buf[:end].split()[-1].strip(CLOSERS + "\"'(“‘").lower()
            if is_cjk(ch) or last not in _LEANING:
                return end
        return None

    def _cut(self, final: bool) -> list[str]:
        pieces: list[str] = []
        i = self._scan
        while i < len(self._buf):
            end = self._end_at(i, final)
            if end is None:
                break  # undecided until the next character arrives
            if end:
                self._emit(self._buf[:end], pieces)
                self._buf = self._buf[end:]
                i = 0
                continue
            i += 1
            if i > self.max_piece:
                cut = self._soft_cut(self._buf[: self.max_piece])
                self._emit(self._buf[:cut], pieces)
                self._buf = self._buf[cut:]
                i = 0
        self._scan = i
        return pieces

    def _end_at(self, i: int, final: bool) -> int | None:
        """Where a piece ends if the character at i ends one; 0 when it does not, None when the
        text after it is needed to tell."""
        buf = self._buf
        c = buf[i]
        if c == "\n":
            return i + 1  # a line ends a piece (lists, paragraphs)
        if c in _ENDS:
            j = i
            while j < len(buf) and buf[j] in _ENDS:
                j += 1
            while j < len(buf) and buf[j] in CLOSERS:
                j += 1
            if j == len(buf) and not final:
                return None  # "..." or a closing quote may follow, and English needs the space
            run = buf[i:j]
            if any(ch in CJK_ENDS for ch in run):
                return j  # Chinese punctuation needs no space after it
            if j < len(buf) and not (buf[j].isspace() or is_cjk(buf[j])):
                return 0  # "3.14", "example.com", "?!" inside a word
            if run.rstrip(CLOSERS) == "." and period_is_not_an_end(buf[:i]):
                return 0
            return j
        if self._first and c in _CLAUSES:
            if spoken_length(buf[:i]) < self.first_min_length:
                return 0
            if c in _ASCII_NEEDS_SPACE:
                if i + 1 == len(buf):
                    return len(buf) if final else None
                if not buf[i + 1].isspace():
                    return 0
            return i + 1
        return 0

    def _soft_cut(self, window: str) -> int:
        """Cut a piece with no end at its last comma, else its last space, else hard."""
        cut = max(window.rfind(c) for c in _CLAUSES) + 1
        if cut < len(window) // 4:
            space = window.rfind(" ")
            cut = space + 1 if space > len(window) // 4 else len(window)
        return cut

    def _emit(self, text: str, pieces: list[str]) -> None:
        piece = clean_piece(text)
        # Stray punctuation ("..." on its own line) has nothing to say; the piece before it
        # may already be speaking, so it is dropped rather than joined to it.
        if any(ch.isalnum() for ch in piece):
            pieces.append(piece)
            self._first = False
