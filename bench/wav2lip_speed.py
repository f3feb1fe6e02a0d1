"""Wav2Lip256 inference speed: plain eager fp32 vs the project's prepared model.

    python bench/wav2lip_speed.py [--batches 1 4 8 16] [--repeats 5] [--threads N] [--device cpu|cuda]

Random weights with measured (non-identity) BatchNorm statistics, so no checkpoint is needed and
the BatchNorm folding does real work. Variants, all run on the same inputs:

    plain    the network as upstream runs it: eval mode, BatchNorm layers, NCHW, torch.no_grad
    folded   BatchNorm folded + channels_last (CPU) or fp16 (CUDA), eager ops, inference_mode
    project  what wav2lip.checkpoint.load_model returns: on CPU, folded + channels_last with each
             conv block one oneDNN call (add and ReLU fused, weights packed once); on CUDA, fp16
    project_bf16  the same in bfloat16 (load_model(..., cpu_bf16=True)), on CPUs that have it

Runs of the variants alternate, so load from other processes hits all of them alike. Each run
records the process's CPU time over wall time: a run whose share is below 90% of the threads
lost cores to someone else ("contended"), and with OpenMP's barriers that can make it several
times slower. fps is the median over uncontended runs (over all runs if none was). Prints one
JSON object; progress lines go to stderr.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a plain script from anywhere

CONTENDED_SHARE = 0.9


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


class Variant:
    def __init__(self, name: str, model: Any, dtype: Any, channels_last: bool, grad_off: Any) -> None:
        self.name, self.model, self.dtype, self.channels_last, self.grad_off = (
            name,
            model,
            dtype,
            channels_last,
            grad_off,
        )
        self.runs: list[tuple[float, float]] = []  # (wall seconds, CPU share in threads)

    def inputs(self, mel: Any, face: Any) -> tuple[Any, Any]:
        import torch

        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return mel.to(self.dtype).contiguous(memory_format=fmt), face.to(self.dtype).contiguous(memory_format=fmt)

    def __call__(self, mel: Any, face: Any) -> Any:
        with self.grad_off():
            return self.model(mel, face)


def _timed(variant: Variant, mel: Any, face: Any, sync: Any) -> tuple[float, float]:
    sync()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    variant(mel, face)
    sync()
    wall = time.perf_counter() - wall0
    return wall, (time.process_time() - cpu0) / wall


def _summary(batch: int, runs: list[tuple[float, float]], threads: int, cpu_bound: bool) -> dict:
    quiet = [w for w, share in runs if not cpu_bound or share >= CONTENDED_SHARE * threads]
    walls = quiet or [w for w, _ in runs]
    return {
        "fps": round(batch / statistics.median(walls), 3),
        "best_fps": round(batch / min(w for w, _ in runs), 3),
        "uncontended_runs": len(quiet),
        "runs": [[round(w, 3), round(s, 2)] for w, s in runs],
    }


def conv_gflop_per_frame(model: Any) -> float:
    """Multiply-adds x 2 of every convolution for one frame: the work no fp32 kernel can skip."""
    import torch
    from torch import nn

    total = 0.0

    def count(module: Any, args: tuple, out: Any) -> None:
        nonlocal total
        taps = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        # A transposed conv spreads each input pixel over its kernel: count by input pixels.
        pixels = args[0][0, 0].numel() if isinstance(module, nn.ConvTranspose2d) else out[0, 0].numel()
        total += 2.0 * pixels * taps * module.out_channels

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 1, 80, 16), torch.zeros(1, 6, 256, 256))
    finally:
        for h in hooks:
            h.remove()
    return total / 1e9


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16])
    p.add_argument("--repeats", type=int, default=5, help="timed runs per batch size and variant")
    p.add_argument("--threads", type=int, default=_cores(), help="torch threads (default: the usable cores)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = p.parse_args(argv)

    import torch

    from wav2lip.checkpoint import cpu_has_bf16, prepare
    from wav2lip.random_init import random_wav2lip

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: CUDA is not available", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cpu = device.type == "cpu"
    base = random_wav2lip(seed=0)
    gflop = conv_gflop_per_frame(base)
    half = torch.float32 if cpu else torch.float16
    variants = [
        Variant("plain", copy.deepcopy(base).to(device), torch.float32, False, torch.no_grad),
        Variant("folded", prepare(copy.deepcopy(base), device, onednn=False), half, cpu, torch.inference_mode),
        Variant("project", prepare(copy.deepcopy(base), device), half, cpu, torch.inference_mode),
    ]
    if not cpu:
        variants.pop(1)  # on CUDA the project's model is the folded fp16 one
    elif cpu_has_bf16():
        bf16 = prepare(copy.deepcopy(base), device, cpu_bf16=True)
        variants.append(Variant("project_bf16", bf16, torch.bfloat16, True, torch.inference_mode))

    def sync() -> None:
        if not cpu:
            torch.cuda.synchronize()

    results = []
    g = torch.Generator().manual_seed(1)
    for batch in args.batches:
        mel = (torch.rand(batch, 1, 80, 16, generator=g) * 8 - 4).to(device)
        face = torch.rand(batch, 6, 256, 256, generator=g).to(device)
        feeds = [v.inputs(mel, face) for v in variants]
        # The first call of each is the warm-up (oneDNN/cuDNN pick and cache their kernels).
        outs = [v(*f).float() for v, f in zip(variants, feeds, strict=True)]
        for v in variants:
            v.runs = []
        for _ in range(args.repeats):
            for v, f in zip(variants, feeds, strict=True):
                v.runs.append(_timed(v, *f, sync))
        row: dict[str, Any] = {"batch": batch}
        for v, out in zip(variants, outs, strict=True):
            row[v.name] = _summary(batch, v.runs, args.threads, cpu)
            row[v.name]["conv_gflops"] = round(row[v.name]["fps"] * gflop, 1)
            row[v.name]["max_abs_diff_vs_plain"] = float((out - outs[0]).abs().max())
        for v in variants[1:]:
            row[f"speedup_{v.name}"] = round(row[v.name]["fps"] / row["plain"]["fps"], 3)
        results.append(row)
        brief = {k: (v["fps"] if isinstance(v, dict) else v) for k, v in row.items()}
        print(json.dumps(brief), file=sys.stderr, flush=True)  # big batches take minutes on CPU

    report = {
        "bench": "wav2lip_speed",
        "device": "cpu" if cpu else torch.cuda.get_device_name(device),
        "cpu": _cpu_name(),
        "threads": torch.get_num_threads(),
        "usable_cores": _cores(),
        "torch": torch.__version__,
        "repeats": args.repeats,
        "conv_gflop_per_frame": round(gflop, 2),
        "runs_format": "[wall seconds, CPU share in threads]",
        "load_avg_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "results": results,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
