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
