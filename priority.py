"""Thread priorities: the event loop, which paces every stream, wins every contest for a core.

The loop thread sends each session's 50 audio packets and 25 video frames per second; it
needs little CPU but needs it on time. Around it run threads that want whole cores in bursts
(a TTS voice synthesizing a sentence at ten times real time, rendering, VP8 encoding). At equal
priority the kernel shares the cores equally among them all, and with four sessions speaking
the loop got a tenth of a core at times and the sound arrived 200-300 ms late. Those threads
can wait: TTS output is buffered seconds ahead, and a late video frame is replaced by the
newest one. On Linux a thread's nice value is its own, so each lowers itself when it starts.
"""

from __future__ import annotations

import contextlib
import os
import threading

TTS = 5  # synthesis runs seconds ahead of playback
RENDER = 5  # inference and pasting: a late frame is skipped, never waited for
ENCODE = 3  # VP8 encodes in the media pool: a late frame is skipped too
CONTROL = 5  # session set-up and close, request parsing


def lower_current_thread(nice: int) -> None:
    """Give the calling thread `nice` more than the process (no effect where unsupported)."""
    with contextlib.suppress(AttributeError, OSError):
        base = os.getpriority(os.PRIO_PROCESS, os.getpid())
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), min(19, base + nice))
