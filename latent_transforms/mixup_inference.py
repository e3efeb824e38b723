"""Latent mixup inference: predict by averaging over mixes of the input with clean references in latent space."""
from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from .base import SampleStats, keep_plausible, one_line_repr
from .casts import TensorFn, without_16_bit_casts
from .codecs import Codec, resolve_codec
from .codecs.base import ChecksCodecStates
from .modelutils import borrowed, logits_of, probabilities
from .rng import GeneratorSource, generator_repr
from .validation import (Settings, check_images, check_items, check_model, check_number, fixed_at_construction,
                         setting, values_read)

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["LatentMixupInference"]


def _checked_model(name: str, model: object) -> nn.Module:
    """``model`` if it is an ``nn.Module`` (``check_model``'s message), as ``setting`` checks it."""
    check_model(model)
    return cast(nn.Module, model)  # check_model refused anything else


class LatentMixupInference(Settings, ChecksCodecStates, SampleStats, nn.Module):
    """Mixup inference in a codec's latent space: ``probs = mean_k softmax(model(decode(lam * z + (1 - lam) *
    z_ref_k)))`` over ``num_mixes`` references.

    Mixup Inference (Pang et al., ICLR 2020) moved to a codec's latent space, as VarMixup suggests for robust
    inference: mixing shrinks a perturbation of the input by ``lam`` while the clean reference keeps the image on
    the data manifold. It helps when inputs carry perturbations or corruptions the model was not trained on and
    the model was trained with (Var)Mixup, so that it behaves linearly between samples; on clean inputs it costs
    some accuracy and ``num_mixes`` forward passes (+ one decode each).

    Args:
        model: the classifier, a submodule as in any wrapper (``.to()`` moves and casts it, ``state_dict()`` holds
            its weights; a cast to 16 bits keeps the codec and the reference latents in float32); each call borrows
            it unchanged (eval mode, no gradients, its mode restored after).
        codec: hub name, path or Codec.
        references: (N, C, H, W) float in [0, 1] clean images to mix with (e.g. a few hundred training images).
        lam: weight of the input, in (0, 1] (0.6 by default: the input dominates).
        num_mixes: references per input (8 by default).
        generator: ``None``, an ``int`` seed or a ``torch.Generator`` for drawing the references.

    Shape:
        x: (B, C, H, W) float in [0, 1] -> (B, K) probabilities, float32 (float64 for a float64 model); B may be 0.

    Convention:
        Predicts in train and eval mode alike. A decoded mix that is non-finite or more than 0.5 outside [0, 1]
        before clipping is replaced by the input itself (the model sees ``x`` for that mix), as the transforms
        reject implausible decodes; the others are clipped to [0, 1]. ``stats`` counts decoded mixes, in both
        modes: ``seen`` (``num_mixes`` per input), ``transformed`` (kept), ``rejected`` (replaced by the input).
        ``reference_latents``, ``(N, D)`` in the codec's dtype, the references encoded once: a buffer, in
        ``state_dict``.
    """

    reference_latents: torch.Tensor  # a buffer
    lam = setting("lam", check_number, high=1.0, low_open=True)  # 0: a prediction from the references alone
    num_mixes = setting("num_mixes", check_items, (), dtype=torch.int64)  # its draws: (num_mixes, B) int64
    model = setting("model", _checked_model, module=True)

    def __init__(self, model: nn.Module, codec: Codec | str, references: torch.Tensor, *, lam: float = 0.6,
                 num_mixes: int = 8, generator: torch.Generator | int | None = None):
        super().__init__()
        self.lam, self.num_mixes, self.model = lam, num_mixes, model  # settings: checked whenever set
        check_images(references, "references")
        self._modules["codec"] = resolve_codec(codec)
        self.codec.check_images(references, "references")
        self._rng = GeneratorSource(generator)
        # not an inference tensor, which load_state_dict could not write (inference_mode(False) enables grad: first);
        # the references' values read above, once
        with torch.inference_mode(False), torch.no_grad(), values_read():
            self.register_buffer("reference_latents", self.codec.encode_flat(references))

    @property
    def codec(self) -> Codec:
        """The codec, fixed at construction: it encoded the references (assigned as a plain submodule, the new codec's
        latents were mixed with the old one's)."""
        return cast(Codec, self._modules["codec"])

    @codec.setter
    def codec(self, codec: object) -> None:
        if codec is not self.codec:  # the same one back: nothing to refuse
            raise fixed_at_construction(self, "codec", "it encoded the references' latents",
                                        "build a new LatentMixupInference(model, codec, references)")

    def _apply(self, fn: TensorFn, recurse: bool = True) -> Self:
        # a 16-bit cast (.half(), Lightning's precision="bf16-true") casts the model, but the reference latents, as
        # the codec, keep their dtype: only they are this module's own tensors
        if recurse:
            for module in self.children():
                module._apply(fn)
        return cast("Self", super()._apply(without_16_bit_casts(fn), recurse=False))

    def extra_repr(self) -> str:
        return (f"lam={self.lam}, num_mixes={self.num_mixes}, references={self.reference_latents.shape[0]}, "
                f"model={type(self.model).__name__}, codec={type(self.codec).__name__}"
                + generator_repr(self._rng.spec))

    __repr__ = one_line_repr

    if TYPE_CHECKING:  # nn.Module's __call__ returns Any
        def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """probs = t(x) for ``x: (B, C, H, W)`` float in [0, 1] of the codec's image shape (``B = 0`` too): ``(B, K)``
        probabilities (float32; float64 for a float64 model), the mean over ``num_mixes`` mixes, in train and eval
        mode alike, without gradient."""
        check_images(x, allow_empty=True)
        self.codec.check_images(x, allow_empty=True)
        check_model(self.model, x)
        if x.shape[0] == 0:  # B = 0 (a sampler's empty shard): the model's (0, K), nothing drawn nor counted
            with borrowed(self.model, "LatentMixupInference's model") as net:
                return probabilities(logits_of(net, x, "LatentMixupInference"))
        with values_read():  # read by check_images above
            z = self.codec.encode_flat(x)
        refs, codec, lam, num_mixes = self.reference_latents, self.codec, self.lam, self.num_mixes  # read once
        pick = torch.randint(0, refs.shape[0], (num_mixes, x.shape[0]), generator=self._rng.get(x.device), device=x.device)
        probs: torch.Tensor | int = 0
        with borrowed(self.model, "LatentMixupInference's model") as net:
            for k in range(num_mixes):
                mixed = lam * z + (1 - lam) * refs[pick[k]]
                xk, ok = keep_plausible(codec.decode_flat(mixed), x)
                logits = logits_of(net, xk.to(x.dtype), "LatentMixupInference")
                self._count(x.device, x.shape[0], ok.sum(), (~ok).sum())  # once the model took it
                probs = probs + probabilities(logits)
        return cast(torch.Tensor, probs) / num_mixes  # num_mixes >= 1: a tensor
