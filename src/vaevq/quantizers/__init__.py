"""Quantizers, selected by ``model.quantizer`` through a registry."""

from vaevq.quantizers import baselines, lc, vlq  # noqa: F401  (register the quantizers)
from vaevq.quantizers.base import (
    QUANTIZERS,
    Codebook,
    CodebookQuantizer,
    QuantizerOutput,
    build_quantizer,
)
from vaevq.quantizers.search import nearest_code

__all__ = ["QUANTIZERS", "Codebook", "CodebookQuantizer", "QuantizerOutput", "build_quantizer", "nearest_code"]
