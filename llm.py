"""LLM backends for chat: where the words of an answer come from, streamed.

`openai`: any OpenAI-compatible endpoint (DashScope, OpenAI, Ollama, vLLM, llama.cpp's server)
through the `openai` package. `local`: a small GGUF model run in-process by llama-cpp-python
(see llm_local.py), for machines with no endpoint.

A backend opens a reply in two steps on purpose: `open` returns once the endpoint has accepted
the request (so /human can report a refused or failing endpoint in its own answer), and the
reply then yields text deltas until the answer ends. Closing a reply closes its HTTP stream,
which is how an interrupt stops the endpoint from generating further.
"""

from __future__ import annotations

import argparse
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

DASHSCOPE_URL = "https://dashscope.aliyuncs.com/compatible-mode/v1"
OPENAI_URL = "https://api.openai.com/v1"
# Model used when the endpoint is implied by a key alone (upstream LiveTalking's default is qwen-plus).
DEFAULT_MODELS = {DASHSCOPE_URL: "qwen-plus", OPENAI_URL: "gpt-4o-mini"}
DEFAULT_SYSTEM_PROMPT = (
    "You are a friendly digital human having a spoken conversation. Answer briefly, in plain "
    "spoken sentences without markdown, lists or emoji, in the language of the question."
)
CONNECT_TIMEOUT_S = 3.0  # an endpoint that does not accept a connection by then is reported down
READ_TIMEOUT_S = 60.0  # longest silence between two chunks of a streamed answer
# How long an idle connection to the endpoint is kept for the next answer. The HTTP client's
# default (5 s) is shorter than most pauses in a conversation, so nearly every question paid a
# new TCP and TLS handshake (100-300 ms to a remote endpoint) before its first token. A server
# that closes sooner is seen to have closed when the connection is next taken, and replaced.
KEEPALIVE_S = 90.0

NOT_CONFIGURED = (
    "type 'chat' needs an LLM, and this server has none configured: start it with "
    "--llm_url URL --llm_model NAME (or set OPENAI_BASE_URL) and put the key in OPENAI_API_KEY "
    "(DASHSCOPE_API_KEY alone uses DashScope's qwen-plus); or use type 'echo'"
)


class LLMNotConfigured(Exception):
    """Chat is off on this server; the message says which flag or variable turns it on."""


class LLMError(Exception):
    """The endpoint failed; `status` is the HTTP status /human answers with (502 or 503)."""

    def __init__(self, status: int, msg: str) -> None:
        super().__init__(msg)
        self.status = status
        self.msg = msg


class Reply(ABC):
    """One streamed answer: iterate for text deltas; `aclose` ends it early."""

    def __aiter__(self) -> AsyncIterator[str]:
        return self.deltas()

    @abstractmethod
    def deltas(self) -> AsyncIterator[str]:
        """The answer's text as it is generated; raises LLMError when the stream fails."""

    @abstractmethod
    async def aclose(self) -> None:
        """Stop the answer and release its connection (or thread); idempotent."""


class ChatBackend(ABC):
    """Where answers come from; shared by every session of the server."""

    description: str = "llm"
    system_prompt: str = DEFAULT_SYSTEM_PROMPT  # used when --llm_system_prompt is not given

    @abstractmethod
    async def open(self, messages: list[dict[str, str]], name: str) -> Reply:
        """Start an answer to `messages`; raises LLMError when the endpoint refuses it.

        `name` tags the work (threads, logs) with the session it belongs to.
        """

    async def aclose(self) -> None:
        """Release what the backend holds (connections, model)."""
        return None


@dataclass(frozen=True)
class Endpoint:
    url: str
    model: str
    api_key: str


def resolve_endpoint(opt: argparse.Namespace, env: Mapping[str, str] = os.environ) -> Endpoint:
    """The OpenAI-compatible endpoint named by flags and environment; LLMNotConfigured if none.

    --llm_url wins over OPENAI_BASE_URL; with neither, a DASHSCOPE_API_KEY means DashScope (as
    upstream) and an OPENAI_API_KEY means OpenAI itself.
    """
    url = getattr(opt, "llm_url", None) or env.get("OPENAI_BASE_URL") or None
    openai_key = env.get("OPENAI_API_KEY") or None
    dashscope_key = env.get("DASHSCOPE_API_KEY") or None
    if url is None:
        if dashscope_key:
            url = DASHSCOPE_URL
        elif openai_key:
            url = OPENAI_URL
        else:
            raise LLMNotConfigured(NOT_CONFIGURED)
    url = url.rstrip("/")
    model = getattr(opt, "llm_model", None) or DEFAULT_MODELS.get(url)
    if not model:
        raise LLMNotConfigured(
            f"type 'chat' needs --llm_model: the name of a model that {url} serves "
            "(e.g. qwen2.5:7b for Ollama, the --served-model-name for vLLM)"
        )
    # Each key goes only to its own service: a DashScope key is never sent to another endpoint.
    key = dashscope_key if "dashscope" in url else openai_key
    # Local servers (Ollama, vLLM, llama.cpp) need no key, but the openai client insists on one.
    return Endpoint(url, model, key or "no-key")


def make_backend(opt: argparse.Namespace, env: Mapping[str, str] = os.environ) -> ChatBackend:
    """The server's chat backend from its flags; LLMNotConfigured when chat stays off."""
    if getattr(opt, "llm", "openai") == "local":
        from llm_local import LocalBackend  # llama-cpp-python is optional

        return LocalBackend.load(getattr(opt, "llm_model", None))
    return OpenAIBackend(resolve_endpoint(opt, env))


class OpenAIBackend(ChatBackend):
    """Streamed chat completions from an OpenAI-compatible endpoint."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.description = f"model {endpoint.model} at {endpoint.url}"
        self._client: Any = None
        # Made at server start: importing openai takes seconds, which the first question
        # would otherwise pay; the resources it builds lazily are made now too.
        self._get_client().chat.completions  # noqa: B018

    def _get_client(self) -> Any:
        if self._client is None:  # again after aclose, should the server be restarted in-process
            import httpx2
            import openai

            self._client = openai.AsyncOpenAI(
                base_url=self.endpoint.url,
                api_key=self.endpoint.api_key,
                # No retries: a spoken answer that comes seconds late is worse than an error now.
                max_retries=0,
                timeout=openai.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
                http_client=openai.DefaultAsyncHttpxClient(
                    limits=httpx2.Limits(max_connections=100, max_keepalive_connections=20,
                                         keepalive_expiry=KEEPALIVE_S),
                ),
            )
        return self._client

    async def open(self, messages: list[dict[str, str]], name: str) -> Reply:
        import openai

        try:
            stream = await self._get_client().chat.completions.create(
                model=self.endpoint.model, messages=messages, stream=True
            )
        except openai.OpenAIError as exc:
            raise self._error(exc) from None
        return _OpenAIReply(stream, self)

    def _error(self, exc: Exception) -> LLMError:
        """An LLMError with the endpoint's own words and what to check."""
        import openai

        where = self.endpoint.url
        if isinstance(exc, openai.APIStatusError):
            detail = _endpoint_message(exc.body) or exc.message
            hint = ""
            if exc.status_code in (401, 403):
                hint = " (check OPENAI_API_KEY / DASHSCOPE_API_KEY)"
            elif exc.status_code == 404:
                hint = f" (check --llm_url and --llm_model {self.endpoint.model})"
            return LLMError(502, f"LLM endpoint {where} answered HTTP {exc.status_code}: {detail}{hint}")
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc.__context__
            reason = str(cause) if cause is not None and str(cause) else exc.message
            return LLMError(503, f"LLM endpoint {where} is unreachable: {reason} (check --llm_url / OPENAI_BASE_URL)")
        if isinstance(exc, openai.APIError):
            return LLMError(502, f"LLM endpoint {where} failed: {_endpoint_message(exc.body) or exc.message}")
        return LLMError(502, f"LLM endpoint {where} failed: {exc}")

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


class _OpenAIReply(Reply):
    def __init__(self, stream: Any, backend: OpenAIBackend) -> None:
        self._stream = stream
        self._backend = backend

    async def deltas(self) -> AsyncIterator[str]:
        import openai

        url = self._backend.endpoint.url
        try:
            async for chunk in self._stream:
                if not chunk.choices:
                    continue  # usage-only chunks
                text = chunk.choices[0].delta.content
                if text:
                    yield text
        except openai.APIStatusError as exc:
            raise self._backend._error(exc) from None
        except openai.APIConnectionError as exc:  # the connection broke mid-answer
            cause = exc.__cause__ or exc.__context__ or exc
            raise LLMError(502, f"the LLM stream from {url} broke mid-answer: {cause}") from None
        except openai.APIError as exc:  # an error chunk inside the stream
            detail = _endpoint_message(exc.body) or exc.message
            raise LLMError(502, f"LLM endpoint {url} failed mid-answer: {detail}") from None
        except openai.OpenAIError as exc:
            raise LLMError(502, f"the LLM stream from {url} failed: {exc}") from None

    async def aclose(self) -> None:
        await self._stream.close()


def _endpoint_message(body: object) -> str | None:
    """The message of an OpenAI-style error body ({"message": ...} or {"error": {...}})."""
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping) and isinstance(inner.get("message"), str):
            return inner["message"]
        if isinstance(inner, str):
            return inner
        return None
    if isinstance(body, str) and body.strip():
        return body.strip()[:300]
    return None
