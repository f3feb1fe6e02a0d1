"""Text from the network cleaned once at the edge, and caller values shown safely in logs."""

from __future__ import annotations

import json
import logging

import pytest

from safetext import MAX_JSON_DEPTH, OneLineFormatter, UnsafeJSON, clean_json, clean_text, shown


def test_lone_surrogates_and_control_characters_are_replaced_and_the_rest_kept():
    assert clean_text("\ud800 hi \udfff") == "\ufffd hi \ufffd"
    assert clean_text("a\x00b\x07c\x1bd\x7fe\x85f") == "a b c d e f"
    kept = "line one\nline two\ttabbed\r\n中文 😀 é"
    assert clean_text(kept) == kept
    clean_text("\ud83d").encode("utf-8")  # encodable now


def test_clean_json_cleans_keys_and_values_at_any_depth_and_refuses_absurd_nesting():
    body = json.loads('{"text": "\\ud800", "x\\ud800": [{"deep": ["\\u0000"]}], "n": 5}')
    assert clean_json(body) == {"text": "\ufffd", "x\ufffd": [{"deep": [" "]}], "n": 5}
    ok = json.loads("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH)
    clean_json(ok)
    with pytest.raises(UnsafeJSON):
        clean_json(json.loads("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)))


def test_shown_values_cannot_forge_log_lines_or_flood_replies():
    assert shown("1\nERROR forged") == "'1\\nERROR forged'"
    assert shown("x" * 100, 10) == "'xxxxxxxxxx'..."
    assert shown(5) == "'5'"


def test_the_log_formatter_keeps_every_message_on_one_line():
    formatter = OneLineFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "session %s: %s", ("1\nERROR x", "a\rb\u2028c"), None)
    line = formatter.format(record)
    assert "\n" not in line and "\r" not in line and "\u2028" not in line
    assert line == "INFO session 1\\nERROR x: a\\rb\\u2028c"
