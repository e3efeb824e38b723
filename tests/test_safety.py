"""Numerically safe decoding: whatever eps or steps, outputs are finite and in [0, 1] (issue: latent quality), with
random-init codecs (8x8 and CIFAR-size) and with every shipped checkpoint, the defaults of the latent methods
(glow-/vae-cifar10) included; latent mixup inference never feeds the model an implausible decode.

With the coupling-scale floor and the rejection both removed (``BoundedAffineCoupling._shift_scale`` returning
``sigmoid(s + 2)``, ``base.keep_plausible`` only clipping) the property tests fail: the shipped flows then decode
large perturbations to NaN."""
import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from latent_transforms import hub
from latent_transforms.latent_adversarial import LatentAdversarial
from latent_transforms.latent_noise import LatentNoise
from latent_transforms.mixup_inference import LatentMixupInference
from latent_transforms.varmixup import VarMixup

from conftest import SpyNet, TinyNet, cifar_size_glow, tiny_glow, tiny_vae

SHIPPED = {e["name"] for e in hub.list_checkpoints() if e.get("shipped")}
RANDOM_INIT = {"random-init-glow": tiny_glow, "random-init-glow-cifar-size": cifar_size_glow,
               "random-init-vae": tiny_vae}
FLOWS = ["random-init-glow", "random-init-glow-cifar-size", "glow-digits", "glow-cifar10"]
VAES = ["random-init-vae", "vae-digits", "vae-cifar10"]


@functools.cache
def _codec(name):
    return RANDOM_INIT[name](7) if name in RANDOM_INIT else hub.load(name)


IMAGE_KINDS = {"uniform": lambda shape, g: torch.rand(shape, generator=g),
               "binary": lambda shape, g: (torch.rand(shape, generator=g) > 0.5).float(),
               "zeros": lambda shape, g: torch.zeros(shape), "ones": lambda shape, g: torch.ones(shape)}


def _images(codec, kind, generator, n=6):
    return IMAGE_KINDS[kind]((n, *codec.image_shape), generator)


def _in_range(x2):
    return bool(torch.isfinite(x2).all()) and x2.min() >= 0 and x2.max() <= 1


def test_the_defaults_are_among_the_checked_checkpoints():
    assert LatentNoise().codec.fingerprint() == _codec("glow-cifar10").fingerprint()
    assert LatentAdversarial().codec.fingerprint() == _codec("glow-cifar10").fingerprint()
    assert VarMixup(num_classes=10).codec.fingerprint() == _codec("vae-cifar10").fingerprint()
    assert set(FLOWS + VAES) - set(RANDOM_INIT) <= SHIPPED, SHIPPED
    assert _codec("random-init-glow-cifar-size").image_shape == _codec("glow-cifar10").image_shape


@pytest.mark.parametrize("codec", FLOWS + VAES)
@settings(max_examples=6)
@given(eps=st.floats(0, 50), norm=st.sampled_from(["l2", "linf", None]), seed=st.integers(0, 2**31),
       kind=st.sampled_from(sorted(IMAGE_KINDS)))
def test_noise_output_is_always_finite_and_in_range(codec, eps, norm, seed, kind):
    g = torch.Generator().manual_seed(seed)
    x = _images(_codec(codec), kind, g)
    t = LatentNoise(_codec(codec), eps=eps, norm=norm, generator=seed)
    x2, _ = t(x)
    assert _in_range(x2)
    assert t.stats["transformed"] + t.stats["rejected"] == 6


@pytest.mark.parametrize("codec", FLOWS + VAES)
@settings(max_examples=5)
@given(eps=st.floats(0, 50), steps=st.integers(0, 10), step_size=st.floats(0, 50),
       norm=st.sampled_from(["l2", "linf"]), seed=st.integers(0, 2**31), kind=st.sampled_from(sorted(IMAGE_KINDS)))
def test_adversarial_output_is_always_finite_and_in_range(codec, eps, steps, step_size, norm, seed, kind):
    c = _codec(codec)
    g = torch.Generator().manual_seed(seed)
    x, y = _images(c, kind, g, n=4), torch.randint(0, 10, (4,), generator=g)
    torch.manual_seed(0)
    t = LatentAdversarial(c, eps=eps, steps=steps, step_size=step_size, norm=norm, generator=seed)
    x2, _ = t(x, y, TinyNet(c.image_shape[0]))
    assert _in_range(x2)
    assert t.stats["transformed"] + t.stats["rejected"] == 4


@settings(max_examples=12)
@given(codec=st.sampled_from(VAES + FLOWS), alpha=st.floats(0.01, 100), keep_detail=st.booleans(),
       seed=st.integers(0, 2**31), kind=st.sampled_from(sorted(IMAGE_KINDS)))
def test_varmixup_output_is_always_finite_in_range_with_valid_labels(codec, alpha, keep_detail, seed, kind):
    g = torch.Generator().manual_seed(seed)
    x = _images(_codec(codec), kind, g)
    y = torch.randint(0, 10, (6,), generator=g)
    x2, y2 = VarMixup(_codec(codec), alpha, num_classes=10, keep_detail=keep_detail, p=1.0, generator=seed)(x, y)
    assert _in_range(x2)
    assert torch.isfinite(y2).all() and y2.min() >= 0 and torch.allclose(y2.sum(1), torch.ones(6))


def test_mixup_inference_replaces_implausible_decodes_by_the_input_and_counts_them():
    codec = tiny_glow(7)  # its own copy: decode_flat is patched below
    decode = codec.decode_flat

    def broken(z):  # sample 0 NaN, 1 more than 0.5 outside [0, 1] (both rejected), 2 just outside (clipped)
        out = decode(z).clone()
        out[0, 0, 0, 0], out[1], out[2] = float("nan"), 1.6, 1.4
        return out

    codec.decode_flat = broken
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    spy = SpyNet(TinyNet(1))
    mi = LatentMixupInference(spy, codec, references=x, num_mixes=3, generator=0)
    probs = mi(x)
    assert torch.isfinite(probs).all() and len(spy.inputs) == 3
    for seen in spy.inputs:
        assert torch.equal(seen[:2], x[:2]) and torch.equal(seen[2], torch.ones_like(x[2])) and _in_range(seen[3])
    assert mi.stats == {"seen": 12, "transformed": 6, "rejected": 6}
    mi.eval()(x)  # a predictor: counts in eval mode too
    assert mi.stats["seen"] == 24
    mi.reset_stats()
    assert mi.stats == {"seen": 0, "transformed": 0, "rejected": 0}


@settings(max_examples=8)
@given(codec=st.sampled_from(FLOWS + VAES), lam=st.floats(0.01, 1), seed=st.integers(0, 2**31),
       kind=st.sampled_from(sorted(IMAGE_KINDS)))
def test_mixup_inference_feeds_the_model_finite_images_in_range(codec, lam, seed, kind):
    c = _codec(codec)
    g = torch.Generator().manual_seed(seed)
    x, refs = _images(c, kind, g, n=4), _images(c, "uniform", g, n=8)
    torch.manual_seed(0)
    spy = SpyNet(TinyNet(c.image_shape[0]))
    probs = LatentMixupInference(spy, c, references=refs, lam=lam, num_mixes=2, generator=seed)(x)
    assert torch.isfinite(probs).all() and all(_in_range(seen) for seen in spy.inputs)
