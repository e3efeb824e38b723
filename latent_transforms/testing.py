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

import torch
from torch import nn

from .base import LatentTransform


def model_state(model: nn.Module | None):
    """A copy of what a transform must leave alone: ``model``'s state dict, train/eval flags and gradients."""
    if model is None:
        return None
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [m.training for m in model.modules()],
            [None if p.grad is None else p.grad.clone() for p in model.parameters()])


def expect(ok: bool | torch.Tensor, message: str) -> None:
    """``AssertionError(message)`` unless ``ok``: a check that ``python -O`` does not remove, unlike ``assert``."""
    if not ok:
        raise AssertionError(message)


def assert_model_unchanged(model: nn.Module | None, before) -> None:
    """``AssertionError`` naming what changed in ``model`` since ``before = model_state(model)``."""
    if model is None:
        return
    after = model_state(model)
    for k, v in before[0].items():
        expect(torch.equal(v, after[0][k]), f"model state {k} changed")
    expect(before[1] == after[1], "train/eval flags changed")
    for g0, g1 in zip(before[2], after[2]):  # a gradient made where there was none, or set to None, too
        expect(g0 is g1 is None or g0 is not None and g1 is not None and torch.equal(g0, g1),
               "parameter gradients changed")


def replayed(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``b`` is ``a`` made again from the same draws: on the CPU bit for bit; elsewhere to the rounding of
    kernels that are not deterministic (an adversarial step's backward through a model's pooling on a GPU:
    docs/reliability.md#determinism)."""
    if a.device.type == "cpu":
        return torch.equal(a, b)
    return a.shape == b.shape and torch.allclose(a.double(), b.double(), atol=1e-5)


@contextlib.contextmanager
def _raises(kind: type[BaseException], match: str) -> Iterator[None]:
    """As ``pytest.raises(kind, match=match)``: the block must raise ``kind`` with a message matching ``match``."""
    try:
        yield
    except kind as e:
        expect(re.search(match, str(e)), f"{type(e).__name__} {str(e)!r} does not match {match!r}")
    else:
        raise AssertionError(f"no {kind.__name__} raised (expected one matching {match!r})")


def check_transform_contract(make: Callable[..., LatentTransform], x: torch.Tensor, y: torch.Tensor,
                             model: nn.Module | None = None, num_classes: int = 10, returns_x: bool = False) -> None:
    """Check the contract of docs/reliability.md on one transform; ``AssertionError`` at the first breach (an error
    the transform raises itself, where it should not or of another type than documented, comes through as raised).

    Args:
        make: ``make(**kwargs) -> LatentTransform``, a new transform built with ``generator=`` and ``p=`` added to
            your own settings (``lambda **kw: MyMethod(codec, rate=0.2, **kw)``).
        x: (B, C, H, W) float in [0, 1], a valid batch (B >= 2). y: (B,) int64 class indices in ``[0, num_classes)``.
        model: the classifier, if the transform needs one (its state, modes and gradients must come back unchanged).
        num_classes: the classes of ``y`` (the width of a label-mixing transform's soft labels).
        returns_x: the transform returns ``x`` itself (ISDA), not a new tensor.

    Checked: outputs of x's shape, dtype and device, finite, in [0, 1], without autograd history; labels kept (soft
    and summing to 1 for ``mixes_labels``); ``stats``; the same seed gives the same output and ``params=t.last_params``
    replays it (every draw made in ``make_params``); ``p=0`` and ``eval()`` are the identity; a batch of one and an
    empty batch pass; float64 stays float64 (checked without a model); a missing model or labels is refused as
    documented; pickling.
    """
    t = make(generator=0)
    expect(isinstance(t, LatentTransform), f"make(...) must build a LatentTransform, got {type(t).__name__}")
    before = model_state(model)
    x2, y2 = t(x, y, model)
    assert_model_unchanged(model, before)
    expect(x2.shape == x.shape and x2.dtype == x.dtype and x2.device == x.device,
           f"x2 is {tuple(x2.shape)} {x2.dtype} on {x2.device}, x {tuple(x.shape)} {x.dtype} on {x.device}")
    expect(torch.isfinite(x2).all() and x2.min() >= 0 and x2.max() <= 1, "x2 is not finite and in [0, 1]")
    if t.mixes_labels:
        expect(y2.shape == (x.shape[0], num_classes),
               f"a label-mixing transform returned y2 of shape {tuple(y2.shape)}, not {(x.shape[0], num_classes)}")
        expect(torch.allclose(y2.sum(1), y2.new_ones(x.shape[0]), atol=1e-5) and y2.min() >= 0,
               "the soft labels y2 are not non-negative rows summing to 1")
    else:
        expect(torch.equal(y2, y), "the labels changed (set mixes_labels = True for a method that mixes them)")
    stats = t.stats
    expect(stats["seen"] == x.shape[0] and stats["transformed"] + stats["rejected"] <= stats["seen"],
           f"stats {stats} do not count the batch of {x.shape[0]}")

    # same seed, same output
    x3, y3 = make(generator=0)(x, y, model)
    expect(replayed(x2, x3) and replayed(y2, y3), "the same seed gave another output (a draw not from the generator?)")

    # the call's draws replayed give the same output: every random draw is made in make_params (ISDA keeps none)
    if t.last_params:
        x4, y4 = make(generator=1)(x, y, model, params=t.last_params)
        expect(replayed(x2, x4) and replayed(y2, y4), "params=t.last_params gave another output: every random draw "
                                                      "must be made in make_params")

    # p=0 is the identity (labels soft for mixing methods, with the same classes)
    x0, y0 = make(generator=0, p=0.0)(x, y, model)
    expect(torch.equal(x0, x), "p=0 changed x")
    expect(x0 is x if returns_x else x0.data_ptr() != x.data_ptr(),  # in-place on x2 must leave x as it is
           "p=0 copied x (returns_x=True: the transform returns x itself)" if returns_x
           else "p=0 returned x's storage: an in-place change of x2 would change x")
    expect(torch.equal(y0.argmax(1), y) if t.mixes_labels else torch.equal(y0, y), "p=0 changed the labels")

    # unselected samples pass bit-identical
    tp = make(generator=1, p=0.5)
    xp, _ = tp(x, y, model)
    changed = (xp != x).flatten(1).any(1)
    expect(int(changed.sum()) <= tp.stats["transformed"],
           f"p=0.5 changed {int(changed.sum())} samples but stats['transformed'] counts {tp.stats['transformed']}")

    # eval mode is the identity
    te = make(generator=0).eval()
    xe, ye = te(x, y, model)
    expect(xe is x and ye is y, "eval() mode did not return x and y themselves")
    assert_model_unchanged(model, before)

    # new outputs carry no autograd history, even from an x that requires grad (samples passed through too);
    # a transform that leaves images alone (ISDA) may return x itself
    for p in (1.0, 0.5):
        xin = x.clone().requires_grad_(True)
        xg, _ = make(generator=0, p=p)(xin, y, model)
        expect(xg is xin or (xg.grad_fn is None and not xg.requires_grad),
               f"the output at p={p} carries autograd history (make it under torch.no_grad())")

    # a batch of one works
    x1, _ = make(generator=0)(x[:1], y[:1], model)
    expect(x1.shape == x[:1].shape, f"a batch of one came back as {tuple(x1.shape)}")

    # an empty batch (a DDP rank's, a filter's) passes, as through torchvision's and kornia's transforms: empty
    # outputs of the same form, nothing counted, in training and eval mode
    for mode in ("train", "eval"):
        t_empty = getattr(make(generator=0), mode)()
        xz, yz = t_empty(x[:0], y[:0], model)
        expect(xz.shape == x[:0].shape and xz.dtype == x.dtype and xz.device == x.device,
               f"an empty batch in {mode} mode came back as {tuple(xz.shape)} {xz.dtype} on {xz.device}")
        expect(yz.shape == ((0, num_classes) if t.mixes_labels and mode == "train" else (0,)),
               f"an empty batch's labels in {mode} mode came back as {tuple(yz.shape)}")
        expect(t_empty.stats["seen"] == 0, f"an empty batch in {mode} mode was counted: {t_empty.stats}")

    # float64 input keeps its dtype (a model, if any, would have to accept it: skip then)
    if model is None:
        xd, _ = make(generator=0)(x.double(), y)
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
            xl, _ = t_labelled(x, y, model)
            xn, yn = t_none(x, model=model)
            expect(yn is None and replayed(xn, xl) and t_none.stats == t_labelled.stats,
                   f"y=None at p={p} did not give the labelled call's images, stats and None labels")
    if model is not None:  # the model given in y's place
        with _raises(TypeError, re.escape("t(x, model=model)")):
            make(generator=0)(x, model)

    # picklable / deep-copyable like any module; torch 2.4 unpickles a tensor through torch.load with a FutureWarning
    # (weights_only=False) that a suite run with warnings as errors took for a breach of the transform's
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "You are using `torch.load` with `weights_only=False`", FutureWarning)
        pickle.loads(pickle.dumps(copy.deepcopy(t)))
