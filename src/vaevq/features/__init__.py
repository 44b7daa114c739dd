"""Pretrained feature networks (read from weight files that ship in wheels; no torchvision)."""

from vaevq.features.effnet import EFFNET_LITE0, EfficientNetLite0

__all__ = ["EFFNET_LITE0", "EfficientNetLite0"]
