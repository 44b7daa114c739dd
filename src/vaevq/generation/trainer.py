"""Training a generator on a frozen tokenizer's codes, through the shared loop.

:class:`GPTTrainer` is a :class:`~vaevq.training.loop.LoopTrainer` (the tokenizer's
:class:`~vaevq.training.Trainer` is the other): the same run directory, ``log.jsonl``, atomic
checkpoints and exact ``--resume``, torchrun, bf16 autocast on CUDA, weight EMA, warm-up +
cosine or constant schedule, gradient clipping, periodic sample grids. What it adds:

1. the tokenizer of ``generator.tokenizer`` is loaded and frozen; the run's ``model`` section
   becomes the tokenizer's own (so ``config.yaml`` says which tokenizer made the codes);
2. the training split (and its horizontal flips with ``generator.flip``) is encoded once and
   cached (:func:`~vaevq.generation.codes.extract_codes`; rank 0 writes, the others read);
   each step draws one of an image's augmentations by its seed;
3. the loss is the next-token cross-entropy; AdamW with weight decay on the matrices only
   (LlamaGen: every parameter with 2 or more dimensions; norms unregularized), betas and
   decay from ``train.betas`` / ``train.weight_decay`` (the presets: LlamaGen's 0.9, 0.95, 0.05);
4. evaluation during training is the cross-entropy on the held-out split's codes (``val_loss``,
   lower is better: the best checkpoint), with their labels when the held-out classes are training
   classes, else with the null label (the built-in held-out photos are other photos);
   ``vaevq eval`` computes the generation metrics.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from vaevq.config import Config, ConfigError
from vaevq.data import StepBatchSampler, build_datasets, warm_data_caches
from vaevq.data.brats import default_cache_dir
from vaevq.distributed import all_reduce_sum, barrier, init_distributed
from vaevq.generation.codes import extract_codes
from vaevq.generation.gpt import GPT
from vaevq.generation.sample import gpt_config, latent_grid, load_tokenizer, sample_grid, tokenizer_split_dir
from vaevq.rundir import RunDir
from vaevq.training.images import save_grid
from vaevq.training.loop import LoopTrainer
from vaevq.training.state import Progress, TrainingState, WeightEMA, restore_state
from vaevq.training.trainer import effective_lr, lr_lambda, total_steps


class CodeDataset(Dataset):
    """Items ``(index, seed)`` -> (codes (L,) int64, label): one augmentation of the image drawn
    by the seed (the original or its flip when codes hold both)."""

    def __init__(self, codes: np.ndarray, labels: np.ndarray):
        self.codes, self.labels = codes, labels

    def __len__(self) -> int:
        return self.codes.shape[0]

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (int(item), None)
        aug = 0
        if seed is not None and self.codes.shape[1] > 1:
            aug = int(torch.randint(self.codes.shape[1], (1,), generator=torch.Generator().manual_seed(seed)))
        return torch.from_numpy(np.array(self.codes[index, aug], dtype=np.int64)), int(self.labels[index])


def build_gpt_optimizer(model: torch.nn.Module, config: Config, lr: float) -> torch.optim.AdamW:
    """AdamW; weight decay on parameters with 2 or more dimensions (LlamaGen's grouping)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    rest = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.train.weight_decay},
              {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=config.train.betas)


def codes_key(config: Config, split: str) -> dict:
    """What besides the tokenizer and the images identifies a run's cached codes."""
    return {"data": config.to_dict()["data"], "split": split}


def codes_cache_dir(config: Config) -> Path:
    g = config.generator
    return Path(g.cache_dir).expanduser() if g.cache_dir else default_cache_dir() / "codes"


class GeneratorTrainer(LoopTrainer):
    """What every generator run shares: the frozen tokenizer (the run records its model
    settings), the image splits (a brain tokenizer's split by subject reused), the class labels,
    AdamW + schedule + EMA, the named training state, exact resume, DistributedDataParallel, the
    step-seeded loader and the periodic sample grids. A subclass sets ``kind`` and provides
    ``_prepare_data()`` (``train_set`` of (index, seed) items, held-out data, ``train_classes``,
    ``eval_classes``, ``eval_labels``), ``_build_model()``, ``_train_step`` and ``run_eval``."""

    kind = ""
    best_mode = "min"
    train_set: Dataset
    train_classes: list[str]
    eval_classes: list[str]
    eval_labels: np.ndarray

    def __init__(self, config: Config, run_dir: str | Path, resume: bool = False, device: str | None = None):
        if config.generator.kind != self.kind:
            raise ConfigError(f"{config.name}: generator.kind is {config.generator.kind!r}; "
                              f"{type(self).__name__} trains {self.kind!r}")
        self.config = config
        self.run = RunDir(run_dir)
        self.run_dir = self.run.root
        self.dist = init_distributed(device)
        g, t = config.generator, config.train
        resuming = resume and self.run.has_checkpoint()
        device = self.dist.device

        # 1. the frozen tokenizer; the run records its model settings
        self.tokenizer = load_tokenizer(config, "cpu").to(device)
        tok_config = self.tokenizer.config
        if tok_config.data.resolution != config.data.resolution:
            raise ConfigError(f"data.resolution {config.data.resolution} differs from the tokenizer's "
                              f"{tok_config.data.resolution} ({g.tokenizer}); set data.resolution="
                              f"{tok_config.data.resolution}")
        config.generator.tokenizer = str(Path(g.tokenizer).resolve())
        config.model = tok_config.model
        self.grid = latent_grid(config)

        # 2. the data (codes or latents of the training split, the held-out split) and the labels
        split_from = tokenizer_split_dir(config) or self.run_dir
        if self.dist.enabled:  # the data caches (brain slices, image verdicts) prepared once, in parallel
            warm_data_caches(config, self.dist.rank, self.dist.world_size, self.dist.local_rank == 0,
                             split_from, progress=t.progress)
        self.train_images, self.eval_images = build_datasets(config, split_from,
                                                             progress=self.dist.is_main and t.progress)
        self._prepare_data()
        # held-out images of the training classes are scored with their labels; held-out images of
        # other classes (the built-in photos: other photos) with the null label (unconditional)
        self.eval_conditional = set(self.eval_classes) <= set(self.train_classes)
        if self.eval_conditional and len(self.eval_labels):
            remap = np.array([self.train_classes.index(c) for c in self.eval_classes], dtype=np.int64)
            self.eval_labels = remap[np.asarray(self.eval_labels)]
        classes = len(self.train_classes) if len(self.train_set) else 1
        if g.num_classes and classes > g.num_classes:
            raise ConfigError(f"the training data has {classes} classes but generator.num_classes is "
                              f"{g.num_classes}; set generator.num_classes={classes} (or 0: unconditional)")
        self.data_classes = classes
        self.total_steps = total_steps(config, len(self.train_set), self.dist.world_size)

        # 3. the model, optimizer, schedule, EMA
        torch.manual_seed(t.seed)  # identical initial weights on every rank
        self.model = self._build_model().to(device)
        self.ema = WeightEMA(self.model, t.ema_decay) if t.ema_decay > 0 else None
        self.lr, self.lr_rule = effective_lr(config, self.dist.world_size)
        self.autocast = t.precision == "bf16" and device.type == "cuda"
        self.optimizer = build_gpt_optimizer(self.model, config, self.lr)
        self.lr_factor = lr_lambda(config, self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor)
        self.progress = Progress(best={"metric": "val_loss", "value": None, "step": None})
        self.state = TrainingState()
        self.state.add("progress", self.progress)
        self.state.add("model", self.model)
        self.state.add("optimizer", self.optimizer)
        self.state.add("scheduler", self.scheduler)
        if self.ema is not None:
            self.state.add("ema", self.ema, "train.ema_decay is set; start a new run directory")
        self.resumed_from: int | None = None
        if resuming:
            restore_state(self.run.last, self.state, config, device)
            self.resumed_from = self.step
        if t.compile:
            self.model.compile()
        self.ddp = (DistributedDataParallel(self.model, device_ids=[self.dist.local_rank] if device.type == "cuda"
                                            else None) if self.dist.enabled else self.model)

    def _prepare_data(self) -> None:
        raise NotImplementedError

    def _build_model(self) -> torch.nn.Module:
        raise NotImplementedError

    def _rank_zero_first(self, work):
        """``work()`` on rank 0, then on the others (which read what rank 0 cached)."""
        result = None
        for rank_turn in (True, False):
            if self.dist.is_main == rank_turn:
                result = work()
            barrier()
        return result

    @staticmethod
    def _classes(codes_dir: Path) -> list[str]:
        """The class names of cached codes or latents (recorded in their key by extract_codes)."""
        return json.loads((codes_dir / "key.json").read_text())["classes"]

    # ------------------------------------------------------------------ hooks of the loop

    def _loader(self) -> DataLoader:
        t = self.config.train
        sampler = StepBatchSampler(len(self.train_set), t.batch_size * t.grad_accum, seed=t.seed,
                                   start_step=self.step, total_steps=self.total_steps,
                                   rank=self.dist.rank, world_size=self.dist.world_size)
        return DataLoader(self.train_set, batch_sampler=sampler, num_workers=self.config.data.num_workers,
                          pin_memory=self.dist.device.type == "cuda")

    def _to_device(self, batch) -> tuple:
        return tuple(x.to(self.dist.device, non_blocking=True) for x in batch)

    def _record_data(self) -> None:
        for note in getattr(self.train_images, "notes", []):
            self.print(f"[vaevq] {note}")

    def _optimizer_step(self, out: dict[str, float]) -> dict[str, float]:
        """After the backward passes: clip (``train.grad_clip``), step, schedule, EMA; ``out`` gains
        the gradient norm when clipped."""
        if self.config.train.grad_clip > 0:
            out["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                                                     self.config.train.grad_clip))
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return out

    def save_images(self) -> None:
        """A grid of samples (a row per class) with the run's sampling settings, seeded."""
        if not self.dist.is_main:
            return
        rows = sample_grid(self.eval_model(), self.tokenizer, self.config.generator, seed=self.config.train.seed)
        save_grid(rows, self.run.image(self.step), scale=max(1, 128 // rows[0].shape[-1]))


class GPTTrainer(GeneratorTrainer):
    """Train the autoregressive generator of ``config`` (``generator.kind: ar``) into ``run_dir``."""

    kind = "ar"
    rate_name = "seq_per_s"
    short_keys = ("val_loss", "val_ppl")

    def _prepare_data(self) -> None:
        """Codes of the training split (and flips; cached) and of the held-out split."""
        config, g = self.config, self.config.generator
        cache = codes_cache_dir(config)

        def extract():
            train = extract_codes(self.tokenizer, self.train_images, cache, flip=g.flip,
                                  batch_size=config.eval.batch_size, device=self.dist.device,
                                  extra_key=codes_key(config, "train"))
            held = extract_codes(self.tokenizer, self.eval_images, cache, flip=False,
                                 batch_size=config.eval.batch_size, device=self.dist.device,
                                 extra_key=codes_key(config, "eval"))
            return train, held

        (self.train_codes, self.train_labels, self.codes_dir), (self.eval_codes, self.eval_labels, eval_dir) = \
            self._rank_zero_first(extract)
        self.train_classes = self._classes(self.codes_dir)
        self.eval_classes = self._classes(eval_dir)
        self.train_set = CodeDataset(self.train_codes, self.train_labels)

    def _build_model(self) -> GPT:
        self.gpt_config = gpt_config(self.config.generator, self.tokenizer.quantizer.codebook_size, self.grid)
        return GPT(self.gpt_config)

    def _announce(self) -> None:
        t, g = self.config.train, self.config.generator
        n_params = sum(p.numel() for p in self.model.parameters())
        start = f"resuming at step {self.step}" if self.resumed_from is not None else "starting"
        self.print(
            f"[vaevq] {self.config.name}: {start}; {self.total_steps} steps; GPT {g.n_layer} layers x {g.dim} "
            f"({n_params / 1e6:.2f} M parameters) on {self.grid[0]}x{self.grid[1]} tokens of K "
            f"{self.gpt_config.vocab_size} from {g.tokenizer}; {len(self.train_set)} train images x "
            f"{self.train_codes.shape[1]} views, {len(self.eval_codes)} held out; "
            f"{g.num_classes or 'no'} classes; codes cached in {self.codes_dir}; global batch "
            f"{t.batch_size * self.dist.world_size * t.grad_accum}; {self.lr_rule}, {t.schedule} schedule; "
            f"AdamW betas {tuple(t.betas)} weight decay {t.weight_decay}; device {self.dist.device}"
            + ("; bf16 autocast" if self.autocast else ""))

    def _train_step(self, tokens: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        return self.train_step(tokens, labels)

    def train_step(self, tokens: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """One optimizer step over ``train.grad_accum`` micro-batches: next-token cross-entropy."""
        accum = self.config.train.grad_accum
        self.optimizer.zero_grad(set_to_none=True)
        labels = labels if self.gpt_config.num_classes else None
        chunks = list(zip(tokens.chunk(accum), labels.chunk(accum) if labels is not None else [None] * accum))
        total = 0.0
        for i, (x, y) in enumerate(chunks):
            last = i == len(chunks) - 1
            sync = self.ddp.no_sync() if (self.dist.enabled and not last) else contextlib.nullcontext()
            with sync:
                with torch.autocast(device_type=self.dist.device.type, dtype=torch.bfloat16,
                                    enabled=self.autocast):
                    logits = self.ddp(x, y)
                loss = F.cross_entropy(logits.float().flatten(0, 1), x.flatten())
                value = float(loss.detach())
                self._check_finite({"ce": value})
                (loss / len(chunks)).backward()
            total += value / len(chunks)
        return self._optimizer_step({"ce": total})

    @torch.no_grad()
    def validation_loss(self, model: GPT | None = None) -> dict[str, float]:
        """Cross-entropy (nats per token) and perplexity on the held-out split's codes (every rank a share)."""
        model = model or self.eval_model()
        was_training = model.training
        model.eval()
        n, bs = len(self.eval_codes), self.config.eval.batch_size
        sums = torch.zeros(2, dtype=torch.float64)
        mine = list(range(self.dist.rank, n, self.dist.world_size))
        for start in range(0, len(mine), bs):
            idx = mine[start:start + bs]
            x = torch.from_numpy(np.asarray(self.eval_codes[idx, 0], dtype=np.int64)).to(self.dist.device)
            y = (torch.from_numpy(np.asarray(self.eval_labels[idx], dtype=np.int64)).to(self.dist.device)
                 if self.gpt_config.num_classes and self.eval_conditional else None)
            logits = model(x, y)
            sums[0] += float(F.cross_entropy(logits.flatten(0, 1), x.flatten(), reduction="sum"))
            sums[1] += x.numel()
        model.train(was_training)
        sums = all_reduce_sum(sums)
        loss = float(sums[0] / max(float(sums[1]), 1.0))
        return {"val_loss": loss, "val_ppl": float(np.exp(loss)), "val_tokens": int(sums[1])}

    def run_eval(self) -> dict[str, Any]:
        metrics = self.validation_loss()
        return self._record_eval(metrics)
