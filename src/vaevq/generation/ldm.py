"""Latent diffusion (LDM) on a frozen tokenizer's continuous latent, built on diffusers.

What is diffused: :meth:`VAEVQ.encode_latent` (the posterior mean mu of VAEVQ, the encoder's
output for the VQ baselines), multiplied by ``latent_scale``. LDM's habit is a scale of 1.0 for a
VQ first stage (its VQ-regularized latents are already near unit scale) and 1/std of the
training latents for a KL first stage; here the tokenizers' latents are not normalized (mu of
VAEVQ has a spread of about 0.3-0.7, a VQGAN encoder's output can be anything), so the default
(``generator.latent_scale: 0``) is 1/std measured over every element of the training latents,
recorded in the run's ``config.yaml`` and in the weights (buffer ``latent_scale``).

Decoding follows LDM with a VQ first stage: the sampled latent (divided by the scale) is
quantized to its nearest code (:meth:`VAEVQ.quantize_latent`), then decoded by the tokenizer, so
an image is always ``tokenizer.decode(ids)`` of the ids :meth:`LatentDiffusion.decode_latents`
returns.

The network and the schedules are diffusers': ``UNet2DModel`` with a learnt class embedding
(``num_classes + 1`` rows, the last one the null class of classifier-free guidance, used with
probability ``generator.class_dropout`` in training) added to the timestep embedding, as ADM
conditions; ``DDPMScheduler`` for the forward process (LDM's schedule: betas linear in
sqrt(beta) from 0.0015 to 0.0195 over 1,000 steps, which diffusers calls ``scaled_linear``;
epsilon prediction as LDM, or v with ``generator.prediction: v_prediction``; mean squared
error) and ``DDIMScheduler`` for sampling with LDM's DDIM discretization (timesteps 1, 1 + c,
... with c = 1000 // steps; the last step to alpha_bar_0, no clipping), classifier-free
guidance in one batch: eps = eps_null + s (eps_class - eps_null).

This module imports diffusers (several seconds); the rest of vaevq reaches it through
:func:`vaevq.generation.lazy.ldm_module` so other commands do not pay for it.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.models.unets.unet_2d import UNet2DModel
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from torch import nn

from vaevq.config import Config, ConfigError, GeneratorConfig, config_from_dict, finalize, load_config
from vaevq.fileio import atomic_write_text
from vaevq.generation.gpt import latent_grid
from vaevq.hub import HubMixin, load_state, load_weights, read_yaml, require_files, resolve_folder, save_weights
from vaevq.models import VAEVQ
from vaevq.rundir import CONFIG, WEIGHTS

TOKENIZER_FOLDER = "tokenizer"  # save_pretrained: the frozen tokenizer beside the UNet


def build_unet(g: GeneratorConfig, channels: int, grid: tuple[int, int], num_classes: int) -> UNet2DModel:
    """The diffusers UNet of a generator section: ``len(unet_mult)`` levels of ``unet_layers``
    residual blocks (widths ``unet_channels * m``), self-attention (heads of ``unet_head_dim``
    channels) at the levels of ``unet_attention`` and in the middle block, a class embedding of
    ``num_classes + 1`` rows (the last: null) added to the timestep embedding when conditional."""
    levels = range(len(g.unet_mult))
    attention = set(g.unet_attention)
    return UNet2DModel(
        sample_size=tuple(grid), in_channels=channels, out_channels=channels,
        block_out_channels=tuple(g.unet_channels * m for m in g.unet_mult), layers_per_block=g.unet_layers,
        down_block_types=tuple("AttnDownBlock2D" if i in attention else "DownBlock2D" for i in levels),
        up_block_types=tuple("AttnUpBlock2D" if i in attention else "UpBlock2D" for i in reversed(levels)),
        attention_head_dim=g.unet_head_dim, norm_num_groups=g.unet_norm_groups, dropout=g.unet_dropout,
        num_class_embeds=num_classes + 1 if num_classes else None,
        flip_sin_to_cos=True, freq_shift=0)  # LDM's timestep embedding: [cos, sin], no shift


def schedule_settings(g: GeneratorConfig) -> dict:
    return {"num_train_timesteps": g.diffusion_steps, "beta_start": g.beta_start, "beta_end": g.beta_end,
            "beta_schedule": g.beta_schedule, "prediction_type": g.prediction, "clip_sample": False}


def ddpm_scheduler(g: GeneratorConfig) -> DDPMScheduler:
    """The training (forward) process."""
    return DDPMScheduler(**schedule_settings(g))


def ddim_scheduler(g: GeneratorConfig, num_steps: int, device=None) -> DDIMScheduler:
    """LDM's DDIM sampler: uniform timesteps 1, 1 + c, ... (c = T // steps), last step to alpha_bar_0."""
    sched = DDIMScheduler(**schedule_settings(g), set_alpha_to_one=False, steps_offset=1,
                          timestep_spacing="leading")
    sched.set_timesteps(num_steps, device=device)
    return sched


class LatentDiffusion(HubMixin, nn.Module):
    """A class-conditional (or unconditional) diffusion model on a frozen tokenizer's latent.

    ``config``: a full :class:`~vaevq.config.Config` with ``generator.kind: ldm`` whose ``model``
    and ``data.resolution`` are the tokenizer's (latent channels ``model.latent_dim``, grid
    ``resolution / factor``). The tokenizer is held beside the module (not a submodule: it is not
    trained and its weights are not in this model's state dict) and moved with it by ``.to()``.
    """

    def __init__(self, config: Config, tokenizer: VAEVQ | None = None):
        super().__init__()
        g = config.generator
        if g.kind != "ldm":
            raise ConfigError(f"{config.name}: generator.kind is {g.kind!r}; LatentDiffusion needs 'ldm'")
        self.config = config
        self.channels = config.model.latent_dim
        self.grid = latent_grid(config)
        self.num_classes = g.num_classes
        self.unet = build_unet(g, self.channels, self.grid, g.num_classes)
        self.register_buffer("latent_scale", torch.tensor(float(g.latent_scale or 1.0)))
        self.scheduler = ddpm_scheduler(g)
        self._tokenizer: list[VAEVQ | None] = [None]
        if tokenizer is not None:
            self.set_tokenizer(tokenizer)

    # ------------------------------------------------------------------ the tokenizer

    @property
    def tokenizer(self) -> VAEVQ:
        tok = self._tokenizer[0]
        if tok is None:
            raise ValueError("this LatentDiffusion has no tokenizer; pass tokenizer=VAEVQ.from_pretrained(...)")
        return tok

    def set_tokenizer(self, tokenizer: VAEVQ) -> None:
        """Use ``tokenizer`` (frozen; not a submodule, so not in the state dict)."""
        m = tokenizer.config.model
        if m.latent_dim != self.channels:
            raise ValueError(f"the tokenizer's latent has {m.latent_dim} channels; this model diffuses "
                             f"{self.channels}")
        self._tokenizer[0] = tokenizer.eval().requires_grad_(False)

    def __deepcopy__(self, memo):
        """A copy (the weight EMA makes one) shares the frozen tokenizer instead of duplicating it."""
        if self._tokenizer[0] is not None:
            memo.setdefault(id(self._tokenizer[0]), self._tokenizer[0])
        new = object.__new__(type(self))
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return new

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        if self._tokenizer[0] is not None:
            self._tokenizer[0]._apply(fn, recurse)
        return self

    @property
    def device(self) -> torch.device:
        return self.latent_scale.device

    def set_latent_scale(self, value: float) -> None:
        self.latent_scale.fill_(float(value))
        self.config.generator.latent_scale = float(value)

    # ------------------------------------------------------------------ construction and files

    @classmethod
    def from_preset(cls, name: str, tokenizer: VAEVQ | None = None, overrides: list[str] | None = None,
                    ) -> LatentDiffusion:
        """A fresh model of an LDM preset (``ldm-tiny``, ``ldm-4``, ...); with ``tokenizer`` its model
        settings and resolution replace the preset's (they decide the latent's channels and grid)."""
        config = load_config(name, overrides)
        if config.generator.kind != "ldm":
            raise ValueError(f"{name} is not a latent diffusion preset (generator.kind {config.generator.kind}); "
                             "LDM presets: ldm-tiny, ldm-brain-tiny, ldm-4, ldm-4-brats")
        if tokenizer is not None:
            config.model = tokenizer.config.model
            config.data.resolution = tokenizer.config.data.resolution
        return cls(config, tokenizer)

    def save_pretrained(self, directory: str | Path, tokenizer: bool = True) -> None:
        """config.yaml (the run's config: generator, tokenizer model, data), model.safetensors (the
        UNet and ``latent_scale``) and, with ``tokenizer``, the tokenizer in ``tokenizer/``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_weights(directory, self.state_dict())
        if tokenizer and self._tokenizer[0] is not None:
            self._tokenizer[0].save_pretrained(directory / TOKENIZER_FOLDER)
        atomic_write_text(directory / CONFIG, self.config.to_yaml())

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, tokenizer: VAEVQ | None = None, map_location: str = "cpu",
                        revision: str | None = None, cache_dir: str | Path | None = None, token: str | None = None,
                        local_files_only: bool = False) -> LatentDiffusion:
        """A folder written by :meth:`save_pretrained` or a Hugging Face Hub id ``org/name``; the
        tokenizer is ``tokenizer`` when given, else the folder's ``tokenizer/``."""
        directory = resolve_folder(name_or_path, revision, cache_dir, token, local_files_only)
        require_files(directory, who="LatentDiffusion.save_pretrained")
        config = finalize(config_from_dict(read_yaml(directory / CONFIG), str(directory / CONFIG)))
        if tokenizer is None and (directory / TOKENIZER_FOLDER).is_dir():
            tokenizer = VAEVQ.from_pretrained(directory / TOKENIZER_FOLDER, map_location)
        model = cls(config, tokenizer)
        load_state(model, load_weights(directory, map_location), directory / WEIGHTS)
        return model

    # ------------------------------------------------------------------ latents

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> scaled latents (what is diffused)."""
        return self.tokenizer.encode_latent(images).float() * self.latent_scale

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled latents -> (images in [-1, 1], token ids (B, h, w)): the nearest codes, decoded."""
        ids = self.tokenizer.quantize_latent(latents.float() / self.latent_scale)
        return self.tokenizer.decode(ids).clamp(-1, 1), ids

    # ------------------------------------------------------------------ training

    def null_labels(self, labels: torch.Tensor | None, drop: torch.Tensor | None) -> torch.Tensor | None:
        """Labels with the ``drop`` ones replaced by the null class (index ``num_classes``)."""
        if not self.num_classes:
            return None
        if labels is None:
            raise ValueError(f"this model is class-conditional ({self.num_classes} classes); labels are needed")
        return labels if drop is None else torch.where(drop, torch.full_like(labels, self.num_classes), labels)

    def forward(self, latents: torch.Tensor, labels: torch.Tensor | None, timesteps: torch.Tensor,
                noise: torch.Tensor) -> torch.Tensor:
        """The denoising loss (mean squared error over every element) of scaled ``latents`` noised
        to ``timesteps`` with ``noise``: against the noise (``prediction: epsilon``, LDM) or the
        velocity sqrt(alpha_bar) noise - sqrt(1 - alpha_bar) latents (``v_prediction``);
        ``labels`` already carry the null class where dropped (:meth:`null_labels`)."""
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        pred = self.unet(noisy, timesteps, class_labels=labels).sample
        target = noise if self.config.generator.prediction == "epsilon" else \
            self.scheduler.get_velocity(latents, noise, timesteps)
        return F.mse_loss(pred.float(), target.float())

    def draw(self, batch: int, generator: torch.Generator | None = None,
             device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(timesteps (B,) uniform over the training steps, noise (B, d, h, w), class drop (B,) bool)."""
        device = device or self.device
        t = torch.randint(self.scheduler.config.num_train_timesteps, (batch,), generator=generator)
        noise = torch.randn((batch, self.channels, *self.grid), generator=generator)
        drop = torch.rand(batch, generator=generator) < self.config.generator.class_dropout
        return t.to(device), noise.to(device), drop.to(device)

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """The loss of a batch of images in [-1, 1] (encoded by the frozen tokenizer), with random
        timesteps, noise and class dropout (from ``generator``, else torch's global one)."""
        latents = self.encode(images.to(self.device))
        t, noise, drop = self.draw(latents.shape[0], generator)
        labels = labels.to(self.device) if labels is not None else None
        return self(latents, self.null_labels(labels, drop if self.training else None), t, noise)

    # ------------------------------------------------------------------ sampling

    def guided_prediction(self, x: torch.Tensor, t: torch.Tensor | int, labels: torch.Tensor | None,
                   cfg_scale: float = 1.0) -> torch.Tensor:
        """The UNet's prediction (noise or velocity) at ``t``; with labels and ``cfg_scale`` != 1
        classifier-free guided (conditional and null rows in one batch): eps_null + cfg_scale
        (eps_class - eps_null), the same linear rule for a velocity."""
        if labels is None or cfg_scale == 1.0:
            return self.unet(x, t, class_labels=self.null_labels(labels, None)).sample
        null = torch.full_like(labels, self.num_classes)
        cond, uncond = self.unet(torch.cat([x, x]), t, class_labels=torch.cat([labels, null])).sample.chunk(2)
        return uncond + cfg_scale * (cond - uncond)

    @torch.no_grad()
    def sample_latents(self, labels: torch.Tensor | None = None, num: int | None = None,
                       num_steps: int | None = None, cfg_scale: float | None = None, eta: float | None = None,
                       generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
                       ) -> torch.Tensor:
        """Scaled latents by DDIM (defaults: the config's sample_steps, cfg_scale, eta); one
        sample per label (or ``num`` unconditional). The initial noise (from ``generator`` on the
        model's device) and, with eta > 0, every step's noise come from ``generator``."""
        g = self.config.generator
        num_steps = g.sample_steps if num_steps is None else num_steps
        cfg_scale = g.cfg_scale if cfg_scale is None else cfg_scale
        eta = g.eta if eta is None else eta
        if labels is not None:
            labels = labels.to(self.device)
            num = labels.shape[0]
        elif self.num_classes:
            raise ValueError(f"this model is class-conditional ({self.num_classes} classes); give labels")
        if not num:
            raise ValueError("give labels or num")
        sched = ddim_scheduler(g, num_steps, self.device)
        x = noise.to(self.device) if noise is not None else torch.randn(
            (num, self.channels, *self.grid), generator=generator, device=self.device)
        was_training = self.training
        self.eval()
        try:
            for t in sched.timesteps:
                out = self.guided_prediction(x, t, labels, cfg_scale)
                x = sched.step(out, t, x, eta=eta, generator=generator).prev_sample
        finally:
            self.train(was_training)
        return x

    @torch.no_grad()
    def sample(self, labels: torch.Tensor | None = None, num: int | None = None, num_steps: int | None = None,
               cfg_scale: float | None = None, eta: float | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [-1, 1] (B, C, H, W): :meth:`sample_latents`, then :meth:`decode_latents`."""
        latents = self.sample_latents(labels, num, num_steps, cfg_scale, eta, generator)
        return self.decode_latents(latents)[0]
