"""Training step time with and without the perceptual and adversarial terms, in one run.

    python benchmarks/bench_train_step.py [--preset small] [--steps 10] [--threads 2]

Every variant is the real ``Trainer._train_step`` (forward, losses, backward, optimizer
steps) on the same batches of the preset's data; only the loss switches differ. Prints
milliseconds per step, images per second and the ratio to the reconstruction-only step.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from vaevq.config import load_config
from vaevq.training import Trainer

VARIANTS = [
    ("rec only (L2 + RCS + DCR + KL)", ["loss.perceptual_weight=0", "gan.weight=0"]),
    ("+ perceptual (LPIPS, both paths)", ["gan.weight=0"]),
    ("+ adversarial (PatchGAN, adaptive)", ["loss.perceptual_weight=0", "gan.start=0"]),
    ("+ perceptual + adversarial (full)", ["gan.start=0"]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    batches = None
    for name, overrides in VARIANTS:
        config = load_config(args.preset, overrides + ["train.progress=false", "eval.lpips_net=null"])
        with tempfile.TemporaryDirectory() as run:
            trainer = Trainer(config, run)
            if batches is None:
                gen = torch.Generator().manual_seed(0)
                n = len(trainer.train_set)
                batches = [torch.stack([trainer.train_set[int(i)] for i in
                                        torch.randint(n, (config.train.batch_size,), generator=gen)])
                           for _ in range(args.warmup + args.steps)]
            for x in batches[: args.warmup]:
                trainer._train_step(x)
            start = time.perf_counter()
            for x in batches[args.warmup:]:
                trainer._train_step(x)
            ms = (time.perf_counter() - start) / args.steps * 1e3
        rows.append((name, ms, config.train.batch_size / ms * 1e3))
    base = rows[0][1]
    print(f"training step, preset {args.preset}, batch {config.train.batch_size}, "
          f"{config.data.resolution}x{config.data.resolution}, {args.threads} threads, "
          f"torch {torch.__version__}, mean of {args.steps} steps after {args.warmup} warm-up")
    print(f"{'variant':<38}{'ms/step':>10}{'img/s':>8}{'ratio':>7}")
    for name, ms, ips in rows:
        print(f"{name:<38}{ms:>10.0f}{ips:>8.2f}{ms / base:>7.2f}")


if __name__ == "__main__":
    main()
