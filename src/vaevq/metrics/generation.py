"""Generation metrics on network features and logits (issue 14): Inception Score, k-NN precision
and recall, and reference statistics from an ``.npz`` file.

- :func:`inception_score`: exp(E_x KL(p(y|x) || p(y))) over ``splits`` equal parts of the samples
  (Salimans et al. 2016; 10 splits as in the common evaluators), mean and standard deviation of
  the per-split scores; ``logits`` are the classifier's pre-softmax outputs (the FID InceptionV3's
  1008-way ``fc``).
- :func:`precision_recall`: the improved precision and recall of Kynkaanniemi et al. 2019 as the
  ADM evaluator computes them: each real feature's ball has the radius of its k-th nearest real
  neighbour (k = 3, itself excluded); precision is the fraction of generated features inside at
  least one real ball, recall the fraction of real features inside at least one generated ball.
- :func:`load_reference_stats`: ``mu`` and ``sigma`` of an ``.npz`` (the layout of the ADM
  evaluator's reference batches such as ``VIRTUAL_imagenet256_labeled.npz``), or computed from
  its activations ``arr_0`` when only those are stored.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch


def inception_score(logits: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """(mean, std) of the Inception Score of ``logits`` (N, C) over ``splits`` parts."""
    if logits.dim() != 2 or logits.shape[0] < splits:
        raise ValueError(f"inception_score needs (N, C) logits with N >= splits ({splits}); "
                         f"got {tuple(logits.shape)}")
    logp = torch.log_softmax(logits.double(), dim=1)
    scores = []
    for part in torch.tensor_split(logp, splits):
        p = part.exp()
        marginal = torch.logsumexp(part, dim=0) - math.log(part.shape[0])  # log of the mean p(y)
        kl = (p * (part - marginal)).sum(1).mean()
        scores.append(float(torch.exp(kl)))
    values = np.array(scores)
    return float(values.mean()), float(values.std())


def _kth_radii(features: torch.Tensor, k: int, block: int) -> torch.Tensor:
    """Distance of each row to its k-th nearest other row."""
    radii = []
    for start in range(0, features.shape[0], block):
        d = torch.cdist(features[start:start + block], features)
        # the k+1 smallest include the point itself (distance 0)
        radii.append(d.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(radii)


def _inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, block: int) -> torch.Tensor:
    """Whether each point lies within some centre's radius."""
    inside = []
    for start in range(0, points.shape[0], block):
        d = torch.cdist(points[start:start + block], centres)
        inside.append((d <= radii[None]).any(1))
    return torch.cat(inside)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3,
                     block: int = 4096) -> tuple[float, float]:
    """(precision, recall) of generated features ``fake`` against ``real`` (N, D) each."""
    if real.shape[0] <= k or fake.shape[0] <= k:
        raise ValueError(f"precision/recall with k = {k} needs more than {k} real and generated samples")
    real, fake = real.double(), fake.double()
    precision = _inside(fake, real, _kth_radii(real, k, block), block).double().mean()
    recall = _inside(real, fake, _kth_radii(fake, k, block), block).double().mean()
    return float(precision), float(recall)


def load_reference_stats(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) from an ``.npz``: its ``mu`` and ``sigma``, or the mean and covariance of its
    activations ``arr_0`` (N, D)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference statistics {path} do not exist")
    with np.load(path) as data:
        if "mu" in data and "sigma" in data:
            mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
        elif "arr_0" in data:
            acts = data["arr_0"].astype(np.float64)
            if acts.ndim != 2 or acts.shape[0] < 2:
                raise ValueError(f"{path}: arr_0 must be (N >= 2, D) activations; got {acts.shape}")
            mu, sigma = acts.mean(0), np.cov(acts, rowvar=False)
        else:
            raise ValueError(f"{path} holds neither mu/sigma nor activations arr_0 "
                             f"(keys: {', '.join(data.files)})")
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not match")
    return mu, sigma
