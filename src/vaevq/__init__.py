"""vaevq: discrete visual tokenizers, with VAEVQ (arXiv 2511.06863) at the centre."""

from vaevq.config import Config, ConfigError, load_config, preset_names
from vaevq.models import VAEVQ, VAEVQOutput

__version__ = "0.1.0"
__all__ = ["VAEVQ", "VAEVQOutput", "Config", "ConfigError", "load_config", "preset_names"]
