"""Label forms and label mixing, shared by every method that mixes samples.

Convention (as torchvision v2 MixUp/CutMix): ``(B,)`` int64 class indices or ``(B, K)`` probabilities,
both accepted by ``F.cross_entropy``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .validation import bad_option, check_count, check_label_form, describe

__all__ = ["mix_labels", "to_soft"]


def num_classes_of(y: torch.Tensor, num_classes: int | None) -> int | None:
    """The number of classes implied by soft labels, else ``num_classes``."""
    return y.shape[1] if y.ndim == 2 else num_classes


def check_labels_fit(y: torch.Tensor, k: int, who: str) -> None:
    """Raise unless labels ``y`` (checked already: ``(B,)`` int64 or ``(B, K)``, ``B >= 1``) address a model's ``k``
    outputs, which ``who`` (the caller, named in the message) gives them to; reads ``y``'s maximum (a host sync)."""
    if y.ndim == 2 and y.shape[1] != k:
        raise ValueError(f"{who}: soft labels y have {y.shape[1]} columns but the model has {k} outputs")
    if y.ndim == 1 and int(y.max()) >= k:
        raise ValueError(f"{who}: labels y must be class indices in [0, {k}) for the model's {k} outputs, got "
                         f"{int(y.max())}")


def check_returned_labels_fit(y: torch.Tensor, k: int, who: str, step: str) -> None:
    """Raise unless labels ``y`` that ``step`` (fit_classifier's ``augment``) returned from labels that passed
    ``check_labels_fit`` fit a model's ``k`` outputs: soft labels of another width, named with the way out; no host
    sync (class indices are not read), so it can run every batch."""
    if y.ndim == 2 and y.shape[1] != k:
        raise ValueError(f"{who}: {step} returned soft labels of {y.shape[1]} classes for the model's {k} outputs: "
                         f"build it with num_classes={k}")


def to_soft(y: torch.Tensor, num_classes: int | None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``y: (B,)`` int64 -> ``(B, K)`` one-hot probabilities in ``dtype`` (float32 by default), ``K = num_classes``
    (``None`` refused for them); ``(B, K)`` soft labels are returned as given (their own dtype)."""
    if y.ndim == 2:
        return y
    if num_classes is None:
        raise ValueError("integer labels must be made soft for mixing, which needs num_classes=...")
    num_classes = check_count("num_classes", num_classes, low=1)  # one_hot's -1 infers it from y's values
    if y.dtype != torch.int64:  # torch's one_hot said "only applicable to index tensor of type LongTensor"
        raise ValueError(f"y class indices must be int64 to be made soft labels, got {y.dtype}")
    return F.one_hot(y, num_classes).to(dtype)


def blend(a: torch.Tensor, b: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``lam * a + (1 - lam) * b`` per row: a, b: (B, K) soft labels; lam: (B,) weights of ``a`` in [0, 1]."""
    lam = lam.to(a.dtype).unsqueeze(1)
    return lam * a + (1 - lam) * b


def mix_labels(y: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor, num_classes: int | None) -> torch.Tensor:
    """Soft labels ``lam * y + (1 - lam) * y[partner]``.

    y: (B,) or (B, K); partner: (B,) int64 indices into the batch; lam: (B,) weights in [0, 1]; num_classes: K,
    needed for (B,) labels (a soft ``y`` must have that K if it is given). Returns (B, K) float.
    """
    tensors = isinstance(partner, torch.Tensor) and isinstance(lam, torch.Tensor)
    n = partner.shape[0] if tensors and partner.ndim == 1 else -1
    if n < 0 or partner.dtype != torch.int64 or lam.shape != (n,):  # shapes only: no value is read (no host sync)
        raise bad_option(f"partner must be (B,) int64 indices into the batch and lam (B,) weights in [0, 1], got "
                         f"partner {describe(partner)} and lam {describe(lam)}", right_type=tensors)
    check_label_form(y, n, num_classes, batch_name="partner")
    soft = to_soft(y, num_classes)
    return blend(soft, soft[partner], lam)
