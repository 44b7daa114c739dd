import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from vaevq.cli.main import main

FAST = ["model.ch=16", "model.z_channels=32", "model.codebook_size=64", "model.latent_dim=8",
        "train.progress=false", "eval.max_images=16", "train.steps=2", "train.batch_size=4"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "tiny", *FAST, "--out", str(out)]) == 0
    return out


@pytest.fixture
def image_dir(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(skdata.astronaut()[:200, :260]).save(folder / "a.png")
    Image.fromarray(skdata.coffee()).save(folder / "b.jpg")
    return folder


def test_train_writes_a_run(run_dir):
    for name in ("config.yaml", "log.jsonl", "checkpoints/last.pt", "model/model.safetensors"):
        assert (run_dir / name).is_file(), name


def test_eval_prints_and_writes_metrics(run_dir, capsys):
    assert main(["eval", "--checkpoint", str(run_dir), "--max-images", "8"]) == 0
    printed = capsys.readouterr().out
    for word in ("PSNR", "SSIM", "utilization", "perplexity"):
        assert word in printed
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert metrics["images"] == 8 and 0 < metrics["utilization"] <= 1


def test_eval_on_a_folder(run_dir, image_dir, capsys):
    assert main(["eval", "--checkpoint", str(run_dir), "--data", str(image_dir)]) == 0
    assert json.loads((run_dir / "eval" / "metrics.json").read_text())["images"] == 2


def test_reconstruct_writes_side_by_side(run_dir, image_dir, tmp_path):
    out = tmp_path / "rec"
    assert main(["reconstruct", "--checkpoint", str(run_dir), "--out", str(out),
                 str(image_dir / "a.png"), str(image_dir)]) == 0
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["a.png", "b.png"]
    w, h = Image.open(out / "a.png").size
    assert w > 1.8 * h  # two images side by side


def test_encode_writes_tokens(run_dir, image_dir, tmp_path):
    out = tmp_path / "tok" / "tokens.npy"
    assert main(["encode", "--checkpoint", str(run_dir), "--out", str(out), str(image_dir)]) == 0
    tokens = np.load(out)
    assert tokens.shape == (2, 8, 8) and tokens.dtype == np.int64
    assert tokens.min() >= 0 and tokens.max() < 64
    assert len(out.with_name("tokens.files.txt").read_text().splitlines()) == 2


def test_existing_run_needs_resume(run_dir, capsys):
    assert main(["train", "tiny", *FAST, "--out", str(run_dir)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "tiny", *FAST, "train.steps=3", "--out", str(run_dir), "--resume"]) == 0


def test_clear_errors(tmp_path, capsys):
    assert main(["train", "tiny", "train.stepz=3", "--out", str(tmp_path / "x")]) == 2
    assert "train.stepz" in capsys.readouterr().err
    assert main(["train", "imagenet-f16", "--out", str(tmp_path / "y")]) == 2
    assert "data.root" in capsys.readouterr().err
    assert main(["train", "tiny", "data.root=/no/such/dir", "--out", str(tmp_path / "z")]) == 2
    assert "/no/such/dir" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_python_dash_m_is_the_same_cli():
    out = subprocess.run([sys.executable, "-m", "vaevq", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for command in ("train", "eval", "reconstruct", "encode"):
        assert command in out
    presets = subprocess.run([sys.executable, "-m", "vaevq", "presets"], capture_output=True,
                             text=True, check=True).stdout
    assert "tiny" in presets and "imagenet-f16" in presets
