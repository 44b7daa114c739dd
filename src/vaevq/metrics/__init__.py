"""Reconstruction and codebook metrics."""

from vaevq.metrics.codebook import CodebookUsage
from vaevq.metrics.image import psnr, ssim, to_uint8

__all__ = ["CodebookUsage", "psnr", "ssim", "to_uint8"]
