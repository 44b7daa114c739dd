"""The VLQ sampling noise as a function of per-image seeds (training and evaluation share it)."""

from __future__ import annotations

import torch


def sample_noise(seeds: torch.Tensor, shape: tuple[int, ...], device: torch.device | str) -> torch.Tensor:
    """VLQ noise eps (B, *shape): image i's from its own seed, so the noise an image gets does not
    depend on the number of processes or micro-batches the global batch is split into."""
    gen = torch.Generator()
    rows = [torch.randn(shape, generator=gen.manual_seed(int(s) ^ 0x5DEECE66D)) for s in seeds.tolist()]
    return torch.stack(rows).to(device, non_blocking=True)
