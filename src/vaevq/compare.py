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
from vaevq.fileio import atomic_write, atomic_write_text, dumps, read_jsonl
from vaevq.generation import make_trainer
from vaevq.generation.evaluate import evaluate_generator
from vaevq.rundir import RunDir
from vaevq.training import load_model
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


def same_settings(recorded: dict[str, Any] | None, settings: dict[str, Any]) -> bool:
    """Whether a run recorded with ``recorded`` settings is the run ``settings`` asks for: every
    recorded key has the same value, and every key added to the config since then is at its
    default (so runs recorded by an earlier version are found again, and nothing else is)."""
    if not isinstance(recorded, dict):
        return False
    defaults = Config().to_dict()
    for section, values in settings.items():
        if not isinstance(values, dict):
            if recorded.get(section, defaults.get(section)) != values:
                return False
            continue
        old = recorded.get(section, {})
        for key, value in values.items():
            expected = old[key] if key in old else defaults.get(section, {}).get(key)
            if expected != value:
                return False
    return True


def run_one(name: str, config: Config, run_dir: Path, device: str | None) -> dict[str, Any]:
    marker = RunDir(run_dir).compare_marker
    settings = config.to_dict()
    if marker.is_file():
        done = json.loads(marker.read_text())
        if same_settings(done.get("config"), settings):
            print(f"[compare] {name}: finished earlier, skipped ({marker})")
            return done
    start = time.perf_counter()
    trainer = make_trainer(config, run_dir, resume=True, device=device)
    if trainer.resumed_from is not None:
        print(f"[compare] {name}: resuming at step {trainer.resumed_from}")
    metrics = trainer.train()
    if config.is_generator:
        return _finish_generator(name, config, run_dir, trainer, metrics, marker, settings, device, start)
    result = {"name": name, "quantizer": config.model.quantizer,
              "codebook_size": trainer.model.quantizer.codebook_size, "steps": trainer.step,
              "metrics": metrics, "train_s": trainer.elapsed,
              "wall_s": time.perf_counter() - start, "config": settings}
    atomic_write_text(marker, dumps(result, indent=2) + "\n")
    return result


def _finish_generator(name, config, run_dir, trainer, metrics, marker, settings, device, start):
    """A generator run of ``compare --generation``: its generation metrics, recorded in the marker."""
    ev = evaluate_generator(run_dir, num=config.generator.eval_samples,
                            device=device or ("cuda" if torch.cuda.is_available() else "cpu"))
    grid = torch.cat([row for row in ev.grids["samples"]])[:16]
    result = {"name": name, "generator": config.name, "steps": trainer.step, "train_s": trainer.elapsed,
              "val": metrics, "generation": ev.result, "wall_s": time.perf_counter() - start, "config": settings}
    atomic_write_text(marker, dumps(result, indent=2) + "\n")
    RunDir(run_dir).eval.mkdir(parents=True, exist_ok=True)
    atomic_write(RunDir(run_dir).eval / "compare_grid.pt", lambda tmp: torch.save(grid, tmp))
    return result


GENERATION_COLUMNS = [("fid_effnet", "fid-effnet", "{:.1f}"), ("is_effnet", "IS-effnet", "{:.2f}"),
                      ("precision_effnet", "precision", "{:.3f}"), ("recall_effnet", "recall", "{:.3f}"),
                      ("gfid", "gFID", "{:.2f}"), ("inception_score", "IS", "{:.2f}")]


GENERATION_KINDS = ("ar", "ldm")
DEFAULT_GENERATORS = {  # data source -> (autoregressive, latent diffusion) preset
    "builtin": ("gpt-tiny", "ldm-tiny"), "brain": ("gpt-brain-tiny", "ldm-brain-tiny"),
    "brats": ("llamagen-b-brats", "ldm-4-brats"), "imagefolder": ("llamagen-b", "ldm-4")}


def default_generator(config: Config, kind: str) -> str:
    """The generator preset of ``kind`` trained on a tokenizer's tokens in ``compare --generation``."""
    ar, ldm = DEFAULT_GENERATORS.get(config.data.source, DEFAULT_GENERATORS["imagefolder"])
    return ldm if kind == "ldm" else ar


def check_generation(generation: list[str] | None, generator: str | None) -> None:
    """``--generation`` kinds and ``--generator`` checked before any training."""
    unknown = [k for k in generation or [] if k not in GENERATION_KINDS]
    if unknown:
        raise ValueError(f"--generation {unknown[0]}: one of {', '.join(GENERATION_KINDS)} "
                         "(ar: the autoregressive GPT, ldm: latent diffusion)")
    if generator and len(generation or []) != 1:
        raise ValueError("--generator names one preset: give it with a single --generation kind")
    if generator:
        kind = load_config(generator).generator.kind
        if kind != generation[0]:
            raise ValueError(f"--generator {generator} is a generator.kind {kind} preset; --generation is "
                             f"{generation[0]}")


def train_generator(kind: str, name: str, seed: int, run_dir: Path, config: Config, gen_dir: Path,
                    generator: str | None, generator_steps: int | None, generation_samples: int | None,
                    device: str | None) -> dict[str, Any]:
    """A generator of ``kind`` (``generator`` preset, else the default for the data) trained on the
    tokenizer run ``run_dir`` with its seed, then evaluated (:func:`run_one`: skipped when done)."""
    gen_preset = generator or default_generator(config, kind)
    extra = [f"generator.tokenizer={run_dir.resolve()}", f"train.seed={seed}"]
    if generator_steps:
        extra.append(f"train.steps={generator_steps}")
    if generation_samples:
        extra.append(f"generator.eval_samples={generation_samples}")
    if config.data.root:
        extra.append(f"data.root={config.data.root}")
    gen_config = load_config(gen_preset, extra)
    gen_config.train.image_every = 0
    print(f"[compare] {gen_preset} on the tokens of {name} (seed {seed}): {gen_config.train.steps} steps")
    return run_one(f"{name}-{kind}", gen_config, gen_dir, device)


def _stat(values: list[float | None]) -> dict[str, float] | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    t = torch.tensor(values, dtype=torch.float64)
    return {"mean": float(t.mean()), "std": float(t.std()) if len(values) > 1 else 0.0, "n": len(values)}


def generation_table(rows: list[dict[str, Any]]) -> str:
    """Table 2 in miniature: one row per tokenizer (mean ± std over seeds), with the baselines."""
    first = rows[0]["runs"][0]["generation"]
    ldm = first.get("kind") == "ldm"
    baselines = ["noise" if ldm else "unigram", "reconstruction"]
    names = {"unigram": "unigram", "noise": "Gaussian-latent", "reconstruction": "reconstruction"}
    head = ("| tokenizer | generator | seeds | samples | val. loss | "
            + " | ".join(c[1] for c in GENERATION_COLUMNS) + " | "
            + " | ".join(f"{names[b]} fid-effnet" for b in baselines) + " |")
    rule = "|" + "---|" * (5 + len(GENERATION_COLUMNS) + len(baselines))
    lines = []
    for r in rows:
        runs = r["runs"]
        gen = [x["generation"] for x in runs]
        cells = [_cell(_stat([g.get(key) for g in gen]), fmt) for key, _, fmt in GENERATION_COLUMNS]
        base = [_cell(_stat([g["baselines"].get(b, {}).get("fid_effnet") for g in gen]), "{:.1f}")
                for b in baselines]
        lines.append(f"| {r['tokenizer']} | {runs[0]['generator']} | {len(runs)} | {gen[0]['samples']} | "
                     + _cell(_stat([x["val"].get("val_loss") for x in runs]), "{:.3f}") + " | "
                     + " | ".join(cells) + " | " + " | ".join(base) + " |")
    s = first["sampling"]
    if ldm:
        what = (f"Latent diffusion trained on each tokenizer's pre-quantization latent of the training split "
                f"(with flips), same steps and seed; {first['samples']} samples at {first['resolution']}x"
                f"{first['resolution']} per run (classes in turn), DDIM {s['num_steps']} steps, eta {s['eta']:g}, "
                f"cfg {s['cfg_scale']:g}, decoded through the nearest codes; reference: {first['reference']}. "
                "val. loss: denoising loss (the preset's epsilon or v target) of held-out latents at 8 fixed "
                "timesteps (not comparable across "
                "tokenizers: different latents).")
    else:
        what = (f"Generator trained on each tokenizer's codes of the training split (with flips), same steps and "
                f"seed; {first['samples']} samples at {first['resolution']}x{first['resolution']} per run "
                f"(classes in turn), cfg {s['cfg_scale']:g}, temperature {s['temperature']:g}, top-k "
                f"{s['top_k']}, top-p {s['top_p']:g}; reference: {first['reference']}. val. loss: cross-entropy "
                "(nats/token) of the held-out codes (not comparable across tokenizers: different codes).")
    notes = [what + " fid-effnet, IS-effnet, precision and recall (k = 3) on EfficientNet-Lite0 features: not "
             "comparable with published numbers; gFID and IS need the FID InceptionV3 weights (n/a when absent). "
             "Baselines scored the same way: "
             + ("latents drawn from N(0, I) (the sampler's start) decoded through their nearest codes" if ldm
                else "tokens drawn from the codes' unigram frequencies")
             + ", and the tokenizer's reconstructions of real training images (the floor)."]
    return "\n".join([head, rule, *lines, "", *notes]) + "\n"


def generation_sheet(names: list[str], run_dirs: list[Path], path: Path) -> None:
    """One row of samples per tokenizer (from each generator's evaluation), names on the left."""
    from PIL import Image, ImageDraw

    rows = [torch.load(RunDir(d).eval / "compare_grid.pt", weights_only=True) for d in run_dirs]
    width = min(r.shape[0] for r in rows)
    grid = image_grid([r[:width] for r in rows], max(1, 64 // rows[0].shape[-1]))
    label_w = 90
    sheet = Image.new("RGB", (grid.width + label_w, grid.height), "white")
    sheet.paste(grid.convert("RGB"), (label_w, 0))
    draw = ImageDraw.Draw(sheet)
    row_h = (grid.height - 2) / len(rows)
    for i, name in enumerate(names):
        draw.text((4, 2 + i * row_h + row_h / 2 - 5), name, fill="black")
    atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"))


def utilization_curve(run_dir: Path) -> list[tuple[int, float]]:
    points = []
    log = RunDir(run_dir).log
    if log.is_file():
        for record in read_jsonl(log):
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
            one_seed: list[str] | None = None, generation: list[str] | None = None,
            generator: str | None = None, generator_steps: int | None = None,
            generation_samples: int | None = None) -> list[dict[str, Any]]:
    """Train every preset at the same budget; with several ``seeds`` each preset once per seed
    (``OUT/<preset>/seed<S>/``; presets in ``one_seed`` only with the first), reported as mean ±
    standard deviation. ``generation`` (e.g. ["ar"]): after each tokenizer run, a generator
    (``generator`` preset, default per data: gpt-tiny on the built-in photos) trains on its codes
    with the same steps (``generator_steps`` or the preset's) and seed in ``OUT/<preset>-ar[/seedS]``,
    and results.md gains the generation table (Table 2 in miniature). Returns one aggregated row
    per preset (see :func:`aggregate`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if len(set(presets)) != len(presets):
        raise ValueError(f"a preset is listed twice: {presets}")
    check_generation(generation, generator)  # before any training
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
    generation_md = ""
    for kind in generation or []:
        gen_rows, gen_dirs = [], []
        for name, items in runs.items():
            gen_runs = []
            for s, run_dir, config in items:
                gen_dir = (out / f"{name}-{kind}") if len(seeds) == 1 else (out / f"{name}-{kind}" / f"seed{s}")
                gen_runs.append(train_generator(kind, name, s, run_dir, config, gen_dir, generator,
                                                generator_steps, generation_samples, device))
                if len(gen_dirs) == len(gen_rows):
                    gen_dirs.append(gen_dir)
            gen_rows.append({"tokenizer": name, "runs": gen_runs})
        generation_md += f"\n## Generation ({kind}) on each tokenizer's tokens\n\n{generation_table(gen_rows)}\n" \
                         f"![samples per tokenizer](generation-{kind}.png)\n"
        generation_sheet(presets, gen_dirs, out / f"generation-{kind}.png")
        results[f"generation-{kind}"] = [{"tokenizer": r["tokenizer"], "runs": [
            {k: v for k, v in x.items() if k != "config"} for x in r["runs"]]} for r in gen_rows]

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
        f" --eval-points {eval_points}" + (f" --generation {','.join(generation)}" if generation else "") + \
        (f" --generator {generator}" if generator else "") + \
        (f" --generator-steps {generator_steps}" if generator_steps else "") + \
        (f" --generation-samples {generation_samples}" if generation_samples else "")
    atomic_write_text(out / "results.md", f"# Comparison\n\n`{command}`\n\n{table}\n"
                      "![utilization and PSNR](bars.png)\n\n![utilization over training](utilization.png)\n\n"
                      "![reconstructions](reconstructions.png)\n" + generation_md)
    atomic_write_text(out / "results.json", dumps(
        {"command": command, "data": _data_name(first), "resolution": first.data.resolution,
         "results": rows,
         "runs": [{k: v for k, v in r.items() if k != "config"} for p in presets for r in results[p]],
         **{k: v for k, v in results.items() if k.startswith("generation-")}},
        indent=2) + "\n")
    curves = {p: [utilization_curve(run_dir) for _, run_dir, _ in runs[p]] for p in presets}
    charts(rows, curves, out)
    reconstruction_sheet(presets, [runs[p][0][1] for p in presets], images, out / "reconstructions.png")
    print(table + generation_md)
    print(f"[compare] wrote {out / 'results.md'}, results.json, bars.png, utilization.png, reconstructions.png")
    return rows


DEFAULT_SIZES = (4096, 8192, 16384, 32768, 65536, 131072)


def sweep_codebook(preset: str, out: str | Path, sizes: tuple[int, ...] = DEFAULT_SIZES, data: str | None = None,
                   steps: int | None = None, seed: int = 0, overrides: list[str] | None = None,
                   eval_points: int = 4, device: str | None = None, generation: str | None = None,
                   generator: str | None = None, generator_steps: int | None = None,
                   generation_samples: int | None = None) -> list[dict[str, Any]]:
    """Train ``preset`` at every codebook size (same steps and seed) and plot utilization, PSNR and
    fid-effnet against K (the analogue of the paper's Fig. 7). With ``generation`` (ldm or ar) a
    generator is trained on every size's tokenizer (``OUT/K<k>-<kind>``) and its gFID (fid-effnet
    without the InceptionV3 weights) joins the table and the plot. Finished runs are skipped."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    check_generation([generation] if generation else None, generator)
    results, gen_results = [], []
    for k in sizes:
        config = compare_config(preset, data, steps, seed, [*(overrides or []), f"model.codebook_size={k}"],
                                eval_points)
        print(f"[sweep] {preset} K {k}: {config.train.steps} steps")
        results.append(run_one(f"K{k}", config, out / f"K{k}", device))
        if generation:
            gen_results.append(train_generator(generation, f"K{k}", seed, out / f"K{k}", config,
                                               out / f"K{k}-{generation}", generator, generator_steps,
                                               generation_samples, device))
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
               + (f" --steps {steps}" if steps else "") + f" --seed {seed} --eval-points {eval_points}"
               + (f" --generation {generation}" if generation else "")
               + (f" --generator {generator}" if generator else "")
               + (f" --generator-steps {generator_steps}" if generator_steps else "")
               + (f" --generation-samples {generation_samples}" if generation_samples else ""))
    gen_md = ""
    if generation:
        gen_md = (f"\n## Generation ({generation}) on each size's tokens\n\n"
                  + generation_table([{"tokenizer": f"K {r['codebook_size']}", "runs": [g]}
                                      for r, g in zip(results, gen_results)]))
    atomic_write_text(out / "sweep.md", f"# Codebook size sweep\n\n`{command}`\n\n{table}\n{fid_line}\n\n"
                      f"![metrics against K](sweep.png)\n{gen_md}")
    atomic_write_text(out / "sweep.json", dumps(
        {"command": command, "results": [{k: v for k, v in r.items() if k != "config"} for r in results],
         **({f"generation-{generation}": [{k: v for k, v in g.items() if k != "config"} for g in gen_results]}
            if generation else {})},
        indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    ks = [r["codebook_size"] for r in results]
    panels = [(key, label, [r["metrics"].get(key, float("nan")) for r in results]) for key, label in
              (("utilization", "utilization (encode)"), ("utilization_sampled", "utilization (sampled)"),
               ("psnr", "PSNR (dB)"), ("fid_effnet", "fid-effnet (reconstructions)"))]
    if generation:
        gfid = [g["generation"].get("gfid") for g in gen_results]
        key, name = ("gfid", "gFID") if all(v is not None for v in gfid) else ("fid_effnet", "fid-effnet")
        panels.append((key, f"generation {name} ({generation})",
                       [g["generation"].get(key, float("nan")) for g in gen_results]))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.5 * len(panels), 3.4))
    for ax, (_, label, values) in zip(axes, panels):
        ax.plot(ks, [float("nan") if v is None else v for v in values], marker="o")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("codebook size K")
        ax.set_title(label)
    fig.tight_layout()
    atomic_write(out / "sweep.png", lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
    print(table + fid_line)
    return results
