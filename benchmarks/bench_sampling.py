"""Autoregressive sampling with and without the key/value cache, in one run.

    python benchmarks/bench_sampling.py [--device cpu|cuda] [--threads 2] [--shapes tiny,gpt-b]

For each model shape and batch: tokens per second and peak memory of ``GPT.generate`` with the
preallocated cache (one prefill, then one token per step) and with ``use_cache=False`` (the whole
prefix recomputed every step), the ratio in the same run. Shapes: ``tiny`` (gpt-tiny-like: width
256, 4 layers, 8x8 tokens, K 512) and ``gpt-b`` (LlamaGen GPT-B: width 768, 12 layers, 12 heads,
16x16 tokens, K 16384, 1000 classes). Random weights: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from vaevq.generation import GPT, GPTConfig

SHAPES = {
    "tiny": GPTConfig(vocab_size=512, grid=(8, 8), dim=256, n_layer=4, n_head=4, num_classes=2),
    "gpt-b": GPTConfig(vocab_size=16384, grid=(16, 16), dim=768, n_layer=12, n_head=12, num_classes=1000),
}


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(gpt: GPT, batch: int, use_cache: bool, device: torch.device) -> tuple[float, float]:
    labels = torch.zeros(batch, dtype=torch.long, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    gpt.generate(labels, cfg_scale=2.0, generator=torch.Generator(device).manual_seed(0), use_cache=use_cache)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return batch * gpt.config.length / seconds, peak_mb(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shapes", default="tiny,gpt-b")
    parser.add_argument("--batches", default="16,64")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"sampling (cfg 2.0: conditional and null rows in one batch), device {device}, "
          f"{args.threads} threads, torch {torch.__version__}; peak MB: "
          f"{'allocated' if device.type == 'cuda' else 'process RSS so far (monotone)'}")
    print(f"{'shape':<7}{'batch':>6}{'L':>5}{'cache tok/s':>13}{'no-cache tok/s':>16}{'speed-up':>10}"
          f"{'cache MB':>10}{'no-cache MB':>13}")
    for name in args.shapes.split(","):
        torch.manual_seed(0)
        gpt = GPT(SHAPES[name]).to(device).eval()
        for batch in (int(b) for b in args.batches.split(",")):
            run(gpt, 2, True, device)  # warm-up
            fast, fast_mb = run(gpt, batch, True, device)
            slow, slow_mb = run(gpt, batch, False, device)
            print(f"{name:<7}{batch:>6}{gpt.config.length:>5}{fast:>13.0f}{slow:>16.0f}{fast / slow:>10.1f}"
                  f"{fast_mb:>10.0f}{slow_mb:>13.0f}")


if __name__ == "__main__":
    main()
