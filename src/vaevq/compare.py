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
from vaevq.fileio import atomic_write, atomic_write_text

COLUMNS = [("psnr", "PSNR (dB)", "{:.2f}"), ("ssim", "SSIM", "{:.4f}"), ("lpips", "LPIPS", "{:.4f}"),
           ("fid_effnet", "fid-effnet", "{:.1f}"),
           ("utilization", "utilization", "{:.3f}"), ("perplexity", "perplexity", "{:.1f}"),
           ("dead_codes", "dead codes", "{:d}"), ("train_s", "train time (s)", "{:.0f}")]


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
    from vaevq.training import Trainer

    marker = run_dir / "compare.json"
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
    log = run_dir / "log.jsonl"
    if log.is_file():
        for line in log.read_text().splitlines():
            record = json.loads(line)
            if "eval/utilization" in record:
                points.append((record["step"], record["eval/utilization"]))
    return points


def results_table(results: list[dict[str, Any]], data_name: str, resolution: int, images: int) -> str:
    head = "| method | quantizer | K | " + " | ".join(c[1] for c in COLUMNS) + " |"
    rule = "|" + "---|" * (3 + len(COLUMNS))
    rows = []
    for r in results:
        cells = []
        for key, _, fmt in COLUMNS:
            value = r["train_s"] if key == "train_s" else r["metrics"].get(key)
            cells.append("n/a" if value is None else fmt.format(value))
        rows.append(f"| {r['name']} | {r['quantizer']} | {r['codebook_size']} | " + " | ".join(cells) + " |")
    steps = sorted({r["steps"] for r in results})
    lpips = {r["metrics"].get("lpips_net") for r in results} - {None}
    notes = [f"Held-out split: {data_name}, {images} images at {resolution}x{resolution}; "
             f"{'/'.join(map(str, steps))} training steps each, same seed.",
             "PSNR, SSIM and LPIPS on the quantized reconstruction; utilization and perplexity of the "
             "token ids over the whole split; train time is the time spent in training steps."]
    if lpips:
        notes.append(f"LPIPS network: {', '.join(sorted(lpips))}.")
    if any("fid_effnet" in r["metrics"] for r in results):
        notes.append("fid-effnet: Frechet distance on ImageNet EfficientNet-Lite0 features of the held-out "
                     "originals vs reconstructions; not comparable with published FID.")
    return "\n".join([head, rule, *rows, "", *notes]) + "\n"


def charts(results: list[dict[str, Any]], curves: dict[str, list[tuple[int, float]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    names = [r["name"] for r in results]
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.1 * len(names) + 3), 3.6))
    for ax, key, label in ((axes[0], "utilization", "codebook utilization"), (axes[1], "psnr", "PSNR (dB)")):
        values = [r["metrics"].get(key, 0.0) for r in results]
        ax.bar(names, values, color="#4c72b0")
        ax.set_title(label)
        ax.tick_params(axis="x", rotation=45)
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    fig.tight_layout()
    atomic_write(out / "bars.png", lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, points in curves.items():
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out codebook utilization")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    atomic_write(out / "utilization.png", lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


@torch.no_grad()
def reconstruction_sheet(names: list[str], run_dirs: list[Path], images: torch.Tensor, path: Path) -> None:
    """Rows: the originals, then each method's quantized reconstruction; method names on the left."""
    from PIL import Image, ImageDraw

    from vaevq.training import load_model
    from vaevq.training.images import image_grid

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


def compare(presets: list[str], out: str | Path, data: str | None = None, steps: int | None = None,
            seed: int = 0, overrides: list[str] | None = None, eval_points: int = 6,
            device: str | None = None, grid_images: int = 8) -> list[dict[str, Any]]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if len(set(presets)) != len(presets):
        raise ValueError(f"a preset is listed twice: {presets}")
    configs = {p: compare_config(p, data, steps, seed, overrides or [], eval_points) for p in presets}
    results = []
    for name, config in configs.items():
        print(f"[compare] {name}: {config.model.quantizer}, {config.train.steps} steps")
        results.append(run_one(name, config, out / name, device))

    from vaevq.data import build_eval_dataset

    first = configs[presets[0]]
    eval_set = build_eval_dataset(first, None)
    picks = torch.linspace(0, len(eval_set) - 1, min(grid_images, len(eval_set))).long().tolist()
    images = torch.stack([eval_set[i] for i in picks])  # spread over the split
    data_name = ("built-in held-out photos (scikit-learn china.jpg, flower.jpg)"
                 if first.data.source == "builtin" else f"{first.data.root} (held out)")
    n_images = results[0]["metrics"].get("images", len(eval_set))
    table = results_table(results, data_name, first.data.resolution, n_images)
    command = "vaevq compare " + " ".join([*presets, *(overrides or [])]) + f" --out {out}" + \
        (f" --data {data}" if data else "") + (f" --steps {steps}" if steps else "") + \
        f" --seed {seed} --eval-points {eval_points}"
    atomic_write_text(out / "results.md", f"# Comparison\n\n`{command}`\n\n{table}\n"
                      "![utilization and PSNR](bars.png)\n\n![utilization over training](utilization.png)\n\n"
                      "![reconstructions](reconstructions.png)\n")
    atomic_write_text(out / "results.json", json.dumps(
        {"command": command, "data": data_name, "resolution": first.data.resolution,
         "results": [{k: v for k, v in r.items() if k != "config"} for r in results]}, indent=2) + "\n")
    curves = {name: utilization_curve(out / name) for name in presets}
    charts(results, curves, out)
    reconstruction_sheet(presets, [out / p for p in presets], images, out / "reconstructions.png")
    print(table)
    print(f"[compare] wrote {out / 'results.md'}, results.json, bars.png, utilization.png, reconstructions.png")
    return results


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
    data_name = ("built-in held-out photos (scikit-learn china.jpg, flower.jpg)"
                 if first.data.source == "builtin" else f"{first.data.root} (held out)")
    table = results_table(results, data_name, first.data.resolution, results[0]["metrics"].get("images", 0))
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
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    for ax, key, label in zip(axes, ("utilization", "psnr", "fid_effnet"),
                              ("held-out utilization", "PSNR (dB)", "fid-effnet")):
        ax.plot(ks, [r["metrics"].get(key, float("nan")) for r in results], marker="o")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("codebook size K")
        ax.set_title(label)
    fig.tight_layout()
    atomic_write(out / "sweep.png", lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
    print(table + fid_line)
    return results
