"""A LlamaGen-style autoregressive transformer over tokenizer codes (our own code).

The class label is one prefix token (an embedding with one extra "null" row for classifier-free
guidance; ``num_classes`` 0: one learned start token), a token embedding of its own (not the
tokenizer's codebook), pre-norm blocks (RMSNorm, causal attention through
``scaled_dot_product_attention`` with 2D rotary position embedding over the token grid, SwiGLU),
a final RMSNorm and a linear head. ``gpt(tokens, labels)[:, i]`` predicts ``tokens[:, i]``
(position 0 from the class token).

Sampling (:meth:`GPT.generate`) prefills the class token into a preallocated key/value cache and
then feeds one token at a time; classifier-free guidance runs the conditional and the null rows
in one batch, ``uncond + (cond - uncond) * cfg``; temperature, top-k and top-p filtering;
seeded by a ``torch.Generator``. ``use_cache=False`` recomputes the whole prefix at every step
(the reference for the tests and the benchmark).

Reading of LlamaGen kept here: the same layer shapes (SwiGLU width 2/3 x 4 x dim rounded up to
a multiple of 256; no biases), the 2D rotary layout (the first half of each head's channels
rotates with the row, the second half with the column). One deliberate difference: LlamaGen
gives the class token rotary factors (cos, sin) = (0, 0), which zeroes its query and key; here
it gets the identity rotation (cos 1, sin 0), so the class token is attended like any other.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from vaevq.config import Config, GeneratorConfig, load_config
from vaevq.fileio import atomic_write_text
from vaevq.hub import HubMixin, load_state, load_weights, read_yaml, require_files, resolve_folder, save_weights
from vaevq.rundir import CONFIG, WEIGHTS


@dataclass
class GPTConfig:
    vocab_size: int = 512  # the tokenizer's codebook size K
    grid: tuple[int, int] = (8, 8)  # (h, w) of the token grid; the sequence is row-major h * w
    dim: int = 256
    n_layer: int = 4
    n_head: int = 4
    multiple_of: int = 256  # SwiGLU hidden width rounded up to this
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    num_classes: int = 0  # 0: unconditional (one learned start token)
    class_dropout: float = 0.1  # labels replaced by the null class in training (classifier-free guidance)
    token_dropout: float = 0.1  # dropout on the input embeddings
    resid_dropout: float = 0.1  # dropout on each block's attention and feed-forward outputs
    attn_dropout: float = 0.0

    @property
    def length(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    def check(self) -> None:
        if self.dim % self.n_head:
            raise ValueError(f"generator dim {self.dim} is not divisible by n_head {self.n_head}")
        if self.head_dim % 4:
            raise ValueError(f"2D rotary embedding needs a head width divisible by 4; got {self.head_dim}")
        if self.vocab_size < 2 or min(self.grid) < 1:
            raise ValueError(f"vocab_size {self.vocab_size} and grid {self.grid} must be positive")


def latent_grid(config: Config) -> tuple[int, int]:
    """(h, w) of the token grid of a tokenizer config."""
    factor = 2 ** (len(config.model.ch_mult) - 1)
    side = config.data.resolution // factor
    return side, side


def gpt_config(g: GeneratorConfig, vocab_size: int, grid: tuple[int, int]) -> GPTConfig:
    """The GPT of a config's generator section for a tokenizer's vocabulary and grid."""
    return GPTConfig(vocab_size=vocab_size, grid=tuple(grid), dim=g.dim, n_layer=g.n_layer, n_head=g.n_head,
                     multiple_of=g.multiple_of, norm_eps=g.norm_eps, rope_base=g.rope_base,
                     num_classes=g.num_classes, class_dropout=g.class_dropout, token_dropout=g.token_dropout,
                     resid_dropout=g.resid_dropout, attn_dropout=g.attn_dropout)


def ffn_width(dim: int, multiple_of: int) -> int:
    hidden = int(2 * 4 * dim / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_2d(grid: tuple[int, int], head_dim: int, base: float = 10000.0, prefix: int = 1) -> torch.Tensor:
    """(prefix + h * w, head_dim / 2, 2) (cos, sin) per position and channel pair: pairs
    [0, head_dim/4) rotate with the row, [head_dim/4, head_dim/2) with the column (row-major
    positions); the ``prefix`` positions (the class token) get the identity rotation."""
    h, w = grid
    quarter = head_dim // 4
    freqs = 1.0 / (base ** (torch.arange(quarter, dtype=torch.float64) / quarter))  # (quarter,)
    rows = torch.arange(h, dtype=torch.float64)[:, None, None] * freqs  # (h, 1, quarter)
    cols = torch.arange(w, dtype=torch.float64)[None, :, None] * freqs  # (1, w, quarter)
    angles = torch.cat([rows.expand(h, w, quarter), cols.expand(h, w, quarter)], dim=-1)
    angles = angles.reshape(h * w, 2 * quarter)
    table = torch.stack([angles.cos(), angles.sin()], dim=-1)
    identity = torch.stack([torch.ones(prefix, 2 * quarter), torch.zeros(prefix, 2 * quarter)], -1).double()
    return torch.cat([identity, table]).float()


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, head_dim), table (T, head_dim / 2, 2): rotate each consecutive channel pair."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    cos, sin = table[..., 0], table[..., 1]
    out = torch.stack([pairs[..., 0] * cos - pairs[..., 1] * sin, pairs[..., 1] * cos + pairs[..., 0] * sin], -1)
    return out.flatten(-2).type_as(x)


class KVCache:
    """Preallocated keys and values of every layer: (layers, B, H, T_max, head_dim) each."""

    def __init__(self, layers: int, batch: int, heads: int, length: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        self.k = torch.zeros(layers, batch, heads, length, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.length = 0  # positions filled


class Attention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.head_dim
        self.wqkv = nn.Linear(config.dim, 3 * config.dim, bias=False)
        self.wo = nn.Linear(config.dim, config.dim, bias=False)
        self.attn_dropout = config.attn_dropout
        self.resid_dropout = nn.Dropout(config.resid_dropout)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, cache: KVCache | None = None,
                layer: int = 0, start: int = 0) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.wqkv(x).view(b, t, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        if cache is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                 dropout_p=self.attn_dropout if self.training else 0.0)
        else:
            cache.k[layer, :, :, start:start + t] = k
            cache.v[layer, :, :, start:start + t] = v
            keys, values = cache.k[layer, :, :, :start + t], cache.v[layer, :, :, :start + t]
            # causal within the new block; every earlier position visible
            mask = torch.ones(t, start + t, dtype=torch.bool, device=x.device).tril(start)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        return self.resid_dropout(self.wo(out.transpose(1, 2).reshape(b, t, -1)))


class FeedForward(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        hidden = ffn_width(config.dim, config.multiple_of)
        self.w1 = nn.Linear(config.dim, hidden, bias=False)
        self.w3 = nn.Linear(config.dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, config.dim, bias=False)
        self.dropout = nn.Dropout(config.resid_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.feed_forward = FeedForward(config)

    def forward(self, x, rope, cache=None, layer=0, start=0):
        x = x + self.attention(self.attention_norm(x), rope, cache, layer, start)
        return x + self.feed_forward(self.ffn_norm(x))


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Keep the ``top_k`` largest logits (0: all) and the smallest set of the largest whose
    probabilities sum to at least ``top_p`` (1.0: all); the others become -inf."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        before = probs.cumsum(-1) - probs  # mass of the strictly larger ones
        drop_sorted = before >= top_p  # the first token is always kept
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, V) -> (B,) int64: argmax at temperature 0, else a draw from the filtered softmax."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = filter_logits(logits.float() / temperature, top_k, top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class GPT(HubMixin, nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        config.check()
        self.config = config
        self.class_embedding = nn.Embedding(max(config.num_classes, 0) + 1, config.dim)  # last row: null
        self.token_embedding = nn.Embedding(config.vocab_size, config.dim)
        self.token_dropout = nn.Dropout(config.token_dropout)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.register_buffer("rope", rope_2d(config.grid, config.head_dim, config.rope_base), persistent=False)
        self.apply(self._init)

    @classmethod
    def from_preset(cls, name: str, overrides: list[str] | None = None) -> GPT:
        """A fresh GPT of a generator preset (``gpt-tiny``, ``llamagen-b``, ...): its generator
        section, with the vocabulary (``model.codebook_size``) and token grid of the preset's
        tokenizer settings."""
        config = load_config(name, overrides)
        if not config.is_generator:
            raise ValueError(f"{name} is a tokenizer preset (generator.kind none); generator presets: gpt-tiny, "
                             "gpt-brain-tiny, llamagen-b, llamagen-b-brats")
        return cls(gpt_config(config.generator, config.model.codebook_size, latent_grid(config)))

    def save_pretrained(self, directory: str | Path) -> None:
        """config.yaml (the GPTConfig) and model.safetensors, each written atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_weights(directory, self.state_dict())
        settings = dataclasses.asdict(self.config)
        settings["grid"] = list(settings["grid"])
        atomic_write_text(directory / CONFIG, yaml.safe_dump({"gpt": settings}, sort_keys=False))

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, map_location: str = "cpu", revision: str | None = None,
                        cache_dir: str | Path | None = None, token: str | None = None,
                        local_files_only: bool = False) -> GPT:
        """A folder written by :meth:`save_pretrained`, or a Hugging Face Hub id ``org/name``."""
        directory = resolve_folder(name_or_path, revision, cache_dir, token, local_files_only)
        require_files(directory, who="GPT.save_pretrained")
        settings = read_yaml(directory / CONFIG).get("gpt")
        if not isinstance(settings, dict):
            raise ValueError(f"{directory / CONFIG} has no gpt section")
        known = {f.name for f in dataclasses.fields(GPTConfig)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(f"{directory / CONFIG}: unknown gpt key(s) {', '.join(unknown)}")
        settings["grid"] = tuple(settings.get("grid", GPTConfig.grid))
        model = cls(GPTConfig(**settings))
        load_state(model, load_weights(directory, map_location), directory / WEIGHTS)
        return model

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    def _labels(self, labels: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        if self.config.num_classes == 0 or labels is None:
            return torch.full((batch,), self.null_class, dtype=torch.long, device=device)
        labels = labels.to(device=device, dtype=torch.long)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > self.null_class):
            raise ValueError(f"class labels must be in [0, {self.config.num_classes}] "
                             f"({self.config.num_classes} is the null class)")
        return labels

    def _embed(self, tokens: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
        parts = [self.class_embedding(labels)[:, None]]
        if tokens is not None and tokens.shape[1]:
            parts.append(self.token_embedding(tokens))
        return self.token_dropout(torch.cat(parts, dim=1))

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, L) int64, labels (B,) int64 -> logits (B, L, V); ``logits[:, i]`` predicts
        ``tokens[:, i]``. In training, labels are dropped to the null class with probability
        ``class_dropout``."""
        b, length = tokens.shape
        if length > self.config.length:
            raise ValueError(f"{length} tokens for a grid of {self.config.length}")
        labels = self._labels(labels, b, tokens.device)
        if self.training and self.config.class_dropout > 0 and self.config.num_classes > 0:
            drop = torch.rand(b, device=tokens.device) < self.config.class_dropout
            labels = torch.where(drop, torch.full_like(labels, self.null_class), labels)
        return self.output(self.norm(self._full(self._embed(tokens[:, :-1], labels)))).float()

    def _step(self, x: torch.Tensor, cache: KVCache, start: int) -> torch.Tensor:
        rope = self.rope[start:start + x.shape[1]]
        for i, layer in enumerate(self.layers):
            x = layer(x, rope, cache, i, start)
        return self.output(self.norm(x[:, -1])).float()

    @torch.no_grad()
    def generate(self, labels: torch.Tensor | None = None, num: int | None = None, cfg_scale: float = 1.0,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 generator: torch.Generator | None = None, use_cache: bool = True) -> torch.Tensor:
        """(B, L) int64 token ids (row-major over the grid) for ``labels`` (B,) (or ``num``
        unconditional samples); ``cfg_scale`` != 1 guides with the null class in the same batch."""
        was_training = self.training
        self.eval()
        try:
            device = self.rope.device
            if labels is None:
                if num is None:
                    raise ValueError("give labels, or num for unconditional samples")
                labels = torch.full((num,), self.null_class, dtype=torch.long, device=device)
            labels = self._labels(labels, labels.shape[0], device)
            b = labels.shape[0]
            guided = cfg_scale != 1.0
            if guided:
                labels = torch.cat([labels, torch.full_like(labels, self.null_class)])
            tokens = torch.zeros(b, 0, dtype=torch.long, device=device)
            cache = None
            if use_cache:
                dtype = next(self.parameters()).dtype
                cache = KVCache(len(self.layers), labels.shape[0], self.config.n_head, self.config.length,
                                self.config.head_dim, dtype, device)
            for i in range(self.config.length):
                rows = torch.cat([tokens, tokens]) if guided else tokens
                if cache is None:
                    x = self._embed(rows, labels)
                    logits = self.output(self.norm(self._full(x)[:, -1])).float()
                elif i == 0:
                    logits = self._step(self._embed(None, labels), cache, 0)  # prefill: the class token
                else:
                    logits = self._step(self.token_embedding(rows[:, -1:]), cache, i)
                if guided:
                    cond, uncond = logits.chunk(2)
                    logits = uncond + (cond - uncond) * cfg_scale
                nxt = sample_logits(logits, temperature, top_k, top_p, generator)
                tokens = torch.cat([tokens, nxt[:, None]], dim=1)
            return tokens
        finally:
            self.train(was_training)

    def _full(self, x: torch.Tensor) -> torch.Tensor:
        """Every block over a whole sequence from position 0 (causal attention, no cache)."""
        rope = self.rope[:x.shape[1]]
        for layer in self.layers:
            x = layer(x, rope)
        return x
