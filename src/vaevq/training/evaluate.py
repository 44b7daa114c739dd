"""Evaluation on a whole split: PSNR, SSIM (per image, SPEC §4) and the token statistics."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from vaevq.distributed import all_gather_cat, all_reduce_sum
from vaevq.losses import dcr_loss
from vaevq.metrics import CodebookUsage, FrechetDistance, psnr, ssim
from vaevq.metrics.codebook import LatentSpread
from vaevq.training.noise import sample_noise
from vaevq.weights import WeightsNotFoundError

MAX_ERRORS = 1_000_000


def codebook_statistics(model, errors: list[torch.Tensor]) -> dict[str, float]:
    """Quantization error ||z - z_q|| (mean and quantiles over the first MAX_ERRORS tokens of the
    split, gathered from every rank) and, for an
    explicit codebook, its squared W2 distance to N(0, I) (the DCR quantity plus d)."""
    stats: dict[str, float] = {}
    e = torch.cat(errors).double() if errors else torch.zeros(0)
    if e.numel():
        stats["quant_error_mean"] = float(e.mean())
        for q in (0.5, 0.9, 0.99):
            stats[f"quant_error_p{int(q * 100)}"] = float(torch.quantile(e, q))
    codebook = getattr(model.quantizer, "codebook", None)  # any model whose quantizer may have one
    if codebook is not None:
        vectors = codebook.vectors().detach()
        stats["codebook_w2_to_prior"] = float(dcr_loss(vectors)) + vectors.shape[1]
    return stats


class TokenStatistics:
    """Everything counted over the tokens of a split (SPEC §4): the codes of ``encode`` (mu's,
    ``utilization``), the codes of sampled latents z_c = mu + sigma * eps under the training
    noise (``utilization_sampled``; image i's eps from seed i, so independent of the number of
    ranks), the quantization errors ||z - z_q|| and their size relative to the latent's spread."""

    def __init__(self, model, usage: CodebookUsage | None = None, world_size: int = 1):
        self.model = model
        k = model.quantizer.codebook_size
        self.usage = usage if usage is not None else CodebookUsage(k)
        self.usage_sampled = CodebookUsage(k)
        self.spread: LatentSpread | None = None
        self.errors: list[torch.Tensor] = []  # ||z - z_q|| per token, at most MAX_ERRORS per rank
        self.world_size = world_size
        self.images = 0

    def update(self, out, seeds: torch.Tensor) -> None:
        """``out``: a :class:`~vaevq.models.vaevq.Reconstruction`; ``seeds`` (B,) image seeds."""
        self.usage.update(out.indices)
        self.images += out.indices.shape[0]
        self.usage_sampled.update(self._sampled_indices(out, seeds))
        if self.spread is None:
            self.spread = LatentSpread(out.latent.shape[1])
        self.spread.update(out.latent, out.codes)
        if sum(e.numel() for e in self.errors) < MAX_ERRORS // self.world_size:
            self.errors.append(out.quant_error.flatten().cpu())

    def _sampled_indices(self, out, seeds: torch.Tensor) -> torch.Tensor:
        codebook = getattr(self.model.quantizer, "codebook", None)  # any model whose quantizer may have one
        if out.logvar is None or codebook is None:
            return out.indices  # no noise: the sample is the latent itself
        noise = sample_noise(seeds, tuple(out.latent.shape[1:]), out.latent.device)
        z_c = out.latent + torch.exp(0.5 * out.logvar) * noise
        return codebook.search(z_c, codebook.vectors(), self.model.quantizer.search_block)

    def summary(self) -> dict[str, float]:
        self.usage.all_reduce()
        self.usage_sampled.all_reduce()
        metrics: dict[str, float] = dict(self.usage.summary())
        metrics["token_images"] = int(all_reduce_sum(torch.tensor([self.images], dtype=torch.float64))[0])
        sampled = self.usage_sampled.summary("_sampled")
        metrics.update({k: v for k, v in sampled.items() if k != "tokens_sampled"})
        if self.spread is not None:
            self.spread.all_reduce()
            metrics["quant_error_sq_mean"] = self.spread.mean_squared_error()
            metrics["latent_spread"] = self.spread.spread()
            metrics["quant_error_rel"] = self.spread.relative()
        # the quantization errors of every rank (quantiles of the whole split, not of rank 0's shard)
        errors = [all_gather_cat(torch.cat(self.errors) if self.errors else torch.zeros(0))]
        metrics.update(codebook_statistics(self.model, errors))
        return metrics


def _shard_loader(dataset: Dataset, n: int, batch_size: int, rank: int, world_size: int):
    """Batches of this rank's shard (every world_size-th item) with each item's index in ``dataset``."""
    indices = list(range(rank, n, world_size))
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False)
    return zip(loader, torch.tensor(indices, dtype=torch.int64).split(batch_size))


@torch.no_grad()
def evaluate(
    model,
    dataset: Dataset,
    *,
    token_dataset: Dataset | None = None,
    batch_size: int = 64,
    max_images: int = 0,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
    progress: bool = False,
    lpips=None,
    frechet: dict | None = None,
    usage: CodebookUsage | None = None,
) -> dict[str, float]:
    """Reconstruct every image (each rank a disjoint shard) and reduce over ranks.

    Returns psnr and ssim (means of per-image values, on the quantized reconstruction),
    psnr_continuous (the continuous path, variational models only), images; with an ``lpips``
    module also ``lpips`` (mean per-image distance of the quantized reconstruction) and
    ``lpips_net``; with ``frechet`` ({metric name: FrechetDistance}) each distance between the
    originals and the quantized reconstructions (statistics reduced over ranks). The token
    statistics (:class:`TokenStatistics`: utilization, perplexity, used/dead codes, tokens, the
    same with ``_sampled``, quantization errors) are counted on ``token_dataset`` when given
    (e.g. denser tiles of the same photos, to have enough tokens for a large codebook) unless
    ``max_images`` limits the evaluation, else on the evaluated images. Pass ``usage`` to keep
    the code histogram of ``encode``.
    """
    n = len(dataset) if max_images <= 0 else min(max_images, len(dataset))
    if max_images > 0:
        token_dataset = None  # a quick evaluation: count the tokens of the evaluated images only
    tokens = TokenStatistics(model, usage, world_size)
    sums = torch.zeros(5, dtype=torch.float64)  # psnr, ssim, psnr_continuous, images, lpips
    if lpips is not None:
        lpips = lpips.to(device)
    batches = _shard_loader(dataset, n, batch_size, rank, world_size)
    for x, seeds in tqdm(batches, desc="eval", disable=not progress, leave=False,
                         total=-(-len(range(rank, n, world_size)) // batch_size)):
        x = x.to(device)
        out = model.reconstruct_paths(x)
        if token_dataset is None:
            tokens.update(out, seeds)
        sums[0] += psnr(x, out.rec_q).sum().cpu()
        sums[1] += ssim(x, out.rec_q).sum().cpu()
        if out.rec_c is not None:
            sums[2] += psnr(x, out.rec_c).sum().cpu()
        sums[3] += x.shape[0]
        if lpips is not None:
            sums[4] += lpips(x.clamp(-1, 1), out.rec_q.clamp(-1, 1)).sum().cpu()
        for fd in (frechet or {}).values():
            fd.update(x, real=True)
            fd.update(out.rec_q, real=False)
    if token_dataset is not None:
        n_tokens = len(token_dataset)
        batches = _shard_loader(token_dataset, n_tokens, batch_size, rank, world_size)
        for x, seeds in tqdm(batches, desc="eval tokens", disable=not progress, leave=False,
                             total=-(-len(range(rank, n_tokens, world_size)) // batch_size)):
            tokens.update(model.reconstruct_paths(x.to(device), continuous=False, decode=False), seeds)
    sums = all_reduce_sum(sums)
    images = max(int(sums[3]), 1)
    metrics = {"psnr": float(sums[0]) / images, "ssim": float(sums[1]) / images}
    if model.quantizer.variational:
        metrics["psnr_continuous"] = float(sums[2]) / images
    if lpips is not None:
        metrics["lpips"] = float(sums[4]) / images
        metrics["lpips_net"] = lpips.net_name
    for name, fd in (frechet or {}).items():
        fd.all_reduce()
        metrics[name] = fd.compute()
        fd.reset()
    metrics.update(tokens.summary())
    metrics["images"] = int(sums[3])
    return metrics


def frechet_metrics(eval_config, device: torch.device | str = "cpu") -> tuple[dict, dict[str, str]]:
    """The Frechet distances the config asks for, and a note for each that is unavailable.

    ``rfid`` needs the FID InceptionV3 weights; when they cannot be found the note says why and
    how to provide them (the value is never invented). ``fid_effnet`` works offline.
    """

    metrics, notes = {}, {}
    if eval_config.rfid:
        try:
            metrics["rfid"] = FrechetDistance("inception-v3-fid", eval_config.inception_weights, device)
        except WeightsNotFoundError as err:
            notes["rfid"] = ("unavailable: the FID InceptionV3 weights pt_inception-2015-12-05-6726825d.pth "
                             "were not found (give --inception-weights or VAEVQ_INCEPTION_WEIGHTS)")
            notes["rfid_detail"] = str(err)
    if eval_config.fid_effnet:
        metrics["fid_effnet"] = FrechetDistance("effnet-lite0", device=device)
    return metrics, notes
