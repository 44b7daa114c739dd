"""Perceptual distances: LPIPS (VGG16) and the shift-tolerant ST-LPIPS VGG."""

from vaevq.perceptual.lpips import LPIPS, NETS

__all__ = ["LPIPS", "NETS"]
