"""The codec interface: images in [0, 1] <-> a list of standardised latents."""
from __future__ import annotations

import hashlib
import json
import math
import numbers
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, TypeVar, cast

import torch
from torch import nn

from ..casts import TensorFn, without_16_bit_casts
from ..rng import draw_generator
from ..torch_defaults import codec_build_defaults
from ..validation import (ModuleMixin, Settings, SettingT, WrongStateError, WrongTypeError, bad_option, check_bool,
                          check_dense, check_image_values, check_images, check_items, check_number, check_same_device,
                          describe, first_tensor, fixed_at_construction, is_int, is_sequence, scalar, setting, shown,
                          state_mismatch, values_unread)
from .precision import exact_math

if TYPE_CHECKING:
    from torch.nn.modules.module import _IncompatibleKeys

    from ..validation import Setting

__all__ = ["Codec", "Latents", "flatten_latents", "unflatten_latents"]

Latents = list[torch.Tensor]  # per-level latents, each (B, *shape); coarsest first for multi-scale flows
_CodecT = TypeVar("_CodecT", bound="Codec")  # what freeze() & co. return: the codec's own class
OWN_CODEC_DOCS = "docs/training.md#your-own-model-as-a-codec"
# sample()'s latents' standard deviation, at most: from 10 every pixel of the shipped flows' samples is clipped to 0 or
# 1, at 100 70-77% of the shipped VAEs' are; beyond, only noise, then NaN (glow-digits from 3e27, glow-cifar10 from
# 3e30, all four at 1e38)
_MAX_TEMPERATURE = 100.0
_HOLDER = "the transform that holds it"  # a device clash's other fix: users of LatentNoise("glow-cifar10") hold no codec


def shapes_weights(name: str, check: Callable[..., SettingT], *args: Any, why: str = "it shapes the weights",
                   config_key: str | None = None, remedy: str | None = None, **kwargs: Any) -> Setting[SettingT]:
    """A codec's setting ``name`` (``config_key`` in its config) that its weights were built with: checked by
    ``check`` when the constructor sets it, then fixed (``validation.setting``'s ``fixed``): assigned, it took any
    value and put the config, which ``hub.save_checkpoint``, ``LatentCache`` and ``fingerprint`` read, out of step with
    the weights. ``why`` and ``remedy`` (by default, a new codec built with the value) end the refusal."""
    key = config_key or name

    def reasons(held: object, value: object) -> tuple[str, str]:
        return (f"{why}, now {held!r}", remedy or f"build a new codec with it, build_codec({{**codec.config, {key!r}: "
                                                  f"{value!r}}}), and train it or load its weights")
    return setting(name, check, *args, fixed=reasons, **kwargs)


def _check_image_shape_option(name: str, value: object) -> tuple[int, int, int]:
    """``value``, a codec's ``(C, H, W)`` of positive ints (any sequence of Python or NumPy ints), as an int tuple."""
    seq = cast("Sequence[Any]", value)  # read as one only where it has a length
    ints = hasattr(value, "__len__") and not isinstance(value, (str, bytes)) and all(is_int(s) for s in seq)
    if not ints or len(seq) != 3 or min(seq) < 1:  # 32 or "abc": a WrongTypeError, not len()'s
        hint = f"; vectors of {seq[0]} numbers? (1, 1, {seq[0]}), given as x.view(len(x), 1, 1, -1) scaled to " \
            f"[0, 1]" if ints and len(seq) == 1 and min(seq) >= 1 else ""
        raise bad_option(f"{name} must be (C, H, W) positive ints, got {shown(value)}{hint}", right_type=ints)
    c, h, w = (int(s) for s in seq)
    return c, h, w


def _frozen_reasons(held: bool, value: bool) -> tuple[str, str]:
    """Why a codec's ``frozen`` is refused, and the way: ``freeze()``, or ``unfrozen_copy()``."""
    return ("False until freeze(), which sets it for good with eval mode, no parameter gradients and no statistic "
            f"updates (and a Glow's folded fast path): assigned, a codec was frozen by half; now {held!r}",
            "call codec.freeze()" if value else "for a trainable codec, take codec.unfrozen_copy()")


def _level_shapes(shapes: object) -> tuple[bool, bool]:
    """Whether ``shapes`` is a list of int tuples (the right type), and a non-empty one of positive ints (fine)."""
    levels = cast("Sequence[Any]", shapes)  # read as one only where it is a list
    right_type = isinstance(shapes, (list, tuple)) and all(isinstance(s, (tuple, list)) and all(map(is_int, s))
                                                           for s in levels)
    return right_type, right_type and bool(levels) and all(s and min(s) >= 1 for s in levels)


def flatten_latents(z: Latents) -> torch.Tensor:
    """z: per-level latents, each (B, *shape) -> (B, D), the levels' values one after the other."""
    tensors = is_sequence(z) and all(isinstance(t, torch.Tensor) for t in z)
    if not tensors or not z or min(t.ndim for t in z) < 2 or len({t.shape[0] for t in z}) != 1:
        raise bad_option(f"z must be a non-empty list of latents (B, *shape), one per level, of one batch size B, got "
                         f"{describe(z)}", right_type=tensors)
    return torch.cat([t.flatten(1) for t in z], dim=1)


def unflatten_latents(flat: torch.Tensor, shapes: list[tuple[int, ...]]) -> Latents:
    """flat: (B, D) -> per-level latents, each (B, *shape) for the per-sample ``shapes`` in order."""
    right_type, fine = _level_shapes(shapes)
    if not fine:
        raise bad_option(f"shapes must be a non-empty list of per-sample shapes, one tuple of positive ints per latent "
                         f"level, such as [(8,)], got {shown(shapes)}", right_type=right_type)
    sizes = [math.prod(s) for s in shapes]
    if not isinstance(flat, torch.Tensor) or flat.ndim != 2 or flat.shape[1] != sum(sizes):
        raise bad_option(f"flat must be (B, D) latents with D = {sum(sizes)} (the shapes' sizes {sizes} together), "
                         f"got {describe(flat)}", right_type=isinstance(flat, torch.Tensor))
    return [t.reshape(flat.shape[0], *s) for t, s in zip(flat.split(sizes, dim=1), shapes)]


class ChecksCodecStates(ModuleMixin):
    """Mixin for a module that is or holds codecs: a strict ``load_state_dict`` first checks each codec's part of the
    state (another codec's state used to get torch's error listing hundreds of keys, after loading what fitted)."""

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True,
                        assign: bool = False) -> _IncompatibleKeys:
        if strict:
            _check_codec_states(self, state_dict)
        return cast("_IncompatibleKeys", super().load_state_dict(state_dict, strict=strict, assign=assign))


def _check_codec_states(module: nn.Module, state_dict: Mapping[str, Any]) -> None:
    """Raise ``RuntimeError`` (torch's, for a state that does not fit) naming what differs when the keys of
    ``state_dict`` under a codec of ``module`` are not that codec's, or not of its shapes."""
    for prefix, codec in module.named_modules(remove_duplicate=False):
        if not isinstance(codec, Codec):
            continue
        prefix = prefix and prefix + "."
        own = {prefix + k: v for k, v in codec.state_dict().items()}
        mismatch = state_mismatch(own, {k: v for k, v in state_dict.items() if k.startswith(prefix)})
        if mismatch:
            where, fix = (f"the weights of {type(module).__name__}'s codec (keys {prefix}*)",
                          f"build the {type(module).__name__} over the codec it was saved with") if prefix else \
                ("the weights", "build the codec from the config it was saved with (build_codec, or hub.load of its "
                                "checkpoint)")
            raise RuntimeError(
                f"cannot load this state_dict: {where} do not fit this {type(codec).__name__} "
                f"({codec._settings_repr()}): {mismatch}. Was it saved with another codec (another checkpoint or "
                f"config)? Then {fix} and load it there")


class Codec(Settings, ChecksCodecStates, nn.Module):
    """An invertible (flow) or approximate (VAE) map between images and standardised latents.

    ``encode(x: (B, C, H, W) float in [0, 1]) -> list of (B, *shape)`` latents whose prior is N(0, I),
    so a perturbation of a given size means the same thing at every level; ``decode`` maps back and may
    leave [0, 1] slightly (callers clip). Both run in the codec's dtype (fp32) with TF32 and autocast off and
    return that dtype. ``loss(x)`` is the training objective (bits/dim for flows, negative ELBO per image for VAEs);
    it, a flow's ``log_prob`` and a VAE's ``posterior``/``elbo_terms`` run under the caller's autocast and TF32
    settings (so a codec can be trained in mixed precision): evaluate them outside ``torch.autocast``.
    A cast to 16 bits (``.half()``, ``.to(torch.bfloat16)``, also of a module holding the codec, as Lightning's
    ``precision="bf16-true"``) moves the codec but keeps its dtype; ``.double()`` casts it.
    A frozen codec (``freeze()``, as every hub checkpoint is) stays in eval mode, has no trainable
    parameters and updates no statistics; ``compile_fast_path()`` optionally runs it through ``torch.compile``.
    Its settings that may change after construction (a VAE's ``beta``, a Glow's ``alpha`` and ``num_bins``) are
    checked whenever set, and a misspelling of one (``vae.betta = 0.5``) raises naming it (``validation.Settings``);
    the rest of its config, which its weights were built with (``image_shape``, a Glow's ``levels``, ...), its
    ``kind`` and ``frozen`` (set by ``freeze()``) are fixed: another value raises ``AttributeError`` naming the way.
    A model of one's own becomes a codec by subclassing: ``latent_shapes``, ``_encode`` and ``_decode`` (and ``config``
    for a ``LatentCache`` or to save it); what they return is checked (docs/training.md, "Your own model as a codec").
    """

    kind: str = ""
    """The ``kind`` of ``config``, the key of ``CODECS`` that builds this class (``"glow"``, ``"vae"``): fixed."""
    image_shape = shapes_weights("image_shape", _check_image_shape_option)
    frozen = setting("frozen", check_bool, fixed=_frozen_reasons)  # freeze() sets it
    """Whether ``freeze()`` was called (``True`` once it was): fixed, but by ``freeze()``."""

    def __init__(self, image_shape: tuple[int, int, int] | list[int]):
        super().__init__()
        self.image_shape = cast(tuple[int, int, int], image_shape)  # its check takes any sequence, keeps a tuple
        self.frozen = False
        # torch.compile'd (_encode, _decode), unbound
        self._compiled: tuple[Callable[[Codec, torch.Tensor], Latents],
                              Callable[[Codec, Latents], torch.Tensor]] | None = None
        self._compile_args: tuple[bool | None, dict[str, Any]] | None = None  # (dynamic, compile_kwargs) when compiled

    @staticmethod
    def _check_positive(**values: object) -> list[int]:
        """The values as Python ints (NumPy ints and 0-d tensors too: a config must stay JSON-able), raising
        ValueError naming any that is not a positive int."""
        ints = []
        for name, v in values.items():
            n = scalar(v)
            if not is_int(n):
                raise WrongTypeError(f"{name} must be a positive int, got {shown(v)}")
            k = int(cast(numbers.Integral, n))  # exact, as is_int passed
            if not k > 0:
                raise ValueError(f"{name} must be a positive int, got {shown(v)}")
            ints.append(k)
        return ints

    # -- to implement ---------------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments (JSON-able, with ``kind``): ``build_codec(codec.config)`` rebuilds the codec."""
        raise self._missing("config, a property: its constructor arguments as a JSON-able dict with 'kind' (a "
                            "LatentCache and hub.save_checkpoint need it)")

    @property
    def latent_shapes(self) -> list[tuple[int, ...]]:
        """Per-sample shape of each latent level, as ``encode`` returns them (coarsest first for a Glow)."""
        raise self._missing("latent_shapes, a property: the per-sample shape of each latent level, such as [(8,)]")

    def _encode(self, x: torch.Tensor) -> Latents:
        """x: (B, C, H, W) in the codec's dtype -> one (B, *latent_shapes[i]) tensor per level, a list."""
        raise self._missing("_encode(x): (B, C, H, W) images -> a list of (B, *shape) latents, one per latent_shapes")

    def _decode(self, z: Latents) -> torch.Tensor:
        """A list of one (B, *latent_shapes[i]) tensor per level -> (B, C, H, W) images, about [0, 1]."""
        raise self._missing("_decode(z): a list of (B, *shape) latents, one per latent_shapes -> (B, C, H, W) images")

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training loss of a batch ``x: (B, C, H, W)`` in [0, 1]: ``(scalar, {metric name: scalar})``."""
        raise self._missing("loss(x): the training loss of a batch, (scalar, {metric name: scalar})")

    def checked_latent_shapes(self) -> list[tuple[int, ...]]:
        """``latent_shapes`` as a list of int tuples, raising if a codec of one's own gives anything else (an int per
        level, such as ``[8]``, failed later in torch's unpacking: "Value after * must be an iterable")."""
        shapes = self.latent_shapes
        right_type, fine = _level_shapes(shapes)
        if not fine:
            listed = isinstance(shapes, (list, tuple))
            hint = f" (one level of shape {tuple(shapes)}? write [{tuple(shapes)}])" if listed and shapes and all(
                map(is_int, shapes)) else ""
            raise bad_option(f"{type(self).__name__}.latent_shapes must be a non-empty list of per-sample shapes, one "
                             f"tuple of positive ints per latent level, such as [(8,)], got {shown(shapes)}{hint}; see "
                             f"{OWN_CODEC_DOCS}", right_type=right_type)
        return [tuple(int(d) for d in s) for s in shapes]

    def _missing(self, what: str) -> NotImplementedError:
        """The error of a codec of one's own that lacks ``what``."""
        return NotImplementedError(f"{type(self).__name__} does not implement {what}; see {OWN_CODEC_DOCS}")

    # -- shared ---------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        """The parameters' dtype (float32 for the shipped codecs); a codec without parameters, its float buffers'."""
        return self._first_tensor().dtype

    @property
    def device(self) -> torch.device:
        """Where the parameters (else the buffers) are (``.to(...)`` moves them)."""
        return self._first_tensor().device

    def _first_tensor(self) -> torch.Tensor:
        """The first parameter, else the first float buffer: what ``dtype`` and ``device`` read."""
        first = first_tensor(self, float_buffer=True)
        if first is not None:
            return first
        raise ValueError(f"{type(self).__name__} holds no parameters or float buffers, which give a codec its dtype "
                         f"and device: keep its tensors as nn.Parameter or self.register_buffer(...)")

    def fingerprint(self) -> str:
        """sha256 of the config and the weights' values: equal for two codecs with the same weights, whatever the
        objects and whatever dtype holds the weights (a codec and its ``.double()`` copy agree)."""
        digest = hashlib.sha256(json.dumps(self.config, sort_keys=True).encode())
        for name, t in sorted(self.state_dict().items()):
            t = t.detach()
            if t.is_floating_point() and torch.equal(t.float().to(t.dtype), t):  # values a float32 holds exactly
                t = t.float()
            digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).contiguous().view(torch.uint8).cpu().numpy().tobytes())
        return digest.hexdigest()

    @property
    def latent_dim(self) -> int:
        """D, the number of latent coordinates per sample (all levels); for a ``ConvVAE`` with a spatial latent,
        ``latent_dim * latent_side**2``, not its config's ``latent_dim`` (the channels)."""
        return sum(math.prod(s) for s in self.checked_latent_shapes())

    def encode(self, x: torch.Tensor) -> Latents:
        """x: (B, C, H, W) in [0, 1] -> standardised latents (codec dtype). The shape, dtype and device are checked
        (uint8 images gave NaN latents), and the values as ``check_input`` says. An empty batch (``B = 0``) gives empty
        latents, as ``decode`` gives empty images, without a run of the codec."""
        self.check_input(x, allow_empty=True)
        levels = self.checked_latent_shapes()
        if not len(x):
            return [x.new_empty((0, *s), dtype=self.dtype) for s in levels]
        self._refresh_derived()
        with exact_math(x.device.type):
            z = self._encode(x.to(self.dtype)) if self._compiled is None else self._compiled[0](self, x.to(self.dtype))
        shapes = [(x.shape[0], *s) for s in levels]
        # not the item itself for a non-tensor: a NumPy array compared with a shape raised numpy's broadcast error
        if not isinstance(z, (list, tuple)) or [t.shape if isinstance(t, torch.Tensor) else None for t in z] != shapes:
            raise ValueError(f"{type(self).__name__}._encode must return a list of one tensor per latent level, of "
                             f"shapes {shapes} here (latent_shapes {levels}); it returned {describe(z)}")
        return z  # a list (or tuple) of them, as checked

    def decode(self, z: Latents) -> torch.Tensor:
        """z: standardised per-level latents, each (B, *shape) -> (B, C, H, W), approximately in [0, 1] (codec dtype,
        not clipped); ``B = 0`` gives empty images without a run of the codec (a Glow's ActNorm, not yet initialised,
        took NaN from them)."""
        self.check_latents(z)
        if not len(z[0]):
            return z[0].new_empty((0, *self.image_shape), dtype=self.dtype)
        self._refresh_derived()
        dtype = self.dtype  # read once: each read walks the modules to the first parameter
        z = [t.to(dtype) for t in z]
        with exact_math(z[0].device.type):
            x = self._decode(z) if self._compiled is None else self._compiled[1](self, z)
        shape = (z[0].shape[0], *self.image_shape)
        if not isinstance(x, torch.Tensor) or x.shape != shape:
            raise ValueError(f"{type(self).__name__}._decode must return (B, C, H, W) images of shape {shape} here; it "
                             f"returned {describe(x)}")
        return x

    def encode_flat(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """x: (B, C, H, W) in [0, 1] -> (B, D): ``encode``'s levels flattened and concatenated (keyword arguments go
        to ``encode``, e.g. a VAE's ``sample=True``)."""
        return flatten_latents(self.encode(x, **kwargs))

    def decode_flat(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, D) -> (B, C, H, W), as ``decode`` (not clipped)."""
        shapes = self.checked_latent_shapes()
        dim = sum(math.prod(s) for s in shapes)
        if isinstance(z, torch.Tensor):  # first: a nested z has no shape to read (torch's "Internal error")
            check_dense(z, "z")
        if not isinstance(z, torch.Tensor) or z.ndim != 2 or z.shape[1] != dim or not z.is_floating_point():
            raise bad_option(f"z must be (B, D) float flat latents with D = {dim} for this {self.kind} "
                             f"codec, got {describe(z)}", right_type=isinstance(z, torch.Tensor))
        return self.decode(unflatten_latents(z, shapes))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """``decode(encode(x))`` clipped to [0, 1], without gradient: (B, C, H, W) -> (B, C, H, W)."""
        return self.decode(self.encode(x)).clamp(0, 1)

    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | int | None = None) -> torch.Tensor:
        """n (>= 1) images decoded from N(0, temperature^2 I) latents, clipped to [0, 1]: (n, C, H, W); ``temperature``
        in [0, 100]. ``generator``: ``None`` (torch's global RNG), an ``int`` seed or a
        ``torch.Generator`` on the codec's device."""
        shapes = self.checked_latent_shapes()
        n = check_items("n", n, self.image_shape, *shapes, dtype=self.dtype)
        temperature = check_number("temperature", temperature, high=_MAX_TEMPERATURE)
        device = self.device
        generator = draw_generator(generator, device)
        z = [temperature * torch.randn((n, *s), generator=generator, device=device, dtype=self.dtype) for s in shapes]
        return self.decode(z).clamp(0, 1)

    def check_input(self, x: torch.Tensor, allow_empty: bool = False) -> None:
        """Raise if x is not a (B, C, H, W) float batch of this codec's image shape on its device (``B = 0`` only with
        ``allow_empty``: ``encode``'s), or (but inside a transform's call or ``validation.values_read``, whose caller
        read them) not finite in [0, 1]: one host sync, as a transform's call (images in [0, 255] gave a VAE finite
        latents of nothing, a Glow NaN)."""
        self.check_images(x, allow_empty=allow_empty, values=values_unread())
        self.check_dtype()

    def _refresh_derived(self) -> None:
        """Bring what a codec computes once from its weights (a Glow's folded fast path) up to date with them, before
        each ``encode``/``decode``, outside compiled code; nothing for codecs that derive nothing."""

    def check_dtype(self) -> None:
        """Raise if the weights are 16-bit: in 16 bits a flow loses its exact round trip and its decodes overflow. A
        cast keeps them in their dtype (``_apply``): such weights came otherwise, from a 16-bit state loaded with
        ``load_state_dict(..., assign=True)`` or a codec built in 16 bits."""
        if self.dtype in (torch.float16, torch.bfloat16):
            raise ValueError(f"this {self.kind} codec's weights are {self.dtype}, but codecs compute in float32 or "
                             f"float64 (a cast to 16 bits keeps a codec in its dtype: these were loaded or built in 16 "
                             f"bits): cast it with .float() (.double() for float64), then load its full-precision "
                             f"weights again with load_state_dict (without assign=True; before the cast they would "
                             f"stay 16-bit, and a cast alone keeps the 16-bit rounding), or take a new codec from "
                             f"hub.load")

    def _apply(self: _CodecT, fn: TensorFn, recurse: bool = True) -> _CodecT:
        # a 16-bit cast of a module holding the codec (.half(), Lightning's precision="bf16-true") moves it but keeps
        # its dtype: in 16 bits a flow loses its exact round trip and its decodes overflow, and .float() would not
        # undo the rounding of the weights
        return cast(_CodecT, super()._apply(without_16_bit_casts(fn), recurse))

    def check_latents(self, z: Latents) -> None:
        """Raise if ``z`` is not one float tensor per level, ``(B, *latent_shapes[i])``, on this codec's device."""
        shapes = self.checked_latent_shapes()
        tensors = isinstance(z, (list, tuple)) and all(isinstance(t, torch.Tensor) for t in z)
        if not tensors or len(z) != len(shapes) or not all(t.is_floating_point() for t in z):
            flat = " (for (B, D) flat latents use decode_flat)" if isinstance(z, torch.Tensor) and z.ndim == 2 else ""
            raise bad_option(f"z must be a list of {len(shapes)} float tensors (B, *shape), shapes {shapes}, for this "
                             f"{self.kind} codec, got {describe(z)}{flat}", right_type=tensors)
        for t in z:
            check_dense(t, "z")
        got = [tuple(t.shape[1:]) for t in z]
        if got != shapes or len({t.shape[0] for t in z}) != 1:
            raise ValueError(f"this {self.kind} codec's latents have per-sample shapes {shapes} and one batch size, "
                             f"got shapes {[tuple(t.shape) for t in z]}")
        check_same_device(z[0], self, f"the {self.kind} codec", "z is", _HOLDER)
        self.check_dtype()

    def check_images(self, x: torch.Tensor, name: str = "x", allow_empty: bool = False, values: bool = False) -> None:
        """Raise if x (called ``name`` in the message) is not a (B, C, H, W) float batch of this codec's image shape
        on its device (``B = 0`` only with ``allow_empty``); with ``values``, also if not finite in [0, 1] (one host
        sync)."""
        check_images(x, name, values=False, allow_empty=allow_empty)
        self.check_image_shape(x, name)
        check_same_device(x, self, f"the {self.kind} codec", holder=_HOLDER)
        if values:
            check_image_values(x, name)

    def check_image_shape(self, x: torch.Tensor, name: str = "x") -> None:
        """Raise if ``x: (B, C, H, W)`` (its form checked, on any device) does not hold images of this codec's shape,
        naming it ``name`` in the message."""
        if tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"this {self.kind} codec was trained on images of shape {self.image_shape} (C, H, W), "
                             f"got {name} of shape {tuple(x.shape)}{self._shape_hint(tuple(x.shape[1:]), name)}")

    def _shape_hint(self, got: tuple[int, ...], name: str) -> str:
        """What to do about images of per-sample shape ``got``: channels last, or another codec that takes them."""
        from .. import hub  # hub builds codecs: imported here

        c, h, w = self.image_shape
        if got == (h, w, c) and got != self.image_shape:
            return f"; these are channels-last (B, H, W, C) images: pass {name}.permute(0, 3, 1, 2)"
        names = hub.names_for_images(got)
        if names:
            return f"; registered codecs for images of shape {got}: {', '.join(names)}"
        fix = f": resize or crop them to {self.image_shape}"
        if got == (c, w, h):  # a non-square codec's images, height and width swapped (or of another data set)
            fix = f": if their height and width are swapped, pass {name}.transpose(2, 3); else resize or crop them " \
                  f"to {self.image_shape}"
        if got[0] != c:  # resizing or cropping keeps the channels
            convert = f"{name}.expand(-1, {c}, -1, -1)" if got[0] == 1 else \
                f"{name}.mean(1, keepdim=True); torchvision's ImageFolder opens grey files as RGB: put v2.Grayscale() " \
                f"first in its transform" if c == 1 and got[0] == 3 else \
                f"{name}.mean(1, keepdim=True)" if c == 1 else f"to {c} channels"
            fix = f", and this one takes {c}-channel images: convert them ({convert})" + \
                ("" if got[1:] == (h, w) else f" and resize or crop them to {(h, w)}")
        return (f"; no registered codec takes images of shape {got}{fix}, or train a codec on your images "
                f"(latent-transforms train flow|vae --data ..., docs/training.md)")

    def freeze(self: _CodecT) -> _CodecT:
        """Eval mode for good, no parameter gradients, no statistic updates."""
        self._frozen = True
        self.requires_grad_(False)
        return self.train(False)

    def unfrozen_copy(self: _CodecT) -> _CodecT:
        """A new codec of this class, config and weights (copied, not shared), on this device and in this dtype, not
        frozen: eval mode, no parameter gradients, not compiled. For a Glow that is the plain normflows path, the
        reference its folded fast path is tested against; ``.freeze()`` the copy for a frozen twin. Leaves torch's
        global RNG as it was (the twin's random init, overwritten at once, draws from a forked one)."""
        with torch.random.fork_rng(devices=[]), codec_build_defaults():  # built on the CPU, then moved
            twin = type(self)(**{k: v for k, v in self.config.items() if k != "kind"})
            # the copied tensors themselves, in their dtypes: a cast to 16 bits would keep the twin of a codec with
            # 16-bit weights in float32
            twin.to(self.device).load_state_dict({k: t.clone() for k, t in self.state_dict().items()}, assign=True)
        return twin.eval().requires_grad_(False)

    @property
    def compiled(self) -> bool:
        """Whether ``encode``/``decode`` run ``torch.compile``d code (see ``compile_fast_path``); still True past torch's
        recompile limit, where new shapes run eager (docs/performance.md says how to tell)."""
        return self._compiled is not None

    def compile_fast_path(self: _CodecT, enabled: bool = True, *, dynamic: bool | None = None,
                          **compile_kwargs: Any) -> _CodecT:
        """Optionally run ``encode``/``decode`` through ``torch.compile``d ``_encode``/``_decode`` (frozen codecs).

        Same contract (fp32, TF32 off, x: (B, C, H, W) <-> latents [(B, *shape), ...]) and the same outputs to
        float32 rounding (tested against the eager and, for Glow, the plain normflows path). Compiling is lazy: the
        first call per input shape, device and grad mode compiles (tens of seconds to minutes on a CPU), later calls
        reuse it. ``dynamic`` and ``compile_kwargs`` (``mode``, ``backend``, ...) go to ``torch.compile``; the default
        ``dynamic=None`` (torch's automatic mode) compiles the first batch size as is and, at the first other batch
        size, once more with a symbolic batch dimension that then serves the other sizes (transforms with ``p < 1``),
        but a batch of 1 gets a graph of its own and, on the CPU, batches of 16 and more another, shared (torch keeps 8
        per function, then runs eager: docs/performance.md).
        ``enabled=False`` returns to the eager path. Returns self. Measured speed: docs/performance.md (CPU only so
        far: no-gradient calls 1.1-1.6x faster, decode with gradients slower).
        """
        if not check_bool("enabled", enabled):
            if dynamic is not None or compile_kwargs:
                raise ValueError("compile_fast_path(enabled=False) takes no torch.compile arguments")
            self._compiled = self._compile_args = None
            return self
        if dynamic is not None and not isinstance(dynamic, bool):  # torch's check named neither it nor its values
            raise WrongTypeError(f"dynamic must be True, False or None (torch's automatic mode), got {shown(dynamic)}")
        if not self.frozen:
            raise WrongStateError(f"compile_fast_path() needs a frozen codec: call {type(self).__name__}.freeze() "
                                  f"first (hub checkpoints are frozen already)")
        cls = type(self)
        self._compiled = (torch.compile(cls._encode, dynamic=dynamic, **compile_kwargs),
                          torch.compile(cls._decode, dynamic=dynamic, **compile_kwargs))
        self._compile_args = dynamic, compile_kwargs
        return self

    def __getstate__(self) -> dict[str, Any]:
        # compiled functions do not pickle (DataLoader workers started with "spawn", torch.save): keep their
        # arguments and compile again, lazily, in the copy
        return {**super().__getstate__(), "_compiled": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if state.get("_compile_args") is not None:
            dynamic, kwargs = state["_compile_args"]
            self.compile_fast_path(dynamic=dynamic, **kwargs)

    def __setattr__(self, name: str, value: object) -> None:
        if name == "kind" and value != type(self).kind:  # its class's, as a plain attribute took any
            raise fixed_at_construction(self, "kind", f"it names its class, {type(self).kind!r}, which build_codec "
                                        f"builds from its config", "build a codec of the kind meant, "
                                        "build_codec({'kind': ..., ...}) with that kind's arguments")
        super().__setattr__(name, value)

    def extra_repr(self) -> str:
        """The config (``build_codec(codec.config)`` rebuilds it) and whether it is frozen, above the modules."""
        return f"{self._settings_repr()}, frozen={self.frozen}"

    def _settings_repr(self, image_shape: bool = True) -> str:
        """``key=value, ...`` of the config but ``kind`` (and ``image_shape`` with ``image_shape=False``); a codec of
        one's own without a config yet has only its image shape."""
        try:
            config = self.config
        except NotImplementedError:
            config = {"image_shape": self.image_shape}
        skip = ("kind",) if image_shape else ("kind", "image_shape")
        return ", ".join(f"{k}={tuple(v) if k == 'image_shape' else v}" for k, v in config.items() if k not in skip)

    def train(self: _CodecT, mode: bool = True) -> _CodecT:
        """``nn.Module.train``, but a frozen codec stays in eval mode (``train()`` of it, or of a module holding it,
        changes nothing). Returns self."""
        return super().train(mode and not self.frozen)
