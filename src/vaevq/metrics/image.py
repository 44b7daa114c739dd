"""PSNR and SSIM on the [0, 255] uint8 scale, per image (SPEC §4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
DATA_RANGE = 255.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> uint8 [0, 255] (clamped, rounded to nearest)."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def _pair(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"expected two (B, C, H, W) batches of one shape; got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    return to_uint8(x).double(), to_uint8(y).double()


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in [-1, 1] -> (B,) PSNR in dB on the uint8 scale (inf for identical images)."""
    a, b = _pair(x, y)
    mse = (a - b).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(DATA_RANGE**2 / mse)


def _gaussian_window(device: torch.device) -> torch.Tensor:
    radius = SSIM_WINDOW // 2
    t = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    g = torch.exp(-0.5 * (t / SSIM_SIGMA) ** 2)
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in [-1, 1] -> (B,) SSIM on the uint8 scale, mean over channels and pixels.

    Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, population covariances; the mean is over
    the positions whose whole window lies inside the image, which is what scikit-image's
    ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    data_range=255)`` averages (it crops the border of half a window).
    """
    a, b = _pair(x, y)
    if min(a.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}; "
                         f"got {tuple(a.shape[-2:])}")
    channels = a.shape[1]
    g = _gaussian_window(a.device)
    kh = g.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    kw = g.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:  # separable, valid positions only
        return F.conv2d(F.conv2d(t, kh, groups=channels), kw, groups=channels)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (SSIM_K1 * DATA_RANGE) ** 2, (SSIM_K2 * DATA_RANGE) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)

