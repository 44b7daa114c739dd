"""The one loss module: every weight of the objective and its total (SPEC §6).

A quantizer returns unweighted terms (``QuantizerOutput.terms``); the model decodes; this module
weighs everything and sums it:

- ``rec``: the pixel loss (``loss.rec``) on each decoding path, summed over the paths (paper eq. 4)
  or averaged (``loss.rec_paths=mean``, the released code);
- the quantizer's terms, each with the weight rule its registry entry names (:data:`WEIGHT_RULES`:
  ``rcs``, ``dcr``, ``dcr_latent`` and ``kl`` converted from the paper's per-image sums by
  :func:`~vaevq.losses.convention.effective_weights`; VQGAN's codebook and commitment terms and
  LFQ's entropy term with their weights as given);
- ``perceptual``: ``loss.perceptual_weight`` x mean LPIPS on each path, combined over the paths
  like ``rec``;
- ``g``: the adversarial loss of the reconstructions averaged over the paths, times ``gan.weight``
  and, if ``gan.adaptive``, VQGAN's adaptive weight ||grad nll|| / ||grad g|| at the decoder's
  last layer (clamped to [0, gan.max_adaptive]); logged as ``g_weight``;
- the discriminator loss ``d`` (hinge or vanilla) of real images against the detached
  reconstructions of every path, plus ``gan.lecam_weight`` x LeCam regularization.

Before ``gan.start`` neither the generator term nor the discriminator step is active. A term whose
weight is 0 is not computed and is absent from the losses.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from vaevq.config import Config, ConfigError, LossConfig, ModelConfig
from vaevq.losses.adversarial import D_LOSSES, G_LOSSES, LeCam, adaptive_weight
from vaevq.losses.convention import effective_weights
from vaevq.losses.discriminator import NLayerDiscriminator
from vaevq.losses.vaevq_losses import reconstruction_loss
from vaevq.perceptual import LPIPS

Rule = Callable[[Config, dict[str, float]], float]

# a rule: (the config keys it reads, weight of the term given the config and the effective
# weights of the paper's terms). A quantizer's registry entry names one rule per term.
WEIGHT_RULES: dict[str, tuple[tuple[str, ...], Rule]] = {
    "one": ((), lambda c, e: 1.0),  # VQGAN's codebook loss
    "beta": (("loss.commitment_beta",), lambda c, e: c.loss.commitment_beta),
    "codebook": (("loss.codebook_weight",), lambda c, e: c.loss.codebook_weight),
    "codebook_beta": (("loss.codebook_weight", "loss.commitment_beta"),
                      lambda c, e: c.loss.codebook_weight * c.loss.commitment_beta),
    "rcs": (("loss.rcs_weight",), lambda c, e: e["rcs"]),
    "dcr": (("loss.dcr_weight",), lambda c, e: e["dcr"]),
    "dcr_latent": (("loss.dcr_weight",), lambda c, e: e["dcr"] if c.loss.dcr_target == "both" else 0.0),
    "kl": (("loss.kl_weight",), lambda c, e: e["kl"]),
    "entropy": (("model.lfq_entropy_weight",), lambda c, e: c.model.lfq_entropy_weight),
}
# every key that weighs a quantizer's term: one given (non-zero, not the default) for a term the
# chosen quantizer never produces is an error naming the key
WEIGHT_KEYS = ("loss.rcs_weight", "loss.dcr_weight", "loss.kl_weight", "loss.codebook_weight",
               "loss.commitment_beta", "model.lfq_entropy_weight")
DEFAULTS = {"loss": LossConfig(), "model": ModelConfig()}


def _value(config: Config, key: str):
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


def check_weights(config: Config, rules: dict[str, str]) -> None:
    """ConfigError for a weight given for a term that ``model.quantizer`` never produces
    (``rules``: its registry entry's term -> rule)."""
    used = {key for rule in rules.values() for key in WEIGHT_RULES[rule][0]}
    for key in WEIGHT_KEYS:
        value, default = _value(config, key), getattr(DEFAULTS[key.split(".")[0]], key.split(".")[1])
        if key not in used and value not in (0, 0.0, default):
            terms = ", ".join(sorted(rules)) or "no loss terms"
            raise ConfigError(f"{key}={value} weighs a term that model.quantizer={config.model.quantizer} never "
                              f"produces (it produces {terms}); remove {key}")


def term_weights(config: Config, rules: dict[str, str], tokens_per_image: int = 1) -> dict[str, float]:
    """The weight of each term a quantizer can produce (``rules``: term -> rule), in its order."""
    m = config.model
    eff = effective_weights(config.loss, m.in_channels, 2 ** (len(m.ch_mult) - 1), m.latent_dim, tokens_per_image)
    return {term: WEIGHT_RULES[rule][1](config, eff) for term, rule in rules.items()}


def active_terms(config: Config, rules: dict[str, str]) -> list[str]:
    """The terms with a non-zero weight: the only ones a quantizer is asked to compute."""
    return [t for t, w in term_weights(config, rules).items() if w != 0.0]


def combine_paths(values: torch.Tensor, how: str) -> torch.Tensor:
    """One value per decoding path -> their sum (paper eq. 4) or mean (released code)."""
    total = values.sum()
    return total / len(values) if how == "mean" else total


def total(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    """The objective: the sum of every weighted term (``total`` and ``g_weight`` are not terms)."""
    return torch.stack([v for k, v in losses.items() if k not in ("total", "g_weight")]).sum()


def weighted_terms(config: Config, rules: dict[str, str], terms: dict[str, torch.Tensor],
                   tokens_per_image: int = 1) -> dict[str, torch.Tensor]:
    """A quantizer's unweighted ``terms`` times their weights (``rules``: its registry entry's)."""
    weights = term_weights(config, rules, tokens_per_image)
    return {name: weights[name] * value for name, value in terms.items()}


def tokenizer_losses(config: Config, rules: dict[str, str], x: torch.Tensor, paths: list[torch.Tensor],
                     terms: dict[str, torch.Tensor], tokens_per_image: int) -> dict[str, torch.Tensor]:
    """``rec`` over the decoding ``paths`` (rec_q first), the quantizer's ``terms`` weighted, and
    ``total``: the model's own objective (``VAEVQ.forward``'s ``out.losses``)."""
    rec = combine_paths(torch.stack([reconstruction_loss(x, p, config.loss.rec) for p in paths]),
                        config.loss.rec_paths)
    losses = {"rec": rec, **weighted_terms(config, rules, terms, tokens_per_image)}
    losses["total"] = total(losses)
    return losses


class Objective(nn.Module):
    """The terms around the tokenizer's own: LPIPS perceptual loss and PatchGAN training.
    ``perceptual`` / ``discriminator``: networks to use instead of building them from the config."""

    def __init__(self, config: Config, perceptual: LPIPS | None = None,
                 discriminator: nn.Module | None = None):
        super().__init__()
        self.config = config
        loss, gan = config.loss, config.gan
        self.perceptual: LPIPS | None = None
        if loss.perceptual_weight > 0:
            self.perceptual = perceptual or LPIPS(loss.perceptual_net, weights=loss.perceptual_weights,
                                                  trunk_weights=loss.perceptual_trunk_weights)
        self.discriminator: nn.Module | None = None
        self.lecam: LeCam | None = None
        if gan.weight > 0:
            self.discriminator = discriminator or NLayerDiscriminator(config.model.in_channels, gan.channels,
                                                                      gan.layers, gan.norm)
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
        """The model's weighted terms, the perceptual and adversarial ones, and the new ``total``;
        ``out.losses`` is not modified."""
        losses = dict(out.losses)
        paths = self.paths(out)
        nll = losses["rec"]
        if self.perceptual is not None:
            with torch.no_grad():  # the real image's features, computed once for every path
                fx = self.perceptual.features(x)
            terms = torch.stack([self.perceptual(fx, p).mean() for p in paths])
            p = combine_paths(terms, self.config.loss.rec_paths)
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
        losses["total"] = total(losses)
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
