"""Dead-code restart: codes that no token chose for a while are moved onto encoder outputs.

Not part of the VAEVQ paper (see docs/design.md, "Codebook utilization at small scale"): a
standard remedy for codebook collapse (as in Jukebox, SoundStream, vector-quantize-pytorch),
offered for every quantizer with an explicit, freely learnable codebook. Every
``model.dead_code_interval`` steps, the assignment counts of the interval are summed over all
ranks; a code chosen fewer than ``model.dead_code_threshold`` times is dead. Rank 0 draws
replacements from its current batch's latents (the posterior mean for VLQ, the encoder output
otherwise), and broadcasts them, so every rank changes the codebook identically. The Adam
moments of the restarted rows are zeroed.
"""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange

from vaevq.config import Config
from vaevq.distributed import all_reduce_sum, broadcast


class DeadCodeRestarter:
    def __init__(self, config: Config, codebook_size: int):
        self.interval = config.model.dead_code_interval
        self.threshold = config.model.dead_code_threshold
        self.seed = config.train.seed
        self.counts = torch.zeros(codebook_size, dtype=torch.float64)

    @property
    def enabled(self) -> bool:
        return self.interval > 0

    def update(self, indices: torch.Tensor) -> None:
        """Count this rank's assignments of one training step."""
        flat = indices.detach().flatten().cpu()
        self.counts += torch.bincount(flat, minlength=self.counts.numel()).to(torch.float64)

    @torch.no_grad()
    def maybe_restart(self, step: int, quantizer, latents: torch.Tensor,
                      optimizer: torch.optim.Optimizer | None) -> int:
        """At the end of an interval: restart the dead codes; returns how many (same on all ranks)."""
        if not self.enabled or step % self.interval:
            return 0
        counts = all_reduce_sum(self.counts.to(latents.device)).cpu().clone()
        self.counts.zero_()
        dead = torch.nonzero(counts < self.threshold).flatten()
        if dead.numel() == 0:
            return 0
        flat = rearrange(latents.detach(), "b d h w -> (b h w) d").float()
        gen = torch.Generator().manual_seed(self.seed * 7919 + step)
        if dead.numel() <= flat.shape[0]:  # distinct tokens: no two restarted codes start equal
            pick = torch.randperm(flat.shape[0], generator=gen)[: dead.numel()].to(flat.device)
        else:
            pick = torch.randint(flat.shape[0], (dead.numel(),), generator=gen).to(flat.device)
        rows = flat[pick]
        if dead.numel() > flat.shape[0]:  # more dead codes than tokens: repeated draws, jittered apart
            scale = flat.std(0, keepdim=True).clamp_min(1e-6) * 1e-2
            rows = rows + scale * torch.randn(rows.shape, generator=gen).to(rows.device)
        rows = rows.to(quantizer.codebook.embedding.dtype).contiguous()
        broadcast(rows, 0)
        quantizer.restart_codes(dead.to(rows.device), rows)
        param = quantizer.codebook.embedding
        if optimizer is not None and param in optimizer.state:
            for key in ("exp_avg", "exp_avg_sq"):
                moment = optimizer.state[param].get(key)
                if moment is not None:
                    moment[dead.to(moment.device)] = 0
        return int(dead.numel())

    def state_dict(self) -> dict[str, Any]:
        """The interval's counts summed over all ranks (a collective call: every rank makes it)."""
        return {"counts": all_reduce_sum(self.counts.cpu()).clone()}

    def load_state_dict(self, state: dict[str, Any], main: bool = True) -> None:
        """Rank 0 resumes with the summed counts, the others with zeros: the next sum is right."""
        counts = state["counts"].to(torch.float64).cpu().clone()
        self.counts = counts if main else torch.zeros_like(counts)
