"""Tokenizer models."""

from vaevq.models.vaevq import VAEVQ, Reconstruction, VAEVQOutput

__all__ = ["VAEVQ", "Reconstruction", "VAEVQOutput"]
