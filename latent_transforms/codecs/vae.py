"""A small convolutional VAE as an image codec."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import Codec, Latents


class ConvVAE(Codec):
    """Convolutional VAE: stride-2 convolutions down to 4x4, a Gaussian latent of ``latent_dim``, a mirrored decoder.

    ``encode`` returns the posterior mean (the prior is N(0, I), so latents are already standardised);
    ``encode(x, sample=True, generator=g)`` draws from the posterior instead. The decoder ends in a sigmoid
    (Bernoulli likelihood on intensities in [0, 1]).

    Args:
        image_shape: (C, H, W); H and W equal powers of two, at least 4.
        latent_dim: size of z. hidden: channels after the first convolution (doubled per down-sampling, at most 4x).
        beta: weight of the KL term in the training loss.
    """

    kind = "vae"

    def __init__(self, image_shape=(3, 32, 32), latent_dim: int = 64, hidden: int = 64, beta: float = 1.0):
        super().__init__(image_shape)
        self.check_positive(latent_dim=latent_dim, hidden=hidden)
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0, got {beta!r}")
        c, h, w = self.image_shape
        if h != w or h < 4 or h & (h - 1):
            raise ValueError(f"ConvVAE needs square images with a power-of-two side >= 4, got {h}x{w}")
        self.latent_dim_, self.hidden, self.beta = latent_dim, hidden, beta
        downs = int(math.log2(h // 4))
        widths = [min(hidden * 2**i, hidden * 4) for i in range(downs + 1)]
        enc: list[nn.Module] = [nn.Conv2d(c, widths[0], 3, padding=1), nn.SiLU()]
        for a, b in zip(widths, widths[1:]):
            enc += [nn.Conv2d(a, b, 4, stride=2, padding=1), nn.SiLU()]
        self.encoder = nn.Sequential(*enc, nn.Flatten(), nn.Linear(widths[-1] * 16, 2 * latent_dim))
        dec: list[nn.Module] = [nn.Linear(latent_dim, widths[-1] * 16), nn.SiLU(), nn.Unflatten(1, (widths[-1], 4, 4))]
        for a, b in zip(widths[::-1], widths[::-1][1:]):
            dec += [nn.ConvTranspose2d(a, b, 4, stride=2, padding=1), nn.SiLU()]
        self.decoder = nn.Sequential(*dec, nn.Conv2d(widths[0], c, 3, padding=1))

    @property
    def config(self) -> dict:
        return {"kind": self.kind, "image_shape": list(self.image_shape), "latent_dim": self.latent_dim_,
                "hidden": self.hidden, "beta": self.beta}

    @property
    def latent_shapes(self) -> list[tuple[int, ...]]:
        return [(self.latent_dim_,)]

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, C, H, W) -> mean and log-variance, each (B, latent_dim)."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(-30, 20)

    def encode(self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None) -> Latents:
        """x: (B, C, H, W) in [0, 1] -> [(B, latent_dim)]: the posterior mean, or a posterior sample."""
        if not sample:
            return super().encode(x)
        mu, logvar = self.posterior(x.to(self.dtype))
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return [mu + torch.exp(0.5 * logvar) * eps]

    def _encode(self, x: torch.Tensor) -> Latents:
        return [self.posterior(x)[0]]

    def _decode(self, z: Latents) -> torch.Tensor:
        return torch.sigmoid(self.decoder(z[0]))

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Negative ELBO per image (nats): Bernoulli reconstruction + beta * KL."""
        mu, logvar = self.posterior(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        logits = self.decoder(z)
        rec = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1).mean()
        kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1).mean()
        mse = F.mse_loss(torch.sigmoid(logits), x)
        return rec + self.beta * kl, {"rec": rec.detach(), "kl": kl.detach(), "mse": mse.detach()}
