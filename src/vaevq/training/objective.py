"""The full VQGAN objective around a tokenizer: LPIPS perceptual loss and PatchGAN training.

The model's own ``out.losses`` (rec, rcs, dcr, kl, quantizer terms) are computed by the model.
:class:`Objective` adds, when switched on in the config:

- ``perceptual``: ``loss.perceptual_weight`` x mean LPIPS(x, x_hat) on each decoding path,
  combined over the paths like the pixel loss (``loss.rec_paths``: sum or mean);
- ``g`` (generator): the adversarial loss of the reconstructions, averaged over the decoding
  paths (x_q, and x_c for variational quantizers), times ``gan.weight`` and, if
  ``gan.adaptive``, VQGAN's adaptive weight ||grad rec+perceptual|| / ||grad g|| at the
  decoder's last layer (clamped to [0, gan.max_adaptive]); logged as ``g_weight``;
- the discriminator loss ``d`` (hinge or vanilla) of real images against the reconstructions
  of both paths (detached), plus ``gan.lecam_weight`` x LeCam regularization.

Before ``gan.start`` neither the generator term nor the discriminator step is active.
"""

from __future__ import annotations

import torch
from torch import nn

from vaevq.config import Config
from vaevq.losses.adversarial import D_LOSSES, G_LOSSES, LeCam, adaptive_weight
from vaevq.models.discriminator import NLayerDiscriminator
from vaevq.perceptual import LPIPS


class Objective(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        loss, gan = config.loss, config.gan
        self.perceptual: LPIPS | None = None
        if loss.perceptual_weight > 0:
            self.perceptual = LPIPS(loss.perceptual_net, weights=loss.perceptual_weights,
                                    trunk_weights=loss.perceptual_trunk_weights)
        self.discriminator: NLayerDiscriminator | None = None
        self.lecam: LeCam | None = None
        if gan.weight > 0:
            self.discriminator = NLayerDiscriminator(config.model.in_channels, gan.channels, gan.layers, gan.norm)
            if gan.lecam_weight > 0:
                self.lecam = LeCam(gan.lecam_decay)

    @property
    def adversarial(self) -> bool:
        return self.discriminator is not None

    def adversarial_active(self, step: int) -> bool:
        return self.discriminator is not None and step >= self.config.gan.start

    @staticmethod
    def paths(out) -> list[torch.Tensor]:
        return [out.rec_q] + ([out.rec_c] if out.rec_c is not None else [])

    def generator_losses(self, x: torch.Tensor, out, last_layer: torch.Tensor | None,
                         step: int) -> dict[str, torch.Tensor]:
        """Extra generator terms (weighted) and the new ``total``; ``out.losses`` is not modified."""
        losses = dict(out.losses)
        paths = self.paths(out)
        nll = losses["rec"]
        if self.perceptual is not None:
            with torch.no_grad():  # the real image's features, computed once for every path
                fx = self.perceptual.features(x)
            terms = torch.stack([self.perceptual(fx, p).mean() for p in paths])
            p = terms.sum() if self.config.loss.rec_paths == "sum" else terms.mean()
            losses["perceptual"] = self.config.loss.perceptual_weight * p
            nll = nll + losses["perceptual"]
        if self.adversarial_active(step):
            gan = self.config.gan
            disc = self.discriminator
            disc.requires_grad_(False)
            try:
                g = torch.stack([G_LOSSES[gan.gen_loss](disc(p)) for p in paths]).mean()
            finally:
                disc.requires_grad_(True)
            if gan.adaptive:
                if last_layer is None:
                    raise ValueError("gan.adaptive needs the decoder's last layer")
                weight = adaptive_weight(nll, g, last_layer, gan.max_adaptive) * gan.weight
            else:
                weight = torch.tensor(gan.weight, device=x.device)
            losses["g_weight"] = weight.detach()
            losses["g"] = weight * g
        losses["total"] = torch.stack([v for k, v in losses.items() if k not in ("total", "g_weight")]).sum()
        return losses

    def discriminator_loss(self, x: torch.Tensor, out) -> dict[str, torch.Tensor]:
        """Discriminator loss on real x against the detached reconstructions of every path."""
        gan = self.config.gan
        fakes = torch.cat([p.detach() for p in self.paths(out)])
        logits_real = self.discriminator(x.detach())
        logits_fake = self.discriminator(fakes)
        d = D_LOSSES[gan.disc_loss](logits_real, logits_fake)
        result = {"d": d, "logits_real": logits_real.detach().mean(), "logits_fake": logits_fake.detach().mean()}
        if self.lecam is not None:
            reg = gan.lecam_weight * self.lecam(logits_real, logits_fake)
            self.lecam.update(logits_real, logits_fake)
            result["lecam"] = reg
            d = d + reg
        result["d_total"] = d
        return result

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return list(self.discriminator.parameters()) if self.discriminator is not None else []
