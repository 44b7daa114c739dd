"""One loss convention for every preset (SPEC §6), written in one place.

The paper's objective (eq. 12) is a sum of per-image sums: eq. 4 over the C*H*W pixel values,
eq. 7 over the h*w token positions (and the d channels), the VAE's KL over (d, h, w), and
eq. 11 once. Our terms are computed as means (the pixel loss per pixel value, RCS per token
position), so the objective we minimise is the paper's divided by C*H*W, and a weight given
in the paper's units (``loss.rcs_weight``, ``loss.dcr_weight``, ``loss.kl_weight``: the
paper's lambda_rcs = 1, lambda_dcr = 0.1, LDM's KL weight 1e-6) becomes, with f = H / h:

    rcs (paper form: sum over d, mean over positions)   lambda / (C f^2)
    rcs (released form: mean over d, h, w)               lambda d / (C f^2)
    dcr, and the latent term of dcr_target=both          lambda / (C H W)
    kl (sum over d, h, w per image)                      lambda / (C H W)

VQGAN's own terms (codebook and commitment losses, perceptual, adversarial, LFQ's entropy)
are per-element means in VQGAN and the paper keeps VQGAN's weights for them (lambda_net), so
their weights are used as given. Adam is invariant to the overall scale of the objective, so
only these ratios matter.
"""

from __future__ import annotations

from vaevq.config import LossConfig


def effective_weights(loss: LossConfig, in_channels: int, factor: int, latent_dim: int,
                      tokens_per_image: int) -> dict[str, float]:
    """The multipliers of the VAEVQ terms as computed (means) for ``loss``'s paper-unit weights.

    ``factor`` is the downsampling factor f, ``tokens_per_image`` is h * w.
    """
    per_token = in_channels * factor * factor  # pixel values per token position: C f^2
    per_image = per_token * tokens_per_image  # C H W
    rcs = loss.rcs_weight / per_token
    if loss.rcs_form == "released":
        rcs *= latent_dim
    return {"rcs": rcs, "dcr": loss.dcr_weight / per_image, "kl": loss.kl_weight / per_image}
