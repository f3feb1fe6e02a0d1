"""Single-core render speed of the portrait model.

    python bench/render_fps.py [--avatar data/avatars/portrait_astronaut] [--frames 500]

Pins itself to one CPU core and one OpenCV thread (a server runs one session per core), renders
frames with speech-like, ever-changing mouth features and prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a plain script from anywhere


def _pin_one_core(cpu: int | None) -> int | None:
    """Pin to one core (default: the highest allowed; core 0 tends to take the interrupts)."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    core = max(os.sched_getaffinity(0)) if cpu is None else cpu
    os.sched_setaffinity(0, {core})
    return core


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--avatar", default=str(REPO / "data/avatars/portrait_astronaut"))
    p.add_argument("--frames", type=int, default=500, help="frames per repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--cpu", type=int, default=None, help="core to pin to (default: the highest allowed)")
    args = p.parse_args(argv)

    core = _pin_one_core(args.cpu)
    import cv2
    import numpy as np

    cv2.setNumThreads(1)
    from portrait.features import frame_features
    from portrait.render import PortraitAvatar, PortraitRenderer

    avatar = PortraitAvatar.load(Path(args.avatar))
    renderer = PortraitRenderer(avatar, seed=0)
    # Speaking features: syllable-rate opening, drifting width and occasional teeth.
    i = np.arange(args.frames, dtype=np.float32)
    feats = np.stack(
        [
            0.15 + 0.7 * np.abs(np.sin(i * 0.55)),
            np.sin(i * 0.13),
            np.clip(np.sin(i * 0.31), 0.0, 1.0),
        ],
        axis=1,
    ).astype(np.float32)
    for k in range(20):  # warm-up: page in rig data, first-call overheads
        renderer.render(feats[k], k / 25.0)

    fps = []
    t_media = 0.0
    for _ in range(args.repeats):
        start = time.perf_counter()
        for k in range(args.frames):
            renderer.render(feats[k], t_media)
            t_media += 1.0 / 25.0  # media time moves on, so blinks and sway are exercised too
        fps.append(args.frames / (time.perf_counter() - start))

    # Feature extraction for one server batch: 8 frames with 10 + 10 context chunks.
    rng = np.random.default_rng(0)
    chunks = (0.1 * rng.standard_normal((10 + 16 + 10, 320))).astype(np.float32)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(200):
            frame_features(chunks, 10, 10, 8)
        times.append((time.perf_counter() - start) / 200 * 1e3)

    w, h = avatar.size
    print(json.dumps({
        "bench": "render_fps",
        "size": [w, h],
        "fps_median": round(statistics.median(fps), 1),
        "fps_min": round(min(fps), 1),
        "frames": args.frames,
        "repeats": args.repeats,
        "features_ms_per_batch": round(statistics.median(times), 3),
        "features_batch_frames": 8,
        "threads": 1,
        "cpu": core,
        # Other processes on the same core lower the figure; the load average says how busy it was.
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
