"""Faults and bad input (issue 16): a user error or an environment fault ends in one line naming
the file, key or value and a non-zero exit, never a traceback (``--debug`` / ``VAEVQ_DEBUG=1``
show it)."""

import pytest
import torch

from vaevq.cli.main import main
from vaevq.config import ConfigError, load_config


@pytest.mark.parametrize("override, named", [
    ("train.steps=-5", "train.steps"), ("train.steps=0", "train.steps"), ("train.log_every=0", "train.log_every"),
    ("train.checkpoint_every=-1", "train.checkpoint_every"), ("train.lr=inf", "train.lr"),
    ("train.lr=0", "train.lr"), ("train.ema_decay=1.0", "train.ema_decay"),
    ("eval.batch_size=0", "eval.batch_size"),
    ("train.epochs=-1", "train.epochs"), ("data.num_workers=-2", "data.num_workers"),
])
def test_counts_and_rates_that_cannot_run_are_refused_by_name(override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config("tiny", [override])
    assert load_config("tiny", ["train.steps=0", "train.epochs=2"]).train.epochs == 2  # epochs decide


def _one_line_error(capsys, argv, *needles) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_out_that_is_a_file_is_one_line(tmp_path, capsys):
    file = tmp_path / "run.txt"
    file.write_text("not a folder")
    _one_line_error(capsys, ["train", "tiny", "--out", str(file)], "vaevq train: error:", str(file), "is a file")
    assert file.read_text() == "not a folder"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_one_line(tmp_path, capsys, monkeypatch):
    _one_line_error(capsys, ["train", "tiny", "--device", "cuda", "--out", str(tmp_path / "r")], "no CUDA GPU")
    assert not (tmp_path / "r" / "checkpoints").exists()
    # the debug switch shows the traceback instead
    monkeypatch.setenv("VAEVQ_DEBUG", "1")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        main(["train", "tiny", "--device", "cuda", "--out", str(tmp_path / "r")])
    monkeypatch.delenv("VAEVQ_DEBUG")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        main(["--debug", "train", "tiny", "--device", "cuda", "--out", str(tmp_path / "r")])


def test_a_bad_value_on_the_command_line_is_one_line(tmp_path, capsys):
    _one_line_error(capsys, ["train", "tiny", "train.steps=0", "--out", str(tmp_path / "r")], "train.steps")
    _one_line_error(capsys, ["train", "tiny", "train.log_every=0", "--out", str(tmp_path / "r")],
                    "train.log_every")
    assert not (tmp_path / "r").exists()


def test_a_torn_last_log_line_is_named_and_dropped(tmp_path, capsys):
    from vaevq.fileio import read_jsonl

    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n{"step": 3, "lo')
    assert read_jsonl(log) == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.4}]
    err = capsys.readouterr().err
    assert str(log) in err and "torn last line" in err
    log.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')  # damage in the middle: refused by line
    with pytest.raises(ValueError, match=r"log\.jsonl, line 2"):
        read_jsonl(log)


def test_appends_are_whole_lines_when_the_disk_fills(tmp_path, monkeypatch):
    import errno

    import vaevq.fileio as fileio

    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1}\n')
    real_open = open

    class Full:
        """A file that takes half of what is written, then fails as a full disk does."""

        def __init__(self, *a, **k):
            self.fh = real_open(*a, **k)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def tell(self):
            return self.fh.tell()

        def write(self, data):
            self.fh.write(data[: len(data) // 2])
            self.fh.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            self.fh.flush()

        def truncate(self, size):
            return self.fh.truncate(size)

    monkeypatch.setattr(fileio, "open", Full, raising=False)
    with pytest.raises(OSError, match="No space left"):
        fileio.append_line(log, '{"step": 2, "loss": 0.25}')
    monkeypatch.undo()
    assert log.read_text() == '{"step": 1}\n'


def test_metrics_json_never_holds_nan():
    import json
    import math

    from vaevq.cli.main import metrics_json

    text = metrics_json({"psnr": math.nan, "ssim": 0.5, "baselines": {"noise": {"fid": math.inf}},
                         "n": [1.0, -math.inf]})

    def refuse(name):
        raise AssertionError(f"{name} in JSON")

    data = json.loads(text, parse_constant=refuse)  # strict JSON: no NaN or Infinity
    assert data["psnr"] is None and data["ssim"] == 0.5 and data["baselines"]["noise"]["fid"] is None
    assert data["n"] == [1.0, None]
    assert set(data["nonfinite"]) == {"psnr", "baselines.noise.fid"}


def test_resume_with_another_learning_rate_is_refused_by_name():
    from vaevq.training.state import setting_differences

    saved = load_config("tiny").to_dict()
    assert setting_differences(saved, load_config("tiny", ["train.steps=900"])) == []  # more steps: fine
    own = saved["train"]["lr"]
    assert setting_differences(saved, load_config("tiny", [f"train.lr={own}"])) == []  # tiny's own value
    assert setting_differences(saved, load_config("tiny", [f"train.lr={own * 4}", "train.weight_decay=0.1"])) == [
        f"train.lr: {own} -> {own * 4}", "train.weight_decay: 0.0 -> 0.1"]


def test_the_run_lock_refuses_a_second_writer_and_replaces_a_stale_one(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    from vaevq.rundir import RunDir

    run = RunDir(tmp_path / "run")
    assert run.acquire() is None
    assert run.lock_file.read_text().split() == [str(os.getpid()), socket.gethostname()]
    with pytest.raises(ValueError, match=f"process {os.getpid()} on {socket.gethostname()}"):
        RunDir(tmp_path / "run").acquire()
    run.release()
    assert not run.lock_file.exists()
    # a lock of a process that has exited: stale, replaced with a note
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    run.lock_file.write_text(f"{gone.stdout.strip()} {socket.gethostname()}\n")
    note = run.acquire()
    assert note and "stale" in note and gone.stdout.strip() in note
    run.release()
    # another host's lock cannot be checked from here: refused
    run.lock_file.write_text("12345 some-other-host\n")
    with pytest.raises(ValueError, match="some-other-host"):
        run.acquire()


TINY_FAST = ["model.ch=16", "model.z_channels=32", "model.codebook_size=64", "model.latent_dim=8", "train.steps=1",
             "train.progress=false", "eval.max_images=8", "eval.lpips_net=null", "eval.fid_effnet=false",
             "eval.rfid=false", "data.usage_tokens=0", "train.image_every=0"]


def test_training_cleans_temporary_files_and_a_busy_run_is_refused(tmp_path, capsys):
    import subprocess
    import sys

    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    leftover = out / "checkpoints" / ".last.pt.k2j4.tmp"  # what a kill -9 during a save leaves
    leftover.write_bytes(b"half a checkpoint")
    assert main(["train", "tiny", *TINY_FAST, "--out", str(out)]) == 0
    assert not leftover.exists() and "removed 1 temporary file" in capsys.readouterr().out
    assert not (out / ".lock").exists()  # released at the end
    # a second writer while another process holds the run: one line, nothing written
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        (out / ".lock").write_text(f"{holder.pid} {socket.gethostname()}\n")
        before = (out / "log.jsonl").read_text()
        argv = ["train", str(out / "config.yaml"), "train.steps=2", "--resume", "--out", str(out)]
        _one_line_error(capsys, argv, "is in use", str(holder.pid))
        assert (out / "log.jsonl").read_text() == before
    finally:
        holder.kill()
        holder.wait()


def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_last(tmp_path, monkeypatch, capsys):
    import vaevq.training.checkpoint as ckpt

    out = tmp_path / "run"
    assert main(["train", "tiny", *TINY_FAST, "train.checkpoint_every=1", "--out", str(out)]) == 0
    good = (out / "checkpoints" / "last.pt").read_bytes()

    def full_disk(obj, f):  # what torch.save raises when the disk fills mid-write
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    argv = ["train", str(out / "config.yaml"), "train.steps=2", "--resume", "--out", str(out)]
    err = _one_line_error(capsys, argv, "while writing", "last.pt", "(step 1) is intact")
    assert "step 2" in err
    monkeypatch.undo()
    assert (out / "checkpoints" / "last.pt").read_bytes() == good
    assert not list((out / "checkpoints").glob(".*.tmp"))


def test_diverged_weights_are_never_checkpointed_nor_evaluated(tmp_path, capsys):
    import torch

    from vaevq.models import VAEVQ
    from vaevq.training import Trainer

    config = load_config("tiny", [*TINY_FAST, "train.steps=3", "train.checkpoint_every=1"])
    trainer = Trainer(config, tmp_path / "r")
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite values"):
        trainer.save()
    assert not (tmp_path / "r" / "checkpoints" / "last.pt").exists()
    # a save_pretrained folder holding NaN (written by anything else) is refused when loaded
    model = VAEVQ(load_config("tiny", TINY_FAST))
    with torch.no_grad():
        model.decoder.conv_out.weight[0, 0, 0, 0] = float("inf")
    model.save_pretrained(tmp_path / "bad")
    _one_line_error(capsys, ["eval", "--checkpoint", str(tmp_path / "bad")], "non-finite",
                    "decoder.conv_out.weight")


def test_unwritable_places_are_named_before_any_work(tmp_path, capsys):
    from vaevq.models import VAEVQ

    nowhere = "/sys/vaevq-not-writable"  # sysfs refuses new folders, also to root (chmod would not stop root)
    _one_line_error(capsys, ["train", "tiny", *TINY_FAST, "--out", f"{nowhere}/run"], "--out", "not writable")
    VAEVQ(load_config("tiny", TINY_FAST)).save_pretrained(tmp_path / "model")
    _one_line_error(capsys, ["eval", "--checkpoint", str(tmp_path / "model"), "--out", nowhere], "not writable")
    assert not (tmp_path / "model" / "eval").exists()
    assert main(["eval", "--checkpoint", str(tmp_path / "model"), "--out", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "metrics.json").is_file() and not (tmp_path / "model" / "eval").exists()


# ---------------------------------------------------------------- bad image files


def _folder(tmp_path, n=16):
    import numpy as np
    from PIL import Image

    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / f"img{i:03d}.png")
    return root


def _truncated_jpeg(path):
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 100, dtype=np.uint8)).save(buf, format="JPEG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


def test_sixteen_bit_and_transparent_images_are_converted_not_clipped(tmp_path):
    import numpy as np
    from PIL import Image

    from vaevq.data.transforms import load_rgb

    ramp = (np.arange(256 * 4).reshape(4, 256) * 64).astype(np.uint16)  # 0 .. 65472
    Image.fromarray(ramp).save(tmp_path / "r16.png")
    assert Image.open(tmp_path / "r16.png").mode.startswith("I")
    got = np.asarray(load_rgb(tmp_path / "r16.png"))
    np.testing.assert_array_equal(got[..., 0], np.round(ramp / 65535 * 255).astype(np.uint8))
    assert (got[..., 0] == 255).mean() < 0.01  # not saturated (convert("RGB") clips 99% at 255)
    rgba = np.zeros((1, 3, 4), dtype=np.uint8)
    rgba[0, 0] = (200, 10, 10, 0)  # fully transparent: the white background
    rgba[0, 1] = (200, 10, 10, 255)  # opaque: its colour
    rgba[0, 2] = (0, 0, 0, 128)  # half: blended with white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = np.asarray(load_rgb(tmp_path / "a.png")).astype(int)
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 1].tolist() == [200, 10, 10]
    assert all(abs(v - 127) <= 1 for v in out[0, 2])


def test_data_check_names_every_bad_file_and_does_not_abort(tmp_path, capsys, monkeypatch):
    import os

    import numpy as np
    from PIL import Image

    root = _folder(tmp_path)
    _truncated_jpeg(root / "img030_truncated.jpg")
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(root / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # 64 x 64 > 2 x 2000: PIL's decompression bomb
    os.symlink("loop.png", root / "loop.png")  # a link to itself
    bad_name = os.fsencode(str(root)) + b"/caf\xe9.png"  # Latin-1 bytes: not valid UTF-8
    fd = os.open(bad_name, os.O_WRONLY | os.O_CREAT)
    os.close(fd)  # an empty file: also not an image
    code = main(["data", "check", "tiny", f"data.root={root}", "data.resolution=32"])
    out = capsys.readouterr().out
    assert code == 0 and "Traceback" not in out
    assert "img030_truncated.jpg" in out and "huge.png" in out
    assert "loop.png" in out and "symbolic link loop" in out
    assert "caf\\xe9.png" in out  # named, with its undecodable byte escaped
    assert "4 problem(s)" in out


def test_bad_files_are_left_out_before_training_recorded_and_resume_stays_exact(tmp_path, monkeypatch, capsys):
    import json

    monkeypatch.setenv("VAEVQ_CACHE_DIR", str(tmp_path / "cache"))
    root = _folder(tmp_path, 24)
    _truncated_jpeg(root / "img030_truncated.jpg")
    out = tmp_path / "run"
    args = ["train", "tiny", *TINY_FAST, f"data.root={root}", "data.resolution=32", "data.eval_fraction=0.2",
            "train.batch_size=8"]
    assert main([*args, "train.steps=3", "train.checkpoint_every=1", "--out", str(out)]) == 0
    excluded = json.loads((out / "excluded.json").read_text())
    assert list(excluded) == [str(root / "img030_truncated.jpg")] and "cannot read image" in excluded[str(
        root / "img030_truncated.jpg")]
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert any(r.get("data_problems") == 1 for r in log)
    # the file is "repaired": a resumed run still leaves it out (the same data, the same batches)
    import shutil

    shutil.copy(root / "img000.png", root / "img030_truncated.jpg")
    assert main(["train", str(out / "config.yaml"), "train.steps=4", "--resume", "--out", str(out)]) == 0
    assert json.loads((out / "excluded.json").read_text()) == excluded
    # a file that breaks after the scan is replaced by the next image, named on stderr, never fatal
    (root / "img005.png").write_bytes(b"not a png any more")
    monkeypatch.setenv("VAEVQ_CACHE_DIR", str(tmp_path / "cache"))  # the cached verdict still says good
    capsys.readouterr()
    assert main([*args, "train.steps=4", "data.scan_images=false", "--out", str(tmp_path / "run2")]) == 0
    err = capsys.readouterr().err
    assert "img005.png" in err and "used the next image" in err
    # data.on_error=stop: the bad files stop the run before it starts, by name
    _one_line_error(capsys, [*args, "data.on_error=stop", "--out", str(tmp_path / "run3")], "img005.png",
                    "data.on_error=stop")


def test_broken_pretrained_folders_and_feature_files_are_one_line(tmp_path, capsys):
    import pickle

    import torch
    from safetensors.torch import load_file, save_file

    from vaevq.models import VAEVQ

    good = tmp_path / "good"
    VAEVQ(load_config("tiny", TINY_FAST)).save_pretrained(good)
    state = load_file(str(good / "model.safetensors"))
    cases = {}
    # a weight of another shape, a missing weight, a truncated header, a config of the wrong type
    for name, change in (("shape", lambda s: {**s, "quant_conv.bias": torch.zeros(3)}),
                         ("missing", lambda s: {k: v for k, v in s.items() if k != "decoder.conv_out.bias"})):
        folder = tmp_path / name
        VAEVQ(load_config("tiny", TINY_FAST)).save_pretrained(folder)
        save_file(change(state), str(folder / "model.safetensors"))
        cases[name] = folder
    cases["truncated"] = tmp_path / "truncated"
    VAEVQ(load_config("tiny", TINY_FAST)).save_pretrained(cases["truncated"])
    (cases["truncated"] / "model.safetensors").write_bytes(b"\x40\x00\x00")
    cases["yaml"] = tmp_path / "yaml"
    VAEVQ(load_config("tiny", TINY_FAST)).save_pretrained(cases["yaml"])
    (cases["yaml"] / "config.yaml").write_text("model: !!python/object/apply:os.system ['echo hi']\n")
    needles = {"shape": ("quant_conv.bias", "shape (3,)"), "missing": ("decoder.conv_out.bias", "missing"),
               "truncated": ("model.safetensors", "cannot read"), "yaml": ("config.yaml", "python/object")}
    for name, folder in cases.items():
        _one_line_error(capsys, ["eval", "--checkpoint", str(folder)], *needles[name])
    # a pickle with code as LC features: refused, one line, nothing run
    evil = tmp_path / "features.pt"
    evil.write_bytes(pickle.dumps(print))  # any global: weights_only loading refuses it
    err = _one_line_error(capsys, ["train", "tiny", *TINY_FAST, "model.quantizer=lc", f"model.lc_features={evil}",
                                   "--out", str(tmp_path / "lc")], "model.lc_features", "refused")
    assert "features.pt" in err


def test_a_diverging_run_stops_in_one_line_and_leaves_only_finite_checkpoints(tmp_path, capsys):
    import torch

    out = tmp_path / "run"
    args = ["train", "tiny", *TINY_FAST, "train.steps=6", "train.lr=1e3", "train.checkpoint_every=1",
            "train.schedule=constant", "--out", str(out)]
    err = _one_line_error(capsys, args, "non-finite")
    assert "step" in err and "lower train.lr" in err
    last = out / "checkpoints" / "last.pt"
    if last.is_file():  # whatever was written holds finite weights
        state = torch.load(last, weights_only=True)
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_warm_image_scan_decodes_once_for_every_process_of_a_machine(tmp_path, monkeypatch):
    """Under torchrun the node's first process scans (warm_image_scan) and the others, after the
    barrier, only read its cached verdicts: counted here by the decodes build_datasets does."""
    from vaevq.config import load_config
    from vaevq.data import build_datasets, warm_image_scan
    from vaevq.data import scan as scan_module

    monkeypatch.setenv("VAEVQ_CACHE_DIR", str(tmp_path / "cache"))
    root = _folder(tmp_path, 12)
    _truncated_jpeg(root / "img030_truncated.jpg")
    config = load_config("tiny", [f"data.root={root}", "data.resolution=32", "data.eval_fraction=0.25"])
    decoded = []
    real = scan_module.load_rgb
    monkeypatch.setattr(scan_module, "load_rgb", lambda p: (decoded.append(p), real(p))[1])
    warm_image_scan(config, tmp_path / "run")
    assert len(decoded) == 13  # every file once, the bad one included
    decoded.clear()
    train, held = build_datasets(config, tmp_path / "run")  # another rank after the barrier
    assert decoded == [] and len(train) + len(held) == 12
    assert list(train.excluded) == [str(root / "img030_truncated.jpg")]
    # other sources, or the scan switched off: nothing decoded
    warm_image_scan(load_config("tiny"))
    warm_image_scan(load_config("tiny", [f"data.root={root}", "data.scan_images=false"]))
    assert decoded == []
    # a missing folder: no error on the scanning rank alone (every rank's build_datasets names it)
    missing = load_config("tiny", [f"data.root={tmp_path / 'nowhere'}"])
    warm_image_scan(missing)
    with pytest.raises(ConfigError):
        build_datasets(missing, tmp_path / "run3")
