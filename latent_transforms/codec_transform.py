"""Shared machinery of the methods that work in a codec's latent space: codec resolution, checks, encode/decode."""
from __future__ import annotations

import contextlib
import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from .base import LatentTransform, submodules_changed
from .codecs import Codec, resolve_codec
from .codecs.base import ChecksCodecStates
from .latent_cache import LatentCache
from .validation import (ValueCheck, WrongTypeError, bad_option, check_batch, check_device, is_int, is_sequence,
                         shown, values_unread)

if TYPE_CHECKING:
    from torch.nn.modules.module import _IncompatibleKeys

__all__ = ["CodecTransform"]


class CodecTransform(ChecksCodecStates, LatentTransform):
    """A ``LatentTransform`` that encodes to a codec's standardised latent space and decodes back.

    The codec is a submodule (moves with ``.to``; a cast to 16 bits, as Lightning's ``precision="bf16-true"``, keeps
    it and the cache's latents in float32); ``encode``/``decode`` run in its dtype (fp32, TF32 off) and results are
    cast back to ``x``'s dtype by the base class. Give a frozen codec (hub checkpoints are;
    ``codec.freeze()`` for your own): an unfrozen one is used as it is, follows the transform's ``train()``, and an
    untrained Glow would initialise its ActNorm layers from the first batch it sees.
    ``levels`` picks which latent levels the method acts on (all by default). With ``cache=LatentCache(...)``
    a call ``t(x, y, model, index=idx)`` looks the latents up instead of encoding (``x`` must then be the
    cached images, unmodified: put the transform before pixel augmentations; the cache checks it).
    """

    _codec_fingerprint: str | None  # the codec's fingerprint, taken when its _codec_key() was _fingerprint_key
    _fingerprint_key: tuple[object, ...] | None

    def __init__(self, codec: Codec | str, *, levels: Sequence[int] | None = None, cache: LatentCache | None = None,
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.codec, self.cache = codec, cache  # settings: checked whenever set, the cache against the codec
        self.register_load_state_dict_post_hook(_refresh_after_load)
        self.levels = levels

    @property
    def codec(self) -> Codec:
        """The codec. Assigned (a hub name, a path or a ``Codec``, as the constructor's), the levels and the cache are
        checked against it as the constructor's, and the draws resized (as a plain submodule it took anything, and
        kept the draws sized for the codec before); ``eps`` keeps its value."""
        return cast(Codec, self._modules["codec"])

    @codec.setter
    def codec(self, codec: Codec | str) -> None:
        self._replace("codec", resolve_codec(codec))

    @property
    def cache(self) -> LatentCache | None:
        """The ``LatentCache`` looked up with ``index=`` (``None``: none). Assigned, it is checked as the constructor's
        (against the codec, and the method's other settings: VarMixup's ``posterior``); a plain attribute took
        anything, and a cache of another codec was refused only at a call with ``index=``."""
        # a transform pickled before 2026-12-05 kept None as a plain attribute
        return cast("LatentCache | None", self._modules.get("cache"))

    @cache.setter
    def cache(self, cache: LatentCache | None) -> None:
        if cache is not None and not isinstance(cache, LatentCache):
            raise WrongTypeError(f"cache must be a LatentCache (LatentCache(codec, images)) or None, got "
                                 f"{type(cache).__name__}")
        self._replace("cache", cache)

    def _replace(self, name: str, module: nn.Module | None) -> None:
        """Set the submodule ``name`` (the codec or the cache) and check the settings together, as the constructor
        does (``_check_settings``); a refused value leaves the transform as it was."""
        before = self._modules.get(name)
        self._modules[name] = module
        try:
            self._check_settings()
        except BaseException:
            self._modules[name] = before
            # back to the draws' sizes of before; the codec before may fail the cache check too (t.codec = t.codec
            # after a write through .data): the error above says so, not the same one again, chained to it
            with contextlib.suppress(ValueError):
                self._check_settings()
            raise
        submodules_changed()  # its buffers left out of a DDP model's broadcast again

    def _check_settings(self) -> None:
        """The checks of settings together, as the constructor makes them (once each is set): the levels against the
        codec (the draws resized), the cache against the codec; a subclass adds its own (VarMixup's ``posterior``).
        No cache in ``_modules`` (the constructor's first check, or a transform pickled before 2026-12-05, which kept
        ``cache=None`` as a plain attribute) reads as none: the checks run all the same."""
        if "_levels" in self.__dict__:
            self.levels = self.levels
        self._refresh_fingerprint()

    @property
    def levels(self) -> list[int] | None:
        """The latent levels the method acts on, sorted (``None``: all). Assigned (``t.levels = [0]``), it is checked
        and normalised as the constructor's, and the draws are resized (as a plain attribute, the noise was drawn over
        every coordinate and cut: an L2 size of 0.68 for ``eps=1``); ``eps`` keeps its value. A new list each read,
        so that only an assignment changes it (changed in place, ``t.levels.append(1)``, the transform's own list
        outgrew the draws' size, unchecked)."""
        return None if self._levels is None else list(self._levels)

    @levels.setter
    def levels(self, levels: Sequence[int] | None) -> None:
        n = len(self.codec.latent_shapes)
        if levels is not None:
            if not is_sequence(levels):  # a list, a tuple, Hydra's ListConfig
                raise WrongTypeError(f"levels must be a list of level indices in [0, {n}), such as [0], got "
                                     f"{shown(levels)}")
            bad = [i for i in levels if not is_int(i) or not -n <= i < n]
            if bad or not levels:
                wrong_type = not all(is_int(i) for i in bad)
                raise bad_option(f"levels must be a non-empty list of level indices in [0, {n}) (or from -{n}, "
                                 f"counted from the finest, as a list index), got {shown(levels)}",
                                 right_type=not wrong_type)
            # a level named twice ([0, 0], or [1, -1] of 2): a typo for another level, merged without a word before
            chosen = [int(i) % n for i in levels]
            twice = next((i for i in chosen if chosen.count(i) > 1), None)
            if twice is not None:
                raise ValueError(f"levels names level {twice} twice, got {shown(levels)}: each level once (a negative "
                                 f"index counts from the finest, -1 being level {n - 1})")
            levels = tuple(sorted(chosen))
        sizes = [int(torch.Size(s).numel()) for s in self.codec.latent_shapes]
        self._levels, self._level_size = levels, sum(sizes) if levels is None else sum(sizes[i] for i in levels)

    @property
    def _index_size(self) -> int | None:
        return None if self.cache is None else len(self.cache)

    def _value_checks(self, x: torch.Tensor, index: torch.Tensor | None) -> list[ValueCheck]:
        """With ``index``: whether ``x`` holds the cached images at those positions (``LatentCache._image_checks``);
        left to ``check_inputs`` to refuse when the cache, the images' shape or device do not fit."""
        cache = self.cache
        if index is None or cache is None or x.shape[1:] != self.codec.image_shape or x.device != cache.latents.device:
            return []
        return cache._image_checks(x, index)

    def check_inputs(self, x: torch.Tensor, model: nn.Module | None, index: torch.Tensor | None) -> None:
        self.codec.check_images(x, allow_empty=True)  # an empty batch passes through (base class)
        if index is None:
            return
        if self.cache is None:
            raise ValueError(f"index= needs a latent cache: {type(self).__name__}(..., cache=LatentCache(codec, images))")
        self._check_cache()  # again: the cache's own load_state_dict may have brought another codec's latents
        check_device("the latent cache", self.cache.latents.device, x)

    def _refresh_fingerprint(self) -> None:
        """Check the cache against the codec now (after construction and load_state_dict)."""
        self._codec_fingerprint, self._fingerprint_key = None, None
        self._check_cache()

    def _codec_key(self) -> tuple[object, ...]:
        """Changes when the codec is replaced, its config is (a Glow's ``alpha`` assigned), or its weights are written
        in place (``load_state_dict``, ``copy_``, an optimiser's step: their version counters) or given other storage
        (``p.data = ...``, ``vector_to_parameters``, ``swap_tensors``: their data addresses). A write through ``.data``
        (``p.data.copy_(...)``) and a fused optimiser's step move neither (docs/composition.md)."""
        codec = self.codec  # each module's own tensors: the key over parameters() and buffers() took 1.7x as long
        tensors = (t for m in codec.modules() for t in itertools.chain(m._parameters.values(), m._buffers.values())
                   if t is not None)
        return (id(codec), codec.config, *itertools.chain.from_iterable((t._version, t.data_ptr()) for t in tensors))

    def _check_cache(self) -> None:
        if self.cache is None:
            return
        key = self._codec_key()
        if key != self._fingerprint_key:  # the fingerprint hashes every weight: again only when they may have changed
            self._codec_fingerprint, self._fingerprint_key = self.codec.fingerprint(), key
        if self.cache._codec_fingerprint != self._codec_fingerprint:
            self.codec.check_dtype()  # weights loaded in 16 bits are rounded: say so, not "another codec"
            raise ValueError("the latent cache was encoded with another codec than this transform's (other config "
                             "or weights)")
        if self.cache.latents.dtype != self.codec.dtype:  # .to() casts both alike: set apart by hand
            raise ValueError(f"the latent cache holds {self.cache.latents.dtype} latents but the codec is "
                             f"{self.codec.dtype}: cast both alike, e.g. transform.to({self.codec.dtype})")

    def extra_repr(self) -> str:
        cache = f", cache=LatentCache({len(self.cache)})" if self.cache is not None else ""
        levels = f"levels={self.levels}, " if self.levels is not None else ""
        return (f"{levels}codec={type(self.codec).__name__}({self.codec._settings_repr(image_shape=False)}){cache}, "
                + super().extra_repr())

    def level_mask(self, device: torch.device) -> torch.Tensor | None:
        """(D,) bool mask on ``device`` of the flattened coordinates in ``levels`` (None = all)."""
        if self._levels is None:
            return None
        parts = [torch.full((int(torch.Size(s).numel()),), i in self._levels, device=device)
                 for i, s in enumerate(self.codec.latent_shapes)]
        return torch.cat(parts)

    def on_levels_only(self, values: torch.Tensor) -> torch.Tensor:
        """``values: (B, n)`` for the ``n`` coordinates of ``levels`` placed into a ``(B, D)`` tensor, zero elsewhere
        (``values`` itself when all levels are chosen): draw a perturbation over the chosen coordinates only, so
        that its size is measured there."""
        mask = self.level_mask(values.device)
        if mask is None:
            return values
        out = values.new_zeros(values.shape[0], mask.numel())
        return out.masked_scatter(mask.expand_as(out), values)

    def level_size(self) -> int:
        """n, the number of latent coordinates in ``levels`` (D if all); computed once (no mask built per call)."""
        return self._level_size

    def on_levels(self, new: torch.Tensor, old: torch.Tensor | float) -> torch.Tensor:
        """``new: (B, D)`` on the coordinates of ``levels``, ``old`` (a tensor or 0) elsewhere; ``new`` if all levels."""
        mask = self.level_mask(new.device)
        return new if mask is None else torch.where(mask, new, old)

    def encode_flat(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, D) standardised latents, without gradient (looked up in the cache by ``index: (B,)``
        int64 dataset positions, checked against the cache size and ``x`` as a call's: on entry to the call, or here
        when called outside one)."""
        if index is not None:
            # called directly, not in a transform's call, which checked them on entry (unchecked, -1 gave the last
            # latent, a missing cache "'NoneType' object is not callable", x of other images their latents)
            if values_unread():
                check_batch(x, None, None, index, self._index_size, more_checks=lambda: self._value_checks(x, index))
                self.check_inputs(x, None, index)
            return cast(LatentCache, self.cache)(index, check=False)  # checked
        with torch.no_grad():
            return self.codec.encode_flat(x)

    def decode_flat(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, D) -> (B, C, H, W), not clipped (the base clips and rejects implausible samples)."""
        return self.codec.decode_flat(z)


def _refresh_after_load(transform: CodecTransform, incompatible_keys: _IncompatibleKeys) -> None:
    transform._refresh_fingerprint()  # a module-level function: transforms stay picklable
