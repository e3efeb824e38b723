"""The contract every transform honours, as one check: the library's own tests call it for each method, and a method
of your own can be checked the same way (docs/extending.md). It raises ``AssertionError``s that ``python -O`` keeps,
and needs no test framework."""
from __future__ import annotations

import contextlib
import copy
import pickle
import re
import warnings
from collections.abc import Callable, Iterator
from typing import Any, cast

import torch
from torch import nn

from .base import LEFT_IN_EVAL, LatentTransform
from .compose import Compose
from .labels import to_soft
from .validation import check_batch, check_bool, check_count, check_model_slot, describe

__all__ = ["check_transform_contract"]

# model_state's: the state dict, the modules' train flags, the gradients, the parameters' requires_grad
_ModelState = tuple[dict[str, torch.Tensor], list[bool], list["torch.Tensor | None"], list[bool]]


def model_state(model: nn.Module | None) -> _ModelState | None:
    """A copy of what a transform must leave alone, for ``_assert_model_unchanged``: ``model``'s state dict, train/eval
    flags, gradients and parameters' ``requires_grad``."""
    if model is None:
        return None
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [m.training for m in model.modules()],
            [None if p.grad is None else p.grad.clone() for p in model.parameters()],
            [p.requires_grad for p in model.parameters()])


def expect(ok: bool | torch.Tensor, message: str) -> None:
    """``AssertionError(message)`` unless ``ok``: a check that ``python -O`` does not remove, unlike ``assert``."""
    if not ok:
        raise AssertionError(message)


def _assert_model_unchanged(model: nn.Module | None, before: _ModelState | None) -> None:
    """``AssertionError`` naming what changed in ``model`` since ``before = model_state(model)``."""
    if model is None:
        return
    before, after = cast(_ModelState, before), cast(_ModelState, model_state(model))  # model is not None
    for k, v in before[0].items():
        expect(torch.equal(v, after[0][k]), f"model state {k} changed")
    expect(before[1] == after[1], "train/eval flags changed")
    for g0, g1 in zip(before[2], after[2]):  # a gradient made where there was none, or set to None, too
        expect(g0 is g1 is None or g0 is not None and g1 is not None and torch.equal(g0, g1),
               "parameter gradients changed")
    expect(before[3:] == after[3:], "parameters' requires_grad changed (borrow the model with modelutils.borrowed)")


def replayed(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``b`` is ``a`` made again from the same draws: on the CPU bit for bit; elsewhere to the rounding of
    kernels that are not deterministic (an adversarial step's backward through a model's pooling on a GPU:
    docs/reliability.md#determinism)."""
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or (a.dtype, a.device) != (b.dtype, b.device):
        return False  # (torch.equal compares values only: 0.5 in float32 and in float64 are equal)
    if a.device.type == "cpu":
        return torch.equal(a, b)
    return a.shape == b.shape and torch.allclose(a.double(), b.double(), atol=1e-5)


@contextlib.contextmanager
def _raises(kind: type[BaseException], match: str) -> Iterator[None]:
    """As ``pytest.raises(kind, match=match)``: the block must raise ``kind`` with a message matching ``match``."""
    try:
        yield
    except kind as e:
        expect(re.search(match, str(e)) is not None, f"{type(e).__name__} {str(e)!r} does not match {match!r}")
    else:
        raise AssertionError(f"no {kind.__name__} raised (expected one matching {match!r})")


def _called_on_purpose(t: nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
    """``_called``, for a transform put in ``eval()`` mode on purpose beside a training model: without the warning that
    it augments nothing (a suite run with ``-W error`` would fail on it)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", LEFT_IN_EVAL)
        return _called(t, x, *args, **kwargs)


def _shape(t: object) -> str:
    """A tensor's shape for a message (what else it is, otherwise)."""
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else describe(t)


def _form(t: object) -> str:
    """A tensor's shape, dtype and device for a message (what else it is, otherwise)."""
    return f"{tuple(t.shape)} {t.dtype} on {t.device}" if isinstance(t, torch.Tensor) else describe(t)


def _called(t: nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
    """``t(x, *args, **kwargs)`` (``args[0]``: the labels, if given), checked to return ``(x2, y2)`` and to leave the
    caller's ``x`` and labels as they were."""
    given: dict[str, Any] = {"x": x, "y": args[0] if args else None}
    before = {k: v.clone() for k, v in given.items() if isinstance(v, torch.Tensor)}
    out = t(x, *args, **kwargs)
    expect(isinstance(out, tuple) and len(out) == 2, f"the call returned {describe(out)}, not (x2, y2)")
    for name, v in before.items():
        expect(torch.equal(given[name], v), f"the call changed the caller's {name} in place: work on a copy "
                                            f"({name}.clone()) or out of place")
    return cast("tuple[Any, ...]", out)  # checked above


def _check_arguments(make: object, x: object, y: object, model: object, num_classes: object,
                     returns_x: object) -> int:
    """``TypeError``/``ValueError`` naming a bad argument of the check itself (not a breach of the contract, which is
    an ``AssertionError``); the number of classes of ``y``."""
    if isinstance(make, nn.Module) or not callable(make):
        raise TypeError(f"make must build the transform from generator= and p= (lambda **kw: MyMethod(..., **kw)), "
                        f"got {describe(make)}{' itself' if isinstance(make, nn.Module) else ''}")
    if y is None:
        raise ValueError("y must be the batch's labels, (B,) int64 class indices or (B, K) soft labels, not None: the "
                         "check makes its own y=None calls (an unlabelled dataset: pass any labels, "
                         "torch.zeros(B, dtype=torch.long))")
    k = y.shape[1] if isinstance(y, torch.Tensor) and y.ndim == 2 else check_count("num_classes", num_classes, low=1)
    x, y = cast(torch.Tensor, x), cast(torch.Tensor, y)  # as check_batch refuses anything else
    check_batch(x, y)  # x: (B, C, H, W) float in [0, 1]; y: B labels on x's device (k: checked for a mixing method)
    if len(x) < 2:
        raise ValueError(f"x must hold 2 samples or more (a label-mixing method needs partners; the check makes its "
                         f"own batch of one and empty batch), got {len(x)}")
    check_model_slot(model)
    check_bool("returns_x", returns_x)
    return k


def _same_draws(a: torch.Tensor, b: torch.Tensor) -> bool:
    """``torch.equal``, where a NaN equals a NaN at the same place (a draw may hold NaN: the library takes it)."""
    return torch.equal(a, b) or (a.is_floating_point() and a.dtype == b.dtype and a.shape == b.shape
                                 and torch.allclose(a, b, rtol=0.0, atol=0.0, equal_nan=True))


def _check_draws_from_generator(t: LatentTransform, n: int, device: torch.device) -> None:
    """``AssertionError`` unless ``t.make_params(n, generator, device)`` draws from ``generator`` or returns constants
    (the same for any generator, and call after call)."""
    g = torch.Generator(device=device).manual_seed(0)
    start = g.get_state()
    draws = t.make_params(n, g, device)
    if not draws or not torch.equal(g.get_state(), start):
        return
    other = t.make_params(n, torch.Generator(device=device).manual_seed(1), device)  # another seed, a later call
    expect(all(_same_draws(v, other[k]) for k, v in draws.items()),
           f"{type(t).__name__}.make_params drew nothing from its generator, yet its draws ({', '.join(draws)}) change "
           f"from call to call or seed to seed: draw from the generator it is given (torch.rand(..., "
           f"generator=generator, device=device)), not torch's global RNG or a generator of its own")


def check_transform_contract(make: Callable[..., LatentTransform], x: torch.Tensor, y: torch.Tensor,
                             model: nn.Module | None = None, num_classes: int = 10, returns_x: bool = False) -> None:
    """Check the contract of docs/reliability.md on one transform; ``AssertionError`` at the first breach (an error
    the transform raises itself, where it should not or of another type than documented, comes through as raised;
    a bad argument of the check itself is a ``TypeError`` or ``ValueError`` naming it).

    Args:
        make: ``make(**kwargs) -> LatentTransform``, a new transform built with ``generator=`` and ``p=`` added to
            your own settings (``lambda **kw: MyMethod(codec, rate=0.2, **kw)``).
        x: (B, C, H, W) float in [0, 1], a valid batch (B >= 2).
        y: (B,) int64 class indices in ``[0, num_classes)`` or (B, K) soft labels.
        model: the classifier, if the transform needs one (its state, modes, gradients and ``requires_grad`` must come
            back unchanged).
        num_classes: the classes of class-index ``y`` (the width of a label-mixing transform's soft labels; soft
            labels give their own K).
        returns_x: the transform returns ``x`` itself (ISDA), not a new tensor.

    Checked: outputs of x's shape, dtype and device, finite, in [0, 1], without autograd history; the caller's x and
    y not changed in place; labels kept (soft, of ``labels.to_soft``'s dtype and summing to 1 for ``mixes_labels``);
    ``stats``; the same seed (an int or a ``torch.Generator``) gives the same output and ``params=t.last_params``
    replays it (every draw made in ``make_params``, from the generator it is given, and kept as drawn: not changed by
    ``transform``); ``p=0`` and ``eval()`` are the identity; a batch of one and an empty batch pass; float64 stays
    float64 (checked without a model); ``y=None`` gives the labelled call's images and ``None``; a missing model or
    labels is refused as documented; pickling. Devices: only ``x``'s (a CPU batch cannot show a ``.cpu()`` in
    ``transform``): run the check on the device you train on too.
    """
    k = _check_arguments(make, x, y, model, num_classes, returns_x)
    batch = x.shape[0]
    t = make(generator=0)
    hint = ": check each of its steps' make on its own" if isinstance(t, Compose) else ""
    expect(isinstance(t, LatentTransform), f"make(...) must build a LatentTransform, got {type(t).__name__}{hint}")
    expect(getattr(getattr(t, "_rng", None), "spec", 0) is not None, "make(generator=0) built a transform without "
           "the generator: make must pass generator= and p= on to it (lambda **kw: MyMethod(..., **kw))")
    if t.mixes_labels and y.ndim == 1 and int(y.max()) >= k:  # k: the width of its soft labels
        raise ValueError(f"y has class index {int(y.max())}, out of range for num_classes={k}: pass the classes of y "
                         f"as check_transform_contract(..., num_classes=...)")
    before = model_state(model)
    x2, y2 = _called(t, x, y, model)
    _assert_model_unchanged(model, before)
    expect(isinstance(x2, torch.Tensor) and x2.shape == x.shape and x2.dtype == x.dtype and x2.device == x.device,
           f"x2 is {_form(x2)}, x {_form(x)}")
    expect(torch.isfinite(x2).all() and x2.min() >= 0 and x2.max() <= 1, "x2 is not finite and in [0, 1]")
    labels = to_soft(y, k) if t.mixes_labels else y  # what p=0 gives: y, made soft (one-hot) by a mixing method
    if t.mixes_labels:
        expect(isinstance(y2, torch.Tensor) and y2.shape == (batch, k),
               f"a label-mixing transform returned y2 of shape {_shape(y2)}, not {(batch, k)}")
        expect(y2.dtype == labels.dtype and y2.device == x.device, f"a label-mixing transform returned y2 as "
               f"{y2.dtype} on {y2.device}, not {labels.dtype} on {x.device} (as labels.to_soft(y) makes them)")
        expect(torch.allclose(y2.sum(1), y2.new_ones(batch), atol=1e-5) and y2.min() >= 0,
               "the soft labels y2 are not non-negative rows summing to 1")
    else:
        expect(isinstance(y2, torch.Tensor) and y2.dtype == y.dtype and y2.device == y.device and torch.equal(y2, y),
               f"the labels changed: y2 {_form(y2)}, y {_form(y)} (set mixes_labels = True for a method that mixes "
               f"them)")
    stats = t.stats
    expect(stats["seen"] == batch and stats["transformed"] + stats["rejected"] <= stats["seen"],
           f"stats {stats} do not count the batch of {batch}")

    # same seed, same output
    x3, y3 = _called(make(generator=0), x, y, model)
    expect(replayed(x2, x3) and replayed(y2, y3), "the same seed gave another output (a draw not from the generator?)")

    # make_params draws from the generator it is given: one that draws nothing from it makes draws that no seed sets
    # (torch's global RNG, a generator of its own, one seeded by generator.initial_seed()) or none at all (constants)
    _check_draws_from_generator(t, batch, x.device)
    # the call's draws are those of torch.Generator().manual_seed(0), as the int seed's (checked below), after its
    # selection's where p < 1 (audit 439: checked at p=1 only; a p=0.5 method's were blamed on a draw outside
    # make_params)
    _, draws = t._draw(batch, torch.Generator(device=x.device).manual_seed(0), x.device)
    changed = [k for k, v in draws.items() if not _same_draws(v, t.last_params[k])]
    expect(not changed, f"last_params holds other {', '.join(changed)} than make_params drew: transform changed "
                        f"its params in place or under their keys (a replay would change them again); compute "
                        f"out of place, and add what it computes under keys of its own")

    # the call's draws replayed give the same output: every random draw is made in make_params (ISDA keeps none)
    if t.last_params:
        x4, y4 = _called(make(generator=1), x, y, model, params=t.last_params)
        expect(replayed(x2, x4) and replayed(y2, y4), "params=t.last_params gave another output: every random draw "
                                                      "must be made in make_params")

    # a torch.Generator seeded alike makes the same draws as the int seed
    x3, y3 = _called(make(generator=torch.Generator(device=x.device).manual_seed(0)), x, y, model)
    expect(replayed(x2, x3) and replayed(y2, y3), "generator=torch.Generator().manual_seed(0) gave another output "
                                                  "than generator=0")

    # p=0 is the identity (labels soft for mixing methods, with the same classes)
    t0 = make(generator=0, p=0.0)
    expect(t0.p == 0.0, f"make(p=0.0) built a transform with p={t0.p}: make must pass generator= and p= on to it "
                        f"(lambda **kw: MyMethod(..., **kw))")
    x0, y0 = _called(t0, x, y, model)
    expect(isinstance(x0, torch.Tensor) and torch.equal(x0, x), "p=0 changed x")
    expect(x0 is x if returns_x else x0.data_ptr() != x.data_ptr(),  # in-place on x2 must leave x as it is
           "p=0 copied x (returns_x=True: the transform returns x itself)" if returns_x
           else "p=0 returned x's storage: an in-place change of x2 would change x (returns_x=True for a transform "
                "that returns x itself by design, as ISDA)")
    expect(isinstance(y0, torch.Tensor) and torch.equal(y0, labels) and y0.dtype == labels.dtype,
           "p=0 changed the labels")

    # unselected samples pass bit-identical
    tp = make(generator=1, p=0.5)
    xp, _ = _called(tp, x, y, model)
    changed = (xp != x).flatten(1).any(1)
    expect(int(changed.sum()) <= tp.stats["transformed"],
           f"p=0.5 changed {int(changed.sum())} samples but stats['transformed'] counts {tp.stats['transformed']}")

    # eval mode is the identity
    te = make(generator=0).eval()
    xe, ye = _called_on_purpose(te, x, y, model)
    expect(xe is x and ye is y, "eval() mode did not return x and y themselves")
    _assert_model_unchanged(model, before)

    # new outputs carry no autograd history, even from an x that requires grad (samples passed through too);
    # a transform that leaves images alone (ISDA) may return x itself
    for p in (1.0, 0.5):
        xin = x.detach().clone().requires_grad_(True)
        xg, _ = _called(make(generator=0, p=p), xin, y, model)
        expect(xg is xin or (xg.grad_fn is None and not xg.requires_grad),
               f"the output at p={p} carries autograd history (make it under torch.no_grad())")

    # a batch of one works
    x1, _ = _called(make(generator=0), x[:1], y[:1], model)
    expect(isinstance(x1, torch.Tensor) and x1.shape == x[:1].shape, f"a batch of one came back as {_shape(x1)}")

    # an empty batch (a DDP rank's, a filter's) passes, as through torchvision's and kornia's transforms: empty
    # outputs of the same form, nothing counted, in training and eval mode
    for mode in ("train", "eval"):
        t_empty = getattr(make(generator=0), mode)()
        xz, yz = _called_on_purpose(t_empty, x[:0], y[:0], model)
        expect(isinstance(xz, torch.Tensor) and xz.shape == x[:0].shape and xz.dtype == x.dtype and
               xz.device == x.device, f"an empty batch in {mode} mode came back as {_form(xz)}")
        expect(isinstance(yz, torch.Tensor) and yz.shape == (labels if mode == "train" else y)[:0].shape,
               f"an empty batch's labels in {mode} mode came back as {_shape(yz)}")
        expect(t_empty.stats["seen"] == 0, f"an empty batch in {mode} mode was counted: {t_empty.stats}")

    # float64 input keeps its dtype (a model, if any, would have to accept it: skip then)
    if model is None:
        xd, _ = _called(make(generator=0), x.double(), y)
        expect(xd.dtype == torch.float64, f"float64 input came back as {xd.dtype}")

    # needs a model -> TypeError without one
    if t.needs_model:
        with _raises(TypeError, "model"):
            make(generator=0)(x, y)

    # an unlabelled batch: y=None gives the same images and None labels, or, where labels are needed, a clear
    # error (also in eval mode)
    for p in (1.0, 0.5):
        t_none = make(generator=1, p=p)
        if t.needs_labels:
            for mode in ("train", "eval"):  # (t.train(), t.eval()) would be the module twice, in eval mode
                getattr(t_none, mode)()
                for call in (lambda: t_none(x, None, model), lambda: t_none(x, model=model)):
                    with _raises(ValueError, "needs labels: .*not y=None"):
                        call()
        else:
            t_labelled = make(generator=1, p=p)
            xl, _ = _called(t_labelled, x, y, model)
            xn, yn = _called(t_none, x, model=model)
            expect(yn is None and replayed(xn, xl) and t_none.stats == t_labelled.stats,
                   f"y=None at p={p} did not give the labelled call's images, stats and None labels")
    if not t.needs_labels:
        xe, ye = _called_on_purpose(te, x, model=model)
        expect(xe is x and ye is None, "eval() mode did not return x and None for y=None")
    if model is not None:  # the model given in y's place
        with _raises(TypeError, re.escape("t(x, model=model)")):
            make(generator=0)(x, model)  # type: ignore[call-overload]  # on purpose: refused at run time too

    # picklable / deep-copyable like any module; torch 2.4 unpickles a tensor through torch.load with a FutureWarning
    # (weights_only=False) that a suite run with warnings as errors took for a breach of the transform's
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "You are using `torch.load` with `weights_only=False`", FutureWarning)
        pickle.loads(pickle.dumps(copy.deepcopy(t)))
