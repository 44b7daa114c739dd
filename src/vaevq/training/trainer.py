"""The training loop: one loop for one process or many (torchrun)."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import signal
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from vaevq.config import Config
from vaevq.data import StepBatchSampler, build_datasets, build_token_dataset
from vaevq.fileio import atomic_write_text
from vaevq.losses import gaussian_moments, latent_rows
from vaevq.models import VAEVQ
from vaevq.perceptual import LPIPS
from vaevq.training.checkpoint import (
    BEST,
    LAST,
    checkpoint_dir,
    load_checkpoint,
    save_checkpoint,
)
from vaevq.training.dead_codes import DeadCodeRestarter
from vaevq.training.distributed import DistInfo, all_reduce_sum, barrier, init_distributed
from vaevq.training.evaluate import evaluate, frechet_metrics
from vaevq.training.images import reconstruction_grid
from vaevq.training.noise import sample_noise
from vaevq.training.objective import Objective


def lr_lambda(config: Config, total_steps: int):
    """Multiplier of train.lr at a step: linear warm-up, then constant or cosine decay."""
    t = config.train

    def factor(step: int) -> float:
        if t.warmup_steps and step < t.warmup_steps:
            return (step + 1) / t.warmup_steps
        if t.schedule == "constant":
            return 1.0
        span = max(1, total_steps - t.warmup_steps)
        progress = min(1.0, (step - t.warmup_steps) / span)
        return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def effective_lr(config: Config, world_size: int) -> tuple[float, str]:
    """(learning rate, the rule in words) for the global batch of this run."""
    t = config.train
    global_batch = t.batch_size * world_size * t.grad_accum
    base = t.lr_base_batch or t.batch_size
    if t.lr_scale == "none":
        return t.lr, f"lr {t.lr:g} as configured (train.lr_scale=none: not scaled with the batch)"
    ratio = global_batch / base
    factor = ratio if t.lr_scale == "linear" else math.sqrt(ratio)
    lr = t.lr * factor
    return lr, (f"lr {lr:g} = train.lr {t.lr:g} x ({global_batch} / {base})"
                f"{'' if t.lr_scale == 'linear' else '^0.5'} (train.lr_scale={t.lr_scale})")


LATENT_INIT_IMAGES = 256  # model.codebook_init=latent: training images whose latents set the codebook


class _Keyed(torch.utils.data.Dataset):
    """Items ``(index, seed)`` -> ``(image, seed)``; the loader yields (images, seeds)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        return self.dataset[item], item[1]


class WeightEMA:
    """Exponential moving average of a model's parameters (buffers copied)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_params = list(self.model.parameters())
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - self.decay)
        for ema_b, b in zip(self.model.buffers(), model.buffers()):
            ema_b.copy_(b)


class _StopFlag:
    """SIGINT/SIGTERM ask the loop to stop after the current step (a second Ctrl-C aborts)."""

    def __init__(self):
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    """Train ``config`` into ``run_dir``. ``resume=True`` continues from checkpoints/last.pt."""

    def __init__(self, config: Config, run_dir: str | Path, resume: bool = False,
                 device: str | None = None):
        self.config = config
        self.run_dir = Path(run_dir)
        self.dist: DistInfo = init_distributed(device)
        t = config.train
        if self.dist.enabled:  # brain MRI: every rank prepares its share of the slice cache first
            from vaevq.data.brats import warm_brain_cache

            warm_brain_cache(config, self.dist.rank, self.dist.world_size, self.dist.local_rank == 0)
            barrier()
        self.train_set, self.eval_set = build_datasets(config, self.run_dir,
                                                       progress=self.dist.is_main and t.progress)
        # denser tiles for the token statistics (or None: the evaluated images' own tokens)
        self.token_set = build_token_dataset(config) if config.eval.max_images <= 0 else None
        global_batch = t.batch_size * self.dist.world_size * t.grad_accum
        if t.epochs > 0:
            self.total_steps = t.epochs * (len(self.train_set) // global_batch)
        else:
            self.total_steps = t.steps

        torch.manual_seed(t.seed)  # identical initial weights on every rank
        self.model = VAEVQ(config).to(self.dist.device)
        resuming = resume and (checkpoint_dir(self.run_dir) / LAST).is_file()
        if not resuming:
            self._initialize_codebook()
        self.ema = WeightEMA(self.model, t.ema_decay) if t.ema_decay > 0 else None
        self.dead_codes = DeadCodeRestarter(config, self.model.quantizer.codebook_size)
        if self.dead_codes.enabled and not getattr(self.model.quantizer, "supports_restart", False):
            raise ValueError(f"model.dead_code_interval: the {config.model.quantizer} quantizer's codes "
                             "cannot be restarted; set model.dead_code_interval=0")
        self.lr, self.lr_rule = effective_lr(config, self.dist.world_size)
        cuda = self.dist.device.type == "cuda"
        self.autocast = t.precision == "bf16" and cuda
        self.channels_last = t.channels_last and cuda
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=self.lr, betas=t.betas, weight_decay=t.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(config, self.total_steps))
        # perceptual and adversarial terms; the discriminator has its own optimizer and schedule
        self.objective = Objective(config).to(self.dist.device)
        # (its learning rate follows the same schedule, set from the step before each D step)
        self.disc_optimizer = None
        self.disc_lr = config.gan.lr if config.gan.lr > 0 else self.lr
        self.lr_factor = lr_lambda(config, self.total_steps)
        if self.objective.adversarial:
            self.disc_optimizer = torch.optim.Adam(self.objective.discriminator_parameters(),
                                                   lr=self.disc_lr, betas=config.gan.betas)
        self.lpips_metric = None
        if config.eval.lpips_net:
            self.lpips_metric = (self.objective.perceptual
                                 if self.objective.perceptual is not None
                                 and self.objective.perceptual.net_name == config.eval.lpips_net
                                 else LPIPS(config.eval.lpips_net).to(self.dist.device))
        self.frechet, self.frechet_notes = frechet_metrics(config.eval, self.dist.device)
        if "rfid" in self.frechet_notes:
            self.print(f"[vaevq] rfid {self.frechet_notes['rfid']}")
        self.step = 0
        self.elapsed = 0.0  # seconds spent in training steps (not evaluation), over all resumes
        self.best: dict[str, Any] = {"metric": t.best_metric, "value": None, "step": None}
        self.resumed_from: int | None = None
        if resume and (checkpoint_dir(self.run_dir) / LAST).is_file():
            self._restore(checkpoint_dir(self.run_dir) / LAST)
        if t.compile:  # in place (nn.Module.compile): the state dict keys stay those of the model
            self.model.encoder.compile()
            self.model.decoder.compile()
        self.ddp = (DistributedDataParallel(self.model, device_ids=[self.dist.local_rank] if cuda else None)
                    if self.dist.enabled else self.model)
        self.noise_shape = (config.model.latent_dim,
                            config.data.resolution // self.model.downsample_factor,
                            config.data.resolution // self.model.downsample_factor)

    def _initialize_codebook(self) -> None:
        """Codebooks that come from data (VQGAN-LC's k-means, ``model.codebook_init=latent``):
        computed on rank 0, broadcast."""
        q = self.model.quantizer
        if self.config.model.codebook_init == "latent":
            if self.dist.is_main:
                self._codebook_from_latents()
            if self.dist.enabled:
                torch.distributed.broadcast(q.codebook.embedding.data, 0)
            return
        if not (hasattr(q, "needs_initialization") and q.needs_initialization()):
            return
        if self.dist.is_main:
            n = min(len(self.train_set), q.images_needed())
            gen = torch.Generator().manual_seed(self.config.train.seed)
            order = torch.randperm(len(self.train_set), generator=gen)[:n].tolist()  # spread over all images
            batches = (torch.stack([self.train_set[i] for i in order[s:s + 32]]).to(self.dist.device)
                       for s in range(0, n, 32))
            start = time.perf_counter()
            q.initialize_from(q.source, batches, seed=self.config.train.seed)
            self.print(f"[vaevq] LC codebook: k-means of {q.source} features of {n} training images into "
                       f"{q.codebook.size} codes in {time.perf_counter() - start:.1f} s")
        if self.dist.enabled:
            torch.distributed.broadcast(q.codebook.embedding.data, 0)
            torch.distributed.broadcast(q.initialized, 0)

    @torch.no_grad()
    def _codebook_from_latents(self) -> None:
        """The K codes drawn from the Gaussian of the initial encoder's latents (mu for VLQ) on
        LATENT_INIT_IMAGES training images spread over the set (seeded)."""
        q = self.model.quantizer
        n = min(len(self.train_set), LATENT_INIT_IMAGES)
        gen = torch.Generator().manual_seed(self.config.train.seed)
        order = torch.randperm(len(self.train_set), generator=gen)[:n].tolist()
        rows = []
        for s in range(0, n, 64):
            x = torch.stack([self.train_set[i] for i in order[s:s + 64]]).to(self.dist.device)
            h = self.model.encode_features(x).float()
            z = h.chunk(2, dim=1)[0] if q.variational else h
            rows.append(latent_rows(z).cpu())
        mean, cov = gaussian_moments(torch.cat(rows))
        q.codebook.init_from_moments(mean, cov, gen)
        self.print(f"[vaevq] codebook: {q.codebook.size} codes drawn from the Gaussian of the initial latents of "
                   f"{n} training images (per-channel std {float(cov.diagonal().sqrt().mean()):.3g})")

    # ------------------------------------------------------------------ state

    def state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.model.state_dict() if self.ema else None,
            "best": self.best,
            "elapsed": self.elapsed,
            **self._adversarial_state(),
        }

    def _adversarial_state(self) -> dict[str, Any]:
        if not self.objective.adversarial:
            return {}
        return {
            "discriminator": self.objective.discriminator.state_dict(),
            "lecam": self.objective.lecam.state_dict() if self.objective.lecam is not None else None,
            "disc_optimizer": self.disc_optimizer.state_dict(),
        }

    def _restore(self, path: Path) -> None:
        state = load_checkpoint(path, self.dist.device)
        diffs = _setting_differences(state.get("config"), self.config)
        if diffs:
            raise ValueError(f"{path} was trained with different settings ({'; '.join(diffs[:6])}); resume "
                             "with the same model, loss and gan settings, or use a new run directory")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise ValueError(f"{path} has no weight EMA but train.ema_decay is set")
            self.ema.model.load_state_dict(state["ema"])
        if self.objective.adversarial:
            if state.get("discriminator") is None:
                raise ValueError(f"{path} has no discriminator state but gan.weight is set; "
                                 "start a new run directory")
            self.objective.discriminator.load_state_dict(state["discriminator"])
            if self.objective.lecam is not None and state.get("lecam") is not None:
                self.objective.lecam.load_state_dict(state["lecam"])
            self.disc_optimizer.load_state_dict(state["disc_optimizer"])
        if self.dead_codes.enabled and state.get("dead_codes") is not None:
            self.dead_codes.load_state_dict(state["dead_codes"], main=self.dist.is_main)
        self.step = int(state["step"])
        self.elapsed = float(state.get("elapsed", 0.0))
        self.best = state.get("best", self.best)
        self.resumed_from = self.step

    def save(self, name: str = LAST) -> None:
        # collective parts first (every rank takes part), then rank 0 writes
        dead_codes = self.dead_codes.state_dict() if self.dead_codes.enabled else None
        if self.dist.is_main:
            save_checkpoint(checkpoint_dir(self.run_dir) / name, {**self.state(), "dead_codes": dead_codes})
        barrier()

    # ------------------------------------------------------------------ logging

    @property
    def log_path(self) -> Path:
        return self.run_dir / "log.jsonl"

    def log(self, record: dict[str, Any]) -> None:
        if self.dist.is_main:
            with open(self.log_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")

    def _trim_log(self) -> None:
        """On resume, drop log lines written after the checkpoint (they will be redone)."""
        if not (self.dist.is_main and self.log_path.is_file()):
            return
        kept = [line for line in self.log_path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= self.step]
        atomic_write_text(self.log_path, "".join(line + "\n" for line in kept))

    def print(self, *args) -> None:
        if self.dist.is_main:
            tqdm.write(" ".join(str(a) for a in args))

    # ------------------------------------------------------------------ evaluation

    def eval_model(self) -> VAEVQ:
        return self.ema.model if self.ema else self.model

    def run_eval(self) -> dict[str, float]:
        e = self.config.eval
        metrics = evaluate(self.eval_model(), self.eval_set, token_dataset=self.token_set,
                           batch_size=e.batch_size, max_images=e.max_images, device=self.dist.device,
                           rank=self.dist.rank, world_size=self.dist.world_size, lpips=self.lpips_metric,
                           frechet=self.frechet)
        self.log({"step": self.step, "train_s": round(self.elapsed, 3),
                  **{f"eval/{k}": v for k, v in metrics.items()}})
        value = metrics.get(self.best["metric"])
        if value is not None and (self.best["value"] is None or value > self.best["value"]):
            self.best = {"metric": self.best["metric"], "value": value, "step": self.step}
            self.save(BEST)
        return metrics

    def save_images(self) -> None:
        if not self.dist.is_main:
            return
        n = min(self.config.eval.grid_images, len(self.eval_set))
        picks = torch.linspace(0, len(self.eval_set) - 1, n).long().tolist()  # spread over the split
        images = torch.stack([self.eval_set[i] for i in picks]).to(self.dist.device)
        reconstruction_grid(self.eval_model(), images, self.run_dir / "images" / f"step{self.step:07d}.png")

    # ------------------------------------------------------------------ loop

    def _loader(self) -> DataLoader:
        t = self.config.train
        sampler = StepBatchSampler(len(self.train_set), t.batch_size * t.grad_accum, seed=t.seed,
                                   start_step=self.step, total_steps=self.total_steps,
                                   rank=self.dist.rank, world_size=self.dist.world_size)
        return DataLoader(_Keyed(self.train_set), batch_sampler=sampler,
                          num_workers=self.config.data.num_workers,
                          pin_memory=self.dist.device.type == "cuda")

    def _record_data(self) -> None:
        """Brain MRI: the split by subject (written once, reused on resume and by eval), the
        data notes, and every data problem (printed and logged with its count)."""
        split = getattr(self.train_set, "split", None)
        split_path = self.run_dir / "split.json"
        if split is not None and not split_path.is_file():
            keep = {k: v for k, v in split.items() if k != "new_subjects_ignored"}
            atomic_write_text(split_path, json.dumps(keep, indent=1) + "\n")
        for note in getattr(self.train_set, "notes", []):
            self.print(f"[vaevq] {note}")
        problems = getattr(self.train_set, "problems", []) + getattr(self.eval_set, "problems", [])
        skipped = getattr(self.train_set, "skipped", []) + getattr(self.eval_set, "skipped", [])
        if problems:
            self.print(f"[vaevq] {len(problems)} data problem(s); {len(skipped)} subject(s) skipped:")
            for problem in problems:
                self.print(f"  {problem}")
            self.log({"step": self.step, "data_problems": len(problems), "skipped_subjects": skipped,
                      "problems": [p.to_dict() for p in problems]})

    def _announce(self) -> None:
        t = self.config.train
        n_params = sum(p.numel() for p in self.model.parameters())
        start = f"resuming at step {self.step}" if self.resumed_from is not None else "starting"
        self.print(
            f"[vaevq] {self.config.name}: {start}; {self.total_steps} steps; "
            f"{len(self.train_set)} train / {len(self.eval_set)} eval images; "
            f"global batch {t.batch_size * self.dist.world_size * t.grad_accum} ({t.batch_size} x "
            f"{self.dist.world_size} processes x {t.grad_accum} accumulated); {self.lr_rule}, "
            f"{t.schedule} schedule; {n_params / 1e6:.2f} M parameters; device {self.dist.device}"
            + ("; bf16 autocast" if self.autocast else "") + ("; compiled" if t.compile else "")
        )
        if t.precision == "bf16" and not self.autocast:
            self.print("[vaevq] train.precision=bf16 applies on CUDA only; training in float32")

    def train(self) -> dict[str, float]:
        """Run to train.steps (or epochs); returns the final evaluation metrics."""
        t = self.config.train
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "config.yaml", self.config.to_yaml())
            self._trim_log()
            self._record_data()
        self._announce()
        self.ddp.train()
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", dynamic_ncols=True,
                   disable=not (t.progress and self.dist.is_main), mininterval=1.0)
        timer, seen = time.perf_counter(), 0
        with _StopFlag() as stop:
            for batch, seeds in self._loader():
                # other randomness of a step (dropout) is a function of (seed, step, rank)
                torch.manual_seed((t.seed * 1_000_003 + self.step) * 131 + self.dist.rank)
                step_start = time.perf_counter()
                losses = self._train_step(batch.to(self.dist.device, non_blocking=True), seeds)
                self.elapsed += time.perf_counter() - step_start
                self.step += 1
                seen += batch.shape[0] * self.dist.world_size
                bar.update(1)
                if self.step % t.log_every == 0 or self.step == self.total_steps:
                    elapsed = time.perf_counter() - timer
                    record = {"step": self.step, "lr": self.scheduler.get_last_lr()[0],
                              **{f"loss/{k}": v for k, v in losses.items()},
                              "img_per_s": seen / max(elapsed, 1e-9)}
                    self.log(record)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in losses.items()}, refresh=False)
                    timer, seen = time.perf_counter(), 0
                if t.eval_every and self.step % t.eval_every == 0 and self.step < self.total_steps:
                    m = self.run_eval()
                    self.print(f"step {self.step}: " + _short(m))
                if t.image_every and self.step % t.image_every == 0:
                    self.save_images()
                if t.checkpoint_every and self.step % t.checkpoint_every == 0:
                    self.save(LAST)
                if self._stop_everywhere(stop.requested):
                    self.save(LAST)
                    bar.close()
                    self.print(f"[vaevq] stopped at step {self.step}; checkpoint saved; "
                               f"continue with --resume")
                    raise KeyboardInterrupt
        bar.close()
        metrics = self.run_eval()
        self.save_images()
        self.save(LAST)
        if self.dist.is_main:
            self.eval_model().save_pretrained(self.run_dir / "model")
        self.print(f"[vaevq] done at step {self.step}: " + _short(metrics))
        return metrics

    def _train_step(self, x: torch.Tensor, seeds: torch.Tensor | None = None) -> dict[str, float]:
        """One optimizer step over ``train.grad_accum`` micro-batches of this rank's batch."""
        accum = self.config.train.grad_accum
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        noise = None
        if self.model.quantizer.variational and seeds is not None:
            noise = sample_noise(seeds, self.noise_shape, self.dist.device)
        adversarial = self.objective.adversarial_active(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        if adversarial:
            self.disc_optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        chunks = x.chunk(accum) if accum > 1 else (x,)
        noise_chunks = noise.chunk(accum) if noise is not None else (None,) * len(chunks)
        if len(noise_chunks) != len(chunks):
            raise AssertionError(f"{len(chunks)} micro-batches but {len(noise_chunks)} noise chunks")
        # the codebook is constant until the optimizer step: every search of this step shares its norms
        codebook = getattr(self.model.quantizer, "codebook", None)
        if codebook is not None:
            codebook.cache_norms(True)
        for i, (xi, ni) in enumerate(zip(chunks, noise_chunks)):
            last = i == len(chunks) - 1
            sync = self.ddp.no_sync() if (self.dist.enabled and not last) else contextlib.nullcontext()
            with sync:
                with torch.autocast(device_type=self.dist.device.type, dtype=torch.bfloat16,
                                    enabled=self.autocast):
                    out = self.ddp(xi, noise=ni) if ni is not None else self.ddp(xi)
                    terms = self.objective.generator_losses(xi, out, self.model.decoder.last_layer, self.step)
                losses = {k: float(v.detach()) for k, v in terms.items()}
                self._check_finite(losses)
                (terms["total"] / len(chunks)).backward()
            if adversarial:
                with torch.autocast(device_type=self.dist.device.type, dtype=torch.bfloat16,
                                    enabled=self.autocast):
                    d_terms = self.objective.discriminator_loss(xi, out)
                d_losses = {k: float(v.detach()) for k, v in d_terms.items()}
                self._check_finite(d_losses)
                (d_terms["d_total"] / len(chunks)).backward()
                losses.update(d_losses)
            for k, v in losses.items():
                totals[k] = totals.get(k, 0.0) + v / len(chunks)
            if self.dead_codes.enabled:
                self._count_codes(out)
        if codebook is not None:
            codebook.cache_norms(False)
        if self.config.train.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.train.grad_clip)
        if adversarial:
            for group in self.disc_optimizer.param_groups:
                group["lr"] = self.disc_lr * self.lr_factor(self.step)
            if self.dist.enabled:  # one discriminator for all ranks: average its gradients
                for p in self.objective.discriminator_parameters():
                    if p.grad is not None:
                        torch.distributed.all_reduce(p.grad)
                        p.grad.div_(self.dist.world_size)
            self.disc_optimizer.step()
        self.optimizer.step()
        self.scheduler.step()
        if self.dead_codes.enabled:
            latents = out.mu if out.mu is not None else out.z_c
            restarted = self.dead_codes.maybe_restart(self.step + 1, self.model.quantizer, latents.float(),
                                                      self.optimizer)
            if restarted:
                self.log({"step": self.step + 1, "restarted_codes": restarted})
        if self.ema is not None:
            self.ema.update(self.model)
        return totals

    def _stop_everywhere(self, requested: bool) -> bool:
        """A stop asked on any rank stops every rank at the same step (saving is collective)."""
        if not self.dist.enabled:
            return requested
        flag = torch.tensor([1.0 if requested else 0.0], device=self.dist.device)
        return bool(all_reduce_sum(flag).item() > 0)

    def _count_codes(self, out) -> None:
        q = self.model.quantizer
        if out.mu is not None and getattr(q, "quantize_sample", False):
            # tokens come from mu: a code is alive when it is some mu's nearest code (the
            # training indices of the noisy samples z_c reach far more codes than mu does)
            with torch.no_grad():
                self.dead_codes.update(q.codebook.search(out.mu.float(), q.codebook.vectors(), q.search_block))
        else:
            self.dead_codes.update(out.indices)

    def _check_finite(self, losses: dict[str, float]) -> None:
        if not all(math.isfinite(v) for v in losses.values()):
            raise FloatingPointError(f"non-finite loss at step {self.step + 1}: {losses}; the last "
                                     "checkpoint is untouched")

def _setting_differences(saved: dict[str, Any] | None, config: Config) -> list[str]:
    """The model, loss and gan keys whose values differ between a checkpoint and ``config``
    (train.* may change on resume, e.g. more steps; data.* may move)."""
    if not saved:
        return []
    from vaevq.config import config_from_dict, finalize

    try:
        old = finalize(config_from_dict(saved, "checkpoint config")).to_dict()
    except Exception:  # noqa: BLE001 - an unreadable old config is not a reason to refuse
        return []
    new = config.to_dict()
    return [f"{section}.{key}: {old[section][key]!r} -> {new[section][key]!r}"
            for section in ("model", "loss", "gan") for key in new[section]
            if old[section].get(key) != new[section][key]]


def _short(metrics: dict[str, float]) -> str:
    keys = ("psnr", "ssim", "utilization", "utilization_sampled", "perplexity")
    return ", ".join(f"{k} {metrics[k]:.4g}" for k in keys if k in metrics)
