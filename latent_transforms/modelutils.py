"""Borrowing the classifier without changing it (mode, BatchNorm statistics and gradients stay as they were),
reading its logits, naming the device a run used, and choosing the CPU threads of a run on a busy CPU."""
from __future__ import annotations

import contextlib
import mmap
import os
import platform
import re
import sys
import threading
from typing import Any, Iterator

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .base import not_about_the_batch
from .validation import check_initialised, check_model, name_device_clash, name_dtype_clash

__all__ = ["borrowed"]


def unwrap(model: nn.Module) -> nn.Module:
    """The local module of a DDP/DataParallel wrapper, also one under ``torch.compile`` (an attack needs no gradient
    sync, and DDP's forward broadcasts buffers: a collective call that would hang a rank attacking nothing), else
    ``model``."""
    wrappers = (DistributedDataParallel, nn.DataParallel)
    while True:
        if isinstance(model, wrappers):
            model = model.module
        elif isinstance(compiled := getattr(model, "_orig_mod", None), wrappers):  # torch.compile(DDP(model))
            model = compiled.module
        else:
            return model


_BORROW_LOCK = threading.Lock()
# id(module or parameter) -> [borrows holding it, its train flag or requires_grad before the first of them] (each
# borrow's own lists keep the objects alive, so an id stays theirs while it is a key)
_lent: dict[int, list[Any]] = {}


def _lend(objects: list[Any], flag: str) -> None:
    """Count a borrow of each of ``objects`` (modules or parameters), keeping its ``flag`` attribute as the first
    borrow found it."""
    for obj in objects:
        entry = _lent.get(id(obj))
        if entry is None:
            entry = _lent[id(obj)] = [0, getattr(obj, flag)]
        entry[0] += 1


def _released(objects: list[Any]) -> Iterator[tuple[Any, bool]]:
    """End a borrow of each of ``objects``; yields those no other borrow holds, with their flag as it was before."""
    for obj in objects:
        entry = _lent[id(obj)]
        entry[0] -= 1
        if entry[0] == 0:
            del _lent[id(obj)]
            yield obj, entry[1]


def _give_back(modules: list[nn.Module], parameters: list[nn.Parameter]) -> None:
    for m, mode in _released(modules):
        m.training = mode
    for p, flag in _released(parameters):
        p.requires_grad_(flag)


@contextlib.contextmanager
def borrowed(model: nn.Module, who: str = "the model") -> Iterator[nn.Module]:
    """Use ``model`` in eval mode (no BatchNorm statistic updates) with parameter gradients off; ``who`` names it in
    the error for a model whose lazy modules are not initialised yet (``validation.check_initialised``).

    Every module's train/eval flag and every parameter's ``requires_grad`` are restored on exit, also when
    an exception is raised inside. Existing ``.grad`` tensors are never touched. Overlapping borrows (threads sharing
    a predictor, nested calls), also of models that share modules (a wrapper and the model inside it, a
    ``torch.compile``d model and the model itself), switch each module and parameter once and give it back when the
    last borrow holding it ends.
    """
    check_model(model, who=who)
    model = unwrap(model)
    with _BORROW_LOCK:
        # not torch.compile's wrapper (its modules are its model's): its train flag is its model's, and torch 2.4's,
        # a stale flag of its own (True), set the model's when given back, while another borrow could hold the model
        # (its own submodule, not an attribute: a wrapper that reads unknown ones from the model inside it is lent)
        modules = [m for m in model.modules() if "_orig_mod" not in m._modules]
        parameters = list(model.parameters())
        check_initialised(model, parameters, who)  # before anything is lent
        _lend(modules, "training")
        _lend(parameters, "requires_grad")
        try:
            model.eval()
            for p in parameters:
                p.requires_grad_(False)
        except BaseException:
            _give_back(modules, parameters)
            raise
    try:
        yield model
    finally:
        with _BORROW_LOCK:
            _give_back(modules, parameters)


def logits_of(net: nn.Module, x: torch.Tensor, who: str) -> torch.Tensor:
    """``net(x)``, which must be ``(B, K)`` logits for ``x: (B, ...)``, ``K >= 2``; a tuple, a dict or another shape
    (one output too: a binary logit or a regression; or none) is refused with the fix (``who`` names the caller in the
    message), and so is torch's error for a model on another device or in another dtype than ``x`` (outside
    autocast) or for one whose ``nn.Linear`` gets ``x`` as it is (a classifier head, not the whole classifier)."""
    try:
        out = net(x)
    except RuntimeError as e:
        name_device_clash(e, net, x, who)
        name_dtype_clash(e, net, x, who)
        _name_head_given(e, x, who)
        raise
    if isinstance(out, torch.Tensor) and out.ndim == 2 and out.shape[0] == x.shape[0]:
        if out.shape[1] == 0:  # a head of no classes: torch's argmax error, or predict_proba's (B, 0) probabilities
            raise ValueError(f"{who} needs model(x) to return (B, K) class logits, K >= 2, got no output (shape "
                             f"{tuple(out.shape)}); is the model's number of classes 0?")
        if out.shape[1] == 1:  # its softmax is 1 and its cross-entropy 0, whatever x: nothing would be attacked or read
            raise ValueError(f"{who} needs model(x) to return (B, K) class logits, K >= 2, got one output (shape "
                             f"{tuple(out.shape)}), whose softmax is 1 whatever x; a binary logit z? pass a wrapper "
                             f"nn.Module whose forward returns torch.cat([torch.zeros_like(z), z], 1), two classes "
                             f"with the same probabilities (sigmoid(z) for class 1); a regression has no classes")
        return out
    got = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
    if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[0] == x.shape[0]:  # not model(x)[0], one image's
        raise ValueError(f"{who} needs model(x) to return (B, K) logits, got {got}; per-pixel logits (B, K, H, W) of "
                         f"a segmentation model? {who} reads one class per image, which such a model has not "
                         f"(docs/composition.md#segmentation-masks-and-boxes)")
    example = "one row of K class logits per image" if isinstance(out, torch.Tensor) else \
        "the logits (for example model(x)[0] or model(x)['logits'])"  # a tensor's own [0] is one image's
    raise ValueError(f"{who} needs model(x) to return (B, K) logits, got {got}; pass a wrapper nn.Module whose "
                     f"forward returns {example}")


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(B, K) logits -> softmax probabilities in the logits' dtype, at least float32 (16-bit logits give float32, a
    float64 model's float64): ``predict_proba``'s and ``LatentMixupInference``'s."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32)).softmax(1)


def _name_head_given(error: RuntimeError, x: torch.Tensor, who: str) -> None:
    """Raise a ``ValueError`` naming the fix from ``error`` (torch's RuntimeError of ``model(x)``) when it is an
    ``nn.Linear``'s refusal of ``x: (B, C, H, W)`` as it is, its last dimension taken for the features ("mat1 and mat2
    shapes cannot be multiplied (384x32 and 512x5)"): a classifier head passed where the whole classifier goes (a
    user who computes the features separately); else return. Called once the call has failed: no cost otherwise."""
    text = str(error)
    found, per_row = re.search(r"mat1 and mat2 shapes cannot be multiplied \((\d+)x(\d+) and (\d+)x\d+\)", text), 1
    if found is None and x.ndim >= 3:  # a strided x (channels-last, expanded) without autograd: bmm, a matrix per
        # (B, C) plane ("Expected size for first two dimensions of batch2 tensor to be: [15, 8] but got: [15, 64]")
        found, per_row = re.search(r"batch2 tensor to be: \[(\d+), (\d+)\] but got: \[\d+, (\d+)\]", text), x.shape[-2]
    if found is None or x.ndim < 3:
        return
    rows, cols, features = (int(g) for g in found.groups())
    if cols != x.shape[-1] or rows * per_row * cols != x.numel():  # a later layer's input, not x
        return
    raise not_about_the_batch(ValueError(
        f"{who} needs model(x) to map x {tuple(x.shape)} to (B, K) logits, but an nn.Linear of the model, taking "
        f"{features} features, got x as it is (torch: {text.splitlines()[0]}): a classifier head on features "
        f"computed separately? pass the whole classifier, nn.Sequential(backbone, head), which maps images to "
        f"logits (linear layers on flat images: put nn.Flatten() first)")) from error


def device_memory(device: torch.device) -> int | None:
    """The total memory of ``device`` in bytes (the machine's RAM for the CPU), ``None`` where it is not known."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu":
        try:
            return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):  # no sysconf (Windows), or no such name
            return None
    return None


def process_memory() -> int | None:
    """The resident memory of this process in bytes (Linux's ``/proc/self/statm``; elsewhere its peak so far, from
    ``getrusage``), ``None`` where neither is known (Windows)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * mmap.PAGESIZE
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def describe_device(device: torch.device) -> str:
    """The device as reports record it: the GPU's name, or ``cpu (x86_64, 2 threads)``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"cpu ({platform.processor() or platform.machine()}, {threads} thread{'s' if threads > 1 else ''})"


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's CPU thread count set to ``threads`` within, and put back as it was after (also on an exception or a
    Ctrl-C: a notebook's later cells ran on a run's count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def threads_for_this_cpu(threads: int, quiet: bool = False) -> int:
    """``threads``, or 1 where other jobs keep the CPU busy (a load average above the cores less half a core), saying
    so on stderr unless ``quiet``: torch's threads then wait on each other (the demo took 871 s with 2 threads and
    49 s with 1 on a 2-core CPU at load 4 to 5; 115 s and 75 s at load 1.7). For the commands' default; ``--threads N``
    chooses."""
    try:
        load, cores = os.getloadavg()[0], os.cpu_count() or 1
    except (AttributeError, OSError):  # no load average on this platform
        return threads
    if threads <= 1 or load <= cores - 0.5:
        return threads
    if not quiet:
        print(f"the CPU is busy (load average {load:.1f} on {cores} cores): running on 1 thread, which is faster "
              f"then (--threads N to choose)", file=sys.stderr)
    return 1
