"""The training loop: one loop for one process or many (torchrun).

The :class:`Trainer` is assembled from small factory functions (model, optimizers, objective,
metrics), keeps every piece of its state in one :class:`~vaevq.training.state.TrainingState`
and every path in one :class:`~vaevq.rundir.RunDir`; :meth:`Trainer.train_step` is one
optimizer step.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from vaevq.config import Config
from vaevq.data import StepBatchSampler, build_datasets, build_token_dataset, warm_data_caches
from vaevq.distributed import DistInfo, all_reduce_mean_, broadcast, init_distributed
from vaevq.fileio import atomic_write_text
from vaevq.losses import Objective, gaussian_moments, latent_rows
from vaevq.models import VAEVQ
from vaevq.perceptual import LPIPS
from vaevq.rundir import RunDir
from vaevq.training.dead_codes import DeadCodeRestarter
from vaevq.training.evaluate import evaluate, frechet_metrics
from vaevq.training.images import reconstruction_grid
from vaevq.training.loop import LoopTrainer
from vaevq.training.noise import sample_noise
from vaevq.training.state import Progress, TrainingState, WeightEMA, restore_state


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


# ---------------------------------------------------------------------- factories


def total_steps(config: Config, train_size: int, world_size: int) -> int:
    t = config.train
    if t.epochs > 0:
        return t.epochs * (train_size // (t.batch_size * world_size * t.grad_accum))
    return t.steps


def build_model(config: Config, device: torch.device) -> VAEVQ:
    torch.manual_seed(config.train.seed)  # identical initial weights on every rank
    return VAEVQ(config).to(device)


def build_optimizer(model: nn.Module, config: Config, lr: float) -> torch.optim.Optimizer:
    t = config.train
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.Adam(params, lr=lr, betas=t.betas, weight_decay=t.weight_decay)


def build_objective(config: Config, device: torch.device) -> Objective:
    """Perceptual and adversarial terms (the discriminator and LeCam when gan.weight > 0)."""
    return Objective(config).to(device)


def build_lpips_metric(config: Config, objective: Objective, device: torch.device) -> LPIPS | None:
    """The evaluation LPIPS: the perceptual loss's network when it is the same one."""
    net = config.eval.lpips_net
    if not net:
        return None
    if objective.perceptual is not None and objective.perceptual.net_name == net:
        return objective.perceptual
    return LPIPS(net).to(device)


class _Keyed(torch.utils.data.Dataset):
    """Items ``(index, seed)`` -> ``(image, seed)``; the loader yields (images, seeds)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        return self.dataset[item], item[1]


class _DeadCodeState:
    """The restarter's counts as a state component (rank 0 resumes with the sums)."""

    def __init__(self, restarter: DeadCodeRestarter, main: bool):
        self.restarter, self.main = restarter, main

    def state_dict(self):
        return self.restarter.state_dict()

    def load_state_dict(self, state):
        self.restarter.load_state_dict(state, main=self.main)


class Trainer(LoopTrainer):
    """Train a tokenizer ``config`` into ``run_dir``. ``resume=True`` continues from
    checkpoints/last.pt. The loop is :class:`~vaevq.training.loop.LoopTrainer`'s."""

    short_keys = ("psnr", "ssim", "utilization", "utilization_sampled", "perplexity")

    def __init__(self, config: Config, run_dir: str | Path, resume: bool = False,
                 device: str | None = None):
        self.config = config
        self.run = RunDir(run_dir)
        self.run_dir = self.run.root
        self.dist: DistInfo = init_distributed(device)
        t = config.train
        resuming = resume and self.run.has_checkpoint()
        if self.dist.enabled:  # the data caches (brain slices, image verdicts) prepared once, in parallel
            warm_data_caches(config, self.dist.rank, self.dist.world_size, self.dist.local_rank == 0,
                             self.run_dir, progress=t.progress)
        self.train_set, self.eval_set = build_datasets(config, self.run_dir,
                                                       progress=self.dist.is_main and t.progress)
        # denser tiles for the token statistics (or None: the evaluated images' own tokens)
        self.token_set = build_token_dataset(config) if config.eval.max_images <= 0 else None
        self.total_steps = total_steps(config, len(self.train_set), self.dist.world_size)

        self.model = build_model(config, self.dist.device)
        if not resuming:
            self._initialize_codebook()
        self.ema = WeightEMA(self.model, t.ema_decay) if t.ema_decay > 0 else None
        self.dead_codes = DeadCodeRestarter(config, self.model.quantizer.codebook_size)
        if self.dead_codes.enabled and not self.model.quantizer.supports_restart:
            raise ValueError(f"model.dead_code_interval: the {config.model.quantizer} quantizer's codes "
                             "cannot be restarted; set model.dead_code_interval=0")
        self.lr, self.lr_rule = effective_lr(config, self.dist.world_size)
        cuda = self.dist.device.type == "cuda"
        self.autocast = t.precision == "bf16" and cuda
        self.channels_last = t.channels_last and cuda
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(self.model, config, self.lr)
        self.lr_factor = lr_lambda(config, self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor)
        self.objective = build_objective(config, self.dist.device)
        # the discriminator has its own optimizer; its learning rate follows the same schedule
        # (set from the step before each D step)
        self.disc_lr = config.gan.lr if config.gan.lr > 0 else self.lr
        self.disc_optimizer = (torch.optim.Adam(self.objective.discriminator_parameters(), lr=self.disc_lr,
                                                betas=config.gan.betas)
                               if self.objective.adversarial else None)
        self.lpips_metric = build_lpips_metric(config, self.objective, self.dist.device)
        self.frechet, self.frechet_notes = frechet_metrics(config.eval, self.dist.device)
        if "rfid" in self.frechet_notes:
            self.print(f"[vaevq] rfid {self.frechet_notes['rfid']}")
        self.progress = Progress(best={"metric": t.best_metric, "value": None, "step": None})
        self.state = self._training_state()
        self.resumed_from: int | None = None
        if resuming:
            restore_state(self.run.last, self.state, config, self.dist.device)
            self.resumed_from = self.step
        if t.compile:  # in place (nn.Module.compile): the state dict keys stay those of the model
            self.model.encoder.compile()
            self.model.decoder.compile()
        self.ddp = (DistributedDataParallel(self.model, device_ids=[self.dist.local_rank] if cuda else None)
                    if self.dist.enabled else self.model)
        factor = self.model.downsample_factor
        self.noise_shape = (config.model.latent_dim, config.data.resolution // factor,
                            config.data.resolution // factor)

    def _training_state(self) -> TrainingState:
        """Every piece of state a resume needs, by name (the checkpoint's keys)."""
        state = TrainingState()
        state.add("progress", self.progress)
        state.add("model", self.model)
        state.add("optimizer", self.optimizer)
        state.add("scheduler", self.scheduler)
        if self.ema is not None:
            state.add("ema", self.ema, "train.ema_decay is set; start a new run directory")
        if self.objective.adversarial:
            missing = "gan.weight is set; start a new run directory"
            state.add("discriminator", self.objective.discriminator, missing)
            if self.objective.lecam is not None:
                state.add("lecam", self.objective.lecam, None)
            state.add("disc_optimizer", self.disc_optimizer, missing)
        if self.dead_codes.enabled:
            state.add("dead_codes", _DeadCodeState(self.dead_codes, self.dist.is_main), None)
        return state

    def _initialize_codebook(self) -> None:
        """Codebooks that come from data (``model.codebook_init=latent``; a quantizer that
        ``needs_initialization``, e.g. VQGAN-LC's k-means): computed on rank 0, broadcast."""
        q = self.model.quantizer
        if self.config.model.codebook_init == "latent":
            if self.dist.is_main:
                self._codebook_from_latents()
            broadcast(q.codebook.embedding.data, 0)
            return
        if not q.needs_initialization():
            return
        if self.dist.is_main:
            n = min(len(self.train_set), q.images_needed())
            gen = torch.Generator().manual_seed(self.config.train.seed)
            order = torch.randperm(len(self.train_set), generator=gen)[:n].tolist()  # spread over all images
            batches = (torch.stack([self.train_set[i] for i in order[s:s + 32]]).to(self.dist.device)
                       for s in range(0, n, 32))
            start = time.perf_counter()
            q.initialize(batches, seed=self.config.train.seed)
            self.print(f"[vaevq] {self.config.model.quantizer} codebook: initialized from {n} training images "
                       f"({q.codebook_size} codes) in {time.perf_counter() - start:.1f} s")
        for tensor in [*q.parameters(), *q.buffers()]:
            broadcast(tensor.data, 0)

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

    # ------------------------------------------------------------------ evaluation

    def run_eval(self) -> dict[str, float]:
        e = self.config.eval
        metrics = evaluate(self.eval_model(), self.eval_set, token_dataset=self.token_set,
                           batch_size=e.batch_size, max_images=e.max_images, device=self.dist.device,
                           rank=self.dist.rank, world_size=self.dist.world_size, lpips=self.lpips_metric,
                           frechet=self.frechet)
        return self._record_eval(metrics)

    def save_images(self) -> None:
        if not self.dist.is_main:
            return
        n = min(self.config.eval.grid_images, len(self.eval_set))
        picks = torch.linspace(0, len(self.eval_set) - 1, n).long().tolist()  # spread over the split
        images = torch.stack([self.eval_set[i] for i in picks]).to(self.dist.device)
        reconstruction_grid(self.eval_model(), images, self.run.image(self.step))

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
        split = self.train_set.split
        if split is not None and not self.run.split.is_file():
            keep = {k: v for k, v in split.items() if k != "new_subjects_ignored"}
            atomic_write_text(self.run.split, json.dumps(keep, indent=1) + "\n")
        excluded = getattr(self.train_set, "excluded", None)
        if excluded is not None and not self.run.excluded.is_file():
            # image files left out at the start: a resume leaves out the same (exact batch order)
            atomic_write_text(self.run.excluded, json.dumps(excluded, indent=1) + "\n")
        for note in self.train_set.notes:
            self.print(f"[vaevq] {note}")
        problems = self.train_set.problems + self.eval_set.problems
        skipped = self.train_set.skipped + self.eval_set.skipped
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

    def _to_device(self, batch) -> tuple:
        x, seeds = batch
        return x.to(self.dist.device, non_blocking=True), seeds

    def _train_step(self, x: torch.Tensor, seeds: torch.Tensor | None = None) -> dict[str, float]:
        return self.train_step(x, seeds)

    def train_step(self, x: torch.Tensor, seeds: torch.Tensor | None = None) -> dict[str, float]:
        """One optimizer step over ``train.grad_accum`` micro-batches of this rank's batch ``x``
        (``seeds``: each image's noise seed); returns the mean of each logged term."""
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
        codebook = self.model.quantizer.codebook if self.model.quantizer.has_codebook else None
        if codebook is not None:
            codebook.cache_norms(True)
        for i, (xi, ni) in enumerate(zip(chunks, noise_chunks)):
            last = i == len(chunks) - 1
            sync = self.ddp.no_sync() if (self.dist.enabled and not last) else contextlib.nullcontext()
            with sync:
                with torch.autocast(device_type=self.dist.device.type, dtype=torch.bfloat16,
                                    enabled=self.autocast):
                    try:
                        out = self.ddp(xi, noise=ni)
                        terms = self.objective.generator_losses(xi, out, self.model.decoder.last_layer, self.step)
                    except torch.linalg.LinAlgError as err:  # DCR's eigh on non-finite latents
                        raise FloatingPointError(f"step {self.step + 1}: the latents went non-finite "
                                                 f"({str(err).splitlines()[0]}); stopped before the update; "
                                                 f"{self._last_saved()}; lower train.lr") from None
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
            # one discriminator for all ranks: average its gradients
            all_reduce_mean_([p.grad for p in self.objective.discriminator_parameters() if p.grad is not None])
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

    def _count_codes(self, out) -> None:
        # tokens come from mu: a code is alive when it is some mu's nearest code (the training
        # indices of the noisy samples z_c reach far more codes than mu does)
        self.dead_codes.update(self.model.quantizer.token_indices(out.indices, out.mu))

