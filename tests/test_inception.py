"""The FID InceptionV3 loads the standard file's key layout (built here from torchvision's
Inception3 description, independently of our module) and behaves as the FID graph."""

import pytest
import torch

from vaevq import weights as W
from vaevq.features.inception import FID_INCEPTION, FIDInceptionV3

# torchvision Inception3 blocks: name -> list of (branch conv name, in, out, kernel)
STEM = [("Conv2d_1a_3x3", 3, 32, (3, 3)), ("Conv2d_2a_3x3", 32, 32, (3, 3)), ("Conv2d_2b_3x3", 32, 64, (3, 3)),
        ("Conv2d_3b_1x1", 64, 80, (1, 1)), ("Conv2d_4a_3x3", 80, 192, (3, 3))]


def block_a(c, pool):
    return [("branch1x1", c, 64, (1, 1)), ("branch5x5_1", c, 48, (1, 1)), ("branch5x5_2", 48, 64, (5, 5)),
            ("branch3x3dbl_1", c, 64, (1, 1)), ("branch3x3dbl_2", 64, 96, (3, 3)),
            ("branch3x3dbl_3", 96, 96, (3, 3)), ("branch_pool", c, pool, (1, 1))]


def block_b(c):
    return [("branch3x3", c, 384, (3, 3)), ("branch3x3dbl_1", c, 64, (1, 1)),
            ("branch3x3dbl_2", 64, 96, (3, 3)), ("branch3x3dbl_3", 96, 96, (3, 3))]


def block_c(c, c7):
    return [("branch1x1", c, 192, (1, 1)), ("branch7x7_1", c, c7, (1, 1)), ("branch7x7_2", c7, c7, (1, 7)),
            ("branch7x7_3", c7, 192, (7, 1)), ("branch7x7dbl_1", c, c7, (1, 1)),
            ("branch7x7dbl_2", c7, c7, (7, 1)), ("branch7x7dbl_3", c7, c7, (1, 7)),
            ("branch7x7dbl_4", c7, c7, (7, 1)), ("branch7x7dbl_5", c7, 192, (1, 7)),
            ("branch_pool", c, 192, (1, 1))]


def block_d(c):
    return [("branch3x3_1", c, 192, (1, 1)), ("branch3x3_2", 192, 320, (3, 3)), ("branch7x7x3_1", c, 192, (1, 1)),
            ("branch7x7x3_2", 192, 192, (1, 7)), ("branch7x7x3_3", 192, 192, (7, 1)),
            ("branch7x7x3_4", 192, 192, (3, 3))]


def block_e(c):
    return [("branch1x1", c, 320, (1, 1)), ("branch3x3_1", c, 384, (1, 1)), ("branch3x3_2a", 384, 384, (1, 3)),
            ("branch3x3_2b", 384, 384, (3, 1)), ("branch3x3dbl_1", c, 448, (1, 1)),
            ("branch3x3dbl_2", 448, 384, (3, 3)), ("branch3x3dbl_3a", 384, 384, (1, 3)),
            ("branch3x3dbl_3b", 384, 384, (3, 1)), ("branch_pool", c, 192, (1, 1))]


MIXED = {"Mixed_5b": block_a(192, 32), "Mixed_5c": block_a(256, 64), "Mixed_5d": block_a(288, 64),
         "Mixed_6a": block_b(288), "Mixed_6b": block_c(768, 128), "Mixed_6c": block_c(768, 160),
         "Mixed_6d": block_c(768, 160), "Mixed_6e": block_c(768, 192), "Mixed_7a": block_d(768),
         "Mixed_7b": block_e(1280), "Mixed_7c": block_e(2048)}


def standard_state(seed=0, with_tracked=False):
    gen = torch.Generator().manual_seed(seed)
    state = {}

    def conv(prefix, c_in, c_out, k):
        scale = (2 / (c_in * k[0] * k[1])) ** 0.5
        state[f"{prefix}.conv.weight"] = torch.randn(c_out, c_in, *k, generator=gen) * scale
        state[f"{prefix}.bn.weight"] = 1 + 0.1 * torch.randn(c_out, generator=gen)
        state[f"{prefix}.bn.bias"] = 0.1 * torch.randn(c_out, generator=gen)
        state[f"{prefix}.bn.running_mean"] = 0.1 * torch.randn(c_out, generator=gen)
        state[f"{prefix}.bn.running_var"] = 1 + 0.1 * torch.rand(c_out, generator=gen)
        if with_tracked:
            state[f"{prefix}.bn.num_batches_tracked"] = torch.tensor(0)

    for name, c_in, c_out, k in STEM:
        conv(name, c_in, c_out, k)
    for block, convs in MIXED.items():
        for name, c_in, c_out, k in convs:
            conv(f"{block}.{name}", c_in, c_out, k)
    state["fc.weight"] = torch.randn(1008, 2048, generator=gen) * 0.01
    state["fc.bias"] = torch.zeros(1008)
    return state


@pytest.mark.parametrize("with_tracked", [False, True])
def test_loads_the_standard_key_layout(with_tracked):
    state = standard_state(with_tracked=with_tracked)
    net = FIDInceptionV3()
    net.load_weights(state)
    own = net.state_dict()
    assert {k for k in own if not k.endswith("num_batches_tracked")} == {
        k for k in state if not k.endswith("num_batches_tracked")}
    assert torch.equal(own["Mixed_7c.branch3x3dbl_3b.conv.weight"], state["Mixed_7c.branch3x3dbl_3b.conv.weight"])
    bad = dict(state)
    bad["Mixed_6b.branch7x7_2.conv.weight"] = torch.zeros(128, 128, 7, 1)
    with pytest.raises(ValueError, match="Mixed_6b.branch7x7_2.conv.weight has shape"):
        FIDInceptionV3().load_weights(bad)
    del bad["fc.bias"]
    with pytest.raises(ValueError, match="fc.bias"):
        FIDInceptionV3().load_weights(bad)


def test_features_resize_only_when_needed_and_are_2048d():
    net = FIDInceptionV3()
    net.load_weights(standard_state())
    net.eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        f = net(x)
        up = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        g = net(up)
    assert f.shape == (2, 2048)
    torch.testing.assert_close(f, g)  # the resize is the reference's bilinear one


def test_missing_inception_weights_are_reported_not_invented(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("VAEVQ_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("VAEVQ_OFFLINE", "1")
    with pytest.raises(W.WeightsNotFoundError) as err:
        FIDInceptionV3.pretrained()
    assert "pt_inception-2015-12-05-6726825d.pth" in str(err.value)
    assert "VAEVQ_INCEPTION_WEIGHTS" in str(err.value)
    assert FID_INCEPTION.urls[0].endswith("pt_inception-2015-12-05-6726825d.pth")


def test_pretrained_from_a_file_url(tmp_path, monkeypatch):
    state = standard_state(seed=3)
    path = tmp_path / "served.pth"
    torch.save(state, path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("VAEVQ_OFFLINE", raising=False)
    import hashlib

    source = W.WeightSource(name="inception", filename=FID_INCEPTION.filename, urls=(path.as_uri(),),
                            sha256_prefix=hashlib.sha256(path.read_bytes()).hexdigest()[:8])
    got = W.resolve_weights(source, progress=False)
    assert got == W.hub_checkpoint_dir() / FID_INCEPTION.filename
    net = FIDInceptionV3.pretrained()  # now found in the hub cache under the standard name
    assert torch.equal(net.state_dict()["fc.weight"], state["fc.weight"])
