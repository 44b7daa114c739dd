"""Nearest-code search: time and extra memory against the bare matmul, in the same run.

    python benchmarks/bench_search.py [--n 8192] [--d 64] [--k 4096 16384 65536 131072]

For each K: the search time of ``vaevq.quantizers.nearest_code``, the time of the bare
matmul ``z @ E.T`` (into a preallocated output, the least the search must do), their ratio,
and the extra peak memory of each (resident set growth measured in a fresh subprocess, so
earlier allocations do not hide it). Times are the best of --repeat runs after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

# The end of every benchmark child script: time `run` (best of `repeat` after one warm-up) and
# report the growth of the peak memory (resident set on CPU, allocated memory on CUDA).
TIMING = r"""
def peak_kb():
    if cuda:
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 1024
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) for l in fh if l.startswith("VmHWM"))
base = peak_kb()
run()
best = float("inf")
for _ in range(repeat):
    t0 = time.perf_counter(); run()
    if cuda:
        torch.cuda.synchronize()
    best = min(best, time.perf_counter() - t0)
print(json.dumps({"seconds": best, "extra_mb": (peak_kb() - base) / 1024}))
"""

CHILD = r"""
import json, resource, sys, time, torch
from vaevq.quantizers import nearest_code
n, d, k, what, repeat = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
device = sys.argv[6]
cuda = device == "cuda"
torch.manual_seed(0)
z, e = torch.randn(n, d, device=device), torch.randn(k, d, device=device)
if what == "matmul":
    out = torch.empty(n, k, device=device)
    run = lambda: torch.mm(z, e.t(), out=out)
else:
    run = lambda: nearest_code(z, e)
""" + TIMING


def measure(n: int, d: int, k: int, what: str, repeat: int, device: str = "cpu") -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(n), str(d), str(k), what, str(repeat), device],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--k", type=int, nargs="+", default=[4096, 16384, 65536, 131072])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    import torch

    print(f"nearest_code, N {args.n}, d {args.d}, float32, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; best of {args.repeat}")
    print(f"{'K':>8} {'search ms':>10} {'matmul ms':>10} {'ratio':>6} {'search +MB':>11} "
          f"{'matmul +MB':>11}")
    for k in args.k:
        s = measure(args.n, args.d, k, "search", args.repeat)
        m = measure(args.n, args.d, k, "matmul", args.repeat)
        print(f"{k:>8} {s['seconds'] * 1e3:>10.1f} {m['seconds'] * 1e3:>10.1f} "
              f"{s['seconds'] / m['seconds']:>6.2f} {s['extra_mb']:>11.1f} {m['extra_mb']:>11.1f}",
              flush=True)


if __name__ == "__main__":
    main()
