"""Loss terms of the VAEVQ objective."""

from vaevq.losses.vaevq_losses import (
    dcr_loss,
    kl_loss,
    rcs_loss,
    rcs_loss_released,
    reconstruction_loss,
)

__all__ = ["dcr_loss", "kl_loss", "rcs_loss", "rcs_loss_released", "reconstruction_loss"]
