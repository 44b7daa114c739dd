"""Variational latent quantization (VAEVQ, SPEC §1) and the plain VQGAN quantizer."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vaevq.config import LossConfig, ModelConfig
from vaevq.losses.vaevq_losses import (
    dcr_loss,
    gaussian_moments,
    kl_loss,
    latent_rows,
    rcs_loss,
    rcs_loss_released,
)
from vaevq.quantizers.base import Codebook, CodebookQuantizer, QuantizerOutput, register_quantizer


def straight_through(z: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
    """Value z_q, gradient of z (the identity to the encoder, none to the codebook)."""
    return z + (z_q - z).detach()


def released_estimator(
    mu: torch.Tensor, sigma: torch.Tensor, z_q: torch.Tensor
) -> torch.Tensor:
    """The released code's estimator: value z_q; gradient to mu, sigma and the codebook."""
    return mu + sigma * ((z_q - mu) / sigma).detach() + z_q - z_q.detach()


@register_quantizer("vlq", weights={"codebook": "codebook", "commit": "codebook_beta", "rcs": "rcs",
                                   "dcr": "dcr", "dcr_latent": "dcr_latent", "kl": "kl"})
def _vlq(model: ModelConfig, loss: LossConfig, terms: frozenset[str]) -> VariationalLatentQuantizer:
    return VariationalLatentQuantizer(
        model.codebook_size, model.latent_dim, projection=model.codebook_projection, init=model.codebook_init,
        quantize_sample=model.quantize == "sample", estimator=model.estimator,
        logvar_range=(model.logvar_min, model.logvar_max), search_block=model.search_block,
        rcs_form=loss.rcs_form, dcr_target=loss.dcr_target, terms=terms)


class VariationalLatentQuantizer(CodebookQuantizer):
    """Encoder features (B, 2d, h, w) -> posterior (mu, logvar), sample, nearest code.

    Unweighted terms (those in ``terms``): ``rcs`` (paper eq. 7, or ``rcs_form="released"``),
    ``dcr`` (paper eq. 11 on the effective codebook, with the target ``dcr_target`` names:
    prior | latent | both), ``dcr_latent`` (the same formula on the batch statistics of mu),
    ``kl``, and VQGAN's ``codebook`` and ``commit`` MSEs on what was quantized (the ablations
    without RCS).
    """

    variational = True
    in_channels_factor = 2

    def __init__(self, codebook_size: int, dim: int, projection: bool = False, init: str = "uniform",
                 quantize_sample: bool = True, estimator: str = "straight-through",
                 logvar_range: tuple[float, float] = (-30.0, 20.0), search_block: int = 256,
                 rcs_form: str = "paper", dcr_target: str = "prior",
                 terms=("rcs", "dcr", "kl")):
        super().__init__(terms)
        self.codebook = Codebook(codebook_size, dim, projection, init)
        self.quantize_sample = quantize_sample
        self.estimator = estimator
        self.logvar_range = logvar_range
        self.search_block = search_block
        self.rcs = rcs_loss_released if rcs_form == "released" else rcs_loss
        self.dcr_target = dcr_target

    def token_indices(self, indices: torch.Tensor, mu: torch.Tensor | None = None) -> torch.Tensor:
        """Training quantizes the sample; tokens come from mu (its nearest codes)."""
        if mu is None or not self.quantize_sample:
            return indices
        with torch.no_grad():
            return self.codebook.search(mu.float(), self.codebook.vectors(), self.search_block)

    def _dcr(self, vectors: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        if self.dcr_target == "latent":
            return dcr_loss(vectors, gaussian_moments(latent_rows(mu.detach())))
        return dcr_loss(vectors)

    def forward(self, h: torch.Tensor, noise: torch.Tensor | None = None) -> QuantizerOutput:
        mu, logvar = h.chunk(2, dim=1)
        logvar = logvar.clamp(*self.logvar_range)
        sigma = torch.exp(0.5 * logvar)
        if noise is not None and noise.shape != mu.shape:
            raise ValueError(f"noise of shape {tuple(noise.shape)} for a posterior of shape {tuple(mu.shape)}")
        if self.training:
            z_c = mu + sigma * (torch.randn_like(mu) if noise is None else noise.to(mu.dtype))
        else:
            z_c = mu
        z = z_c if self.quantize_sample else mu
        vectors = self.codebook.vectors()
        indices = self.codebook.search(z, vectors, self.search_block)
        z_q = self.codebook.lookup(indices, vectors)
        if not torch.is_grad_enabled():
            z_q_decoder = z_q  # bit-identical to decoding from indices
        elif self.estimator == "released":
            z_q_decoder = released_estimator(mu, sigma, z_q)
        else:
            z_q_decoder = straight_through(z, z_q)
        formulas = {
            "codebook": lambda: F.mse_loss(z_q, z.detach()),
            "commit": lambda: F.mse_loss(z, z_q.detach()),
            "rcs": lambda: self.rcs(z_q, mu, logvar),
            "dcr": lambda: self._dcr(vectors, mu),
            "dcr_latent": lambda: dcr_loss(latent_rows(mu)),
            "kl": lambda: kl_loss(mu, logvar),
        }
        terms = {name: fn() for name, fn in formulas.items() if self.wants(name)}
        return QuantizerOutput(z, z_c, z_q, z_q_decoder, indices, terms, mu, logvar)


@register_quantizer("vq", weights={"codebook": "one", "commit": "beta"})
def _vq(model: ModelConfig, loss: LossConfig, terms: frozenset[str]) -> VectorQuantizer:
    return VectorQuantizer(model.codebook_size, model.latent_dim, model.codebook_projection,
                           model.codebook_init, model.search_block, terms)


class VectorQuantizer(CodebookQuantizer):
    """VQGAN: nearest code, straight-through; terms ``codebook`` ||sg(z) - z_q||^2 and ``commit``
    ||z - sg(z_q)||^2 (non-legacy; weighted 1 and beta by the loss module)."""

    def __init__(self, codebook_size: int, dim: int, projection: bool = False, init: str = "uniform",
                 search_block: int = 256, terms=("codebook", "commit"), basis_dim: int | None = None):
        super().__init__(terms)
        self.codebook = Codebook(codebook_size, dim, projection, init, basis_dim=basis_dim)
        self.search_block = search_block

    def forward(self, z: torch.Tensor, noise: torch.Tensor | None = None) -> QuantizerOutput:
        vectors = self.codebook.vectors()
        indices = self.codebook.search(z, vectors, self.search_block)
        z_q = self.codebook.lookup(indices, vectors)
        z_q_decoder = straight_through(z, z_q) if torch.is_grad_enabled() else z_q
        terms = {}
        if self.wants("codebook"):
            terms["codebook"] = F.mse_loss(z_q, z.detach())
        if self.wants("commit"):
            terms["commit"] = F.mse_loss(z, z_q.detach())
        return QuantizerOutput(z, z, z_q, z_q_decoder, indices, terms)
