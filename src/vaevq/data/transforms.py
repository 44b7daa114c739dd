"""Image loading and the shorter-side-resize + crop used everywhere (SPEC §5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vaevq.metrics.image import to_uint8

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white (what viewers show)


def shown(path) -> str:
    """A path as text that can always be printed or written (a file name that is not valid UTF-8
    keeps its undecodable bytes as \\x escapes)."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class ImageReadError(ValueError):
    """An image file that cannot be used; ``reason`` without the path (the message has both)."""

    def __init__(self, path, reason: str):
        super().__init__(f"cannot read image {shown(path)}: {reason}")
        self.path, self.reason = path, reason


def load_rgb(path: str | Path) -> Image.Image:
    """An image file as 8-bit RGB. 16-bit (and 32-bit integer) greyscale is scaled to 8 bits
    (65535 -> 255) rather than clipped; an alpha channel (RGBA, LA, palette transparency) is
    composited on white. Unreadable, truncated or oversized files (PIL's decompression-bomb
    limit) raise a ValueError naming the file."""
    try:
        with Image.open(path) as img:
            return _to_rgb(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageReadError(path, f"{type(err).__name__}: {err}" if isinstance(err, Image.DecompressionBombError)
                             else str(err)) from None


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode.startswith("I"):  # I;16, I;16B, I (PNG 16-bit greyscale): scale, do not clip at 255
        array = np.asarray(img).astype(np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or array.max() <= 65535 else float(array.max())
        grey = np.clip(np.round(array / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if img.mode == "F":
        array = np.asarray(img, dtype=np.float64)
        span = max(float(array.max() - array.min()), 1e-12)
        return Image.fromarray(np.round((array - array.min()) / span * 255).astype(np.uint8)).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


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


def list_images(root: str | Path, problems: list | None = None) -> list[Path]:
    """Image files under ``root`` (recursively, sorted). Links that lead nowhere (broken, or a
    loop) are not images: with ``problems`` given, each is appended as (path, reason)."""
    root = Path(root)
    found = []
    for p in root.rglob("*"):
        if p.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if p.is_file():
            found.append(p)
        elif p.is_symlink() and problems is not None:
            try:
                p.resolve(strict=True)
                reason = "a link to something that is not a file"
            except RuntimeError:
                reason = "a symbolic link loop"
            except OSError as err:
                reason = f"a broken link ({err.strerror or err})"
            problems.append((p, reason))
    return sorted(found)
