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
    for word in ("PSNR", "SSIM", "LPIPS (vgg-shift-tolerant)", "utilization", "perplexity"):
        assert word in printed
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert metrics["images"] == 8 and 0 < metrics["utilization"] <= 1
    assert metrics["lpips_net"] == "vgg-shift-tolerant" and metrics["lpips"] > 0


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


def test_clear_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VAEVQ_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    assert main(["train", "tiny", "train.stepz=3", "--out", str(tmp_path / "x")]) == 2
    assert "train.stepz" in capsys.readouterr().err
    assert main(["train", "imagenet-f16", "--out", str(tmp_path / "y")]) == 2
    assert "data.root" in capsys.readouterr().err
    assert main(["train", "tiny", "data.root=/no/such/dir", "--out", str(tmp_path / "z")]) == 2
    assert "/no/such/dir" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err
    # a missing perceptual network stops before training, naming every place tried
    assert main(["train", "tiny", *FAST, "loss.perceptual_weight=1", "loss.perceptual_net=vgg",
                 "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "VAEVQ_VGG16_WEIGHTS" in err and "hub cache" in err
    assert not (tmp_path / "p" / "checkpoints").exists()


def test_python_dash_m_is_the_same_cli():
    out = subprocess.run([sys.executable, "-m", "vaevq", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for command in ("train", "eval", "reconstruct", "encode"):
        assert command in out
    presets = subprocess.run([sys.executable, "-m", "vaevq", "presets"], capture_output=True,
                             text=True, check=True).stdout
    assert "tiny" in presets and "imagenet-f16" in presets and "small" in presets


@pytest.mark.slow
def test_compare_writes_a_report_and_skips_finished_runs(tmp_path, capsys):
    args = ["compare", "m0", "vaevq", "fsq", "model.ch=16", "model.z_channels=32", "eval.max_images=16",
            "train.progress=false", "model.codebook_size=256", "--steps", "3", "--eval-points", "3",
            "--out", str(tmp_path / "cmp")]
    assert main(args) == 0
    out = tmp_path / "cmp"
    for name in ("results.md", "results.json", "bars.png", "utilization.png", "reconstructions.png"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())["results"]
    assert [r["name"] for r in results] == ["m0", "vaevq", "fsq"]
    assert [r["codebook_size"] for r in results] == [256, 256, 240]  # FSQ levels for 256: [8, 6, 5]
    assert all(r["steps"] == 3 and r["train_s"] > 0 for r in results)
    table = (out / "results.md").read_text()
    for word in ("PSNR", "SSIM", "LPIPS", "utilization", "perplexity", "dead codes", "train time"):
        assert word in table
    curve = [json.loads(line) for line in (out / "vaevq" / "log.jsonl").read_text().splitlines()
             if "eval/utilization" in line]
    assert [c["step"] for c in curve] == [1, 2, 3]
    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().out.count("finished earlier, skipped") == 3


@pytest.mark.slow
def test_compare_with_seeds_reports_mean_and_std(tmp_path):
    out = tmp_path / "cmp"
    args = ["compare", "m0", "fsq", "model.ch=16", "model.z_channels=32", "eval.max_images=8",
            "eval.fid_effnet=false", "eval.lpips_net=null", "train.progress=false", "model.codebook_size=256",
            "--steps", "2", "--eval-points", "1", "--seeds", "0", "1", "--one-seed", "fsq", "--out", str(out)]
    assert main(args) == 0
    assert (out / "m0" / "seed0" / "compare.json").is_file() and (out / "m0" / "seed1" / "compare.json").is_file()
    assert not (out / "fsq" / "seed1").exists()
    data = json.loads((out / "results.json").read_text())
    m0 = data["results"][0]
    assert m0["seeds"] == [0, 1] and m0["stats"]["psnr"]["n"] == 2
    psnrs = [r["metrics"]["psnr"] for r in data["runs"] if r["name"] == "m0"]
    assert m0["stats"]["psnr"]["mean"] == pytest.approx(sum(psnrs) / 2)
    assert m0["stats"]["psnr"]["std"] == pytest.approx(abs(psnrs[0] - psnrs[1]) / 2 ** 0.5)
    assert "--seeds 0 1 --one-seed fsq" in data["command"] and "±" in (out / "results.md").read_text()
    assert main(["compare", "m0", "--out", str(tmp_path / "x"), "--one-seed", "m0"]) == 2  # needs --seeds


@pytest.mark.slow
def test_sweep_codebook_plots_metrics_against_k(tmp_path):
    out = tmp_path / "sweep"
    assert main(["sweep-codebook", "tiny", "model.ch=16", "model.z_channels=32", "eval.max_images=16",
                 "train.progress=false", "--sizes", "64", "128", "--steps", "2", "--eval-points", "1",
                 "--out", str(out)]) == 0
    data = json.loads((out / "sweep.json").read_text())["results"]
    assert [r["codebook_size"] for r in data] == [64, 128]
    assert all("fid_effnet" in r["metrics"] for r in data)
    assert (out / "sweep.png").is_file() and "fid-effnet" in (out / "sweep.md").read_text()


def test_encode_in_llamagen_layout_reads_back_and_decodes(run_dir, tmp_path):
    import torch

    from vaevq.data.transforms import prepare_image
    from vaevq.training import load_model

    root = tmp_path / "classes"
    images = (("n01", skdata.astronaut()[:200, :260]), ("n02", skdata.coffee()), ("n02", skdata.chelsea()))
    for cls, image in images:
        (root / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / cls / f"{len(list((root / cls).iterdir()))}.png")
    out = tmp_path / "codes"
    assert main(["encode", "--checkpoint", str(run_dir), "--out", str(out), "--format", "llamagen",
                 "--dataset", "toy", str(root)]) == 0
    files = sorted((root / "n01").glob("*.png")) + sorted((root / "n02").glob("*.png"))
    model = load_model(run_dir)
    for i, f in enumerate(files):
        codes = np.load(out / "toy32_codes" / f"{i}.npy")
        label = np.load(out / "toy32_labels" / f"{i}.npy")
        assert codes.shape == (1, 2, 64) and codes.dtype == np.int64  # LlamaGen: (1, num_aug, h*w)
        assert label.shape == (1,) and label.dtype == np.int64 and label[0] == (0 if "n01" in str(f) else 1)
        x = prepare_image(f, 32)[None]
        ids = torch.from_numpy(codes[0, 0]).view(1, 8, 8)
        assert torch.equal(ids, model.encode(x))
        assert torch.equal(torch.from_numpy(codes[0, 1]).view(1, 8, 8), model.encode(x.flip(-1)))
        assert torch.equal(model.decode(ids), model.reconstruct(x))  # a LlamaGen sample decodes the same way
