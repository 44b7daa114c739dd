"""Generation metrics against hand and numpy computations on made-up features."""

import numpy as np
import pytest
import torch
from scipy.special import softmax
from scipy.stats import entropy

from vaevq.metrics.frechet import frechet_distance
from vaevq.metrics.generation import inception_score, load_reference_stats, precision_recall


def test_inception_score_against_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(100, 7)) * 3
    scores = []
    for part in np.array_split(logits, 10):
        p = softmax(part, axis=1)
        py = p.mean(0)
        scores.append(np.exp(np.mean([entropy(row, py) for row in p])))
    mean, std = inception_score(torch.tensor(logits), splits=10)
    assert mean == pytest.approx(np.mean(scores), rel=1e-9)
    assert std == pytest.approx(np.std(scores), rel=1e-9)
    # limits: confident and uniform over C classes -> C; identical predictions -> 1
    confident = torch.eye(5).repeat(4, 1) * 50
    assert inception_score(confident, splits=2)[0] == pytest.approx(5.0, rel=1e-6)
    assert inception_score(torch.zeros(20, 5), splits=2)[0] == pytest.approx(1.0)


def test_precision_recall_by_brute_force():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(60, 4))
    fake = rng.normal(size=(50, 4)) + np.array([1.5, 0, 0, 0])

    def radii(x, k=3):
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return np.sort(d, axis=1)[:, k]  # column 0 is the point itself

    def coverage(points, centres, r):
        d = np.linalg.norm(points[:, None] - centres[None], axis=-1)
        return float((d <= r[None]).any(1).mean())

    expected = (coverage(fake, real, radii(real)), coverage(real, fake, radii(fake)))
    got = precision_recall(torch.tensor(real), torch.tensor(fake), k=3, block=7)
    assert got == pytest.approx(expected)
    assert 0 < got[0] < 1 and 0 < got[1] < 1
    same = precision_recall(torch.tensor(real), torch.tensor(real))
    assert same == (1.0, 1.0)


def test_reference_statistics_from_an_npz(tmp_path):
    rng = np.random.default_rng(2)
    acts = rng.normal(size=(40, 6))
    mu, sigma = acts.mean(0), np.cov(acts, rowvar=False)
    np.savez(tmp_path / "ref.npz", mu=mu.astype(np.float32), sigma=sigma.astype(np.float32))
    got_mu, got_sigma = load_reference_stats(tmp_path / "ref.npz")
    np.testing.assert_array_equal(got_mu, mu.astype(np.float32).astype(np.float64))
    np.testing.assert_array_equal(got_sigma, sigma.astype(np.float32).astype(np.float64))
    np.savez(tmp_path / "acts.npz", acts)  # only activations: arr_0
    a_mu, a_sigma = load_reference_stats(tmp_path / "acts.npz")
    np.testing.assert_allclose(a_mu, mu)
    np.testing.assert_allclose(a_sigma, sigma)
    # used exactly: the FD against the same statistics is 0, against shifted ones |shift|^2
    assert frechet_distance(a_mu, a_sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(a_mu + 1.0, a_sigma, mu, sigma) == pytest.approx(6.0, rel=1e-6)
    np.savez(tmp_path / "bad.npz", x=acts)
    with pytest.raises(ValueError, match="neither mu/sigma"):
        load_reference_stats(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_reference_stats(tmp_path / "nope.npz")
