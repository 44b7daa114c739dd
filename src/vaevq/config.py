"""Typed configuration tree: dataclasses loaded from YAML, with ``key=value`` overrides.

Unknown keys and values of the wrong type are errors that name the key and the source.
Presets are YAML files shipped inside the package (``vaevq/configs/NAME.yaml``).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key and where it came from."""


CONTRASTS = ("t1n", "t1c", "t2w", "t2f")  # BraTS 2024 file suffixes (data.contrasts)

# checks that need knowledge above this layer (the quantizer registry), registered by the layer
# that has it (vaevq.models registers the tokenizer's); ``finalize`` runs them all
_CHECKS: list = []


def register_check(check):
    """Add ``check(config)`` to :func:`finalize` (it may derive settings or raise ConfigError)."""
    _CHECKS.append(check)
    return check


@dataclass
class LossConfig:
    rec: str = "l2"  # l2 | l1: pixel loss on both decoding paths
    rec_paths: str = "sum"  # sum (paper eq. 4) | mean (released code averages the two paths)
    # rcs, dcr and kl weights are in the paper's units (per-image sums), converted to our per-element
    # means by one rule (vaevq.losses.convention, SPEC §6); the other weights are VQGAN's, used as given
    rcs_weight: float = 1.0
    rcs_form: str = "paper"  # paper: sigma detached, sum over d | released: not detached, mean
    dcr_weight: float = 0.1
    # what DCR pulls the codebook to (SPEC §7): prior (eq. 11: N(0, I)) | latent (the batch's
    # posterior means, their mean and covariance detached) | both (eq. 11 on the codebook, and the
    # same formula on the batch statistics of mu, so both sides meet at the prior)
    dcr_target: str = "prior"
    kl_weight: float = 1e-6
    commitment_beta: float = 0.25  # beta of the commitment term (vq, its variants, lfq; vlq with codebook_weight)
    codebook_weight: float = 0.0  # vlq only: VQGAN's codebook + beta commitment losses on the sample (M1, M3)
    perceptual_weight: float = 0.0  # LPIPS on both decoding paths (combined as rec_paths); 0 disables
    perceptual_net: str = "vgg-shift-tolerant"  # vgg-shift-tolerant (offline) | vgg (LPIPS v0.1)
    perceptual_weights: str | None = None  # explicit file (else $VAEVQ_STLPIPS_WEIGHTS, package, ...)
    perceptual_trunk_weights: str | None = None  # net=vgg: torchvision VGG16 file (else $VAEVQ_VGG16_WEIGHTS)


@dataclass
class GANConfig:
    """PatchGAN adversarial training (VQGAN). Both reconstructions are judged (see docs/design.md)."""

    weight: float = 0.0  # 0 disables the adversarial term and the discriminator
    adaptive: bool = True  # VQGAN's adaptive weight (gradient-norm ratio at the decoder's last layer)
    max_adaptive: float = 1e4  # clamp of the adaptive weight
    start: int = 0  # step at which the adversarial term and discriminator training begin
    disc_loss: str = "hinge"  # hinge | vanilla
    gen_loss: str = "hinge"  # hinge (-mean D) | non-saturating (softplus(-D))
    norm: str = "batch"  # batch | group
    layers: int = 3
    channels: int = 64
    lr: float = 0.0  # 0: train.lr
    betas: tuple[float, float] = (0.5, 0.9)
    lecam_weight: float = 0.0  # LeCam regularization of the discriminator; 0 disables
    lecam_decay: float = 0.99


@dataclass
class ModelConfig:
    in_channels: int = 3
    resolution: int = 256  # used to place attention layers (attn_resolutions)
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.0
    z_channels: int = 256
    latent_dim: int = 64
    codebook_size: int = 16384
    quantizer: str = "vlq"  # see vaevq.quantizers.QUANTIZERS
    codebook_projection: bool = False  # SimVQ-style Linear(d, d) on the codebook (released code)
    # uniform(-1/K, 1/K) (taming) | normal (N(0, I), the prior) | latent (drawn from N(mean, cov) of the
    # encoder's latents on LATENT_INIT_IMAGES training images at step 0; a reading, SPEC §7)
    codebook_init: str = "uniform"
    logvar_init: float = 0.0  # initial bias of the log-variance channels of the posterior head
    quantize: str = "sample"  # sample (paper: z_c) | mean (released code: mu_c)
    estimator: str = "straight-through"  # straight-through | released
    logvar_min: float = -30.0
    logvar_max: float = 20.0
    search_block: int = 256  # codes per block of the nearest-code search (4096 rows per block)
    # dead-code restart (not in the paper; docs/design.md): every interval steps, codes chosen fewer
    # than threshold times in the interval (all ranks) move onto random encoder outputs; 0 disables
    dead_code_interval: int = 0
    dead_code_threshold: float = 1.0
    # baselines (SPEC §3); each key is used only by its quantizer
    ema_codebook_decay: float = 0.99  # ema: decay of the cluster sizes and sums
    ema_eps: float = 1e-5  # ema: Laplace smoothing
    softvq_tau: float = 1.0  # softvq: temperature of softmax(-||z - e||^2 / tau)
    fsq_levels: tuple[int, ...] = ()  # fsq: levels per channel; () picks the FSQ paper's for codebook_size
    lfq_entropy_weight: float = 0.1  # lfq: weight of the entropy loss
    lfq_diversity: float = 1.0  # lfq: weight of the codebook (batch) entropy inside it
    lfq_temperature: float = 1.0  # lfq: temperature of the code distribution
    lc_features: str = "effnet-lite0"  # lc: effnet-lite0 (offline), or a .pt/.npy file of (N, F) features
    lc_feature_dim: int = 0  # lc: width F of a feature file (filled in from the file; 0 = not yet read)
    lc_max_features: int = 20000  # lc: feature vectors sampled for k-means
    lc_kmeans_iters: int = 20  # lc: Lloyd iterations


@dataclass
class DataConfig:
    source: str = "builtin"  # builtin (photos) | imagefolder | brats | brain (built-in MRI)
    root: str | None = None  # a folder of images (ImageNet layout recognised), or a BraTS root
    resolution: int = 256
    random_crop: bool = False
    random_flip: bool = False
    eval_fraction: float | None = None  # held out; None: 0.05 of the images of a folder, 0.2 of BraTS subjects
    split_seed: int = 0  # BraTS: the seeded split of the subjects
    # built-in photos: the token statistics (utilization, perplexity, quantization error) are counted
    # on the held-out photos tiled densely enough for at least this many tokens (10 x K at K 16384);
    # 0: on the evaluation tiles themselves. Image metrics always use the evaluation tiles.
    usage_tokens: int = 163840
    num_workers: int = 0
    # brain MRI (source brats or brain): see vaevq.data.brats
    contrasts: tuple[str, ...] = ("t1n",)  # of t1n, t1c, t2w, t2f (BraTS 2021 t1, t1ce, t2, flair files too)
    contrast_mode: str = "channels"  # channels (one contrast: grey x 3) | separate (each contrast a grey image)
    min_brain_fraction: float = 0.05  # axial slices with fewer brain pixels are skipped
    clip_percentiles: tuple[float, float] = (0.5, 99.5)  # of each volume's brain voxels, mapped to -1 and 1
    on_error: str = "skip"  # a bad subject or image file: skip it (listed and counted) | stop
    scan_images: bool = True  # image folders: decode every file once before training (verdicts cached)
    cache_dir: str | None = None  # prepared slices; None: $VAEVQ_CACHE_DIR or ~/.cache/vaevq, /slices
    brain_subjects: int = 10  # source brain: synthetic subjects made from the MNI152 template
    brain_eval: str = "colin27"  # source brain: colin27 (Debian mricron-data, when installed) | held-out

    @property
    def is_brain(self) -> bool:
        """Brain MRI (a BraTS root or the built-in brain): subjects, slices, a split by subject."""
        return self.source in ("brats", "brain")


@dataclass
class TrainConfig:
    steps: int = 1000
    epochs: int = 0  # when > 0, steps = epochs * (train images // global batch)
    batch_size: int = 16  # per process and micro-batch; global batch = batch_size x processes x grad_accum
    grad_accum: int = 1  # micro-batches accumulated per optimizer step
    lr: float = 1e-4  # at lr_base_batch (see lr_scale)
    lr_scale: str = "none"  # none: lr as given | linear | sqrt: lr x (global batch / lr_base_batch)^(1 or 1/2)
    lr_base_batch: int = 0  # the global batch lr was tuned for; 0: batch_size (one process, no accumulation)
    precision: str = "fp32"  # fp32 | bf16 (autocast on CUDA; the quantizer and DCR stay float32)
    compile: bool = False  # torch.compile the encoder and the decoder
    channels_last: bool = True  # channels_last memory format on CUDA
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    schedule: str = "cosine"  # cosine | constant
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    grad_clip: float = 0.0  # 0 disables
    ema_decay: float = 0.0  # 0 disables weight EMA
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0  # 0: only at the end
    image_every: int = 0  # 0: only at the end
    checkpoint_every: int = 500
    best_metric: str = "psnr"  # higher is better
    progress: bool = True


@dataclass
class EvalConfig:
    batch_size: int = 64
    max_images: int = 0  # 0: the whole evaluation split
    grid_images: int = 8
    lpips_net: str | None = "vgg-shift-tolerant"  # LPIPS metric network; null disables
    fid_effnet: bool = True  # Frechet distance on EfficientNet-Lite0 features (offline; not published FID)
    rfid: bool = True  # standard rFID (FID InceptionV3); reported unavailable when its weights are absent
    inception_weights: str | None = None  # explicit pt_inception-2015-12-05-6726825d.pth


@dataclass
class GeneratorConfig:
    """A generator trained on a tokenizer's codes (``kind: ar``, issue 14) or on its continuous
    latent (``kind: ldm``, issue 15). ``kind: none`` is a tokenizer run. In a generator run
    ``model`` and ``data`` describe the tokenizer and the images it was trained on: ``model`` is
    replaced by the tokenizer run's own at training time."""

    kind: str = "none"  # none (a tokenizer run) | ar (LlamaGen-style GPT on the tokens) | ldm (latent diffusion)
    tokenizer: str | None = None  # the tokenizer: a run folder, its model/ folder or a checkpoint .pt
    tokenizer_which: str = "last"  # last | best checkpoint of a tokenizer run folder without model/
    # the GPT (vaevq.generation.GPTConfig; vocabulary and grid come from the tokenizer)
    dim: int = 256
    n_layer: int = 4
    n_head: int = 4
    multiple_of: int = 256
    norm_eps: float = 1.0e-5
    rope_base: float = 10000.0
    num_classes: int = 0  # classes of the labels (the data's: photo, class folder, contrast); 0: unconditional
    class_dropout: float = 0.1  # labels dropped to the null class (classifier-free guidance)
    token_dropout: float = 0.1
    resid_dropout: float = 0.1
    attn_dropout: float = 0.0
    # codes: the training split encoded once (and its horizontal flip with flip) and cached
    flip: bool = True
    cache_dir: str | None = None  # None: $VAEVQ_CACHE_DIR or ~/.cache/vaevq, /codes
    # sampling (grids during training, vaevq sample and vaevq eval defaults)
    cfg_scale: float = 2.0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    sample_batch: int = 64
    eval_samples: int = 1000  # vaevq eval --num default (50000 for the paper's protocol)
    grid_per_class: int = 8  # samples per class in the picture grids (at most 8 classes shown)
    # latent diffusion (kind ldm): a diffusers UNet2DModel over the tokenizer's pre-quantization
    # latent (mu for VAEVQ), DDPM training, DDIM sampling (vaevq.generation.ldm)
    unet_channels: int = 64  # channels of the first level
    unet_mult: tuple[int, ...] = (1, 2)  # channel multipliers per level (each level but the last halves the grid)
    unet_layers: int = 2  # residual blocks per level
    unet_attention: tuple[int, ...] = (1,)  # levels (0: the latent grid) with self-attention
    unet_head_dim: int = 32  # channels per attention head
    unet_norm_groups: int = 32  # GroupNorm groups (LDM: 32)
    unet_dropout: float = 0.0
    latent_scale: float = 0.0  # the latent's multiplier; 0: 1/std of the training latents (measured, recorded)
    cache_latents: bool = True  # encode the training split once (and flips) and cache; false: encode each batch
    diffusion_steps: int = 1000  # DDPM training timesteps
    beta_schedule: str = "scaled_linear"  # LDM's "linear" (linear in sqrt(beta)) is diffusers' scaled_linear
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    prediction: str = "epsilon"  # what the UNet predicts: epsilon (LDM) | v_prediction (Salimans & Ho 2022)
    sample_steps: int = 50  # DDIM steps for grids, sample and eval
    eta: float = 0.0  # DDIM eta (0: deterministic given the initial noise)


@dataclass
class Config:
    name: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    gan: GANConfig = field(default_factory=GANConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)

    @property
    def is_generator(self) -> bool:
        return self.generator.kind != "none"

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())


# ---------------------------------------------------------------- conversion helpers


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert lists to tuples, ints to floats."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {key} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{source}: {key} must have {len(args)} items, got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]", source) for i, (v, a) in enumerate(zip(value, args)))
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {key} must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key} must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{source}: {key} has an unsupported type {_type_name(tp)}")


def _build(cls: type, data: dict[str, Any], prefix: str, source: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix or 'the top level'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"{source}: unknown key {where}{unknown[0]} (known keys under "
            f"{prefix or 'the top level'}: {', '.join(sorted(names))})"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, key, source)
        else:
            kwargs[name] = _coerce(value, tp, key, source)
    return cls(**kwargs)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def config_from_dict(data: dict[str, Any], source: str = "config") -> Config:
    return _build(Config, data, "", source)


# ---------------------------------------------------------------- presets and loading


def preset_names() -> list[str]:
    folder = resources.files("vaevq") / "configs"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def yaml_error_line(err: yaml.YAMLError) -> str:
    """One line of a YAML error: what went wrong and where."""
    problem = getattr(err, "problem", None) or str(err).strip().splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    return f"{problem}, line {mark.line + 1} column {mark.column + 1}" if mark is not None else problem


def _read_yaml(path: Path | Any, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML ({yaml_error_line(err)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    return data


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["train.steps=10", "model.ch_mult=[1,2]"]`` -> nested dict (values parsed as YAML)."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {err}") from err
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override")
        node[parts[-1]] = value
    return nested


def _is_file_reference(name: str) -> bool:
    path = Path(name)
    return path.suffix in (".yaml", ".yml") or path.exists()


def _load_data(name: str, seen: tuple[str, ...] = ()) -> tuple[dict[str, Any], str]:
    """(the YAML mapping of a preset or file, with its ``base:`` chain merged in; its source)."""
    if _is_file_reference(name):
        path = Path(name)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        source = str(path)
        data = _read_yaml(path, source)
    else:
        if name not in preset_names():
            raise ConfigError(
                f"unknown preset {name!r} and no such file; presets: {', '.join(preset_names())}"
            )
        source = f"preset {name}"
        data = _read_yaml(resources.files("vaevq") / "configs" / f"{name}.yaml", source)
    base = data.pop("base", None)
    if base is not None:
        # `base: tiny` (a preset) or `base: other.yaml` (a file, relative to this one)
        if not isinstance(base, str) or not base:
            raise ConfigError(f"{source}: base must be a preset name or a YAML file; got {base!r}")
        if base not in preset_names():
            if source.startswith("preset "):
                raise ConfigError(f"{source}: base {base!r} is not a preset")
            base = str(Path(source).parent / base) if not Path(base).is_absolute() else base
            if not Path(base).is_file():
                raise ConfigError(f"{source}: base {base!r} is neither a preset ({', '.join(preset_names())}) "
                                  "nor an existing YAML file")
        if base in seen or base == name:
            raise ConfigError(f"{source}: base {base!r} makes a cycle ({' -> '.join(seen + (name, base))})")
        parent, _ = _load_data(base, seen + (name,))
        parent.pop("name", None)
        data = _merge(parent, data)
    return data, source


def load_config(preset_or_path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load a preset by name or a YAML file by path (``base: PRESET_OR_FILE`` inherits from
    another, keys given here win), then apply ``key=value`` overrides."""
    name = str(preset_or_path)
    data, source = _load_data(name)
    if not _is_file_reference(name):
        data.setdefault("name", name)
    config = config_from_dict(data, source)
    if overrides:
        merged = _merge(config.to_dict(), parse_overrides(overrides))
        config = config_from_dict(merged, "command-line override")
    return finalize(config)


def finalize(config: Config) -> Config:
    """Derived settings and cross-field checks shared by every entry point."""
    if config.data.root is not None and config.data.source == "builtin":
        config.data.source = "imagefolder"
    choices = {
        "loss.rec": (config.loss.rec, ("l1", "l2")),
        "loss.rec_paths": (config.loss.rec_paths, ("sum", "mean")),
        "loss.rcs_form": (config.loss.rcs_form, ("paper", "released")),
        "loss.dcr_target": (config.loss.dcr_target, ("prior", "latent", "both")),
        "model.quantize": (config.model.quantize, ("sample", "mean")),
        "model.codebook_init": (config.model.codebook_init, ("uniform", "normal", "latent")),
        "model.estimator": (config.model.estimator, ("straight-through", "released")),
        "data.source": (config.data.source, ("builtin", "imagefolder", "brats", "brain")),
        "data.contrast_mode": (config.data.contrast_mode, ("channels", "separate")),
        "data.on_error": (config.data.on_error, ("skip", "stop")),
        "data.brain_eval": (config.data.brain_eval, ("colin27", "held-out")),
        "train.schedule": (config.train.schedule, ("cosine", "constant")),
        "train.lr_scale": (config.train.lr_scale, ("none", "linear", "sqrt")),
        "train.precision": (config.train.precision, ("fp32", "bf16")),
        "loss.perceptual_net": (config.loss.perceptual_net, ("vgg-shift-tolerant", "vgg")),
        "gan.disc_loss": (config.gan.disc_loss, ("hinge", "vanilla")),
        "gan.gen_loss": (config.gan.gen_loss, ("hinge", "non-saturating")),
        "gan.norm": (config.gan.norm, ("batch", "group")),
        "eval.lpips_net": (config.eval.lpips_net, ("vgg-shift-tolerant", "vgg", None)),
        "generator.kind": (config.generator.kind, ("none", "ar", "ldm")),
        "generator.beta_schedule": (config.generator.beta_schedule, ("linear", "scaled_linear")),
        "generator.prediction": (config.generator.prediction, ("epsilon", "v_prediction")),
        "generator.tokenizer_which": (config.generator.tokenizer_which, ("last", "best")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")
    positive = {
        "model.latent_dim": config.model.latent_dim,
        "model.codebook_size": config.model.codebook_size,
        "model.ch": config.model.ch,
        "train.batch_size": config.train.batch_size,
        "train.grad_accum": config.train.grad_accum,
        "data.resolution": config.data.resolution,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key} must be positive; got {value}")
    _finalize_counts(config)
    _finalize_data(config)
    _finalize_generator(config)
    if config.model.dead_code_interval < 0:
        raise ConfigError(f"model.dead_code_interval must be >= 0; got {config.model.dead_code_interval}")
    for check in _CHECKS:
        check(config)
    if not config.model.ch_mult:
        raise ConfigError("model.ch_mult must have at least one entry")
    factor = 2 ** (len(config.model.ch_mult) - 1)
    if config.data.resolution % factor:
        raise ConfigError(
            f"data.resolution {config.data.resolution} is not divisible by the downsampling "
            f"factor {factor} of model.ch_mult {list(config.model.ch_mult)}"
        )
    return config


def _finalize_counts(config: Config) -> None:
    """Counts, intervals and rates: a value that cannot run (steps 0, log_every 0, lr inf) is
    refused by name before any work."""
    t, e = config.train, config.eval
    if t.epochs < 0:
        raise ConfigError(f"train.epochs must be >= 0 (0: train.steps decides); got {t.epochs}")
    if t.epochs == 0 and t.steps < 1:
        raise ConfigError(f"train.steps must be >= 1; got {t.steps}")
    at_least = {"train.log_every": (t.log_every, 1), "eval.batch_size": (e.batch_size, 1),
                "train.eval_every": (t.eval_every, 0), "train.image_every": (t.image_every, 0),
                "train.checkpoint_every": (t.checkpoint_every, 0), "train.warmup_steps": (t.warmup_steps, 0),
                "train.lr_base_batch": (t.lr_base_batch, 0), "eval.max_images": (e.max_images, 0),
                "eval.grid_images": (e.grid_images, 0), "data.num_workers": (config.data.num_workers, 0)}
    for key, (value, low) in at_least.items():
        if value < low:
            raise ConfigError(f"{key} must be >= {low}" + (" (0: off)" if low == 0 and "every" in key else "")
                              + f"; got {value}")
    if not (math.isfinite(t.lr) and t.lr > 0):
        raise ConfigError(f"train.lr must be a finite number > 0; got {t.lr}")
    for key, value in (("train.grad_clip", t.grad_clip), ("train.weight_decay", t.weight_decay)):
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{key} must be a finite number >= 0; got {value}")
    if not 0.0 <= t.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay must be in [0, 1) (0: off); got {t.ema_decay}")
    if not 0.0 <= t.min_lr_ratio <= 1.0:
        raise ConfigError(f"train.min_lr_ratio must be in [0, 1]; got {t.min_lr_ratio}")
    if not all(0.0 <= b < 1.0 for b in t.betas):
        raise ConfigError(f"train.betas must be in [0, 1); got {list(t.betas)}")


def _finalize_generator(config: Config) -> None:
    g = config.generator
    if g.kind == "none":
        return
    for key in ("dim", "n_layer", "n_head", "multiple_of", "sample_batch", "eval_samples", "grid_per_class"):
        if getattr(g, key) <= 0:
            raise ConfigError(f"generator.{key} must be positive; got {getattr(g, key)}")
    if g.kind == "ldm":
        _finalize_ldm(g)
    elif g.dim % g.n_head or (g.dim // g.n_head) % 4:
        raise ConfigError(f"generator.dim {g.dim} must be a multiple of generator.n_head {g.n_head} with a head "
                          "width divisible by 4 (2D rotary embedding: half the channels per axis, in pairs)")
    if g.num_classes < 0:
        raise ConfigError(f"generator.num_classes must be >= 0 (0: unconditional); got {g.num_classes}")
    for key in ("class_dropout", "token_dropout", "resid_dropout", "attn_dropout"):
        if not 0.0 <= getattr(g, key) < 1.0:
            raise ConfigError(f"generator.{key} must be in [0, 1); got {getattr(g, key)}")
    if g.temperature <= 0 or not 0.0 < g.top_p <= 1.0 or g.top_k < 0:
        raise ConfigError(f"generator sampling: temperature > 0, 0 < top_p <= 1, top_k >= 0; got "
                          f"{g.temperature}, {g.top_p}, {g.top_k}")


def _finalize_ldm(g: GeneratorConfig) -> None:
    for key in ("unet_channels", "unet_layers", "unet_head_dim", "unet_norm_groups", "diffusion_steps",
                "sample_steps"):
        if getattr(g, key) <= 0:
            raise ConfigError(f"generator.{key} must be positive; got {getattr(g, key)}")
    if not g.unet_mult or min(g.unet_mult) <= 0:
        raise ConfigError(f"generator.unet_mult must list positive multipliers; got {list(g.unet_mult)}")
    for m in g.unet_mult:
        width = g.unet_channels * m
        if width % g.unet_norm_groups or width % g.unet_head_dim:
            raise ConfigError(f"generator.unet_channels x unet_mult ({width}) must be divisible by "
                              f"generator.unet_norm_groups {g.unet_norm_groups} and generator.unet_head_dim "
                              f"{g.unet_head_dim}")
    bad = [a for a in g.unet_attention if not 0 <= a < len(g.unet_mult)]
    if bad:
        raise ConfigError(f"generator.unet_attention: level {bad[0]} does not exist (levels 0.."
                          f"{len(g.unet_mult) - 1} of generator.unet_mult)")
    if g.latent_scale < 0:
        raise ConfigError(f"generator.latent_scale must be >= 0 (0: 1/std measured); got {g.latent_scale}")
    if not 0 < g.beta_start < g.beta_end < 1:
        raise ConfigError(f"generator: 0 < beta_start < beta_end < 1; got {g.beta_start}, {g.beta_end}")
    if g.sample_steps > g.diffusion_steps:
        raise ConfigError(f"generator.sample_steps {g.sample_steps} exceeds generator.diffusion_steps "
                          f"{g.diffusion_steps}")
    if not 0.0 <= g.eta <= 1.0:
        raise ConfigError(f"generator.eta must be in [0, 1]; got {g.eta}")
    if not 0.0 <= g.unet_dropout < 1.0:
        raise ConfigError(f"generator.unet_dropout must be in [0, 1); got {g.unet_dropout}")


def _finalize_data(config: Config) -> None:
    d = config.data
    if d.eval_fraction is None:
        d.eval_fraction = 0.2 if d.is_brain else 0.05
    if not 0.0 < d.eval_fraction < 1.0:
        raise ConfigError(f"data.eval_fraction must be between 0 and 1; got {d.eval_fraction}")
    if not d.is_brain:
        return
    if not d.contrasts:
        raise ConfigError(f"data.contrasts must name at least one of {', '.join(CONTRASTS)}")
    for c in d.contrasts:
        if c not in CONTRASTS:
            raise ConfigError(f"data.contrasts: unknown contrast {c!r}; known: {', '.join(CONTRASTS)}")
    if len(set(d.contrasts)) != len(d.contrasts):
        raise ConfigError(f"data.contrasts has a repeated contrast: {list(d.contrasts)}")
    if not 0.0 <= d.min_brain_fraction < 1.0:
        raise ConfigError(f"data.min_brain_fraction must be in [0, 1); got {d.min_brain_fraction}")
    lo, hi = d.clip_percentiles
    if not 0.0 <= lo < hi <= 100.0:
        raise ConfigError(f"data.clip_percentiles must satisfy 0 <= low < high <= 100; got {[lo, hi]}")
    if d.brain_subjects < 2:
        raise ConfigError(f"data.brain_subjects must be at least 2; got {d.brain_subjects}")
    channels = len(d.contrasts) if d.contrast_mode == "channels" and len(d.contrasts) > 1 else 3
    config.model.in_channels = channels
    if channels != 3:
        # the pretrained networks (LPIPS, EfficientNet, InceptionV3) take RGB images
        rgb_only = {"loss.perceptual_weight=0": config.loss.perceptual_weight > 0,
                    "eval.lpips_net=null": config.eval.lpips_net is not None,
                    "eval.fid_effnet=false": config.eval.fid_effnet,
                    "eval.rfid=false": config.eval.rfid}
        needed = [k for k, on in rgb_only.items() if on]
        if needed:
            raise ConfigError(
                f"data.contrasts {list(d.contrasts)} as channels give {channels}-channel images, but "
                f"LPIPS, fid-effnet and rFID need 3-channel images: set {' '.join(needed)}, or use "
                "data.contrast_mode=separate (every contrast a grey image)")
