"""Codebook usage over a whole evaluation split (SPEC §4), reducible across ranks."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist


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
        if dist.is_available() and dist.is_initialized():
            device = "cuda" if dist.get_backend() == "nccl" else "cpu"
            counts = self.counts.to(device)
            dist.all_reduce(counts)
            self.counts = counts.cpu()

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

    def summary(self) -> dict[str, float]:
        return {
            "utilization": self.utilization(),
            "perplexity": self.perplexity(),
            "used_codes": self.used(),
            "dead_codes": self.dead(),
            "tokens": self.total,
        }
