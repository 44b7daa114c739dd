"""The one training loop every run kind shares (tokenizers here, generators in vaevq.generation).

:class:`LoopTrainer` owns what does not depend on what is trained: the run directory, the
process group, :class:`~vaevq.training.state.Progress` and the named
:class:`~vaevq.training.state.TrainingState`, ``log.jsonl`` (trimmed on resume), atomic
checkpoints, the best checkpoint, SIGINT/SIGTERM stops at the same step on every rank, the
progress bar and the schedule of logging, evaluation, pictures and checkpoints. A subclass
builds its model, optimizer and data in ``__init__`` and provides:

- ``_loader()``: an iterable of batches (tuples of tensors) for the steps still to run;
- ``_to_device(batch)`` -> the arguments of ``_train_step``;
- ``_train_step(*args)`` -> {term: float}, one optimizer step;
- ``run_eval()`` -> metrics (``_record_eval`` logs them and keeps the best checkpoint),
  ``save_images()``; ``_announce()``, ``_record_data()``. ``self.model``, ``self.ema`` and
  ``self.ddp`` give the defaults of ``eval_model()``, ``_train_mode()`` and ``_save_pretrained()``.
"""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from vaevq.config import Config
from vaevq.distributed import DistInfo, all_reduce_sum, barrier
from vaevq.fileio import append_line, atomic_write_text, dumps, read_jsonl
from vaevq.rundir import RunDir
from vaevq.training.state import Progress, TrainingState, save_state


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


class LoopTrainer:
    """The shared loop; see the module docstring for what a subclass provides."""

    config: Config
    run: RunDir
    dist: DistInfo
    progress: Progress
    state: TrainingState
    model: torch.nn.Module  # what is trained (save_pretrained at the end)
    ema: Any  # a WeightEMA of the model, or None
    ddp: torch.nn.Module  # the model, wrapped for several processes
    scheduler: torch.optim.lr_scheduler.LRScheduler
    total_steps: int
    rate_name = "img_per_s"  # the throughput logged every log_every steps (items of a batch per second)
    best_mode = "max"  # whether train.best_metric is better higher (max) or lower (min)

    # progress, under the names the loop and its callers use
    @property
    def step(self) -> int:
        return self.progress.step

    @step.setter
    def step(self, value: int) -> None:
        self.progress.step = value

    @property
    def elapsed(self) -> float:
        return self.progress.elapsed

    @elapsed.setter
    def elapsed(self, value: float) -> None:
        self.progress.elapsed = value

    @property
    def best(self) -> dict[str, Any]:
        return self.progress.best

    @best.setter
    def best(self, value: dict[str, Any]) -> None:
        self.progress.best = value

    # ------------------------------------------------------------------ state

    def save(self, name: str = "last") -> None:
        """Write a checkpoint (atomically; rank 0). Weights holding NaN or inf are never written:
        the run stops naming the step, and the checkpoint on disk stays the last good one."""
        bad = [n for n, p in self.model.state_dict().items()
               if p.is_floating_point() and not bool(torch.isfinite(p).all())]
        if bad:
            raise FloatingPointError(f"step {self.step}: the weights hold non-finite values (first: {bad[0]}); "
                                     f"not writing {self.run.checkpoint(name)}; {self._last_saved()}")
        # every rank gathers the state (collective parts), then rank 0 writes
        state = self.state.state_dict()
        if self.dist.is_main:
            try:
                save_state(self.run.checkpoint(name), self.config, state)
            except OSError as err:
                raise OSError(err.errno, f"{err.strerror} (step {self.step}); {self._last_saved()}") from None
            if name == "last":
                self.saved_step = self.step
        barrier()

    saved_step: int | None = None  # the step of the last checkpoint written (or resumed from)

    def _last_saved(self) -> str:
        step = self.saved_step if self.saved_step is not None else getattr(self, "resumed_from", None)
        last = self.run.last
        return (f"{last} (step {step}) is intact" if step is not None and last.is_file() else
                f"{last} is intact" if last.is_file() else "no checkpoint was written before")

    def _update_best(self, metrics: dict[str, Any]) -> None:
        """Save ``best`` when train.best_metric improved (higher or lower as ``best_mode``)."""
        value = metrics.get(self.best["metric"])
        if value is None or not math.isfinite(value):
            return
        old = self.best["value"]
        better = old is None or (value > old if self.best_mode == "max" else value < old)
        if better:
            self.best = {"metric": self.best["metric"], "value": value, "step": self.step}
            self.save("best")

    # ------------------------------------------------------------------ logging

    @property
    def log_path(self) -> Path:
        return self.run.log

    def log(self, record: dict[str, Any]) -> None:
        """One whole line of ``log.jsonl`` (non-finite numbers written as null)."""
        if self.dist.is_main:
            append_line(self.log_path, dumps(record))

    def _trim_log(self) -> None:
        """On resume, drop log lines written after the checkpoint (they will be redone)."""
        if not (self.dist.is_main and self.log_path.is_file()):
            return
        kept = [r for r in read_jsonl(self.log_path) if r.get("step", 0) <= self.step]
        atomic_write_text(self.log_path, "".join(dumps(r) + "\n" for r in kept))

    def print(self, *args) -> None:
        if self.dist.is_main:
            tqdm.write(" ".join(str(a) for a in args))

    def _record_eval(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """Log an evaluation (``eval/`` keys, with the training seconds) and keep the best checkpoint."""
        self.log({"step": self.step, "train_s": round(self.elapsed, 3),
                  **{f"eval/{k}": v for k, v in metrics.items()}})
        self._update_best(metrics)
        return metrics

    # ------------------------------------------------------------------ hooks

    def eval_model(self):
        """The weights evaluation, pictures and the final model use: the EMA copy when kept."""
        return self.ema.model if self.ema else self.model

    def _record_data(self) -> None:
        """Notes and problems of the data, printed and logged (rank 0, before the first step)."""

    def _announce(self) -> None:
        """One line: what is trained, on what, how."""

    def _train_mode(self) -> None:
        self.ddp.train()

    def _save_pretrained(self) -> None:
        """The final (EMA) model in RUN/model."""
        self.eval_model().save_pretrained(self.run.model)

    def _to_device(self, batch) -> tuple:
        raise NotImplementedError

    def _loader(self):
        raise NotImplementedError

    def _train_step(self, *args) -> dict[str, float]:
        raise NotImplementedError

    def run_eval(self) -> dict[str, Any]:
        raise NotImplementedError

    def save_images(self) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ loop

    def train(self) -> dict[str, Any]:
        """Run to train.steps (or epochs); returns the final evaluation metrics."""
        if not self.dist.is_main:
            return self._train()
        note = self.run.acquire()  # one process trains into a run folder at a time
        try:
            if note:
                self.print(f"[vaevq] {note}")
            removed = self.run.clean_temporary()
            if removed:
                self.print(f"[vaevq] removed {len(removed)} temporary file(s) of an interrupted write: "
                           + ", ".join(p.name for p in removed))
            return self._train()
        finally:
            self.run.release()

    def _train(self) -> dict[str, Any]:
        t = self.config.train
        if self.dist.is_main:
            self.run.mkdir()
            atomic_write_text(self.run.config, self.config.to_yaml())
            self._trim_log()
            self._record_data()
        self._announce()
        self._train_mode()
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", dynamic_ncols=True,
                   disable=not (t.progress and self.dist.is_main), mininterval=1.0)
        timer, seen = time.perf_counter(), 0
        with _StopFlag() as stop:
            for batch in self._loader():
                # other randomness of a step (dropout) is a function of (seed, step, rank)
                torch.manual_seed((t.seed * 1_000_003 + self.step) * 131 + self.dist.rank)
                step_start = time.perf_counter()
                args = self._to_device(batch)
                losses = self._train_step(*args)
                self.elapsed += time.perf_counter() - step_start
                self.step += 1
                seen += args[0].shape[0] * self.dist.world_size
                bar.update(1)
                if self.step % t.log_every == 0 or self.step == self.total_steps:
                    elapsed = time.perf_counter() - timer
                    record = {"step": self.step, "lr": self.scheduler.get_last_lr()[0],
                              **{f"loss/{k}": v for k, v in losses.items()},
                              self.rate_name: seen / max(elapsed, 1e-9)}
                    self.log(record)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in losses.items()}, refresh=False)
                    timer, seen = time.perf_counter(), 0
                if t.eval_every and self.step % t.eval_every == 0 and self.step < self.total_steps:
                    m = self.run_eval()
                    self.print(f"step {self.step}: " + self._short(m))
                if t.image_every and self.step % t.image_every == 0:
                    self.save_images()
                if t.checkpoint_every and self.step % t.checkpoint_every == 0:
                    self.save()
                if self._stop_everywhere(stop.requested):
                    self.save()
                    bar.close()
                    self.print(f"[vaevq] stopped at step {self.step}; checkpoint saved; "
                               f"continue with --resume")
                    raise KeyboardInterrupt
        bar.close()
        metrics = self.run_eval()
        self.save_images()
        self.save()
        if self.dist.is_main:
            self._save_pretrained()
        self.print(f"[vaevq] done at step {self.step}: " + self._short(metrics))
        return metrics

    short_keys: tuple[str, ...] = ()

    def _short(self, metrics: dict[str, Any]) -> str:
        return ", ".join(f"{k} {metrics[k]:.4g}" for k in self.short_keys if k in metrics)

    def _stop_everywhere(self, requested: bool) -> bool:
        """A stop asked on any rank stops every rank at the same step (saving is collective)."""
        if not self.dist.enabled:
            return requested
        flag = torch.tensor([1.0 if requested else 0.0], device=self.dist.device)
        return bool(all_reduce_sum(flag).item() > 0)

    def _check_finite(self, losses: dict[str, float]) -> None:
        bad = [k for k, v in losses.items() if not math.isfinite(v)]
        if bad:
            raise FloatingPointError(f"step {self.step + 1}: the loss term {bad[0]} is non-finite "
                                     f"({losses[bad[0]]}; all: "
                                     + ", ".join(f"{k} {v:.4g}" for k, v in losses.items())
                                     + f"); stopped before the update; {self._last_saved()}; lower train.lr or "
                                     "check the data")
