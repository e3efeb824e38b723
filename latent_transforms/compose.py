"""Chain latent transforms with kornia / torchvision / plain pixel transforms, labels flowing through."""
from __future__ import annotations

import contextlib
import inspect
import textwrap
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeGuard, cast, overload

import torch
from torch import nn

from .base import (CALLER_NUM_CLASSES, NOT_ABOUT_THE_BATCH, LabelsT, LatentTransform, keep_out_of_ddp_broadcast,
                   not_about_the_batch, warn_at_call, warn_if_left_in_eval)
from .codecs.base import ChecksCodecStates
from .isda import ISDA, check_class_indices, grown_classifier_named
from .labels import blend, to_soft
from .mixup_inference import LatentMixupInference
from .validation import Settings, WrongTypeError, check_batch, check_classes, check_model_slot, setting

if TYPE_CHECKING:
    from .validation import Setting

__all__ = ["Compose"]


def _is_kornia_mix(t: object) -> bool:
    """kornia's label mixes, the ones Compose turns into soft labels."""
    from kornia.augmentation import RandomCutMixV2, RandomMixUpV2

    return isinstance(t, (RandomMixUpV2, RandomCutMixV2))


def _is_kornia_mix_base(t: object) -> bool:
    """Any kornia ``MixAugmentationBaseV2`` (also RandomJigsaw, which keeps labels): they take ``data_keys``."""
    from kornia.augmentation._2d.mix.base import MixAugmentationBaseV2

    return isinstance(t, MixAugmentationBaseV2)


def _is_unsupported_kornia_mix(t: object) -> bool:
    """A kornia mix whose labels Compose cannot follow: PatchMix, RandomMosaic, RandomTransplantation (their images
    mix or move, but they give no class-label mixing weights)."""
    from kornia.augmentation import RandomJigsaw

    return _is_kornia_mix_base(t) and not _is_kornia_mix(t) and not isinstance(t, RandomJigsaw)


def _kornia_inputs_besides_images(t: object) -> str:
    """What a kornia ``AugmentationSequential`` takes besides the images (``data_keys`` for a mask, boxes; ``None``: a
    dict of inputs), which a step called as ``t(x)`` cannot be given (kornia's AssertionError: "The number of inputs
    must align with the number of data_keys"); ``""`` for the images alone or another step."""
    from kornia.augmentation import AugmentationSequential
    from kornia.constants import DataKey

    if not isinstance(t, AugmentationSequential):
        return ""
    if t.data_keys is None:
        return "data_keys=None (a dict of inputs)"
    others = [k.name.lower() for k in t.data_keys if k is not DataKey.IMAGE]
    return f"data_keys for {', '.join(others)} besides the images" if others else ""


def _is_kornia_video(t: object) -> bool:
    """kornia's VideoSequential: it takes 5-d clips, which a Compose never passes (kornia's AssertionError "Input
    must be a 5-dim torch.Tensor" at the first call, after the steps before it had run)."""
    from kornia.augmentation import VideoSequential

    return isinstance(t, VideoSequential)


def _is_kornia(t: object) -> bool:
    """A kornia augmentation, mix, container or auto policy: they take float images only."""
    return any(c.__module__.startswith("kornia.augmentation.") for c in type(t).__mro__)


def _takes_floats_only(t: object) -> bool:
    """Whether a step refuses uint8 images (a torchvision v2 transform but MixUp, a callable, or ISDA may take
    them)."""
    return (isinstance(t, LatentTransform) and t._takes_images) or _is_kornia(t) or bool(_float_only_torchvision(t))


def _to_float_hint(step: nn.Module, i: int, x: torch.Tensor) -> str:
    """Where ``v2.ToDtype`` goes, for a ``ValueError`` of step ``i`` given integer images ``x``: before the step, when
    it takes float images only or is a torchvision container holding such a step and no conversion (a nested Compose
    gives its own hint); else ``""``."""
    parts = _parts(step)
    part = next((p for p in parts if _takes_floats_only(p)), None)
    if x.is_floating_point() or part is None or isinstance(step, Compose) or any(_is_conversion(p) for p in parts):
        return ""
    held = "" if part is step else f": {_where(part, step, i)} takes float images only"
    return f"; in a Compose, put v2.ToDtype(torch.float32, scale=True) {'before this step' if i else 'first'}{held}"


def _takes_any_tensor(steps: list[nn.Module]) -> bool:
    """Whether steps of a Compose take any ``(B, ...)`` tensor (vectors, sequences, token ids): they hold a latent
    step and every latent step only checks ``x`` (ISDA), the others being plain callables (no torchvision or kornia
    step: they take images). A Compose of callables alone takes images, as ever, and so does one holding it (a nested
    Compose that takes images would refuse anything else when the chain runs)."""
    parts = [p for t in steps for p in _parts(t)]
    return any(isinstance(p, LatentTransform) for p in parts) and not any(
        (isinstance(p, LatentTransform) and p._takes_images) or (isinstance(p, Compose) and p._takes_images)
        or _is_torchvision_v2(p) or _is_kornia(p) for p in parts)


def _is_torchvision_v2(t: object) -> bool:
    from torchvision.transforms.v2 import Transform

    return isinstance(t, Transform)


def _is_conversion(t: object) -> TypeGuard[nn.Module]:
    """A torchvision v2 dtype conversion (``ToDtype``, ``ConvertImageDtype``, ``ToPureTensor``): run in eval() mode."""
    from torchvision.transforms.v2 import ConvertImageDtype, ToDtype, ToPureTensor

    return isinstance(t, (ToDtype, ConvertImageDtype, ToPureTensor))


def _conversions_in(t: object) -> list[nn.Module]:
    """The dtype conversions that always run when step ``t`` runs: ``t`` itself, or those inside a torchvision
    ``v2.Compose``, a ``RandomOrder`` (it runs all, in some order) or this ``Compose`` (not inside
    RandomApply/RandomChoice: they may not run)."""
    from torchvision.transforms.v2 import Compose as TorchvisionCompose, RandomOrder

    if _is_conversion(t):
        return [t]
    inner = t.steps if isinstance(t, Compose) else t.transforms if isinstance(t, (TorchvisionCompose, RandomOrder)) \
        else []
    return [c for s in inner for c in _conversions_in(s)]


def _float_only_torchvision(t: object) -> str | None:
    """Why a step, or what it holds, takes float images only: torchvision's MixUp (it blends pixel values; CutMix takes
    uint8 too; Normalize is no step: refused when built); ``None`` for neither."""
    from torchvision.transforms.v2 import MixUp

    for p in _parts(t):
        if isinstance(p, MixUp):
            return "MixUp (it blends pixel values)"
    return None


def _is_normalization(t: object) -> bool:
    """A mean/std normalisation: torchvision's ``Normalize`` (v2 or v1) or kornia's (an augmentation, or
    ``kornia.enhance``'s module)."""
    from kornia.augmentation import Normalize as KorniaNormalize
    from kornia.enhance import Normalize as EnhanceNormalize
    from torchvision.transforms import Normalize as V1Normalize
    from torchvision.transforms.v2 import Normalize

    return isinstance(t, (Normalize, V1Normalize, KorniaNormalize, EnhanceNormalize))


def _normalization_in(t: object) -> object | None:
    """The mean/std normalisation (``_is_normalization``) that a part ``t`` is, or that torchvision v1's ``Compose``,
    ``RandomApply``, ``RandomChoice`` or ``RandomOrder`` holds (``_parts`` sees v2 containers only: v1's are no
    modules, or hold a list, and a Compose calls them as plain callables); ``None`` for none."""
    from torchvision.transforms import transforms as v1

    t = t.fn if isinstance(t, _Callable) else t
    if _is_normalization(t):
        return t
    held = t.transforms if isinstance(t, (v1.Compose, v1.RandomApply, v1.RandomTransforms)) else []
    return next((n for s in held for q in _parts(s) if (n := _normalization_in(q)) is not None), None)


def _is_kornia_container(t: object) -> bool:
    """kornia's AugmentationSequential, ImageSequential, auto policies, ...: called as ``t(x)`` by Compose."""
    from kornia.augmentation.container.base import BasicSequentialBase

    return isinstance(t, BasicSequentialBase)


def _parts(t: object) -> list[object]:
    """A step and, for containers (this Compose, torchvision's Compose/RandomChoice/RandomApply/..., nn.Sequential
    and kornia's AugmentationSequential/ImageSequential/..., which are nn.Sequential), what they hold."""
    inner = (t.steps if isinstance(t, Compose) else getattr(t, "transforms", None) if _is_torchvision_v2(t)
             else list(t.children()) if isinstance(t, nn.Sequential) else None)
    return [t] + [p for s in (inner or []) for p in _parts(s)]


def _is_label_mix(p: object) -> bool:
    """A label-mixing LatentTransform, torchvision's MixUp/CutMix or a kornia mix."""
    from torchvision.transforms.v2 import CutMix, MixUp

    return (isinstance(p, LatentTransform) and p.mixes_labels) or isinstance(p, (MixUp, CutMix)) or _is_kornia_mix(p)


def _mixes_labels(t: object) -> bool:
    """Whether a step may turn labels soft: it is, or a container holding, a label mix."""
    return any(_is_label_mix(p) for p in _parts(t))


def _has_isda(t: object) -> bool:
    return any(isinstance(p, ISDA) for p in _parts(t))


def _first_latent(t: object) -> LatentTransform | None:
    """The latent transform that a step ``t`` hands the batch to as it is given: ``t`` itself, or a nested Compose's
    first step's; ``None`` when another kind of step comes first."""
    while isinstance(t, Compose):
        t = t.steps[0] if len(t.steps) else None
    return t if isinstance(t, LatentTransform) else None


def _switched_by_mode(t: object) -> list[nn.Module]:
    """What ``eval()`` turns into the identity in a step ``t``: ``t`` itself when it is a latent transform or a Compose
    (which minds its own steps), else the latent transforms a torchvision container holds."""
    if isinstance(t, (LatentTransform, Compose)):
        return [t]
    return [p for p in _parts(t)[1:] if isinstance(p, LatentTransform)]


def _warn_of_shared_seeds(steps: list[nn.Module]) -> None:
    """Warn of latent steps (distinct ones, also inside containers) given the same ``int`` seed: each starts its own
    generator from it, so they draw the same stream (with ``p=0.5`` each, the same rows selected by both and the
    others by neither), not the independent draws a seed per step, or one ``torch.Generator``, gives."""
    seeded: dict[int, dict[int, str]] = {}  # seed -> {id(step): where}, one step held twice counted once
    for i, s in enumerate(steps):
        for p in _parts(s):
            if not isinstance(p, LatentTransform) or not isinstance(p.generator, int):
                continue
            if p.p < 1 or type(p).make_params is not LatentTransform.make_params:  # it draws (ISDA at p=1 does not)
                seeded.setdefault(p.generator, {}).setdefault(id(p), _where(p, s, i))
    for seed, held in seeded.items():
        if len(held) > 1:
            *first, last = held.values()
            warn_at_call(f"{', '.join(first)} and {last} are seeded with the same int, generator={seed}: they draw "
                         f"the same stream (the same rows selected by p, the same draws), not independent ones; give "
                         f"each step a seed of its own, or all of them one torch.Generator")


def _needing_labels(t: object) -> list[object]:
    """The parts of a step (itself, or what a container holds) that cannot run on an unlabelled batch: label mixes
    and latent steps that need labels (ISDA, LatentAdversarial(target="true"))."""
    return [p for p in _parts(t) if _is_label_mix(p) or (isinstance(p, LatentTransform) and p.needs_labels)]


def _needing_model(t: object) -> list[LatentTransform]:
    """The latent steps that a training call of step ``t`` hands ``model`` to, all of which refuse ``model=None``:
    ``t`` itself, or those of a nested Compose in training mode (in ``eval()`` mode it runs none)."""
    if isinstance(t, Compose):
        return [p for s in t.steps for p in _needing_model(s)] if t.training else []
    return [t] if isinstance(t, LatentTransform) and t.needs_model else []


def _first_mix_of_given_labels(steps: list[nn.Module], mixing: list[int]) -> tuple[object, str, str] | None:
    """``(mix, name, where)`` of the first label mix (steps ``mixing``), when it gets the labels as given (no
    torchvision v2 transform of one's own before it, which might change their form): what it refuses (class indices
    for a mix that knows no classes, soft labels for a kornia mix) is refused before any step runs, in either mode
    (refused at the mix, the steps before it had drawn and run; ``eval()`` mode, which runs no mix, passed them)."""
    if not mixing:
        return None
    i = mixing[0]
    if any(_is_torchvision_v2(p) and not type(p).__module__.startswith("torchvision.")
           for s in steps[:i] for p in _parts(s)):
        return None
    mix = next(p for p in _parts(steps[i]) if _is_label_mix(p))
    return mix, (_name(mix) if mix is steps[i] else type(mix).__name__), _where(mix, steps[i], i)


def _refuse_held_by_container(t: object, i: int) -> None:
    """A torchvision or kornia container ``t`` (step ``i``) calls what it holds its own way: ``ValueError`` for a part
    that would then go wrong."""
    for p in _parts(t)[1:]:
        if _is_kornia_container(t) and _is_kornia_mix(p):
            why = "a kornia mix inside a kornia container would mix the images but not the labels"
        elif _is_kornia_mix_base(p) and not _is_kornia_container(t):
            why = "a torchvision container calls it as t(x, y), not with kornia's data_keys"
        elif _is_kornia_container(t) and isinstance(p, LatentTransform):
            why = "a kornia container calls what it holds as t(x), without labels or model"
        elif isinstance(t, nn.Sequential) and isinstance(p, LatentTransform):
            why = "nn.Sequential calls what it holds as t(x) and hands on what it returns, here an (x, y) pair"
        elif isinstance(p, LatentTransform) and p.needs_model:
            why = "it needs the model, which a torchvision container does not pass on"
        elif isinstance(p, LatentTransform) and p.mixes_labels:
            why = ("inside a torchvision container, the labels would come out soft when it runs and as class indices "
                   "when the container skips it")
        else:
            continue
        raise ValueError(f"{_where(p, t, i)}: {why}; make it a step of this Compose of its own"
                         f"{' (its p= sets how often it applies)' if isinstance(p, LatentTransform) else ''}")


_CUTMIX_NUM_MIX = "{name} with num_mix={num_mix}: overlapping boxes make its labels ambiguous; Compose supports num_mix=1"


def _check_kornia_mix_step(steps: list[nn.Module], i: int, mixing: list[int], num_classes: int | None) -> None:
    """A kornia mix at step ``i`` takes class indices and makes them soft: it needs ``num_classes`` and must come
    before every other label-mixing step (``mixing``: their positions)."""
    num_mix = getattr(getattr(steps[i], "_param_generator", None), "num_mix", 1)  # kornia's RandomCutMixV2
    if num_mix != 1:
        raise ValueError(_CUTMIX_NUM_MIX.format(name=_name(steps[i]), num_mix=num_mix))
    if num_classes is None:
        raise ValueError(f"Compose(..., num_classes=...) is needed to turn {_name(steps[i])}'s labels (step {i}) soft")
    _refuse_soft_labels_into_kornia_mix(steps, i, mixing, f"{_name(steps[i])} (kornia) at step {i}")


def _refuse_soft_labels_into_kornia_mix(steps: list[nn.Module], i: int, mixing: list[int], mix: str) -> None:
    """Step ``i`` hands the labels as it gets them to a kornia mix (``mix`` says which), which takes class indices:
    ``ValueError`` when an earlier label-mixing step (``mixing``: their positions) makes them soft."""
    if mixing[0] < i:
        raise ValueError(f"{mix} takes class-index labels, but {_name(steps[mixing[0]])} at step {mixing[0]} makes "
                         f"them soft; put it first or use torchvision.transforms.v2.MixUp/CutMix")


def _checked(step: nn.Module, i: int, out: object, pair: bool, batch: int,
             given: torch.Tensor | None = None) -> Any:  # out: a pair if pair, else images
    """``out`` as a step called as ``t(x, y)`` (``pair``) or ``t(x)`` must return it: a ``WrongTypeError`` (a
    ``TypeError`` and a ``ValueError``) naming the step otherwise (a latent transform held by a container of one's
    own makes an ``(x, y)`` pair where images belong); a ``ValueError`` naming it if its images (or labels) are not
    the ``batch`` samples it was given: images and labels would no longer match. ``given`` (with ``pair`` False):
    the ``(B, C, H, W)`` images it was given, where a step must return images: a ``ValueError`` if it returned a tensor of other
    dimensions that its own trainable parameters computed (autograd history ``given`` has not; with gradients off, where
    no output has any: a module step with trainable parameters), a network's output (the classifier's ``(B, K)`` logits
    came out as the batch's images); ``x.flatten(1)`` passes, as any reshape."""
    ok = (isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[0], torch.Tensor)) if pair \
        else isinstance(out, torch.Tensor)
    if not ok:
        got = f"a {type(out).__name__} of {len(out)}" if isinstance(out, (tuple, list)) else type(out).__name__
        e = WrongTypeError(f"{_name(step)} at step {i} returned {got}, not {'(images, labels)' if pair else 'images'}: a "
                           f"latent transform inside a container of one's own? make it a step of this Compose")
        raise not_about_the_batch(e)  # the step's own output, not the previous step's: no 'on the output of'
    for what, t in zip(("images", "labels"), cast("Sequence[object]", out) if pair else (out,)):
        if isinstance(t, torch.Tensor) and (t.ndim == 0 or t.shape[0] != batch):
            got = "a 0-d tensor" if t.ndim == 0 else f"{t.shape[0]} {what}"
            raise not_about_the_batch(ValueError(
                f"{_name(step)} at step {i} returned {got} for a batch of {batch}: a step must keep the batch's "
                f"samples, or images and labels no longer match"))
    images = cast(torch.Tensor, out)  # read where given: a step called as t(x), which returns the images
    # under torch.no_grad() or inference_mode the logits have no history: the step's parameters tell, whatever x's
    # (audit 436: the classifier's logits came out as the images there, without a word; audit 439: from an x that
    # requires grad too)
    if given is not None and images.ndim != given.ndim and ((images.requires_grad and not given.requires_grad) or (
            not torch.is_grad_enabled() and isinstance(step, nn.Module)
            and any(p.requires_grad for p in step.parameters()))):
        raise not_about_the_batch(ValueError(
            f"{_name(step)} at step {i} returned a {tuple(images.shape)} tensor that its trainable parameters "
            f"computed, not (B, C, H, W) images: the classifier as a step? a Compose augments the batch; call the "
            f"model on its output: x2, y2 = t(x, y, model), then model(x2)"))
    return out


def _required_positionals(t: Callable[..., object]) -> int:
    """How many positional arguments a step called as ``t(x)`` requires (its ``forward``'s for a module); 0 when its
    signature cannot be read."""
    try:
        params = inspect.signature(t.forward if isinstance(t, nn.Module) else t).parameters.values()
    except (TypeError, ValueError):
        return 0
    return sum(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


def _where(part: object, step: object, i: int) -> str:
    """``"MixUp at step 2"``, or ``"CutMix in RandomChoice at step 2"`` for a part held by a container."""
    return f"{_name(part) if part is step else type(part).__name__ + ' in ' + _name(step)} at step {i}"


def _name(t: object) -> str:
    """A step's class name (a plain callable's own name)."""
    return getattr(t.fn, "__name__", type(t.fn).__name__) if isinstance(t, _Callable) else type(t).__name__


class _Callable(nn.Module):
    """Wraps a plain ``x -> x`` callable so it can live in a ``ModuleList``."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return repr(self.fn)


class Compose(Settings, ChecksCodecStates, nn.Module):
    """Apply transforms in order: ``x2, y2 = Compose([...])(x, y, model=None)``.

    Each step may be

    - a ``LatentTransform`` (gets ``model`` when it needs it);
    - a torchvision v2 transform (``RandAugment``, ``MixUp``, ``CutMix``, ...): called as ``t(x, y)``;
      label-mixing ones return ``(B, K)`` soft labels. torchvision samples one set of parameters per call
      (the whole batch gets the same RandAugment ops);
    - a kornia augmentation: pixel ones are called as ``t(x)`` and sample per sample; kornia mixes
      (``RandomMixUpV2``, ``RandomCutMixV2`` with ``num_mix=1``, either lambda convention) take class indices and
      their ``(B, 3)`` label output (CutMix's ``(1, B, 3)``) is turned into ``(B, K)`` soft labels, so they must
      come before any step that makes labels soft;
    - another ``Compose``: called as ``t(x, y, model)``;
    - any callable ``x -> x``.

    Labels stay class indices until a step mixes them; from there on they are soft ``(B, K)`` (made soft with this
    Compose's ``num_classes`` before a label mix that was given none; without it, class indices are refused before
    any step runs, in either mode). ``y=None`` (an unlabelled batch) goes through as ``None`` when no step needs
    labels (``x2, _ = Compose([...])(x)``); in training, ``model=None`` is refused before any step runs when one
    needs it.
    In ``eval()`` mode the chain is the identity but for its dtype conversions (``v2.ToDtype``,
    ``v2.ConvertImageDtype``, ``v2.ToPureTensor``; also inside a ``v2.Compose`` or ``RandomOrder`` step, not inside
    ``RandomApply`` or ``RandomChoice``), which run, so a validation loader's ``uint8`` images come out as in
    training; the batch is checked as its first step, when a latent one (also a nested Compose's first), checks it
    alone in ``eval()`` mode, ``model`` aside (a later latent step's own checks, its codec's image shape, do not run).

    ``x: (B, C, H, W)`` float in [0, 1], or ``uint8`` when the first step is a torchvision v2 transform (but MixUp)
    or a callable (``v2.ToDtype(torch.float32, scale=True)`` before the first latent, kornia or MixUp step converts
    it; ``uint8`` that no conversion step converts is refused in ``eval()`` mode). Normalisation (mean/std) is no
    step (refused: ``eval()`` mode would skip it): it goes inside the model. Any ``(B, ...)`` tensor (vectors,
    sequences, token ids) when the latent steps are ISDA, which never uses ``x``, and the others plain callables.
    ``index: (B,)`` dataset positions (for a ``LatentCache``) go to the first step only,
    which must then be a ``LatentTransform``: later steps see images the cache does not hold.

    ``len(t)``, ``t[i]`` and ``for step in t`` reach the steps (also ``t.steps``, an ``nn.ModuleList``).

    Args:
        transforms: the steps.
        num_classes: the labels' classes, checked on every call (by a first latent step, in the read of the batch
            it makes anyway); default: the ``num_classes`` its steps declare (VarMixup's, torchvision's
            MixUp/CutMix's; they must agree). Needed when class-index labels meet a kornia mix and no other step
            declares it; a step with another ``num_classes`` is refused.
    """

    def __init__(self, transforms: Sequence[nn.Module | Callable[[torch.Tensor], torch.Tensor]], *,
                 num_classes: int | None = None):
        super().__init__()
        if callable(transforms) or isinstance(transforms, (str, bytes, Mapping)) or \
                not isinstance(transforms, Iterable):
            hint = ("; for one step: Compose([t])" if callable(transforms) else
                    "; named steps? pass their list, list(steps.values())" if isinstance(transforms, Mapping) else "")
            raise WrongTypeError(f"transforms must be a list of steps, got {type(transforms).__name__}{hint}")
        steps = []
        for i, t in enumerate(transforms):
            if not callable(t):
                hint = ("; a step's config, not the step? instantiate it first (Hydra: recursively, not with "
                        "_recursive_=False)" if isinstance(t, Mapping) else "")
                raise WrongTypeError(f"Compose steps must be callable, got {type(t).__name__} at step {i}{hint}")
            inner = getattr(t, "_orig_mod", None)  # torch.compile(t): an OptimizedModule, which a Compose calls as t(x)
            if isinstance(inner, (LatentTransform, Compose)):
                raise WrongTypeError(f"step {i} is torch.compile({_name(inner)}), which Compose would call as a plain "
                                     f"x -> x step: pass the {_name(inner)} itself (to compile a codec's "
                                     f"encode/decode: codec.compile_fast_path(), docs/performance.md)")
            if not isinstance(t, (LatentTransform, Compose)) and not _is_torchvision_v2(t) and not _is_kornia(t) \
                    and (required := _required_positionals(t)) > 1:  # it would fail at its first call, in its words
                raise WrongTypeError(
                    f"step {i} ({_name(t if isinstance(t, nn.Module) else _Callable(t))}) requires "
                    f"{required} arguments, but Compose calls a plain callable as t(x): a callable "
                    f"that also takes the labels, such as timm's Mixup (x, y = mixup_fn(x, y)), is called outside the "
                    f"Compose, before or after it (docs/composition.md, timm)")
            steps.append(t if isinstance(t, nn.Module) else _Callable(t))
        for i, t in enumerate(steps):
            for p in _parts(t):
                if isinstance(p, LatentMixupInference):  # called as t(x): its (B, K) probabilities came out as images
                    raise WrongTypeError(f"{_where(p, t, i)} predicts, returning (B, K) probabilities, not images: it "
                                         f"is no augmentation step; call it on the test images, probs = t(x), outside "
                                         f"the Compose (docs/methods/mixup_inference.md)")
                if _is_unsupported_kornia_mix(p):
                    raise ValueError(f"{_where(p, t, i)}: a kornia mix whose labels Compose cannot follow (it gives "
                                     f"no class-mixing weights); use kornia's RandomMixUpV2/RandomCutMixV2 or "
                                     f"torchvision's MixUp/CutMix")
                if _is_kornia_video(p):
                    raise ValueError(f"{_where(p, t, i)} takes video clips, (B, C, T, H, W) or (B, T, C, H, W), but "
                                     f"a Compose takes (B, C, H, W) images, a video's frames as a batch; call it "
                                     f"yourself on the clips, before the Compose, which takes their frames: "
                                     f"vs(clips).flatten(0, 1) for data_format='BTCHW' "
                                     f"(docs/composition.md#video-clips)")
                if (n := _normalization_in(p)) is not None:  # trained on normalised images, validated on others
                    raise ValueError(f"{_where(n, t, i)} normalises with mean/std, but a Compose in eval() mode runs "
                                     f"none of its steps but the dtype conversions, so validation batches would reach "
                                     f"the model unnormalised; normalise inside the model, after the augmentation: "
                                     f"model = nn.Sequential(v2.Normalize(mean, std), model) "
                                     f"(docs/composition.md#the-rules)")
                if inputs := _kornia_inputs_besides_images(p):
                    raise ValueError(f"{_where(p, t, i)} has {inputs}, but Compose calls it as t(x), with the "
                                     f"images alone; to move a mask or boxes with them, call it yourself before the "
                                     f"Compose, whose y takes class labels only "
                                     f"(docs/composition.md#segmentation-masks-and-boxes)")
            if not isinstance(t, (LatentTransform, Compose)):
                _refuse_held_by_container(t, i)
        isda = [i for i, t in enumerate(steps) if _has_isda(t)]
        mixing = [i for i, t in enumerate(steps) if _mixes_labels(t)]
        if isda and mixing:
            raise ValueError(f"ISDA (step {isda[0]}) needs class-index labels and cannot be combined with label-mixing "
                             f"steps ({', '.join(f'{_name(steps[i])} at step {i}' for i in mixing)})")
        num_classes = check_classes("num_classes", num_classes)
        # a step with other classes would fail only at the first label it cannot hold; without num_classes, the
        # steps' own is checked on every call (out-of-range labels reached torchvision MixUp's RuntimeError)
        declared: list[tuple[int, str, Any]] = []  # (num_classes, where, the step or part: any with a num_classes)
        for i, t in enumerate(steps):
            for part in _parts(t):
                k = getattr(part, "num_classes", None) if isinstance(part, (LatentTransform, Compose)) \
                    or _is_torchvision_v2(part) else None
                if isinstance(k, int) and not isinstance(k, bool):
                    declared.append((k, _where(part, t, i), part))
        for k, where, _ in declared:
            if k != (num_classes or declared[0][0]):
                raise ValueError(f"{where} has num_classes={k}, but " + (
                    f"this Compose num_classes={num_classes}" if num_classes else
                    f"{declared[0][1]} has num_classes={declared[0][0]}: the steps must agree"))
        num_classes = num_classes or (declared[0][0] if declared else None)
        for i in mixing:
            if _is_kornia_mix(steps[i]):
                _check_kornia_mix_step(steps, i, mixing, num_classes)
            elif isinstance(steps[i], Compose) and steps[i]._kornia_mix_at is not None:  # refused at the call before
                _refuse_soft_labels_into_kornia_mix(steps, i, mixing, f"{steps[i]._kornia_mix_at} of step {i} "
                                                                      f"(Compose), a kornia mix,")
        self.steps = nn.ModuleList(steps)
        self._built_from = tuple(steps)  # what the checks above and the lists below hold for
        self._declared = declared  # and the classes its steps had (ISDA.grow() changes them; so does setting them)
        self.num_classes = num_classes
        # label mixes that do not know the classes (v2.MixUp() without num_classes, a Compose holding VarMixup()) get
        # class-index labels made soft with this Compose's; a kornia mix takes class indices (Compose turns its labels
        # soft); a latent step (VarMixup()) checks them against this Compose's classes and makes them soft itself
        # (made soft before it, out-of-range labels would reach torch's one_hot unchecked); a nested Compose with
        # classes makes its labels soft itself (a kornia mix in it takes class indices); a torchvision container
        # (RandomApply, RandomChoice) gets them soft whatever its mix's classes: on a batch it skips the mix, its labels
        # came out class indices, soft on the others
        self._soften_before = frozenset(
            i for i in mixing if num_classes is not None and not _is_kornia_mix(steps[i])
            and not isinstance(steps[i], LatentTransform)
            and not (isinstance(steps[i], Compose) and steps[i].num_classes is not None)
            and any(_is_label_mix(p) and (p is not steps[i] or getattr(p, "num_classes", None) is None)
                    for p in _parts(steps[i])))
        # what runs in eval() mode: the dtype conversions (a validation loader's uint8 images come out as in training)
        self._conversions = [c for t in steps for c in _conversions_in(t)]
        self._isda_at = [_where(p, s, i) for i, s in enumerate(steps) for p in _parts(s) if isinstance(p, ISDA)]
        self._switched = [(_where(p, s, i), p, p is s) for i, s in enumerate(steps) for p in _switched_by_mode(s)]
        _warn_of_shared_seeds(steps)
        first_mix = _first_mix_of_given_labels(steps, mixing)
        self._classless_mix = first_mix[1:] if first_mix and num_classes is None else None
        self._kornia_mix_at = first_mix[2] if first_mix and _is_kornia_mix(first_mix[0]) else None
        self._takes_uint8 = not _takes_floats_only(steps[0] if steps else None)  # once: it walks the step's parts
        self._takes_images = not _takes_any_tensor(steps)
        self._uint8_hint = "" if self._takes_uint8 else (  # where the conversion goes
            f"; in a Compose, put v2.ToDtype(torch.float32, scale=True) first: step 0 ({_name(steps[0])}) takes float "
            f"images only")

    num_classes = setting("num_classes", check_classes, fixed=lambda held, value: (
        f"its steps were checked against it, now {held!r}",
        f"build a new one, Compose(list(t), num_classes={value!r})"), doc=(
        "The labels' classes, fixed at construction: the steps were checked against them, and which label mixes get "
        "labels made soft with them was decided then (assigned as a plain attribute, the labels were checked against "
        "the new value while the rest kept the old one: ``None`` -> 10 still refused class indices before a MixUp)."))

    steps: Setting[nn.ModuleList] = setting("steps", module=True, fixed=lambda held, value: (
        "they were checked together when it was built: label mixes, ISDA, num_classes, dtype conversions",
        "build a new one, e.g. Compose([*t, step], num_classes=t.num_classes)"), doc=(
        "The steps (an ``nn.ModuleList``), fixed at construction: they were checked together then (assigned, "
        "``t.steps = None`` passed and the next call failed in ``len(None)``); changed in place "
        "(``t.steps.append(step)``), the next call refuses them."))

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, i: int) -> nn.Module:
        return self.steps[i]

    def __iter__(self) -> Iterator[nn.Module]:
        return iter(self.steps)

    def extra_repr(self) -> str:
        return "" if self.num_classes is None else f"num_classes={self.num_classes}"

    def __repr__(self) -> str:
        """``Compose([step, ...], num_classes=K)`` as it was built, one step a line (a nested Compose indented, a plain
        callable as itself), as torchvision's Compose lists its steps, not nn.Module's ``(steps): ModuleList(...)``."""
        steps = "".join(textwrap.indent(repr(t.fn if isinstance(t, _Callable) else t), "  ") + ",\n" for t in self)
        options = self.extra_repr()
        return f"{type(self).__name__}([{steps and chr(10) + steps}]{options and ', ' + options})"

    if TYPE_CHECKING:  # the call's types (nn.Module's __call__ returns Any), as a LatentTransform's
        @overload
        def __call__(self, x: torch.Tensor, y: LabelsT, model: nn.Module | None = None,
                     index: torch.Tensor | None = None) -> tuple[torch.Tensor, LabelsT]: ...
        @overload
        def __call__(self, x: torch.Tensor, *, model: nn.Module | None = None,
                     index: torch.Tensor | None = None) -> tuple[torch.Tensor, None]: ...
        def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, model: nn.Module | None = None,
                index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x2, y2 = t(x, y, model) for ``x: (B, C, H, W)`` (float in [0, 1], or ``uint8`` as the class docstring says)
        and ``y: (B,)`` int64 or ``(B, K)`` float (``None``: an unlabelled batch, ``None`` back); ``index: (B,)``
        int64 dataset positions, for a first step with a latent cache. The steps run in order (in ``eval()`` mode
        only the dtype conversions); y2 is ``(B, K)`` soft labels once a step mixes them."""
        if len(self.steps) != len(self._built_from) or any(a is not b for a, b in zip(self.steps, self._built_from)):
            raise RuntimeError(
                "this Compose's steps were changed after it was built (t.steps[i] = ..., append, insert, del): the "
                "checks made when it was built (label mixes, ISDA, num_classes, dtype conversions) do not cover "
                "them; build a new one, e.g. Compose([*t, step], num_classes=t.num_classes)")
        for k, where, part in self._declared:
            if part.num_classes != k:  # its labels would be checked against, and mixed into, the classes of before
                raise RuntimeError(
                    f"{where} has num_classes={part.num_classes}, but had {k} when this Compose was built, whose "
                    f"checks use num_classes={self.num_classes}; after a step's classes change (ISDA.grow() for a "
                    f"classifier grown for new classes), build a new one: Compose(list(t), num_classes="
                    f"{part.num_classes})")
        first = self.steps[0] if self.steps else None
        # a first latent step reads the values itself, its labels against this Compose's num_classes: one host sync
        # per call, not two; in eval() mode the first latent step that gets the batch as given (also in a nested
        # Compose) checks it
        leaf = None if self.training else _first_latent(first)
        reader = first if self.training and isinstance(first, LatentTransform) else leaf
        # ... unless that step takes any tensor (ISDA) and a later step takes images: their values are read here
        values = reader is None or (self._takes_images and not reader._takes_images)
        # labels of new classes refused: an ISDA step's classifier grown past its statistics is why
        with grown_classifier_named((p for _, _, p in self._declared if isinstance(p, ISDA)), model):
            check_batch(x, y, self.num_classes, index, first._index_size if isinstance(first, LatentTransform) else
                        None, allow_uint8=self._takes_uint8, values=values, uint8_hint=self._uint8_hint,
                        images=self._takes_images)
        check_model_slot(model)
        keep_out_of_ddp_broadcast(self, model)  # its steps' buffers with it, also those called without the model
        if y is None:
            needing = [_where(p, s, i) for i, s in enumerate(self.steps) for p in _needing_labels(s)]
            if needing:
                raise ValueError(f"y=None (an unlabelled batch), but a step needs labels: {', '.join(needing)}")
        elif y.ndim == 2:  # no step makes soft labels before ISDA (refused when built): given ones, in eval() mode too
            for where in self._isda_at:
                check_class_indices(y, where)
            if self._kornia_mix_at is not None:  # in eval() mode too: training would refuse them at the mix
                raise ValueError(f"{self._kornia_mix_at} is a kornia mix, which takes class-index labels, but y holds "
                                 f"soft (B, K) labels; pass class indices, or use torchvision.transforms.v2.MixUp/"
                                 f"CutMix, which take either")
        elif self._classless_mix is not None:  # in eval() mode too: training would refuse these class indices
            name, where = self._classless_mix
            raise ValueError(f"{name} mixes labels: pass num_classes=... or (B, K) soft labels ({where} gets these "
                             f"class indices; Compose(..., num_classes=...) gives it their classes)")
        if index is not None and not isinstance(first, LatentTransform):
            raise ValueError(f"index= goes to the first step, which must be a LatentTransform with a latent "
                             f"cache; the first step is {type(first).__name__ if self.steps else 'nothing'}")
        if not self.training:
            if leaf is not None:  # what it refuses alone in eval() mode, as in training (its codec's image shape, its
                with self._giving_classes():  # cache's images, ISDA's soft labels); evaluation needs no model
                    leaf.check_call(x, y, model, index, model_optional=True)
            for step in self._conversions:
                x = step(x)
            if x.dtype == torch.uint8 and self._takes_images:  # the identity would give a model uint8 images
                raise ValueError("Compose in eval() mode runs only its dtype conversions (v2.ToDtype), and has none "
                                 "that converts these uint8 images; put v2.ToDtype(torch.float32, scale=True) in it, "
                                 "convert them (x.float() / 255) before it, or call it in train() mode")
            warn_if_left_in_eval(self, model)
            return x, y
        if model is None:  # refused before any step runs: a later step's refusal left the earlier ones' draws made
            needing = [_where(p, s, i) for i, s in enumerate(self.steps) for p in _needing_model(s)]
            if needing:
                raise TypeError(f"model=None, but a step needs the classifier being trained: {', '.join(needing)}; "
                                f"call t(x, y, model)")
        self._warn_of_steps_left_in_eval(model)
        for i, step in enumerate(self.steps):
            try:
                if i in self._soften_before and y is not None and y.ndim == 1:
                    y = to_soft(y, self.num_classes)
                x, y = self._run_step(step, i, x, y, model, index if i == 0 else None)
            except ValueError as e:  # a step refused what the previous step made: say which step
                if e.args and not getattr(e, NOT_ABOUT_THE_BATCH, False):  # e.g. a model's own error
                    where = "" if i == 0 else \
                        f"Compose step {i} ({_name(step)}), on the output of step {i - 1} ({_name(self.steps[i - 1])}): "
                    hint = _to_float_hint(step, i, x)
                    if where or hint:
                        e.args = (f"{where}{e.args[0]}{hint}",) + e.args[1:]
                raise
        return x, y

    def _warn_of_steps_left_in_eval(self, model: nn.Module | None) -> None:
        """Once per Compose, called in training mode: warn of its steps in ``eval()`` mode (left there, or made so
        before it was built), which return their inputs unchanged: nothing augmented, a label mix's labels left class
        indices. A step given a training ``model`` (not one a torchvision container holds) warns of it itself."""
        if self.__dict__.get("_warned_steps_in_eval", False):  # told once: nothing to look at in later calls
            return
        told = isinstance(model, nn.Module) and model.training
        left = [where for where, p, own in self._switched if not p.training and not (own and told)]
        if left:
            setattr(self, "_warned_steps_in_eval", True)  # once per instance, as warn_if_left_in_eval
            also = f" (as {'is' if len(left) == 2 else 'are'} {', '.join(left[1:])})" if len(left) > 1 else ""
            warn_at_call(f"{left[0]}{also} is in eval() mode, where it returns its inputs unchanged, but the Compose "
                         f"holding it is training: it augments nothing (a label mix leaves class indices unmixed); "
                         f"call .train() on the Compose, which sets its steps too, or leave the step out")

    @contextlib.contextmanager
    def _giving_classes(self) -> Iterator[None]:
        """A latent step called in the block checks class-index labels against this Compose's ``num_classes`` (and a
        label mix makes them soft with them) when it has none of its own."""
        token = CALLER_NUM_CLASSES.set(self.num_classes)
        try:
            yield
        finally:
            CALLER_NUM_CLASSES.reset(token)

    def _run_step(self, step: nn.Module, i: int, x: torch.Tensor, y: torch.Tensor | None, model: nn.Module | None,
                  index: torch.Tensor | None = None) -> Any:  # (images, labels): a step's, as its __call__'s Any
        if isinstance(step, LatentTransform):
            with self._giving_classes():
                return step(x, y, model, index=index)
        if isinstance(step, Compose):
            return step(x, y, model)
        if _is_kornia(step) and not x.is_floating_point():  # kornia's own TypeError names neither the step nor the fix
            raise ValueError(f"x must be a float tensor for a kornia augmentation, got dtype {x.dtype}")
        if _is_kornia_mix(step):
            assert y is not None  # the Compose refused y=None, and every step given labels returns labels
            if y.ndim != 1:
                raise ValueError(
                    f"{type(step).__name__} (kornia) takes class-index labels, got soft (B, K) labels (given, or made "
                    f"by an earlier label-mixing step); put it first or use torchvision.transforms.v2.MixUp/CutMix"
                )
            k = self.num_classes  # given: checked when built
            if not len(x):  # nothing to mix (kornia's RandomCutMixV2 raised its KeyError 'image_shape' on no images)
                return x, to_soft(y, k)
            x2, out = step(x, y, data_keys=["input", "class"])
            if out.ndim == 3:  # RandomCutMixV2: (num_mix, B, 3)
                if out.shape[0] != 1:  # num_mix changed since the Compose was built
                    raise not_about_the_batch(ValueError(_CUTMIX_NUM_MIX.format(name=_name(step),
                                                                                 num_mix=out.shape[0])))
                out = out[0]
            own, other, lam = out[:, 0].long(), out[:, 1].long(), out[:, 2].float()
            if not getattr(step, "use_correct_lambda", False):  # CutMix's paper convention: lam weighs the own label
                lam = 1 - lam
            return x2, blend(to_soft(own, k), to_soft(other, k), lam)
        if not x.is_floating_point() and (why := _float_only_torchvision(step)):  # torchvision's errors named no step
            raise ValueError(f"x must be a float tensor for {why}, got dtype {x.dtype}")  # and no fix
        n = len(x)
        if _is_torchvision_v2(step) and y is not None:
            x2, y2 = _checked(step, i, step(x, y), pair=True, batch=n)
            if not isinstance(y2, torch.Tensor):  # a v2.Transform of one's own: a later mix, or the caller, got none
                raise not_about_the_batch(ValueError(
                    f"{_name(step)} at step {i} returned labels {type(y2).__name__} for the labels it was given: a "
                    f"step must return the labels (or, for a label mix, their mix), or the batch loses them"))
            return x2, y2
        if _is_torchvision_v2(step) and any(isinstance(p, LatentTransform) for p in _parts(step)):
            return _checked(step, i, step(x, None), pair=True, batch=n)[0], None  # it hands the latent step's (x, None) on
        # given only the images, torchvision's v2.Lambda never sees None; images in, images out (but where the chain
        # takes any tensor: ISDA's x, never read)
        given = x if self._takes_images else None
        return _checked(step, i, step(x), pair=False, batch=n, given=given), y
