"""Every speed table in one run: nearest-code search vs the bare matmul, the quantizer vs
vector-quantize-pytorch, and training throughput of the tiny and small presets.

    python benchmarks/bench_all.py [--quick] [--threads 2]

--quick measures K 4096 and 16384 only (a few minutes on 2 CPU cores); the full run adds
65536 and 131072. Install the peer first: ``make bench-deps`` (vector-quantize-pytorch, into
this environment only). On a machine with CUDA, ``--device cuda`` measures there as well.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import bench_quantizer  # noqa: E402
import bench_search  # noqa: E402
import torch  # noqa: E402


def training_throughput(preset: str, steps: int, device: str, extra: list[str]) -> tuple[float, int]:
    """Images per second of the real Trainer._train_step (forward, every loss, backward, optimizer
    steps; the discriminator from step 0 when the preset has one)."""
    from vaevq.config import load_config
    from vaevq.training import Trainer

    overrides = ["train.progress=false", "eval.lpips_net=null", "eval.fid_effnet=false", "eval.rfid=false",
                 "gan.start=0", *extra]
    config = load_config(preset, overrides)
    with tempfile.TemporaryDirectory() as run:
        trainer = Trainer(config, run, device=device)
        gen = torch.Generator().manual_seed(0)
        n, b = len(trainer.train_set), config.train.batch_size * config.train.grad_accum
        batches = [torch.stack([trainer.train_set[int(i)] for i in torch.randint(n, (b,), generator=gen)])
                   for _ in range(steps + 2)]
        seeds = torch.arange(b)
        for x in batches[:2]:
            trainer._train_step(x.to(trainer.dist.device), seeds)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for x in batches[2:]:
            trainer._train_step(x.to(trainer.dist.device), seeds)
        if device == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    return steps * b / elapsed, b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--train-steps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    ks = [4096, 16384] if args.quick else [4096, 16384, 65536, 131072]
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "none"
    print(f"# vaevq benchmarks: torch {torch.__version__}, {os.cpu_count()} CPUs ({cpu}), "
          f"{args.threads} threads, GPU {gpu}\n")

    print(f"## nearest-code search, N 8192, d 64, float32, device {args.device}")
    print(f"{'K':>8} {'search ms':>10} {'matmul ms':>10} {'ratio':>6} {'search +MB':>11} {'matmul +MB':>11}")
    for k in ks:
        s = bench_search.measure(8192, 64, k, "search", 3, args.device)
        m = bench_search.measure(8192, 64, k, "matmul", 3, args.device)
        print(f"{k:>8} {s['seconds'] * 1e3:>10.1f} {m['seconds'] * 1e3:>10.1f} "
              f"{s['seconds'] / m['seconds']:>6.2f} {s['extra_mb']:>11.1f} {m['extra_mb']:>11.1f}", flush=True)
    print()
    print("## quantizer forward+backward vs vector-quantize-pytorch")
    for line in bench_quantizer.table(8192, 64, ks, 2, args.threads, 600.0, 16.0, args.device):
        print(line, flush=True)
    print()
    print(f"## training throughput (real training steps, {args.train_steps} after 2 warm-up), "
          f"device {args.device}")
    print(f"{'preset':<12} {'batch':>6} {'img/s':>8}")
    presets = [("tiny", []), ("small", [])]
    if args.device == "cuda":
        presets += [("imagenet-f16", ["train.batch_size=8", "train.precision=bf16"])]
    for preset, extra in presets:
        ips, b = training_throughput(preset, args.train_steps, args.device, extra)
        label = preset + (" bf16" if "train.precision=bf16" in extra else "")
        print(f"{label:<12} {b:>6} {ips:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
