import pytest
import torch
import torch.nn.functional as F

import vaevq
from vaevq.config import load_config
from vaevq.losses import dcr_loss, kl_loss, rcs_loss


def small(overrides=(), preset="tiny"):
    base = ["model.ch=16", "model.z_channels=32", "model.codebook_size=64", "model.latent_dim=8"]
    torch.manual_seed(0)
    return vaevq.VAEVQ(load_config(preset, base + list(overrides)))


def brute_nearest(z, codebook):  # (B, d, h, w), (K, d) -> (B, h, w)
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).double()
    d = ((flat[:, None, :] - codebook.double()[None]) ** 2).sum(-1)
    return d.argmin(1).view(z.shape[0], z.shape[2], z.shape[3])


@pytest.fixture
def x():
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_from_preset_and_shapes(x):
    model = vaevq.VAEVQ.from_preset("tiny")
    out = model(x)
    assert out.rec_c.shape == out.rec_q.shape == x.shape
    assert out.mu.shape == out.logvar.shape == out.z_c.shape == out.z_q.shape == (4, 16, 8, 8)
    assert out.indices.shape == (4, 8, 8) and out.indices.dtype == torch.int64
    assert set(out.losses) == {"rec", "rcs", "dcr", "kl", "total"}
    assert all(v.dim() == 0 for v in out.losses.values())


def test_total_is_the_weighted_objective(x):
    # weights in the paper's units (per-image sums), divided by C*H*W = 3*32*32 (SPEC §6): RCS
    # (summed over d, averaged over the 8x8 positions) by 3*4*4, DCR and KL by 3*32*32
    model = small(["loss.rcs_weight=0.7", "loss.dcr_weight=0.1", "loss.kl_weight=0.01"])
    out = model(x)
    rec = F.mse_loss(out.rec_q, x) + F.mse_loss(out.rec_c, x)
    expected = (rec + 0.7 / 48 * rcs_loss(out.z_q, out.mu, out.logvar)
                + 0.1 / 3072 * dcr_loss(model.codebook.vectors()) + 0.01 / 3072 * kl_loss(out.mu, out.logvar))
    torch.testing.assert_close(out.losses["total"], expected)
    torch.testing.assert_close(out.losses["rec"], rec)


def test_l1_and_mean_of_paths(x):
    model = small(["loss.rec=l1", "loss.rec_paths=mean"])
    out = model(x)
    expected = 0.5 * (F.l1_loss(out.rec_q, x) + F.l1_loss(out.rec_c, x))
    torch.testing.assert_close(out.losses["rec"], expected)


def test_zero_weight_term_is_absent(x):
    out = small(["loss.dcr_weight=0", "loss.kl_weight=0"])(x)
    assert "dcr" not in out.losses and "kl" not in out.losses


def test_training_quantizes_the_sample_and_encode_the_mean(x):
    model = small().train()
    out = model(x)
    assert not torch.equal(out.z_c, out.mu)  # a real sample
    vectors = model.codebook.vectors().detach()
    assert torch.equal(out.indices, brute_nearest(out.z_c.detach(), vectors))
    torch.testing.assert_close(out.z_q, vectors[out.indices].permute(0, 3, 1, 2))
    idx = model.encode(x)
    mu = model.quant_conv(model.encoder(x)).chunk(2, 1)[0]
    assert torch.equal(idx, brute_nearest(mu.detach(), vectors))
    assert torch.equal(idx, model.encode(x))  # deterministic, even in train mode
    assert model.training


def test_quantize_mean_option(x):
    model = small(["model.quantize=mean"]).train()
    out = model(x)
    assert torch.equal(out.indices, brute_nearest(out.mu.detach(), model.codebook.vectors().detach()))


@pytest.mark.parametrize("projection", [False, True])
def test_decode_of_encode_equals_reconstruct(x, projection):
    model = small([f"model.codebook_projection={str(projection).lower()}"])
    idx = model.encode(x)
    assert idx.shape == (4, 8, 8)
    assert torch.equal(model.decode(idx), model.reconstruct(x))
    model.eval()
    torch.testing.assert_close(model(x).rec_q, model.decode(idx), rtol=1e-3, atol=1e-4)


def test_straight_through_gradients(x):
    model = small(["loss.rcs_weight=0", "loss.dcr_weight=0", "loss.kl_weight=0"])
    out = model(x)
    F.mse_loss(out.rec_q, x).backward()
    assert model.codebook.embedding.grad is None or not model.codebook.embedding.grad.any()
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0


def test_released_estimator_reaches_codebook_and_keeps_value(x):
    model = small(["model.estimator=released", "loss.rcs_weight=0", "loss.dcr_weight=0",
                   "loss.kl_weight=0"])
    out = model(x)
    F.mse_loss(out.rec_q, x).backward()
    assert model.codebook.embedding.grad.abs().sum() > 0
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        q = model.quantizer(model.encode_features(x))
    from vaevq.quantizers.vlq import released_estimator

    sigma = torch.exp(0.5 * q.logvar)
    torch.testing.assert_close(released_estimator(q.mu, sigma, q.z_q), q.z_q)


def test_rcs_gradient_reaches_codebook(x):
    model = small(["loss.dcr_weight=0", "loss.kl_weight=0"])
    out = model(x)
    out.losses["rcs"].backward()
    assert model.codebook.embedding.grad.abs().sum() > 0


def test_save_and_load_round_trip(tmp_path, x):
    model = small(["model.codebook_projection=true"]).eval()
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").is_file()
    again = vaevq.VAEVQ.from_pretrained(tmp_path / "m").eval()
    assert again.config == model.config
    for (k, a), (k2, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert torch.equal(model.encode(x), again.encode(x))
    assert torch.equal(model.reconstruct(x), again.reconstruct(x))
    assert not list((tmp_path / "m").glob("*.tmp"))


def test_from_pretrained_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        vaevq.VAEVQ.from_pretrained(tmp_path)


def test_downsampling_factor_and_attention():
    model = small(["model.ch_mult=[1,2,2,2]", "model.attn_resolutions=[8]", "data.resolution=32"])
    assert model.downsample_factor == 8
    assert model.encode(torch.zeros(1, 3, 32, 32)).shape == (1, 4, 4)
    assert sum(len(s["attn"]) for s in model.encoder.down) > 0


def test_plain_vq_quantizer(x):
    model = small(["model.quantizer=vq"])
    out = model(x)
    assert out.rec_c is None and out.mu is None
    assert set(out.losses) == {"rec", "codebook", "commit", "total"}
    torch.testing.assert_close(out.losses["commit"], 0.25 * F.mse_loss(out.z_c, out.z_q))
    assert torch.equal(model.decode(model.encode(x)), model.reconstruct(x))


def test_bad_inputs():
    model = small()
    with pytest.raises(ValueError, match="expected images"):
        model(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="not divisible"):
        model(torch.zeros(2, 3, 30, 30))
    with pytest.raises(ValueError, match="out of range"):
        model.decode(torch.full((1, 2, 2), 64, dtype=torch.long))
    with pytest.raises(TypeError, match="int64"):
        model.decode(torch.zeros(1, 2, 2, dtype=torch.int32))
    with pytest.raises(ValueError, match="unknown model.quantizer"):
        small(["model.quantizer=nope"])


def test_reconstruct_paths_agree_with_the_pieces(x):
    model = small().train()
    out = model.reconstruct_paths(x)
    assert model.training  # mode restored
    assert torch.equal(out.rec_q, model.decode(model.encode(x)))
    mu = model.quant_conv(model.encoder(x)).chunk(2, 1)[0]
    torch.testing.assert_close(out.rec_c, model.decode_latent(mu).detach())
    assert torch.equal(out.indices, model.encode(x))
