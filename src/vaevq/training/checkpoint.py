"""Resume checkpoints (everything needed to continue exactly), written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vaevq.config import Config, config_from_dict, finalize
from vaevq.fileio import atomic_write
from vaevq.hub import load_state
from vaevq.models import VAEVQ
from vaevq.rundir import BEST, LAST, WEIGHTS, RunDir

CHECKPOINT_FORMAT = 1
__all__ = ["BEST", "LAST", "checkpoint_dir", "load_checkpoint", "load_model", "resolve_checkpoint",
           "save_checkpoint"]


def checkpoint_dir(run_dir: str | Path) -> Path:
    return RunDir(run_dir).checkpoints


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """torch.save into a temporary file in the same folder, fsync, then rename."""
    payload = {"format": CHECKPOINT_FORMAT, **state}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated or foreign file
        raise ValueError(f"checkpoint {path} cannot be read: {err}") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a vaevq checkpoint (format {CHECKPOINT_FORMAT})")
    for key in ("model", "config", "step"):
        if key not in state:
            raise ValueError(f"checkpoint {path} lacks the key {key!r}")
    return state


def config_of(state: dict[str, Any], source: str) -> Config:
    return finalize(config_from_dict(state["config"], source))


def resolve_checkpoint(path: str | Path, which: str = "last") -> Path:
    """A run folder (uses checkpoints/{last,best}.pt), or a .pt file itself."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        candidate = RunDir(path).checkpoint("best" if which == "best" else "last")
        if candidate.is_file():
            return candidate
        raise FileNotFoundError(f"{path} holds no checkpoint {candidate.relative_to(path)} "
                                "(a run folder written by `vaevq train`, or a .pt file)")
    raise FileNotFoundError(f"checkpoint {path} does not exist")


def load_model(path: str | Path, which: str = "last", map_location: str = "cpu"):
    """A trained model from a run folder, a checkpoint file or a save_pretrained folder.

    When the run kept a weight EMA, the EMA weights are returned (what evaluation uses).
    """

    path = Path(path)
    if path.is_dir() and (path / WEIGHTS).is_file() and not RunDir(path).checkpoints.is_dir():
        return VAEVQ.from_pretrained(path, map_location)
    file = resolve_checkpoint(path, which)
    state = load_checkpoint(file, map_location)
    model = VAEVQ(config_of(state, str(file)))
    weights = state["ema"] if state.get("ema") is not None else state["model"]
    check_finite(weights, file)
    load_state(model, weights, file)
    return model.eval()


def check_finite(weights: dict[str, Any], source) -> None:
    """Refuse weights holding NaN or inf (a diverged run): nothing evaluated on them means anything."""
    for name, tensor in weights.items():
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{source}: the weights hold non-finite values (first: {name}); the run diverged "
                             "before this checkpoint was written")
