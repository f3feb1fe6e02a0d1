"""A real coturn `turnserver` on 127.0.0.1 for tests: one static long-term user, UDP and TCP on
a free port, relays on loopback, everything it writes (log, pid file, user database) in a
temporary folder that `stop` removes.

coturn refuses relaying to loopback peers unless --allow-loopback-peers; -n keeps it from
reading /etc/turnserver.conf; --pidfile and --userdb keep it out of /var/run and /var/lib/turn.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

TURNSERVER = shutil.which("turnserver")
REALM = "test"
STUN_BINDING_REQUEST = 0x0001
STUN_BINDING_SUCCESS = 0x0101
STUN_MAGIC_COOKIE = 0x2112A442


def free_udp_tcp_port() -> int:
    """A loopback port free for both UDP and TCP (coturn listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no loopback port is free for both UDP and TCP")


def stun_binding(port: int, timeout: float = 0.3) -> bool:
    """Whether a STUN server answers a Binding request on 127.0.0.1:port (UDP)."""
    transaction = os.urandom(12)
    request = STUN_BINDING_REQUEST.to_bytes(2, "big") + (0).to_bytes(2, "big") \
        + STUN_MAGIC_COOKIE.to_bytes(4, "big") + transaction
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(request, ("127.0.0.1", port))
            reply, _ = sock.recvfrom(2048)
        except OSError:  # timeout, or ICMP port unreachable (nothing listens yet)
            return False
    return len(reply) >= 20 and int.from_bytes(reply[:2], "big") == STUN_BINDING_SUCCESS and reply[8:20] == transaction


class TurnServer:
    """A started coturn with user `username`:`password` in realm `test` (`extra`: more flags);
    use as a context manager or call `stop`. Skips the calling test when coturn is not installed."""

    def __init__(self, username: str = "u", password: str = "p", extra: tuple[str, ...] = (),
                 timeout: float = 15.0) -> None:
        if TURNSERVER is None:
            pytest.skip("coturn's turnserver is not installed (apt-get install coturn)")
        self.username = username
        self.password = password
        self.folder = Path(tempfile.mkdtemp(prefix="livetalking-turn-"))
        self.log_path = self.folder / "turn.log"
        self.port = free_udp_tcp_port()
        self.flags = [
            "-n",  # no configuration file: these flags only
            "--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1",
            "--listening-port", str(self.port),
            "--min-port", "49152", "--max-port", "65535",
            "--lt-cred-mech", "--user", f"{username}:{password}", "--realm", REALM,
            "--no-tls", "--no-dtls", "--no-cli", "--no-rfc5780",
            "--allow-loopback-peers", "--verbose",  # --verbose: the log shows each allocation
            "--log-file", str(self.log_path), "--simple-log", "--no-stdout-log",
            "--pidfile", str(self.folder / "turn.pid"),
            "--userdb", str(self.folder / "turndb"),
            *extra,
        ]
        self.proc = subprocess.Popen(
            [TURNSERVER, *self.flags],
            cwd=self.folder,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            self._wait_listening(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"turnserver exited with {self.proc.returncode}:\n{err[-2000:]}\n"
                                   f"{self.log()[-3000:]}")
            if stun_binding(self.port):
                return
        raise RuntimeError(f"turnserver did not answer STUN on 127.0.0.1:{self.port} within {timeout:g} s:\n"
                           f"{self.log()[-3000:]}")

    @property
    def url(self) -> str:
        return f"turn:127.0.0.1:{self.port}"

    def ice_servers(self, password: str | None = None) -> list[dict]:
        """This server as a --ice_servers entry (optionally with another password)."""
        return [{"urls": [self.url], "username": self.username,
                 "credential": self.password if password is None else password}]

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stderr:
            self.proc.stderr.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> TurnServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
