"""Wav2Lip at 256x256: the network whose parameter names and shapes match the public wav2lip256.pth.

Module names (`face_encoder_blocks.0.0.conv_block.0.weight`, ...) are part of the checkpoint
format, so the attribute names and Sequential nesting below must not change.

Spatial sizes (face 256x256, audio mel 80x16):

    face encoder   256 -> 256 -> 128 -> 64 -> 32 -> 16 -> 8 -> 4 -> 1     (feature kept per block)
    audio encoder  80x16 -> 80x16 -> 27x16 -> 9x6 -> 3x3 -> 1x1            (512 channels)
    face decoder   1 -> 1 -> 4 -> 8 -> 16 -> 32 -> 64 -> 128 -> 256       (concat encoder feature)
"""

from __future__ import annotations

import torch
from torch import nn

IMG_SIZE = 256
MEL_BANDS = 80
MEL_STEPS = 16  # mel columns per video frame window (200 ms)


class Conv2d(nn.Module):
    """Conv + BatchNorm + ReLU; with `residual` the input is added before the ReLU."""

    def __init__(
        self, cin: int, cout: int, kernel_size: int, stride: int | tuple[int, int], padding: int, residual: bool = False
    ) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, padding), nn.BatchNorm2d(cout))
        self.residual = residual
        # In place: `out` is a fresh tensor here, and skipping a copy of every activation map
        # matters at 256x256.
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.residual:
            out += x
        return self.act(out)


class Conv2dTranspose(nn.Module):
    """Transposed conv + BatchNorm + ReLU: the decoder's upsampling step."""

    def __init__(
        self, cin: int, cout: int, kernel_size: int, stride: int, padding: int, output_padding: int = 0
    ) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, kernel_size, stride, padding, output_padding), nn.BatchNorm2d(cout)
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv_block(x))


def _down(cin: int, cout: int, n_res: int) -> nn.Sequential:
    """Halve the size (stride 2) then refine with `n_res` residual blocks."""
    blocks = [Conv2d(cin, cout, 3, 2, 1)]
    blocks += [Conv2d(cout, cout, 3, 1, 1, residual=True) for _ in range(n_res)]
    return nn.Sequential(*blocks)


def _up(cin: int, cout: int, n_res: int) -> nn.Sequential:
    """Double the size (transposed conv, stride 2) then refine with `n_res` residual blocks."""
    blocks: list[nn.Module] = [Conv2dTranspose(cin, cout, 3, 2, 1, output_padding=1)]
    blocks += [Conv2d(cout, cout, 3, 1, 1, residual=True) for _ in range(n_res)]
    return nn.Sequential(*blocks)


class Wav2Lip256(nn.Module):
    """forward(mel [B,1,80,16], face [B,6,256,256]) -> [B,3,256,256] in 0..1.

    `face` is the masked face (lower half zeroed) and the reference face stacked on channels,
    BGR scaled to 0..1.
    """

    def __init__(self) -> None:
        super().__init__()
        self.face_encoder_blocks = nn.ModuleList(
            [
                nn.Sequential(Conv2d(6, 16, 7, 1, 3)),  # 256
                _down(16, 32, 2),  # 128
                _down(32, 64, 3),  # 64
                _down(64, 128, 2),  # 32
                _down(128, 256, 2),  # 16
                _down(256, 512, 1),  # 8
                _down(512, 512, 1),  # 4
                nn.Sequential(Conv2d(512, 512, 4, 1, 0), Conv2d(512, 512, 1, 1, 0)),  # 1
            ]
        )
        self.audio_encoder = nn.Sequential(
            Conv2d(1, 32, 3, 1, 1),
            Conv2d(32, 32, 3, 1, 1, residual=True),
            Conv2d(32, 32, 3, 1, 1, residual=True),
            Conv2d(32, 64, 3, (3, 1), 1),  # 27x16
            Conv2d(64, 64, 3, 1, 1, residual=True),
            Conv2d(64, 64, 3, 1, 1, residual=True),
            Conv2d(64, 128, 3, 3, 1),  # 9x6
            Conv2d(128, 128, 3, 1, 1, residual=True),
            Conv2d(128, 128, 3, 1, 1, residual=True),
            Conv2d(128, 256, 3, (3, 2), 1),  # 3x3
            Conv2d(256, 256, 3, 1, 1, residual=True),
            Conv2d(256, 512, 3, 1, 0),  # 1x1
            Conv2d(512, 512, 1, 1, 0),
        )
        # Each decoder block's input is the previous output concatenated with the matching
        # encoder feature, hence the doubled input channel counts.
        self.face_decoder_blocks = nn.ModuleList(
            [
                nn.Sequential(Conv2d(512, 512, 1, 1, 0)),  # 1
                nn.Sequential(Conv2dTranspose(1024, 512, 4, 1, 0), Conv2d(512, 512, 3, 1, 1, residual=True)),  # 4
                _up(1024, 512, 1),  # 8
                _up(1024, 512, 2),  # 16
                _up(768, 384, 2),  # 32
                _up(512, 256, 2),  # 64
                _up(320, 128, 2),  # 128
                _up(160, 64, 2),  # 256
            ]
        )
        self.output_block = nn.Sequential(
            Conv2d(80, 32, 3, 1, 1),
            nn.Conv2d(32, 3, 1, 1, 0),
            nn.Sigmoid(),
        )

    def forward(self, mel: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        x = self.audio_encoder(mel)
        feats = []
        f = face
        for block in self.face_encoder_blocks:
            f = block(f)
            feats.append(f)
        for block in self.face_decoder_blocks:
            # Upstream order (decoder output first) is baked into the trained weights.
            x = torch.cat((block(x), feats.pop()), dim=1)
        return self.output_block(x)
