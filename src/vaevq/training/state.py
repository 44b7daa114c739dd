"""Training state: one mapping of named components, saved and restored by one pair of functions.

Each component has ``state_dict()`` / ``load_state_dict(state)`` (the model, the optimizers and
schedulers, the weight EMA, the discriminator and LeCam, the dead-code counts, and
:class:`Progress`: step, training seconds, best evaluation). A checkpoint is
``{"format", "config", **{name: component.state_dict()}}``, with Progress's fields at the top
level (``step`` is what every reader looks at first). A generator adds its own components to
the same mapping.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from vaevq.config import Config, config_from_dict, finalize
from vaevq.training.checkpoint import load_checkpoint, save_checkpoint


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


@dataclass
class Progress:
    """Where a run is: the step, seconds spent in training steps over all resumes, the best
    evaluation so far ({"metric", "value", "step"})."""

    step: int = 0
    elapsed: float = 0.0
    best: dict[str, Any] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "elapsed": self.elapsed, "best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.elapsed = float(state.get("elapsed", 0.0))
        self.best = state.get("best", self.best)


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

    def state_dict(self) -> dict[str, Any]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state)


FLAT = "progress"  # the component whose fields sit at the checkpoint's top level


class TrainingState:
    """Named components in a fixed order. ``missing``: for a component a checkpoint may lack,
    the error to raise (None: keep the component as it is)."""

    def __init__(self):
        self.components: dict[str, Stateful] = {}
        self.missing: dict[str, str | None] = {}

    def add(self, name: str, component: Stateful, missing: str | None = "") -> None:
        if name in self.components:
            raise ValueError(f"training state component {name!r} added twice")
        self.components[name] = component
        self.missing[name] = missing

    def __getitem__(self, name: str) -> Stateful:
        return self.components[name]

    def __contains__(self, name: str) -> bool:
        return name in self.components

    def state_dict(self) -> dict[str, Any]:
        """Every component's state (a collective call when a component's is: every rank makes it)."""
        out: dict[str, Any] = {}
        for name, component in self.components.items():
            state = component.state_dict()
            if name == FLAT:
                out.update(state)
            else:
                out[name] = state
        return out

    def load_state_dict(self, state: dict[str, Any], source: str) -> None:
        for name, component in self.components.items():
            if name == FLAT:
                component.load_state_dict(state)
                continue
            if state.get(name) is None:
                message = self.missing[name]
                if message is None:
                    continue
                raise ValueError(f"{source} has no {name} state" + (f": {message}" if message else ""))
            component.load_state_dict(state[name])


def save_state(path: str | Path, config: Config, state: dict[str, Any]) -> None:
    """Write ``state`` (from :meth:`TrainingState.state_dict`) and the config atomically."""
    save_checkpoint(path, {"config": config.to_dict(), **state})


def restore_state(path: str | Path, state: TrainingState, config: Config,
                  device: str | torch.device = "cpu") -> None:
    """Load a checkpoint into every component; refuse one trained with other model, loss, gan or
    generator settings, or other optimizer settings (the optimizer state would silently keep the
    old ones while config.yaml recorded the new); train.steps may change (more steps), data.* may
    move."""
    saved = load_checkpoint(path, device)
    diffs = setting_differences(saved.get("config"), config)
    if diffs:
        raise ValueError(f"{path} was trained with different settings ({'; '.join(diffs[:6])}); resume "
                         "with the checkpoint's settings, or start a new run directory")
    state.load_state_dict(saved, str(path))


def setting_differences(saved: dict[str, Any] | None, config: Config) -> list[str]:
    """The model, loss, gan and generator keys, and the optimizer keys of train (``GUARDED_TRAIN``),
    whose values differ between a checkpoint's config and ``config``."""
    if not saved:
        return []
    try:
        old = finalize(config_from_dict(saved, "checkpoint config")).to_dict()
    except Exception:  # noqa: BLE001 - an unreadable old config is not a reason to refuse
        return []
    new = config.to_dict()
    return [f"{section}.{key}: {old[section].get(key)!r} -> {new[section][key]!r}"
            for section in ("model", "loss", "gan", "generator", "train") for key in new[section]
            if old.get(section, {}).get(key, new[section][key]) != new[section][key]
            and f"{section}.{key}" not in FREE_ON_RESUME
            and (section != "train" or key in GUARDED_TRAIN)]


# train settings the optimizer and schedule state carry: changed on resume, they would be ignored
GUARDED_TRAIN = ("lr", "lr_scale", "lr_base_batch", "betas", "weight_decay", "schedule", "warmup_steps",
                 "min_lr_ratio")


# generator settings that only steer sampling, evaluation or where codes are cached
FREE_ON_RESUME = {f"generator.{k}" for k in ("cfg_scale", "temperature", "top_k", "top_p", "sample_batch",
                                              "eval_samples", "grid_per_class", "cache_dir",
                                              "sample_steps", "eta")}
