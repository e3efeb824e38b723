"""The per-class running feature statistics ISDA augments along (Wang et al., NeurIPS 2019): mean and covariance,
merged batch by batch as the official estimator, all-gathered across ranks under ``torch.distributed``."""
from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable, Iterator, SupportsIndex, cast

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .casts import TensorFn, without_16_bit_casts
from .modelutils import device_memory
from .torch_defaults import untraced
from .validation import (Settings, WrongTypeError, check_bool, check_choice, check_class_count, check_items,
                         check_labels, fixed_at_construction, is_out_of_memory, no_autocast, shown,
                         wide_float)

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["FeatureCovariance"]

COVARIANCES = ("full", "diagonal")
_UPDATE_LOCK = threading.Lock()  # module-wide: an estimator with a lock of its own would not pickle or deepcopy


def _sizing_setting(name: str, doc: str) -> property:
    """FeatureCovariance's setting ``name`` (``num_classes``, ``covariance``), which sizes its statistics: checked by
    ``check_unchanged`` whenever set, kept in ``__dict__`` under its own name, as the plain attribute it was (a pickle
    of before 2026-12-05 holds it so). Read through ``vars(self)``: torch 2.6 to 2.8's Dynamo took
    ``self.__dict__[name]`` for the attribute ``name``, this property again, and a compiled ISDALoss failed on
    RecursionError."""
    def get(self: FeatureCovariance) -> object:
        try:
            return vars(self)[name]
        except KeyError:  # not set yet: missing, as a plain attribute was
            raise AttributeError(name) from None

    def set_(self: FeatureCovariance, value: object) -> None:
        self.__dict__[name] = check_unchanged(self, name, value)

    return property(get, set_, doc=doc)


class FeatureCovariance(Settings, nn.Module):
    """Per-class running mean and biased covariance of features, merged batch by batch.

    For class ``c`` with ``n`` features seen so far (mean ``mu``, covariance ``Sigma``) and ``m`` in the batch
    (batch mean ``mu'``, batch covariance ``Sigma'`` divided by ``m``)::

        Sigma <- (n Sigma + m Sigma') / (n + m) + n m (mu - mu')(mu - mu')^T / (n + m)^2
        mu    <- (n mu + m mu') / (n + m)
        n     <- n + m

    which is the official ISDA estimator and equals the biased covariance of all features seen so far (0 for a class
    seen once: its samples get no augmentation). Classes absent from a batch keep their statistics bit for bit. The
    update is vectorised over classes. Non-finite rows (any NaN or inf, e.g. an fp16 overflow step that GradScaler
    skips) and rows with an entry whose square could overflow (beyond 1.8e13 in float32) are ignored: they change no
    statistic.

    Args:
        num_classes: K.
        feature_dim: A. ``None``: sized (and placed, on the features' device) by the first ``update()``, or by
            ``load_state_dict()`` (on the device and in the dtype of an earlier ``.to(...)``, as a sized module's
            buffers, else the checkpoint's). Given: allocated now, on the CPU in float32; move it with ``.to(device)``.
        covariance: ``"full"``, ``cov: (K, A, A)`` (the official CIFAR variant), or ``"diagonal"``, only the
            per-dimension variances, ``cov: (K, A)`` (memory ``O(K A)``; the official ImageNet/segmentation variant).
            The full form takes ``K A^2`` numbers, and each update as many again plus ``N K A`` for a batch of ``N``:
            for ImageNet's 1000 classes and 2048 ResNet-50 features, 16.8 GB in float32, 33.6 GB during an update.
            Where that exceeds the device's memory (the RAM for the CPU) it is refused before allocating, and an
            allocation that fails is reported, both as ``torch.OutOfMemoryError`` with the figures and
            ``covariance="diagonal"`` as the fix.
        sync_stats: under ``torch.distributed`` (initialised, world size > 1), gather every rank's batch before the merge
            so that all ranks hold the statistics one process would compute on the concatenated batch. ``True``:
            the default process group; a ``torch.distributed.ProcessGroup``: the ranks of that group only (the
            data-parallel group you gave ``DistributedDataParallel(process_group=...)``); ``False``: per-rank
            statistics. A module holding a group cannot be pickled (groups cannot); its copies share the group.

    Buffers (in ``state_dict``, moved by ``.to``; ``None`` until sized):
        ``mean``: (K, A); ``cov``: (K, A, A), or (K, A) if ``"diagonal"``; ``count``: (K,) int64.

    Convention:
        The buffers are float32 by default (float64 when lazily sized by float64 features, or after ``.double()``,
        before or after sizing). The update runs with autocast off in their dtype, in place: bf16/fp16 features are
        upcast. A cast to 16 bits (``.half()``, ``.to(torch.bfloat16)`` of a module holding the estimator) moves the
        buffers but keeps their dtype, and bf16/fp16 buffers (loaded from a 16-bit state) are refused by
        ``update()`` (``ValueError``): their running means stop moving. The matrix products
        follow torch's TF32 switch (``torch.backends.cuda.matmul.allow_tf32``; the benchmarks turn it on for the
        classifier): on a GPU with it on, their inputs are rounded to TF32's 10-bit mantissa (unlike the codecs,
        which turn it off to invert exactly). Features are detached. A feature on another device than the buffers
        raises ``ValueError``, and so do labels on another device than the features (nothing is moved silently).
    """

    mean: torch.Tensor | None
    cov: torch.Tensor | None
    count: torch.Tensor | None
    # where an unsized estimator was moved to (.to(device), .double(), ...), None for unchanged: no buffer records it
    _device: torch.device | None = None
    _dtype: torch.dtype | None = None

    def __init__(self, num_classes: int, feature_dim: int | None = None, *, covariance: str = "full",
                 sync_stats: bool | dist.ProcessGroup = True):
        super().__init__()
        num_classes = check_class_count("num_classes", num_classes)
        # few enough for the (K, A) statistics (an absurd one met an OverflowError sizing the full covariance's memory)
        feature_dim = None if feature_dim is None else check_items("feature_dim", feature_dim, (num_classes,),
                                                                   dtype=torch.float64)
        self.num_classes, self.covariance = num_classes, covariance  # fixed at construction (but for grow())
        self.sync_stats = sync_stats  # a setting: checked whenever set
        self.register_buffer("mean", None)
        self.register_buffer("cov", None)
        self.register_buffer("count", None)
        if feature_dim is not None:
            self._allocate(feature_dim, torch.device("cpu"), torch.float32)

    # plain attributes until 2026-12-05, which took anything: covariance="diagonal" left the full statistics and their
    # update as they were, num_classes=0 or "10" passed, 5 for 3 failed in torch's indexing at the next update
    num_classes = _sizing_setting("num_classes", "K, the classes of the statistics: fixed at construction, but for "
                                                 "``grow()``.")
    covariance = _sizing_setting("covariance", '``"full"`` or ``"diagonal"``, the statistics\' form: fixed at '
                                               'construction.')

    @property
    def _diagonal(self) -> bool:
        """Whether the covariance is ``"diagonal"``."""
        return cast(str, self.covariance) == "diagonal"

    @property
    def sync_stats(self) -> "bool | dist.ProcessGroup":
        """``True``, ``False`` or the process group, as given; assigned, checked as the constructor's and used from the
        next ``update()`` (assigned as a name it did not read, it changed nothing)."""
        return self._sync if self._group is None else self._group

    @sync_stats.setter
    def sync_stats(self, sync_stats: "bool | dist.ProcessGroup") -> None:
        self._sync, self._group = check_sync("sync_stats", sync_stats)
        if self.gathers():  # made now, outside any compiled code that calls update; without a process group of more
            _untraced_gather()  # than one rank, at the first gather (torch._dynamo takes 1.3-1.8 s to import)

    @property
    def feature_dim(self) -> int | None:
        """A, or ``None`` while not sized yet."""
        return None if self.mean is None else self.mean.shape[1]

    def _allocate(self, feature_dim: int, device: torch.device, dtype: torch.dtype) -> None:
        k, a = self.num_classes, feature_dim
        # normal tensors even when first sized inside torch.inference_mode(): inference tensors would refuse every
        # later in-place update outside it ("Inplace update to inference tensor outside InferenceMode")
        with torch.inference_mode(False), self._within_memory(feature_dim, device, dtype, batch=0):
            mean = torch.zeros(k, a, device=device, dtype=dtype)
            cov = torch.zeros((k, a) if self._diagonal else (k, a, a), device=device, dtype=dtype)
            # assigned together: a failed allocation leaves the estimator unsized, not half sized
            self.mean, self.cov = mean, cov
            self.count = torch.zeros(k, device=device, dtype=torch.int64)

    def _within_memory(self, feature_dim: int, device: torch.device, dtype: torch.dtype,
                       batch: int) -> contextlib.AbstractContextManager[None]:
        """For the full covariance: refuse, before allocating, statistics and an update of ``batch`` features that
        need more than the device's memory, and report an allocation failure in the block; both as
        ``torch.OutOfMemoryError`` naming the figures and the fix (torch's "can't allocate memory: you tried to
        allocate 16777216000 bytes" named neither; a CPU update beyond the RAM could be ended by the OOM killer)."""
        # traced, the sizes are symbolic: no figures to give (and torch 2.4's Dynamo could not enter a generator's
        # context manager: fullgraph=True refused the update)
        if self._diagonal or torch.compiler.is_compiling():
            return contextlib.nullcontext()
        return self._full_within_memory(feature_dim, device, dtype, batch)

    @contextlib.contextmanager
    def _full_within_memory(self, feature_dim: int, device: torch.device, dtype: torch.dtype,
                            batch: int) -> Iterator[None]:
        """``_within_memory`` for the full covariance, outside traced code."""
        k, a, size = self.num_classes, feature_dim, torch.finfo(dtype).bits // 8

        def refusal(reason: str) -> torch.OutOfMemoryError:  # the message is only formatted when it is raised
            return torch.OutOfMemoryError(
                f"ISDA's full covariance for {k} classes and {a} features holds {k} x {a} x {a} "
                f"{str(dtype).removeprefix('torch.')} numbers, {k * a * a * size / 1e9:.1f} GB, and each update needs "
                f"as much again" + (f" and {batch * k * a * size / 1e9:.1f} GB for a batch of {batch}" if batch else "")
                + f": use covariance=\"diagonal\" ({k} x {a} numbers, {k * a * size / 1e6:.1f} MB; the official "
                f"ImageNet setting, with lambda0=7.5 for ResNets). {reason}")

        # the statistics, the batch's covariance (K A A each) and the spread of its centred features (N K A)
        need = (2 * k * a * a + batch * k * a) * size
        total = device_memory(device)
        if total is not None and need > total:
            raise refusal(f"That is {need / 1e9:.1f} GB in all, more than the {total / 1e9:.1f} GB of {device}")
        try:
            yield
        except RuntimeError as e:
            if not is_out_of_memory(e):
                raise
            raise refusal(f"Out of memory on {device}: {' '.join(str(e).split())}") from e

    def reset(self) -> None:
        """Forget every feature seen (keeps the size, device and dtype)."""
        if self.mean is not None:
            assert self.cov is not None and self.count is not None  # sized together
            self.mean.zero_()
            self.cov.zero_()
            self.count.zero_()

    def grow(self, num_classes: int) -> None:
        """Add classes ``K..num_classes-1`` (a classifier grown for new classes, as in class-incremental learning),
        their statistics empty (count 0); those of the classes seen are kept, on their device and in their dtype.

        ``num_classes`` below ``K`` raises ``ValueError`` (statistics are not dropped); equal to it changes nothing.
        Under ``torch.distributed`` call it on every rank alike, as the classifier is grown on every rank.
        """
        num_classes = check_class_count("num_classes", num_classes)
        k = self.num_classes
        if num_classes < k:
            raise ValueError(f"grow(num_classes) adds classes: got {num_classes}, fewer than the {k} the statistics "
                             f"hold; for a classifier with fewer outputs, use a new ISDA/FeatureCovariance")
        if num_classes == k:
            return
        old = self.mean, self.cov, self.count
        self.__dict__["num_classes"] = num_classes  # the one change of it (the setter refuses any)
        if old[0] is None:  # not sized yet: sized with every class at the first update
            return
        try:
            self._allocate(old[0].shape[1], old[0].device, old[0].dtype)  # zeros, within the device's memory
        except BaseException:
            self.__dict__["num_classes"], (self.mean, self.cov, self.count) = k, old
            raise
        with torch.no_grad():
            for new, kept in zip((self.mean, self.cov, self.count), old):
                assert new is not None and kept is not None  # sized together
                new[:k] = kept

    def _apply(self, fn: TensorFn, recurse: bool = True) -> Self:
        fn = without_16_bit_casts(fn)
        # .to(device)/.double() of an unsized estimator moves no tensor: remember it, for the statistics loaded later
        probe = torch.empty(0, device=self._device or "cpu", dtype=self._dtype or torch.float32)
        moved = fn(probe)
        if moved.device != probe.device:
            self._device = moved.device
        if moved.dtype != probe.dtype:
            self._dtype = moved.dtype
        return cast("Self", super()._apply(fn, recurse))

    def _refusal(self, state_dict: Mapping[str, Any], prefix: str = "") -> str | None:
        """Why the statistics under ``prefix`` in ``state_dict`` cannot be loaded here (another class count, feature
        dimension or covariance form, NaN or inf), or ``None``: ``load_state_dict`` then refuses them whole."""
        saved, cov = state_dict.get(prefix + "mean"), state_dict.get(prefix + "cov")
        if isinstance(saved, torch.Tensor) and saved.ndim == 2 and saved.shape[0] != self.num_classes:
            # torch's three "size mismatch" lines named neither the classes nor the way out
            k = saved.shape[0]
            return (f"{prefix}mean holds the statistics of {k} classes, this estimator has {self.num_classes}: "
                    + (f"load them into an ISDA/ISDALoss/FeatureCovariance of {k} classes, then call its "
                       f"grow({self.num_classes}), which adds the new classes and keeps these"
                       if k < self.num_classes else f"build it with num_classes={k}"))
        dim = self.feature_dim
        if isinstance(saved, torch.Tensor) and saved.ndim == 2 and dim is not None and saved.shape[1] != dim:
            return (f"{prefix}mean holds statistics of {saved.shape[1]} features, this estimator's are of {dim} (of "
                    f"another model, or feature_dim=...): build it with feature_dim={saved.shape[1]} or without one")
        if isinstance(cov, torch.Tensor) and cov.ndim in (2, 3) and (cov.ndim == 2) != self._diagonal:
            form = "diagonal" if cov.ndim == 2 else "full"
            return (f"{prefix}cov holds a {form} covariance, this estimator's is {self.covariance!r}: build it with "
                    f"covariance={form!r}")
        count = state_dict.get(prefix + "count")
        if isinstance(count, torch.Tensor) and isinstance(saved, torch.Tensor) and saved.ndim == 2 and \
                count.shape != saved.shape[:1]:
            # torch's size mismatch came after the mean and covariance were loaded, over the other counts
            return (f"{prefix}count has shape {tuple(count.shape)}, the statistics' {saved.shape[0]} classes need "
                    f"({saved.shape[0]},) (a damaged file, or a state written by hand): load a whole state, or none "
                    f"and let the statistics be gathered again")
        if isinstance(count, torch.Tensor) and not count.is_meta and count.numel() and (
                bool((count < 0).any()) or count.is_floating_point() and not bool(
                    ((count == count.round()) & (count < 2.0 ** 63)).all())):
            # loaded, a negative count made the merge weight m / (n + m) above 1 or negative: statistics of nothing;
            # a float one of inf, or past int64's range, was loaded into the int64 counts as -2**63
            return (f"{prefix}count holds negative or fractional sample counts, or ones past int64's range (a damaged "
                    f"file, or a state written by hand): the next update's merge weights would be wrong; load other "
                    f"statistics, or none and let them be gathered again")
        for key in ("mean", "cov"):  # read at loading (update() keeps them finite), a NaN loaded made every loss NaN
            held = state_dict.get(prefix + key)
            if isinstance(held, torch.Tensor) and held.is_floating_point() and not held.is_meta and \
                    not bool(torch.isfinite(held).all()):
                return (f"{prefix}{key} holds NaN or inf (a damaged file, or statistics written by hand): every "
                        f"augmented logit and loss would be NaN; load other statistics, or none and let them be "
                        f"gathered again")
        return None

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any],
                              strict: bool, missing_keys: list[str], unexpected_keys: list[str],
                              error_msgs: list[str]) -> None:
        refusal = self._refusal(state_dict, prefix)
        if refusal is not None:  # nothing loaded: torch's size mismatches loaded the count of other statistics
            error_msgs.append(refusal)
            return
        saved = state_dict.get(prefix + "mean")
        if self.mean is None and isinstance(saved, torch.Tensor) and saved.ndim == 2:
            # lazily sized: the checkpoint's size, on the device and in the dtype of an earlier .to(...) (safetensors'
            # load_file gives CPU tensors: the statistics of an ISDA moved to CUDA stayed on the CPU)
            self._allocate(saved.shape[1], self._device or saved.device, self._dtype or saved.dtype)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    @torch.no_grad()
    def gathers(self) -> bool:
        """Whether ``update`` gathers other ranks' features now (synced, in a process group of more than one rank)."""
        return bool(self._sync and dist.is_available() and dist.is_initialized()
                    and dist.get_world_size(self._group) > 1)

    def update(self, features: torch.Tensor, y: torch.Tensor, check_y: bool = True) -> None:
        """Merge a batch: ``features: (N, A)`` float, ``y: (N,)`` int64 class indices in ``[0, K)``.

        ``check_y=False`` skips checking ``y``'s values (one host sync; its form is checked), for callers that have
        checked them.
        """
        for name, t in (("features", features), ("y", y)):
            if not isinstance(t, torch.Tensor):
                raise WrongTypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if features.ndim != 2:
            raise ValueError(f"features must be (N, A), got shape {tuple(features.shape)}")
        if not features.is_floating_point():  # int and bool were cast to float, complex lost its imaginary part
            raise ValueError(f"features must be float, got dtype {features.dtype}")
        if y.ndim != 1 or y.shape[0] != features.shape[0]:
            raise ValueError(f"y must be (N,) with N={features.shape[0]} (the features' batch), got {tuple(y.shape)}")
        if y.device != features.device:
            raise ValueError(f"y is on {y.device} but the features on {features.device} (nothing is moved silently)")
        if check_bool("check_y", check_y):  # None skipped the check
            check_labels(y, features.shape[0], self.num_classes, batch_name="features")
        elif y.dtype != torch.int64:  # its form all the same: float or int32 y met scatter()'s "Expected dtype int64"
            raise ValueError(f"y class indices must be int64, got dtype {y.dtype}; convert with y.long()")
        if self.mean is not None:
            if self.mean.dtype in (torch.float16, torch.bfloat16):
                raise ValueError(f"the class statistics are {self.mean.dtype}: their running means would stop moving "
                                 f"after a few hundred samples per class; keep them in float32 (.float())")
            if features.shape[1] != self.mean.shape[1]:
                raise ValueError(f"features have dimension {features.shape[1]}, the statistics {self.mean.shape[1]}")
            if features.device != self.mean.device:
                raise ValueError(
                    f"the class statistics are on {self.mean.device} but the features on {features.device}; "
                    f"move the ISDA/FeatureCovariance module with .to({str(features.device)!r})"
                )
            dtype = self.mean.dtype  # float32 or float64: 16-bit buffers are refused above
        else:  # the dtype of an earlier .double()/.float(), else float64 for float64 features, float32 for others
            dtype = self._dtype or (torch.float64 if features.dtype == torch.float64 else torch.float32)
        with no_autocast(features.device):
            a = features.detach().to(dtype)
            if self.gathers():
                a, y = _untraced_gather()(a, y, self._group)
            with _one_update_at_a_time():
                if self.mean is None:
                    self._allocate(a.shape[1], a.device, dtype)
                with self._within_memory(a.shape[1], a.device, dtype, batch=a.shape[0]):
                    self._merge(a, y)

    def _merge(self, a: torch.Tensor, y: torch.Tensor) -> None:
        """Merge ``a: (N, A)`` in the compute dtype with ``y: (N,)``; rows with a NaN, an inf or an entry too large
        to square safely go to a dummy class ``K``."""
        assert self.mean is not None and self.cov is not None and self.count is not None  # update sized them
        k, dim = self.mean.shape
        bound = torch.finfo(a.dtype).max ** 0.5 / 2**20  # 1.8e13 in float32: sums of squares stay finite
        finite = (a.abs() <= bound).all(1, keepdim=True)                      # (N, 1), False for NaN; no host sync
        a = a.masked_fill(~finite, 0)
        y = torch.where(finite.squeeze(1), y, k)                              # in [0, K]
        counts = torch.zeros(k + 1, dtype=torch.int64, device=y.device).scatter_add_(0, y, torch.ones_like(y))
        # (K + 1,) int64; not torch.bincount, which reads y's min and max on the host (2 syncs) on CUDA
        m_safe = counts.to(a.dtype).clamp(min=1).unsqueeze(1)
        batch_mean = a.new_zeros(k + 1, dim).index_add_(0, y, a) / m_safe     # (K + 1, A); the dummy row is 0
        centred = a - batch_mean[y]                                           # (N, A); 0 for the dummy rows
        if self._diagonal:
            batch_cov = (a.new_zeros(k + 1, dim).index_add_(0, y, centred * centred) / m_safe)[:k]  # (K, A)
        else:
            # sum over the samples of each class of c c^T, as one matmul: (K A, N) @ (N, A) -> (K, A, A)
            onehot = F.one_hot(y, k + 1)[:, :k].to(a.dtype)                                        # (N, K)
            spread = (onehot.unsqueeze(2) * centred.unsqueeze(1)).reshape(a.shape[0], k * dim)    # (N, K A)
            batch_cov = (spread.T @ centred).reshape(k, dim, dim).div_(m_safe[:k].unsqueeze(2))
        count, batch_mean = counts[:k], batch_mean[:k]
        wide = wide_float(a.device)  # float64 but on MPS, which has none
        w = (count.to(wide) / (self.count + count).clamp(min=1).to(wide)).to(a.dtype)  # m / (n + m); 0 if absent
        mean, cov = self.mean, self.cov                                        # a.dtype: updated in place
        delta = batch_mean - mean
        shape = (k, 1) if self._diagonal else (k, 1, 1)
        wv = w.view(shape)
        kept_delta = (1 - w).unsqueeze(1) * delta                             # (K, A): (1-w) d
        left, right = (kept_delta, delta) if self._diagonal else (kept_delta.unsqueeze(2), delta.unsqueeze(1))
        # (n S + m S')/(n+m) + n m d d^T/(n+m)^2  ==  S + w (S' - S + (1-w) d d^T): one increment added in place (no
        # more K A A), as the mean's. Not as (1-w) S + w S' + ...: 1-w rounds to float32's steps of 6e-8 near 1, a
        # decay off by up to 3e-8 per update whatever w is, which drifted the covariance of a class seen 1e5-1e6
        # times 12-100x more (docs/methods/isda.md, Precision)
        cov.add_(batch_cov.sub_(cov).addcmul_(left, right).mul_(wv))
        mean.add_(w.unsqueeze(1) * delta)
        self.count.add_(count)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A pickle of before 2026-12-06 holds the gather settings as ``sync`` and ``group`` (now ``_sync``,
        ``_group``: set only through ``sync_stats``), one of before 2026-12-05 ``diagonal`` too (read from
        ``covariance`` since)."""
        state = dict(state)
        if "sync" in state:
            state["_sync"], state["_group"] = state.pop("sync"), state.pop("group", None)
        state.pop("diagonal", None)
        super().__setstate__(state)

    # copies are made from the attributes, not through __reduce_ex__, which refuses a process group for pickling
    def __copy__(self) -> "FeatureCovariance":
        return self._copy_with(lambda attributes: attributes)

    def __deepcopy__(self, memo: dict[int, Any]) -> "FeatureCovariance":
        """A copy gathering over the same process group (a group is a handle on the ranks, not data to copy)."""
        if self._group is not None:
            memo[id(self._group)] = self._group
        return self._copy_with(lambda attributes: copy.deepcopy(attributes, memo), memo)

    def _copy_with(self, copy_attributes: Callable[[dict[str, Any]], dict[str, Any]], memo: dict[int, Any] | None = None
                   ) -> "FeatureCovariance":
        new = self.__class__.__new__(self.__class__)
        if memo is not None:  # a reference back to this module inside its attributes gets the copy
            memo[id(self)] = new
        new.__dict__.update(copy_attributes(self.__dict__))
        return new

    def __reduce_ex__(self, protocol: SupportsIndex) -> str | tuple[Any, ...]:
        if self._group is not None:  # torch's own error names neither the module nor the way out
            raise TypeError("statistics shared over a process group (ISDA/FeatureCovariance(sync_stats=group)) cannot "
                            "be pickled, as process groups cannot: save and load its state_dict() instead, or build "
                            "the copy with sync_stats=True/False")
        return super().__reduce_ex__(protocol)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, feature_dim={self.feature_dim}, covariance={self.covariance!r}, "
                f"sync_stats={self._sync}" + ("" if self._group is None else " (a process group)"))


def check_unchanged(owner: nn.Module, name: str, value: object) -> object:
    """``value`` of ``num_classes`` or ``covariance``, which size the class statistics, checked as the constructor
    checks it; assigned after construction (``owner``: an estimator, or an ISDA holding one), ``AttributeError``
    naming the way unless it is the value held (``grow()`` adds classes)."""
    value = check_class_count(name, value) if name == "num_classes" else check_choice(name, value, COVARIANCES)
    estimator = owner if isinstance(owner, FeatureCovariance) else owner._modules.get("estimator")
    held = None if estimator is None else estimator.__dict__.get(name)
    if held is None or value == held:  # the constructor's assignment, or the value as it is
        return value
    grows = name == "num_classes" and value > held
    raise fixed_at_construction(
        owner, name, f"it sizes the class statistics, now {held!r}",
        f".grow({value}) adds classes to them, empty, and keeps those seen (a classifier grown for new classes)"
        if grows else f"build a new {type(owner).__name__}(..., {name}={value!r})")


def check_sync(name: str, sync: object) -> "tuple[bool, dist.ProcessGroup | None]":
    """``(gather?, group)`` from a ``sync`` argument: ``True`` (the default group), ``False`` or a process group."""
    if isinstance(sync, bool):
        return sync, None
    # what dist.new_group returns on a rank outside the group
    if dist.is_available() and isinstance(sync, int) and sync == dist.GroupMember.NON_GROUP_MEMBER:
        raise ValueError(f"{name} is a process group this rank is not a member of (dist.new_group returned "
                         f"GroupMember.NON_GROUP_MEMBER here): give it only on the ranks in the group, False on others")
    if dist.is_available() and isinstance(sync, dist.ProcessGroup):
        return True, sync
    raise WrongTypeError(f"{name} must be True, False or a torch.distributed ProcessGroup, got {shown(sync)}")


def _one_update_at_a_time() -> contextlib.AbstractContextManager[object]:
    """The lock an update holds while it sizes and merges the statistics: threads sharing an estimator each read them
    and wrote them in place, losing each other's batches or mixing one's count with another's mean. None in code that
    torch.compile traces (Dynamo cannot enter a lock: a graph break, an error under ``fullgraph=True``)."""
    return contextlib.nullcontext() if torch.compiler.is_compiling() else _UPDATE_LOCK


def _untraced_gather() -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """``_all_gather_rows`` under ``torch.compiler.disable`` (traced, the collectives landed in per-rank graphs: a
    shape change on one rank mismatched them), made at first need: the decorator imports ``torch._dynamo``, which as
    a decorator at import took 1.8 s of ``import latent_transforms`` (3.9 s in all), and 1.3-1.8 s of the first
    ``ISDA()`` of a process built without a process group. In code being compiled (an estimator built before the
    process group, as in a LightningModule) it is made afresh (``untraced``): the ``torch.compiler.disable`` call
    breaks the graph there, and the gather runs outside it."""
    return untraced(_all_gather_rows)


def _all_gather_rows(a: torch.Tensor, y: torch.Tensor,
                     group: "dist.ProcessGroup | None" = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's rows ``(a, y)`` concatenated in rank order within ``group`` (default: the default process group;
    batch sizes may differ between ranks).

    Gathering the features (world x N x A numbers) costs less communication than all-reducing per-class sums of
    outer products (K x A x A) where world x N < K x A, and makes every rank run the same merge on the same data. One
    host sync: the sizes, read at once.
    """
    world = dist.get_world_size(group)
    n = torch.full((1,), a.shape[0], device=a.device, dtype=torch.int64)  # torch.tensor(..., device=) would block
    gathered = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(gathered, n, group=group)
    sizes: list[int] = torch.cat(gathered).tolist()
    out = []
    for t in (a, y):                                               # labels stay int64: exact for any K
        padded = t.new_zeros((max(sizes),) + t.shape[1:])
        padded[: t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded, group=group)
        out.append(torch.cat([p[:s] for p, s in zip(parts, sizes)]))
    return out[0], out[1]
