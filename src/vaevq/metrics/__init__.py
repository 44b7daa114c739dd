"""Reconstruction, distribution and codebook metrics."""

from vaevq.metrics.codebook import CodebookUsage
from vaevq.metrics.frechet import FrechetDistance, GaussianStats, feature_extractor, frechet_distance
from vaevq.metrics.image import psnr, ssim, to_uint8

__all__ = ["CodebookUsage", "FrechetDistance", "GaussianStats", "feature_extractor", "frechet_distance",
           "psnr", "ssim", "to_uint8"]
