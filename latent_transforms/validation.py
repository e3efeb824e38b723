"""Input validation shared by every transform: one place, clear messages, no coercion.

Every check raises ``ValueError`` naming the problem and the offending value or shape (``TypeError`` for a value of
the wrong type, such as a list or an array where a tensor is expected; for an option of the wrong type, such as
``eps="1"``, a ``WrongTypeError``, both a ``TypeError`` and a ``ValueError``).
"""
from __future__ import annotations

import argparse
import collections.abc
import contextlib
import difflib
import errno
import functools
import math
import numbers
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Generic, Iterator, Sequence, TypeGuard, TypeVar, cast, overload

import torch

from .torch_defaults import autocast_available

__all__ = ["WrongTypeError", "MissingFileError", "NotAFileError", "WrongStateError", "check_number", "check_count",
           "check_choice", "values_read"]

_IMAGE_RANGE_TOL = 1e-3
_SOFT_LABEL_TOL = 1e-3
# what a batch of vectors (tabular data, 1-D signals) is told where images are due
_VECTORS_HINT = ("; (B, D) vectors? ISDA takes any (B, ...) tensor; the latent methods take images: a codec of your "
                 "own (docs/training.md#your-own-model-as-a-codec) with image_shape (1, 1, D) takes vectors scaled to "
                 "[0, 1] as {name}.view(len({name}), 1, 1, -1)")
# what a 5-d batch is told: the frames of video clips, or the slices of 3-D volumes, are a batch of images
_VIDEO_HINT = ("; video clips (B, T, C, H, W)? {name}.flatten(0, 1) makes their frames a (B*T, C, H, W) batch, each "
               "frame transformed on its own (unlike its neighbours; the same draws for a clip's frames: "
               "docs/composition.md#video-clips), with the labels repeated per frame, y.repeat_interleave(T) "
               "(x2.unflatten(0, (B, T)) gives the clips back)")
_VOLUME_HINT = ("; 3-D volumes (B, C, D, H, W)? {name}.movedim(2, 1).flatten(0, 1) makes their slices a (B*D, C, H, W) "
                "batch, each slice transformed on its own (differently from its neighbours), with the labels repeated "
                "per slice, y.repeat_interleave(D) (x2.unflatten(0, (B, D)).movedim(1, 2) gives the volumes back)")
# what a transform's call is told for labels that look like other targets (multi-label, regression, several of them)
_TARGETS_HINT = ("; targets that are not class labels (multi-hot, regression, a dict of them)? a method that reads no "
                 "labels (LatentNoise, LatentAdversarial(target='pred')) takes y=None; a label mix (VarMixup, MixUp) "
                 "given y=torch.eye(len(x), device=x.device) returns the (B, B) weights w it mixed the samples with, "
                 "and w @ targets mixes yours alike (docs/composition.md#multi-label-and-regression-targets); ISDA and "
                 "LatentAdversarial(target='true') need class labels; segmentation masks and boxes, which move with "
                 "the pixels: docs/composition.md#segmentation-masks-and-boxes")


class WrongTypeError(TypeError, ValueError):
    """An option of the wrong type (``eps="1"``, ``steps=2.0``): a ``TypeError``, and a ``ValueError`` as the other
    bad options are, so that code catching either keeps working."""


class ClassCountError(ValueError):
    """Labels of other classes than ``num_classes``: a class index out of range, soft labels of another width (what a
    classifier grown for new classes gives ISDA's statistics of the old ones)."""


class MissingFileError(FileNotFoundError, ValueError):
    """A data, checkpoint or cache file that is not there, or the folder to save one in: a ``FileNotFoundError``, and
    a ``ValueError`` as the other unusable files are."""


class NotAFileError(MissingFileError, IsADirectoryError):
    """A directory given where a checkpoint file belongs: a ``MissingFileError`` (no such file there: a
    ``FileNotFoundError`` and a ``ValueError``, as the other unusable files are) and an ``IsADirectoryError``, what
    versions before 2026-12-07 raised."""


class WrongStateError(RuntimeError, ValueError):
    """A call the object's state forbids (``compile_fast_path()`` of a codec not frozen): a ``RuntimeError``, as such
    calls are, and a ``ValueError``, what it was before 2026-12-06, so that code catching either keeps working."""


def bad_option(message: str, *, right_type: bool) -> ValueError:
    """The error to raise for a bad option: a ``ValueError``, a ``WrongTypeError`` if of the wrong type."""
    return (ValueError if right_type else WrongTypeError)(message)


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is an allocation failure: a device's ``OutOfMemoryError`` or the CPU allocator's error."""
    return isinstance(e, torch.OutOfMemoryError) or "can't allocate memory" in str(e)


def is_sequence(value: object) -> TypeGuard[Sequence[Any]]:
    """Whether ``value`` is a list of items: a ``list``, a ``tuple`` or any other non-string sequence, such as the
    ``ListConfig`` that Hydra's ``instantiate`` passes for a YAML list (``levels: [0]``)."""
    return isinstance(value, collections.abc.Sequence) and not isinstance(value, (str, bytes, bytearray))


def text_hint(value: object, parse: type | None = None, none_allowed: bool = False) -> str:
    """For an option given as text (read from a config file or the environment) where ``None`` (``none_allowed``)
    or a number (of type ``parse``) is meant, what to write instead, to end its message; ``""`` for anything else."""
    if not isinstance(value, str):
        return ""
    text = value.strip()
    if none_allowed and text.lower() in ("none", "null"):
        return "; a string: YAML's None is null, unquoted (None is read as the string 'None')"
    if parse is None:
        return ""
    try:
        number = parse(text)
    except ValueError:
        return ""
    if not math.isfinite(number):  # "nan", "inf": refused as numbers too
        return ""
    # YAML 1.1 (PyYAML) reads a number with an exponent as a float only with a dot and the exponent's sign: 1e-3 and
    # 1.0e3 as strings, 1.0e-3 and 1.0e+3 as floats
    parts = re.fullmatch(r"([+-]?\d+)(\.\d*)?([eE])([+-]?)(\d+)", text)
    if parts and not (parts[2] and parts[4]):
        lacks = " and ".join(what for what, part in (("no dot", parts[2]), ("no sign in the exponent", parts[4]))
                             if not part)
        written = f"{parts[1]}{parts[2] or '.0'}{parts[3]}{parts[4] or '+'}{parts[5]}"
        return f"; a string: YAML 1.1 readers such as PyYAML read {text} ({lacks}) as one, write {written}"
    return f"; a string: convert it with {parse.__name__}({value!r})"


def scalar(value: object) -> object:
    """A 0-d tensor's Python number; anything else as given (a meta tensor too: it holds no value to read, and
    torch's "Tensor.item() cannot be called on meta tensors" named no setting)."""
    return value.item() if isinstance(value, torch.Tensor) and value.ndim == 0 and not value.is_meta else value


_SHOWN_CHARS = 200  # the longest repr a message shows whole; a longer one is cut to its first half


def shown(value: object) -> str:
    """``repr(value)`` for a message, but an int of 2**128 or more (39 digits) as its order of magnitude ("an int near
    10**400"), in a list or tuple too: Python refuses to print one of more than 4,300 ("Exceeds the limit (4300
    digits) for integer string conversion", naming no argument), and hundreds of digits bury the message. A tensor
    whose repr takes more than a line as ``describe``'s dtype and shape; any other repr of more than ``_SHOWN_CHARS``
    characters (``covariance="x" * 10**5``) cut, with its length; a value whose repr fails by its type."""
    if type(value) is int and value.bit_length() > 128:
        return f"an int near {'-' if value < 0 else ''}10**{round(math.log10(abs(value)))}"
    try:
        text = repr(value)
    except RecursionError:  # lists nested thousands deep
        return f"a {type(value).__name__} nested too deep to show"
    except Exception as e:  # a list, tuple or dict holding such an int; an object whose repr fails (half built)
        if type(value) not in (list, tuple):
            # another ValueError was named as such an int, another error ended the message the value was shown in
            if isinstance(e, ValueError) and "integer string conversion" in str(e):
                return f"a {type(value).__name__} holding an int of more than 4,300 digits"
            return f"a {type(value).__name__} whose repr raised {type(e).__name__}"
        seq = cast("Sequence[object]", value)
        items = ", ".join(map(shown, seq))
        text = f"[{items}]" if type(value) is list else f"({items}{',' if len(seq) == 1 else ''})"
    if isinstance(value, torch.Tensor) and ("\n" in text or len(text) > 80):
        return describe(value)
    return text if len(text) <= _SHOWN_CHARS else f"{text[:_SHOWN_CHARS // 2]}... ({len(text):,} characters)"


def check_number(name: str, value: object, low: float = 0.0, high: float = math.inf, low_open: bool = False,
                 high_open: bool = False) -> float:
    """``value``, a finite real number (Python, NumPy or a 0-d tensor; not a bool) in ``[low, high]`` (open at ``low``
    if ``low_open``, at ``high`` if ``high_open``), returned as a float; the error otherwise calls it ``name``."""
    interval = (f"{'(' if low_open else '['}{low:g}, {high:g}"
                f"{')' if high_open or not math.isfinite(high) else ']'}")
    v = scalar(value)
    if not isinstance(v, numbers.Real) or isinstance(v, bool):
        hint = text_hint(value, float)
        raise WrongTypeError(f"{name} must be a finite number in {interval}, got {shown(value)}{hint}")
    try:
        f = float(v)
    except OverflowError:  # an int beyond float's range
        f = -math.inf if v < 0 else math.inf
    if not math.isfinite(f) or f < low or (low_open and f == low) or f > high or (high_open and f == high):
        raise ValueError(f"{name} must be a finite number in {interval}, got {shown(value)}")
    return f


def is_int(value: object) -> bool:
    """Whether ``value`` is an integer (Python or NumPy), not a bool."""
    return type(value) is int or isinstance(value, numbers.Integral) and not isinstance(value, bool)  # int: no ABC


def check_count(name: str, value: object, low: int = 0, high: int | None = None) -> int:
    """``value``, an integer (Python, NumPy or a 0-d tensor; not a bool) >= ``low`` (and <= ``high``), returned as an
    int; the error otherwise calls it ``name``."""
    v = scalar(value)
    bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
    if not is_int(v):
        raise WrongTypeError(f"{name} must be an int {bounds}, got {shown(value)}{text_hint(value, int)}")
    n = int(cast(numbers.Integral, v))  # exact, as is_int passed
    if n < low or (high is not None and n > high):
        raise ValueError(f"{name} must be an int {bounds}, got {shown(value)}")
    return n


def check_class_count(name: str, value: object) -> int:
    """``value``, a number of classes: ``check_items``'s int >= 1, few enough for a ``(K,)`` float64 row of soft labels
    or statistics (``num_classes=10**400`` met torch's "Overflow when unpacking long long" at the first mix, an
    ``OverflowError`` sizing ISDA's statistics)."""
    return check_items(name, value, (), dtype=torch.float64)


def check_classes(name: str, value: object) -> int | None:
    """``value``, a number of classes: ``None`` (not known) or ``check_class_count``'s int."""
    return None if value is None else check_class_count(name, value)


def check_items(name: str, value: object, *shapes: tuple[int, ...], dtype: torch.dtype, low: int = 1) -> int:
    """``check_count(name, value, low)``, and a count ``n`` small enough for tensors ``(n, *shape)`` of ``dtype``, for
    each of ``shapes``, to have a size in bytes that torch can represent (an int64): an absurd count (``2**70``) is
    refused by name where torch's error named no argument ("Overflow when unpacking long long", "Storage size
    calculation overflowed"); a count within it that does not fit in memory meets the allocator's own error."""
    n = check_count(name, value, low)
    each = max(math.prod(s) for s in shapes) * dtype.itemsize
    most = torch.iinfo(torch.int64).max // max(each, 1)
    if n > most:
        raise ValueError(f"{name} must be an int in [{low}, {most}] ({each} bytes each; a torch tensor holds at most "
                         f"2**63 - 1 bytes), got {shown(value)}")
    return n


def option(check: Callable[..., object], parse: type = int, **bounds: Any) -> Callable[[str], object]:
    """An argparse ``type=`` that parses an option's text with ``parse`` and checks it with ``check`` (e.g.
    ``option(check_count, low=1)``): a command line gets the library's rules, and argparse's message names the option
    (``argument --batch-size: must be an int >= 1, got 0``), not a Python parameter."""
    def convert(text: str) -> object:
        value = parse(text)  # a ValueError here reads "invalid int value: 'x'"
        try:
            return check("value", value, **bounds)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix("value ")) from None
    convert.__name__ = parse.__name__
    return convert


POSITIVE_INT = option(check_count, low=1)  # argparse types of the common options
POSITIVE_FLOAT = option(check_number, float, low_open=True)


def flag_of(parameter: str) -> str:
    """The command line's flag of a Python parameter: ``--per-class`` for ``per_class``."""
    return "--" + parameter.replace("_", "-")


def spelled_as_flags(e: ValueError, parameters: Sequence[str], flag: Callable[[str], str] = flag_of) -> ValueError:
    """``e`` (of its own type) with the one of ``parameters`` that begins its message, and each one followed by a
    number, spelled as the command line's flag (``flag(parameter)``), and no "must be None or" (a shell's None is the
    option left out): a command's error about a function's parameter names the option; ``e`` itself if none is
    there."""
    if not parameters:  # an empty alternation below would match a space after any non-word character
        return e
    text = str(e)
    by_length = sorted(parameters, key=len, reverse=True)  # max_steps before steps
    for parameter in by_length:
        if text.startswith(f"{parameter} "):
            text = flag(parameter) + text[len(parameter):].replace(" must be None or ", " must be ", 1)
            break
    # every other parameter named with its value: "hidden 2000 and decoder_blocks 100 make", "with latent_side 32"
    names = "|".join(map(re.escape, by_length))
    text = re.sub(rf"(?<![\w-])({names}) (?=-?\d)", lambda m: f"{flag(m[1])} ", text)
    return e if text == str(e) else type(e)(text)


_ChoiceT = TypeVar("_ChoiceT")


def check_choice(name: str, value: object, choices: tuple[_ChoiceT, ...]) -> _ChoiceT:
    """``value`` if it is one of ``choices``, else an error calling it ``name`` (``WrongTypeError`` if it is of none
    of their types)."""
    if not any(value is c or (c is not None and isinstance(value, type(c)) and not isinstance(value, bool)
                              and value == c) for c in choices):
        wrong_type = not any(value is c or (c is not None and isinstance(value, type(c))
                                            and not isinstance(value, bool)) for c in choices)
        hint = text_hint(value, none_allowed=None in choices)
        raise bad_option(f"{name} must be one of {choices}, got {shown(value)}{hint}", right_type=not wrong_type)
    return cast(_ChoiceT, value)  # equal to one of them


SettingT = TypeVar("SettingT")

if TYPE_CHECKING:
    class Setting(property, Generic[SettingT]):
        """What a type checker sees of ``setting``'s property: ``t.eps`` is what its check returns (a float), and
        ``t.eps = "x"`` is an error; a bare ``property`` was ``Any`` both ways."""
        @overload
        def __get__(self, instance: None, owner: type | None = None) -> Setting[SettingT]: ...
        @overload
        def __get__(self, instance: object, owner: type | None = None) -> SettingT: ...
        def __get__(self, instance: object, owner: type | None = None) -> Any: ...
        def __set__(self, instance: object, value: SettingT) -> None: ...


def setting(name: str, check: Callable[..., SettingT] | None = None, *args: Any, module: bool = False,
            fixed: Callable[[Any, Any], tuple[str, str]] | None = None, doc: str | None = None,
            **kwargs: Any) -> Setting[SettingT]:
    """A transform's setting ``name``, kept as ``_name`` and checked by ``check(name, value, *args, **kwargs)`` (which
    returns the value kept) whenever it is set: in the constructor, and after it (a sweep's ``t.eps = 0.5``), where a
    plain attribute took anything (``eps=nan`` rejected every sample, ``target="x"`` attacked the labels, silently).
    No ``check``: the value is kept as given (a submodule that the constructor builds and ``fixed`` holds; its type
    then declared where the setting is, ``steps: Setting[nn.ModuleList] = setting("steps", module=True, ...)``).
    ``module=True``: a submodule (or ``None``), kept as ``nn.Module`` keeps one, under ``name`` (it moves with ``.to``
    and its state is in ``state_dict``); its class mixes in ``Settings``, which routes the assignment here.
    ``fixed(held, value)``: a setting fixed once set (one that shapes a codec's weights): assigned after that, the
    value held passes (kept as it is) and another, once checked, raises ``fixed_at_construction`` with the ``(why,
    remedy)`` that ``fixed`` returns. ``doc``: the property's docstring (what ``help()`` and the API reference show),
    a line naming the check by default."""
    key = "_" + name

    def get(self: object) -> object:
        try:
            return self.__dict__["_modules"][name] if module else self.__dict__[key]
        except KeyError:  # not set yet: nn.Module's __getattr__ says so
            raise AttributeError(name) from None

    def set_(self: object, value: object) -> None:
        if check is not None:
            value = check(name, value, *args, **kwargs)
        kept, at = (self.__dict__["_modules"], name) if module else (self.__dict__, key)
        if fixed is not None and at in kept:
            held = kept[at]
            if value != held:
                raise fixed_at_construction(self, name, *fixed(held, value))
            return
        kept[at] = value

    if doc is None:
        doc = f"``{name}``, " + ("fixed: another value assigned raises naming the way." if fixed else
                                 "checked as the constructor's whenever it is set." if check else "kept as given.")
    kept = property(get, set_, doc=doc)
    return cast("Setting[SettingT]", kept)


if TYPE_CHECKING:  # a mixin's base to the type checker: the nn.Module it is mixed into (at run time, object)
    ModuleMixin = torch.nn.Module
else:
    ModuleMixin = object


class Settings:
    """Mixed into an ``nn.Module`` with settings (properties such as ``setting``'s): an assignment to one reaches its
    setter whatever the value, where ``nn.Module.__setattr__`` registered a module value as a submodule of that name
    without it (``t.cache = LatentCache(...)`` went unchecked, ``t.eps = nn.Linear(...)`` was kept and never read).

    On the library's own classes, a new public name that misspells a setting (``t.alpah = 0.4``, ``t.Eps``,
    ``setattr(t, "lamda0", ...)`` in a sweep: a new attribute nothing read, the run went on with the old value), or
    names one as other libraries do (``t.epsilon``, ``t.seed``: ``_SYNONYMS``), raises ``AttributeError`` naming the
    setting meant. Any other new name is kept, as ``nn.Module`` keeps it (what torch or another package adds to every
    module, ``qconfig``; a hook's ``m.out``), and so is any name on a subclass defined outside the library
    (``docs/extending.md``'s). Only an assignment of a new public name costs more than the dict lookups of a known
    one."""

    def __setattr__(self, name: str, value: object) -> None:
        held = getattr(type(self), name, _ABSENT)
        if isinstance(held, property):
            object.__setattr__(self, name, value)
            return
        if held is _ABSENT and name[:1] != "_" and not hasattr(self, name) and _is_library_class(type(self)):
            meant = _settings_meant(self, name)
            if meant:
                raise _misspelled_setting(self, name, meant)
        super().__setattr__(name, value)


_ABSENT = object()
_MISSPELLING = 0.8  # difflib's ratio from which a new name is read as a setting misspelled: 'alpah' is 0.8 of 'alpha'
# a setting's name elsewhere (torchattacks' PGD alpha, cleverhans' eps_iter and nb_iter, ART's eps_step and max_iter,
# a seed, a noise's sigma) and this library's for it, where a class has it: 'epsilon' is only 0.6 of 'eps'
_SYNONYMS = {"epsilon": "eps", "sigma": "eps", "std": "eps", "alpha": "step_size", "eps_iter": "step_size",
             "eps_step": "step_size", "num_steps": "steps", "nb_iter": "steps", "max_iter": "steps",
             "rand_init": "random_start", "ord": "norm", "prob": "p", "probability": "p", "seed": "generator",
             "classes": "num_classes", "feature_layer": "layer"}


def _is_library_class(cls: type) -> bool:
    """Whether ``cls`` is one of this library's classes (not a subclass of one defined elsewhere)."""
    return cls.__module__.partition(".")[0] == __name__.partition(".")[0]


@functools.cache
def _settings_of(cls: type) -> tuple[str, ...]:
    """The public settings of ``cls``: its properties that take an assignment, sorted."""
    return tuple(k for k in dir(cls) if k[:1] != "_" and isinstance(getattr(cls, k), property) and getattr(cls, k).fset)


def _settings_meant(owner: object, name: str) -> list[str]:
    """The settings of ``owner`` that a new ``name`` is read as meant for: its synonym's first (``_SYNONYMS``; not a
    setting that holds submodules, a Compose's ``steps`` for PGD's ``nb_iter``), then up to three misspelled
    (difflib's ratio ``_MISSPELLING`` or more), nearest first."""
    # mypy checks type(x)'s unbound __hash__ against functools.cache's Hashable: a class is hashable
    settings = _settings_of(type(owner))  # type: ignore[arg-type]
    synonym = _SYNONYMS.get(name.lower())
    meant = [synonym] if synonym in settings and not isinstance(getattr(owner, synonym, None), torch.nn.Module) else []
    return meant + [k for k in close_names(name, settings, 3, cutoff=_MISSPELLING) if k not in meant]


def close_names(name: str, names: collections.abc.Iterable[str], n: int = 1, cutoff: float = 0.6) -> list[str]:
    """Up to ``n`` of ``names`` nearest to ``name`` whatever their case ("Glow-CIFAR10" is near "glow-cifar10"),
    nearest first, of difflib's ratio ``cutoff`` or more."""
    lowered = {k.lower(): k for k in names}
    return [lowered[k] for k in difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=cutoff)]


def _misspelled_setting(owner: object, name: str, meant: list[str]) -> AttributeError:
    """The error for a new public ``name`` assigned to ``owner`` that misspells (or is a synonym of) its settings
    ``meant``."""
    cls = type(owner).__name__
    # mypy checks type(x)'s unbound __hash__ against functools.cache's Hashable: a class is hashable
    settings = _settings_of(type(owner))  # type: ignore[arg-type]
    return AttributeError(
        f"{cls} has no setting {name!r} (did you mean {' or '.join(map(repr, meant))}?): assigned, it would be a new "
        f"attribute that {cls} never reads, and the setting meant would keep its value. Its settings: "
        f"{', '.join(settings)}. For an attribute of your own, use a name starting with '_' or a "
        f"subclass of {cls}")


def fixed_at_construction(owner: object, name: str, why: str, remedy: str) -> AttributeError:
    """The error for ``owner``'s setting ``name`` assigned another value after construction, where it cannot change:
    ``why`` it cannot (what it sizes, or what was checked against it), ``remedy`` the way (a new one, built so)."""
    return AttributeError(f"{type(owner).__name__}'s {name} is fixed at construction ({why}): {remedy}")


def check_bool(name: str, value: object) -> bool:
    """``value`` if it is ``True`` or ``False`` (a string such as ``"no"`` would read as true)."""
    if not isinstance(value, bool):
        raise WrongTypeError(f"{name} must be True or False, got {shown(value)}")
    return value


def resolve_device(device: object, *, auto: bool = False) -> torch.device:
    """``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device``; ``"auto"`` if ``auto``: CUDA when
    available) as a ``torch.device`` that exists here, else ``ValueError`` naming it (not torch's own error)."""
    if auto and str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    choices = "cpu, cuda, cuda:N" + (" or auto" if auto else "")
    if not isinstance(device, (str, torch.device)):
        raise WrongTypeError(f"device must be {choices} (a str or torch.device), got {type(device).__name__}")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device must be {choices}, got {str(device)!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} asked for, but CUDA is not available here; use 'cpu'")
    backend: Any = getattr(torch, device.type, None)  # torch.mps, torch.xpu, ...
    if device.type not in ("cpu", "cuda", "meta") and not (hasattr(backend, "is_available") and backend.is_available()):
        raise ValueError(f"device {str(device)!r} asked for, but it is not available here; use 'cpu'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r} asked for, but there are {torch.cuda.device_count()} CUDA devices")
    return device


def check_images(x: torch.Tensor, name: str = "x", allow_uint8: bool = False, values: bool = True,
                 allow_empty: bool = False) -> None:
    """Check ``x: (B, C, H, W)`` float in [0, 1], finite, non-empty unless ``allow_empty`` (or any ``uint8`` if
    ``allow_uint8``); ``values=False`` checks all but the values (no host sync)."""
    if _image_form(x, name, allow_uint8, allow_empty=allow_empty) and values:
        check_image_values(x, name)


def check_image_values(x: torch.Tensor, name: str = "x") -> None:
    """The values part of ``check_images`` for float images ``x: (B, C, H, W)`` whose form was checked: finite, in
    [0, 1] (one host sync; none for no images)."""
    if x.shape[0]:
        with no_autocast(x.device):
            _check_values([(_image_stats(x), lambda v: _judge_images(x, name, *v))])


# per thread, as torch.no_grad: its "flag" is True while the images a codec is given had their values read by their
# caller (values_read). Not a ContextVar, at whose get() torch 2.4's torch.compile breaks the graph; a plain
# threading.local read with getattr's default, which torch.compile traces and guards on from 2.4 on (a subclass's
# class-level default it reads wrong)
_VALUES_READ = threading.local()


@contextlib.contextmanager
def values_read() -> Iterator[None]:
    """Inside (in this thread, as ``torch.no_grad``): a codec's entry points (``encode``, ``loss``, ...) leave the
    values of their images unread, as their caller read them already (a transform's call, in its one host sync;
    ``train_codec``, which read its data set once before training); outside, each such call reads them (one host
    sync), as a transform's call does."""
    outer, _VALUES_READ.flag = getattr(_VALUES_READ, "flag", False), True
    try:
        yield
    finally:
        _VALUES_READ.flag = outer


def values_unread() -> bool:
    """Whether the images a codec is given now are to have their values read (not inside ``values_read``)."""
    return not getattr(_VALUES_READ, "flag", False)


def _image_form(x: torch.Tensor, name: str, allow_uint8: bool, uint8_hint: str = "", allow_empty: bool = False
                ) -> bool:
    """Everything but the values of ``check_images``; whether the values are to be checked (not for ``uint8``, nor
    for no images). ``uint8_hint`` ends the message refusing ``uint8`` images; ``allow_empty`` passes ``B = 0``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}{_not_a_tensor_hint(x, name)}")
    check_dense(x, name)
    check_image_shape(x, name, allow_empty)
    if allow_uint8 and x.dtype == torch.uint8:
        return False
    if not x.is_floating_point():
        raise ValueError(
            f"{name} must be a float tensor with values in [0, 1]{' or uint8' if allow_uint8 else ''}, got dtype "
            f"{x.dtype}; {_conversion_hint(x, name)}{uint8_hint if x.dtype == torch.uint8 else ''}"
        )
    return x.shape[0] > 0


def _not_a_tensor_hint(x: object, name: str) -> str:
    """How to make a batch of images of ``x``, a PIL image (a Dataset without a transform), a numpy array or a list
    of ``(C, H, W)`` images."""
    if type(x).__module__.startswith("PIL."):
        return ("; the transforms take batches (B, C, H, W): convert each image in the Dataset, "
                "transform=v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]), and augment the "
                "DataLoader's batches")
    if type(x).__name__ == "ndarray":
        return f"; torch.from_numpy({name}), then .permute(0, 3, 1, 2) if its images are (B, H, W, C)"
    if is_sequence(x) and len(x) and all(isinstance(t, torch.Tensor) and t.ndim == 3 for t in x):
        return f"; torch.stack({name}) makes a batch of a list of (C, H, W) images"
    return ""


def check_image_shape(x: torch.Tensor, name: str = "x", allow_empty: bool = False) -> None:
    """Raise unless the tensor ``x`` is ``(B, C, H, W)`` with ``C, H, W >= 1`` (and ``B >= 1`` unless
    ``allow_empty``); neither its dtype nor its values are read (no host sync)."""
    if x.ndim != 4:
        one, grey = (f"; one image? {name}.unsqueeze(0) makes it a batch of one",
                     f"; a batch of grey (B, H, W) images? {name}.unsqueeze(1) adds the channel")
        # (1, H, W): either gives (1, 1, H, W); (3, H, W): a colour image or 3 grey ones
        hint = {1: one, 3: one + grey}.get(x.shape[0], grey) if x.ndim == 3 else _VECTORS_HINT.format(name=name) \
            if x.ndim == 2 else _five_dims_hint(x, name) if x.ndim == 5 else ""
        raise ValueError(f"{name} must have shape (B, C, H, W), got {x.ndim} dims with shape {tuple(x.shape)}{hint}")
    if x.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)})")
    if 0 in x.shape[1:]:
        empty = ", ".join(f"{d} = 0" for d, size in zip("CHW", x.shape[1:]) if not size)
        raise ValueError(f"{name} has an empty channel or spatial dimension (shape {tuple(x.shape)}: {empty})")


def _five_dims_hint(x: torch.Tensor, name: str) -> str:
    """How to make a 5-d ``x`` a batch of images: the frames of video clips ``(B, T, C, H, W)``, the slices of 3-D
    volumes ``(B, C, D, H, W)``; the reading whose channels are 1 or 3 where only one's are, else both."""
    video, volume = x.shape[2] in (1, 3), x.shape[1] in (1, 3)
    hints = [h for h, fits in ((_VIDEO_HINT, video or not volume), (_VOLUME_HINT, volume or not video)) if fits]
    return "".join(h.format(name=name) for h in hints) + "; ISDA takes any (B, ...) tensor"


def _conversion_hint(x: torch.Tensor, name: str) -> str:
    """How to make images ``x`` of a dtype that is not floating point float in [0, 1], by the range of the dtype's
    values (every dtype was told uint8's ``/ 255``, which leaves 12-bit data at up to 16), and for signed or wide
    integers by the values found (8-bit values held as int64, from ``torch.tensor(array)``, are told ``/ 255``)."""
    dtype = x.dtype
    if dtype == torch.uint8:
        return f"convert with {name}.float() / 255 for uint8 images"
    if dtype == torch.bool:
        return f"convert with {name}.float() (False 0, True 1)"
    if dtype.is_complex:
        return f"complex values are not images; their magnitudes, {name}.abs(), scaled into [0, 1]?"
    if dtype == torch.uint16:  # read by dtype alone: torch has no min() of uint16 (2.4 to 2.14)
        return "16-bit intensities? " + _deep_hint(f"{name}.float()")
    if not x.numel():  # an empty batch: no values to tell the range by (torch has no min() of none)
        return f"convert with {name}.float() scaled into [0, 1] as your other batches are (/ 255 for 8-bit values)"
    # an error's message: the values read once (as int64 for uint32 and uint64, which torch has no min() of)
    wide = x.long() if dtype in (torch.uint32, torch.uint64) else x
    lo, hi = int(wide.min()), int(wide.max())
    if lo >= 0 and hi <= 255:
        return f"8-bit values held as {dtype}? convert with {name}.float() / 255"
    if lo >= 0:
        return "intensities of more than 8 bits? " + _deep_hint(f"{name}.float()", hi)
    return _raw_hint(f"{name}.float()")


def _deep_hint(value: str, hi: float | None = None) -> str:
    """What intensities of more than 8 bits (``value``, an expression of them in float) are told: divide them by
    their bit depth's maximum (``hi``: the largest value found, if known, whose least bit depth is named; within
    ``_IMAGE_RANGE_TOL`` of a depth's maximum counts as it)."""
    bits = 0 if hi is None else math.ceil(math.log2(hi - _IMAGE_RANGE_TOL + 1))  # an integer's bit_length()
    found = f"; {2 ** bits - 1} if they are {bits}-bit" if bits and bits not in (12, 16) else ""
    return (f"divide them by the maximum of the data's bit depth, the same for every batch: {value} / 4095 for 12-bit "
            f"data, {value} / 65535 for 16-bit{found}")


def _raw_hint(value: str) -> str:
    """What values in physical units (``value``, an expression of them in float) are told: scale them by a range of
    the data set, not of each batch (a batch's own minimum and maximum would scale each batch differently)."""
    return (f"scale them into [0, 1] by a range fixed for the data set, not per batch, (v - lo) / (hi - lo): "
            f"{value} / 4095 for 12-bit intensities, (({value} + 1024) / 4095).clamp(0, 1) for CT in Hounsfield units "
            f"windowed to [-1024, 3071]")


def check_dense(t: torch.Tensor, name: str) -> None:
    """Raise for a tensor whose values cannot be read as one block: nested or sparse (torch's own error came from deep
    in the checks or the codec), or on the meta device, which holds no values."""
    if t.is_nested:  # either layout, strided or jagged (whose to_padded_tensor torch 2.4 lacks)
        pad = f"torch.nn.utils.rnn.pad_sequence({name}.unbind(), batch_first=True)" if t.layout == torch.jagged \
            else f"torch.nested.to_padded_tensor({name}, 0.0)"
        raise ValueError(f"{name} is a nested tensor (samples of different sizes); pad them to one size, {pad}")
    if t.layout != torch.strided:
        raise ValueError(f"{name} must be a dense tensor, got layout {t.layout}; convert with {name}.to_dense()")
    if t.device.type == "meta":
        raise ValueError(f"{name} is on the meta device, which holds shapes, not values (made under "
                         f"torch.set_default_device('meta') or torch.device('meta')?): make it on cpu or cuda")


def no_autocast(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """Autocast off on ``device``, for math in the tensors' own dtypes: a training loop's ``torch.autocast`` would
    cast the ops (a latent cache's image signatures to 16 bits), or refuse them (fp16 images under CPU bf16 autocast:
    torch's "Unexpected floating ScalarType in at::autocast::prioritize"). Nothing where torch has no autocast for
    the device, so none can be on (MPS before torch 2.5, where ``torch.autocast("mps", enabled=False)`` raises
    "unsupported scalarType")."""
    if autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _image_stats(x: torch.Tensor) -> torch.Tensor:
    return _extremes(x.detach())  # NaN and inf show in the extremes


def _judge_finite(x: torch.Tensor, name: str, lo: float, hi: float) -> None:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        bad = (~torch.isfinite(x)).flatten(1).any(1).nonzero().flatten().tolist()
        raise ValueError(f"{name} contains NaN or inf (in samples {bad[:8]})")


def _judge_images(x: torch.Tensor, name: str, lo: float, hi: float) -> None:
    _judge_finite(x, name, lo, hi)
    if lo < -_IMAGE_RANGE_TOL or hi > 1 + _IMAGE_RANGE_TOL:
        if lo >= -0.1 and hi <= 1.1:
            hint = "a resampling (bicubic, antialiased) or noise step overshoots: clamp its output with x.clamp(0, 1)"
        elif lo >= -_IMAGE_RANGE_TOL and 2 < hi <= 255 + _IMAGE_RANGE_TOL:  # 8-bit intensities made float, not scaled
            hint = "these look like 0-255 intensities: divide them by 255"
        elif lo >= -0.1 and hi <= 2:
            hint = "a step scales or shifts them past 1 (brightness, contrast, a gain): clamp its output with x.clamp(0, 1)"
        elif lo >= -0.5 and 1 + _IMAGE_RANGE_TOL < hi <= 2:  # both ways past [0, 1], not far: added noise
            hint = "a step adds noise or shifts them past [0, 1] (Gaussian noise, contrast): clamp its output with " \
                   "x.clamp(0, 1)"
        elif lo >= -1 - _IMAGE_RANGE_TOL and hi <= 1 + _IMAGE_RANGE_TOL:
            hint = "these look like images scaled to [-1, 1] (Normalize(0.5, 0.5)): give (x + 1) / 2, and normalise " \
                   "inside the model, after augmentation"
        elif lo >= -_IMAGE_RANGE_TOL and hi <= 65535 + _IMAGE_RANGE_TOL:  # 12- or 16-bit intensities made float
            hint = "these look like intensities of more than 8 bits: " + _deep_hint(name, hi)
        elif max(-lo, hi) > 255:  # far past what mean/std normalisation gives: raw values, CT's Hounsfield units
            hint = "these look like values in physical units: " + _raw_hint(name)
        else:
            hint = "apply normalisation (mean/std) inside the model, after augmentation"
        raise ValueError(f"{name} values must lie in [0, 1], got range [{lo:.4g}, {hi:.4g}]; {hint}")


def wide_float(device: torch.device | str) -> torch.dtype:
    """float64, or float32 on a device that has no float64 (MPS: a float64 tensor there is a ``TypeError``)."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


ValueCheck = tuple[torch.Tensor, Callable[[list[float]], None]]  # (statistics, judge of their values read on the host)


def _check_values(checks: list[ValueCheck]) -> None:
    """Read every check's statistics (small tensors on one device) on the host at once, one host sync, then judge
    them in order. In ``wide_float`` (int64 class indices and positions stay exact below 2**53 in float64)."""
    wide = wide_float(checks[0][0].device)
    values = torch.cat([t.reshape(-1).to(wide) for t, _ in checks]).tolist()
    for t, judge in checks:
        judge(values[:t.numel()])
        values = values[t.numel():]


def check_labels(y: torch.Tensor, batch_size: int, num_classes: int | None = None, name: str = "y",
                 batch_name: str = "x") -> None:
    """Check ``y``: ``(B,)`` int64 class indices in [0, num_classes) or ``(B, K)`` float rows summing to 1, as many
    as ``batch_size``, the samples of ``batch_name``."""
    if _label_form(y, batch_size, num_classes, name, batch_name):
        with no_autocast(y.device):
            _check_values([(_label_stats(y), lambda v: _judge_labels(y, name, num_classes, v))])


def check_label_form(y: torch.Tensor, batch_size: int, num_classes: int | None = None, name: str = "y",
                     batch_name: str = "x") -> None:
    """``check_labels`` but for the values: no host sync, for a helper that may be given labels no call checked."""
    _label_form(y, batch_size, num_classes, name, batch_name)


def _label_form(y: torch.Tensor, batch_size: int, num_classes: int | None, name: str, batch_name: str = "x",
                targets_hint: str = "") -> bool:
    """Everything but the values of ``check_labels``; whether there are values to check. ``targets_hint`` ends the
    messages refusing what may be targets other than class labels (a transform's call: ``_TARGETS_HINT``)."""
    if not isinstance(y, torch.Tensor):  # a dict of targets; a list of them (detection's, a dict per image) or tensors
        targets = isinstance(y, collections.abc.Mapping) or is_sequence(y) and any(
            isinstance(t, collections.abc.Mapping) or isinstance(t, torch.Tensor) and t.ndim > 0 for t in y)
        indices = is_sequence(y) and len(y) > 0 and all(  # ints, or 0-d integer tensors (list(y), gathered one by one)
            is_int(t) or isinstance(t, torch.Tensor) and t.ndim == 0 and t.dtype != torch.bool
            and not (t.is_floating_point() or t.is_complex()) for t in y)
        if targets:
            hint = targets_hint
        elif indices:
            hint = f"; torch.tensor({name}) makes (B,) class indices of it"
        elif type(y).__name__ == "ndarray":
            hint = f"; torch.from_numpy({name})"
        elif is_int(y):  # one sample's, in a Dataset's __getitem__ (ISDA reads no images: y is the first refused)
            hint = (f"; one sample's label? the transforms take batches: call it on the DataLoader's batches, {name} "
                    f"(B,) int64 (or torch.tensor([{name}]), with {batch_name}.unsqueeze(0))")
        else:
            hint = ""
        raise TypeError(f"{name} must be a torch.Tensor, got {type(y).__name__}{hint}")
    if type(y).__module__.startswith("torchvision.tv_tensors"):  # a Mask (B, H, W), BoundingBoxes (B, 4), ...
        raise ValueError(f"{name} is a torchvision {type(y).__name__} of shape {tuple(y.shape)}, not class labels: "
                         f"(B,) class indices or (B, K) soft labels, one row per image{targets_hint}")
    check_dense(y, name)
    if y.ndim not in (1, 2):
        hint = f"; one sample's label? {name}.view(1), with {batch_name}.unsqueeze(0)" if y.ndim == 0 else targets_hint
        raise ValueError(
            f"{name} must be (B,) class indices or (B, K) soft labels, got shape {tuple(y.shape)}{hint}"
        )
    if y.shape[0] != batch_size:
        raise ValueError(f"batch sizes differ: {batch_name} has {batch_size} samples, {name} has {y.shape[0]}")
    if y.ndim == 1:
        if y.dtype != torch.int64:
            hint = f"{name}.long() if they are whole numbers (it truncates); soft labels are (B, K)" \
                if y.is_floating_point() or y.is_complex() else f"{name}.long()"
            raise ValueError(f"{name} class indices must be int64, got dtype {y.dtype}; convert with {hint}"
                             + (targets_hint if y.is_floating_point() else ""))  # regression targets, (B,) float
        return y.numel() > 0
    if y.shape[1] == 1 and y.is_floating_point():  # binary targets (BCE's), or class indices made float
        raise ValueError(f"{name} has shape {tuple(y.shape)} and dtype {y.dtype}: soft labels (B, K) have a column "
                         f"per class (one column says nothing); class indices or binary targets? pass "
                         f"{name}.squeeze(1).long(), or to a label mix (B, 2) soft labels, torch.cat([1 - {name}, "
                         f"{name}], 1)")
    if not y.is_floating_point():
        if y.shape[1] == 1:  # class indices with a trailing dimension, most likely
            raise ValueError(f"{name} has shape {tuple(y.shape)} and dtype {y.dtype}: class indices must be (B,) "
                             f"(y.squeeze(1)); soft labels (B, K) must be float")
        indices = f"{name}.long().argmax(1)" if y.dtype == torch.bool else f"{name}.argmax(1)"  # no bool argmax
        raise ValueError(f"{name} soft labels (B, K) must be float, got dtype {y.dtype}; one-hot labels? pass "
                         f"{indices} (class indices) or {name}.float() (soft labels){targets_hint}")
    if y.shape[1] == 0:
        raise ValueError(f"{name} soft labels have no classes (shape {tuple(y.shape)})")
    if num_classes is not None and y.shape[1] != num_classes:
        hint = ("; the (B, B) torch.eye of targets that are not class labels? give the label mixes no num_classes"
                if targets_hint and y.shape[0] == y.shape[1] else "") + targets_hint
        raise ClassCountError(f"{name} soft labels have {y.shape[1]} classes, expected num_classes={num_classes}{hint}")
    return y.shape[0] > 0


def _extremes(t: torch.Tensor) -> torch.Tensor:
    """``(min, max)`` of ``t`` as one tensor (aminmax's fields by name: torch 2.4's compile could not unpack it)."""
    mm = torch.aminmax(t)
    return torch.stack([mm.min, mm.max])


def _label_stats(y: torch.Tensor) -> torch.Tensor:
    """Class indices: (min, max). Soft labels: (all finite, min, the row whose sum is furthest from 1, its sum)."""
    if y.ndim == 1:
        return _extremes(y)
    sums = y.float().sum(1)  # bf16 rows are summed exactly enough, and judged by what bf16 can represent
    worst = (sums - 1).abs().argmax()
    return torch.stack([torch.isfinite(y).all().float(), y.min().float(), worst.float(), sums.gather(0, worst.view(1))[0]])


def _judge_labels(y: torch.Tensor, name: str, num_classes: int | None, stats: list[float], targets_hint: str = ""
                  ) -> None:
    if y.ndim == 1:
        lo, hi = int(stats[0]), int(stats[1])
        if lo < 0:  # -1 (scikit-learn's) or -100 (cross_entropy's ignore_index) marking unlabelled samples, mostly
            # y=None only where the transform reads no labels: ISDA, VarMixup and target="true" refuse it
            raise ValueError(f"{name} has a negative class index {lo}; a mark for unlabelled or ignored samples "
                             f"(F.cross_entropy's ignore_index)? pass only the labelled samples (where {name} >= 0): "
                             f"keep = {name} >= 0, then x[keep] and {name}[keep], to the model and the loss too (their "
                             f"mean cross-entropy is ignore_index's); a transform that reads no labels (LatentNoise, "
                             f"LatentAdversarial(target='pred')) takes the whole batch with y=None and keeps each image "
                             f"in its row, so {name} still fits its output")
        if num_classes is not None and hi >= num_classes:
            one_based = f"labels numbered from 1? subtract 1 ({name} - 1); " if lo >= 1 and hi == num_classes else ""
            raise ClassCountError(f"{name} has class index {hi}, out of range for num_classes={num_classes} (indices "
                                  f"0 to {num_classes - 1}); {one_based}num_classes too small? set it to the number "
                                  f"of classes the model outputs ({hi + 1} or more); a mark for ignored samples "
                                  f"(such as 255)? pass only the labelled samples: keep = {name} < {num_classes}, then "
                                  f"x[keep] and {name}[keep]")
        return
    finite, low, worst, worst_sum = stats
    if not finite:
        raise ValueError(f"{name} soft labels contain NaN or inf")
    off = abs(worst_sum - 1) > row_sum_tolerance(y.dtype)
    if low < -_SOFT_LABEL_TOL:  # with rows off 1 too: a model's logits, not its probabilities
        raise ValueError(f"{name} soft labels have a negative entry {low:.4g}"
                         + (f"; logits? pass probabilities, {name}.softmax(1)" if off else "") + targets_hint)
    if off:  # a row of zeros: pseudo-labels multiplied by a confidence mask, or a multi-hot row of no class
        raise ValueError(f"{name} soft label rows must sum to 1, row {int(worst)} sums to {worst_sum:.4g}"
                         + (f"; a confidence mask applied to the labels? pass only the samples kept, x[mask], "
                            f"{name}[mask] (or weigh the loss by the mask)" if worst_sum == 0 else "") + targets_hint)


def row_sum_tolerance(dtype: torch.dtype, mixes: bool = True) -> float:
    """How far a row of probabilities in ``dtype`` may sum from 1: 1e-3, or the dtype's precision when coarser
    (bf16: 0.0078); soft labels (``mixes``) 4 steps of it (fp16: 0.0039, bf16: 0.031), as each mix in a 16-bit
    dtype rounds a row's sum by up to about one step: one-hot labels mixed 3 times in fp16 summed to 1.0012 (bf16:
    1.0104); 5 times, up to 1.0015 (bf16: 1.0133)."""
    return max(_SOFT_LABEL_TOL, (4 if mixes else 1) * torch.finfo(dtype).eps)


def check_device(what: str, device: torch.device, x: torch.Tensor, x_is: str = "x is", holder: str = "") -> None:
    """Raise if ``what`` lives on ``device``, another device than ``x`` (data is never moved silently); ``x_is``
    names ``x`` in the message ("logits are"); ``holder``: what else moves it ("the transform that holds it")."""
    if device != x.device:
        to = f".to({str(x.device)!r})"
        raise ValueError(f"{what} is on {device} but {x_is} on {x.device}; move it with {to}"
                         f"{f', or {holder}: augment{to}' if holder else ''} "
                         f"(latent-transforms never moves data between devices)")


def first_tensor(module: torch.nn.Module, float_buffer: bool = False) -> torch.Tensor | None:
    """The first of ``module.parameters()``, else of ``module.buffers()`` (``float_buffer``: of its floating-point
    ones), ``None`` for none: the same tensor, found without the generators' walk (``parameters()`` took about 13 us a
    read, 16 reads in a LatentNoise call)."""
    def first(m: torch.nn.Module, buffers: bool) -> torch.Tensor | None:  # preorder, as named_modules()
        for t in (m._buffers if buffers else m._parameters).values():
            if t is not None and not (buffers and float_buffer and not t.is_floating_point()):
                return t
        for child in m._modules.values():
            found = None if child is None else first(child, buffers)
            if found is not None:
                return found
        return None
    found = first(module, False)
    return found if found is not None else first(module, True)


def check_same_device(x: torch.Tensor, module: torch.nn.Module, what: str, x_is: str = "x is", holder: str = ""
                      ) -> None:
    """Raise if ``module``'s parameters (else buffers) live on another device than ``x`` (``check_device``)."""
    p = first_tensor(module)
    if p is not None:
        check_device(what, p.device, x, x_is, holder)


def name_device_clash(error: RuntimeError, module: torch.nn.Module, x: torch.Tensor, who: str) -> None:
    """Raise ``check_device``'s ``ValueError`` for ``who``'s model from ``error`` (torch's RuntimeError of
    ``module(x)``, which names no fix: "Input type (torch.FloatTensor) and weight type (torch.cuda.FloatTensor) should
    be the same") when ``module``'s first parameter (else buffer) is on another device than ``x`` and the error names a
    device; else return. Called once the call has failed, as ``name_dtype_clash``: a model that moves its input itself
    is never refused."""
    text = str(error)
    p = first_tensor(module)  # as check_same_device; "torch.FloatTensor" names no "cpu"
    if p is not None and any(word in text for word in ("device", p.device.type, x.device.type)):
        check_device(f"{who}'s model", p.device, x)


def name_dtype_clash(error: RuntimeError, module: torch.nn.Module, x: torch.Tensor, who: str, x_name: str = "x",
                     module_name: str = "model") -> None:
    """Raise a ``ValueError`` naming both dtypes and the fix, from ``error`` (torch's RuntimeError of ``module(x)``,
    which says neither which dtype is the model's nor the fix: "mat1 and mat2 must have the same dtype, but got Double
    and Float") when ``x``'s dtype is not that of ``module``'s first float parameter and the error is about types; else
    return, for the caller to re-raise ``error``.

    Called once the call has failed, not as a check before it, which would refuse calls that work (under
    ``torch.autocast``, of a model that casts its input itself); a call that works costs nothing more."""
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), None)
    if dtype is None or dtype == x.dtype or "type" not in str(error):
        return
    hint = "; torch.autocast leaves float64 as it is" if torch.float64 in (dtype, x.dtype) else \
        ", or run it under torch.autocast, which computes float32, float16 and bfloat16 inputs in one dtype"
    fix = f"cast one to the other's dtype ({x_name}.to({dtype}) or {module_name}.to({x.dtype})){hint}"
    if x.ndim == 4 and not x.is_floating_point():  # integer images: a cast alone left uint8's at 0 to 255
        fix = f"a float {module_name} takes float images: {_conversion_hint(x, x_name)}"
    elif not x.is_floating_point():  # Module.to takes no integer dtype, and autocast leaves integers as they are
        fix = f"cast it to the {module_name}'s dtype ({x_name}.to({dtype}))"
    raise ValueError(f"{who} got {x_name} in {x.dtype} for its {module_name} in {dtype}, which torch refused "
                     f"({str(error).splitlines()[0]}): {fix}") from error


def check_model(model: object, x: torch.Tensor | None = None, who: str = "the model") -> None:
    """Raise unless ``model`` is an ``nn.Module`` (its modules, modes and parameters are used), on ``x``'s device when
    ``x`` is given."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{who} must be the classifier, an nn.Module (its modules, modes and parameters are used), "
                        f"got {type(model).__name__}")
    if x is not None:
        check_same_device(x, model, who)


def image_side(h: int, w: int) -> str:
    """What a message calls ``min(h, w)``, the bound of a shift: "the image side", or for images that are not square
    "the shorter side of HxW images" (an 8x256 image's "< 8 (the image side)" read as a mistake)."""
    return "the image side" if h == w else f"the shorter side of {h}x{w} images"


def check_initialised(model: torch.nn.Module, parameters: collections.abc.Iterable[torch.nn.Parameter],
                      who: str = "the model") -> None:
    """Raise, naming them, if ``parameters`` (``model``'s, which the caller has already) hold one a lazy module
    (``nn.LazyLinear``, ``nn.LazyConv2d``) has not initialised yet: a caller that uses the model without changing it
    (its parameters' ``requires_grad`` switched off and back) met torch's "Attempted to use an uninitialized parameter
    in requires_grad_". ``who`` names the model."""
    if any(map(torch.nn.parameter.is_lazy, parameters)):
        lazy = [name for name, p in model.named_parameters() if torch.nn.parameter.is_lazy(p)]
        more = f" and {len(lazy) - 2} more" if len(lazy) > 2 else ""
        raise ValueError(f"{who} has parameters its lazy modules have not initialised yet ({', '.join(lazy[:2])}"
                         f"{more}; torch initialises them at the model's first forward): run the model once on a "
                         f"batch, model(x), before this call, which uses the model without changing it")


def check_model_slot(model: object) -> None:
    """Raise unless ``model`` is None or an ``nn.Module``: ``t(x, y, idx)`` puts dataset positions in its place (by
    a method that does not use the model, they would be ignored, and its cache with them)."""
    if model is not None and not isinstance(model, torch.nn.Module):
        hint = "; dataset positions go as index=idx" if isinstance(model, torch.Tensor) else ""
        raise TypeError(f"model must be the classifier (an nn.Module) or None, got {describe(model)}{hint}")


def check_index(index: torch.Tensor, batch_size: int | None, size: int | None = None) -> None:
    """Check ``index: (B,)`` int64 dataset positions (``B == batch_size`` and in ``[0, size)`` when given)."""
    if _index_form(index, batch_size):
        with no_autocast(index.device):
            _check_values([(_extremes(index), lambda v: _judge_index(size, *v))])


def _index_form(index: torch.Tensor, batch_size: int | None) -> bool:
    if not isinstance(index, torch.Tensor):  # a list or an array: a TypeError, as for x and y
        raise WrongTypeError(f"index must be a (B,) int64 tensor of dataset positions, got {describe(index)}")
    if index.dtype != torch.int64 or index.ndim != 1:
        raise ValueError(f"index must be a (B,) int64 tensor of dataset positions, got {describe(index)}")
    if batch_size is not None and index.shape[0] != batch_size:
        raise ValueError(f"batch sizes differ: x has {batch_size} samples, index has {index.shape[0]}")
    return index.numel() > 0


def _judge_index(size: int | None, lo: float, hi: float) -> None:
    lo, hi = int(lo), int(hi)
    if size is None and lo < 0:  # no cache to bound it: "outside [0, None)" named no range
        raise ValueError(f"index has a negative dataset position {lo}; positions count from 0")
    if lo < 0 or (size is not None and hi >= size):
        raise ValueError(f"index has positions outside [0, {size}): min {lo}, max {hi}")


def _check_samples(x: torch.Tensor, name: str = "x") -> None:
    """Check ``x``: a tensor with the samples along its first dimension, ``(B, ...)`` of any dtype (vectors,
    sequences, spectrograms, token ids, images), none of its other dimensions empty, for a caller that never reads
    its values (ISDA)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    check_dense(x, name)
    if x.ndim == 0:
        raise ValueError(f"{name} must be a batch (B, ...) with the samples along its first dimension, got a 0-d "
                         f"tensor")
    if 0 in x.shape[1:]:
        raise ValueError(f"{name} has an empty dimension besides the batch's (shape {tuple(x.shape)})")


def _call_order_hint(x: object) -> str:
    """What to call instead when a transform's ``x`` is not a batch but the model (``t(model, x, y)``) or a
    DataLoader's whole ``[x, y]`` batch; ``""`` for anything else."""
    if isinstance(x, torch.nn.Module):
        return "the call is t(x, y, model): the batch first, the model last"
    if (is_sequence(x) and len(x) == 2 and all(isinstance(t, torch.Tensor) and t.ndim for t in x)
            and len(x[0]) == len(x[1]) and x[0].ndim > x[1].ndim):
        return "a DataLoader's [x, y] batch? unpack it: x, y = batch, then t(x, y, model)"
    return ""


def check_batch(x: torch.Tensor, y: torch.Tensor | None, num_classes: int | None = None,
                index: torch.Tensor | None = None, index_size: int | None = None, allow_uint8: bool = False,
                values: bool = True, more_checks: Callable[[], list[ValueCheck]] | None = None, uint8_hint: str = "",
                images: bool = True) -> None:
    """The checks of every ``t(x, y, model, index=...)`` call: images, labels (``None``: an unlabelled batch) and
    index agree on the batch (``index`` in ``[0, index_size)`` when the size is known). ``allow_uint8``: ``uint8``
    images pass too (for a ``Compose`` whose first step is a torchvision v2 transform or a
    callable). ``images=False``: ``x`` is any ``(B, ...)`` tensor (``_check_samples``; finite if floating), for a
    caller that never reads it. The shapes, dtypes and devices are checked first, then every value at once: one host
    sync per call (none with ``values=False``). ``more_checks()``: a caller's own ``(statistics, judge)`` pairs, made once the forms
    passed, judged last in the same read. ``uint8_hint`` ends the message refusing ``uint8`` images. A batch of none
    (``B = 0``) passes, as torchvision's and kornia's transforms take it."""
    if not isinstance(x, torch.Tensor) and (misplaced := _call_order_hint(x)):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}; {misplaced}")
    if images:
        image_values, finite_values = _image_form(x, "x", allow_uint8, uint8_hint, allow_empty=True), False
    else:  # any tensor: float values must be finite (NaN would reach the model's features), in any range
        _check_samples(x)
        image_values, finite_values = False, x.is_floating_point()
    for name, t in (("y", y), ("index", index)):
        if isinstance(t, torch.Tensor):
            check_device(name, t.device, x)
    if isinstance(y, torch.nn.Module):  # t(x, model): the labels left out, or an unlabelled batch's model in y's place
        raise TypeError(f"y must be labels or None, got the model ({type(y).__name__}); the call is t(x, y, model), or "
                        f"t(x, model=model) for an unlabelled batch")
    label_values = y is not None and _label_form(y, x.shape[0], num_classes, "y", targets_hint=_TARGETS_HINT)
    index_values = index is not None and _index_form(index, x.shape[0])
    if not values or not len(x):  # an empty batch has no value to read, nor a caller's more_checks
        return
    with no_autocast(x.device):
        checks: list[ValueCheck] = []  # judged in this order: images, labels, index
        if image_values:
            checks.append((_image_stats(x), lambda v: _judge_images(x, "x", *v)))
        elif finite_values:
            checks.append((_image_stats(x), lambda v: _judge_finite(x, "x", *v)))
        if label_values and y is not None:  # label_values implies y
            checks.append((_label_stats(y), lambda v: _judge_labels(y, "y", num_classes, v, _TARGETS_HINT)))
        if index_values and index is not None:  # index_values implies index
            checks.append((_extremes(index), lambda v: _judge_index(index_size, *v)))
        if more_checks is not None:
            checks += more_checks()
        if checks:
            _check_values(checks)


def describe(t: object) -> str:
    """What a value is, for a message: a tensor's dtype and shape, a list's items, else the type's name."""
    if isinstance(t, torch.Tensor):
        return f"{t.dtype} of shape {tuple(t.shape)}"
    if isinstance(t, (list, tuple)):
        return "[" + ", ".join(describe(v) for v in t) + "]"
    return type(t).__name__


def state_mismatch(expected: dict[str, torch.Tensor], given: collections.abc.Mapping[str, object], shown: int = 2
                   ) -> str:
    """'' when ``given`` has exactly ``expected``'s keys, each tensor of the expected shape; else how many keys are
    missing, unexpected or of another shape, naming the first ``shown`` of each (another codec's state differs in
    hundreds, which torch's own error lists one by one)."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    reshaped = [f"{k}: {tuple(g.shape)} given, {tuple(v.shape)} expected" for k, v in expected.items()
                if isinstance(g := given.get(k), torch.Tensor) and g.shape != v.shape]
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped)):
        if keys:
            more = f"; {len(keys) - shown} more" if len(keys) > shown else ""
            parts.append(f"{len(keys)} {'key' if len(keys) == 1 else 'keys'} {what} ({'; '.join(keys[:shown])}{more})")
    return ", ".join(parts)


def expanded_path(path: str | os.PathLike[str], what: str, fix: str = "give the full path instead") -> Path:
    """``path`` as a ``Path`` with a leading ``~`` or ``~user`` expanded; a ``ValueError`` naming ``what`` (the
    argument and its value) and saying ``fix`` where it cannot be (no such user; no ``HOME`` and no password entry),
    not pathlib's bare ``RuntimeError: Could not determine home directory.``"""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        raise ValueError(f"{what}: its ~ names no home directory (no such user, or no HOME and no password entry); "
                         f"{fix}") from None


def file_in_the_way(folder: Path) -> Path | None:
    """``folder`` itself or the nearest of its parents that exists as a file (so ``folder`` cannot be made), or None."""
    return next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)


def output_folder(out_dir: str | os.PathLike[str], name: str = "the output folder") -> Path:
    """The output folder ``out_dir`` as a ``Path`` (``~`` expanded), not created here: refused if it is an empty
    string (``Path("")`` is the current folder), an existing file or inside one, or if its ``~`` names no home
    directory. ``name``: what the message calls it (a script's option, ``"--out"``)."""
    if isinstance(out_dir, str) and not out_dir:
        raise ValueError(f"{name} must be a path, got ''; give a folder (it is created if missing)")
    out = expanded_path(out_dir, f"{name} {str(out_dir)!r}")
    file = file_in_the_way(out)
    if file is not None:
        inside = "" if file == out else f" is inside {str(file)!r}, which"
        raise ValueError(f"{name} {str(out)!r}{inside} is a file; give a folder (it is created if missing)")
    return out


def make_folder(out: Path, name: str = "the output folder") -> Path:
    """Create ``out`` (an ``output_folder``) and its parents unless there; refused, naming it, where it cannot be made
    or written into (a read-only or missing mount): the ``OSError``'s own type and ``errno`` (``EROFS`` for a folder
    already there on a read-only mount, as for one made there), not its bare ``[Errno 13] ...``."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not os.access(out, os.W_OK | os.X_OK):
            read_only = hasattr(os, "statvfs") and os.statvfs(out).f_flag & os.ST_RDONLY  # no statvfs on Windows
            code = errno.EROFS if read_only else errno.EACCES
            raise OSError(code, os.strerror(code))  # PermissionError for EACCES
    except OSError as e:
        refused = type(e)(f"cannot write into {name} {str(out)!r} ({e.strerror or e}); give a folder you can write to")
        refused.errno = e.errno
        raise refused from e
    return out


# the most CPU threads a run may ask for: torch.set_num_threads(n) takes any C int but starts about 2n OS threads, and
# a count the system cannot start (100000: the 2-core development machine holds 193,107 threads in all) ended the
# process at its first parallel op ("libgomp: Thread creation failed", a segfault). 1024 (or the CPUs of a machine of
# more) still lets a run repeat another machine's thread count, which changes torch's rounding, on fewer CPUs
MAX_THREADS = max(1024, os.cpu_count() or 1)
THREADS = option(check_count, low=1, high=MAX_THREADS)  # argparse type of --threads
