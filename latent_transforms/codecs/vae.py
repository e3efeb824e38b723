"""A small convolutional VAE as an image codec."""
from __future__ import annotations

import math
import numbers
from typing import Any, Sequence, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..rng import draw_generator
from ..validation import (WrongTypeError, bad_option, check_bool, check_count, check_number, describe, is_int, scalar,
                          setting, shown)
from .base import Codec, Latents, shapes_weights
from .precision import exact_math

__all__ = ["ConvVAE"]


class ResidualBlock(nn.Module):
    """``x + conv(silu(conv(x)))`` with 3x3 convolutions keeping (B, C, H, W); the second starts at zero, so a new
    block is the identity."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        assert self.conv2.bias is not None  # nn.Conv2d's bias=True
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + cast(torch.Tensor, self.conv2(F.silu(self.conv1(x))))


def _check_latent_side(name: str, value: object, padded: int | None = None, where: str = "") -> int | None:
    """``value``, a VAE's latent side: ``None`` or a power of two, as an int; ``<= padded`` where given (the network's
    side, named by ``where``)."""
    if value is None:
        return None
    side = scalar(value)
    right_type = is_int(side)
    n = int(cast(numbers.Integral, side)) if right_type else 0  # exact, as is_int passed
    if not right_type or n < 1 or (padded is not None and n > padded) or n & (n - 1):
        bound = "" if padded is None else f" <= {where}"
        raise bad_option(f"{name} must be None or a power of two{bound}, got {shown(value)}", right_type=right_type)
    return n


def _check_padding(name: str, value: object) -> tuple[int, int, int, int]:
    """``value``, a VAE's padding in ``F.pad``'s order ``(left, right, top, bottom)``: four ints >= 0, as a tuple."""
    seq = cast("Sequence[Any]", value)  # read as one only where it is a tuple or list
    ints = isinstance(value, (tuple, list)) and len(seq) == 4 and all(is_int(v) for v in seq)
    if not ints or min(seq) < 0:
        raise bad_option(f"{name} must be (left, right, top, bottom) ints >= 0, got {shown(value)}", right_type=ints)
    left, right, top, bottom = (int(v) for v in seq)
    return left, right, top, bottom


class ConvVAE(Codec):
    """Convolutional VAE: stride-2 convolutions, a diagonal Gaussian latent, a mirrored decoder.

    The latent is a vector of ``latent_dim`` (a linear layer from a 4x4 feature map; the default), or, with
    ``latent_side=s``, a spatial map of shape (latent_dim, s, s) (a convolution from an s x s feature map). A
    spatial latent keeps more detail (sharper decodes: docs/checkpoints.md), and mixing two of them also blends
    their layouts.

    Images whose sides are not one power of two (28x28, 28x20) are zero-padded, centred, to the square power-of-two
    side that holds them (32x32, ``padded_side(h, w)``) on the way in, and decodes are cropped back: the codec takes
    and gives (C, H, W).

    ``encode`` returns the posterior mean (the prior is N(0, I), so latents are already standardised);
    ``encode(x, sample=True, generator=g)`` draws from the posterior instead. The decoder ends in a sigmoid
    (Bernoulli likelihood on intensities in [0, 1]).

    Args:
        image_shape: (C, H, W), any sides (padded as above; the network works at a power-of-two side >= 4).
        latent_dim: size of a vector z, or channels of a spatial z.
        hidden: channels after the first convolution (doubled per down-sampling, at most 4x).
        beta: weight of the KL term in the training loss.
        latent_side: ``None`` (a vector latent) or the side s of a spatial latent, a power of two <= the padded side.
        decoder_blocks: residual blocks after each of the decoder's up-samplings (0: none, as in the shipped VAEs,
            whose configs do not list it); a deeper decoder at the same latent.
    """

    kind = "vae"
    beta = setting("beta", check_number)  # checked whenever set: a KL warm-up's vae.beta = ...
    # the others shape the networks, fixed at construction
    latent_dim_ = shapes_weights("latent_dim_", check_count, low=1, config_key="latent_dim",
                                 why="it shapes the networks and their weights")
    """The constructor's ``latent_dim``, channels per latent position (``config["latent_dim"]``; ``latent_dim`` is
    the numbers per image, ``latent_dim_ * latent_side ** 2`` for a spatial latent): fixed."""
    hidden = shapes_weights("hidden", check_count, low=1, why="it shapes the networks and their weights")
    # checked for its form when set; the constructor checks that it fits the padded image side
    latent_side = shapes_weights("latent_side", _check_latent_side, why="it shapes the networks and their weights")
    decoder_blocks = shapes_weights("decoder_blocks", check_count, why="it shapes the decoder and its weights")
    padding = shapes_weights("padding", _check_padding, why="it follows image_shape",
                             remedy="for images of another shape, a new codec, build_codec({**codec.config, "
                                    "'image_shape': [C, H, W]}), trained on them")
    """``(left, right, top, bottom)``, ints >= 0 (``F.pad``'s order): the zeros around an image that make its side the
    smallest power of two >= 4 the networks take; follows ``image_shape``, fixed."""

    def __init__(self, image_shape: tuple[int, int, int] | list[int] = (3, 32, 32), *, latent_dim: int = 64,
                 hidden: int = 64, beta: float = 1.0, latent_side: int | None = None, decoder_blocks: int = 0):
        super().__init__(image_shape)
        latent_dim, hidden = self._check_positive(latent_dim=latent_dim, hidden=hidden)
        beta = check_number("beta", beta)
        c, h, w = self.image_shape
        padded = self.padded_side(h, w)
        top, left = (padded - h) // 2, (padded - w) // 2
        self.padding = (left, padded - w - left, top, padded - h - top)  # F.pad's order: left, right, top, bottom
        where = f"the image side {h}" if (h, w) == (padded, padded) else f"the padded side {padded} of {h}x{w}"
        latent_side = _check_latent_side("latent_side", latent_side, padded, where)  # with the side it must fit
        self.latent_dim_, self.hidden, self.beta, self.latent_side = latent_dim, hidden, beta, latent_side
        side = latent_side or 4
        downs = int(math.log2(padded // side))
        decoder_blocks = check_count("decoder_blocks", decoder_blocks)  # its form first
        if decoder_blocks and not downs:  # its blocks follow the up-samplings: there would be none, silently
            given = "" if latent_side is None else f"latent_side {latent_side} at "
            raise ValueError(f"decoder_blocks must be 0 with {given}{where}: its blocks follow the decoder's "
                             f"up-samplings, and it has none; got {decoder_blocks}"
                             f"{'' if padded == 4 else ' (a smaller latent side gives it up-samplings)'}")
        self.decoder_blocks = decoder_blocks
        widths = [min(hidden * 2**i, hidden * 4) for i in range(downs + 1)]
        enc: list[nn.Module] = [nn.Conv2d(c, widths[0], 3, padding=1), nn.SiLU()]
        for a, b in zip(widths, widths[1:]):
            enc += [nn.Conv2d(a, b, 4, stride=2, padding=1), nn.SiLU()]
        if latent_side is None:
            self.encoder = nn.Sequential(*enc, nn.Flatten(), nn.Linear(widths[-1] * 16, 2 * latent_dim))
            dec: list[nn.Module] = [nn.Linear(latent_dim, widths[-1] * 16), nn.SiLU(),
                                    nn.Unflatten(1, (widths[-1], 4, 4))]
        else:
            self.encoder = nn.Sequential(*enc, nn.Conv2d(widths[-1], 2 * latent_dim, 3, padding=1))
            dec = [nn.Conv2d(latent_dim, widths[-1], 3, padding=1), nn.SiLU()]
        for a, b in zip(widths[::-1], widths[::-1][1:]):
            dec += [nn.ConvTranspose2d(a, b, 4, stride=2, padding=1), nn.SiLU()]
            dec += [ResidualBlock(b) for _ in range(self.decoder_blocks)]
        self.decoder = nn.Sequential(*dec, nn.Conv2d(widths[0], c, 3, padding=1))

    @staticmethod
    def padded_side(h: int, w: int) -> int:
        """The side the networks work at for (H, W) images: the smallest power of two >= 4 that holds both."""
        return max(4, 1 << (max(h, w) - 1).bit_length())

    @property
    def config(self) -> dict[str, Any]:
        config = {"kind": self.kind, "image_shape": list(self.image_shape), "latent_dim": self.latent_dim_,
                  "hidden": self.hidden, "beta": self.beta, "latent_side": self.latent_side}
        if self.decoder_blocks:  # listed only when used: older configs (and fingerprints) stay as they were
            config["decoder_blocks"] = self.decoder_blocks
        return config

    @property
    def latent_shapes(self) -> list[tuple[int, ...]]:
        if self.latent_side is None:
            return [(self.latent_dim_,)]
        return [(self.latent_dim_, self.latent_side, self.latent_side)]

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, C, H, W) in [0, 1] -> mean and log-variance, each of shape (B, *latent_shapes[0]) (x's shape, dtype
        and device checked as ``encode``'s; float64 images are taken into the codec's float32)."""
        self.check_input(x)
        return self._posterior(x.to(self.dtype))

    def _posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``posterior`` of checked images in the codec's dtype."""
        if any(self.padding):  # F.pad copies even with no padding: not for the shipped, power-of-two VAEs
            x = F.pad(x, self.padding)
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(-30, 20)

    def _logits(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, *latent_shapes[0]) -> the decoder's logits (B, C, H, W), cropped from the padded side."""
        left, _, top, _ = self.padding
        _, h, w = self.image_shape
        return cast(torch.Tensor, self.decoder(z))[..., top:top + h, left:left + w]

    def encode(self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | int | None = None,
               noise: torch.Tensor | None = None) -> Latents:
        """x: (B, C, H, W) in [0, 1] -> [(B, *latent_shapes[0])]: the posterior mean, or a posterior sample
        (``generator``: ``None``, torch's global RNG; an ``int`` seed; a ``torch.Generator`` on x's device; or
        ``noise``: the standard normal draws to use, B x D values, e.g. ``(B, D)``)."""
        if not check_bool("sample", sample):
            if noise is not None or generator is not None:  # they would be ignored: the mean draws nothing
                raise ValueError("noise= and generator= draw a posterior sample: pass sample=True with them")
            return super().encode(x)
        if noise is not None and generator is not None:
            raise ValueError("give noise= (the draws themselves) or generator= (to draw them), not both")
        self.check_input(x, allow_empty=True)  # as encode's mean
        generator = draw_generator(generator, x.device)
        with exact_math(x.device.type):
            mu, logvar = self._posterior(x.to(self.dtype))
        if noise is None:
            eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        elif not isinstance(noise, torch.Tensor) or not noise.is_floating_point():
            raise WrongTypeError(f"noise must be a float tensor of standard normal draws, got {describe(noise)}")
        elif noise.numel() != mu.numel() or noise.device != mu.device:
            raise ValueError(f"noise must hold {mu.numel()} values (B x D) on {mu.device}, got {describe(noise)} on "
                             f"{noise.device}")
        else:
            eps = noise.reshape(mu.shape).to(mu.dtype)
        return [mu + torch.exp(0.5 * logvar) * eps]

    def _encode(self, x: torch.Tensor) -> Latents:
        return [self._posterior(x)[0]]

    def _decode(self, z: Latents) -> torch.Tensor:
        return torch.sigmoid(self._logits(z[0]))

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Negative ELBO per image (nats) of ``x: (B, C, H, W)`` in [0, 1]: Bernoulli reconstruction + beta * KL,
        averaged over the batch, as ``(scalar, {"rec", "kl", "mse": scalars})``."""
        terms = self.elbo_terms(x)
        rec, kl = terms["rec"].mean(), terms["kl"].mean()
        mse = F.mse_loss(torch.sigmoid(terms["logits"]), x)
        return rec + self.beta * kl, {"rec": rec.detach(), "kl": kl.detach(), "mse": mse.detach()}

    def elbo_terms(self, x: torch.Tensor, generator: torch.Generator | int | None = None) -> dict[str, torch.Tensor]:
        """The ELBO's parts for x: (B, C, H, W) in [0, 1], with one posterior sample per image.

        Returns ``mu`` (the posterior mean), ``logits`` (the decoder's output for the sample), ``rec`` (B,)
        (Bernoulli reconstruction nats) and ``kl`` (B,) (nats). ``generator``: an ``int`` seed or a CPU generator for
        the sample's noise, drawn on the CPU whatever x's device (seeded evaluation); by default the global RNG on x's
        device.
        """
        self.check_input(x)
        x = x.to(self.dtype)  # as encode: float64 images into a float32 codec
        generator = draw_generator(generator, torch.device("cpu"))
        mu, logvar = self._posterior(x)
        if generator is None:
            noise = torch.randn_like(mu)
        else:
            noise = torch.randn(mu.shape, generator=generator, device="cpu", dtype=torch.float32)
            noise = noise.to(mu.device, mu.dtype)
        logits = self._logits(mu + torch.exp(0.5 * logvar) * noise)
        rec = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
        return {"mu": mu, "logits": logits, "rec": rec, "kl": self._kl_divergence(mu, logvar)}

    @staticmethod
    def _kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """KL(N(mu, exp(logvar)) || N(0, I)) in nats per image: (B, ...) -> (B,)."""
        return 0.5 * (mu**2 + logvar.exp() - 1 - logvar).flatten(1).sum(1)
