"""Numerically safe decoding: whatever eps or steps, outputs are finite and in [0, 1] (issue: latent quality)."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from latent_transforms import hub
from latent_transforms.latent_adversarial import LatentAdversarial
from latent_transforms.latent_noise import LatentNoise

from conftest import TinyNet, tiny_glow

CODECS = {"random-init": tiny_glow(7)}
SHIPPED = [n for n in ("glow-digits",) if n in {e["name"] for e in hub.list_checkpoints()}]


def _codec(name):
    return CODECS[name] if name in CODECS else hub.load(name)


@settings(max_examples=20, deadline=None)
@given(codec=st.sampled_from(sorted(CODECS) + SHIPPED), eps=st.floats(0, 50), norm=st.sampled_from(["l2", "linf", None]),
       seed=st.integers(0, 2**31), extreme=st.sampled_from(["uniform", "binary", "zeros", "ones"]))
def test_noise_output_is_always_finite_and_in_range(codec, eps, norm, seed, extreme):
    g = torch.Generator().manual_seed(seed)
    x = {"uniform": torch.rand(6, 1, 8, 8, generator=g), "binary": (torch.rand(6, 1, 8, 8, generator=g) > 0.5).float(),
         "zeros": torch.zeros(6, 1, 8, 8), "ones": torch.ones(6, 1, 8, 8)}[extreme]
    y = torch.randint(0, 10, (6,), generator=g)
    t = LatentNoise(_codec(codec), eps=eps, norm=norm, generator=seed)
    x2, _ = t(x, y)
    assert torch.isfinite(x2).all() and x2.min() >= 0 and x2.max() <= 1
    assert t.stats["transformed"] + t.stats["rejected"] == 6


@settings(max_examples=8, deadline=None)
@given(codec=st.sampled_from(sorted(CODECS) + SHIPPED), eps=st.floats(0, 50), steps=st.integers(0, 10),
       seed=st.integers(0, 2**31))
def test_adversarial_output_is_always_finite_and_in_range(codec, eps, steps, seed):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(4, 1, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g)
    torch.manual_seed(0)
    x2, _ = LatentAdversarial(_codec(codec), eps=eps, steps=steps, step_size=eps / 2, generator=seed)(x, y, TinyNet())
    assert torch.isfinite(x2).all() and x2.min() >= 0 and x2.max() <= 1


def test_shipped_digits_codecs_are_registered():
    missing = {"glow-digits", "vae-digits"} - {e["name"] for e in hub.list_checkpoints()}
    if missing:
        pytest.fail(f"shipped checkpoints missing from the registry: {sorted(missing)}")
