"""Loss terms of the VAEVQ objective, the one convention that scales them (SPEC §6), and the one
loss module that weighs and sums every term (:mod:`vaevq.losses.objective`)."""

from vaevq.losses.convention import effective_weights
from vaevq.losses.objective import Objective, check_weights, term_weights, tokenizer_losses
from vaevq.losses.vaevq_losses import (
    dcr_loss,
    gaussian_moments,
    kl_loss,
    latent_rows,
    rcs_loss,
    rcs_loss_released,
    reconstruction_loss,
)

__all__ = ["Objective", "check_weights", "dcr_loss", "effective_weights", "gaussian_moments", "kl_loss",
           "latent_rows", "rcs_loss", "rcs_loss_released", "reconstruction_loss", "term_weights",
           "tokenizer_losses"]
