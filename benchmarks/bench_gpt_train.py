"""One training step of the GPT (forward, cross-entropy, backward, AdamW) against the raw matrix
multiplications of the same FLOPs, in one run.

    python benchmarks/bench_gpt_train.py [--device cpu|cuda] [--threads 2] [--shape gpt-b] [--batch 2]

The reference is a chain of (T, dim) x (dim, dim) matmuls doing 6 x parameters x tokens FLOPs (the
usual forward + backward count, attention ignored): the ratio step / matmul says how far the
step is from the machine's matmul speed at that width. bf16 autocast on CUDA (as llamagen-b
trains), float32 on CPU. Random weights and tokens.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from vaevq.config import load_config
from vaevq.generation import GPT, GPTConfig
from vaevq.generation.trainer import build_gpt_optimizer

SHAPES = {
    "tiny": GPTConfig(vocab_size=512, grid=(8, 8), dim=128, n_layer=3, n_head=4, multiple_of=64, num_classes=8),
    "gpt-b": GPTConfig(vocab_size=16384, grid=(16, 16), dim=768, n_layer=12, n_head=12, num_classes=1000),
}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shape", default="gpt-b", choices=sorted(SHAPES))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = SHAPES[args.shape]
    torch.manual_seed(0)
    gpt = GPT(cfg).to(device)
    config = load_config("llamagen-b")
    opt = build_gpt_optimizer(gpt, config, 1e-4)
    amp = device.type == "cuda"
    tokens = torch.randint(0, cfg.vocab_size, (args.batch, cfg.length), device=device)
    labels = torch.randint(0, cfg.num_classes, (args.batch,), device=device)

    def step():
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            logits = gpt(tokens, labels)
        loss = F.cross_entropy(logits.float().flatten(0, 1), tokens.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(gpt.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    step_s = (time.perf_counter() - start) / args.steps
    params = sum(p.numel() for p in gpt.parameters())
    tokens_n = args.batch * cfg.length
    flops = 6 * params * tokens_n
    dtype = torch.bfloat16 if amp else torch.float32
    a = torch.randn(tokens_n, cfg.dim, device=device, dtype=dtype)
    w = torch.randn(cfg.dim, cfg.dim, device=device, dtype=dtype)
    reps = max(1, round(flops / (2 * tokens_n * cfg.dim * cfg.dim)))
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ w
    sync(device)
    mm_s = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    print(f"GPT training step, shape {args.shape} ({params / 1e6:.1f} M parameters), batch {args.batch} x "
          f"{cfg.length} tokens, device {device}, {args.threads} threads, {'bf16 autocast' if amp else 'float32'}")
    print(f"{'step ms':>10}{'matmul ms (same FLOPs)':>24}{'ratio':>8}{'tokens/s':>12}{'peak MB':>10}")
    print(f"{step_s * 1e3:>10.1f}{mm_s * 1e3:>24.1f}{step_s / mm_s:>8.2f}{tokens_n / step_s:>12.0f}{peak:>10.0f}")


if __name__ == "__main__":
    main()
