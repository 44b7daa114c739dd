"""LPIPS: real weights, key layouts, an independent functional reference, weight resolution."""

import functools
import hashlib
import http.server
import sys
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage import data as skdata
from skimage.transform import resize

from vaevq import weights as W
from vaevq.perceptual import LPIPS

HAVE_ST = W.package_file("stlpips_pytorch", "weights/vST0.0/vgg_shift_tolerant.pth") is not None
HAVE_HEADS = W.package_file("lpips", "weights/v0.1/vgg.pth") is not None
needs_st = pytest.mark.skipif(not HAVE_ST, reason="stlpips-pytorch (a vaevq dependency) is not installed")

VGG_CONVS = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
VGG_WIDTHS = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]


@pytest.fixture(autouse=True)
def _isolated_hub(tmp_path, monkeypatch):
    """No test reads or writes the user's hub cache, and nothing goes to the network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("VAEVQ_OFFLINE", raising=False)  # downloads here go to 127.0.0.1 or file://
    monkeypatch.delenv("VAEVQ_LPIPS_WEIGHTS", raising=False)
    monkeypatch.delenv("VAEVQ_STLPIPS_WEIGHTS", raising=False)
    monkeypatch.delenv("VAEVQ_VGG16_WEIGHTS", raising=False)


@functools.lru_cache(maxsize=1)
def st_lpips() -> LPIPS:
    return LPIPS("vgg-shift-tolerant", download=False)


def photo(size=64) -> torch.Tensor:
    img = resize(skdata.chelsea(), (size, size), anti_aliasing=True)  # float in [0, 1]
    return torch.from_numpy(img).permute(2, 0, 1).float().unsqueeze(0) * 2 - 1


# ---------------------------------------------------------------- an independent reference


def reference_lpips(state, x, y, anti_aliased):
    """LPIPS written out with functional ops from a state dict in the LPIPS file layout."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    blur = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0

    def trunk(h):
        h = (h - shift) / scale
        outs, index = [], 0
        blocks = [2, 2, 3, 3, 3]
        for b, n_conv in enumerate(blocks):
            if b > 0:  # pooling between blocks
                if anti_aliased:
                    h = F.max_pool2d(h, 2, stride=1)
                    h = F.pad(h, (2, 2, 2, 2), mode="reflect")
                    c = h.shape[1]
                    h = F.conv2d(h, blur.expand(c, 1, 3, 3), stride=2, groups=c)
                else:
                    h = F.max_pool2d(h, 2, stride=2)
            for _ in range(n_conv):
                h = F.relu(F.conv2d(h, state[f"conv{index}.weight"], state[f"conv{index}.bias"], padding=1))
                index += 1
            outs.append(h)
        return outs

    total = 0
    for k, (a, b) in enumerate(zip(trunk(x), trunk(y))):
        a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        total = total + ((a - b) ** 2 * state[f"lin{k}"].view(1, -1, 1, 1)).sum(1).mean(dim=(1, 2))
    return total


def st_file_as_reference_state():
    path = W.package_file("stlpips_pytorch", "weights/vST0.0/vgg_shift_tolerant.pth")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    convs = [k[: -len(".weight")] for k in raw if k.startswith("net.") and k.endswith(".weight")]
    state = {}
    for i, name in enumerate(convs):
        state[f"conv{i}.weight"], state[f"conv{i}.bias"] = raw[f"{name}.weight"], raw[f"{name}.bias"]
    for k in range(5):
        state[f"lin{k}"] = raw[f"lin{k}.model.1.weight"].flatten()
    return state


def torchvision_vgg16_state(seed=0):
    """A state dict with exactly torchvision's VGG16 key names and shapes (random values)."""
    gen = torch.Generator().manual_seed(seed)
    state, c = {}, 3
    for i, width in zip(VGG_CONVS, VGG_WIDTHS):
        fan_in = c * 9
        state[f"features.{i}.weight"] = torch.randn(width, c, 3, 3, generator=gen) * (2 / fan_in) ** 0.5
        state[f"features.{i}.bias"] = torch.randn(width, generator=gen) * 0.01
        c = width
    for i, (o, n) in zip((0, 3, 6), ((4096, 25088), (4096, 4096), (1000, 4096))):
        state[f"classifier.{i}.weight"] = torch.zeros(o, n)
        state[f"classifier.{i}.bias"] = torch.zeros(o)
    return state


def lpips_heads_state(seed=1):
    if HAVE_HEADS:  # the real LPIPS v0.1 heads from the lpips wheel
        return torch.load(W.package_file("lpips", "weights/v0.1/vgg.pth"), map_location="cpu", weights_only=True)
    gen = torch.Generator().manual_seed(seed)
    return {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=gen)
            for k, c in enumerate([64, 128, 256, 512, 512])}


# ---------------------------------------------------------------- the shift-tolerant network


@needs_st
def test_st_lpips_matches_functional_reference():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 48, 40, generator=gen) * 2 - 1
    y = (x + 0.2 * torch.randn(x.shape, generator=gen)).clamp(-1, 1)
    with torch.no_grad():
        ours = st_lpips()(x, y)
        ref = reference_lpips(st_file_as_reference_state(), x, y, anti_aliased=True)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6)


@needs_st
def test_distance_zero_for_identical_and_monotone_in_blur_and_noise():
    x = photo(64)
    lp = st_lpips()
    with torch.no_grad():
        assert lp(x, x).item() == 0.0
        img = (x[0].permute(1, 2, 0).numpy() + 1) / 2
        blurred = []
        for sigma in (0.5, 1.0, 2.0, 3.0):
            b = ndimage.gaussian_filter(img, sigma=(sigma, sigma, 0))
            blurred.append(torch.from_numpy(b).permute(2, 0, 1).unsqueeze(0).float() * 2 - 1)
        d_blur = [lp(x, b).item() for b in blurred]
        rng = np.random.default_rng(0)
        noise = torch.from_numpy(rng.standard_normal(x.shape)).float()
        d_noise = [lp(x, (x + s * noise).clamp(-1, 1)).item() for s in (0.02, 0.05, 0.1, 0.2)]
    assert all(a < b for a, b in zip(d_blur, d_blur[1:])), d_blur
    assert all(a < b for a, b in zip(d_noise, d_noise[1:])), d_noise
    assert d_blur[0] > 0 and d_noise[0] > 0


@needs_st
def test_gradients_reach_the_input_and_not_the_network():
    lp = st_lpips()
    x = photo(32).repeat(2, 1, 1, 1)
    y = (x + 0.1 * torch.randn(x.shape)).clamp(-1, 1).requires_grad_(True)
    d = lp(x, y)
    assert d.shape == (2,)
    d.sum().backward()
    assert y.grad is not None and torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in lp.parameters())
    lp.train()
    assert not lp.training  # dropout in the heads never switches on


@needs_st
def test_st_weights_found_in_the_installed_package_without_importing_it():
    for name in [m for m in sys.modules if m.startswith(("stlpips_pytorch", "lpips", "torchvision"))]:
        del sys.modules[name]
    lp = LPIPS("vgg-shift-tolerant", download=False)
    assert "stlpips_pytorch" in lp.sources[0]
    assert not any(m.startswith(("stlpips_pytorch", "lpips", "torchvision")) for m in sys.modules)


# ---------------------------------------------------------------- the standard network


def test_vgg_loads_torchvision_key_layout_and_matches_reference(tmp_path, monkeypatch):
    trunk, heads = torchvision_vgg16_state(), lpips_heads_state()
    lp = LPIPS("vgg", pretrained=False)
    lp.load_torchvision_vgg16(trunk)
    lp.load_lpips_weights(heads)
    assert torch.equal(lp.state_dict()["net.slice2.5.weight"], trunk["features.5.weight"])
    ref_state = {}
    for n, i in enumerate(VGG_CONVS):
        ref_state[f"conv{n}.weight"], ref_state[f"conv{n}.bias"] = trunk[f"features.{i}.weight"], \
            trunk[f"features.{i}.bias"]
    for k in range(5):
        ref_state[f"lin{k}"] = heads[f"lin{k}.model.1.weight"].flatten()
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 64, 64, generator=gen) * 2 - 1
    y = (x + 0.3 * torch.randn(x.shape, generator=gen)).clamp(-1, 1)
    with torch.no_grad():
        torch.testing.assert_close(lp(x, y), reference_lpips(ref_state, x, y, anti_aliased=False),
                                   rtol=1e-4, atol=1e-6)

    # the same files through the resolution order: environment variables
    torch.save(trunk, tmp_path / "vgg16.pth")
    torch.save(heads, tmp_path / "heads.pth")
    monkeypatch.setenv("VAEVQ_VGG16_WEIGHTS", str(tmp_path / "vgg16.pth"))
    monkeypatch.setenv("VAEVQ_LPIPS_WEIGHTS", str(tmp_path / "heads.pth"))
    loaded = LPIPS("vgg", download=False)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, y), lp(x, y))


def test_wrong_key_layouts_are_named():
    lp = LPIPS("vgg", pretrained=False)
    trunk = torchvision_vgg16_state()
    del trunk["features.28.weight"]
    with pytest.raises(ValueError, match="features.28.weight"):
        lp.load_torchvision_vgg16(trunk, source="my.pth")
    trunk = torchvision_vgg16_state()
    trunk["features.5.weight"] = torch.zeros(3, 3, 3, 3)
    with pytest.raises(ValueError, match=r"net.slice2.5.weight has shape \(3, 3, 3, 3\)"):
        lp.load_torchvision_vgg16(trunk)
    with pytest.raises(ValueError, match="missing keys"):
        lp.load_lpips_weights({"lin0.model.1.weight": torch.zeros(1, 64, 1, 1)})
    with pytest.raises(ValueError, match="keys not in"):
        lp.load_lpips_weights({"bogus": torch.zeros(1)})
    with pytest.raises(ValueError, match="unknown LPIPS net"):
        LPIPS("alex", pretrained=False)


def test_missing_weights_name_every_place_tried(monkeypatch):
    monkeypatch.setenv("VAEVQ_OFFLINE", "1")  # the real URLs are not reachable from CI
    with pytest.raises(W.WeightsNotFoundError) as err:
        LPIPS("vgg")
    msg = str(err.value)
    assert "$VAEVQ_VGG16_WEIGHTS" in msg and "hub cache" in msg and "download" in msg
    assert "vgg16-397923af.pth" in msg
    monkeypatch.setenv("VAEVQ_STLPIPS_WEIGHTS", "/nonexistent/st.pth")
    with pytest.raises(W.WeightsNotFoundError, match="/nonexistent/st.pth"):
        LPIPS("vgg-shift-tolerant")
    with pytest.raises(W.WeightsNotFoundError, match="explicitly"):
        LPIPS("vgg-shift-tolerant", weights="/nonexistent/file.pth")


# ---------------------------------------------------------------- downloads


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def file_server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(_Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_from_local_server_into_hub_cache_then_cached(file_server):
    root, base = file_server
    heads = lpips_heads_state()
    torch.save(heads, root / "vgg.pth")
    digest = hashlib.sha256((root / "vgg.pth").read_bytes()).hexdigest()
    source = W.WeightSource(name="test heads", filename="test_heads.pth", urls=(f"{base}/vgg.pth",),
                            sha256_prefix=digest[:8])
    path = W.resolve_weights(source, progress=False)
    assert path == W.hub_checkpoint_dir() / "test_heads.pth"
    lp = LPIPS("vgg", pretrained=False)
    lp.load_lpips_weights(W.load_state_dict(path, "heads"))
    assert torch.equal(lp.lin3.model[1].weight, heads["lin3.model.1.weight"])
    (root / "vgg.pth").unlink()  # the second time comes from the cache
    assert W.resolve_weights(source, progress=False) == path
    assert not list(W.hub_checkpoint_dir().glob("*.part"))


def test_download_with_wrong_hash_leaves_nothing(file_server):
    root, base = file_server
    (root / "w.pth").write_bytes(b"not the file")
    source = W.WeightSource(name="w", filename="w.pth", urls=(f"{base}/w.pth", f"{base}/missing.pth"),
                            sha256_prefix="00000000", hint="put it somewhere")
    with pytest.raises(W.WeightsNotFoundError) as err:
        W.resolve_weights(source, progress=False)
    assert "SHA-256" in str(err.value) and "404" in str(err.value) and "put it somewhere" in str(err.value)
    assert not W.hub_checkpoint_dir().exists() or not list(W.hub_checkpoint_dir().iterdir())


def test_download_from_file_url(tmp_path):
    src = tmp_path / "st.pth"
    src.write_bytes(b"abc")
    source = W.WeightSource(name="f", filename="f.pth", urls=(src.as_uri(),),
                            sha256_prefix=hashlib.sha256(b"abc").hexdigest()[:8])
    assert W.resolve_weights(source, progress=False).read_bytes() == b"abc"


def test_standard_sources_point_to_the_standard_files():
    from vaevq.perceptual import lpips as L

    assert L.VGG16_TORCHVISION.urls == ("https://download.pytorch.org/models/vgg16-397923af.pth",)
    assert L.VGG16_TORCHVISION.filename == "vgg16-397923af.pth"
    if HAVE_HEADS:
        data = W.package_file("lpips", "weights/v0.1/vgg.pth").read_bytes()
        assert hashlib.sha256(data).hexdigest().startswith(L.LPIPS_VGG_HEADS.sha256_prefix)
    if HAVE_ST:
        data = W.package_file("stlpips_pytorch", "weights/vST0.0/vgg_shift_tolerant.pth").read_bytes()
        assert hashlib.sha256(data).hexdigest().startswith(L.ST_LPIPS_VGG.sha256_prefix)
