"""ISDA: implicit semantic data augmentation of the classifier's deep features (Wang et al., NeurIPS 2019; TPAMI 2021).

No sample is generated. Every training feature ``a`` (the input of the final linear layer) is thought of as
augmented along its class's feature covariance, ``a~ ~ N(a, lam * Sigma_y)``, and the network minimises a closed-form
upper bound of the expected cross-entropy over infinitely many such augmentations. That bound is plain
cross-entropy on *augmented logits*:

    z~_j = z_j + (lam / 2) (w_j - w_y)^T Sigma_y (w_j - w_y)

where ``z = W a + b`` are the logits, ``w_j`` the rows of the classifier's weight and ``Sigma_y`` the running
covariance of the features of class ``y``. The correction is 0 for ``j = y``; the bias cancels.

Three pieces, one copy of each piece of math:

- ``FeatureCovariance`` (its own module) -- the per-class running
  mean/covariance (registered buffers), updated exactly as the official estimator (the pooled biased covariance of
  every feature seen so far);
- ``isda_logits()`` -- the augmented logits;
- ``ISDA`` (a ``LatentTransform``, the one-line drop-in) and ``ISDALoss``
  (the loss form, for training loops that already have the features) share the estimator, the schedule
  ``lam = lambda0 * progress`` and ``isda_logits()``.

Shapes: ``N`` samples, ``C`` classes (``K == C``), ``A`` feature dimension.
"""
from __future__ import annotations

import contextlib
import sys
import weakref
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .base import (LatentTransform, keep_out_of_ddp_broadcast, not_about_the_batch, one_line_repr, warn_at_call,
                   warn_if_left_in_eval)
from .casts import TensorFn, without_16_bit_casts
from .codecs import Codec
from .feature_covariance import COVARIANCES, FeatureCovariance, check_sync, check_unchanged
from .modelutils import unwrap
from .rng import generator_repr
from .torch_defaults import untraced
from .validation import (ClassCountError, ModuleMixin, Settings, WrongTypeError, bad_option, check_bool, check_choice,
                         check_class_count, check_count, check_device, check_labels, check_number, check_same_device,
                         describe, name_dtype_clash, no_autocast, setting, shown, wide_float)

if TYPE_CHECKING:
    from typing_extensions import Self

    from .validation import Setting

__all__ = ["ISDA", "ISDALoss", "isda_logits"]


_HARD_LABELS_ONLY = (
    "{who} needs class indices y: (B,) int64, got soft labels of shape {shape}: it augments each feature along the "
    "covariance of the sample's own class, and a mixed label has no single class. Use ISDA without label-mixing "
    "steps (MixUp/CutMix/VarMixup), or pass y.argmax(1) if the labels are one-hot or label-smoothed (smooth in the "
    "loss instead: F.cross_entropy(logits, y, label_smoothing=...)); a teacher's probabilities "
    "(distillation)? give ISDA the dataset's class indices and the probabilities to your distillation loss"
)


def check_class_indices(y: torch.Tensor, who: str = "ISDA") -> None:
    """``ValueError`` for soft ``(B, K)`` labels (``y`` has passed the form checks): ISDA augments each feature along
    its own class's covariance. ``who`` names the step (``"ISDA at step 1"`` in a Compose)."""
    if y.ndim != 1:
        raise ValueError(_HARD_LABELS_ONLY.format(who=who, shape=tuple(y.shape)))


def _official_order_hint(num_classes: int, layer: nn.Linear, cls: str) -> str:
    """A hint for ``num_classes`` equal to the layer's input width: the official ``ISDALoss(feature_num, class_num)``
    takes the feature width first, ``ISDA``/``ISDALoss`` here take ``(num_classes, lambda0)``; "" otherwise."""
    if num_classes != layer.in_features:
        return ""
    return (f". num_classes={num_classes} is the layer's input width: the official ISDALoss(feature_num, class_num) "
            f"takes the feature width first, this one takes (num_classes, lambda0): "
            f"{cls}({layer.out_features}, lambda0=...)")


# -- the augmented logits -------------------------------------------------------------------------------------------
def _check_variances(cov: torch.Tensor) -> None:
    """Raise, naming the first, if ``cov: (C, A, A)`` or ``(C, A)`` has a variance (its diagonal) below 0 or a
    non-finite entry (a user's own statistics; one host sync). A full covariance is not checked further: its diagonal
    is what a bad estimate gets wrong first, and an eigendecomposition per class costs C A^3."""
    variances = cov if cov.ndim == 2 else cov.diagonal(dim1=1, dim2=2)   # (C, A)
    finite = cov.isfinite() if cov.ndim == 2 else cov.isfinite().all(-1)  # (C, A): each row of a full one
    refused = (~(variances >= 0) | ~finite).nonzero()  # NaN is not >= 0
    if len(refused):
        k, j = refused[0].tolist()
        v = variances[k, j].item()
        got = f"variance {v}" if not 0 <= v < float("inf") else "a non-finite covariance"
        raise ValueError(f"cov must hold finite variances >= 0 (its diagonal: a covariance matrix is positive "
                         f"semi-definite), got {got} for class {k}, feature {j}")


def isda_logits(logits: torch.Tensor, weight: torch.Tensor, y: torch.Tensor, cov: torch.Tensor,
                lam: float | torch.Tensor, check_y: bool = True) -> torch.Tensor:
    """ISDA's augmented logits ``z_j + (lam / 2) (w_j - w_y)^T Sigma_y (w_j - w_y)``.

    Args:
        logits: (N, C) the classifier's logits ``z``.
        weight: (C, A) the final linear layer's weight; gradients flow to it through the correction.
        y: (N,) int64 class indices in ``[0, C)`` (``ValueError`` otherwise).
        cov: (C, A, A) per-class covariances, or (C, A) per-class variances (diagonal form). Used as a constant.
        lam: float >= 0, or (N,) per-sample strengths.
        check_y: check ``y``'s values, a per-sample ``lam``'s and ``cov``'s variances (finite, ``>= 0``: a
            negative one turned the correction's sign or was clamped to 0, silently; one host sync each); ``False``
            for callers that have checked them.

    The tensors must be on ``logits``' device (``ValueError`` naming the one that is not; a 0-d CPU ``lam`` is a
    number to torch, and passes).

    Returns:
        (N, C) in ``logits``' dtype; ``logits`` itself when ``lam == 0`` (a Python number).

    The correction is computed with autocast off in the wider of ``weight``'s and ``cov``'s dtypes. With the diagonal
    ``cov`` it is expanded into matrix products (memory ``N C + N A``; ``sum_a (w_ja - w_ya)^2 s_ya`` formed term by
    term takes 3 N C A numbers, 6.3 GB for ImageNet's N = 256, C = 1000, A = 2048). With the full ``cov`` it never
    forms N x C x A x A: with ``C <= N`` it builds the (C, C) table of corrections per class and indexes it with ``y``
    (memory ~3 C^2 A), otherwise it works per sample (memory N A^2 for ``cov[y]`` plus 3 N C A).
    """
    for name, t in (("logits", logits), ("weight", weight), ("cov", cov)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise WrongTypeError(f"{name} must be a float torch.Tensor, got {describe(t)}")
    if not isinstance(y, torch.Tensor):
        raise WrongTypeError(f"y must be a (N,) int64 torch.Tensor of class indices, got {describe(y)}")
    others = [("weight", weight), ("cov", cov), ("y", y)]
    if isinstance(lam, torch.Tensor) and (lam.ndim or lam.device.type != "cpu"):
        others.append(("lam", lam))
    for name, t in others:  # before any value is read: torch's own errors name no argument, or it works on garbage
        check_device(name, t.device, logits, "logits are")
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, C), got shape {tuple(logits.shape)}")
    check_y = check_bool("check_y", check_y)  # None skipped the checks
    if isinstance(lam, torch.Tensor):  # values checked only with check_y: reading them is a host sync
        shaped, bad = lam.shape in ((), (len(logits),)), ""
        if shaped and check_y:  # the first strength refused, named: its shape alone was right
            refused = (~((lam >= 0) & torch.isfinite(lam))).reshape(-1).nonzero()
            if len(refused):
                i = int(refused[0, 0])
                bad = f": {lam.reshape(-1)[i].item()} at index {i}"
        if not shaped or bad:
            raise ValueError(f"lam must be a float >= 0 or ({len(logits)},) finite strengths >= 0, got "
                             f"{describe(lam)}{bad}")
    else:
        lam = check_number("lam", lam)
    n, c = logits.shape
    if weight.ndim != 2 or weight.shape[0] != c:
        raise ValueError(f"weight must be (C, A) with C={c} (the logits' classes), got {tuple(weight.shape)}")
    a = weight.shape[1]
    if cov.shape not in ((c, a, a), (c, a)):
        raise ValueError(f"cov must be (C, A, A) or (C, A) = {(c, a, a)} or {(c, a)}, got {tuple(cov.shape)}")
    if y.shape != (n,) or y.dtype != torch.int64:
        raise ValueError(f"y must be (N,) = ({n},) int64 class indices, got {describe(y)}")
    if check_y:
        check_labels(y, n, c, batch_name="logits")
        _check_variances(cov)
    if isinstance(lam, float) and lam == 0:  # checked all the same: a wrong call fails at once, not when lam ramps up
        return logits
    dtype = torch.promote_types(weight.dtype, cov.dtype)
    with no_autocast(logits.device):
        w = weight.to(dtype)
        sigma = cov.detach().to(dtype)
        if sigma.ndim == 2:
            # sum_a (w_ja - w_ya)^2 s_ya = (s_y . w_j^2) - 2 (w_y s_y . w_j) + (w_y^2 . s_y), as matrix products. The
            # weights are centred first (a shift leaves w_j - w_y as it is), so that an offset common to all classes
            # does not cancel in the sum and cost the differences' digits
            w = w - w.detach().mean(0)
            w_y, s_y = w[y], sigma[y]                                                          # (N, A)
            s2 = s_y @ (w * w).T - 2 * (w_y * s_y) @ w.T + (w_y * w_y * s_y).sum(1, keepdim=True)   # (N, C)
            s2 = s2.clamp(min=0).scatter(1, y.unsqueeze(1), 0.0)  # >= 0, and 0 for j = y, whatever the rounding
        else:
            table = c <= n
            w_own = w if table else w[y]                          # (R, A): R rows, one per class or per sample
            sigma_own = sigma if table else sigma[y]              # (R, A, A)
            dw = w.unsqueeze(0) - w_own.unsqueeze(1)              # (R, C, A): w_j - w_r
            s2 = (torch.bmm(dw, sigma_own) * dw).sum(-1)         # (R, C)
            if table:
                s2 = s2[y]                                        # (N, C)
        if isinstance(lam, torch.Tensor):
            lam = (lam.unsqueeze(1) if lam.ndim == 1 else lam).to(dtype)
        correction = (0.5 * lam) * s2  # a float lam stays a Python number: no host-to-device copy (a sync)
    return logits + correction.to(logits.dtype)


# -- what ISDA and ISDALoss share -----------------------------------------------------------------------------------
class _ISDAState(Settings, ModuleMixin):
    """The estimator, the strength schedule ``lam = lambda0 * progress`` and the augmentation step."""

    schedule_progress: torch.Tensor  # a buffer
    lambda0 = setting("lambda0", check_number)

    def _init_isda(self, num_classes: int, lambda0: float, covariance: str, feature_dim: int | None,
                   sync_stats: "bool | dist.ProcessGroup") -> None:
        self.lambda0 = lambda0
        check_choice("covariance", covariance, COVARIANCES)
        self._progress = 0.0
        self._scheduled = False  # whether set_progress/set_epoch was ever called (or a progress loaded)
        # the progress as a buffer too, so that state_dict() (all tensors) resumes the schedule mid-epoch; lam reads
        # the float: no host sync when the buffer is on the GPU
        # on torch's default device, as a module's own state; float32 where that is MPS, which has no float64
        self.register_buffer("schedule_progress", torch.zeros((), dtype=wide_float(torch.empty(0).device)))
        check_sync("sync_stats", sync_stats)  # named as the caller knows it
        self.estimator = FeatureCovariance(num_classes, feature_dim, covariance=covariance, sync_stats=sync_stats)

    estimator: Setting[FeatureCovariance] = setting("estimator", module=True, fixed=lambda held, value: (
        "num_classes, covariance, feature_dim and sync_stats describe its statistics",
        "load statistics with load_state_dict(...), add classes with grow(n), or build a new one"), doc=(
        "The class statistics, a ``FeatureCovariance`` (``mean``, ``cov``, ``count``; in ``state_dict`` as "
        "``estimator.*``), fixed at construction (assigned, another was kept unchecked: its classes, form and gather "
        "unlike this one's)."))

    @property
    def num_classes(self) -> int:
        """C, the classes of the statistics (``grow()`` adds classes)."""
        return cast(int, self.estimator.num_classes)

    @num_classes.setter
    def num_classes(self, value: int) -> None:  # LatentTransform.__init__ sets it; the estimator, made next, holds it
        # set later, a plain attribute left the statistics at their classes: labels of the new ones went unrecorded
        check_unchanged(self, "num_classes", value)

    def grow(self, num_classes: int) -> None:
        """Add classes ``C..num_classes-1`` to the statistics, empty, keeping those seen: after the classifier grew for
        new classes (class-incremental learning; ``FeatureCovariance.grow``)."""
        self.estimator.grow(num_classes)

    def _miscount_hint(self, outputs: int, not_it: str) -> str:
        """What to do about a classifier of ``outputs`` != C: ``num_classes`` miscounted, or ``not_it`` (the layer is
        not the classifier, and how to name it); for ``outputs`` > C, a head grown for new classes too."""
        grown = "" if outputs < self.num_classes else (
            f"; a classifier grown for new classes (class-incremental learning)? call .grow({outputs}) on this "
            f"{type(self).__name__} first: it adds their statistics, empty, and keeps those of the classes seen")
        return f": either num_classes is miscounted (num_classes={outputs} for this classifier) or {not_it}" + grown

    @property
    def lam(self) -> float:
        """The current strength ``lambda0 * progress``."""
        return self.lambda0 * self.progress

    @property
    def feature_dim(self) -> int | None:
        """A, the features of the statistics (``None`` until sized by the first training call)."""
        return self.estimator.feature_dim

    @property
    def sync_stats(self) -> "bool | dist.ProcessGroup":
        """Whether, or within which process group, the statistics gather every rank's features
        (``FeatureCovariance.sync_stats``); assigned, checked as the constructor's, used from the next update."""
        return self.estimator.sync_stats

    @sync_stats.setter
    def sync_stats(self, sync_stats: "bool | dist.ProcessGroup") -> None:
        self.estimator.sync_stats = sync_stats

    @property
    def covariance(self) -> str:
        """``"full"`` or ``"diagonal"``, the statistics' form: fixed at construction (assigned as a plain attribute,
        the repr said one form while the statistics kept the other)."""
        return cast(str, self.estimator.covariance)

    @covariance.setter
    def covariance(self, covariance: object) -> None:
        check_unchanged(self, "covariance", covariance)

    @property
    def progress(self) -> float:
        """The training progress in [0, 1]; assigning it is ``set_progress`` (as a plain attribute it changed
        ``lam`` but not the ``schedule_progress`` that ``state_dict`` saves)."""
        return self._progress

    @progress.setter
    def progress(self, progress: float) -> None:
        self.set_progress(progress)

    def set_progress(self, progress: float) -> None:
        """Set the training progress in [0, 1]: ``lam = lambda0 * progress`` (per-iteration ramps)."""
        self._progress = check_number("progress", progress, high=1.0)
        self.schedule_progress.fill_(self._progress)
        self._scheduled = True

    def _warn_if_unscheduled(self) -> None:
        """Once: a training call before any set_epoch/set_progress runs at lam = 0, which changes no loss."""
        if not self._scheduled:
            self._scheduled = True  # warned: once per instance
            warn_at_call(f"{type(self).__name__}'s strength lam = lambda0 * progress is 0 until you call "
                         f"set_epoch(epoch, total_epochs) at the start of every epoch (or set_progress(p) for a ramp "
                         f"of your own): until then it only gathers statistics and leaves the loss unchanged")

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """The official schedule: ``lam = lambda0 * epoch / total_epochs`` with a 0-based ``epoch``.

        Call it at the start of every epoch. ``lam`` is 0 during the first epoch (epoch 0), as in the official code.
        """
        total_epochs = check_count("total_epochs", total_epochs, low=1)
        epoch = check_count("epoch", epoch)
        if epoch > total_epochs:
            raise ValueError(f"epoch must be an int in [0, total_epochs={total_epochs}] (0-based), got {shown(epoch)}")
        self.set_progress(epoch / total_epochs)

    def augment(self, features: torch.Tensor, logits: torch.Tensor, weight: torch.Tensor, y: torch.Tensor,
                lam: float | torch.Tensor | None = None, check_y: bool = True) -> torch.Tensor:
        """Update the statistics with ``features`` (detached) and ``y`` first, then return the augmented logits.

        features: (N, A); logits: (N, C); weight: (C, A); y: (N,) int64; lam: defaults to ``lam``;
        ``check_y=False`` skips checking ``y``'s values (the hook and ``ISDALoss`` have checked them).
        """
        if check_y:
            check_labels(y, features.shape[0], logits.shape[1], batch_name="features")
        self.estimator.update(features, y, check_y=False)
        cov = self.estimator.cov
        assert cov is not None  # sized by the update
        return isda_logits(logits, weight, y, cov, self.lam if lam is None else lam, check_y=False)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any],
                              strict: bool, missing_keys: list[str], unexpected_keys: list[str],
                              error_msgs: list[str]) -> None:
        key = prefix + "schedule_progress"
        held = state_dict.get(key)
        if isinstance(held, torch.Tensor) and held.numel() == 1 and not held.is_meta:
            try:  # checked before loading: set_progress after it raised with the buffer holding 2.0 or NaN, saved next
                check_number(key, float(held), high=1.0)
            except ValueError as e:
                raise ValueError(f"{e} (a damaged file, or a state written by hand): nothing of this "
                                 f"{type(self).__name__} was loaded; load another state, or set the progress with "
                                 f"set_epoch(epoch, total_epochs)") from None
        if self.estimator._refusal(state_dict, prefix + "estimator.") is not None:
            return  # the estimator refuses this state by name: the schedule is not loaded alone, without it
        if key not in state_dict:  # a state saved before 2026-12-03 has no progress: it stays as it is
            state_dict[key] = self.schedule_progress.clone()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        scheduled = self._scheduled
        self.set_progress(float(self.schedule_progress))  # checked, and mirrored as the float ``lam`` reads
        self._scheduled = scheduled or self.progress > 0  # a state that never left 0 still warns if unscheduled

    def _apply(self, fn: TensorFn, recurse: bool = True) -> Self:
        # a 16-bit cast of a module holding it (Lightning's precision="bf16-true") keeps the progress float64, as the
        # estimator keeps its statistics: a progress saved in bf16 resumed another lam (on MPS: float32, as it has no
        # float64)
        return cast("Self", super()._apply(without_16_bit_casts(fn), recurse))

    def _isda_repr(self) -> str:
        return (f"num_classes={self.estimator.num_classes}, lambda0={self.lambda0}, covariance={self.covariance!r}, "
                f"progress={self.progress}")

    def _estimator_repr(self) -> str:
        sync = self.sync_stats if isinstance(self.sync_stats, bool) else "<process group>"
        return f", feature_dim={self.estimator.feature_dim}, sync_stats={sync}"


# -- the drop-in transform ------------------------------------------------------------------------------------------
# layer -> (handle, hook) of the ISDA hook armed on it. One pending augmentation per layer: the latest arm wins.
_ARMED: "weakref.WeakKeyDictionary[nn.Module, tuple[torch.utils.hooks.RemovableHandle, _ArmedHook]]" = \
    weakref.WeakKeyDictionary()


def _disarm(layer: nn.Module) -> "_ArmedHook | None":
    """Remove the hook pending on ``layer``; returns it (``None`` if there was none)."""
    handle, hook = _ARMED.pop(layer, (None, None))
    if handle is not None:
        handle.remove()
    return hook


def _check_layer_name(name: str, layer: object) -> str | None:
    """``layer`` if it is ``None`` or a dotted name (a non-empty string)."""
    if layer is not None and (not isinstance(layer, str) or not layer):
        raise bad_option(f"{name} must be the dotted name of an nn.Linear in the model, got {shown(layer)}",
                         right_type=isinstance(layer, str))
    return layer


def _layer_label(name: str, layer: nn.Linear) -> str:
    """How warnings name the hooked layer: its path, and what it is (in an nn.Sequential the path is a bare index)."""
    return f"{name!r} (nn.Linear {layer.in_features} -> {layer.out_features})"


def _and_wrapped(model: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    """``model`` and, for a DDP/DataParallel wrapper, the module it wraps (else None)."""
    return model, getattr(model, "module", None)


def _linear_inside(module: nn.Module) -> str | None:
    """The name of the one ``nn.Linear`` inside ``module``, a module given where its linear layer is meant (the
    official code's ``Full_layer``, whose ``nn.Linear`` is ``fc.fc``); ``None`` if it holds none or several."""
    found = [n for n, _ in _linear_layers(module) if n]
    return found[0] if len(found) == 1 else None


def _linear_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """``model``'s ``(name, nn.Linear)`` in ``modules()`` order, but for those of codecs: a transform held by the model
    (a LightningModule's ``self.augment``) holds a codec, whose layers are never the classifier."""
    found: list[tuple[str, nn.Linear]] = []
    codecs: tuple[str, ...] = ()  # the codecs' names, as prefixes
    for n, m in model.named_modules():  # one walk, per call: a codec comes before its layers
        if isinstance(m, Codec):
            codecs += (n + ".",)
        elif isinstance(m, nn.Linear) and not n.startswith(codecs):
            found.append((n, m))
    return found


def _other_trained_heads(model: nn.Module, layer: nn.Linear) -> list[str]:
    """The names of ``model``'s other ``nn.Linear`` layers of ``layer``'s outputs that train (in training mode, with a
    weight that requires grad): the classifier being trained, where ``layer`` is not it."""
    return [n for n, m in _linear_layers(model) if m is not layer and m.out_features == layer.out_features
            and m.training and m.weight.requires_grad]


def _check_layer_trains(model: nn.Module, name: str, layer: nn.Linear, by_default: bool) -> None:
    """``ValueError`` when the layer ISDA would hook, while ``model`` or its classifier trains, is not the classifier
    being trained: one in eval mode never fires the hook, and a frozen one found by default (``by_default``) beside a
    trainable ``nn.Linear`` of as many outputs is a frozen teacher's the model holds (distillation: the teacher
    registered after the student) or another task's head (a head per task), most likely; the message names the last
    such ``nn.Linear`` that trains (a student's classifier), then the others that do (which head runs is the
    forward's choice). A frozen classifier with no such neighbour (a fixed head) is hooked as usual."""
    if layer.training and (layer.weight.requires_grad or not by_default):
        return
    trained = _other_trained_heads(model, layer)
    if layer.training and not trained:
        return
    state = "in eval mode" if not layer.training else "frozen (its weight does not require grad)"
    trains = "trains" if model.training else "is in eval mode with a classifier in train mode"
    hint = ": put it in train mode or pass ISDA(..., layer='...') naming the classifier"
    if trained:  # a student's classifier is its last nn.Linear; of a head per task, the caller knows which one runs
        others = f" (or another that trains: {', '.join(map(repr, trained[:-1]))})" if len(trained) > 1 else ""
        hint = (f": a frozen teacher's the model holds (distillation), or another task's head (a head per task)? "
                f"pass ISDA(..., layer={trained[-1]!r}){others}")
    raise ValueError(f"ISDA's layer {_layer_label(name, layer)} is {state} while {type(model).__name__} {trains}, so "
                     f"it is not the classifier being trained" + (" (the hook fires on training forwards only)"
                                                               if not layer.training else "") + hint)


def _is_compiled(model: nn.Module) -> bool:
    """Whether ``model`` is torch.compile's OptimizedModule or was compiled in place (``model.compile()``), or is a
    DDP/DataParallel wrapper of one."""
    return any(hasattr(m, "_orig_mod") or getattr(m, "_compiled_call_impl", None) is not None
               for m in _and_wrapped(model))


def _compiled_fullgraph(model: nn.Module) -> bool:
    """Whether ``model`` (or a DDP/DataParallel wrapper's module) is ``torch.compile(..., fullgraph=True)``'s
    OptimizedModule, or was compiled so in place (``model.compile(fullgraph=True)``): the hook breaks the graph there
    (it runs under torch.compiler.disable), which fullgraph=True turns into torch's "Unsupported" error in the user's
    forward. Those breaks are what runs each call's own hook, labels and strength: traced into the graph, a later
    call's would not be seen."""
    contexts = [c if (c := getattr(m, "dynamo_ctx", None)) is not None else _in_place_dynamo_context(m)
                for m in _and_wrapped(model)]
    # newer torch keeps fullgraph on the context; torch 2.4 only as its frame converter's _one_graph
    return any(getattr(c, "fullgraph", False) is True
               or getattr(getattr(c, "callback", None), "_one_graph", False) is True for c in contexts)


def _in_place_dynamo_context(module: nn.Module | None) -> object:
    """The compile context of ``module.compile(...)``, the ``self`` that torch's compiled wrapper of ``_call_impl``
    closes over (as torch 2.14 builds it), else ``None``: a torch that keeps it otherwise leaves the module
    unrecognised, and refuses fullgraph=True itself at ``model(x)``."""
    impl = getattr(module, "_compiled_call_impl", None)
    code, cells = getattr(impl, "__code__", None), getattr(impl, "__closure__", None) or ()
    names = code.co_freevars if code is not None else ()
    return next((c.cell_contents for n, c in zip(names, cells) if n == "self"), None)


def _fully_sharded(layer: nn.Module) -> bool:
    """Whether ``layer`` was given to FSDP2's ``fully_shard`` (alone or in a list of modules): its forward ends in
    FSDP's hook that reshards its parameters (torch 2.4 to 2.5: ``torch.distributed._composable.fsdp``'s)."""
    return _is_imported_instance(layer, "FSDPModule", ("torch.distributed.fsdp", "torch.distributed._composable.fsdp"))


@contextlib.contextmanager
def grown_classifier_named(isdas: Iterable["ISDA"], model: object) -> Iterator[None]:
    """Checks of a call: a ``ClassCountError`` in them (labels of new classes, out of range) is replaced by the first
    of ``isdas`` whose classifier in ``model`` has grown past its statistics' classes naming that (``grow``), the
    original as its cause; other errors (a NaN batch), and all where no classifier grew, stand."""
    try:
        yield
    except ClassCountError as e:
        grown = next(filter(None, (t._grown_classifier(model) for t in isdas)), None)
        if grown is None:
            raise
        raise not_about_the_batch(grown) from e


def _is_imported_instance(obj: object, cls_name: str, modules: tuple[str, ...]) -> bool:
    """``isinstance(obj, module.cls_name)`` for those of ``modules`` already imported: importing torch.distributed's
    FSDP or DTensor takes seconds, and a model that uses them has imported them."""
    for name in modules:
        cls = getattr(sys.modules.get(name), cls_name, None)
        if cls is not None and isinstance(obj, cls):
            return True
    return False


def _never_fired(label: str, model: nn.Module, layer: nn.Linear) -> str:
    """The warning for an armed augmentation that no forward consumed before the next arm."""
    text = (f"ISDA: the augmentation armed on {label} by the previous call was never applied (no training forward "
            f"ran through that layer after it); this call replaces it. Call isda(x, y, model) once per step, right "
            f"before model(x)")
    # a model with a head per task (task-incremental learning) runs one of them: the last one is found by default
    heads = _other_trained_heads(model, layer)
    if heads:
        text += (f". The model has other nn.Linear layers of {layer.out_features} outputs ({', '.join(heads)}): a head "
                 f"per task? pass ISDA(..., layer='...') naming the one its forward runs")
    if _is_compiled(model):
        text += (". The model is torch.compile'd: compiled code ignores hooks added after it was compiled, and torch "
                 "reuses code compiled earlier in this process for another instance of the model's class (a run "
                 "before this one), while torch._dynamo.config.skip_nnmodule_hook_guards is True (the default); set "
                 "it to False before compiling, or call torch._dynamo.reset() before compiling this model, or use "
                 "ISDALoss")
    return text


class _ArmedHook:
    """The one-shot forward hook: augments the logits of the next training forward of the layer. It holds its ISDA
    weakly: a hook whose ISDA was dropped (a warning at the next training forward: ``ISDA(10)(x, y, model)`` made
    afresh each step augments nothing), or a copy in a model copied or pickled while armed (an EMA copy,
    ``torch.save(model)``), changes nothing and removes itself at the layer's next forward."""

    def __init__(self, owner: "ISDA", label: str, y: torch.Tensor, lam: float | torch.Tensor, chosen: torch.Tensor):
        self.owner, self.label, self.fired = weakref.ref(owner), label, False
        self.y, self.lam, self.chosen = y, lam, chosen

    def __getstate__(self) -> dict[str, object]:
        return {"owner": None, "label": self.label, "fired": True}  # a copy carries no ISDA, labels or statistics

    @property
    def __name__(self) -> str:
        # read by torch.jit.script, which compiles a module's hooks and refused this one as "'_ArmedHook' object has
        # no attribute '__name__'"; getattr(hook, "__name__", default) still gets its default
        raise AttributeError(f"ISDA's augmentation armed on the layer {self.label} is still on the model (no training "
                             f"forward ran after isda(x, y, model), or the model was copied while it was pending), and "
                             f"torch.jit.script cannot compile it: call isda.disarm(model) first (a copy's, or one "
                             f"whose ISDA was dropped, also goes at the model's next forward)")

    def __call__(self, module: nn.Linear, args: tuple[object, ...], output: torch.Tensor) -> torch.Tensor | None:
        if torch.compiler.is_compiling():  # in a compiled model's forward: run untraced, a graph break at the layer
            # (what lets each call's labels and strength through); traced, torch warned at every compile of the
            # model, "Dynamo does not know how to trace the builtin ..._top_saved_tensors_default_hooks"
            return untraced(_ArmedHook._fire)(self, module, args, output)
        return self._fire(module, args, output)

    def _fire(self, module: nn.Linear, args: tuple[object, ...], output: torch.Tensor) -> torch.Tensor | None:
        owner = None if self.owner is None else self.owner()
        if owner is None:
            _remove_hook(module, self)
            if self.owner is not None and module.training:  # dropped (a copy's hook has no owner at all)
                # at the forward's line, not nn.Module's call of this hook (stacklevel=2 named torch's module.py)
                warn_at_call(f"ISDA: the ISDA that armed the augmentation on {self.label} was garbage-collected "
                             f"before this training forward, which is therefore not augmented; create the ISDA "
                             f"once, outside the training loop, and keep it (isda = ISDA(...); "
                             f"x, y = isda(x, y, model))")
            return None
        if self.fired or not module.training or not torch.is_grad_enabled():
            return None  # waits for the next training forward (a no_grad one, pseudo-labelling say, trains nothing)
        self.fired = True
        _disarm(module)
        if _in_backward():
            raise RuntimeError(
                f"ISDA's augmentation of the layer {self.label} would be applied in the backward pass: the layer runs "
                f"inside torch.utils.checkpoint(..., use_reentrant=True) (or checkpoint_sequential, checkpoint_wrapper "
                f"with reentrant checkpointing), whose forward runs without gradients, so the loss was not augmented "
                f"and the recomputation would give gradients of other logits. Pass use_reentrant=False, or keep the "
                f"classifier out of the checkpointed region")
        if len(args) != 1 or not isinstance(args[0], torch.Tensor):
            got = describe(list(args)) if args else "none (a keyword call, layer(input=f)?)"
            # the call's arguments, as Python's TypeError for a wrong call: a WrongTypeError, a ValueError as before
            raise WrongTypeError(f"ISDA expected the layer {self.label} to be called with one positional tensor "
                                 f"argument, the features, got {got}: call it as layer(f)")
        a = args[0]
        if a.ndim != 2:
            raise ValueError(
                f"ISDA needs (B, A) features at the layer {self.label}, got shape {tuple(a.shape)}; "
                f"it supports a linear classifier on pooled features only (no token or pixel heads)"
            )
        if a.shape[0] != self.y.shape[0]:
            raise ValueError(
                f"ISDA was armed with {self.y.shape[0]} labels but the layer {self.label} saw a batch of "
                f"{a.shape[0]} features; call isda(x, y, model) right before model(x) on the same batch"
                + (f"; a head run on each of a clip's {a.shape[0] // self.y.shape[0]} frames? arm it with the labels "
                   f"repeated per frame (docs/composition.md#video-clips)"
                   if 0 < self.y.shape[0] < a.shape[0] and a.shape[0] % self.y.shape[0] == 0 else "")
            )
        if self.y.device != a.device:
            raise ValueError(f"y is on {self.y.device} but the features are on {a.device}")
        if _is_imported_instance(module.weight, "DTensor", ("torch.distributed.tensor", "torch.distributed._tensor")):
            dtensor: Any = module.weight  # a DTensor's placements
            raise ValueError(
                f"ISDA needs the whole weight of the layer {self.label}, but in its forward it is a DTensor "
                f"({dtensor.placements}; a tensor-parallel plan of parallelize_module on it?): keep the "
                f"classifier out of the tensor-parallel plan (FSDP's fully_shard is supported)")
        # armed with model.module, the layer runs inside a DDP forward all the same: its group is checked here
        # (torch records the DDP whose forward runs, for dynamo; getattr: a private attribute)
        active = getattr(nn.parallel.DistributedDataParallel, "_active_ddp_module", None)
        if active is not None:
            owner._check_ddp_group(active)
            keep_out_of_ddp_broadcast(owner, None)  # armed with model.module: from the next forward
        owner._count(a.device, 0, self.chosen, torch.zeros_like(self.chosen))
        with _saved_as_they_are():
            return owner.augment(a, output, module.weight, self.y, self.lam, check_y=False)  # checked when armed


def _in_backward() -> bool:
    """Whether autograd's engine is running a backward pass on this thread (a reentrant checkpoint recomputes its
    forward there)."""
    task_id = getattr(torch._C, "_current_graph_task_id", None)
    return task_id is not None and task_id() != -1


def _saved_as_they_are() -> contextlib.AbstractContextManager[None]:
    """Around the correction: its tensors saved for backward are kept as they are, not by the saved-tensor hooks of
    the forward around it. A non-reentrant activation checkpoint's (``torch.utils.checkpoint(...,
    use_reentrant=False)`` around the classifier) would expect them again when it recomputes the forward in the
    backward, where the one-shot hook no longer runs (torch's "CheckpointError: A different number of tensors was
    saved"); the statistics are updated once, in the forward. torch 2.8 and later tell whether such hooks are set
    (a private function, taking one argument on every version that has it): only then; torch 2.4 to 2.7 cannot tell,
    so always, where hooks can be set at all (not under a ``torch.func`` transform)."""
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    if top is not None:
        needed = top(False) is not None  # as torch 2.14's torch.utils.checkpoint asks
    else:
        needed = cast(Any, torch._C._autograd)._saved_tensors_hooks_is_enabled()  # older torch's, not in its stubs
    return torch.autograd.graph.saved_tensors_hooks(_with_version, _checked) if needed else contextlib.nullcontext()


def _with_version(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    return t, t._version


def _checked(saved: tuple[torch.Tensor, int]) -> torch.Tensor:
    """The saved tensor, if not modified in place since it was saved: the check autograd makes on a tensor saved
    without hooks (a second forward's update of the covariance, before this backward, say)."""
    t, version = saved
    if t._version != version:
        raise RuntimeError(f"a tensor of shape {tuple(t.shape)} that ISDA's correction saved for the backward was "
                           f"modified in place since (version {t._version}, saved at {version}): the covariance, "
                           f"which the next isda(x, y, model) and forward update (covariance='full')? Call "
                           f"backward() before the next augmented forward")
    return t


def _remove_hook(layer: nn.Module, hook: _ArmedHook) -> None:
    """Take ``hook`` off ``layer`` (the pending one, or a copy that came with a copied model)."""
    if _ARMED.get(layer, (None, None))[1] is hook:
        _disarm(layer)
        return
    for key in [k for k, h in layer._forward_hooks.items() if h is hook]:
        del layer._forward_hooks[key]


# num_classes: the statistics' classes, fixed (grow() adds), where LatentTransform's is a setting
class ISDA(_ISDAState, LatentTransform):  # type: ignore[misc]
    """Implicit semantic data augmentation as a one-line drop-in: ``x, y = isda(x, y, model)``.

    The call leaves ``x`` and ``y`` unchanged and arms a one-shot forward hook on the model's final linear layer.
    The next training forward of that layer (your ``model(x)``, in train mode with gradients enabled) then

    1. updates the per-class feature statistics with the layer's input ``a: (B, A)`` (detached) and ``y``, and
    2. returns the augmented logits ``z_j + (lam/2) (w_j - w_y)^T Sigma_y (w_j - w_y)`` (``isda_logits()``),

    so that your plain ``F.cross_entropy(model(x), y)`` is exactly the ISDA loss. Gradients flow to the backbone
    through the logits and to the layer's weight also through the correction (as in the official code);
    ``Sigma`` is a constant.

    **The strength starts at 0.** ``lam = lambda0 * progress`` with ``progress = 0`` until you call
    ``set_epoch()`` (``isda.set_epoch(epoch, total_epochs)`` at the start of every epoch, 0-based: the official
    linear ramp, ``lam = 0`` during the first epoch) or ``set_progress()`` (any ramp in [0, 1]). Without either
    call, the statistics are collected but the loss stays plain cross-entropy, and the first training call warns
    once.

    Unlike the other transforms it takes no ``params=`` and keeps no ``last_params``: it changes neither ``x`` nor
    ``y``, so there is nothing to apply again (with ``p < 1`` the per-sample choice only weighs the loss, and
    recording its rows would cost a host sync per step).

    Args:
        num_classes: C, the classifier's number of outputs (checked against the layer).
        lambda0: final strength. 0.5 is the official CIFAR default with ``covariance="full"`` ("0.5 or 0.25");
            7.5 the ImageNet default with ``covariance="diagonal"`` (1 for DenseNets, 5 for ResNet-101).
        covariance: ``"full"`` (A x A per class, official CIFAR) or ``"diagonal"`` (per-dimension variances,
            official ImageNet/segmentation; memory ``O(C A)``). The full form takes 16.8 GB for ImageNet's 1000 classes
            and 2048 ResNet-50 features, twice that during an update: beyond the device's memory it is refused
            (``torch.OutOfMemoryError``, naming the figures and the diagonal form).
        layer: dotted name of the final ``nn.Linear`` in the model (e.g. ``"fc"``, ``"head.fc"``). Default: the
            last ``nn.Linear`` in ``model.modules()`` order (``fc`` of torchvision ResNets, ``head``/``classifier``
            of timm/torchvision models), outside codecs (a transform the model holds as a submodule, as a
            LightningModule does, holds a codec, never the classifier). Names are looked up in DDP/DataParallel
            wrappers' ``module`` too. While the model trains, a layer in eval mode is refused, and so is a frozen one
            found by default beside a trainable ``nn.Linear`` of as many outputs (a distillation module's teacher,
            another task's head); in a model in eval mode, a layer in eval mode beside such an ``nn.Linear`` in train
            mode (``model.eval()``, then ``model.heads[task].train()``, ISDA naming another head) is refused too.
        feature_dim: A. Default: sized from the layer on the first training call, on its device.
        sync_stats: under ``torch.distributed``, gather all ranks' features before each update so every rank holds
            the statistics of the global batch (the official code keeps per-GPU statistics). A
            ``torch.distributed.ProcessGroup`` gathers within that group only (the one given to
            ``DistributedDataParallel(process_group=...)``); ``False`` keeps per-rank statistics.
        p: probability, per sample, that its logits get the correction (default 1: every sample, as the paper).
            Every sample's features update the statistics.
        generator: draws the per-sample selection when ``p < 1``.

    Shape:
        x: any (B, ...) tensor the model takes (images, normalised or not; (B, D) vectors, (B, T, D) sequences,
        (B, T) int64 token ids), returned as is and never used (only checked: batch size, device, finite if
        floating). y: (B,) int64, returned as is. The layer must see ``(B, A)`` features for the same ``B``.

    Convention:
        - Identity in ``eval()`` mode, and no hook is armed when the model and its classifier are in eval mode:
          validation forwards are untouched. The call never changes the model's parameters, buffers, modes or
          gradients.
        - Needs ``model`` (``TypeError`` without). Class-index labels only: soft labels raise ``ValueError``.
        - An empty batch (``B = 0``, a DistributedDataParallel rank's) passes, as in every transform, and arms the
          hook: its forward's statistics update still joins the other ranks' gather (``sync_stats``), which would
          otherwise wait for it until the process group's timeout.
        - One pending augmentation per layer: a second call before the forward replaces the first, with a warning
          (a hook that never fires, for example on a ``torch.compile``d model, shows this way). The hook removes
          itself when it fires; a forward whose batch size differs from ``len(y)`` raises ``ValueError``.
        - The statistics (``isda.estimator``: buffers, in ``state_dict``, moved by ``.to``) are updated with the
          batch *before* it is used, as in the official code; they are the pooled covariance of every feature seen.
        - ``stats['seen']`` counts the samples of training-mode calls; ``stats['transformed']`` those whose logits
          got the correction, counted when the hook fires (so ``transformed`` stays 0 if it never does), at any
          strength: while ``lam`` is 0 (no schedule set yet, the official schedule's first epoch) too.
        - Not supported: ``nn.DataParallel`` over several devices (replicas would see part of the batch; use DDP; on
          one device, or the CPU, it runs the model it holds, which is augmented), heads that are not an
          ``nn.Linear`` on ``(B, A)`` features, label-mixing steps in the same pipeline.
    """

    needs_model = True
    _takes_images = False  # it reads the classifier's features, never x: vectors, sequences, token ids pass
    needs_labels = True
    _accepted_labels = "(B,) int64 class indices"
    layer = setting("layer", _check_layer_name)

    def __init__(self, num_classes: int, lambda0: float = 0.5, *, covariance: str = "full", layer: str | None = None,
                 feature_dim: int | None = None, sync_stats: bool | dist.ProcessGroup = True, p: float = 1.0,
                 generator: torch.Generator | int | None = None):
        num_classes = check_class_count("num_classes", num_classes)
        self.layer = layer  # a setting: checked whenever set
        super().__init__(p=p, generator=generator, num_classes=num_classes)
        self._init_isda(num_classes, lambda0, covariance, feature_dim, sync_stats)

    def extra_repr(self) -> str:
        # one line (no estimator submodule): its feature_dim and sync_stats are settings given to ISDA
        return (self._isda_repr() + f", layer={self.layer!r}" + self._estimator_repr() + f", p={self.p}"
                + generator_repr(self._rng.spec))

    def find_layer(self, model: nn.Module) -> tuple[str, nn.Linear]:
        """``(name, layer)``: the final linear classifier of ``model`` that ISDA hooks."""
        name, layer = self._lookup(model)
        if layer.out_features != self.num_classes:
            raise self._miscounted_layer(model, name, layer)
        dim = self.estimator.feature_dim
        if dim is not None and layer.in_features != dim:
            raise ValueError(f"the layer {name!r} takes {layer.in_features} features, the statistics have {dim} (of "
                             f"another model, or feature_dim=...): use a new ISDA for this model, or pass layer='...' "
                             f"naming its classifier")
        return name, layer

    def _miscounted_layer(self, model: nn.Module, name: str, layer: nn.Linear) -> ValueError:
        """``find_layer``'s error for a classifier ``layer`` (called ``name``) of ``model`` whose outputs are not
        ``num_classes``."""
        hint = _official_order_hint(self.num_classes, layer, "ISDA") or self._classifier_before_hint(model, layer)
        return ValueError(
            f"the layer {name!r} of {type(model).__name__} ({layer.in_features} -> {layer.out_features}) has "
            f"{layer.out_features} outputs but num_classes={self.num_classes}"
            + (hint or self._miscount_hint(layer.out_features,
                                           f"{name!r} is not the classifier (pass layer='...' naming it)"))
        )

    def _classifier_before_hint(self, model: nn.Module, layer: nn.Linear) -> str:
        """For ``layer``, the last ``nn.Linear`` of ``model``, found by default, of other than ``num_classes``
        outputs: a hint naming the model's ``nn.Linear`` layers of ``num_classes`` outputs, which come before it in
        ``model.modules()`` order (a backbone or a projection head assigned after the classifier: a timm or
        torchvision ViT's, Swin's or ConvNeXt's blocks hold ``nn.Linear`` layers), "" if it has none or ``layer=``
        was given."""
        heads = [] if self.layer is not None else \
            [n for n, m in _linear_layers(model) if m is not layer and m.out_features == self.num_classes]
        if not heads:
            return ""
        layers = f"nn.Linear of {self.num_classes} outputs, {', '.join(map(repr, heads))}, come" + \
            ("s" if len(heads) == 1 else "")
        return (f": it is the last nn.Linear in model.modules() order, which ISDA takes by default, not the "
                f"classifier; the model's {layers} before it (a backbone or projection head assigned after the "
                f"classifier)? pass ISDA(..., layer={heads[-1]!r})")

    def _lookup(self, model: nn.Module) -> tuple[str, nn.Linear]:
        """``(name, layer)``: the ``nn.Linear`` named by ``layer=``, else the last one (``ValueError`` if none); its
        size unchecked."""
        if isinstance(unwrap(model), torch.jit.ScriptModule):  # its layers are RecursiveScriptModules, not nn.Linear
            raise ValueError(
                f"ISDA cannot hook the classifier of a torch.jit.script'ed or traced model ({type(model).__name__}): "
                f"its layers are TorchScript modules, not nn.Linear, and take no hook added after scripting. Train "
                f"the eager model with ISDA (script it after training, for deployment), or compute the features "
                f"and use ISDALoss(features, fc, y) (docs/methods/isda.md)")
        if self.layer is None:
            found = _linear_layers(model)
            if not found:
                raise ValueError(
                    f"ISDA found no nn.Linear in {type(model).__name__} (outside codecs): it augments the input "
                    f"features of the final linear classifier. Pass layer='name' naming that nn.Linear (a dotted path "
                    f"such as 'head.fc'); convolutional heads are not supported"
                )
            return found[-1]
        layer = None
        for m in (model, unwrap(model), getattr(model, "_orig_mod", None)):
            if m is not None and layer is None:
                try:
                    layer = m.get_submodule(self.layer)
                except AttributeError:
                    pass
        if layer is None:
            names = [n for n, _ in _linear_layers(model)]
            raise ValueError(f"{type(model).__name__} has no submodule {self.layer!r}; its nn.Linear layers: {names}")
        if not isinstance(layer, nn.Linear):
            inner = _linear_inside(layer)
            raise ValueError(f"layer {self.layer!r} of {type(model).__name__} is a {type(layer).__name__}, "
                             f"ISDA needs the final nn.Linear"
                             + (f": the one inside it, layer='{self.layer}.{inner}'" if inner else ""))
        return self.layer, layer

    def _classifier_trains(self, model: nn.Module) -> bool:
        """For ``model`` in eval mode: whether its classifier is in train mode (fine-tuning with ``model.eval()`` for
        BatchNorm, then ``model.fc.train()``), which ISDA then augments, or another ``nn.Linear`` of its outputs is
        (a student's beside a frozen teacher's, another task's head: refused, naming it). Else, once per ISDA, a
        warning when the classifier still looks trained (a weight that requires grad, gradients on): nothing is
        augmented."""
        try:
            name, layer = self._lookup(model)
        except ValueError:  # no classifier to augment: the call's checks for a training model say so
            return False
        if layer.training or _other_trained_heads(model, layer):
            return True  # the latter a head that never fires beside one that trains: _check_layer_trains names it
        if layer.weight.requires_grad and torch.is_grad_enabled() and not self.__dict__.get("_warned_eval_model"):
            self._warned_eval_model = True
            train = (f"model.{name}.train()" if all(part.isidentifier() for part in name.split("."))
                     else f"model.get_submodule({name!r}).train()")
            warn_at_call(f"ISDA is training but {type(model).__name__} and its classifier {_layer_label(name, layer)}"
                         f" are in eval mode, with gradients on and the classifier's weight trainable: nothing is "
                         f"augmented (ISDA augments training forwards of the classifier). Fine-tuning with "
                         f"model.eval() to keep BatchNorm's statistics? Then call {train} after it (ISDA augments a "
                         f"classifier in train mode), or put only the BatchNorm layers in eval mode. A validation "
                         f"step? Call isda.eval() there, or run it under torch.no_grad()")
        return False

    def _grown_classifier(self, model: object) -> ValueError | None:
        """``find_layer``'s error for a classifier of ``model`` with more outputs than the statistics' classes (a head
        grown for new classes), else ``None`` (also when no classifier is found: the caller's error stands)."""
        if not isinstance(model, nn.Module):
            return None
        try:
            name, layer = self._lookup(model)
        except ValueError:
            return None
        if layer.out_features <= self.num_classes or (not _official_order_hint(self.num_classes, layer, "ISDA")
                                                      and self._classifier_before_hint(model, layer)):
            return None  # not grown: the classifier is another layer (the labels' own error stands)
        return self._miscounted_layer(model, name, layer)

    def _check_ddp_group(self, ddp: nn.parallel.DistributedDataParallel) -> None:
        """``ValueError`` if ``ddp`` has a process group of its own while the statistics are shared over all ranks
        (they would be pooled over every rank, not the model's group)."""
        if self.sync_stats is True and ddp.process_group is not dist.group.WORLD:
            raise not_about_the_batch(ValueError(
                "the model's DistributedDataParallel has a process group of its own, but ISDA shares its statistics "
                "over all ranks (sync_stats=True): give ISDA(..., sync_stats=<the model's process group>)"))

    def disarm(self, model: nn.Module) -> None:
        """Remove a pending (not yet fired) augmentation from ``model``'s classifier, if any, and the inert hook that a
        copy of a model made while one was pending carries (``torch.jit.script`` refuses a model with either)."""
        layer = self.find_layer(model)[1]
        _disarm(layer)
        for hook in [h for h in layer._forward_hooks.values() if isinstance(h, _ArmedHook)]:
            _remove_hook(layer, hook)

    if TYPE_CHECKING:  # its own call: labels required, no params= (it replays nothing), not the base class's
        def __call__(self, x: torch.Tensor, y: torch.Tensor, model: nn.Module | None = None,  # type: ignore[override]
                     index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]: ...

    def check_call(self, x: torch.Tensor, y: torch.Tensor | None = None, model: nn.Module | None = None,
                   index: torch.Tensor | None = None, *, model_optional: bool = False) -> None:
        """The checks of every transform's call, then ISDA's own, in ``eval()`` mode too (a pipeline checked there
        would fail once training): its statistics on ``x``'s device, class-index labels."""
        with grown_classifier_named((self,), model):
            super().check_call(x, y, model, index, model_optional=model_optional)
        if y is None:  # a subclass's needs_labels = False passes it: ISDA reads labels whatever that says
            raise self._labels_needed()
        if model is None and not model_optional:  # likewise for a subclass's needs_model = False
            raise self._model_needed()
        check_same_device(x, self.estimator, "ISDA's class statistics")
        check_class_indices(y)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None,  # type: ignore[override]  # as __call__
                model: nn.Module | None = None, index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate ``x``, any ``(B, ...)`` tensor, and ``y: (B,)`` int64 class indices (``y=None`` is refused), arm the
        hook when both ISDA and the model (or, in a model in eval mode, its classifier) train, and return ``(x, y)``
        unchanged.

        ``index`` is checked like every transform's and unused (ISDA encodes nothing)."""
        self.check_call(x, y, model, index)
        assert y is not None and model is not None  # refused by check_call: needs_labels, needs_model
        keep_out_of_ddp_broadcast(self, model)
        if not self.training:
            warn_if_left_in_eval(self, model)
            return x, y
        if isinstance(model, nn.DataParallel) and len(model.device_ids) > 1:  # on one device (or the CPU's none) it
            # calls its module on the whole batch: the official code's DataParallel(model) on one GPU
            raise not_about_the_batch(ValueError(
                f"ISDA does not support nn.DataParallel over several devices (device_ids={model.device_ids}: its "
                f"replicas would each see part of the batch that the labels were given for): use "
                f"DistributedDataParallel, or DataParallel on one device"))
        if isinstance(model, nn.parallel.DistributedDataParallel):
            self._check_ddp_group(model)
        batch = x.shape[0]
        if not model.training and not self._classifier_trains(model):  # a validation forward
            self._count_untouched(x.device, batch)
            return x, y
        try:
            name, layer = self.find_layer(model)
            _check_layer_trains(model, name, layer, by_default=self.layer is None)
        except ValueError as e:  # about the model, not the batch
            not_about_the_batch(e)
            raise
        if _compiled_fullgraph(model):
            raise not_about_the_batch(ValueError(
                f"ISDA's hook on {_layer_label(name, layer)} runs Python in the model's forward, which a model "
                f"compiled with torch.compile(..., fullgraph=True) or model.compile(fullgraph=True) refuses (torch's "
                f"'Unsupported' error at model(x), the graph break at the hook): compile it without fullgraph=True, or "
                f"compile the backbone alone and use ISDALoss(features, fc, y) (docs/methods/isda.md)"))
        self._warn_if_unscheduled()
        lam: float | torch.Tensor = self.lam
        chosen = torch.full((), batch, dtype=torch.int64, device=x.device)  # torch.tensor(...) would be a sync
        if self.p < 1.0:
            mask = self._draw_selection(batch, self._rng.get(x.device), x.device)
            lam, chosen = lam * mask.float(), mask.sum()
        label, pending = _layer_label(name, layer), _disarm(layer)
        # a fired hook still armed: torch 2.4's compiled code ran it but dropped its Python side effect, _disarm
        if pending is not None and not pending.fired:
            if _is_compiled(model) and self.estimator.gathers():  # every rank skipped it alike: all raise here
                raise RuntimeError(_never_fired(label, model, layer) + ". Under DistributedDataParallel a recompile on "
                                   "one rank (a smaller last batch there) would make the hook fire on that rank alone, "
                                   "whose statistics gather would then wait for the others until the process "
                                   "group's timeout")
            warn_at_call(_never_fired(label, model, layer))
        hook = _ArmedHook(self, label, y, lam, chosen.to(torch.int64))
        # before FSDP2's post-forward hook on a layer that is fully_shard'ed itself, which reshards its weight into this
        # rank's rows (a DTensor) as the forward ends
        _ARMED[layer] = (layer.register_forward_hook(hook, prepend=_fully_sharded(layer)), hook)
        self._count_untouched(x.device, batch)
        return x, y


# -- the loss form --------------------------------------------------------------------------------------------------
class ISDALoss(_ISDAState, nn.Module):
    """ISDA as a loss: ``loss = isda_loss(features, fc, y)`` with ``features = backbone(x)`` and ``fc`` the classifier.

    Equals ``F.cross_entropy(model(x), y)`` after ``isda(x, y, model)``: the same estimator
    (``FeatureCovariance``, updated with the batch first), the same schedule (``set_epoch()``,
    ``set_progress()``; **lam is 0 until you call one of them**, and the first training call warns once) and the
    same ``isda_logits()``.
    For a custom loss use ``augment()`` (augmented logits) directly.

    Args:
        num_classes: C, the classifier's number of outputs.
        lambda0: final strength (0.5: official CIFAR default with full covariance), as ``ISDA``.
        covariance: ``"full"`` or ``"diagonal"``, as ``ISDA``.
        feature_dim: A; default: sized from ``fc`` on the first training call.
        sync_stats: under ``torch.distributed``, gather all ranks' features before each update, as ``ISDA``.

    Shape:
        features: (N, A) float, in ``fc``'s dtype or under ``torch.autocast`` (as ``fc`` itself needs); fc: an
        ``nn.Linear(A, C)``; y: (N,) int64 class indices in ``[0, C)``; all on one device. Returns the mean
        cross-entropy (scalar).

    Convention:
        In ``eval()`` mode: plain cross-entropy of ``fc(features)``, statistics untouched. An empty batch (``N = 0``,
        a DistributedDataParallel rank's: it still joins the other ranks' statistics gather) gives 0, still
        connected to the graph, so that its backward joins DDP's gradient all-reduce (``F.cross_entropy``'s mean
        over nothing is NaN).
    """

    def __init__(self, num_classes: int, lambda0: float = 0.5, *, covariance: str = "full",
                 feature_dim: int | None = None, sync_stats: bool | dist.ProcessGroup = True):
        super().__init__()
        self._init_isda(num_classes, lambda0, covariance, feature_dim, sync_stats)

    def extra_repr(self) -> str:
        return self._isda_repr() + self._estimator_repr()

    __repr__ = one_line_repr  # one line, as ISDA's: the estimator's settings, not a submodule tree

    if TYPE_CHECKING:  # nn.Module's __call__ returns Any
        def __call__(self, features: torch.Tensor, fc: nn.Linear, y: torch.Tensor) -> torch.Tensor: ...

    def forward(self, features: torch.Tensor, fc: nn.Linear, y: torch.Tensor) -> torch.Tensor:
        """features: (N, A) float, fc: ``nn.Linear(A, C)``, y: (N,) int64 in ``[0, C)`` -> the mean cross-entropy of
        the augmented logits (scalar; in ``eval()`` mode, of ``fc(features)``). ``TypeError`` for an ``fc`` that is
        not an ``nn.Linear`` or features that are not a tensor, ``ValueError`` for wrong shapes or labels."""
        if not isinstance(fc, nn.Linear):
            inner = _linear_inside(fc) if isinstance(fc, nn.Module) else None
            raise TypeError(f"fc must be the classifier's nn.Linear, got {type(fc).__name__}"
                            + (f": pass the one inside it, fc.{inner}" if inner else ""))
        if not isinstance(features, torch.Tensor) or features.ndim != 2 or features.shape[1] != fc.in_features \
                or not features.is_floating_point():  # a list: a WrongTypeError, as for y
            raise bad_option(f"features must be a (N, {fc.in_features}) float tensor for {fc}, got "
                             f"{describe(features)}", right_type=isinstance(features, torch.Tensor))
        if fc.out_features != self.num_classes:
            not_it = "fc is not the classifier (pass its nn.Linear)"
            raise ValueError(f"fc has {fc.out_features} outputs but num_classes={self.num_classes}"
                             + (_official_order_hint(self.num_classes, fc, "ISDALoss")
                                or self._miscount_hint(fc.out_features, not_it)))
        check_same_device(features, fc, "fc", "the features are")
        if isinstance(y, torch.Tensor):  # before check_labels reads its values
            check_device("y", y.device, features, "the features are")
        check_labels(y, features.shape[0], self.num_classes, batch_name="features")
        check_class_indices(y, "ISDALoss")
        keep_out_of_ddp_broadcast(self, None)  # a LightningModule's loss, inside the DDP forward of training_step
        try:
            logits = fc(features)
        except RuntimeError as e:
            name_dtype_clash(e, fc, features, "ISDALoss", "features", "fc")
            raise
        if self.training:
            self._warn_if_unscheduled()
            logits = self.augment(features, logits, fc.weight, y, check_y=False)
        if not len(y):  # a DDP rank's empty batch, which joined the statistics' gather all the same: 0, connected
            return F.cross_entropy(logits, y, reduction="sum")  # to the graph, not the NaN of a mean over nothing
        return F.cross_entropy(logits, y)
