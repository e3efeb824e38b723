"""Property tests of the guide's invariants on the library's methods (audit 286), over batch size 0-6, float32 and
float64, NCHW and channels_last, p, eps/alpha, class-index and soft labels, seeds: what check_transform_contract
checks on one batch, here on many, plus memory format, p=1 on every sample and another seed's other output."""
import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from latent_transforms import ISDA, Compose, LatentAdversarial, LatentNoise, VarMixup
from latent_transforms.codecs import flatten_latents, unflatten_latents
from latent_transforms.labels import blend, mix_labels, to_soft
from latent_transforms.rng import MIN_ALPHA, sample_beta

from conftest import EVAL_BESIDE_TRAINING, STRENGTH_ZERO_EXPECTED, TinyNet, tiny_glow, tiny_vae
from contract import replayed

GLOW, VAE = {1: tiny_glow(), 3: tiny_glow(shape=(3, 8, 8))}, {1: tiny_vae(), 3: tiny_vae(shape=(3, 8, 8))}
torch.manual_seed(0)
NET = {1: TinyNet(), 3: TinyNet(3)}
CPU = torch.device("cpu")

METHODS = {  # name: make(c, strength, p, generator) -> transform for c channels; strength: eps, or VarMixup's alpha
    "LatentNoise": lambda c, s, **kw: LatentNoise(GLOW[c], eps=s, **kw),
    "LatentAdversarial": lambda c, s, **kw: LatentAdversarial(GLOW[c], eps=s, steps=1, **kw),
    "VarMixup": lambda c, s, **kw: VarMixup(VAE[c], alpha=s, num_classes=10, **kw),
    "Compose": lambda c, s, **kw: Compose([LatentNoise(GLOW[c], eps=s, **kw),
                                           VarMixup(VAE[c], num_classes=10, **_another_seed(kw))], num_classes=10),
}


def _another_seed(kw: dict) -> dict:
    """``kw`` with an int ``generator`` seed one higher: two steps of one Compose seeded alike draw alike (it warns)."""
    return {**kw, "generator": kw["generator"] + 1} if isinstance(kw.get("generator"), int) else kw


def labelled_batch(b, dtype, soft, channels_last, seed):
    """x: (b, C, 8, 8) of ``dtype`` in [0, 1], C = 3 channels_last if asked (one channel is both formats), else 1;
    y: (b,) class indices in [0, 10) or (b, 10) soft labels of ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3 if channels_last else 1, 8, 8, generator=g).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.softmax(3 * torch.randn(b, 10, generator=g), 1).to(dtype) if soft else torch.randint(0, 10, (b,),
                                                                                                     generator=g)
    return x, y


def _model(name, x):
    return NET[x.shape[1]].to(x.dtype) if name == "LatentAdversarial" else None


@pytest.mark.parametrize("name", sorted(METHODS))
@settings(max_examples=4)
@example(b=4, dtype=torch.float64, soft=True, channels_last=True, p=1.0, strength=1.0, seed=0)  # always tried
@example(b=0, dtype=torch.float32, soft=False, channels_last=False, p=1.0, strength=1.0, seed=0)
@given(b=st.integers(0, 6), dtype=st.sampled_from([torch.float32, torch.float64]),
       soft=st.booleans(), channels_last=st.booleans(), p=st.sampled_from([0.0, 0.5, 1.0]) | st.floats(0, 1),
       strength=st.floats(0.25, 4), seed=st.integers(0, 2**31))
@EVAL_BESIDE_TRAINING
def test_a_transform_keeps_the_batch_form_and_replays_its_draws(name, b, dtype, soft, channels_last, p, strength,
                                                                  seed):
    x, y = labelled_batch(b, dtype, soft, channels_last, seed)
    c, model = x.shape[1], _model(name, x)
    make = lambda *a, **kw: METHODS[name](c, *a, **kw)
    t = make(strength, p=p, generator=seed)
    x2, y2 = t(x, y, model)
    assert (x2.shape, x2.dtype, x2.device) == (x.shape, x.dtype, x.device)
    assert x2.is_contiguous() == x.is_contiguous()
    assert x2.is_contiguous(memory_format=torch.channels_last) == x.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(x2).all() and (x2 >= 0).all() and (x2 <= 1).all()
    if name in ("VarMixup", "Compose"):
        assert y2.shape == (b, 10) and y2.dtype == (y.dtype if soft else torch.float32)
        assert (y2 >= 0).all() and (y2 <= 1).all() and torch.allclose(y2.sum(1), y2.new_ones(b), atol=1e-5)
    else:
        assert y2 is y
    steps = t if name == "Compose" else [t]
    for step in steps:
        selected = step.last_params.get("selected")
        if p == 0:
            assert selected is None or len(selected) == 0
        if p == 1 and b:
            assert torch.equal(selected, torch.arange(b))  # p=1 touches every sample
    if p == 0:
        assert torch.equal(x2, x) and torch.equal(y2, to_soft(y, 10) if name in ("VarMixup", "Compose") else y)
    # the same seed, or the draws replayed, give the same output
    # (a Compose's steps here share one torch.Generator, one stream: another than their own int seed's streams)
    x3, y3 = make(strength, p=p, generator=seed if name == "Compose" else torch.Generator().manual_seed(seed))(
        x, y, model)
    assert replayed(x2, x3) and replayed(y2, y3)
    if name != "Compose" and t.last_params:
        x4, y4 = make(strength, p=p, generator=seed + 1)(x, y, model, params=t.last_params)
        assert replayed(x2, x4) and replayed(y2, y4)
    # y=None: the labelled call's images (a label mix needs labels); eval(): the identity
    if name in ("LatentNoise", "LatentAdversarial"):
        xn, yn = make(strength, p=p, generator=seed)(x, None, model)
        assert yn is None and replayed(xn, x2)
    xe, ye = make(strength, p=p, generator=seed).eval()(x, y, model)
    assert xe is x and ye is y


@pytest.mark.parametrize("name", ["LatentNoise", "LatentAdversarial", "VarMixup"])
@settings(max_examples=3)
@given(b=st.integers(2, 6),
       seed=st.integers(0, 2**31))
def test_another_seed_gives_another_output(name, b, seed):
    """Every method here draws (LatentAdversarial its random start): two seeds, two outputs, but for samples
    rejected by both."""
    x, y = labelled_batch(b, torch.float32, False, False, seed)
    outs = []
    for s in (seed, seed + 1):
        t = METHODS[name](1, 2.0, p=1.0, generator=s)  # (VarMixup's default p is 0.25)
        outs.append(t(x, y, _model(name, x))[0])
        assert t.stats["rejected"] < b
    assert not torch.equal(*outs)


@settings(max_examples=10)
@given(b=st.integers(0, 6), p=st.floats(0, 1), seed=st.integers(0, 2**31))
@STRENGTH_ZERO_EXPECTED
@pytest.mark.filterwarnings("ignore:ISDA. the augmentation armed on:UserWarning")  # no model forward between calls
@EVAL_BESIDE_TRAINING
def test_isda_returns_the_batch_itself(b, p, seed):
    """ISDA augments in the model's feature space: x and y come back themselves, in training and in eval() mode
    (class indices only: soft labels are refused, docs/methods/isda.md)."""
    x, y = labelled_batch(b, torch.float32, False, False, seed)
    for t in (ISDA(10, p=p, generator=seed), ISDA(10, p=p, generator=seed).eval()):
        x2, y2 = t(x, y, NET[1])
        assert x2 is x and y2 is y


soft_labels = st.builds(lambda b, k, dtype, seed: torch.softmax(
    5 * torch.randn(b, k, generator=torch.Generator().manual_seed(seed)), 1).to(dtype),
    b=st.integers(0, 6), k=st.integers(2, 12), dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16))


@settings(max_examples=40)
@given(y=soft_labels, indices=st.booleans(), seed=st.integers(0, 2**16))
def test_mixed_labels_are_soft_labels(y, indices, seed):
    """mix_labels of class indices or soft labels, with any partners and weights in [0, 1] (0 and 1 included):
    rows in [0, 1] summing to 1; weight 1 keeps the labels, blend's weight 0 gives the partners'."""
    b, k = y.shape
    g = torch.Generator().manual_seed(seed)
    if indices:
        y = y.argmax(1) if b else torch.zeros(0, dtype=torch.long)
        soft = to_soft(y, k)
        assert soft.dtype == torch.float32 and torch.equal(soft.argmax(1), y) if b else soft.shape == (0, k)
    else:
        soft = to_soft(y, k)
        assert soft is y
    partner = torch.randint(0, max(b, 1), (b,), generator=g)
    lam = torch.rand(b, generator=g).round(decimals=1)  # 0 and 1 drawn too
    mixed = mix_labels(y, partner, lam, k)
    assert mixed.shape == (b, k) and mixed.dtype == soft.dtype
    assert (mixed >= 0).all() and (mixed <= 1).all() and torch.allclose(mixed.sum(1), mixed.new_ones(b), atol=1e-6)
    assert torch.equal(mix_labels(y, partner, torch.ones(b), k), soft)
    assert torch.equal(blend(soft, soft[partner], torch.zeros(b)), soft[partner])


@settings(max_examples=20)
@given(alpha=st.floats(MIN_ALPHA, 1e3), n=st.integers(0, 64), seed=st.integers(0, 2**31))
def test_beta_draws_are_weights_made_from_the_generator_alone(alpha, n, seed):
    lam = sample_beta(alpha, n, torch.Generator().manual_seed(seed), CPU)
    assert lam.shape == (n,) and lam.dtype == torch.float32 and (lam >= 0).all() and (lam <= 1).all()
    assert torch.equal(lam, sample_beta(alpha, n, torch.Generator().manual_seed(seed), CPU))
    if n >= 8:  # 8 continuous draws alike from two seeds: not by chance
        assert not torch.equal(lam, sample_beta(alpha, n, torch.Generator().manual_seed(seed + 1), CPU))


@settings(max_examples=40)
@given(b=st.integers(0, 4), shapes=st.lists(st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple),
                                            min_size=1, max_size=3),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_latents_flattened_unflatten_to_themselves(b, shapes, dtype):
    z = [torch.randn(b, *s, generator=torch.Generator().manual_seed(i)).to(dtype) for i, s in enumerate(shapes)]
    flat = flatten_latents(z)
    assert flat.shape == (b, sum(math.prod(s) for s in shapes)) and flat.dtype == dtype
    back = unflatten_latents(flat, shapes)
    assert len(back) == len(z) and all(torch.equal(a, c) and a.shape == c.shape for a, c in zip(back, z))
