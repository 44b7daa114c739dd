"""Codebook usage over a whole evaluation split (SPEC §4), reducible across ranks."""

from __future__ import annotations

import math

import torch

from vaevq.distributed import all_reduce_sum


class CodebookUsage:
    """Histogram of token ids. ``update`` per batch, then utilization and perplexity.

    Utilization is the fraction of the K codes chosen at least once; perplexity is
    exp(H(p)) of the code histogram. ``all_reduce()`` sums counts over distributed ranks.
    """

    def __init__(self, codebook_size: int):
        if codebook_size <= 0:
            raise ValueError(f"codebook_size must be positive, got {codebook_size}")
        self.codebook_size = codebook_size
        self.counts = torch.zeros(codebook_size, dtype=torch.int64)

    def update(self, indices: torch.Tensor) -> None:
        flat = indices.detach().reshape(-1).to("cpu", torch.int64)
        if flat.numel() == 0:
            return
        if int(flat.min()) < 0 or int(flat.max()) >= self.codebook_size:
            raise ValueError(f"token ids must lie in [0, {self.codebook_size}); got "
                             f"[{int(flat.min())}, {int(flat.max())}]")
        self.counts += torch.bincount(flat, minlength=self.codebook_size)

    def all_reduce(self) -> None:
        self.counts = all_reduce_sum(self.counts)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def used(self) -> int:
        return int((self.counts > 0).sum())

    def dead(self) -> int:
        return self.codebook_size - self.used()

    def utilization(self) -> float:
        return self.used() / self.codebook_size

    def perplexity(self) -> float:
        total = self.total
        if total == 0:
            return 0.0
        p = self.counts[self.counts > 0].double() / total
        return math.exp(float(-(p * p.log()).sum()))

    def summary(self, suffix: str = "") -> dict[str, float]:
        """utilization, perplexity, used_codes, dead_codes, tokens (each name + ``suffix``)."""
        return {
            f"utilization{suffix}": self.utilization(),
            f"perplexity{suffix}": self.perplexity(),
            f"used_codes{suffix}": self.used(),
            f"dead_codes{suffix}": self.dead(),
            f"tokens{suffix}": self.total,
        }


class LatentSpread:
    """Squared quantization error relative to the latent's spread, over a whole split.

    ``update(z, z_q)`` with the quantized latent z (B, d, h, w) and its codes z_q; ``relative()``
    is E||z - z_q||^2 / E||z - E z||^2: 0 when every latent is its code, 1 when the codes are as
    far from the latents as the latents' mean is (a utilization bought with codes far from the
    latents shows up here). Sums are float64 and reducible across ranks (``all_reduce``).
    """

    def __init__(self, dim: int):
        self.sums = torch.zeros(2 * dim + 2, dtype=torch.float64)  # sum z, sum z^2, sum err^2, count
        self.dim = dim

    def update(self, z: torch.Tensor, z_q: torch.Tensor) -> None:
        rows = z.detach().double().transpose(0, 1).reshape(self.dim, -1).cpu()  # (d, N)
        codes = z_q.detach().double().transpose(0, 1).reshape(self.dim, -1).cpu()
        d = self.dim
        self.sums[:d] += rows.sum(1)
        self.sums[d:2 * d] += rows.pow(2).sum(1)
        self.sums[2 * d] += (rows - codes).pow(2).sum()
        self.sums[2 * d + 1] += rows.shape[1]

    def all_reduce(self) -> None:
        self.sums = all_reduce_sum(self.sums)

    def mean_squared_error(self) -> float:
        n = float(self.sums[-1])
        return float(self.sums[2 * self.dim]) / n if n else float("nan")

    def spread(self) -> float:
        """E||z - E z||^2: the total variance of the latent over the split."""
        n = float(self.sums[-1])
        if not n:
            return float("nan")
        mean = self.sums[:self.dim] / n
        return float((self.sums[self.dim:2 * self.dim] / n - mean.pow(2)).sum())

    def relative(self) -> float:
        spread = self.spread()
        return self.mean_squared_error() / spread if spread > 0 else float("nan")


