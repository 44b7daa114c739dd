"""Generators trained on a tokenizer's codes (issue 14: the autoregressive model; issue 15: latent
diffusion): the LlamaGen-style GPT and its sampling, code extraction (cached, LlamaGen's layout),
training through the shared loop (:class:`GPTTrainer`), the generation evaluation."""

from pathlib import Path

from vaevq.config import Config
from vaevq.generation.codes import (
    class_labels,
    dataset_labels,
    encode_images,
    extract_codes,
    unigram_samples,
    write_llamagen,
)
from vaevq.generation.gpt import GPT, GPTConfig, filter_logits, sample_logits
from vaevq.generation.sample import load_generator, sample_images
from vaevq.generation.trainer import GPTTrainer
from vaevq.training import Trainer


def make_trainer(config: Config, run_dir: str | Path, resume: bool = False, device: str | None = None):
    """The trainer of a config's run kind: a tokenizer (:class:`~vaevq.training.Trainer`) or a
    generator (``generator.kind: ar`` -> :class:`GPTTrainer`); the loop is the same."""
    if config.generator.kind == "ar":
        return GPTTrainer(config, run_dir, resume=resume, device=device)
    return Trainer(config, run_dir, resume=resume, device=device)

__all__ = ["GPT", "GPTConfig", "GPTTrainer", "load_generator", "make_trainer", "sample_images",
           "class_labels", "dataset_labels", "encode_images", "extract_codes",
           "filter_logits", "sample_logits", "unigram_samples", "write_llamagen"]
