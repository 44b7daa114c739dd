"""Adversarial losses: hinge and non-saturating, VQGAN's adaptive weight, LeCam regularization."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vaevq.distributed import all_reduce_mean_


def d_hinge_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_hat)))."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def d_vanilla_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (mean softplus(-D(x)) + mean softplus(D(x_hat))): the binary cross-entropy form."""
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


def g_hinge_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """-mean D(x_hat) (VQGAN's generator loss)."""
    return -logits_fake.mean()


def g_nonsaturating_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """mean softplus(-D(x_hat)) = -mean log sigmoid(D(x_hat))."""
    return F.softplus(-logits_fake).mean()


D_LOSSES = {"hinge": d_hinge_loss, "vanilla": d_vanilla_loss}
G_LOSSES = {"hinge": g_hinge_loss, "non-saturating": g_nonsaturating_loss}


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    max_weight: float = 1e4, eps: float = 1e-4) -> torch.Tensor:
    """VQGAN: ||grad_w rec|| / (||grad_w g|| + eps) at the decoder's last layer w, clamped to
    [0, max_weight], detached. Both losses must still have their graphs."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.norm() / (g_grad.norm() + eps)
    return weight.clamp(0.0, max_weight).detach()


class LeCam(torch.nn.Module):
    """LeCam regularization (Tseng et al. 2021): EMAs of the mean real and fake logits, and
    reg = mean relu(D(x) - ema_fake)^2 + mean relu(ema_real - D(x_hat))^2."""

    def __init__(self, decay: float = 0.99):
        super().__init__()
        self.decay = decay
        self.register_buffer("ema_real", torch.zeros(()))
        self.register_buffer("ema_fake", torch.zeros(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def update(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> None:
        means = torch.stack([logits_real.mean(), logits_fake.mean()])
        all_reduce_mean_([means])  # the same EMAs on every rank
        real, fake = means[0], means[1]
        if not bool(self.initialized):
            self.ema_real.copy_(real)
            self.ema_fake.copy_(fake)
            self.initialized.fill_(True)
        else:
            self.ema_real.lerp_(real, 1 - self.decay)
            self.ema_fake.lerp_(fake, 1 - self.decay)

    def forward(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
        return (F.relu(logits_real - self.ema_fake).pow(2).mean()
                + F.relu(self.ema_real - logits_fake).pow(2).mean())
