"""What every quantizer returns, the learnable codebook, and the registry of quantizers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from einops import rearrange
from torch import nn

from vaevq.quantizers.search import nearest_code


@dataclass
class QuantizerOutput:
    """What every quantizer's ``forward(h, noise=None)`` returns. ``terms`` are unweighted: the
    loss module (:mod:`vaevq.losses.objective`) owns every weight."""

    z: torch.Tensor  # (B, d, h, w) what was quantized (the sample z_c, or mu)
    z_c: torch.Tensor  # (B, d, h, w) the continuous latent decoded on the continuous path
    z_q: torch.Tensor  # (B, d, h, w) the selected code vectors (gradient reaches the codebook)
    z_q_decoder: torch.Tensor  # (B, d, h, w) value z_q, gradient as the estimator says
    indices: torch.Tensor  # (B, h, w) int64
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # unweighted loss terms
    mu: torch.Tensor | None = None  # (B, d, h, w) posterior mean (variational quantizers)
    logvar: torch.Tensor | None = None  # (B, d, h, w) posterior log-variance


class Codebook(nn.Module):
    """K learnable vectors of size d; optionally SimVQ-style: a frozen basis through Linear(d, d).

    ``vectors()`` is the effective codebook used by search, lookup and DCR alike, so decoding
    from indices always sees exactly what training saw.
    """

    def __init__(self, size: int, dim: int, projection: bool = False, init: str = "uniform",
                 basis_dim: int | None = None):
        super().__init__()
        self.size, self.dim = size, dim
        basis_dim = basis_dim or dim  # VQGAN-LC: a frozen basis of pretrained features, projected to d
        self.embedding = nn.Parameter(torch.empty(size, basis_dim if projection else dim))
        if projection:
            nn.init.normal_(self.embedding, std=basis_dim**-0.5)
            self.embedding.requires_grad_(False)
            self.projection: nn.Module = nn.Linear(basis_dim, dim)
        else:
            if init == "normal":
                nn.init.normal_(self.embedding)  # the N(0, I) prior that DCR pulls towards
            else:
                nn.init.uniform_(self.embedding, -1.0 / size, 1.0 / size)  # taming's init
            self.projection = nn.Identity()

    @torch.no_grad()
    def init_from_moments(self, mean: torch.Tensor, cov: torch.Tensor, generator: torch.Generator) -> None:
        """Draw the K codes from N(mean, cov) (``model.codebook_init=latent``: the moments of the
        encoder's latents at step 0, so the codebook starts where the latents are)."""
        if not isinstance(self.projection, nn.Identity):
            raise ValueError("a codebook through a projection cannot be drawn from latent moments")
        values, vectors = torch.linalg.eigh(cov.double().cpu())
        root = vectors * values.clamp_min(0.0).sqrt()  # root @ root.T = cov
        noise = torch.randn(self.size, self.dim, generator=generator, dtype=torch.float64)
        rows = mean.double().cpu() + noise @ root.t()
        self.embedding.copy_(rows.to(self.embedding))

    def vectors(self) -> torch.Tensor:
        """(K, d) effective codebook."""
        return self.projection(self.embedding)

    def lookup(self, indices: torch.Tensor, vectors: torch.Tensor | None = None) -> torch.Tensor:
        """(B, h, w) int64 -> (B, d, h, w)."""
        check_indices(indices, self.size)
        vectors = self.vectors() if vectors is None else vectors
        return rearrange(vectors[indices], "b h w d -> b d h w")

    def cache_norms(self, on: bool) -> None:
        """Switch the squared-norm cache on (by the trainer, for the searches of one step, while
        the codebook cannot change) or off (and empty it). Off by default: outside a training step
        every search computes the norms of the codebook as it is."""
        self._cache_on = on
        self._norms = None

    def squared_norms(self, vectors: torch.Tensor) -> torch.Tensor:
        """||e_k||^2 (K,) of ``vectors``; reused within a training step (see ``cache_norms``)."""
        vectors = vectors.detach()
        if not getattr(self, "_cache_on", False):
            return vectors.pow(2).sum(1)
        if getattr(self, "_norms", None) is None:
            self._norms = vectors.pow(2).sum(1)
        return self._norms

    def search(self, z: torch.Tensor, vectors: torch.Tensor, block: int) -> torch.Tensor:
        """(B, d, h, w) -> (B, h, w) nearest-code indices."""
        b, _, h, w = z.shape
        flat = rearrange(z.detach(), "b d h w -> (b h w) d")
        return nearest_code(flat, vectors.detach(), code_block=block,
                            codebook_sq_norms=self.squared_norms(vectors)).view(b, h, w)


class Quantizer(nn.Module):
    """The contract of every quantizer.

    - ``forward(h, noise=None) -> QuantizerOutput``: ``h`` is the posterior head's output
      (B, in_channels_factor * d, h, w); ``noise`` the eps of a variational sample (ignored by the
      others); the output's ``terms`` are the unweighted loss terms this quantizer was asked for
      (``terms`` of the constructor: the loss module switches a term off by leaving it out);
    - ``lookup(indices)``: token ids -> the latent the decoder receives (what training decoded);
    - capabilities, as attributes: ``variational``, ``in_channels_factor``, ``codebook_size``,
      ``has_codebook`` (token ids index an explicit :class:`Codebook`, ``codebook``), ``supports_restart``
      (codes are free vectors: dead-code restart and a codebook drawn from the latents apply),
      ``needs_initialization()`` / ``images_needed()`` / ``initialize(batches, seed)`` (a codebook
      computed from training images before the first step, e.g. VQGAN-LC's k-means);
    - ``token_indices(indices, mu)``: the ids ``encode`` would give for the latents of a training
      forward (a variational quantizer that quantizes the sample searches mu's codes again).
    """

    variational = False
    in_channels_factor = 1

    def __init__(self, terms=()):
        super().__init__()
        self.terms = frozenset(terms)

    @property
    def has_codebook(self) -> bool:
        """Whether token ids index an explicit :class:`Codebook` (``self.codebook``)."""
        return isinstance(self._modules.get("codebook"), Codebook)

    @property
    def codebook_size(self) -> int:
        return self.codebook.size

    @property
    def supports_restart(self) -> bool:
        return False

    def needs_initialization(self) -> bool:
        return False

    def images_needed(self) -> int:
        return 0

    def initialize(self, batches, seed: int = 0) -> None:
        """Compute the codebook from batches of training images (see ``needs_initialization``)."""

    def token_indices(self, indices: torch.Tensor, mu: torch.Tensor | None = None) -> torch.Tensor:
        """The ids ``encode`` gives for the latents of a training forward (``indices`` and ``mu``
        of its output)."""
        return indices

    def wants(self, name: str) -> bool:
        """Whether the loss term ``name`` was asked for."""
        return name in self.terms

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def check_indices(indices: torch.Tensor, size: int) -> None:
    if indices.dtype != torch.long:
        raise TypeError(f"token indices must be int64, got {indices.dtype}")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= size):
        raise ValueError(f"token index out of range [0, {size}): min {int(indices.min())}, "
                         f"max {int(indices.max())}")


class CodebookQuantizer(Quantizer):
    """A quantizer with an explicit :class:`Codebook`: token ids index its rows."""

    codebook: Codebook

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        return self.codebook.lookup(indices)

    @property
    def supports_restart(self) -> bool:
        """Dead-code restart needs codes that are free vectors (no frozen basis x projection)."""
        return isinstance(self.codebook.projection, nn.Identity)

    @torch.no_grad()
    def restart_codes(self, ids: torch.Tensor, vectors: torch.Tensor) -> None:
        """Move the codes ``ids`` (n,) to ``vectors`` (n, d)."""
        if not self.supports_restart:
            raise ValueError("this quantizer's codebook is a frozen basis through a projection; "
                             "its codes cannot be restarted one by one")
        self.codebook.embedding[ids] = vectors


# ---------------------------------------------------------------- the registry


@dataclass(frozen=True)
class QuantizerSpec:
    """A registry entry: how ``model.quantizer=NAME`` is built from the config, and what it is.

    ``build(model, loss, terms)`` turns the config sections into the constructor's plain
    arguments; ``weights`` maps each loss term it can produce to the name of its weight rule in
    :data:`vaevq.losses.objective.WEIGHT_RULES`; ``free_codes(model)`` says whether its codes are
    free vectors for that config (restart, ``codebook_init=latent``); ``finalize(model)`` derives
    settings at config time (FSQ levels, LFQ's d) and raises ConfigError naming the key; ``keys``: the
    ModelConfig keys only this quantizer reads (one set for another quantizer is an error).
    """

    name: str
    build: Callable[..., Quantizer]
    weights: dict[str, str]
    free_codes: Callable[[Any], bool]
    finalize: Callable[[Any], None] | None = None
    decoder_modulated: bool = False  # Mo-VQGAN: the decoder's normalizations take z_q
    keys: tuple[str, ...] = ()  # the ModelConfig keys only this quantizer reads (set for another: an error)


QUANTIZERS: dict[str, QuantizerSpec] = {}


def _projection_free(model) -> bool:
    return not model.codebook_projection


def register_quantizer(name: str, *, weights: dict[str, str], free_codes: Callable[[Any], bool] = _projection_free,
                       finalize: Callable[[Any], None] | None = None, decoder_modulated: bool = False,
                       keys: tuple[str, ...] = ()):
    """Decorate ``build(model: ModelConfig, loss: LossConfig, terms: frozenset) -> Quantizer``."""
    def wrap(build: Callable[..., Quantizer]) -> Callable[..., Quantizer]:
        QUANTIZERS[name] = QuantizerSpec(name, build, dict(weights), free_codes, finalize, decoder_modulated,
                                         tuple(keys))
        return build

    return wrap


def quantizer_spec(name: str) -> QuantizerSpec:
    if name not in QUANTIZERS:
        raise ValueError(f"unknown model.quantizer {name!r}; available: {', '.join(sorted(QUANTIZERS))}")
    return QUANTIZERS[name]


def build_quantizer(name: str, model, loss, terms=None) -> Quantizer:
    """The quantizer ``name`` for the config sections ``model`` and ``loss``; ``terms``: the loss
    terms to compute (default: every term it can produce)."""
    spec = quantizer_spec(name)
    return spec.build(model, loss, frozenset(spec.weights if terms is None else terms))
