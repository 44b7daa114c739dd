"""The ``vaevq`` command line (also ``python -m vaevq``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

EPILOG = """examples:
  vaevq compare m0 m1 m2 m3 vaevq --steps 600 --out runs/ablation
  vaevq train tiny --out runs/tiny
  vaevq train tiny train.steps=2000 model.codebook_size=1024 --out runs/tiny-1k
  vaevq train imagenet-f16 data.root=/data/imagenet --out runs/f16
  vaevq train runs/tiny --out runs/tiny --resume
  vaevq eval --checkpoint runs/tiny
  vaevq reconstruct --checkpoint runs/tiny --out recon/ photo.jpg more_photos/
  vaevq encode --checkpoint runs/tiny --out tokens.npy my_images/
  vaevq train brain-tiny --out runs/brain
  vaevq train gpt-tiny generator.tokenizer=runs/tiny --out runs/gpt-tiny
  vaevq sample --checkpoint runs/gpt-tiny --num 64 --out samples/ --cfg 2.0 --classes 0,3
  vaevq eval --checkpoint runs/gpt-tiny --num 1000
  vaevq train ldm-tiny generator.tokenizer=runs/tiny --out runs/ldm-tiny
  vaevq sample --checkpoint runs/ldm-tiny --num 64 --out samples/ --cfg 1.5 --steps 50 --eta 0.0
  vaevq compare m0 vaevq --generation ar,ldm --out runs/table2
  vaevq data check brats-f16 data.root=/data/BraTS2024 data.contrasts=[t1n,t2f]
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vaevq", description="Train, evaluate and use VAEVQ discrete visual tokenizers.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error (also VAEVQ_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a tokenizer or a generator (generator.kind: ar, ldm) from a preset or "
                                     "YAML")
    p.add_argument("config", metavar="PRESET_OR_YAML",
                   help="a preset name (see `vaevq presets`) or a YAML config file")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. train.steps=2000 data.root=/data/imgs")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder (created)")
    p.add_argument("--resume", action="store_true",
                   help="continue from RUN_DIR/checkpoints/last.pt (starts fresh if none)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")

    p = sub.add_parser("eval", help="a tokenizer: PSNR, SSIM, LPIPS, rFID, utilization; a generator: gFID, IS, "
                                    "precision/recall with unigram and reconstruction baselines")
    p.add_argument("--checkpoint", required=True, metavar="RUN_DIR",
                   help="a run folder, a checkpoint .pt file or a save_pretrained folder")
    p.add_argument("--num", type=int, default=None, metavar="N",
                   help="generator runs: samples to score (default generator.eval_samples; 50000 for the "
                        "paper's protocol)")
    p.add_argument("--ref", metavar="DIR|STATS.npz", default=None,
                   help="generator runs: reference images (a folder) or an ADM-style .npz (mu/sigma of pool3, "
                        "arr_0 images); default: the training split's real images")
    p.add_argument("--cfg", type=float, default=None, help="generator runs: guidance scale (default: the run's)")
    p.add_argument("--steps", type=int, default=None, help="latent diffusion runs: DDIM steps (default: the run's "
                                                          "generator.sample_steps)")
    p.add_argument("--eta", type=float, default=None, help="latent diffusion runs: DDIM eta (default: the run's)")
    p.add_argument("--seed", type=int, default=0, help="generator runs: sampling seed")
    p.add_argument("--data", metavar="PATH",
                   help="a folder of images or 'built-in'; for brain MRI runs a BraTS root or one "
                        "NIfTI volume (default: the run's held-out split)")
    p.add_argument("--max-images", type=int, default=0, metavar="N", help="0: all")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--which", choices=["last", "best"], default="last",
                   help="which checkpoint of a run folder")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="where metrics.json and the report go (default RUN/eval; e.g. for a read-only run)")
    p.add_argument("--inception-weights", metavar="FILE",
                   help="pt_inception-2015-12-05-6726825d.pth for rFID (else $VAEVQ_INCEPTION_WEIGHTS, "
                        "the hub cache, or a download)")
    p.add_argument("--device", choices=["cpu", "cuda"])

    p = sub.add_parser("sample", help="draw images from a generator run (PNG files, a grid, ids)")
    p.add_argument("--checkpoint", required=True, metavar="RUN_DIR", help="a generator run folder or checkpoint")
    p.add_argument("--num", type=int, default=64, metavar="N")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (default: the run's "
                                                           "generator.cfg_scale; 1 disables)")
    p.add_argument("--classes", default=None, metavar="C[,C...]",
                   help="class indices used in turn (default: every class in turn)")
    p.add_argument("--temperature", type=float, default=None, help="autoregressive runs")
    p.add_argument("--top-k", type=int, default=None, help="autoregressive runs; 0: no top-k filtering")
    p.add_argument("--top-p", type=float, default=None, help="autoregressive runs; 1.0: no nucleus filtering")
    p.add_argument("--steps", type=int, default=None, help="latent diffusion runs: DDIM steps (default: the run's "
                                                          "generator.sample_steps)")
    p.add_argument("--eta", type=float, default=None,
                   help="latent diffusion runs: DDIM eta (0: deterministic given the initial noise)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--npz", action="store_true",
                   help="also write samples.npz with arr_0 (N, H, W, 3) uint8, the ADM evaluator's input layout")
    p.add_argument("--which", choices=["last", "best"], default="last")
    p.add_argument("--device", choices=["cpu", "cuda"])

    p = sub.add_parser("reconstruct", help="write original | reconstruction PNGs")
    p.add_argument("--checkpoint", required=True, metavar="RUN_DIR")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--which", choices=["last", "best"], default="last")
    p.add_argument("--device", choices=["cpu", "cuda"])

    p = sub.add_parser("encode", help="token ids of every image in a folder, as .npy (or LlamaGen's layout)")
    p.add_argument("--checkpoint", required=True, metavar="RUN_DIR")
    p.add_argument("--out", required=True, metavar="TOKENS.npy|CODE_PATH",
                   help="npy: one (N, h, w) file; llamagen: the code path holding DATASETSIZE_codes/ and _labels/")
    p.add_argument("images", metavar="IMAGE_DIR")
    p.add_argument("--format", choices=["npy", "llamagen"], default="npy",
                   help="llamagen: <out>/<dataset><size>_codes/<i>.npy (1, 2, h*w) codes of the image and its "
                        "horizontal flip, and _labels/<i>.npy (1,) class index of the first folder under "
                        "IMAGE_DIR (ImageFolder order), as LlamaGen's extract_codes_c2i.py writes them")
    p.add_argument("--dataset", default="imagenet", help="llamagen: the dataset name in the folder names")
    p.add_argument("--no-flip", action="store_true", help="llamagen: the original image only (num_aug 1)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--which", choices=["last", "best"], default="last")
    p.add_argument("--device", choices=["cpu", "cuda"])

    p = sub.add_parser("compare", help="train presets at the same budget and seed, then one report")
    p.add_argument("presets", nargs="+", metavar="PRESET_OR_key=value",
                   help="presets to compare (e.g. m0 m1 m2 m3 vaevq vq ema simvq); key=value items "
                        "apply to every run (e.g. model.codebook_size=16384)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--data", metavar="built-in|PATH", default=None, help="training data for every run")
    p.add_argument("--steps", type=int, default=None, help="training steps of every run (default: preset's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, nargs="+", metavar="S",
                   help="train every preset once per seed (OUT/<preset>/seed<S>/) and report mean ± std")
    p.add_argument("--one-seed", nargs="+", default=[], metavar="PRESET",
                   help="with --seeds: these presets run with the first seed only")
    p.add_argument("--eval-points", type=int, default=6, help="evaluations during training (utilization plot)")
    p.add_argument("--generation", default=None, metavar="ar,ldm",
                   help="after each tokenizer, train generators on its tokens and add a generation table per kind "
                        "(Table 2 in miniature): ar = the autoregressive GPT, ldm = latent diffusion")
    p.add_argument("--generator", default=None, metavar="PRESET",
                   help="with one --generation kind: the generator preset (default per data and kind: gpt-tiny / "
                        "ldm-tiny on the built-in photos, gpt-brain-tiny / ldm-brain-tiny on the built-in brain, "
                        "llamagen-b(-brats) / ldm-4(-brats) otherwise)")
    p.add_argument("--generator-steps", type=int, default=None, help="with --generation: steps of every generator")
    p.add_argument("--generation-samples", type=int, default=None, metavar="N",
                   help="with --generation: samples scored per generator (default: the preset's eval_samples)")
    p.add_argument("--device", choices=["cpu", "cuda"])

    p = sub.add_parser("sweep-codebook", help="train one preset at several codebook sizes; plot metrics vs K")
    p.add_argument("preset", metavar="PRESET_OR_YAML")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 16384, 32768, 65536, 131072])
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--data", metavar="built-in|PATH", default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-points", type=int, default=4)
    p.add_argument("--generation", default=None, metavar="ldm",
                   help="also train a generator on every size's tokenizer and plot its gFID / fid-effnet against "
                        "K (Fig. 7): ldm (latent diffusion) or ar")
    p.add_argument("--generator", default=None, metavar="PRESET", help="with --generation: the generator preset")
    p.add_argument("--generator-steps", type=int, default=None, help="with --generation: steps of every generator")
    p.add_argument("--generation-samples", type=int, default=None, metavar="N",
                   help="with --generation: samples scored per generator")
    p.add_argument("--device", choices=["cpu", "cuda"])

    p = sub.add_parser("data", help="data tools: `vaevq data check PRESET_OR_YAML [key=value ...]`")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    p = data_sub.add_parser("check", help="read the configured data without training: counts per split "
                                          "and every problem with its file; exit 1 when problems are "
                                          "fatal (data.on_error=stop)")
    p.add_argument("config", metavar="PRESET_OR_YAML")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--run", metavar="RUN_DIR", help="use this run's split.json (brain MRI)")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")

    sub.add_parser("presets", help="list the presets shipped in the package")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from vaevq.config import ConfigError

    debug = args.debug or os.environ.get("VAEVQ_DEBUG", "") not in ("", "0")
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, OSError, ValueError, FloatingPointError) as err:
        # a user error or an environment fault (a missing or unwritable file, a full disk, a bad
        # value): one line naming it; --debug / VAEVQ_DEBUG=1 shows the traceback
        if debug:
            raise
        print(f"vaevq {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vaevq {args.command}: interrupted", file=sys.stderr)
        return 130


def _device(args) -> str:
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is available here (torch.cuda.is_available() is False); "
                         "use --device cpu")
    if args.device:
        return args.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def cmd_train(args) -> int:
    from vaevq.config import load_config
    from vaevq.generation import make_trainer
    from vaevq.rundir import RunDir

    run = RunDir(args.out)
    run_dir = run.root
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--out {run_dir} is a file; a run needs a folder (new or an earlier run's)")
    has_checkpoint = run.has_checkpoint()
    if has_checkpoint and not args.resume:
        raise ValueError(f"{run_dir} already holds a run; pass --resume to continue it, "
                         "or choose another --out")
    source = args.config
    if args.resume and run.config.is_file():
        source = run.config  # the run's own settings; overrides still apply
    config = load_config(source, args.overrides)
    writable(run_dir, "--out")  # before any work
    if args.resume and not has_checkpoint:
        print(f"[vaevq] no checkpoint in {run_dir}: starting a new run", file=sys.stderr)
    make_trainer(config, run_dir, resume=args.resume, device=args.device).train()
    return 0


def _generator_run(path: str) -> bool:
    """Whether a --checkpoint names a generator run (its config.yaml, or a checkpoint's config)."""
    from vaevq.config import load_config
    from vaevq.rundir import RunDir
    from vaevq.training.checkpoint import load_checkpoint

    p = Path(path)
    if p.is_dir() and RunDir(p).config.is_file():
        return load_config(RunDir(p).config).is_generator
    if p.is_file() and p.suffix == ".pt":
        return (load_checkpoint(p).get("config", {}).get("generator", {}) or {}).get("kind", "none") != "none"
    return False


def writable(folder: Path, what: str) -> Path:
    """``folder`` (created) after proving a file can be written in it: a read-only or full place
    is named before any work, not after."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".vaevq-write-check-"):
            pass
    except OSError as err:
        raise ValueError(f"{what} {folder} is not writable ({err.strerror or err})") from None
    return folder


def eval_out(args, run) -> Path:
    return writable(Path(args.out), "--out") if args.out else writable(
        run.eval, "the run's eval folder (give --out DIR to write elsewhere):")


def metrics_json(result: dict) -> str:
    """metrics.json text: a non-finite number (NaN, inf) is written as null and named under
    ``nonfinite`` (JSON has no NaN; a file holding one breaks other readers)."""
    from vaevq.fileio import dumps, nonfinite_keys

    bad = nonfinite_keys(result)
    if bad:
        result = {**result, "nonfinite": {k: "not a finite number (written as null)" for k in bad}}
    return dumps(result, indent=2) + "\n"


def check_sampling(settings: dict) -> None:
    """Sampling settings a user gave on the command line, checked before any work."""
    if "temperature" in settings and (settings["temperature"] <= 0 or not 0 < settings["top_p"] <= 1
                                      or settings["top_k"] < 0):
        raise ValueError("--temperature must be > 0, --top-p in (0, 1], --top-k >= 0")
    if "num_steps" in settings and (settings["num_steps"] < 1 or not 0 <= settings["eta"] <= 1):
        raise ValueError("--steps must be >= 1 and --eta in [0, 1]")


def cmd_sample(args) -> int:
    import numpy as np
    import torch

    from vaevq.fileio import atomic_write, atomic_write_text
    from vaevq.generation.gpt import latent_grid
    from vaevq.generation.sample import class_plan, load_generator, sample_images, sampling_settings
    from vaevq.metrics import to_uint8
    from vaevq.training.images import image_grid

    device = _device(args)
    run = load_generator(args.checkpoint, args.which)
    g = run.config.generator
    settings = sampling_settings(g, cfg_scale=args.cfg, temperature=args.temperature, top_k=args.top_k,
                                 top_p=args.top_p, num_steps=args.steps, eta=args.eta)
    check_sampling(settings)
    model, tokenizer = run.model.to(device), run.tokenizer.to(device)
    try:
        classes = [int(c) for c in args.classes.split(",")] if args.classes else None
    except ValueError as err:
        raise ValueError(f"--classes must be comma-separated class indices; got {args.classes!r}") from err
    labels = class_plan(args.num, g.num_classes, classes)
    settings["seed"] = args.seed
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images, ids, labs = [], [], []
    batch = args.batch_size or g.sample_batch
    for x, tok, lab in sample_images(model, tokenizer, args.num, labels, batch_size=batch, progress=True,
                                     **settings):
        images.append(x.cpu())
        ids.append(tok.cpu())
        labs.append(lab.cpu() if lab is not None else torch.full((x.shape[0],), -1))
    images, ids, labs = torch.cat(images), torch.cat(ids), torch.cat(labs)
    pixels = to_uint8(images).permute(0, 2, 3, 1).numpy()  # (N, H, W, C) uint8
    from PIL import Image

    for i, (array, label) in enumerate(zip(pixels, labs.tolist())):
        name = f"{i:06d}" + (f"_class{label}" if label >= 0 else "") + ".png"
        picture = Image.fromarray(array if array.shape[-1] == 3 else array[..., 0])
        atomic_write(out / name, lambda tmp, p=picture: p.save(tmp, format="PNG"))
    per = 8
    rows = [images[i:i + per] for i in range(0, (images.shape[0] // per) * per, per)][:16] or [images]
    grid = image_grid(rows, scale=max(1, 64 // images.shape[-1]))
    atomic_write(out / "grid.png", lambda tmp: grid.save(tmp, format="PNG"))
    def write_npy(tmp, **arrays):
        with open(tmp, "wb") as fh:  # a file object: numpy would append a suffix to a bare path
            (np.save(fh, arrays["a"]) if "a" in arrays else np.savez(fh, **arrays))

    atomic_write(out / "ids.npy", lambda tmp: write_npy(tmp, a=ids.view(-1, *latent_grid(run.config)).numpy()))
    if args.npz:
        atomic_write(out / "samples.npz", lambda tmp: write_npy(tmp, arr_0=pixels))
    atomic_write_text(out / "samples.json", json.dumps(
        {"checkpoint": str(args.checkpoint), "step": run.step, "tokenizer": g.tokenizer, "num": args.num,
         "classes": sorted(set(labs.tolist())) if g.num_classes else None, **settings}, indent=1) + "\n")
    print(f"wrote {args.num} samples to {out}/ (PNG files, grid.png, ids.npy"
          + (", samples.npz" if args.npz else "") + ", samples.json); "
          + ", ".join(f"{k} {v}" for k, v in settings.items()))
    return 0


def cmd_eval_generator(args) -> int:
    if args.data or args.max_images:
        raise ValueError("--data and --max-images apply to tokenizer runs; a generator run is scored with "
                         "--num N samples against --ref DIR|STATS.npz")
    import io

    from vaevq.fileio import atomic_write_text
    from vaevq.generation.evaluate import evaluate_generator, generation_rows
    from vaevq.rundir import RunDir
    from vaevq.training.images import image_grid
    from vaevq.training.report import curves_png, write_report

    device = _device(args)
    run = RunDir.of(args.checkpoint)
    out = eval_out(args, run)  # checked before any work
    ev = evaluate_generator(args.checkpoint, num=args.num, ref=args.ref, which=args.which, cfg_scale=args.cfg,
                            num_steps=args.steps, eta=args.eta, seed=args.seed, batch_size=args.batch_size,
                            inception_weights=args.inception_weights,
                            device=device, progress=True)
    rows = generation_rows(ev.result)
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    atomic_write_text(out / "metrics.json", metrics_json(ev.result))

    def png(rows_):
        buf = io.BytesIO()
        image_grid(rows_, scale=max(1, 64 // rows_[0].shape[-1])).save(buf, format="PNG")
        return buf.getvalue()

    captions = {"samples": "samples of the generator (a row per class)",
                "unigram": "baseline: tokens drawn independently from the unigram frequencies of the training "
                           "codes",
                "noise": "baseline: latents drawn from N(0, I) (the sampler's start), decoded through their "
                         "nearest codes",
                "training_curves": "training loss from log.jsonl"}
    pictures = {name: png(rows_) for name, rows_ in ev.grids.items()}
    pictures["training_curves"] = curves_png(run.log)
    md, page = write_report(out, f"vaevq generation evaluation: {run.name}", rows, pictures,
                            {k: captions[k] for k in pictures})
    print(f"wrote {out / 'metrics.json'}, {md}, {page}")
    return 0


def cmd_eval(args) -> int:
    import torch

    if _generator_run(args.checkpoint):
        return cmd_eval_generator(args)
    given = [flag for flag, value in (("--num", args.num), ("--ref", args.ref), ("--cfg", args.cfg),
                                      ("--steps", args.steps), ("--eta", args.eta)) if value is not None]
    if given:
        raise ValueError(f"{given[0]} applies to generator runs; {args.checkpoint} is a tokenizer run")

    from vaevq.data import build_eval_dataset, build_token_dataset
    from vaevq.fileio import atomic_write_text
    from vaevq.metrics import CodebookUsage
    from vaevq.perceptual import LPIPS
    from vaevq.rundir import RunDir
    from vaevq.training import evaluate, load_model
    from vaevq.training.evaluate import frechet_metrics
    from vaevq.training.report import curves_png, grid_png, histogram_png, metric_rows, write_report

    device = _device(args)
    model = load_model(args.checkpoint, args.which).to(device)
    config = model.config
    run = RunDir.of(args.checkpoint)  # where the outputs go
    out = eval_out(args, run)  # checked before any work
    dataset = build_eval_dataset(config, args.data, run.split_dir())
    for note in dataset.notes:
        print(f"[vaevq] {note}")
    for problem in dataset.problems:
        print(f"[vaevq] skipped: {problem}")
    batch = args.batch_size or config.eval.batch_size
    lpips = LPIPS(config.eval.lpips_net) if config.eval.lpips_net else None
    if args.inception_weights:
        config.eval.inception_weights = args.inception_weights
    frechet, notes = frechet_metrics(config.eval, device)
    usage = CodebookUsage(model.quantizer.codebook_size)
    tokens = None if args.max_images else build_token_dataset(config, args.data)
    metrics = evaluate(model, dataset, token_dataset=tokens,
                       batch_size=batch, max_images=args.max_images,
                       device=device, progress=True, lpips=lpips, frechet=frechet, usage=usage)
    brain = config.data.is_brain
    if brain and args.data is None:
        on_colin = any(s.name == "Colin27" for s in dataset.subjects)
        if on_colin:
            data_name, split = "Colin27 T1 (Debian mricron-data ch2bet.nii.gz)", "independent brain, axial slices"
        else:
            data_name = ("built-in brain (nilearn MNI152 2009, synthetic subjects)"
                         if config.data.source == "brain" else f"BraTS root {config.data.root}")
            split = f"held-out subjects ({len(dataset.subjects)}), axial slices"
    elif brain:
        data_name, split = str(args.data), f"every subject ({len(dataset.subjects)}), axial slices"
    elif args.data in (None, "built-in", "builtin") and (args.data or config.data.source == "builtin"):
        data_name, split = "built-in photos (scikit-learn china.jpg, flower.jpg)", "held out"
    elif args.data:
        data_name, split = str(args.data), "every image (center crops)"
    else:
        data_name, split = str(config.data.root), "held-out split of data.root"
    result = {"checkpoint": str(args.checkpoint), "data": data_name, "split": split,
              "resolution": config.data.resolution, **metrics}
    if "rfid" in notes:
        result["rfid_unavailable"] = notes["rfid"] + "\n" + notes["rfid_detail"]
    rows = metric_rows(metrics, data_name, split, config.data.resolution, notes)
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    atomic_write_text(out / "metrics.json", metrics_json(result))
    n = min(config.eval.grid_images, len(dataset))
    picks = torch.linspace(0, len(dataset) - 1, n).long().tolist()
    images = torch.stack([dataset[i] for i in picks]).to(device)
    md, page = write_report(
        out, f"vaevq evaluation: {run.name} ({config.name}, {config.model.quantizer}, "
             f"K {model.quantizer.codebook_size})", rows,
        {"reconstructions": grid_png(model, images), "code_histogram": histogram_png(usage.counts),
         "training_curves": curves_png(run.log)},
        {"reconstructions": "originals, continuous path (variational models), quantized path",
         "code_histogram": "code frequencies on the evaluation data, sorted (log scale)",
         "training_curves": "training losses and held-out utilization from log.jsonl"})
    print(f"wrote {out / 'metrics.json'}, {md}, {page}")
    return 0


def cmd_compare(args) -> int:
    from vaevq.compare import compare

    presets = [p for p in args.presets if "=" not in p]
    overrides = [p for p in args.presets if "=" in p]
    if args.one_seed and not args.seeds:
        raise ValueError("--one-seed needs --seeds")
    compare(presets, args.out, data=args.data, steps=args.steps, seed=args.seed, overrides=overrides,
            eval_points=args.eval_points, device=args.device, seeds=args.seeds, one_seed=args.one_seed,
            generation=args.generation.split(",") if args.generation else None, generator=args.generator,
            generator_steps=args.generator_steps, generation_samples=args.generation_samples)
    return 0


def cmd_sweep(args) -> int:
    from vaevq.compare import sweep_codebook

    sweep_codebook(args.preset, args.out, tuple(args.sizes), data=args.data, steps=args.steps, seed=args.seed,
                   overrides=args.overrides, eval_points=args.eval_points, device=args.device,
                   generation=args.generation, generator=args.generator, generator_steps=args.generator_steps,
                   generation_samples=args.generation_samples)
    return 0


def _image_files(inputs: list[str]) -> list[Path]:
    from vaevq.data.transforms import list_images

    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = list_images(path)
            if not found:
                raise FileNotFoundError(f"no images (.jpg, .png, ...) found under {path}")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path} does not exist")
    return files


def cmd_reconstruct(args) -> int:
    import torch

    from vaevq.data.transforms import prepare_image
    from vaevq.metrics import psnr
    from vaevq.training import load_model
    from vaevq.training.images import save_grid

    device = _device(args)
    model = load_model(args.checkpoint, args.which).to(device)
    resolution = model.config.data.resolution
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in _image_files(args.inputs):
        x = prepare_image(path, resolution).unsqueeze(0).to(device)
        rec = model.reconstruct(x)
        target = out_dir / f"{path.stem}.png"
        # original | reconstruction, side by side
        save_grid([torch.cat([x, rec], dim=-1)], target, scale=max(1, 256 // resolution))
        print(f"{path} -> {target} (PSNR {float(psnr(x, rec)[0]):.2f} dB)")
    return 0


def cmd_encode(args) -> int:
    import numpy as np
    import torch

    from vaevq.data.transforms import prepare_image
    from vaevq.training import load_model

    device = _device(args)
    model = load_model(args.checkpoint, args.which).to(device)
    resolution = model.config.data.resolution
    files = _image_files([args.images])
    if args.format == "llamagen":
        from vaevq.generation.codes import class_labels, encode_images, write_llamagen

        codes = encode_images(model, files, args.batch_size, device, flip=not args.no_flip)
        labels, classes = class_labels(files, args.images)
        codes_dir, labels_dir = write_llamagen(args.out, args.dataset, resolution, codes, labels)
        listing = Path(args.out) / f"{args.dataset}{resolution}_files.txt"
        listing.write_text("".join(f"{i}\t{label}\t{f}\n" for i, (f, label) in enumerate(zip(files, labels))))
        print(f"wrote {codes.shape[0]} codes files {codes_dir}/<i>.npy ({codes.shape[1]} x {codes.shape[2]} "
              f"int64 each) and labels {labels_dir}/<i>.npy ({len(classes)} classes); file order in {listing}")
        return 0
    tokens = []
    for i in range(0, len(files), args.batch_size):
        x = torch.stack([prepare_image(f, resolution) for f in files[i : i + args.batch_size]])
        tokens.append(model.encode(x.to(device)).cpu())
    array = torch.cat(tokens).numpy().astype(np.int64)  # (N, h, w)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, array)
    listing = out.with_name(out.stem + ".files.txt")
    listing.write_text("".join(f"{f}\n" for f in files))
    print(f"wrote {out}: {array.shape[0]} images x {array.shape[1]}x{array.shape[2]} tokens "
          f"(int64, codebook {model.config.model.codebook_size}); file order in {listing}")
    return 0


def cmd_data(args) -> int:
    from vaevq.config import load_config
    from vaevq.data.check import check_data
    from vaevq.fileio import atomic_write_text

    config = load_config(args.config, args.overrides)
    report = check_data(config, args.run, progress=True)
    print("\n".join(report.lines()))
    if args.json:
        atomic_write_text(args.json, json.dumps(report.to_dict(), indent=1) + "\n")
    if report.fatal:
        why = ("a split has no usable data" if any(s.items == 0 for s in report.splits)
               else "data.on_error=stop")
        print(f"vaevq data check: {len(report.problems)} problem(s); fatal: {why}", file=sys.stderr)
        return 1
    return 0


def cmd_presets(args) -> int:
    from importlib import resources

    from vaevq.config import preset_names

    for name in preset_names():
        text = (resources.files("vaevq") / "configs" / f"{name}.yaml").read_text()
        first = next((line[1:].strip() for line in text.splitlines() if line.startswith("#")), "")
        print(f"{name:<20} {first}")
    return 0


COMMANDS = {
    "train": cmd_train,
    "eval": cmd_eval,
    "sample": cmd_sample,
    "reconstruct": cmd_reconstruct,
    "encode": cmd_encode,
    "compare": cmd_compare,
    "sweep-codebook": cmd_sweep,
    "presets": cmd_presets,
    "data": cmd_data,
}

if __name__ == "__main__":
    raise SystemExit(main())
