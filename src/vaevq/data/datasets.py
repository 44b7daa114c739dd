"""Datasets: the built-in photo tiles and a folder of images (ImageNet layout accepted).

Items are requested as ``dataset[(index, aug_seed)]`` (or a plain index for no augmentation),
so random crops and flips are a pure function of the seed: training is reproducible and
resumes exactly, with any number of loader workers.
"""

from __future__ import annotations

import hashlib
import os
import sys
from importlib import resources
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from vaevq.config import Config, ConfigError
from vaevq.data.base import DescribedDataset
from vaevq.data.brats import (
    DataProblem,
    brain_eval_dataset,
    build_brain_datasets,
    default_cache_dir,
    warm_brain_cache,
)
from vaevq.data.scan import read_excluded, scan_images
from vaevq.data.transforms import crop, list_images, load_rgb, resize_shorter_side, shown, to_tensor
from vaevq.distributed import barrier

# Real photographs that ship inside scikit-image (training) and scikit-learn (evaluation).
BUILTIN_TRAIN = [
    ("skimage.data", "astronaut.png"),
    ("skimage.data", "chelsea.png"),
    ("skimage.data", "coffee.png"),
    ("skimage.data", "rocket.jpg"),
    ("skimage.data", "motorcycle_left.png"),
    ("skimage.data", "motorcycle_right.png"),
    ("skimage.data", "hubble_deep_field.jpg"),
    ("skimage.data", "ihc.png"),
]
BUILTIN_EVAL = [
    ("sklearn.datasets", "images/china.jpg"),
    ("sklearn.datasets", "images/flower.jpg"),
]
TRAIN_SCALES = (4, 8)  # shorter side = resolution * scale
EVAL_SCALES = (4,)


def _split_item(item) -> tuple[int, int | None]:
    if isinstance(item, tuple):
        return item
    return int(item), None


class _Augmenting(DescribedDataset):
    def __init__(self, random_flip: bool):
        super().__init__()
        self.random_flip = random_flip

    def _flip(self, image: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        if self.random_flip and gen is not None and bool(torch.rand(1, generator=gen) < 0.5):
            return image.flip(-1)
        return image


def _builtin_images(split: str, resolution: int) -> list[tuple[str, int, torch.Tensor]]:
    """(name, scale, image (3, H, W) in [-1, 1]) of the built-in photos of a split."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be train or eval, got {split!r}")
    sources = BUILTIN_TRAIN if split == "train" else BUILTIN_EVAL
    scales = TRAIN_SCALES if split == "train" else EVAL_SCALES
    images = []
    for package, name in sources:
        path = resources.files(package) / name
        with resources.as_file(path) as real:
            if not Path(real).is_file():
                raise FileNotFoundError(f"built-in photo {name} not found in {package} ({real})")
            photo = load_rgb(real)
        images += [(name, s, to_tensor(resize_shorter_side(photo, resolution * s))) for s in scales]
    return images


def _tile_count(images: list[tuple[str, int, torch.Tensor]], resolution: int, stride: int) -> int:
    return sum(((im.shape[1] - resolution) // stride + 1) * ((im.shape[2] - resolution) // stride + 1)
               for _, _, im in images)


def token_stride(resolution: int, tokens_per_tile: int, min_tokens: int) -> int:
    """The largest stride (pixels) at which the held-out photos give at least ``min_tokens``
    tokens (1 if even that is too few)."""
    images = _builtin_images("eval", resolution)
    for stride in range(max(1, resolution // 2), 0, -1):
        if _tile_count(images, resolution, stride) * tokens_per_tile >= min_tokens:
            return stride
    return 1


class BuiltinPhotos(_Augmenting):
    """Overlapping tiles of real photos, resized to a few scales.

    split "train": scikit-image's astronaut, chelsea, coffee, rocket, both motorcycle views,
    hubble_deep_field and immunohistochemistry at shorter side 4x and 8x the resolution.
    split "eval": scikit-learn's china.jpg and flower.jpg at 4x. Deterministic. ``stride``:
    pixels between tiles (default resolution/2); the evaluation's token statistics use a
    denser stride (:func:`token_stride`).
    """

    def __init__(self, split: str, resolution: int, random_flip: bool = False, stride: int | None = None):
        super().__init__(random_flip and split == "train")
        stride = max(1, resolution // 2) if stride is None else stride
        if stride < 1:
            raise ValueError(f"stride must be at least 1 pixel, got {stride}")
        self.stride = stride
        tiles, names = [], []
        for name, scale, image in _builtin_images(split, resolution):
            windows = image.unfold(1, resolution, stride).unfold(2, resolution, stride)
            windows = windows.permute(1, 2, 0, 3, 4).reshape(-1, 3, resolution, resolution)
            tiles.append(windows)
            names += [f"{Path(name).stem}@{scale}x#{i}" for i in range(windows.shape[0])]
        self.tiles = torch.cat(tiles).contiguous()  # (N, 3, r, r) in [-1, 1]
        self.names = names

    def __len__(self) -> int:
        return self.tiles.shape[0]

    def __getitem__(self, item) -> torch.Tensor:
        index, seed = _split_item(item)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        return self._flip(self.tiles[index], gen)


class ImageFolderDataset(_Augmenting):
    """Every image under a folder (recursively): shorter side resized, then a center crop
    (or a random crop when ``random_crop``), optional horizontal flip."""

    def __init__(self, files: list[Path], resolution: int, random_crop: bool = False,
                 random_flip: bool = False, on_error: str = "skip"):
        super().__init__(random_flip)
        self.files = files
        self.resolution = resolution
        self.random_crop = random_crop
        self.on_error = on_error
        self.names = [shown(f) for f in files]
        self.excluded: dict[str, str] | None = None  # files left out before training (RUN/excluded.json)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item) -> torch.Tensor:
        index, seed = _split_item(item)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        for attempt in range(min(len(self.files), 16)):
            # a file that fails now (changed since the scan) is replaced by the next one, the same
            # on every run and resume; data.on_error=stop raises instead
            path = self.files[(index + attempt) % len(self.files)]
            try:
                img: Image.Image = resize_shorter_side(load_rgb(path), self.resolution)
                break
            except ValueError as err:
                if self.on_error == "stop":
                    raise
                print(f"[vaevq] skipped: {err}; used the next image instead", file=sys.stderr)
        else:
            raise ValueError(f"{len(self.files)} image(s) from {shown(self.files[index])} on cannot be read")
        img = crop(img, self.resolution, gen if self.random_crop else None)
        return self._flip(to_tensor(img), gen)


def _held_out(path: Path, root: Path, fraction: float) -> bool:
    # the name's bytes (as UTF-8 for valid names: the same split as before; any bytes otherwise)
    digest = hashlib.md5(os.fsencode(str(path.relative_to(root)))).hexdigest()
    return int(digest[:8], 16) / 2**32 < fraction


def image_folder_splits(root: str | Path, eval_fraction: float, problems: list | None = None,
                        ) -> tuple[list[Path], list[Path]]:
    """(train files, eval files): root/train and root/val (or validation) when present,
    otherwise a deterministic hash split of every image under root. Links that lead nowhere
    (broken, loops) are appended to ``problems`` as (path, reason)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"data.root {root} does not exist or is not a folder")
    train_dir = root / "train"
    eval_dir = next((root / n for n in ("val", "validation", "eval", "test") if (root / n).is_dir()),
                    None)
    if train_dir.is_dir() and eval_dir is not None:
        train, held = list_images(train_dir, problems), list_images(eval_dir, problems)
    else:
        files = list_images(root, problems)
        held = [f for f in files if _held_out(f, root, eval_fraction)]
        train = [f for f in files if not _held_out(f, root, eval_fraction)]
        if files and not held:
            held = train[-1:]
            train = train[:-1]
    if not train:
        raise ConfigError(f"no training images (.jpg, .png, ...) found under {root}")
    if not held:
        raise ConfigError(f"no evaluation images found under {root}")
    return train, held


def build_datasets(config: Config, run_dir: str | Path | None = None,
                   progress: bool = False) -> tuple[Dataset, Dataset]:
    """(train, eval) datasets for the config's data section. For brain MRI, ``run_dir`` holds the
    run's split by subject (split.json) when it has one."""
    d = config.data
    if d.is_brain:

        return build_brain_datasets(config, run_dir, progress)
    if d.source == "builtin":
        return (BuiltinPhotos("train", d.resolution, d.random_flip),
                BuiltinPhotos("eval", d.resolution))
    if not d.root:
        raise ConfigError(f"{config.name}: data.root is not set; pass data.root=PATH "
                          "(a folder of images; ImageNet layout with train/ and val/ accepted)")
    links: list = []
    train, held = image_folder_splits(d.root, d.eval_fraction, links)
    recorded = read_excluded(run_dir)
    if recorded is not None:  # a resumed run leaves out exactly what it left out at its start
        bad = {f: recorded[shown(f)] for f in train + held if shown(f) in recorded}
    else:
        bad = scan_images(train + held, default_cache_dir(), progress) if d.scan_images else {}
    problems = [DataProblem(p.parent.name, shown(p), reason) for p, reason in links]
    problems += [DataProblem(f.parent.name, shown(f), reason) for f, reason in bad.items()]
    if problems and d.on_error == "stop":
        raise ConfigError(f"{len(problems)} unusable file(s) under data.root {d.root} (first: {problems[0]}); "
                          "data.on_error=stop (skip leaves them out)")
    train = [f for f in train if f not in bad]
    held = [f for f in held if f not in bad]
    if not train or not held:
        raise ConfigError(f"no readable {'training' if not train else 'evaluation'} images under {d.root} "
                          f"({len(bad)} unreadable)")
    train_set = ImageFolderDataset(train, d.resolution, d.random_crop, d.random_flip, d.on_error)
    train_set.problems = problems
    train_set.excluded = {shown(f): reason for f, reason in bad.items()}
    return train_set, ImageFolderDataset(held, d.resolution, on_error=d.on_error)


def warm_image_scan(config: Config, run_dir: str | Path | None = None, progress: bool = False) -> None:
    """Many processes: the node's first process decodes an image folder's files once (verdicts go
    to the shared cache) before the others read them; the caller puts a barrier after this. Nothing
    to do for other sources, with ``data.scan_images`` off, or when the run already recorded what
    it left out (a resumed run)."""
    d = config.data
    if d.is_brain or d.source == "builtin" or not d.root or not d.scan_images:
        return
    if read_excluded(run_dir) is not None:
        return
    try:
        train, held = image_folder_splits(d.root, d.eval_fraction, [])
    except (ConfigError, OSError):
        return  # build_datasets raises it on every rank after the barrier (no rank left waiting)
    scan_images(train + held, default_cache_dir(), progress)


def warm_data_caches(config: Config, rank: int, world: int, local_main: bool,
                     run_dir: str | Path | None = None, progress: bool = False) -> None:
    """Many processes, before any of them builds its datasets (every trainer calls this): the brain
    slice cache prepared in parallel, an image folder scanned once per machine by its first process;
    ends in a barrier, after which every rank's build_datasets reads the caches."""
    warm_brain_cache(config, rank, world, local_main)
    if local_main:
        warm_image_scan(config, run_dir, progress)
    barrier()


def build_token_dataset(config: Config, path: str | None = None) -> Dataset | None:
    """Where the evaluation counts its token statistics when that is not the image split itself:
    for the built-in held-out photos (``path`` None or built-in), the same photos tiled at the
    largest stride that gives at least ``data.usage_tokens`` tokens; otherwise None."""
    d = config.data
    builtin = d.source == "builtin" if path is None else path in ("built-in", "builtin")
    if not builtin or d.usage_tokens <= 0:
        return None
    factor = 2 ** (len(config.model.ch_mult) - 1)
    stride = token_stride(d.resolution, (d.resolution // factor) ** 2, d.usage_tokens)
    return BuiltinPhotos("eval", d.resolution, stride=stride)


def build_eval_dataset(config: Config, path: str | None = None,
                       run_dir: str | Path | None = None) -> Dataset:
    """The held-out split of the config (the run's own split, for brain MRI), or every image
    under ``path`` (center crops; for brain MRI a BraTS root or one NIfTI volume)."""
    if path is None:
        return build_datasets(config, run_dir)[1]
    if config.data.is_brain:

        return brain_eval_dataset(config, path)
    if path == "built-in" or path == "builtin":
        return BuiltinPhotos("eval", config.data.resolution)
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"--data {p} does not exist")
    files = [p] if p.is_file() else list_images(p)
    if not files:
        raise ConfigError(f"no images (.jpg, .png, ...) found under {p}")
    return ImageFolderDataset(files, config.data.resolution)
