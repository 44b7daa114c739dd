"""vaevq eval reports: report.md, a self-contained report.html, checked in headless Chromium."""

import base64
import json
import re
import shutil
import subprocess

import pytest

from vaevq.cli.main import main

FAST = ["model.ch=16", "model.z_channels=32", "model.codebook_size=64", "model.latent_dim=8",
        "train.progress=false", "eval.max_images=16", "train.steps=3", "train.batch_size=4",
        "train.eval_every=1"]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    run = tmp_path_factory.mktemp("report") / "run"
    assert main(["train", "tiny", *FAST, "--out", str(run)]) == 0
    assert main(["eval", "--checkpoint", str(run), "--max-images", "16"]) == 0
    return run / "eval"


def test_report_files_and_metrics(evaluated):
    metrics = json.loads((evaluated / "metrics.json").read_text())
    assert metrics["images"] == 16 and metrics["split"] == "held out"
    assert "fid_effnet" in metrics and metrics["fid_effnet"] > 0
    assert "rfid" not in metrics and "pt_inception-2015-12-05-6726825d.pth" in metrics["rfid_unavailable"]
    md = (evaluated / "report.md").read_text()
    for text in ("| images | 16 at 32x32 |", "fid-effnet", "rFID", "unavailable", "utilization"):
        assert text in md
    for png in ("reconstructions.png", "code_histogram.png", "training_curves.png"):
        assert (evaluated / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (evaluated / "report.html").read_text()
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == 3 and all(base64.b64decode(b)[:4] == b"\x89PNG" for b in images)
    assert "src='http" not in page and "<table id='metrics'>" in page  # self-contained


def test_report_renders_in_headless_chromium(evaluated, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium); the HTML was checked "
                    "structurally in test_report_files_and_metrics")
    page = evaluated / "report.html"
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert "<table id=\"metrics\">" in dom and dom.count("<img") == 3
    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1200,1600", page.as_uri()], capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000


def test_codebook_statistics_by_hand():
    import torch

    from vaevq.training.evaluate import codebook_statistics

    class Q:
        class codebook:  # noqa: N801
            @staticmethod
            def vectors():
                return torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])

    class M:
        quantizer = Q

    stats = codebook_statistics(M, [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])])
    assert stats["quant_error_mean"] == 2.5 and stats["quant_error_p50"] == 2.5
    # mean 0, unbiased covariance diag(2/3, 8/3): W2^2 to N(0, I) = sum (sqrt(l) - 1)^2
    expected = (2 / 3) ** 0.5 - 1
    expected = expected**2 + ((8 / 3) ** 0.5 - 1) ** 2
    assert abs(stats["codebook_w2_to_prior"] - expected) < 1e-6
