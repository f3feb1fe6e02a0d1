"""Which endpoint, model and key chat uses, from flags and environment as the README says."""

from __future__ import annotations

import pytest

from app import parse_args
from llm import DASHSCOPE_URL, OPENAI_URL, LLMNotConfigured, resolve_endpoint


def endpoint(argv: list[str], env: dict[str, str]):
    return resolve_endpoint(parse_args(argv), env)


def test_nothing_configured_names_the_flag_and_variables():
    with pytest.raises(LLMNotConfigured) as off:
        endpoint([], {})
    for name in ("--llm_url", "OPENAI_BASE_URL", "OPENAI_API_KEY", "'echo'"):
        assert name in str(off.value)


def test_a_key_alone_picks_its_service_and_default_model():
    dashscope = endpoint([], {"DASHSCOPE_API_KEY": "ds"})
    assert (dashscope.url, dashscope.model, dashscope.api_key) == (DASHSCOPE_URL, "qwen-plus", "ds")
    openai = endpoint([], {"OPENAI_API_KEY": "oa"})
    assert (openai.url, openai.model, openai.api_key) == (OPENAI_URL, "gpt-4o-mini", "oa")
    assert endpoint(["--llm_model", "qwen-turbo"], {"DASHSCOPE_API_KEY": "ds"}).model == "qwen-turbo"


def test_an_explicit_url_wins_and_needs_a_model():
    env = {"OPENAI_BASE_URL": "http://env:1/v1", "OPENAI_API_KEY": "oa", "DASHSCOPE_API_KEY": "ds"}
    ollama = endpoint(["--llm_url", "http://127.0.0.1:11434/v1/", "--llm_model", "qwen2.5:3b"], env)
    assert (ollama.url, ollama.model, ollama.api_key) == ("http://127.0.0.1:11434/v1", "qwen2.5:3b", "oa")
    assert endpoint(["--llm_model", "m"], env).url == "http://env:1/v1"
    with pytest.raises(LLMNotConfigured, match="--llm_model"):
        endpoint(["--llm_url", "http://127.0.0.1:8000/v1"], {})


def test_keys_go_only_to_their_own_service():
    # A DashScope key is not sent to a local server; a keyless server gets a placeholder.
    local = endpoint(["--llm_url", "http://127.0.0.1:8000/v1", "--llm_model", "m"], {"DASHSCOPE_API_KEY": "ds"})
    assert local.api_key == "no-key"
    assert endpoint(["--llm_url", DASHSCOPE_URL, "--llm_model", "m"], {"DASHSCOPE_API_KEY": "ds"}).api_key == "ds"
