"""Encode a dataset once; later augmentations of it need a single decode."""
from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from . import hub
from .casts import TensorFn, without_16_bit_casts
from .codecs import Codec, resolve_codec
from .progress import progress_bar
from .validation import (MissingFileError, Settings, ValueCheck, check_bool, check_count, check_images, check_index,
                         expanded_path, resolve_device, setting, values_read)

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["LatentCache"]

FORMAT = "latent-transforms-latent-cache/1"


def _projection(num_pixels: int) -> torch.Tensor:
    """(num_pixels, 2) fixed random signs / sqrt(num_pixels), on the CPU: two projections of an image that tell it
    from a flipped, shifted or recoloured copy (the same for every cache, so saved signatures stay comparable)."""
    g = torch.Generator().manual_seed(0)
    return (torch.randint(0, 2, (num_pixels, 2), generator=g, device="cpu") * 2 - 1).float() / math.sqrt(num_pixels)


def _signatures(images: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 2): the images' projections, as a sum of products (a matmul would round with TF32)."""
    return (images.flatten(1).to(projection.dtype).unsqueeze(2) * projection).sum(1)


def _judge_images(tolerance: float, worst: float, row: float, position: float) -> None:
    if not worst <= tolerance:  # NaN (a NaN image or signature) fails too
        raise ValueError(
            f"x is not the images this latent cache holds at index (row {int(row)}, position {int(position)}: its "
            f"signature differs by {worst:.3g}); a transform given index= must get the cached images unmodified: put "
            f"it before any pixel augmentation (LatentCache(..., verify_images=False) turns this check off)")


def _unusable_latents(latents: torch.Tensor, dtype: torch.dtype) -> str | None:
    """Why ``latents`` (N, D) from a file or a state cannot be a cache's in ``dtype``, the codec's (``None``: they
    can): NaN ones reject every sample; 1e300 in float64 is inf in float32; a 16-bit copy holds values past its
    largest (65504 in float16) as inf."""
    if not latents.is_floating_point():
        why = ""
    elif not torch.isfinite(latents).all():
        why = " with NaN or inf entries"
        if latents.dtype in (torch.float16, torch.bfloat16) and torch.isinf(latents).any():
            why += (f" (a copy in {latents.dtype} stores latents beyond {torch.finfo(latents.dtype).max:.6g} as inf: "
                    f"keep them in the codec's dtype)")
    elif hub.beyond_range(latents, dtype):
        why = f" with entries beyond the range of {dtype}, the codec's dtype"
    else:
        return None
    return f"the latents must be finite floats, got {latents.dtype}{why}"


class LatentCache(Settings, nn.Module):
    """Standardised latents of a fixed set of images, ``(N, D)``, as a buffer (moves with ``.to``).

    ``cache = LatentCache(codec, images)``; then ``LatentNoise(codec, cache=cache)(x, y, index=idx)`` with ``idx``
    the positions of ``x`` in ``images`` skips the encoder. Memory: N x D floats (50,000 CIFAR-10 images through
    glow-cifar10, D = 3072: 0.6 GB in fp32). The latents belong to the images as given: pass ``index`` only for
    unmodified images (each call checks two random projections of ``x`` against the cached images', N x 2 numbers,
    in the call's one host sync).
    ``cache.save(path)`` / ``LatentCache.load(path, codec)`` keep them across runs (safetensors, with the codec's
    fingerprint, checked on load); ``state_dict`` carries the fingerprint too.

    Args:
        codec: the codec the transforms use: a Codec, hub name or ``.safetensors`` path (a transform refuses a cache
            whose codec has another ``fingerprint()``).
        images: (N, C, H, W) float in [0, 1], on any device.
        batch_size: encoding batch size (default 256).
        device: where the latents live (default: the codec's device).
        progress: show a progress bar while encoding (default True).
        verify_images: check that ``x`` holds the cached images at ``index`` (default True; ``False``: the latents are
            used whatever ``x`` holds).

    ``repr`` shows ``LatentCache(N, latent_dim=D, verify_images=...)``; ``state_dict`` holds ``latents`` (N, D) and
    ``_extra_state`` (the codec's fingerprint and the image signatures).
    """

    latents: torch.Tensor  # buffers
    _image_signatures: torch.Tensor | None
    _image_projection: torch.Tensor
    verify_images = setting("verify_images", check_bool)  # "no" read as true: the check stayed on

    @torch.inference_mode(False)  # built inside inference_mode, the latents refused load_state_dict for good
    def __init__(self, codec: Codec | str, images: torch.Tensor, *, batch_size: int = 256,
                 device: torch.device | str | None = None, progress: bool = True, verify_images: bool = True):
        super().__init__()
        codec = resolve_codec(codec)
        check_count("batch_size", batch_size, low=1)
        check_bool("progress", progress)
        self.verify_images = verify_images  # a setting: checked whenever set
        device = None if device is None else resolve_device(device)
        check_images(images, "images")
        codec_device = codec.device
        codec.check_image_shape(images, "images")  # on any device: named before the latents' memory is taken
        # filled chunk by chunk: a list of chunks and their torch.cat would need the cache's memory twice
        latents = torch.empty(len(images), codec.latent_dim, dtype=codec.dtype, device=device or codec_device)
        projection = _projection(images[0].numel()).to(codec_device)
        signatures = torch.empty(len(images), 2, device=latents.device, dtype=torch.float32)  # bf16 ones refused x
        with torch.no_grad(), values_read():  # images' values read above, once
            for i in progress_bar(range(0, len(images), batch_size), desc="encoding", disable=not progress,
                                  leave=False):
                chunk = images[i:i + batch_size].to(codec_device)
                latents[i:i + batch_size] = codec.encode_flat(chunk)
                signatures[i:i + batch_size] = _signatures(chunk, projection)
        self._codec_fingerprint = codec.fingerprint()  # after: an untrained Glow initialised its ActNorm on chunk one
        self.register_buffer("latents", latents)
        self._set_signatures(signatures, projection)

    def _set_signatures(self, signatures: torch.Tensor | None, projection: torch.Tensor) -> None:
        """Buffers (they follow ``.to``) out of ``state_dict``'s tensors: the signatures (float32, whatever a file held)
        travel in its extra state."""
        device = self.latents.device
        self.register_buffer("_image_signatures", None if signatures is None else signatures.to(device, torch.float32),
                             persistent=False)
        self.register_buffer("_image_projection", projection.to(device), persistent=False)

    def _apply(self, fn: TensorFn, recurse: bool = True) -> Self:
        """``.to(device)`` moves the latents and the image signatures. A cast to 16 bits moves the latents but keeps
        their dtype, the codec's, as the codec keeps its own (``.double()`` casts both alike). The signatures stay
        float32 under any cast (``.double()`` too): rounded to 16 bits they refused the cached images themselves,
        also after a cast back."""
        fn = without_16_bit_casts(fn)
        kept = {k: getattr(self, k) for k in ("_image_signatures", "_image_projection") if getattr(self, k) is not None}
        super()._apply(fn, recurse)
        for key, before in kept.items():
            after = getattr(self, key)
            if after.dtype != before.dtype:
                setattr(self, key, before.to(after.device))
        return self

    def _image_checks(self, x: torch.Tensor, index: torch.Tensor) -> list[ValueCheck]:
        """Whether ``x: (B, C, H, W)`` holds the cached images at ``index`` (on the cache's device, in range: judged
        before), as a ``(statistics, judge)`` pair for ``validation.check_batch``; none if ``verify_images`` is off or
        the cache was saved without signatures."""
        if not self.verify_images or self._image_signatures is None:
            return []
        position = index.clamp(0, len(self) - 1)  # a position out of range is reported by the index check first
        projection = self._image_projection
        diff = (_signatures(x, projection) - self._image_signatures[position].to(projection.dtype)).abs().amax(1)
        worst, row = diff.max(0)  # indexing with a 0-d tensor would read it on the host: 1-d indices below
        tolerance = max(1e-4, 4 * torch.finfo(x.dtype).eps)  # float32 rounding; the rounding of a bf16 batch
        stats = torch.cat([worst.view(1), row.view(1).to(diff.dtype), position[row.view(1)].to(diff.dtype)])
        return [(stats, lambda v: _judge_images(tolerance, *v))]

    @classmethod
    @torch.inference_mode(False)  # as the constructor's
    def load(cls, path: str | os.PathLike[str], codec: Codec | str, device: torch.device | str | None = None, *,
             verify_images: bool = True) -> "LatentCache":
        """The cache ``save`` wrote to ``path``; ``codec`` must be the one it was encoded with (same fingerprint, any
        dtype: the latents take the codec's). ``device``: where the latents go (default: the codec's device), and
        ``verify_images`` as the constructor's. A file saved before 2026-12-02 has no image signatures: its images
        are not checked."""
        codec = resolve_codec(codec)
        check_bool("verify_images", verify_images)
        device = None if device is None else resolve_device(device)
        path = expanded_path(path, f"path {str(path)!r}")
        if not path.is_file():
            raise MissingFileError(f"no latent cache file at {path}")
        try:
            meta, tensors = hub.read_safetensors(path)
        except Exception as e:  # noqa: BLE001 - truncated, not safetensors: one message
            raise ValueError(f"{path} is not a readable latent cache ({type(e).__name__}: {e})") from None
        if meta.get("format") != FORMAT or set(tensors) not in ({"latents"}, {"latents", "signatures"}):
            raise ValueError(f"{path} is not a latent cache written by LatentCache.save")
        if not hub.matches_checksum(meta, tensors):  # files written before 2026-12-02 have none
            raise ValueError(f"{path}: the latents do not match the sha256 saved with them (corrupted on disk or in a "
                             f"copy); encode the images again")
        if meta.get("codec_fingerprint") != codec.fingerprint():
            raise ValueError(f"{path} was encoded with another codec than the one given (fingerprint "
                             f"{meta.get('codec_fingerprint', '?')[:12]}, the codec's {codec.fingerprint()[:12]})")
        latents = tensors["latents"]
        if latents.ndim != 2 or latents.shape[1] != codec.latent_dim:
            raise ValueError(f"{path}: latents must be (N, {codec.latent_dim}) for this codec's {codec.latent_dim} "
                             f"latent dimensions, got shape {tuple(latents.shape)}")
        problem = _unusable_latents(latents, codec.dtype)
        if problem:
            raise ValueError(f"{path}: {problem}")
        signatures = tensors.get("signatures")
        if signatures is not None and signatures.shape != (len(latents), 2):
            raise ValueError(f"{path}: signatures must be ({len(latents)}, 2), got shape {tuple(signatures.shape)}")
        if signatures is not None and not (signatures.dtype in (torch.float32, torch.float64)
                                           and torch.isfinite(signatures).all()):
            raise ValueError(f"{path}: the image signatures must be finite floats of 32 or 64 bits (with NaN ones no "
                             f"image would be checked; rounded to 16 bits they refuse the cached images themselves; "
                             f"LatentCache.save writes float32), got {signatures.dtype}")
        cache = cls.__new__(cls)
        nn.Module.__init__(cache)
        cache._codec_fingerprint, cache.verify_images = meta["codec_fingerprint"], verify_images
        cache.register_buffer("latents", latents.to(device or codec.device, codec.dtype))  # as the constructor
        cache._set_signatures(signatures, _projection(math.prod(codec.image_shape)))
        return cache

    def save(self, path: str | os.PathLike[str]) -> str:
        """Write the latents, the images' signatures, their sha256 and the codec's fingerprint to the ``.safetensors``
        file ``path`` (a leading ``~`` expanded), atomically; returns the file's sha256."""
        path = expanded_path(path, f"path {str(path)!r}")
        tensors = {"latents": self.latents.detach().cpu().contiguous()}
        if self._image_signatures is not None:
            tensors["signatures"] = self._image_signatures.detach().cpu().float().contiguous()
        return hub.write_safetensors(path, tensors, {
            "format": FORMAT, **hub.checksum_metadata(tensors), "codec_fingerprint": self._codec_fingerprint})

    def get_extra_state(self) -> dict[str, str | torch.Tensor | None]:
        """``state_dict``'s ``_extra_state``: the codec's fingerprint and the image signatures, ``(N, 2)`` float32
        (``None`` for a cache loaded from a file saved without them)."""
        return {"codec_fingerprint": self._codec_fingerprint, "signatures": self._image_signatures}

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any],
                              strict: bool, missing_keys: list[str], unexpected_keys: list[str],
                              error_msgs: list[str]) -> None:
        saved = state_dict.get(prefix + "latents")
        if isinstance(saved, torch.Tensor) and saved.shape != self.latents.shape:
            # torch's size mismatch was hidden by set_extra_state's, on the signatures, which named neither
            error_msgs.append(f"{prefix}latents: this state holds {tuple(saved.shape)} (N images, D latent values), "
                              f"this cache {tuple(self.latents.shape)}: build the cache over the images and codec it "
                              f"was saved with, then load")
            return
        problem = _unusable_latents(saved, self.latents.dtype) if isinstance(saved, torch.Tensor) else None
        if problem:  # copied in, inf latents were taken silently (LatentCache.load refuses them)
            error_msgs.append(f"{prefix}latents: {problem}; nothing of this cache was loaded")
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """The fingerprint (a transform then checks it against its own codec) and the loaded latents' image
        signatures: the old ones would refuse the images of the loaded latents and accept those they replaced. A
        state without them (saved before 2026-12-03) turns the image check off, as an old cache file does."""
        self._codec_fingerprint = state["codec_fingerprint"]
        signatures = state.get("signatures")
        if signatures is not None and tuple(signatures.shape) != (len(self), 2):
            raise ValueError(f"signatures must be ({len(self)}, 2) for {len(self)} latents, got shape "
                             f"{tuple(signatures.shape)}")
        self._image_signatures = None if signatures is None else signatures.to(self.latents.device, torch.float32)

    def extra_repr(self) -> str:
        """``N`` (as a transform's repr names its cache: ``cache=LatentCache(N)``), D, and the image check."""
        return f"{len(self)}, latent_dim={self.latents.shape[1]}, verify_images={self.verify_images}"

    def __len__(self) -> int:
        """N, the number of cached images (``index`` addresses ``[0, N)``)."""
        return self.latents.shape[0]

    if TYPE_CHECKING:  # nn.Module's __call__ returns Any
        def __call__(self, index: torch.Tensor, *, check: bool = True) -> torch.Tensor: ...

    def forward(self, index: torch.Tensor, *, check: bool = True) -> torch.Tensor:
        """index: (B,) int64 positions in ``[0, len(cache))``, on the cache's device -> (B, D) latents (``check=False``
        skips the index's checks, its form and its range, one host sync, for callers that made them)."""
        if isinstance(index, torch.Tensor) and index.device != self.latents.device:
            raise ValueError(f"index is on {index.device} but the cache on {self.latents.device}; move it with "
                             f".to({str(self.latents.device)!r}) (latent-transforms never moves data between devices)")
        if check:
            check_index(index, None, len(self))
        return self.latents[index]
