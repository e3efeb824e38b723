"""Bad inputs get a ValueError/TypeError naming the problem, from every public transform; nothing else escapes."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from latent_transforms import Compose
from latent_transforms.latent_adversarial import LatentAdversarial
from latent_transforms.latent_noise import LatentNoise
from latent_transforms.validation import check_images, check_labels
from latent_transforms.varmixup import VarMixup

from contract import assert_model_unchanged, model_state
from conftest import TinyNet, tiny_glow, tiny_vae

GOOD_X = torch.rand(4, 1, 8, 8)
GOOD_Y = torch.tensor([0, 1, 2, 3])

# (name, x, y, expected message fragment)
BAD_INPUTS = [
    ("rank 3", torch.rand(1, 8, 8), GOOD_Y[:1], "shape \\(B, C, H, W\\)"),
    ("rank 5", torch.rand(4, 1, 1, 8, 8), GOOD_Y, "shape \\(B, C, H, W\\)"),
    ("uint8", (GOOD_X * 255).to(torch.uint8), GOOD_Y, "float tensor"),
    ("int64", GOOD_X.long(), GOOD_Y, "float tensor"),
    ("above 1", GOOD_X * 255, GOOD_Y, "\\[0, 1\\]"),
    ("negative", GOOD_X - 0.5, GOOD_Y, "\\[0, 1\\]"),
    ("nan", GOOD_X.clone().index_fill_(0, torch.tensor([2]), float("nan")), GOOD_Y, "NaN or inf \\(in samples \\[2\\]"),
    ("inf", GOOD_X.clone().index_fill_(0, torch.tensor([1]), float("inf")), GOOD_Y, "NaN or inf"),
    ("empty", torch.rand(0, 1, 8, 8), GOOD_Y[:0], "empty batch"),
    ("channels", torch.rand(4, 3, 8, 8), GOOD_Y, "trained on images of shape"),
    ("size", torch.rand(4, 1, 16, 16), GOOD_Y, "trained on images of shape"),
    ("label out of range", GOOD_X, torch.tensor([0, 1, 2, 10]), "out of range for num_classes=10"),
    ("negative label", GOOD_X, torch.tensor([0, -1, 2, 3]), "negative class index"),
    ("label dtype", GOOD_X, GOOD_Y.int(), "int64"),
    ("float labels 1d", GOOD_X, GOOD_Y.float(), "int64"),
    ("label shape", GOOD_X, GOOD_Y.view(2, 2, 1), "\\(B,\\) class indices or \\(B, K\\)"),
    ("soft not summing to 1", GOOD_X, torch.full((4, 10), 0.2), "sum to 1"),
    ("soft negative", GOOD_X, torch.eye(10)[:4] * 2 - torch.eye(10)[:4].roll(1, 1), "negative entry"),
    ("soft wrong classes", GOOD_X, torch.full((4, 7), 1 / 7), "expected num_classes=10"),
    ("batch mismatch", GOOD_X, GOOD_Y[:3], "batch sizes differ: x has 4 samples, y has 3"),
    ("not a tensor", GOOD_X.numpy(), GOOD_Y, "torch.Tensor"),
]

GLOW, VAE = tiny_glow(), tiny_vae()
TRANSFORMS = {
    "LatentNoise": lambda: LatentNoise(GLOW, eps=1.0),
    "LatentAdversarial": lambda: LatentAdversarial(GLOW, steps=1),
    "VarMixup": lambda: VarMixup(VAE, num_classes=10),
    "Compose": lambda: Compose([LatentNoise(GLOW, eps=1.0)], num_classes=10),
}


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_matrix(name, case):
    _, x, y, message = case
    t = TRANSFORMS[name]()
    t.num_classes = 10  # label ranges are checked against the classes a transform knows
    torch.manual_seed(0)
    net = TinyNet()
    before, codec_before = model_state(net), model_state(t.codec if hasattr(t, "codec") else torch.nn.Identity())
    with pytest.raises((ValueError, TypeError), match=message):
        t(x, y, net)
    assert_model_unchanged(net, before)
    assert_model_unchanged(t.codec if hasattr(t, "codec") else torch.nn.Identity(), codec_before)
    assert t.stats["seen"] == 0 if hasattr(t, "stats") else True


def test_batch_of_one_works_everywhere():
    net = TinyNet()
    for name, make in TRANSFORMS.items():
        x2, y2 = make()(GOOD_X[:1], GOOD_Y[:1], net)
        assert x2.shape == (1, 1, 8, 8), name


def test_half_precision_input_is_supported_by_codec_methods():
    x2, _ = LatentNoise(GLOW, eps=1.0, generator=0)(GOOD_X.half(), GOOD_Y)
    assert x2.dtype == torch.float16


def test_range_tolerance_is_small():
    check_images(GOOD_X.clamp(0, 1) + 5e-4)
    with pytest.raises(ValueError):
        check_images(GOOD_X.clamp(0, 1) + 2e-3 + (1 - GOOD_X.max()))


@settings(max_examples=150, deadline=None)
@given(arr=hnp.arrays(dtype=st.sampled_from([np.float32, np.float64, np.int64, np.uint8, np.float16, np.bool_]),
                      shape=hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=4),
                      elements=None),
       labels=hnp.arrays(dtype=st.sampled_from([np.int64, np.int32, np.float32]),
                         shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)))
def test_fuzz_validation_raises_only_documented_errors(arr, labels):
    x, y = torch.from_numpy(np.array(arr)), torch.from_numpy(np.array(labels))
    try:
        check_images(x)
        check_labels(y, x.shape[0], num_classes=5)
    except (ValueError, TypeError) as e:
        assert str(e)


def test_check_choice_takes_equal_values_of_the_choices_type():
    import numpy as np

    from latent_transforms.validation import check_choice

    assert check_choice("norm", np.str_("l2"), ("l2", "linf")) == "l2"  # a str subclass, as the old `in` check took
    assert check_choice("norm", None, ("l2", None)) is None
    for bad in ("L2", 1, True, None, b"l2"):
        with pytest.raises(ValueError, match=r"norm must be one of \('l2', 'linf'\)"):
            check_choice("norm", bad, ("l2", "linf"))
