"""Dead-code restart: which codes restart, where they go, the optimizer state, resume."""

import json

import pytest
import torch

from vaevq.config import ConfigError, load_config
from vaevq.models import VAEVQ
from vaevq.training import Trainer
from vaevq.training.dead_codes import DeadCodeRestarter

FAST = ["model.ch=16", "model.z_channels=32", "model.codebook_size=64", "model.latent_dim=8",
        "train.progress=false", "eval.max_images=32", "train.batch_size=8", "train.log_every=1",
        "train.checkpoint_every=2", "train.eval_every=0", "train.image_every=0"]


def _config(*extra, preset="tiny"):
    return load_config(preset, FAST + list(extra))


@pytest.mark.parametrize("quantizer", ["vlq", "vq", "ema", "movq", "softvq"])
def test_only_codes_below_threshold_move_onto_latents(quantizer):
    config = _config(f"model.quantizer={quantizer}", "model.dead_code_interval=3", "model.dead_code_threshold=2")
    model = VAEVQ(config)
    q = model.quantizer
    restarter = DeadCodeRestarter(config, q.codebook_size)
    k, d = q.codebook_size, config.model.latent_dim
    # interval counts: code i used i % 4 times over three steps (hand-made assignments)
    ids = torch.cat([torch.full((i % 4,), i) for i in range(k)])
    restarter.update(ids.view(1, 1, -1))
    latents = torch.randn(2, d, 4, 4)
    param = q.codebook.embedding
    optimizer = torch.optim.Adam([param], lr=0.1) if param.requires_grad else None
    if optimizer is not None:
        param.grad = torch.ones_like(param)
        optimizer.step()
    before = q.codebook.embedding.detach().clone()
    assert restarter.maybe_restart(2, q, latents, optimizer) == 0  # not the end of an interval
    n = restarter.maybe_restart(3, q, latents, optimizer)
    dead = torch.tensor([i % 4 < 2 for i in range(k)])
    assert n == int(dead.sum())
    after = q.codebook.embedding.detach()
    assert torch.equal(after[~dead], before[~dead])
    flat = latents.permute(0, 2, 3, 1).reshape(-1, d)
    for row in after[dead]:  # each restarted code is one of the latent vectors
        assert torch.isclose(flat, row).all(1).any()
    if optimizer is not None:
        state = optimizer.state[param]
        assert torch.all(state["exp_avg"][dead] == 0) and torch.all(state["exp_avg_sq"][dead] == 0)
        assert torch.all(state["exp_avg"][~dead] != 0)
    if quantizer == "ema":
        assert torch.all(q.cluster_size[dead] == 1.0)
        assert torch.equal(q.embed_sum[dead], after[dead])
    # counts start again after a restart
    assert restarter.counts.sum() == 0


def test_more_dead_codes_than_latents_gives_distinct_codes():
    config = _config("model.quantizer=vq", "model.dead_code_interval=1")
    q = VAEVQ(config).quantizer
    restarter = DeadCodeRestarter(config, q.codebook_size)
    assert restarter.maybe_restart(1, q, torch.randn(1, 8, 2, 2), None) == 64
    assert torch.unique(q.codebook.embedding.detach(), dim=0).shape[0] == 64


@pytest.mark.parametrize("quantizer", ["fsq", "lfq", "simvq", "lc"])
def test_quantizers_without_free_codes_turn_it_off_and_say_so(quantizer):
    with pytest.warns(UserWarning, match=f"does not apply to model.quantizer={quantizer}"):
        config = _config(f"model.quantizer={quantizer}", "model.codebook_size=256", "model.dead_code_interval=10")
    assert config.model.dead_code_interval == 0


def test_negative_interval_is_an_error():
    with pytest.raises(ConfigError, match="dead_code_interval"):
        _config("model.dead_code_interval=-1")


def test_restart_in_training_is_logged_and_resumes_exactly(tmp_path):
    extra = ["model.dead_code_interval=2", "model.dead_code_threshold=4"]
    straight = Trainer(_config("train.steps=4", *extra), tmp_path / "a")
    straight.train()
    records = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "restarted_codes" in r] == [2, 4]
    first = Trainer(_config("train.steps=3", *extra), tmp_path / "b")
    first.train()
    resumed = Trainer(_config("train.steps=4", *extra), tmp_path / "b", resume=True)
    assert torch.equal(resumed.dead_codes.counts, first.dead_codes.counts)
    resumed.train()
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(value, resumed.model.state_dict()[key], rtol=0, atol=0, msg=key)
