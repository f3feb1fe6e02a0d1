"""`app.py` run as its own process on loopback, as a user runs it: for tests and benchmarks that
need the server's own CPU, memory, log and event loop apart from the client's."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppProcess:
    """A started `app.py`; its log (stderr) is kept in a file for the test to read."""

    def __init__(self, flags: list[str], env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = tempfile.NamedTemporaryFile(prefix="livetalking-log-", suffix=".txt", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "app.py"), "--listenport", str(self.port), "--host", "127.0.0.1", *flags],
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    async def wait_ready(self, http: aiohttp.ClientSession, timeout: float = 60.0) -> None:
        """Wait until the page is served (the models and voice are loaded by then)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                async with http.get(self.url + "/") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError(f"app.py did not start within {timeout:g} s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")) / 1024

    def threads(self) -> int:
        return len(list(Path(f"/proc/{self.proc.pid}/task").iterdir()))

    def fds(self) -> int:
        return len(list(Path(f"/proc/{self.proc.pid}/fd").iterdir()))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)
