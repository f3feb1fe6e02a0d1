"""Text from the network, made safe once at the edge, and text shown in logs and messages.

JSON may carry lone surrogates ("\\ud800") and control characters, and a multipart filename
may carry bytes that are not UTF-8. Either can crash whatever encodes the text later (the
event stream, a TTS request, a log line), far from the request that brought it, so every
string of a request is cleaned before any handler sees it.
"""

from __future__ import annotations

import logging
import re
from typing import Any

# Lone surrogates cannot be encoded to UTF-8; aiohttp also uses them for undecodable bytes
# (surrogateescape) in multipart filenames.
_SURROGATES = re.compile("[\ud800-\udfff]")
# C0 controls other than tab, newline and carriage return, DEL and the C1 controls.
_CONTROLS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# What a log line must not contain: any control character, line breaks included.
_LOG_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")

MAX_JSON_DEPTH = 32  # deeper request bodies are refused: no API field nests more than 3


class UnsafeJSON(ValueError):
    """A JSON value the server refuses to handle (nested too deeply)."""


def clean_text(text: str) -> str:
    """`text` with lone surrogates replaced by U+FFFD and control characters by spaces."""
    if text.isascii():
        return _CONTROLS.sub(" ", text) if not text.isprintable() else text
    return _CONTROLS.sub(" ", _SURROGATES.sub("\ufffd", text))


def clean_json(value: Any) -> Any:
    """A parsed JSON value with every string (keys too) cleaned; UnsafeJSON when it nests
    deeper than MAX_JSON_DEPTH. Iterative, so depth cannot exhaust the stack."""
    root: list[Any] = [value]
    stack: list[tuple[Any, Any, int]] = [(root, 0, 0)]  # (container, key, depth)
    while stack:
        container, key, depth = stack.pop()
        item = container[key]
        if isinstance(item, str):
            container[key] = clean_text(item)
        elif isinstance(item, dict):
            if depth >= MAX_JSON_DEPTH:
                raise UnsafeJSON(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
            cleaned = {clean_text(k): v for k, v in item.items()}
            container[key] = cleaned
            stack.extend((cleaned, k, depth + 1) for k in cleaned)
        elif isinstance(item, list):
            if depth >= MAX_JSON_DEPTH:
                raise UnsafeJSON(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
            stack.extend((item, i, depth + 1) for i in range(len(item)))
    return root[0]


def shown(value: Any, limit: int = 40) -> str:
    """A caller's value quoted for an error message or a log line: control characters escaped,
    cut to `limit` characters, so it can neither forge a log line nor flood a reply."""
    text = value if isinstance(value, str) else repr(value)
    cut = text[:limit]
    escaped = _LOG_CONTROLS.sub(lambda m: repr(m.group())[1:-1], cut)
    return f"'{escaped}'" + ("..." if len(text) > limit else "")


def escape_for_log(text: str) -> str:
    """One log line's worth of text: line breaks and other controls written as escapes."""
    if text.isascii() and text.isprintable():
        return text
    return _LOG_CONTROLS.sub(lambda m: repr(m.group())[1:-1], text)


class OneLineFormatter(logging.Formatter):
    """A log formatter whose messages cannot span lines: a newline in a caller's text (a
    session id, a filename, a sentence) cannot forge a log entry. Tracebacks stay as they are."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = escape_for_log(record.message)
        return super().formatMessage(record)
