"""Frechet distance between Gaussians fitted to two feature sets, with streaming statistics.

FD = ||m1 - m2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1^1/2 S2 S1^1/2)^1/2), all in float64.
The trace term is computed from eigenvalues of symmetric positive semi-definite matrices
(S1^1/2 from eigh, then the eigenvalues of S1^1/2 S2 S1^1/2), which is stable for singular
and near-singular covariances where scipy's ``sqrtm(S1 @ S2)`` can return complex noise;
eigenvalues below 1e-12 of the largest (rounding noise of zeros) are set to 0.
"""

from __future__ import annotations

import numpy as np
import torch

from vaevq.distributed import all_reduce_max, all_reduce_sum, is_distributed
from vaevq.features import EfficientNetLite0
from vaevq.features.inception import FIDInceptionV3


def _clip(vals: torch.Tensor) -> torch.Tensor:
    """Eigenvalues below 1e-12 of the largest are rounding noise of a zero: set them to 0."""
    floor = vals.abs().max().clamp_min(1e-300) * 1e-12
    return torch.where(vals > floor, vals, torch.zeros_like(vals))


def _sqrt_psd(s: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(s)
    return (vecs * _clip(vals).sqrt()) @ vecs.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance of N(mu1, sigma1) and N(mu2, sigma2) (arrays or tensors), in float64."""
    mu1, mu2 = (torch.as_tensor(np.asarray(m), dtype=torch.float64) for m in (mu1, mu2))
    s1, s2 = (torch.as_tensor(np.asarray(s), dtype=torch.float64) for s in (sigma1, sigma2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.numel(), mu1.numel()):
        raise ValueError(f"shapes do not match: means {tuple(mu1.shape)}, {tuple(mu2.shape)}; "
                         f"covariances {tuple(s1.shape)}, {tuple(s2.shape)}")
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    r1 = _sqrt_psd(s1)
    m = r1 @ s2 @ r1
    trace_sqrt = _clip(torch.linalg.eigvalsh((m + m.T) / 2)).sqrt().sum()
    diff = mu1 - mu2
    return float(diff @ diff + torch.trace(s1) + torch.trace(s2) - 2 * trace_sqrt)


class GaussianStats:
    """Running mean and covariance of feature vectors (Chan et al.'s pairwise update, float64):
    no features are kept, so any number of images fits in O(F^2) memory."""

    def __init__(self, dim: int | None = None):
        self.n = 0
        self.mean: torch.Tensor | None = None
        self.scatter: torch.Tensor | None = None  # sum of (x - mean)(x - mean)^T
        self.dim = dim

    def update(self, features: torch.Tensor) -> None:
        x = features.detach().to("cpu", torch.float64)
        if x.dim() != 2:
            raise ValueError(f"features must be (N, F), got {tuple(x.shape)}")
        if self.dim is not None and x.shape[1] != self.dim:
            raise ValueError(f"features have {x.shape[1]} dimensions, expected {self.dim}")
        if x.shape[0] == 0:
            return
        self.dim = x.shape[1]
        nb = x.shape[0]
        mb = x.mean(0)
        centered = x - mb
        sb = centered.T @ centered
        if self.n == 0:
            self.n, self.mean, self.scatter = nb, mb, sb
            return
        n = self.n + nb
        delta = mb - self.mean
        self.scatter = self.scatter + sb + torch.outer(delta, delta) * (self.n * nb / n)
        self.mean = self.mean + delta * (nb / n)
        self.n = n

    def merge(self, other: GaussianStats) -> None:
        if other.n == 0:
            return
        if self.n == 0:
            self.n, self.dim = other.n, other.dim
            self.mean, self.scatter = other.mean.clone(), other.scatter.clone()
            return
        n = self.n + other.n
        delta = other.mean - self.mean
        self.scatter = self.scatter + other.scatter + torch.outer(delta, delta) * (self.n * other.n / n)
        self.mean = self.mean + delta * (other.n / n)
        self.n = n

    def covariance(self) -> torch.Tensor:
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 feature vectors, got {self.n}")
        return self.scatter / (self.n - 1)

    def all_reduce(self) -> None:
        """Combine the statistics of every rank (exact: via sums of x and x x^T about a shared shift)."""
        if not is_distributed():
            return
        dim = int(all_reduce_max(torch.tensor([self.dim or 0], dtype=torch.int64)))
        n = torch.tensor([float(self.n)], dtype=torch.float64)
        mean = self.mean if self.n else torch.zeros(dim, dtype=torch.float64)
        scatter = self.scatter if self.n else torch.zeros(dim, dim, dtype=torch.float64)
        s1 = mean * self.n  # sum of x
        s2 = scatter + torch.outer(mean, mean) * self.n  # sum of x x^T
        n, s1, s2 = (all_reduce_sum(t) for t in (n, s1, s2))
        total = int(n)
        if total == 0:
            return
        self.n, self.dim = total, dim
        self.mean = s1 / total
        self.scatter = s2 - torch.outer(self.mean, self.mean) * total


class _EffNetPooled(torch.nn.Module):
    native = 224

    def __init__(self, weights: str | None = None):
        super().__init__()

        self.net = EfficientNetLite0.pretrained(weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.native, self.native):
            x = torch.nn.functional.interpolate(x, size=(self.native, self.native), mode="bilinear",
                                                align_corners=False)
        return self.net.pooled(x)


FEATURE_NETS = ("inception-v3-fid", "effnet-lite0")


def feature_extractor(name: str, weights: str | None = None, download: bool = True) -> torch.nn.Module:
    """A frozen module mapping (B, 3, H, W) in [-1, 1] to (B, F) features:
    ``inception-v3-fid`` (pool3, 2048; resized to 299 unless already 299) or ``effnet-lite0``
    (ImageNet EfficientNet-Lite0 pooled head, 1280; resized to 224 unless already 224)."""
    if name == "inception-v3-fid":

        module = FIDInceptionV3.pretrained(weights, download)
    elif name == "effnet-lite0":
        module = _EffNetPooled(weights)
    else:
        raise ValueError(f"unknown feature network {name!r}; available: {', '.join(FEATURE_NETS)}")
    return module.eval().requires_grad_(False)


class FrechetDistance:
    """Streaming Frechet distance between the features of real images and of reconstructions.

    ``FrechetDistance("effnet-lite0")`` (reported as fid-effnet: not comparable with published
    FID) or ``FrechetDistance("inception-v3-fid")`` (the standard rFID network), or any module
    mapping images to (B, F). ``update(images, real=True|False)``, ``compute()`` -> float.
    """

    def __init__(self, network: str | torch.nn.Module = "effnet-lite0", weights: str | None = None,
                 device: torch.device | str = "cpu", download: bool = True):
        self.name = network if isinstance(network, str) else type(network).__name__
        module = feature_extractor(network, weights, download) if isinstance(network, str) else network
        self.network = module.to(device)
        self.device = device
        self.real, self.fake = GaussianStats(), GaussianStats()

    @torch.no_grad()
    def update(self, images: torch.Tensor, real: bool) -> None:
        feats = self.network(images.to(self.device).clamp(-1, 1).float())
        (self.real if real else self.fake).update(feats)

    def reset(self) -> None:
        self.real, self.fake = GaussianStats(), GaussianStats()

    def all_reduce(self) -> None:
        self.real.all_reduce()
        self.fake.all_reduce()

    def compute(self) -> float:
        return frechet_distance(self.real.mean, self.real.covariance(), self.fake.mean, self.fake.covariance())
