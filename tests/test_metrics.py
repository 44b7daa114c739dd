"""PSNR / SSIM against scikit-image, codebook usage against numpy / scipy (SPEC §4)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage
import scipy.stats
import skimage.data
import skimage.metrics
import skimage.transform
import torch

from vaevq.metrics import CodebookUsage, psnr, ssim

# ----------------------------------------------------------------------------- images


def _photo(name: str, height: int, width: int) -> np.ndarray:
    """A real photo (H, W, C) or (H, W), center-cropped to the aspect ratio, resized, in [-1, 1]."""
    img = getattr(skimage.data, name)().astype(np.float64) / 255.0
    h, w = img.shape[:2]
    if h * width > w * height:  # too tall
        new_h = round(w * height / width)
        top = (h - new_h) // 2
        img = img[top : top + new_h]
    else:
        new_w = round(h * width / height)
        left = (w - new_w) // 2
        img = img[:, left : left + new_w]
    img = skimage.transform.resize(img, (height, width), anti_aliasing=True)
    return img * 2.0 - 1.0


def _distort(img: np.ndarray, rng: np.random.Generator, blur: float, noise: float) -> np.ndarray:
    sigma = (blur, blur, 0) if img.ndim == 3 else blur
    out = scipy.ndimage.gaussian_filter(img, sigma=sigma)
    return out + noise * rng.standard_normal(img.shape)  # may leave [-1, 1]: clamped


def _to_batch(images: list[np.ndarray]) -> torch.Tensor:
    """List of (H, W, C) or (H, W) arrays -> (B, C, H, W) float32 tensor."""
    arr = np.stack([im if im.ndim == 3 else im[..., None] for im in images])
    return torch.from_numpy(arr.astype(np.float32)).permute(0, 3, 1, 2).contiguous()


def _uint8_hwc(batch: torch.Tensor) -> np.ndarray:
    """The conversion the brief fixes: ((x.clamp(-1,1)+1)*127.5).round() -> uint8, (B, H, W, C)."""
    u8 = ((batch.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return u8.permute(0, 2, 3, 1).numpy()


def _cases():
    rng = np.random.default_rng(0)
    cases = {}
    # colour, square 64x64
    xs = [_photo("astronaut", 64, 64), _photo("chelsea", 64, 64)]
    ys = [_distort(xs[0], rng, 1.0, 0.05), _distort(xs[1], rng, 0.0, 0.2)]
    cases["rgb-64x64"] = (xs, ys)
    # colour, non-square 48x80
    xs = [_photo("chelsea", 48, 80), _photo("astronaut", 48, 80), _photo("coffee", 48, 80)]
    ys = [_distort(xs[0], rng, 1.5, 0.02), _distort(xs[1], rng, 0.7, 0.1), xs[2] * 0.8 + 0.1]
    cases["rgb-48x80"] = (xs, ys)
    # grayscale, single channel, square and non-square
    xs = [_photo("camera", 64, 64), _photo("moon", 64, 64)]
    ys = [_distort(xs[0], rng, 1.2, 0.03), _distort(xs[1], rng, 0.0, 0.3)]
    cases["gray-64x64"] = (xs, ys)
    xs = [_photo("camera", 40, 56)]
    ys = [_distort(xs[0], rng, 2.0, 0.1)]
    cases["gray-40x56"] = (xs, ys)
    return cases


CASES = _cases()


@pytest.mark.parametrize("case", sorted(CASES))
def test_psnr_matches_skimage(case):
    xs, ys = CASES[case]
    x, y = _to_batch(xs), _to_batch(ys)
    got = psnr(x, y)
    assert got.shape == (len(xs),)
    ux, uy = _uint8_hwc(x), _uint8_hwc(y)
    for i in range(len(xs)):
        expected = skimage.metrics.peak_signal_noise_ratio(ux[i], uy[i], data_range=255)
        assert 5.0 < expected < 60.0  # a real, finite comparison
        assert got[i].item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("case", sorted(CASES))
def test_ssim_matches_skimage(case):
    xs, ys = CASES[case]
    x, y = _to_batch(xs), _to_batch(ys)
    got = ssim(x, y)
    assert got.shape == (len(xs),)
    ux, uy = _uint8_hwc(x), _uint8_hwc(y)
    for i in range(len(xs)):
        kwargs = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                      data_range=255)
        if ux.shape[-1] == 1:
            expected = skimage.metrics.structural_similarity(ux[i, ..., 0], uy[i, ..., 0],
                                                             **kwargs)
        else:
            expected = skimage.metrics.structural_similarity(ux[i], uy[i], channel_axis=-1,
                                                             **kwargs)
        assert 0.0 < expected < 0.999
        assert got[i].item() == pytest.approx(expected, abs=1e-6)


def test_psnr_of_identical_images_is_inf_and_ssim_is_one():
    xs, _ = CASES["rgb-64x64"]
    x = _to_batch(xs)
    assert torch.isinf(psnr(x, x.clone())).all()
    assert psnr(x, x.clone())[0].item() > 0
    np.testing.assert_allclose(ssim(x, x.clone()).numpy(), 1.0, atol=1e-12)


def test_psnr_mixed_batch_identical_and_different():
    xs, ys = CASES["rgb-64x64"]
    x = _to_batch(xs)
    y = _to_batch([xs[0], ys[1]])
    got = psnr(x, y)
    assert math.isinf(got[0].item())
    ux, uy = _uint8_hwc(x), _uint8_hwc(y)
    expected = skimage.metrics.peak_signal_noise_ratio(ux[1], uy[1], data_range=255)
    assert got[1].item() == pytest.approx(expected, abs=1e-6)


def test_psnr_hand_value_for_constant_offset():
    """Every uint8 value differs by exactly 10 -> MSE 100 -> 10 log10(255^2/100)."""
    x = torch.full((1, 3, 16, 16), -0.2)  # uint8: round(0.8 * 127.5) = 102
    y = x + 10 / 127.5
    ux, uy = _uint8_hwc(x), _uint8_hwc(y)
    assert np.all(uy.astype(int) - ux.astype(int) == 10)
    assert psnr(x, y).item() == pytest.approx(10 * math.log10(255**2 / 100), abs=1e-9)


def test_metric_shape_errors():
    a = torch.zeros(2, 3, 16, 16)
    with pytest.raises(ValueError):
        psnr(a, torch.zeros(2, 3, 16, 15))
    with pytest.raises(ValueError):
        ssim(a, torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError):
        psnr(torch.zeros(3, 16, 16), torch.zeros(3, 16, 16))
    with pytest.raises(ValueError):
        ssim(torch.zeros(1, 1, 10, 32), torch.zeros(1, 1, 10, 32))  # smaller than the window


# ----------------------------------------------------------------------------- codebook usage


def _usage_reference(batches: list[np.ndarray], k: int) -> dict[str, float]:
    ids = np.concatenate([b.reshape(-1) for b in batches])
    distinct = np.unique(ids)
    hist = np.bincount(ids, minlength=k)
    return {
        "utilization": distinct.size / k,
        "used": distinct.size,
        "dead": k - distinct.size,
        "perplexity": float(np.exp(scipy.stats.entropy(hist))),  # normalizes hist itself
        "tokens": ids.size,
    }


@pytest.mark.parametrize("k,n_batches,skew", [(16, 3, 0.0), (1000, 5, 1.5), (7, 1, 3.0)])
def test_codebook_usage_matches_numpy(k, n_batches, skew):
    rng = np.random.default_rng(k)
    weights = np.exp(-skew * np.arange(k) / k * 4)
    weights /= weights.sum()
    batches = [rng.choice(k, size=rng.integers(5, 300), p=weights).reshape(-1, 1)
               for _ in range(n_batches)]
    # mixed shapes, like (B, h, w) token grids
    batches.append(rng.choice(k, size=(2, 3, 4), p=weights))
    usage = CodebookUsage(k)
    for b in batches:
        usage.update(torch.from_numpy(b))
    ref = _usage_reference(batches, k)
    assert usage.utilization() == pytest.approx(ref["utilization"], abs=1e-12)
    assert usage.used() == ref["used"]
    assert usage.dead() == ref["dead"]
    assert usage.perplexity() == pytest.approx(ref["perplexity"], rel=1e-12)
    assert usage.total == ref["tokens"]
    summary = usage.summary()
    assert summary["utilization"] == pytest.approx(ref["utilization"], abs=1e-12)
    assert summary["perplexity"] == pytest.approx(ref["perplexity"], rel=1e-12)
    assert summary["used_codes"] == ref["used"]
    assert summary["dead_codes"] == ref["dead"]
    assert summary["tokens"] == ref["tokens"]


def test_codebook_usage_hand_values():
    usage = CodebookUsage(8)
    usage.update(torch.tensor([0, 0, 1, 1]))
    usage.update(torch.tensor([[2, 2], [3, 3]]))
    # 4 codes used equally: utilization 4/8, perplexity exactly 4
    assert usage.utilization() == 0.5
    assert usage.used() == 4 and usage.dead() == 4
    assert usage.perplexity() == pytest.approx(4.0, rel=1e-12)
    usage.update(torch.tensor([], dtype=torch.long))  # an empty batch changes nothing
    assert usage.total == 8


def test_codebook_usage_single_code_has_perplexity_one():
    usage = CodebookUsage(5)
    usage.update(torch.full((10,), 3))
    assert usage.perplexity() == pytest.approx(1.0, abs=1e-12)
    assert usage.utilization() == pytest.approx(0.2)


def test_codebook_usage_empty():
    usage = CodebookUsage(10)
    assert usage.perplexity() == 0.0
    assert usage.utilization() == 0.0
    assert usage.used() == 0 and usage.dead() == 10


@pytest.mark.parametrize("bad", [[0, 1, 10], [-1, 2], [100]])
def test_codebook_usage_out_of_range_raises(bad):
    usage = CodebookUsage(10)
    with pytest.raises(ValueError):
        usage.update(torch.tensor(bad))
    assert usage.total == 0  # nothing was counted


@pytest.mark.parametrize("k", [0, -3])
def test_codebook_usage_rejects_non_positive_size(k):
    with pytest.raises(ValueError):
        CodebookUsage(k)
