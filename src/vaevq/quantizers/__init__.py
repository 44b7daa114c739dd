"""Quantizers, selected by ``model.quantizer`` through a registry (one file per quantizer family;
adding one is a new file and its ``@register_quantizer``: docs/design.md)."""

from vaevq.quantizers import baselines, lc, vlq  # noqa: F401  (register the quantizers)
from vaevq.quantizers.base import (
    QUANTIZERS,
    Codebook,
    CodebookQuantizer,
    Quantizer,
    QuantizerOutput,
    QuantizerSpec,
    build_quantizer,
    quantizer_spec,
    register_quantizer,
)
from vaevq.quantizers.search import nearest_code

__all__ = ["QUANTIZERS", "Codebook", "CodebookQuantizer", "Quantizer", "QuantizerOutput", "QuantizerSpec",
           "build_quantizer", "nearest_code", "quantizer_spec", "register_quantizer"]
