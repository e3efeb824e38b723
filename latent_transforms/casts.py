"""Module casts that leave some tensors in their dtype: a 16-bit cast of a module holding a codec or ISDA's
statistics (``.half()``, ``.to(torch.bfloat16)``, Lightning's ``precision="bf16-true"``) only moves those."""
from __future__ import annotations

import torch


def without_16_bit_casts(fn):
    """``fn``, the tensor function of ``nn.Module._apply`` (``.to(...)``, ``.half()``, ``.cuda()``, ...), with its casts
    to float16 or bfloat16 left out (such tensors are only moved to its device): for weights and statistics that
    must stay in their dtype when a module holding them is cast to 16 bits (``.half()``, Lightning's
    ``precision="bf16-true"``)."""
    def keeping_the_dtype(t: torch.Tensor) -> torch.Tensor:
        target = fn(torch.empty(0, dtype=t.dtype, device=t.device))
        return t.to(target.device) if target.dtype in (torch.float16, torch.bfloat16) else fn(t)

    return keeping_the_dtype
