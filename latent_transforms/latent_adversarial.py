"""LatentAdversarial: PGD in a flow's latent space against the classifier (Yuksel et al., ICCV 2021, "LA-adv")."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from .codec_transform import CodecTransform
from .labels import check_labels_fit
from .latent_cache import LatentCache
from .codecs import Codec
from .modelutils import borrowed, logits_of
from .perturbation import NORMS, ascent_direction, project, random_start, scaled_to_unit_max
from .validation import check_bool, check_choice, check_count, check_number, setting

__all__ = ["LatentAdversarial"]


class LatentAdversarial(CodecTransform):
    """Projected gradient ascent on the classifier's cross-entropy in the standardised latent, within an eps-ball.

    Per batch: ``z = encode(x)``; ``delta`` starts at 0 or at a random point of the ball (``random_start``); ``steps`` times
    ``delta <- project(delta + step_size * direction(grad CE(model(decode(z + delta)), target)))``; return
    ``decode(z + delta)`` clipped to [0, 1] with the labels unchanged.

    Args:
        codec: hub name, path or Codec (default ``"glow-cifar10"``).
        eps: radius of the ball in standardised latent units (default 1.0, the official CIFAR-10 README example).
        steps: PGD steps (default 1); the cost grows linearly with them. The official CIFAR-10 setting is 3 steps
            of 0.5; on a validation split with ``glow-cifar10`` one step of 1.0 did as well (+3.6 points over
            crop+flip with the shipped flow, +4.1 with the first release, mean of 2 seeds; 3 steps: +1.5 with the
            first release) at about half the cost. ``0`` keeps the start: a random point of the ball, or with
            ``random_start=False`` the codec's round trip.
        step_size: size of each step (default 1.0).
        norm: ``"l2"`` (default) or ``"linf"``: the ball, the step direction and the random start.
        random_start: start (default ``True``) from U(-eps, eps) per coordinate projected onto the ball, as the
            official code, instead of 0; over the chosen coordinates when ``levels`` is given. With ``l2`` in D
            dimensions that point is (almost always) on the sphere.
        target: ``"pred"`` (default) attacks the model's own prediction on the clean image (official, avoids label
            leaking; ``y`` may then be ``None``); ``"true"`` attacks the given labels (the paper's MNIST notebook).
        levels: latent levels to perturb (all jointly by default).
        cache: a ``LatentCache`` of the training images; call with ``index=`` to skip encoding.
        p: probability, per sample, of being transformed (default 1.0; see ``LatentTransform``).
        generator: ``None``, an ``int`` seed or a ``torch.Generator`` (see ``LatentTransform``).

    Shape:
        x: (B, C, H, W) float in [0, 1] matching the codec; y: (B,) int64 or (B, K) float, returned as given (or
        ``None`` with ``target="pred"``); ``model(x)``: (B, K) class logits (an encoder's (B, D) embeddings would be
        attacked as D classes: not supported, ``docs/composition.md``).

    Convention:
        Needs ``model``. The model is borrowed unchanged: it runs in eval mode during the attack (the official code
        lets the attack update BatchNorm statistics), no parameter gradient is computed or left behind, and every
        module's train/eval flag is restored, also on error. A DDP-wrapped model is attacked through its local
        module. Identity in ``eval()`` mode. ``last_params`` holds, for the ``N`` selected samples, ``start`` (N, D),
        ``delta`` (N, D), the final perturbation, and ``target``, the labels attacked ((N,) predictions, or ``y``'s
        rows with ``target="true"``). Encode and decode run in fp32 with TF32 off, as every codec call does;
        the backward pass that gives the step's direction runs under the caller's TF32 and autocast settings
        (a direction, not an image: the output's invertibility does not depend on it). It backpropagates each
        sample's loss gradient scaled to a largest entry of 1 (the step is normalised per sample, so this changes no
        step), so that under float16 autocast, where no GradScaler reaches it, a confident sample's gradient is not
        flushed to 0; that gradient is computed without rounding to 0, so a sample whose logits are far apart (its
        float32 softmax one-hot) still gets its step, in its direction.
    """

    needs_model = True
    norm = setting("norm", check_choice, NORMS)
    target = setting("target", check_choice, ("pred", "true"))
    eps, step_size = setting("eps", check_number), setting("step_size", check_number)
    steps, random_start = setting("steps", check_count), setting("random_start", check_bool)

    def __init__(self, codec: Codec | str = "glow-cifar10", eps: float = 1.0, *, steps: int = 1, step_size: float = 1.0,
                 norm: str = "l2", random_start: bool = True, target: str = "pred", levels: Sequence[int] | None = None,
                 cache: LatentCache | None = None,
                 p: float = 1.0, generator: torch.Generator | int | None = None):
        # settings: checked whenever set, here before the codec is loaded
        self.norm, self.target, self.eps, self.step_size, self.steps = norm, target, eps, step_size, steps
        self.random_start = random_start
        super().__init__(codec, levels=levels, cache=cache, p=p, generator=generator)

    @property
    def needs_labels(self) -> bool:
        """``target="true"`` attacks the given labels; ``"pred"`` takes unlabelled batches too."""
        return cast(str, self.target) == "true"

    def extra_repr(self) -> str:
        return (f"eps={self.eps}, steps={self.steps}, step_size={self.step_size}, norm={self.norm!r}, "
                f"random_start={self.random_start}, target={self.target!r}, " + super().extra_repr())

    def make_params(self, n: int, generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
        """``start``: the PGD's starting point, (n, D) (zeros without ``random_start``)."""
        if not self.random_start:
            return {"start": torch.zeros(n, self.codec.latent_dim, device=device, dtype=self.codec.dtype)}
        shape = torch.Size((n, self.level_size()))  # drawn over the chosen levels' coordinates, as LatentNoise's noise
        return {"start": self.on_levels_only(random_start(shape, self.eps, self.norm, generator, device,
                                                          self.codec.dtype))}

    def transform(self, x: torch.Tensor, y: torch.Tensor | None, model: nn.Module | None,
                  params: dict[str, torch.Tensor], index: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if torch.is_inference_mode_enabled():
            raise RuntimeError("LatentAdversarial differentiates the classifier, which torch.inference_mode() forbids; "
                               "call it outside inference_mode (torch.no_grad() is fine) or put it in eval() mode")
        if model is None:  # forward refuses it first: transform called directly
            raise self._model_needed()
        if y is None and self.target == "true":  # as above
            raise self._labels_needed()
        z = self.encode_flat(x, index)
        with borrowed(model, "LatentAdversarial's model") as net:
            with torch.no_grad():  # y is None only for target="pred" (refused above)
                target = logits_of(net, x, "LatentAdversarial").argmax(1) if y is None or self.target == "pred" else y
            delta = params["start"].clone()  # the loop flags it for gradients: not the caller's tensor
            for i in range(self.steps):
                delta.requires_grad_(True)
                with torch.enable_grad():
                    logits = logits_of(net, self.decode_flat(z + delta).to(x.dtype), "LatentAdversarial")
                    if self.target == "true" and i == 0:  # once: reading the labels' maximum is a host sync
                        check_labels_fit(target, logits.shape[1], "LatentAdversarial(target='true')")
                    if not logits.requires_grad:
                        raise ValueError("LatentAdversarial differentiates model(x) with respect to x, but the "
                                         "model's output does not depend on x through autograd (a torch.no_grad() "
                                         "or .detach() inside its forward?)")
                    (grad,) = torch.autograd.grad(logits, delta, grad_outputs=_unit_loss_grad(logits, target))
                step = ascent_direction(self.on_levels(grad, 0.0), self.norm)
                delta = self.on_levels(project(delta.detach() + self.step_size * step, self.eps, self.norm), 0.0)
        params.update(delta=delta, target=target)  # kept in last_params with the draws
        with torch.no_grad():
            return self.decode_flat(z + delta), y


def _unit_loss_grad(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The gradient of the cross-entropy on ``target`` ((B,) class indices or (B, K) soft labels) with respect to
    ``logits: (B, K)``, each row scaled to a largest entry of 1, in ``logits``' dtype: what the attack backpropagates
    to ``delta``.

    The samples are attacked independently (the model is in eval mode) and each row's step is normalised
    (``ascent_direction``), so the scale changes no step. Unscaled, a batch mean's ``(softmax - target) / B`` of a
    confident sample is below float16's smallest number, and a backward under ``torch.autocast(dtype=float16)``
    flushed it to 0: that sample got no step at all (no GradScaler reaches this inner backward).

    The row is computed in float32 without rounding to 0 at any gap between the logits: ``softmax - onehot(t)`` is
    ``(1 - p_t)`` times the softmax of the classes but ``t`` less ``onehot(t)``, whose largest entry is that -1;
    soft labels ``y`` summing to ``s`` add ``s onehot(t) - y`` (``t`` their largest class), the two terms scaled
    through their logarithms. Computed as ``softmax - onehot``, the target's entry rounded to 0 once the logits were
    about 17 apart (a step in another direction) and the whole row once about 104 apart (no step). A row is 0 where
    the target's probability is 1 exactly: no other class, or all the others at -inf."""
    z = logits.detach().float()
    y = target.detach().float() if target.ndim == 2 else None
    t = (target if y is None else y.argmax(1))[:, None]
    others = z.scatter(1, t, float("-inf"))
    has_others = others.amax(1, keepdim=True) != float("-inf")  # NaN logits stay NaN
    # softmax's exp, unlike exp(), has no slow path on the CPU for results below float32's range (exp(-90): 400x)
    row = others.softmax(1).scatter(1, t, -1.0).where(has_others, 0.0)
    if y is not None:  # s softmax - y = s (1 - p_t) row + rest, each scaled by the larger of the two terms
        total = y.sum(1, keepdim=True)
        rest = (-y).scatter(1, t, y.scatter(1, t, 0.0).sum(1, keepdim=True))  # s onehot(t) - y: t's as a sum
        log_sum_others = others.logsumexp(1, keepdim=True)
        size, log_norm = rest.abs().amax(1, keepdim=True), torch.logaddexp(log_sum_others, z.gather(1, t))
        log_own = total.abs().log() + log_sum_others - log_norm  # log |s (1 - p_t)|
        log_scale = torch.maximum(log_own, size.log())
        log_scale = log_scale.masked_fill(log_scale == float("-inf"), 0.0)
        own = total.sign() * (log_own - log_scale).exp()
        # not exp(-log_scale): past float32's range where rest is 0 and 1 - p_t tiny
        scale_rest = (size.log() - log_scale).exp() / size.clamp_min(torch.finfo(torch.float32).tiny)
        row = own * row + scale_rest * rest
        # t's entry, s p_t - y_t, is there rest_t - s (1 - p_t): two terms near s that cancel where p_t is below 1/2
        log_p_t = z.gather(1, t) - log_norm
        direct = (total * log_p_t.exp() - y.gather(1, t)) / log_scale.exp()
        row = row.scatter(1, t, torch.where(log_p_t > math.log(0.5), row.gather(1, t), direct))
    return scaled_to_unit_max(row).to(logits.dtype)
