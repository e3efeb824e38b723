"""The contract every transform honours; each method's tests call ``check_transform_contract``."""
from __future__ import annotations

import copy
import pickle
import re

import pytest
import torch
from torch import nn

from latent_transforms import LatentTransform


def model_state(model: nn.Module | None):
    if model is None:
        return None
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [m.training for m in model.modules()],
            [None if p.grad is None else p.grad.clone() for p in model.parameters()])


def assert_model_unchanged(model: nn.Module | None, before) -> None:
    if model is None:
        return
    after = model_state(model)
    for k, v in before[0].items():
        assert torch.equal(v, after[0][k]), f"model state {k} changed"
    assert before[1] == after[1], "train/eval flags changed"
    for g0, g1 in zip(before[2], after[2]):
        assert (g0 is None and g1 is None) or torch.equal(g0, g1), "parameter gradients changed"


def replayed(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``b`` is ``a`` made again from the same draws: on the CPU bit for bit; elsewhere to the rounding of
    kernels that are not deterministic (an adversarial step's backward through a model's pooling on a GPU:
    docs/reliability.md#determinism)."""
    if a.device.type == "cpu":
        return torch.equal(a, b)
    return a.shape == b.shape and torch.allclose(a.double(), b.double(), atol=1e-5)


def check_transform_contract(make, x: torch.Tensor, y: torch.Tensor, model: nn.Module | None = None,
                             num_classes: int = 10, returns_x: bool = False) -> None:
    """``make(**kwargs) -> LatentTransform``; x, y a valid batch; model if the transform needs one; ``returns_x``:
    the transform returns ``x`` itself (ISDA), not a new tensor."""
    t = make(generator=0)
    assert isinstance(t, LatentTransform)
    before = model_state(model)
    x2, y2 = t(x, y, model)
    assert_model_unchanged(model, before)
    assert x2.shape == x.shape and x2.dtype == x.dtype and x2.device == x.device
    assert torch.isfinite(x2).all() and x2.min() >= 0 and x2.max() <= 1
    if t.mixes_labels:
        assert y2.shape == (x.shape[0], num_classes)
        assert torch.allclose(y2.sum(1), y2.new_ones(x.shape[0]), atol=1e-5) and y2.min() >= 0
    else:
        assert torch.equal(y2, y)
    stats = t.stats
    assert stats["seen"] == x.shape[0] and stats["transformed"] + stats["rejected"] <= stats["seen"]

    # same seed, same output
    x3, y3 = make(generator=0)(x, y, model)
    assert replayed(x2, x3) and replayed(y2, y3)

    # p=0 is the identity (labels soft for mixing methods, with the same classes)
    x0, y0 = make(generator=0, p=0.0)(x, y, model)
    assert torch.equal(x0, x) and (x0 is x if returns_x else x0.data_ptr() != x.data_ptr())  # in-place on x2: x kept
    assert torch.equal(y0.argmax(1), y) if t.mixes_labels else torch.equal(y0, y)

    # unselected samples pass bit-identical
    tp = make(generator=1, p=0.5)
    xp, _ = tp(x, y, model)
    changed = (xp != x).flatten(1).any(1)
    assert int(changed.sum()) <= tp.stats["transformed"]

    # eval mode is the identity
    te = make(generator=0).eval()
    xe, ye = te(x, y, model)
    assert xe is x and ye is y
    assert_model_unchanged(model, before)

    # new outputs carry no autograd history, even from an x that requires grad (samples passed through too);
    # a transform that leaves images alone (ISDA) may return x itself
    for p in (1.0, 0.5):
        xin = x.clone().requires_grad_(True)
        xg, _ = make(generator=0, p=p)(xin, y, model)
        assert xg is xin or (xg.grad_fn is None and not xg.requires_grad)

    # a batch of one works
    x1, _ = make(generator=0)(x[:1], y[:1], model)
    assert x1.shape == x[:1].shape

    # an empty batch (a DDP rank's, a filter's) passes, as through torchvision's and kornia's transforms: empty
    # outputs of the same form, nothing counted, in training and eval mode
    for mode in ("train", "eval"):
        t_empty = getattr(make(generator=0), mode)()
        xz, yz = t_empty(x[:0], y[:0], model)
        assert xz.shape == x[:0].shape and xz.dtype == x.dtype and xz.device == x.device
        assert yz.shape == ((0, num_classes) if t.mixes_labels and mode == "train" else (0,))
        assert t_empty.stats["seen"] == 0

    # float64 input keeps its dtype (a model, if any, would have to accept it: skip then)
    if model is None:
        xd, _ = make(generator=0)(x.double(), y)
        assert xd.dtype == torch.float64

    # needs a model -> TypeError without one
    if t.needs_model:
        with pytest.raises(TypeError, match="model"):
            make(generator=0)(x, y)

    # an unlabelled batch: y=None gives the same images and None labels, or, where labels are needed, a clear
    # error (also in eval mode)
    for p in (1.0, 0.5):
        t_none = make(generator=1, p=p)
        if t.needs_labels:
            for mode in (t_none.train(), t_none.eval()):
                for call in (lambda: mode(x, None, model), lambda: mode(x, model=model)):
                    with pytest.raises(ValueError, match="needs labels: .*not y=None"):
                        call()
        else:
            t_labelled = make(generator=1, p=p)
            xl, _ = t_labelled(x, y, model)
            xn, yn = t_none(x, model=model)
            assert yn is None and replayed(xn, xl) and t_none.stats == t_labelled.stats
    if model is not None:  # the model given in y's place
        with pytest.raises(TypeError, match=re.escape("t(x, model=model)")):
            make(generator=0)(x, model)

    # picklable / deep-copyable like any module
    pickle.loads(pickle.dumps(copy.deepcopy(t)))
