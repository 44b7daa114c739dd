"""Reconstruction, distribution, generation and codebook metrics."""

from vaevq.metrics.codebook import CodebookUsage
from vaevq.metrics.frechet import FrechetDistance, GaussianStats, feature_extractor, frechet_distance
from vaevq.metrics.generation import inception_score, load_reference_stats, precision_recall
from vaevq.metrics.image import psnr, ssim, to_uint8

__all__ = ["CodebookUsage", "FrechetDistance", "GaussianStats", "feature_extractor", "frechet_distance",
           "inception_score", "load_reference_stats", "precision_recall", "psnr", "ssim", "to_uint8"]
