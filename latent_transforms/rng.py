"""Random number generators for transforms: seedable, per-device, per-rank by default."""
from __future__ import annotations

import copy
import math
import multiprocessing
import numbers
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import get_worker_info

from .validation import WrongTypeError, check_count, check_number, shown, text_hint

__all__ = ["random_partners", "sample_beta"]

_RANK_STRIDE = 1_000_003  # a prime, so rank streams do not collide for nearby seeds
_CHILD_STRIDE = 999_983  # another: the offset of a process multiprocessing started
MIN_ALPHA = 1e-3  # Beta(0.001, 0.001) weights are already almost all within 1e-6 of 0 or 1: no mixing left
_SEED_LOCK = threading.Lock()  # module-wide: a generator source with a lock of its own would not pickle


def _rank(default: int = 0) -> int:
    """The distributed rank; before ``init_process_group``, the one torchrun sets in ``RANK``, else ``default``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    rank = os.environ.get("RANK", "")
    return int(rank) if rank.isdecimal() else default


def _process() -> tuple[int, int | None]:
    """This process and DataLoader worker: a copy of a transform in a new one must not replay its parent's stream."""
    worker = get_worker_info()
    return os.getpid(), None if worker is None else worker.id


def _child_number() -> int:
    """0 in a process multiprocessing did not start (a main process, a torchrun rank) and in a DataLoader worker
    (DataLoader seeds each one's global RNG), else a number for its place among the processes its parents started
    (multiprocessing numbers them 1, 2, ... in the order started, over the parent's life): a forked process's global
    RNG is a copy of its parent's, so without it every fork of a pool drew the same stream."""
    if get_worker_info() is not None:
        return 0
    number = 0
    for k in multiprocessing.current_process()._identity:
        number = number * 1_000_000_007 + k
    return number


def _check_generator(spec: object) -> torch.Generator | int | None:
    """``spec`` if it is ``None``, an ``int`` seed in ``torch.Generator.manual_seed``'s range (as an ``int``) or a
    ``torch.Generator``."""
    if isinstance(spec, bool) or not (spec is None or isinstance(spec, (numbers.Integral, torch.Generator))):
        raise WrongTypeError(f"generator must be None, an int seed or a torch.Generator, got {type(spec).__name__}"
                             f"{text_hint(spec, int, none_allowed=True)}")
    if isinstance(spec, numbers.Integral) and not -2**63 <= int(spec) < 2**64:
        raise ValueError(f"a generator seed must be in [-2**63, 2**64) (torch.Generator.manual_seed's range), "
                         f"got {shown(spec)}")
    return int(spec) if isinstance(spec, numbers.Integral) else spec


def generator_repr(spec: torch.Generator | int | None) -> str:
    """``", generator=..."`` for a module's ``extra_repr`` when a generator was given (``""`` for ``None``): an
    ``int`` seed as itself, a ``torch.Generator`` by its device (its state is not a setting)."""
    if spec is None:
        return ""
    return f", generator={spec}" if isinstance(spec, int) else f", generator=torch.Generator({str(spec.device)!r})"


def _check_generator_device(generator: torch.Generator, device: torch.device) -> torch.Generator:
    """``generator`` if it can draw for data on ``device``, else ``ValueError`` naming both (not torch's own error)."""
    on = torch.device(generator.device)  # cuda:0's generator does not draw for cuda:1 data
    if on.type != device.type or None not in (on.index, device.index) and on.index != device.index:
        raise ValueError(f"the generator is on {generator.device} but the data is on {device}; "
                         f"pass torch.Generator(device={str(device)!r}) or an int seed")
    return generator


def draw_generator(spec: object, device: torch.device) -> torch.Generator | None:
    """The generator of a codec's own draws (``sample``, a VAE's posterior sample): ``None``, torch's global RNG, as
    torch's functions; an ``int``, a new generator on ``device`` seeded with it (the same seed, the same draws); a
    ``torch.Generator`` as given, if it is on ``device`` (``ValueError`` otherwise)."""
    spec = _check_generator(spec)
    if isinstance(spec, torch.Generator):
        return _check_generator_device(spec, torch.device(device))
    return torch.Generator(device).manual_seed(spec) if isinstance(spec, int) else spec


class GeneratorSource:
    """Hands out the ``torch.Generator`` a transform draws from, on the data's device.

    ``spec``:
    - ``None``: a private generator per device, seeded once from torch's global RNG (so
      ``torch.manual_seed`` makes runs reproducible) plus an offset per distributed rank, so that
      DDP ranks draw different augmentations by default; a copy in another process or DataLoader worker
      seeds afresh there (DataLoader seeds each worker's global RNG differently, every epoch); in another process
      that multiprocessing started, plus an offset for it (forked processes inherit their parent's global RNG);
    - ``int``: a private generator per device seeded with exactly that seed on every rank
      (the same seed gives the same draws, also across ranks and DataLoader workers);
    - ``torch.Generator``: used as given; it must live on the data's device.
    """

    _parent_rank = 0  # the rank of the process a copy came from (see __getstate__)

    def __init__(self, spec: torch.Generator | int | None = None):
        self.spec = _check_generator(spec)
        self._per_device: dict[str, torch.Generator] = {}
        self._process = _process()

    # A torch.Generator pickles its state as a tensor, which Linux's default "file_descriptor" sharing cannot send to
    # spawned DataLoader workers ("unable to resize file"); pickled as bytes, a transform travels to any process.
    # One box per generator: a generator shared by several transforms stays shared in the copy.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["spec"] = _box(self.spec)
        state["_per_device"] = {key: _box(g) for key, g in self._per_device.items()}
        # a process spawned by this one (a DataLoader worker under mp.spawn) may see no process group and no RANK
        state["_parent_rank"] = _rank(self._parent_rank)
        return state

    def get(self, device: torch.device) -> torch.Generator:
        if isinstance(self.spec, torch.Generator):
            return _check_generator_device(self.spec, device)
        with _SEED_LOCK:  # two threads' first calls would each make a generator (with an int seed: the same draws)
            if self.spec is None and self._process != _process():
                self._per_device, self._process = {}, _process()
            key = str(device)
            if key not in self._per_device:
                if self.spec is None:
                    draw = int(torch.randint(0, 2**62, (1,), device="cpu").item())  # not on torch's default device
                    seed = (draw + _rank(self._parent_rank) * _RANK_STRIDE
                            + _child_number() * _CHILD_STRIDE) % 2**63
                else:
                    seed = self.spec
                self._per_device[key] = torch.Generator(device=device).manual_seed(seed)
            return self._per_device[key]


class _PicklableGenerator:
    """Stands in for a ``torch.Generator`` in a pickle or deepcopy: it is rebuilt from its state bytes."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator  # held only while the box lives (one pickle or deepcopy): _BOXES holds it weakly

    def __reduce__(self) -> tuple[Callable[[str, bytes], torch.Generator], tuple[str, bytes]]:
        g = self.generator
        return _generator_from_bytes, (str(g.device), g.get_state().numpy().tobytes())

    # the copy a deepcopy makes of the generator elsewhere too
    def __deepcopy__(self, memo: dict[int, Any]) -> torch.Generator:
        return copy.deepcopy(self.generator, memo)


# By id(generator), the box held weakly: a torch.Generator takes no weak reference before torch 2.13, and while its
# box lives (the whole pickle or deepcopy: their memos keep it) the box holds the generator, so the id stays its own.
_BOXES: "weakref.WeakValueDictionary[int, _PicklableGenerator]" = weakref.WeakValueDictionary()


def _box(g: object) -> object:
    """A generator's one picklable stand-in (anything else as it is)."""
    if not isinstance(g, torch.Generator):
        return g
    box = _BOXES.get(id(g))
    if box is None:
        box = _BOXES[id(g)] = _PicklableGenerator(g)
    return box


def _generator_from_bytes(device: str, state: bytes) -> torch.Generator:
    out = torch.Generator(device=device)
    out.set_state(torch.frombuffer(bytearray(state), dtype=torch.uint8))
    return out


_GAMMA_ROUNDS = 16  # Marsaglia-Tsang accepts >= 95% of proposals for shape >= 1: all 16 reject with p < 1e-20


def _sample_log_gamma(shape: float, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """n draws of log X, X ~ Gamma(shape, 1), using only ``generator`` (Marsaglia & Tsang, 2000), in float32 whatever
    torch's default dtype (in bfloat16 a Beta(0.2, 0.2) weight took 938 values, some NaN). In logs because for
    a small shape X underflows float32 (a third of Gamma(0.01) draws would be 0). Each draw takes the first accepted
    of ``_GAMMA_ROUNDS`` proposals made at once: no host sync (a rejection loop read the acceptances on the host,
    3 syncs per round), and the generator advances by the same amount every call."""
    boost = shape < 1  # Gamma(a) = Gamma(a + 1) * U^(1/a)
    a = shape + 1 if boost else shape
    d = a - 1 / 3
    c = 1 / (9 * d) ** 0.5
    x = torch.randn(n, _GAMMA_ROUNDS, generator=generator, device=device, dtype=torch.float32)
    u = torch.rand(n, _GAMMA_ROUNDS, generator=generator, device=device, dtype=torch.float32)
    v = (1 + c * x) ** 3
    ok = (v > 0) & (torch.log(u) < 0.5 * x**2 + d - d * v + d * torch.log(v.clamp_min(1e-30)))
    first = ok.int().argmax(1, keepdim=True)  # the first accepted proposal
    out = torch.log(d * v.gather(1, first).squeeze(1).clamp_min(1e-30))
    out = torch.where(ok.any(1), out, math.log(d))  # none accepted (p < 1e-20): d, the proposals' centre
    if boost:
        out = out + torch.log(torch.rand(n, generator=generator, device=device, dtype=torch.float32)) / shape
    return out


def sample_beta(alpha: float, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """(n,) float32 draws in [0, 1] on ``device`` from Beta(alpha, alpha) using only ``generator``: ``G1 / (G1 + G2)``
    computed from the logs. ``alpha`` at least ``MIN_ALPHA`` (below, the weights are all but 0 or 1: no mixing)."""
    alpha = check_number("alpha", alpha, low=MIN_ALPHA)
    n = check_count("n", n)
    return torch.sigmoid(_sample_log_gamma(alpha, n, generator, device)
                         - _sample_log_gamma(alpha, n, generator, device))


def random_partners(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """(n,) int64 partners for mixing ``n`` samples: one random cycle through them (mixup's shuffled batch rolled by
    one), so that no sample is its own partner when ``n >= 2`` (``[0]`` for ``n = 1``); drawn by ``generator`` on
    ``device``."""
    n = check_count("n", n)
    order = torch.randperm(n, generator=generator, device=device)
    partner = torch.empty_like(order)
    partner[order] = order.roll(1)
    return partner
