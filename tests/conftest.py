import os

import pytest
import torch

# the suite runs on 2 CPU cores; keep torch from oversubscribing them
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# no test reaches the internet for weights; the download tests serve files locally
os.environ["VAEVQ_OFFLINE"] = "1"


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Prepared data (brain MRI slices, the built-in brain) goes to a temporary cache, not ~/.cache."""
    old = os.environ.get("VAEVQ_CACHE_DIR")
    os.environ["VAEVQ_CACHE_DIR"] = str(tmp_path_factory.mktemp("vaevq-cache"))
    yield
    if old is None:
        os.environ.pop("VAEVQ_CACHE_DIR", None)
    else:
        os.environ["VAEVQ_CACHE_DIR"] = old


@pytest.fixture
def tiny_overrides() -> list[str]:
    """A smaller tiny model for fast tests (same architecture family, same objective)."""
    return [
        "model.ch=16",
        "model.z_channels=32",
        "model.codebook_size=64",
        "model.latent_dim=8",
        "train.progress=false",
        "eval.max_images=32",
    ]
