"""Lp-ball geometry for latent perturbations (per sample, over flattened coordinates)."""
from __future__ import annotations

from typing import cast

import torch

__all__: list[str] = []  # the package's own machinery: none of it is API (docs/api.md)

NORMS = ("l2", "linf")


def _l2(d: torch.Tensor) -> torch.Tensor:
    return cast(torch.Tensor, d.norm(dim=1, keepdim=True)).clamp_min(1e-12)


def project(d: torch.Tensor, eps: float, norm: str | None) -> torch.Tensor:
    """d: (B, D) -> its projection onto the eps-ball of ``norm`` (None: no projection)."""
    if norm == "l2":
        if not eps > 0:
            return torch.zeros_like(d)
        if eps > torch.finfo(d.dtype).max:  # a ball wider than the dtype holds bounds nothing, as for linf
            return d
        # the norm itself, not _l2's: under the 1e-12 floor a point outside a 1e-14 ball was shrunk past its radius
        length = d.norm(dim=1, keepdim=True)
        # a norm past the dtype's range (float32 entries past 1.8e19: their squares overflow) read from the row scaled
        # by its largest entry, top: the point is top * unit, of norm top * ||unit|| (divided by the inf norm, it went
        # to 0). ||unit|| >= 1 but for a zero row (ascent_direction's clamp): there eps / 0 made the gradient NaN
        top = d.abs().amax(dim=1, keepdim=True)
        unit = d / top.clamp_min(torch.finfo(d.dtype).tiny)
        scaled = unit * torch.minimum(top, eps / unit.norm(dim=1, keepdim=True).clamp_min(1.0))
        return torch.where(length.isinf(), scaled, d / (length / eps).clamp_min(1.0))
    if norm == "linf":  # an eps past the dtype's range (1e300 for float32) bounds nothing: torch refuses to clamp to it
        return d.clamp(-eps, eps) if eps <= torch.finfo(d.dtype).max else d
    return d


def scaled_to_unit_max(g: torch.Tensor) -> torch.Tensor:
    """(B, D) -> each row divided by its largest absolute entry (a zero row stays zero): the same direction, in a
    range no rounding flushes to 0."""
    return g / g.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(g.dtype).tiny)


def ascent_direction(g: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent unit step for a gradient g: (B, D): g / ||g||_2 (l2; a zero gradient: no step) or sign(g)
    (linf)."""
    if norm != "l2":
        return g.sign()
    length = g.norm(dim=1, keepdim=True)
    # a row whose norm is below 1e-12 (float32 entries of about 1e-23 give a norm of 0: a very confident model's
    # gradient, averaged over the batch) is scaled by its largest entry first, so that it still takes a whole step
    scaled = scaled_to_unit_max(g)
    small = scaled / scaled.norm(dim=1, keepdim=True).clamp_min(1.0)  # a non-zero row: norm >= 1 once scaled
    return torch.where(length >= 1e-12, g / length.clamp_min(1e-12), small)


def random_start(shape: torch.Size, eps: float, norm: str, generator: torch.Generator, device: torch.device,
                 dtype: torch.dtype) -> torch.Tensor:
    """U(-eps, eps)^D projected onto the ball, as the official LA-adv random start."""
    d = (torch.rand(shape, generator=generator, device=device, dtype=dtype) * 2 - 1) * eps
    return project(d, eps, norm)


def random_perturbation(shape: torch.Size, eps: float, norm: str | None, generator: torch.Generator,
                        device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Noise of size eps: a uniformly random direction of L2 norm exactly eps (``l2``), N(0, eps^2) clipped
    to [-eps, eps] (``linf``), or plain N(0, eps^2) per coordinate (None)."""
    d = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    if norm == "l2":  # normalised before scaling: the norm of d * eps fell under _l2's floor for an eps below 1e-13
        return d / _l2(d) * eps
    return project(d * eps, eps, norm)
