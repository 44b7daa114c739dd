"""torch.distributed behind one guard, at the bottom of the package: one process or many
(torchrun), same code. Every collective call of vaevq goes through this module."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); otherwise one process.

    NCCL on GPUs, gloo on CPU. ``device`` forces "cpu" or "cuda"; default: CUDA when present.
    """
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise ValueError(f"device {device}: no CUDA GPU is available here (torch.cuda.is_available() is "
                         f"False; torch {torch.__version__}); use --device cpu")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not dist.is_initialized():
        # a long timeout: the first run over a large BraTS root prepares its slice cache between
        # two barriers (every rank its share)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=60))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    return DistInfo(rank, world, local_rank, dev)


def is_distributed() -> bool:
    """Whether a process group is running (the one guard of every collective call)."""
    return dist.is_available() and dist.is_initialized()


def backend() -> str | None:
    return dist.get_backend() if is_distributed() else None


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def broadcast(tensor: torch.Tensor, src: int = 0) -> None:
    """In place from rank ``src`` (nothing in a single process)."""
    if is_distributed():
        dist.broadcast(tensor, src)


def all_reduce_mean_(tensors) -> None:
    """Average tensors over ranks in place (nothing in a single process)."""
    if is_distributed():
        n = dist.get_world_size()
        for t in tensors:
            dist.all_reduce(t)
            t.div_(n)


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (identity in a single process); a CPU tensor travels through the
    GPU under NCCL (which reduces CUDA tensors only) and comes back on the CPU."""
    if is_distributed():
        device = values.device
        staged = values.to("cuda") if dist.get_backend() == "nccl" and device.type == "cpu" else values.clone()
        dist.all_reduce(staged)
        values = staged.to(device)
    return values


def all_gather_cat(values: torch.Tensor) -> torch.Tensor:
    """Concatenate a 1-D CPU tensor of any length from every rank, in rank order."""
    if not is_distributed():
        return values
    parts: list[torch.Tensor | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, values.cpu())
    return torch.cat([p for p in parts if p is not None])


def all_reduce_max(values: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum over ranks (identity in a single process), staged like all_reduce_sum."""
    if is_distributed():
        device = values.device
        staged = values.to("cuda") if dist.get_backend() == "nccl" and device.type == "cpu" else values.clone()
        dist.all_reduce(staged, op=dist.ReduceOp.MAX)
        values = staged.to(device)
    return values


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()
