"""Evaluation on a whole split: PSNR, SSIM (per image, SPEC §4) and codebook usage."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from vaevq.metrics import CodebookUsage, psnr, ssim
from vaevq.training.distributed import all_reduce_sum


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
) -> dict[str, float]:
    """Reconstruct every image (each rank a disjoint shard) and reduce over ranks.

    Returns psnr and ssim (means of per-image values, on the quantized reconstruction),
    psnr_continuous (the continuous path, variational models only), utilization,
    perplexity, used_codes, dead_codes, tokens and images; with an ``lpips`` module also
    ``lpips`` (mean per-image distance of the quantized reconstruction) and ``lpips_net``.
    """
    n = len(dataset) if max_images <= 0 else min(max_images, len(dataset))
    shard = Subset(dataset, list(range(rank, n, world_size)))
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False)
    usage = CodebookUsage(model.quantizer.codebook_size)
    sums = torch.zeros(5, dtype=torch.float64)  # psnr, ssim, psnr_continuous, images, lpips
    if lpips is not None:
        lpips = lpips.to(device)
    for x in tqdm(loader, desc="eval", disable=not progress, leave=False):
        x = x.to(device)
        out = model.reconstruct_paths(x)
        usage.update(out.indices)
        sums[0] += psnr(x, out.rec_q).sum().cpu()
        sums[1] += ssim(x, out.rec_q).sum().cpu()
        if out.rec_c is not None:
            sums[2] += psnr(x, out.rec_c).sum().cpu()
        sums[3] += x.shape[0]
        if lpips is not None:
            sums[4] += lpips(x, out.rec_q).sum().cpu()
    sums = all_reduce_sum(sums)
    usage.all_reduce()
    images = max(int(sums[3]), 1)
    metrics = {"psnr": float(sums[0]) / images, "ssim": float(sums[1]) / images}
    if model.quantizer.variational:
        metrics["psnr_continuous"] = float(sums[2]) / images
    if lpips is not None:
        metrics["lpips"] = float(sums[4]) / images
        metrics["lpips_net"] = lpips.net_name
    metrics.update(usage.summary())
    metrics["images"] = int(sums[3])
    return metrics
