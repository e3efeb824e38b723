"""A small, honest training loop and metrics, shared by the demo and the benchmarks."""
from __future__ import annotations

import collections.abc
import math
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .isda import ISDA
from .labels import check_labels_fit, check_returned_labels_fit
from .modelutils import borrowed, logits_of, probabilities
from .progress import progress_bar
from .torch_defaults import cpu_as_default_device
from .validation import (bad_option, check_count, check_images, check_items, check_labels, check_model, check_number,
                         describe, no_autocast, row_sum_tolerance, wide_float)

__all__ = ["fit_classifier", "predict_proba", "accuracy", "expected_calibration_error", "reliability_bins",
           "ece_of_bins"]

_BIN_SUMS = ("count", "confidence_sum", "correct_sum")  # reliability_bins' keys, each (bins,)

Augment = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def fit_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, augment: Augment | None = None, *,
                   epochs: int = 30, batch_size: int = 64, lr: float = 0.05, weight_decay: float = 5e-4,
                   seed: int = 0, pixel_augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   autocast_dtype: torch.dtype | None = None,
                   desc: str = "train", progress: bool = True) -> float:
    """Train ``model`` on (x, y) with SGD + one-cycle LR; ``augment(x, y, model)`` runs on every batch.

    x: (N, C, H, W) float in [0, 1] on the model's device; y: (N,) int64. ``epochs`` passes in batches of
    ``batch_size``, shuffled by ``seed``; Nesterov SGD with ``weight_decay``, its LR peaking at ``lr``.
    ``pixel_augment`` (e.g. a flip/crop) runs before ``augment``. Every ``ISDA`` in ``augment`` (also inside a
    ``Compose``) follows the official schedule: ``set_epoch(epoch, epochs)`` at the start of each epoch.
    ``autocast_dtype`` (e.g. torch.bfloat16 on a GPU) runs the classifier's forward under autocast. ``desc`` labels
    the per-epoch progress bar, shown if ``progress``. Returns the wall time in seconds.
    """
    check_images(x)
    check_model(model, x, "fit_classifier's model")  # None or a function: torch's AttributeError at .parameters()
    check_labels(y, len(x))
    check_count("epochs", epochs, low=1)
    check_count("batch_size", batch_size, low=1)
    check_number("lr", lr, low_open=True)
    check_number("weight_decay", weight_decay)
    g = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(x) / batch_size)
    with cpu_as_default_device():  # torch 2.6 to 2.8 import torch._dynamo at a first optimizer: not under "meta"
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    total = epochs * steps_per_epoch
    # OneCycleLR divides by its warm-up length pct_start * total - 1: keep it > 0 for short runs (a single step: constant)
    sched = (torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=max(0.25, 1.5 / total))
             if total > 1 else None)
    start = time.perf_counter()
    model.train()
    if augment is not None and isinstance(augment, nn.Module):
        augment.train()
    schedules = [m for m in augment.modules() if isinstance(m, ISDA)] if isinstance(augment, nn.Module) else []
    bar = progress_bar(range(epochs), desc=desc, leave=False, disable=not progress)
    for epoch in bar:
        for isda in schedules:
            isda.set_epoch(epoch, epochs)
        order = torch.randperm(len(x), generator=g, device="cpu").to(x.device)
        for i in range(steps_per_epoch):
            idx = order[i * batch_size:(i + 1) * batch_size]
            xb, yb = x[idx], y[idx]
            if pixel_augment is not None:
                xb = pixel_augment(xb)
            if augment is not None:
                xb, yb = augment(xb, yb, model)
            with (no_autocast(x.device) if autocast_dtype is None
                  else torch.autocast(x.device.type, dtype=autocast_dtype)):
                logits = logits_of(model, xb, "fit_classifier")  # a tuple, or one output, is refused by name
                if epoch == i == 0:  # once (a host sync): labels beyond the model's outputs were torch's IndexError
                    check_labels_fit(y, logits.shape[1], "fit_classifier")
                # soft labels of another width met torch's "0D or 1D target tensor expected"
                check_returned_labels_fit(yb, logits.shape[1], "fit_classifier", "augment")
                loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)  # shown at the next tick the bar writes
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    return time.perf_counter() - start


@torch.no_grad()
def predict_proba(model: nn.Module, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """(N, K) softmax probabilities, at least float32 (float32 of 16-bit logits too, float64 of a float64 model's, as
    ``LatentMixupInference``'s), of the model's outputs on ``x`` (whatever the model takes), in eval mode (every
    module's mode is restored, a frozen BatchNorm stays frozen).

    ``batch_size``: images per forward pass; by default 1024 on an accelerator and 128 on the CPU, where smaller
    batches stay in cache (a width-16 CIFAR ResNet-18 on one thread: 2.4x faster than at 1024 on 2026-11-30, 1.5x to
    2.0x on a busy 2-core Intel Xeon on 2026-12-06).
    N may be 0 (a rank's empty shard): the model's ``(0, K)``, as ``LatentMixupInference`` gives.
    """
    if not isinstance(x, torch.Tensor) or not x.ndim:  # 0-d: torch's "len() of a 0-d tensor"
        tensor = isinstance(x, torch.Tensor)
        raise bad_option(f"x must be a batch (B, ...), got {describe(x) if tensor else type(x).__name__}",
                         right_type=tensor)
    if batch_size is None:
        batch_size = 128 if x.device.type == "cpu" else 1024
    check_count("batch_size", batch_size, low=1)
    # N = 0: one forward of the empty batch, for K (torch.cat of no batches raised)
    with borrowed(model, "predict_proba's model") as net:
        return torch.cat([probabilities(logits_of(net, x[i:i + batch_size], "predict_proba"))
                          for i in range(0, len(x) or 1, batch_size)])


def _check_predictions(probs: torch.Tensor, y: torch.Tensor, allow_empty: bool = False) -> None:
    """``probs: (N, K)`` probabilities (rows in [0, 1] summing to 1, not logits), ``y: (N,)`` int64 in ``[0, K)``;
    N may be 0 where ``allow_empty``."""
    if (not isinstance(probs, torch.Tensor) or probs.ndim != 2 or not probs.is_floating_point()
            or not probs.shape[1] or not (len(probs) or allow_empty)):  # K = 0: no class to predict
        raise bad_option(f"probs must be a {'' if allow_empty else 'non-empty '}(N, K) float tensor, got "
                         f"{tuple(probs.shape) if isinstance(probs, torch.Tensor) else type(probs).__name__}",
                         right_type=isinstance(probs, torch.Tensor))
    lo, hi, worst = (torch.stack([probs.min(), probs.max(), (probs.float().sum(1) - 1).abs().max()]).float().tolist()
                     if len(probs) else (0.0, 0.0, 0.0))  # no rows (a rank's shard all padding): nothing to check
    if not (lo >= 0 and hi <= 1 and worst <= row_sum_tolerance(probs.dtype, mixes=False)):  # NaN fails; bf16 rows pass
        raise ValueError(f"probs must be probabilities (rows in [0, 1] summing to 1; softmax logits first), got "
                         f"values in [{lo:.4g}, {hi:.4g}] and a row sum off by {worst:.3g}")
    if isinstance(y, torch.Tensor) and (y.ndim != 1 or len(y) != len(probs)):
        raise ValueError(f"y must be (N,) class indices with N={len(probs)} (the rows of probs), got shape "
                         f"{tuple(y.shape)}")
    check_labels(y, len(probs), probs.shape[1], batch_name="probs")


def accuracy(probs: torch.Tensor, y: torch.Tensor) -> float:
    """Share of rows whose most probable class is ``y``: probs (N, K), y (N,) int64."""
    _check_predictions(probs, y)
    return float((probs.argmax(1) == y).float().mean())


def reliability_bins(probs: torch.Tensor, y: torch.Tensor, bins: int = 15) -> dict[str, torch.Tensor]:
    """Per equal-width confidence bin ``(lo, hi]``: ``count``, ``confidence_sum`` and ``correct_sum``, each ``(bins,)``
    float64 (float32 on MPS, which has no float64; sums, so that runs and ranks can be pooled); probs (N, K), y (N,)
    int64. N may be 0 (a rank's batch of padding only): zeros."""
    return _bin_sums(probs, y, bins, allow_empty=True)


def _bin_sums(probs: torch.Tensor, y: torch.Tensor, bins: int, allow_empty: bool) -> dict[str, torch.Tensor]:
    """``reliability_bins``; N = 0 refused unless ``allow_empty`` (the ECE of no samples is undefined)."""
    _check_predictions(probs, y, allow_empty)
    dtype = wide_float(probs.device)  # float32 (MPS) counts stop at 2^24 samples
    bins = check_items("bins", bins, (3,), dtype=dtype)  # three sums per bin
    conf, pred = probs.max(1)
    # binned in float32 at least (bf16's conf * bins landed in the wrong bin), float64 ones in float64 (rounded to
    # float32, a confidence just above an edge fell to the bin below); against the edges k / bins in that dtype, so
    # that one on an edge goes to the bin below, (lo, hi], and 0 to the first
    conf = conf.to(torch.promote_types(conf.dtype, torch.float32))
    edges = (torch.arange(1, bins, device=probs.device, dtype=dtype) / bins).to(conf.dtype)  # (bins - 1,)
    idx = torch.bucketize(conf, edges)
    sums = torch.zeros(3, bins, dtype=dtype, device=probs.device)
    sums[0].index_add_(0, idx, torch.ones_like(conf, dtype=dtype))
    sums[1].index_add_(0, idx, conf.to(dtype))
    sums[2].index_add_(0, idx, (pred == y).to(dtype))
    return dict(zip(_BIN_SUMS, sums))


def expected_calibration_error(probs: torch.Tensor, y: torch.Tensor, bins: int = 15) -> float:
    """ECE with ``bins`` equal-width confidence bins (15 is the usual default): probs (N, K), y (N,) int64.

    The bins' confidence-accuracy gaps weighted by their share of the samples: ``sum |conf_sum - correct_sum| / N``.
    """
    return ece_of_bins(_bin_sums(probs, y, bins, allow_empty=False))


def ece_of_bins(bins: dict[str, torch.Tensor]) -> float:
    """The ECE of ``bins``, ``reliability_bins``' sums: one run's, or several runs' or ranks' summed key by key
    (pooled with ``all_reduce``), ``sum |confidence_sum - correct_sum| / sum count``."""
    mapping = isinstance(bins, collections.abc.Mapping)
    if not mapping or not all(k in bins for k in _BIN_SUMS):
        raise bad_option(f"bins must be reliability_bins' dict of {', '.join(_BIN_SUMS)}, got "
                         f"{list(bins) if mapping else type(bins).__name__}", right_type=mapping)
    shapes = [tuple(bins[k].shape) if isinstance(bins[k], torch.Tensor) else type(bins[k]).__name__ for k in _BIN_SUMS]
    if len(set(shapes)) > 1 or not isinstance(shapes[0], tuple) or len(shapes[0]) != 1:
        raise ValueError(f"bins' {', '.join(_BIN_SUMS)} must be (bins,) tensors of one length (reliability_bins' "
                         f"sums, pooled key by key over runs with the same bins), got {', '.join(map(str, shapes))}")
    n = bins["count"].sum()
    if not n:
        raise ValueError("the bins hold no samples: the ECE of none is undefined")
    return float((bins["confidence_sum"] - bins["correct_sum"]).abs().sum() / n)
