"""An Ultralight UNet with random weights that still responds to its audio input, for tests
and benchmarks (real weights are trained per person and cannot be had here)."""

from __future__ import annotations

import torch
from torch import nn

from ultralight.model import UltralightUNet


def random_ultralight(seed: int = 0) -> UltralightUNet:
    """PyTorch's default initialisation shrinks activations layer by layer, so the fused
    audio has no visible effect on the output; He-normal weights and random BatchNorm
    statistics keep every branch alive, as trained weights are."""
    gen = torch.Generator().manual_seed(seed)
    net = UltralightUNet()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                if module.bias is not None:
                    module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
            elif isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(0.5 + torch.rand(n, generator=gen))
                module.bias.copy_(0.1 * torch.randn(n, generator=gen))
                module.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(n, generator=gen))
    return net.eval()
