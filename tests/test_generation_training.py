"""The autoregressive generator end to end: training through the shared loop, resume, sampling,
the CLI's sample / eval, and the generation metrics' use of reference statistics."""

import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image
from two_processes import one_and_two_processes

from vaevq.cli.main import main
from vaevq.config import ConfigError, load_config
from vaevq.generation import GPT, GPTTrainer, load_generator, make_trainer, sample_images
from vaevq.generation.evaluate import FeatureBank, FeatureNet, Reference, npz_reference, score
from vaevq.generation.sample import class_plan, decode_ids
from vaevq.generation.trainer import CodeDataset, build_gpt_optimizer
from vaevq.metrics import to_uint8
from vaevq.models import VAEVQ
from vaevq.training import Trainer
from vaevq.training.checkpoint import load_checkpoint

TOKENIZER = ["model.ch=16", "model.z_channels=32", "model.codebook_size=64", "model.latent_dim=8"]
GPT_FAST = ["generator.dim=32", "generator.n_layer=1", "generator.n_head=2", "generator.multiple_of=32",
            "train.batch_size=16", "train.progress=false", "train.log_every=1", "train.eval_every=0",
            "train.image_every=0", "train.checkpoint_every=2", "generator.grid_per_class=2",
            "generator.sample_batch=16"]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A tokenizer in the save_pretrained layout (random weights: the codes only need to exist)."""
    torch.manual_seed(0)
    model = VAEVQ(load_config("tiny", TOKENIZER))
    out = tmp_path_factory.mktemp("tok") / "model"
    model.save_pretrained(out)
    return out


CODES = {}  # one codes cache for the module: the tokenizer's codes are extracted once


def codes_dir(tmp_path) -> str:
    return CODES.setdefault("dir", str(tmp_path.parent / "codes-shared"))


def gpt_config(tokenizer_dir, tmp_path, steps, extra=()):
    return load_config("gpt-tiny", [f"generator.tokenizer={tokenizer_dir}", f"train.steps={steps}",
                                    f"generator.cache_dir={codes_dir(tmp_path)}", *GPT_FAST, *extra])


def test_make_trainer_picks_the_run_kind(tokenizer_dir, tmp_path):
    trainer = make_trainer(gpt_config(tokenizer_dir, tmp_path, 2), tmp_path / "g")
    assert isinstance(trainer, GPTTrainer)
    # the run records the tokenizer's own model settings and its resolved path
    assert trainer.config.model.codebook_size == 64 and trainer.config.generator.tokenizer == str(tokenizer_dir)
    assert trainer.gpt_config.vocab_size == 64 and trainer.gpt_config.grid == (8, 8)
    # codes: every training tile and its flip, labels = the 8 source photos
    assert trainer.train_codes.shape == (len(trainer.train_images), 2, 64)
    assert sorted(set(trainer.train_labels.tolist())) == list(range(8))
    tok = VAEVQ.from_pretrained(tokenizer_dir).eval()
    x = torch.stack([trainer.train_images[i] for i in (0, 100)])
    assert torch.equal(torch.from_numpy(np.asarray(trainer.train_codes[[0, 100], 0])), tok.encode(x).flatten(1))
    assert torch.equal(torch.from_numpy(np.asarray(trainer.train_codes[[0, 100], 1])),
                       tok.encode(x.flip(-1)).flatten(1))
    assert isinstance(make_trainer(load_config("tiny", TOKENIZER + ["train.steps=1"]), tmp_path / "t"), Trainer)


def test_missing_tokenizer_and_class_count_are_named(tokenizer_dir, tmp_path):
    with pytest.raises(ConfigError, match="generator.tokenizer"):
        GPTTrainer(load_config("gpt-tiny", GPT_FAST), tmp_path / "a")
    with pytest.raises(ConfigError, match="generator.num_classes"):
        GPTTrainer(gpt_config(tokenizer_dir, tmp_path, 2, ["generator.num_classes=3"]), tmp_path / "b")


def test_optimizer_is_adamw_with_decay_on_matrices_only(tokenizer_dir):
    config = load_config("gpt-tiny", GPT_FAST)
    gpt = GPT.from_preset("gpt-tiny", GPT_FAST)
    opt = build_gpt_optimizer(gpt, config, 1e-3)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.95)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.05 for p in g["params"]}
    for name, p in gpt.named_parameters():
        assert (id(p) in decayed) == (p.dim() >= 2), name
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(gpt.parameters()))


def test_code_dataset_draws_both_views():
    codes = np.stack([np.zeros((5, 4)), np.ones((5, 4))], axis=1).astype(np.int64)  # (5, 2, 4)
    ds = CodeDataset(codes, np.arange(5))
    views = {int(ds[(3, seed)][0][0]) for seed in range(40)}
    assert views == {0, 1}
    assert ds[(2, 7)][1] == 2 and int(ds[4][0][0]) == 0  # no seed: the original view


def test_training_lowers_the_loss_resumes_exactly_and_samples_decode(tokenizer_dir, tmp_path):
    # 1. a short training lowers the cross-entropy from ln K (uniform) and beats it on held-out codes
    trainer = GPTTrainer(gpt_config(tokenizer_dir, tmp_path, 30, ["train.lr=3e-3"]), tmp_path / "run")
    metrics = trainer.train()
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    ce = [r["loss/ce"] for r in log if "loss/ce" in r]
    assert abs(ce[0] - math.log(64)) < 0.3  # the initial model predicts nearly uniformly
    assert np.mean(ce[-5:]) < ce[0] - 0.5
    assert metrics["val_loss"] < math.log(64) - 0.3
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()

    # 2. resume: 2 steps, then 2 more = 4 straight, bit for bit
    straight = GPTTrainer(gpt_config(tokenizer_dir, tmp_path, 4), tmp_path / "s")
    straight.train()
    first = GPTTrainer(gpt_config(tokenizer_dir, tmp_path, 2), tmp_path / "r")
    first.train()
    resumed = GPTTrainer(gpt_config(tokenizer_dir, tmp_path, 4), tmp_path / "r", resume=True)
    assert resumed.step == 2
    resumed.train()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    # 3. samples of the run decode through the tokenizer; seeded sampling repeats
    run = load_generator(tmp_path / "run")
    assert run.step == 30 and run.config.generator.num_classes == 8
    labels = class_plan(6, 8, [0, 3])
    assert labels.tolist() == [0, 3, 0, 3, 0, 3]
    batches = list(sample_images(run.model, run.tokenizer, 6, labels, cfg_scale=2.0, seed=1, batch_size=4))
    images = torch.cat([x for x, _, _ in batches])
    ids = torch.cat([t for _, t, _ in batches])
    assert images.shape == (6, 3, 32, 32) and torch.isfinite(images).all()
    assert torch.equal(images, decode_ids(run.tokenizer, ids, (8, 8)))
    again = torch.cat([t for _, t, _ in sample_images(run.model, run.tokenizer, 6, labels, cfg_scale=2.0, seed=1,
                                                       batch_size=4)])
    assert torch.equal(ids, again)


def test_cli_sample_and_eval(tokenizer_dir, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "gpt-tiny", f"generator.tokenizer={tokenizer_dir}", "train.steps=4",
                 f"generator.cache_dir={codes_dir(tmp_path)}", *GPT_FAST, "--out", str(run)]) == 0
    assert load_checkpoint(run / "checkpoints" / "last.pt")["config"]["generator"]["kind"] == "ar"
    out = tmp_path / "samples"
    assert main(["sample", "--checkpoint", str(run), "--num", "5", "--out", str(out), "--classes", "1,2",
                 "--cfg", "1.5", "--seed", "3", "--npz"]) == 0
    files = sorted(out.glob("0*.png"))
    assert [f.name for f in files] == ["000000_class1.png", "000001_class2.png", "000002_class1.png",
                                       "000003_class2.png", "000004_class1.png"]
    meta = json.loads((out / "samples.json").read_text())
    assert meta["cfg_scale"] == 1.5 and meta["seed"] == 3 and meta["classes"] == [1, 2]
    # the PNGs are the tokenizer's decoding of the written ids
    ids = torch.from_numpy(np.load(out / "ids.npy"))
    assert ids.shape == (5, 8, 8)
    tok = VAEVQ.from_pretrained(tokenizer_dir).eval()
    with torch.no_grad():
        expected = to_uint8(tok.decode(ids).clamp(-1, 1)).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(np.asarray(Image.open(files[2])), expected[2])
    assert np.array_equal(np.load(out / "samples.npz")["arr_0"], expected)
    assert main(["sample", "--checkpoint", str(run), "--num", "2", "--out", str(out), "--classes", "9"]) == 2

    # eval: the generation metrics with both baselines, against a folder of reference images
    ref = tmp_path / "ref"
    ref.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(ref / f"{i}.png")
    assert main(["eval", "--checkpoint", str(run), "--num", "12", "--ref", str(ref), "--batch-size", "12"]) == 0
    result = json.loads((run / "eval" / "metrics.json").read_text())
    assert result["samples"] == 12 and result["kind"] == "ar" and "folder" in result["reference"]
    for block in (result, result["baselines"]["unigram"], result["baselines"]["reconstruction"]):
        assert block["fid_effnet"] > 0 and 1.0 <= block["is_effnet"] <= 1000
        assert 0.0 <= block["precision_effnet"] <= 1.0 and 0.0 <= block["recall_effnet"] <= 1.0
    assert "gfid" in result["unavailable"]  # no InceptionV3 weights here: said, never invented
    assert (run / "eval" / "report.html").is_file() and (run / "eval" / "samples.png").is_file()


class _Fixed(torch.nn.Module):
    """A stand-in network: the image mean per channel as features, 5 logits."""

    def pool3(self, x):
        return x.mean(dim=(2, 3)) * 10

    def forward(self, x):
        return self.pool3(x)


def test_npz_reference_statistics_are_used_exactly(tmp_path):
    net = FeatureNet("inception-v3-fid", _Fixed(), 8, "", "cpu")
    net.module.fc = torch.nn.Linear(3, 5)
    torch.manual_seed(0)
    fake = FeatureBank()
    fake.update([net], torch.rand(40, 3, 8, 8) * 2 - 1)
    mu = np.array([0.5, -0.2, 0.1])
    a = np.random.default_rng(1).normal(size=(3, 3))
    sigma = a @ a.T + np.eye(3)
    np.savez(tmp_path / "ref.npz", mu=mu, sigma=sigma)
    reference = npz_reference(tmp_path / "ref.npz", [net], 16, 100)
    assert reference.bank is None and np.array_equal(reference.inception_stats[0], mu)
    got = score(fake, reference, [net])
    feats = fake.get("inception-v3-fid")[0].numpy()
    m, s = feats.mean(0), np.cov(feats, rowvar=False)
    root = scipy.linalg.sqrtm(s @ sigma).real
    expected = ((m - mu) ** 2).sum() + np.trace(s) + np.trace(sigma) - 2 * np.trace(root)
    assert got["gfid"] == pytest.approx(expected, rel=1e-6)
    assert "inception_score" in got and "precision" not in got  # no reference images: no precision/recall
    # images in arr_0 give precision/recall too
    images = (np.random.default_rng(2).random((20, 8, 8, 3)) * 255).astype(np.uint8)
    np.savez(tmp_path / "imgs.npz", arr_0=images)
    ref2 = npz_reference(tmp_path / "imgs.npz", [net], 8, 100)
    assert ref2.bank.count == 20 and "precision" in score(fake, ref2, [net])
    with pytest.raises(FileNotFoundError):
        npz_reference(tmp_path / "missing.npz", [net], 8, 100)
    assert isinstance(Reference("x"), Reference)


@pytest.mark.slow
def test_two_processes_equal_one_with_the_same_global_batch(tokenizer_dir, tmp_path):
    # no dropout: its masks are drawn per rank, so only then is the step a function of the global batch
    common = [f"generator.tokenizer={tokenizer_dir}", f"generator.cache_dir={codes_dir(tmp_path)}", *GPT_FAST,
              "train.steps=2", "generator.token_dropout=0", "generator.resid_dropout=0",
              "generator.class_dropout=0"]
    one, two = one_and_two_processes(GPTTrainer, "gpt-tiny", common, tmp_path)
    # the held-out loss is computed over both ranks' shards: the same number
    assert two["val_loss"] == pytest.approx(one["val_loss"], rel=1e-5)
    assert two["val_tokens"] == one["val_tokens"]


def test_compare_skips_runs_recorded_before_new_config_keys():
    from vaevq.compare import same_settings
    from vaevq.config import Config

    now = Config().to_dict()
    old = {k: v for k, v in now.items() if k != "generator"}  # recorded before the generator section
    assert same_settings(old, now)
    changed = load_config("tiny").to_dict()
    assert not same_settings(old, changed)  # a recorded key differs
    new_key = Config().to_dict()
    new_key["generator"]["kind"] = "ar"  # an added key away from its default
    assert not same_settings(old, new_key)


@pytest.mark.slow
def test_compare_with_generation_writes_table_2(tmp_path, monkeypatch):
    import vaevq.generation.evaluate as ev

    monkeypatch.setattr(ev, "MAX_REFERENCE", 24)
    out = tmp_path / "table2"
    args = ["compare", "m0", "vaevq", *TOKENIZER, "train.progress=false", "eval.max_images=16",
            "eval.fid_effnet=false", "eval.lpips_net=null", "data.usage_tokens=0", "--steps", "2",
            "--out", str(out), "--generation", "ar,ldm", "--generator-steps", "3", "--generation-samples", "12"]
    assert main(args) == 0
    text = (out / "results.md").read_text()
    assert "## Generation (ar)" in text and "| m0 | gpt-tiny | 1 | 12 |" in text and "| vaevq | gpt-tiny |" in text
    assert "## Generation (ldm)" in text and "| m0 | ldm-tiny | 1 | 12 |" in text and "Gaussian-latent" in text
    assert (out / "generation-ar.png").is_file() and (out / "generation-ldm.png").is_file()
    ldm = json.loads((out / "vaevq-ldm" / "compare.json").read_text())
    assert ldm["generation"]["kind"] == "ldm"
    assert set(ldm["generation"]["baselines"]) == {"noise", "reconstruction"}
    marker = json.loads((out / "vaevq-ar" / "compare.json").read_text())
    assert marker["generation"]["samples"] == 12 and marker["steps"] == 3
    assert marker["config"]["generator"]["tokenizer"] == str((out / "vaevq").resolve())
    results = json.loads((out / "results.json").read_text())
    assert [r["tokenizer"] for r in results["generation-ar"]] == ["m0", "vaevq"]
    assert [r["tokenizer"] for r in results["generation-ldm"]] == ["m0", "vaevq"]



def test_compare_checks_generation_before_training(tmp_path):
    from vaevq.compare import compare

    with pytest.raises(ValueError, match="--generation xyz"):
        compare(["m0"], tmp_path / "x", generation=["xyz"])
    with pytest.raises(ValueError, match="gpt-tiny is a generator.kind ar preset"):
        compare(["m0"], tmp_path / "x", generation=["ldm"], generator="gpt-tiny")
    with pytest.raises(ValueError, match="single --generation"):
        compare(["m0"], tmp_path / "x", generation=["ar", "ldm"], generator="gpt-tiny")
    assert not (tmp_path / "x" / "m0").exists()



def test_brain_labels_are_the_contrast_in_separate_mode(tmp_path):
    from vaevq.data.brats import PreparedSubject, SliceDataset
    from vaevq.generation import dataset_labels

    subjects = [PreparedSubject(f"S{i}", tmp_path / f"S{i}.npy", [10, 11, 12], ("t1n", "t2f")) for i in range(2)]
    labels, classes = dataset_labels(SliceDataset(subjects, contrast_mode="separate"))
    assert classes == ["t1n", "t2f"]
    assert labels.tolist() == [0, 1] * 6  # each slice's contrasts in turn, subject by subject
    labels, classes = dataset_labels(SliceDataset(subjects, contrast_mode="channels"))
    assert classes == [""] and labels.tolist() == [0] * 6  # channels: one image per slice, no label
