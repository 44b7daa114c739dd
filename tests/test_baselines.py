"""Baseline quantizers against independent computations; ablation switches; frozen parts."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from scipy.special import softmax

import vaevq
from vaevq.config import ConfigError, load_config
from vaevq.losses.objective import weighted_terms
from vaevq.metrics import CodebookUsage
from vaevq.quantizers import QUANTIZERS

SMALL = ["model.ch=16", "model.z_channels=32", "train.progress=false"]
ALL = ["vq", "ema", "simvq", "lc", "movq", "softvq", "fsq", "lfq", "vlq"]


def model_for(quantizer, extra=()):
    overrides = SMALL + [f"model.quantizer={quantizer}", "model.codebook_size=256", *extra]
    if quantizer == "lc":
        overrides.append("model.lc_features=effnet-lite0")
    return vaevq.VAEVQ.from_preset("tiny", overrides)


@pytest.mark.parametrize("quantizer", ALL)
def test_every_quantizer_tokenizes_and_decodes_exactly(quantizer):
    torch.manual_seed(0)
    model = model_for(quantizer)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out = model(x)
    assert torch.isfinite(out.losses["total"])
    out.losses["total"].backward()
    idx = model.encode(x)
    assert idx.dtype == torch.int64 and idx.shape == (2, 8, 8)
    assert torch.equal(model.decode(idx), model.reconstruct(x))
    usage = CodebookUsage(model.quantizer.codebook_size)
    usage.update(idx)
    assert 0 < usage.utilization() <= 1


def test_loss_names_per_quantizer():
    names = {}
    for q in ALL:
        model = model_for(q)
        names[q] = set(model(torch.rand(1, 3, 32, 32) * 2 - 1).losses) - {"total", "rec"}
    assert names["vq"] == names["simvq"] == names["movq"] == names["lc"] == {"codebook", "commit"}
    assert names["ema"] == {"commit"}
    assert names["softvq"] == set() and names["fsq"] == set()
    assert names["lfq"] == {"commit", "entropy"}
    assert names["vlq"] == {"rcs", "dcr", "kl"}


# ---------------------------------------------------------------- VQGAN-EMA


def test_ema_update_on_a_hand_made_batch():
    model = model_for("ema", ["model.codebook_size=3", "model.latent_dim=2", "model.ema_codebook_decay=0.5",
                              "model.ema_eps=0.1"])
    q = model.quantizer
    e0 = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    with torch.no_grad():
        q.codebook.embedding.copy_(torch.tensor(e0))
        q.embed_sum.copy_(torch.tensor(e0))
        q.cluster_size.zero_()
    z = np.array([[1.0, 1.0], [9.0, 1.0], [11.0, -1.0], [-1.0, 0.0]])  # codes 0, 1, 1, 0
    zt = torch.tensor(z, dtype=torch.float32).T.reshape(1, 2, 2, 2)  # (B, d, h, w)
    q.train()
    with torch.enable_grad():
        out = q(zt)
    assert out.indices.flatten().tolist() == [0, 1, 1, 0]
    counts = np.array([2.0, 2.0, 0.0])
    sums = np.array([[0.0, 1.0], [20.0, 0.0], [0.0, 0.0]])
    n = 0.5 * 0 + 0.5 * counts  # cluster sizes after one update
    m = 0.5 * e0 + 0.5 * sums
    smoothed = (n + 0.1) / (n.sum() + 3 * 0.1) * n.sum()
    np.testing.assert_allclose(q.cluster_size.numpy(), n, rtol=1e-6)
    np.testing.assert_allclose(q.codebook.embedding.numpy(), m / smoothed[:, None], rtol=1e-5)
    assert not q.codebook.embedding.requires_grad
    q.eval()
    before = q.codebook.embedding.clone()
    with torch.no_grad():
        q(zt)
    assert torch.equal(before, q.codebook.embedding)  # no update in evaluation


# ---------------------------------------------------------------- SimVQ, LC: frozen parts


@pytest.mark.parametrize("quantizer", ["simvq", "lc", "ema"])
def test_frozen_parts_stay_frozen_after_an_optimizer_step(quantizer):
    model = model_for(quantizer)
    q = model.quantizer
    frozen = q.codebook.embedding.detach().clone()
    params = [p for p in model.parameters() if p.requires_grad]
    assert all(p is not q.codebook.embedding for p in params)
    opt = torch.optim.Adam(params, lr=1e-2)
    model.eval()  # no EMA update: only the optimizer acts
    with torch.enable_grad():
        out = model(torch.rand(2, 3, 32, 32) * 2 - 1)
    out.losses["total"].backward()
    proj = [p.detach().clone() for p in q.codebook.projection.parameters()]
    opt.step()
    assert torch.equal(frozen, q.codebook.embedding)
    if quantizer in ("simvq", "lc"):
        assert any(not torch.equal(a, b) for a, b in zip(proj, q.codebook.projection.parameters()))


def test_simvq_effective_codebook_is_basis_times_linear():
    q = model_for("simvq").quantizer
    basis = q.codebook.embedding.detach().numpy().astype(np.float64)
    w = q.codebook.projection.weight.detach().numpy().astype(np.float64)
    b = q.codebook.projection.bias.detach().numpy().astype(np.float64)
    np.testing.assert_allclose(q.codebook.vectors().detach().numpy(), basis @ w.T + b, rtol=1e-5, atol=1e-6)
    assert abs(basis.std() - 16**-0.5) < 0.02  # N(0, d^-1/2)
    idx = torch.tensor([[[3, 7], [0, 255]]])
    np.testing.assert_allclose(q.lookup(idx)[0, :, 0, 1].detach().numpy(), (basis @ w.T + b)[7], rtol=1e-5)


# ---------------------------------------------------------------- SoftVQ


def test_soft_assignment_probabilities_and_training_output():
    q = model_for("softvq", ["model.softvq_tau=0.7"]).quantizer
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(1, 16, 2, 3, generator=gen)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 16).double().numpy()
    e = q.codebook.vectors().detach().double().numpy()
    p_ref = softmax(-cdist(flat, e, "sqeuclidean") / 0.7, axis=1)
    p = q.probabilities(torch.tensor(flat, dtype=torch.float32), torch.tensor(e, dtype=torch.float32))
    np.testing.assert_allclose(p.numpy(), p_ref, rtol=1e-3, atol=1e-6)
    q.train()
    with torch.enable_grad():
        out = q(z)
    zq = out.z_q.permute(0, 2, 3, 1).reshape(-1, 16).detach().double().numpy()
    np.testing.assert_allclose(zq, p_ref @ e, rtol=1e-3, atol=1e-5)
    assert out.indices.flatten().tolist() == cdist(flat, e, "sqeuclidean").argmin(1).tolist()


# ---------------------------------------------------------------- FSQ


def test_fsq_grid_and_round_trip():
    config = load_config("fsq", ["model.fsq_levels=[5,4,3]"])
    assert config.model.latent_dim == 3 and config.model.codebook_size == 60
    q = vaevq.VAEVQ(config).quantizer
    ids = torch.arange(60).view(1, 60, 1)
    codes = q.lookup(ids)[0, :, :, 0].T.numpy()  # (60, 3)
    grids = [np.arange(level) - level // 2 for level in (5, 4, 3)]
    expected = {tuple(np.array(c) / np.array([2, 2, 1])) for c in itertools.product(*grids)}
    assert {tuple(c) for c in codes.tolist()} == expected and len(expected) == 60
    # bound(z) maps to the grid: z far out in every direction reaches the extreme levels
    z = torch.tensor([-50.0, 50.0, 0.0]).view(1, 3, 1, 1)
    out = q(z)
    np.testing.assert_allclose(out.z_q.flatten().numpy(), [-1.0, 0.5, 0.0])  # (-2/2, +1/2 for even L=4, 0)
    # round trip: ids -> codes -> (inverse of the bound) -> quantizer -> the same ids
    half = torch.tensor([2.0, 2.0, 1.0]).view(1, 3, 1, 1)
    levels = torch.tensor([5.0, 4.0, 3.0]).view(1, 3, 1, 1)
    target = q.lookup(ids) * half  # integers on the grid
    h = (levels - 1) * (1 + 1e-3) / 2
    offset = torch.where(levels % 2 == 0, 0.5, 0.0)
    z_back = torch.atanh((target + offset) / h) - torch.atanh(offset / h)
    assert torch.equal(q(z_back).indices, ids)


def test_fsq_default_levels_and_bad_levels():
    assert load_config("fsq", ["model.codebook_size=16384"]).model.fsq_levels == (8, 8, 8, 6, 5)
    with pytest.raises(ConfigError, match="no default FSQ levels"):
        load_config("fsq", ["model.codebook_size=1000"])
    with pytest.raises(ConfigError, match="power-of-two"):
        load_config("lfq", ["model.codebook_size=1000"])


# ---------------------------------------------------------------- LFQ


def test_lfq_sign_code_and_entropy_by_brute_force():
    config = load_config("lfq", SMALL + ["model.codebook_size=8", "model.lfq_temperature=0.5",
                                         "model.lfq_diversity=0.7", "model.lfq_entropy_weight=0.1"])
    q = vaevq.VAEVQ(config).quantizer
    z = torch.tensor([[0.3, -1.2, 0.1], [-0.4, 0.5, 0.9], [1.0, 1.0, -2.0], [-0.2, -0.3, -0.1]])
    zt = z.T.reshape(1, 3, 2, 2)
    with torch.enable_grad():
        out = q(zt)
    # the quantizer's terms are unweighted; the loss module weighs them
    losses = weighted_terms(config, QUANTIZERS["lfq"].weights, out.terms)
    bits = (z.numpy() > 0).astype(int)
    assert out.indices.flatten().tolist() == (bits * [1, 2, 4]).sum(1).tolist()
    assert torch.equal(q.lookup(out.indices), torch.where(zt > 0, 1.0, -1.0))
    codes = np.array([[1 if (k >> i) & 1 else -1 for i in range(3)] for k in range(8)], dtype=float)
    p = softmax(2 * z.double().numpy() @ codes.T / 0.5, axis=1)
    per_token = -(p * np.log(p)).sum(1).mean()
    mean_p = p.mean(0)
    batch = -(mean_p * np.log(mean_p)).sum()
    expected = 0.1 * (per_token - 0.7 * batch)
    assert losses["entropy"].item() == pytest.approx(expected, rel=1e-5)
    commit = 0.25 * ((z.numpy() - np.where(z.numpy() > 0, 1, -1)) ** 2).mean()
    assert losses["commit"].item() == pytest.approx(commit, rel=1e-5)


# ---------------------------------------------------------------- Mo-VQGAN


def test_movq_decoder_is_modulated_by_zq():
    model = model_for("movq")
    assert model.decoder.modulated
    from vaevq.models.vqgan import SpatialNorm

    norms = [m for m in model.decoder.modules() if isinstance(m, SpatialNorm)]
    assert len(norms) >= 5
    h = torch.randn(1, 32, 8, 8)
    zq_a, zq_b = torch.randn(1, 16, 8, 8), torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        a, b = model.decoder(h, zq=zq_a), model.decoder(h, zq=zq_b)
    assert not torch.allclose(a, b)  # same features, different z_q: different image
    with pytest.raises(ValueError, match="zq"):
        model.decoder(h)
    assert not model_for("vq").decoder.modulated


# ---------------------------------------------------------------- VQGAN-LC


def test_kmeans_recovers_separated_clusters():
    from vaevq.quantizers.lc import kmeans

    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(6, 5, generator=gen) * 20
    x = torch.cat([c + torch.randn(200, 5, generator=gen) for c in centers])
    found = kmeans(x, 6, iters=30)
    d = torch.cdist(found, centers)
    assert sorted(d.argmin(1).tolist()) == list(range(6)) and d.min(1).values.max() < 0.5


def test_lc_codebook_from_a_custom_module_and_from_a_feature_file(tmp_path):
    model = model_for("lc", ["model.lc_max_features=400", "model.codebook_size=16"])
    q = model.quantizer
    assert q.needs_initialization()
    source = torch.nn.Conv2d(3, q.feature_dim, 4, stride=4)  # any module: (B, F, h, w)
    images = [torch.rand(4, 3, 32, 32) * 2 - 1 for _ in range(3)]
    q.initialize_from(source, images)
    assert not q.needs_initialization()
    feats = torch.cat([source(x).detach().flatten(2).transpose(1, 2).reshape(-1, q.feature_dim) for x in images])
    dist = torch.cdist(q.codebook.embedding, feats).min(1).values
    assert dist.max() < torch.cdist(feats, feats).max()  # centroids lie among the features
    # a feature file (N, F) gives the feature dimension and the codebook
    file_feats = torch.randn(300, 24)
    torch.save(file_feats, tmp_path / "f.pt")
    other = vaevq.VAEVQ.from_preset("tiny", SMALL + ["model.quantizer=lc", "model.codebook_size=16",
                                                     f"model.lc_features={tmp_path / 'f.pt'}"]).quantizer
    assert other.feature_dim == 24
    other.initialize_from(str(tmp_path / "f.pt"), [])
    assert other.codebook.vectors().shape == (16, 16)
    with pytest.raises(ConfigError, match="nope.pt does not exist"):
        vaevq.VAEVQ.from_preset("tiny", SMALL + ["model.quantizer=lc", "model.lc_features=/nope.pt"])
    assert load_config("tiny", ["model.quantizer=lc", f"model.lc_features={tmp_path / 'f.pt'}"]
                       ).model.lc_feature_dim == 24  # recorded, so a trained model loads without the file


def test_effnet_lite0_weights_load_and_classify_real_photos():
    from skimage import data
    from skimage.transform import resize

    from vaevq.features import EfficientNetLite0

    net = EfficientNetLite0.pretrained()
    photos = [data.chelsea(), data.coffee()]
    x = torch.stack([torch.from_numpy(resize(p, (224, 224), anti_aliasing=True)).permute(2, 0, 1).float()
                     for p in photos]) * 2 - 1
    with torch.no_grad():
        top = net(x).argmax(1).tolist()
    assert top[0] in range(281, 286)  # a cat (tabby, tiger, Persian, Siamese, Egyptian)
    assert top[1] in (967, 968)  # espresso, cup
    assert net.pooled(x).shape == (2, 1280) and net.block_features(x).shape == (2, 320, 7, 7)


# ---------------------------------------------------------------- the ablation presets


def test_ablation_presets_differ_only_in_quantizer_and_loss_terms():
    dicts = {n: load_config(n).to_dict() for n in ("m0", "m1", "m2", "m3", "vaevq")}
    for name, d in dicts.items():
        for section in ("data", "train", "eval", "gan"):
            assert d[section] == dicts["vaevq"][section], (name, section)
        diff = {k for k in d["model"] if d["model"][k] != dicts["vaevq"]["model"][k]}
        assert diff <= {"quantizer"}, (name, diff)
    terms = {}
    for name in dicts:
        model = vaevq.VAEVQ.from_preset(name)
        terms[name] = set(model(torch.rand(1, 3, 32, 32) * 2 - 1).losses) - {"total"}
    assert terms["m0"] == {"rec", "codebook", "commit"}
    assert terms["m1"] == {"rec", "codebook", "commit", "kl"}
    assert terms["m2"] == {"rec", "rcs", "kl"}
    assert terms["m3"] == {"rec", "codebook", "commit", "dcr", "kl"}
    assert terms["vaevq"] == {"rec", "rcs", "dcr", "kl"}
    assert load_config("vaevq").loss == load_config("tiny").loss


def test_fsq_codebook_size_follows_the_levels():
    model = vaevq.VAEVQ.from_preset("fsq")
    assert model.quantizer.codebook_size == math.prod((8, 5, 5, 5)) == model.config.model.codebook_size
