"""Frechet distance against scipy's sqrtm formula; streaming statistics against numpy's batch ones."""

import numpy as np
import pytest
import torch
from scipy import linalg

from vaevq.metrics.frechet import GaussianStats, frechet_distance


def scipy_fd(mu1, s1, mu2, s2):
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    covmean = covmean.real
    d = mu1 - mu2
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def random_cov(rng, dim, rank):
    a = rng.standard_normal((dim, rank))
    return a @ a.T / rank


@pytest.mark.parametrize("dim,rank1,rank2", [(8, 8, 8), (16, 40, 40), (12, 5, 12), (10, 3, 4), (64, 64, 20)])
def test_frechet_distance_matches_scipy_sqrtm(dim, rank1, rank2):
    rng = np.random.default_rng(dim * 100 + rank1 + rank2)
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
    s1, s2 = random_cov(rng, dim, rank1), random_cov(rng, dim, rank2)
    ours = frechet_distance(mu1, s1, mu2, s2)
    ref = scipy_fd(mu1, s1, mu2, s2)
    assert ours == pytest.approx(ref, rel=1e-6, abs=1e-6)


def test_identical_sets_give_zero_even_when_singular():
    rng = np.random.default_rng(0)
    mu, s = rng.standard_normal(32), random_cov(rng, 32, 6)  # rank 6 of 32
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-8


def test_streaming_statistics_equal_batch_statistics():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1000, 20)) * 3 + 100.0  # a large offset: cancellation would show
    stats = GaussianStats()
    for chunk in np.array_split(x, [1, 7, 300, 301, 650]):
        stats.update(torch.from_numpy(chunk))
    np.testing.assert_allclose(stats.mean.numpy(), x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.covariance().numpy(), np.cov(x, rowvar=False), rtol=1e-9, atol=1e-9)
    a, b = GaussianStats(), GaussianStats()
    a.update(torch.from_numpy(x[:400]))
    b.update(torch.from_numpy(x[400:]))
    a.merge(b)
    np.testing.assert_allclose(a.covariance().numpy(), np.cov(x, rowvar=False), rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="expected 20"):
        stats.update(torch.zeros(3, 5))


def test_fid_effnet_is_zero_for_identical_sets_and_grows_with_blur():
    from scipy import ndimage
    from skimage import data
    from skimage.transform import resize

    from vaevq.metrics import FrechetDistance

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    tiles = []
    for p in photos:
        img = resize(p, (128, 128), anti_aliasing=True)
        for i in range(0, 128, 64):
            for j in range(0, 128, 64):
                tiles.append(img[i:i + 64, j:j + 64])
    real = torch.tensor(np.stack(tiles)).permute(0, 3, 1, 2).float() * 2 - 1  # 16 tiles

    def blurred(sigma):
        arr = np.stack([ndimage.gaussian_filter(t, sigma=(sigma, sigma, 0)) for t in tiles])
        return torch.tensor(arr).permute(0, 3, 1, 2).float() * 2 - 1

    fd = FrechetDistance("effnet-lite0")
    fd.update(real, real=True)
    fd.update(real, real=False)
    assert abs(fd.compute()) < 1e-6
    values = []
    for sigma in (1.0, 2.0, 4.0):
        fd.fake = GaussianStats()
        fd.update(blurred(sigma), real=False)
        values.append(fd.compute())
    assert values[0] > 0 and values[0] < values[1] < values[2], values
