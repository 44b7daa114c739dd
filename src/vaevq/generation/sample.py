"""Sampling a generator run: which labels, token ids in batches, decoded by the tokenizer.

:func:`load_generator` opens a generator run (its final ``model/`` folder, else a checkpoint's
EMA or model weights) and the tokenizer it was trained on (``generator.tokenizer``);
:func:`sample_images` draws ``num`` images with the run's (or the given) sampling settings.
Seeded: the same seed, settings and batch size give the same images on the same device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from vaevq.config import Config, ConfigError, GeneratorConfig
from vaevq.generation.gpt import GPT, gpt_config, latent_grid
from vaevq.models import VAEVQ
from vaevq.training.checkpoint import config_of, load_checkpoint, load_model, resolve_checkpoint


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
    gpt: GPT
    tokenizer: VAEVQ
    config: Config
    step: int | None  # the checkpoint's step (None: the final model/ folder)


def load_generator(path: str | Path, which: str = "last", map_location: str = "cpu") -> GeneratorRun:
    """A generator run folder (or one of its checkpoints): the GPT (EMA weights when kept), the
    tokenizer and the run's config."""
    path = Path(path)
    file = resolve_checkpoint(path, which)
    state = load_checkpoint(file, map_location)
    config = config_of(state, str(file))
    if not config.is_generator:
        raise ValueError(f"{path} is a tokenizer run (generator.kind none); `vaevq sample` needs a generator "
                         "run such as one of `vaevq train gpt-tiny generator.tokenizer=RUN ...`")
    tokenizer = load_tokenizer(config, map_location)
    gpt = GPT(gpt_config(config.generator, tokenizer.quantizer.codebook_size, latent_grid(config)))
    gpt.load_state_dict(state["ema"] if state.get("ema") is not None else state["model"])
    return GeneratorRun(gpt.eval(), tokenizer, config, int(state["step"]))


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
def sample_images(gpt: GPT, tokenizer: VAEVQ, num: int, labels: torch.Tensor | None, **settings):
    """Yield (images (b, C, H, W), ids, labels) batches; ``settings`` as :func:`sample_ids`."""
    for ids, lab in sample_ids(gpt, num, labels, **settings):
        yield decode_ids(tokenizer, ids, gpt.config.grid), ids, lab


def sample_grid(gpt: GPT, tokenizer: VAEVQ, g: GeneratorConfig, seed: int = 0) -> list[torch.Tensor]:
    """Rows of a picture grid: ``g.grid_per_class`` samples of each class (at most 8 classes; one
    row when unconditional), with the config's sampling settings."""
    classes = min(g.num_classes, 8)
    per = g.grid_per_class
    labels = (torch.arange(classes).repeat_interleave(per) if classes else None)
    num = per * max(classes, 1)
    images = torch.cat([x.cpu() for x, _, _ in sample_images(
        gpt, tokenizer, num, labels, cfg_scale=g.cfg_scale, temperature=g.temperature, top_k=g.top_k,
        top_p=g.top_p, seed=seed, batch_size=g.sample_batch)])
    return list(images.view(max(classes, 1), per, *images.shape[1:]))
