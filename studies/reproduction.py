"""The seeded reproduction study of the paper's ablation and baselines (docs/reproduction.md).

    python studies/reproduction.py [--out runs/repro] [--ks 1024 16384] [--steps 600] [--report-only]

Trains M0, M1, M2, M3, the full VAEVQ (the `vaevq` preset: the default reading), `vaevq-literal`
and the EMA and SimVQ baselines on `tiny`'s setting at each codebook size K: three seeds for the
rows that carry the paper's claim, one for the rest (the `vq` baseline is the `m0` configuration).
Every finished run is recorded in docs/reproduction/results.json (metrics and the full config),
so the study resumes across sessions and machines: a run whose config is recorded is skipped, an
unfinished one resumes from its checkpoint in OUT. docs/reproduction.md is rewritten after every
run, with what is still missing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path
from typing import Any

import torch

from vaevq.compare import aggregate, compare_config, results_table, run_one, token_note
from vaevq.fileio import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "reproduction" / "results.json"
DOC = ROOT / "docs" / "reproduction.md"
CLAIM_ROWS = ["m0", "m3", "vaevq", "vaevq-literal", "simvq"]  # three seeds each
OTHER_ROWS = ["m1", "m2", "ema"]  # one seed each
ORDER = ["m0", "m1", "m2", "m3", "vaevq", "vaevq-literal", "ema", "simvq"]
SEEDS = [0, 1, 2]
EVAL_POINTS = 3
COMMON = ["train.progress=false"]


def same_as_full(steps: int | None) -> bool:
    """Whether `vaevq-literal` is the same configuration as the full model (the default reading is
    the literal one): then it is not trained twice, and its row is the full model's."""
    full, literal = (study_config(1024, p, 0, steps).to_dict() for p in ("vaevq", "vaevq-literal"))
    full.pop("name")
    literal.pop("name")
    return full == literal


def plan(ks: list[int], steps: int | None) -> list[tuple[int, str, int]]:
    """(K, preset, seed) in the order that makes partial results most useful: seed 0 of every row
    at every K first, then the further seeds."""
    names = [p for p in ORDER if not (p == "vaevq-literal" and same_as_full(steps))]
    items = [(k, p, 0) for k in ks for p in names]
    items += [(k, p, s) for s in SEEDS[1:] for k in ks for p in CLAIM_ROWS if p in names]
    return items


def same_settings(recorded: dict[str, Any], settings: dict[str, Any]) -> bool:
    """Whether a recorded run has these settings: every key it recorded has the same value now
    (sections and keys added to the config since then are not compared, so a later version of the
    code still finds the runs recorded earlier)."""
    for section, values in recorded.items():
        if not isinstance(values, dict):
            if settings.get(section) != values:
                return False
            continue
        now = settings.get(section, {})
        if any(now.get(key) != value for key, value in values.items()):
            return False
    return True


def load_results() -> list[dict[str, Any]]:
    return json.loads(RESULTS.read_text())["runs"] if RESULTS.is_file() else []


def save_results(runs: list[dict[str, Any]]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS, json.dumps({"runs": runs}, indent=1) + "\n")


def study_config(k: int, preset: str, seed: int, steps: int | None):
    return compare_config(preset, None, steps, seed, [*COMMON, f"model.codebook_size={k}"], EVAL_POINTS)


def _mean(rows: dict[str, dict], name: str, key: str) -> float | None:
    stat = rows.get(name, {}).get("stats", {}).get(key)
    return None if stat is None else stat["mean"]


def _fmt(rows, name, key, digits=3) -> str:
    stat = rows.get(name, {}).get("stats", {}).get(key)
    if stat is None:
        return "n/a"
    text = f"{stat['mean']:.{digits}f}"
    return text + (f" ± {stat['std']:.{digits}f}" if stat["n"] > 1 else "")


def claims(rows: dict[str, dict], k: int) -> list[str]:
    """Which of the paper's claims hold at this scale, decided from the means (with the numbers)."""
    out = []
    chain = ["m0", "m1", "m2", "vaevq"]
    for key, label, better in (("utilization", "utilization (encode)", 1), ("psnr", "PSNR", 1),
                               ("fid_effnet", "fid-effnet", -1)):
        values = {n: _mean(rows, n, key) for n in [*chain, "m3"]}
        if any(v is None for v in values.values()):
            continue

        pairs = (("m0", "m1"), ("m1", "m2"), ("m1", "m3"), ("m2", "vaevq"), ("m3", "vaevq"))
        holds = all(better * (values[b] - values[a]) > 0 for a, b in pairs)
        digits = 3 if key == "utilization" else 2
        numbers = ", ".join(f"{'full' if n == 'vaevq' else n.upper()} {_fmt(rows, n, key, digits)}"
                            for n in ["m0", "m1", "m2", "m3", "vaevq"])
        out.append(f"- Ablation order M0 < M1 < M2, M3 < full on {label} "
                   f"({'lower is better' if better < 0 else 'higher is better'}): "
                   f"**{'holds' if holds else 'does not hold'}** ({numbers}).")
    for key, label, better in (("psnr", "PSNR", 1), ("ssim", "SSIM", 1), ("lpips", "LPIPS", -1),
                               ("fid_effnet", "fid-effnet", -1), ("utilization", "utilization (encode)", 1)):
        full, sim = _mean(rows, "vaevq", key), _mean(rows, "simvq", key)
        if full is None or sim is None:
            continue
        holds = better * (full - sim) >= 0
        out.append(f"- Full VAEVQ >= SimVQ on {label}: **{'holds' if holds else 'does not hold'}** "
                   f"(full {_fmt(rows, 'vaevq', key)}, SimVQ {_fmt(rows, 'simvq', key)}).")
    full, vq = _mean(rows, "vaevq", "utilization"), _mean(rows, "m0", "utilization")
    if full is not None and vq is not None:
        holds = full >= 0.95 and vq < full
        out.append(f"- Near-full utilization for VAEVQ against a poorly used VQGAN codebook (paper, ImageNet: "
                   f"~100% vs 7.2%): **{'holds' if holds else 'does not hold'}** (full "
                   f"{_fmt(rows, 'vaevq', 'utilization')}, sampled {_fmt(rows, 'vaevq', 'utilization_sampled')}; "
                   f"VQGAN {_fmt(rows, 'm0', 'utilization')}; K {k}).")
    for name in rows:
        rel = _mean(rows, name, "quant_error_rel")
        if rel is not None and rel > 0.5:
            out.append(f"- {name}: its codes are far from its latents (relative quantization error "
                       f"{_fmt(rows, name, 'quant_error_rel')}): its utilization is not bought with useful "
                       "codes.")
    return out


def report(ks: list[int], steps: int | None, command: str, runs: list[dict[str, Any]],
           running: str | None) -> str:
    parts = ["# Reproduction study: the paper's ablation and baselines, seeded", "",
             f"Written by `{command}` (the study resumes: finished runs are kept in "
             "`docs/reproduction/results.json`). Machine: "
             f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
             f"updated {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC. The runs of "
             "2026-12-04 shared a 2-core machine with other jobs (1 or 2 threads; some were paused for a "
             "while): their train-time column measures that, not the speed of the methods "
             "(benchmarks/ has the speed comparisons).", "",
             "Every run: `tiny`'s setting (built-in photos, 32x32, f4 so 8x8 tokens, d 16, ch 32, batch 16, "
             "Adam 1e-3 cosine, 600 steps; `tiny` itself trains at 2e-3 since 2026-12-05, the presets of "
             "this study keep 1e-3), no dead-code restart; only the quantizer and its loss terms differ. "
             "Image metrics on the built-in held-out photos (scikit-learn china.jpg and flower.jpg, 154 tiles at "
             "32x32); token statistics on the same photos tiled at stride 3 (3,564 tiles, 228,096 tokens: at "
             "least 10 x K at K 16384). M0 is VQGAN (the `vq` baseline is the same configuration); M1 VLQ with "
             "VQGAN's codebook and commitment losses; M2 VLQ + RCS; M3 VLQ + DCR (with the VQGAN losses); "
             "full = the `vaevq` preset (the default reading); `vaevq-literal` = eq. 1-12 as written.", ""]
    missing = []
    literal_is_full = same_as_full(steps)
    if literal_is_full:
        parts += ["`vaevq-literal` is the same configuration as the full model (the default reading is the "
                  "literal one, docs/design.md), so it is trained once: its row is the full model's.", ""]
    for k in ks:
        rows = {}
        for name in ORDER:
            source = "vaevq" if name == "vaevq-literal" and literal_is_full else name
            done = [{**r, "name": name} for r in runs if r["k"] == k and r["name"] == source]
            want = SEEDS if name in CLAIM_ROWS else SEEDS[:1]
            if source == name:
                missing += [f"{name} seed {s} at K {k}" for s in want if s not in {r['seed'] for r in done}]
            if done:
                rows[name] = aggregate(sorted(done, key=lambda r: r["seed"]))
        parts += [f"## K = {k}", ""]
        if not rows:
            parts += ["(no finished run yet)", ""]
            continue
        first = next(r for r in runs if r["k"] == k)
        parts += [results_table([rows[n] for n in ORDER if n in rows],
                                "built-in held-out photos (scikit-learn china.jpg, flower.jpg)", 32,
                                first["metrics"].get("images", 0),
                                token_note(first["metrics"], [k])), "### Which claims hold at this scale", "",
                  *(claims(rows, k) or ["(decided once the M0-M3, full and SimVQ rows are in)"]), ""]
    if missing or running:
        parts += ["## Still to run", ""]
        if running:
            parts += [f"Running now: {running}.", ""]
        parts += [f"Missing ({len(missing)}): " + "; ".join(missing) + ".", ""]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/repro", help="run folders (checkpoints, logs)")
    parser.add_argument("--ks", type=int, nargs="+", default=[1024, 16384])
    parser.add_argument("--steps", type=int, default=None, help="default: the presets' 600")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from the recorded runs")
    parser.add_argument("--device", choices=["cpu", "cuda"])
    args = parser.parse_args(argv)
    command = "python studies/reproduction.py" + (f" --ks {' '.join(map(str, args.ks))}"
                                                  if args.ks != [1024, 16384] else "")
    runs = load_results()
    atomic_write_text(DOC, report(args.ks, args.steps, command, runs, None))
    if args.report_only:
        return 0
    for k, preset, seed in plan(args.ks, args.steps):
        config = study_config(k, preset, seed, args.steps)
        settings = config.to_dict()
        if any(same_settings(r["config"], settings) for r in runs):
            continue
        label = f"{preset} seed {seed} at K {k}"
        print(f"[study] {label}", flush=True)
        atomic_write_text(DOC, report(args.ks, args.steps, command, runs, label))
        result = run_one(preset, config, Path(args.out) / f"k{k}" / preset / f"seed{seed}", args.device)
        runs = [r for r in load_results() if not same_settings(r["config"], settings)]
        runs.append({**result, "seed": seed, "k": k})
        save_results(runs)
        atomic_write_text(DOC, report(args.ks, args.steps, command, runs, None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
