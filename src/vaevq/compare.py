"""``vaevq compare``: train several presets at the same budget and seed, evaluate them on the
same held-out split, and write a report (table, JSON, charts, one reconstruction grid).

Each preset trains in ``OUT/<preset>/`` (a normal run folder). A run whose final evaluation
is recorded in ``OUT/<preset>/compare.json`` for the same settings is skipped; an unfinished
run is resumed from its last checkpoint.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from vaevq.config import Config, load_config
from vaevq.data import build_eval_dataset
from vaevq.fileio import atomic_write, atomic_write_text
from vaevq.rundir import RunDir
from vaevq.training import Trainer, load_model
from vaevq.training.images import image_grid

COLUMNS = [("psnr", "PSNR (dB)", "{:.2f}"), ("ssim", "SSIM", "{:.4f}"), ("lpips", "LPIPS", "{:.4f}"),
           ("fid_effnet", "fid-effnet", "{:.1f}"),
           ("utilization", "utilization", "{:.3f}"), ("utilization_sampled", "utilization (sampled)", "{:.3f}"),
           ("perplexity", "perplexity", "{:.1f}"), ("dead_codes", "dead codes", "{:d}"),
           ("quant_error_rel", "rel. quant. error", "{:.3f}"),
           ("train_s", "train time (s)", "{:.0f}")]


def compare_config(preset: str, data: str | None, steps: int | None, seed: int, overrides: list[str],
                   eval_points: int) -> Config:
    extra = list(overrides)
    if data and data != "built-in":
        extra.append(f"data.root={data}")
    if steps:
        extra.append(f"train.steps={steps}")
    extra.append(f"train.seed={seed}")
    config = load_config(preset, extra)
    total = config.train.steps
    every = max(1, total // eval_points)
    config.train.eval_every = every
    config.train.image_every = 0
    config.train.checkpoint_every = every
    return config


def run_one(name: str, config: Config, run_dir: Path, device: str | None) -> dict[str, Any]:
    marker = RunDir(run_dir).compare_marker
    settings = config.to_dict()
    if marker.is_file():
        done = json.loads(marker.read_text())
        if done.get("config") == settings:
            print(f"[compare] {name}: finished earlier, skipped ({marker})")
            return done
    start = time.perf_counter()
    trainer = Trainer(config, run_dir, resume=True, device=device)
    if trainer.resumed_from is not None:
        print(f"[compare] {name}: resuming at step {trainer.resumed_from}")
    metrics = trainer.train()
    result = {"name": name, "quantizer": config.model.quantizer,
              "codebook_size": trainer.model.quantizer.codebook_size, "steps": trainer.step,
              "metrics": metrics, "train_s": trainer.elapsed,
              "wall_s": time.perf_counter() - start, "config": settings}
    atomic_write_text(marker, json.dumps(result, indent=2) + "\n")
    return result


def utilization_curve(run_dir: Path) -> list[tuple[int, float]]:
    points = []
    log = RunDir(run_dir).log
    if log.is_file():
        for line in log.read_text().splitlines():
            record = json.loads(line)
            if "eval/utilization" in record:
                points.append((record["step"], record["eval/utilization"]))
    return points


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The runs of one preset (one per seed) -> one row: the first run's identity, and for every
    numeric metric its mean and (n > 1) sample standard deviation over the seeds."""
    row = {k: runs[0][k] for k in ("name", "quantizer", "codebook_size", "steps")}
    row["seeds"] = [r.get("seed", 0) for r in runs]
    keys = [k for k, v in runs[0]["metrics"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    stats: dict[str, dict[str, float]] = {}
    for key in [*keys, "train_s"]:
        values = [float(r["train_s"] if key == "train_s" else r["metrics"][key]) for r in runs
                  if (key == "train_s" or r["metrics"].get(key) is not None)]
        if values:
            t = torch.tensor(values, dtype=torch.float64)
            stats[key] = {"mean": float(t.mean()), "std": float(t.std()) if len(values) > 1 else 0.0,
                          "n": len(values)}
    row["stats"] = stats
    row["metrics"] = {k: v["mean"] for k, v in stats.items() if k != "train_s"}  # means over seeds
    row["metrics"]["lpips_net"] = runs[0]["metrics"].get("lpips_net")
    row["train_s"] = stats["train_s"]["mean"]
    return row


def _cell(stat: dict[str, float] | None, fmt: str) -> str:
    if stat is None:
        return "n/a"
    if fmt == "{:d}":
        fmt = "{:.0f}"
    text = fmt.format(stat["mean"])
    return text + (" ± " + fmt.format(stat["std"]) if stat["n"] > 1 else "")


def results_table(rows: list[dict[str, Any]], data_name: str, resolution: int, images: int,
                  token_note: str = "") -> str:
    """``rows`` from :func:`aggregate`: mean ± standard deviation over seeds where there are several."""
    head = "| method | quantizer | K | seeds | " + " | ".join(c[1] for c in COLUMNS) + " |"
    rule = "|" + "---|" * (4 + len(COLUMNS))
    lines = []
    for r in rows:
        cells = [_cell(r["stats"].get(key), fmt) for key, _, fmt in COLUMNS]
        lines.append(f"| {r['name']} | {r['quantizer']} | {r['codebook_size']} | {len(r['seeds'])} | "
                     + " | ".join(cells) + " |")
    steps = sorted({r["steps"] for r in rows})
    lpips = {r["metrics"].get("lpips_net") for r in rows} - {None}
    notes = [f"Held-out split: {data_name}, {images} images at {resolution}x{resolution}; "
             f"{'/'.join(map(str, steps))} training steps each; mean ± sample standard deviation over "
             "the seeds where there are several.",
             "PSNR, SSIM and LPIPS on the quantized reconstruction. utilization: codes of `encode` (the "
             "posterior mean's nearest codes, the tokens a generator sees); utilization (sampled): codes of "
             "the sampled latents z_c = mu + sigma * eps under the training noise (what eq. 2 quantizes in "
             "training; the same as utilization for quantizers without noise); perplexity of `encode`'s "
             "codes; rel. quant. error: E||z - z_q||^2 / E||z - E z||^2 of `encode` (0: every latent is "
             "its code; 1: codes as far from the latents as their mean). Train time: seconds in training "
             "steps." + (f" {token_note}" if token_note else "")]
    if lpips:
        notes.append(f"LPIPS network: {', '.join(sorted(lpips))}.")
    if any("fid_effnet" in r["stats"] for r in rows):
        notes.append("fid-effnet: Frechet distance on ImageNet EfficientNet-Lite0 features of the held-out "
                     "originals vs reconstructions; not comparable with published FID.")
    return "\n".join([head, rule, *lines, "", *notes]) + "\n"


def token_note(metrics: dict[str, Any], codebook_sizes: list[int]) -> str:
    tokens = metrics.get("tokens")
    if not tokens:
        return ""
    cap = ", ".join(f"{min(1.0, tokens / k):.2f} at K {k}" for k in sorted(set(codebook_sizes)))
    return f"Token statistics over {tokens} tokens (utilization can be at most tokens / K: {cap})."


def charts(rows: list[dict[str, Any]], curves: dict[str, list[list[tuple[int, float]]]], out: Path) -> None:
    """bars.png (utilization of encode and of the samples, PSNR; error bars: standard deviation over
    seeds) and utilization.png (held-out utilization over training, one line per seed)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    names = [r["name"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(max(8, 1.6 * len(names) + 4), 3.6))
    panels = (("utilization", "utilization (encode)"), ("utilization_sampled", "utilization (sampled)"),
              ("psnr", "PSNR (dB)"))
    for ax, (key, label) in zip(axes, panels):
        stats = [r["stats"].get(key, {"mean": 0.0, "std": 0.0}) for r in rows]
        values = [st["mean"] for st in stats]
        ax.bar(names, values, yerr=[st["std"] for st in stats], color="#4c72b0", capsize=3)
        ax.set_title(label)
        ax.tick_params(axis="x", rotation=45)
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    fig.tight_layout()
    atomic_write(out / "bars.png", lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, per_seed) in enumerate(curves.items()):
        for j, points in enumerate(per_seed):
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3,
                        color=colors[i % len(colors)], label=name if j == 0 else None)
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out utilization (encode)")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    atomic_write(out / "utilization.png", lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


@torch.no_grad()
def reconstruction_sheet(names: list[str], run_dirs: list[Path], images: torch.Tensor, path: Path) -> None:
    """Rows: the originals, then each method's quantized reconstruction; method names on the left."""
    from PIL import Image, ImageDraw


    rows = [images]
    for run_dir in run_dirs:
        rows.append(load_model(run_dir).reconstruct(images))
    scale = max(1, 96 // images.shape[-1])
    grid = image_grid(rows, scale)
    label_w = 90
    sheet = Image.new("RGB", (grid.width + label_w, grid.height), "white")
    sheet.paste(grid.convert("RGB"), (label_w, 0))
    draw = ImageDraw.Draw(sheet)
    row_h = (grid.height - 2) / len(rows)
    for i, name in enumerate(["original", *names]):
        draw.text((4, 2 + i * row_h + row_h / 2 - 5), name, fill="black")
    atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"))


def _data_name(config: Config) -> str:
    return ("built-in held-out photos (scikit-learn china.jpg, flower.jpg)"
            if config.data.source == "builtin" else f"{config.data.root} (held out)")


def compare(presets: list[str], out: str | Path, data: str | None = None, steps: int | None = None,
            seed: int = 0, overrides: list[str] | None = None, eval_points: int = 6,
            device: str | None = None, grid_images: int = 8, seeds: list[int] | None = None,
            one_seed: list[str] | None = None) -> list[dict[str, Any]]:
    """Train every preset at the same budget; with several ``seeds`` each preset once per seed
    (``OUT/<preset>/seed<S>/``; presets in ``one_seed`` only with the first), reported as mean ±
    standard deviation. Returns one aggregated row per preset (see :func:`aggregate`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if len(set(presets)) != len(presets):
        raise ValueError(f"a preset is listed twice: {presets}")
    seeds = list(seeds) if seeds else [seed]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"a seed is listed twice: {seeds}")
    one_seed = list(one_seed or [])
    unknown = sorted(set(one_seed) - set(presets))
    if unknown:
        raise ValueError(f"--one-seed names presets that are not compared: {', '.join(unknown)}")
    runs: dict[str, list[tuple[int, Path, Config]]] = {}
    for p in presets:
        for s in (seeds[:1] if p in one_seed else seeds):
            run_dir = out / p if len(seeds) == 1 else out / p / f"seed{s}"
            runs.setdefault(p, []).append((s, run_dir, compare_config(p, data, steps, s, overrides or [],
                                                                    eval_points)))
    results: dict[str, list[dict[str, Any]]] = {}
    for name, items in runs.items():
        for s, run_dir, config in items:
            print(f"[compare] {name} (seed {s}): {config.model.quantizer}, {config.train.steps} steps")
            results.setdefault(name, []).append({**run_one(name, config, run_dir, device), "seed": s})
    rows = [aggregate(results[p]) for p in presets]


    first = runs[presets[0]][0][2]
    eval_set = build_eval_dataset(first, None)
    picks = torch.linspace(0, len(eval_set) - 1, min(grid_images, len(eval_set))).long().tolist()
    images = torch.stack([eval_set[i] for i in picks])  # spread over the split
    first_metrics = results[presets[0]][0]["metrics"]
    table = results_table(rows, _data_name(first), first.data.resolution,
                          first_metrics.get("images", len(eval_set)),
                          token_note(first_metrics, [r["codebook_size"] for r in rows]))
    command = "vaevq compare " + " ".join([*presets, *(overrides or [])]) + f" --out {out}" + \
        (f" --data {data}" if data else "") + (f" --steps {steps}" if steps else "") + \
        (f" --seeds {' '.join(map(str, seeds))}" if len(seeds) > 1 else f" --seed {seeds[0]}") + \
        (f" --one-seed {' '.join(one_seed)}" if one_seed and len(seeds) > 1 else "") + \
        f" --eval-points {eval_points}"
    atomic_write_text(out / "results.md", f"# Comparison\n\n`{command}`\n\n{table}\n"
                      "![utilization and PSNR](bars.png)\n\n![utilization over training](utilization.png)\n\n"
                      "![reconstructions](reconstructions.png)\n")
    atomic_write_text(out / "results.json", json.dumps(
        {"command": command, "data": _data_name(first), "resolution": first.data.resolution,
         "results": rows,
         "runs": [{k: v for k, v in r.items() if k != "config"} for p in presets for r in results[p]]},
        indent=2) + "\n")
    curves = {p: [utilization_curve(run_dir) for _, run_dir, _ in runs[p]] for p in presets}
    charts(rows, curves, out)
    reconstruction_sheet(presets, [runs[p][0][1] for p in presets], images, out / "reconstructions.png")
    print(table)
    print(f"[compare] wrote {out / 'results.md'}, results.json, bars.png, utilization.png, reconstructions.png")
    return rows


DEFAULT_SIZES = (4096, 8192, 16384, 32768, 65536, 131072)


def sweep_codebook(preset: str, out: str | Path, sizes: tuple[int, ...] = DEFAULT_SIZES, data: str | None = None,
                   steps: int | None = None, seed: int = 0, overrides: list[str] | None = None,
                   eval_points: int = 4, device: str | None = None) -> list[dict[str, Any]]:
    """Train ``preset`` at every codebook size (same steps and seed) and plot utilization, PSNR and
    fid-effnet against K (the analogue of the paper's Fig. 7). Finished sizes are skipped."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for k in sizes:
        config = compare_config(preset, data, steps, seed, [*(overrides or []), f"model.codebook_size={k}"],
                                eval_points)
        print(f"[sweep] {preset} K {k}: {config.train.steps} steps")
        results.append(run_one(f"K{k}", config, out / f"K{k}", device))
    first = compare_config(preset, data, steps, seed, overrides or [], eval_points)
    table = results_table([aggregate([r]) for r in results], _data_name(first), first.data.resolution,
                          results[0]["metrics"].get("images", 0),
                          token_note(results[0]["metrics"], [r["codebook_size"] for r in results]))
    fid = ["n/a" if r["metrics"].get("fid_effnet") is None else f"{r['metrics']['fid_effnet']:.2f}"
           for r in results]
    fid_line = "fid-effnet (EfficientNet-Lite0; not comparable with published FID): " + ", ".join(
        f"K {r['codebook_size']}: {f}" for r, f in zip(results, fid))
    command = (f"vaevq sweep-codebook {' '.join([preset, *(overrides or [])])}"
               f" --sizes {' '.join(map(str, sizes))} --out {out}" + (f" --data {data}" if data else "")
               + (f" --steps {steps}" if steps else "") + f" --seed {seed} --eval-points {eval_points}")
    atomic_write_text(out / "sweep.md", f"# Codebook size sweep\n\n`{command}`\n\n{table}\n{fid_line}\n\n"
                      "![metrics against K](sweep.png)\n")
    atomic_write_text(out / "sweep.json", json.dumps(
        {"command": command, "results": [{k: v for k, v in r.items() if k != "config"} for r in results]},
        indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    ks = [r["codebook_size"] for r in results]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.4))
    for ax, key, label in zip(axes, ("utilization", "utilization_sampled", "psnr", "fid_effnet"),
                              ("utilization (encode)", "utilization (sampled)", "PSNR (dB)", "fid-effnet")):
        ax.plot(ks, [r["metrics"].get(key, float("nan")) for r in results], marker="o")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("codebook size K")
        ax.set_title(label)
    fig.tight_layout()
    atomic_write(out / "sweep.png", lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
    print(table + fid_line)
    return results
