"""A Wav2Lip256 with random but well-scaled weights, for tests and benchmarks (no checkpoint needed).

PyTorch's default init plus identity BatchNorm statistics lets the signal fade through the
deep network, so the output barely depends on its inputs and every comparison passes trivially.
Here the BatchNorm statistics are measured on random inputs (as training would), then the
affine terms are randomised: activations keep their scale and the stats are far from identity.
"""

from __future__ import annotations

import torch
from torch import nn

from wav2lip.model import IMG_SIZE, MEL_BANDS, MEL_STEPS, Wav2Lip256


@torch.no_grad()
def random_wav2lip(seed: int = 0, calibration_batch: int = 2) -> Wav2Lip256:
    """Wav2Lip256 in eval mode with seeded random weights and measured BatchNorm statistics."""
    g = torch.Generator().manual_seed(seed)
    model = Wav2Lip256()
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            bound = (3.0 / (m.weight[0].numel())) ** 0.5  # unit-variance uniform per output
            m.weight.copy_((torch.rand(m.weight.shape, generator=g) * 2 - 1) * bound)
            m.bias.copy_((torch.rand(m.bias.shape, generator=g) - 0.5) * 0.2)
    # The last conv feeds the sigmoid: small logits keep the output off its flat ends, where
    # any two models would agree.
    model.output_block[1].weight.mul_(0.2)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: the stats of exactly the calibration batch
    mel = torch.rand(calibration_batch, 1, MEL_BANDS, MEL_STEPS, generator=g) * 8 - 4
    face = torch.rand(calibration_batch, 6, IMG_SIZE, IMG_SIZE, generator=g)
    model.train()(mel, face)
    for bn in bns:
        bn.momentum = 0.1
        # Stages at 1x1 see only `calibration_batch` values per channel; a near-zero variance
        # from so few samples would blow up other inputs, so floor it at the layer's median.
        bn.running_var.clamp_(min=float(bn.running_var.median()))
        n = bn.num_features
        bn.weight.copy_(torch.rand(n, generator=g) + 0.5)
        bn.bias.copy_((torch.rand(n, generator=g) - 0.5) * 0.4)
    return model.eval()
