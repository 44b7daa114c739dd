"""Image loading and the shorter-side-resize + crop used everywhere (SPEC §5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vaevq.metrics.image import to_uint8

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def load_rgb(path: str | Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


def resize_shorter_side(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    return img.resize(new, Image.BICUBIC, reducing_gap=None if scale >= 1 else 3.0)


def crop(img: Image.Image, size: int, generator: torch.Generator | None = None) -> Image.Image:
    """Center crop, or a uniformly random crop when a generator is given."""
    w, h = img.size
    if generator is None:
        left, top = (w - size) // 2, (h - size) // 2
    else:
        left = int(torch.randint(0, w - size + 1, (1,), generator=generator))
        top = int(torch.randint(0, h - size + 1, (1,), generator=generator))
    return img.crop((left, top, left + size, top + size))


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> (3, H, W) float32 in [-1, 1]."""
    array = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 127.5 - 1.0


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) in [-1, 1] -> PIL RGB."""

    return Image.fromarray(to_uint8(image).permute(1, 2, 0).cpu().numpy())


def prepare_image(path: str | Path, resolution: int) -> torch.Tensor:
    """The evaluation transform: shorter side to ``resolution``, center crop, [-1, 1]."""
    return to_tensor(crop(resize_shorter_side(load_rgb(path), resolution), resolution))


def list_images(root: str | Path) -> list[Path]:
    root = Path(root)
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
