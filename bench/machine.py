"""The machine a benchmark ran on, in words, so figures are never quoted without it."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine_name() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return f"{os.cpu_count()} cores ({cpu}), {mem_kb / 2**20:.0f} GiB, {platform.system()} {platform.machine()}"
