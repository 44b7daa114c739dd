"""Generators trained on a tokenizer's codes (issue 14: the autoregressive model; issue 15: latent
diffusion). Part 1 so far: the LlamaGen-style GPT and its sampling."""

from vaevq.generation.codes import class_labels, encode_images, unigram_samples, write_llamagen
from vaevq.generation.gpt import GPT, GPTConfig, filter_logits, sample_logits

__all__ = ["GPT", "GPTConfig", "class_labels", "encode_images", "filter_logits", "sample_logits",
           "unigram_samples", "write_llamagen"]
