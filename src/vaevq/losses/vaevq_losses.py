"""The VAEVQ loss terms (SPEC §1): reconstruction, RCS, DCR and KL."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Eigenvalues below this fraction of the largest are treated as zero in Tr(S^1/2): far below any
# real eigenvalue (at taming's init all eigenvalues are about equal), far above float64 noise.
DCR_RELATIVE_FLOOR = 1e-12


def _check_same_shape(**tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"shapes differ: {shapes}")


def rcs_loss(z_q: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Representation coherence (paper eq. 7), (B, d, h, w) each -> scalar.

    0.5 * sum over d of ((z_q - mu) / sg(sigma))^2, averaged over batch and positions.
    """
    _check_same_shape(z_q=z_q, mu=mu, logvar=logvar)
    sigma = torch.exp(0.5 * logvar).detach()
    return 0.5 * ((z_q - mu) / sigma).pow(2).sum(1).mean()


def rcs_loss_released(z_q: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """The released code's form: sigma not detached, 0.5 * mean of eps^2 over every element."""
    _check_same_shape(z_q=z_q, mu=mu, logvar=logvar)
    return 0.5 * ((z_q - mu) / torch.exp(0.5 * logvar)).pow(2).mean()


def kl_loss(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)): 0.5 * sum over (d, h, w), mean over batch."""
    _check_same_shape(mu=mu, logvar=logvar)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)
    return kl.flatten(1).sum(1).mean()


def _sqrt_trace(eigenvalues: torch.Tensor) -> torch.Tensor:
    """sum_j sqrt(lambda_j) with eigenvalues below a floor relative to the largest counted as zero."""
    floor = (eigenvalues.max().detach() * DCR_RELATIVE_FLOOR).clamp_min(1e-300)
    return torch.sqrt(torch.maximum(eigenvalues, floor)).sum()


def gaussian_moments(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, d) -> float64 mean (d,) and unbiased covariance (d, d) (paper eq. 9-10)."""
    if rows.dim() != 2 or rows.shape[0] < 2:
        raise ValueError(f"expected (N, d) rows with N >= 2; got {tuple(rows.shape)}")
    e = rows.to(torch.float64)
    mean = e.mean(0)
    centered = e - mean
    return mean, centered.t() @ centered / (e.shape[0] - 1)


def latent_rows(z: torch.Tensor) -> torch.Tensor:
    """(B, d, h, w) latents -> (B*h*w, d) rows: one d-vector per token position."""
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])


def dcr_loss(codebook: torch.Tensor, target: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Distribution consistency (paper eq. 11), (K, d) -> scalar.

    Without ``target``: ||mu_q||^2 + Tr(S) - 2 Tr(S^1/2), S the unbiased covariance of the
    codebook rows: the closed-form W2^2 between N(mu_q, S) and N(0, I), minus the constant d.
    With ``target = (m, T)`` (a Gaussian the codebook is pulled to, e.g. the detached batch
    statistics of the latent; SPEC §7): ||mu_q - m||^2 + Tr(S) - 2 Tr((T^1/2 S T^1/2)^1/2),
    the W2^2 between N(mu_q, S) and N(m, T) minus Tr(T) (constant for the codebook); it equals
    the first form when m = 0 and T = I. No gradient reaches the target.

    Computed in float64 from eigenvalues only (eigenvector gradients are undefined when
    eigenvalues repeat); eigenvalues below a floor relative to the largest count as zero.
    """
    if codebook.dim() != 2 or codebook.shape[0] < 2:
        raise ValueError(f"dcr_loss expects a (K, d) codebook with K >= 2; got {tuple(codebook.shape)}")
    mean, cov = gaussian_moments(codebook)
    if target is None:
        loss = mean.pow(2).sum() + torch.diagonal(cov).sum() - 2.0 * _sqrt_trace(torch.linalg.eigvalsh(cov))
        return loss.to(codebook.dtype)
    t_mean, t_cov = (t.detach().to(torch.float64) for t in target)
    if t_mean.shape != mean.shape or t_cov.shape != cov.shape:
        raise ValueError(f"target moments of shapes {tuple(t_mean.shape)}, {tuple(t_cov.shape)} for a "
                         f"codebook of dimension {mean.shape[0]}")
    values, vectors = torch.linalg.eigh(t_cov)
    root = (vectors * values.clamp_min(0.0).sqrt()) @ vectors.t()  # T^1/2, symmetric
    middle = root @ cov @ root
    middle = 0.5 * (middle + middle.t())  # exactly symmetric for eigvalsh
    loss = ((mean - t_mean).pow(2).sum() + torch.diagonal(cov).sum()
            - 2.0 * _sqrt_trace(torch.linalg.eigvalsh(middle)))
    return loss.to(codebook.dtype)


def reconstruction_loss(x: torch.Tensor, x_hat: torch.Tensor, kind: str = "l2") -> torch.Tensor:
    """Mean squared (l2) or absolute (l1) pixel error."""
    if kind == "l2":
        return F.mse_loss(x_hat, x)
    if kind == "l1":
        return F.l1_loss(x_hat, x)
    raise ValueError(f"unknown reconstruction loss {kind!r} (l1 or l2)")
