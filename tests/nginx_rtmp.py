"""A real RTMP server for the tests: Debian's nginx with libnginx-mod-rtmp, on loopback, with
its own config in a temporary folder (no system files touched)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from appprocess import free_port

MODULE = Path("/usr/lib/nginx/modules/ngx_rtmp_module.so")
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)

CONFIG = """
load_module {module};
daemon off;
worker_processes 1;
error_log {dir}/error.log info;
pid {dir}/nginx.pid;
events {{ worker_connections 64; }}
rtmp {{
    server {{
        listen 127.0.0.1:{port};
        application live {{ live on; }}
    }}
}}
"""


def require_nginx_rtmp() -> None:
    if NGINX is None or not MODULE.exists():
        pytest.skip("nginx with libnginx-mod-rtmp is not installed (./setup.sh --dev)")


class NginxRtmp:
    """`with NginxRtmp() as rtmp:` a server at rtmp.url('key'); stop() and start() again to
    drop every connection (a server restart)."""

    def __init__(self) -> None:
        require_nginx_rtmp()
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="livetalking-nginx-"))
        (self.dir / "nginx.conf").write_text(CONFIG.format(module=MODULE, dir=self.dir, port=self.port))
        self.proc: subprocess.Popen | None = None

    def url(self, key: str = "test") -> str:
        return f"rtmp://127.0.0.1:{self.port}/live/{key}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(NGINX), "-e", str(self.dir / "error.log"), "-p", str(self.dir), "-c", str(self.dir / "nginx.conf")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        raise RuntimeError(f"nginx did not start: {(self.dir / 'error.log').read_text(errors='replace')[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # nginx's fast shutdown: every connection is dropped
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> NginxRtmp:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
