"""Pretrained folders (``config.yaml`` + ``model.safetensors``, subfolders for parts) on disk or on
the Hugging Face Hub.

Every model class of vaevq (:class:`~vaevq.models.VAEVQ`, :class:`~vaevq.generation.GPT`,
:class:`~vaevq.generation.LatentDiffusion`) saves the same way: :func:`save_weights` and
:func:`atomic_write_text` into a folder. ``from_pretrained(name)`` takes a local folder or a Hub
repository id ``org/name`` (:func:`resolve_folder`: ``huggingface_hub.snapshot_download``, which
honours ``HF_HUB_OFFLINE``, ``HF_HOME``/``HF_HUB_CACHE`` and ``HF_TOKEN``), and ``push_to_hub``
(:class:`HubMixin`) writes ``save_pretrained`` into a temporary folder and uploads it as one commit.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vaevq.config import yaml_error_line
from vaevq.fileio import atomic_write
from vaevq.rundir import CONFIG, WEIGHTS

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # org/name
PATTERNS = ["*.yaml", "*.safetensors", "*.json", "*.md"]  # what a pretrained folder holds (any depth)


def save_weights(directory: str | Path, state: dict[str, torch.Tensor]) -> None:
    """``model.safetensors`` of a state dict (contiguous CPU copies), written atomically."""
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    atomic_write(Path(directory) / WEIGHTS, lambda p: save_file(state, p))


def load_weights(directory: str | Path, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    path = Path(directory) / WEIGHTS
    try:
        state = load_file(str(path), device=str(map_location))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path}: cannot read the weights ({err})") from None
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{path}: the weights hold non-finite values (first: {name}); the run that wrote "
                             "them diverged")
    return state


def read_yaml(path: Path) -> dict:
    """A pretrained folder's config.yaml as a mapping; a broken file is named."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not a valid config ({yaml_error_line(err)})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a valid config (the top level must be a mapping)")
    return data


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source) -> None:
    """``model.load_state_dict(state)``; a mismatch (missing or unknown keys, another shape) is a
    ValueError naming ``source`` and the first mismatching key."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unknown = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unknown or shapes:
        if shapes:
            k = shapes[0]
            first = f"{k} has shape {tuple(state[k].shape)}, the model needs {tuple(own[k].shape)}"
        elif missing:
            first = f"{missing[0]} is missing"
        else:
            first = f"{unknown[0]} is not a weight of this model"
        raise ValueError(f"{source}: the weights do not fit the model of its config ({first}; "
                         f"{len(missing)} missing, {len(unknown)} unknown, {len(shapes)} of another shape)")
    model.load_state_dict(state)


def require_files(directory: Path, names: tuple[str, ...] = (CONFIG, WEIGHTS), who: str = "save_pretrained",
                  ) -> None:
    for name in names:
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name} is missing (written by {who})")


def resolve_folder(name_or_path: str | Path, revision: str | None = None, cache_dir: str | Path | None = None,
                   token: str | bool | None = None, local_files_only: bool = False) -> Path:
    """A local folder as is; else a Hub repository id ``org/name`` downloaded (or found in the
    Hub cache) with its yaml/safetensors/json/md files. Errors name what was tried."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(f"{path} is a file; from_pretrained takes a folder written by save_pretrained "
                                 "(or a Hugging Face Hub id org/name)")
    name = str(name_or_path)
    if not REPO_ID.match(name):
        raise FileNotFoundError(f"{name} does not exist (from_pretrained takes a folder written by "
                                "save_pretrained or a Hugging Face Hub id org/name)")
    try:
        folder = snapshot_download(name, revision=revision, cache_dir=cache_dir, token=token,
                                   local_files_only=local_files_only, allow_patterns=PATTERNS)
    except LocalEntryNotFoundError as err:
        raise FileNotFoundError(f"{name} is not a local folder, and the Hugging Face Hub repository could not be "
                                f"reached or is not in the cache ({type(err).__name__}: {err})") from None
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise FileNotFoundError(f"{name} is not a local folder, and the Hugging Face Hub answered: "
                                f"{type(err).__name__}: {err}") from None
    return Path(folder)


def push_folder(save, repo_id: str, private: bool | None = None, token: str | None = None,
                commit_message: str | None = None, revision: str | None = None) -> Any:
    """Create ``repo_id`` (if needed) and upload what ``save(folder)`` writes, as one commit."""
    if not REPO_ID.match(repo_id):
        raise ValueError(f"{repo_id!r} is not a Hugging Face Hub repository id (org/name)")
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    with tempfile.TemporaryDirectory(prefix="vaevq-push-") as tmp:
        save(Path(tmp))
        return api.upload_folder(repo_id=repo_id, folder_path=tmp, repo_type="model", revision=revision,
                                 commit_message=commit_message or "Upload with vaevq save_pretrained")


class HubMixin:
    """``push_to_hub`` for a class with ``save_pretrained(folder)``."""

    def push_to_hub(self, repo_id: str, private: bool | None = None, token: str | None = None,
                    commit_message: str | None = None, revision: str | None = None) -> Any:
        """Upload ``save_pretrained`` to the Hugging Face Hub repository ``repo_id`` (org/name)."""
        return push_folder(self.save_pretrained, repo_id, private, token,
                           commit_message or f"Upload {type(self).__name__}", revision)
