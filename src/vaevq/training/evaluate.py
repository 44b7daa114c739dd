"""Evaluation on a whole split: PSNR, SSIM (per image, SPEC §4) and codebook usage."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from vaevq.metrics import CodebookUsage, psnr, ssim
from vaevq.training.distributed import all_gather_cat, all_reduce_sum

MAX_ERRORS = 1_000_000


def codebook_statistics(model, errors: list[torch.Tensor]) -> dict[str, float]:
    """Quantization error ||z - z_q|| (mean and quantiles over the first MAX_ERRORS tokens of the
    split, gathered from every rank) and, for an
    explicit codebook, its squared W2 distance to N(0, I) (the DCR quantity plus d)."""
    from vaevq.losses import dcr_loss

    stats: dict[str, float] = {}
    e = torch.cat(errors).double() if errors else torch.zeros(0)
    if e.numel():
        stats["quant_error_mean"] = float(e.mean())
        for q in (0.5, 0.9, 0.99):
            stats[f"quant_error_p{int(q * 100)}"] = float(torch.quantile(e, q))
    codebook = getattr(model.quantizer, "codebook", None)
    if codebook is not None:
        vectors = codebook.vectors().detach()
        stats["codebook_w2_to_prior"] = float(dcr_loss(vectors)) + vectors.shape[1]
    return stats


@torch.no_grad()
def evaluate(
    model,
    dataset: Dataset,
    *,
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
    psnr_continuous (the continuous path, variational models only), utilization,
    perplexity, used_codes, dead_codes, tokens and images; with an ``lpips`` module also
    ``lpips`` (mean per-image distance of the quantized reconstruction) and ``lpips_net``;
    with ``frechet`` ({metric name: FrechetDistance}) each distance between the originals and
    the quantized reconstructions (statistics reduced over ranks). Pass ``usage`` to keep the
    code histogram.
    """
    n = len(dataset) if max_images <= 0 else min(max_images, len(dataset))
    shard = Subset(dataset, list(range(rank, n, world_size)))
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False)
    usage = usage if usage is not None else CodebookUsage(model.quantizer.codebook_size)
    errors: list[torch.Tensor] = []  # ||z - z_q|| per token (at most MAX_ERRORS kept per rank)
    sums = torch.zeros(5, dtype=torch.float64)  # psnr, ssim, psnr_continuous, images, lpips
    if lpips is not None:
        lpips = lpips.to(device)
    for x in tqdm(loader, desc="eval", disable=not progress, leave=False):
        x = x.to(device)
        out = model.reconstruct_paths(x)
        usage.update(out.indices)
        if out.quant_error is not None and sum(e.numel() for e in errors) < MAX_ERRORS // world_size:
            errors.append(out.quant_error.flatten().cpu())
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
    sums = all_reduce_sum(sums)
    usage.all_reduce()
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
    metrics.update(usage.summary())
    # the quantization errors of every rank (quantiles of the whole split, not of rank 0's shard)
    errors = [all_gather_cat(torch.cat(errors) if errors else torch.zeros(0))]
    metrics.update(codebook_statistics(model, errors))
    metrics["images"] = int(sums[3])
    return metrics


def frechet_metrics(eval_config, device: torch.device | str = "cpu") -> tuple[dict, dict[str, str]]:
    """The Frechet distances the config asks for, and a note for each that is unavailable.

    ``rfid`` needs the FID InceptionV3 weights; when they cannot be found the note says why and
    how to provide them (the value is never invented). ``fid_effnet`` works offline.
    """
    from vaevq.metrics import FrechetDistance
    from vaevq.weights import WeightsNotFoundError

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
