"""``exact_math``: full fp32 precision and no autocast while a codec runs, whatever the caller's settings.

torch keeps its float32 precision settings in two APIs that it checks against each other: the legacy one
(``torch.set_float32_matmul_precision``, ``torch.backends.cudnn.allow_tf32``)
and, from torch 2.9, per-backend ``fp32_precision`` settings (``torch.backends.cuda.matmul.fp32_precision = "tf32"``).
A legacy getter raises once the two disagree, so this module sets both to full precision (consistent with each
other inside the block) and restores each exactly as it was: the legacy values through their setters, then every
``fp32_precision`` as stored. A legacy value that cannot be read (the caller's settings already disagree) is left
untouched. The settings are process-wide: they are switched once for all threads and restored when the last
codec call of any thread ends. A setting another thread changes meanwhile applies to the codec calls still running
and is made again after the restore, so that it ends as if made outside them (a change to the value the switch
gave, such as TF32 turned off while it is off for a codec, cannot be told from no change and is undone).
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator, cast

import torch

from ..torch_defaults import autocast_available

__all__ = ["exact_math"]

_LOCK = threading.Lock()
_depth = 0                         # codec calls in progress, all threads
_Legacy = tuple[Callable[[], Any], Callable[[Any], Any], Any, Any]  # (getter, setter, value before, value inside)
_Stored = tuple[Any, str, str | None]  # (fp32_precision holder, stored before, stored inside; None: a failed switch)
_saved: tuple[list[_Legacy], list[_Stored]] = ([], [])  # what _full_precision() returned, for _restore()


def _legacy_settings() -> list[tuple[Callable[[], Any], Callable[[Any], Any], Any]]:
    """(getter, setter, full-precision value) of each legacy setting."""
    cudnn = torch.backends.cudnn
    return [(torch.get_float32_matmul_precision, torch.set_float32_matmul_precision, "highest"),
            (lambda: cudnn.allow_tf32, lambda v: setattr(cudnn, "allow_tf32", v), False)]


def _precision_settings() -> tuple[list[Any], list[Any]]:
    """The per-backend ``fp32_precision`` holders (torch >= 2.9): all that the legacy setters write, and the ones
    set to ``"ieee"`` (the matmuls and convolutions of codecs, on CUDA and on the CPU's oneDNN)."""
    b = torch.backends
    if not hasattr(b.cuda.matmul, "fp32_precision"):
        return [], []
    cudnn, mkldnn = cast(Any, b.cudnn), cast(Any, b.mkldnn)  # their holders are set at import: not in the stubs
    exact = [b.cuda.matmul, cudnn.conv, mkldnn.matmul, mkldnn.conv]
    return exact + [cudnn.rnn, mkldnn.rnn], exact


def _full_precision() -> tuple[list[_Legacy], list[_Stored]]:
    """Switch to full precision; returns what ``_restore()`` needs to undo it (undone already if it fails):
    ``(getter, setter, value before, value inside)`` per legacy setting, ``(holder, stored before, stored inside)``
    per ``fp32_precision`` holder."""
    every, exact = _precision_settings()
    stored = [(holder, holder.fp32_precision) for holder in every]  # as stored, before the legacy setters write
    switched = []
    try:
        for get, set_, full in _legacy_settings():
            try:
                value = get()
            except RuntimeError:  # the caller's legacy and new settings disagree: leave this one alone
                continue
            set_(full)
            switched.append((get, set_, value))
        for holder in exact:
            holder.fp32_precision = "ieee"
    except BaseException:
        _restore([(*s, None) for s in switched], [(holder, value, None) for holder, value in stored])
        raise
    # the values as read inside (a legacy getter may raise there: the switch makes the two APIs disagree by design)
    return [(*s, _read(s[0])) for s in switched], [(holder, value, holder.fp32_precision) for holder, value in stored]


def _read(get: Callable[[], Any]) -> Any:
    """A setting's value, or ``RuntimeError`` where torch's getter raises (the two APIs disagree)."""
    try:
        return get()
    except RuntimeError:
        return RuntimeError


def _restore(legacy: list[_Legacy], stored: list[_Stored]) -> None:
    """Restore every setting as it was before the switch, then make again the changes another thread made while a
    codec call was running (a value that differs from the one read inside; none on a failed switch, where the value
    inside is None), so that they end as if made outside it."""
    made = [(holder, holder.fp32_precision) for holder, _, inside in stored
            if inside is not None and holder.fp32_precision != inside]
    made_legacy = [(set_, now) for get, set_, _, inside in legacy
                   if inside is not None and (now := _read(get)) != inside and now is not RuntimeError]
    for _, set_, value, _ in legacy:  # first: the legacy setters also write holders
        set_(value)
    for holder, value, _ in stored:
        holder.fp32_precision = value
    for set_, value in made_legacy:
        set_(value)
    for holder, value in made:
        holder.fp32_precision = value


def _enter() -> None:
    global _depth, _saved
    with _LOCK:
        if _depth == 0:
            _saved = _full_precision()
        _depth += 1


def _exit() -> None:
    global _depth
    with _LOCK:
        _depth -= 1
        if _depth == 0:
            _restore(*_saved)


@contextlib.contextmanager
def exact_math(device_type: str | None = None) -> Iterator[None]:
    """Full fp32 precision (no TF32, no bf16 matmuls) and no autocast for the duration (invertibility: a Glow round
    trip errs by about 1e-2 with TF32 on an H100, as the project's notes record it, and ``glow-digits``' by 0.06 on
    its test digits under a CPU bf16 autocast, which a training loop often wraps the augmentation in;
    docs/reliability.md). ``device_type``: the autocast to turn off (``"cuda"``, ``"cpu"``, ...); ``None``: the CPU's
    and CUDA's. The precision settings are restored exactly afterwards (see the module's docstring)."""
    _enter()
    try:
        with contextlib.ExitStack() as no_autocast:
            for kind in [device_type] if device_type else ["cpu", "cuda"]:
                # entering a disabled one costs ~15 us of host time per call; a device torch has no autocast for
                # (MPS before torch 2.5) can have none on, and asking raises "unknown device type for autocast"
                if autocast_available(kind) and torch.is_autocast_enabled(kind):
                    no_autocast.enter_context(torch.autocast(kind, enabled=False))
            yield
    finally:
        _exit()
