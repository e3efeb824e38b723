"""Numerically safe decoding: whatever eps or steps, outputs are finite and in [0, 1] (issue: latent quality), with a
random-init codec and with every shipped checkpoint, the defaults of the latent methods (glow-/vae-cifar10) included."""
import functools

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from latent_transforms import hub
from latent_transforms.latent_adversarial import LatentAdversarial
from latent_transforms.latent_noise import LatentNoise
from latent_transforms.varmixup import VarMixup

from conftest import TinyNet, tiny_glow, tiny_vae

SHIPPED = {e["name"] for e in hub.list_checkpoints() if e.get("shipped")}
FLOWS = ["random-init-glow", "glow-digits", "glow-cifar10"]
VAES = ["random-init-vae", "vae-digits", "vae-cifar10"]


@functools.cache
def _codec(name):
    if name.startswith("random-init"):
        return (tiny_glow if name.endswith("glow") else tiny_vae)(7)
    return hub.load(name)


IMAGE_KINDS = {"uniform": lambda shape, g: torch.rand(shape, generator=g),
               "binary": lambda shape, g: (torch.rand(shape, generator=g) > 0.5).float(),
               "zeros": lambda shape, g: torch.zeros(shape), "ones": lambda shape, g: torch.ones(shape)}


def _images(codec, kind, generator, n=6):
    return IMAGE_KINDS[kind]((n, *codec.image_shape), generator)


def _in_range(x2):
    return bool(torch.isfinite(x2).all()) and x2.min() >= 0 and x2.max() <= 1


def test_the_defaults_are_among_the_checked_checkpoints():
    assert LatentNoise().codec.fingerprint() == _codec("glow-cifar10").fingerprint()
    assert VarMixup(num_classes=10).codec.fingerprint() == _codec("vae-cifar10").fingerprint()
    assert set(FLOWS + VAES) - {"random-init-glow", "random-init-vae"} <= SHIPPED, SHIPPED


@settings(max_examples=24, deadline=None)
@given(codec=st.sampled_from(FLOWS), eps=st.floats(0, 50), norm=st.sampled_from(["l2", "linf", None]),
       seed=st.integers(0, 2**31), kind=st.sampled_from(sorted(IMAGE_KINDS)))
def test_noise_output_is_always_finite_and_in_range(codec, eps, norm, seed, kind):
    g = torch.Generator().manual_seed(seed)
    x = _images(_codec(codec), kind, g)
    t = LatentNoise(_codec(codec), eps=eps, norm=norm, generator=seed)
    x2, _ = t(x)
    assert _in_range(x2)
    assert t.stats["transformed"] + t.stats["rejected"] == 6


@settings(max_examples=9, deadline=None)
@given(codec=st.sampled_from(FLOWS), eps=st.floats(0, 50), steps=st.integers(0, 10), seed=st.integers(0, 2**31))
def test_adversarial_output_is_always_finite_and_in_range(codec, eps, steps, seed):
    c = _codec(codec)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(4, *c.image_shape, generator=g), torch.randint(0, 10, (4,), generator=g)
    torch.manual_seed(0)
    x2, _ = LatentAdversarial(c, eps=eps, steps=steps, step_size=eps / 2, generator=seed)(x, y, TinyNet(c.image_shape[0]))
    assert _in_range(x2)


@settings(max_examples=12, deadline=None)
@given(codec=st.sampled_from(VAES + FLOWS), alpha=st.floats(0.01, 100), keep_detail=st.booleans(),
       seed=st.integers(0, 2**31), kind=st.sampled_from(sorted(IMAGE_KINDS)))
def test_varmixup_output_is_always_finite_in_range_with_valid_labels(codec, alpha, keep_detail, seed, kind):
    g = torch.Generator().manual_seed(seed)
    x = _images(_codec(codec), kind, g)
    y = torch.randint(0, 10, (6,), generator=g)
    x2, y2 = VarMixup(_codec(codec), alpha, num_classes=10, keep_detail=keep_detail, p=1.0, generator=seed)(x, y)
    assert _in_range(x2)
    assert torch.isfinite(y2).all() and y2.min() >= 0 and torch.allclose(y2.sum(1), torch.ones(6))
