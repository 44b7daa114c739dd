"""Quantizer forward+backward: vaevq's against vector-quantize-pytorch's VectorQuantize.

    python benchmarks/bench_quantizer.py [--n 8192] [--d 64] [--k 4096 16384 65536 131072]

Same N tokens of dimension d and K codes for both, each in a fresh subprocess (time: best of
--repeat after one warm-up; memory: growth of the resident-set high-water mark, so the peak
of every temporary counts). Ours: the VLQ quantizer of VAEVQ (sample, exact nearest code, RCS,
DCR, KL; backward through all of them) and the plain VQ quantizer (VQGAN's losses).
Theirs: ``VectorQuantize(dim=d, codebook_size=K)`` with its defaults (EMA codebook, decay 0.8,
commitment loss); vector-quantize-pytorch is installed into the benchmark environment only
(``make bench-deps``), never as a dependency of vaevq. A run that fails (out of memory, or past
--timeout seconds) is reported as such. ``--memory-limit`` caps each child's address space.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_search import TIMING  # noqa: E402

CHILD = r"""
import json, sys, time, torch
n, d, k, what, repeat, threads = (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4],
                                  int(sys.argv[5]), int(sys.argv[6]))
limit_gb, device = float(sys.argv[7]), sys.argv[8]
cuda = device == "cuda"
if limit_gb > 0 and not cuda:
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (int(limit_gb * 2**30), int(limit_gb * 2**30)))
torch.set_num_threads(threads)
torch.manual_seed(0)
side = 16
b = n // (side * side)
if what in ("vlq", "vq"):
    from vaevq.config import load_config
    from vaevq.quantizers import build_quantizer
    cfg = load_config("tiny", [f"model.quantizer={what}", f"model.codebook_size={k}", f"model.latent_dim={d}"])
    from vaevq.losses.objective import active_terms
    from vaevq.quantizers import QUANTIZERS
    terms = active_terms(cfg, QUANTIZERS[what].weights)  # the terms the model computes (non-zero weight)
    q = build_quantizer(what, cfg.model, cfg.loss, terms).train().to(device)
    with torch.no_grad():
        q.codebook.embedding.normal_()
    width = d * q.in_channels_factor
    h = torch.randn(b, width, side, side, device=device, requires_grad=True)
    def run():
        out = q(h)
        loss = out.z_q_decoder.square().mean() + sum(out.terms.values())
        loss.backward()
else:
    from vector_quantize_pytorch import VectorQuantize
    q = VectorQuantize(dim=d, codebook_size=k).train().to(device)
    x = torch.randn(b, side * side, d, device=device, requires_grad=True)
    def run():
        quantized, indices, loss = q(x)
        (quantized.square().mean() + loss.sum()).backward()
""" + TIMING


def measure(n: int, d: int, k: int, what: str, repeat: int, threads: int, timeout: float,
            memory_limit_gb: float, device: str = "cpu") -> dict:
    try:
        out = subprocess.run([sys.executable, "-c", CHILD, str(n), str(d), str(k), what, str(repeat),
                              str(threads), str(memory_limit_gb), device],
                             capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout:.0f} s"}
    if out.returncode != 0:
        tail = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"
        if "memory" in tail.lower() or out.returncode in (-9, 137):
            tail = "out of memory"
        return {"error": tail[:60]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def have_peer() -> bool:
    import importlib.util

    return importlib.util.find_spec("vector_quantize_pytorch") is not None


def table(n: int, d: int, ks: list[int], repeat: int, threads: int, timeout: float,
          memory_limit_gb: float, device: str = "cpu"):
    """Yields the table's lines as they are measured."""
    yield from [f"quantizer forward+backward, N {n}, d {d}, float32, {device}, {threads} threads, "
                f"best of {repeat}",
             f"{'K':>8} {'vlq ms':>9} {'vlq +MB':>8} {'vq ms':>9} {'vq +MB':>8} {'VQ-pytorch ms':>14} "
             f"{'+MB':>8} {'time ratio':>11} {'mem ratio':>10}"]
    peer = have_peer()
    for k in ks:
        ours = measure(n, d, k, "vlq", repeat, threads, timeout, memory_limit_gb, device)
        vq = measure(n, d, k, "vq", repeat, threads, timeout, memory_limit_gb, device)
        theirs = (measure(n, d, k, "peer", repeat, threads, timeout, memory_limit_gb, device) if peer
                  else {"error": "not installed (make bench-deps)"})

        def cell(m, key, scale, width):
            return f"{m[key] * scale:>{width}.1f}" if key in m else f"{'-':>{width}}"

        if "seconds" in theirs and "seconds" in ours:
            ratios = (f"{theirs['seconds'] / ours['seconds']:>10.1f}x "
                      f"{theirs['extra_mb'] / max(ours['extra_mb'], 1.0):>9.1f}x")
        else:
            ratios = f"{theirs.get('error', ours.get('error', '')):>21}"
        yield (f"{k:>8} {cell(ours, 'seconds', 1e3, 9)} {cell(ours, 'extra_mb', 1, 8)} "
                     f"{cell(vq, 'seconds', 1e3, 9)} {cell(vq, 'extra_mb', 1, 8)} "
                     f"{cell(theirs, 'seconds', 1e3, 14)} {cell(theirs, 'extra_mb', 1, 8)} {ratios}")
    yield "time ratio = VectorQuantize time / vlq time; mem ratio = VectorQuantize +MB / vlq +MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--k", type=int, nargs="+", default=[4096, 16384, 65536, 131072])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--memory-limit", type=float, default=16.0, help="GiB per child; 0: none")
    args = parser.parse_args()
    for line in table(args.n, args.d, args.k, args.repeat, args.threads, args.timeout, args.memory_limit):
        print(line, flush=True)


if __name__ == "__main__":
    main()
