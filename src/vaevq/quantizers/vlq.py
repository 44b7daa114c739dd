"""Variational latent quantization (VAEVQ, SPEC §1) and the plain VQGAN quantizer."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from vaevq.config import LossConfig, ModelConfig
from vaevq.losses.convention import effective_weights
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


def _weighted(terms: dict[str, tuple[float, Callable[[], torch.Tensor]]]) -> dict[str, torch.Tensor]:
    """Evaluate the terms whose weight is non-zero; a switched-off term is absent."""
    return {name: weight * fn() for name, (weight, fn) in terms.items() if weight != 0.0}


@register_quantizer("vlq")
class VariationalLatentQuantizer(CodebookQuantizer):
    """Encoder features (B, 2d, h, w) -> posterior (mu, logvar), sample, nearest code.

    Loss terms, each multiplied by its weight (``rcs``, ``dcr``, ``kl`` converted from the
    paper's units by :func:`~vaevq.losses.effective_weights`): ``rcs`` (paper eq. 7, or the
    released form), ``dcr`` (paper eq. 11 on the effective codebook, with the target that
    ``loss.dcr_target`` names), ``dcr_latent`` (dcr_target=both: the same formula on the batch
    statistics of mu), ``kl``, and for the ablations without RCS VQGAN's ``codebook`` and
    ``commit`` terms on what was quantized.
    """

    variational = True

    def __init__(self, model: ModelConfig, loss: LossConfig):
        super().__init__()
        self.codebook = Codebook(model.codebook_size, model.latent_dim, model.codebook_projection,
                                 model.codebook_init)
        self.quantize_sample = model.quantize == "sample"
        self.estimator = model.estimator
        self.logvar_range = (model.logvar_min, model.logvar_max)
        self.search_block = model.search_block
        self.loss = loss
        self.pixels = (model.in_channels, 2 ** (len(model.ch_mult) - 1))  # C and f of the images

    @property
    def in_channels_factor(self) -> int:
        return 2

    def _dcr(self, vectors: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        if self.loss.dcr_target == "latent":
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
        rcs = rcs_loss_released if self.loss.rcs_form == "released" else rcs_loss
        w = effective_weights(self.loss, *self.pixels, mu.shape[1], mu.shape[2] * mu.shape[3])
        losses = _weighted({
            "codebook": (self.loss.codebook_weight, lambda: F.mse_loss(z_q, z.detach())),
            "commit": (self.loss.codebook_weight * self.loss.commitment_beta,
                       lambda: F.mse_loss(z, z_q.detach())),
            "rcs": (w["rcs"], lambda: rcs(z_q, mu, logvar)),
            "dcr": (w["dcr"], lambda: self._dcr(vectors, mu)),
            "dcr_latent": (w["dcr"] if self.loss.dcr_target == "both" else 0.0,
                           lambda: dcr_loss(latent_rows(mu))),
            "kl": (w["kl"], lambda: kl_loss(mu, logvar)),
        })
        return QuantizerOutput(z, z_c, z_q, z_q_decoder, indices, losses, mu, logvar)


@register_quantizer("vq")
class VectorQuantizer(CodebookQuantizer):
    """VQGAN: nearest code, straight-through, codebook + beta * commitment loss (non-legacy)."""

    variational = False

    def __init__(self, model: ModelConfig, loss: LossConfig, projection: bool | None = None):
        super().__init__()
        projection = model.codebook_projection if projection is None else projection
        self.codebook = Codebook(model.codebook_size, model.latent_dim, projection, model.codebook_init)
        self.search_block = model.search_block
        self.beta = loss.commitment_beta

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        vectors = self.codebook.vectors()
        indices = self.codebook.search(z, vectors, self.search_block)
        z_q = self.codebook.lookup(indices, vectors)
        z_q_decoder = straight_through(z, z_q) if torch.is_grad_enabled() else z_q
        losses = {
            "codebook": F.mse_loss(z_q, z.detach()),
            "commit": self.beta * F.mse_loss(z, z_q.detach()),
        }
        return QuantizerOutput(z, z, z_q, z_q_decoder, indices, losses)
