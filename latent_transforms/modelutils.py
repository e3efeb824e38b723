"""Borrowing the classifier without changing it: mode, BatchNorm statistics and gradients stay as they were."""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn
from torch.nn.parallel import DistributedDataParallel


def unwrap(model: nn.Module) -> nn.Module:
    """The local module of a DDP/DataParallel wrapper (an attack needs no gradient sync), else ``model``."""
    while isinstance(model, (DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


@contextlib.contextmanager
def borrowed(model: nn.Module) -> Iterator[nn.Module]:
    """Use ``model`` in eval mode (no BatchNorm statistic updates) with parameter gradients off.

    Every module's train/eval flag and every parameter's ``requires_grad`` are restored on exit, also when
    an exception is raised inside. Existing ``.grad`` tensors are never touched.
    """
    model = unwrap(model)
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)
