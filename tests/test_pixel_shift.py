"""random_shift_flip: per-sample shifts and flips, padding modes, seeding, bad input."""
from __future__ import annotations

import re

import pytest
import torch

from latent_transforms.pixel_shift import random_shift_flip


def coordinates(b: int, h: int = 8, w: int = 8) -> torch.Tensor:
    """(b, 2, h, w): channel 0 holds each pixel's row index + 1, channel 1 its column index + 1 (0 = padding)."""
    rows = torch.arange(1, h + 1, dtype=torch.float64).view(1, h, 1).expand(b, h, w)
    cols = torch.arange(1, w + 1, dtype=torch.float64).view(1, 1, w).expand(b, h, w)
    return torch.stack([rows, cols], 1).contiguous()


def shift_of(line: torch.Tensor) -> int:
    """The shift of a row/column of coordinates, read at its middle (never padding for shifts < side / 2)."""
    mid = line.shape[0] // 2
    return int(line[mid]) - (mid + 1)


@pytest.mark.parametrize("padding", ["zeros", "reflect"])
def test_each_image_is_shifted_by_its_own_offset_within_the_limit(padding):
    x = coordinates(400)
    out = random_shift_flip(x, 2, flips=False, padding=padding, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    dys = [shift_of(out[i, 0, :, 3]) for i in range(len(x))]
    dxs = [shift_of(out[i, 1, 3, :]) for i in range(len(x))]
    assert set(dys) == set(dxs) == {-2, -1, 0, 1, 2}  # every offset drawn, none beyond
    for i, (dy, dx) in enumerate(zip(dys, dxs)):
        inner = out[i, :, 2:-2, 2:-2]  # rows/columns that come from the image for any shift
        assert torch.equal(inner, x[i, :, 2 + dy:6 + dy, 2 + dx:6 + dx])
    if padding == "zeros":
        assert (out == 0).any()
    else:  # mirrored: every pixel is an image pixel, the edge not repeated
        assert (out > 0).all()
        i = dys.index(-2)
        assert out[i, 0, :2, 3].tolist() == [3.0, 2.0]


def test_flips_mirror_about_half_of_the_images():
    x = coordinates(200)
    out = random_shift_flip(x, 0, flips=True, generator=torch.Generator().manual_seed(1))
    flipped = torch.tensor([torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x)])
    kept = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x)])
    assert (flipped ^ kept).all() and 70 < int(flipped.sum()) < 130


def test_identity_without_shift_or_flip_and_seeded_otherwise():
    x = torch.rand(8, 3, 16, 16)
    assert random_shift_flip(x, 0, flips=False) is x
    a = random_shift_flip(x, 3, True, "reflect", torch.Generator().manual_seed(5))
    b = random_shift_flip(x, 3, True, "reflect", torch.Generator().manual_seed(5))
    c = random_shift_flip(x, 3, True, "reflect", torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_flips_alone_draw_what_codec_training_always_drew():
    """train_codec's flips took ``torch.rand(B) < 0.5`` from the global generator; runs stay reproducible."""
    x = torch.rand(32, 3, 8, 8)
    torch.manual_seed(7)
    flip = torch.rand(32) < 0.5
    expected = torch.where(flip[:, None, None, None], x.flip(-1), x)
    torch.manual_seed(7)
    assert torch.equal(random_shift_flip(x, 0, flips=True, padding="reflect"), expected)


def test_bad_input_is_named():
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"x must have shape \(B, C, H, W\), got 3 dims with shape \(3, 8, 8\); one "):
        random_shift_flip(x[0], 1, True)
    with pytest.raises(ValueError, match="padding must be one of"):
        random_shift_flip(x, 1, True, padding="edge")
    with pytest.raises(ValueError, match="max_shift must be an int >= 0"):
        random_shift_flip(x, -1, True)
    with pytest.raises(TypeError, match="flips must be True or False, got 'False'"):  # the string flipped
        random_shift_flip(x, 0, "False")
    with pytest.raises(ValueError, match="max_shift must be < 8 \\(the image side\\) with reflection padding"):
        random_shift_flip(x, 8, True, padding="reflect")
    assert random_shift_flip(x, 8, False, padding="zeros").shape == x.shape  # zeros: any shift is defined


def test_draws_dy_then_dx_then_the_flips_from_the_generator():
    """The documented draw order (dy, dx, flips), so that a seeded run makes the same crops: swapping the two offset
    draws gave images of the same distribution, shifted differently."""
    x, p = torch.rand(16, 2, 6, 6, generator=torch.Generator().manual_seed(0)), 2
    g = torch.Generator().manual_seed(3)
    dy = torch.randint(0, 2 * p + 1, (16, 1), generator=g)
    dx = torch.randint(0, 2 * p + 1, (16, 1), generator=g)
    flip = torch.rand(16, 1, generator=g) < 0.5
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    expected = torch.stack([padded[i, :, dy[i, 0]:dy[i, 0] + 6, dx[i, 0]:dx[i, 0] + 6] for i in range(16)])
    expected = torch.where(flip.view(16, 1, 1, 1), expected.flip(-1), expected)
    assert (dy != dx).any() and flip.any() and not flip.all()
    assert torch.equal(random_shift_flip(x, p, flips=True, generator=torch.Generator().manual_seed(3)), expected)


@pytest.mark.parametrize("padding", ["zeros", "reflect"])
def test_images_with_an_empty_channel_or_side_are_refused_as_everywhere(padding):
    """Found by bad-input fuzzing (audit 234): C = 0 with reflection padding raised torch's "Expected 3D or 4D (batch
    mode) tensor ... other non-zero dimensions" and, with zero padding, passed (as H = 0 did), where every transform's
    check_images refuses them; an empty batch still passes through."""
    for shape, empty in (((2, 0, 8, 8), "C = 0"), ((2, 3, 0, 8), "H = 0"), ((2, 0, 8, 0), "C = 0, W = 0"),
                         ((0, 3, 0, 8), "H = 0")):  # every empty one named; an empty batch of them is refused too
        with pytest.raises(ValueError, match=rf"^x has an empty channel or spatial dimension \(shape "
                                             rf"{re.escape(str(shape))}: {empty}\)$"):
            random_shift_flip(torch.rand(shape), 2, True, padding=padding)
    assert random_shift_flip(torch.rand(0, 3, 8, 8), 2, True, padding=padding).shape == (0, 3, 8, 8)


def test_x_and_generator_of_the_wrong_kind_are_named():
    """Found by an input-contract audit: a list for x raised AttributeError, an int seed or a str for the generator
    torch.randint's TypeError, and a generator on another device than x was not checked."""
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
        random_shift_flip(x.tolist(), 1, True)
    for bad in ("cpu", 1.5):
        with pytest.raises(TypeError, match="generator must be None, an int seed or a torch.Generator"):
            random_shift_flip(x, 1, True, generator=bad)
    # an int seed is a seed, as for the transforms and codec.sample: the same seed, the same shifts
    assert torch.equal(random_shift_flip(x, 2, True, generator=3),
                       random_shift_flip(x, 2, True, generator=torch.Generator().manual_seed(3)))
    with pytest.raises(ValueError, match="the generator is on cpu but the data is on meta"):
        random_shift_flip(x.to("meta"), 2, True, generator=torch.Generator())


def test_reflection_padding_is_bounded_by_the_shorter_side():
    """A 4 x 8 image mirrors at most 3 pixels: max_shift 5 is named (torch's reflect pad failed on it); an 8 x 4 one
    too (mutation round 27: the bound taken from the height alone passed it); named the shorter side (audit 320: "4
    (the image side)" of a 4 x 8 image read as a mistake)."""
    for x in (torch.rand(2, 1, 4, 8), torch.rand(2, 1, 8, 4)):
        with pytest.raises(ValueError, match=rf"max_shift must be < 4 \(the shorter side of {x.shape[2]}x{x.shape[3]} "
                                             rf"images\) with reflection padding, got 5"):
            random_shift_flip(x, 5, True, padding="reflect")
        assert random_shift_flip(x, 3, True, padding="reflect", generator=0).shape == x.shape


def test_a_bad_generator_is_named_even_when_nothing_is_drawn():
    """Checked as the other arguments, before the no-shift-no-flip shortcut: a wrong call fails at once, not when
    shifts are turned on."""
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(TypeError, match="generator must be None, an int seed or a torch.Generator, got str"):
        random_shift_flip(x, 0, False, generator="seed")
    with pytest.raises(ValueError, match="the generator is on cpu but the data is on meta"):
        random_shift_flip(x.to("meta"), 0, False, generator=torch.Generator())


def test_shifted_images_come_back_contiguous():
    """(B, C, H, W) in the usual memory layout, as the input: .view(B, -1) works on the result."""
    out = random_shift_flip(torch.rand(4, 3, 8, 8), 2, True, generator=0)
    assert out.is_contiguous()
    out.view(4, -1)


def test_an_int_seed_shifts_and_flips_as_its_stored_reference():
    """A codec's training images are shifted and flipped from its seed: the same seed, the same images as when this
    reference was made (commit 1401a44; torch 2.4.0 and 2.14.1 alike)."""
    x = torch.arange(64, dtype=torch.float32).view(4, 1, 4, 4)
    out = random_shift_flip(x, 1, True, generator=0)
    assert out.view(4, -1).long().tolist() == [
        [7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 16, 17, 18, 0, 20, 21, 22, 0, 24, 25, 26],
        [39, 38, 37, 36, 43, 42, 41, 40, 47, 46, 45, 44, 0, 0, 0, 0],
        [0, 0, 0, 0, 51, 50, 49, 48, 55, 54, 53, 52, 59, 58, 57, 56]]
