"""The package's layering (docs/design.md), the loss module's ownership of the weights, and the
worked example of adding a quantizer: one class and its registration."""

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import vaevq
from vaevq.config import ConfigError, load_config
from vaevq.quantizers import QUANTIZERS, Codebook, CodebookQuantizer, QuantizerOutput, register_quantizer

ROOT = Path(__file__).resolve().parents[1]


def _graph_tool():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "tools" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_upward_imports_no_cycles_no_imports_hidden_in_functions():
    tool = _graph_tool()
    result = tool.analyse(ROOT / "src" / "vaevq")
    assert result["upward"] == []
    assert result["cycles"] == []
    assert result["lazy"] == []


def test_the_layering_check_catches_an_upward_import_and_a_cycle(tmp_path):
    tool = _graph_tool()
    src = tmp_path / "vaevq"
    for rel, text in {
        "__init__.py": "",
        "config.py": "from vaevq.training import trainer\n",  # bottom layer importing the top
        "training/__init__.py": "",
        "training/trainer.py": "import vaevq.config\n",
        "losses/__init__.py": "",
        "losses/a.py": "def f():\n    from vaevq.losses import b\n",  # hidden in a function
        "losses/b.py": "from vaevq.losses import a\n",
    }.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    result = tool.analyse(src)
    assert any("vaevq.config:1 imports vaevq.training.trainer" in u for u in result["upward"])
    assert ["vaevq.config", "vaevq.training.trainer"] in result["cycles"]
    assert ["vaevq.losses.a", "vaevq.losses.b"] in result["cycles"]
    assert any("vaevq.losses.a:2" in u for u in result["lazy"])


# ---------------------------------------------------------------- weights for terms never produced


@pytest.mark.parametrize("preset, key", [
    ("vq", "loss.rcs_weight=2.0"),
    ("vq", "loss.codebook_weight=0.5"),  # VQGAN's codebook loss has weight 1; this key is VLQ's
    ("fsq", "loss.commitment_beta=0.5"),
    ("ema", "loss.kl_weight=1e-4"),
    ("vaevq", "model.lfq_entropy_weight=0.3"),
])
def test_a_weight_for_a_term_the_quantizer_never_produces_is_an_error_naming_the_key(preset, key):
    name = key.split("=")[0]
    with pytest.raises(ConfigError, match=rf"{name}=.* never produces"):
        load_config(preset, [key])


@pytest.mark.parametrize("preset, key, owner", [
    ("vq", "model.softvq_tau=0.5", "softvq"),
    ("vaevq", "model.ema_codebook_decay=0.9", "ema"),
    ("fsq", "model.lc_max_features=100", "lc"),
])
def test_a_key_of_another_quantizer_is_an_error(preset, key, owner):
    with pytest.raises(ConfigError, match=rf"{key.split('=')[0]}=.* read only by model.quantizer={owner}"):
        load_config(preset, [key])


def test_zero_and_default_weights_and_used_weights_are_accepted():
    load_config("vq", ["loss.rcs_weight=0", "loss.dcr_weight=0.1"])  # off, or the default
    load_config("lfq", ["model.codebook_size=256", "model.lfq_entropy_weight=0.3", "loss.commitment_beta=0.5"])
    load_config("m1", ["loss.codebook_weight=2.0"])  # VLQ's VQGAN terms (the ablations)


# ---------------------------------------------------------------- adding a quantizer


class RandomProjectionQuantizer(CodebookQuantizer):
    """BEST-RQ's quantizer: a frozen random projection and a frozen random unit codebook; the
    code of z is the nearest unit code to normalize(P z). Term ``commit`` ||z - sg(z_q)||^2."""

    def __init__(self, codebook_size: int, dim: int, terms=("commit",), seed: int = 0):
        super().__init__(terms)
        gen = torch.Generator().manual_seed(seed)
        self.codebook = Codebook(codebook_size, dim)
        self.codebook.requires_grad_(False)
        with torch.no_grad():
            self.codebook.embedding.copy_(F.normalize(torch.randn(codebook_size, dim, generator=gen), dim=1))
        self.register_buffer("projection", torch.randn(dim, dim, generator=gen) / dim**0.5)

    def forward(self, z, noise=None):
        projected = F.normalize(torch.einsum("ij,bjhw->bihw", self.projection, z), dim=1)
        indices = self.codebook.search(projected, self.codebook.vectors(), block=256)
        z_q = self.codebook.lookup(indices)
        z_q_decoder = z + (z_q - z).detach() if torch.is_grad_enabled() else z_q
        terms = {"commit": F.mse_loss(z, z_q)} if self.wants("commit") else {}
        return QuantizerOutput(z, z, z_q, z_q_decoder, indices, terms)


@pytest.fixture
def registered():
    @register_quantizer("random-projection", weights={"commit": "beta"}, free_codes=lambda m: False)
    def build(model, loss, terms):
        return RandomProjectionQuantizer(model.codebook_size, model.latent_dim, terms)

    yield
    del QUANTIZERS["random-projection"]


def test_a_new_quantizer_is_one_class_and_its_registration(registered):
    config = load_config("tiny", ["model.quantizer=random-projection", "model.codebook_size=32",
                                  "model.ch=16", "model.z_channels=16", "model.latent_dim=8",
                                  "loss.rcs_weight=0", "loss.dcr_weight=0", "loss.kl_weight=0"])
    model = vaevq.VAEVQ(config)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out = model(x)
    assert set(out.losses) == {"rec", "commit", "total"}
    expected_commit = 0.25 * F.mse_loss(out.z_c, out.z_q)  # beta x the unweighted term
    torch.testing.assert_close(out.losses["commit"], expected_commit)
    out.losses["total"].backward()
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0
    ids = model.encode(x)
    assert torch.equal(model.decode(ids), model.reconstruct(x))
    with pytest.raises(ConfigError, match="loss.rcs_weight=2.0 weighs a term"):
        load_config("tiny", ["model.quantizer=random-projection", "loss.rcs_weight=2.0"])
    with pytest.raises(ConfigError, match="codebook_init=latent needs free code vectors"):
        load_config("tiny", ["model.quantizer=random-projection", "loss.rcs_weight=0", "loss.dcr_weight=0",
                             "loss.kl_weight=0", "model.codebook_init=latent"])


def test_an_unknown_quantizer_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown model.quantizer 'nope'"):
        load_config("tiny", ["model.quantizer=nope"])
