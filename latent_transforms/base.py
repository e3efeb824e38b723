"""The base class every method derives from: validation, per-sample ``p``, generators, labels, stats."""
from __future__ import annotations

import os
import sys
import threading
import warnings
import weakref
from contextvars import ContextVar
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import get_worker_info

from .labels import num_classes_of, to_soft
from .rng import GeneratorSource, generator_repr
from .torch_defaults import untraced
from .validation import (Settings, ValueCheck, WrongTypeError, check_batch, check_classes, check_model,
                         check_model_slot, check_number, describe, setting, values_read)

__all__ = ["LatentTransform"]

# A decoded sample further than this outside [0, 1] (before clipping) is implausible and is rejected.
_MAX_OVERSHOOT = 0.5
# A transformed sample with more than _SATURATED of its values at 0 or 1 after clipping, _GAIN more than its input had,
# is destroyed though kept: a flow's latent pushed far out (eps too large) decodes into saturated noise inside [0, 1]
# (the shipped VAEs decode into [0, 1], the flows' logit transform within 0.06 of it: keep_plausible rejects none).
# Over a window of at least _WINDOW transformed samples, more than _WARN of them destroyed or rejected (keep_plausible:
# returned as they were) makes a one-time warning.
_SATURATED, _GAIN, _WINDOW, _WARN = 0.5, 0.25, 32, 0.25
# Set on a ValueError that is not about the batch a transform was given (its model's or codec's own error, raised in
# ``transform``, or a setting the transform lacks): a Compose passes it on without naming the previous step.
NOT_ABOUT_THE_BATCH = "_latent_transforms_not_about_the_batch"


# DDP -> the modules of ours it was checked for, each with the count of submodules_changed() then (weakly: this keeps
# neither alive)
_OUT_OF_BROADCAST: weakref.WeakKeyDictionary[nn.Module, weakref.WeakKeyDictionary[nn.Module, int]] = \
    weakref.WeakKeyDictionary()
_SUBMODULES_CHANGED = 0


def submodules_changed() -> None:
    """Count a codec or cache assigned to a transform after construction, or buffers a codec registers later (a
    Glow's folded weights, at its first ``freeze()``): its buffers are others, which ``keep_out_of_ddp_broadcast``
    leaves out at the next call (checked once, a cache assigned later was broadcast)."""
    global _SUBMODULES_CHANGED
    _SUBMODULES_CHANGED += 1


def keep_out_of_ddp_broadcast(owner: nn.Module, model: object) -> None:
    """Leave ``owner``'s buffers (a codec's constants, a cache's latents, ISDA's statistics) out of the copy of rank 0's
    buffers that ``DistributedDataParallel`` broadcasts in every forward, when ``owner`` is inside its module: the DDP
    ``model`` given (or ``torch.compile``'s of one), or the one whose forward runs (a LightningModule's
    ``training_step``). They are alike on every rank or, ``ISDA(sync_stats=False)``'s, per rank on purpose: rank 0's
    statistics overwrote the other ranks' own, and a cache or covariance was sent over the network every step."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if torch.compiler.is_compiling():  # ISDA's hook, ISDALoss in torch.compile(DDP(model))'s forward: run untraced,
        # a graph break (skipped, their statistics were left to the broadcast)
        untraced(keep_out_of_ddp_broadcast)(owner, model)
        return
    ddp_class = nn.parallel.DistributedDataParallel
    # torch records the DDP whose forward runs, for dynamo (getattr: a private attribute)
    for ddp in {getattr(ddp_class, "_active_ddp_module", None), getattr(model, "_orig_mod", model)}:
        ignored = getattr(ddp, "parameters_to_ignore", None)  # DDP reads it in every forward's buffer broadcast
        if not isinstance(ddp, ddp_class) or not isinstance(ignored, set):
            continue
        checked = _OUT_OF_BROADCAST.setdefault(ddp, weakref.WeakKeyDictionary())
        if checked.get(owner) == _SUBMODULES_CHANGED:
            continue
        checked[owner] = _SUBMODULES_CHANGED
        prefix = next((name for name, m in ddp.module.named_modules() if m is owner), None)
        if prefix is not None:  # every buffer slot, also those still None (statistics sized by their first update)
            ignored.update(".".join(filter(None, (prefix, sub, b)))
                           for sub, m in owner.named_modules() for b in m._buffers)


# The labels' type in the call's hint: y2 is labels when y is, None when y is None (LatentTransform, Compose)
LabelsT = TypeVar("LabelsT", bound="torch.Tensor | None")

# The classes a Compose knows (its own or a later step's), set around each latent step's call: its first step reads
# the batch's values for both (one host sync per call); a step checks the labels against them when it has no
# num_classes (a label mix makes class indices soft with them).
CALLER_NUM_CLASSES: ContextVar[int | None] = ContextVar("latent_transforms_caller_num_classes", default=None)


def not_about_the_batch(e: ValueError) -> ValueError:
    """``e``, marked as not caused by the batch (a Compose then does not blame the step that made it)."""
    setattr(e, NOT_ABOUT_THE_BATCH, True)
    return e


def keep_plausible(decoded: torch.Tensor, fallback: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``decoded: (N, C, H, W)`` clipped to [0, 1], each sample that is non-finite or more than ``_MAX_OVERSHOOT``
    outside [0, 1] replaced by its row of ``fallback`` (same shape). Returns ``(images, ok)``, ``ok: (N,)`` bool
    marking the samples kept."""
    clipped = decoded.clamp(0, 1)
    # a NaN pixel's overshoot is NaN and an infinite one's inf, and amax propagates NaN (as the extremes of the input
    # check do): the comparison rejects non-finite samples too, without a pass of its own
    overshoot = (decoded - clipped).flatten(1).abs().amax(1)
    ok = overshoot <= _MAX_OVERSHOOT
    return torch.where(ok.view(-1, 1, 1, 1), clipped, fallback), ok


# The start of warn_if_left_in_eval's warning, as a warnings filter takes it (a deliberate eval-mode call silences it)
LEFT_IN_EVAL = r".* is in eval\(\) mode, where it returns its inputs unchanged"


# The frames a warning about a transform's call passes by: this library's (a Compose's step call among them) and
# nn.Module's __call__
_PAST_TO_THE_CALL = (os.path.dirname(__file__) + os.sep, os.path.dirname(nn.modules.module.__file__) + os.sep)


def warn_at_call(message: str) -> None:
    """``warnings.warn(message)`` at the line that called the transform: the first frame outside this library and
    nn.Module's call (a fixed ``stacklevel`` named compose.py's line for a step in a ``Compose``)."""
    frame: FrameType | None
    frame, level = sys._getframe(1), 2  # level 2: warn_at_call's caller
    while frame is not None and frame.f_code.co_filename.startswith(_PAST_TO_THE_CALL):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, stacklevel=level)


def warn_if_left_in_eval(owner: nn.Module, model: nn.Module | None) -> None:
    """Once per ``owner``, called in its ``eval()`` mode: warn when ``model`` is training, which an augmentation
    switched off by ``augment.eval()`` and never switched back (it is no submodule of the model, so ``model.train()``
    misses it) would silently leave unaugmented."""
    if isinstance(model, nn.Module) and model.training and not owner.__dict__.get("_warned_left_in_eval", False):
        setattr(owner, "_warned_left_in_eval", True)  # once per instance (nn.Module's stubs take tensors, modules)
        name = type(owner).__name__
        counts = "its stats['seen']" if isinstance(owner, SampleStats) else "its steps' stats['seen']"
        warn_at_call(f"{name} is in eval() mode, where it returns its inputs unchanged, but the model it was given is "
                     f"training: nothing is augmented. Call .train() on the {name} when training resumes "
                     f"(model.train() misses it unless it is a submodule of the model); {counts} counts only "
                     f"training-mode calls")


def saturated(x2: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``(N,)`` bool: which outputs ``x2: (N, C, H, W)`` in [0, 1] of the inputs ``x`` have more than ``_SATURATED`` of
    their values at 0 or 1, ``_GAIN`` more than their input."""
    def share(t: torch.Tensor) -> torch.Tensor:
        return ((t <= 0) | (t >= 1)).flatten(1).float().mean(1)
    out = share(x2)
    return (out > _SATURATED) & (out > share(x) + _GAIN)


def one_line_repr(module: nn.Module) -> str:
    """``Name(settings)`` from ``module.extra_repr()``, without the submodules (a model, a codec or a cache would print
    hundreds of lines): the ``__repr__`` of the transforms and of ``LatentMixupInference``."""
    return f"{type(module).__name__}({module.extra_repr()})"


_COUNT_LOCK = threading.Lock()  # one for all modules: held for one addition, and a module with a lock would not pickle


class SampleStats:
    """Running counts of what a module did to its samples, kept on the data's device (no host sync per batch):
    ``stats`` reads them, ``reset_stats()`` clears them, ``_count(...)`` adds a batch."""

    _counts: torch.Tensor | None = None

    @property
    def stats(self) -> dict[str, int]:
        """Running counts: samples ``seen`` (by a transform: in training mode), ``transformed`` (and kept),
        ``rejected`` (transformed, then replaced by the input)."""
        seen, transformed, rejected = (0, 0, 0) if self._counts is None else self._counts.tolist()
        return {"seen": int(seen), "transformed": int(transformed), "rejected": int(rejected)}

    def reset_stats(self) -> None:
        """Set every count back to 0."""
        self._counts = None

    def _count(self, device: torch.device, seen: int, transformed: torch.Tensor, rejected: torch.Tensor) -> None:
        # torch.full, not torch.tensor: a Python number becomes a kernel argument, not a host-to-device copy (a sync)
        seen_t = torch.full((), seen, dtype=torch.int64, device=device)
        row = torch.stack([seen_t, transformed, rejected]).to(torch.int64)
        with _COUNT_LOCK:  # threads sharing a transform (a data pipeline, a server) lost counts to each other
            self._counts = row if self._counts is None else self._counts.to(device) + row


class LatentTransform(Settings, SampleStats, nn.Module):
    """Base of every latent-transforms method; the call is ``x2, y2 = t(x, y, model=None)``.

    Args:
        p: probability that a sample is transformed, drawn per sample; the others pass through bit-identical.
        generator: ``None`` (private stream seeded from torch's global RNG, different on each DDP rank),
            an ``int`` seed, or a ``torch.Generator`` on the data's device.
        num_classes: needed by label-mixing methods when ``y`` holds class indices.

    Shape:
        x: (B, C, H, W) float in [0, 1]; y: (B,) int64 class indices or (B, K) float soft labels, or ``None`` for an
        unlabelled batch (``x2, _ = t(x)``; methods with ``needs_labels`` refuse it).
        Returns x2 with x's shape, dtype and device (and channels_last memory format if x has it); y2 in y's
        form, or (B, K) soft labels for methods that mix samples (``mixes_labels = True``); ``None`` for ``None``.

    Convention:
        - ``eval()`` mode: the identity (x and y returned unchanged) unless a subclass documents otherwise.
        - An empty batch (``B = 0``: a DistributedDataParallel rank's, a filter's) passes, as through torchvision's
          and kornia's transforms: empty outputs of the same form (soft labels for label-mixing methods), nothing
          counted.
        - Bad input raises ``ValueError`` naming the problem (``TypeError`` for a wrong type of ``x``, ``y`` or
          ``model``, or a missing ``model``; an option of the wrong type, ``validation.WrongTypeError``, both). Methods that
          need the model refuse to run in a DataLoader worker (``RuntimeError``): the model there is a stale copy.
        - A transformed sample that is non-finite or more than 0.5 outside [0, 1] before clipping is
          replaced by its input (and its label kept); ``t.stats`` counts samples seen, transformed, rejected.
        - Outputs are clipped to [0, 1] and carry no autograd history (training mode).
        - Parameters are drawn apart from their application (as kornia's and torchvision v2's transforms):
          ``last_params`` holds the last successful training call's: ``"batch_size"``, a 0-dim int64 CPU tensor,
          ``"selected"``, ``(N,)`` int64, the batch rows chosen by ``p`` (all B when ``p=1``; rejected ones
          included; none: only these two keys), the method's draws (``make_params``), one row per selected
          sample in that order (indices such as VarMixup's ``partner`` count among the selected samples: batch row
          ``selected[partner]``), and what the method computed from them (LatentAdversarial's ``delta``), all
          detached (no autograd history, not the caller's tensor objects).
          ``t(x, y, model, params=t.last_params)`` applies the same draws again (to another view of the same batch,
          say) without drawing: the same output for a method whose result depends on its draws and inputs alone.
          Replayed draws are checked (rows, trailing shape, dtype, device; those of ``index_params`` as indices in
          ``[0, N)``, those of ``weight_params`` as weights in ``[0, 1]``), and so is ``batch_size`` where given (a
          tensor or an int); a key that is none of these nor what the method computes (a misspelt one) is refused.
          ISDA, which changes neither x nor y, has neither.

    Subclasses set ``needs_model``/``mixes_labels`` (``needs_labels`` follows ``mixes_labels``; override it with a
    class attribute or a property, for a method that reads labels without mixing them: a label mix needs labels
    whatever it says) and implement ``make_params(n, generator, device)``, every random draw for ``n`` selected
    samples, and ``transform(x, y, model, params, index=None) -> (x2, y2)`` on the selected samples only;
    ``check_inputs(x, model, index)`` may add checks of their own (run on every call, also in eval mode, by
    ``check_call``).
    """

    needs_model: bool = False
    _takes_images: bool = True  # False: x is any (B, ...) tensor, only checked, never used (ISDA: own forward)
    mixes_labels: bool = False
    index_params: tuple[str, ...] = ()  # draws that are indices among the selected samples
    weight_params: tuple[str, ...] = ()  # draws that are weights in [0, 1] (VarMixup's lam: past them, negative labels)
    _accepted_labels: str = "(B,) int64 class indices or (B, K) soft labels"  # named when y=None is refused
    p = setting("p", check_number, high=1.0)
    _destroyed: torch.Tensor | None = None  # (3,) int64 on the data's device: destroyed, rejected, transformed samples
    _destroyed_found: tuple[int, int, int] | None = None  # a window judged destroyed, warned of at the next forward
    _destroyed_warned = False
    num_classes = setting("num_classes", check_classes)

    def __init__(self, *, p: float = 1.0, generator: torch.Generator | int | None = None, num_classes: int | None = None):
        super().__init__()
        self.p, self.num_classes = p, num_classes  # settings: checked whenever set
        self.generator = generator  # a GeneratorSource, made as when assigned later
        self.last_params: dict[str, torch.Tensor] = {}

    @property
    def needs_labels(self) -> bool:
        """Whether a call needs ``y`` (a label-mixing method does); the others take ``y=None``."""
        return self.mixes_labels

    @property
    def generator(self) -> torch.Generator | int | None:
        """The ``generator`` given; assigned (a sweep's ``t.generator = trial_seed``), the draws start from it as a
        new transform's would (as a plain attribute it was ignored)."""
        return self._rng.spec

    @generator.setter
    def generator(self, generator: torch.Generator | int | None) -> None:
        self._rng = GeneratorSource(generator)

    # -- hooks for subclasses -------------------------------------------------------------------
    def _value_checks(self, x: torch.Tensor, index: torch.Tensor | None) -> list[ValueCheck]:
        """A subclass's checks of values, as ``(statistics tensor, judge)`` pairs read in the call's one host sync
        (``validation.check_batch``; ``x`` and ``index`` have passed its form checks)."""
        return []

    def check_inputs(self, x: torch.Tensor, model: nn.Module | None, index: torch.Tensor | None) -> None:
        """Extra checks of a subclass (codec shape, device, index range, ...) of a call's ``x`` (``(B, C, H, W)``
        images for a method that takes them), ``model`` and ``index: (B,)`` int64 or ``None``."""

    def make_params(self, n: int, generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
        """Every random draw of a call on ``n`` selected samples, from ``generator`` (on ``device``): tensors with one
        row per sample, the same keys for any ``n``, 0 included (``{}``: a method that draws nothing). Draws that
        index the selected samples (VarMixup's ``partner``) are named in ``index_params``: a replay checks them."""
        return {}

    def transform(self, x: torch.Tensor, y: torch.Tensor | None, model: nn.Module | None,
                  params: dict[str, torch.Tensor], index: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Transform the selected samples ``x: (N, C, H, W)`` in [0, 1], ``y: (N,)``, ``(N, K)`` or ``None`` (only
        when not ``needs_labels``), with the call's ``model`` (``None`` only when not ``needs_model``) and ``params``
        (``make_params``'s, or given to the call); ``index: (N,)`` (their dataset positions) is given when the caller
        passed one. Returns ``(x2, y2)`` of the same shapes (``y2`` soft ``(N, K)`` when ``mixes_labels``); ``forward``
        clips, rejects and counts. What it computes and is worth inspecting may be added to ``params``
        (``params.update(...)``), one row per selected sample: the call's ``last_params`` holds it once the call
        succeeds."""
        raise NotImplementedError(f"{type(self).__name__} must implement transform(x, y, model, params, index=None) "
                                  f"-> (x2, y2), the method itself (LatentTransform is its base)")

    @property
    def _index_size(self) -> int | None:
        """How many dataset positions ``index=`` may address (``None``: not bounded by this transform)."""
        return None

    # -- bookkeeping ------------------------------------------------------------------------------
    def _count_untouched(self, device: torch.device, seen: int) -> None:
        zero = torch.zeros((), dtype=torch.int64, device=device)
        self._count(device, seen, zero, zero)

    def check_call(self, x: torch.Tensor, y: torch.Tensor | None = None, model: nn.Module | None = None,
                   index: torch.Tensor | None = None, *, model_optional: bool = False) -> None:
        """Every check of a call ``t(x, y, model, index=...)``, in either mode, without running it: the batch
        (``check_batch``, with the method's checks of values: one host sync), labels if needed (and their classes, for
        a label mix), the model if needed, then ``check_inputs``. ``model_optional``: ``model=None`` passes (a
        ``Compose`` in ``eval()`` mode runs its first step's checks, and uses no model)."""
        check_batch(x, y, self.num_classes or CALLER_NUM_CLASSES.get(), index, self._index_size,
                    more_checks=lambda: self._value_checks(x, index) + self._destroyed_checks(x.device),
                    images=self._takes_images)
        if y is None and (self.needs_labels or self.mixes_labels):  # a label mix needs them whatever needs_labels says
            raise self._labels_needed()
        if not self.needs_model:
            check_model_slot(model)  # t(x, y, idx) would have its dataset positions ignored
        elif model is None and not model_optional:
            raise self._model_needed()
        elif model is not None:
            check_model(model, x, f"{type(self).__name__}'s model")
            if get_worker_info() is not None:  # the worker's model is a stale copy, its hooks and gradients go nowhere
                raise RuntimeError(f"{type(self).__name__} needs the live model being trained, but it was called in a "
                                   f"DataLoader worker, on the worker's copy of the model: call it in the training "
                                   f"loop, on the batch, right before model(x)")
        if self.mixes_labels and y is not None and self._classes(y) is None:
            name = type(self).__name__
            raise not_about_the_batch(ValueError(f"{name} mixes labels: pass num_classes=... or (B, K) soft labels "
                                                 f"(num_classes to the constructor: {name}(..., num_classes=K) for a "
                                                 f"K-class model){self._num_classes_hint()}"))
        self.check_inputs(x, model, index)

    def _num_classes_hint(self) -> str:
        """What the error of class indices without ``num_classes`` adds (VarMixup: the class count its second
        positional argument may have been meant as), or ""."""
        return ""

    def _labels_needed(self) -> ValueError:
        """The error for ``y=None`` where labels are needed: a call's (``check_call``), or a ``transform`` called
        directly."""
        forms = ("(B, K) soft labels, or (B,) class indices with num_classes=... given to the constructor"
                 if self.mixes_labels and self.num_classes is None else self._accepted_labels)
        lifted = " (it sets mixes_labels = True: a label mix needs labels, whatever its needs_labels says)" \
            if self.mixes_labels and not self.needs_labels else ""
        return ValueError(f"{type(self).__name__} needs labels: call t(x, y, ...) with y {forms}, not y=None{lifted}")

    def _model_needed(self) -> TypeError:
        """The error for ``model=None`` where the model is needed: a call's (``check_call``), or a ``transform``
        called directly."""
        return TypeError(f"{type(self).__name__} needs the classifier being trained: call t(x, y, model)")

    def _destroyed_checks(self, device: torch.device) -> list[ValueCheck]:
        """The earlier calls' count of destroyed samples (``saturated``), read in this call's one host sync: once
        ``_WINDOW`` transformed samples are counted, more than ``_WARN`` of them destroyed or rejected warns
        (``forward``), once."""
        counts = self._destroyed
        if counts is None or self._destroyed_warned or counts.device != device:
            return []

        def judge(values: list[float]) -> None:
            destroyed, rejected, transformed = (int(v) for v in values)
            if transformed >= _WINDOW:
                self._destroyed = None  # a new window
                if destroyed + rejected > _WARN * transformed:
                    self._destroyed_found = (destroyed, rejected, transformed)  # forward warns, at the caller's line
        return [(counts, judge)]

    def _warn_destroyed(self) -> None:
        found, self._destroyed_found = self._destroyed_found, None
        if found is None:  # another thread sharing the transform took it between forward's test and here
            return
        destroyed, rejected, transformed = found
        self._destroyed_warned = True  # once per instance
        what = []
        if destroyed:
            what.append(f"{destroyed} of {transformed} transformed samples came out destroyed, over half of their "
                        f"values clipped to 0 or 1 (noise, not a variation of the image)")
        if rejected:  # a non-finite decode (a NaN model's gradient, a flow pushed too far), silent but for stats
            what.append(f"{rejected} of {transformed} transformed samples were rejected, decoded non-finite (a latent "
                        f"pushed too far, or a non-finite gradient of the model) or over 0.5 outside [0, 1], and "
                        f"returned unchanged (counted in stats)")
        destroyed_note = " The destroyed ones are not counted as rejected in stats (only a decode outside [0, 1] by " \
            "over 0.5 is, and the shipped codecs decode into [0, 1])." if destroyed else ""
        # no eps helps a model of non-finite outputs (a method that takes one)
        model_note = ", or the model's outputs are not finite: check them" if rejected and self.needs_model else ""
        warn_at_call(f"{type(self).__name__}: {'; '.join(what)}, with {self!r}: the perturbation is too large for "
                     f"the codec; lower eps (at the default eps: images unlike the codec's training images, which it "
                     f"decodes poorly){model_note}.{destroyed_note} Look at a few outputs with "
                     f"latent_transforms.visualize.save_rows")

    def _classes(self, y: torch.Tensor) -> int | None:
        """The labels' classes: soft labels' K, else this transform's ``num_classes`` or, in a Compose, the Compose's
        (a label mix makes class indices soft with them, once ``check_call`` has checked the indices against them)."""
        return num_classes_of(y, self.num_classes or CALLER_NUM_CLASSES.get())

    def _keep_params(self, batch: int, selected: torch.Tensor | None, device: torch.device,
                     params: dict[str, torch.Tensor], given: dict[str, torch.Tensor] | None) -> None:
        """Set ``last_params`` to this call's, in one assignment (a thread sharing the transform sees one call's),
        detached: kept until the next call, a tensor with autograd history would hold its whole graph alive
        (LatentAdversarial's ``target``, the caller's labels: a teacher's soft labels hold the teacher's activations),
        and the caller's tensor itself. A replay's ``given`` params with a key left unused are refused first."""
        if given is not None:
            self._refuse_unused(given, params)
        # batch_size on the CPU, not torch's default device (by torch.full: tests/test_host_syncs.py takes any
        # torch.tensor(data, device=...) for a blocking copy to the device)
        kept = {"batch_size": torch.full((), batch, dtype=torch.int64, device="cpu"),
                "selected": torch.arange(batch, device=device) if selected is None else selected, **params}
        self.last_params = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in kept.items()}

    def _given_selection(self, params: object, batch: int, device: torch.device) -> torch.Tensor:
        """``params["selected"]``, checked: (N,) int64 distinct rows of a batch of ``batch``, on ``device``; and
        ``params["batch_size"]``, where given, must be ``batch``."""
        if not isinstance(params, dict) or not isinstance(params.get("selected"), torch.Tensor):
            got = ("an empty dict: t.last_params is empty until a call in train() mode succeeds (in eval() mode a "
                   "transform draws nothing)") if isinstance(params, dict) and not params else describe(params)
            raise WrongTypeError(f"params must be a dict like t.last_params, with 'selected' (the batch rows), got "
                                 f"{got}")
        given = params.get("batch_size")
        if given is not None:
            whole = isinstance(given, int) and not isinstance(given, bool) or \
                isinstance(given, torch.Tensor) and given.numel() == 1 and given.dtype != torch.bool and \
                not (given.is_floating_point() or given.is_complex())  # a count: neither a flag nor a measure
            size = int(given) if whole else describe(given)
            if size != batch:
                raise ValueError(f"params are of a batch of {size}, this one has {batch} samples: replay "
                                 f"t.last_params on a batch of the same size")
        selected: torch.Tensor = params["selected"]
        if selected.ndim != 1 or selected.dtype != torch.int64 or selected.device != device:
            raise ValueError(f"params['selected'] must be (N,) int64 batch rows on {device}, got {describe(selected)} "
                             f"on {selected.device}")
        if len(selected):  # one host read: in range, each row once
            inside = (selected >= 0) & (selected < batch)  # rows out of range are not counted as repeats of the last
            # one slot past the last row, where rows out of range add their 0 (a batch of 0 has no row to clamp to)
            uses = torch.zeros(batch + 1, dtype=torch.int64, device=device).index_add_(
                0, selected.clamp(0, batch), inside.long())
            lo, hi, most = torch.stack([selected.min(), selected.max(), uses.max()]).tolist()
            if lo < 0 or hi >= batch or most > 1:
                raise ValueError(f"params['selected'] must be distinct rows of this batch of {batch}, got rows "
                                 f"{lo}..{hi}{', some twice' if most > 1 else ''} (from a call on another batch?)")
        return selected

    def _given_draws(self, params: dict[str, torch.Tensor], n: int, device: torch.device) -> dict[str, torch.Tensor]:
        """The draws of ``params`` that ``make_params`` would make, checked against a draw for no sample: n rows
        each, the same trailing shape and dtype, on ``device``; those of ``index_params`` indices in ``[0, n)``, those
        of ``weight_params`` weights in ``[0, 1]``."""
        if n == 0:
            return {}
        templates = self._param_templates()
        missing = [k for k in templates if not _has_rows(params.get(k), n)]
        if missing:
            raise ValueError(f"params lacks {missing} for {n} selected samples ({type(self).__name__} draws "
                             f"{list(templates)}): pass an earlier call's t.last_params")
        for k, template in templates.items():
            given = params[k]
            if given.shape[1:] != template.shape[1:] or given.dtype != template.dtype or given.device != device:
                raise ValueError(f"params[{k!r}] must be {(n, *template.shape[1:])} "
                                 f"{template.dtype} on {device}, got {describe(given)} on {given.device}")
            if k in self.index_params or k in self.weight_params:
                lo, hi = torch.stack([given.min(), given.max()]).tolist()
                if k in self.index_params and (lo < 0 or hi >= n):
                    raise ValueError(f"params[{k!r}] must be indices in [0, {n}) among the selected samples, got "
                                     f"{lo}..{hi}")
                if k in self.weight_params and not 0 <= lo <= hi <= 1:  # NaN fails too
                    raise ValueError(f"params[{k!r}] must be weights in [0, 1], got {lo:.4g}..{hi:.4g}")
        return {k: params[k] for k in templates}

    def _refuse_unused(self, given: dict[str, torch.Tensor], used: dict[str, torch.Tensor]) -> None:
        """Refuse a replay's keys that are neither ``selected``, ``batch_size``, a draw nor what ``transform`` computed
        (``used``, the call's params after it; none for a call that selected no sample): a misspelt key was dropped
        without a word."""
        unused = [k for k in given if k not in used and k not in ("selected", "batch_size")]
        draws = list(self._param_templates()) if unused else []  # read only here: no draw for a call that has all
        unused = sorted(str(k) for k in unused if k not in draws)
        if unused:
            raise ValueError(f"params has {unused}, which {type(self).__name__} neither draws nor computes (it draws "
                             f"{draws}): a misspelt key? pass an earlier call's t.last_params")

    def _param_templates(self) -> dict[str, torch.Tensor]:
        """``make_params``' draws for no sample: their keys, trailing shapes and dtypes (nothing drawn from the
        transform's own generator)."""
        return self.make_params(0, torch.Generator(), torch.device("cpu"))

    def param_names(self) -> tuple[str, ...]:
        """The keys ``make_params`` returns (what a replayed call's ``params`` must hold besides ``selected``)."""
        return tuple(self._param_templates())

    def _draw_selection(self, batch: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        """(B,) bool: which samples are transformed, each with probability ``p`` (one float32 draw per sample, whatever
        torch's default dtype: the same seed selects the same samples)."""
        return torch.rand(batch, generator=generator, device=device, dtype=torch.float32) < self.p

    def _draw(self, batch: int, generator: torch.Generator,
              device: torch.device) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """A call's draws from ``generator``: the (n,) indices of the rows it transforms (``None``: all ``batch`` of
        them, at ``p >= 1``), then ``make_params``' draws for those ``n`` (none when ``n`` is 0)."""
        selected = None if self.p >= 1.0 else self._draw_selection(batch, generator, device).nonzero().flatten()
        n = batch if selected is None else selected.numel()
        return selected, (_checked_draws(self, self.make_params(n, generator, device), n) if n else {})

    def extra_repr(self) -> str:
        return (f"p={self.p}" + (f", num_classes={self.num_classes}" if self.num_classes else "")
                + generator_repr(self._rng.spec))

    __repr__ = one_line_repr

    if TYPE_CHECKING:  # the call's types (nn.Module's __call__ returns Any): labels in, labels out; None in, None out
        @overload
        def __call__(self, x: torch.Tensor, y: LabelsT, model: nn.Module | None = None,
                     index: torch.Tensor | None = None, *, params: dict[str, torch.Tensor] | None = None
                     ) -> tuple[torch.Tensor, LabelsT]: ...
        @overload
        def __call__(self, x: torch.Tensor, *, model: nn.Module | None = None, index: torch.Tensor | None = None,
                     params: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, None]: ...
        def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, model: nn.Module | None = None,
                index: torch.Tensor | None = None, *, params: dict[str, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x2, y2 = t(x, y, model) for ``x: (B, C, H, W)`` float in [0, 1] and ``y: (B,)`` int64 or ``(B, K)`` float
        (see Shape); ``y=None`` for an unlabelled batch (y2 is then ``None``); ``index: (B,)`` int64
        dataset positions, for transforms with a latent cache; ``params``: an earlier call's ``last_params`` on a
        batch of the same size, applied again instead of drawing (training mode; ignored in eval mode)."""
        self.check_call(x, y, model, index)
        keep_out_of_ddp_broadcast(self, model)
        if self._destroyed_found is not None:
            self._warn_destroyed()
        if not self.training:
            warn_if_left_in_eval(self, model)
            return x, y
        x = x.detach()  # the augmentation is data, not part of a graph (also for the samples passed through)
        k = None if y is None else self._classes(y)
        if self.mixes_labels and y is not None and y.ndim == 1 and self.num_classes is None:
            y = to_soft(y, k)  # a Compose's classes (the labels checked against them): transform gets soft labels

        batch = x.shape[0]
        given = params  # a replay's, checked for keys left unused once transform has added what it computes
        selected: torch.Tensor | None  # the rows transformed; None: all of them
        if given is not None:
            selected = self._given_selection(given, batch, x.device)
            params = self._given_draws(given, selected.numel(), x.device)
        else:
            selected, params = self._draw(batch, self._rng.get(x.device), x.device)
        xs, ys, idx = (x, y, index) if selected is None else (
            x[selected], None if y is None else y[selected], None if index is None else index[selected])
        n = xs.shape[0]
        y_out = y
        if self.mixes_labels:
            assert y is not None  # check_call refused y=None (a label mix needs labels)
            y_out = to_soft(y, k)
        if n == 0:  # a copy, as when some samples are selected: x2 never shares x's memory in training
            self._keep_params(batch, selected, x.device, params, given)
            self._count_untouched(x.device, batch)
            return x.clone(), y_out

        try:  # transform may add what it computed to this call's own params (LatentAdversarial's delta)
            with values_read():  # check_call read them: the codec's encode does not again
                out = self.transform(xs, ys, model, params, idx)
        except ValueError as e:
            not_about_the_batch(e)
            raise
        x2, y2 = _checked_output(self, out, xs, ys, k)
        # only now: a failed call (a replay's key left unused too) leaves the last good call's
        self._keep_params(batch, selected, x.device, params, given)
        x2, ok = keep_plausible(x2, xs)
        x2 = x2.to(x.dtype)
        if self.mixes_labels:
            assert y2 is not None and ys is not None  # _checked_output: (N, k) soft labels
            y2 = torch.where(ok.view(-1, 1), y2, to_soft(ys, k, y2.dtype))
        kept = ok.sum()
        self._count(x.device, batch, kept, ok.numel() - kept)
        if not self._destroyed_warned:  # counted here, read in a later call's host sync
            row = torch.stack([(saturated(x2, xs) & ok).sum(), ok.numel() - kept, torch.full_like(kept, ok.numel())])
            counts = self._destroyed  # on another device (the transform moved to the GPU): a new window, no copy
            self._destroyed = row if counts is None or counts.device != x.device else counts + row

        if selected is None:
            return _like(x, x2), y2
        x_out = x.index_copy(0, selected, x2)
        if self.mixes_labels:
            assert y_out is not None and y2 is not None  # soft labels, as above
            y_out = y_out.index_copy(0, selected, y2.to(y_out.dtype))
        return _like(x, x_out), y_out


def _has_rows(v: object, n: int) -> bool:
    """Whether ``v`` is a tensor of ``n`` rows (a 0-dim tensor has none: ``len`` raised on it)."""
    return isinstance(v, torch.Tensor) and v.ndim > 0 and len(v) == n


def _checked_draws(t: LatentTransform, params: object, n: int) -> dict[str, torch.Tensor]:
    """``make_params``' draws for ``n`` samples: a dict of tensors of ``n`` rows (a replay checks them against that:
    a float or a scalar tensor would pass the call and fail its replay)."""
    bad = [f"{k!r}: {describe(v)}" for k, v in params.items() if not _has_rows(v, n)] \
        if isinstance(params, dict) else None
    if bad is None or bad:
        raise not_about_the_batch(WrongTypeError(
            f"{type(t).__name__}.make_params must return a dict of tensors with one row per selected sample ({n}), "
            f"got {', '.join(bad) if bad else describe(params)}"))
    return cast(dict[str, torch.Tensor], params)  # checked above


def _checked_output(t: LatentTransform, out: object, x: torch.Tensor, y: torch.Tensor | None,
                    k: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``transform``'s ``(x2, y2)`` for the selected samples ``x``, ``y``: images of ``x``'s shape and labels of
    ``y``'s (``(N, k)`` soft labels for ``mixes_labels``); forward would otherwise broadcast them (one image for a
    batch of 8 would become 8 copies of it)."""
    if not (isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[0], torch.Tensor)):
        raise not_about_the_batch(WrongTypeError(f"{type(t).__name__}.transform must return (x2, y2), got "
                                                 f"{describe(out)}"))
    x2, y2 = out
    want = (x.shape[0], k) if t.mixes_labels else None if y is None else y.shape  # y2's shape; None: y2 is None
    if x2.shape != x.shape or (y2.shape != want if isinstance(y2, torch.Tensor) else y2 is not None or
                               want is not None):
        wanted = "None" if want is None else f"of shape {tuple(want)}"  # the message's words, made only for it
        got = f"of shape {tuple(y2.shape)}" if isinstance(y2, torch.Tensor) else "None" if y2 is None else describe(y2)
        raise not_about_the_batch(ValueError(
            f"{type(t).__name__}.transform returned x2 of shape {tuple(x2.shape)} and y2 {got} for the selected samples' x of shape "
            f"{tuple(x.shape)}: it must return images of x's shape and y2 {wanted}"
            + (" (soft labels: mixes_labels is set)" if t.mixes_labels else " (y as given)")))
    return x2, y2


def _like(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out`` in ``x``'s memory format when that is channels_last (a channels_last training loop stays one), and of
    ``x``'s torchvision type (a ``tv_tensors.Image`` in, an ``Image`` out, as torchvision's own transforms do)."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    if type(x) is not torch.Tensor and type(out) is torch.Tensor:
        from torchvision import tv_tensors  # not at import: the package itself does not need torchvision

        if isinstance(x, tv_tensors.TVTensor):
            out = tv_tensors.wrap(out, like=x)
    return out

