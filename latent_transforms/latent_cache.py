"""Encode a dataset once; later augmentations of it need a single decode."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from . import hub
from .codecs import Codec, resolve_codec
from .validation import MissingFileError, check_bool, check_count, check_images, check_index, resolve_device

FORMAT = "latent-transforms-latent-cache/1"


class LatentCache(nn.Module):
    """Standardised latents of a fixed set of images, ``(N, D)``, as a buffer (moves with ``.to``).

    ``cache = LatentCache(codec, images)``; then ``LatentNoise(codec, cache=cache)(x, y, index=idx)`` with ``idx``
    the positions of ``x`` in ``images`` skips the encoder. Memory: N x D floats (50,000 CIFAR-10 images: 0.6 GB
    in fp32). The latents belong to the images as given: pass ``index`` only for unmodified images.
    ``cache.save(path)`` / ``LatentCache.load(path, codec)`` keep them across runs (safetensors, with the codec's
    fingerprint, checked on load); ``state_dict`` carries the fingerprint too.

    Args:
        codec: the codec the transforms use: a Codec, hub name or ``.safetensors`` path (a transform refuses a cache
            whose codec has another ``fingerprint()``). images: (N, C, H, W) float in [0, 1], on any device.
        batch_size: encoding batch size. device: where the latents live (default: the codec's device).
        progress: show a progress bar while encoding.
    """

    def __init__(self, codec: Codec | str, images: torch.Tensor, *, batch_size: int = 256,
                 device: torch.device | str | None = None, progress: bool = True):
        super().__init__()
        codec = resolve_codec(codec)
        check_count("batch_size", batch_size, low=1)
        check_bool("progress", progress)
        device = None if device is None else resolve_device(device)
        check_images(images, "images")
        codec_device = codec.device
        codec.check_images(images[:1].to(codec_device))
        # filled chunk by chunk: a list of chunks and their torch.cat would need the cache's memory twice
        latents = torch.empty(len(images), codec.latent_dim, dtype=codec.dtype, device=device or codec_device)
        with torch.no_grad():
            for i in tqdm(range(0, len(images), batch_size), desc="encoding", disable=not progress, leave=False):
                latents[i:i + batch_size] = codec.encode_flat(images[i:i + batch_size].to(codec_device))
        self.codec_fingerprint = codec.fingerprint()  # after: an untrained Glow initialised its ActNorm on chunk one
        self.register_buffer("latents", latents)

    @classmethod
    def load(cls, path, codec: Codec | str, device: torch.device | str | None = None) -> "LatentCache":
        """The cache ``save`` wrote to ``path``; ``codec`` must be the one it was encoded with (same fingerprint, any
        dtype: the latents take the codec's)."""
        codec = resolve_codec(codec)
        device = None if device is None else resolve_device(device)
        if not Path(path).is_file():
            raise MissingFileError(f"no latent cache file at {path}")
        try:
            meta, tensors = hub.read_safetensors(path)
        except Exception as e:  # noqa: BLE001 - truncated, not safetensors: one message
            raise ValueError(f"{path} is not a readable latent cache ({type(e).__name__}: {e})") from None
        if meta.get("format") != FORMAT or set(tensors) != {"latents"}:
            raise ValueError(f"{path} is not a latent cache written by LatentCache.save")
        saved_sha = meta.get("latents_sha256")  # None in files written before 2026-12-02
        if saved_sha is not None and saved_sha != hub.sha256_tensors(tensors["latents"]):
            raise ValueError(f"{path}: the latents do not match the sha256 saved with them (corrupted on disk or in a "
                             f"copy); encode the images again")
        if meta.get("codec_fingerprint") != codec.fingerprint():
            raise ValueError(f"{path} was encoded with another codec than the one given (fingerprint "
                             f"{meta.get('codec_fingerprint', '?')[:12]}, the codec's {codec.fingerprint()[:12]})")
        latents = tensors["latents"]
        if latents.ndim != 2 or latents.shape[1] != codec.latent_dim:
            raise ValueError(f"{path}: latents must be (N, {codec.latent_dim}) for this codec's {codec.latent_dim} "
                             f"latent dimensions, got shape {tuple(latents.shape)}")
        if not latents.is_floating_point() or not torch.isfinite(latents).all():  # NaN ones: every sample rejected
            raise ValueError(f"{path}: the latents must be finite floats, got {latents.dtype}"
                             f"{'' if not latents.is_floating_point() else ' with NaN or inf entries'}")
        cache = cls.__new__(cls)
        nn.Module.__init__(cache)
        cache.codec_fingerprint = meta["codec_fingerprint"]
        cache.register_buffer("latents", latents.to(device or codec.device, codec.dtype))  # as the constructor
        return cache

    def save(self, path) -> str:
        """Write the latents, their sha256 and the codec's fingerprint to a ``.safetensors`` file, atomically; returns
        the file's sha256."""
        latents = self.latents.detach().cpu().contiguous()
        return hub.write_safetensors(path, {"latents": latents}, {"format": FORMAT, "latents_sha256":
                                     hub.sha256_tensors(latents), "codec_fingerprint": self.codec_fingerprint})

    def get_extra_state(self) -> dict:
        return {"codec_fingerprint": self.codec_fingerprint}

    def set_extra_state(self, state: dict) -> None:  # a transform then checks it against its own codec
        self.codec_fingerprint = state["codec_fingerprint"]

    def __len__(self) -> int:
        return self.latents.shape[0]

    def forward(self, index: torch.Tensor, *, check: bool = True) -> torch.Tensor:
        """index: (B,) int64 positions in ``[0, len(cache))``, on the cache's device -> (B, D) latents (``check=False``
        skips the index range check, one host sync, for callers that made it)."""
        if isinstance(index, torch.Tensor) and index.device != self.latents.device:
            raise ValueError(f"index is on {index.device} but the cache on {self.latents.device}; move it with "
                             f".to({str(self.latents.device)!r}) (latent-transforms never moves data between devices)")
        if check:
            check_index(index, None, len(self))
        return self.latents[index]
