"""Module casts that leave some tensors in their dtype: a 16-bit cast of a module holding a codec or ISDA's
statistics (``.half()``, ``.to(torch.bfloat16)``, Lightning's ``precision="bf16-true"``) only moves those."""
from __future__ import annotations

from typing import Callable

import torch

from .validation import wide_float

__all__: list[str] = []  # the package's own machinery: none of it is API (docs/api.md)

TensorFn = Callable[[torch.Tensor], torch.Tensor]  # what nn.Module._apply applies to each tensor


def without_16_bit_casts(fn: TensorFn) -> TensorFn:
    """``fn``, the tensor function of ``nn.Module._apply`` (``.to(...)``, ``.half()``, ``.cuda()``, ...), with its casts
    to float16 or bfloat16 left out (such tensors are only moved to its device): for weights and statistics that
    must stay in their dtype when a module holding them is cast to 16 bits (``.half()``, Lightning's
    ``precision="bf16-true"``). A float64 tensor moved to a device that has no float64 (MPS) becomes float32 there
    (ISDA's float64 schedule progress made ``model.to("mps")`` a ``TypeError``)."""
    def keeping_the_dtype(t: torch.Tensor) -> torch.Tensor:
        # a float64 tensor probed in float32: not even an empty float64 tensor can go to MPS
        probe = torch.empty(0, dtype=torch.float32 if t.dtype == torch.float64 else t.dtype, device=t.device)
        target = fn(probe)
        if t.dtype == torch.float64 and wide_float(target.device) != torch.float64:
            return t.float().to(target.device)  # cast where it is, then moved
        return t.to(target.device) if target.dtype in (torch.float16, torch.bfloat16) else fn(t)

    return keeping_the_dtype
