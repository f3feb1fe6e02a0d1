"""Fixtures: a real LiveTalking server on loopback, run in a thread of the test process so that
tests can also see the session's threads."""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import app as livetalking  # noqa: E402


def _test_voices() -> Path:
    """The voices folder of the test servers: one piper voice that exists but cannot load,
    so a request can make the TTS fail mid-session."""
    folder = Path(tempfile.mkdtemp(prefix="livetalking-voices-"))
    atexit.register(shutil.rmtree, folder, True)
    (folder / "broken.onnx").write_bytes(b"this is not an onnx model")
    (folder / "broken.onnx.json").write_text("{}")
    return folder


VOICES_DIR = _test_voices()
RECORD_DIR = tempfile.mkdtemp(prefix="livetalking-records-")
atexit.register(shutil.rmtree, RECORD_DIR, True)
# Flags every test server gets unless the test gives its own: many sessions from one address
# however busy the machine is (admission and per-address limits have their own tests).
TEST_DEFAULTS = {"--max_sessions_per_ip": "8", "--capacity": "8", "--voices_dir": str(VOICES_DIR),
                 "--record_dir": RECORD_DIR}


class RunningServer:
    """app.py's application served on 127.0.0.1 from a background event loop."""

    def __init__(self, argv: list[str], defaults: bool = True) -> None:
        if defaults:
            argv = [*argv, *(x for flag, value in TEST_DEFAULTS.items() if flag not in argv for x in (flag, value))]
        self.opt = livetalking.parse_args(argv)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-server-loop", daemon=True)
        self._thread.start()
        self.app = web.Application()
        self.runner: web.AppRunner | None = None
        self.port = 0
        self.call(self._start())

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    async def _start(self) -> None:
        self.app = await asyncio.get_running_loop().run_in_executor(None, livetalking.build_app, self.opt)
        self.runner = web.AppRunner(self.app, **livetalking.SERVER_OPTIONS)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def live(self) -> livetalking.LiveTalking:
        return self.app[livetalking.LIVE]

    def stop(self) -> None:
        if self.runner is not None:
            self.call(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


# The machine's own LLM settings must not leak into the servers the tests start: tests that
# need an LLM give it explicitly (a local endpoint), the rest expect none.
LLM_ENV = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "DASHSCOPE_API_KEY")


@pytest.fixture(scope="session")
def server() -> Iterator[RunningServer]:
    saved = {name: os.environ.pop(name) for name in LLM_ENV if name in os.environ}
    try:
        srv = RunningServer(["--max_session", "8"])
    finally:
        os.environ.update(saved)
    yield srv
    srv.stop()


def llm_server(llm_url: str, *flags: str) -> RunningServer:
    """A test server whose chat is the stand-in LLM at `llm_url`, whatever this machine's own
    LLM settings are."""
    with pytest.MonkeyPatch.context() as env:
        for name in LLM_ENV:
            env.delenv(name, raising=False)
        env.setenv("OPENAI_API_KEY", "sk-test")
        return RunningServer(["--max_session", "4", "--llm_url", llm_url, "--llm_model", "test", *flags])


@pytest.fixture(scope="module")
def fake_llm():
    """A real OpenAI-compatible streaming server on loopback (tests/fakellm.py), per module."""
    from fakellm import FakeLLM

    fake = FakeLLM()
    yield fake
    fake.stop()


@pytest.fixture
def running_tts(stand) -> Iterator[tuple]:
    """A started TTS worker on the module's engine stand-in (each TTS engine module defines
    `stand`), with a collecting sink; stopped after the test."""
    from tts_local import Collector, start_tts

    stand.control.reset()
    sink = Collector()
    tts = start_tts(stand.engine, sink)
    yield stand, sink, tts
    tts.stop()
