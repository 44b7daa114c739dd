"""Brain MRI: the BraTS reader on real brain data (nilearn's MNI152 template written as BraTS
subjects), orientation, normalization, slice selection, split by subject, cache, bad input."""

import gzip
import json
import os
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from vaevq.cli.main import main
from vaevq.config import ConfigError, load_config
from vaevq.data import brain as brain_module
from vaevq.data import brats
from vaevq.data.brain import write_synthetic_brats
from vaevq.data.brats import (
    DataError,
    SliceDataset,
    SliceSettings,
    Subject,
    find_subjects,
    prepare_subject,
    prepare_subjects,
    split_subjects,
)
from vaevq.data.check import check_data
from vaevq.data.datasets import build_datasets, build_eval_dataset

CONTRASTS = ("t1n", "t1c", "t2w", "t2f")


@pytest.fixture(scope="module")
def brats_root(tmp_path_factory):
    """Seven synthetic subjects from the real MNI152 T1 and tissue maps (3 mm for speed)."""
    root = tmp_path_factory.mktemp("brats")
    write_synthetic_brats(root, 7, seed=0, step=3)
    return root


def _write(path, data, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), str(path))


def _settings(**kw):
    base = dict(contrasts=("t1n",), resolution=32, min_brain_fraction=0.05, clip_percentiles=(0.5, 99.5))
    base.update(kw)
    return SliceSettings(**base)


def _overrides(root, cache, *extra):
    return [f"data.root={root}", f"data.cache_dir={cache}", "data.resolution=32", "train.progress=false",
            *extra]


# ---------------------------------------------------------------- the built-in real brain


def test_mni152_ships_in_nilearn_and_is_a_skull_stripped_t1():
    image = nib.load(str(brain_module.mni152_path("t1")))
    data = np.asarray(image.dataobj)
    assert image.shape == (197, 233, 189)
    assert np.allclose(image.header.get_zooms()[:3], 1.0)
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
    brain = data > 0
    assert 0.1 < brain.mean() < 0.4  # skull-stripped: background is exactly 0
    # white matter brighter than grey matter on T1 (tissue maps from the same package)
    gm = np.asarray(nib.load(str(brain_module.mni152_path("gm"))).dataobj)
    wm = np.asarray(nib.load(str(brain_module.mni152_path("wm"))).dataobj)
    assert data[wm > 0.9 * wm.max()].mean() > data[gm > 0.9 * gm.max()].mean()


def test_synthetic_subjects_are_brats_layout_with_varied_orientation(brats_root):
    subjects = find_subjects(brats_root, CONTRASTS)
    assert [s.name for s in subjects] == [f"BraTS-MNI-{i:05d}-000" for i in range(7)]
    codes = set()
    for s in subjects:
        for c in CONTRASTS + ("seg",):
            assert (s.folder / f"{s.name}-{c}.nii.gz").is_file()
        codes.add(nib.aff2axcodes(nib.load(str(s.files["t1n"])).affine))
        assert nib.load(str(s.files["t1n"])).get_data_dtype() == np.int16
    assert len(codes) == 4  # RAS, LAS, LPS, PSR on disk


# ---------------------------------------------------------------- geometry and intensities


def _marker_volume():
    """RAS volume 20 x 30 x 10: brain box with a gradient; a bright marker at the anterior-left
    corner of the slices (small x = left, large y = anterior)."""
    vol = np.zeros((20, 30, 10), dtype=np.float32)
    vol[2:18, 3:27, 2:8] = np.linspace(10, 20, 16)[:, None, None]
    vol[2:5, 23:27, 2:8] = 100.0
    return vol


@pytest.mark.parametrize("axcodes", ["RAS", "LPS", "PSR", "ILA"])
def test_axial_slices_are_the_same_for_every_orientation_on_disk(tmp_path, axcodes):
    vol = _marker_volume()
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    data, out_affine = brain_module._reorient(vol, affine, axcodes)
    assert nib.aff2axcodes(out_affine) == tuple(axcodes)
    _write(tmp_path / "s" / "s-t1n.nii.gz", data, out_affine)
    subject = Subject("s", tmp_path / "s", {"t1n": tmp_path / "s" / "s-t1n.nii.gz"})
    slices, kept = brats.slice_subject(subject, _settings(resolution=30, clip_percentiles=(0.0, 100.0)))
    assert kept == [2, 3, 4, 5, 6, 7]  # axial = the third RAS axis; empty slices dropped
    # hand computation: anterior up (row 0 = y 29), subject's left on the image's left (column = x),
    # the 20-wide x axis padded by 5 on each side of the 30 x 30 square
    expected = np.full((30, 30), -1.0, dtype=np.float32)
    for y in range(30):
        for x in range(20):
            v = vol[x, y, 4]
            if v:
                expected[29 - y, 5 + x] = (v - 10.0) / 90.0 * 2 - 1
    np.testing.assert_allclose(slices[2, 0], expected, atol=1e-6)
    assert slices[2, 0, 29 - 25, 5 + 3] == pytest.approx(1.0)  # the marker: top left


def test_normalization_clips_to_brain_percentiles(tmp_path):
    rng = np.random.default_rng(0)
    vol = np.zeros((16, 16, 8), dtype=np.float32)
    vol[2:14, 2:14, 1:7] = rng.gamma(2.0, 50.0, size=(12, 12, 6)) + 1.0
    _write(tmp_path / "s" / "s-t1n.nii.gz", vol)
    subject = Subject("s", tmp_path / "s", {"t1n": tmp_path / "s" / "s-t1n.nii.gz"})
    slices, kept = brats.slice_subject(subject, _settings(resolution=16, clip_percentiles=(2.0, 98.0)))
    brain = vol[vol != 0]
    lo, hi = np.percentile(brain, 2.0), np.percentile(brain, 98.0)  # numpy, on brain voxels only
    k = kept.index(3)
    plane = np.rot90(vol[:, :, 3])
    expected = np.where(plane != 0, np.clip((plane - lo) / (hi - lo), 0, 1) * 2 - 1, -1.0)
    np.testing.assert_allclose(slices[k, 0], expected, atol=1e-5)
    assert slices.min() == -1.0 and slices.max() == 1.0


def test_brain_fraction_threshold_and_resize_keeps_aspect(tmp_path):
    vol = np.zeros((40, 20, 6), dtype=np.float32)
    vol[:, :, 1] = 5.0
    vol[:10, :, 2] = 7.0  # 25% brain
    vol[:2, :, 3] = 9.0  # 5% brain
    vol[:1, :1, 4] = 11.0  # 0.125%
    vol[:, :, 1] += np.arange(40)[:, None]
    _write(tmp_path / "s" / "s-t1n.nii.gz", vol)
    subject = Subject("s", tmp_path / "s", {"t1n": tmp_path / "s" / "s-t1n.nii.gz"})
    _, kept = brats.slice_subject(subject, _settings(min_brain_fraction=0.2))
    assert kept == [1, 2]
    _, kept = brats.slice_subject(subject, _settings(min_brain_fraction=0.05))
    assert kept == [1, 2, 3]
    # 20 (rows) x 40 (columns) padded to 40 x 40, then 32 x 32: rows 0-7 and 24-31 are background
    slices, _ = brats.slice_subject(subject, _settings(resolution=32, min_brain_fraction=0.2))
    full = slices[0, 0]
    np.testing.assert_allclose(full[:7], -1.0, atol=1e-5)
    np.testing.assert_allclose(full[25:], -1.0, atol=1e-5)
    assert np.all(full[9:23] > -0.99)
    # left-right gradient preserved: columns increase with x
    assert np.all(np.diff(full[16, 2:30]) > 0)


# ---------------------------------------------------------------- names, split, cache


def test_brats2021_names_are_found(tmp_path):
    vol = _marker_volume()
    for suffix in ("t1", "t1ce", "t2", "flair"):
        _write(tmp_path / "BraTS2021_00001" / f"BraTS2021_00001_{suffix}.nii.gz", vol)
    (subject,) = find_subjects(tmp_path, CONTRASTS)
    assert {c: p.name for c, p in subject.files.items()} == {
        "t1n": "BraTS2021_00001_t1.nii.gz", "t1c": "BraTS2021_00001_t1ce.nii.gz",
        "t2w": "BraTS2021_00001_t2.nii.gz", "t2f": "BraTS2021_00001_flair.nii.gz"}


def test_split_is_by_subject_deterministic_and_disjoint():
    names = [f"BraTS-GLI-{i:05d}-000" for i in range(50)]
    train, held = split_subjects(names, 0.2, seed=0)
    assert len(held) == 10 and len(train) == 40
    assert not set(train) & set(held) and set(train) | set(held) == set(names)
    assert (train, held) == split_subjects(list(reversed(names)), 0.2, seed=0)
    assert held != split_subjects(names, 0.2, seed=1)[1]
    with pytest.raises(ConfigError, match="at least 2 subjects"):
        split_subjects(names[:1], 0.2, 0)


def test_no_subject_in_both_splits_and_eval_uses_the_runs_split(brats_root, tmp_path):
    config = load_config("brats-f16", _overrides(brats_root, tmp_path / "cache", "data.contrasts=[t1n,t2f]"))
    train, held = build_datasets(config, tmp_path / "run")
    train_subjects = {s.name for s in train.subjects}
    eval_subjects = {s.name for s in held.subjects}
    assert len(train_subjects) == 6 and len(eval_subjects) == 1
    assert not train_subjects & eval_subjects
    assert not {n.split("/")[0] for n in train.names} & {n.split("/")[0] for n in held.names}
    # separate mode (the preset): every contrast slice is a 3-channel grey image
    assert len(train) == 2 * sum(len(s.slices) for s in train.subjects)
    item = train[0]
    assert item.shape == (3, 32, 32) and torch.equal(item[0], item[1])
    # a split file in the run directory decides the split, also for evaluation
    run = tmp_path / "run"
    run.mkdir()
    chosen = sorted(train_subjects)[:1]
    (run / "split.json").write_text(json.dumps({"train": sorted(train_subjects)[1:] + list(eval_subjects),
                                                "eval": chosen}))
    assert {s.name for s in build_eval_dataset(config, None, run).subjects} == set(chosen)
    (run / "split.json").write_text(json.dumps({"train": chosen, "eval": chosen}))
    with pytest.raises(DataError, match="both train and eval"):
        build_datasets(config, run)


def test_contrasts_as_channels(brats_root, tmp_path):
    four = ["data.contrasts=[t1n,t1c,t2w,t2f]", "data.contrast_mode=channels"]
    with pytest.raises(ConfigError, match="loss.perceptual_weight=0 eval.lpips_net=null eval.fid_effnet=false"):
        load_config("brats-f16", _overrides(brats_root, tmp_path, *four))
    rgb_off = ["loss.perceptual_weight=0", "eval.lpips_net=null", "eval.fid_effnet=false", "eval.rfid=false"]
    config = load_config("brats-f16", _overrides(brats_root, tmp_path, *four, *rgb_off))
    assert config.model.in_channels == 4
    train, _ = build_datasets(config)
    assert train[0].shape == (4, 32, 32)
    assert len(train) == sum(len(s.slices) for s in train.subjects)


def test_cache_is_reused_and_rebuilt_when_a_source_or_setting_changes(brats_root, tmp_path, monkeypatch):
    (subject,) = [s for s in find_subjects(brats_root, ("t1n",)) if s.name.endswith("00001-000")]
    cache = tmp_path / "cache"
    first, problems = prepare_subject(subject, _settings(), cache)
    assert not problems and first.array_path.is_file()
    array = np.load(first.array_path, mmap_mode="r")
    assert isinstance(array, np.memmap) and array.dtype == np.float16 and array.shape[1:] == (1, 32, 32)

    def no_reading(path):
        raise AssertionError(f"read {path} although it is cached")

    monkeypatch.setattr(brats, "load_ras", no_reading)
    again, _ = prepare_subject(subject, _settings(), cache)
    assert again.array_path == first.array_path
    monkeypatch.undo()
    # a changed setting -> a new entry
    other, _ = prepare_subject(subject, _settings(min_brain_fraction=0.3), cache)
    assert other.array_path != first.array_path and len(other.slices) < len(first.slices)
    # a changed source file (new content, new time) -> a new entry
    copy_root = tmp_path / "copy"
    shutil.copytree(subject.folder, copy_root / subject.name)
    moved = find_subjects(copy_root, ("t1n",))[0]
    before, _ = prepare_subject(moved, _settings(), cache)
    image = nib.load(str(moved.files["t1n"]))
    data = np.asarray(image.dataobj).copy()
    data[data > 0] += 7
    nib.save(nib.Nifti1Image(data, image.affine), str(moved.files["t1n"]))
    os.utime(moved.files["t1n"], ns=(before_ns := os.stat(moved.files["t1n"]).st_mtime_ns + 10**9, before_ns))
    after, _ = prepare_subject(moved, _settings(), cache)
    assert after.array_path != before.array_path


# ---------------------------------------------------------------- bad input


@pytest.fixture
def bad_root(brats_root, tmp_path):
    """Copies of the synthetic subjects, four of them broken in different ways."""
    root = tmp_path / "bad"
    shutil.copytree(brats_root, root)
    names = sorted(p.name for p in root.iterdir())
    missing = root / names[0] / f"{names[0]}-t2f.nii.gz"
    missing.unlink()
    truncated = root / names[1] / f"{names[1]}-t1n.nii.gz"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    not_nifti = root / names[2] / f"{names[2]}-t1c.nii.gz"
    not_nifti.write_bytes(gzip.compress(b"this is not a NIfTI file\n" * 40))
    shape = root / names[3] / f"{names[3]}-t2w.nii.gz"
    _write(shape, np.ones((5, 6, 7), dtype=np.int16))
    zero_dir = root / "BraTS-ZERO-00000-000"
    for c in CONTRASTS:
        _write(zero_dir / f"{zero_dir.name}-{c}.nii.gz", np.zeros((8, 8, 8), dtype=np.int16))
    return root, {"missing": missing, "truncated": truncated, "not_nifti": not_nifti,
                  "shape": shape, "zero": zero_dir}


def test_every_bad_subject_is_named_and_skipped(bad_root, tmp_path):
    root, bad = bad_root
    subjects = find_subjects(root, CONTRASTS)
    prepared, problems, skipped = prepare_subjects(subjects, _settings(contrasts=CONTRASTS), tmp_path / "c")
    text = "\n".join(map(str, problems))
    assert "missing contrast t2f" in text and bad["missing"].name in text
    assert str(bad["truncated"]) in text and "cannot read as NIfTI" in text
    assert str(bad["not_nifti"]) in text
    assert "different shapes" in text and bad["shape"].name in text
    assert "all-zero volume" in text and bad["zero"].name in text
    assert len(skipped) == 5 and len(prepared) == 3
    assert sorted(skipped) == sorted({p.subject for p in problems})


def test_on_error_stop_raises_naming_every_file(bad_root, tmp_path):
    root, bad = bad_root
    config = load_config("brats-f16", _overrides(root, tmp_path / "c", "data.contrasts=[t1n,t1c,t2w,t2f]",
                                                 "data.on_error=stop"))
    with pytest.raises(DataError) as err:
        build_datasets(config)
    for path in (bad["truncated"], bad["not_nifti"]):
        assert str(path) in str(err.value)
    assert "missing contrast t2f" in str(err.value)


def test_data_check_cli(bad_root, tmp_path, capsys):
    root, bad = bad_root
    args = ["data", "check", "brats-f16", *_overrides(root, tmp_path / "c", "data.contrasts=[t1n,t1c,t2w,t2f]")]
    names = sorted(p.name for p in root.iterdir())
    run = tmp_path / "run"
    run.mkdir()
    (run / "split.json").write_text(json.dumps({"train": [n for n in names if n != "BraTS-MNI-00006-000"],
                                                "eval": ["BraTS-MNI-00006-000"]}))
    # data.on_error=skip: problems reported, not fatal
    assert main(args + ["--run", str(run), "--json", str(tmp_path / "report.json")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^train\s+7 subjects \(5 skipped\), \d+ slices", out, re.M)
    assert re.search(r"^eval\s+1 subjects \(0 skipped\), \d+ slices", out, re.M)
    assert str(bad["truncated"]) in out and "all-zero volume" in out
    report = json.loads((tmp_path / "report.json").read_text())
    counted = sum(s["count"] for s in report["splits"])
    assert counted == 8 and len(report["problems"]) == 8 and not report["fatal"]
    assert main(args + ["data.on_error=stop", "--run", str(run)]) == 1
    assert "problem(s)" in capsys.readouterr().err


def test_data_check_counts_image_folders(tmp_path, capsys):
    for i in range(6):
        Image.new("RGB", (40, 30), (i * 40, 0, 0)).save(tmp_path / f"img{i}.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    assert main(["data", "check", "tiny", f"data.root={tmp_path}", "data.on_error=stop"]) == 1
    out = capsys.readouterr().out
    assert "broken.jpg" in out and "images" in out
    report = check_data(load_config("tiny", [f"data.root={tmp_path}"]))
    assert sum(s.count for s in report.splits) == 7 and len(report.problems) == 1 and not report.fatal


def test_brain_config_errors():
    with pytest.raises(ConfigError, match="data.contrasts: unknown contrast 't3'"):
        load_config("brain-tiny", ["data.contrasts=[t1n,t3]"])
    with pytest.raises(ConfigError, match="data.clip_percentiles"):
        load_config("brain-tiny", ["data.clip_percentiles=[99,1]"])
    with pytest.raises(ConfigError, match="data.root"):
        build_datasets(load_config("brats-f16", []))
    assert load_config("brats-f16").data.eval_fraction == 0.2
    assert load_config("tiny").data.eval_fraction == 0.05


def test_slice_dataset_flip_is_a_function_of_the_seed(brats_root, tmp_path):
    subjects = find_subjects(brats_root, ("t1n",))[:1]
    prepared, _, _ = prepare_subjects(subjects, _settings(), tmp_path)
    ds = SliceDataset(prepared, random_flip=True)
    flips = {bool(torch.equal(ds[(3, s)], ds[3].flip(-1))) for s in range(20)}
    assert flips == {True, False}
    assert torch.equal(ds[(3, 5)], ds[(3, 5)])


def test_builtin_brain_evaluates_on_colin27_or_says_why_not(tmp_path, monkeypatch):
    config = load_config("brain-tiny", [f"data.cache_dir={tmp_path}", "data.brain_subjects=3"])
    monkeypatch.setattr(brain_module, "COLIN27", tmp_path / "absent" / "ch2bet.nii.gz")
    train, held = build_datasets(config)
    assert any("not installed" in n and "mricron-data" in n for n in train.notes)
    assert {s.name for s in held.subjects} <= {f"BraTS-MNI-{i:05d}-000" for i in range(3)}
    assert not {s.name for s in held.subjects} & {s.name for s in train.subjects}
    # a stand-in Colin27 file (any skull-stripped T1): evaluation switches to it
    colin = tmp_path / "mricron" / "ch2bet.nii.gz"
    _write(colin, _marker_volume())
    monkeypatch.setattr(brain_module, "COLIN27", colin)
    _, held = build_datasets(config)
    assert [s.name for s in held.subjects] == ["Colin27"]


def test_training_skips_bad_subjects_logs_them_and_writes_the_split(bad_root, tmp_path, tiny_overrides):
    root, bad = bad_root
    run = tmp_path / "run"
    args = ["train", "brain-tiny", "data.source=brats", f"data.root={root}", f"data.cache_dir={tmp_path / 'c'}",
            "data.contrasts=[t1n,t1c,t2w,t2f]", "data.resolution=32", "model.resolution=32",
            "train.steps=2", "train.batch_size=4", *tiny_overrides, "--out", str(run)]
    assert main(args) == 0
    split = json.loads((run / "split.json").read_text())
    assert not set(split["train"]) & set(split["eval"])
    assert sorted(split["train"] + split["eval"]) == sorted(p.name for p in root.iterdir())
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    (event,) = [r for r in records if "data_problems" in r]
    assert event["data_problems"] == 8 and len(event["skipped_subjects"]) == 5
    assert any(p["file"] == str(bad["truncated"]) for p in event["problems"])
    # resuming keeps the split even when the root changes
    shutil.rmtree(root / "BraTS-ZERO-00000-000")
    assert main(args[:-2] + ["train.steps=3", "--out", str(run), "--resume"]) == 0
    assert json.loads((run / "split.json").read_text()) == split
    # evaluation on another BraTS root (every usable subject), not one file of a 4-contrast model
    other = tmp_path / "other"
    shutil.copytree(root / "BraTS-MNI-00005-000", other / "BraTS-MNI-00005-000")
    assert main(["eval", "--checkpoint", str(run), "--data", str(other)]) == 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["data"] == str(other) and "every subject (1)" in metrics["split"]
    one_file = other / "BraTS-MNI-00005-000" / "BraTS-MNI-00005-000-t1n.nii.gz"
    assert main(["eval", "--checkpoint", str(run), "--data", str(one_file)]) == 2


@pytest.mark.slow
def test_brain_tiny_trains_and_evaluates_end_to_end(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "brain-tiny", "train.steps=40", "train.batch_size=8", "train.eval_every=0",
                 "train.progress=false", "data.brain_subjects=4", "--out", str(run)]) == 0
    assert (run / "split.json").is_file() and list((run / "images").glob("*.png"))
    assert main(["eval", "--checkpoint", str(run)]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    for key in ("psnr", "ssim", "utilization", "perplexity"):
        assert np.isfinite(metrics[key])
    assert metrics["resolution"] == 64 and metrics["images"] > 50
    if brain_module.colin27_path() is not None:
        assert metrics["data"].startswith("Colin27") and "Colin27" in out
    else:
        assert "held-out subjects" in metrics["split"] and "not installed" in out
    assert list((run / "eval").glob("*.png"))
    # one NIfTI volume as the evaluation data (a held-out synthetic subject's T1)
    split = json.loads((run / "split.json").read_text())
    held = split["eval"][0]
    (volume,) = Path(os.environ["VAEVQ_CACHE_DIR"]).glob(f"slices/builtin-brain-*/{held}/{held}-t1n.nii.gz")
    assert main(["eval", "--checkpoint", str(run), "--data", str(volume)]) == 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["data"] == str(volume) and metrics["images"] > 20


def test_io_errors_are_reported_but_not_cached(brats_root, tmp_path, monkeypatch):
    (subject,) = [s for s in find_subjects(brats_root, ("t1n",)) if s.name.endswith("00002-000")]
    real_load = nib.load

    def failing(path, *a, **k):
        raise OSError(5, "Input/output error", str(path))

    monkeypatch.setattr(nib, "load", failing)
    done, problems = prepare_subject(subject, _settings(), tmp_path)
    assert done is None and "Input/output error" in problems[0].message and problems[0].transient
    monkeypatch.setattr(nib, "load", real_load)
    done, problems = prepare_subject(subject, _settings(), tmp_path)  # readable again: prepared
    assert done is not None and not problems
