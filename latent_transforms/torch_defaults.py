"""Torch's process-wide defaults (default device and dtype, inference mode) that the library's own tensors must not
follow: a training script may have set them for its own code (docs/reliability.md, "Torch's global settings"); and
what ``torch.compile`` must not trace of the library's code."""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator, TypeVar, cast

import torch

__all__: list[str] = []  # the package's own machinery: none of it is API (docs/api.md)


def _no_autocast(device_type: str) -> bool:
    """Whether torch knows ``device_type`` and has no autocast for it."""
    try:
        return not torch.amp.is_autocast_available(device_type)
    except RuntimeError:  # a name this torch does not know ("Expected one of cpu, cuda, ..."): no tensor is there
        return False


# the device types torch has no autocast for (of c10's: MPS before torch 2.5, meta, lazy, vulkan, ...), asked once
# here for torch.compile's sake (audit 441: of mps and meta alone, traced on a lazy tensor no_autocast entered
# torch.autocast("lazy", enabled=False), which raises "unsupported scalarType"); mkldnn left out: no tensor is on it,
# and asking warns that the name is deprecated
_NO_AUTOCAST = frozenset(filter(_no_autocast, (
    "cpu", "cuda", "ipu", "xpu", "opengl", "opencl", "ideep", "hip", "ve", "fpga", "maia", "xla", "lazy", "vulkan",
    "mps", "meta", "hpu", "mtia", "privateuseone")))


def autocast_available(device_type: str) -> bool:
    """Whether torch has an autocast for ``device_type``. Traced by ``torch.compile``, the answer asked at import:
    torch 2.4's could not trace ``torch.amp.is_autocast_available`` (``fullgraph=True`` refused it; else a graph
    break there, then an InternalTorchDynamoError resuming after it, in ``torch.compile(DDP(model))``)."""
    if torch.compiler.is_compiling():
        return device_type not in _NO_AUTOCAST
    return torch.amp.is_autocast_available(device_type)


_Fn = TypeVar("_Fn", bound=Callable[..., Any])
# function -> it under torch.compiler.disable, made at first need: as a decorator, the import of torch._dynamo it makes
# took 1-2 s of ``import latent_transforms``
_UNTRACED: dict[Callable[..., Any], Callable[..., Any]] = {}


def untraced(fn: _Fn) -> _Fn:
    """``fn`` under ``torch.compiler.disable``: code being compiled calls it untraced, a graph break there. Made
    afresh in code being compiled (the ``disable`` call is where the graph breaks): one kept from before a
    ``torch._dynamo.reset()`` was traced into from ISDA's hook, and torch warned "Dynamo does not know how to trace
    the builtin ..._top_saved_tensors_default_hooks" (audit 448); and a list keeping it there was worse on torch 2.4,
    whose Dynamo warned "Graph break due to unsupported builtin None.list.append" (audit 447). Made once elsewhere,
    kept in a dict (the statistics' gather, called eagerly at every update)."""
    if torch.compiler.is_compiling():
        return cast(_Fn, torch.compiler.disable(fn))
    wrapped = _UNTRACED.get(fn)
    if wrapped is None:
        wrapped = _UNTRACED[fn] = torch.compiler.disable(fn)
    return cast(_Fn, wrapped)


_DEFAULT_DTYPE_LOCK = threading.RLock()  # torch's default dtype is process-wide: one codec build sets it at a time


def cpu_as_default_device() -> contextlib.AbstractContextManager[torch.device | None]:
    """The CPU as torch's default device for the block, where another is set (``torch.set_default_device``); nothing
    where it is the CPU already, as the device mode would intercept every op of the block."""
    # torch.empty's device, not torch.get_default_device(): torch 2.4's raised AttributeError once a default device
    # had been set and unset (set_default_device(None))
    return contextlib.nullcontext() if torch.empty(0).device.type == "cpu" else torch.device("cpu")


@contextlib.contextmanager
def codec_build_defaults() -> Iterator[None]:
    """While a codec is built (``build_codec``, ``hub.load``, ``unfrozen_copy``): new tensors are float32, on the
    CPU and normal ones, whatever the caller set. Under ``torch.set_default_dtype(torch.bfloat16)`` (or float16) a
    Glow could not be built (normflows' init takes a QR decomposition, which has no 16-bit CPU kernel) and a VAE was
    built in 16 bits (``train_codec`` then refused it); under float64 a codec was built, and trained, in float64.
    Under ``torch.set_default_device("meta")`` the weights were made on the meta device, where a checkpoint's values
    are lost (under "cuda", on the GPU, then copied to the CPU). Inside ``torch.inference_mode()`` they were
    inference tensors, whose version a Glow's folded fast path cannot read. The default dtype is process-wide: it
    is float32 for every thread while a codec is being built (up to about a second for a Glow), then set back."""
    with _DEFAULT_DTYPE_LOCK, cpu_as_default_device(), torch.inference_mode(False):
        dtype = torch.get_default_dtype()
        if dtype == torch.float32:  # the usual case: nothing process-wide to switch
            yield
            return
        torch.set_default_dtype(torch.float32)
        try:
            yield
        finally:
            torch.set_default_dtype(dtype)
