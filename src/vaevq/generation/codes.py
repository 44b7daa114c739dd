"""Token codes of images for training a generator, and LlamaGen's on-disk layout.

:func:`encode_images` runs the tokenizer's ``encode`` over image files (center crops at the
tokenizer's resolution), optionally with the horizontally flipped copy as a second augmentation
(LlamaGen's default extraction: original and flip). :func:`class_labels` follows the ImageFolder
convention (the first folder under the root names the class; sorted class names are 0..C-1).

:func:`write_llamagen` writes LlamaGen's layout (``autoregressive/train/extract_codes_c2i.py``):
``<code_path>/<dataset><size>_codes/<i>.npy`` holding (1, num_aug, h * w) int64 codes and
``<code_path>/<dataset><size>_labels/<i>.npy`` holding (1,) int64, so LlamaGen's own GPT can be
trained on vaevq tokens and its samples decoded with ``VAEVQ.decode`` (ids reshaped to (h, w)).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaevq.data import BuiltinPhotos, ImageFolderDataset
from vaevq.data.brats import SliceDataset
from vaevq.data.transforms import prepare_image
from vaevq.fileio import atomic_write, atomic_write_text


def class_labels(files: list[Path], root: str | Path) -> tuple[np.ndarray, list[str]]:
    """(labels (N,) int64, class names): the first folder below ``root`` of each file; files
    directly in ``root`` form one class named ''."""
    root = Path(root)
    names = []
    for f in files:
        rel = Path(f).resolve().relative_to(root.resolve())
        names.append(rel.parts[0] if len(rel.parts) > 1 else "")
    classes = sorted(set(names))
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[n] for n in names], dtype=np.int64), classes


def _encode_views(model, x: torch.Tensor, flip: bool) -> torch.Tensor:
    """(B, num_aug, h * w) ids of a batch (and of its horizontal flip with ``flip``), on the CPU."""
    views = [x, x.flip(-1)] if flip else [x]
    return torch.stack([model.encode(v).flatten(1) for v in views], dim=1).cpu()


@torch.no_grad()
def encode_images(model, files: list[Path], batch_size: int = 32, device: str | torch.device = "cpu",
                  flip: bool = False) -> np.ndarray:
    """(N, num_aug, h * w) int64 token ids, num_aug 2 with ``flip`` (original, flipped) else 1."""
    resolution = model.config.data.resolution
    out = []
    for i in range(0, len(files), batch_size):
        x = torch.stack([prepare_image(f, resolution) for f in files[i:i + batch_size]]).to(device)
        out.append(_encode_views(model, x, flip))
    return torch.cat(out).numpy().astype(np.int64)


def llamagen_dirs(code_path: str | Path, dataset: str, image_size: int) -> tuple[Path, Path]:
    code_path = Path(code_path)
    return code_path / f"{dataset}{image_size}_codes", code_path / f"{dataset}{image_size}_labels"


def write_llamagen(code_path: str | Path, dataset: str, image_size: int, codes: np.ndarray,
                   labels: np.ndarray) -> tuple[Path, Path]:
    """One (1, num_aug, L) codes file and one (1,) labels file per image, numbered from 0."""
    if codes.ndim != 3 or labels.shape != (codes.shape[0],):
        raise ValueError(f"codes must be (N, num_aug, L) and labels (N,); got {codes.shape} and {labels.shape}")
    codes_dir, labels_dir = llamagen_dirs(code_path, dataset, image_size)
    codes_dir.mkdir(parents=True, exist_ok=True)
    labels_dir.mkdir(parents=True, exist_ok=True)
    for i in range(codes.shape[0]):
        np.save(codes_dir / f"{i}.npy", codes[i:i + 1].astype(np.int64))
        np.save(labels_dir / f"{i}.npy", labels[i:i + 1].astype(np.int64))
    return codes_dir, labels_dir


def dataset_labels(dataset) -> tuple[np.ndarray, list[str]]:
    """(labels (N,) int64, class names) of a training dataset: the source photo of each built-in
    tile, the class folder of each image of a folder (ImageFolder order), the contrast of each
    brain slice in ``contrast_mode=separate`` with several contrasts, else one class."""
    if isinstance(dataset, SliceDataset) and dataset.contrast_mode == "separate" and dataset.n_contrasts > 1:
        contrasts = list(dataset.subjects[0].contrasts)
        return np.array([c for _, _, c in dataset.index], dtype=np.int64), contrasts
    if isinstance(dataset, BuiltinPhotos):
        names = [n.split("@")[0] for n in dataset.names]
    elif isinstance(dataset, ImageFolderDataset) and dataset.files:
        root = Path(os.path.commonpath([str(Path(f).parent) for f in dataset.files]))
        return class_labels(dataset.files, root)
    else:
        names = [""] * len(dataset)
    classes = sorted(set(names))
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[n] for n in names], dtype=np.int64), classes


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of a model's state dict (names, shapes, dtypes and bytes): which tokenizer made codes."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _latent_views(model, x: torch.Tensor, flip: bool) -> torch.Tensor:
    """(B, num_aug, d, h, w) float32 continuous latents (``encode_latent``) of a batch (and its flip)."""
    views = [x, x.flip(-1)] if flip else [x]
    return torch.stack([model.encode_latent(v).float() for v in views], dim=1).cpu()


@torch.no_grad()
def extract_codes(model, dataset, cache_dir: str | Path, flip: bool = False, batch_size: int = 64,
                  device: str | torch.device = "cpu", extra_key: dict[str, Any] | None = None,
                  ) -> tuple[np.ndarray, np.ndarray, Path]:
    """(codes (N, num_aug, h * w) int64 memory-mapped, labels (N,), folder): ``model.encode``
    over every item of ``dataset`` (and its horizontal flip with ``flip``), stored once under
    ``cache_dir/<key>/`` and reused while the key (tokenizer weights, dataset size and names, flip,
    ``extra_key``: e.g. the data settings) is the same. Files are written atomically, the key last."""
    return _extract(model, dataset, cache_dir, lambda x: _encode_views(model, x, flip), np.int64, flip,
                    batch_size, device, extra_key or {})


@torch.no_grad()
def extract_latents(model, dataset, cache_dir: str | Path, flip: bool = False, batch_size: int = 64,
                    device: str | torch.device = "cpu", extra_key: dict[str, Any] | None = None,
                    ) -> tuple[np.ndarray, np.ndarray, Path]:
    """(latents (N, num_aug, d, h, w) float32 memory-mapped, labels (N,), folder): as
    :func:`extract_codes` with ``model.encode_latent`` (what latent diffusion learns)."""
    return _extract(model, dataset, cache_dir, lambda x: _latent_views(model, x, flip), np.float32, flip,
                    batch_size, device, {"what": "latents", **(extra_key or {})})


def _extract(model, dataset, cache_dir, views, dtype, flip: bool, batch_size: int, device,
             extra_key: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, Path]:
    labels, classes = dataset_labels(dataset)
    names = getattr(dataset, "names", None) or [str(i) for i in range(len(dataset))]
    key = {"tokenizer": weights_digest(model), "items": len(dataset),
           "names": hashlib.sha256("\n".join(names).encode()).hexdigest(), "flip": flip,
           "classes": classes, **extra_key}
    folder = Path(cache_dir) / hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    key_file = folder / "key.json"
    if key_file.is_file() and json.loads(key_file.read_text()) == key:
        return np.load(folder / "codes.npy", mmap_mode="r"), np.load(folder / "labels.npy"), folder
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for start in range(0, len(dataset), batch_size):
            x = torch.stack([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]).to(device)
            chunks.append(views(x))
    finally:
        model.train(was_training)
    codes = torch.cat(chunks).numpy().astype(dtype)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "codes.npy", lambda tmp: _save_npy(tmp, codes))
    atomic_write(folder / "labels.npy", lambda tmp: _save_npy(tmp, labels))
    atomic_write_text(key_file, json.dumps(key, indent=1, sort_keys=True) + "\n")
    return np.load(folder / "codes.npy", mmap_mode="r"), labels, folder


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as fh:  # a file object: np.save would append .npy to a bare path
        np.save(fh, array)


def unigram_samples(codes: np.ndarray, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A sanity baseline for generation metrics: ``num`` sequences of the codes' length whose
    tokens are drawn independently from the codes' unigram frequencies (all positions pooled)."""
    length = int(codes.shape[-1])
    top = 0
    for start in range(0, codes.shape[0], 65536):  # chunks: a memory-mapped ImageNet is gigabytes
        top = max(top, int(np.asarray(codes[start:start + 65536]).max()) + 1)
    counts = np.zeros(top, dtype=np.int64)
    for start in range(0, codes.shape[0], 65536):
        counts += np.bincount(np.asarray(codes[start:start + 65536], dtype=np.int64).ravel(), minlength=top)
    counts = torch.from_numpy(counts).double()
    draws = torch.multinomial(counts / counts.sum(), num * length, replacement=True, generator=generator)
    return draws.view(num, length)
