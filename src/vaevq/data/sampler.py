"""A batch sampler whose batch at step s is a pure function of (seed, s, rank).

Each epoch is a fresh permutation (seeded by seed and epoch) of the whole dataset; the global
batch of step s is one contiguous slice of it, and rank r takes its own disjoint part of that
slice. Resuming at step s therefore replays exactly the batches an uninterrupted run would
have seen, on any number of processes. Items carry their own augmentation seed.
"""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    def __init__(self, dataset_size: int, batch_size: int, *, seed: int, start_step: int,
                 total_steps: int, rank: int = 0, world_size: int = 1):
        global_batch = batch_size * world_size
        if dataset_size < global_batch:
            raise ValueError(f"the training set has {dataset_size} images, fewer than one global "
                             f"batch ({batch_size} x {world_size} processes)")
        self.size, self.batch_size = dataset_size, batch_size
        self.seed, self.start, self.total = seed, start_step, total_steps
        self.rank, self.world = rank, world_size
        self.steps_per_epoch = dataset_size // global_batch

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def _permutation(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.size, generator=gen)

    def __iter__(self):
        epoch, perm = -1, None
        for step in range(self.start, self.total):
            e, b = divmod(step, self.steps_per_epoch)
            if e != epoch:
                epoch, perm = e, self._permutation(e)
            first = (b * self.world + self.rank) * self.batch_size
            batch = perm[first : first + self.batch_size].tolist()
            yield [(i, (self.seed * 7_919 + step) * 65_537 + i) for i in batch]
