"""Encode a dataset once; later augmentations of it need a single decode."""
from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from .codecs import Codec, resolve_codec
from .validation import check_count, check_images


class LatentCache(nn.Module):
    """Standardised latents of a fixed set of images, ``(N, D)``, as a buffer (moves with ``.to``).

    ``cache = LatentCache(codec, images)``; then ``LatentNoise(codec, cache=cache)(x, y, index=idx)`` with ``idx``
    the positions of ``x`` in ``images`` skips the encoder. Memory: N x D floats (50,000 CIFAR-10 images: 0.6 GB
    in fp32). The latents belong to the images as given: pass ``index`` only for unmodified images.

    Args:
        codec: the codec the transforms use: a Codec, hub name or ``.safetensors`` path (a transform refuses a cache
            whose codec has another ``fingerprint()``). images: (N, C, H, W) float in [0, 1], on any device.
        batch_size: encoding batch size. device: where the latents live (default: the codec's device).
        progress: show a progress bar while encoding.
    """

    def __init__(self, codec: Codec | str, images: torch.Tensor, batch_size: int = 256,
                 device: torch.device | str | None = None, progress: bool = True):
        super().__init__()
        codec = resolve_codec(codec)
        check_count("batch_size", batch_size, low=1)
        check_images(images, "images")
        codec_device = codec.device
        codec.check_images(images[:1].to(codec_device))
        self.codec_fingerprint = codec.fingerprint()
        chunks = []
        with torch.no_grad():
            for i in tqdm(range(0, len(images), batch_size), desc="encoding", disable=not progress, leave=False):
                chunks.append(codec.encode_flat(images[i:i + batch_size].to(codec_device)).to(device or codec_device))
        self.register_buffer("latents", torch.cat(chunks))

    def __len__(self) -> int:
        return self.latents.shape[0]

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        """index: (B,) int64 positions -> (B, D) latents on the cache's device."""
        return self.latents[index.to(self.latents.device)]
