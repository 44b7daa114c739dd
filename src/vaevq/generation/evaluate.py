"""Generation metrics of a generator run: gFID, Inception Score, precision and recall (+ the same
on EfficientNet-Lite0 features, labelled not comparable with published numbers), with two sanity
baselines scored the same way on the same reference.

Networks: the standard FID InceptionV3 (pool3 features, 1008-way ``fc`` logits) when its weights
are found, and EfficientNet-Lite0 (pooled 1280 features, ImageNet logits) always. Per network:
the Frechet distance to the reference (``gfid`` / ``fid_effnet``), the Inception Score of the
logits over 10 splits (``inception_score`` / ``is_effnet``), and k-NN precision and recall with
k = 3 against the reference features (``precision`` / ``precision_effnet``, ...).

References: the training split's real images (default; at most ``max_reference`` spread over
the split), a folder of images (center crops), or an ``.npz`` in the layout of the ADM evaluator's
reference batches (``mu``/``sigma`` of pool3 for gFID; ``arr_0`` images (N, H, W, 3) uint8, when
present, for precision/recall and the EfficientNet numbers; ``arr_0`` activations (N, 2048) also
read).

Baselines: ``unigram`` (tokens drawn independently from the training codes' unigram
frequencies, decoded by the tokenizer: a generator that learnt nothing about structure should do
no better), for latent diffusion also ``noise`` (latents drawn from N(0, I) in the diffused,
scaled space, i.e. the DDIM starting point, decoded through their nearest codes: what the
sampler turns into images), and ``reconstruction`` (the tokenizer's reconstructions of real
training images: the floor any generator on these tokens can reach).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from vaevq.data import build_datasets
from vaevq.data.transforms import list_images, prepare_image
from vaevq.features.effnet import EfficientNetLite0
from vaevq.features.inception import FIDInceptionV3
from vaevq.fileio import atomic_write
from vaevq.generation.codes import extract_codes, unigram_samples, weights_digest
from vaevq.generation.gpt import latent_grid
from vaevq.generation.sample import (
    class_plan,
    decode_ids,
    load_generator,
    sample_images,
    sampling_settings,
    tokenizer_split_dir,
)
from vaevq.generation.trainer import codes_cache_dir, codes_key
from vaevq.metrics import frechet_distance, inception_score, precision_recall
from vaevq.weights import WeightsNotFoundError

SPLITS = 10  # Inception Score splits
K_NEAREST = 3  # precision/recall neighbourhood


class FeatureNet:
    """A frozen network mapping images in [-1, 1] to (features (B, F), logits (B, C))."""

    def __init__(self, name: str, module: torch.nn.Module, native: int, suffix: str, device):
        self.name, self.suffix, self.native = name, suffix, native
        self.module = module.to(device).eval().requires_grad_(False)
        self.device = device

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.to(self.device).float().clamp(-1, 1)
        if x.shape[-2:] != (self.native, self.native):
            x = F.interpolate(x, size=(self.native, self.native), mode="bilinear", align_corners=False)
        if hasattr(self.module, "pool3"):  # the FID InceptionV3 (its 1008-way fc gives the logits)
            feats = self.module.pool3(x)
            logits = self.module.fc(feats)
        else:
            feats = self.module.pooled(x)
            logits = self.module._fc(feats)
        return feats.double().cpu(), logits.double().cpu()


def feature_nets(inception_weights: str | None = None, device="cpu", download: bool = True,
                 ) -> tuple[list[FeatureNet], dict[str, str]]:
    """The networks available here, and a note for each that is not."""
    nets, notes = [], {}
    try:
        nets.append(FeatureNet("inception-v3-fid", FIDInceptionV3.pretrained(inception_weights, download), 299, "",
                               device))
    except WeightsNotFoundError as err:
        notes["gfid"] = ("unavailable: the FID InceptionV3 weights pt_inception-2015-12-05-6726825d.pth were not "
                         f"found (give --inception-weights or VAEVQ_INCEPTION_WEIGHTS); {err}")
    nets.append(FeatureNet("effnet-lite0", EfficientNetLite0.pretrained(), 224, "_effnet", device))
    return nets, notes


@dataclass
class FeatureBank:
    """Features and logits of one set of images, per network."""

    features: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    logits: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    count: int = 0

    def update(self, nets: list[FeatureNet], images: torch.Tensor) -> None:
        for net in nets:
            f, lg = net(images)
            self.features.setdefault(net.name, []).append(f)
            self.logits.setdefault(net.name, []).append(lg)
        self.count += images.shape[0]

    def get(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat(self.features[name]), torch.cat(self.logits[name])


@dataclass
class Reference:
    """What the samples are compared with: features of real images per network, and/or given
    pool3 statistics (an ADM ``.npz``)."""

    description: str
    bank: FeatureBank | None = None
    inception_stats: tuple[np.ndarray, np.ndarray] | None = None


def collect(nets: list[FeatureNet], batches: Iterable[torch.Tensor], total: int | None = None,
            desc: str = "features", progress: bool = False) -> FeatureBank:
    bank = FeatureBank()
    for images in tqdm(batches, desc=desc, total=total, disable=not progress, leave=False):
        bank.update(nets, images)
    return bank


def cached_collect(cache_dir: Path | None, key: dict[str, Any], nets: list[FeatureNet], make_batches,
                   total: int | None = None, desc: str = "features", progress: bool = False) -> FeatureBank:
    """:func:`collect`, stored under ``cache_dir/features/<hash of key and networks>.pt`` (float32)
    and reused: the reference, the reconstructions and the unigram baseline of a tokenizer are the
    same for every generator trained on its codes (EfficientNet at 224 px dominates on a CPU)."""
    if cache_dir is None:
        return collect(nets, make_batches(), total, desc, progress)
    full = {**key, "nets": [n.name for n in nets]}
    digest = hashlib.sha256(json.dumps(full, sort_keys=True, default=str).encode()).hexdigest()[:20]
    path = Path(cache_dir) / "features" / f"{digest}.pt"
    if path.is_file():
        saved = torch.load(path, weights_only=True)
        if saved.get("key") == json.dumps(full, sort_keys=True, default=str):
            bank = FeatureBank(count=int(saved["count"]))
            for name in full["nets"]:
                bank.features[name] = [saved["features"][name].double()]
                bank.logits[name] = [saved["logits"][name].double()]
            return bank
    bank = collect(nets, make_batches(), total, desc, progress)
    payload = {"key": json.dumps(full, sort_keys=True, default=str), "count": bank.count,
               "features": {n: bank.get(n)[0].float() for n in full["nets"]},
               "logits": {n: bank.get(n)[1].float() for n in full["nets"]}}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(payload, tmp))
    return bank


def spread(n_items: int, n: int) -> list[int]:
    """``n`` indices spread evenly over ``n_items`` (all of them when n >= n_items)."""
    if n >= n_items:
        return list(range(n_items))
    return torch.linspace(0, n_items - 1, n).round().long().tolist()


def dataset_batches(dataset, indices: list[int], batch_size: int):
    for start in range(0, len(indices), batch_size):
        yield torch.stack([dataset[i] for i in indices[start:start + batch_size]])


def folder_batches(folder: Path, resolution: int, batch_size: int, limit: int):
    files = list_images(folder)
    if not files:
        raise FileNotFoundError(f"no images (.jpg, .png, ...) found under the reference folder {folder}")
    files = [files[i] for i in spread(len(files), limit)]
    for start in range(0, len(files), batch_size):
        yield torch.stack([prepare_image(f, resolution) for f in files[start:start + batch_size]])


def npz_reference(path: Path, nets: list[FeatureNet], batch_size: int, limit: int,
                  progress: bool = False) -> Reference:
    """An ADM-style reference batch: ``mu``/``sigma`` (pool3), images ``arr_0`` (N, H, W, 3)
    uint8 for the other numbers, or activations ``arr_0`` (N, 2048) for gFID."""
    if not path.is_file():
        raise FileNotFoundError(f"reference statistics {path} do not exist")
    with np.load(path) as data:
        keys = set(data.files)
        stats = None
        if {"mu", "sigma"} <= keys:
            stats = (data["mu"].astype(np.float64), data["sigma"].astype(np.float64))
        bank = None
        if "arr_0" in keys:
            arr = data["arr_0"]
            if arr.ndim == 4 and arr.shape[-1] == 3:
                idx = spread(arr.shape[0], limit)
                batches = (torch.from_numpy(np.ascontiguousarray(arr[idx[s:s + batch_size]])).permute(0, 3, 1, 2)
                           .float() / 127.5 - 1 for s in range(0, len(idx), batch_size))
                bank = collect(nets, batches, -(-len(idx) // batch_size), "reference", progress)
            elif arr.ndim == 2 and stats is None:
                acts = arr.astype(np.float64)
                stats = (acts.mean(0), np.cov(acts, rowvar=False))
        if stats is None and bank is None:
            raise ValueError(f"{path} holds neither mu/sigma nor arr_0 (keys: {', '.join(sorted(keys))})")
    if stats is not None and (stats[0].ndim != 1 or stats[1].shape != (stats[0].shape[0],) * 2):
        raise ValueError(f"{path}: mu {stats[0].shape} and sigma {stats[1].shape} do not match")
    return Reference(f"{path} (" + ", ".join(
        (["mu/sigma"] if stats is not None else []) + ([f"{bank.count} images"] if bank else [])) + ")",
        bank, stats)


def _gaussian(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    x = features.numpy()
    return x.mean(0), np.cov(x, rowvar=False)


def score(fake: FeatureBank, reference: Reference, nets: list[FeatureNet]) -> dict[str, Any]:
    """Every metric of ``fake`` against ``reference`` on every network."""
    out: dict[str, Any] = {}
    for net in nets:
        feats, logits = fake.get(net.name)
        inception = net.name == "inception-v3-fid"
        fid_key = "gfid" if inception else "fid_effnet"
        ref_stats = None
        if inception and reference.inception_stats is not None:
            ref_stats = reference.inception_stats
        elif reference.bank is not None and net.name in reference.bank.features:
            ref_stats = _gaussian(reference.bank.get(net.name)[0])
        if ref_stats is not None and feats.shape[0] >= 2:
            if ref_stats[0].shape[0] != feats.shape[1]:
                raise ValueError(f"reference statistics have {ref_stats[0].shape[0]} dimensions; {net.name} "
                                 f"features have {feats.shape[1]}")
            mu, sigma = _gaussian(feats)
            out[fid_key] = frechet_distance(mu, sigma, *ref_stats)
        if feats.shape[0] >= SPLITS:
            key = "inception_score" if inception else "is_effnet"
            out[key], out[key + "_std"] = inception_score(logits, SPLITS)
        if reference.bank is not None and net.name in reference.bank.features:
            real = reference.bank.get(net.name)[0]
            if real.shape[0] > K_NEAREST and feats.shape[0] > K_NEAREST:
                p, r = precision_recall(real, feats, K_NEAREST)
                out["precision" + net.suffix], out["recall" + net.suffix] = p, r
    return out


# ---------------------------------------------------------------- a generator run, end to end

MAX_REFERENCE = 50_000  # real images of the training split used as the default reference


@dataclass
class GenerationEval:
    result: dict[str, Any]  # metrics.json
    grids: dict[str, list[torch.Tensor]]  # picture rows: samples, unigram baseline


def _grid_rows(images: torch.Tensor, labels: torch.Tensor | None, per: int = 8,
               rows: int = 8) -> list[torch.Tensor]:
    """Up to ``rows`` rows of ``per`` images, one class per row when labelled."""
    if labels is None:
        n = min(images.shape[0] // per, rows) * per
        return list(images[:n].view(-1, per, *images.shape[1:])) if n else [images[:per]]
    out = []
    for c in labels.unique().tolist()[:rows]:
        picked = images[labels == c][:per]
        if picked.shape[0] == per:
            out.append(picked)
    return out or [images[:per]]


@torch.no_grad()
def evaluate_generator(path: str | Path, num: int | None = None, ref: str | None = None, which: str = "last",
                       cfg_scale: float | None = None, temperature: float | None = None, top_k: int | None = None,
                       top_p: float | None = None, num_steps: int | None = None, eta: float | None = None,
                       seed: int = 0, batch_size: int | None = None,
                       inception_weights: str | None = None, device: str = "cpu",
                       progress: bool = False, use_cache: bool = True) -> GenerationEval:
    """Sample ``num`` images (default ``generator.eval_samples``; classes in turn) and score them and
    the baselines against the reference (see the module docstring). Sampling settings not given are
    the run's (temperature/top-k/top-p: autoregressive; num_steps/eta: latent diffusion). The
    features of the default reference and of the baselines are cached beside the codes
    (``use_cache``)."""
    run = load_generator(path, which)
    config, g = run.config, run.config.generator
    model, tokenizer = run.model.to(device), run.tokenizer.to(device)
    grid = latent_grid(config)
    num = num or g.eval_samples
    settings = {**sampling_settings(g, cfg_scale=cfg_scale, temperature=temperature, top_k=top_k, top_p=top_p,
                                    num_steps=num_steps, eta=eta), "seed": seed}
    batch = batch_size or g.sample_batch
    nets, notes = feature_nets(inception_weights, device)

    train_images, _ = build_datasets(config, tokenizer_split_dir(config))
    ref_indices = spread(len(train_images), MAX_REFERENCE)
    cache = codes_cache_dir(config) if use_cache else None
    data_key = codes_key(config, "train")
    if ref is None:
        bank = cached_collect(cache, {"what": "reference", **data_key, "n": len(ref_indices)}, nets,
                              lambda: dataset_batches(train_images, ref_indices, batch),
                              -(-len(ref_indices) // batch), "reference", progress)
        reference = Reference(f"training split ({len(ref_indices)} real images at {config.data.resolution}x"
                              f"{config.data.resolution})", bank)
    elif str(ref).endswith(".npz"):
        reference = npz_reference(Path(ref), nets, batch, MAX_REFERENCE, progress)
    else:
        folder = Path(ref)
        if not folder.is_dir():
            raise FileNotFoundError(f"--ref {ref} is neither a folder of images nor an .npz file")
        bank = collect(nets, folder_batches(folder, config.data.resolution, batch, MAX_REFERENCE), None,
                       "reference", progress)
        reference = Reference(f"folder {folder} ({bank.count} images, center crops at "
                              f"{config.data.resolution})", bank)

    # the generator's samples
    labels = class_plan(num, g.num_classes)
    fake, kept, kept_labels = FeatureBank(), [], []
    for images, _, lab in sample_images(model, tokenizer, num, labels, batch_size=batch, progress=progress,
                                        **settings):
        fake.update(nets, images)
        if sum(x.shape[0] for x in kept) < 512:
            kept.append(images.cpu())
            kept_labels.append(lab.cpu() if lab is not None else None)
    model_metrics = score(fake, reference, nets)

    tok_key = {**data_key, "tokenizer": weights_digest(tokenizer), "n": num}
    if g.kind == "ldm":
        # baseline: pure Gaussian latents (the DDIM start), decoded through their nearest codes
        grids = {"noise": _grid_rows(next(noise_batches(model, min(num, batch), batch, seed)).cpu(), None)}
        noise_key = {"what": "noise", "seed": seed, "scale": float(model.latent_scale), **tok_key}
        noise_bank = cached_collect(cache, noise_key, nets, lambda: noise_batches(model, num, batch, seed),
                                    -(-num // batch), "noise", progress)
        baselines = {"noise": {"samples": num, **score(noise_bank, reference, nets)}}
    else:
        # baseline: independent tokens from the unigram frequencies of the training codes
        codes = training_codes(config, tokenizer, train_images, device)
        gen = torch.Generator().manual_seed(seed)
        uni = unigram_samples(codes, num, gen)
        grids = {"unigram": _grid_rows(decode_ids(tokenizer, uni[:batch].to(device), grid).cpu(), None)}
        uni_bank = cached_collect(cache, {"what": "unigram", "seed": seed, **tok_key}, nets,
                                  lambda: (decode_ids(tokenizer, uni[s:s + batch].to(device), grid)
                                           for s in range(0, num, batch)), -(-num // batch), "unigram", progress)
        baselines = {"unigram": {"samples": num, **score(uni_bank, reference, nets)}}
    # baseline 2: the tokenizer's reconstructions of real training images (the floor)
    rec_indices = spread(len(train_images), num)
    rec_bank = cached_collect(cache, {"what": "reconstruction", **tok_key}, nets,
                              lambda: (tokenizer.reconstruct(x.to(device)) for x in
                                       dataset_batches(train_images, rec_indices, batch)),
                              -(-len(rec_indices) // batch), "reconstructions", progress)
    result: dict[str, Any] = {
        "checkpoint": str(path), "kind": g.kind, "step": run.step, "tokenizer": g.tokenizer,
        "samples": num, "sampling": settings, "classes": g.num_classes,
        "reference": reference.description, "resolution": config.data.resolution,
        **model_metrics,
        "baselines": {**baselines,
                      "reconstruction": {"samples": len(rec_indices), **score(rec_bank, reference, nets)}},
    }
    if notes:
        result["unavailable"] = notes
    kept_images = torch.cat(kept)
    kept_lab = torch.cat(kept_labels) if kept_labels and kept_labels[0] is not None else None
    grids = {"samples": _grid_rows(kept_images, kept_lab), **grids}
    return GenerationEval(result, grids)


@torch.no_grad()
def noise_batches(ldm, num: int, batch: int, seed: int):
    """Images of ``num`` latents drawn from N(0, I) in the diffused (scaled) space, decoded
    through their nearest codes, in batches (one generator seeded by ``seed``)."""
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, num, batch):
        n = min(batch, num - start)
        z = torch.randn((n, ldm.channels, *ldm.grid), generator=gen).to(ldm.device)
        yield ldm.decode_latents(z)[0]


def training_codes(config, tokenizer, train_images, device) -> np.ndarray:
    """The cached codes of the training split (the trainer's; computed here when not cached)."""
    codes, _, _ = extract_codes(tokenizer, train_images, codes_cache_dir(config), flip=config.generator.flip,
                                batch_size=config.eval.batch_size, device=device,
                                extra_key=codes_key(config, "train"))
    return codes


def generation_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) rows of a generation result, with what each number was computed on."""
    s = result["sampling"]
    sampling = (f"DDIM {s['num_steps']} steps, eta {s['eta']:g}, cfg {s['cfg_scale']:g}, seed {s['seed']}"
                if "num_steps" in s else
                f"cfg {s['cfg_scale']:g}, temperature {s['temperature']:g}, top-k {s['top_k']}, "
                f"top-p {s['top_p']:g}, seed {s['seed']}")
    rows = [("samples", f"{result['samples']} at {result['resolution']}x{result['resolution']} "
                        f"(classes in turn of {result['classes']})" if result["classes"] else
             f"{result['samples']} at {result['resolution']}x{result['resolution']} (unconditional)"),
            ("sampling", sampling),
            ("reference", result["reference"])]
    names = [("gfid", "gFID (InceptionV3 pool3)"), ("inception_score", "Inception Score (10 splits)"),
             ("precision", "precision (InceptionV3, k=3)"), ("recall", "recall (InceptionV3, k=3)"),
             ("fid_effnet", "fid-effnet (EfficientNet-Lite0; not comparable with published FID)"),
             ("is_effnet", "IS on EfficientNet-Lite0 logits (not comparable)"),
             ("precision_effnet", "precision (EfficientNet-Lite0, k=3)"),
             ("recall_effnet", "recall (EfficientNet-Lite0, k=3)")]
    for key, label in names:
        if key in result:
            value = f"{result[key]:.4g}" + (f" ± {result[key + '_std']:.3g}" if key + "_std" in result else "")
            base = result["baselines"]
            value += "  (" + ", ".join(f"{BASELINE_NAMES.get(b, b)} {_fmt(base[b].get(key))}" for b in base) + ")"
            rows.append((label, value))
        elif key == "gfid" and "gfid" in result.get("unavailable", {}):
            rows.append((label, result["unavailable"]["gfid"].split(";")[0]))
    return rows


BASELINE_NAMES = {"unigram": "unigram", "noise": "Gaussian latents", "reconstruction": "reconstructions"}


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4g}"
