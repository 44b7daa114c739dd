"""The baselines of the paper's comparison, on the same encoder/decoder (SPEC §3).

``ema`` (VQGAN-EMA), ``simvq``, ``movq`` (the quantizer of Mo-VQGAN; its decoder is built by
the model), ``softvq``, ``fsq`` and ``lfq``. ``vq`` and ``vlq`` live in :mod:`vlq`, ``lc`` in
:mod:`lc`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange

from vaevq.config import ConfigError, LossConfig, ModelConfig
from vaevq.distributed import all_reduce_sum
from vaevq.quantizers.base import (
    Codebook,
    CodebookQuantizer,
    Quantizer,
    QuantizerOutput,
    check_indices,
    register_quantizer,
)
from vaevq.quantizers.vlq import VectorQuantizer, straight_through

# ---------------------------------------------------------------- VQGAN-EMA


@register_quantizer("ema", weights={"commit": "beta"}, free_codes=lambda m: True,
                    keys=("ema_codebook_decay", "ema_eps"))
def _ema(model: ModelConfig, loss: LossConfig, terms: frozenset[str]) -> EMAVectorQuantizer:
    return EMAVectorQuantizer(model.codebook_size, model.latent_dim, model.ema_codebook_decay, model.ema_eps,
                              model.search_block, terms)


class EMAVectorQuantizer(CodebookQuantizer):
    """Codebook updated by exponential moving averages of the assignments (no gradient).

    Per training step, with one-hot assignments A (N x K) of the flattened z (N x d):
    n_k <- decay n_k + (1 - decay) sum_i A_ik;  m_k <- decay m_k + (1 - decay) sum_i A_ik z_i;
    Laplace smoothing n~_k = (n_k + eps) / (sum n + K eps) * sum n;  e_k = m_k / n~_k.
    Counts and sums are summed over all ranks first, so every rank applies the same update.
    Term: ``commit`` ||z - sg(z_q)||^2 only.
    """

    def __init__(self, codebook_size: int, dim: int, decay: float = 0.99, eps: float = 1e-5,
                 search_block: int = 256, terms=("commit",)):
        super().__init__(terms)
        self.codebook = Codebook(codebook_size, dim, init="normal")
        self.codebook.embedding.requires_grad_(False)
        self.decay, self.eps = decay, eps
        self.register_buffer("cluster_size", torch.zeros(codebook_size))
        self.register_buffer("embed_sum", self.codebook.embedding.detach().clone())
        self.search_block = search_block

    @torch.no_grad()
    def ema_update(self, flat: torch.Tensor, indices: torch.Tensor) -> None:
        k = self.codebook.size
        counts = torch.bincount(indices, minlength=k).to(flat.dtype)
        sums = torch.zeros_like(self.embed_sum).index_add_(0, indices, flat)
        stats = all_reduce_sum(torch.cat([counts[:, None], sums], dim=1))
        counts, sums = stats[:, 0], stats[:, 1:]
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + k * self.eps) * n
        self.codebook.embedding.copy_(self.embed_sum / smoothed[:, None])

    @torch.no_grad()
    def restart_codes(self, ids: torch.Tensor, vectors: torch.Tensor) -> None:
        """A restarted code starts as one observation of its vector."""
        super().restart_codes(ids, vectors)
        self.cluster_size[ids] = 1.0
        self.embed_sum[ids] = vectors

    def forward(self, z: torch.Tensor, noise: torch.Tensor | None = None) -> QuantizerOutput:
        vectors = self.codebook.vectors()
        indices = self.codebook.search(z, vectors, self.search_block)
        z_q = self.codebook.lookup(indices, vectors).detach()
        if self.training and torch.is_grad_enabled():
            self.ema_update(rearrange(z.detach(), "b d h w -> (b h w) d"), indices.flatten())
        z_q_decoder = straight_through(z, z_q) if torch.is_grad_enabled() else z_q
        terms = {"commit": F.mse_loss(z, z_q)} if self.wants("commit") else {}
        return QuantizerOutput(z, z, z_q, z_q_decoder, indices, terms)


# ---------------------------------------------------------------- SimVQ and Mo-VQGAN


@register_quantizer("simvq", weights={"codebook": "one", "commit": "beta"}, free_codes=lambda m: False)
def simvq(model: ModelConfig, loss: LossConfig, terms: frozenset[str]) -> VectorQuantizer:
    """SimVQ: frozen codebook C ~ N(0, d^-1/2) through one trainable Linear(d, d); the VQ losses
    reach the linear layer through C W. Decoding from ids applies the projection too."""
    return VectorQuantizer(model.codebook_size, model.latent_dim, True, model.codebook_init,
                           model.search_block, terms)


@register_quantizer("movq", weights={"codebook": "one", "commit": "beta"}, decoder_modulated=True)
def movq(model: ModelConfig, loss: LossConfig, terms: frozenset[str]) -> VectorQuantizer:
    """Mo-VQGAN's quantizer is plain VQ; the model gives it a decoder whose normalization
    layers are modulated by z_q (spatially conditional normalization)."""
    return VectorQuantizer(model.codebook_size, model.latent_dim, model.codebook_projection,
                           model.codebook_init, model.search_block, terms)


# ---------------------------------------------------------------- SoftVQ


@register_quantizer("softvq", weights={}, keys=("softvq_tau",))
def _softvq(model: ModelConfig, loss: LossConfig, terms: frozenset[str]) -> SoftVectorQuantizer:
    return SoftVectorQuantizer(model.codebook_size, model.latent_dim, model.codebook_projection,
                               model.softvq_tau, model.search_block)


class SoftVectorQuantizer(CodebookQuantizer):
    """Soft assignment p = softmax(-||z - e_k||^2 / tau); in training z_q = p E (differentiable
    in z and E). Token ids are the hard argmin, and evaluation decodes E[argmin], so decoding
    ids equals the evaluation reconstruction. No loss terms of its own."""

    def __init__(self, codebook_size: int, dim: int, projection: bool = False, tau: float = 1.0,
                 search_block: int = 256):
        super().__init__()
        self.codebook = Codebook(codebook_size, dim, projection, "normal")
        self.tau = tau
        self.search_block = search_block

    def probabilities(self, flat: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        d2 = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ vectors.t() + vectors.pow(2).sum(1)[None])
        return torch.softmax(-d2 / self.tau, dim=1)

    def forward(self, z: torch.Tensor, noise: torch.Tensor | None = None) -> QuantizerOutput:
        vectors = self.codebook.vectors()
        indices = self.codebook.search(z, vectors, self.search_block)
        if self.training and torch.is_grad_enabled():
            b, _, h, w = z.shape
            flat = rearrange(z, "b d h w -> (b h w) d")
            p = self.probabilities(flat, vectors)
            z_q = rearrange(p @ vectors, "(b h w) d -> b d h w", b=b, h=h, w=w)
            return QuantizerOutput(z, z, z_q, z_q, indices, {})
        z_q = self.codebook.lookup(indices, vectors)
        return QuantizerOutput(z, z, z_q, z_q, indices, {})


# ---------------------------------------------------------------- FSQ


FSQ_DEFAULT_LEVELS = {  # Mentzer et al. 2023, Table 1 (target codebook size -> levels)
    2**8: (8, 6, 5),
    2**10: (8, 5, 5, 5),
    2**12: (7, 5, 5, 5, 5),
    2**14: (8, 8, 8, 6, 5),
    2**16: (8, 8, 8, 5, 5, 5),
}


def fsq_levels_for(codebook_size: int) -> tuple[int, ...]:
    if codebook_size not in FSQ_DEFAULT_LEVELS:
        raise ValueError(f"no default FSQ levels for model.codebook_size={codebook_size}; set model.fsq_levels "
                         f"(defaults exist for {sorted(FSQ_DEFAULT_LEVELS)})")
    return FSQ_DEFAULT_LEVELS[codebook_size]


def _finalize_fsq(m: ModelConfig) -> None:
    """FSQ's levels (the FSQ paper's for the codebook size, unless given) set d and K."""
    if not m.fsq_levels:
        try:
            m.fsq_levels = fsq_levels_for(m.codebook_size)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if any(level < 2 for level in m.fsq_levels):
        raise ConfigError(f"model.fsq_levels must all be >= 2; got {list(m.fsq_levels)}")
    m.latent_dim = len(m.fsq_levels)
    m.codebook_size = math.prod(m.fsq_levels)


@register_quantizer("fsq", weights={}, free_codes=lambda m: False, finalize=_finalize_fsq, keys=("fsq_levels",))
def _fsq(model: ModelConfig, loss: LossConfig, terms: frozenset[str]) -> FiniteScalarQuantizer:
    levels = tuple(model.fsq_levels) or fsq_levels_for(model.codebook_size)
    if len(levels) != model.latent_dim or math.prod(levels) != model.codebook_size:
        raise ValueError(f"FSQ levels {list(levels)} need model.latent_dim={len(levels)} and "
                         f"model.codebook_size={math.prod(levels)}")
    return FiniteScalarQuantizer(levels)


class FiniteScalarQuantizer(Quantizer):
    """FSQ: each of the d = len(levels) channels is bounded and rounded to L_i values.

    bound(z) = tanh(z + shift) * h - offset with h = (L - 1)(1 + 1e-3) / 2, offset 0.5 for even
    L (else 0) and shift = atanh(offset / h); rounding with a straight-through gradient; codes
    are normalised to [-1, 1] by L // 2. Token id: the mixed-radix number of the level digits.
    """

    def __init__(self, levels: tuple[int, ...]):
        super().__init__()
        levels = tuple(levels)
        self.register_buffer("levels", torch.tensor(levels, dtype=torch.int64), persistent=False)
        basis = torch.cumprod(torch.tensor((1,) + levels[:-1], dtype=torch.int64), 0)
        self.register_buffer("basis", basis, persistent=False)

    @property
    def codebook_size(self) -> int:
        return int(torch.prod(self.levels))

    def _view(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(1, -1, 1, 1)

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        levels = self._view(self.levels).to(z.dtype)
        half = (levels - 1) * (1 + 1e-3) / 2
        offset = torch.where(self._view(self.levels) % 2 == 0, 0.5, 0.0).to(z.dtype)
        shift = torch.atanh(offset / half)
        return torch.tanh(z + shift) * half - offset

    def forward(self, z: torch.Tensor, noise: torch.Tensor | None = None) -> QuantizerOutput:
        bounded = self.bound(z)
        integer = torch.round(bounded).detach()
        half_width = self._view(self.levels // 2).to(z.dtype)
        z_q = integer / half_width  # exactly what lookup(indices) gives
        z_q_decoder = (bounded + (integer - bounded).detach()) / half_width if torch.is_grad_enabled() else z_q
        indices = ((integer + half_width).long() * self._view(self.basis)).sum(1)
        return QuantizerOutput(z, z, z_q, z_q_decoder, indices, {})

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        check_indices(indices, self.codebook_size)
        digits = (indices[:, None] // self._view(self.basis)) % self._view(self.levels)
        half_width = self._view(self.levels // 2)
        return (digits - half_width).float() / half_width.float()


# ---------------------------------------------------------------- LFQ


def _finalize_lfq(m: ModelConfig) -> None:
    k = m.codebook_size
    if k < 2 or k & (k - 1):
        raise ConfigError(f"model.quantizer=lfq needs a power-of-two model.codebook_size; got {k}")
    m.latent_dim = k.bit_length() - 1


@register_quantizer("lfq", weights={"commit": "beta", "entropy": "entropy"}, free_codes=lambda m: False,
                    finalize=_finalize_lfq, keys=("lfq_entropy_weight", "lfq_diversity", "lfq_temperature"))
def _lfq(model: ModelConfig, loss: LossConfig, terms: frozenset[str]) -> LookupFreeQuantizer:
    if 2**model.latent_dim != model.codebook_size:
        raise ValueError(f"LFQ has 2^latent_dim codes: model.codebook_size={model.codebook_size} needs "
                         f"model.latent_dim={int(math.log2(model.codebook_size))} (a power of two)")
    return LookupFreeQuantizer(model.latent_dim, model.lfq_temperature, model.lfq_diversity, terms)


class LookupFreeQuantizer(Quantizer):
    """LFQ (MAGVIT-v2): q_i = sign(z_i) in {-1, +1}; token id sum_i [z_i > 0] 2^i; K = 2^d.

    Term ``entropy`` (weighted by ``model.lfq_entropy_weight``): mean per-token entropy of
    p(c | z) = softmax_c(2 z.c / tau) minus ``diversity`` x the entropy of its batch mean,
    computed exactly over all 2^d codes (d <= 16); term ``commit`` ||z - sg(q)||^2.
    """

    def __init__(self, dim: int, temperature: float = 1.0, diversity: float = 1.0,
                 terms=("commit", "entropy")):
        super().__init__(terms)
        d = dim
        if d > 16:
            raise ValueError("LFQ's exact entropy loss supports latent_dim <= 16")
        self.d = d
        self.diversity = diversity
        self.tau = temperature
        self.register_buffer("bits", 2 ** torch.arange(d), persistent=False)

    @property
    def codebook_size(self) -> int:
        return 2**self.d

    def all_codes(self, dtype=torch.float32) -> torch.Tensor:
        """(2^d, d) every code, row k being the code of id k."""
        k = torch.arange(2**self.d, device=self.bits.device)
        return ((k[:, None] // self.bits) % 2).to(dtype) * 2 - 1

    def entropy_terms(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-token entropy mean, entropy of the mean distribution) over all 2^d codes."""
        logits = 2 * flat @ self.all_codes(flat.dtype).t() / self.tau
        logp = torch.log_softmax(logits, dim=1)
        p = logp.exp()
        per_token = -(p * logp).sum(1).mean()
        mean_p = p.mean(0)
        codebook = -(mean_p * torch.log(mean_p.clamp_min(1e-12))).sum()
        return per_token, codebook

    def forward(self, z: torch.Tensor, noise: torch.Tensor | None = None) -> QuantizerOutput:
        q = torch.where(z > 0, 1.0, -1.0).to(z.dtype)
        indices = ((z > 0).long() * self.bits.view(1, -1, 1, 1)).sum(1)
        z_q_decoder = straight_through(z, q) if torch.is_grad_enabled() else q
        terms = {}
        if torch.is_grad_enabled():
            if self.wants("commit"):
                terms["commit"] = F.mse_loss(z, q)
            if self.wants("entropy"):
                per_token, codebook = self.entropy_terms(rearrange(z, "b d h w -> (b h w) d"))
                terms["entropy"] = per_token - self.diversity * codebook
        return QuantizerOutput(z, z, q, z_q_decoder, indices, terms)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        check_indices(indices, self.codebook_size)
        return ((indices[:, None] // self.bits.view(1, -1, 1, 1)) % 2).float() * 2 - 1
