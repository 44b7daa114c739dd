"""Generators trained on a tokenizer's tokens (issue 14: the autoregressive model; issue 15:
latent diffusion): the LlamaGen-style GPT and its sampling, latent diffusion on diffusers
(``LatentDiffusion``, ``LDMTrainer``: imported on first use, see :mod:`vaevq.generation.lazy`),
code and latent extraction (cached, LlamaGen's layout), training through the shared loop, the
generation evaluation."""

from pathlib import Path

from vaevq.config import Config
from vaevq.generation.codes import (
    class_labels,
    dataset_labels,
    encode_images,
    extract_codes,
    extract_latents,
    unigram_samples,
    write_llamagen,
)
from vaevq.generation.gpt import GPT, GPTConfig, filter_logits, sample_logits
from vaevq.generation.lazy import ldm_module, ldm_trainer_module
from vaevq.generation.sample import load_generator, sample_images
from vaevq.generation.trainer import GPTTrainer
from vaevq.training import Trainer


def make_trainer(config: Config, run_dir: str | Path, resume: bool = False, device: str | None = None):
    """The trainer of a config's run kind: a tokenizer (:class:`~vaevq.training.Trainer`) or a
    generator (``generator.kind: ar`` -> :class:`GPTTrainer`, ``ldm`` -> ``LDMTrainer``); the loop
    is the same."""
    if config.generator.kind == "ar":
        return GPTTrainer(config, run_dir, resume=resume, device=device)
    if config.generator.kind == "ldm":
        return ldm_trainer_module().LDMTrainer(config, run_dir, resume=resume, device=device)
    return Trainer(config, run_dir, resume=resume, device=device)


def __getattr__(name: str):
    """``LatentDiffusion`` and ``LDMTrainer`` (their modules import diffusers: seconds)."""
    if name == "LatentDiffusion":
        return ldm_module().LatentDiffusion
    if name == "LDMTrainer":
        return ldm_trainer_module().LDMTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["GPT", "GPTConfig", "GPTTrainer", "LDMTrainer", "LatentDiffusion", "load_generator", "make_trainer",
           "sample_images", "class_labels", "dataset_labels", "encode_images", "extract_codes", "extract_latents",
           "filter_logits", "sample_logits", "unigram_samples", "write_llamagen"]
