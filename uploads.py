"""Uploaded audio decoded in a child process with a CPU, memory and time budget.

A few kilobytes of audio can ask for minutes of CPU and gigabytes of memory (a silent FLAC
at an absurd sample rate, a header claiming hours). Decoding such a file in the server would
take those from every live stream, and the memory would stay with the server afterwards.
So each upload is decoded by a fresh process, forked from a small helper process that has
the decoders imported already (a few milliseconds to start), at a lower CPU priority than the
streams, under RLIMIT_CPU, RLIMIT_AS and an alarm. When it exits its memory goes back to the
system. One decode runs at a time; a few may wait, more are refused.

The helper is this file run as a script: single-threaded, so forking it is safe (forking the
server, whose threads hold locks, is not), and independent of the server's main module.

    parent --(job socket, over the helper's control socket)--> helper --fork--> decoder child
    parent <------------- samples or the reason it failed, on the job socket ------------'
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

CPU_SECONDS = 30  # CPU a decode may use; ten minutes of MP3 takes about 3 s here
MEMORY_MB = 1024  # memory a decode may map beyond what the decoders themselves need
WALL_SECONDS = 60  # a decode still running after this is ended by its alarm
MAX_WAITING = 4  # uploads waiting behind the one being decoded: more are refused
NICE = 10  # the streams win every contest for a core

RunBlocking = Callable[..., Awaitable[Any]]


class UploadRefused(ValueError):
    """The upload cannot be decoded; the message says why (shown to the client)."""


class DecoderBusy(RuntimeError):
    """Too many uploads are waiting for the decoder."""


class UploadDecoder:
    """Decodes uploads one at a time in budgeted child processes. Owned by the app, which
    calls `close()` at shutdown to stop the helper process."""

    def __init__(self, cpu_seconds: int = CPU_SECONDS, memory_mb: int = MEMORY_MB,
                 wall_seconds: int = WALL_SECONDS, max_waiting: int = MAX_WAITING) -> None:
        self.budget = {"cpu_seconds": cpu_seconds, "memory_mb": memory_mb, "wall_seconds": wall_seconds}
        self.max_waiting = max_waiting
        self._helper: subprocess.Popen | None = None
        self._control: socket.socket | None = None
        self._lock = threading.Lock()  # guards the helper's start and the control socket
        self._slot: asyncio.Semaphore | None = None
        self._queued = 0  # being decoded or waiting
        self.decoded = 0
        self.refused = 0

    # --- the helper --------------------------------------------------------------------------
    def start(self) -> None:
        """Start the helper (blocking: it imports the decoders, about a second); idempotent."""
        with self._lock:
            if self._helper is not None and self._helper.poll() is None:
                return
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self._helper = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
            theirs.close()
            self._control = ours
            log.info("upload decoder helper started (pid %d)", self._helper.pid)

    def close(self) -> None:
        """Stop the helper; a decode in flight ends with it (its job socket closes)."""
        with self._lock:
            control, helper = self._control, self._helper
            self._control = self._helper = None
        if control is not None:
            control.close()  # the helper exits when its control socket closes
        if helper is not None:
            try:
                helper.wait(2)
            except subprocess.TimeoutExpired:
                helper.kill()
                helper.wait(2)

    # --- decoding ----------------------------------------------------------------------------
    async def decode(self, data: bytes, filename: str, max_seconds: float, run_blocking: RunBlocking) -> np.ndarray:
        """16 kHz mono float32 audio of an upload. UploadRefused with the reason when it cannot
        be decoded within its budget; DecoderBusy when too many wait. `run_blocking(func,
        *args)` runs the blocking part in a thread (the app's control pool)."""
        if self._slot is None:
            self._slot = asyncio.Semaphore(1)
        if self._queued > self.max_waiting:
            raise DecoderBusy(f"{self._queued} uploads are being decoded or waiting; try again shortly")
        self._queued += 1
        try:
            async with self._slot:
                return await run_blocking(self.decode_blocking, data, filename, max_seconds)
        finally:
            self._queued -= 1

    def decode_blocking(self, data: bytes, filename: str, max_seconds: float) -> np.ndarray:
        started = time.perf_counter()
        self.start()
        job, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            params = {"filename": filename, "max_seconds": max_seconds, **self.budget}
            with self._lock:
                if self._control is None:
                    raise UploadRefused("the server is shutting down")
                socket.send_fds(self._control, [json.dumps(params).encode()], [theirs.fileno()])
            theirs.close()
            job.settimeout(self.budget["wall_seconds"] + 5)
            reply = _exchange(job, data)
        except (OSError, TimeoutError) as exc:
            reply = b""
            log.warning("upload decoder: %s", exc)
        finally:
            job.close()
            theirs.close()
        if reply[:1] == b"A":
            audio = np.frombuffer(reply, dtype=np.float32, offset=1)
            self.decoded += 1
            log.info("upload decoded: %.1f s of audio in %.2f s", audio.size / 16000, time.perf_counter() - started)
            return audio
        self.refused += 1
        if reply[:1] == b"E":
            raise UploadRefused(reply[1:].decode("utf-8", "replace"))
        b = self.budget
        raise UploadRefused(
            f"the decoder gave up on the file: it needed more than {b['cpu_seconds']} s of CPU, "
            f"{b['wall_seconds']} s or {b['memory_mb']} MB of memory, or it crashed the decoder"
        )


def _exchange(job: socket.socket, data: bytes) -> bytes:
    job.sendall(len(data).to_bytes(8, "little"))
    job.sendall(data)
    job.shutdown(socket.SHUT_WR)
    chunks = []
    while True:
        chunk = job.recv(1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


# --- the helper process and its children ---------------------------------------------------------


def _serve(control_fd: int) -> None:
    """The helper's loop: one forked child per job; exits when the server closes the socket."""
    control = socket.socket(fileno=control_fd)
    while True:
        readable, _, _ = select.select([control], [], [], 1.0)
        _reap_children()
        if not readable:
            continue
        try:
            msg, fds, _, _ = socket.recv_fds(control, 65536, 1)
        except OSError:
            return
        if not msg:
            return  # the server went away
        if not fds:
            continue
        pid = os.fork()
        if pid == 0:
            control.close()
            code = 0
            try:
                _decode_job(fds[0], json.loads(msg))
            except BaseException:
                code = 1
            os._exit(code)
        os.close(fds[0])


def _reap_children() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


class _OverBudget(Exception):
    pass


def _on_budget_signal(signum: int, _frame: Any) -> None:
    raise _OverBudget(signum)


def _decode_job(fd: int, params: dict) -> None:
    """In a decoder child: read the file, decode it under the budget, answer on the socket."""
    from audio_util import decode_audio_bytes

    job = socket.socket(fileno=fd)
    with contextlib.suppress(OSError):
        os.nice(NICE)
    cpu = int(params["cpu_seconds"])
    signal.signal(signal.SIGXCPU, _on_budget_signal)  # at the soft limit; the hard one kills
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 2))
    signal.signal(signal.SIGALRM, _on_budget_signal)
    signal.alarm(int(params["wall_seconds"]))
    limit = _mapped_bytes() + int(params["memory_mb"]) * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        size = int.from_bytes(_recv_exact(job, 8), "little")
        data = _recv_exact(job, size)
        audio = decode_audio_bytes(data, params["filename"], max_seconds=float(params["max_seconds"]))
        del data
        reply = b"A" + np.ascontiguousarray(audio, dtype=np.float32).tobytes()
    except ValueError as exc:
        reply = b"E" + str(exc).encode("utf-8", "replace")
    except MemoryError:
        reply = b"E" + f"decoding the file needs more than {params['memory_mb']} MB of memory".encode()
    except _OverBudget as exc:
        what = "CPU" if exc.args[0] == signal.SIGXCPU else "time"
        budget = cpu if what == "CPU" else params["wall_seconds"]
        reply = b"E" + f"decoding the file needs more than {budget} s of {what}".encode()
    signal.alarm(0)
    job.sendall(reply)
    job.close()


def _recv_exact(job: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = job.recv(min(1 << 20, n - len(buf)))
        if not chunk:
            raise ValueError("the upload was cut short")
        buf += chunk
    return bytes(buf)


def _mapped_bytes() -> int:
    """The address space this process maps now (the decoders' libraries, inherited)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


if __name__ == "__main__":
    import audio_util  # noqa: F401  (imported once here, so every forked child has it)

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server's Ctrl-C is the server's to handle
    _serve(int(sys.argv[1]))
