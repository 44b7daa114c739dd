"""Variational latent quantization (VAEVQ, SPEC §1) and the plain VQGAN quantizer."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from vaevq.config import LossConfig, ModelConfig
from vaevq.losses.vaevq_losses import dcr_loss, kl_loss, rcs_loss, rcs_loss_released
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

    Loss terms, each multiplied by its weight from the config: ``rcs`` (paper eq. 7, or the
    released form), ``dcr`` (paper eq. 11, on the effective codebook), ``kl``, and for the
    ablations without RCS VQGAN's ``codebook`` and ``commit`` terms on what was quantized.
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

    @property
    def in_channels_factor(self) -> int:
        return 2

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
        losses = _weighted({
            "codebook": (self.loss.codebook_weight, lambda: F.mse_loss(z_q, z.detach())),
            "commit": (self.loss.codebook_weight * self.loss.commitment_beta,
                       lambda: F.mse_loss(z, z_q.detach())),
            "rcs": (self.loss.rcs_weight, lambda: rcs(z_q, mu, logvar)),
            "dcr": (self.loss.dcr_weight, lambda: dcr_loss(vectors)),
            "kl": (self.loss.kl_weight, lambda: kl_loss(mu, logvar)),
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
