"""Loss terms of the VAEVQ objective, and the one convention that scales them (SPEC §6)."""

from vaevq.losses.convention import effective_weights
from vaevq.losses.vaevq_losses import (
    dcr_loss,
    gaussian_moments,
    kl_loss,
    latent_rows,
    rcs_loss,
    rcs_loss_released,
    reconstruction_loss,
)

__all__ = ["dcr_loss", "effective_weights", "gaussian_moments", "kl_loss", "latent_rows", "rcs_loss",
           "rcs_loss_released", "reconstruction_loss"]
