"""Tokenizer models."""

from vaevq.models.vaevq import VAEVQ, VAEVQOutput

__all__ = ["VAEVQ", "VAEVQOutput"]
