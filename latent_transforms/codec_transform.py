"""Shared machinery of the methods that work in a codec's latent space: codec resolution, checks, encode/decode."""
from __future__ import annotations

import torch

from .base import LatentTransform
from .codecs import Codec, flatten_latents, unflatten_latents


def resolve_codec(codec: Codec | str) -> Codec:
    """A codec object as given, or a hub name / ``.safetensors`` path loaded (frozen) from the hub."""
    if isinstance(codec, Codec):
        return codec
    if isinstance(codec, str):
        from . import hub

        return hub.load(codec)
    raise TypeError(f"codec must be a hub name, a .safetensors path or a Codec, got {type(codec).__name__}")


class CodecTransform(LatentTransform):
    """A :class:`LatentTransform` that encodes to a codec's standardised latent space and decodes back.

    The codec is a submodule (moves with ``.to``), frozen for the transform's use: ``encode``/``decode``
    run in its dtype (fp32, TF32 off) and results are cast back to ``x``'s dtype by the base class.
    ``levels`` picks which latent levels the method acts on (all by default).
    """

    def __init__(self, codec: Codec | str, levels: list[int] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.codec = resolve_codec(codec)
        n = len(self.codec.latent_shapes)
        if levels is not None:
            bad = [i for i in levels if not isinstance(i, int) or not -n <= i < n]
            if bad or not levels:
                raise ValueError(f"levels must be a non-empty list of level indices in [0, {n}), got {levels!r}")
            levels = sorted({i % n for i in levels})
        self.levels = levels

    def check_inputs(self, x: torch.Tensor, model) -> None:
        self.codec.check_images(x)

    def level_mask(self, device: torch.device) -> torch.Tensor | None:
        """(D,) bool mask of the flattened coordinates in ``levels`` (None = all)."""
        if self.levels is None:
            return None
        parts = [torch.full((int(torch.Size(s).numel()),), i in self.levels, device=device)
                 for i, s in enumerate(self.codec.latent_shapes)]
        return torch.cat(parts)

    def encode_flat(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, D) standardised latents, without gradient."""
        with torch.no_grad():
            return flatten_latents(self.codec.encode(x))

    def decode_flat(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, C, H, W), not clipped (the base clips and rejects implausible samples)."""
        return self.codec.decode(unflatten_latents(z, self.codec.latent_shapes))
