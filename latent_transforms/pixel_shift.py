"""Per-sample random translation and horizontal flip as one gather on the data's device.

Used to augment the images a codec is trained on (``train_codec(translate=..., flips=...)``, reflection padding: a
flow would otherwise spend capacity on black borders that no test image has) and by the accuracy benchmark's
crop+flip baseline (zero padding, the usual CIFAR recipe).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .rng import draw_generator
from .validation import check_bool, check_choice, check_count, check_image_shape, image_side

__all__: list[str] = []  # the package's own machinery: none of it is API (docs/api.md)

_PADDING_MODES = ("zeros", "reflect")


def random_shift_flip(x: torch.Tensor, max_shift: int, flips: bool, padding: str = "zeros",
                      generator: torch.Generator | int | None = None) -> torch.Tensor:
    """Shift each image by its own random (dy, dx) in ``[-max_shift, max_shift]`` and flip it with probability 1/2.

    ``x: (B, C, H, W)`` -> ``(B, C, H, W)``, same device and dtype. Pixels shifted in come from ``padding``:
    ``"zeros"`` or ``"reflect"`` (mirrored without repeating the edge; needs ``max_shift < min(H, W)``). Draws
    ``dy``, ``dx`` (each ``(B, 1)``, skipped when ``max_shift`` is 0) then the flips (``(B, 1)`` uniforms, skipped
    when ``flips`` is False) from ``generator``: torch's global generator if None, a new one seeded with an ``int``
    seed, or a ``torch.Generator``, which must be on ``x``'s device. With neither shifts nor flips, returns ``x``
    itself.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    check_image_shape(x, allow_empty=True)  # C = 0: reflection padding raised torch's own error
    check_choice("padding", padding, _PADDING_MODES)
    check_bool("flips", flips)
    b, _, h, w = x.shape
    max_shift = check_count("max_shift", max_shift)
    if padding == "reflect" and max_shift >= min(h, w):
        raise ValueError(f"max_shift must be < {min(h, w)} ({image_side(h, w)}) with reflection padding, got "
                         f"{max_shift}")
    generator = draw_generator(generator, x.device)  # checked before the shortcut, as the other arguments
    if max_shift == 0 and not flips:
        return x
    p, dev = max_shift, x.device
    rows = torch.arange(h, device=dev).expand(b, h)                              # (B, H)
    cols = torch.arange(w, device=dev).expand(b, w)                              # (B, W)
    if p:
        x = F.pad(x, (p, p, p, p), mode="constant" if padding == "zeros" else "reflect")
        rows = rows + torch.randint(0, 2 * p + 1, (b, 1), generator=generator, device=dev)
        cols = cols + torch.randint(0, 2 * p + 1, (b, 1), generator=generator, device=dev)
    if flips:
        flip = torch.rand(b, 1, generator=generator, device=dev, dtype=torch.float32) < 0.5
        cols = torch.where(flip, cols.flip(1), cols)
    out = x.permute(0, 2, 3, 1)[torch.arange(b, device=dev).view(b, 1, 1), rows.unsqueeze(2), cols.unsqueeze(1)]
    return out.permute(0, 3, 1, 2).contiguous()
