"""The loss convention (SPEC §6), the readings of DCR (SPEC §7), the two utilization counters
(SPEC §4) and the literal preset, each against an independent reference or a hand count."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

import vaevq
from vaevq.config import load_config, preset_names
from vaevq.losses import dcr_loss, effective_weights, gaussian_moments
from vaevq.metrics.codebook import LatentSpread
from vaevq.models.vaevq import Reconstruction
from vaevq.quantizers import Codebook
from vaevq.training.evaluate import TokenStatistics
from vaevq.training.noise import sample_noise


def w2_squared(m1, s1, m2, s2) -> float:
    """Closed-form squared 2-Wasserstein distance between two Gaussians (scipy's sqrtm)."""
    r2 = scipy.linalg.sqrtm(s2).real
    cross = scipy.linalg.sqrtm(r2 @ s1 @ r2).real
    diff = np.asarray(m1) - np.asarray(m2)
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(cross))


def _gaussian_rows(rng, n, d, scale):
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return rng.normal(0, scale, size=d) + (rng.standard_normal((n, d)) * np.exp(rng.uniform(-1, 1, d))) @ q.T


# ----------------------------------------------------------------------------- DCR readings


@pytest.mark.parametrize("k,d", [(40, 3), (300, 8), (1000, 16)])
def test_dcr_to_a_latent_target_is_w2_to_that_gaussian_minus_its_trace(k, d):
    rng = np.random.default_rng(k + d)
    codes, latents = _gaussian_rows(rng, k, d, 1.0), _gaussian_rows(rng, 5 * k, d, 0.3) * 0.2
    t_mean, t_cov = latents.mean(0), np.cov(latents, rowvar=False)
    expected = w2_squared(codes.mean(0), np.cov(codes, rowvar=False), t_mean, t_cov) - np.trace(t_cov)
    target = gaussian_moments(torch.from_numpy(latents))
    got = dcr_loss(torch.from_numpy(codes), target)
    assert got.item() == pytest.approx(expected, rel=1e-8, abs=1e-8)


def test_dcr_with_the_standard_normal_as_target_is_eq_11():
    rng = np.random.default_rng(5)
    codes = torch.from_numpy(_gaussian_rows(rng, 200, 6, 1.0))
    target = (torch.zeros(6, dtype=torch.float64), torch.eye(6, dtype=torch.float64))
    assert dcr_loss(codes, target).item() == pytest.approx(dcr_loss(codes).item(), rel=1e-10, abs=1e-10)


def test_dcr_latent_target_gradient_matches_finite_differences_and_spares_the_target():
    rng = np.random.default_rng(11)
    codes = torch.from_numpy(_gaussian_rows(rng, 30, 4, 1.0)).requires_grad_(True)
    latents = torch.from_numpy(_gaussian_rows(rng, 100, 4, 0.5)).requires_grad_(True)
    torch.autograd.gradcheck(lambda e: dcr_loss(e, gaussian_moments(latents)), (codes,))
    dcr_loss(codes, gaussian_moments(latents)).backward()
    assert latents.grad is None  # the target is detached


def test_dcr_latent_target_is_minimised_by_matching_the_latents_moments():
    rng = np.random.default_rng(2)
    latents = torch.from_numpy(_gaussian_rows(rng, 500, 5, 0.4))
    target = gaussian_moments(latents)
    floor = (-torch.trace(target[1])).item()  # W2 = 0: the value is minus Tr(T)
    assert dcr_loss(latents, target).item() == pytest.approx(floor, abs=1e-9)
    shifted = latents + 0.1
    assert dcr_loss(shifted, target).item() == pytest.approx(floor + 5 * 0.01, abs=1e-9)


def _small(overrides=()):
    base = ["model.ch=16", "model.z_channels=32", "model.codebook_size=64", "model.latent_dim=8"]
    torch.manual_seed(0)
    return vaevq.VAEVQ(load_config("tiny", base + list(overrides)))


@pytest.fixture
def x():
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1


def _rows(z):
    return z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1]).double().numpy()


def test_model_dcr_target_latent_pulls_the_codebook_to_mu_batch_statistics(x):
    model = _small(["loss.dcr_target=latent", "loss.dcr_weight=3072"])  # effective weight 1 at 32 px
    out = model(x)
    mu = _rows(out.mu)
    e = model.codebook.vectors().detach().double().numpy()
    t_cov = np.cov(mu, rowvar=False)
    expected = w2_squared(e.mean(0), np.cov(e, rowvar=False), mu.mean(0), t_cov) - np.trace(t_cov)
    assert out.losses["dcr"].item() == pytest.approx(expected, rel=1e-4)
    out.losses["dcr"].backward()
    assert model.codebook.embedding.grad.abs().sum() > 0
    assert model.encoder.conv_in.weight.grad is None or not model.encoder.conv_in.weight.grad.any()


def test_model_dcr_target_both_adds_eq_11_on_mu_batch(x):
    model = _small(["loss.dcr_target=both", "loss.dcr_weight=3072"])
    out = model(x)
    mu = _rows(out.mu)
    d = mu.shape[1]
    expected = w2_squared(mu.mean(0), np.cov(mu, rowvar=False), np.zeros(d), np.eye(d)) - d
    assert out.losses["dcr_latent"].item() == pytest.approx(expected, rel=1e-4)
    e = model.codebook.vectors().detach().double().numpy()
    expected_codebook = w2_squared(e.mean(0), np.cov(e, rowvar=False), np.zeros(d), np.eye(d)) - d
    assert out.losses["dcr"].item() == pytest.approx(expected_codebook, rel=1e-4, abs=1e-4)
    out.losses["dcr_latent"].backward()
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0  # this side moves mu


# ----------------------------------------------------------------------------- the convention


def _hand_weights(cfg):
    """SPEC §6 by hand: the paper's per-image sums divided by C*H*W."""
    c, h = cfg.model.in_channels, cfg.data.resolution
    f = 2 ** (len(cfg.model.ch_mult) - 1)
    per_image = c * h * h
    rcs = cfg.loss.rcs_weight * (h // f) ** 2 / per_image
    if cfg.loss.rcs_form == "released":
        rcs *= cfg.model.latent_dim
    return {"rcs": rcs, "dcr": cfg.loss.dcr_weight / per_image, "kl": cfg.loss.kl_weight / per_image}


VLQ_PRESETS = [p for p in preset_names() if load_config(p).model.quantizer == "vlq"]


@pytest.mark.parametrize("preset", VLQ_PRESETS)
def test_every_preset_weights_follow_the_one_rule(preset):
    cfg = load_config(preset)
    f = 2 ** (len(cfg.model.ch_mult) - 1)
    got = effective_weights(cfg.loss, cfg.model.in_channels, f, cfg.model.latent_dim,
                            (cfg.data.resolution // f) ** 2)
    for key, value in _hand_weights(cfg).items():
        assert got[key] == pytest.approx(value, rel=1e-12), key
    # in the paper's units every preset that uses a VAEVQ term uses the paper's weight
    loss = cfg.loss
    if loss.rcs_form == "paper":
        assert loss.rcs_weight in (0.0, 1.0)
    assert loss.dcr_weight in (0.0, 0.1) and loss.kl_weight in (0.0, 1e-6)


def test_presets_mean_the_same_strength_at_every_scale():
    tiny, f16 = (load_config(p) for p in ("tiny", "imagenet-f16"))
    assert (tiny.loss.rcs_weight, tiny.loss.dcr_weight, tiny.loss.kl_weight) == \
        (f16.loss.rcs_weight, f16.loss.dcr_weight, f16.loss.kl_weight)
    assert _hand_weights(tiny)["rcs"] == pytest.approx(1 / 48)  # 1 / (3 f^2), f 4
    assert _hand_weights(f16)["rcs"] == pytest.approx(1 / 768)  # f 16
    assert _hand_weights(f16)["kl"] == pytest.approx(1e-6 / (3 * 256 * 256))


# ----------------------------------------------------------------------------- the literal preset


def test_vaevq_literal_is_eq_1_to_12_exactly(x):
    cfg = load_config("vaevq-literal")
    m, loss = cfg.model, cfg.loss
    assert (m.quantizer, m.quantize, m.estimator, m.codebook_projection) == ("vlq", "sample", "straight-through",
                                                                             False)
    assert m.dead_code_interval == 0
    assert (loss.rec, loss.rec_paths, loss.rcs_form, loss.dcr_target) == ("l2", "sum", "paper", "prior")
    assert (loss.rcs_weight, loss.dcr_weight, loss.kl_weight) == (1.0, 0.1, 1e-6)
    assert loss.codebook_weight == 0.0 and loss.perceptual_weight == 0.0 and cfg.gan.weight == 0.0
    torch.manual_seed(0)
    out = vaevq.VAEVQ(cfg)(x)
    assert set(out.losses) == {"rec", "rcs", "dcr", "kl", "total"}
    assert out.rec_c is not None  # dual-path decoding (eq. 3)


# ----------------------------------------------------------------------------- the two counters


class _FakeModel:
    """A codebook of 4 codes in 2-D, and nothing else: TokenStatistics only searches it."""

    def __init__(self):
        self.quantizer = type("Q", (), {})()
        self.quantizer.codebook = Codebook(4, 2)
        with torch.no_grad():
            self.quantizer.codebook.embedding.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0],
                                                                  [10.0, 10.0]]))
        self.quantizer.codebook_size = 4
        self.quantizer.search_block = 256


def test_both_utilizations_counted_by_hand():
    model = _FakeModel()
    # two images of 1x2 tokens; every mu sits on code 0 or 1 (encode uses codes {0, 1})
    mu = torch.tensor([[[[0.0, 10.0]], [[0.0, 0.0]]],
                       [[[0.1, 9.9]], [[0.0, 0.2]]]])  # (B 2, d 2, h 1, w 2)
    codes = torch.tensor([[[[0.0, 10.0]], [[0.0, 0.0]]]] * 2)
    indices = torch.tensor([[[0, 1]], [[0, 1]]])
    # image 0: sigma ~ 0 (its samples are its means); image 1: sigma 20, its samples land far off
    logvar = torch.cat([torch.full((1, 2, 1, 2), -30.0), torch.full((1, 2, 1, 2), 2 * np.log(20.0))])
    seeds = torch.tensor([5, 6])
    out = Reconstruction(None, None, indices, (mu - codes).norm(dim=1), mu, codes, logvar)
    stats = TokenStatistics(model)
    stats.update(out, seeds)
    metrics = stats.summary()
    # by hand: the samples of image 1, and their nearest codes by brute force
    eps = sample_noise(seeds, (2, 1, 2), "cpu")
    z = (mu + torch.exp(0.5 * logvar) * eps).permute(0, 2, 3, 1).reshape(-1, 2)
    book = model.quantizer.codebook.embedding.detach()
    sampled = ((z[:, None, :] - book[None]) ** 2).sum(-1).argmin(1)
    assert sampled[:2].tolist() == [0, 1]  # image 0: the samples are the means
    assert metrics["used_codes"] == 2 and metrics["utilization"] == 0.5 and metrics["tokens"] == 4
    assert metrics["used_codes_sampled"] == len(set(sampled.tolist()))
    assert metrics["utilization_sampled"] == len(set(sampled.tolist())) / 4
    assert metrics["dead_codes_sampled"] == 4 - len(set(sampled.tolist()))
    assert metrics["perplexity"] == pytest.approx(2.0)  # two codes, two tokens each


def test_sampled_counter_equals_the_encode_counter_without_noise():
    model = _FakeModel()
    indices = torch.tensor([[[2, 3]]])
    latent = torch.tensor([[[[0.0, 10.0]], [[10.0, 10.0]]]])
    out = Reconstruction(None, None, indices, torch.zeros(1, 1, 2), latent, latent, None)
    stats = TokenStatistics(model)
    stats.update(out, torch.tensor([0]))
    m = stats.summary()
    assert m["used_codes"] == m["used_codes_sampled"] == 2 and m["quant_error_rel"] == 0.0


def test_latent_spread_by_hand():
    spread = LatentSpread(1)
    z = torch.tensor([1.0, 3.0, 5.0, 7.0]).view(1, 1, 2, 2)  # mean 4, variance (9+1+1+9)/4 = 5
    z_q = torch.tensor([1.0, 2.0, 5.0, 9.0]).view(1, 1, 2, 2)  # squared errors 0, 1, 0, 4: mean 1.25
    spread.update(z, z_q)
    assert spread.spread() == pytest.approx(5.0)
    assert spread.mean_squared_error() == pytest.approx(1.25)
    assert spread.relative() == pytest.approx(0.25)


# ----------------------------------------------------------------------------- compare --seeds


def test_compare_aggregates_seeds_as_mean_and_sample_std():
    from vaevq.compare import aggregate, results_table

    runs = [{"name": "vaevq", "quantizer": "vlq", "codebook_size": 512, "steps": 600, "seed": s,
             "train_s": t, "metrics": {"psnr": p, "utilization": u, "utilization_sampled": 1.0, "lpips_net": "x"}}
            for s, t, p, u in ((0, 10.0, 17.0, 0.5), (1, 12.0, 18.0, 0.7), (2, 14.0, 19.0, 0.9))]
    row = aggregate(runs)
    assert row["seeds"] == [0, 1, 2]
    assert row["stats"]["psnr"] == {"mean": 18.0, "std": pytest.approx(1.0), "n": 3}  # sample std, ddof 1
    assert row["stats"]["utilization"]["mean"] == pytest.approx(0.7)
    assert row["stats"]["utilization"]["std"] == pytest.approx(0.2)
    assert row["train_s"] == 12.0 and row["metrics"]["psnr"] == 18.0
    single = aggregate(runs[:1])
    assert single["stats"]["psnr"] == {"mean": 17.0, "std": 0.0, "n": 1}
    table = results_table([row, single], "held-out", 32, 154)
    assert "| vaevq | vlq | 512 | 3 | 18.00 ± 1.00 |" in table
    assert "| vaevq | vlq | 512 | 1 | 17.00 |" in table  # one seed: no ± column
