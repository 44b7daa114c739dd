"""Finding pretrained weight files: explicit path, environment, installed package, hub cache, download.

Every pretrained network of vaevq (the LPIPS trunks and heads, later the FID networks) is
described by a :class:`WeightSource`. :func:`resolve_weights` looks for the file in this
order and returns the first that exists:

1. an explicit path (from the config or a command-line flag): used as given, never skipped;
2. the source's environment variable (for example ``VAEVQ_LPIPS_WEIGHTS``);
3. a file shipped inside an installed Python package, found without importing the package
   (``lpips`` and ``stlpips_pytorch`` import torchvision at import time);
4. the torch hub cache, ``$TORCH_HOME/hub/checkpoints/<filename>`` (where torchvision and
   ``torch.hub`` keep their downloads);
5. a download from the source's URLs into that cache (written to a temporary file, checked
   against the known SHA-256 prefix, then renamed), unless downloads are off
   (``download=False`` or ``VAEVQ_OFFLINE=1``).

When nothing is found, :class:`WeightsNotFoundError` names every place that was tried and
how to provide the file. Nothing silently falls back to random weights.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class WeightSource:
    name: str  # what the file is, for messages
    filename: str  # its name in the hub cache
    urls: tuple[str, ...] = ()
    env: str | None = None  # environment variable holding a path
    package: tuple[str, str] | None = None  # (importable package, path inside it)
    sha256_prefix: str | None = None  # checked after a download
    hint: str = ""  # how a user provides the file


class WeightsNotFoundError(FileNotFoundError):
    """No weight file was found; the message lists every place that was tried."""


def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def package_file(package: str, relative: str) -> Path | None:
    """Path of ``relative`` inside an installed package, without importing the package."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidate = Path(root) / relative
        if candidate.is_file():
            return candidate
    return None


def offline() -> bool:
    return os.environ.get("VAEVQ_OFFLINE", "").strip().lower() in {"1", "true", "yes"}


def download(url: str, dest: Path, sha256_prefix: str | None = None, progress: bool = True,
             timeout: float = 60.0) -> Path:
    """Download ``url`` (http, https or file) to ``dest`` atomically; verify the hash prefix."""
    from tqdm.auto import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            total = response.headers.get("Content-Length")
            bar = tqdm(total=int(total) if total else None, unit="B", unit_scale=True,
                       desc=f"downloading {dest.name}", disable=not progress)
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
            bar.close()
        got = digest.hexdigest()
        if sha256_prefix and not got.startswith(sha256_prefix):
            raise ValueError(f"{url}: SHA-256 {got} does not start with the expected {sha256_prefix}; "
                             "the download is corrupt or not the expected file")
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return dest


def resolve_weights(source: WeightSource, explicit: str | os.PathLike | None = None,
                    download_ok: bool = True, progress: bool = True) -> Path:
    """The path of ``source``'s weight file (see the module docstring for the order)."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"{source.name}: the weight file given explicitly does not exist: {path}")
        return path
    tried: list[str] = []
    if source.env:
        value = os.environ.get(source.env)
        if value:
            path = Path(value).expanduser()
            if path.is_file():
                return path
            raise WeightsNotFoundError(f"{source.name}: ${source.env} points to a missing file: {path}")
        tried.append(f"${source.env} (not set)")
    if source.package:
        found = package_file(*source.package)
        if found is not None:
            return found
        package, relative = source.package
        tried.append(f"package file {package}/{relative} (package not installed or file absent)")
    cached = hub_checkpoint_dir() / source.filename
    if cached.is_file():
        return cached
    tried.append(f"hub cache {cached} (absent)")
    if not download_ok or offline():
        tried.append("download (switched off" + (" by VAEVQ_OFFLINE" if offline() else "") + ")")
    else:
        for url in source.urls:
            try:
                return download(url, cached, source.sha256_prefix, progress)
            except Exception as exc:  # noqa: BLE001 - every failure is reported below
                tried.append(f"download {url} ({type(exc).__name__}: {exc})")
    lines = "\n  - ".join(tried)
    raise WeightsNotFoundError(
        f"{source.name}: no weight file found. Tried:\n  - {lines}\n"
        f"Provide it: {source.hint or 'pass its path explicitly'}"
    )


def load_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    """torch.load a plain state dict (weights only); a clear error names the file otherwise."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: cannot be read as a {what} weight file ({type(exc).__name__}: {exc})") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors for {what}, got {type(state).__name__}")
    return dict(state)


def load_checked(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str, what: str,
                 optional: set[str] | frozenset[str] = frozenset()) -> None:
    """Load ``state`` into ``module`` strictly, with errors that name the file and the keys:
    missing keys (except ``optional`` ones, kept from the module), unexpected keys, wrong shapes."""
    own = module.state_dict()
    missing = [k for k in own if k not in state and k not in optional]
    unknown = [k for k in state if k not in own]
    if missing or unknown:
        raise ValueError(f"{source}: not the {what} layout (missing {missing[:5]}, unexpected {unknown[:5]})")
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise ValueError(f"{source}: {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
    module.load_state_dict({**{k: own[k] for k in optional if k not in state}, **state})
