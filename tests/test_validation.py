"""Bad inputs get a ValueError/TypeError naming the problem, from every public transform; nothing else escapes."""
import io
import itertools
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torchvision import tv_tensors
from torchvision.transforms import v2

from latent_transforms import ISDA, Compose
from latent_transforms.latent_adversarial import LatentAdversarial
from latent_transforms.latent_noise import LatentNoise
from latent_transforms.validation import (MAX_THREADS, THREADS, MissingFileError, NotAFileError, check_batch,
                                          check_count, check_images, check_initialised, check_labels, check_number,
                                          first_tensor, setting)
from latent_transforms.varmixup import VarMixup

from contract import assert_model_unchanged, model_state
from conftest import TinyNet, tiny_glow, tiny_vae

GOOD_X = torch.rand(4, 1, 8, 8)
GOOD_Y = torch.tensor([0, 1, 2, 3])

# (name, x, y, expected message fragment)
BAD_INPUTS = [
    ("rank 3", torch.rand(1, 8, 8), GOOD_Y[:1], "shape \\(B, C, H, W\\).*one image\\? x.unsqueeze\\(0\\) makes it a batch"),
    ("rank 3 grey batch", torch.rand(4, 8, 8), GOOD_Y,
     "shape \\(B, C, H, W\\).*grey \\(B, H, W\\) images\\? x.unsqueeze\\(1\\)"),
    ("rank 3 of three", torch.rand(3, 8, 8), GOOD_Y[:3],  # one colour image, or 3 grey ones: both fixes
     "one image\\? x.unsqueeze\\(0\\) makes it a batch of one; a batch of grey \\(B, H, W\\) images\\? "
     "x.unsqueeze\\(1\\)"),
    ("rank 5", torch.rand(4, 1, 1, 8, 8), GOOD_Y, "shape \\(B, C, H, W\\)"),
    ("video clips", torch.rand(4, 2, 1, 8, 8), GOOD_Y,  # refused before without a word of what to do
     "video clips \\(B, T, C, H, W\\)\\? x.flatten\\(0, 1\\) makes their frames a \\(B\\*T, C, H, W\\) batch, .*"
     "y.repeat_interleave\\(T\\)"),
    # torch's NotImplementedError from deep in the value checks ("Could not run 'aten::aminmax' ... 'SparseCPU'",
    # "Cannot copy out of meta tensor; no data!", "NestedTensorImpl doesn't support sizes"), before these
    ("sparse", GOOD_X.to_sparse(), GOOD_Y, "x must be a dense tensor, got layout torch.sparse_coo; convert with "
                                           "x.to_dense\\(\\)"),
    ("sparse labels", GOOD_X, GOOD_Y.to_sparse(), "y must be a dense tensor, got layout torch.sparse_coo"),
    ("on the meta device", GOOD_X.to("meta"), GOOD_Y.to("meta"), "x is on the meta device, which holds shapes, not "
                                                                 "values"),
    ("uint8", (GOOD_X * 255).to(torch.uint8), GOOD_Y, "float tensor"),
    ("int64", GOOD_X.long(), GOOD_Y, "float tensor"),
    ("above 1", GOOD_X * 255, GOOD_Y, "\\[0, 1\\]"),
    ("negative", GOOD_X - 0.5, GOOD_Y, "\\[0, 1\\]"),
    ("nan", GOOD_X.clone().index_fill_(0, torch.tensor([2]), float("nan")), GOOD_Y, "NaN or inf \\(in samples \\[2\\]"),
    ("inf", GOOD_X.clone().index_fill_(0, torch.tensor([1]), float("inf")), GOOD_Y, "NaN or inf"),
    ("empty image", torch.rand(4, 1, 0, 8), GOOD_Y, "empty channel or spatial dimension"),
    ("channels", torch.rand(4, 3, 8, 8), GOOD_Y, "trained on images of shape"),
    ("size", torch.rand(4, 1, 16, 16), GOOD_Y, "trained on images of shape"),
    ("label out of range", GOOD_X, torch.tensor([0, 1, 2, 10]), "out of range for num_classes=10"),
    ("negative label", GOOD_X, torch.tensor([0, -1, 2, 3]), "negative class index"),
    ("label dtype", GOOD_X, GOOD_Y.int(), "must be int64, got dtype torch.int32; convert with y.long\\(\\)"),
    ("one-hot int labels", GOOD_X, torch.eye(10, dtype=torch.int64)[GOOD_Y],
     "must be float, got dtype torch.int64; one-hot labels\\? pass y.argmax\\(1\\) \\(class indices\\) or y.float"),
    ("float labels 1d", GOOD_X, GOOD_Y.float(), "int64"),
    ("label shape", GOOD_X, GOOD_Y.view(2, 2, 1), "\\(B,\\) class indices or \\(B, K\\)"),
    ("labels (B, 1)", GOOD_X, GOOD_Y.view(4, 1), "class indices must be \\(B,\\) \\(y.squeeze\\(1\\)\\)"),
    # binary targets: a batch with a 0 was told of a confidence mask, an all-1 batch passed
    ("binary targets (B, 1) float", GOOD_X, (GOOD_Y % 2).float().view(4, 1),
     "class indices or binary targets\\? pass y.squeeze\\(1\\).long\\(\\), or to a label mix \\(B, 2\\) soft labels, "
     "torch.cat\\(\\[1 - y, y\\], 1\\)"),
    ("one sample's label", GOOD_X[:1], GOOD_Y[0], "got shape \\(\\); one sample's label\\? y.view\\(1\\), with "
                                                  "x.unsqueeze\\(0\\)"),
    ("soft not summing to 1", GOOD_X, torch.full((4, 10), 0.2), "sum to 1"),
    ("soft negative", GOOD_X, torch.eye(10)[:4] * 2 - torch.eye(10)[:4].roll(1, 1), "negative entry"),
    ("soft wrong classes", GOOD_X, torch.full((4, 7), 1 / 7), "expected num_classes=10"),
    ("batch mismatch", GOOD_X, GOOD_Y[:3], "batch sizes differ: x has 4 samples, y has 3"),
    ("not a tensor", GOOD_X.numpy(), GOOD_Y, "torch.Tensor"),
    ("soft no classes", GOOD_X, torch.zeros(4, 0), "soft labels have no classes"),
    ("labels on another device", GOOD_X, GOOD_Y.to("meta"), "y is on meta but x is on cpu"),
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


def test_binary_targets_are_refused_whatever_the_batch_holds():
    """(B, 1) float targets (BCE's): a batch of 1s passed a transform without num_classes, one with a 0 was told of a
    confidence mask; both are refused by their form, naming the fix."""
    for y in (torch.ones(4, 1), torch.tensor([[0.0], [1.0], [1.0], [0.0]])):
        with pytest.raises(ValueError, match=r"class indices or binary targets\? pass y.squeeze\(1\).long\(\)"):
            LatentNoise(GLOW, eps=1.0)(GOOD_X, y)


def test_video_clips_are_told_a_recipe_that_works():
    """The 5-d refusal's recipe: the clips' frames as one batch, the labels repeated per frame, the clips back."""
    clips, labels = torch.rand(3, 4, 1, 8, 8), torch.tensor([0, 1, 2])
    t = VarMixup(VAE, num_classes=10, generator=0)
    with pytest.raises(ValueError, match=r"x.flatten\(0, 1\) .* y.repeat_interleave\(T\) "
                                         r"\(x2.unflatten\(0, \(B, T\)\)"):
        t(clips, labels)
    x2, y2 = t(clips.flatten(0, 1), labels.repeat_interleave(4))
    assert x2.unflatten(0, (3, 4)).shape == clips.shape
    assert torch.allclose(y2.view(3, 4, 10).mean(1).sum(1), torch.ones(3))  # each clip's label: its frames' mean



def test_video_clips_are_told_their_frames_draw_apart_and_where_a_clip_gets_one_draw():
    """The recipe makes each frame a sample with draws of its own: a still clip flickers, a label mix pairs each frame
    with a frame of another clip; the hint said "each frame transformed on its own" and no more (audit 223)."""
    with pytest.raises(ValueError, match=r"each frame transformed on its own \(unlike its neighbours; the same draws "
                                         r"for a clip's frames: docs/composition.md#video-clips\), with the labels"):
        check_images(torch.rand(2, 4, 1, 8, 8))
    still = torch.rand(2, 1, 1, 8, 8).expand(-1, 4, -1, -1, -1)
    x2, _ = LatentNoise(GLOW, eps=1.0, generator=0)(still.flatten(0, 1))
    assert (x2.unflatten(0, (2, 4)).diff(dim=1).abs().amax((2, 3, 4)) > 1e-3).all()  # every frame unlike the last


def test_the_video_recipe_names_the_tensor_and_goes_to_5_dims_only():
    """Mutation round 19 (audit 191): the recipe is about the tensor refused (LatentCache's ``images``), and a 6-d
    tensor is not a batch of clips."""
    with pytest.raises(ValueError, match=r"video clips \(B, T, C, H, W\)\? images.flatten\(0, 1\) makes"):
        check_images(torch.rand(2, 3, 1, 8, 8), "images")
    with pytest.raises(ValueError, match=r"^x must have shape \(B, C, H, W\), got 6 dims with shape "
                                         r"\(2, 2, 3, 1, 8, 8\)$"):
        check_images(torch.rand(2, 2, 3, 1, 8, 8))


def test_the_one_label_hint_goes_to_a_0_d_label_and_names_the_batch():
    """Mutation round 19 (audit 191): ``FeatureCovariance.update(features, y)`` checks y against ``features``; a 3-d
    label tensor is not one sample's label."""
    with pytest.raises(ValueError, match=r"got shape \(\); one sample's label\? y.view\(1\), with "
                                         r"features.unsqueeze\(0\)$"):
        check_labels(torch.tensor(3), 1, batch_name="features")
    with pytest.raises(ValueError, match=r"^y must be \(B,\) class indices or \(B, K\) soft labels, got shape "
                                         r"\(4, 2, 1\)$"):
        check_labels(GOOD_Y.view(4, 1, 1).expand(4, 2, 1), 4)
    # mutation round 22 (audit 201): nor are segmentation masks (B, 1, H, W)
    with pytest.raises(ValueError, match=r"^y must be \(B,\) class indices or \(B, K\) soft labels, got shape "
                                         r"\(4, 1, 2, 2\)$"):
        check_labels(torch.zeros(4, 1, 2, 2, dtype=torch.int64), 4)

def test_batch_of_one_works_everywhere():
    net = TinyNet()
    for name, make in TRANSFORMS.items():
        x2, y2 = make()(GOOD_X[:1], GOOD_Y[:1], net)
        assert x2.shape == (1, 1, 8, 8), name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("p", [1.0, 0.5])
def test_half_precision_input_is_supported_by_codec_methods(dtype, p):
    x2, _ = LatentNoise(GLOW, eps=1.0, p=p, generator=0)(GOOD_X.to(dtype), GOOD_Y)
    assert x2.dtype == dtype and x2.shape == GOOD_X.shape


def test_range_tolerance_is_small():
    check_images(GOOD_X.clamp(0, 1) + 5e-4)
    check_images(torch.linspace(-5e-4, 1, 64).reshape(1, 1, 8, 8))  # a little below 0 too (mutation round, audit 358)
    with pytest.raises(ValueError, match=r"x values must lie in \[0, 1\], got range \[[0-9.e-]+, 1.002"):
        check_images(GOOD_X.clamp(0, 1) + 2e-3 + (1 - GOOD_X.max()))


@settings(max_examples=150)
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


LAYOUTS = {"contiguous": lambda x: x, "channels_last": lambda x: x.contiguous(memory_format=torch.channels_last),
           "expanded": lambda x: x[:1].expand_as(x), "strided": lambda x: torch.cat([x, x], 3)[..., ::2],
           "transposed": lambda x: x.transpose(2, 3).contiguous().transpose(2, 3)}


@settings(max_examples=40)
@given(batch=st.sampled_from([0, 1, 3]), dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32,
                                                                 torch.float64]),
       values=st.sampled_from(["rand", "zeros", "ones", "-0.0", "binary", "1 + tol"]),
       layout=st.sampled_from(sorted(LAYOUTS)), soft=st.booleans(), name=st.sampled_from(["LatentNoise", "VarMixup"]))
def test_any_valid_batch_gives_a_valid_result_and_keeps_its_input(batch, dtype, values, layout, soft, name):
    """Audit 163's fuzzing, kept small: valid images of every float dtype, memory layout (an expanded one has stride
    0) and edge value, with class-index or soft labels, give x's shape, dtype and device, values in [0, 1] (the
    input check's tolerance for samples passed through), valid labels, and leave x and y as they were."""
    g = torch.Generator().manual_seed(batch)
    x = {"rand": torch.rand(batch, 1, 8, 8, generator=g), "zeros": torch.zeros(batch, 1, 8, 8),
         "ones": torch.ones(batch, 1, 8, 8), "-0.0": torch.full((batch, 1, 8, 8), -0.0),
         "binary": torch.rand(batch, 1, 8, 8, generator=g).round(),
         "1 + tol": torch.rand(batch, 1, 8, 8, generator=g).clamp(max=1.0009)}[values].to(dtype)
    x = LAYOUTS[layout](x)
    y = torch.softmax(torch.randn(batch, 10, generator=g), 1) if soft else torch.randint(0, 10, (batch,), generator=g)
    x0, y0 = x.clone(), y.clone()
    make = {"LatentNoise": lambda: LatentNoise(GLOW, eps=2.0, p=0.5, generator=0),
            "VarMixup": lambda: VarMixup(VAE, num_classes=10, p=0.5, generator=0)}[name]
    x2, y2 = make()(x, y)
    assert (x2.shape, x2.dtype, x2.device) == (x.shape, x.dtype, x.device)
    assert torch.isfinite(x2).all() and ((x2.double() >= -1e-3) & (x2.double() <= 1 + 1e-3)).all()
    if name == "VarMixup":
        assert y2.shape == (batch, 10) and (y2 >= 0).all()
        assert torch.allclose(y2.double().sum(1), torch.ones(batch, dtype=torch.float64), atol=1e-3)
    else:
        assert y2 is y
    assert torch.equal(x, x0) and torch.equal(y, y0)


def test_a_negative_index_without_a_cache_to_bound_it_names_no_range():
    """Found by an input-contract audit: a transform without a latent cache (ISDA, or any before it says it needs
    one) said "index has positions outside [0, None)"."""
    index = torch.tensor([0, -1, 2, 3])
    for t, args in ((LatentNoise(GLOW, eps=1.0), ()), (ISDA(10), (TinyNet(),))):
        with pytest.raises(ValueError, match=r"index has a negative dataset position -1; positions count from 0$"):
            t(GOOD_X, GOOD_Y, *args, index=index)
    with pytest.raises(ValueError, match=r"index has positions outside \[0, 3\): min -1, max 3"):  # with a size: the range
        check_batch(GOOD_X, GOOD_Y, index=index, index_size=3)


def test_codec_loss_and_posterior_check_their_images():
    """Found by an input-contract audit: Glow.loss (so init_actnorm) and ConvVAE.posterior, public entry points, ran
    on what they were given and failed deep in torch ("check_uniform_bounds" not implemented for 'Byte', "Input type
    (unsigned char) and bias type (float) should be the same", round() of a list)."""
    x = torch.rand(4, 1, 8, 8)
    for bad, error, message in ((x.mul(255).to(torch.uint8), ValueError, "float tensor"),
                                (x.tolist(), TypeError, "x must be a torch.Tensor"),
                                (torch.rand(4, 3, 8, 8), ValueError, "trained on images of shape")):
        for call in (GLOW.loss, GLOW.init_actnorm, VAE.posterior):
            with pytest.raises(error, match=message):
                call(bad)
    mu, logvar = VAE.posterior(x.double())  # float64 images are taken, as by encode
    assert mu.dtype == logvar.dtype == torch.float32 and torch.equal(mu, VAE.encode_flat(x))


def test_a_pil_image_or_numpy_array_is_told_how_to_become_a_batch():
    """Found walking a new user's path: an ImageFolder without a transform gives PIL images, and a transform (or a
    Compose starting with v2.ToImage) called on one said only "x must be a torch.Tensor, got Image"."""
    from PIL import Image

    image = Image.fromarray(np.zeros((8, 8), np.uint8))
    for call in (lambda x: LatentNoise(GLOW)(x, GOOD_Y[:1]),
                 lambda x: Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), LatentNoise(GLOW)])(x)):
        with pytest.raises(TypeError, match=r"x must be a torch.Tensor, got Image; the transforms take batches "
                                            r"\(B, C, H, W\): convert each image in the Dataset, transform=v2.Compose"):
            call(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    opened = Image.open(buffer)  # what a Dataset of one's own opening files gives: a PngImageFile (PIL.PngImagePlugin)
    with pytest.raises(TypeError, match=r"got PngImageFile; the transforms take batches \(B, C, H, W\)"):
        LatentNoise(GLOW)(opened, GOOD_Y[:1])
    with pytest.raises(TypeError, match=r"got ndarray; torch.from_numpy\(x\), then .permute\(0, 3, 1, 2\) if its "
                                        r"images are \(B, H, W, C\)$"):
        LatentNoise(GLOW)(GOOD_X.numpy(), GOOD_Y)
    with pytest.raises(TypeError, match=r"^images must be a torch.Tensor, got ndarray; torch.from_numpy\(images\)"):
        check_images(GOOD_X.numpy(), "images")  # the hint names the argument refused
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor, got list$"):  # nothing said of other types
        LatentNoise(GLOW)(GOOD_X.tolist(), GOOD_Y)
    # audit 268 (a new user's path): a list of (C, H, W) images, a Dataset's gathered by hand, is told to stack them
    with pytest.raises(TypeError, match=r"^x must be a torch.Tensor, got list; torch.stack\(x\) makes a batch of a "
                                        r"list of \(C, H, W\) images$"):
        LatentNoise(GLOW)(list(GOOD_X), GOOD_Y)
    with pytest.raises(TypeError, match=r"got tuple$"):  # a batch of images in a list is not a list of images
        LatentNoise(GLOW)((GOOD_X,), GOOD_Y)


def test_numpy_labels_or_one_samples_int_label_are_told_what_to_pass():
    """Audit 417 (a new user's path): numpy labels said only "y must be a torch.Tensor, got ndarray" (numpy images get
    a hint), and ISDA, which reads no images, called per sample in a Dataset's __getitem__ with the sample's int
    label, only "got int"."""
    with pytest.raises(TypeError, match=r"^y must be a torch.Tensor, got ndarray; torch.from_numpy\(y\)$"):
        LatentNoise(GLOW)(GOOD_X, GOOD_Y.numpy())
    for label in (3, np.int64(3)):
        with pytest.raises(TypeError, match=rf"^y must be a torch.Tensor, got {type(label).__name__}; one sample's "
                                            r"label\? the transforms take batches: call it on the DataLoader's "
                                            r"batches, y \(B,\) int64 \(or torch.tensor\(\[y\]\), with "
                                            r"x.unsqueeze\(0\)\)$"):
            ISDA(10)(GOOD_X[0], label, TinyNet())
    with pytest.raises(TypeError, match=r"^y must be a torch.Tensor, got float$"):  # a regression target: no hint
        ISDA(10)(GOOD_X[0], 3.0, TinyNet())


def test_the_model_or_a_whole_loader_batch_in_xs_place_is_told_the_call():
    """Audit 293 (a new user's path): t(model, x, y) said only "x must be a torch.Tensor, got TinyNet", and a
    DataLoader's [x, y] batch given whole, t(batch, model=model), "got list"; from every kind of transform."""
    model = TinyNet()
    for t in (LatentNoise(GLOW), LatentAdversarial(GLOW), ISDA(10), Compose([v2.RandomHorizontalFlip(), ISDA(10)])):
        with pytest.raises(TypeError, match=r"^x must be a torch.Tensor, got TinyNet; the call is t\(x, y, model\): "
                                            r"the batch first, the model last$"):
            t(model, GOOD_X, GOOD_Y)
        with pytest.raises(TypeError, match=r"^x must be a torch.Tensor, got list; a DataLoader's \[x, y\] batch\? "
                                            r"unpack it: x, y = batch, then t\(x, y, model\)$"):
            t([GOOD_X, GOOD_Y], model=model)
    # no such hint for two images of another batch size, three items, a 0-d label or two label tensors
    for batch in ([GOOD_X, GOOD_Y[:3]], [GOOD_X, GOOD_Y, GOOD_Y], [GOOD_X, GOOD_Y[0]], [GOOD_Y, GOOD_Y]):
        with pytest.raises(TypeError, match=r"^x must be a torch.Tensor, got list$"):
            LatentNoise(GLOW)(batch)


def test_the_model_in_ys_place_is_told_the_labelled_call_too():
    """Audit 390 (docs vs code): t(x, model) said only "for an unlabelled batch call t(x, model=model)", which the
    methods that need labels (ISDA, VarMixup) then refuse: the labels left out is named first."""
    model = TinyNet()
    for t in (ISDA(10), VarMixup(VAE, num_classes=10), LatentNoise(GLOW),
              Compose([v2.RandomHorizontalFlip(), ISDA(10)])):
        with pytest.raises(TypeError, match=r"^y must be labels or None, got the model \(TinyNet\); the call is "
                                            r"t\(x, y, model\), or t\(x, model=model\) for an unlabelled batch$"):
            t(GOOD_X, model)


def test_check_choice_takes_equal_values_of_the_choices_type():
    import numpy as np

    from latent_transforms.validation import check_choice

    assert check_choice("norm", np.str_("l2"), ("l2", "linf")) == "l2"  # a str subclass, as the old `in` check took
    assert check_choice("norm", None, ("l2", None)) is None
    for bad in ("L2", 1, True, None, b"l2"):
        with pytest.raises(ValueError, match=r"norm must be one of \('l2', 'linf'\)"):
            check_choice("norm", bad, ("l2", "linf"))


def test_values_read_nests_and_is_left_after_an_exception():
    """Mutation round 34: ``values_read`` marks a caller's codec calls as read; an inner block leaves the outer one's
    mark standing, and an exception inside leaves none behind (every later direct call would skip its check)."""
    from latent_transforms.validation import values_read, values_unread

    assert values_unread()
    with values_read():
        with values_read():
            assert not values_unread()
        assert not values_unread()
    with pytest.raises(RuntimeError, match="inside"), values_read():
        raise RuntimeError("inside")
    assert values_unread()


def test_values_read_marks_this_thread_only_and_compiled_code_sees_it():
    """``values_read`` holds per thread, as ``torch.no_grad``: another thread's codec calls still read their values;
    compiled code follows the mark in and out of the block (a threading.local torch.compile guards on: a ContextVar
    broke torch 2.4's graph there, and a threading.local subclass's class-level default compiled as a constant)."""
    import threading

    from latent_transforms.validation import values_read, values_unread

    f = torch.compile(lambda x: x + 1 if values_unread() else x - 1, backend="eager")
    x = torch.zeros(1)
    assert f(x).item() == 1
    with values_read():
        assert f(x).item() == -1
        other = []
        thread = threading.Thread(target=lambda: other.append((values_unread(), f(x).item())))
        thread.start()
        thread.join()
        assert other == [(True, 1)]
    assert f(x).item() == 1


# -- entry points besides a transform's call (found by an audit that threw bad input at every public function) --
def test_codec_encode_and_decode_check_what_they_are_given():
    # uint8 images gave all-NaN latents silently; other shapes failed deep inside normflows or torch
    x = torch.rand(4, 1, 8, 8)
    for bad, message in (((x * 255).to(torch.uint8), "float tensor"), (torch.rand(4, 1, 16, 16), "trained on images"),
                         (x[0], "shape \\(B, C, H, W\\)")):
        for codec in (GLOW, VAE):
            with pytest.raises(ValueError, match=message):
                codec.encode(bad)
    with pytest.raises(ValueError, match="posterior|float tensor"):
        VAE.encode((x * 255).to(torch.uint8), sample=True)
    with pytest.raises(ValueError, match=f"flat latents with D = {GLOW.latent_dim}"):
        GLOW.decode_flat(torch.randn(4, 100))
    z = GLOW.encode(x)
    with pytest.raises(ValueError, match="list of 2 float tensors"):
        GLOW.decode(z[:1])
    with pytest.raises(ValueError, match="one batch size"):
        GLOW.decode([z[0], z[1][:2]])
    assert (GLOW.decode(z) - x).abs().max() < 1e-4


def test_bfloat16_soft_labels_are_judged_by_what_bfloat16_can_hold():
    # VarMixup's own bf16 output was refused when fed back: "row sums to 0.9961" (bf16 steps are 0.0039 near 1)
    y = torch.softmax(torch.randn(64, 10, generator=torch.Generator().manual_seed(0)), 1).bfloat16()
    x2, y2 = VarMixup(tiny_vae(), p=1.0, generator=0)(torch.rand(64, 1, 8, 8), y)
    VarMixup(tiny_vae(), p=1.0, generator=0)(x2, y2)
    check_labels(y, 64)
    with pytest.raises(ValueError, match="sum to 1"):
        check_labels(torch.full((4, 10), 0.11, dtype=torch.bfloat16), 4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_labels_mixed_five_times_are_still_accepted(dtype):
    # each mix rounds a 16-bit row's sum by about one step: a third mix of one-hot rows was refused ("sums to 1.001")
    g = torch.Generator().manual_seed(0)
    y = torch.nn.functional.one_hot(torch.randint(0, 10, (256,), generator=g), 10).to(dtype)
    for _ in range(5):  # as torchvision's MixUp and VarMixup mix, in the labels' dtype
        lam = torch.rand(256, 1, generator=g).to(dtype)
        y = lam * y + (1 - lam) * y.roll(1, 0)
    check_labels(y, 256)


def test_the_model_must_be_a_module_on_the_data_device():
    import copy

    from latent_transforms import LatentMixupInference

    net, x, y = TinyNet(), GOOD_X, GOOD_Y
    with pytest.raises(TypeError, match="an nn.Module .*got function"):
        LatentAdversarial(GLOW)(x, y, lambda t: net(t))
    with pytest.raises(ValueError, match="^LatentAdversarial's model is on meta but x is on cpu"):
        LatentAdversarial(GLOW)(x, y, copy.deepcopy(net).to("meta"))
    with pytest.raises(TypeError, match="model must be the classifier, an nn.Module .*got str"):
        LatentMixupInference("net", GLOW, x)
    with pytest.raises(ValueError, match="the model is on meta"):
        LatentMixupInference(copy.deepcopy(net).to("meta"), GLOW, x)(x)


@pytest.mark.parametrize("make, message", [
    (lambda: LatentAdversarial(GLOW, random_start="no"), "random_start must be True or False"),
    (lambda: VarMixup(VAE, per_sample="no"), "per_sample must be True or False"),
    (lambda: __import__("latent_transforms").ISDA(10, sync_stats="no"), "sync_stats must be True, False or a "),
    (lambda: __import__("latent_transforms").FeatureCovariance(4, sync_stats="no"), "sync_stats must be True, False or a "),
    (lambda: Compose([], num_classes="10"), "num_classes must be an int >= 1"),
    (lambda: Compose([], num_classes=0), "num_classes must be an int >= 1"),
    (lambda: LatentNoise(GLOW, generator=2**70), "seed must be in \\[-2\\*\\*63, 2\\*\\*64\\)"),
    # a meta tensor's value cannot be read: torch's "Tensor.item() cannot be called on meta tensors" named no setting
    (lambda: LatentNoise(GLOW, eps=torch.tensor(0.5, device="meta")), "^eps must be a finite number .*device='meta'"),
    (lambda: LatentAdversarial(GLOW, steps=torch.tensor(1, device="meta")), "^steps must be an int .*device='meta'"),
    (lambda: LatentNoise(GLOW, levels=[5]), "from -2, counted from the finest"),
    (lambda: VarMixup(VAE, alpha=1e-45), r"alpha must be a finite number in \[0.001, inf\)"),  # NaN weights
    (lambda: __import__("latent_transforms.codecs", fromlist=["Glow"]).Glow((1, 8, 8), alpha="0.05"),
     "alpha must be a finite number"),
])
def test_constructor_arguments_are_checked(make, message):
    with pytest.raises((TypeError, ValueError), match=message):
        make()


def test_a_setting_is_missing_until_set():
    # read before its first assignment (a subclass's constructor, hasattr), it is missing, as a plain attribute was:
    # not a None that reads as "no eps" / "no norm"
    class Holder(torch.nn.Module):
        eps = setting("eps", check_number)

    h = Holder()
    assert not hasattr(h, "eps")
    h.eps = np.float32(0.5)
    assert h.eps == 0.5 and type(h.eps) is float


def test_a_fixed_submodule_setting_refuses_another_module_and_keeps_the_one_held():
    # fixed= looked for the value held under "_name", where a module=True setting does not keep it: another module
    # assigned replaced the one held, unrefused
    from latent_transforms.validation import Settings

    class Holder(Settings, torch.nn.Module):
        part = setting("part", module=True, fixed=lambda held, value: ("it was built in", "build a new Holder"))

    h, first = Holder(), torch.nn.Linear(2, 2)
    h.part = first
    h.part = first  # the module held passes
    with pytest.raises(AttributeError, match="it was built in"):
        h.part = torch.nn.Linear(2, 2)
    assert h.part is first and dict(h.named_children()) == {"part": first}


def test_a_setting_with_no_check_keeps_the_value_as_given():
    # check=None (Compose.steps, ISDA.estimator): no conversion, where an identity lambda stood in for a check
    class Holder(torch.nn.Module):
        eps = setting("eps")

    h, value = Holder(), np.float32(0.5)
    h.eps = value
    assert h.eps is value


def test_a_settings_docstring_is_its_doc_or_names_its_check():
    # what help() and the API reference show of a setting: Compose.num_classes/steps and ISDA.estimator pass doc=
    from latent_transforms import Compose

    assert setting("eps", check_number, doc="The radius.").__doc__ == "The radius."
    assert setting("eps", check_number).__doc__ == "``eps``, checked as the constructor's whenever it is set."
    assert setting("eps", check_number, fixed=lambda held, value: ("", "")).__doc__ == \
        "``eps``, fixed: another value assigned raises naming the way."
    assert setting("eps").__doc__ == "``eps``, kept as given."
    assert Compose.num_classes.__doc__.startswith("The labels' classes, fixed at construction")
    assert ISDA.estimator.__doc__.startswith("The class statistics, a ``FeatureCovariance``")


def test_numpy_level_indices_are_taken_like_ints():
    assert LatentNoise(GLOW, levels=[np.int64(0), -1]).levels == [0, 1]


def test_isda_logits_refuses_a_bad_strength():
    from latent_transforms.isda import isda_logits

    logits, w, y, cov = torch.randn(4, 3), torch.randn(3, 5), torch.tensor([0, 1, 2, 0]), torch.eye(5).repeat(3, 1, 1)
    for lam in (-1.0, float("nan"), torch.tensor([0.5, -0.1, 0.5, 0.5]), torch.ones(3)):
        with pytest.raises(ValueError, match="lam must be"):
            isda_logits(logits, w, y, cov, lam)
    assert torch.equal(isda_logits(logits, w, y, cov, 0.0), logits)


def test_isda_loss_checks_its_features():
    from latent_transforms import ISDALoss

    loss, fc, y = ISDALoss(3), torch.nn.Linear(5, 3), torch.tensor([0, 1])
    for features in (torch.randint(0, 3, (2, 5)), [[0.0] * 5] * 2):  # an empty batch passes: tests/test_isda.py
        with pytest.raises(ValueError, match="features must be a \\(N, 5\\) float tensor"):
            loss(features, fc, y)


def test_latent_cache_checks_its_index_and_where_it_saves(tmp_path):
    from latent_transforms import LatentCache

    cache = LatentCache(GLOW, torch.rand(6, 1, 8, 8), progress=False)
    for index, message in ((torch.tensor([-1]), "outside \\[0, 6\\)"), (torch.tensor([6]), "outside"),
                           (torch.tensor([0], dtype=torch.int32), "int64")):
        with pytest.raises(ValueError, match=message):
            cache(index)
    with pytest.raises(ValueError, match=f"the directory {tmp_path / 'nowhere'} does not exist"):
        cache.save(tmp_path / "nowhere" / "c.safetensors")
    assert not (tmp_path / "nowhere").exists()


def test_evaluation_helpers_check_their_arguments():
    from latent_transforms.evaluation import fit_classifier, predict_proba

    with pytest.raises(TypeError, match="nn.Module"):
        predict_proba(lambda t: t, GOOD_X)
    with pytest.raises(ValueError, match="lr must be a finite number"):
        fit_classifier(TinyNet(), GOOD_X, GOOD_Y, lr=float("nan"), epochs=1, progress=False)


def test_predict_proba_refuses_a_0d_tensor_by_name():
    """Found by bad-input fuzzing (audit 234): a 0-d x escaped as torch's TypeError "len() of a 0-d tensor"."""
    from latent_transforms.evaluation import predict_proba

    with pytest.raises(ValueError, match=r"^x must be a batch \(B, \.\.\.\), got torch.float32 of shape \(\)$"):
        predict_proba(TinyNet(), torch.tensor(0.5))
    with pytest.raises(TypeError, match=r"^x must be a batch \(B, \.\.\.\), got list$"):  # and a ValueError
        predict_proba(TinyNet(), GOOD_X.tolist())


def test_loading_a_directory_says_so(tmp_path):
    from latent_transforms import hub

    for load in (hub.load, hub.load_checkpoint):
        for arg in (str(tmp_path), tmp_path):
            with pytest.raises(IsADirectoryError, match=f"^{tmp_path} is a directory; give a checkpoint's .safetensors "
                                                        f"file in it$") as e:
                load(arg)
            # audit 436: a ValueError and a MissingFileError, as every other unusable or missing checkpoint file (it
            # was a bare IsADirectoryError, which `except ValueError` let through)
            assert isinstance(e.value, MissingFileError) and isinstance(e.value, NotAFileError)


def test_soft_labels_with_nan_are_refused():
    # a NaN row sum compares False with the tolerance: only the explicit finiteness check catches it
    y = torch.full((4, 10), 0.1)
    y[1, 3] = float("nan")
    with pytest.raises(ValueError, match="soft labels contain NaN or inf"):
        check_labels(y, 4, 10)


def test_an_open_lower_bound_refuses_the_bound_itself():
    assert check_number("lr", 1e-9, low_open=True) == 1e-9
    with pytest.raises(ValueError, match=r"lr must be a finite number in \(0, inf\), got 0.0"):
        check_number("lr", 0.0, low_open=True)
    assert check_number("weight_decay", 0.0) == 0.0  # a closed bound takes it


def test_a_bool_is_not_a_count():
    with pytest.raises(ValueError, match="epochs must be an int >= 1, got True"):
        check_count("epochs", True, low=1)
    assert check_count("epochs", 1, low=1) == 1


def test_option_parses_and_checks_with_the_librarys_rule_and_names_the_option(capsys):
    import argparse

    from latent_transforms.validation import POSITIVE_FLOAT, POSITIVE_INT, check_count, option

    p = argparse.ArgumentParser(prog="prog")
    p.add_argument("--n", type=POSITIVE_INT)
    p.add_argument("--x", type=POSITIVE_FLOAT)
    p.add_argument("--k", type=option(check_count, low=3))
    args = p.parse_args(["--n", "4", "--x", "0.5", "--k", "3"])
    assert (args.n, args.x, args.k) == (4, 0.5, 3) and type(args.n) is int and type(args.x) is float
    for argv, message in ((["--n", "0"], "argument --n: must be an int >= 1, got 0"),
                          (["--n", "1.5"], "argument --n: invalid int value: '1.5'"),
                          (["--x", "0"], "argument --x: must be a finite number in (0, inf), got 0.0"),
                          (["--x", "inf"], "argument --x: must be a finite number in (0, inf), got inf"),
                          (["--k", "2"], "argument --k: must be an int >= 3, got 2")):
        with pytest.raises(SystemExit):
            p.parse_args(argv)
        assert capsys.readouterr().err.splitlines()[-1] == f"prog: error: {message}"


def test_an_error_about_a_parameter_is_spelled_as_a_commands_flag_by_the_shared_helper():
    """The demo spelled ``per_class`` as ``--per-class`` with train.py's private helper, whose rules are train's
    (``ema_decay`` is ``--ema``, its resume refusals): the shared part is ``validation.spelled_as_flags`` (audit 406)."""
    from latent_transforms.validation import WrongTypeError, spelled_as_flags

    e = spelled_as_flags(ValueError("per_class 500 is more than the 122 training images of digit 8"), ["per_class"])
    assert str(e) == "--per-class 500 is more than the 122 training images of digit 8"
    typed = spelled_as_flags(WrongTypeError("max_steps must be None or an int >= 1, got 'x'"), ["steps", "max_steps"])
    assert type(typed) is WrongTypeError and str(typed) == "--max-steps must be an int >= 1, got 'x'"
    both = spelled_as_flags(ValueError("steps 3 with max_steps 5"), ["steps", "max_steps"], lambda p: f"-{p[0]}")
    assert str(both) == "-s 3 with -m 5"
    other = ValueError("per_classes is not a parameter")
    assert spelled_as_flags(other, ["per_class"]) is other
    # no parameters: nothing to spell (the empty alternation matched any space after a colon: "got:-- 5", audit 412)
    colon = ValueError("got: 5 (after a colon)")
    assert spelled_as_flags(colon, []) is colon


def test_images_in_0_255_are_told_to_divide_by_255():
    x = torch.rand(4, 1, 8, 8) * 255  # decode_image(...).float(), without the scaling
    with pytest.raises(ValueError, match=r"0-255 intensities: divide them by 255") as e:
        check_images(x)
    assert "normalisation" not in str(e.value)  # mean/std inside the model would not fix it
    with pytest.raises(ValueError, match="normalisation"):  # mean/std-normalised data: negative values
        check_images(torch.randn(4, 1, 8, 8) * 2)


def test_noise_past_both_ends_and_images_in_minus_one_one_get_their_own_hints():
    # Gaussian noise gave range [-0.33, 1.375] and "apply normalisation (mean/std) inside the model"
    noisy = torch.linspace(-0.33, 1.375, 64).reshape(1, 1, 8, 8)
    with pytest.raises(ValueError, match=r"a step adds noise or shifts them past \[0, 1\].*x.clamp\(0, 1\)"):
        check_images(noisy)
    for lo, hi in ((-1, 1), (-0.45, 1.0), (-0.3, 0.9)):  # below 0 only: not noise past both ends
        with pytest.raises(ValueError, match=r"scaled to \[-1, 1\] \(Normalize\(0.5, 0.5\)\): give \(x \+ 1\) / 2"):
            check_images(torch.linspace(lo, hi, 64).reshape(1, 1, 8, 8))


def test_images_a_little_past_one_are_not_told_to_divide_by_255():
    # max 1.5 got "these look like 0-255 intensities: divide them by 255", which would make them near black
    with pytest.raises(ValueError, match=r"range \[0, 1.5\]; a step scales or shifts them past 1 .*x.clamp\(0, 1\)"):
        check_images(torch.linspace(0, 1.5, 64).reshape(1, 1, 8, 8))


@pytest.mark.parametrize("make", [
    lambda g: __import__("latent_transforms").LatentNoise(g, eps="1"),
    lambda g: __import__("latent_transforms").LatentNoise(g, p="0.5"),
    lambda g: __import__("latent_transforms").LatentNoise(g, levels=0),
    lambda g: __import__("latent_transforms").LatentNoise(g, norm=2),
    lambda g: __import__("latent_transforms").LatentAdversarial(g, steps=1.0),
    lambda g: __import__("latent_transforms").VarMixup(g, num_classes="10"),
])
def test_an_option_of_the_wrong_type_is_a_type_error_and_a_value_error(make):
    """The README promises a TypeError for a wrong type; check_number, check_count and check_choice raised
    ValueError (check_bool TypeError): now both, so `except ValueError` code keeps working."""
    from latent_transforms.validation import WrongTypeError
    with pytest.raises(WrongTypeError) as e:
        make(tiny_glow())
    assert isinstance(e.value, TypeError) and isinstance(e.value, ValueError)


def test_numbers_out_of_floats_range_and_open_upper_bounds():
    with pytest.raises(ValueError, match="p must be a finite number in"):  # was OverflowError from math.isfinite
        check_number("p", 10**400)
    # an int of more than 4,300 digits: its repr raised "Exceeds the limit (4300 digits) for integer string
    # conversion", naming nothing; 401 digits buried the message
    for check, n, shown in ((check_number, -10**5000, "-10\\*\\*5000"), (check_count, 10**400, "10\\*\\*400"),
                            (check_count, 2**128, "10\\*\\*39")):
        with pytest.raises(ValueError, match=rf"^steps must be .*, got an int near {shown}$"):
            check("steps", n, high=9)
    with pytest.raises(ValueError, match=rf", got {2**128 - 1}$"):  # 39 digits: as they are
        check_count("steps", 2**128 - 1, high=9)
    with pytest.raises(ValueError, match=r"decay must be a finite number in \(0, 1\), got 1"):
        check_number("decay", 1, high=1.0, low_open=True, high_open=True)
    assert check_number("decay", 0.999, high=1.0, low_open=True, high_open=True) == 0.999
    with pytest.raises(ValueError, match=r"seed must be an int in \[0, 9\], got 10"):
        check_count("seed", 10, high=9)


def test_a_value_shown_in_a_message_is_short_and_printable():
    """Audit 425: the checks echoed a wrong value with repr: an int of over 4,300 digits in a list, tuple or dict raised
    Python's "Exceeds the limit (4300 digits) for integer string conversion", naming nothing (Glow((3, -10**5000, 8)),
    check_choice's and check_bool's values too, not only check_number's ints); a tensor printed its rows; a string of
    100,000 characters was printed whole. ``shown`` gives them in a line."""
    from latent_transforms.validation import WrongTypeError, check_bool, check_choice, shown

    assert shown((3, -10**5000, 8)) == "(3, an int near -10**5000, 8)"
    assert shown([10**5000]) == "[an int near 10**5000]" and shown((10**5000,)) == "(an int near 10**5000,)"
    assert shown({"a": 10**5000}) == "a dict holding an int of more than 4,300 digits"
    assert shown(torch.zeros(100, 100)) == "torch.float32 of shape (100, 100)"
    assert shown(torch.zeros(2, 2)) == "torch.float32 of shape (2, 2)"  # short but two lines (mutation round, 430)
    assert shown(torch.tensor([0.5])) == "tensor([0.5000])" and shown(torch.tensor(2.0)) == "tensor(2.)"  # the value
    assert shown("x" * 100_000) == "'" + "x" * 99 + "... (100,002 characters)"
    assert shown("x" * 198) == repr("x" * 198) and shown("x" * 199).endswith("... (201 characters)")  # 200 shown whole
    assert shown("full") == "'full'" and shown([1, "a"]) == "[1, 'a']" and shown((1,)) == "(1,)"  # repr as it was
    nested: list = []
    for _ in range(100_000):
        nested = [nested]
    assert shown(nested) == "a list nested too deep to show"
    with pytest.raises(WrongTypeError, match=r"^covariance must be one of \('full', 'diagonal'\), got an int near "
                                             r"10\*\*5000$"):
        check_choice("covariance", 10**5000, ("full", "diagonal"))
    with pytest.raises(ValueError, match=r"^covariance must be one of \('full', 'diagonal'\), got 'x{99}\.\.\. "
                                         r"\(100,002 characters\)$"):
        check_choice("covariance", "x" * 100_000, ("full", "diagonal"))
    with pytest.raises(WrongTypeError, match=r"^check_y must be True or False, got torch.float32 of shape \(50, 50\)$"):
        check_bool("check_y", torch.ones(50, 50))
    with pytest.raises(WrongTypeError, match=r"^eps must be a finite number in \[0, inf\), got torch.float32 of shape "
                                             r"\(50, 50\)$"):
        check_number("eps", torch.ones(50, 50))
    with pytest.raises(WrongTypeError, match=r"^steps must be an int >= 1, got \[an int near 10\*\*5000\]$"):
        check_count("steps", [10**5000], 1)


def test_a_value_whose_repr_fails_is_shown_by_its_type():
    """Audit 431: ``shown`` named any value whose repr raised a ValueError "a ... holding an int of more than 4,300
    digits", and let any other error out in place of the check's own (a half-built module's repr raises
    AttributeError: check_bool then raised that, naming neither the argument nor what it must be)."""
    from latent_transforms.validation import WrongTypeError, check_bool, shown

    class Unprintable:
        def __repr__(self) -> str:
            raise ValueError("not ready")

    half_built = torch.nn.Linear.__new__(torch.nn.Linear)  # no in_features for its extra_repr
    assert shown(Unprintable()) == "a Unprintable whose repr raised ValueError"
    assert shown((1, half_built)) == "(1, a Linear whose repr raised AttributeError)"
    with pytest.raises(WrongTypeError, match=r"^check_y must be True or False, got a Linear whose repr raised "
                                             r"AttributeError$"):
        check_bool("check_y", half_built)


@pytest.mark.parametrize("call", [
    lambda: __import__("latent_transforms").ISDA(10, sync_stats="yes"),  # was a plain TypeError
    lambda: __import__("latent_transforms").Glow((1, 8, 8), steps=2.0),  # was a plain ValueError
    lambda: __import__("latent_transforms").ConvVAE((1, 8, 8), latent_side="4"),
    lambda: __import__("latent_transforms").ISDA(10, layer=3),
    lambda: __import__("latent_transforms").LatentNoise(3),  # was a plain TypeError
    lambda: __import__("latent_transforms").LatentNoise(tiny_glow(), levels=[0.0]),
    lambda: __import__("latent_transforms").LatentNoise(tiny_glow(), eps=torch.tensor([0.5])),  # not a 0-d tensor
    lambda: __import__("latent_transforms").hub.save_checkpoint(tiny_glow(), "x.safetensors", dtype="float16"),
])
def test_every_option_of_the_wrong_type_is_a_wrong_type_error(call):
    from latent_transforms.validation import WrongTypeError
    with pytest.raises(WrongTypeError):
        call()


def test_auto_is_a_device_only_where_it_is_offered():
    from latent_transforms.validation import resolve_device
    assert resolve_device("auto", auto=True).type in ("cpu", "cuda")
    with pytest.raises(ValueError, match=r"^device must be cpu, cuda, cuda:N, got 'auto'$"):  # load(..., device=)
        resolve_device("auto")


@pytest.mark.parametrize("device", [0, None, ["cpu"]])
def test_a_device_of_the_wrong_type_is_named_with_the_choices(device):
    from latent_transforms.validation import WrongTypeError, resolve_device
    with pytest.raises(WrongTypeError, match=rf"^device must be cpu, cuda, cuda:N \(a str or torch.device\), got "
                                             rf"{type(device).__name__}$"):
        resolve_device(device)


@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda", 1)])
def test_cuda_asked_for_where_there_is_none_says_so_and_offers_the_cpu(monkeypatch, device):
    from latent_transforms.validation import resolve_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=rf"^device '{device}' asked for, but CUDA is not available here; use 'cpu'$"):
        resolve_device(device)
    assert resolve_device("cpu") == torch.device("cpu")


def test_a_tuple_given_for_a_tensor_is_described_by_its_items():
    from latent_transforms.validation import check_index
    with pytest.raises(TypeError, match=r"index must be a \(B,\) int64 tensor of dataset positions, got \[int, int\]$"):
        check_index((0, 1), 2)


def test_a_missing_training_state_or_hashed_file_is_a_missing_file_error(tmp_path):
    from latent_transforms import hub
    from latent_transforms.train import load_training_state
    from latent_transforms.validation import MissingFileError
    for call in (lambda: load_training_state(tmp_path / "nope.state.safetensors"),
                 lambda: hub.sha256_file(tmp_path / "nope")):
        with pytest.raises(MissingFileError, match="nope"):
            call()


@pytest.mark.parametrize("x_dtype, autocast_dtype", [(torch.float16, torch.bfloat16), (torch.bfloat16, torch.float16)])
def test_a_16_bit_batch_of_the_other_kind_is_checked_under_cpu_autocast(x_dtype, autocast_dtype):
    # torch.stack of its statistics raised "Unexpected floating ScalarType in at::autocast::prioritize"
    from conftest import tiny_glow

    x, y = torch.rand(4, 1, 8, 8).to(x_dtype), torch.arange(4)
    with torch.autocast("cpu", dtype=autocast_dtype):
        check_images(x)
        x2, y2 = LatentNoise(tiny_glow(), eps=1.0, generator=0)(x, y)
        with pytest.raises(ValueError, match="x contains NaN or inf"):
            check_images(torch.full((1, 1, 4, 4), float("nan"), dtype=x_dtype))
    assert x2.dtype == x_dtype and torch.equal(y2, y)


def test_a_soft_label_row_summing_below_one_is_found_among_good_rows():
    """The row furthest from 1 is judged, whichever side of 1 it lies: one row of 0.5 among one-hot rows."""
    y = torch.eye(4, 10)
    y[2] *= 0.5
    with pytest.raises(ValueError, match="row 2 sums to 0.5"):
        check_labels(y, 4)


def test_an_8_bit_white_pixel_is_still_told_to_divide_by_255():
    """Intensities up to 255 itself (a white pixel of an 8-bit image made float) are 0-255 intensities."""
    x = torch.arange(256, dtype=torch.float32).reshape(1, 1, 16, 16)
    with pytest.raises(ValueError, match=r"range \[0, 255\]; these look like 0-255 intensities: divide them by 255"):
        check_images(x)


def test_complex_class_indices_are_told_that_long_truncates():
    with pytest.raises(ValueError, match=r"dtype torch.complex64; convert with y.long\(\) if they are whole numbers "
                                         r"\(it truncates\)"):
        check_labels(torch.tensor([1 + 0j, 2 + 0j]), 2, 3)


def test_labels_on_another_device_are_told_to_move_to_the_images_device():
    from latent_transforms.validation import check_batch

    with pytest.raises(ValueError, match=r"y is on meta but x is on cpu; move it with .to\('cpu'\)"):
        check_batch(GOOD_X, GOOD_Y.to("meta"))


def test_images_scaled_to_exactly_two_are_told_a_step_scales_them():
    """A gain of 2 on an image with a white pixel (max exactly 2, none below 0) is a scaling step, not noise."""
    with pytest.raises(ValueError, match=r"range \[0, 2\]; a step scales or shifts them past 1 .*x.clamp\(0, 1\)"):
        check_images(torch.linspace(0, 2, 64).reshape(1, 1, 8, 8))


def test_images_in_minus_one_one_a_rounding_below_minus_one_are_still_told_so():
    """Normalize(0.5, 0.5) output rounded a little below -1 still gets the [-1, 1] hint, not mean/std's."""
    with pytest.raises(ValueError, match=r"range \[-1, 1\]; these look like images scaled to \[-1, 1\]"):
        check_images(torch.linspace(-1.0005, 1, 64).reshape(1, 1, 8, 8))


def test_a_slightly_negative_soft_label_entry_is_refused():
    """A row summing to 1 with an entry of -0.05 (a mixing weight past [0, 1]) is not a probability row."""
    with pytest.raises(ValueError, match=r"y soft labels have a negative entry -0.05"):
        check_labels(torch.tensor([[1.05, -0.05, 0.0]]), 1, 3)


@pytest.mark.parametrize("make", [
    lambda: VarMixup(tiny_vae(), num_classes=10, p=1.0, generator=0),
    lambda: LatentAdversarial(tiny_glow(), eps=0.5, target="true", generator=0),
    lambda: ISDA(10, layer="fc"),
], ids=["VarMixup", "LatentAdversarial", "ISDA"])
def test_pseudo_labels_in_the_forms_of_semi_supervised_loops_are_told_what_to_pass(make):
    """A teacher's pseudo-labels as a semi-supervised loop makes them: -1 (scikit-learn's) or -100 (cross_entropy's
    ignore_index) for the samples below the confidence threshold, probabilities zeroed by the mask, or the logits
    themselves; each was refused naming only the value, not what to pass instead."""
    t, net = make(), TinyNet()
    logits = torch.randn(4, 10)
    probs = logits.softmax(1)
    keep = torch.tensor([True, False, True, True])
    for mark in (-1, -100):
        with pytest.raises(ValueError, match=rf"negative class index {mark}; a mark for unlabelled or ignored samples "
                                             r"\(F.cross_entropy's ignore_index\)\? pass only the labelled samples "
                                             r"\(where y >= 0\)"):
            t(GOOD_X, torch.where(keep, logits.argmax(1), mark), net)
    if isinstance(t, ISDA):
        return  # it takes class indices only (soft labels are refused for that, tests/test_isda.py)
    with pytest.raises(ValueError, match=r"row 1 sums to 0; a confidence mask applied to the labels\? pass only the "
                                         r"samples kept, x\[mask\], y\[mask\]"):
        t(GOOD_X, probs * keep[:, None], net)
    with pytest.raises(ValueError, match=r"negative entry -?[0-9.]+; logits\? pass probabilities, y.softmax\(1\)"):
        t(GOOD_X, logits - logits.max() - 1, net)  # every entry negative: no row sums to 1
    t(GOOD_X[keep], probs[keep], net)  # what the messages say to do works


def test_ignore_index_labels_are_told_a_way_that_works_for_each_transform():
    """cross_entropy's ignore_index (-100) marking padded or unlabelled rows: the refusal said "unlabelled images to a
    transform with y=None", which ISDA, VarMixup and LatentAdversarial(target='true') refuse. It names ignore_index,
    the rows to keep (for the model and the loss too) and the transforms that take y=None; each way works."""
    keep = torch.tensor([True, False, True, True])
    y = torch.where(keep, GOOD_Y, -100)
    isda, net = ISDA(10), TinyNet()
    isda.set_epoch(1, 2)
    with pytest.raises(ValueError, match=r"negative class index -100; a mark for unlabelled or ignored samples "
                                         r"\(F.cross_entropy's ignore_index\)\? .*keep = y >= 0, then x\[keep\] and "
                                         r"y\[keep\], to the model and the loss too .*a transform that reads no labels "
                                         r"\(LatentNoise, LatentAdversarial\(target='pred'\)\) takes the whole batch "
                                         r"with y=None"):
        isda(GOOD_X, y, net)
    isda(GOOD_X[keep], y[keep], net)  # the labelled rows, to ISDA and the model
    assert torch.isfinite(F.cross_entropy(net(GOOD_X[keep]), y[keep]))
    assert isda.stats["transformed"] == 3
    for t in (LatentNoise(tiny_glow(), generator=0), LatentAdversarial(tiny_glow(), eps=0.5, generator=0)):
        x2, y2 = t(GOOD_X, None, net)  # the whole batch, each image in its row: y still fits, ignore_index applies
        assert y2 is None and x2.shape == GOOD_X.shape
        assert torch.isfinite(F.cross_entropy(net(x2), y, ignore_index=-100))


def test_soft_labels_a_mix_pushed_slightly_negative_get_no_logits_hint():
    """The logits hint is for rows that do not sum to 1: a row summing to 1 with a negative entry is not logits."""
    with pytest.raises(ValueError, match=r"negative entry -0.05$"):
        check_labels(torch.tensor([[1.05, -0.05, 0.0]]), 1, 3)


def test_a_count_equal_to_its_upper_bound_is_taken():
    """``high`` is inclusive: the largest seed, 2**32 - 1, is a seed."""
    assert check_count("seed", 9, high=9) == 9
    assert check_count("seed", 2**32 - 1, high=2**32 - 1) == 2**32 - 1


def test_threads_of_another_machine_up_to_1024_are_taken_on_any_cpu():
    """Mutation round 39 (audit 282): --threads' bound (``MAX_THREADS``) lets a run repeat another machine's thread
    count, which changes torch's rounding, on fewer CPUs: 1024 whatever this machine's count, not its CPUs."""
    assert MAX_THREADS >= 1024 and THREADS("1024") == 1024


def test_a_count_of_items_at_its_bound_is_taken_and_sized_by_the_largest_tensor():
    """Mutation round 33 (audit 239): check_items's bound is inclusive, and set by the largest of the shapes in bytes
    (a count whose (n, 3, 8, 8) float64 tensor torch can size is taken, one more is refused)."""
    from latent_transforms.validation import check_items

    most = (2**63 - 1) // (3 * 8 * 8 * 8)
    assert check_items("n", most, (2,), (3, 8, 8), dtype=torch.float64) == most
    with pytest.raises(ValueError, match=rf"^n must be an int in \[1, {most}\] \(1536 bytes each; "):
        check_items("n", most + 1, (2,), (3, 8, 8), dtype=torch.float64)


ABSURD_COUNTS = {  # a count no tensor can hold: refused by name at construction (torch's overflow error, raised at
    # the first call or deep inside, named no argument: "Overflow when unpacking long long", OverflowError, audit 410)
    "num_classes": lambda n: VarMixup(VAE, num_classes=n),
    "Compose num_classes": lambda n: Compose([], num_classes=n),
    "ISDA num_classes": lambda n: ISDA(n),
    "grow num_classes": lambda n: ISDA(10, feature_dim=4, covariance="diagonal").grow(n),
    "feature_dim": lambda n: ISDA(10, feature_dim=n, covariance="diagonal"),
    "num_mixes": lambda n: __import__("latent_transforms").LatentMixupInference(TinyNet(), VAE, GOOD_X, num_mixes=n),
}


@pytest.mark.parametrize("name", sorted(ABSURD_COUNTS))
@settings(max_examples=5)
@given(n=st.integers(2**62, 2**70) | st.just(10**400))
def test_an_absurd_count_is_refused_by_name(name, n):
    with pytest.raises(ValueError, match=rf"^{name.split()[-1]} must be an int in \[1, \d+\] \(\d+ bytes each; "):
        ABSURD_COUNTS[name](n)


def test_an_index_of_another_batch_size_is_refused():
    from latent_transforms.validation import check_batch

    with pytest.raises(ValueError, match=r"batch sizes differ: x has 4 samples, index has 3"):
        check_batch(GOOD_X, GOOD_Y, index=torch.arange(3))


def test_an_index_longer_than_the_batch_or_with_a_trailing_dimension_is_refused():
    """Positions of 5 samples for a batch of 4, or (B, 1) positions, are another batch's or another layout's: a cache
    indexed with them would pair latents with the wrong images."""
    from latent_transforms.validation import check_batch

    with pytest.raises(ValueError, match=r"batch sizes differ: x has 4 samples, index has 5"):
        check_batch(GOOD_X, GOOD_Y, index=torch.arange(5))
    with pytest.raises(ValueError, match=r"index must be a \(B,\) int64 tensor of dataset positions, got "
                                         r"torch.int64 of shape \(4, 1\)"):
        check_batch(GOOD_X, GOOD_Y, index=torch.arange(4).unsqueeze(1))


@pytest.mark.parametrize("y, advice", [
    ([1, 2, 3, 4], "labels numbered from 1? subtract 1 (y - 1); num_classes too small? set it to the number of classes "
                   "the model outputs (5 or more); "),
    ([0, 2, 3, 4], "num_classes too small? set it to the number of classes the model outputs (5 or more); "),
    ([0, 1, 255, 3], "num_classes too small? set it to the number of classes the model outputs (256 or more); "),
    ([1, 2, 255, 3], "num_classes too small? set it to the number of classes the model outputs (256 or more); "),
])
def test_a_class_index_out_of_range_says_what_to_do(y, advice):
    """It said only "y has class index 4, out of range for num_classes=4": the likely causes and their fixes named."""
    with pytest.raises(ValueError) as info:
        check_labels(torch.tensor(y), 4, num_classes=4)
    assert str(info.value) == (f"y has class index {max(y)}, out of range for num_classes=4 (indices 0 to 3); {advice}"
                               "a mark for ignored samples (such as 255)? pass only the labelled samples: keep = y < 4, "
                               "then x[keep] and y[keep]")


def test_class_indices_and_positions_past_2_to_the_24_are_checked_exactly():
    """Statistics are read in float64: in float32, 2**24 + 1 rounds to 2**24 and passed a bound of 2**24 + 1."""
    from latent_transforms.validation import check_index

    big = 2**24 + 1
    with pytest.raises(ValueError, match=rf"index has positions outside \[0, {big}\): min {big}, max {big}"):
        check_index(torch.tensor([big]), 1, size=big)
    with pytest.raises(ValueError, match=rf"class index {big}, out of range for num_classes={big}"):
        check_labels(torch.tensor([big]), 1, num_classes=big)


def test_a_bool_is_not_an_int_choice():
    """True == 1, but a bool is not one of int choices (as it is not a count)."""
    from latent_transforms.validation import WrongTypeError, check_choice

    assert check_choice("steps", 1, (1, 2)) == 1
    with pytest.raises(WrongTypeError, match=r"steps must be one of \(1, 2\), got True"):
        check_choice("steps", True, (1, 2))


def test_a_flag_given_as_an_int_is_refused_as_a_string_is():
    """Mutation round (audit 358): check_bool taking any int (1 from a config file) went unnoticed."""
    from latent_transforms.validation import WrongTypeError, check_bool

    assert check_bool("random_start", False) is False
    with pytest.raises(WrongTypeError, match=r"^random_start must be True or False, got 1$"):
        check_bool("random_start", 1)


def test_only_a_row_of_zeros_is_told_of_a_confidence_mask():
    """Mutation round (audit 358): the hint for a row summing to 0 was not checked to stay off a row summing to 0.3."""
    with pytest.raises(ValueError, match=r"^y soft label rows must sum to 1, row 0 sums to 0.3$"):
        check_labels(torch.tensor([[0.3, 0.0]]), 1, 2)


def test_uint8_images_are_told_to_divide_by_255_when_made_float():
    """x.float() alone would give 0-255 values, refused next: the hint names the scaling too."""
    with pytest.raises(ValueError, match=r"got dtype torch.uint8; convert with x.float\(\) / 255 for uint8 images"):
        check_images(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))


def test_one_image_of_one_channel_is_told_unsqueeze0_alone():
    """(1, H, W): unsqueeze(0) and unsqueeze(1) give the same (1, 1, H, W); only one fix is named."""
    with pytest.raises(ValueError, match=r"got 3 dims with shape \(1, 8, 8\); one image\? x.unsqueeze\(0\) makes it "
                                         r"a batch of one$"):
        check_images(torch.rand(1, 8, 8))


@pytest.mark.parametrize("dtype, hinted", [(torch.uint8, True), (torch.int64, False), (torch.bool, False)])
def test_check_batch_uint8_hint_ends_the_uint8_refusal_only(dtype, hinted):
    with pytest.raises(ValueError, match="^x must be a float tensor") as e:
        check_batch(torch.zeros(2, 1, 4, 4, dtype=dtype), None, uint8_hint="; THE HINT")
    assert str(e.value).endswith("; THE HINT") is hinted


def test_an_empty_batch_of_labels_or_positions_passes_their_checks():
    """Labels and dataset positions of no samples (a rank's empty last shard merged into ISDA's statistics) pass:
    there is no value to judge, and reading the extremes of nothing raised torch's own aminmax error."""
    from latent_transforms.feature_covariance import FeatureCovariance
    from latent_transforms.validation import check_index

    check_labels(torch.empty(0, dtype=torch.int64), 0, 10)
    check_labels(torch.empty(0, 3), 0, 3)
    check_index(torch.empty(0, dtype=torch.int64), 0, size=5)
    stats = FeatureCovariance(3, 4)
    stats.update(torch.empty(0, 4), torch.empty(0, dtype=torch.int64))
    assert stats.count.tolist() == [0, 0, 0]


def test_a_soft_label_entry_just_past_the_rounding_tolerance_is_refused():
    """Entries down to -1e-3 are rounding (taken); -0.005 is past it and refused, its row summing to 1 all the same."""
    check_labels(torch.tensor([[1.0005, -0.0005, 0.0]]), 1, 3)
    with pytest.raises(ValueError, match=r"y soft labels have a negative entry -0.005"):
        check_labels(torch.tensor([[1.005, -0.005, 0.0]]), 1, 3)


def test_a_bfloat16_row_is_judged_by_its_exact_sum_not_a_bfloat16_rounding_of_it():
    """0.53125 + 0.50390625 (both exact in bf16) sum to 1.0352, past bf16's tolerance of 0.03125; rounded to bf16 the
    sum would read 1.03125 and pass: rows are summed in float32."""
    with pytest.raises(ValueError, match=r"row 0 sums to 1.035"):
        check_labels(torch.tensor([[0.53125, 0.50390625, 0.0]], dtype=torch.bfloat16), 1, 3)


def test_bfloat16_soft_labels_three_steps_off_one_are_still_accepted():
    """A 16-bit row may sum up to 4 of its dtype's steps from 1 (each mix rounds the sum by about one): in bf16, whose
    step above 1 is 2**-7, a row summing to 1 + 3 * 2**-7 passes."""
    check_labels(torch.tensor([[0.5234375, 0.5, 0.0]], dtype=torch.bfloat16), 1, 3)


def test_dataset_positions_on_another_device_are_told_to_move_to_the_images_device():
    from latent_transforms.validation import check_batch

    with pytest.raises(ValueError, match=r"index is on meta but x is on cpu; move it with .to\('cpu'\)"):
        check_batch(GOOD_X, GOOD_Y, index=torch.arange(4, device="meta"))


def test_images_with_an_empty_channel_or_side_are_named_as_such():
    """(B, C, 0, W) images are not an empty batch but hold no pixel: named, not torch's aminmax error."""
    for shape in ((4, 0, 8, 8), (4, 1, 0, 8)):
        with pytest.raises(ValueError, match=rf"x has an empty channel or spatial dimension \(shape \({shape[0]}, "):
            check_images(torch.rand(shape))


def test_images_whose_only_non_finite_value_is_minus_inf_are_named_with_their_sample():
    """-inf shows in the minimum alone: named as a non-finite value and its sample, not as a range [-inf, 1]."""
    x = GOOD_X.clone()
    x[3, 0, 2, 5] = float("-inf")
    with pytest.raises(ValueError, match=r"x contains NaN or inf \(in samples \[3\]\)"):
        check_images(x)


@pytest.mark.parametrize("lo, hi, hint", [
    (0.0, 1.15, r"a step scales or shifts them past 1 \(brightness"),  # past the overshoot bound of 1.1
    (0.0, 1.08, r"a resampling \(bicubic, antialiased\) or noise step overshoots"),
    (-0.45, 1.5, r"a step adds noise or shifts them past \[0, 1\]"),  # noise down to -0.5, up to 2
    (0.0, 255.0005, r"these look like 0-255 intensities: divide them by 255"),  # 255 and a rounding above it
])
def test_each_range_hint_covers_its_whole_range(lo, hi, hint):
    """The hints' bounds, checked just inside or past each: a range gets the hint of the mistake that makes it."""
    with pytest.raises(ValueError, match=rf"values must lie in \[0, 1\], got range .*; {hint}"):
        check_images(torch.linspace(lo, hi, 64).reshape(1, 1, 8, 8))


def test_a_model_without_parameters_is_placed_by_its_buffers():
    """A parameter-free model (a fixed filter bank held in buffers) on another device is named like any other."""
    import copy

    from latent_transforms.validation import check_model

    class Buffers(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("filters", torch.ones(10, 64))

        def forward(self, x):
            return x.flatten(1) @ self.filters.T

    check_model(Buffers(), GOOD_X)
    with pytest.raises(ValueError, match="^LatentAdversarial's model is on meta but x is on cpu"):
        LatentAdversarial(GLOW)(GOOD_X, GOOD_Y, copy.deepcopy(Buffers()).to("meta"))


def test_a_model_split_over_devices_is_placed_by_its_first_parameter():
    """A model-parallel classifier takes x on the device of its first layer; its later layers may live elsewhere
    (meta stands in for a second GPU)."""
    from latent_transforms.validation import check_model

    net = torch.nn.Sequential(torch.nn.Linear(64, 8), torch.nn.Linear(8, 10))
    net[1].to("meta")
    check_model(net, GOOD_X)
    with pytest.raises(ValueError, match="the model is on meta but x is on cpu"):
        check_model(net[1:], GOOD_X)


def test_name_dtype_clash_names_only_a_type_error_between_a_float_parameter_and_x_in_another_dtype():
    """It rewrites torch's error only when it is about types and the model's first float parameter (an integer one
    before it does not count) is in another dtype than x; else it returns, for the caller to re-raise the error."""
    from latent_transforms.validation import name_dtype_clash

    class Counted(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = torch.nn.Parameter(torch.zeros((), dtype=torch.int64), requires_grad=False)
            self.fc = torch.nn.Linear(2, 2).double()

    x, clash = torch.rand(3, 2), RuntimeError("mat1 and mat2 must have the same dtype, but got Float and Double\n"
                                              "(the second line of torch's message)")
    with pytest.raises(ValueError, match=r"^Who got x in torch.float32 for its model in torch.float64, which torch "
                                         r"refused \(mat1 and mat2 must have the same dtype, but got Float and "
                                         r"Double\): cast one to the other's dtype .*as it is$") as e:
        name_dtype_clash(clash, Counted(), x, "Who")
    assert "second line" not in str(e.value) and e.value.__cause__ is clash
    assert name_dtype_clash(clash, Counted(), x.double(), "Who") is None  # the same dtype: not the clash
    assert name_dtype_clash(RuntimeError("mat1 and mat2 shapes cannot be multiplied"), Counted(), x, "Who") is None
    assert name_dtype_clash(clash, torch.nn.ReLU(), x, "Who") is None  # no float parameter to name
    # integer vectors, not images (audit 358): the input cast alone (model.to(torch.int64) is refused by torch)
    with pytest.raises(ValueError, match=r"\): cast it to the model's dtype \(x.to\(torch.float32\)\)$") as e:
        name_dtype_clash(clash, torch.nn.Linear(2, 2), x.long(), "Who")
    assert "images" not in str(e.value)


def test_state_mismatch_counts_each_kind_and_names_its_first_two():
    """How another state differs, in one line: counts, the first two keys of each kind ('; N more' only when some are
    left out); a value that is not a tensor is not given a shape (torch's load_state_dict names its type)."""
    from latent_transforms.validation import state_mismatch

    expected = {k: torch.zeros(n) for n, k in enumerate("abcde", start=1)}
    assert state_mismatch(expected, dict(expected)) == ""
    assert state_mismatch(expected, {"a": [1.0], "b": torch.zeros(7), "x": torch.zeros(1), "y": 0.5}) == (
        "3 keys missing (c; d; 1 more), 2 keys unexpected (x; y), 1 key of another shape (b: (7,) given, (2,) "
        "expected)")
    assert state_mismatch(expected, {"a": torch.zeros(1), "b": torch.zeros(2), "c": torch.zeros(3)}) == \
        "2 keys missing (d; e)"


# targets that are not class labels, as a multi-label, regression or multi-task user has them (audit 190)
OTHER_TARGETS = {
    "multi-hot": torch.tensor([[1.0, 0, 1, 1], [0, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0]]),
    "multi-hot, at most one per row": torch.tensor([[0.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]]),
    "multi-hot int64": torch.tensor([[1, 0, 1, 1], [0, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0]]),
    "multi-hot bool": torch.tensor([[1, 0, 1, 1], [0, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0]]).bool(),
    "regression (B,)": torch.tensor([41.5, 7.25, 63.0, 25.75]),
    "regression (B, 2), signed": torch.tensor([[0.3, -1.2], [0.5, 0.25], [-0.1, 0.4], [1.5, 0.0]]),
    "box (B, 4) in [0, 1]": torch.tensor([[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0], [0.3, 0.3, 0.4, 0.9],
                                          [0.2, 0.1, 0.8, 0.7]]),
    "keypoints (B, 17, 2)": torch.rand(4, 17, 2),
    "a dict of targets": {"labels": GOOD_Y, "weight": torch.rand(4)},
}
TARGETS_USERS = {
    "LatentNoise": lambda: LatentNoise(GLOW, eps=1.0),
    "LatentAdversarial pred": lambda: LatentAdversarial(GLOW, steps=1, target="pred"),
    "VarMixup": lambda: VarMixup(VAE),
    "VarMixup num_classes": lambda: VarMixup(VAE, num_classes=10),
    "ISDA": lambda: ISDA(10, layer="fc"),
    "Compose MixUp": lambda: Compose([v2.MixUp(), LatentNoise(GLOW, eps=1.0)]),
}


@pytest.mark.parametrize("name", sorted(TARGETS_USERS))
@pytest.mark.parametrize("case", sorted(OTHER_TARGETS))
def test_targets_that_are_not_class_labels_are_told_the_way_out(name, case):
    """Multi-hot rows were told "row 0 sums to 3" (int64 ones: "pass y.argmax(1)", which keeps one finding), a (B,)
    regression "y.long() if they are whole numbers", signed targets "logits? pass y.softmax(1)", a dict "must be a
    torch.Tensor": none named y=None, which the methods that read no labels take, nor how a label mix's mixing reaches
    other targets."""
    with pytest.raises((ValueError, TypeError), match=r"targets that are not class labels \(multi-hot, regression, a "
                                                      r"dict of them\)\? .*\(LatentNoise, LatentAdversarial\(target="
                                                      r"'pred'\)\) takes y=None; .*y=torch.eye\(len\(x\), device=x."
                                                      r"device\) .*w @ targets .*ISDA and LatentAdversarial\(target="
                                                      r"'true'\) need class labels"):
        TARGETS_USERS[name]()(GOOD_X, OTHER_TARGETS[case], TinyNet())


def test_the_identity_as_labels_gives_the_weights_a_label_mix_mixed_the_samples_with():
    """The way out the refusal names: ``y=torch.eye(B)`` gives ``w``, the same mix as the draws in ``last_params``
    (a row of the identity for a sample not selected, p < 1), and ``w @ F.one_hot(y)`` the soft labels the mix gives
    class indices; a transform with num_classes is told to go without; a caller other than a transform (evaluation,
    ISDALoss) gets no hint about y=None."""
    t = VarMixup(VAE, p=0.5, generator=0)
    x2, w = t(GOOD_X, torch.eye(4))
    sel, lam, partner = (t.last_params[k] for k in ("selected", "lam", "partner"))
    assert 2 <= len(sel) < 4  # mixes and samples left as they were
    expected = torch.eye(4)
    expected[sel] = lam[:, None] * expected[sel] + (1 - lam[:, None]) * expected[sel[partner]]
    torch.testing.assert_close(w, expected)
    x2_labels, y2 = VarMixup(VAE, num_classes=10, p=0.5, generator=0)(GOOD_X, GOOD_Y)
    assert torch.equal(x2_labels, x2)
    torch.testing.assert_close(w @ torch.nn.functional.one_hot(GOOD_Y, 10).float(), y2)
    with pytest.raises(ValueError, match=r"4 classes, expected num_classes=10; the \(B, B\) torch.eye of targets that "
                                         r"are not class labels\? give the label mixes no num_classes"):
        VarMixup(VAE, num_classes=10)(GOOD_X, torch.eye(4))
    with pytest.raises(ValueError, match=r"row 0 sums to 3$"):
        check_labels(OTHER_TARGETS["multi-hot"], 4)



# a segmentation or detection pipeline's targets, given as y (audit 210)
MASK = torch.randint(0, 10, (4, 8, 8))
PIXEL_TARGETS = {
    "mask (B, H, W)": MASK,
    "mask (B, 1, H, W)": MASK[:, None],
    "one-hot mask (B, K, H, W)": F.one_hot(MASK, 10).permute(0, 3, 1, 2).float(),
    "tv_tensors.Mask": tv_tensors.Mask(MASK),
    "tv_tensors.BoundingBoxes int64 (B, 4)": tv_tensors.BoundingBoxes(torch.tensor([[0, 0, 4, 4]] * 4), format="XYXY",
                                                                      canvas_size=(8, 8)),
    "detection targets, a dict per image": [{"boxes": torch.rand(2, 4), "labels": GOOD_Y[:2]} for _ in range(4)],
    "(labels, mask)": (GOOD_Y, MASK),
}
PIXEL_TARGETS_USERS = {**TARGETS_USERS, "Compose v2 flip": lambda: Compose([v2.RandomHorizontalFlip(),
                                                                         LatentNoise(GLOW, eps=1.0)])}


@pytest.mark.parametrize("name", sorted(PIXEL_TARGETS_USERS))
@pytest.mark.parametrize("case", sorted(PIXEL_TARGETS))
def test_segmentation_and_detection_targets_are_told_where_their_support_is_written(name, case):
    """Masks, boxes and detection's list of dicts were refused without a word of them: a list "must be a torch.Tensor,
    got list", int64 BoundingBoxes "one-hot labels? pass y.argmax(1)", which ran on as class labels (a box's widest
    coordinate); none named the page that says which method keeps a mask aligned with its image."""
    with pytest.raises((ValueError, TypeError), match=r"segmentation masks and boxes, .*docs/composition.md#"
                                                      r"segmentation-masks-and-boxes$"):
        PIXEL_TARGETS_USERS[name]()(GOOD_X, PIXEL_TARGETS[case], TinyNet())
    if isinstance(PIXEL_TARGETS[case], tv_tensors.TVTensor):
        with pytest.raises(ValueError, match=rf"^y is a torchvision {type(PIXEL_TARGETS[case]).__name__} of shape "
                                             rf".*, not class labels: \(B,\) class indices or \(B, K\) soft labels"):
            PIXEL_TARGETS_USERS[name]()(GOOD_X, PIXEL_TARGETS[case], TinyNet())


def test_a_segmentation_model_is_told_it_has_no_class_per_image():
    """Per-pixel logits (B, K, H, W) were told to pass a wrapper returning model(x)[0], one image's logits."""
    seg = torch.nn.Conv2d(1, 5, 3, padding=1)
    with pytest.raises(ValueError, match=r"got a tensor of shape \(4, 5, 8, 8\); per-pixel logits \(B, K, H, W\) of a "
                                         r"segmentation model\? LatentAdversarial reads one class per image"):
        LatentAdversarial(GLOW, steps=1, target="pred", generator=0)(GOOD_X, None, seg)


class _Returns(torch.nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.shape = shape

    def forward(self, x):
        return x.new_zeros(self.shape)


@pytest.mark.parametrize("shape", [(4, 5, 3), (1, 4, 5, 8)])
def test_an_output_that_is_no_per_pixel_map_is_not_called_one(shape):
    """Mutation round 26 (audit 215): only a 4-d output with one row per image reads as a segmentation model's; a
    (B, K, L) sequence's logits, or (1, B, K, N) with the batch second, are told to pass a wrapper; one that returns
    a row per image, not model(x)[0] (audit 392: one image's, the fix for a tuple or dict output)."""
    with pytest.raises(ValueError, match=r"got a tensor of shape .*; pass a wrapper nn.Module whose forward "
                                         r"returns one row of K class logits per image$") as e:
        LatentAdversarial(GLOW, steps=1, target="pred", generator=0)(GOOD_X, None, _Returns(shape))
    assert "segmentation" not in str(e.value)


def test_class_labels_in_a_form_with_a_plain_fix_are_not_told_about_other_targets():
    """The targets hint ends the refusals of what may be other targets (a dict, (B,) floats, ...); class indices as a
    list or as int32 are class labels: their message ends with their fix."""
    tensor_it = r"y must be a torch.Tensor, got (list|tuple); torch.tensor\(y\) makes \(B,\) class indices of it$"
    for y, message in (([0, 1, 2, 3], tensor_it), ((0, 1, 2, 3), tensor_it),  # audit 268: told how to make a tensor
                       # mutation round 26 (audit 215): a list of 0-d tensors (list(y), labels gathered one by one) is
                       # class labels too; only a list holding dicts or tensors of a dimension is targets
                       (list(GOOD_Y), tensor_it),
                       ([], r"y must be a torch.Tensor, got list$"),
                       ([0.0, 1.0, 0.5, 1.0], r"y must be a torch.Tensor, got list$"),  # floats: maybe regression
                       (list(GOOD_Y.float()), r"y must be a torch.Tensor, got list$"),
                       ([True, False, True, True], r"y must be a torch.Tensor, got list$"),
                       (list(GOOD_Y > 1), r"y must be a torch.Tensor, got list$"),
                       (GOOD_Y.int(), r"must be int64, got dtype torch.int32; convert with y.long\(\)$")):
        with pytest.raises((TypeError, ValueError), match=message):
            LatentNoise(GLOW, eps=1.0)(GOOD_X, y, TinyNet())


def test_the_identity_hint_is_for_a_transforms_square_soft_labels_only():
    """"Give the label mixes no num_classes" answers a (B, B) torch.eye given to a transform: not (B, K) soft labels
    of another K, nor the (B, B) ones of a caller other than a transform (ISDALoss's check_labels)."""
    with pytest.raises(ValueError, match=r"3 classes, expected num_classes=10; targets that are not class labels"):
        VarMixup(VAE, num_classes=10)(GOOD_X, torch.full((4, 3), 1 / 3))
    with pytest.raises(ValueError, match=r"4 classes, expected num_classes=10$"):
        check_labels(torch.eye(4), 4, num_classes=10)


def test_a_model_with_no_output_is_refused_by_the_methods_that_read_its_logits():
    """A (B, 0) head (num_classes=0 in a config) reached torch's "argmax(): Expected reduction dim 1 to have non-zero
    size" in LatentAdversarial and gave (B, 0) probabilities from predict_proba."""
    from latent_transforms.evaluation import predict_proba

    class NoClasses(torch.nn.Module):
        def forward(self, x):
            return x.new_zeros(len(x), 0)

    message = r"class logits, K >= 2, got no output \(shape \(4, 0\)\); is the model's number of classes 0\?"
    with pytest.raises(ValueError, match=message):
        LatentAdversarial(GLOW, steps=1, target="pred", generator=0)(GOOD_X, None, NoClasses())
    with pytest.raises(ValueError, match=message):
        predict_proba(NoClasses(), GOOD_X)

def test_a_model_with_one_output_is_refused_by_the_methods_that_read_its_logits():
    """A binary logit or a regression output: its softmax is 1 whatever x, so LatentAdversarial's cross-entropy was 0
    and its gradient too (the attack silently left every latent at its random start), and predict_proba and
    LatentMixupInference gave probabilities of 1. The two-class wrapper the message names attacks the binary
    cross-entropy."""
    from latent_transforms.evaluation import predict_proba
    from latent_transforms.mixup_inference import LatentMixupInference

    torch.manual_seed(0)
    one = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 1))
    message = r"class logits, K >= 2, got one output \(shape \(4, 1\)\).* torch.cat\(\[torch.zeros_like\(z\), z\], 1\)"
    for target, y in (("pred", None), ("true", GOOD_Y % 1)):
        with pytest.raises(ValueError, match=message):
            LatentAdversarial(GLOW, steps=1, target=target, generator=0)(GOOD_X, y, one)
    with pytest.raises(ValueError, match=message):
        predict_proba(one, GOOD_X)  # was a column of 1s, as LatentMixupInference's
    with pytest.raises(ValueError, match=message):
        LatentMixupInference(one, VAE, torch.rand(8, 1, 8, 8))(GOOD_X)

    class TwoClasses(torch.nn.Module):
        def forward(self, x):
            z = one(x)
            return torch.cat([torch.zeros_like(z), z], 1)

    t = LatentAdversarial(GLOW, steps=1, generator=0)
    t(GOOD_X, None, TwoClasses())
    assert not torch.equal(t.last_params["delta"], t.last_params["start"])  # attacked: a step from the start


# audit 216: 12- and 16-bit images (microscopy, satellites) and CT in Hounsfield units were all told "x.float() / 255
# for uint8 images", which leaves 12-bit data at up to 16, and a float range past 255 "apply normalisation (mean/std)"
DEEP_IMAGES = {"uint16": torch.tensor([0, 4095, 65535], dtype=torch.int32).to(torch.uint16),
               "int16": torch.tensor([-1024, 0, 3071], dtype=torch.int16),
               "int32": torch.tensor([0, 100, 4095], dtype=torch.int32)}


def _deep_entry_points():
    from latent_transforms import LatentCache
    from latent_transforms.train import eval_codec, train_codec

    return {"LatentNoise": lambda x: LatentNoise(GLOW, eps=1.0)(x),
            "Compose": lambda x: Compose([LatentNoise(GLOW, eps=1.0)])(x),
            "LatentCache": lambda x: LatentCache(GLOW, x, progress=False),
            "eval_codec": lambda x: eval_codec(GLOW, x),
            "train_codec": lambda x: train_codec("flow", x, "/nonexistent", max_steps=1, progress=False)}


@pytest.mark.parametrize("dtype", sorted(DEEP_IMAGES))
@pytest.mark.parametrize("entry", ["LatentNoise", "Compose", "LatentCache", "eval_codec", "train_codec"])
def test_integer_images_are_told_the_scaling_of_their_own_dtype(dtype, entry):
    x = DEEP_IMAGES[dtype].repeat(4 * 64 // 3 + 1)[:4 * 64].view(4, 1, 8, 8)
    with pytest.raises(ValueError, match=rf"got dtype torch.{dtype}; ") as e:
        _deep_entry_points()[entry](x)
    message = str(e.value)
    assert "/ 255" not in message  # 8-bit's scaling: 12-bit data made float and divided by 255 reaches 16
    name = {"LatentCache": "images", "train_codec": "x_train"}.get(entry, "x")
    assert f"{name}.float() / 4095 for 12-bit" in message
    if dtype != "int16":  # non-negative: a bit depth's maximum (uint16's by dtype alone, int32's by its values)
        assert ("16-bit intensities?" if dtype == "uint16" else "intensities of more than 8 bits?") in message
        assert "divide them by the maximum of the data's bit depth" in message
        assert f"{name}.float() / 65535 for 16-bit" in message
    else:  # negative values: Hounsfield units, windowed by a range fixed for the data set
        assert f"(({name}.float() + 1024) / 4095).clamp(0, 1) for CT in Hounsfield units" in message
        assert "not per batch" in message


def test_uint8_and_bool_images_keep_their_own_conversion():
    with pytest.raises(ValueError, match=r"got dtype torch.uint8; convert with x.float\(\) / 255 for uint8 images$"):
        check_images(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"got dtype torch.bool; convert with x.float\(\) \(False 0, True 1\)$"):
        check_images(torch.zeros(2, 1, 8, 8, dtype=torch.bool))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16, torch.int8])
def test_8_bit_values_held_in_a_wider_integer_dtype_are_told_to_divide_by_255(dtype):
    """``torch.tensor(array)`` of 0..255 values gives int64 images: they were told the scaling of 12-bit or CT
    intensities (audit 216's hint chose by dtype alone)."""
    x = torch.arange(256).remainder(128 if dtype == torch.int8 else 256).to(dtype).repeat(2).view(2, 1, 16, 16)
    with pytest.raises(ValueError, match=rf"got dtype {dtype}; 8-bit values held as {dtype}\? convert with "
                                         r"x.float\(\) / 255$"):
        check_images(x)
    with pytest.raises(ValueError, match=r"intensities of more than 8 bits\? .* for 16-bit; 1023 if they are 10-bit$"):
        check_images(torch.arange(1024, dtype=torch.int32).view(4, 1, 16, 16))  # 10-bit values: their depth named
    wide = torch.int16 if dtype == torch.int8 else dtype  # mutation round 30 (audit 226): one past 8 bits, 9-bit
    with pytest.raises(ValueError, match=r"intensities of more than 8 bits\? .* for 16-bit; 511 if they are 9-bit$"):
        check_images(torch.full((1, 1, 4, 4), 256, dtype=wide))
    with pytest.raises(ValueError, match=rf"got dtype {wide}; scale them into \[0, 1\] by a range fixed for the data "
                                         r"set, not per batch"):  # mutation round 31: one below 0, a window
        check_images(torch.tensor([-1, 256], dtype=wide).repeat(8).view(1, 1, 4, 4))


def test_an_empty_batch_of_integer_images_is_told_to_convert_them():
    """Audit 271's fuzzing: the hint read an empty batch's values, torch's "min(): Expected reduction dim to be
    specified for input.numel() == 0" escaped from a transform's call and predict_proba."""
    from latent_transforms.evaluation import predict_proba

    for dtype in (torch.int64, torch.int32, torch.uint32):
        with pytest.raises(ValueError, match=rf"got dtype {dtype}; convert with x.float\(\) scaled into \[0, 1\] as "
                                             r"your other batches are \(/ 255 for 8-bit values\)$"):
            check_images(torch.zeros(0, 1, 8, 8, dtype=dtype), allow_empty=True)  # as a transform's call checks
    with pytest.raises(ValueError, match=r"a float model takes float images: convert with x.float\(\) scaled"):
        predict_proba(torch.nn.Conv2d(1, 2, 1), torch.zeros(0, 1, 8, 8, dtype=torch.int64))


def test_uint16_images_are_told_both_depths_and_none_found():
    """uint16 is read by its dtype alone (torch 2.4 has no min() of uint16): no depth of its own is named (mutation
    round 31: '; 0 if they are 0-bit' passed)."""
    x = DEEP_IMAGES["uint16"].repeat(6)[:16].view(1, 1, 4, 4)
    with pytest.raises(ValueError, match=r"got dtype torch.uint16; 16-bit intensities\? divide them by the maximum of "
                                         r"the data's bit depth, the same for every batch: x.float\(\) / 4095 for "
                                         r"12-bit data, x.float\(\) / 65535 for 16-bit$"):
        check_images(x)


@pytest.mark.parametrize("dtype", [torch.uint32, torch.uint64])
def test_uint32_and_uint64_images_are_told_the_scaling_of_their_values(dtype):
    """torch has no min() of uint32 or uint64: the hint's read of the values escaped as its NotImplementedError
    ('"min_all" not implemented for 'UInt32''), not the ValueError that names the dtype."""
    with pytest.raises(ValueError, match=rf"got dtype {dtype}; 8-bit values held as {dtype}\? convert with "
                                         r"x.float\(\) / 255$"):
        check_images(torch.full((1, 1, 4, 4), 255).to(dtype))
    with pytest.raises(ValueError, match=rf"got dtype {dtype}; intensities of more than 8 bits\? .* for 16-bit; 1023 "
                                         r"if they are 10-bit$"):
        check_images(torch.full((1, 1, 4, 4), 1000).to(dtype))


def test_complex_images_are_told_to_take_their_magnitudes():
    # audit 222: no test held the complex branch; without it they were told the scaling of 12-bit or CT intensities
    with pytest.raises(ValueError, match=r"got dtype torch.complex64; complex values are not images; their "
                                         r"magnitudes, x.abs\(\), scaled into \[0, 1\]\?$"):
        check_images(torch.zeros(2, 1, 8, 8, dtype=torch.complex64))


@pytest.mark.parametrize("lo, hi, hint", [
    (0.0, 4095.0, r"these look like intensities of more than 8 bits: divide them by the maximum of the data's bit "
                  r"depth, the same for every batch: x / 4095 for 12-bit data, x / 65535 for 16-bit$"),
    (0.0, 255.01, r"these look like intensities of more than 8 bits: .*; 511 if they are 9-bit$"),  # past 8 bits
    (0.0, 1000.0, r"these look like intensities of more than 8 bits: .*; 1023 if they are 10-bit$"),
    # 16-bit's white and a rounding above it
    (0.0, 65535.0005, r"these look like intensities of more than 8 bits: .* x / 65535 for 16-bit$"),
    # audit 222: a rounding above 12-bit's white is 12-bit (65535.0005 is 65535 in float32, whose steps there are
    # 0.004), and one below 0 is still intensities
    (0.0, 4095.0005, r"these look like intensities of more than 8 bits: .* x / 65535 for 16-bit$"),
    (-0.0005, 4095.0, r"these look like intensities of more than 8 bits: .* x / 65535 for 16-bit$"),
    (-1024.0, 3071.0, r"these look like values in physical units: scale them into \[0, 1\] by a range fixed for the "
                      r"data set, not per batch, .*\(\(x \+ 1024\) / 4095\).clamp\(0, 1\) for CT in Hounsfield units"),
    (0.0, 70000.0, r"these look like values in physical units"),  # past 16 bits
    (0.0, 65536.0, r"these look like values in physical units"),  # mutation round 31: one past 16-bit's white
    (-300.0, 0.5, r"these look like values in physical units"),
    (-200.0, 200.0, r"apply normalisation \(mean/std\) inside the model"),  # standardised data stays within 255
])
def test_images_of_more_than_8_bits_or_in_physical_units_get_their_own_hints(lo, hi, hint):
    with pytest.raises(ValueError, match=rf"values must lie in \[0, 1\], got range .*; {hint}"):
        check_images(torch.linspace(lo, hi, 64).reshape(1, 1, 8, 8))


def test_a_rounding_above_16_bit_white_in_float64_is_16_bit():
    # mutation round 31: float32 has no value within the tolerance above 65535 (its steps there are 0.004), float64 has
    with pytest.raises(ValueError, match=r"these look like intensities of more than 8 bits: .* x / 65535 for 16-bit$"):
        check_images(torch.linspace(0, 65535.0005, 64, dtype=torch.float64).reshape(1, 1, 8, 8))


def test_3d_volumes_are_told_their_slices_make_a_batch_and_the_recipe_works():
    """(B, C, D, H, W) of one channel was told only of video clips, whose recipe, x.flatten(0, 1), makes each volume
    one image of D channels; the slices' recipe gives the volumes back, each slice transformed as a batch row."""
    volumes, labels = torch.rand(3, 1, 5, 8, 8), torch.tensor([0, 1, 2])
    t = VarMixup(VAE, num_classes=10, generator=0)
    with pytest.raises(ValueError, match=r"3-D volumes \(B, C, D, H, W\)\? x.movedim\(2, 1\).flatten\(0, 1\) makes "
                                         r"their slices a \(B\*D, C, H, W\) batch, .* y.repeat_interleave\(D\) "
                                         r"\(x2.unflatten\(0, \(B, D\)\).movedim\(1, 2\) gives the volumes back\); "
                                         r"ISDA takes any \(B, \.\.\.\) tensor$") as e:
        t(volumes, labels)
    assert "video" not in str(e.value)  # frames of 5 channels: no codec of grey images takes them
    slices = volumes.movedim(2, 1).flatten(0, 1)
    x2, y2 = t(slices, labels.repeat_interleave(5))
    assert torch.equal(slices.unflatten(0, (3, 5)).movedim(1, 2), volumes)  # the recipe's way back
    assert x2.unflatten(0, (3, 5)).movedim(1, 2).shape == volumes.shape
    assert torch.allclose(y2.view(3, 5, 10).mean(1).sum(1), torch.ones(3))


@pytest.mark.parametrize("shape, video, volume", [
    ((4, 16, 3, 8, 8), True, False),  # 16 frames of RGB
    ((4, 1, 32, 8, 8), False, True),  # one channel, 32 slices
    ((4, 3, 32, 8, 8), False, True),  # RGB, 32 slices (mutation round 31: grey volumes alone were held)
    ((4, 1, 3, 8, 8), True, True),  # either
    ((4, 5, 7, 8, 8), True, True),  # neither reading's channels are grey or RGB: both named
])
def test_a_5d_batch_is_told_the_readings_its_channels_fit(shape, video, volume):
    with pytest.raises(ValueError, match=r"ISDA takes any \(B, \.\.\.\) tensor$") as e:
        check_images(torch.rand(shape))
    message = str(e.value)
    assert ("video clips (B, T, C, H, W)?" in message) == video
    assert ("3-D volumes (B, C, D, H, W)?" in message) == volume
    assert message.count("ISDA") == 1


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="no /dev/null here (Windows)")
def test_an_output_folder_where_a_device_is_is_refused_as_a_file():
    """Mutation round 38: not only a regular file is in the way of a folder: a device such as /dev/null (a FIFO, a
    socket) passed an is_file() test and met mkdir's "File exists" or "Not a directory" after the checks."""
    from pathlib import Path

    from latent_transforms.validation import file_in_the_way, output_folder

    assert file_in_the_way(Path("/dev/null/runs")) == Path("/dev/null") and file_in_the_way(Path("/dev")) is None
    with pytest.raises(ValueError, match=r"^the output folder '/dev/null' is a file; give a folder"):
        output_folder("/dev/null")


def test_make_folder_makes_its_parents_and_takes_a_folder_already_there(tmp_path):
    """Mutation round 43: train_codec and the demo make their output folder here (a nested --out too)."""
    from latent_transforms.validation import make_folder

    out = tmp_path / "runs" / "new"
    assert make_folder(out) == out and out.is_dir() and make_folder(out) == out


@pytest.mark.parametrize("read_only", [True, False])
def test_make_folder_names_a_read_only_mount_as_such_with_the_errno(tmp_path, monkeypatch, read_only):
    """Audit 305: a folder already there on a read-only mount was refused as "Permission denied" (a folder made there:
    "Read-only file system"), and the refusal's errno was None. The mount asked about is the folder's own (mutation
    round 44: its parent's passed, but a read-only mount point's parent is on another, writable mount)."""
    import errno
    import types

    from latent_transforms import validation

    monkeypatch.setattr(validation.os, "access", lambda path, mode: False)
    monkeypatch.setattr(validation.os, "statvfs", lambda path: types.SimpleNamespace(
        f_flag=validation.os.ST_RDONLY if read_only and path == tmp_path else 0), raising=False)
    code = errno.EROFS if read_only else errno.EACCES
    with pytest.raises(PermissionError if code == errno.EACCES else OSError,
                       match=rf"^cannot write into the output folder .*\({os.strerror(code)}\); give a folder") as e:
        validation.make_folder(tmp_path)
    assert e.value.errno == code and isinstance(e.value, PermissionError) == (not read_only)


def test_a_model_with_lazy_modules_is_named_by_its_lazy_parameters_alone_two_of_them_and_a_count():
    """Mutation round 48: the named list was not filtered to the lazy parameters, and the count of the rest was not
    checked (methods' models had two lazy parameters alone)."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LazyLinear(4), torch.nn.LazyLinear(2))
    with pytest.raises(ValueError, match=r"^the model has parameters its lazy modules have not initialised yet "
                                         r"\(1\.weight, 1\.bias and 2 more; "):
        check_initialised(model, model.parameters())
    three = torch.nn.Sequential(torch.nn.LazyLinear(4, bias=False), torch.nn.LazyLinear(2))  # mutation round (audit 358)
    with pytest.raises(ValueError, match=r"\(0\.weight, 1\.weight and 1 more; "):
        check_initialised(three, three.parameters())
    model(torch.rand(1, 3))
    check_initialised(model, model.parameters())


def _first_by_walk(module: torch.nn.Module, float_buffer: bool = False) -> torch.Tensor | None:
    """What first_tensor replaced: the first of parameters(), else of buffers() (float ones with float_buffer)."""
    buffers = (b for b in module.buffers() if b.is_floating_point() or not float_buffer)
    return next(itertools.chain(module.parameters(), buffers), None)


def _odd_trees() -> list[torch.nn.Module]:
    """Module trees where the first parameter or buffer is easy to get wrong: an empty slot first, buffers before a
    later child's parameters, an int buffer before a float one, a module shared twice, nothing at all."""
    empty_slot = torch.nn.Module()
    empty_slot.register_parameter("gone", None)
    empty_slot.later = torch.nn.Linear(2, 3)
    buffers_first = torch.nn.Sequential(torch.nn.BatchNorm1d(2, affine=False), torch.nn.Linear(2, 2))
    counts = torch.nn.Module()
    counts.register_buffer("count", torch.zeros((), dtype=torch.int64))
    counts.inner = torch.nn.Module()
    counts.inner.register_buffer("scale", torch.ones(3, dtype=torch.float64))
    shared = torch.nn.Linear(2, 2, bias=False)
    return [torch.nn.Linear(2, 3), torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Conv2d(1, 2, 3)), empty_slot,
            buffers_first, counts, torch.nn.Sequential(shared, torch.nn.ReLU(), shared), torch.nn.Sequential(),
            torch.nn.BatchNorm2d(3, affine=False), tiny_glow(), tiny_vae(), TinyNet()]


@pytest.mark.parametrize("float_buffer", [False, True])
def test_first_tensor_is_the_walks_first_parameter_else_buffer_in_every_submodule(float_buffer):
    for tree in _odd_trees():
        for m in tree.modules():
            found = first_tensor(m, float_buffer) if float_buffer else first_tensor(m)  # the default: any buffer
            assert found is _first_by_walk(m, float_buffer), m
