"""CPU fast path: each conv block of a BatchNorm-folded Wav2Lip as one oneDNN call.

Eager PyTorch runs a block as conv, then add, then ReLU: three passes over an activation map
that at 256x256 does not fit in cache, and it reorders the conv weights into oneDNN's blocked
layout on every call. oneDNN can apply the residual add and the ReLU as post-ops of the
convolution itself, with weights reordered once here. These are the kernels PyTorch's own
compiler (inductor) emits for CPU; they ship in every CPU build with oneDNN (mkldnn).

The result is inference-only: it has no autograd, and its packed weights are not parameters,
so it cannot be moved to another device or saved. Keep the plain model for that.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from wav2lip.model import Conv2d, Conv2dTranspose

_OPS = ("_convolution_pointwise", "_convolution_transpose_pointwise", "_reorder_convolution_weight")


def available() -> bool:
    """True when this PyTorch build has oneDNN and the fused convolution ops."""
    if not torch.backends.mkldnn.is_available():
        return False
    return all(hasattr(torch.ops.mkldnn, name) for name in _OPS)


class FusedConvBlock(nn.Module):
    """relu(conv(x) [+ x]) or relu(conv_transpose(x)) in a single oneDNN primitive."""

    def __init__(self, block: Conv2d | Conv2dTranspose, input_size: list[int] | None = None) -> None:
        super().__init__()
        conv, bn = block.conv_block[0], block.conv_block[1]
        if not isinstance(bn, nn.Identity):
            raise ValueError("fold BatchNorm first (wav2lip.checkpoint.fuse_batchnorm)")
        self.transpose = isinstance(conv, nn.ConvTranspose2d)
        self.residual = bool(getattr(block, "residual", False))
        self.padding = list(conv.padding)
        self.stride = list(conv.stride)
        self.dilation = list(conv.dilation)
        self.output_padding = list(conv.output_padding) if self.transpose else [0, 0]
        self.groups = conv.groups
        weight = conv.weight.detach().contiguous()
        ops = torch.ops.mkldnn
        # oneDNN picks the packed layout for an input size; without one its default layout was
        # slower than eager PyTorch at batch 1 (measured), with one it is faster at every batch.
        if self.transpose:
            packed = ops._reorder_convolution_transpose_weight(
                weight, self.padding, self.output_padding, self.stride, self.dilation, self.groups, input_size
            )
        else:
            packed = ops._reorder_convolution_weight(
                weight, self.padding, self.stride, self.dilation, self.groups, input_size
            )
        self.packed_weight = packed  # an opaque oneDNN tensor: deliberately not a parameter
        # The bias stays a parameter so that callers can still ask the model for its device/dtype.
        self.bias = nn.Parameter(conv.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ops = torch.ops.mkldnn
        if self.transpose:
            return ops._convolution_transpose_pointwise(
                x, self.packed_weight, self.bias, self.padding, self.output_padding,
                self.stride, self.dilation, self.groups, "relu", [], "",
            )  # fmt: skip
        if self.residual:
            # Binary post-op first (conv + x), then the unary one (ReLU), as upstream's block does.
            return ops._convolution_pointwise.binary(
                x, x, self.packed_weight, self.bias, self.padding, self.stride, self.dilation, self.groups,
                "add", None, "relu", [], "",
            )  # fmt: skip
        return ops._convolution_pointwise(
            x, self.packed_weight, self.bias, self.padding, self.stride, self.dilation, self.groups, "relu", [], ""
        )


class FrameByFrame(nn.Module):
    """Runs a batch through the fused network one frame at a time, with the same result.

    The weights are packed for one frame, and one frame's activations (16 MB at the widest
    layer) stay in cache between layers far better than a batch's: on 2 cores this measured
    3.83 fps against 3.53 for whole batches of 4 and 3.40 for batches of 8.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.train(net.training)

    def forward(self, mel: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        if len(mel) == 1:
            return self.net(mel, face)
        return torch.cat([self.net(mel[i : i + 1], face[i : i + 1]) for i in range(len(mel))])


def fuse_onednn(model: nn.Module, example: tuple[torch.Tensor, ...] | None = None) -> nn.Module:
    """Replace every conv block of a folded CPU model (fp32 or bf16) by a FusedConvBlock, in place; returns it.

    `example`: inputs for one forward pass that records each block's input size, so that the
    weights are packed for it (any batch size still works afterwards).
    """
    sizes = _block_input_sizes(model, example) if example is not None else {}
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (Conv2d, Conv2dTranspose)):
                full = f"{parent_name}.{name}" if parent_name else name
                setattr(parent, name, FusedConvBlock(child, sizes.get(full)))
    return model


def _block_input_sizes(model: nn.Module, example: tuple[torch.Tensor, ...]) -> dict[str, list[int]]:
    sizes: dict[str, list[int]] = {}

    def recorder(name: str) -> Callable[[nn.Module, tuple], None]:
        def hook(_module: nn.Module, args: tuple) -> None:  # returning None keeps the inputs as they are
            sizes[name] = list(args[0].shape)

        return hook

    hooks = [
        m.register_forward_pre_hook(recorder(name))
        for name, m in model.named_modules()
        if isinstance(m, (Conv2d, Conv2dTranspose))
    ]
    try:
        with torch.inference_mode():
            model(*example)
    finally:
        for h in hooks:
            h.remove()
    return sizes
