"""Quantizers, selected by ``model.quantizer`` through a registry."""

from vaevq.quantizers import vlq  # noqa: F401  (registers vlq and vq)
from vaevq.quantizers.base import QUANTIZERS, Codebook, QuantizerOutput, build_quantizer
from vaevq.quantizers.search import nearest_code

__all__ = ["QUANTIZERS", "Codebook", "QuantizerOutput", "build_quantizer", "nearest_code"]
