"""The Ultralight UNet in its 'hubert' form, module for module, so upstream's `ultralight.pth`
(a plain state dict, 484 entries) loads strictly.

Image branch: a 6-channel 160x160 input (reference crop first, masked crop second) is taken
down four times to 512x10x10; the audio branch takes HuBERT features [16, 32, 32] to the same
10x10; both are fused and brought back up with skip connections to a sigmoid RGB (BGR) crop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IMG_SIZE = 160  # the square the network sees, cut from the 168x168 face crop
AUDIO_SHAPE = (16, 32, 32)  # 16 HuBERT rows of 1024 values, each as 32x32
EXPAND = 2  # every inverted residual doubles its input's channels inside


class InvertedResidual(nn.Module):
    """1x1 expand, 3x3 depthwise (stride), 1x1 project, batch norm after each; a residual add
    only where the block is declared with one."""

    def __init__(self, inp: int, oup: int, stride: int = 1, residual: bool = False) -> None:
        super().__init__()
        hidden = inp * EXPAND
        self.residual = residual
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.residual else out


class DoubleConvDW(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int = 1) -> None:
        super().__init__()
        self.double_conv = nn.Sequential(InvertedResidual(inp, oup, stride), InvertedResidual(oup, oup, 1, True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class InConv(nn.Module):
    def __init__(self, inp: int, oup: int) -> None:
        super().__init__()
        self.inconv = nn.Sequential(InvertedResidual(inp, oup))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inconv(x)


class Down(nn.Module):
    def __init__(self, inp: int, oup: int) -> None:
        super().__init__()
        self.maxpool_conv = nn.Sequential(DoubleConvDW(inp, oup, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class Up(nn.Module):
    def __init__(self, inp: int, oup: int) -> None:
        super().__init__()
        self.conv = DoubleConvDW(inp, oup)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        dy, dx = skip.shape[2] - x.shape[2], skip.shape[3] - x.shape[3]
        if dy or dx:
            x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([x, skip], dim=1))


class OutConv(nn.Module):
    def __init__(self, inp: int, oup: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(inp, oup, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class AudioConvHubert(nn.Module):
    """[B, 16, 32, 32] HuBERT features to [B, 512, 10, 10]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = InvertedResidual(16, 64)
        self.conv2 = InvertedResidual(64, 128)
        self.conv3 = nn.Conv2d(128, 256, 3, 2, 1)
        self.bn3 = nn.BatchNorm2d(256)
        self.conv4 = InvertedResidual(256, 256, 1, True)
        self.conv5 = nn.Conv2d(256, 512, 3, 2, 3)  # padding 3: 16 -> 10, the image branch's size
        self.bn5 = nn.BatchNorm2d(512)
        self.conv6 = InvertedResidual(512, 512, 1, True)
        self.conv7 = InvertedResidual(512, 512, 1, True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.conv1(x))
        x = F.relu(self.bn3(self.conv3(x)))
        x = self.conv4(x)
        x = F.relu(self.bn5(self.conv5(x)))
        return self.conv7(self.conv6(x))


class UltralightUNet(nn.Module):
    def __init__(self, n_channels: int = 6) -> None:
        super().__init__()
        ch = [32, 64, 128, 256, 512]
        self.audio_model = AudioConvHubert()
        self.fuse_conv = nn.Sequential(DoubleConvDW(ch[4] * 2, ch[4]), DoubleConvDW(ch[4], ch[3]))
        self.inc = InConv(n_channels, ch[0])
        self.down1 = Down(ch[0], ch[1])
        self.down2 = Down(ch[1], ch[2])
        self.down3 = Down(ch[2], ch[3])
        self.down4 = Down(ch[3], ch[4])
        self.up1 = Up(ch[4], ch[3] // 2)
        self.up2 = Up(ch[3], ch[2] // 2)
        self.up3 = Up(ch[2], ch[1] // 2)
        self.up4 = Up(ch[1], ch[0])
        self.outc = OutConv(ch[0], 3)

    def forward(self, image: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        x1 = self.inc(image)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        x = self.fuse_conv(torch.cat([x5, self.audio_model(audio)], dim=1))
        x = self.up1(x, x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        x = self.up4(x, x1)
        return torch.sigmoid(self.outc(x))
