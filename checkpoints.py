"""Reading users' PyTorch files safely, and telling them exactly how a file does not fit.

Every model family loads upstream files it did not write: a checkpoint is data, so it is
read with `weights_only` (no pickled code runs), with numpy scalars allowed because upstream
files carry them (a step count, a loss, coordinates), and always onto the CPU first (files
saved on CUDA load on a machine without one).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

MAX_LISTED = 10  # names listed per kind in a mismatch message; a wrong file would list hundreds


class CheckpointMismatch(ValueError):
    """A checkpoint's names or shapes do not fit the network it is meant for."""


def best_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_has_bf16() -> bool:
    """True when oneDNN can compute bfloat16 natively on this CPU."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(torch.backends.mkldnn.is_available() and check is not None and check())


def load_data(path: str | Path, hint: str) -> Any:
    """`torch.load` of a file we cannot trust, on the CPU; ValueError naming the file (and
    `hint`, what it should be) when it is not PyTorch data."""
    try:
        with torch.serialization.safe_globals(numpy_scalar_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load fails in many ways on a foreign file; all mean "not ours"
        # torch's own text advises weights_only=False, wrong for a file we cannot trust; keep
        # only the line naming a disallowed object, if there is one.
        detail = next((ln.strip() for ln in str(e).splitlines() if "Unsupported global" in ln), type(e).__name__)
        raise ValueError(f"cannot read checkpoint {path} as PyTorch weights ({detail}); is it {hint}?") from e


def state_dict_of(obj: Any, path: str | Path, prefixes: tuple[str, ...] = ("module.",)) -> dict[str, torch.Tensor]:
    """The tensors of a loaded checkpoint (a bare state dict or {"state_dict": ...}), with
    the wrappers' name prefixes (DataParallel's "module.") stripped."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointMismatch(f"{path} is not a state dict (expected a dict of tensors or {{'state_dict': ...}})")
    return {_strip(k, prefixes): v for k, v in obj.items()}


def numpy_scalar_globals() -> list:
    import numpy as np

    # numpy 2 moved numpy.core to numpy._core (the old name still works there, with a warning).
    name = "numpy._core.multiarray" if int(np.__version__.split(".")[0]) >= 2 else "numpy.core.multiarray"
    scalar = importlib.import_module(name).scalar
    kinds = (np.float16, np.float32, np.float64, np.int32, np.int64, np.bool_)
    return [scalar, np.dtype, *{type(np.dtype(k)) for k in kinds}]


def _strip(name: str, prefixes: tuple[str, ...]) -> str:
    for prefix in prefixes:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def check_fit(model: nn.Module, state: Mapping[str, torch.Tensor], source: str, what: str) -> None:
    """Raise CheckpointMismatch listing missing and unexpected names and the first shape
    mismatch; `what` names the network and the file it wants ("Wav2Lip256 (is it ...?)")."""
    expected = model.state_dict()
    # BatchNorm fills in a missing counter itself (files from before PyTorch 0.4.1 lack it).
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = (k for k, v in expected.items() if k in state and state[k].shape != v.shape)
    first_bad = next(((k, tuple(expected[k].shape), tuple(state[k].shape)) for k in mismatched), None)
    if not (missing or unexpected or first_bad):
        return
    parts = [f"{source} does not fit {what}"]
    if missing:
        parts.append(f"{len(missing)} missing: {_listing(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected: {_listing(unexpected)}")
    if first_bad:
        name, want, got = first_bad
        parts.append(f"first shape mismatch: {name} expected {list(want)} got {list(got)}")
    raise CheckpointMismatch("; ".join(parts))


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown if len(names) <= MAX_LISTED else f"{shown} and {len(names) - MAX_LISTED} more"


@torch.no_grad()
def fuse_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm2d into the conv just before it (in place); returns `model`.

    Inference only: the folded model computes conv(x) * scale + shift in one pass instead of
    two, which saves a full read and write of every activation map.
    """
    for seq in model.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) and isinstance(bn, nn.BatchNorm2d):
                _fold(conv, bn)
                seq[i + 1] = nn.Identity()
    return model


def _fold(conv: nn.Conv2d | nn.ConvTranspose2d, bn: nn.BatchNorm2d) -> None:
    if conv.groups != 1 and isinstance(conv, nn.ConvTranspose2d):
        raise NotImplementedError("grouped transposed convolutions are not folded")
    # Computed in float64 so that folding adds no rounding of its own.
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    shift = bn.bias.double() - bn.running_mean.double() * scale
    # Output channels are dim 0 of a Conv2d weight [out, in / groups, k, k] (depthwise ones
    # too) but dim 1 of a ConvTranspose2d weight [in, out, k, k].
    view = (1, -1, 1, 1) if isinstance(conv, nn.ConvTranspose2d) else (-1, 1, 1, 1)
    weight = conv.weight.double() * scale.view(view)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    conv.weight.copy_(weight.to(conv.weight.dtype))
    new_bias = (bias * scale + shift).to(conv.weight.dtype)
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias, requires_grad=False)
    else:
        conv.bias.copy_(new_bias)


def load_hf_model(model_cls: Any, folder: Path, what: str) -> Any:
    """A transformers or diffusers model from a user's Hugging Face folder, offline, checked
    whole: a file whose names do not fit raises CheckpointMismatch instead of running with
    random weights where names were missing (the libraries only warn). Legacy names
    (weight-norm `weight_g`/`weight_v`, a task head's `hubert.` or `model.` prefix, old VAE
    attention names) are the libraries' own to translate. `what` says what belongs there."""
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} not found or has no config.json: put {what} there")
    try:
        model, info = model_cls.from_pretrained(folder, local_files_only=True, output_loading_info=True)
    except OSError as exc:  # no weights file, or a corrupt one
        raise FileNotFoundError(f"cannot load {folder} ({str(exc).splitlines()[0]}): put {what} there") from None
    missing = list(info.get("missing_keys", ()))
    mismatched = list(info.get("mismatched_keys", ()))
    if missing or mismatched:
        parts = [f"{folder} does not fit {model_cls.__name__} (is it {what}?)"]
        if missing:
            parts.append(f"{len(missing)} missing: {_listing(sorted(missing))}")
        if mismatched:
            name, got, want = mismatched[0]
            parts.append(f"first shape mismatch: {name} expected {list(want)} got {list(got)}")
        raise CheckpointMismatch("; ".join(parts))
    return model
