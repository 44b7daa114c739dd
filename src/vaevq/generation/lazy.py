"""The latent diffusion modules, imported on first use.

``vaevq.generation.ldm`` imports diffusers, which takes several seconds (it loads torch._dynamo);
every command that does not touch latent diffusion (``vaevq --help``, tokenizer training, the
autoregressive generator) would pay for it if the package imported it eagerly. The package
exposes ``LatentDiffusion`` and ``LDMTrainer`` through these functions (and a module
``__getattr__``), not to break an import cycle: there is none.
"""

from __future__ import annotations

import importlib
from types import ModuleType


def ldm_module() -> ModuleType:
    """vaevq.generation.ldm (LatentDiffusion, the diffusers UNet and schedulers)."""
    return importlib.import_module("vaevq.generation.ldm")


def ldm_trainer_module() -> ModuleType:
    """vaevq.generation.ldm_trainer (LDMTrainer)."""
    return importlib.import_module("vaevq.generation.ldm_trainer")
