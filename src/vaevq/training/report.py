"""Evaluation reports: ``report.md`` (with PNG files beside it) and a self-contained
``report.html`` (the same content, pictures embedded as base64 PNG)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import torch

from vaevq.fileio import atomic_write, atomic_write_text, read_jsonl
from vaevq.training.images import image_grid

ROWS = [("psnr", "PSNR (dB), quantized path", "{:.3f}"), ("ssim", "SSIM", "{:.4f}"),
        ("psnr_continuous", "PSNR (dB), continuous path", "{:.3f}"), ("lpips", "LPIPS", "{:.4f}"),
        ("rfid", "rFID (InceptionV3 pool3)", "{:.3f}"),
        ("fid_effnet", "fid-effnet (EfficientNet-Lite0; not comparable with published FID)", "{:.3f}"),
        ("quant_error_mean", "quantization error ||z - z_q||, mean", "{:.4f}"),
        ("quant_error_p50", "quantization error, median", "{:.4f}"),
        ("quant_error_p90", "quantization error, 90th percentile", "{:.4f}"),
        ("quant_error_p99", "quantization error, 99th percentile", "{:.4f}"),
        ("quant_error_rel", "quantization error relative to the latent's spread, E||z - z_q||^2 / E||z - E z||^2",
         "{:.4f}"),
        ("codebook_w2_to_prior", "codebook W2^2 to N(0, I) (DCR + d)", "{:.4f}"),
        ("utilization", "codebook utilization (codes of encode)", "{:.4f}"), ("used_codes", "used codes", "{:d}"),
        ("perplexity", "perplexity", "{:.2f}"), ("dead_codes", "dead codes", "{:d}"),
        ("utilization_sampled", "codebook utilization (codes of sampled z_c, training noise)", "{:.4f}"),
        ("used_codes_sampled", "used codes (sampled)", "{:d}"),
        ("perplexity_sampled", "perplexity (sampled)", "{:.2f}"),
        ("tokens", "tokens", "{:d}")]


def metric_rows(metrics: dict[str, Any], data_name: str, split: str, resolution: int,
                notes: dict[str, str] | None = None) -> list[tuple[str, str]]:
    rows = [("data", data_name), ("split", split),
            ("images", f"{metrics.get('images', 0)} at {resolution}x{resolution}")]
    for key, label, fmt in ROWS:
        if key == "lpips" and key in metrics:
            label = f"LPIPS ({metrics.get('lpips_net')})"
        if key == "tokens" and key in metrics and metrics.get("token_images", metrics.get("images")) != \
                metrics.get("images"):
            rows.append((label, f"{metrics[key]} (the token statistics: {metrics['token_images']} denser tiles "
                                "of the same held-out photos)"))
        elif key in metrics and metrics[key] is not None:
            rows.append((label, fmt.format(metrics[key])))
        elif notes and key in notes:
            rows.append((label, notes[key]))
    return rows


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def histogram_png(counts: torch.Tensor) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    freq = counts.double().sort(descending=True).values
    total = max(float(freq.sum()), 1.0)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(range(len(freq)), (freq / total).numpy(), width=1.0, color="#4c72b0")
    ax.set_yscale("log")
    ax.set_xlabel(f"codes sorted by frequency ({int((freq > 0).sum())} of {len(freq)} used)")
    ax.set_ylabel("fraction of tokens")
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data


def curves_png(log_path: Path) -> bytes | None:
    if not log_path.is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    records = read_jsonl(log_path)
    losses = [r for r in records if "loss/total" in r]
    evals = [r for r in records if "eval/utilization" in r]
    if not losses and not evals:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for key in sorted({k for r in losses for k in r if k.startswith("loss/")} - {"loss/g_weight"}):
        pts = [(r["step"], r[key]) for r in losses if key in r]
        axes[0].plot([p[0] for p in pts], [p[1] for p in pts], label=key[5:], linewidth=1)
    axes[0].set_xlabel("step")
    axes[0].set_title("training losses (weighted)")
    axes[0].legend(fontsize=6, ncol=2)
    if evals:
        axes[1].plot([r["step"] for r in evals], [r["eval/utilization"] for r in evals], marker="o",
                     label="utilization")
        axes[1].set_ylim(0, 1.02)
        axes[1].set_xlabel("step")
        axes[1].set_title("held-out codebook utilization")
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data


def grid_png(model, images: torch.Tensor) -> bytes:

    out = model.reconstruct_paths(images)
    rows = [images] + ([out.rec_c] if out.rec_c is not None else []) + [out.rec_q]
    grid = image_grid(rows, max(1, 96 // images.shape[-1]))
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    return buf.getvalue()


def write_report(out_dir: Path, title: str, rows: list[tuple[str, str]], pictures: dict[str, bytes | None],
                 captions: dict[str, str]) -> tuple[Path, Path]:
    """report.md (+ PNG files) and a self-contained report.html in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = [f"# {title}", "", "| metric | value |", "|---|---|"]
    md += [f"| {k} | {v} |" for k, v in rows]
    body = [f"<h1>{html.escape(title)}</h1>", "<table id='metrics'><tr><th>metric</th><th>value</th></tr>"]
    body += [f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in rows]
    body.append("</table>")
    for name, data in pictures.items():
        if data is None:
            continue
        file = f"{name}.png"
        atomic_write(out_dir / file, lambda tmp, d=data: Path(tmp).write_bytes(d))
        md += ["", f"**{captions[name]}**", "", f"![{name}]({file})"]
        b64 = base64.b64encode(data).decode()
        body.append(f"<h2>{html.escape(captions[name])}</h2>"
                    f"<img id='{name}' alt='{name}' src='data:image/png;base64,{b64}'>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #aaa;padding:4px 8px;text-align:left}img{max-width:100%}</style>"
            "</head><body>" + "\n".join(body) + "</body></html>\n")
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    atomic_write_text(md_path, "\n".join(md) + "\n")
    atomic_write_text(html_path, page)
    return md_path, html_path
