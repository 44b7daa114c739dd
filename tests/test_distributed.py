"""Two processes (gloo, CPU) through the same code path torchrun uses: the run equals one process
with the same global batch, utilization is global, and a two-process run resumes."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from vaevq.config import load_config
from vaevq.distributed import shutdown
from vaevq.metrics import CodebookUsage
from vaevq.training import Trainer

FAST = ["model.ch=16", "model.z_channels=32", "model.codebook_size=64", "model.latent_dim=8",
        "train.progress=false", "eval.max_images=48", "train.log_every=1", "train.checkpoint_every=2",
        "train.eval_every=0", "train.image_every=0", "eval.lpips_net=null", "eval.fid_effnet=false",
        "eval.rfid=false"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, run_dir, overrides, resume, out, preset="tiny"):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        trainer = Trainer(load_config(preset, overrides), run_dir, resume=resume, device="cpu")
        metrics = trainer.train()
        # this rank's evaluation shard (the same split evaluate() uses) encoded by this rank
        model = trainer.eval_model()
        held = trainer.eval_set
        n = min(len(held), trainer.config.eval.max_images)
        shard = list(range(rank, n, world))
        indices = model.encode(torch.stack([held[i] for i in shard]))
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        torch.save({"params": trainer.model.state_dict(), "grads": grads, "metrics": metrics,
                    "indices": indices, "step": trainer.step}, f"{out}/rank{rank}.pt")
    finally:
        shutdown()


def _spawn(run_dir, overrides, out, resume=False, world=2, preset="tiny"):
    out.mkdir(parents=True, exist_ok=True)
    mp.spawn(_worker, args=(world, _free_port(), str(run_dir), overrides, resume, str(out), preset),
             nprocs=world)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]


def _assert_same(a, b, atol):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=lambda m, k=k: f"{k}: {m}")


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_grads(a, b):
    """Gradients equal up to float32 summation order (all-reduce mean vs one batch mean)."""
    assert a.keys() == b.keys()
    overall = max(float(g.abs().max()) for g in b.values())
    for k in a:
        # exactly-zero gradients (a conv bias right before a GroupNorm) are rounding noise
        scale = max(float(b[k].abs().max()), 1e-2 * overall)
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4 * scale,
                                   msg=lambda m, k=k: f"{k}: {m}")


# Parameters: Adam turns the rounding noise of exactly-zero gradients (conv biases right before a
# GroupNorm) into updates of size lr, so after a few steps those differ by up to steps x lr;
# every gradient is compared tightly above.
PARAM_ATOL = 5e-3


def test_two_processes_equal_one_with_the_same_global_batch_and_resume(tmp_path):
    per_rank = FAST + ["train.batch_size=6"]
    # one step: the all-reduced gradient on every rank is the one-process gradient of the global batch
    single1 = Trainer(load_config("tiny", FAST + ["train.batch_size=12", "train.steps=1"]), tmp_path / "one1")
    single1.train()
    r0, r1 = _spawn(tmp_path / "two1", per_rank + ["train.steps=1"], tmp_path / "out1")
    _assert_same_grads(r0["grads"], _grads(single1.model))
    _assert_same(r0["grads"], r1["grads"], atol=0)
    _assert_same(r0["params"], single1.model.state_dict(), atol=2.5e-3)

    # (with the Frechet distance on: its feature statistics are reduced over ranks)
    single = Trainer(load_config("tiny", FAST + ["train.batch_size=12", "train.steps=4", "eval.fid_effnet=true"]),
                     tmp_path / "one")
    single_metrics = single.train()
    reference = single.model.state_dict()
    r0, r1 = _spawn(tmp_path / "two", per_rank + ["train.steps=4", "eval.fid_effnet=true"], tmp_path / "out2")
    _assert_same(r0["params"], r1["params"], atol=0)  # every rank holds the same model
    _assert_same(r0["params"], reference, atol=PARAM_ATOL)
    assert r0["metrics"] == r1["metrics"]
    assert r0["metrics"]["psnr"] == pytest.approx(single_metrics["psnr"], abs=0.05)
    assert r0["metrics"]["fid_effnet"] == pytest.approx(single_metrics["fid_effnet"], rel=0.02)
    assert r0["metrics"]["images"] == single_metrics["images"] == 48
    # utilization is global: the union of both ranks' tokens, not rank 0's
    k = load_config("tiny", FAST).model.codebook_size
    union = CodebookUsage(k)
    union.update(torch.cat([r0["indices"].flatten(), r1["indices"].flatten()]))
    assert r0["metrics"]["used_codes"] == union.used()
    assert r0["metrics"]["utilization"] == pytest.approx(union.utilization())
    assert r0["metrics"]["perplexity"] == pytest.approx(union.perplexity(), rel=1e-6)
    assert r0["metrics"]["tokens"] == r0["indices"].numel() + r1["indices"].numel()
    rank0_only = CodebookUsage(k)
    rank0_only.update(r0["indices"])
    assert rank0_only.total < union.total
    # only rank 0 wrote: one log line per step
    lines = [json.loads(x) for x in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss/total" in r] == [1, 2, 3, 4]

    # two processes: 2 steps, then resumed by both ranks to 4 -> the uninterrupted run exactly
    _spawn(tmp_path / "resumed", per_rank + ["train.steps=2"], tmp_path / "outa")
    s0, s1 = _spawn(tmp_path / "resumed", per_rank + ["train.steps=4"], tmp_path / "outb", resume=True)
    assert s0["step"] == 4
    _assert_same(s0["params"], s1["params"], atol=0)
    _assert_same(s0["params"], r0["params"], atol=0)


def _trained(run_dir, *overrides):
    trainer = Trainer(load_config("tiny", FAST + list(overrides)), run_dir)
    trainer.train()
    return trainer


def test_two_processes_resume_mid_interval_with_dead_code_restart(tmp_path):
    """Dead-code counts are per rank between restarts: a checkpoint must hold their sum."""
    run = FAST + ["train.batch_size=6", "model.dead_code_interval=3", "model.dead_code_threshold=3"]
    straight, _ = _spawn(tmp_path / "a", run + ["train.steps=4"], tmp_path / "oa")
    _spawn(tmp_path / "b", run + ["train.steps=2"], tmp_path / "ob1")
    resumed, _ = _spawn(tmp_path / "b", run + ["train.steps=4"], tmp_path / "ob2", resume=True)
    restarts = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()
                if "restarted_codes" in x]
    assert [r["step"] for r in restarts] == [3]
    _assert_same(straight["params"], resumed["params"], atol=0)


@pytest.mark.parametrize("quantizer", ["vlq", "vq"])
def test_gradient_accumulation_equals_the_full_batch(tmp_path, quantizer):
    q = f"model.quantizer={quantizer}"
    full = _trained(tmp_path / "a", "train.batch_size=12", "train.steps=3", q)
    accum = _trained(tmp_path / "b", "train.batch_size=4", "train.grad_accum=3", "train.steps=3", q)
    _assert_same_grads(_grads(accum.model), _grads(full.model))
    _assert_same(full.model.state_dict(), accum.model.state_dict(), atol=PARAM_ATOL)


def test_learning_rate_rule():
    from vaevq.training.trainer import effective_lr

    config = load_config("tiny", ["train.lr=1e-4", "train.batch_size=32", "train.lr_scale=linear",
                                  "train.lr_base_batch=256", "train.grad_accum=2"])
    lr, rule = effective_lr(config, world_size=8)  # global batch 32 x 8 x 2 = 512
    assert lr == pytest.approx(2e-4) and "512 / 256" in rule
    config.train.lr_scale = "sqrt"
    assert effective_lr(config, 8)[0] == pytest.approx(1e-4 * 2**0.5)
    config.train.lr_scale = "none"
    assert effective_lr(config, 8)[0] == 1e-4


@pytest.mark.slow
def test_torchrun_command_line(tmp_path):
    """`torchrun --nproc_per_node 2 -m vaevq train ...` (torch.distributed.run is torchrun)."""
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vaevq", "train", "tiny", *FAST, "train.batch_size=4", "train.steps=3", "--out", str(run)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "global batch 8 (4 x 2 processes x 1 accumulated)" in result.stdout + result.stderr
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "model").is_dir()
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss/total" in r] == [1, 2, 3]


def test_quantizer_stays_float32_under_bf16_autocast():
    """Under autocast the encoder and decoder run in bfloat16; the search, RCS, DCR and KL do not."""
    from vaevq.models import VAEVQ

    config = load_config("tiny", FAST)
    torch.manual_seed(0)
    model = VAEVQ(config).train()
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    noise = torch.randn(4, 8, 8, 8)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = model(x, noise=noise)
        features = model.encode_features(x)
    assert features.dtype == torch.bfloat16  # autocast is really on for the encoder
    assert out.mu.dtype == torch.float32 and out.z_q.dtype == torch.float32
    for name in ("rcs", "dcr", "kl"):
        assert out.losses[name].dtype == torch.float32, name
    # the tokens are the exact nearest codes of the float32 sample (float64 brute force)
    z = (out.mu + torch.exp(0.5 * out.logvar) * noise).permute(0, 2, 3, 1).reshape(-1, 8).double()
    codebook = model.quantizer.codebook.vectors().detach().double()
    expected = torch.cdist(z, codebook).argmin(1).view(4, 8, 8)
    assert torch.equal(out.indices, expected)
    out.losses["total"].backward()
    assert model.quantizer.codebook.embedding.grad.dtype == torch.float32


def test_training_with_bf16_on_cpu_says_it_trains_in_float32(tmp_path, capsys):
    trainer = Trainer(load_config("tiny", FAST + ["train.steps=1", "train.batch_size=4",
                                                  "train.precision=bf16"]), tmp_path)
    trainer.train()
    assert "float32" in capsys.readouterr().out and not trainer.autocast


@pytest.mark.slow
def test_compiled_encoder_and_decoder_train_and_keep_the_state_dict_keys(tmp_path):
    plain = _trained(tmp_path / "a", "train.steps=2", "train.batch_size=4")
    compiled = _trained(tmp_path / "b", "train.steps=2", "train.batch_size=4", "train.compile=true")
    assert compiled.model.state_dict().keys() == plain.model.state_dict().keys()
    _assert_same(compiled.model.state_dict(), plain.model.state_dict(), atol=PARAM_ATOL)


def test_two_processes_prepare_the_brain_cache_together_and_train(tmp_path):
    from vaevq.data.brain import write_synthetic_brats

    root = tmp_path / "brats"
    write_synthetic_brats(root, 4, seed=1, step=3, contrasts=("t1n",))
    cache = tmp_path / "cache"
    overrides = [f"data.root={root}", "data.source=brats", f"data.cache_dir={cache}", "data.resolution=32",
                 "model.resolution=32", *FAST, "train.batch_size=4", "train.steps=2"]
    r0, r1 = _spawn(tmp_path / "run", overrides, tmp_path / "out", preset="brain-tiny")
    _assert_same(r0["params"], r1["params"], atol=0)
    assert len(list(cache.glob("*.npy"))) == 4  # every subject prepared once
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert len(split["train"]) == 3 and len(split["eval"]) == 1
