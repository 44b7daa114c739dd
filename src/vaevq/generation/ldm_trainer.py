"""Training latent diffusion on a frozen tokenizer's latent, through the shared loop.

:class:`LDMTrainer` is a :class:`~vaevq.generation.trainer.GeneratorTrainer` (the GPT's is the
other): the same run directory, ``log.jsonl``, atomic checkpoints and exact ``--resume``,
torchrun, bf16 autocast on CUDA, weight EMA, schedule, gradient clipping, periodic sample grids.
What it adds:

1. the latents (:meth:`VAEVQ.encode_latent`) of the training split and its flips, cached like the
   codes (``generator.cache_latents``), or encoded batch by batch from the images (ImageNet:
   ``ldm-4``), with the images' own flip;
2. ``generator.latent_scale`` 0 is replaced by 1/std of the training latents (every element of
   the cached latents, or of up to 4,096 images spread over the split), the same on every start
   so resume stays exact, and recorded in ``config.yaml`` and the weights;
3. every item's timestep, noise and class drop are drawn from the item's own seed (the loader's
   (index, seed) pairs), so a step does not depend on how the batch is split over processes;
4. evaluation during training is the denoising loss on up to 2,048 held-out images
   (``eval.max_images`` when smaller) at 8 fixed timesteps each with fixed noise (``val_loss``,
   lower is better: the best checkpoint).
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vaevq.distributed import all_reduce_sum
from vaevq.generation.codes import dataset_labels, extract_latents
from vaevq.generation.evaluate import spread
from vaevq.generation.ldm import LatentDiffusion
from vaevq.generation.trainer import GeneratorTrainer, codes_cache_dir, codes_key

VAL_ITEMS = 2048  # held-out images in val_loss
VAL_TIMESTEPS = 8  # fixed timesteps per held-out image
SCALE_ITEMS = 4096  # images measured for latent_scale without a cache
NOISE_SEED = 0x5DEECE66D  # mixed into an item's seed for its noise (its flip uses the seed itself)


def draw_item(seed: int, channels: int, grid: tuple[int, int], timesteps: int, class_dropout: float,
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(timestep () int64, noise (d, h, w), class drop () bool) of one training item, from its seed."""
    gen = torch.Generator().manual_seed((seed ^ NOISE_SEED) % 2**63)
    t = torch.randint(timesteps, (), generator=gen)
    noise = torch.randn((channels, *grid), generator=gen)
    drop = torch.rand((), generator=gen) < class_dropout
    return t, noise, drop


class LatentItems(Dataset):
    """Items ``(index, seed)`` -> (latent (d, h, w), label, timestep, noise, drop): a cached latent
    (one augmentation drawn by the seed, as the GPT's codes) or an encoded-later image (the
    dataset's own flip), with the item's diffusion draws."""

    def __init__(self, source, labels: np.ndarray, draw_args: tuple, cached: bool):
        self.source, self.labels, self.draw_args, self.cached = source, labels, draw_args, cached

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (int(item), 0)
        if self.cached:
            aug = 0
            if self.source.shape[1] > 1:
                aug = int(torch.randint(self.source.shape[1], (1,), generator=torch.Generator().manual_seed(seed)))
            x = torch.from_numpy(np.array(self.source[index, aug], dtype=np.float32))
        else:
            x = self.source[(index, seed)]
        t, noise, drop = draw_item(seed, *self.draw_args)
        return x, int(self.labels[index]), t, noise, drop


class LDMTrainer(GeneratorTrainer):
    """Train the latent diffusion generator of ``config`` (``generator.kind: ldm``) into ``run_dir``."""

    kind = "ldm"
    rate_name = "img_per_s"
    short_keys = ("val_loss",)

    def _prepare_data(self) -> None:
        config, g = self.config, self.config.generator
        tok, device = self.tokenizer, self.dist.device
        draw_args = (config.model.latent_dim, tuple(self.grid), g.diffusion_steps, g.class_dropout)
        if g.cache_latents:
            def extract():
                return extract_latents(tok, self.train_images, codes_cache_dir(config), flip=g.flip,
                                       batch_size=config.eval.batch_size, device=device,
                                       extra_key=codes_key(config, "train"))

            self.train_latents, self.train_labels, self.cache_dir = self._rank_zero_first(extract)
            self.train_classes = self._classes(self.cache_dir)
            self.train_set = LatentItems(self.train_latents, self.train_labels, draw_args, cached=True)
            measured = latent_std(self.train_latents)
        else:
            self.train_labels, self.train_classes = dataset_labels(self.train_images)
            if hasattr(self.train_images, "random_flip"):
                self.train_images.random_flip = g.flip
            self.train_latents, self.cache_dir = None, None
            self.train_set = LatentItems(self.train_images, self.train_labels, draw_args, cached=False)
            picks = spread(len(self.train_images), SCALE_ITEMS)
            measured = latent_std(self._encode_items(self.train_images, picks))
        self.measured_std = measured
        if not g.latent_scale:
            g.latent_scale = round(1.0 / max(measured, 1e-12), 6)  # the value config.yaml records
        # held-out latents (in memory) and their labels
        labels, self.eval_classes = dataset_labels(self.eval_images)
        self.eval_index = spread(len(self.eval_images), min(VAL_ITEMS, config.eval.max_images or VAL_ITEMS))
        self.eval_latents = self._encode_items(self.eval_images, self.eval_index)
        self.eval_labels = np.asarray(labels)[self.eval_index] if len(labels) else labels

    @torch.no_grad()
    def _encode_items(self, dataset, indices: list[int]) -> torch.Tensor:
        out, bs = [], self.config.eval.batch_size
        for start in range(0, len(indices), bs):
            x = torch.stack([dataset[i] for i in indices[start:start + bs]]).to(self.dist.device)
            out.append(self.tokenizer.encode_latent(x).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.config.model.latent_dim, *self.grid)

    def _build_model(self) -> LatentDiffusion:
        return LatentDiffusion(self.config, self.tokenizer)

    def _announce(self) -> None:
        t, g = self.config.train, self.config.generator
        n_params = sum(p.numel() for p in self.model.parameters())
        start = f"resuming at step {self.step}" if self.resumed_from is not None else "starting"
        where = (f"latents cached in {self.cache_dir} ({len(self.train_set)} train images x "
                 f"{self.train_latents.shape[1]} views)" if self.cache_dir else
                 f"latents encoded per batch ({len(self.train_set)} train images, flips {g.flip})")
        self.print(
            f"[vaevq] {self.config.name}: {start}; {self.total_steps} steps; diffusers UNet2DModel "
            f"{list(g.unet_mult)} x {g.unet_channels}, {g.unet_layers} blocks, attention at levels "
            f"{list(g.unet_attention)} ({n_params / 1e6:.2f} M parameters) on the {self.config.model.latent_dim}x"
            f"{self.grid[0]}x{self.grid[1]} latent of {g.tokenizer}; latent std {self.measured_std:.4g}, scale "
            f"{g.latent_scale:.4g}; {where}, {len(self.eval_latents)} held out; {g.num_classes or 'no'} classes; "
            f"{g.diffusion_steps} steps {g.beta_schedule} betas {g.beta_start}-{g.beta_end}; global batch "
            f"{t.batch_size * self.dist.world_size * t.grad_accum}; {self.lr_rule}, {t.schedule} schedule; "
            f"device {self.dist.device}" + ("; bf16 autocast" if self.autocast else ""))

    def _to_device(self, batch) -> tuple:
        x, labels, t, noise, drop = (v.to(self.dist.device, non_blocking=True) for v in batch)
        if not self.config.generator.cache_latents:  # images: encode with the frozen tokenizer
            x = self.tokenizer.encode_latent(x)
        return x.float() * self.model.latent_scale, labels, t, noise, drop

    def _train_step(self, latents, labels, t, noise, drop) -> dict[str, float]:
        return self.train_step(latents, labels, t, noise, drop)

    def train_step(self, latents: torch.Tensor, labels: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                   drop: torch.Tensor) -> dict[str, float]:
        """One optimizer step over ``train.grad_accum`` micro-batches: the epsilon MSE."""
        accum = self.config.train.grad_accum
        self.optimizer.zero_grad(set_to_none=True)
        labels = self.model.null_labels(labels, drop)
        parts = [latents.chunk(accum), t.chunk(accum), noise.chunk(accum),
                 labels.chunk(accum) if labels is not None else [None] * accum]
        chunks = list(zip(*parts))
        total = 0.0
        for i, (x, tt, n, y) in enumerate(chunks):
            last = i == len(chunks) - 1
            sync = self.ddp.no_sync() if (self.dist.enabled and not last) else contextlib.nullcontext()
            with sync:
                with torch.autocast(device_type=self.dist.device.type, dtype=torch.bfloat16,
                                    enabled=self.autocast):
                    loss = self.ddp(x, y, tt, n)
                value = float(loss.detach())
                self._check_finite({"mse": value})
                (loss / len(chunks)).backward()
            total += value / len(chunks)
        return self._optimizer_step({"mse": total})

    @torch.no_grad()
    def validation_loss(self, model: LatentDiffusion | None = None) -> dict[str, float]:
        """The denoising loss (epsilon or v target) of the held-out latents at ``VAL_TIMESTEPS``
        evenly spread timesteps each, with noise fixed per (image, timestep); every rank a share."""
        model = model or self.eval_model()
        was_training = model.training
        model.eval()
        g, device = self.config.generator, self.dist.device
        n = len(self.eval_latents)
        steps = [int((j + 0.5) * g.diffusion_steps / VAL_TIMESTEPS) for j in range(VAL_TIMESTEPS)]
        sums = torch.zeros(2, dtype=torch.float64)
        mine = list(range(self.dist.rank, n, self.dist.world_size))
        bs = self.config.eval.batch_size
        for start in range(0, len(mine), bs):
            idx = mine[start:start + bs]
            z = self.eval_latents[idx].to(device) * model.latent_scale
            y = None
            if model.num_classes:
                y = (torch.as_tensor(np.asarray(self.eval_labels[idx], dtype=np.int64), device=device)
                     if self.eval_conditional else torch.full((len(idx),), model.num_classes, device=device))
            for j, step in enumerate(steps):
                noise = torch.stack([torch.randn(z.shape[1:], generator=torch.Generator().manual_seed(
                    i * VAL_TIMESTEPS + j)) for i in idx]).to(device)
                t = torch.full((len(idx),), step, dtype=torch.long, device=device)
                loss = model(z, y, t, noise)
                sums[0] += float(loss) * len(idx)
                sums[1] += len(idx)
        model.train(was_training)
        sums = all_reduce_sum(sums)
        return {"val_loss": float(sums[0] / max(float(sums[1]), 1.0)), "val_items": int(sums[1]) // VAL_TIMESTEPS}

    def run_eval(self) -> dict[str, Any]:
        return self._record_eval(self.validation_loss())


def latent_std(latents) -> float:
    """The standard deviation of every element of (memory-mapped) latents, in float64 chunks."""
    count, total, squares = 0, 0.0, 0.0
    arr = latents.numpy() if isinstance(latents, torch.Tensor) else latents
    for start in range(0, arr.shape[0], 4096):
        x = np.asarray(arr[start:start + 4096], dtype=np.float64)
        count += x.size
        total += float(x.sum())
        squares += float((x * x).sum())
    if count < 2:
        return 1.0
    mean = total / count
    return float(np.sqrt(max(squares / count - mean * mean, 0.0) * count / (count - 1)))
