"""Latent diffusion: DDIM sampling (images/s, peak memory) and a training step, against the raw
UNet calls they are made of, in one run.

    python benchmarks/bench_ldm.py [--device cpu|cuda] [--threads 2] [--shapes ldm-tiny ldm-4]
                                   [--steps 50 250] [--batch 8] [--train-batch 8]

Per shape (the UNet of the preset on its tokenizer's latent grid: ldm-tiny 16x8x8, ldm-4 64x16x16)
and DDIM step count: ``LatentDiffusion.sample_latents`` with cfg 1.5 (conditional and null rows
in one batch of 2B) against the same number of bare ``unet(x, t, labels)`` calls on 2B rows (the
ratio is the cost of the scheduler and the guidance glue), images/s counting the latents only
(decoding is the tokenizer's, timed by bench_sampling), and the peak memory of sampling
(``torch.cuda.max_memory_allocated`` on CUDA; on the CPU the growth of the process's peak
resident size, which only rises, so shapes run smallest first). The training step (loss,
backward, AdamW) against a bare forward + backward of the UNet on the same batch. Random
weights; bf16 autocast on CUDA for training (as the presets), float32 sampling.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from vaevq.generation.ldm import LatentDiffusion


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn, device, repeat: int = 1) -> float:
    fn()  # warm-up
    sync(device)
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeat


def bench_shape(shape: str, args, device) -> tuple[str, float, float]:
    """Print the sampling rows of one preset's UNet; return its training-step row."""
    torch.manual_seed(0)
    ldm = LatentDiffusion.from_preset(shape).to(device).eval()
    params = sum(p.numel() for p in ldm.parameters()) / 1e6
    labels = torch.randint(0, ldm.num_classes, (args.batch,), device=device)
    x = torch.randn(2 * args.batch, ldm.channels, *ldm.grid, device=device)
    both = torch.cat([labels, torch.full_like(labels, ldm.num_classes)])
    for steps in args.steps:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        before = peak_mb(device)

        def sample(steps=steps):
            ldm.sample_latents(labels, num_steps=steps, cfg_scale=1.5,
                               generator=torch.Generator(device=device).manual_seed(0))

        @torch.no_grad()
        def raw(steps=steps):
            for t in range(steps):
                ldm.unet(x, torch.tensor(999 - t * (1000 // steps), device=device), class_labels=both)

        s = timed(sample, device)
        peak = peak_mb(device) - (0 if device.type == "cuda" else before)
        r = timed(raw, device)
        print(f"| {shape} | {params:.1f} M | {steps} | {s:.3f} | {r:.3f} | {s / r:.2f} | "
              f"{args.batch / s:.2f} | {peak:.0f} |")

    # a training step: loss (noising, UNet, MSE), backward, AdamW; against a bare UNet fwd + bwd
    ldm.train()
    opt = torch.optim.AdamW(ldm.parameters(), lr=1e-4)
    amp = device.type == "cuda"
    z = torch.randn(args.train_batch, ldm.channels, *ldm.grid, device=device)
    y = torch.randint(0, ldm.num_classes, (args.train_batch,), device=device)
    t = torch.randint(0, 1000, (args.train_batch,), device=device)
    n = torch.randn_like(z)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            loss = ldm(z, y, t, n)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ldm.parameters(), 1.0)
        opt.step()

    def bare():
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            out = ldm.unet(z, t, class_labels=y).sample
        out.float().square().mean().backward()

    return shape, timed(step, device, 2), timed(bare, device, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shapes", nargs="+", default=["ldm-tiny", "ldm-4"])
    parser.add_argument("--steps", type=int, nargs="+", default=[50, 250])
    parser.add_argument("--batch", type=int, default=8, help="images sampled at once")
    parser.add_argument("--train-batch", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, {args.threads} threads; cfg 1.5 (2 x {args.batch} rows per UNet call)")
    print("| shape | params | DDIM steps | sample s | raw UNet calls s | ratio | images/s | peak MB |")
    print("|---|---|---|---|---|---|---|---|")
    train_rows = [bench_shape(shape, args, device) for shape in args.shapes]
    print(f"\n| shape | training step s (batch {args.train_batch}) | bare UNet fwd+bwd s | ratio |")
    print("|---|---|---|---|")
    for shape, s, b in train_rows:
        print(f"| {shape} | {s:.3f} | {b:.3f} | {s / b:.2f} |")


if __name__ == "__main__":
    main()
