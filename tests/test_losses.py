"""VAEVQ loss terms (SPEC §1) against independent references.

Every expected value here comes from numpy / scipy / torch.distributions or from a formula
derived by hand, never from earlier output of vaevq itself.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from vaevq.losses import dcr_loss, kl_loss, rcs_loss, rcs_loss_released

# ----------------------------------------------------------------------------- references


def dcr_reference_sqrtm(codebook: np.ndarray) -> float:
    """||mu||^2 + Tr(S) - 2 Tr(sqrtm(S)) in float64, S the unbiased covariance (np.cov)."""
    e = np.asarray(codebook, dtype=np.float64)
    mu = e.mean(0)
    s = np.atleast_2d(np.cov(e, rowvar=False))
    return float(mu @ mu + np.trace(s) - 2.0 * np.trace(scipy.linalg.sqrtm(s)).real)


def dcr_reference_svd(codebook: np.ndarray) -> float:
    """Same quantity; Tr(S^1/2) = sum of singular values of the centered rows / sqrt(K-1).

    Needs no matrix square root, so it stays exact for singular covariances.
    """
    e = np.asarray(codebook, dtype=np.float64)
    k = e.shape[0]
    mu = e.mean(0)
    c = e - mu
    sv = np.linalg.svd(c / math.sqrt(k - 1), compute_uv=False)
    return float(mu @ mu + (sv**2).sum() - 2.0 * sv.sum())


def w2_squared(m1, s1, m2, s2) -> float:
    """General closed-form squared 2-Wasserstein distance between two Gaussians."""
    r2 = scipy.linalg.sqrtm(s2).real
    cross = scipy.linalg.sqrtm(r2 @ s1 @ r2).real
    diff = np.asarray(m1) - np.asarray(m2)
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(cross))


def dcr_grad_reference(codebook: np.ndarray) -> np.ndarray:
    """Hand-derived gradient of ||mu||^2 + Tr(S) - 2 Tr(S^1/2) w.r.t. the rows (float64).

    With C = E - mu and S = C^T C / (K-1): d/dS [Tr S - 2 Tr S^1/2] = I - S^{-1/2}, and
    dS = (dC^T C + C^T dC)/(K-1) with sum_k C_k = 0, so
        dL/dE = 2 mu / K  (every row)  +  2/(K-1) C (I - S^{-1/2}).
    """
    e = np.asarray(codebook, dtype=np.float64)
    k, d = e.shape
    mu = e.mean(0)
    c = e - mu
    s = c.T @ c / (k - 1)
    lam, v = np.linalg.eigh(s)
    s_inv_sqrt = (v / np.sqrt(lam)) @ v.T
    return 2.0 * mu[None, :] / k + 2.0 / (k - 1) * c @ (np.eye(d) - s_inv_sqrt)


def dcr_value_eig(e: np.ndarray) -> float:
    """Value from np.cov + eigvalsh (used for finite differences: accurate to ~1e-16)."""
    mu = e.mean(0)
    s = np.cov(e, rowvar=False)
    lam = np.linalg.eigvalsh(s)
    return float(mu @ mu + np.trace(s) - 2.0 * np.sqrt(np.clip(lam, 0.0, None)).sum())


def _grad(codebook: torch.Tensor) -> torch.Tensor:
    e = codebook.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(dcr_loss(e), e)
    return g


def _random_codebook(rng: np.random.Generator, k: int, d: int) -> np.ndarray:
    """Nonzero mean, anisotropic scales and a random rotation."""
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    scales = np.exp(rng.uniform(-1.5, 1.5, size=d))
    mean = rng.normal(0.0, 2.0, size=d)
    return mean + (rng.standard_normal((k, d)) * scales) @ q.T


# ----------------------------------------------------------------------------- DCR: value


DCR_SHAPES = [(2, 1), (3, 2), (12, 4), (50, 8), (257, 16), (1000, 64), (4096, 32)]


@pytest.mark.parametrize("k,d", DCR_SHAPES)
def test_dcr_matches_scipy_sqrtm(k, d):
    rng = np.random.default_rng(1000 * k + d)
    e = _random_codebook(rng, k, d)
    if k <= d:  # singular covariance: sqrtm is unreliable there, use the SVD form
        expected = dcr_reference_svd(e)
    else:
        expected = dcr_reference_sqrtm(e)
        assert dcr_reference_svd(e) == pytest.approx(expected, rel=1e-9, abs=1e-9)
    got = dcr_loss(torch.from_numpy(e))
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(expected, rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("k,d", [(12, 4), (100, 8), (500, 32)])
def test_dcr_matches_scipy_sqrtm_float32_input(k, d):
    rng = np.random.default_rng(7 * k + d)
    e32 = _random_codebook(rng, k, d).astype(np.float32)
    expected = dcr_reference_sqrtm(e32.astype(np.float64))
    got = dcr_loss(torch.from_numpy(e32))
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("k,d", [(20, 3), (64, 8), (300, 16)])
def test_dcr_is_w2_squared_to_standard_normal_minus_d(k, d):
    rng = np.random.default_rng(31 * k + d)
    e = _random_codebook(rng, k, d)
    mu = e.mean(0)
    s = np.cov(e, rowvar=False)
    expected = w2_squared(mu, s, np.zeros(d), np.eye(d)) - d
    assert dcr_loss(torch.from_numpy(e)).item() == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_dcr_is_minus_d_for_codebook_with_standard_moments():
    """A codebook whose sample mean is 0 and sample covariance is exactly I has W2 = 0."""
    rng = np.random.default_rng(3)
    k, d = 200, 6
    x = rng.standard_normal((k, d))
    x -= x.mean(0)
    s = np.cov(x, rowvar=False)
    w = np.linalg.cholesky(np.linalg.inv(s))  # whitening: cov(x w) = w^T s w = I
    e = x @ w
    np.testing.assert_allclose(np.cov(e, rowvar=False), np.eye(d), atol=1e-12)
    assert dcr_loss(torch.from_numpy(e)).item() == pytest.approx(-d, abs=1e-9)


def test_dcr_rejects_bad_shapes():
    with pytest.raises(ValueError):
        dcr_loss(torch.zeros(8))
    with pytest.raises(ValueError):
        dcr_loss(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError):
        dcr_loss(torch.zeros(1, 4))  # K = 1: no unbiased covariance


# ----------------------------------------------------------------------------- DCR: gradients


def test_dcr_gradcheck_float64():
    rng = np.random.default_rng(12)
    e = torch.from_numpy(_random_codebook(rng, 12, 4)).requires_grad_(True)
    assert torch.autograd.gradcheck(dcr_loss, (e,), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("k,d", [(12, 4), (40, 7), (300, 16)])
def test_dcr_gradient_matches_hand_derivation(k, d):
    rng = np.random.default_rng(5 * k + d)
    e = _random_codebook(rng, k, d)
    expected = dcr_grad_reference(e)
    # the hand formula itself, checked by central differences of an independent numpy value
    for r, c in [(0, 0), (k - 1, d - 1), (k // 2, d // 2)]:
        h = 1e-6
        ep, em = e.copy(), e.copy()
        ep[r, c] += h
        em[r, c] -= h
        fd = (dcr_value_eig(ep) - dcr_value_eig(em)) / (2 * h)
        assert fd == pytest.approx(expected[r, c], rel=1e-5, abs=1e-7)
    got = _grad(torch.from_numpy(e)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-10)


def test_dcr_gradient_finite_for_isotropic_codebook_with_repeated_eigenvalues():
    d, scale = 5, 0.7
    eye = np.eye(d)
    e = np.concatenate([scale * eye, -scale * eye])  # rows +-scale e_i: cov = c I exactly
    k = e.shape[0]
    lam = 2 * scale**2 / (k - 1)
    np.testing.assert_allclose(np.cov(e, rowvar=False), lam * eye, atol=1e-15)
    expected_value = d * lam - 2 * d * math.sqrt(lam)
    expected_grad = 2.0 / (k - 1) * e * (1.0 - 1.0 / math.sqrt(lam))  # mean is 0
    for dtype, tol in [(torch.float64, 1e-10), (torch.float32, 1e-5)]:
        t = torch.tensor(e, dtype=dtype)
        assert dcr_loss(t).item() == pytest.approx(expected_value, rel=tol)
        g = _grad(t)
        assert torch.isfinite(g).all()
        np.testing.assert_allclose(g.double().numpy(), expected_grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dcr_gradient_finite_for_singular_covariance_k_less_than_d(dtype):
    rng = np.random.default_rng(4)
    e = rng.standard_normal((3, 8)) + 1.0  # rank-2 covariance in 8 dimensions
    t = torch.tensor(e, dtype=dtype)
    assert dcr_loss(t).item() == pytest.approx(dcr_reference_svd(e), rel=1e-5)
    g = _grad(t)
    assert torch.isfinite(g).all()
    assert g.abs().max() > 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dcr_gradient_finite_when_codes_lie_on_a_line(dtype):
    rng = np.random.default_rng(5)
    k, d = 50, 6
    direction = rng.standard_normal(d)
    direction /= np.linalg.norm(direction)
    offset = rng.standard_normal(d)
    t_along = rng.standard_normal(k)
    e = offset + t_along[:, None] * direction  # rank-1 covariance
    t = torch.tensor(e, dtype=dtype)
    value = dcr_loss(t)
    assert torch.isfinite(value)
    assert value.item() == pytest.approx(dcr_reference_svd(t.double().numpy()), rel=1e-5)
    g = _grad(t)
    assert torch.isfinite(g).all()
    # on the line the loss is that of the 1-D problem: gradient along the line is known
    centered = t_along - t_along.mean()
    var = centered @ centered / (k - 1)
    mu = e.mean(0)
    expected = 2 * mu / k + (2 / (k - 1)) * (1 - 1 / math.sqrt(var)) * centered[:, None] * direction
    along = g.double().numpy() @ direction
    np.testing.assert_allclose(along, expected @ direction, rtol=1e-4, atol=1e-6)


def test_dcr_gradient_finite_for_identical_codes():
    e = torch.tensor([[1.0, -2.0, 0.5]]).repeat(10, 1)  # covariance exactly zero
    assert dcr_loss(e).item() == pytest.approx(1.0 + 4.0 + 0.25, rel=1e-6)
    g = _grad(e)
    assert torch.isfinite(g).all()


def test_dcr_gradient_not_killed_at_taming_init():
    """uniform(-1/K, 1/K), K = 16384, d = 64, float32: eigenvalues about 1/(3K^2) ~ 1.2e-9.

    SPEC §1: an absolute eigenvalue floor such as 1e-8 would clamp all of them and shrink the
    gradient norm from ~0.125 to ~4e-6.
    """
    k, d = 16384, 64
    gen = torch.Generator().manual_seed(0)
    e = (torch.rand(k, d, generator=gen) * 2 - 1) / k  # float32, uniform(-1/K, 1/K)
    e64 = e.double().numpy()
    lam = np.linalg.eigvalsh(np.cov(e64, rowvar=False))
    assert lam.max() < 2e-9  # the regime the SPEC describes

    value = dcr_loss(e)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(dcr_reference_sqrtm(e64), rel=1e-5)

    g = _grad(e)
    assert g.dtype == torch.float32
    assert torch.isfinite(g).all()
    expected = dcr_grad_reference(e64)
    expected_norm = float(np.linalg.norm(expected))
    assert 0.05 < expected_norm < 0.5  # ~0.125, the SPEC's number
    assert float(g.double().norm()) == pytest.approx(expected_norm, rel=1e-4)
    assert np.linalg.norm(g.double().numpy() - expected) < 1e-4 * expected_norm

    # and the hand formula against float64 central differences on a few coordinates
    for r, c in [(0, 0), (123, 7), (k - 1, d - 1)]:
        h = 1e-9
        ep, em = e64.copy(), e64.copy()
        ep[r, c] += h
        em[r, c] -= h
        fd = (dcr_value_eig(ep) - dcr_value_eig(em)) / (2 * h)
        assert fd == pytest.approx(expected[r, c], rel=1e-3)
        assert g[r, c].item() == pytest.approx(fd, rel=1e-3)


@pytest.mark.parametrize("d", [4, 16, 64])
def test_dcr_nearly_collapsed_float32_codebook(d):
    """All rows = c + 1e-4 noise with |c| = 10, float32: no loss to cancellation."""
    rng = np.random.default_rng(d)
    k = 1024
    c = rng.standard_normal(d)
    c *= 10.0 / np.linalg.norm(c)
    e32 = (c + 1e-4 * rng.standard_normal((k, d))).astype(np.float32)
    e64 = e32.astype(np.float64)  # the exact same numbers, in float64
    expected = dcr_reference_sqrtm(e64)
    got = dcr_loss(torch.from_numpy(e32))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    g = _grad(torch.from_numpy(e32))
    expected_grad = dcr_grad_reference(e64)
    assert np.linalg.norm(g.double().numpy() - expected_grad) < 1e-5 * np.linalg.norm(
        expected_grad
    )


# ----------------------------------------------------------------------------- RCS


def _rcs_inputs(seed: int, shape=(2, 3, 2, 3), dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    z_q = torch.randn(shape, generator=gen, dtype=dtype)
    mu = torch.randn(shape, generator=gen, dtype=dtype)
    logvar = torch.randn(shape, generator=gen, dtype=dtype) * 1.5
    return z_q, mu, logvar


def _rcs_by_loops(z_q, mu, logvar) -> float:
    zq, m, lv = (t.detach().double().numpy() for t in (z_q, mu, logvar))
    b_n, d_n, h_n, w_n = zq.shape
    total = 0.0
    for b in range(b_n):
        for i in range(h_n):
            for j in range(w_n):
                s = 0.0
                for c in range(d_n):
                    sigma = math.exp(0.5 * lv[b, c, i, j])
                    s += ((zq[b, c, i, j] - m[b, c, i, j]) / sigma) ** 2
                total += 0.5 * s
    return total / (b_n * h_n * w_n)


@pytest.mark.parametrize("shape", [(2, 3, 2, 3), (1, 4, 1, 1), (3, 2, 4, 5)])
def test_rcs_matches_loops(shape):
    z_q, mu, logvar = _rcs_inputs(sum(shape), shape)
    assert rcs_loss(z_q, mu, logvar).item() == pytest.approx(
        _rcs_by_loops(z_q, mu, logvar), rel=1e-12
    )
    z32, m32, l32 = (t.float() for t in (z_q, mu, logvar))
    assert rcs_loss(z32, m32, l32).item() == pytest.approx(
        _rcs_by_loops(z32, m32, l32), rel=1e-5
    )


def test_rcs_gradients_sigma_detached():
    z_q, mu, logvar = (t.requires_grad_(True) for t in _rcs_inputs(11))
    loss = rcs_loss(z_q, mu, logvar)
    g_zq, g_mu, g_lv = torch.autograd.grad(loss, (z_q, mu, logvar), allow_unused=True)
    assert g_lv is None or torch.count_nonzero(g_lv) == 0

    b_n, _, h_n, w_n = z_q.shape
    zq, m, lv = (t.detach().numpy() for t in (z_q, mu, logvar))
    expected_zq = (zq - m) / np.exp(lv) / (b_n * h_n * w_n)  # d/dz_q of 0.5 (z_q-mu)^2/sigma^2
    np.testing.assert_allclose(g_zq.numpy(), expected_zq, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(g_mu.numpy(), -expected_zq, rtol=1e-12, atol=1e-15)
    assert np.abs(expected_zq).min() > 0


def test_rcs_loss_released_is_half_mean_eps_squared_and_passes_logvar_gradient():
    z_q, mu, logvar = (t.requires_grad_(True) for t in _rcs_inputs(13, (2, 4, 3, 3)))
    zq, m, lv = (t.detach().numpy() for t in (z_q, mu, logvar))
    eps = (zq - m) / np.exp(0.5 * lv)
    loss = rcs_loss_released(z_q, mu, logvar)
    assert loss.item() == pytest.approx(0.5 * float(np.mean(eps**2)), rel=1e-12)
    # it differs from the paper's form by the factor d (sum over d vs mean over d)
    d = zq.shape[1]
    assert rcs_loss(z_q, mu, logvar).item() == pytest.approx(d * loss.item(), rel=1e-12)

    g_zq, g_mu, g_lv = torch.autograd.grad(loss, (z_q, mu, logvar))
    n = eps.size
    np.testing.assert_allclose(g_zq.numpy(), eps / np.exp(0.5 * lv) / n, rtol=1e-12)
    np.testing.assert_allclose(g_mu.numpy(), -eps / np.exp(0.5 * lv) / n, rtol=1e-12)
    # d/dlogvar of 0.5 (z_q-mu)^2 exp(-logvar) / n = -0.5 eps^2 / n
    np.testing.assert_allclose(g_lv.numpy(), -0.5 * eps**2 / n, rtol=1e-12)
    assert torch.count_nonzero(g_lv) == g_lv.numel()


# ----------------------------------------------------------------------------- KL


@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (1, 1, 1, 1), (5, 8, 2, 3)])
def test_kl_matches_torch_distributions(shape):
    gen = torch.Generator().manual_seed(sum(shape))
    mu = torch.randn(shape, generator=gen, dtype=torch.float64) * 2
    logvar = torch.randn(shape, generator=gen, dtype=torch.float64) * 2
    sigma = torch.exp(0.5 * logvar)
    kl = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, sigma), torch.distributions.Normal(0.0, 1.0)
    )
    expected = kl.sum(dim=(1, 2, 3)).mean().item()
    got = kl_loss(mu, logvar)
    assert got.item() == pytest.approx(expected, rel=1e-12)

    m, lv = mu.numpy(), logvar.numpy()
    per_image = 0.5 * (m**2 + np.exp(lv) - 1.0 - lv).reshape(shape[0], -1).sum(1)
    assert got.item() == pytest.approx(float(per_image.mean()), rel=1e-12)


def test_kl_is_zero_for_standard_normal_posterior():
    z = torch.zeros(3, 4, 2, 2)
    assert kl_loss(z, z).item() == 0.0


# ----------------------------------------------------------------------------- shapes


def test_shape_mismatch_raises():
    a = torch.zeros(2, 3, 4, 4)
    b = torch.zeros(2, 3, 4, 5)
    c = torch.zeros(2, 4, 4, 4)
    for fn in (rcs_loss, rcs_loss_released):
        with pytest.raises(ValueError):
            fn(a, a, b)
        with pytest.raises(ValueError):
            fn(a, b, a)
        with pytest.raises(ValueError):
            fn(c, a, a)
    with pytest.raises(ValueError):
        kl_loss(a, b)
    with pytest.raises(ValueError):
        kl_loss(c, a)
