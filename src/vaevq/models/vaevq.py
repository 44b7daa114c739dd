"""The VAEVQ tokenizer: VQGAN encoder/decoder around a (variational) quantizer."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from vaevq.config import Config, ConfigError, ModelConfig, config_from_dict, finalize, load_config, register_check
from vaevq.fileio import atomic_write_text
from vaevq.hub import HubMixin, load_state, load_weights, read_yaml, require_files, resolve_folder, save_weights
from vaevq.losses.objective import active_terms, check_weights, tokenizer_losses
from vaevq.models.vqgan import Decoder, Encoder
from vaevq.quantizers import QUANTIZERS, build_quantizer, quantizer_spec
from vaevq.rundir import CONFIG, WEIGHTS

DEFAULT_MODEL = ModelConfig()
CONFIG_FILE = CONFIG  # save_pretrained's files (vaevq.rundir names every file of a run)
WEIGHTS_FILE = WEIGHTS


@dataclass
class VAEVQOutput:
    """Training forward. rec_c is None for non-variational quantizers (single path)."""

    rec_q: torch.Tensor  # (B, C, H, W) decoded from the quantized latent
    rec_c: torch.Tensor | None  # (B, C, H, W) decoded from the continuous latent z_c
    mu: torch.Tensor | None  # (B, d, h, w)
    logvar: torch.Tensor | None  # (B, d, h, w)
    z_c: torch.Tensor  # (B, d, h, w)
    z_q: torch.Tensor  # (B, d, h, w)
    indices: torch.Tensor  # (B, h, w) int64
    losses: dict[str, torch.Tensor] = field(default_factory=dict)  # weighted terms and "total"
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # the quantizer's terms, unweighted


@dataclass
class Reconstruction:
    rec_q: torch.Tensor | None  # (B, C, H, W) decoded from the quantized latent (None: not decoded)
    rec_c: torch.Tensor | None  # (B, C, H, W) decoded from mu, or None
    indices: torch.Tensor  # (B, h, w) int64
    quant_error: torch.Tensor | None = None  # (B, h, w) ||z - z_q|| of each token
    latent: torch.Tensor | None = None  # (B, d, h, w) what was quantized (mu for VLQ)
    codes: torch.Tensor | None = None  # (B, d, h, w) its code vectors z_q
    logvar: torch.Tensor | None = None  # (B, d, h, w) posterior log-variance (variational quantizers)


class VAEVQ(HubMixin, nn.Module):
    """Encoder -> posterior head -> quantizer -> (shared) decoder on both paths.

    ``VAEVQ(config)`` takes a full :class:`~vaevq.config.Config` (model and loss sections are
    used) or a :class:`~vaevq.config.ModelConfig` (default losses).
    """

    def __init__(self, config: Config | ModelConfig):
        super().__init__()
        if isinstance(config, ModelConfig):
            config = Config(model=config)
        self.config = config
        m = config.model
        self.spec = quantizer_spec(m.quantizer)
        self.quantizer = build_quantizer(m.quantizer, m, config.loss, active_terms(config, self.spec.weights))
        arch = dict(
            ch=m.ch,
            ch_mult=tuple(m.ch_mult),
            num_res_blocks=m.num_res_blocks,
            attn_resolutions=tuple(m.attn_resolutions),
            dropout=m.dropout,
            resolution=m.resolution,
        )
        self.encoder = Encoder(in_channels=m.in_channels, out_channels=m.z_channels, **arch)
        self.quant_conv = nn.Conv2d(m.z_channels, self.quantizer.in_channels_factor * m.latent_dim, 1)
        if self.quantizer.variational:
            with torch.no_grad():
                self.quant_conv.bias[m.latent_dim :].fill_(m.logvar_init)
        self.post_quant_conv = nn.Conv2d(m.latent_dim, m.z_channels, 1)
        # Mo-VQGAN: the decoder's normalization layers are modulated by the quantized latent
        self.decoder = Decoder(out_channels=m.in_channels, z_channels=m.z_channels,
                               zq_channels=m.latent_dim if self.spec.decoder_modulated else None, **arch)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_preset(cls, name: str, overrides: list[str] | None = None) -> VAEVQ:
        return cls(load_config(name, overrides))

    def save_pretrained(self, directory: str | Path) -> None:
        """Write config.yaml and model.safetensors (each atomically) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_weights(directory, self.state_dict())
        atomic_write_text(directory / CONFIG_FILE, self.config.to_yaml())

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, map_location: str = "cpu", revision: str | None = None,
                        cache_dir: str | Path | None = None, token: str | None = None,
                        local_files_only: bool = False) -> VAEVQ:
        """A folder written by :meth:`save_pretrained`, or a Hugging Face Hub id ``org/name``."""
        directory = resolve_folder(name_or_path, revision, cache_dir, token, local_files_only)
        require_files(directory, who="VAEVQ.save_pretrained")
        config = finalize(config_from_dict(read_yaml(directory / CONFIG_FILE), str(directory / CONFIG_FILE)))
        model = cls(config)
        load_state(model, load_weights(directory, map_location), directory / WEIGHTS_FILE)
        return model

    # ------------------------------------------------------------------ pieces

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config.model.ch_mult) - 1)

    @property
    def codebook(self):
        """The quantizer's explicit codebook (None for FSQ and LFQ, whose codes are implicit)."""
        return self.quantizer.codebook if self.quantizer.has_codebook else None

    def _check_input(self, x: torch.Tensor) -> None:
        m = self.config.model
        if x.dim() != 4 or x.shape[1] != m.in_channels:
            raise ValueError(f"expected images (B, {m.in_channels}, H, W); got {tuple(x.shape)}")
        f = self.downsample_factor
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not divisible by the factor {f}")

    def encode_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> posterior head output (B, factor * d, h, w)."""
        self._check_input(x)
        return self.quant_conv(self.encoder(x))

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        """(B, d, h, w) continuous or quantized latent -> image (B, C, H, W)."""
        return self.decoder(self.post_quant_conv(z), zq=z if self.decoder.modulated else None)

    # ------------------------------------------------------------------ public API

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> VAEVQOutput:
        """Training forward. ``noise``: optional eps (B, d, h, w) of the VLQ sample (the trainer
        draws it per image, so a run does not depend on how the batch is split over processes).
        The quantizer (search, codebook, RCS, DCR, KL) always runs in float32, also under autocast."""
        h = self.encode_features(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            q = self.quantizer(h.float(), noise=None if noise is None else noise.float())
        if self.quantizer.variational:
            # both decoding paths in one decoder call (GroupNorm is per sample: each image's
            # output is what two calls give, to float tolerance)
            rec_q, rec_c = self.decode_latent(torch.cat([q.z_q_decoder, q.z_c])).chunk(2)
        else:
            rec_q, rec_c = self.decode_latent(q.z_q_decoder), None
        paths = [rec_q] + ([rec_c] if rec_c is not None else [])
        losses = tokenizer_losses(self.config, self.spec.weights, x, paths, q.terms, q.indices[0].numel())
        return VAEVQOutput(rec_q, rec_c, q.mu, q.logvar, q.z_c, q.z_q, q.indices, losses, q.terms)

    @torch.no_grad()
    def quantize_eval(self, x: torch.Tensor):
        """The deterministic (evaluation-mode) quantizer output for images ``x``."""
        was_training = self.training
        self.eval()
        try:
            return self.quantizer(self.encode_features(x))
        finally:
            self.train(was_training)

    @torch.no_grad()
    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        """The continuous latent the quantizer reads (B, d, h, w): the posterior mean mu of a
        variational quantizer, the encoder's output for the others (what latent diffusion models)."""
        h = self.encode_features(x)
        return h[:, : self.config.model.latent_dim] if self.quantizer.variational else h

    @torch.no_grad()
    def quantize_latent(self, z: torch.Tensor) -> torch.Tensor:
        """Token ids (B, h, w) of a continuous latent as :meth:`encode_latent` gives it: the
        evaluation-mode quantizer (nearest code of mu; FSQ/LFQ their own rounding), so
        ``quantize_latent(encode_latent(x)) == encode(x)``."""
        was_training = self.training
        self.eval()
        try:
            h = torch.cat([z, torch.zeros_like(z)], dim=1) if self.quantizer.variational else z
            return self.quantizer(h.float()).indices
        finally:
            self.train(was_training)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Token ids (B, h, w) int64. Deterministic: quantizes the posterior mean."""
        return self.quantize_eval(x).indices

    @torch.no_grad()
    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Token ids (B, h, w) -> images (B, C, H, W)."""
        return self.decode_latent(self.quantizer.lookup(indices))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction through the quantizer (what ``decode(encode(x))`` gives)."""
        return self.reconstruct_paths(x, continuous=False).rec_q

    @torch.no_grad()
    def reconstruct_paths(self, x: torch.Tensor, continuous: bool = True, decode: bool = True) -> Reconstruction:
        """Evaluation-mode reconstructions: quantized path (when ``decode``), continuous path (mu;
        variational quantizers only, and only when ``continuous``), the token ids, and the
        quantized latent with its codes."""
        was_training = self.training
        self.eval()
        try:
            q = self.quantizer(self.encode_features(x))
            rec_c = (self.decode_latent(q.z_c)
                     if continuous and decode and self.quantizer.variational else None)
            rec_q = self.decode_latent(q.z_q_decoder) if decode else None
            error = (q.z - q.z_q).float().norm(dim=1)
            return Reconstruction(rec_q, rec_c, q.indices, error, q.z, q.z_q, q.logvar)
        finally:
            self.train(was_training)


@register_check
def check_tokenizer_config(config: Config) -> None:
    """The config checks that need the quantizer registry: the quantizer's own derived settings
    (FSQ levels, LFQ's d, LC's feature width), a weight given for a term it never produces, and
    options that need free code vectors."""
    try:
        spec = quantizer_spec(config.model.quantizer)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    m = config.model
    if spec.finalize is not None:
        spec.finalize(m)
    check_weights(config, spec.weights)
    for other in QUANTIZERS.values():  # a key of another quantizer, set for this one
        for key in other.keys:
            if key not in spec.keys and getattr(m, key) != getattr(DEFAULT_MODEL, key):
                raise ConfigError(f"model.{key}={getattr(m, key)} is read only by model.quantizer={other.name}; "
                                  f"this config uses model.quantizer={m.quantizer}: remove model.{key}")
    free = spec.free_codes(m)
    if m.codebook_init == "latent" and not free:
        raise ConfigError(f"model.codebook_init=latent needs free code vectors; model.quantizer="
                          f"{m.quantizer} with model.codebook_projection="
                          f"{str(m.codebook_projection).lower()} has none")
    if m.dead_code_interval and not free and spec.free_codes(dataclasses.replace(m, codebook_projection=False)):
        raise ConfigError(f"model.dead_code_interval={m.dead_code_interval}: the codes of model.quantizer="
                          f"{m.quantizer} through model.codebook_projection=true cannot be restarted one by one; "
                          "set model.dead_code_interval=0")
    if m.dead_code_interval and not free:
        # tiny's restart setting must not stop `model.quantizer=simvq` on tiny: turned off, said so
        warnings.warn(f"model.dead_code_interval={m.dead_code_interval} does not apply to "
                      f"model.quantizer={m.quantizer} (no free code vectors to restart); "
                      "dead-code restart is off for this run", stacklevel=2)
        m.dead_code_interval = 0
