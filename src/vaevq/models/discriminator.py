"""The PatchGAN discriminator lives with the adversarial loss (:mod:`vaevq.losses.discriminator`);
this name stays for code that imported it from here."""

from vaevq.losses.discriminator import NLayerDiscriminator

__all__ = ["NLayerDiscriminator"]
