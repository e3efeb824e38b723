import contextlib
import copy
import io
import math
import pickle
from typing import Callable

import numpy as np
import pytest
import torch
from torch import nn
from hypothesis import given, settings
from hypothesis import strategies as st

from latent_transforms import LatentCache, LatentMixupInference
from latent_transforms.codecs import Codec, ConvVAE, Glow, build_codec, exact_math, flatten_latents, unflatten_latents
from latent_transforms.codecs.base import _MAX_TEMPERATURE
from latent_transforms.codecs.vae import ResidualBlock
from latent_transforms.latent_noise import LatentNoise
from latent_transforms.train import eval_codec
from latent_transforms.validation import values_read, values_unread

from conftest import OwnCodec, TinyNet, counting_value_reads, tiny_glow, tiny_vae, trained_like_glow_pair


@settings(max_examples=25)
@given(batch=st.integers(1, 9), seed=st.integers(0, 10_000), binary=st.booleans())
def test_glow_round_trip(batch, seed, binary):
    glow = GLOW
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 1, 8, 8, generator=g)
    if binary:  # the extremes of [0, 1] are the hardest for the logit preprocessing
        x = (x > 0.5).float()
    with torch.no_grad():
        assert (glow.decode(glow.encode(x)) - x).abs().max() <= 1e-3


GLOW = tiny_glow()


def test_untrained_rgb_glow_round_trip():
    glow = Glow((3, 16, 16), levels=2, steps=3, hidden=16)  # ActNorm not even initialised
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        assert (glow.decode(glow.encode(x)) - x).abs().max() <= 1e-3


def test_latent_shapes_and_flattening():
    x = torch.rand(3, 1, 8, 8)
    z = GLOW.encode(x)
    assert [tuple(t.shape[1:]) for t in z] == GLOW.latent_shapes and GLOW.latent_dim == 64
    flat = flatten_latents(z)
    assert flat.shape == (3, 64)
    assert all(torch.equal(a, b) for a, b in zip(unflatten_latents(flat, GLOW.latent_shapes), z))
    # audit 271's fuzzing: torch's IndexError ("Dimension out of range"), split_with_sizes' and cat's errors; a wrong
    # type is a WrongTypeError, a TypeError too (mutation round 38, as a level without its batch dimension and a
    # (B, D, 1) flat, which came back reshaped without a word)
    for bad, wrong_type in ((flat, True), (flat.tolist(), True), ([], False), ([z[0], z[1][:2]], False),
                            ([z[0].flatten()], False)):
        with pytest.raises(ValueError, match=r"^z must be a non-empty list of latents \(B, \*shape\), one per level") \
                as e:
            flatten_latents(bad)
        assert isinstance(e.value, TypeError) == wrong_type
    for d in (60, 68):  # fewer values than the shapes hold, and more (mutation round 47)
        with pytest.raises(ValueError, match=rf"^flat must be \(B, D\) latents with D = 64 \(the shapes' sizes "
                                             rf"\[32, 32\] together\), got torch.float32 of shape \(3, {d}\)$"):
            unflatten_latents(torch.cat([flat, flat], 1)[:, :d], GLOW.latent_shapes)
    for bad, wrong_type in ((flat[..., None], False), (flat.tolist(), True)):
        with pytest.raises(ValueError, match=r"^flat must be \(B, D\) latents with D = 64") as e:
            unflatten_latents(bad, GLOW.latent_shapes)
        assert isinstance(e.value, TypeError) == wrong_type
    for shapes, wrong_type in (([], False), ([(-1,)], False), ([(4.0,)], True), ("x", True)):
        with pytest.raises(ValueError, match=r"^shapes must be a non-empty list of per-sample shapes, one tuple of "
                                             r"positive ints per latent level") as e:
            unflatten_latents(flat, shapes)
        assert isinstance(e.value, TypeError) == wrong_type


def test_log_det_matches_autograd_jacobian():
    torch.manual_seed(0)
    glow = Glow((1, 4, 4), levels=1, steps=2, hidden=8).double()
    with torch.no_grad():
        glow.loss(torch.rand(32, 1, 4, 4, dtype=torch.float64))
        for p in glow.parameters():  # leave the zero-initialised couplings so the Jacobian is non-trivial
            p.add_(0.05 * torch.randn_like(p))
    x = torch.rand(1, 1, 4, 4, dtype=torch.float64) * 0.8 + 0.1
    u, logdet = glow._encode_with_logdet(x)
    f = lambda v: flatten_latents(glow._encode_with_logdet(v.view(1, 1, 4, 4))[0]).flatten()
    jac = torch.autograd.functional.jacobian(f, x.flatten())
    assert torch.allclose(logdet[0], torch.linalg.slogdet(jac)[1], atol=1e-8)


def test_the_bounded_coupling_log_determinants_are_those_of_its_two_directions():
    # decoding (forward) divides by the scale: its log-determinant is minus the encoding's, -sum log(scale)
    from latent_transforms.codecs.glow import BoundedAffineCoupling

    torch.manual_seed(0)
    coupling = BoundedAffineCoupling(nn.Conv2d(2, 4, 3, padding=1), floor=0.05).double()
    z = [torch.randn(3, 2, 4, 4, dtype=torch.float64) for _ in range(2)]
    encoded, logdet_encode = coupling.inverse(z)
    decoded, logdet_decode = coupling.forward(encoded)
    torch.testing.assert_close(decoded[1], z[1])
    scale = coupling._shift_scale(z[0])[1]
    assert (scale >= 0.05).all() and (scale <= 1).all()
    torch.testing.assert_close(logdet_encode, torch.log(scale).flatten(1).sum(1))
    torch.testing.assert_close(logdet_decode, -logdet_encode)


def test_bits_per_dim_of_uniform_noise_is_about_eight_for_untrained_flow():
    torch.manual_seed(0)
    glow = Glow((3, 8, 8), levels=1, steps=1, hidden=8)
    bpd, metrics = glow.loss(torch.rand(64, 3, 8, 8))
    assert 6 < float(metrics["bits/dim"]) < 12 and bpd.requires_grad


def test_bits_per_dim_divides_by_every_channel_height_and_width():
    glow = tiny_glow(shape=(3, 8, 8), levels=1)  # 17 levels, colour: bits per dimension over 3 x 8 x 8 values
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = -glow.log_prob(x) / (3 * 8 * 8 * math.log(2)) + math.log2(17)
        torch.testing.assert_close(glow.bits_per_dim(x), expected)


def test_decode_is_bounded_for_huge_latents():
    z = [50 * torch.randn(8, *s) for s in GLOW.latent_shapes]
    x = GLOW.decode(z)
    assert torch.isfinite(x).all() and x.min() >= -0.06 and x.max() <= 1.06


def test_frozen_codec_stays_frozen():
    glow = tiny_glow()
    state = {k: v.clone() for k, v in glow.state_dict().items()}
    glow.train()
    assert not glow.training and not any(p.requires_grad for p in glow.parameters())
    glow.encode(torch.rand(5, 1, 8, 8))  # ActNorm must not re-initialise or update
    assert all(torch.equal(v, glow.state_dict()[k]) for k, v in state.items())


def test_vae_shapes_mean_and_sample():
    vae = tiny_vae()
    x = torch.rand(5, 1, 8, 8)
    (mu,) = vae.encode(x)
    assert mu.shape == (5, 4) and vae.decode([mu]).shape == x.shape
    assert torch.equal(vae.encode(x)[0], mu)  # the mean is deterministic
    g = torch.Generator().manual_seed(0)
    s1 = vae.encode(x, sample=True, generator=g)[0]
    s2 = vae.encode(x, sample=True, generator=torch.Generator().manual_seed(0))[0]
    assert torch.equal(s1, s2) and not torch.equal(s1, mu)
    loss, metrics = ConvVAE((3, 32, 32), latent_dim=8, hidden=8).loss(torch.rand(2, 3, 32, 32))
    assert torch.isfinite(loss) and set(metrics) == {"rec", "kl", "mse"}


@pytest.mark.parametrize("side", [1, 4, 8])
def test_vae_spatial_latent(side):
    vae = ConvVAE((3, 8, 8), latent_dim=3, hidden=8, latent_side=side).freeze()
    x = torch.rand(5, 3, 8, 8)
    (mu,) = vae.encode(x)
    assert vae.latent_shapes == [(3, side, side)] and mu.shape == (5, 3, side, side) and vae.latent_dim == 3 * side**2
    assert vae.decode([mu]).shape == x.shape
    assert vae.encode(x, sample=True, generator=torch.Generator().manual_seed(0))[0].shape == mu.shape
    assert build_codec(vae.config).config == vae.config and vae.config["latent_side"] == side
    loss, metrics = vae.loss(x)
    mu, logvar = vae.posterior(x)
    # the KL is summed over every latent element, per image
    assert torch.allclose(vae._kl_divergence(mu, logvar), 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum((1, 2, 3)))
    assert torch.isfinite(loss) and metrics["kl"] >= 0


def test_vae_config_without_latent_side_is_a_vector_vae():
    """Checkpoints saved before ``latent_side`` existed load as the vector VAE they are."""
    vae = build_codec({"kind": "vae", "image_shape": [1, 8, 8], "latent_dim": 4, "hidden": 8, "beta": 1.0})
    assert vae.latent_shapes == [(4,)] and vae.config["latent_side"] is None


def test_a_vae_built_from_its_kind_alone_is_the_one_train_builds_by_default():
    """The constructor's defaults are those docs/training.md gives for ``train vae`` (mutation round 353)."""
    from latent_transforms.train import default_config

    assert build_codec({"kind": "vae"}).config == default_config("vae", (3, 32, 32))


def test_vae_decoder_blocks_start_as_the_identity_and_round_trip():
    """A residual block's second convolution starts at zero, so a new deeper decoder decodes as the same decoder
    without its blocks; its config lists the blocks, a plain VAE's does not (older fingerprints unchanged)."""
    torch.manual_seed(0)
    deep = ConvVAE((3, 16, 16), latent_dim=4, hidden=8, decoder_blocks=2).freeze()
    blocks = [m for m in deep.decoder if isinstance(m, ResidualBlock)]
    assert len(blocks) == 2 * 2  # two up-samplings from 4x4 to 16x16
    without = nn.Sequential(*[m for m in deep.decoder if not isinstance(m, ResidualBlock)])
    z = torch.randn(3, 4)
    assert torch.equal(deep.decode([z]), torch.sigmoid(without(z)))
    plain = ConvVAE((3, 16, 16), latent_dim=4, hidden=8)
    assert "decoder_blocks" not in plain.config and deep.config["decoder_blocks"] == 2
    assert build_codec(deep.config).config == deep.config
    deep = ConvVAE((3, 16, 16), latent_dim=4, hidden=8, decoder_blocks=1)
    deep.loss(torch.rand(2, 3, 16, 16))[0].backward()
    assert all(p.grad.abs().sum() > 0 for n, p in deep.named_parameters() if "conv2" in n)  # the zero start trains


@pytest.mark.parametrize("shape, latent_side, where, hint", [
    ((1, 4, 4), None, "the image side 4", ""),
    ((3, 28, 28), 32, "latent_side 32 at the padded side 32 of 28x28",
     r" \(a smaller latent side gives it up-samplings\)")])
def test_vae_decoder_blocks_without_up_samplings_are_refused(shape, latent_side, where, hint):
    """Its blocks follow the decoder's up-samplings: with none, decoder_blocks=2 built no block, and the config (and
    the fingerprint) said 2. A bad value is still named by its form first."""
    with pytest.raises(ValueError, match=rf"^decoder_blocks must be 0 with {where}: .*; got 2{hint}$"):
        ConvVAE(shape, latent_dim=4, hidden=8, latent_side=latent_side, decoder_blocks=2)
    assert "decoder_blocks" not in ConvVAE(shape, latent_dim=4, hidden=8, latent_side=latent_side).config
    with pytest.raises(ValueError, match=r"^decoder_blocks must be an int >= 0, got -1$"):
        ConvVAE(shape, latent_dim=4, hidden=8, latent_side=latent_side, decoder_blocks=-1)


def test_build_codec_leaves_the_callers_config_as_it_was():
    config = GLOW.config
    build_codec(config)
    assert config == GLOW.config and config["kind"] == "glow"  # a registry entry's config is built again later


def test_build_codec_round_trips_config_and_names_errors():
    for codec in (GLOW, tiny_vae()):
        assert build_codec(codec.config).config == codec.config
    with pytest.raises(ValueError, match="unknown codec kind 'gan'"):
        build_codec({"kind": "gan"})
    with pytest.raises(ValueError, match="bad config for a glow codec"):
        build_codec({"kind": "glow", "depth": 3})
    with pytest.raises(ValueError, match="divisible by 2\\*\\*levels"):
        Glow((3, 12, 12), levels=3)
    # (mutation audit 177) as many levels as halve the shorter side down to one pixel are accepted
    glow = Glow((1, 8, 4), levels=2, steps=1, hidden=8)
    x = torch.rand(3, 1, 8, 4)
    assert torch.allclose(glow.decode(glow.encode(x)), x, atol=1e-5)
    with pytest.raises(ValueError, match="divisible by 2\\*\\*levels = 8, got 8x4"):
        Glow((1, 8, 4), levels=3)


@pytest.mark.parametrize("shape, levels, fix", [
    ((1, 28, 28), 3, "at most 2 levels fit 28x28; or resize or crop the images"),
    ((3, 24, 20), 3, "at most 2 levels fit 24x20; or resize or crop the images"),
    ((1, 6, 10), 2, "at most 1 level fits 6x10; or resize or crop the images"),
    # (audit 320) odd sides were told "or resize or crop the images" alone: a VAE takes them as they are
    ((1, 15, 16), 1, r"an odd side takes no level: resize or crop the images to even sides, or train a VAE "
                     r"\(latent-transforms train vae\), which takes images of any size")])
def test_a_flow_too_deep_for_its_images_names_the_levels_that_fit(shape, levels, fix):
    """Found walking a new user's path: 28x28 images with 3 levels were told "use fewer levels", not how many."""
    with pytest.raises(ValueError, match=f"got {shape[1]}x{shape[2]}: {fix}$"):
        Glow(shape, levels=levels, steps=1, hidden=8)


@pytest.mark.parametrize("shape, padding", [((1, 28, 28), (2, 2, 2, 2)), ((1, 28, 20), (6, 6, 2, 2)),
                                            ((3, 24, 24), (4, 4, 4, 4)), ((1, 32, 16), (8, 8, 0, 0)),
                                            ((1, 2, 2), (1, 1, 1, 1)), ((1, 8, 8), (0, 0, 0, 0))])
def test_vae_takes_any_image_side_padding_it_to_a_power_of_two(shape, padding):
    # 28x28 grey images (MNIST's size) were refused: the VAE now zero-pads them, centred, to 32x32 on the way in
    # and crops its decodes and the loss's logits back, so it takes and gives (C, H, W) as the flows do
    vae = tiny_vae(shape=shape)
    assert vae.padding == padding
    x = torch.rand(3, *shape)
    z = vae.encode(x)
    assert z[0].shape == (3, 4) and vae.decode(z).shape == x.shape
    assert vae.elbo_terms(x, generator=0)["logits"].shape == x.shape
    assert torch.isfinite(vae.loss(x)[0])
    assert build_codec(vae.config).config == vae.config == {**vae.config, "image_shape": list(shape)}


def test_vae_latent_side_of_a_padded_image_is_bounded_by_the_padded_side():
    assert ConvVAE((1, 28, 28), latent_dim=4, hidden=8, latent_side=8).latent_shapes == [(4, 8, 8)]
    with pytest.raises(ValueError, match="a power of two <= the padded side 32 of 28x28, got 64"):
        ConvVAE((1, 28, 28), latent_side=64)


def test_codec_device_mismatch_is_named():
    x = torch.rand(2, 1, 8, 8)  # a codec on meta for another device (images on meta are refused as holding no values)
    with pytest.raises(ValueError, match="codec is on meta but x is on cpu"):
        copy.deepcopy(GLOW).to("meta").check_images(x)
    # audit 417: "move it with .to('cpu')" named the codec only, which a user of LatentNoise("glow-cifar10") never made
    with pytest.raises(ValueError, match=r"^the glow codec is on meta but x is on cpu; move it with \.to\('cpu'\), or "
                                         r"the transform that holds it: augment\.to\('cpu'\) \(latent-transforms never"):
        LatentNoise(copy.deepcopy(GLOW).to("meta"))(x, torch.tensor([0, 1]))


def test_decode_flat_refuses_flat_latents_of_another_width_or_rank():
    with pytest.raises(ValueError, match=r"z must be \(B, D\) float flat latents with D = 64 for this glow codec, got"):
        GLOW.decode_flat(torch.zeros(2, 65))
    with pytest.raises(ValueError, match=r"z must be \(B, D\) float flat latents with D = 64 for this glow codec, got"):
        GLOW.decode_flat(torch.zeros(64))  # one sample's latents, without the batch dimension


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")
def test_sparse_and_meta_images_and_latents_are_named():
    """torch's errors from inside the codec before ("add(sparse, dense) is not supported", "Could not run
    'aten::as_strided' with arguments from the 'SparseCPU' backend"; meta z was told to move the codec to meta)."""
    x = torch.rand(2, 1, 8, 8)
    z = GLOW.encode_flat(x)
    for name, call, what in (("x", GLOW.encode_flat, x), ("z", GLOW.decode_flat, z)):
        with pytest.raises(ValueError, match=rf"{name} must be a dense tensor, got layout torch.sparse_coo; convert "
                                             rf"with {name}.to_dense\(\)"):
            call(what.to_sparse())
        with pytest.raises(ValueError, match=rf"{name} is on the meta device, which holds shapes, not values"):
            call(what.to("meta"))
    with pytest.raises(ValueError, match=r"z is a nested tensor \(samples of different sizes\)"):
        GLOW.decode_flat(torch.nested.nested_tensor(list(z)))  # torch's "Internal error: NestedTensorImpl doesn't
        # support sizes. Please file an issue." before (audit 191)
    levels = unflatten_latents(z, GLOW.latent_shapes)
    for bad in (levels[1].to_sparse(), levels[1].to("meta")):  # decode's list of levels
        with pytest.raises(ValueError, match=r"z must be a dense tensor|z is on the meta device"):
            GLOW.decode([levels[0], bad])


def test_compile_fast_path_needs_a_frozen_codec_and_takes_no_compile_arguments_to_turn_it_off():
    codec = ConvVAE((1, 8, 8), latent_dim=4, hidden=8)
    with pytest.raises(ValueError, match=r"compile_fast_path\(\) needs a frozen codec: call ConvVAE.freeze\(\) first"
                       ) as e:
        codec.compile_fast_path()
    assert isinstance(e.value, RuntimeError)  # a call its state forbids (api.md, Errors), and still a ValueError
    assert not codec.compiled
    for kwargs in ({"mode": "max-autotune"}, {"dynamic": True}):  # turning it off compiles nothing
        with pytest.raises(ValueError, match=r"compile_fast_path\(enabled=False\) takes no torch.compile arguments"):
            codec.freeze().compile_fast_path(False, **kwargs)


def test_compile_fast_path_refuses_a_dynamic_that_is_not_a_bool_or_none_naming_it():
    # torch.compile's own check raised "AssertionError: Expected enable to be a bool, got <class 'str'>", naming
    # neither the argument nor the values it takes; the codec was left as it was, as now
    codec = tiny_vae().compile_fast_path(backend="eager")
    for bad in ("false", 0, "auto"):
        with pytest.raises(TypeError, match=r"dynamic must be True, False or None \(torch's automatic mode\), got "):
            codec.compile_fast_path(dynamic=bad, backend="aot_eager")
    assert codec.compiled and codec._compile_args == (None, {"backend": "eager"})  # compiles nothing: no call made


def test_latents_of_another_device_or_of_two_batch_sizes_are_refused_by_decode():
    z = [torch.zeros(2, *s) for s in GLOW.latent_shapes]
    with pytest.raises(ValueError, match=r"codec is on meta but z is on cpu; move it with \.to\('cpu'\), or the "
                                         r"transform that holds it: augment\.to\('cpu'\) "):  # meta latents: no values
        copy.deepcopy(GLOW).to("meta").decode(z)
    with pytest.raises(ValueError, match=r"one batch size, got shapes \[\(2, 8, 2, 2\), \(3, 2, 4, 4\)\]"):
        GLOW.decode([z[0], torch.zeros(3, *GLOW.latent_shapes[1])])


def test_fast_frozen_path_matches_plain_normflows_path():
    plain, fast = trained_like_glow_pair(shape=(3, 16, 16))
    x = torch.rand(8, 3, 16, 16)
    assert fast.use_fast_path and not plain.use_fast_path
    with torch.no_grad():
        zp, zf = plain.encode(x), fast.encode(x)
        assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(zp, zf))
        assert torch.allclose(plain.decode(zp), fast.decode(zp), atol=1e-5)
        assert (fast.decode(zf) - x).abs().max() <= 1e-3
    assert set(fast.state_dict()) == set(plain.state_dict())  # folded weights are not saved


def test_fast_decode_of_perturbed_latents_and_its_gradient_match_float64():
    """glow-cifar10's fast and plain fp32 decodes of latents moved by L2 noise of norm 20 (the paper's LatentNoise
    eps), and their gradients, are each compared with a float64 copy of the plain path (not with each other: the
    plain fp32 path has rounding error of its own). A wrong cached inverse, 1e-3 off in one step, fails."""
    from latent_transforms import hub

    fast = hub.load("glow-cifar10")
    plain = fast.unfrozen_copy()  # same weights, not frozen: the plain normflows path
    exact = copy.deepcopy(plain).double()
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(4, fast.latent_dim, generator=g)
    z = 0.7 * torch.randn(4, fast.latent_dim, generator=g) + 20 * noise / noise.norm(dim=1, keepdim=True)
    weights = torch.randn(4, *fast.image_shape, generator=g, dtype=torch.float64)

    def decode_and_gradient(codec):  # decode_flat(z) and d(sum(weights * decode_flat(z))) / dz, in float64
        zc = z.to(codec.dtype).requires_grad_(True)
        out = codec.decode_flat(zc)
        (grad,) = torch.autograd.grad((out * weights.to(codec.dtype)).sum(), zc)
        return out.detach().double(), grad.double()

    out64, grad64 = decode_and_gradient(exact)

    def within_fp32_rounding(codec) -> bool:  # fp32 measured: 1e-6 (output), 1e-6 x max |gradient|
        out, grad = decode_and_gradient(codec)
        return bool((out - out64).abs().max() <= 1e-4 and (grad - grad64).abs().max() <= 1e-3 * grad64.abs().max())

    assert fast.use_fast_path and within_fp32_rounding(fast) and within_fp32_rounding(plain)
    broken = copy.deepcopy(fast)
    with torch.no_grad():
        broken.flow.flows[0][0].dec_weight.mul_(1.001)
    assert not within_fp32_rounding(broken)


@pytest.mark.parametrize("config,match", [
    ({"kind": "vae", "latent_dim": 0}, "latent_dim must be a positive int"),
    ({"kind": "vae", "latent_dim": -1}, "latent_dim must be a positive int"),
    ({"kind": "vae", "hidden": 0}, "hidden must be a positive int"),
    ({"kind": "vae", "beta": -1.0}, r"beta must be a finite number in \[0, inf\)"),
    ({"kind": "vae", "beta": float("inf")}, "beta must be a finite number"),  # was accepted
    ({"kind": "vae", "beta": True}, "beta must be a finite number"),
    ({"kind": "vae", "latent_side": 3}, "latent_side must be None or a power of two <= the image side 32, got 3"),
    ({"kind": "vae", "latent_side": 64}, "latent_side must be None or a power of two"),
    ({"kind": "vae", "latent_side": 0}, "latent_side must be None or a power of two"),
    ({"kind": "vae", "decoder_blocks": -1}, "decoder_blocks must be an int >= 0, got -1"),
    ({"kind": "vae", "decoder_blocks": 1.5}, "decoder_blocks must be an int >= 0, got 1.5"),
    ({"kind": "glow", "hidden": 0}, "hidden must be a positive int"),
    ({"kind": "glow", "steps": 0}, "steps must be a positive int"),
    ({"kind": "glow", "alpha": 0.7}, r"^alpha must be a finite number in \(0, 0.5\), got 0.7$"),
    # audit 425: the constructor's own messages, not the settings': alpha=-1 was told "[0, inf)", and scale_floor=2
    # "alpha must be in (0, 0.5) and scale_floor in (0, 1), got 0.05, 2.0"; num_bins=0 "a positive int", then 1 ">= 2"
    ({"kind": "glow", "alpha": -1}, r"^alpha must be a finite number in \(0, 0.5\), got -1$"),
    ({"kind": "glow", "scale_floor": 2}, r"^scale_floor must be a finite number in \(0, 1\), got 2$"),
    ({"kind": "glow", "num_bins": 0}, r"^num_bins must be an int in \[2, 9223372036854775807\], got 0$"),
    # audit 425: Python's "Exceeds the limit (4300 digits) for integer string conversion", naming nothing
    ({"kind": "glow", "image_shape": [1, -10**5000, 8]},
     r"^image_shape must be \(C, H, W\) positive ints, got \[1, an int near -10\*\*5000, 8\]$"),
    ({"kind": "vae", "latent_dim": -10**5000}, r"^latent_dim must be a positive int, got an int near -10\*\*5000$"),
    ({"kind": "vae", "latent_side": -10**5000}, r"^latent_side must be None or a power of two <= the image side 32, "
                                                r"got an int near -10\*\*5000$"),
    ({"kind": "vae", "hidden": 32.0}, "hidden must be a positive int, got 32.0"),  # not truncated, not torch's error
    ({"kind": "glow", "num_bins": 17.5}, r"num_bins must be an int in \[2, 9223372036854775807\], got 17.5"),
    ({"kind": "glow", "num_bins": 1}, r"^num_bins must be an int in \[2, 9223372036854775807\], got 1$"),
    # audit 416: built, then the first loss() met "OverflowError: int too big to convert", naming nothing
    ({"kind": "glow", "num_bins": 10**400},
     "num_bins must be an int in \\[2, 9223372036854775807\\], got an int near 10\\*\\*400$"),
    ({"kind": "vae", "image_shape": [1.9, 8.7, 8.2]}, "image_shape must be \\(C, H, W\\) positive ints"),
    ({"kind": "glow", "image_shape": [1, 0, 8]}, "image_shape must be \\(C, H, W\\) positive ints"),  # 0 % 8 == 0
    # mutation round 37: four sides (or more) were unpacked as (C, H, W), "too many values to unpack"
    ({"kind": "glow", "image_shape": [1, 8, 8, 1]},
     "image_shape must be \\(C, H, W\\) positive ints, got \\[1, 8, 8, 1\\]$"),
    ({"kind": "glow", "image_shape": [1, 8, 6], "levels": 2}, "divisible by 2\\*\\*levels = 4, got 8x6"),  # width
    # found by fuzzing (audit 167): Python's "Exceeds the limit (4300 digits) for integer string conversion" (and
    # levels=2**31 hung, computing 2**levels)
    ({"kind": "glow", "levels": 20000}, "divisible by 2\\*\\*levels = 2\\*\\*20000, got 32x32"),
    ({"kind": "glow", "levels": 2**31}, "2\\*\\*levels = 2\\*\\*2147483648, got 32x32"),  # refused before 2**levels
])
def test_bad_codec_configs_are_named(config, match):
    with pytest.raises(ValueError, match=match):
        build_codec(config)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("make", [tiny_glow, tiny_vae])
def test_a_16_bit_cast_keeps_the_codec_in_its_dtype(make, dtype):
    """A .half() or .to(torch.bfloat16) of a module holding the codec (Lightning's precision="bf16-true") cast it,
    then refused it, and the rounding of its weights stayed after .float(): the codec keeps its weights, float32 or
    float64 after .double(), and computes as before, for 16-bit images too."""
    reference, codec = make(), make()
    codec.to(dtype)
    assert all(w.dtype == torch.float32 and torch.equal(w, reference.state_dict()[k])
               for k, w in codec.state_dict().items() if w.is_floating_point())
    x = torch.rand(2, *codec.image_shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    z = codec.encode(x)
    assert all(torch.equal(a, b) for a, b in zip(z, reference.encode(x)))
    assert torch.equal(codec.decode(z), reference.decode(z))
    assert codec.double().half().dtype == torch.float64
    moved = make().to("meta", dtype)  # a cast with a device: moved there, in float32 (mutation round 45)
    assert {(w.device.type, w.dtype) for w in moved.state_dict().values() if w.is_floating_point()} == {
        ("meta", torch.float32)}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_codec_with_16_bit_weights_is_refused(glow, dtype):
    """16-bit weights that no cast made (a 16-bit state loaded with assign=True, 16-bit layers of a codec of one's
    own): encode and decode say so instead of computing in 16 bits, also those of a Glow's unfrozen copy (built in
    float32, then given the weights: the cast that matched their dtype now keeps float32)."""
    glow.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in glow.state_dict().items()},
                         assign=True)
    own = OwnCodec()
    own.enc.to(dtype)  # the layers' own cast: not the codec's
    own.dec.to(dtype)
    for codec in (glow, own, glow.unfrozen_copy()):
        with pytest.raises(ValueError, match=f"codec's weights are {dtype}, but codecs compute in float32"):
            codec.encode(torch.rand(2, 1, 8, 8))
        with pytest.raises(ValueError, match=rf"codec's weights are {dtype}.*\.float\(\)"):
            codec.decode([torch.zeros(2, *s, dtype=dtype) for s in codec.latent_shapes])


def test_a_float64_codec_given_16_bit_weights_is_told_the_way_back_to_float64(glow):
    """Audit 353: the refusal said codecs compute in float32 and a 16-bit cast keeps them in float32, to a .double()
    codec, and to load the weights again with load_state_dict, which, into the 16-bit weights, kept them 16-bit."""
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    state = glow.double().state_dict()
    z = glow.encode_flat(x)
    glow.load_state_dict({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, assign=True)
    with pytest.raises(ValueError, match=r"float16, but codecs compute in float32 or float64 \(a cast to 16 bits keeps "
                                         r"a codec in its dtype.*\.float\(\) \(\.double\(\) for float64\), then load"):
        glow.encode(x)
    glow.load_state_dict(state)
    assert glow.dtype == torch.float16  # loaded before the cast: still 16-bit, as the message says
    glow.double().load_state_dict(state)
    assert glow.dtype == torch.float64 and torch.equal(glow.encode_flat(x), z)


def test_the_fingerprint_tells_apart_codecs_of_the_same_weights_and_another_config(glow):
    """A latent cache is checked by the codec's fingerprint: a Glow of another logit margin alpha (no weight of its
    own) encodes the same images to other latents, so it must not pass for the codec the cache was encoded with."""
    assert tiny_glow().fingerprint() == glow.fingerprint()
    other = tiny_glow()
    other.alpha = 0.1
    x = torch.rand(2, 1, 8, 8)
    assert not torch.allclose(other.encode_flat(x), glow.encode_flat(x))
    assert other.fingerprint() != glow.fingerprint()



def test_the_fingerprint_tells_apart_float64_weights_that_round_to_the_same_float32_ones():
    """Weights held in float64 are hashed as float32 only where float32 holds them exactly (mutation round 47)."""
    other = tiny_glow().double()
    other.load_state_dict({k: v * (1 + 1e-12) if v.is_floating_point() else v for k, v in other.state_dict().items()})
    assert other.fingerprint() != tiny_glow().double().fingerprint() == tiny_glow().fingerprint()

def test_the_fingerprint_hashes_each_tensors_name_dtype_and_shape_with_its_values(glow, monkeypatch):
    """Mutation round 353: the values alone, one tensor after the other, hashed alike states split otherwise or held
    in another shape or dtype of the same bytes."""
    values = torch.tensor([1.0, 2.0])
    three = torch.tensor([3.0])
    states = [{"a": values, "b": three}, {"a": values[:1], "b": torch.tensor([2.0, 3.0])},
              {"a": values.view(2, 1), "b": three}, {"a": values.view(torch.int32), "b": three}]
    prints = set()
    for state in states:
        monkeypatch.setattr(glow, "state_dict", lambda state=state: state)
        prints.add(glow.fingerprint())
    assert len(prints) == len(states)


def test_loading_weights_into_a_frozen_glow_refolds_the_fast_path():
    trained, _ = trained_like_glow_pair()
    frozen = Glow((1, 8, 8), levels=2, steps=2, hidden=16).freeze()  # folded on its random init
    frozen.load_state_dict(trained.state_dict())
    x = torch.rand(8, 1, 8, 8)
    with torch.no_grad():
        assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(trained.encode(x), frozen.encode(x)))


@pytest.mark.parametrize("kind", ["glow", "vae"])
def test_unfrozen_copy_is_an_independent_plain_twin(kind):
    codec = trained_like_glow_pair()[1] if kind == "glow" else tiny_vae()
    codec.compile_fast_path(backend="eager")  # lazy: nothing compiles unless encode/decode run
    rng = torch.get_rng_state()
    twin = codec.unfrozen_copy()
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's random stream goes on undisturbed
    codec.compile_fast_path(enabled=False)
    assert type(twin) is type(codec) and twin is not codec and twin.config == codec.config
    assert not (twin.frozen or twin.training or twin.compiled or any(p.requires_grad for p in twin.parameters()))
    assert codec.frozen and not codec.training  # the original is left as it was
    assert not getattr(twin, "use_fast_path", False) and getattr(codec, "use_fast_path", True)
    state = {k: v.clone() for k, v in codec.state_dict().items()}
    assert twin.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in twin.state_dict().items())
    ptrs = lambda m: {t.data_ptr() for t in [*m.parameters(), *m.buffers()]}  # noqa: E731
    assert not ptrs(twin) & ptrs(codec)  # copied, not shared
    x = torch.rand(6, 1, 8, 8)
    with torch.no_grad():
        z, zt = codec.encode(x), twin.encode(x)
        assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(z, zt))
        assert torch.allclose(codec.decode(z), twin.decode(z), atol=1e-5)
        assert twin.freeze() is twin and all(torch.allclose(a, b, atol=1e-6) for a, b in zip(z, twin.encode(x)))
        next(twin.parameters()).add_(1.0)
    assert all(torch.equal(v, state[k]) for k, v in codec.state_dict().items())  # a write to the copy stays there
    training = build_codec(codec.config).train()  # an unfrozen original in train mode: the copy is in eval mode
    assert training.training and not training.unfrozen_copy().training and training.training
    double = codec.double().unfrozen_copy()  # the dtype and device follow the original's
    assert double.dtype == torch.float64 and all(t.dtype == torch.float64 for t in double.state_dict().values()
                                                 if t.is_floating_point())
    assert codec.to("meta").unfrozen_copy().device.type == "meta"


class _NoNumpyUnpickler(pickle.Unpickler):
    """Reads a pickle as a process whose NumPy cannot resolve the pickle's NumPy names would (NumPy 1.24, the floor,
    does not know NumPy 2's ``numpy._core``)."""

    def find_class(self, module: str, name: str):
        if module.split(".")[0] == "numpy":
            raise pickle.UnpicklingError(f"a NumPy object in the pickle: {module}.{name}")
        return super().find_class(module, name)


@pytest.mark.parametrize("make", [tiny_glow, tiny_vae])
def test_a_pickled_codec_and_its_transform_hold_no_numpy_objects(make):
    """Audit 218: normflows kept each Glow level's size as a NumPy scalar, so a Glow transform pickled under NumPy 2
    (torch 2.14) failed to unpickle under NumPy 1.24 (torch 2.4), "No module named 'numpy._core'"."""
    t = LatentNoise(make(), generator=0).train()
    x = torch.rand(4, 1, 8, 8)
    t(x)  # its generator made, as a transform saved after training has it
    copy_ = _NoNumpyUnpickler(io.BytesIO(pickle.dumps(t))).load()
    assert torch.equal(copy_(x)[0], t(x)[0])  # the copy continues the stream


def test_codecs_run_in_fp32_under_a_bf16_autocast():
    """Training loops often call the augmentation inside autocast: the codec must stay fp32 and exact there."""
    _, glow = trained_like_glow_pair()
    vae = tiny_vae()
    x = torch.rand(8, 1, 8, 8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        z = glow.encode(x)
        x2 = glow.decode(z)
        outputs = [*z, x2, *vae.encode(x), *vae.encode(x, sample=True, generator=torch.Generator().manual_seed(0)),
                   vae.decode(vae.encode(x))]
    assert all(t.dtype == torch.float32 for t in outputs)
    assert (x2 - x).abs().max() <= 1e-4  # 0.06 when the flow runs in bf16
    with torch.autocast("cpu", dtype=torch.bfloat16), exact_math():  # no device given: the CPU's and CUDA's
        assert not torch.is_autocast_enabled("cpu")


def test_flat_latents_and_reconstruct_are_encode_and_decode():
    x = torch.rand(3, 1, 8, 8).requires_grad_(True)
    for codec in (tiny_glow(), tiny_vae()):
        z = codec.encode_flat(x)
        assert z.shape == (3, codec.latent_dim) and torch.equal(z, flatten_latents(codec.encode(x)))
        assert torch.equal(codec.decode_flat(z), codec.decode(unflatten_latents(z, codec.latent_shapes)))
        rec = codec.reconstruct(x)
        assert not rec.requires_grad and 0 <= rec.min() and rec.max() <= 1
        assert torch.equal(rec, codec.decode(codec.encode(x)).clamp(0, 1).detach())


@pytest.mark.parametrize("make", [lambda: GLOW, tiny_vae, OwnCodec,
                                  lambda: ConvVAE((1, 8, 8), latent_dim=4, hidden=8, latent_side=2),
                                  lambda: Glow((1, 8, 8), levels=2, steps=1, hidden=8)])  # ActNorm not initialised
def test_an_empty_batch_is_encoded_and_decoded_as_the_transforms_pass_it(make):
    """Audit 275: ``encode`` refused a batch of B = 0 ("x is an empty batch") that ``decode`` took, where the
    transforms pass one through; both give empty outputs now, without a run of the codec (a Glow's ActNorm not yet
    initialised took NaN from an empty decode). What trains or evaluates on a batch still refuses one."""
    codec = make()
    state = copy.deepcopy(codec.state_dict())
    empty = torch.rand(0, *codec.image_shape, dtype=torch.float64)
    z = codec.encode(empty)
    assert [(t.shape, t.dtype) for t in z] == [((0, *s), torch.float32) for s in codec.latent_shapes]
    assert codec.encode_flat(empty).shape == (0, codec.latent_dim)
    for x in (codec.decode(z), codec.decode_flat(torch.zeros(0, codec.latent_dim)), codec.reconstruct(empty),
              codec.decode([t.double() for t in z])):  # mutation round 39 (audit 282): the codec's dtype, not z's
        assert (x.shape, x.dtype) == ((0, *codec.image_shape), torch.float32)
    with torch.device("meta"):  # on the input's device, not torch's default one (round 39)
        assert {t.device.type for t in [*codec.encode(empty), codec.decode(z)]} == {"cpu"}
    if isinstance(codec, ConvVAE):
        for kwargs in ({"generator": 0}, {"noise": torch.zeros(0)}):  # as the posterior mean (round 39: noise=)
            sample = codec.encode(empty, sample=True, **kwargs)[0]
            assert (sample.shape, sample.dtype) == ((0, *codec.latent_shapes[0]), torch.float32)
    if not isinstance(codec, OwnCodec):
        with pytest.raises(ValueError, match=r"^x is an empty batch"):
            codec.loss(empty)
    assert all(torch.equal(t, state[k]) for k, t in codec.state_dict().items())


def test_shipped_glow_digits_bits_per_dim_matches_its_registry_entry():
    """Golden value: the shipped flow's test bits/dim as recorded in the registry (eval_codec: seeded dequantisation)."""
    import json

    from latent_transforms import hub
    from latent_transforms.data import load_images

    recorded = json.loads((hub._SHIPPED_DIR / "registry.json").read_text())["checkpoints"]["glow-digits"]["quality"]
    glow = hub.load("glow-digits")
    x, _, num_bins = load_images("digits", split="test")
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))  # as eval_codec draws it (seed 0)
    x_deq = (torch.round(x * (num_bins - 1)) + noise) / num_bins
    with torch.no_grad():
        bpd = glow.bits_per_dim(x_deq).mean().item()
    assert bpd == pytest.approx(recorded["test_bits_per_dim"], abs=1e-3)


def test_log_prob_is_the_base_density_plus_the_jacobian_log_determinant():
    torch.manual_seed(0)
    glow = Glow((1, 4, 4), levels=1, steps=2, hidden=8).double()
    with torch.no_grad():
        glow.loss(torch.rand(32, 1, 4, 4, dtype=torch.float64))
        for p in glow.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64) * 0.8 + 0.1
    for i in range(2):
        xi = x[i:i + 1]
        f = lambda v: flatten_latents(glow._encode_with_logdet(v.view(1, 1, 4, 4))[0]).flatten()
        jac = torch.autograd.functional.jacobian(f, xi.flatten())
        u = f(xi.flatten())
        expected = torch.distributions.Normal(0.0, 1.0).log_prob(u).sum() + torch.linalg.slogdet(jac)[1]
        assert torch.allclose(glow.log_prob(xi)[0], expected, atol=1e-8)


def test_glow_loss_dequantises_with_uniform_noise():
    glow = tiny_glow()
    x = torch.randint(0, 17, (6, 1, 8, 8)).float() / 16
    torch.manual_seed(3)
    a, _ = glow.loss(x)
    b, _ = glow.loss(x)
    assert a != b  # a fresh dequantisation draw per call
    torch.manual_seed(3)
    expected = glow.bits_per_dim((torch.round(x * 16) + torch.rand_like(x)) / 17).mean()
    assert torch.allclose(a, expected, atol=1e-6)


def test_glow_loss_rounds_intensities_off_their_levels_to_the_nearest_one():
    # x * 255 of 8-bit images made float lands a rounding error below or above the level: floor() moved the ones
    # below down a whole level
    glow = tiny_glow()  # 17 levels
    g = torch.Generator().manual_seed(0)
    levels = torch.randint(1, 16, (6, 1, 8, 8), generator=g).float()
    x = (levels + 0.2 * torch.rand(levels.shape, generator=g) - 0.1) / 16  # within a tenth of a level of each
    torch.manual_seed(3)
    got, _ = glow.loss(x)
    torch.manual_seed(3)
    expected = glow.bits_per_dim((levels + torch.rand_like(x)) / 17).mean()
    torch.testing.assert_close(got, expected)


def test_freezing_a_fresh_glow_marks_its_actnorms_initialised():
    torch.manual_seed(0)
    glow = Glow((1, 8, 8), levels=2, steps=2, hidden=8).freeze()  # never run: data-dependent init pending
    state = {k: v.clone() for k, v in glow.state_dict().items()}
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        glow.log_prob(x)  # the plain normflows path, whose ActNorm initialises itself on a first batch
        glow.encode(x)
        glow.loss(x)
    assert all(torch.equal(v, glow.state_dict()[k]) for k, v in state.items())


def test_an_initialised_actnorm_no_longer_reads_its_flag_but_a_loaded_state_is_rechecked():
    """Once initialised, a Glow's ActNorm skips the buffer read (a graph break under torch.compile: the loss was 23
    graphs); loading a state dict reads the loaded buffer once: initialised or not."""
    import torch._dynamo

    torch.manual_seed(0)
    glow = Glow((1, 8, 8), levels=2, steps=2, hidden=8).init_actnorm(torch.rand(16, 1, 8, 8))
    x = torch.rand(4, 1, 8, 8)
    for fn in (glow.bits_per_dim, glow.loss):  # the loss as train_codec compiles it: one graph, its values read once
        with values_read():  # before training (a direct call reads them: a break)
            explained = torch._dynamo.explain(fn)(x)
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    loaded = Glow((1, 8, 8), levels=2, steps=2, hidden=8)
    loaded.load_state_dict(glow.state_dict())  # initialised weights: used as they are, not initialised again
    with values_read():
        explained = torch._dynamo.explain(lambda xb: loaded.bits_per_dim(xb))(x)  # one graph from the first call on
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons  # (a resumed run)
    assert torch.allclose(loaded.log_prob(x), glow.log_prob(x))
    glow.load_state_dict(Glow((1, 8, 8), levels=2, steps=2, hidden=8).state_dict())  # a state never initialised
    before = glow.flow.flows[0][0].flows[2].s.detach().clone()
    glow.log_prob(x)  # initialises from this batch, as a fresh Glow would
    assert not torch.equal(glow.flow.flows[0][0].flows[2].s, before)


def test_vae_posterior_samples_have_the_posterior_std():
    vae = tiny_vae()
    with torch.no_grad():
        vae.encoder[-1].bias[4:] -= 2.0  # log-variance about -2: std exp(-1), clearly not exp(-2) nor 1
    x = torch.rand(1, 1, 8, 8).expand(6000, 1, 8, 8)
    mu, logvar = vae.posterior(x[:1])
    samples = vae.encode(x, sample=True, generator=torch.Generator().manual_seed(0))[0]
    torch.testing.assert_close(samples.mean(0), mu[0], atol=0.03, rtol=0)
    torch.testing.assert_close(samples.std(0), torch.exp(0.5 * logvar[0]), atol=0, rtol=0.05)
    seen = []
    vae.decoder.register_forward_pre_hook(lambda module, args: seen.append(args[0]))  # the ELBO's latent sample
    terms = vae.elbo_terms(x, generator=torch.Generator().manual_seed(0))  # the ELBO's sample: the same posterior
    assert torch.allclose(terms["mu"], mu.expand_as(terms["mu"]))
    torch.testing.assert_close(seen[0].mean(0), mu[0], atol=0.03, rtol=0)
    torch.testing.assert_close(seen[0].std(0), torch.exp(0.5 * logvar[0]), atol=0, rtol=0.05)


def test_vae_loss_weighs_the_kl_by_beta():
    x = torch.rand(4, 1, 8, 8)
    for beta in (0.0, 2.0):
        vae = tiny_vae()
        vae.beta = beta
        with torch.no_grad():
            vae.encoder[-1].bias[:4] += 1.0  # a posterior mean away from 0: a KL of about 2 nats
        torch.manual_seed(5)
        terms = vae.elbo_terms(x)
        torch.manual_seed(5)
        loss, metrics = vae.loss(x)
        assert terms["kl"].mean() > 0.01
        torch.testing.assert_close(loss, terms["rec"].mean() + beta * terms["kl"].mean())
        torch.testing.assert_close(metrics["kl"], terms["kl"].mean())


@pytest.mark.parametrize("make", [lambda: Glow((1, 8, 8), levels=1, steps=1, hidden=8),
                                  lambda: ConvVAE((1, 8, 8), latent_dim=4, hidden=8)], ids=["glow", "vae"])
def test_a_training_loss_reports_its_metrics_without_their_graph(make):
    """A loop that keeps the metrics (a log, a history) must not keep each step's autograd graph with them."""
    torch.manual_seed(0)
    loss, metrics = make().loss(torch.rand(4, 1, 8, 8))
    assert loss.requires_grad and metrics, "nothing to check: the loss has no graph or there are no metrics"
    attached = [k for k, v in metrics.items() if v.requires_grad]
    assert not attached, f"metrics {attached} hold the loss's graph: detach them"


def test_vae_loss_metrics_are_of_the_decoded_posterior_sample():
    """The metrics a training progress bar shows: 'mse' is that of the decoded images (sigmoid of the logits, in
    [0, 1]) against x, 'rec' the batch mean of the Bernoulli nats, for the one posterior sample the loss draws."""
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    vae = tiny_vae()
    torch.manual_seed(5)
    terms = vae.elbo_terms(x)
    torch.manual_seed(5)
    _, metrics = vae.loss(x)
    torch.testing.assert_close(metrics["mse"], (torch.sigmoid(terms["logits"]) - x).pow(2).mean())
    torch.testing.assert_close(metrics["rec"], terms["rec"].mean())


def test_vae_elbo_terms_are_the_closed_form_kl_and_the_summed_bernoulli_nats():
    vae = tiny_vae()  # latent_dim 4: the encoder's last layer gives (mu, logvar) as its first and last 4 outputs
    with torch.no_grad():
        vae.encoder[-1].bias[:4] += torch.tensor([1.0, -0.5, 0.3, 2.0])
        vae.encoder[-1].bias[4:] += torch.tensor([-2.0, 0.7, -0.4, 1.2])
    # 16 draws or more: torch draws a float64 batch of them otherwise than a float32 one (mutation round 353)
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)).double()
    vae = vae.double()
    terms = vae.elbo_terms(x, generator=torch.Generator().manual_seed(2))
    mu, logvar = vae.encoder(x).chunk(2, dim=1)
    std = torch.exp(0.5 * logvar)
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(mu, std), torch.distributions.Normal(0.0, 1.0))
    torch.testing.assert_close(terms["kl"], kl.sum(1))  # KL(N(mu, std^2) || N(0, 1)) in nats, summed over z
    z = mu + std * torch.randn(mu.shape, generator=torch.Generator().manual_seed(2)).double()  # drawn in float32
    p = torch.sigmoid(vae.decoder(z))
    nats = -(x * torch.log(p) + (1 - x) * torch.log1p(-p))
    torch.testing.assert_close(terms["rec"], nats.flatten(1).sum(1))  # Bernoulli nats summed over the pixels
    torch.testing.assert_close(vae._kl_divergence(torch.zeros(2, 4), torch.zeros(2, 4)), torch.zeros(2))


@pytest.fixture
def tf32_on(precision_settings):
    # precision_settings puts every setting back: restoring the two legacy flags left cuda.matmul.fp32_precision at
    # "ieee" (it was "none") for the rest of the session
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    yield


def test_encode_and_decode_run_without_tf32_and_autocast_and_restore_the_flags(tf32_on, monkeypatch):
    seen = []

    def record():
        seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                     torch.is_autocast_enabled("cpu")))

    for codec in (tiny_glow(), tiny_vae()):
        encode, decode = codec._encode, codec._decode
        monkeypatch.setattr(codec, "_encode", lambda x: (record(), encode(x))[1])
        monkeypatch.setattr(codec, "_decode", lambda z: (record(), decode(z))[1])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            codec.decode(codec.encode(torch.rand(2, 1, 8, 8)))
            assert torch.is_autocast_enabled("cpu")  # back on after the call
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32  # restored
    assert seen == [(False, False, False)] * 4


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_codec_call_that_raises_restores_the_flags_and_leaves_the_codec_as_it_was(tf32_on, monkeypatch, error):
    vae = tiny_vae()
    state = {k: v.clone() for k, v in vae.state_dict().items()}

    def fail(z):
        raise error("interrupted")

    monkeypatch.setattr(vae, "_decode", fail)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(error):
            LatentNoise(vae, generator=0)(torch.rand(2, 1, 8, 8))  # encodes, then fails to decode
        assert torch.is_autocast_enabled("cpu")
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert vae.frozen and not vae.training and not any(p.requires_grad for p in vae.parameters())
    assert all(torch.equal(v, vae.state_dict()[k]) for k, v in state.items())


def test_exact_math_turns_off_the_given_devices_autocast_and_restores_tf32(tf32_on):
    was = torch.is_autocast_enabled("cuda")
    torch.set_autocast_enabled("cuda", True)  # a thread-local flag: settable without a GPU
    try:
        for device_type in ("cuda", None):
            with exact_math(device_type):
                assert not torch.is_autocast_enabled("cuda")
                assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
            assert torch.is_autocast_enabled("cuda")
            assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.set_autocast_enabled("cuda", was)


def test_exact_math_enters_no_autocast_where_none_is_on(monkeypatch):
    # (mutation audit 177) entering a disabled autocast costs ~15 us of host time in every codec call
    entered = []
    monkeypatch.setattr(torch, "autocast", lambda *args, **kwargs: entered.append(args) or contextlib.nullcontext())
    for device_type in ("cpu", "cuda", None):
        with exact_math(device_type):
            pass
    assert entered == []


_NEEDS_FP32_PRECISION = pytest.mark.skipif(not hasattr(torch.backends.cuda.matmul, "fp32_precision"),
                                           reason="the per-backend fp32_precision settings came in torch 2.9")


def _precision_holders() -> dict:
    b = torch.backends
    if not hasattr(b.cuda.matmul, "fp32_precision"):  # torch < 2.9: the legacy settings only
        return {}
    return {"all": b, "cuda.matmul": b.cuda.matmul, "cudnn": b.cudnn, "cudnn.conv": b.cudnn.conv,
            "cudnn.rnn": b.cudnn.rnn, "mkldnn": b.mkldnn, "mkldnn.matmul": b.mkldnn.matmul,
            "mkldnn.conv": b.mkldnn.conv, "mkldnn.rnn": b.mkldnn.rnn}


@pytest.fixture
def precision_settings():
    """Run a test that changes torch's float32 precision settings and put them back afterwards."""
    matmul, cudnn = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    stored = {name: h.fp32_precision for name, h in _precision_holders().items()}
    yield
    torch.set_float32_matmul_precision(matmul)
    torch.backends.cudnn.allow_tf32 = cudnn
    for name, h in _precision_holders().items():  # after the legacy setters, which write some of these
        h.fp32_precision = stored[name]


def _precision_snapshot() -> dict:
    """Every float32 precision setting as a user would read it ("raises" where torch's getter raises)."""
    def read(get):
        try:
            return get()
        except RuntimeError:
            return "raises"
    snap = {name: h.fp32_precision for name, h in _precision_holders().items()}
    snap.update(matmul_precision=read(torch.get_float32_matmul_precision),
                cublas_allow_tf32=read(lambda: torch.backends.cuda.matmul.allow_tf32),
                cudnn_allow_tf32=read(lambda: torch.backends.cudnn.allow_tf32))
    return snap


USER_PRECISION_SETTINGS = [  # what users write to get TF32 or bf16 matmuls: the new API (torch >= 2.9), the legacy one
    "torch.backends.fp32_precision = 'tf32'",
    "torch.backends.cuda.matmul.fp32_precision = 'tf32'",
    "torch.backends.mkldnn.matmul.fp32_precision = 'bf16'",
    "torch.set_float32_matmul_precision('medium')",
    "torch.set_float32_matmul_precision('high')",
    "torch.backends.cuda.matmul.allow_tf32 = True; torch.backends.cudnn.allow_tf32 = True",
    "torch.backends.fp32_precision = 'tf32'; torch.set_float32_matmul_precision('high')",
    # RNNs kept in full precision, which a legacy setter's write (allow_tf32) overwrites (mutation round 353)
    "torch.backends.cudnn.allow_tf32 = False; torch.backends.cudnn.rnn.fp32_precision = 'ieee'",
]


@pytest.mark.skipif(not hasattr(torch.backends.cuda.matmul, "fp32_precision"), reason="torch < 2.9: legacy API only")
@pytest.mark.parametrize("setting", USER_PRECISION_SETTINGS)
def test_codecs_run_in_full_precision_under_any_precision_setting_and_restore_it_exactly(setting, precision_settings,
                                                                                      monkeypatch):
    # Reading the legacy flags raised after the new API's settings, and writing them back broke
    # torch.get_float32_matmul_precision() after set_float32_matmul_precision('medium').
    exec(setting)
    before = _precision_snapshot()
    inside = []
    for codec in (tiny_glow(), tiny_vae()):
        encode = codec._encode
        monkeypatch.setattr(codec, "_encode", lambda x: (inside.append(_precision_snapshot()), encode(x))[1])
        codec.decode(codec.encode(torch.rand(2, 1, 8, 8)))
        assert _precision_snapshot() == before
    assert len(inside) == 2
    for snap in inside:
        assert {snap[k] for k in ("cuda.matmul", "cudnn.conv", "mkldnn.matmul", "mkldnn.conv")} == {"ieee"}
        assert snap["matmul_precision"] == "highest" and snap["cublas_allow_tf32"] is False


def test_exact_math_restores_the_settings_when_the_last_thread_leaves(tf32_on):
    # Each call saved and restored the flags itself: a thread that left while another was inside turned TF32 back
    # on under it, and the other then restored the "off" it had saved, leaving TF32 off for good.
    import threading
    inside, leave = threading.Event(), threading.Event()

    def first():
        with exact_math():
            inside.set()
            leave.wait(10)

    thread = threading.Thread(target=first)
    thread.start()
    assert inside.wait(10)
    with exact_math():
        leave.set()
        thread.join(10)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32  # still inside
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32  # the last one out restored


def _settings_after(start: Callable[[], None], change: Callable[[], None], during_a_codec_call: bool) -> dict:
    """The precision settings after ``start()`` then ``change()``, made with no codec call running or while another
    thread is inside one."""
    import threading
    inside, leave = threading.Event(), threading.Event()

    def codec_call():
        with exact_math():
            inside.set()
            leave.wait(10)

    start()
    thread = threading.Thread(target=codec_call)
    if during_a_codec_call:
        thread.start()
        assert inside.wait(10)
    change()
    leave.set()
    if during_a_codec_call:
        thread.join(10)
    return _precision_snapshot()


@pytest.mark.parametrize("start", [
    lambda: (torch.set_float32_matmul_precision("highest"), setattr(torch.backends.cudnn, "allow_tf32", False)),
    lambda: (torch.set_float32_matmul_precision("medium"), setattr(torch.backends.cudnn, "allow_tf32", True)),
])
@pytest.mark.parametrize("change", [
    lambda: torch.set_float32_matmul_precision("high"),  # the legacy API (it also writes fp32_precision holders)
    lambda: setattr(torch.backends.cudnn, "allow_tf32", True),
    pytest.param(lambda: setattr(torch.backends.mkldnn.matmul, "fp32_precision", "bf16"),  # the new API alone
                 marks=_NEEDS_FP32_PRECISION),
    pytest.param(lambda: setattr(torch.backends.cuda.matmul, "fp32_precision", "tf32"), marks=_NEEDS_FP32_PRECISION),
])  # not TF32 turned off: while a codec runs it is off already, so that change cannot be seen (and is undone)
def test_a_setting_made_while_another_thread_is_in_a_codec_call_ends_as_if_made_outside(precision_settings, start,
                                                                                         change):
    # the last codec call to leave restored every setting saved when the first one entered: TF32 turned on by the
    # training thread while a background thread was encoding (a LatentCache, a data pipeline) was turned off again
    alone = _settings_after(start, change, during_a_codec_call=False)
    assert _settings_after(start, change, during_a_codec_call=True) == alone


def test_a_frozen_glow_cast_to_float64_folds_its_fast_path_again():
    # the folded weights stayed rounded to float32: a float64 round trip erred by 3e-7 instead of ~1e-15
    _, glow = trained_like_glow_pair()
    glow = copy.deepcopy(glow).double()
    assert glow.use_fast_path
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert float((glow.decode(glow.encode(x)) - x).abs().max()) < 1e-10
        assert all(b.dtype == torch.float64 for b in glow.buffers() if b.is_floating_point())


@pytest.mark.parametrize("floor", [0.0, 1.0])
def test_glow_scale_floor_on_the_boundary_is_refused(floor):
    # 0 removes the bound that keeps decoding finite (a coupling could magnify without limit); 1 freezes every scale
    with pytest.raises(ValueError, match=rf"^scale_floor must be a finite number in \(0, 1\), got {floor}$"):
        build_codec({"kind": "glow", "image_shape": [1, 8, 8], "levels": 1, "steps": 1, "hidden": 4,
                     "scale_floor": floor})


def test_vae_log_variance_is_clamped_so_samples_and_kl_stay_finite():
    torch.manual_seed(0)
    vae = ConvVAE((1, 8, 8), latent_dim=4, hidden=8)
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    last = vae.encoder[-1]  # Linear -> (mu, logvar)
    for logvar, bound in ((1000.0, 20.0), (-1000.0, -30.0)):  # a diverging encoder: exp(0.5 * 1000) is inf in fp32
        with torch.no_grad():
            last.weight.zero_()
            last.bias.zero_()
            last.bias[4:] = logvar
        assert torch.equal(vae.posterior(x)[1], torch.full((2, 4), bound))
        z = vae.encode(x, sample=True, generator=torch.Generator().manual_seed(0))[0]
        assert torch.isfinite(z).all() and torch.isfinite(vae.elbo_terms(x)["kl"]).all()


def test_reconstruct_clips_what_decode_returns():
    torch.manual_seed(0)
    vae = ConvVAE((1, 8, 8), latent_dim=4, hidden=8).freeze()
    vae._decode = lambda z: torch.linspace(-0.5, 1.5, 64).repeat(len(z[0]), 1).view(-1, 1, 8, 8)  # overshoots
    out = vae.reconstruct(torch.rand(2, 1, 8, 8))
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0


def test_sample_scales_the_prior_draw_by_the_temperature():
    torch.manual_seed(0)
    vae = ConvVAE((1, 8, 8), latent_dim=4, hidden=8).freeze()
    z = torch.randn(3, 4, generator=torch.Generator().manual_seed(5))
    for t in (0.0, 0.5, 2.0):
        expected = vae.decode([t * z]).clamp(0, 1)
        assert torch.allclose(vae.sample(3, temperature=t, generator=torch.Generator().manual_seed(5)), expected)


def test_a_flows_samples_are_clipped_to_the_image_range(glow):
    """A Glow decodes to (sigmoid - alpha) / (1 - 2 alpha), a little outside [0, 1]; sample() clips as documented."""
    g = torch.Generator().manual_seed(3)
    raw = glow.decode([2.0 * torch.randn(8, *s, generator=g) for s in glow.latent_shapes])  # as sample() draws
    assert raw.min() < 0 and raw.max() > 1  # what there is to clip
    out = glow.sample(8, temperature=2.0, generator=3)
    assert out.min() >= 0 and out.max() <= 1 and torch.equal(out, raw.clamp(0, 1))


def test_sample_refuses_a_temperature_beyond_its_bound_by_name(glow):
    """temperature=1e38 gave NaN images (latents overflowed, then the decode), and far less did for a trained flow
    (glow-digits from 3e27): past _MAX_TEMPERATURE the samples are noise anyway."""
    assert torch.isfinite(glow.sample(2, temperature=_MAX_TEMPERATURE, generator=0)).all()
    with pytest.raises(ValueError, match=r"^temperature must be a finite number in \[0, 100\], got 1e\+38$"):
        glow.sample(2, temperature=1e38, generator=0)


@pytest.mark.parametrize("make", [
    lambda: Glow((1, 8, 8), levels=np.int64(2), steps=1, hidden=8, num_bins=17),
    lambda: ConvVAE((1, 8, 8), latent_dim=np.int64(4), hidden=torch.tensor(8), latent_side=np.int64(4)),
    lambda: ConvVAE((1, 8, 8), hidden=8, beta=np.float32(0.5)),
])
def test_a_codec_built_from_numpy_numbers_keeps_a_json_config(tmp_path, make):
    """NumPy or 0-d tensor numbers were kept in the config: save_checkpoint (and train_codec's first checkpoint,
    after its training) failed with json's 'Object of type int64 is not JSON serializable'."""
    from latent_transforms import hub
    codec = make().freeze()
    assert all(type(v) in (int, float, str, list, type(None)) for v in codec.config.values()), codec.config
    hub.save_checkpoint(codec, tmp_path / "c.safetensors")


def test_training_and_sampling_methods_check_their_arguments():
    """Glow.loss, log_prob and ConvVAE.loss failed inside normflows/conv on images of another shape; an int seed,
    which every transform takes, was torch's raw TypeError in sample and a VAE's posterior sample."""
    glow, vae = tiny_glow(), tiny_vae()
    for call in (lambda: glow.loss(torch.rand(2, 3, 8, 8)), lambda: glow.log_prob(torch.rand(2, 1, 4, 4)),
                 lambda: vae.loss(torch.rand(2, 3, 8, 8))):
        with pytest.raises(ValueError, match=r"^this (glow|vae) codec was trained on images of shape \(1, 8, 8\) "
                                             r"\(C, H, W\), got x of shape \(2, [13], [48], [48]\); "):
            call()
    with pytest.raises(ValueError, match=r"z must be \(B, D\) float flat latents"):
        glow.decode_flat(torch.zeros(2, glow.latent_dim, dtype=torch.long))
    assert torch.equal(glow.sample(2, generator=3), glow.sample(2, generator=3))
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(vae.encode(x, sample=True, generator=3)[0], vae.encode(x, sample=True, generator=3)[0])
    assert torch.equal(vae.elbo_terms(x, generator=3)["logits"], vae.elbo_terms(x, generator=3)["logits"])
    with pytest.raises(TypeError, match="sample must be True or False"):  # "no" drew a posterior sample
        vae.encode(x, sample="no")
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        glow.sample(0)
    # found by bad-input fuzzing (audit 234): torch's TypeError "Overflow when unpacking long long" (2**70) or
    # RuntimeError "Storage size calculation overflowed" (2**62) named no argument; within the bound, the allocator's
    # own "can't allocate memory"
    for codec in (glow, vae):
        bound = (2**63 - 1) // (4 * 64)  # the (1, 8, 8) float32 images are the largest tensor of one sample
        for n in (2**70, 2**62, bound + 1):
            with pytest.raises(ValueError, match=rf"^n must be an int in \[1, {bound}\] \(256 bytes each; a torch "
                                                 rf"tensor holds at most 2\*\*63 - 1 bytes\), got {n}$"):
                codec.sample(n)
    with pytest.raises(TypeError, match="generator must be None, an int seed or a torch.Generator"):
        glow.sample(2, generator="3")


def _moved_twin(glow: Glow, scale: float) -> Glow:
    """A frozen copy of ``glow`` whose every weight is moved by ``scale`` * N(0, 1): other weights to write into it."""
    other = glow.unfrozen_copy()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn_like(p))
    return other.freeze()


def test_a_frozen_glow_follows_weights_written_in_place():
    # the folded fast path was computed at freeze() and refolded only by load_state_dict or a dtype change: after
    # p.copy_(...) the fingerprint followed the new weights but encode/decode kept the old ones (latents off by 1.3)
    from latent_transforms import hub

    glow = hub.load("glow-digits")
    other = _moved_twin(glow, 0.01)
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        for a, b in zip(glow.parameters(), other.parameters()):
            a.copy_(b)
    assert glow.fingerprint() == other.fingerprint()
    assert torch.allclose(glow.encode_flat(x), other.encode_flat(x), atol=1e-5)
    z = other.encode(x)
    assert torch.allclose(glow.decode(z), other.decode(z), atol=1e-5)
    from latent_transforms.codecs.glow import SyncFreeActNorm

    with torch.no_grad():  # an ActNorm's weights alone, the other half of what is folded
        next(m for m in glow.modules() if isinstance(m, SyncFreeActNorm)).s.add_(0.5)
    assert torch.allclose(glow.encode_flat(x), glow.unfrozen_copy().encode_flat(x), atol=1e-5), "ActNorm not refolded"


@pytest.mark.parametrize("how", ["vector_to_parameters", "p.data =", "swap_tensors"])
def test_a_frozen_glow_follows_weights_given_other_storage(how):
    # version counters alone: vector_to_parameters (p.data = ... in torch 2.14), p.data = ... and swap_tensors left
    # them where they were, and encode kept the old folded weights (latents off by 12; audit 316)
    glow = Glow((1, 8, 8), levels=2, steps=2, hidden=16).init_actnorm(torch.rand(16, 1, 8, 8)).freeze()
    other = _moved_twin(glow, 0.05)
    x = torch.rand(4, 1, 8, 8)
    glow.encode_flat(x)  # folded and its sources' state read
    with torch.no_grad():
        if how == "vector_to_parameters":
            nn.utils.vector_to_parameters(nn.utils.parameters_to_vector(other.parameters()), glow.parameters())
        for a, b in zip(glow.parameters(), other.parameters()):
            if how == "p.data =":
                a.data = b.detach().clone()
            elif how == "swap_tensors":
                torch.utils.swap_tensors(a, nn.Parameter(b.detach().clone(), requires_grad=False))
    assert torch.allclose(glow.encode_flat(x), other.encode_flat(x), atol=1e-5)


def test_a_write_through_data_that_a_frozen_glow_cannot_see_is_refolded_by_freezing_it_again(monkeypatch):
    """``p.data.copy_(...)`` moves neither version counter nor data address: the docs' way out is ``freeze()`` again,
    which refolds (audit 442: a second freeze() ran in no test), and counts no new buffers (its buffers are the ones
    the first freeze registered)."""
    from latent_transforms import base

    glow = Glow((1, 8, 8), levels=2, steps=2, hidden=16).init_actnorm(torch.rand(16, 1, 8, 8)).freeze()
    other = _moved_twin(glow, 0.05)
    x = torch.rand(4, 1, 8, 8)
    glow.encode_flat(x)  # folded and its sources' state read
    with torch.no_grad():
        for a, b in zip(glow.parameters(), other.parameters()):
            a.data.copy_(b)
    assert not torch.allclose(glow.encode_flat(x), other.encode_flat(x), atol=1e-3)  # the fold unseen, as documented
    changed = base._SUBMODULES_CHANGED
    assert glow.freeze() is glow and glow.frozen
    assert base._SUBMODULES_CHANGED == changed  # refolded into the same buffers: no new ones to keep out of DDP's
    assert torch.allclose(glow.encode_flat(x), other.encode_flat(x), atol=1e-5)
    z = other.encode(x)
    assert torch.allclose(glow.decode(z), other.decode(z), atol=1e-5)


@pytest.mark.parametrize("how", ["share_memory", "pickle"])
def test_a_frozen_glow_moved_or_unpickled_keeps_its_folded_weights_without_folding_again(glow, monkeypatch, how):
    """Storage moved by a cast or move (``share_memory``, as torch.multiprocessing shares a module) or an unpickled
    copy reads its fold sources anew: its next call does not fold every step again (float64 inverses; mutation round
    353)."""
    x = torch.rand(2, 1, 8, 8)
    z = glow.encode_flat(x)
    moved = glow.share_memory() if how == "share_memory" else pickle.loads(pickle.dumps(glow))
    refolds = []
    monkeypatch.setattr(Glow, "_fold_weights", lambda self, fold=Glow._fold_weights: (refolds.append(self), fold(self)))
    assert torch.equal(moved.encode_flat(x), z) and not refolds


def test_a_frozen_glow_given_an_uninitialised_state_updates_no_statistics():
    # its ActNorms, marked as not initialised by the loaded state, took their scale from the next log_prob batch
    glow = Glow((1, 8, 8), levels=2, steps=1, hidden=8).init_actnorm(torch.rand(16, 1, 8, 8)).freeze()
    glow.load_state_dict(Glow((1, 8, 8), levels=2, steps=1, hidden=8).state_dict())
    before = glow.fingerprint()
    glow.log_prob(torch.rand(4, 1, 8, 8))
    assert glow.fingerprint() == before


def test_a_vae_posterior_sample_checks_the_images_as_the_mean_does():
    vae = ConvVAE((1, 8, 8), latent_dim=4, hidden=8).freeze()
    for sample in (False, True):  # uint8 images read as floats in [0, 255] gave latents without a word
        with pytest.raises(ValueError, match="got dtype torch.uint8; convert with x.float"):
            vae.encode(torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8), sample=sample)
        with pytest.raises(ValueError, match=r"trained on images of shape \(1, 8, 8\)"):
            vae.encode(torch.rand(2, 1, 16, 16), sample=sample)


@pytest.mark.parametrize("values,match", [
    (lambda x: x * 255, r"got range \[.*\]; these look like 0-255 intensities: divide them by 255"),
    (lambda x: x * 2 - 1, r"these look like images scaled to \[-1, 1\]"),
    (lambda x: x.index_fill(0, torch.tensor([1]), float("nan")), r"x contains NaN or inf \(in samples \[1\]\)"),
    (lambda x: x.index_fill(0, torch.tensor([0]), float("inf")), r"x contains NaN or inf \(in samples \[0\]\)"),
])
def test_a_codec_called_directly_reads_its_images_values_as_a_transform_does(values, match):
    """Audit 241: a codec's own entry points checked the images' form, not their values (the transforms read those
    once per call): images in [0, 255] or [-1, 1] gave a VAE finite latents and a finite loss of nothing (its loss -2340
    for 0-255 images), a Glow NaN latents and a NaN loss, and NaN images a NaN loss, all without a word."""
    glow = tiny_glow()
    trained = Glow((1, 8, 8), levels=2, steps=1, hidden=8)  # not frozen, its ActNorms not initialised: init_actnorm
    vae = tiny_vae()
    x = values(torch.rand(2, 1, 8, 8))
    calls = {"glow.encode": lambda: glow.encode(x), "glow.encode_flat": lambda: glow.encode_flat(x),
             "glow.reconstruct": lambda: glow.reconstruct(x), "glow.log_prob": lambda: glow.log_prob(x),
             "glow.bits_per_dim": lambda: glow.bits_per_dim(x), "glow.loss": lambda: glow.loss(x),
             "glow.init_actnorm": lambda: trained.init_actnorm(x), "vae.encode": lambda: vae.encode(x),
             "vae.encode(sample=True)": lambda: vae.encode(x, sample=True), "vae.posterior": lambda: vae.posterior(x),
             "vae.elbo_terms": lambda: vae.elbo_terms(x), "vae.loss": lambda: vae.loss(x)}
    for call in calls.values():
        with pytest.raises(ValueError, match=match):
            call()
    with values_read():  # its caller read them (a transform's call, train_codec): not read again, no host sync
        assert vae.encode(x)[0].shape == (2, 4)


def test_callers_that_read_the_images_values_have_the_codec_leave_them_unread(monkeypatch):
    """Mutation round 34: each of these reads its images' values once; without ``values_read`` around its codec calls
    the codec read them again, batch by batch (a host sync each on a GPU), unseen by the pinned host-sync counts, which
    cover none of them. LatentMixupInference's construction read its references twice."""
    glow, vae, x = tiny_glow(), tiny_vae(), torch.rand(8, 1, 8, 8)
    reads = counting_value_reads(monkeypatch)
    mixup = LatentMixupInference(TinyNet(), glow, x, num_mixes=2)
    assert reads == [8]
    calls = {"LatentMixupInference": lambda: mixup(x), "LatentCache": lambda: LatentCache(glow, x, batch_size=2,
                                                                                         progress=False),
             "eval_codec(glow)": lambda: eval_codec(glow, x, batch_size=2),
             "eval_codec(vae)": lambda: eval_codec(vae, x, batch_size=2),
             "LatentNoise": lambda: LatentNoise(glow, generator=0)(x)}
    for name, call in calls.items():
        reads.clear()
        call()
        assert reads == [8], name


def test_callers_that_mark_the_values_read_read_them_themselves():
    """Mutation round 35: inside ``values_read`` a codec leaves its images' values to its caller, so each caller that
    marks them read refuses 0-255 images itself (without its own read, they were encoded without a word)."""
    glow, x = tiny_glow(), torch.rand(4, 1, 8, 8) * 255
    for call in (lambda: LatentMixupInference(TinyNet(), glow, x),
                 lambda: LatentMixupInference(TinyNet(), glow, x / 255)(x),
                 lambda: LatentCache(glow, x, progress=False), lambda: eval_codec(glow, x)):
        with pytest.raises(ValueError, match="these look like 0-255 intensities"):
            call()


def test_a_codecs_check_images_reads_the_values_when_asked_naming_them():
    """Mutation round 35: ``Codec.check_images(..., values=True)`` names the images as told, and reads no values of
    an empty batch it allows (torch's aminmax refuses one)."""
    glow = tiny_glow()
    with pytest.raises(ValueError, match=r"^references .*0-255 intensities"):
        glow.check_images(torch.rand(2, 1, 8, 8) * 255, "references", values=True)
    glow.check_images(torch.rand(2, 1, 8, 8) * 255, "references")  # the form only
    glow.check_images(torch.rand(0, 1, 8, 8), allow_empty=True, values=True)


def test_a_transform_call_that_raises_leaves_the_values_read_by_the_next_direct_call(glow, monkeypatch):
    """Mutation round 34: a transform's call marks its codec calls as read (``values_read``); a call that raised inside
    it (a model's or codec's error) must not leave the mark set, or every later direct call took 0-255 images."""
    x = torch.rand(4, 1, 8, 8)

    def failing(z):
        raise RuntimeError("decode failed")

    monkeypatch.setattr(glow, "decode_flat", failing)
    with pytest.raises(RuntimeError, match="decode failed"):
        LatentNoise(glow, generator=0)(x)
    assert values_unread()
    with pytest.raises(ValueError, match="0-255 intensities"):
        glow.encode(x * 255)


def test_vae_widths_double_per_down_sampling_up_to_four_times_hidden():
    """As documented, and as the shipped VAEs' weights are shaped (a 32x32 one down-samples three times)."""
    vae = ConvVAE((1, 32, 32), latent_dim=2, hidden=2)
    assert [m.out_channels for m in vae.encoder if isinstance(m, nn.Conv2d)] == [2, 4, 8, 8]


def test_vae_encode_refuses_draw_options_it_would_ignore():
    vae = ConvVAE((1, 8, 8), latent_dim=4, hidden=8).freeze()
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="pass sample=True with them"):
        vae.encode(x, noise=torch.randn(2, 4))  # the mean came back, the noise unused
    with pytest.raises(ValueError, match="pass sample=True with them"):
        vae.encode(x, generator=0)  # a seed for a draw that is not made
    with pytest.raises(ValueError, match="not both"):
        vae.encode(x, sample=True, noise=torch.randn(2, 4), generator=0)
    with pytest.raises(TypeError, match="noise must be a float tensor"):
        vae.encode(x, sample=True, noise=[0.0] * 8)  # was AttributeError: 'list' object has no attribute 'numel'
    with pytest.raises(TypeError, match="noise must be a float tensor"):
        vae.encode(x, sample=True, noise=torch.randint(0, 3, (2, 4)))


@pytest.mark.parametrize("config", [{"kind": ["vae"]}, ["kind"]])
def test_a_config_of_the_wrong_type_is_a_value_error(config):
    # {"kind": ["vae"]} raised TypeError: unhashable type: 'list' (load_checkpoint catches ValueError only)
    with pytest.raises(ValueError, match="unknown codec kind|a codec config is a dict"):
        build_codec(config)


def test_density_and_elbo_take_images_of_another_float_dtype_as_encode_does():
    # log_prob / elbo_terms of float64 images raised "expected scalar type Double but found Float"
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    glow = Glow((1, 8, 8), levels=2, steps=1, hidden=8).init_actnorm(x.float()).freeze()
    assert torch.allclose(glow.log_prob(x), glow.log_prob(x.float()))
    vae = ConvVAE((1, 8, 8), latent_dim=4, hidden=8).freeze()
    assert torch.allclose(vae.elbo_terms(x, generator=0)["rec"], vae.elbo_terms(x.float(), generator=0)["rec"])


def test_weights_assigned_into_a_frozen_glow_by_load_state_dict_refold_the_fast_path():
    # assign=True puts the loaded tensors in place of the old ones: no in-place write moves a version counter, so only
    # the load's own refold keeps the folded fast path off the replaced weights
    trained, _ = trained_like_glow_pair()
    frozen = Glow((1, 8, 8), levels=2, steps=2, hidden=16).freeze()  # folded on its random init
    frozen.load_state_dict(copy.deepcopy(trained.state_dict()), assign=True)
    x = torch.rand(8, 1, 8, 8)
    with torch.no_grad():
        assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(trained.encode(x), frozen.encode(x)))
        assert torch.allclose(trained.decode(trained.encode(x)), frozen.decode(frozen.encode(x)), atol=1e-4)


def test_vae_encode_names_noise_of_the_wrong_size_and_takes_any_shape_of_the_right_one():
    vae = ConvVAE((1, 8, 8), latent_dim=4, hidden=8).freeze()
    x = torch.rand(2, 1, 8, 8)
    for wrong in (torch.randn(2, 3), torch.randn(3, 4), torch.randn(8, device="meta")):  # was torch's RuntimeError
        # audit 425: where the noise is, named (the meta one read "got torch.float32 of shape (8,)", as if right)
        with pytest.raises(ValueError, match=rf"^noise must hold 8 values \(B x D\) on cpu, got torch.float32 of shape "
                                             rf"\({', '.join(map(str, wrong.shape))},?\) on {wrong.device}$"):
            vae.encode(x, sample=True, noise=wrong)
    noise = torch.randn(8)
    assert torch.equal(vae.encode(x, sample=True, noise=noise)[0], vae.encode(x, sample=True, noise=noise.view(2, 4))[0])
    # float64 draws give the codec's float32 latents (mutation round 353: float64 ones)
    assert torch.equal(vae.encode(x, sample=True, noise=noise.double())[0], vae.encode(x, sample=True, noise=noise)[0])


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])  # Ctrl-C too (mutation round 353)
def test_a_switch_to_full_precision_that_fails_midway_leaves_every_setting_as_it_was(precision_settings, monkeypatch,
                                                                                     error):
    from latent_transforms.codecs import precision

    torch.set_float32_matmul_precision("medium")
    before = _precision_snapshot()
    legacy = precision._legacy_settings()

    def refuse(value):
        raise error("cannot set allow_tf32 here")

    # the matmul precision is switched to "highest", then the second setting fails
    monkeypatch.setattr(precision, "_legacy_settings", lambda: [legacy[0], (legacy[1][0], refuse, legacy[1][2])])
    with pytest.raises(error, match="cannot set allow_tf32 here"):
        with exact_math():
            pass
    assert _precision_snapshot() == before  # not left at "highest" for the rest of the process
    monkeypatch.undo()
    with exact_math():  # and the next codec call still switches and restores
        assert torch.get_float32_matmul_precision() == "highest"
    assert _precision_snapshot() == before


def test_codec_type_errors_are_type_errors_and_value_errors():
    """API audit 126: a wrong type was a TypeError everywhere but here (Glow(32): len()'s own TypeError; decode_flat
    and decode of a list or a number: a plain ValueError; compile_fast_path("no") compiled)."""
    from latent_transforms.validation import WrongTypeError

    for shape in (32, "abc", (3.0, 32, 32), b"\x01\x08\x08"):  # bytes: ints, one by one (mutation round 35)
        with pytest.raises(WrongTypeError, match=r"image_shape must be \(C, H, W\) positive ints"):
            Glow(shape)
    with pytest.raises(ValueError, match=r"image_shape must be \(C, H, W\) positive ints") as e:
        ConvVAE((3, 32))
    assert not isinstance(e.value, TypeError)
    assert Glow(np.array([1, 8, 8]), levels=2, steps=1, hidden=4).image_shape == (1, 8, 8)  # NumPy ints as before
    with pytest.raises(WrongTypeError, match=r"z must be \(B, D\) float flat latents"):
        GLOW.decode_flat([[0.0] * GLOW.latent_dim])
    with pytest.raises(ValueError, match=r"z must be \(B, D\) float flat latents") as e:
        GLOW.decode_flat(torch.zeros(2, GLOW.latent_dim, dtype=torch.int64))
    assert not isinstance(e.value, TypeError)
    for z in (3, [0.0, 1.0], torch.zeros(2, GLOW.latent_dim)):
        with pytest.raises(WrongTypeError, match="z must be a list of 2 float tensors"):
            GLOW.decode(z)
    with pytest.raises(WrongTypeError, match="enabled must be True or False, got 'no'"):
        tiny_glow().compile_fast_path("no")


def test_a_codec_repr_shows_its_config_and_whether_it_is_frozen():
    """API audit 126: a codec's repr was its module tree alone (hundreds of lines for a Glow), without its config."""
    first = repr(GLOW).splitlines()[1].strip()
    assert first == "image_shape=(1, 8, 8), levels=2, steps=2, hidden=16, alpha=0.05, scale_floor=0.05, num_bins=17, " \
                    "frozen=True"
    vae = ConvVAE((1, 8, 8), latent_dim=4, hidden=8)
    assert repr(vae).splitlines()[1].strip() == "image_shape=(1, 8, 8), latent_dim=4, hidden=8, beta=1.0, " \
                                                "latent_side=None, frozen=False"


def test_a_codec_of_ones_own_without_a_config_prints_and_one_of_buffers_has_a_dtype_and_device():
    """Audit 134: printing a transform holding a codec of one's own without a config raised NotImplementedError (the
    codec itself printed), and a codec whose tensors are buffers had no dtype or device (StopIteration)."""
    assert repr(LatentNoise(OwnCodec(), eps=0.5)) == "LatentNoise(eps=0.5, norm='l2', codec=OwnCodec(), p=1.0)"

    class Rotation(OwnCodec):  # fixed weights, kept as a buffer
        def __init__(self):
            Codec.__init__(self, (1, 8, 8))
            self.register_buffer("basis", torch.linalg.qr(torch.randn(64, 64, dtype=torch.float64))[0])

        @property
        def latent_shapes(self):
            return [(64,)]

        def _encode(self, x):
            return [x.flatten(1) @ self.basis]

        def _decode(self, z):
            return (z[0] @ self.basis.T).view(-1, 1, 8, 8)

    rotation, x = Rotation(), torch.rand(3, 1, 8, 8)
    assert (rotation.dtype, rotation.device) == (torch.float64, torch.device("cpu"))
    torch.testing.assert_close(rotation.reconstruct(x), x.double())
    with pytest.raises(ValueError, match="Codec holds no parameters or float buffers, which give a codec its dtype"):
        Codec((1, 8, 8)).dtype


def test_a_codecs_dtype_is_its_parameters_else_its_first_float_buffers_and_decode_casts_the_latents_to_it():
    class Permuted(OwnCodec):  # an integer buffer (a permutation) before the float one: the dtype is the float one's
        def __init__(self):
            Codec.__init__(self, (1, 8, 8))
            self.register_buffer("order", torch.randperm(64))
            self.register_buffer("scale", 2 * torch.eye(64, dtype=torch.float64))

        @property
        def latent_shapes(self):
            return [(64,)]

        def _encode(self, x):
            return [x.flatten(1)[:, self.order] @ self.scale]

        def _decode(self, z):
            return (z[0] @ self.scale / 4)[:, self.order.argsort()].view(-1, 1, 8, 8)  # a matmul takes one dtype

    permuted, x = Permuted(), torch.rand(3, 1, 8, 8)
    assert permuted.dtype == torch.float64
    out = permuted.decode([z.float() for z in permuted.encode(x)])  # float32 latents: decoded in the codec's dtype
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, x.double())
    own = OwnCodec()
    own.register_buffer("stats", torch.zeros(3, dtype=torch.float64))  # a float64 buffer beside float32 parameters
    assert own.dtype == torch.float32


# -- loading another codec's state ------------------------------------------------------------------
def test_a_transform_refuses_another_codecs_state_in_a_few_lines_and_loads_nothing():
    t = LatentNoise(tiny_glow(0, levels=2))
    other = LatentNoise(tiny_glow(1, shape=(3, 8, 8), levels=1))
    before = {k: v.clone() for k, v in t.state_dict().items()}
    with pytest.raises(RuntimeError, match=r"the weights of LatentNoise's codec \(keys codec\.\*\) do not fit this "
                                           r"Glow \(image_shape=\(1, 8, 8\), levels=2.* keys missing \(codec\.flow\."
                                           r".* keys of another shape \(codec\.flow\.q0\.0\.loc: \(1, 12, 4, 4\) given, "
                                           r"\(1, 8, 2, 2\) expected; .*; 22 more\).* build the LatentNoise over the codec it was saved "
                                           r"with") as e:
        t.load_state_dict(other.state_dict())
    assert len(str(e.value)) < 1000  # torch's own listed every key: 29,570 characters for glow-digits/glow-cifar10
    after = t.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())  # refused before anything was loaded


def test_a_codec_refuses_another_kinds_state_and_says_how_to_build_the_right_one():
    glow = tiny_glow()
    with pytest.raises(RuntimeError, match=r"the weights do not fit this Glow .* keys missing .* keys unexpected "
                                           r"\(encoder\..*build the codec from the config it was saved with"):
        glow.load_state_dict(tiny_vae().state_dict())


def test_a_shared_codec_is_checked_under_every_key_it_is_saved_under():
    from latent_transforms import Compose
    glow = tiny_glow()
    compose = Compose([LatentNoise(glow), LatentNoise(glow)])
    state = compose.state_dict()
    key = next(k for k in state if k.startswith("steps.1.codec."))
    del state[key]
    with pytest.raises(RuntimeError, match=rf"Compose's codec \(keys steps\.1\.codec\.\*\).*: 1 key missing "
                                           rf"\({key}\)\."):
        compose.load_state_dict(state)


@pytest.mark.parametrize("make", ["VarMixup", "LatentAdversarial", "LatentMixupInference", "Compose"])
def test_every_module_holding_a_codec_checks_its_state(make):
    import latent_transforms as lt

    def build(codec):
        if make == "LatentMixupInference":
            return lt.LatentMixupInference(nn.Flatten(), codec, torch.rand(2, *codec.image_shape))
        if make == "Compose":
            return lt.Compose([lt.LatentNoise(codec)])
        return getattr(lt, make)(codec)

    with pytest.raises(RuntimeError, match=r"codec\.\*\) do not fit this ConvVAE .* keys of another shape"):
        build(tiny_vae()).load_state_dict(build(tiny_vae(shape=(3, 8, 8))).state_dict())


def test_a_loose_load_of_a_codecs_state_is_left_to_torch():
    glow = tiny_glow()
    state = glow.state_dict()
    key = next(iter(state))
    del state[key]
    assert glow.load_state_dict(state, strict=False).missing_keys == [key]
    with pytest.raises(RuntimeError, match=rf"1 key missing \({key}\)"):
        glow.load_state_dict(state)
