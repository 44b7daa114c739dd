"""PatchGAN discriminator (pix2pix's NLayerDiscriminator, as used by VQGAN)."""

from __future__ import annotations

from torch import nn


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(32 if channels % 32 == 0 else 1, channels)
    raise ValueError(f"discriminator norm must be batch or group, got {kind!r}")


class NLayerDiscriminator(nn.Module):
    """(B, C, H, W) -> (B, 1, h, w) patch logits.

    conv 4x4 s2 + LeakyReLU(0.2); ``n_layers - 1`` times conv 4x4 s2 + norm + LeakyReLU with
    channels doubling up to 8 x ``channels``; one conv 4x4 s1 + norm + LeakyReLU; conv 4x4 s1
    to one channel. Weights N(0, 0.02), norm scales N(1, 0.02) (VQGAN's init).
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, n_layers: int = 3, norm: str = "batch"):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(channels * prev, channels * mult, 4, stride, 1, bias=False),
                       _norm(norm, channels * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(channels * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        self.apply(_init)

    def forward(self, x):
        return self.main(x)


def _init(m: nn.Module) -> None:
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)
