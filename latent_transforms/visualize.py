"""Grids of images with a label per row (originals, then what each method made of them): a file, or a PIL image
that a notebook shows inline."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from .validation import WrongTypeError, check_count, check_images, expanded_path

__all__ = ["save_rows", "draw_rows"]


def save_rows(rows: dict[str, torch.Tensor], path: str | Path, cell: int = 48, label_width: int = 150) -> Path:
    """Write ``draw_rows(rows, cell, label_width)`` to ``path`` (its extension names the format; a leading ``~``
    expanded); returns the path written."""
    path = expanded_path(path, f"path {str(path)!r}")
    if path.suffix.lower() not in Image.registered_extensions():  # else PIL's "unknown file extension: " at the end
        raise ValueError(f"path must end in an image format's extension, such as .png: got {str(path)!r}")
    canvas = draw_rows(rows, cell, label_width)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def draw_rows(rows: dict[str, torch.Tensor], cell: int = 48, label_width: int = 150) -> Image.Image:
    """A labelled grid as a PIL image: one row per entry of ``rows``, ``{label: images}`` with images (N, C, H, W) in
    [0, 1], C 1 or 3, upscaled to ``cell`` pixels high (and ``cell * W / H`` wide), after ``label_width`` pixels for
    the label. A notebook cell ending in it shows the grid inline."""
    if not isinstance(rows, Mapping):  # a list gave "'list' object has no attribute 'items'"
        raise WrongTypeError(f"rows must be a dict {{label: images}}, got {type(rows).__name__}: one entry per row, "
                             f"such as {{'input': x, 'augmented': x2}}")
    if not rows:
        raise ValueError("rows is empty: give at least one {label: images} entry")
    for label, images in rows.items():
        if not isinstance(label, str):  # PIL's "'int' object has no attribute 'split'" when it drew the label
            raise WrongTypeError(f"rows' labels must be str, got {type(label).__name__} {label!r}")
        check_images(images, f"rows[{label!r}]")
        if images.shape[1] not in (1, 3):
            raise ValueError(f"rows[{label!r}] must have 1 or 3 channels, got shape {tuple(images.shape)}")
    check_count("cell", cell, 1)
    check_count("label_width", label_width, 0)
    pad = 2
    # each row's image width: a non-square image keeps its shape, not stretched to a square
    widths = [max(1, round(cell * v.shape[-1] / v.shape[-2])) for v in rows.values()]
    width = label_width + max(len(v) * (w + pad) for v, w in zip(rows.values(), widths))
    canvas = Image.new("RGB", (width, len(rows) * (cell + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, ((label, images), w) in enumerate(zip(rows.items(), widths)):
        top = r * (cell + pad)
        draw.text((4, top + cell // 2 - 6), label, fill="black")
        images = images.detach().float().cpu().clamp(0, 1)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        big = F.interpolate(images, size=(cell, w), mode="nearest")
        for i, img in enumerate(big):
            array = (img.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
            canvas.paste(Image.fromarray(array), (label_width + i * (w + pad), top))
    return canvas
