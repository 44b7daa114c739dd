"""A VAEVQ training step against a VQGAN step on the same backbone, in one run.

    python benchmarks/bench_vaevq_step.py [--preset tiny] [--steps 20] [--threads 2]

Rows (each the real ``Trainer.train_step``: forward, losses, backward, optimizer step, on the
same batches): ``m0`` (VQGAN: one decoding path), ``vaevq`` as shipped (both decoding paths in
one decoder call, z_c and z_q concatenated along the batch), and ``vaevq`` with the two paths
decoded by two calls (how it was before issue 13). The ratio column is against the VQGAN step;
the goal of issue 13 is <= 1.25 for the shipped step. Also checks that the two ways decode the
same images (max abs difference of the reconstructions).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import types

import torch

from vaevq.config import load_config
from vaevq.losses.objective import tokenizer_losses
from vaevq.models.vaevq import VAEVQOutput
from vaevq.training import Trainer


def two_calls_forward(self, x, noise=None):
    """VAEVQ.forward as before issue 13: one decoder call per path."""
    h = self.encode_features(x)
    with torch.autocast(device_type=x.device.type, enabled=False):
        q = self.quantizer(h.float(), noise=None if noise is None else noise.float())
    rec_q = self.decode_latent(q.z_q_decoder)
    rec_c = self.decode_latent(q.z_c) if self.quantizer.variational else None
    paths = [rec_q] + ([rec_c] if rec_c is not None else [])
    losses = tokenizer_losses(self.config, self.spec.weights, x, paths, q.terms, q.indices[0].numel())
    return VAEVQOutput(rec_q, rec_c, q.mu, q.logvar, q.z_c, q.z_q, q.indices, losses, q.terms)


def time_steps(trainer: Trainer, batches: list[torch.Tensor], warmup: int) -> float:
    seeds = torch.arange(batches[0].shape[0])
    for x in batches[:warmup]:
        trainer.train_step(x, seeds)
    start = time.perf_counter()
    for x in batches[warmup:]:
        trainer.train_step(x, seeds)
    return (time.perf_counter() - start) / (len(batches) - warmup) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    common = ["train.progress=false", "eval.lpips_net=null", "eval.max_images=8"]
    variants = [("m0 (VQGAN, one path)", "m0", False),
                ("vaevq, one decoder call (shipped)", "vaevq", False),
                ("vaevq, two decoder calls (before)", "vaevq", True)]
    rows, batches = [], None
    for name, preset, two_calls in variants:
        config = load_config(preset, common) if args.preset == "tiny" else load_config(
            args.preset, common + [f"model.quantizer={'vq' if preset == 'm0' else 'vlq'}"])
        with tempfile.TemporaryDirectory() as run:
            trainer = Trainer(config, run, device=args.device)
            if batches is None:
                gen = torch.Generator().manual_seed(0)
                n = len(trainer.train_set)
                batches = [torch.stack([trainer.train_set[int(i)] for i in
                                        torch.randint(n, (config.train.batch_size,), generator=gen)]
                                       ).to(trainer.dist.device)
                           for _ in range(args.warmup + args.steps)]
            if two_calls:
                trainer.model.forward = types.MethodType(two_calls_forward, trainer.model)
            rows.append((name, time_steps(trainer, batches, args.warmup)))
    # the two ways decode the same images (evaluation mode, same weights)
    config = load_config("vaevq", common) if args.preset == "tiny" else load_config(
        args.preset, common + ["model.quantizer=vlq"])
    with tempfile.TemporaryDirectory() as run:
        model = Trainer(config, run, device=args.device).model.eval()
    x = batches[0]
    with torch.no_grad():
        one = model(x)
        model.forward = types.MethodType(two_calls_forward, model)
        two = model(x)
    diff = max(float((one.rec_q - two.rec_q).abs().max()), float((one.rec_c - two.rec_c).abs().max()))
    base = rows[0][1]
    device = batches[0].device
    print(f"training step, preset {args.preset}, batch {batches[0].shape[0]}, {batches[0].shape[-1]}x"
          f"{batches[0].shape[-1]}, device {device}, {args.threads} threads, torch {torch.__version__}, "
          f"mean of {args.steps} steps after {args.warmup} warm-up")
    print(f"{'variant':<38}{'ms/step':>10}{'ratio to VQGAN':>16}")
    for name, ms in rows:
        print(f"{name:<38}{ms:>10.1f}{ms / base:>16.2f}")
    print(f"max |one call - two calls| of the reconstructions: {diff:.2e}")


if __name__ == "__main__":
    main()
