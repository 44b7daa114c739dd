"""PatchGAN training: losses by hand, the adaptive weight, which step updates what, resume."""

import json

import pytest
import torch
from torch import nn

from vaevq.config import ConfigError, load_config
from vaevq.losses.adversarial import (
    LeCam,
    adaptive_weight,
    d_hinge_loss,
    d_vanilla_loss,
    g_hinge_loss,
    g_nonsaturating_loss,
)
from vaevq.losses.objective import Objective
from vaevq.models.discriminator import NLayerDiscriminator
from vaevq.training import Trainer

FAST = ["model.ch=16", "model.z_channels=32", "model.codebook_size=64", "model.latent_dim=8",
        "train.progress=false", "eval.max_images=16", "train.batch_size=4", "train.log_every=1",
        "train.checkpoint_every=2", "train.eval_every=0", "train.image_every=0", "eval.lpips_net=null",
        "gan.weight=0.8", "gan.channels=16"]


def fast_config(steps, extra=()):
    return load_config("tiny", FAST + [f"train.steps={steps}", *extra])


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def changed(before, module):
    return {k for k, v in module.named_parameters() if not torch.equal(before[k], v)}


def test_losses_by_hand():
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.0, 1.5])
    hinge = 0.5 * ((0 + 0.5 + 2.0) / 3 + (0 + 1.0 + 2.5) / 3)
    assert d_hinge_loss(real, fake).item() == pytest.approx(hinge)
    sp = lambda v: float(torch.log1p(torch.exp(torch.tensor(v))))  # noqa: E731
    vanilla = 0.5 * ((sp(-2.0) + sp(-0.5) + sp(1.0)) / 3 + (sp(-2.0) + sp(0.0) + sp(1.5)) / 3)
    assert d_vanilla_loss(real, fake).item() == pytest.approx(vanilla, rel=1e-6)
    assert g_hinge_loss(fake).item() == pytest.approx(-(-2.0 + 0.0 + 1.5) / 3)
    assert g_nonsaturating_loss(fake).item() == pytest.approx((sp(2.0) + sp(0.0) + sp(-1.5)) / 3, rel=1e-6)


def test_lecam_by_hand():
    reg = LeCam(decay=0.5)
    reg.update(torch.tensor([1.0, 3.0]), torch.tensor([-1.0, -3.0]))  # first call: EMAs = means
    assert reg.ema_real.item() == 2.0 and reg.ema_fake.item() == -2.0
    reg.update(torch.tensor([0.0]), torch.tensor([0.0]))
    assert reg.ema_real.item() == 1.0 and reg.ema_fake.item() == -1.0
    real, fake = torch.tensor([0.5, -2.0]), torch.tensor([2.0, 0.0])
    expected = ((0.5 + 1) ** 2 + 0.0) / 2 + (0.0 + 1.0**2) / 2
    assert reg(real, fake).item() == pytest.approx(expected)


def test_adaptive_weight_equals_hand_computation():
    w = nn.Parameter(torch.tensor([0.5, -1.0, 2.0]))
    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 4.0, -3.0])
    rec = (w * a).sum() ** 2  # gradient 2 (w.a) a
    g = (w * b).sum()  # gradient b
    wa = 0.5 - 2.0 + 6.0
    expected = (2 * wa * a).norm() / (b.norm() + 1e-4)
    got = adaptive_weight(rec, g, w)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert not got.requires_grad
    assert adaptive_weight(rec, g, w, max_weight=0.5).item() == 0.5  # clamped
    g_flat = (w * 0).sum() + 0 * w.sum()
    assert adaptive_weight(rec, g_flat, w).item() == pytest.approx(1e4)  # zero generator gradient


def test_patchgan_shapes_and_norms():
    x = torch.randn(2, 3, 64, 64)
    for norm in ("batch", "group"):
        d = NLayerDiscriminator(3, 64, 3, norm)
        assert d(x).shape == (2, 1, 6, 6)  # 64 -> 32 -> 16 -> 8 -> 7 -> 6
        convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
        assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]
        assert [c.stride[0] for c in convs] == [2, 2, 2, 1, 1]
    assert sum(isinstance(m, nn.GroupNorm) for m in NLayerDiscriminator(norm="group").modules()) == 3
    with pytest.raises(ConfigError, match="gan.norm"):
        load_config("tiny", ["gan.norm=instance"])


def test_generator_and_discriminator_losses_touch_only_their_networks():
    config = fast_config(1, ["loss.perceptual_weight=0"])
    from vaevq.models import VAEVQ

    model = VAEVQ(config)
    objective = Objective(config)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out = model(x)
    losses = objective.generator_losses(x, out, model.decoder.last_layer, step=0)
    assert {"g", "g_weight"} <= set(losses)
    losses["total"].backward()
    assert all(p.grad is None for p in objective.discriminator.parameters())
    assert all(p.grad is not None for n, p in model.named_parameters() if "decoder" in n)
    model.zero_grad(set_to_none=True)
    d = objective.discriminator_loss(x, out)["d_total"]
    d.backward()
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is not None for p in objective.discriminator.parameters())


def test_trainer_steps_update_the_right_parameters(tmp_path):
    trainer = Trainer(fast_config(1), tmp_path)
    disc, model = trainer.objective.discriminator, trainer.model
    d0, m0 = snapshot(disc), snapshot(model)
    trainer.train()
    # the discriminator step moved every D weight (the last bias may get exactly zero gradient
    # from the hinge loss while every margin is active: the real and fake terms cancel)
    assert {k for k in d0 if k.endswith("weight")} <= changed(d0, disc)
    assert changed(m0, model)  # the generator step moved the tokenizer
    # a discriminator step alone, with everything else fixed, moves only D
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        out = model(x)
    m1, d1 = snapshot(model), snapshot(disc)
    trainer.disc_optimizer.zero_grad()
    trainer.objective.discriminator_loss(x, out)["d_total"].backward()
    trainer.disc_optimizer.step()
    assert not changed(m1, model) and changed(d1, disc)


def test_adversarial_terms_off_before_start(tmp_path):
    trainer = Trainer(fast_config(3, ["gan.start=2"]), tmp_path)
    d0 = snapshot(trainer.objective.discriminator)
    steps = {}
    original = trainer._train_step

    def record(x, seeds=None):
        losses = original(x, seeds)
        steps[trainer.step] = set(losses)
        if trainer.step < 2:
            assert not changed(d0, trainer.objective.discriminator)
        return losses

    trainer._train_step = record
    trainer.train()
    assert "g" not in steps[0] and "d" not in steps[0] and "g" not in steps[1]
    assert {"g", "g_weight", "d"} <= steps[2]
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert "loss/g" not in records[0] and "loss/g" in records[2]


def test_resume_restores_discriminator_state_exactly(tmp_path):
    extra = ["gan.lecam_weight=0.01", "gan.start=1"]
    straight = Trainer(fast_config(4, extra), tmp_path / "a")
    straight.train()
    first = Trainer(fast_config(2, extra), tmp_path / "b")
    first.train()
    resumed = Trainer(fast_config(4, extra), tmp_path / "b", resume=True)
    assert resumed.step == 2
    for k, v in first.objective.discriminator.state_dict().items():
        assert torch.equal(resumed.objective.discriminator.state_dict()[k], v), k
    assert torch.equal(resumed.objective.lecam.ema_real, first.objective.lecam.ema_real)
    resumed.train()
    for module in ("discriminator", "lecam"):
        a = getattr(straight.objective, module).state_dict()
        b = getattr(resumed.objective, module).state_dict()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{module}.{k}")
    for k, v in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v, rtol=0, atol=0, msg=k)
    sa, sb = straight.disc_optimizer.state_dict(), resumed.disc_optimizer.state_dict()
    for i in sa["state"]:
        torch.testing.assert_close(sa["state"][i]["exp_avg"], sb["state"][i]["exp_avg"], rtol=0, atol=0)


def test_resume_without_discriminator_state_is_an_error(tmp_path):
    plain = ["gan.weight=0"]
    Trainer(fast_config(2, plain), tmp_path).train()
    with pytest.raises(ValueError, match=r"different settings \(gan.weight: 0.0 -> 0.8\)"):
        Trainer(fast_config(4), tmp_path, resume=True)


def test_perceptual_term_on_both_paths(tmp_path):
    config = fast_config(1, ["loss.perceptual_weight=0.5", "gan.weight=0"])
    from vaevq.models import VAEVQ

    objective = Objective(config)
    if objective.perceptual is None:
        pytest.skip("no perceptual network")
    model = VAEVQ(config)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out = model(x)
    losses = objective.generator_losses(x, out, model.decoder.last_layer, step=0)
    with torch.no_grad():
        expected = 0.5 * (objective.perceptual(x, out.rec_q).mean() + objective.perceptual(x, out.rec_c).mean())
    torch.testing.assert_close(losses["perceptual"], expected)
    torch.testing.assert_close(losses["total"], out.losses["total"] + losses["perceptual"])
    assert "g" not in losses
