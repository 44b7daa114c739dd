"""Generators trained on a tokenizer's codes (issue 14: the autoregressive model; issue 15: latent
diffusion). Part 1 so far: the LlamaGen-style GPT and its sampling, code extraction (cached, LlamaGen's
layout), the unigram baseline."""

from vaevq.generation.codes import (
    class_labels,
    dataset_labels,
    encode_images,
    extract_codes,
    unigram_samples,
    write_llamagen,
)
from vaevq.generation.gpt import GPT, GPTConfig, filter_logits, sample_logits

__all__ = ["GPT", "GPTConfig", "class_labels", "dataset_labels", "encode_images", "extract_codes",
           "filter_logits", "sample_logits", "unigram_samples", "write_llamagen"]
