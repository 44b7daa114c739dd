"""Picture grids: originals and reconstructions side by side."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from vaevq.fileio import atomic_write
from vaevq.metrics.image import to_uint8


def image_grid(rows: list[torch.Tensor], scale: int = 1, pad: int = 2) -> Image.Image:
    """rows: tensors (B, C, H, W) in [-1, 1], one grid row each (same B, H, W) -> PIL image."""
    tiles = torch.stack(rows)  # (R, B, C, H, W)
    r, b, c, h, w = tiles.shape
    if scale > 1:
        tiles = F.interpolate(tiles.flatten(0, 1), scale_factor=scale, mode="nearest")
        tiles = tiles.view(r, b, c, h * scale, w * scale)
        h, w = h * scale, w * scale
    canvas = torch.ones(c, r * (h + pad) + pad, b * (w + pad) + pad)
    for i in range(r):
        for j in range(b):
            top, left = pad + i * (h + pad), pad + j * (w + pad)
            canvas[:, top : top + h, left : left + w] = tiles[i, j].float().cpu()
    array = to_uint8(canvas).permute(1, 2, 0).numpy()
    return Image.fromarray(array if c == 3 else array[..., 0])


def save_grid(rows: list[torch.Tensor], path: str | Path, scale: int = 1) -> None:
    grid = image_grid(rows, scale)
    atomic_write(path, lambda tmp: grid.save(tmp, format="PNG"))


@torch.no_grad()
def reconstruction_grid(model, images: torch.Tensor, path: str | Path) -> None:
    """Rows: originals, the continuous path (variational models), the quantized path."""
    out = model.reconstruct_paths(images)
    rows = [images] + ([out.rec_c] if out.rec_c is not None else []) + [out.rec_q]
    scale = max(1, 128 // images.shape[-1])
    save_grid(rows, path, scale)
