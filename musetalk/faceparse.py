"""Face parsing for MuseTalk's blend masks: BiSeNet (19 CelebAMask-HQ classes) with the user's
`models/face-parse-bisent/79999_iter.pth`, and upstream's parsing modes.

The network's names and shapes are those of the file (191 entries, no convolution biases):
a ResNet-18 context path with attention refinement at 1/16 and 1/32 and a global average,
a feature fusion module joining it with the 1/8 features, and an output head upsampled to
the input. Only the main head (`conv_out`) is used; the two auxiliary heads are loaded so the
file fits strictly. **Uncertain:** the wiring between the named modules follows the published
BiSeNet design; it could not be checked here against the real file's outputs.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from checkpoints import check_fit, load_data, state_dict_of

FOLDER = "face-parse-bisent"
FILE = "79999_iter.pth"
SIZE = 512
CLASSES = 19
SKIN, NOSE, MOUTH, UPPER_LIP, LOWER_LIP, NECK = 1, 10, 11, 12, 13, 14
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


class ConvBNReLU(nn.Module):
    def __init__(self, inp: int, oup: int, k: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(inp, oup, k, stride, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(oup)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inp, oup, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(oup)
        self.conv2 = nn.Conv2d(oup, oup, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(oup)
        self.downsample = None
        if stride != 1 or inp != oup:
            self.downsample = nn.Sequential(nn.Conv2d(inp, oup, 1, stride, bias=False), nn.BatchNorm2d(oup))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 64))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, 2), BasicBlock(128, 128))
        self.layer3 = nn.Sequential(BasicBlock(128, 256, 2), BasicBlock(256, 256))
        self.layer4 = nn.Sequential(BasicBlock(256, 512, 2), BasicBlock(512, 512))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        feat8 = self.layer2(self.layer1(x))
        feat16 = self.layer3(feat8)
        return feat8, feat16, self.layer4(feat16)


class AttentionRefinement(nn.Module):
    def __init__(self, inp: int, oup: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(inp, oup)
        self.conv_atten = nn.Conv2d(oup, oup, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(oup)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        atten = torch.sigmoid(self.bn_atten(self.conv_atten(F.adaptive_avg_pool2d(feat, 1))))
        return feat * atten


class ContextPath(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.resnet = ResNet18()
        self.arm16 = AttentionRefinement(256, 128)
        self.arm32 = AttentionRefinement(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128)
        self.conv_head16 = ConvBNReLU(128, 128)
        self.conv_avg = ConvBNReLU(512, 128, k=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        avg = F.interpolate(self.conv_avg(F.adaptive_avg_pool2d(feat32, 1)), feat32.shape[2:], mode="nearest")
        up32 = F.interpolate(self.arm32(feat32) + avg, feat16.shape[2:], mode="nearest")
        up32 = self.conv_head32(up32)
        up16 = F.interpolate(self.arm16(feat16) + up32, feat8.shape[2:], mode="nearest")
        return feat8, self.conv_head16(up16)


class FeatureFusion(nn.Module):
    def __init__(self, inp: int, oup: int) -> None:
        super().__init__()
        self.convblk = ConvBNReLU(inp, oup, k=1)
        self.conv1 = nn.Conv2d(oup, oup // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(oup // 4, oup, 1, bias=False)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([spatial, context], dim=1))
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(F.adaptive_avg_pool2d(feat, 1)))))
        return feat + feat * atten


class Head(nn.Module):
    def __init__(self, inp: int, mid: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(inp, mid)
        self.conv_out = nn.Conv2d(mid, CLASSES, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusion(256, 256)
        self.conv_out = Head(256, 256)
        self.conv_out16 = Head(128, 64)  # auxiliary heads of training, kept for the file's names
        self.conv_out32 = Head(128, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat8, context = self.cp(x)
        out = self.conv_out(self.ffm(feat8, context))
        return F.interpolate(out, x.shape[2:], mode="bilinear", align_corners=True)


def load_bisenet(models_dir: Path) -> BiSeNet | None:
    """The user's BiSeNet, or None when the file is not there (the face-mesh mask is used)."""
    path = models_dir / FOLDER / FILE
    if not path.is_file():
        return None
    state = state_dict_of(load_data(path, f"BiSeNet's {FILE}"), path)
    net = BiSeNet()
    check_fit(net, state, str(path), f"BiSeNet face parsing (is it {FILE}?)")
    net.load_state_dict(state, strict=False)
    return net.eval().requires_grad_(False)


def parse(net: BiSeNet, rgb: np.ndarray) -> np.ndarray:
    """[512, 512] class labels of an RGB uint8 image (resized to 512x512, ImageNet-normalised)."""
    x = cv2.resize(rgb, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
    x = torch.from_numpy(((x - MEAN) / STD).transpose(2, 0, 1).copy())[None]
    with torch.inference_mode():
        return net(x)[0].argmax(0).numpy().astype(np.uint8)


def _jaw_dilation_kernel() -> np.ndarray:
    kernel = np.zeros((33, 33), np.uint8)
    for r in range(10, 21):
        half = r - 10
        kernel[r, 16 - half : 16 + half + 1] = 1
    kernel[21:, 6:27] = 1
    return kernel


def mode_mask(labels: np.ndarray, mode: str) -> np.ndarray:
    """0/255 map of the region upstream's parsing mode blends: raw (skin and mouth), neck (and
    the neck), jaw (MuseTalk 1.5: the skin dilated down the jaw, eroded sideways on the cheeks,
    without the nose, plus the mouth)."""
    mouth = np.isin(labels, (MOUTH, UPPER_LIP, LOWER_LIP))
    if mode == "raw":
        return np.where(mouth | (labels == SKIN), 255, 0).astype(np.uint8)
    if mode == "neck":
        return np.where(mouth | np.isin(labels, (SKIN, NECK)), 255, 0).astype(np.uint8)
    skin = np.where(labels == SKIN, 255, 0).astype(np.uint8)
    dilated = cv2.dilate(skin, _jaw_dilation_kernel(), iterations=1)
    eroded = cv2.erode(dilated, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (35, 3)), iterations=2)
    cheek = np.zeros(labels.shape, np.uint8)
    cheek[:, :167] = 255
    cheek[:, 346:] = 255
    region = (eroded & cheek) | (dilated & ~cheek)
    return np.where(((region == 255) & (labels != NOSE)) | mouth, 255, 0).astype(np.uint8)
