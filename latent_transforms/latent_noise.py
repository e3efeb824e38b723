"""LatentNoise: random semantic perturbations in a flow's latent space (Yuksel et al., ICCV 2021, "LA-rand")."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .codec_transform import CodecTransform
from .latent_cache import LatentCache
from .codecs import Codec
from .perturbation import NORMS, random_perturbation
from .validation import check_choice, check_number, setting

__all__ = ["LatentNoise"]


# the eps 10 calibrated with glow-cifar10 (L2, over its 3,072 coordinates), per coordinate: the default for any codec
_DEFAULT_EPS_PER_COORDINATE = 10.0 / math.sqrt(3 * 32 * 32)


def default_eps(norm: str | None, coordinates: int) -> float:
    """The default noise size: ``_DEFAULT_EPS_PER_COORDINATE`` per coordinate, so an L2 norm of
    ``_DEFAULT_EPS_PER_COORDINATE * sqrt(coordinates)`` (10 for 3x32x32, 1.443 for 1x8x8); 4 significant digits."""
    eps = _DEFAULT_EPS_PER_COORDINATE * (math.sqrt(coordinates) if norm == "l2" else 1.0)
    return float(f"{eps:.4g}")


class LatentNoise(CodecTransform):
    """Encode, add random noise of size ``eps`` to the standardised latent, decode, clip to [0, 1]. Labels unchanged.

    Args:
        codec: hub name, ``.safetensors`` path or ``Codec`` (default ``"glow-cifar10"``).
        eps: noise size in standardised latent units. ``norm="l2"``: a uniformly random direction of L2 norm exactly
            ``eps`` over the perturbed coordinates; ``"linf"``: N(0, eps^2) clipped to [-eps, eps]; ``None``:
            N(0, eps^2). Default: 0.18 per perturbed coordinate (``default_eps()``): with L2, 10 for a 32x32 RGB
            flow such as ``glow-cifar10`` (3,072 coordinates), 1.443 for the 64 of ``glow-digits``, 2.041 for the
            128 of ``vae-cifar10``; computed here, once: a ``norm``, ``levels`` or ``codec`` assigned later keeps
            it (``t.norm = None`` then draws N(0, eps^2), eps the L2 default, per coordinate). 10 was chosen on a
            validation split with the first ``glow-cifar10`` and kept for the current one, where the official
            CIFAR-10 setting ``eps=20`` (about 0.36 per coordinate of 3,072) cost 5 to 6 points of accuracy; no eps
            measurably helped with either (docs/calibration.md). The same L2 eps is a larger change in fewer
            dimensions: 10 on ``glow-digits`` made a digit classifier's accuracy fall from 97% to 36%.
        norm: ``"l2"`` (default), ``"linf"`` or ``None``.
        levels: latent levels to perturb (all jointly by default, as the paper).
        cache: a ``LatentCache`` of the training images; call with ``index=`` to skip encoding.
        p: probability, per sample, of being transformed (default 1.0; see ``LatentTransform``).
        generator: ``None``, an ``int`` seed or a ``torch.Generator`` (see ``LatentTransform``).

    Shape:
        x: (B, C, H, W) float in [0, 1] matching the codec; y: (B,) or (B, K), returned as given: its form is
        checked (and a negative index refused), not its classes, which this method does not know (it takes no model):
        an index beyond the classifier's passes through, unless a ``Compose(..., num_classes=K)`` holds it
        (docs/reliability.md#labels).

    Convention:
        ``eps=0`` returns x to the codec's round-trip accuracy, which depends on the images: glow-cifar10 gives
        CIFAR-10 test images back within 1.5e-5 (1.7e-5 on an AVX-512 host, docs/checkpoints.md; 3.5e-5 for one of
        the first 2,048 on an AMD EPYC host without AVX-512) but uniform noise only within ~0.04-0.9 (an image's
        largest pixel error; 0.06-0.34 for 90% of 768 ``torch.rand`` images on one host, 0.08-0.40 on the EPYC: the
        flow amplifies rounding on such images), images far from what it was trained on (the official code returns
        ``0.05 + 0.9 x``).
        Samples whose decode is non-finite or more than 0.5 outside [0, 1] before clipping are returned unchanged
        and counted in ``stats``.
        Identity in ``eval()`` mode. ``last_params["delta"]`` holds the last (N, D) perturbation of the ``N`` selected
        samples (``last_params["selected"]``).
    """

    eps = setting("eps", check_number)
    norm = setting("norm", check_choice, NORMS + (None,))

    def __init__(self, codec: Codec | str = "glow-cifar10", eps: float | None = None, *, norm: str | None = "l2",
                 levels: Sequence[int] | None = None, cache: LatentCache | None = None, p: float = 1.0,
                 generator: torch.Generator | int | None = None):
        self.norm = norm  # settings: checked whenever set, here before the codec is loaded
        if eps is not None:
            self.eps = eps
        super().__init__(codec, levels=levels, cache=cache, p=p, generator=generator)
        if eps is None:
            self.eps = default_eps(norm, self.level_size())

    def extra_repr(self) -> str:
        return f"eps={self.eps}, norm={self.norm!r}, " + super().extra_repr()

    def make_params(self, n: int, generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
        shape = torch.Size((n, self.level_size()))
        return {"delta": self.on_levels_only(random_perturbation(shape, self.eps, self.norm, generator, device,
                                                                 self.codec.dtype))}

    def transform(self, x: torch.Tensor, y: torch.Tensor | None, model: nn.Module | None,
                  params: dict[str, torch.Tensor], index: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
        z = self.encode_flat(x, index)
        with torch.no_grad():
            return self.decode_flat(z + params["delta"]), y
