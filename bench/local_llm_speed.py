"""Speed of the --llm local model as the server uses it (llm_local.LocalBackend, its threads and
sampling), alone on the machine: load time, first token and tokens per second.

    .venv/bin/python bench/local_llm_speed.py [--repeats 3]

Prints JSON. Speech needs about 4 tokens per second (3 English words a second), so any figure
well above that keeps the voice fed; the first token is what the listener waits for.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from machine import machine_name  # noqa: E402

import llm_local  # noqa: E402

QUESTIONS = ["What is the capital of France?", "Tell me something about the moon.", "How do I make tea?"]


async def answer(backend: llm_local.LocalBackend, question: str) -> dict:
    messages = [{"role": "system", "content": backend.system_prompt}, {"role": "user", "content": question}]
    started = time.perf_counter()
    reply = await backend.open(messages, "bench")
    first = None
    count = 0
    text = []
    async for delta in reply:
        if first is None:
            first = time.perf_counter()
        count += 1
        text.append(delta)
    done = time.perf_counter()
    await reply.aclose()
    return {
        "first_token_ms": round((first - started) * 1000, 1),
        "tokens": count,
        "tokens_per_s": round((count - 1) / (done - first), 1) if count > 1 else None,
        "answer": "".join(text)[:120],
    }


async def main_async(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    backend = llm_local.LocalBackend.load(None)
    load_s = time.perf_counter() - started
    rounds = [await answer(backend, q) for _ in range(args.repeats) for q in QUESTIONS]
    return {
        "bench": "local_llm_speed",
        "machine": machine_name(),
        "model": backend.description,
        "load_s": round(load_s, 2),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "first_token_ms": statistics.median(r["first_token_ms"] for r in rounds),
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rounds if r["tokens_per_s"]),
        "rounds": rounds,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    print(json.dumps(asyncio.run(main_async(p.parse_args())), indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
