"""MuseTalk and Ultralight at their real sizes: features, inference and paste-back per batch.

    python bench/model_speed.py [--models musetalk ultralight] [--batches 1 4 16] [--device cpu|cuda]

Random weights in the real shapes (musetalk.json's UNet, sd-vae-ft-mse, whisper-tiny,
hubert-large, the Ultralight UNet), so no download is needed and the arithmetic is the real
one. For each batch: the features of one batch's audio window (-l 10 -r 10), the inference and
paste-back of its frames, frames per second of the two together, and the process's peak RSS.
For MuseTalk also the opt-in --fast_whisper features and how far they are from the default
ones (with random weights: a trained whisper's deviation may differ). Each model runs in a
child process of its own, so its peak memory is its own. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as app.py runs the models

LEFT = RIGHT = 10


def _timed(fn, repeats: int) -> float:
    """Median seconds of `fn` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _musetalk(device):
    import numpy as np
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import WhisperConfig, WhisperFeatureExtractor
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from museasr import MuseASR, Whisper
    from musereal import MuseTalk, MuseTalkSession
    from musetalk.avatar import MuseAvatar
    from musetalk.render import MuseTalkNet
    from tiny_models import MUSE_BOX, MUSETALK_JSON, mask_box, portrait_frames

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    unet = UNet2DConditionModel(**{k: v for k, v in MUSETALK_JSON.items() if not k.startswith("_")})
    vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, layers_per_block=2)
    net = MuseTalkNet(unet, vae, 0.18215, device, dtype)
    config = WhisperConfig(d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536)
    encoder = WhisperEncoder(config).eval().to(device=device, dtype=dtype)
    whisper = Whisper(encoder, WhisperFeatureExtractor(), device, dtype)
    xs, ys, xe, ye = mask_box(MUSE_BOX)
    n = 16
    latents = np.random.default_rng(0).normal(0, 1, (n, 8, 32, 32)).astype(np.float32)
    mask = np.full((ye - ys, xe - xs), 255, np.uint8)
    avatar = MuseAvatar(portrait_frames(n), [MUSE_BOX] * n, np.ones(n, bool), latents, [mask] * n,
                        [(xs, ys, xe, ye)] * n)
    model = MuseTalk(net, whisper, avatar)
    return model, MuseASR(whisper, LEFT, RIGHT), MuseTalkSession(net, avatar)


def _ultralight(device):
    from transformers import HubertConfig, HubertModel

    from hubertasr import Hubert, HubertASR
    from lightreal import Ultralight, UltralightSession, load_ultralight_avatar
    from tiny_models import write_ultralight_avatar
    from ultralight.checkpoint import prepare
    from ultralight.random_init import random_ultralight

    hubert_model = HubertModel(HubertConfig(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
        feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True, feat_proj_layer_norm=True,
    )).eval().to(device)
    hubert = Hubert(hubert_model, True, device)
    import tempfile

    folder = Path(tempfile.mkdtemp()) / "avatar"
    write_ultralight_avatar(folder, n_frames=16)
    avatar = load_ultralight_avatar(folder)
    net = prepare(random_ultralight(0), device)
    model = Ultralight(net, hubert, avatar)
    return model, HubertASR(hubert, LEFT, RIGHT), UltralightSession(net, avatar)


def measure_one(name: str, batches: list[int], device_name: str, repeats: int) -> dict:
    import numpy as np
    import torch

    device = torch.device(device_name)
    started = time.perf_counter()
    _, asr, renderer = {"musetalk": _musetalk, "ultralight": _ultralight}[name](device)
    out: dict = {"model": name, "device": device_name, "threads": torch.get_num_threads(),
                 "build_s": round(time.perf_counter() - started, 1), "batches": []}
    rng = np.random.default_rng(0)
    for batch in batches:
        window = rng.normal(0, 0.1, (LEFT + 2 * batch + RIGHT, 320)).astype(np.float32)
        indices = list(range(batch))
        feats = asr.features(window, LEFT, RIGHT, batch)
        def features(window=window, batch=batch):
            return asr.features(window, LEFT, RIGHT, batch)

        def render(feats=feats, indices=indices):
            return [renderer.paste_back(p, i) for p, i in zip(renderer.infer(feats, indices), indices, strict=True)]

        feature_s = _timed(features, repeats)
        render_s = _timed(render, repeats)
        row = {"batch": batch, "feature_ms": round(1000 * feature_s, 1), "render_ms": round(1000 * render_s, 1),
               "fps": round(batch / (feature_s + render_s), 2)}
        print(f"{name} batch {batch}: {row}", file=sys.stderr, flush=True)
        out["batches"].append(row)
    out["profile_batch1_ms"] = profile(name, renderer, asr, rng, repeats)
    if name == "musetalk":
        whisper = asr.whisper
        samples = rng.normal(0, 0.1, (LEFT + 32 + RIGHT) * 320).astype(np.float32)
        full = _timed(lambda: whisper.hidden_states(samples, fast=False), repeats)
        fast = _timed(lambda: whisper.hidden_states(samples, fast=True), repeats)
        from museasr import frame_windows

        a = frame_windows(whisper.hidden_states(samples, fast=False), LEFT, 16)
        b = frame_windows(whisper.hidden_states(samples, fast=True), LEFT, 16)
        out["fast_whisper"] = {"full_ms": round(1000 * full, 1), "fast_ms": round(1000 * fast, 1),
                               "speedup": round(full / fast, 1),
                               "relative_deviation": round(float(np.abs(a - b).mean() / np.abs(a).mean()), 3)}
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def profile(name: str, renderer, asr, rng, repeats: int) -> dict:
    """Where one frame's time goes (ms): the network's parts and the paste-back."""
    import numpy as np
    import torch

    window = rng.normal(0, 0.1, (LEFT + 2 + RIGHT, 320)).astype(np.float32)
    feats = asr.features(window, LEFT, RIGHT, 1)
    parts: dict = {}
    if name == "musetalk":
        net = renderer.net
        latents = torch.from_numpy(renderer.avatar.latents[:1]).to(net.device, net.dtype)
        cond = torch.from_numpy(feats).to(net.device, net.dtype)
        with torch.inference_mode():
            pred = net.unet(latents, net._timestep, encoder_hidden_states=cond).sample
            parts["unet"] = _timed(lambda: net.unet(latents, net._timestep, encoder_hidden_states=cond), repeats)
            parts["vae_decode"] = _timed(lambda: net.vae.decode(pred / net.scale), repeats)
    else:
        parts["unet"] = _timed(lambda: renderer.infer(feats, [0]), repeats)
    pred = renderer.infer(feats, [0])[0]
    parts["paste_back"] = _timed(lambda: renderer.paste_back(pred, 0), repeats)
    return {k: round(1000 * v, 1) for k, v in parts.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=["ultralight", "musetalk"])
    p.add_argument("--batches", nargs="*", type=int, default=[1, 4, 16])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # run one model in this process
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one, args.batches, args.device, args.repeats)))
        return
    results = []
    for name in args.models:
        cmd = [sys.executable, __file__, "--one", name, "--device", args.device, "--repeats", str(args.repeats),
               "--batches", *map(str, args.batches)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results.append(json.loads(done.stdout[done.stdout.index("{"):]))
    print(json.dumps({"results": results}, indent=2))


if __name__ == "__main__":
    main()
