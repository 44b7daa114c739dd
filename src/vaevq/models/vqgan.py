"""The VQGAN encoder and decoder (Esser et al. 2021): ResNet blocks, GroupNorm, Swish, attention.

Downsampling factor is 2 ** (len(ch_mult) - 1). Attention blocks sit at the feature-map
resolutions listed in ``attn_resolutions`` (computed from the configured input ``resolution``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    groups = 32 if channels % 32 == 0 else max(g for g in range(1, 33) if channels % g == 0)
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class _Condition:
    """Holds the decoder's conditioning map (z_q) while a MoVQ decoder runs (not a module)."""

    zq: torch.Tensor | None = None


class SpatialNorm(nn.Module):
    """MoVQ's spatially conditional normalization: GroupNorm(f) * conv_y(z_q) + conv_b(z_q),
    with z_q resized (nearest) to the feature map."""

    def __init__(self, channels: int, zq_channels: int, condition: _Condition):
        super().__init__()
        self.norm = group_norm(channels)
        self.conv_y = nn.Conv2d(zq_channels, channels, 1)
        self.conv_b = nn.Conv2d(zq_channels, channels, 1)
        self._condition = [condition]  # a list, so the holder is not registered as a submodule

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        zq = self._condition[0].zq
        if zq is None:
            raise RuntimeError("a MoVQ decoder needs z_q: call Decoder(features, zq=z_q)")
        zq = F.interpolate(zq, size=f.shape[-2:], mode="nearest")
        return self.norm(f) * self.conv_y(zq) + self.conv_b(zq)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float, norm=group_norm):
        super().__init__()
        self.norm1 = norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = (
            nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions of a feature map."""

    def __init__(self, channels: int, norm=group_norm):
        super().__init__()
        self.norm = norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1))
        out = out.squeeze(1).transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric padding as in taming


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _stage(blocks: list[nn.Module], attns: list[nn.Module]) -> nn.ModuleDict:
    return nn.ModuleDict({"block": nn.ModuleList(blocks), "attn": nn.ModuleList(attns)})


class Encoder(nn.Module):
    """Image (B, C, H, W) -> features (B, out_channels, H/f, W/f)."""

    def __init__(
        self,
        *,
        in_channels: int,
        ch: int,
        ch_mult: tuple[int, ...],
        num_res_blocks: int,
        attn_resolutions: tuple[int, ...],
        dropout: float,
        resolution: int,
        out_channels: int,
    ):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        in_mult = (1, *ch_mult)
        res = resolution
        self.down = nn.ModuleList()
        for level, mult in enumerate(ch_mult):
            c_in, c_out = ch * in_mult[level], ch * mult
            blocks, attns = [], []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(c_in, c_out, dropout))
                c_in = c_out
                if res in attn_resolutions:
                    attns.append(AttnBlock(c_out))
            stage = _stage(blocks, attns)
            if level != len(ch_mult) - 1:
                stage["downsample"] = Downsample(c_out)
                res //= 2
            self.down.append(stage)
        self.mid = nn.Sequential(
            ResnetBlock(c_out, c_out, dropout), AttnBlock(c_out), ResnetBlock(c_out, c_out, dropout)
        )
        self.norm_out = group_norm(c_out)
        self.conv_out = nn.Conv2d(c_out, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for stage in self.down:
            for i, block in enumerate(stage["block"]):
                h = block(h)
                if len(stage["attn"]):
                    h = stage["attn"][i](h)
            if "downsample" in stage:
                h = stage["downsample"](h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent features (B, z_channels, h, w) -> image (B, out_channels, h*f, w*f).

    With ``zq_channels`` (Mo-VQGAN) every normalization layer is a :class:`SpatialNorm`
    modulated by the quantized latent passed as ``forward(features, zq=z_q)``.
    """

    def __init__(
        self,
        *,
        out_channels: int,
        ch: int,
        ch_mult: tuple[int, ...],
        num_res_blocks: int,
        attn_resolutions: tuple[int, ...],
        dropout: float,
        resolution: int,
        z_channels: int,
        zq_channels: int | None = None,
    ):
        super().__init__()
        self._condition = _Condition()
        self.modulated = zq_channels is not None
        if self.modulated:
            def norm(channels: int) -> nn.Module:
                return SpatialNorm(channels, zq_channels, self._condition)
        else:
            norm = group_norm
        c = ch * ch_mult[-1]
        res = resolution // 2 ** (len(ch_mult) - 1)
        self.conv_in = nn.Conv2d(z_channels, c, 3, padding=1)
        self.mid = nn.Sequential(
            ResnetBlock(c, c, dropout, norm), AttnBlock(c, norm), ResnetBlock(c, c, dropout, norm)
        )
        self.up = nn.ModuleList()
        for level in reversed(range(len(ch_mult))):
            c_out = ch * ch_mult[level]
            blocks, attns = [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(c, c_out, dropout, norm))
                c = c_out
                if res in attn_resolutions:
                    attns.append(AttnBlock(c_out, norm))
            stage = _stage(blocks, attns)
            if level != 0:
                stage["upsample"] = Upsample(c_out)
                res *= 2
            self.up.append(stage)
        self.norm_out = norm(c)
        self.conv_out = nn.Conv2d(c, out_channels, 3, padding=1)

    @property
    def last_layer(self) -> torch.Tensor:
        """Weight of the final convolution (used by the adaptive GAN weight)."""
        return self.conv_out.weight

    def forward(self, z: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        if self.modulated and zq is None:
            raise ValueError("this decoder is modulated by z_q (Mo-VQGAN): pass zq")
        self._condition.zq = zq
        try:
            h = self.mid(self.conv_in(z))
            for stage in self.up:
                for i, block in enumerate(stage["block"]):
                    h = block(h)
                    if len(stage["attn"]):
                        h = stage["attn"][i](h)
                if "upsample" in stage:
                    h = stage["upsample"](h)
            return self.conv_out(F.silu(self.norm_out(h)))
        finally:
            self._condition.zq = None
