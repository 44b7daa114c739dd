"""LPIPS with a VGG16 trunk: the standard metric and the shift-tolerant (anti-aliased) variant.

The network is laid out so that the standard weight files load by their own key names:

- ``net="vgg"`` (LPIPS v0.1, Zhang et al. 2018): the trunk is torchvision's ImageNet VGG16
  (``features.{i}.weight`` / ``.bias``, file ``vgg16-397923af.pth``), the five linear heads
  are LPIPS's ``vgg.pth`` (``lin{k}.model.1.weight``).
- ``net="vgg-shift-tolerant"`` (ST-LPIPS, Ghildyal & Liu 2022): every max-pool of VGG16 is
  replaced by a stride-1 max-pool followed by a BlurPool (binomial [1, 2, 1] filter, reflect
  padding of 2 on each side, stride 2); trunk and heads come in one file,
  ``vgg_shift_tolerant.pth`` (keys ``net.slice{s}.{i}.*``, ``lin{k}.model.1.weight`` and the
  ``scaling_layer`` constants), shipped inside the ``stlpips-pytorch`` wheel.

Distance: features after relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 of both images,
each unit-normalized over channels, squared differences weighted per channel by the heads,
averaged over space, summed over the five layers. Inputs are (B, 3, H, W) in [-1, 1].
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from vaevq.weights import WeightSource, load_state_dict, resolve_weights

# VGG16 configuration "D": conv widths, "M" = pooling.
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
CHANNELS = (64, 128, 256, 512, 512)
NETS = ("vgg", "vgg-shift-tolerant")

VGG16_TORCHVISION = WeightSource(
    name="VGG16 ImageNet trunk (torchvision)",
    filename="vgg16-397923af.pth",
    urls=("https://download.pytorch.org/models/vgg16-397923af.pth",),
    env="VAEVQ_VGG16_WEIGHTS",
    sha256_prefix="397923af",
    hint="set VAEVQ_VGG16_WEIGHTS=/path/to/vgg16-397923af.pth (torchvision's VGG16 ImageNet state dict), "
         "or put that file in the torch hub cache, or allow the download",
)
LPIPS_VGG_HEADS = WeightSource(
    name="LPIPS v0.1 VGG linear heads",
    filename="lpips_v0.1_vgg.pth",
    urls=("https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth",),
    env="VAEVQ_LPIPS_WEIGHTS",
    package=("lpips", "weights/v0.1/vgg.pth"),
    sha256_prefix="a78928a0",
    hint="`pip install --no-deps lpips==0.1.4` (the wheel ships weights/v0.1/vgg.pth; --no-deps avoids "
         "torchvision), or set VAEVQ_LPIPS_WEIGHTS=/path/to/vgg.pth",
)
ST_LPIPS_VGG = WeightSource(
    name="ST-LPIPS shift-tolerant VGG (trunk and heads)",
    filename="vgg_shift_tolerant.pth",
    urls=("https://github.com/abhijay9/ShiftTolerant-LPIPS/raw/main/stlpips/weights/vST0.0/"
          "vgg_shift_tolerant.pth",),
    env="VAEVQ_STLPIPS_WEIGHTS",
    package=("stlpips_pytorch", "weights/vST0.0/vgg_shift_tolerant.pth"),
    sha256_prefix="44597da6",
    hint="`pip install stlpips-pytorch==0.0.2` (a dependency of vaevq; its wheel ships the file), or set "
         "VAEVQ_STLPIPS_WEIGHTS=/path/to/vgg_shift_tolerant.pth",
)


class BlurPool(nn.Module):
    """Anti-aliased downsampling (Zhang 2019): reflect pad 2, [1,2,1]x[1,2,1]/16 per channel, stride 2."""

    def __init__(self, channels: int):
        super().__init__()
        a = torch.tensor([1.0, 2.0, 1.0])
        filt = a[:, None] * a[None, :]
        self.register_buffer("filt", (filt / filt.sum()).expand(channels, 1, 3, 3).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), self.filt, stride=2, groups=x.shape[1])


def vgg16_layers(anti_aliased: bool) -> list[nn.Module]:
    """The VGG16 ``features`` list, numbered as torchvision numbers it (or the anti-aliased variant)."""
    layers: list[nn.Module] = []
    c = 3
    for v in _VGG16:
        if v == "M":
            layers += [nn.MaxPool2d(2, stride=1), BlurPool(c)] if anti_aliased else [nn.MaxPool2d(2, stride=2)]
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=False)]
            c = v
    return layers


class VGG16Slices(nn.Module):
    """VGG16 features cut after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (LPIPS's slice1..5).

    Module names inside each slice are the torchvision feature indices, so ``net.slice2.5``
    is ``features.5``. The final pooling layer of VGG16 is not part of any slice.
    """

    def __init__(self, anti_aliased: bool):
        super().__init__()
        layers = vgg16_layers(anti_aliased)
        relu_after_block = []  # index of the last ReLU of each of the five conv blocks
        for i, layer in enumerate(layers):
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            if isinstance(layer, nn.ReLU) and (nxt is None or isinstance(nxt, nn.MaxPool2d)):
                relu_after_block.append(i)
        start = 0
        for s, end in enumerate(relu_after_block, 1):
            block = nn.Sequential()
            for i in range(start, end + 1):
                block.add_module(str(i), layers[i])
            self.add_module(f"slice{s}", block)
            start = end + 1
        self.conv_indices = [i for i, layer in enumerate(layers) if isinstance(layer, nn.Conv2d)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for s in range(1, 6):
            x = getattr(self, f"slice{s}")(x)
            out.append(x)
        return out

    def name_of(self, index: int) -> str:
        """State-dict prefix of feature layer ``index``, e.g. 5 -> ``net.slice2.5``."""
        for s in range(1, 6):
            if str(index) in getattr(self, f"slice{s}")._modules:
                return f"net.slice{s}.{index}"
        raise KeyError(index)


class NetLinLayer(nn.Module):
    """One LPIPS head: (dropout, 1x1 conv to one channel, no bias), keys ``model.1.weight``."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class ScalingLayer(nn.Module):
    """LPIPS's input normalisation: (x - shift) / scale, for x in [-1, 1]."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale


def _normalize(feat: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return feat / (feat.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """Learned perceptual distance; ``LPIPS(net)(x, y)`` -> (B,) for x, y in [-1, 1].

    ``pretrained=True`` (default) finds and loads the weights (see :mod:`vaevq.weights`):
    ``weights`` is an explicit path to the heads (``vgg``) or the complete file
    (``vgg-shift-tolerant``); ``trunk_weights`` an explicit path to torchvision's VGG16
    (``vgg`` only). The module is frozen and always in eval mode; gradients reach the inputs.
    """

    def __init__(self, net: str = "vgg-shift-tolerant", pretrained: bool = True,
                 weights: str | os.PathLike | None = None, trunk_weights: str | os.PathLike | None = None,
                 download: bool = True):
        super().__init__()
        if net not in NETS:
            raise ValueError(f"unknown LPIPS net {net!r}; available: {', '.join(NETS)}")
        self.net_name = net
        self.scaling_layer = ScalingLayer()
        self.net = VGG16Slices(anti_aliased=net == "vgg-shift-tolerant")
        for k, c in enumerate(CHANNELS):
            self.add_module(f"lin{k}", NetLinLayer(c))
        self.sources: list[str] = []
        if pretrained:
            if net == "vgg":
                trunk = resolve_weights(VGG16_TORCHVISION, trunk_weights, download)
                self.load_torchvision_vgg16(load_state_dict(trunk, VGG16_TORCHVISION.name), source=str(trunk))
                heads = resolve_weights(LPIPS_VGG_HEADS, weights, download)
                self.load_lpips_weights(load_state_dict(heads, LPIPS_VGG_HEADS.name), source=str(heads))
                self.sources = [str(trunk), str(heads)]
            else:
                path = resolve_weights(ST_LPIPS_VGG, weights, download)
                self.load_lpips_weights(load_state_dict(path, ST_LPIPS_VGG.name), source=str(path),
                                        require_trunk=True)
                self.sources = [str(path)]
        self.requires_grad_(False)
        self.eval()

    # ------------------------------------------------------------------ weights

    @property
    def lins(self) -> list[NetLinLayer]:
        return [getattr(self, f"lin{k}") for k in range(len(CHANNELS))]

    def load_torchvision_vgg16(self, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Load the trunk from a torchvision VGG16 state dict (``features.{i}.*``; the
        ``classifier.*`` keys are accepted and ignored). Missing keys or wrong shapes are errors."""
        if self.net_name != "vgg":
            raise ValueError(f"a torchvision VGG16 trunk fits LPIPS net 'vgg', not {self.net_name!r}")
        mapped = {}
        for i in self.net.conv_indices:
            for p in ("weight", "bias"):
                key = f"features.{i}.{p}"
                if key not in state:
                    raise ValueError(f"{source}: missing key {key!r}; not a torchvision VGG16 state dict")
                mapped[f"{self.net.name_of(i)}.{p}"] = state[key]
        unexpected = [k for k in state if not (k.startswith("features.") or k.startswith("classifier."))]
        extra_features = [k for k in state if k.startswith("features.")
                          and int(k.split(".")[1]) not in self.net.conv_indices]
        if unexpected or extra_features:
            bad = (unexpected + extra_features)[:8]
            raise ValueError(f"{source}: unexpected keys for a torchvision VGG16: {bad}")
        self._load_part(mapped, source)

    def load_lpips_weights(self, state: dict[str, torch.Tensor], source: str = "state dict",
                           require_trunk: bool = False) -> None:
        """Load an LPIPS-layout file: heads ``lin{k}.model.1.weight`` and, if present, the trunk
        ``net.slice{s}.{i}.*`` and ``scaling_layer.*``. Unknown keys or wrong shapes are errors."""
        own = self.state_dict()
        unknown = [k for k in state if k not in own]
        if unknown:
            raise ValueError(f"{source}: keys not in an LPIPS {self.net_name} network: {unknown[:8]}")
        heads = [f"lin{k}.model.1.weight" for k in range(len(CHANNELS))]
        missing = [k for k in heads if k not in state]
        if require_trunk:
            missing += [k for k in own if k.startswith("net.") and k not in state]
        if missing:
            raise ValueError(f"{source}: missing keys {missing[:8]} for LPIPS {self.net_name}")
        self._load_part(state, source)

    def _load_part(self, state: dict[str, torch.Tensor], source: str) -> None:
        own = self.state_dict()
        for k, v in state.items():
            if own[k].shape != v.shape:
                raise ValueError(f"{source}: {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
        self.load_state_dict(state, strict=False)

    # ------------------------------------------------------------------ forward

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)  # dropout in the heads stays off

    @staticmethod
    def _check(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        if x.dim() != 4 or x.shape[1] != 3 or (y is not None and y.shape != x.shape):
            got = f"{tuple(x.shape)}" + (f" and {tuple(y.shape)}" if y is not None else "")
            raise ValueError(f"LPIPS expects (B, 3, H, W) batches of equal shape, got {got}")

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five channel-normalized feature maps of x (B, 3, H, W) in [-1, 1]."""
        self._check(x)
        return [_normalize(f) for f in self.net(self.scaling_layer(x))]

    def layer_distances(self, x: torch.Tensor | list[torch.Tensor], y: torch.Tensor) -> list[torch.Tensor]:
        """Per-layer distances, each (B,); ``x`` may be precomputed :meth:`features`."""
        if isinstance(x, torch.Tensor):
            self._check(x, y)
            n = x.shape[0]
            both = self.features(torch.cat([x, y]))
            fx, fy = [f[:n] for f in both], [f[n:] for f in both]
        else:
            fx, fy = x, self.features(y)
        return [lin((a - b) ** 2).mean(dim=(1, 2, 3)) for a, b, lin in zip(fx, fy, self.lins)]

    def forward(self, x: torch.Tensor | list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        return torch.stack(self.layer_distances(x, y)).sum(dim=0)

    def extra_repr(self) -> str:
        return f"net={self.net_name!r}, weights={self.sources}"


__all__ = ["LPIPS", "NETS", "BlurPool", "VGG16Slices"]
