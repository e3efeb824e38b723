"""The codec interface: images in [0, 1] <-> a list of standardised latents."""
from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
from torch import nn

from ..validation import check_same_device

Latents = list[torch.Tensor]  # per-level latents, each (B, *shape); coarsest first for multi-scale flows


@contextlib.contextmanager
def exact_math() -> Iterator[None]:
    """Turn TF32 off for the duration (invertibility: a Glow round trip errs by 1e-2 with TF32 on an H100)."""
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul


def flatten_latents(z: Latents) -> torch.Tensor:
    """Per-level latents -> (B, D)."""
    return torch.cat([t.flatten(1) for t in z], dim=1)


def unflatten_latents(flat: torch.Tensor, shapes: list[tuple[int, ...]]) -> Latents:
    """(B, D) -> per-level latents of the given per-sample shapes."""
    sizes = [math.prod(s) for s in shapes]
    return [t.reshape(flat.shape[0], *s) for t, s in zip(flat.split(sizes, dim=1), shapes)]


class Codec(nn.Module):
    """An invertible (flow) or approximate (VAE) map between images and standardised latents.

    ``encode(x: (B, C, H, W) float in [0, 1]) -> list of (B, *shape)`` latents whose prior is N(0, I),
    so a perturbation of a given size means the same thing at every level; ``decode`` maps back and may
    leave [0, 1] slightly (callers clip). Both run in the codec's dtype (fp32) with TF32 off and return
    that dtype. ``loss(x)`` is the training objective (bits/dim for flows, negative ELBO per image for VAEs).
    A frozen codec (``freeze()``, as every hub checkpoint is) stays in eval mode, has no trainable
    parameters and updates no statistics.
    """

    kind: str = ""

    def __init__(self, image_shape: tuple[int, int, int]):
        super().__init__()
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise ValueError(f"image_shape must be (C, H, W), got {image_shape!r}")
        self.image_shape = tuple(int(s) for s in image_shape)
        self.frozen = False

    @staticmethod
    def check_positive(**values: float) -> None:
        """Raise ValueError naming any config value that is not a positive int (or float where given as one)."""
        for name, v in values.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"{name} must be positive, got {v!r}")

    # -- to implement ---------------------------------------------------------------------------
    @property
    def config(self) -> dict:
        raise NotImplementedError

    @property
    def latent_shapes(self) -> list[tuple[int, ...]]:
        raise NotImplementedError

    def _encode(self, x: torch.Tensor) -> Latents:
        raise NotImplementedError

    def _decode(self, z: Latents) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def latent_dim(self) -> int:
        return sum(math.prod(s) for s in self.latent_shapes)

    def encode(self, x: torch.Tensor) -> Latents:
        """x: (B, C, H, W) in [0, 1] -> standardised latents (codec dtype)."""
        with exact_math():
            return self._encode(x.to(self.dtype))

    def decode(self, z: Latents) -> torch.Tensor:
        """Standardised latents -> (B, C, H, W), approximately in [0, 1] (codec dtype, not clipped)."""
        with exact_math():
            return self._decode([t.to(self.dtype) for t in z])

    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """n images decoded from N(0, temperature^2 I) latents, clipped to [0, 1]."""
        device = next(self.parameters()).device
        z = [temperature * torch.randn((n, *s), generator=generator, device=device, dtype=self.dtype) for s in self.latent_shapes]
        return self.decode(z).clamp(0, 1)

    def check_images(self, x: torch.Tensor) -> None:
        """Raise if x does not fit this codec (shape or device)."""
        if tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(
                f"this {self.kind} codec was trained on images of shape {self.image_shape} (C, H, W), "
                f"got x of shape {tuple(x.shape)}"
            )
        check_same_device(x, self, f"the {self.kind} codec")

    def freeze(self) -> "Codec":
        """Eval mode for good, no parameter gradients, no statistic updates."""
        self.frozen = True
        self.requires_grad_(False)
        return self.train(False)

    def train(self, mode: bool = True) -> "Codec":
        return super().train(mode and not self.frozen)
