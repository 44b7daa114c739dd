"""Sampling a generator run: which labels, token ids in batches, decoded by the tokenizer.

:func:`load_generator` opens a generator run (a checkpoint's EMA or model weights) and the
tokenizer it was trained on (``generator.tokenizer``): a :class:`~vaevq.generation.GPT`
(``kind: ar``) or a :class:`~vaevq.generation.LatentDiffusion` (``kind: ldm``).
:func:`sample_images` draws ``num`` images with the run's (or the given) sampling settings
(:func:`sampling_settings`: cfg_scale, temperature, top_k, top_p for the GPT; cfg_scale,
num_steps, eta for DDIM). Seeded: the same seed, settings and batch size give the same images on
the same device. Every image is ``tokenizer.decode`` of the ids yielded with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from vaevq.config import Config, ConfigError, GeneratorConfig
from vaevq.generation.gpt import GPT, gpt_config, latent_grid
from vaevq.generation.lazy import ldm_module
from vaevq.hub import load_state
from vaevq.models import VAEVQ
from vaevq.training.checkpoint import check_finite, config_of, load_checkpoint, load_model, resolve_checkpoint


def load_tokenizer(config: Config, map_location: str = "cpu") -> VAEVQ:
    """The frozen tokenizer named by ``generator.tokenizer``."""
    path = config.generator.tokenizer
    if not path:
        raise ConfigError(f"{config.name}: generator.tokenizer is not set; pass generator.tokenizer=RUN_DIR "
                          "(a tokenizer run folder, its model/ folder or a checkpoint .pt)")
    if not Path(path).exists():
        raise FileNotFoundError(f"generator.tokenizer {path} does not exist")
    model = load_model(path, config.generator.tokenizer_which, map_location)
    return model.eval().requires_grad_(False)


def tokenizer_split_dir(config: Config) -> Path | None:
    """Where a brain tokenizer run keeps its split (the generator trains on the same subjects)."""
    path = Path(config.generator.tokenizer) if config.generator.tokenizer else None
    return path if path is not None and path.is_dir() else None


@dataclass
class GeneratorRun:
    model: torch.nn.Module  # GPT (kind ar) or LatentDiffusion (kind ldm)
    tokenizer: VAEVQ
    config: Config
    step: int | None  # the checkpoint's step (None: the final model/ folder)


def build_generator(config: Config, tokenizer: VAEVQ) -> torch.nn.Module:
    """A fresh generator of a run's config on its tokenizer (GPT or LatentDiffusion)."""
    if config.generator.kind == "ldm":
        return ldm_module().LatentDiffusion(config, tokenizer)
    return GPT(gpt_config(config.generator, tokenizer.quantizer.codebook_size, latent_grid(config)))


def load_generator(path: str | Path, which: str = "last", map_location: str = "cpu") -> GeneratorRun:
    """A generator run folder (or one of its checkpoints): the generator (EMA weights when kept),
    the tokenizer and the run's config."""
    path = Path(path)
    file = resolve_checkpoint(path, which)
    state = load_checkpoint(file, map_location)
    config = config_of(state, str(file))
    if not config.is_generator:
        raise ValueError(f"{path} is a tokenizer run (generator.kind none); `vaevq sample` needs a generator "
                         "run such as one of `vaevq train gpt-tiny generator.tokenizer=RUN ...` or ldm-tiny")
    tokenizer = load_tokenizer(config, map_location)
    model = build_generator(config, tokenizer)
    weights = state["ema"] if state.get("ema") is not None else state["model"]
    check_finite(weights, file)
    load_state(model, weights, file)
    return GeneratorRun(model.eval(), tokenizer, config, int(state["step"]))


AR_SETTINGS = ("cfg_scale", "temperature", "top_k", "top_p")
LDM_SETTINGS = ("cfg_scale", "num_steps", "eta")


def sampling_settings(g: GeneratorConfig, **given) -> dict:
    """The sampling settings of a generator kind: the config's, replaced by the ``given`` ones that
    are not None; a setting of the other kind given raises (e.g. ``eta`` for the GPT)."""
    ldm = g.kind == "ldm"
    names = LDM_SETTINGS if ldm else AR_SETTINGS
    wrong = [k for k, v in given.items() if v is not None and k not in names]
    if wrong:
        raise ValueError(f"{wrong[0]} does not apply to a {'latent diffusion' if ldm else 'autoregressive'} "
                         f"generator (its sampling settings: {', '.join(names)})")
    defaults = ({"cfg_scale": g.cfg_scale, "num_steps": g.sample_steps, "eta": g.eta} if ldm else
                {"cfg_scale": g.cfg_scale, "temperature": g.temperature, "top_k": g.top_k, "top_p": g.top_p})
    return {k: (given[k] if given.get(k) is not None else v) for k, v in defaults.items()}


def class_plan(num: int, num_classes: int, classes: list[int] | None = None) -> torch.Tensor | None:
    """Labels of ``num`` samples: ``classes`` (or every class) in turn; None when unconditional."""
    if num_classes == 0:
        if classes:
            raise ValueError("--classes given, but the generator is unconditional (generator.num_classes 0)")
        return None
    chosen = list(classes) if classes else list(range(num_classes))
    bad = [c for c in chosen if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"class {bad[0]} is out of range: the generator has {num_classes} classes "
                         f"(0..{num_classes - 1})")
    return torch.tensor([chosen[i % len(chosen)] for i in range(num)], dtype=torch.long)


@torch.no_grad()
def decode_ids(tokenizer: VAEVQ, ids: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, L) ids -> images (B, C, H, W) in [-1, 1] (clamped)."""
    return tokenizer.decode(ids.view(ids.shape[0], *grid)).clamp(-1, 1)


@torch.no_grad()
def sample_ids(gpt: GPT, num: int, labels: torch.Tensor | None, cfg_scale: float = 1.0, temperature: float = 1.0,
               top_k: int = 0, top_p: float = 1.0, seed: int = 0, batch_size: int = 64,
               progress: bool = False):
    """Yield (ids (b, L), labels (b,) or None) batches of ``num`` samples; one generator seeded by ``seed``."""
    device = gpt.rope.device
    gen = torch.Generator(device=device).manual_seed(seed)
    for start in tqdm(range(0, num, batch_size), desc="sample", disable=not progress, leave=False):
        n = min(batch_size, num - start)
        lab = labels[start:start + n].to(device) if labels is not None else None
        ids = gpt.generate(lab, num=n, cfg_scale=cfg_scale, temperature=temperature, top_k=top_k, top_p=top_p,
                           generator=gen)
        yield ids, lab


@torch.no_grad()
def sample_latent_ids(ldm, num: int, labels: torch.Tensor | None, cfg_scale: float = 1.0, num_steps: int = 50,
                      eta: float = 0.0, seed: int = 0, batch_size: int = 64, progress: bool = False):
    """Yield (images, ids (b, L), labels) batches of a LatentDiffusion: DDIM latents decoded
    through their nearest codes; one generator (on the model's device) seeded by ``seed``."""
    gen = torch.Generator(device=ldm.device).manual_seed(seed)
    for start in tqdm(range(0, num, batch_size), desc="sample", disable=not progress, leave=False):
        n = min(batch_size, num - start)
        lab = labels[start:start + n].to(ldm.device) if labels is not None else None
        latents = ldm.sample_latents(lab, num=n, num_steps=num_steps, cfg_scale=cfg_scale, eta=eta, generator=gen)
        images, ids = ldm.decode_latents(latents)
        yield images, ids.flatten(1), lab


@torch.no_grad()
def sample_images(model, tokenizer: VAEVQ, num: int, labels: torch.Tensor | None, **settings):
    """Yield (images (b, C, H, W), ids (b, L), labels) batches of a GPT or a LatentDiffusion;
    ``settings``: seed, batch_size, progress and the kind's sampling settings
    (:func:`sample_ids` for the GPT, :func:`sample_latent_ids` for latent diffusion)."""
    if isinstance(model, GPT):
        for ids, lab in sample_ids(model, num, labels, **settings):
            yield decode_ids(tokenizer, ids, model.config.grid), ids, lab
    else:
        yield from sample_latent_ids(model, num, labels, **settings)


def sample_grid(model, tokenizer: VAEVQ, g: GeneratorConfig, seed: int = 0) -> list[torch.Tensor]:
    """Rows of a picture grid: ``g.grid_per_class`` samples of each class (at most 8 classes; one
    row when unconditional), with the config's sampling settings."""
    classes = min(g.num_classes, 8)
    per = g.grid_per_class
    labels = (torch.arange(classes).repeat_interleave(per) if classes else None)
    num = per * max(classes, 1)
    images = torch.cat([x.cpu() for x, _, _ in sample_images(
        model, tokenizer, num, labels, seed=seed, batch_size=g.sample_batch, **sampling_settings(g))])
    return list(images.view(max(classes, 1), per, *images.shape[1:]))
