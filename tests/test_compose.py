"""Composition with real kornia and torchvision transforms, in either order; labels flow through."""
import copy
import re
import warnings

import kornia.augmentation as K
import kornia.enhance
import pytest
import torch
import torchvision.transforms
import torchvision.transforms.v2 as T
from hypothesis import example, given, settings
from hypothesis import strategies as st

from latent_transforms import ISDA, Compose, LatentCache, LatentMixupInference
from latent_transforms.base import LEFT_IN_EVAL
from latent_transforms.latent_adversarial import LatentAdversarial
from latent_transforms.latent_noise import LatentNoise
from latent_transforms.varmixup import VarMixup

from conftest import EVAL_BESIDE_TRAINING, STRENGTH_ZERO_EXPECTED, TinyNet, tiny_glow, tiny_vae, train_steps


@pytest.fixture
def rgb():
    g = torch.Generator().manual_seed(0)
    return torch.rand(6, 3, 16, 16, generator=g), torch.randint(0, 10, (6,), generator=g)


@pytest.fixture
def rgb_glow():
    return tiny_glow(shape=(3, 16, 16))


def _check(x2, y2, x, soft):
    assert x2.shape == x.shape and x2.dtype == x.dtype and 0 <= x2.min() and x2.max() <= 1
    if soft:
        assert y2.shape == (x.shape[0], 10) and torch.allclose(y2.sum(1), torch.ones(x.shape[0]), atol=1e-5)
    else:
        assert y2.shape == (x.shape[0],) and y2.dtype == torch.int64


def test_randaugment_before_and_after_latent_then_mixup(rgb, rgb_glow):
    x, y = rgb
    net = TinyNet(channels=3)
    for pipeline in (
        [T.RandAugment(), LatentAdversarial(rgb_glow, steps=1, generator=0), T.MixUp(num_classes=10)],
        [LatentNoise(rgb_glow, eps=1.0, generator=0), K.auto.RandAugment(n=2, m=10), T.MixUp(num_classes=10)],
        [K.auto.RandAugment(n=2, m=10), LatentNoise(rgb_glow, eps=1.0, generator=0), T.CutMix(num_classes=10)],
    ):
        x2, y2 = Compose(pipeline)(x, y, net)
        _check(x2, y2, x, soft=True)


@pytest.fixture(scope="module")
def rgb_codecs():
    """A frozen (3, 16, 16) Glow and VAE, shared by the tests of a module (``rgb_glow`` builds one per test)."""
    return tiny_glow(shape=(3, 16, 16)), tiny_vae(shape=(3, 16, 16))


_MATRIX_METHODS = {
    "LatentNoise": lambda glow, vae: LatentNoise(glow, eps=1.0, p=0.5, generator=1),
    "LatentAdversarial": lambda glow, vae: LatentAdversarial(glow, target="true", p=0.5, generator=1),
    "VarMixup": lambda glow, vae: VarMixup(vae, p=0.5, generator=1),  # with the Compose's num_classes
}
_MATRIX_STEPS = {
    "v2 RandAugment": T.RandAugment,  # given uint8 images, a ToDtype right after it (first, after a first latent step)
    "v2 CutMix": lambda: T.CutMix(num_classes=10),
    "kornia AugmentationSequential": lambda: K.AugmentationSequential(K.RandomHorizontalFlip(),
                                                                      K.ColorJitter(0.2, 0.2, p=1.0)),
    "kornia RandomMixUpV2": K.RandomMixUpV2,
}


@pytest.mark.parametrize("latent_first", [False, True])
@pytest.mark.parametrize("step", sorted(_MATRIX_STEPS))
@pytest.mark.parametrize("method", sorted(_MATRIX_METHODS))
def test_each_method_composes_with_torchvision_and_kornia_steps_in_either_order(rgb, rgb_codecs, method, step,
                                                                                latent_first):
    """Audit 279's composition matrix, kept small: a latent step before or after a torchvision or kornia step gives
    the images' shape in float32, labels soft (rows summing to 1) after a mix and as given otherwise, the same output
    from the same seeds, and in eval() mode the batch as given (its uint8 images converted)."""
    x, y = rgb
    uint8 = step == "v2 RandAugment"
    x_in = (x * 255).round().to(torch.uint8) if uint8 else x
    to_float = [T.ToDtype(torch.float32, scale=True)] if uint8 else []

    def build():
        latent, pixel = _MATRIX_METHODS[method](*rgb_codecs), _MATRIX_STEPS[step]()
        return Compose([*to_float, latent, pixel] if latent_first else [pixel, *to_float, latent], num_classes=10)

    if method == "VarMixup" and step == "kornia RandomMixUpV2" and latent_first:
        with pytest.raises(ValueError, match=r"RandomMixUpV2 \(kornia\) at step 1 takes class-index labels, but "
                                             r"VarMixup at step 0 makes them soft"):
            build()
        return
    net = TinyNet(channels=3)
    outputs = []
    for _ in range(2):
        torch.manual_seed(0)  # torchvision's and kornia's steps draw from the global RNG, the latent ones from theirs
        outputs.append(build()(x_in, y, net))
    (x2, y2), (x3, y3) = outputs
    _check(x2, y2, x, soft=method == "VarMixup" or "Mix" in step)
    assert torch.equal(x2, x3) and torch.equal(y2, y3)
    if y2.ndim == 1:
        assert torch.equal(y2, y)
    x4, y4 = build().eval()(x_in, y)  # evaluation needs no model
    assert y4 is y and (torch.equal(x4, to_float[0](x_in)) if uint8 else x4 is x_in)


def test_pixel_only_keeps_index_labels(rgb, rgb_glow):
    x, y = rgb
    c = Compose([K.RandomHorizontalFlip(), T.RandomVerticalFlip(), LatentNoise(rgb_glow, eps=1.0, generator=0),
                 lambda im: im.flip(-1)])
    x2, y2 = c(x, y)
    _check(x2, y2, x, soft=False)
    assert torch.equal(y2, y)


def test_kornia_mixup_labels_become_soft(rgb, rgb_glow):
    x, y = rgb
    x2, y2 = Compose([K.RandomMixUpV2(), LatentNoise(rgb_glow, eps=0.5, generator=0)], num_classes=10)(x, y)
    _check(x2, y2, x, soft=True)
    torch.manual_seed(0)  # kornia draws from the global generator
    x2, y2 = Compose([K.RandomMixUpV2(p=1.0)], num_classes=6)(x, torch.arange(6))  # each image a class of its own
    torch.testing.assert_close(x2.flatten(1), y2 @ x.flatten(1))  # the labels mixed as the pixels (audit 337)
    with pytest.raises(ValueError, match=r"Compose\(\.\.\., num_classes=\.\.\.\) is needed to turn "
                                         r"RandomMixUpV2's labels \(step 0\) soft"):
        Compose([K.RandomMixUpV2()])  # when built (was at the first call)


def test_a_nested_compose_with_a_kornia_mix_gets_the_class_indices_it_takes(rgb):
    """The outer Compose made the labels soft before a nested Compose holding a label mix (its declared classes
    became the outer's), and the nested Compose's kornia mix then refused them ("y holds soft (B, K) labels"), though
    the class indices given took it alone: a nested Compose with classes makes its labels soft itself."""
    x, y = rgb
    inner = Compose([K.RandomMixUpV2(p=1.0)], num_classes=10)
    for num_classes in (None, 10):
        _check(*Compose([T.RandomHorizontalFlip(), inner], num_classes=num_classes)(x, y), x, soft=True)


@pytest.mark.parametrize("num_classes", [None, 10])
def test_labels_are_soft_after_a_torchvision_container_that_may_skip_its_mix(rgb, num_classes):
    """Rule 2 (docs/composition.md): soft from a label-mixing step on. RandomApply([MixUp(num_classes=10)]) left
    the batches it skipped with class indices, soft the others; the classes are the Compose's or the mix's own."""
    x, y = rgb
    for p in (0.0, 1.0):
        for container in (T.RandomApply([T.MixUp(num_classes=10)], p=p),
                          T.RandomChoice([T.MixUp(num_classes=10), T.RandomHorizontalFlip()], p=[p, 1 - p])):
            x2, y2 = Compose([container], num_classes=num_classes)(x, y)
            _check(x2, y2, x, soft=True)
            if p == 0.0:  # skipped: the labels, made soft
                assert torch.equal(y2, torch.nn.functional.one_hot(y, 10).to(y2.dtype))


@pytest.mark.parametrize("correct_lambda", [False, True])
@pytest.mark.filterwarnings("ignore:RandomCutMixV2 currently uses the old")
def test_kornia_cutmix_soft_labels_are_the_pasted_areas(correct_lambda):
    """Sample i is the constant image i/7 with class i: its soft label must be the share of each class's pixels."""
    torch.manual_seed(0)
    x = (torch.arange(8).float() / 7).view(8, 1, 1, 1).expand(8, 3, 16, 16).contiguous()
    if correct_lambda and not hasattr(K.RandomCutMixV2(), "use_correct_lambda"):
        pytest.skip("kornia < 0.8.2 has no use_correct_lambda (its CutMix uses the old lambda)")
    cutmix = K.RandomCutMixV2(p=1.0, **({"use_correct_lambda": True} if correct_lambda else {}))
    x2, y2 = Compose([cutmix], num_classes=8)(x, torch.arange(8))
    shares = torch.nn.functional.one_hot(x2[:, 0].mul(7).round().long().flatten(1), 8).float().mean(1)
    assert (shares.max(1).values < 1).any()  # some boxes were pasted
    assert torch.allclose(y2, shares, atol=1e-6)
    with pytest.raises(ValueError, match="^RandomCutMixV2 with num_mix=2: overlapping boxes"):
        Compose([K.RandomHorizontalFlip(), K.RandomCutMixV2(num_mix=2, p=1.0)], num_classes=8)  # when built (was at a call)


@pytest.mark.parametrize("mixer", [lambda: VarMixup(tiny_vae(shape=(3, 16, 16)), num_classes=10, generator=0),
                                   lambda: T.MixUp(num_classes=10)])
def test_kornia_mixup_after_soft_labels_is_refused_when_built(mixer):
    m = mixer()  # was refused at the first call
    with pytest.raises(ValueError, match=rf"RandomMixUpV2 \(kornia\) at step 2 takes class-index labels, but "
                                         rf"{type(m).__name__} at step 0 makes them soft; put it first"):
        Compose([m, T.RandomHorizontalFlip(), K.RandomMixUpV2()], num_classes=10)
    Compose([K.RandomMixUpV2(), T.RandomHorizontalFlip(), m], num_classes=10)  # the other way round is fine
    inner = Compose([T.RandomHorizontalFlip(), K.RandomMixUpV2()], num_classes=10)  # nested: was refused at a call
    with pytest.raises(ValueError, match=rf"^RandomMixUpV2 at step 1 of step 2 \(Compose\), a kornia mix, takes "
                                         rf"class-index labels, but {type(m).__name__} at step 0 makes them soft"):
        Compose([m, T.RandomHorizontalFlip(), inner], num_classes=10)
    Compose([inner, m], num_classes=10)


def test_a_kornia_mix_inside_a_torchvision_container_is_refused():
    # RandomApply called it as t(x, y) and returned the images alone: the labels were lost
    with pytest.raises(ValueError, match="RandomMixUpV2 in RandomApply at step 0: a torchvision container calls it "
                                         "as t\\(x, y\\), not with kornia's data_keys"):
        Compose([T.RandomApply([K.RandomMixUpV2()])], num_classes=10)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("mix", [K.RandomMixUpV2, K.RandomCutMixV2])
@pytest.mark.filterwarnings("ignore:RandomCutMixV2 currently uses the old")
def test_a_kornia_mix_given_soft_labels_is_refused_before_any_step_runs_in_either_mode(rgb, rgb_glow, mix, mode):
    """Audit 279: training refused them at the mix, after the steps before it had drawn and run, blaming the previous
    step ("Compose step 1 (RandomMixUpV2), on the output of step 0 (LatentNoise)"); eval() mode passed them."""
    x, y = rgb
    noise = LatentNoise(rgb_glow, eps=1.0, generator=0)
    c = getattr(Compose([noise, mix()], num_classes=10), mode)()
    with pytest.raises(ValueError, match=rf"^{mix.__name__} at step 1 is a kornia mix, which takes class-index labels, "
                                         rf"but y holds soft \(B, K\) labels; pass class indices, or use "
                                         rf"torchvision.transforms.v2.MixUp/CutMix"):
        c(x, torch.nn.functional.one_hot(y, 10).float())
    assert noise.last_params == {}  # nothing drawn
    _check(*c(x, y), x, soft=mode == "train")  # class indices: as ever


def test_kornia_mixup_of_soft_labels_a_step_of_ones_own_made_says_so(rgb):
    class OneHot(T.Transform):
        def forward(self, x, y):
            return x, torch.nn.functional.one_hot(y, 10).float()

    x, y = rgb
    with pytest.raises(ValueError, match=r"RandomMixUpV2 \(kornia\) takes class-index labels, got soft \(B, K\) labels "
                                         r"\(given, or made by an earlier"):  # said "an earlier step made them soft"
        Compose([OneHot(), K.RandomMixUpV2()], num_classes=10)(x, y)


@pytest.mark.parametrize("mixer", [lambda: T.MixUp(num_classes=10), lambda: T.CutMix(num_classes=10),
                                   lambda: K.RandomMixUpV2(),
                                   lambda: VarMixup(tiny_vae(shape=(3, 16, 16)), num_classes=10)])
def test_isda_with_a_label_mixing_step_is_refused(mixer):
    m = mixer()
    for steps in ([ISDA(10), m], [m, ISDA(10)]):  # ISDA then MixUp was accepted: its correction used unmixed labels
        with pytest.raises(ValueError, match=f"ISDA \\(step {steps.index(m) ^ 1}\\) needs class-index labels .*"
                                             f"{type(m).__name__} at step {steps.index(m)}"):
            Compose(steps)
    Compose([ISDA(10), T.RandomHorizontalFlip()])  # pixel steps are fine


@STRENGTH_ZERO_EXPECTED
def test_a_first_isda_lets_uint8_images_through_to_the_torchvision_step_after_it(rgb):
    """Mutation round 49 (audit 337): ISDA never reads x, so a Compose led by it takes the uint8 images its later
    torchvision step takes, as one led by that step does (not "x must be a float tensor")."""
    x, y = rgb
    x8 = (x * 255).round().to(torch.uint8)
    c, net = Compose([ISDA(10), T.RandomHorizontalFlip(p=1.0)]), TinyNet(channels=3)
    x2, y2 = c(x8, y, net)
    assert x2.dtype == torch.uint8 and torch.equal(x2, x8.flip(-1)) and torch.equal(y2, y)
    with pytest.raises(ValueError, match=r"^x values must lie in \[0, 1\]"):  # ISDA reads none: the Compose does
        c(x * 3, y, net)


def test_a_latent_step_names_the_step_whose_output_it_refuses(rgb, rgb_glow):
    x, y = rgb

    def overshoot(x):
        return x * 1.02

    with pytest.raises(ValueError, match=r"Compose step 1 \(LatentNoise\), on the output of step 0 \(overshoot\): x "
                                         r"values must lie in \[0, 1\].*clamp its output"):
        Compose([overshoot, LatentNoise(rgb_glow, generator=0)])(x, y)
    with pytest.raises(ValueError, match=r"^x values must lie in \[0, 1\].*normalisation"):  # the input: as it is
        Compose([LatentNoise(rgb_glow, generator=0)])((x - 0.5) / 0.25, y)


def test_uint8_images_go_through_pixel_steps_then_to_dtype_into_a_latent_step(rgb, rgb_glow):
    x, y = rgb
    x8 = (x * 255).round().to(torch.uint8)
    to_float = T.ToDtype(torch.float32, scale=True)
    noise = LatentNoise(rgb_glow, eps=1.0, generator=0)
    x2, y2 = Compose([T.RandAugment(), T.RandomHorizontalFlip(), to_float, K.RandomVerticalFlip(), noise])(x8, y)
    _check(x2, y2, x, soft=False)
    # the same images as converting before the Compose: the uint8 path only moves where the conversion happens
    ref, _ = LatentNoise(rgb_glow, eps=1.0, generator=0)(to_float(x8), y)
    out, _ = Compose([to_float, LatentNoise(rgb_glow, eps=1.0, generator=0)])(x8, y)
    assert torch.equal(out, ref)
    with pytest.raises(ValueError, match=r"Compose step 1 \(LatentNoise\), on the output of step 0 \(RandAugment\): x "
                                         r"must be a float tensor.*uint8.*put v2.ToDtype\(torch.float32, scale=True\)"):
        Compose([T.RandAugment(), noise])(x8, y)
    with pytest.raises(ValueError, match=r"^x must be a float tensor.*uint8"):  # a latent first step checks values
        Compose([noise, T.RandAugment()])(x8, y)
    with pytest.raises(ValueError, match=r"x must have shape \(B, C, H, W\)"):  # the shape is checked either way
        Compose([T.RandAugment(), to_float, noise])(x8[0], y)
    with pytest.raises(ValueError, match="batch sizes differ"):
        Compose([to_float, noise])(x8, y[:3])


def test_a_pixel_first_step_still_gets_checked_images(rgb):
    x, y = rgb
    flip = T.RandomHorizontalFlip()
    with pytest.raises(ValueError, match=r"x values must lie in \[0, 1\]"):  # floats: the full check, as ever
        Compose([flip, T.MixUp(num_classes=10)])((x - 0.5) / 0.25, y)
    with pytest.raises(ValueError, match="NaN"):
        Compose([flip])(x.masked_fill(x > 0.9, float("nan")), y)
    with pytest.raises(ValueError, match=r"float tensor with values in \[0, 1\] or uint8, got dtype torch.int64"):
        Compose([T.ToDtype(torch.float32, scale=True)])((x * 255).long(), y)


def test_eval_mode_checks_the_images_itself_when_no_latent_step_gets_them_as_given(rgb):
    """Mutation round 18 (audit 181): an eval() Compose whose first step hands no latent step the batch as given (a
    pixel step, an empty nested Compose) checks the images' values itself, as in training; an empty nested Compose
    first is no latent step (looking for one in it raised IndexError)."""
    x, y = rgb
    for c in (Compose([T.RandomHorizontalFlip()]), Compose([Compose([]), T.RandomHorizontalFlip()])):
        for mode in (c.train, c.eval):
            with pytest.raises(ValueError, match=r"x values must lie in \[0, 1\]"):
                mode()(x * 3, y)
        assert c.eval()(x, y)[0] is x


def test_eval_mode_runs_only_the_dtype_conversions_and_refuses_uint8_it_would_return_unconverted(rgb, rgb_glow):
    x, y = rgb
    x8 = (x * 255).round().to(torch.uint8)
    c = Compose([T.RandomHorizontalFlip(p=1.0), T.ToDtype(torch.float32, scale=True),
                 LatentNoise(rgb_glow, generator=0)]).eval()
    x2, y2 = c(x8, y)  # a validation loader's uint8 images: converted as in training, nothing else (it was refused)
    assert x2.dtype == torch.float32 and torch.equal(x2, T.ToDtype(torch.float32, scale=True)(x8)) and y2 is y
    assert c(x, y)[0] is x  # float32 in: no conversion needed, the very tensor back
    c = Compose([T.RandomHorizontalFlip(), LatentNoise(rgb_glow, generator=0)]).eval()
    with pytest.raises(ValueError, match=r"eval\(\) mode runs only its dtype conversions .* none that converts "
                                         r"these uint8 images; put v2.ToDtype"):
        c(x8, y)
    for c in (Compose([T.RandomApply([T.ToDtype(torch.float32, scale=True)], p=0.5), LatentNoise(rgb_glow)]).eval(),
              Compose([T.RandomChoice([T.ToDtype(torch.float32, scale=True), T.Identity()])]).eval()):
        with pytest.raises(ValueError, match="none that converts"):  # a conversion that may not run is not run
            c(x8, y)


def test_eval_mode_refuses_images_the_first_latent_steps_codec_cannot_take_as_training_does(rgb, rgb_glow):
    """An eval() Compose returned images of another shape than its first step's codec takes (the step alone refuses
    them in eval() mode too), so a validation run before training passed and the first training step failed."""
    x, y = rgb
    gray = x[:, :1]
    c = Compose([LatentNoise(rgb_glow, generator=0), T.RandomHorizontalFlip()])
    refused = r"trained on images of shape \(3, 16, 16\) .* got x of shape \(6, 1, 16, 16\)"
    for t in (c.train, c.eval, c.steps[0].eval):
        with pytest.raises(ValueError, match=refused):
            t()(gray, y)
    assert c.eval()(x, y)[0] is x  # images it takes: the identity
    resized = Compose([T.Resize(16), LatentNoise(rgb_glow, generator=0)]).eval()
    assert resized(x[..., :8, :8], y)[0].shape[-1] == 8  # a later step's codec gets the first step's output: unchecked


@EVAL_BESIDE_TRAINING
def test_eval_mode_gives_the_first_steps_check_inputs_the_model_and_index_as_training_does(batch, net):
    """A method of one's own checks the call in check_inputs (docs/extending.md): an eval() Compose hands it the
    model and index= of the call, as training does and the step alone does in eval() mode."""
    from latent_transforms import LatentTransform

    class ChecksItsArguments(LatentTransform):
        needs_model = True

        def check_inputs(self, x, model, index):
            if next(model.parameters()).dtype != x.dtype or index is None:
                raise ValueError(f"model of {next(model.parameters()).dtype} for x of {x.dtype}, index {index}")

        def transform(self, x, y, model, params, index=None):
            return x, y

    x, y = batch
    c = Compose([ChecksItsArguments(generator=0)])
    index = torch.arange(len(x))
    for mode in (c.train, c.eval):
        assert mode()(x, y, net, index)[0].shape == x.shape
        with pytest.raises(ValueError, match="model of torch.float64 for x of torch.float32"):
            mode()(x, y, net.double(), index)
        net.float()
        with pytest.raises(ValueError, match="index None"):
            mode()(x, y, net)


def test_eval_mode_runs_a_nested_composes_first_latent_step_checks_as_training_does(rgb, rgb_glow):
    """A nested Compose as the first step hands the batch as given to its first latent step: an eval() Compose ran
    none of that step's checks, so images of a shape its codec cannot take passed evaluation and failed training."""
    x, y = rgb
    for c in (Compose([Compose([LatentNoise(rgb_glow, generator=0)]), T.RandomHorizontalFlip()]),
              Compose([Compose([Compose([LatentNoise(rgb_glow, generator=0)])])])):
        for mode in (c.train, c.eval):
            with pytest.raises(ValueError, match=r"trained on images of shape \(3, 16, 16\) .* got x of shape "
                                                 r"\(6, 1, 16, 16\)"):
                mode()(x[:, :1], y)
        assert c.eval()(x, y)[0] is x  # images it takes: the identity
    flipped_first = Compose([Compose([T.RandomHorizontalFlip(), LatentNoise(rgb_glow)])]).eval()
    assert flipped_first(x[:, :1], y)[0].shape[1] == 1  # a latent step after another step gets its output: unchecked


def test_eval_mode_refuses_images_the_first_steps_latent_cache_does_not_hold_as_the_step_alone_does(rgb, rgb_glow):
    """The first step's own value checks (a latent cache's: are these the cached images at index?) ran in training and
    in the step alone in eval() mode, not in an eval() Compose: other images at those positions passed."""
    x, y = rgb
    cache = LatentCache(rgb_glow, x, progress=False)
    index = torch.arange(len(x))
    c = Compose([LatentNoise(rgb_glow, cache=cache, generator=0), T.RandomHorizontalFlip()])
    for t in (c.train, c.eval, c.steps[0].eval):
        with pytest.raises(ValueError, match="x is not the images this latent cache holds at index"):
            t()(x.flip(0), y, index=index)
    assert c.eval()(x, y, index=index)[0] is x


@EVAL_BESIDE_TRAINING
@pytest.mark.parametrize("where, make", [
    ("ISDA at step 0", lambda: Compose([ISDA(10)])),
    ("ISDA at step 1", lambda: Compose([T.RandomHorizontalFlip(), ISDA(10)])),
    ("ISDA in Compose at step 0", lambda: Compose([Compose([T.RandomHorizontalFlip(), ISDA(10)])])),
])
def test_isda_refuses_soft_labels_up_front_in_a_compose_in_eval_mode_too(rgb, where, make):
    """ISDA alone refuses soft labels in eval() mode too (a pipeline checked there would fail once training); an eval()
    Compose holding it returned them, and in training the refusal blamed the step before ISDA for labels given so."""
    x, y = rgb
    net = TinyNet(channels=3)
    soft = torch.nn.functional.one_hot(y, 10).float()
    c = make()
    for mode in (c.train, c.eval):
        with pytest.raises(ValueError, match=rf"^{where} needs class indices y: \(B,\) int64, got soft labels of "
                                             rf"shape \(6, 10\)"):
            mode()(x, soft, net)
    assert c.eval()(x, y, net) == (x, y)


def test_eval_mode_refuses_what_a_first_isda_or_latent_step_alone_refuses_but_the_missing_model(rgb, rgb_glow):
    """An eval() Compose runs its first latent step's every check (ISDA's statistics on x's device, the model's
    device), as the step alone does in eval() mode; only model=None passes, as evaluation does not use the model."""
    x, y = rgb
    isda, attack = ISDA(10, feature_dim=32).to("meta").eval(), LatentAdversarial(rgb_glow).eval()
    for step, model, message in ((isda, TinyNet(channels=3), "ISDA's class statistics is on meta but x is on cpu"),
                                 (attack, TinyNet(channels=3).to("meta"), "LatentAdversarial's model is on meta but x "
                                                                          "is on cpu")):
        for t in (step, Compose([step, T.RandomHorizontalFlip()]).eval()):
            with pytest.raises(ValueError, match=message):
                t(x, y, model)
    with pytest.raises(TypeError, match="needs the classifier"):
        attack(x, y)
    assert Compose([attack]).eval()(x, y) == (x, y)  # as test_eval_mode_and_model_passing
    isda = ISDA(10, feature_dim=32).eval()  # ISDA's own check_call too (mutation round 18, audit 181)
    assert Compose([isda, T.RandomHorizontalFlip()]).eval()(x, y) == (x, y)


def test_a_first_label_mix_checks_the_labels_before_they_are_made_soft_with_the_composes_classes(rgb):
    """VarMixup() (no num_classes) first in a Compose(num_classes=10): the Compose made the labels soft before the
    step checked them, so an out-of-range class reached torch's one_hot (a RuntimeError here, a device-side assert on
    CUDA) in training, while eval() mode refused it with a ValueError."""
    x, y = rgb
    vae = tiny_vae(shape=(3, 16, 16))
    c = Compose([VarMixup(vae, p=0.5, generator=0), T.RandomHorizontalFlip(p=0.0)], num_classes=10)
    for mode in (c.train, c.eval):
        with pytest.raises(ValueError, match=r"^y has class index 10, out of range for num_classes=10 \(.*y\[keep\]$"):
            mode()(x, torch.cat([y[:-1], torch.tensor([10])]))
    x2, y2 = c.train()(x, y)  # the same mix as the step given the classes itself
    x3, y3 = VarMixup(vae, p=0.5, num_classes=10, generator=0)(x, y)
    assert torch.equal(x2, x3) and torch.equal(y2, y3) and y2.dtype == torch.float32


def test_eval_mode_runs_the_conversions_inside_a_torchvision_or_nested_compose(rgb, rgb_glow):
    x, y = rgb
    x8 = (x * 255).round().to(torch.uint8)
    to_float = T.ToDtype(torch.float32, scale=True)
    for c in (Compose([T.Compose([T.RandomHorizontalFlip(), to_float]), LatentNoise(rgb_glow, generator=0)]),
              Compose([Compose([T.Compose([to_float])]), LatentNoise(rgb_glow, generator=0)]),
              # RandomOrder runs every step it holds, in some order: the conversion too
              Compose([T.RandomOrder([T.RandomHorizontalFlip(), to_float]), LatentNoise(rgb_glow, generator=0)])):
        x2, y2 = c.eval()(x8, y)  # was refused: "has none that converts these uint8 images"
        assert torch.equal(x2, to_float(x8)) and y2 is y


def test_eval_mode_runs_to_pure_tensor_as_training_does(rgb, rgb_glow):
    from torchvision import tv_tensors

    x, y = rgb
    c = Compose([T.ToPureTensor(), LatentNoise(rgb_glow, generator=0)])
    assert type(c.train()(tv_tensors.Image(x), y)[0]) is torch.Tensor
    x2, y2 = c.eval()(tv_tensors.Image(x), y)  # the validation images come out plain tensors too, not Images
    assert type(x2) is torch.Tensor and torch.equal(x2, x) and y2 is y


def test_a_nested_compose_runs_with_labels_and_model(rgb, rgb_glow):
    x, y = rgb
    net = TinyNet(channels=3)
    inner = Compose([LatentAdversarial(rgb_glow, steps=1, generator=0), T.MixUp(num_classes=10)])
    x2, y2 = Compose([T.RandomHorizontalFlip(), inner])(x, y, net)
    _check(x2, y2, x, soft=True)


def test_channels_last_stays_channels_last(rgb, rgb_glow):
    x, y = rgb
    xc = x.contiguous(memory_format=torch.channels_last)
    noise = LatentNoise(rgb_glow, generator=0)
    for t in (noise, Compose([noise, T.RandomHorizontalFlip()])):
        out, _ = t(xc, y)
        assert out.is_contiguous(memory_format=torch.channels_last)


def test_varmixup_then_torchvision_mixup_keeps_valid_soft_labels(rgb):
    x, y = rgb
    vae = tiny_vae(shape=(3, 16, 16))
    x2, y2 = Compose([VarMixup(vae, num_classes=10, generator=0), T.MixUp(num_classes=10)])(x, y)
    _check(x2, y2, x, soft=True)


def test_positions_in_the_model_slot_of_a_compose_of_pixel_steps_are_refused(rgb):
    x, y = rgb  # no step would read the model: the positions were ignored without a word
    with pytest.raises(TypeError, match=r"model must be the classifier .*; dataset positions go as index=idx"):
        Compose([T.RandomHorizontalFlip()])(x, y, torch.arange(len(x)))


def test_eval_mode_and_model_passing(rgb, rgb_glow):
    x, y = rgb
    c = Compose([LatentAdversarial(rgb_glow, steps=1, generator=0)])
    with pytest.raises(TypeError, match="model"):
        c(x, y)
    c.eval()
    x2, y2 = c(x, y)
    assert x2 is x and y2 is y
    assert not c.steps[0].training


def test_not_callable_is_refused():
    with pytest.raises(TypeError, match="callable"):
        Compose([3])


class _LabelMix:
    """Called as timm.data.Mixup is: ``x, y = mixup_fn(x, y)``."""

    def __call__(self, x, target):
        return x, target


class _LabelModule(torch.nn.Module):
    def forward(self, x, y):
        return x, y


def _label_mix_positional_only(x, target, /):
    return x, target


@pytest.mark.parametrize("step", [_LabelMix(), _LabelModule(), lambda x, y: (x, y), _label_mix_positional_only])
def test_a_step_that_also_takes_the_labels_is_refused_when_built(rgb, step):
    # Compose calls a plain callable as t(x): timm's Mixup failed at the first call with its own "missing 1 required
    # positional argument: 'target'", naming neither the step nor where it belongs
    with pytest.raises(TypeError, match=r"step 1 \((_LabelMix|_LabelModule|<lambda>|_label_mix_positional_only)\) "
                                        r"requires 2 arguments.*t\(x\)"
                       r".*outside the Compose"):
        Compose([T.RandomHorizontalFlip(), step])


@pytest.mark.parametrize("step", [lambda x, scale=1.0: x * scale, torch.Tensor.contiguous,  # a builtin: no signature
                                  lambda x, *args, **kwargs: x])  # a decorator's wrapper: *args, **kwargs not required
def test_a_callable_with_an_optional_second_argument_or_no_readable_signature_is_called_as_t_of_x(rgb, step):
    x, y = rgb
    x2, y2 = Compose([step])(x, y)
    assert torch.equal(x2, x) and y2 is y


@pytest.mark.parametrize("make", [lambda glow: LatentNoise(glow), lambda glow: ISDA(10),
                                  lambda glow: Compose([LatentNoise(glow)])])
def test_a_compiled_latent_step_is_refused_when_built(rgb_glow, make):
    # torch.compile(t) is an OptimizedModule: called as t(x), a LatentNoise's (x, y) pair was blamed on "a container
    # of one's own", and a compiled ISDA slipped past the check against label-mixing steps
    with pytest.raises(TypeError, match=r"step 1 is torch.compile\((LatentNoise|ISDA|Compose)\).*itself"):
        Compose([T.RandomHorizontalFlip(), torch.compile(make(rgb_glow), backend="eager")])


@pytest.mark.parametrize("where", [lambda t: [t], lambda t: [T.RandomHorizontalFlip(), T.RandomApply([t])]])
def test_latent_mixup_inference_is_refused_as_a_step_when_built(rgb_glow, where):
    """Audit 279: called as t(x), its (B, K) probabilities came out as the images, with the labels, silently."""
    predict = LatentMixupInference(TinyNet(channels=3), rgb_glow, torch.rand(4, 3, 16, 16), generator=0)
    with pytest.raises(TypeError, match=r"^LatentMixupInference (in RandomApply )?at step \d predicts, returning "
                                        r"\(B, K\) probabilities, not images: .* call it on the test images"):
        Compose(where(predict))


def test_compose_moves_and_casts_like_any_module(rgb_glow):
    c = Compose([LatentNoise(rgb_glow, eps=1.0), T.RandomHorizontalFlip()])
    assert c.to("cpu") is c and c.double() is c  # nn.Module._apply is not shadowed
    assert c.steps[0].codec.dtype == torch.float64  # and reaches the steps: its submodules, as eval() and state_dict
    assert c.float() is c and c.steps[0].codec.dtype == torch.float32
    assert not c.eval().steps[0].training and any(k.startswith("steps.0.") for k in c.state_dict())


def test_index_goes_to_the_first_step_only_later_steps_encode_what_they_get():
    from latent_transforms import LatentCache

    glow = tiny_glow()
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y, index = torch.arange(6) % 3, torch.arange(6)
    cache = LatentCache(glow, x, progress=False)
    lookups = []
    cache.register_forward_hook(lambda module, args, out: lookups.append(len(args[0])))
    first = LatentNoise(glow, eps=2.0, cache=cache, generator=0)
    second = LatentNoise(glow, eps=0.0, cache=cache, generator=1)
    out, _ = Compose([first, second])(x, y, index=index)
    assert lookups == [6]  # the first step looked its latents up, the second encoded its input
    step1, _ = LatentNoise(glow, eps=2.0, cache=cache, generator=0)(x, y, index=index)
    assert (step1 - x).abs().max() > 0.05
    torch.testing.assert_close(out, step1, atol=1e-3, rtol=0)  # eps=0 after step 1: step 1's images, re-encoded
    # a first step without a latent cache would drop the dataset positions: refused, in either mode (audit 362)
    for c in (Compose([T.RandomHorizontalFlip(), first]), Compose([T.RandomHorizontalFlip(), first]).eval()):
        with pytest.raises(ValueError, match=r"^index= goes to the first step, which must be a LatentTransform with a "
                                             r"latent cache; the first step is RandomHorizontalFlip$"):
            c(x, y, index=index)


def test_isda_inside_containers_with_label_mixing_is_refused():
    with pytest.raises(ValueError, match="ISDA .* needs class-index labels"):  # the usual torchvision recipe
        Compose([ISDA(10), T.RandomChoice([T.CutMix(num_classes=10), T.MixUp(num_classes=10)])])
    with pytest.raises(ValueError, match="ISDA .* needs class-index labels"):  # a nested Compose
        Compose([Compose([ISDA(10)]), T.MixUp(num_classes=10)])


def test_errors_that_are_not_about_the_images_keep_their_type_and_message(rgb, rgb_glow):
    x, y = rgb

    class Refuses(ValueError):
        pass

    class Net(torch.nn.Module):
        def forward(self, x):
            raise Refuses("the model's own error")

    c = Compose([T.RandomHorizontalFlip(), LatentAdversarial(rgb_glow, generator=0)])
    with pytest.raises(Refuses, match="^the model's own error$"):  # was a plain ValueError blaming the flip
        c(x, y, Net())

    def overshoot(x):
        return x * 1.02

    with pytest.raises(ValueError, match="on the output of step 0 \\(overshoot\\)") as info:
        Compose([overshoot, LatentNoise(rgb_glow, generator=0)])(x, y)
    assert info.traceback[-1].name == "_judge_images"  # the original traceback is kept (the image check raised)


def test_uint8_reaching_a_kornia_step_names_the_step_and_the_conversion(rgb, rgb_glow):
    x, y = rgb
    x8 = (x * 255).round().to(torch.uint8)
    for kornia_step in (K.RandomHorizontalFlip(), K.auto.RandAugment(n=2, m=10), K.RandomMixUpV2()):
        name = type(kornia_step).__name__  # was kornia's own TypeError, naming neither the step nor the fix
        with pytest.raises(ValueError, match=rf"^Compose step 1 \({name}\), on the output of step 0 "
                                             r"\(RandomHorizontalFlip\): x must be a float tensor.*uint8.*put "
                                             r"v2.ToDtype\(torch.float32, scale=True\) before this step$"):
            Compose([T.RandomHorizontalFlip(), kornia_step], num_classes=10)(x8, y)
        with pytest.raises(ValueError, match=rf"^x must be a float tensor.*uint8.*; in a Compose, put v2.ToDtype\("
                                             rf"torch.float32, scale=True\) first: step 0 \({name}\) takes float "
                                             r"images only$"):  # a kornia first step: at entry
            Compose([kornia_step, LatentNoise(rgb_glow, generator=0)], num_classes=10)(x8, y)


def test_uint8_reaching_a_latent_step_inside_a_torchvision_container_names_the_conversion(rgb, rgb_glow):
    # it had the bare transform's hint alone ("convert with x.float() / 255"), not where v2.ToDtype goes in a Compose
    x, y = rgb
    x8 = (x * 255).round().to(torch.uint8)
    noise = LatentNoise(rgb_glow, generator=0)
    with pytest.raises(ValueError, match=r"^x must be a float tensor.*uint8 images; in a Compose, put v2.ToDtype\("
                                         r"torch.float32, scale=True\) first: LatentNoise in Compose at step 0 takes "
                                         r"float images only$"):
        Compose([T.Compose([T.RandomHorizontalFlip(), noise])])(x8, y)
    with pytest.raises(ValueError, match=r"^Compose step 1 \(RandomApply\), on the output of step 0 "
                                         r"\(RandomHorizontalFlip\): x must be a float tensor.*uint8 images; in a "
                                         r"Compose, put v2.ToDtype\(torch.float32, scale=True\) before this step: "
                                         r"LatentNoise in RandomApply at step 1 takes float images only$"):
        Compose([T.RandomHorizontalFlip(), T.RandomApply([noise], p=1.0)])(x8, y)
    # a nested Compose gives its own hint, once: the outer one adds where it ran
    with pytest.raises(ValueError, match=r"^Compose step 1 \(Compose\), on the output of step 0 "
                                         r"\(RandomHorizontalFlip\): Compose step 1 \(LatentNoise\), .*uint8 images; "
                                         r"in a Compose, put v2.ToDtype\(torch.float32, scale=True\) before this step$"):
        Compose([T.RandomHorizontalFlip(), Compose([T.RandomHorizontalFlip(), noise])])(x8, y)
    # a container that converts them itself: its latent step's error about the size has no hint
    with pytest.raises(ValueError, match=r"got x of shape \(6, 3, 12, 12\).*docs/training.md\)$"):
        Compose([T.Compose([T.ToDtype(torch.float32, scale=True), T.Resize(12), noise])])(x8, y)


def test_every_value_error_on_an_earlier_steps_output_names_the_step(rgb, rgb_glow):
    x, y = rgb
    with pytest.raises(ValueError, match=r"^Compose step 1 \(LatentNoise\), on the output of step 0 "
                                         r"\(RandomResizedCrop\): this glow codec was trained on images of shape "
                                         r"\(3, 16, 16\) \(C, H, W\), got x of shape \(6, 3, 12, 12\); no registered codec "
                                         r"takes images of shape \(3, 12, 12\): resize or crop them to \(3, 16, 16\)") as info:
        Compose([T.RandomResizedCrop(12), LatentNoise(rgb_glow, generator=0)])(x, y)  # had no step prefix
    assert type(info.value) is ValueError

    class Refuses(ValueError):
        pass

    def refuse(x):
        raise Refuses("too small")

    with pytest.raises(Refuses, match=r"^Compose step 2 \(refuse\), on the output of step 1 \(RandomCrop\): "
                                      r"too small$"):  # the type and the message kept
        Compose([T.RandomHorizontalFlip(), T.RandomCrop(8), refuse])(x, y)
    x8 = (x * 255).round().to(torch.uint8)  # torchvision takes uint8: no ToDtype hint for its own errors
    with pytest.raises(ValueError, match=r"^Compose step 1 \(RandomCrop\), on the output of step 0 "
                                         r"\(RandomHorizontalFlip\): [^;]*larger than input image size[^;]*$"):
        Compose([T.RandomHorizontalFlip(), T.RandomCrop(32)])(x8, y)


def test_an_unlabelled_batch_goes_through_pixel_and_latent_steps_as_none(rgb, rgb_glow):
    x, y = rgb
    net = TinyNet(channels=3)

    def chain():  # v2.Lambda applies its function to every input: it must not be handed the None
        return Compose([T.RandomHorizontalFlip(), T.Lambda(lambda t: t * 0.5), LatentAdversarial(rgb_glow, generator=0),
                        K.RandomVerticalFlip(), K.AugmentationSequential(K.RandomHorizontalFlip()),
                        Compose([LatentNoise(rgb_glow, eps=1.0, generator=1)])])

    torch.manual_seed(0)  # torchvision and kornia steps draw from the global RNG
    x_labelled, _ = chain()(x, y, net)
    torch.manual_seed(0)
    x2, y2 = chain()(x, model=net)
    assert y2 is None and torch.equal(x2, x_labelled)


@pytest.mark.parametrize("make, where", [
    (lambda g: T.MixUp(num_classes=10), "MixUp at step 1"),
    (lambda g: K.RandomMixUpV2(), "RandomMixUpV2 at step 1"),
    (lambda g: VarMixup(tiny_vae(shape=(3, 16, 16)), num_classes=10), "VarMixup at step 1"),
    (lambda g: LatentAdversarial(g, target="true"), "LatentAdversarial at step 1"),
    (lambda g: T.RandomApply([T.MixUp(num_classes=10)], p=0.5), "MixUp in RandomApply at step 1"),
    (lambda g: T.RandomChoice([T.RandomHorizontalFlip(), T.CutMix(num_classes=10)]), "CutMix in RandomChoice at step 1"),
])
def test_an_unlabelled_batch_is_refused_up_front_by_steps_that_need_labels(rgb, rgb_glow, make, where):
    x, _ = rgb
    step = make(rgb_glow)
    for chain in (Compose([T.RandomHorizontalFlip(), step], num_classes=10),
                  Compose([T.RandomHorizontalFlip(), step], num_classes=10).eval()):
        with pytest.raises(ValueError, match=rf"y=None .* needs labels: {where}$"):
            chain(x, None, TinyNet(channels=3))


@pytest.mark.parametrize("container", [K.AugmentationSequential, K.ImageSequential])
def test_a_kornia_mix_inside_a_kornia_container_is_refused(container):
    # Compose calls a kornia container as t(x): its mix would have mixed the images and left the labels as they were
    with pytest.raises(ValueError, match="RandomMixUpV2 in .* at step 0: a kornia mix inside a kornia container"):
        Compose([container(K.RandomHorizontalFlip(), K.RandomMixUpV2())], num_classes=10)


@pytest.mark.parametrize("data_keys, what", [(["input", "mask"], "data_keys for mask besides the images"),
                                             (["input", "bbox_xyxy"], "data_keys for bbox_xyxy besides the images"),
                                             (None, r"data_keys=None \(a dict of inputs\)")])
def test_a_kornia_container_that_moves_masks_or_boxes_is_refused_when_built(rgb, rgb_glow, data_keys, what):
    """A segmentation pipeline's AugmentationSequential(..., data_keys=["input", "mask"]) as a step: Compose calls it
    as t(x), which reached kornia's AssertionError "The number of inputs must align with the number of data_keys" at
    the first call (in training only); one for the images alone is a step as ever."""
    sequence = K.AugmentationSequential(K.RandomHorizontalFlip(), data_keys=data_keys)
    with pytest.raises(ValueError, match=rf"^AugmentationSequential at step 0 has {what}, but Compose calls it as "
                                         rf"t\(x\), with the images alone; .*call it yourself before the Compose.*"
                                         rf"docs/composition.md#segmentation-masks-and-boxes\)$"):
        Compose([sequence, LatentNoise(rgb_glow)])
    x, _ = rgb
    x2, y2 = Compose([K.AugmentationSequential(K.RandomHorizontalFlip(), data_keys=["input"]), LatentNoise(rgb_glow)])(x)
    assert x2.shape == x.shape and y2 is None


@pytest.mark.parametrize("make, message", [
    # torchvision called LatentAdversarial as t(x, y): "needs the classifier: call t(x, y, model)", though it was given
    (lambda g: T.RandomApply([LatentAdversarial(g)], p=0.5),
     "LatentAdversarial in RandomApply at step 1: it needs the model, which a torchvision container does not pass on"),
    (lambda g: T.Compose([T.RandomHorizontalFlip(), ISDA(10)]), "ISDA in Compose at step 1: it needs the model"),
    (lambda g: T.RandomApply([Compose([LatentAdversarial(g)])]), "LatentAdversarial in RandomApply at step 1"),
    # labels came out (B,) on the batches RandomApply skipped and (B, 10) on the others
    (lambda g: T.RandomApply([VarMixup(tiny_vae(shape=(3, 16, 16)), num_classes=10)], p=0.5),
     "VarMixup in RandomApply at step 1: inside a torchvision container, the labels would come out soft"),
    (lambda g: K.AugmentationSequential(K.RandomHorizontalFlip(), LatentNoise(g)),
     "LatentNoise in AugmentationSequential at step 1: a kornia container calls what it holds as t\\(x\\)"),
])
def test_a_latent_step_a_container_would_call_wrongly_is_refused_when_built(rgb_glow, make, message):
    with pytest.raises(ValueError, match=message + ".*; make it a step of this Compose of its own"):
        Compose([T.RandomHorizontalFlip(), make(rgb_glow)], num_classes=10)


@pytest.mark.parametrize("labelled", [True, False])
@pytest.mark.parametrize("container", [lambda t: T.RandomApply([t], p=1.0), lambda t: T.RandomChoice([t]),
                                       lambda t: T.Compose([T.RandomHorizontalFlip(0.0), t])])
def test_a_latent_step_a_torchvision_container_calls_rightly_is_accepted(rgb, rgb_glow, container, labelled):
    # unlabelled, the container was called as t(x): LatentNoise's (x, None) pair went on as the images
    x, y = rgb
    chain = Compose([container(LatentNoise(rgb_glow, eps=0.5, generator=0)), T.RandomHorizontalFlip()])
    x2, y2 = chain(x, y if labelled else None, TinyNet(channels=3))
    assert isinstance(x2, torch.Tensor) and x2.shape == x.shape and not torch.equal(x2, x)
    assert torch.equal(y2, y) if labelled else y2 is None


def test_uint8_labels_are_not_told_to_convert_the_images(rgb, rgb_glow):
    """Only x's dtype error gets the Compose's ToDtype hint: uint8 class indices (numpy's) are the labels' fault, and
    a first torchvision step takes uint8 images (the hint said it "takes float images only")."""
    x, y = rgb
    x8 = (x * 255).round().to(torch.uint8)
    augment = Compose([T.RandomHorizontalFlip(), T.ToDtype(torch.float32, scale=True),
                       LatentNoise(rgb_glow, generator=0)], num_classes=10)
    with pytest.raises(ValueError, match=r"^y class indices must be int64, got dtype torch.uint8; convert with "
                                         r"y.long\(\)$"):
        augment(x8, y.to(torch.uint8))


@pytest.mark.parametrize("out, got", [(lambda x, y: (x, y, "extra"), "a tuple of 3"),
                                      (lambda x, y: ({"image": x}, y), "a tuple of 2")])  # a pair, not of images
def test_a_labelled_step_that_returns_more_than_images_and_labels_is_named(rgb, out, got):
    """A v2 transform of one's own given (x, y) must give back a pair: a third item is named, not unpacked."""
    class WithExtra(T.Transform):
        def forward(self, x, y):
            return out(x, y)

    x, y = rgb
    with pytest.raises(TypeError, match=rf"WithExtra at step 0 returned {got}, not \(images, labels\)"):
        Compose([WithExtra()])(x, y)


def test_a_latent_step_in_nn_sequential_is_refused_when_built(rgb_glow):
    # nn.Sequential handed LatentNoise's (x, y) pair to the next module as its images
    with pytest.raises(ValueError, match="LatentNoise in Sequential at step 0: nn.Sequential calls what it holds as "
                                         r"t\(x\) .* an \(x, y\) pair; make it a step of this Compose of its own"):
        Compose([torch.nn.Sequential(LatentNoise(rgb_glow), torch.nn.Identity())])


def test_a_step_that_returns_something_else_than_images_is_named(rgb):
    x, y = rgb
    # the step's own output: the previous step is not blamed ("Compose step 1 (...), on the output of step 0")
    with pytest.raises(TypeError, match="^<lambda> at step 1 returned a tuple of 2, not images"):
        Compose([T.RandomHorizontalFlip(), lambda x: (x, None)])(x, y)


@pytest.mark.parametrize("mix", [lambda: K.RandomMixUpV2(), lambda: VarMixup(tiny_vae(shape=(3, 16, 16)),
                                                                             num_classes=10), lambda: None],
                         ids=["kornia", "latent", "last"])
def test_a_step_of_ones_own_that_drops_the_labels_is_named(rgb, mix):
    """Before a kornia mix was a bare AssertionError (audit 263), before VarMixup its "needs labels", and as the last
    step the batch came back without its labels, silently."""
    class DropLabels(T.Transform):
        def forward(self, x, y):
            return x, None

    mix = mix()
    with pytest.raises(ValueError, match=r"^DropLabels at step 0 returned labels NoneType for the labels it was "
                                         r"given: a step must return the labels \(or, for a label mix, their mix\), "
                                         r"or the batch loses them$"):
        Compose([DropLabels(), *([mix] if mix is not None else [])], num_classes=10)(*rgb)


def test_a_step_of_ones_own_that_returns_labels_of_another_type_is_named(rgb):
    """Mutation round 38: not only None: labels as a list came back as they were, no tensor."""
    class ListLabels(T.Transform):
        def forward(self, x, y):
            return x, y.tolist()

    with pytest.raises(ValueError, match=r"^ListLabels at step 0 returned labels list for the labels it was given"):
        Compose([ListLabels()], num_classes=10)(*rgb)


def test_a_step_that_changes_the_batch_size_is_named(rgb):
    """Found by fuzzing (audit 167): a last plain step returning x[:1] came back as (1 image, 4 labels) without a
    word, and a batch doubled before a kornia mix gave kornia's IndexError ("index out of range in self")."""
    x, y = rgb

    class Halves(T.Transform):  # a labelled step that drops the labels' rows as well as the images'
        def forward(self, x, y):
            return x, y[:3]

    for steps, num_classes, got in (
            ([T.RandomHorizontalFlip(), lambda x: x[:1]], None, "<lambda> at step 1 returned 1 images"),
            ([lambda x: torch.cat([x, x]), K.RandomMixUpV2()], 10, "<lambda> at step 0 returned 12 images"),
            ([lambda x: x.sum()], None, "<lambda> at step 0 returned a 0-d tensor"),
            ([Halves()], None, "Halves at step 0 returned 3 labels")):
        with pytest.raises(ValueError, match=rf"^{got} for a batch of 6: a step must keep the batch's samples, or "
                                             r"images and labels no longer match$"):
            Compose(steps, num_classes=num_classes)(x, y)
    x2, _ = Compose([lambda x: x.flatten(1)])(x, y)  # any other shape keeps the batch
    assert x2.shape == (6, 3 * 16 * 16)


def test_the_classifier_as_a_step_is_named(rgb):
    """Audit 416: Compose([classifier])(x, y) returned the classifier's (B, K) logits as the batch's images, without a
    word (only the batch size was checked); a reshape (no trainable parameters) and a learned step that keeps images
    pass."""
    x, y = rgb
    torch.manual_seed(0)
    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 10))
    for steps, at in (([classifier], 0), ([T.RandomHorizontalFlip(), classifier], 1)):
        with pytest.raises(ValueError, match=rf"^Sequential at step {at} returned a \(6, 10\) tensor that its "
                                             r"trainable parameters computed, not \(B, C, H, W\) images: the "
                                             r"classifier as a step\? .* then model\(x2\)$"):
            Compose(steps)(x, y)
        for no_grad in (torch.no_grad, torch.inference_mode):  # audit 436: the logits have no history there
            with no_grad(), pytest.raises(ValueError, match=rf"^Sequential at step {at} returned a \(6, 10\) tensor"):
                Compose(steps)(x, y)
        with torch.no_grad(), pytest.raises(ValueError, match=rf"^Sequential at step {at} returned a \(6, 10\) "):
            Compose(steps)(x.clone().requires_grad_(), y)  # audit 439: passed (x's history, which no_grad drops)
    assert Compose([torch.nn.Flatten()])(x, y)[0].shape == (6, 3 * 16 * 16)
    with torch.no_grad():  # a reshape, and a frozen step of others' parameters, pass there too
        assert Compose([torch.nn.Flatten()])(x, y)[0].shape == (6, 3 * 16 * 16)
        frozen = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 10)).requires_grad_(False)
        assert Compose([frozen])(x, y)[0].shape == (6, 10)
    assert Compose([torch.nn.Flatten()])(x.clone().requires_grad_(), y)[0].shape == (6, 3 * 16 * 16)  # x's history
    # a chain that takes any tensor (its latent steps ISDA, which never reads x) may make it another: ids embedded
    tokens, model = torch.randint(0, 20, (6, 5)), torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(5 * 4, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ISDA's strength still 0: no set_epoch
        assert Compose([torch.nn.Embedding(20, 4), ISDA(10)])(tokens, y, model)[0].shape == (6, 5, 4)
    assert Compose([torch.nn.Conv2d(3, 3, 1)])(x, y)[0].shape == x.shape


def test_an_unlabelled_torchvision_container_of_a_latent_step_that_changes_the_batch_size_is_named(rgb, rgb_glow):
    # (mutation audit 177) the container given (x, None) is checked as the other steps are
    class Halves(T.Transform):
        def forward(self, x, y):
            return x[:3], y

    with pytest.raises(ValueError, match=r"^Compose at step 0 returned 3 images for a batch of 6: a step must keep"):
        Compose([T.Compose([LatentNoise(rgb_glow, generator=0), Halves()])])(rgb[0], None)


def test_kornia_random_jigsaw_keeps_the_labels(rgb):
    # RandomJigsaw is a kornia mix base but moves patches within each image: Compose took it for a label mix (and
    # kornia's own call with a "class" key raised NotImplementedError)
    x, y = rgb
    chain = Compose([K.RandomJigsaw(grid=(2, 2), p=1.0), K.RandomHorizontalFlip()])
    x2, y2 = chain(x, y)
    assert torch.equal(y2, y) and x2.shape == x.shape and not torch.equal(x2, x)
    assert torch.allclose(x2.sum((1, 2, 3)), x.sum((1, 2, 3)), atol=1e-3)  # the same pixels, moved


_NO_PATCHMIX = pytest.mark.skipif(not hasattr(K, "PatchMix"), reason="kornia < 0.9 has no PatchMix")


@pytest.mark.parametrize("mix", [lambda: K.RandomMosaic((16, 16)),
                                 pytest.param(lambda: K.PatchMix(patch_size=4), marks=_NO_PATCHMIX),
                                 pytest.param(lambda: T.RandomApply([K.PatchMix(patch_size=4)]), marks=_NO_PATCHMIX)])
def test_a_kornia_mix_whose_labels_compose_cannot_follow_is_refused_when_built(mix):
    with pytest.raises(ValueError, match=r"(Mosaic|PatchMix).* at step 1: a kornia mix whose labels Compose cannot "
                                         r"follow .* RandomMixUpV2/RandomCutMixV2"):
        Compose([T.RandomHorizontalFlip(), mix()], num_classes=10)


def test_a_step_with_other_num_classes_is_refused_when_built(rgb_glow):
    """Compose(num_classes=10) around a step with num_classes=5 was built, then failed at the first label >= 5."""
    vae = tiny_vae(shape=(3, 16, 16))
    with pytest.raises(ValueError, match=r"VarMixup at step 1 has num_classes=5, but this Compose num_classes=10"):
        Compose([T.RandomHorizontalFlip(), VarMixup(vae, num_classes=5)], num_classes=10)
    with pytest.raises(ValueError, match=r"MixUp in RandomChoice at step 0 has num_classes=5"):
        Compose([T.RandomChoice([T.MixUp(num_classes=5), T.CutMix(num_classes=5)])], num_classes=10)
    with pytest.raises(ValueError, match=r"Compose at step 0 has num_classes=5"):
        Compose([Compose([LatentNoise(rgb_glow)], num_classes=5)], num_classes=10)
    Compose([VarMixup(vae, num_classes=10), T.MixUp(num_classes=10)], num_classes=10)  # agreeing, or unset
    Compose([VarMixup(vae, num_classes=5)])


def test_without_num_classes_the_steps_own_is_checked_on_every_call(rgb_glow):
    # labels out of range reached torchvision MixUp's RuntimeError ("Class values must be smaller than num_classes")
    x = torch.rand(4, 3, 16, 16)
    t = Compose([T.MixUp(num_classes=10), LatentNoise(rgb_glow)])
    assert t.num_classes == 10
    with pytest.raises(ValueError, match=r"class index 12, out of range for num_classes=10"):
        t(x, torch.tensor([0, 1, 2, 12]))
    vae = tiny_vae(shape=(3, 16, 16))
    with pytest.raises(ValueError, match=r"MixUp at step 1 has num_classes=5, but VarMixup at step 0 has "
                                         r"num_classes=10: the steps must agree"):
        Compose([VarMixup(vae, num_classes=10), T.MixUp(num_classes=5)])
    # a kornia mix takes its classes from a step that declares them
    _, y2 = Compose([K.RandomMixUpV2(p=1.0), VarMixup(vae, num_classes=10)])(x, torch.tensor([0, 1, 2, 3]))
    assert y2.shape == (4, 10)


def test_steps_are_reached_by_index_and_iteration_and_num_classes_is_printed(rgb_glow):
    noise, flip = LatentNoise(rgb_glow), K.RandomHorizontalFlip()
    t = Compose([noise, flip], num_classes=10)
    assert len(t) == 2 and t[0] is noise and t[-1] is flip and list(t) == [noise, flip]
    assert repr(t) == f"Compose([\n  {noise!r},\n  {flip!r},\n], num_classes=10)"  # as built (audit 298)
    assert repr(Compose([torch.fliplr])) == f"Compose([\n  {torch.fliplr!r},\n])"  # a plain callable step, by its repr
    assert repr(Compose([torch.fliplr])[0]) == f"_Callable({torch.fliplr!r})"  # the step itself (its ModuleList's)
    assert repr(Compose([])) == "Compose([])"  # mutation round 42: as built, no empty line
    # a nested Compose's lines one level further in, its closing bracket too
    assert repr(Compose([Compose([torch.fliplr])])) == f"Compose([\n  Compose([\n    {torch.fliplr!r},\n  ]),\n])"
    with pytest.raises(TypeError, match="positional"):
        Compose([noise], 10)  # keyword-only, as every option (docs/api.md)


def test_steps_changed_after_building_are_refused_naming_the_fix(rgb, rgb_glow):
    """The checks made when a Compose is built (ISDA beside a label mix, num_classes, conversions) held for its first
    steps only: a step appended later ran unchecked (ISDA after MixUp got soft labels)."""
    x, y = rgb
    isda = ISDA(10)
    for change in (lambda t: t.steps.append(isda), lambda t: t.steps.insert(0, isda),
                   lambda t: t.steps.__setitem__(0, isda), lambda t: t.steps.__delitem__(0)):
        t = Compose([T.MixUp(num_classes=10), T.RandomHorizontalFlip()])
        t(x, y)
        change(t)
        for mode in (t.train, t.eval):
            mode()
            with pytest.raises(RuntimeError, match=r"this Compose's steps were changed after it was built .* build a "
                                                   r"new one, e.g. Compose\(\[\*t, step\], num_classes="):
                t(x, y, TinyNet())
    t = Compose([T.MixUp(num_classes=10)])
    t.steps[0] = t.steps[0]  # the same step back: nothing changed
    copied = copy.deepcopy(t)  # a copy's steps are its own, as built
    assert copied(x, y)[1].shape == t(x, y)[1].shape == (len(x), 10)


@STRENGTH_ZERO_EXPECTED
def test_a_step_whose_classes_changed_after_building_is_refused_naming_the_fix(rgb):
    """Continual-learning audit 199: after ISDA.grow(10) for a classifier grown from 4 classes (or num_classes set on
    a VarMixup), a Compose built with the step's 4 classes refused the new task's labels as out of range for
    num_classes=4, which its steps no longer had (or, with the step first, passed them on with its own 4 in its
    repr)."""
    x, y = rgb
    net = TinyNet(channels=3, num_classes=4)
    isda = ISDA(4)
    for t in (Compose([T.RandomHorizontalFlip(), isda]), Compose([isda])):
        t(x, y % 4, net)
        net(x)
    isda.grow(10)
    net.fc = torch.nn.Linear(32, 10)
    for t in (Compose([T.RandomHorizontalFlip(), isda]), Compose([isda], num_classes=10)):
        t(x, y, net)
        net(x)
    mix = VarMixup(tiny_vae(shape=(3, 16, 16)), num_classes=4)
    for t, step in ((Compose([T.RandomHorizontalFlip(), isda]), isda), (Compose([mix]), mix)):
        if step is isda:
            isda.grow(12)
            net.fc = torch.nn.Linear(32, 12)
        else:
            mix.num_classes = 12
        with pytest.raises(RuntimeError, match=r"at step [01] has num_classes=12, but had (4|10) when this Compose was "
                                               r"built, whose checks use num_classes=(4|10); .*build a new one: "
                                               r"Compose\(list\(t\), num_classes=12\)"):
            t(x, y, net)
        assert Compose(list(t), num_classes=12)(x, y, net)[0].shape == x.shape
        net(x)


def test_a_single_step_or_a_non_list_is_refused_naming_the_fix(rgb_glow):
    """Compose(t) said "'LatentNoise' object is not iterable"; a bad step did not say which."""
    with pytest.raises(TypeError, match=r"transforms must be a list of steps, got LatentNoise; for one step: "
                                        r"Compose\(\[t\]\)"):
        Compose(LatentNoise(rgb_glow))
    with pytest.raises(TypeError, match=r"got Sequential; for one step: Compose\(\[t\]\)"):
        Compose(torch.nn.Sequential(T.RandomHorizontalFlip()))  # iterable, but one callable: not taken for its steps
    for bad in (None, "flip"):
        with pytest.raises(TypeError, match="transforms must be a list of steps"):
            Compose(bad)
    with pytest.raises(TypeError, match="got int at step 1"):
        Compose([T.RandomHorizontalFlip(), 3])
    assert len(Compose(iter([T.RandomHorizontalFlip()]))) == 1  # any iterable of steps


@pytest.mark.parametrize("mixer", [lambda: VarMixup(tiny_vae(shape=(3, 16, 16)), p=1.0, generator=0),
                                   lambda: T.MixUp(), lambda: T.RandomChoice([T.MixUp(), T.CutMix()])])
def test_a_label_mix_without_num_classes_gets_labels_made_soft_with_the_composes(rgb, mixer):
    x, y = rgb  # Compose(num_classes=10) was accepted, then its mix failed asking for num_classes
    x2, y2 = Compose([T.RandomHorizontalFlip(), mixer()], num_classes=10)(x, y)
    assert y2.shape == (6, 10) and y2.dtype == torch.float32 and torch.allclose(y2.sum(1), torch.ones(6))
    soft = torch.nn.functional.one_hot(y, 10).float()
    assert torch.equal(Compose([mixer()], num_classes=10)(x, soft)[1].sum(1), soft.sum(1))  # soft labels: as given


@pytest.mark.parametrize("floats_only, name", [(lambda: T.MixUp(num_classes=10), "MixUp")])
def test_torchvision_steps_taking_floats_only_refuse_uint8_naming_the_step_and_the_conversion(rgb, floats_only, name):
    # MixUp: was torch's "result type Float can't be cast to ... Byte", first step or not (Normalize, audit 279, is
    # refused as a step since audit 417)
    x, y = rgb
    x8 = (x * 255).round().to(torch.uint8)
    with pytest.raises(ValueError, match=rf"^Compose step 1 \({name}\), on the output of step 0 "
                                         rf"\(RandomHorizontalFlip\): x must be a float tensor for {name} .*uint8; in a "
                                         rf"Compose, put v2.ToDtype\(torch.float32, scale=True\) before this step$"):
        Compose([T.RandomHorizontalFlip(), floats_only()])(x8, y)
    for mode in ("train", "eval"):  # a first one: at entry
        with pytest.raises(ValueError, match=rf"^x must be a float tensor .* uint8.*step 0 \({name}\) takes float"):
            getattr(Compose([floats_only(), T.ToDtype(torch.float32, scale=True)]), mode)()(x8, y)
    x2, y2 = Compose([T.CutMix(num_classes=10), T.ToDtype(torch.float32, scale=True)])(x8, y)  # CutMix takes uint8
    assert x2.dtype == torch.float32 and y2.shape == (6, 10)


def test_a_steps_own_setting_or_model_error_does_not_blame_the_previous_step(rgb):
    x, y = rgb
    net = TinyNet(channels=3)
    flip = T.RandomHorizontalFlip()
    over_two_gpus = torch.nn.DataParallel(net)
    over_two_gpus.device_ids = [0, 1]  # as built on a machine with two GPUs: refused by ISDA
    with pytest.raises(ValueError, match="^ISDA does not support nn.DataParallel"):  # "on the output of step 0" was
        Compose([flip, ISDA(net.fc.in_features, 10)])(x, y, over_two_gpus)  # in front of it
    with pytest.raises(ValueError, match="^TinyNet has no submodule 'head'"):
        Compose([flip, ISDA(net.fc.in_features, 10, layer="head")])(x, y, net)
    with pytest.raises(ValueError, match="^VarMixup mixes labels: pass num_classes"):
        Compose([flip, VarMixup(tiny_vae(shape=(3, 16, 16)), generator=0)])(x, y)


def test_out_of_range_labels_are_refused_by_a_first_latent_step_with_the_composes_classes(rgb, rgb_glow):
    x, y = rgb
    bad = y.clone()
    bad[3] = 12
    noise = LatentNoise(rgb_glow, generator=0)
    # MixUp's classes with a first latent step: torchvision's RuntimeError at step 1 (unchecked before)
    with pytest.raises(ValueError, match=r"^y has class index 12, out of range for num_classes=10"):
        Compose([noise, T.MixUp(num_classes=10)])(x, bad)
    # a later VarMixup's: its check at step 1 blamed step 0 ("on the output of step 0 (LatentNoise)")
    with pytest.raises(ValueError, match=r"^y has class index 12, out of range for num_classes=10"):
        Compose([noise, VarMixup(tiny_vae(shape=(3, 16, 16)), num_classes=10, generator=1)])(x, bad)
    with pytest.raises(ValueError, match=r"^y has class index 12, out of range for num_classes=10"):
        Compose([noise, T.RandomHorizontalFlip()], num_classes=10)(x, bad)
    x2, y2 = Compose([noise, T.RandomHorizontalFlip()], num_classes=13)(x, bad)  # in range: through, as given
    assert torch.equal(y2, bad)


def test_a_composes_classes_do_not_reach_its_step_called_on_its_own_after_it(rgb, rgb_glow):
    x, y = rgb
    noise = LatentNoise(rgb_glow, generator=0)
    Compose([noise], num_classes=10)(x, y)
    bad = y.clone()
    bad[3] = 12
    assert noise(x, bad)[1] is bad  # on its own the step knows no classes: any class index passes


@pytest.mark.filterwarnings("ignore:RandomCutMixV2 currently uses the old")
def test_a_kornia_cutmix_whose_num_mix_was_changed_after_the_compose_was_built_is_refused_at_the_call(rgb):
    x, y = rgb
    cutmix = K.RandomCutMixV2(p=1.0)
    c = Compose([cutmix], num_classes=10)
    cutmix._param_generator.num_mix = 2  # after the check made when built: the labels of its first box alone were used
    with pytest.raises(ValueError, match="^RandomCutMixV2 with num_mix=2: overlapping boxes make its labels ambiguous"):
        c(x, y)


def test_a_run_resumed_as_the_quickstart_says_ends_with_the_weights_of_the_uninterrupted_one(tmp_path):
    """docs/quickstart.md (Checkpoints and resuming): model, optimizer, ISDA's state_dict and the generators' states
    saved mid-run; everything built again and loaded: the same weights, bit for bit, as a run never stopped."""
    data = torch.Generator().manual_seed(5)
    batches = [(torch.rand(8, 1, 8, 8, generator=data), torch.randint(0, 4, (8,), generator=data)) for _ in range(4)]

    def build():
        torch.manual_seed(0)
        model, g = TinyNet(num_classes=4), torch.Generator().manual_seed(0)
        isda = ISDA(num_classes=4)
        isda.set_progress(0.5)
        augment = Compose([T.RandomHorizontalFlip(), LatentNoise(tiny_glow(), eps=0.5, generator=g), isda])
        return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), isda, augment, g

    model, optimizer, isda, augment, g = build()
    train_steps(model, optimizer, augment, batches)
    uninterrupted = [p.detach().clone() for p in model.parameters()]

    model, optimizer, isda, augment, g = build()
    train_steps(model, optimizer, augment, batches[:2])
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "isda": isda.state_dict(),
                "augment_rng": g.get_state(), "torch_rng": torch.get_rng_state()}, tmp_path / "checkpoint.pt")
    model, optimizer, isda, augment, g = build()  # a new process
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    isda.load_state_dict(checkpoint["isda"])
    g.set_state(checkpoint["augment_rng"])
    torch.set_rng_state(checkpoint["torch_rng"])
    train_steps(model, optimizer, augment, batches[2:])
    assert all(torch.equal(a, p) for a, p in zip(uninterrupted, model.parameters()))
    assert isda.estimator.count.sum() == 32  # the statistics carried the first two batches over the stop


@pytest.mark.parametrize("kind", ["noise", "adversarial", "varmixup", "isda", "varmixup+adversarial"])
def test_each_method_resumed_from_its_saved_state_ends_with_the_uninterrupted_weights(tmp_path, kind):
    """Audit 445 (long runs): every method alone, and a Compose of two sharing one generator, stopped half-way and
    resumed in new objects from what the quickstart saves (model, optimizer, the transform's state_dict, the
    generator's state) trains to the weights of the run never stopped, bit for bit; ISDA with set_epoch each epoch."""
    data = torch.Generator().manual_seed(5)
    batches = [(torch.rand(8, 1, 8, 8, generator=data), torch.randint(0, 4, (8,), generator=data)) for _ in range(4)]
    glow, vae = tiny_glow(), tiny_vae()

    def build():
        torch.manual_seed(0)
        model, g = TinyNet(num_classes=4), torch.Generator().manual_seed(0)
        isda = ISDA(num_classes=4, generator=g)
        augment = {"noise": LatentNoise(glow, eps=0.5, p=0.5, generator=g),
                   "adversarial": LatentAdversarial(glow, steps=2, step_size=0.5, p=0.7, generator=g),
                   "varmixup": VarMixup(vae, num_classes=4, p=0.5, generator=g), "isda": isda,
                   "varmixup+adversarial": Compose([VarMixup(vae, p=0.5, generator=g),
                                                    LatentAdversarial(glow, steps=1, generator=g)], num_classes=4),
                   }[kind]
        return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), isda, augment, g

    def train(model, optimizer, isda, augment, steps):
        for step in steps:
            isda.set_epoch(step // 2, 2)  # two batches an epoch
            train_steps(model, optimizer, augment, batches[step:step + 1])

    model, optimizer, isda, augment, g = build()
    train(model, optimizer, isda, augment, range(4))
    uninterrupted = [t.clone() for t in model.state_dict().values()]  # BatchNorm's statistics too

    model, optimizer, isda, augment, g = build()
    train(model, optimizer, isda, augment, range(2))
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "augment": augment.state_dict(),
                "augment_rng": g.get_state()}, tmp_path / "checkpoint.pt")
    model, optimizer, isda, augment, g = build()  # a new process
    torch.manual_seed(1)  # whose global stream is elsewhere: nothing here draws from it
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    augment.load_state_dict(checkpoint["augment"])
    g.set_state(checkpoint["augment_rng"])
    train(model, optimizer, isda, augment, range(2, 4))
    assert all(torch.equal(a, b) for a, b in zip(uninterrupted, model.state_dict().values()))
    if kind == "isda":
        assert isda.estimator.count.sum() == 32 and isda.lam == isda.lambda0 / 2


def test_an_empty_batch_passes_through_every_kind_of_step(rgb, rgb_glow):
    # refused ("x is an empty batch") where torchvision's and kornia's steps pass it: under DDP a rank's empty batch
    # before ISDA left the other ranks waiting in its statistics' gather
    x, y = rgb
    net = TinyNet(3)
    isda = ISDA(10)
    isda.set_progress(1.0)
    pipe = Compose([T.RandomHorizontalFlip(), LatentNoise(rgb_glow), K.RandomHorizontalFlip(),
                    LatentAdversarial(rgb_glow, steps=1), isda], num_classes=10)
    x0, y0 = pipe(x[:0], y[:0], net)
    assert x0.shape == (0, *x.shape[1:]) and y0.shape == (0,) and y0.dtype == torch.int64
    net(x0)  # the hook ISDA armed fires on no features, and updates nothing
    assert int(isda.estimator.count.sum()) == 0 and isda.stats["seen"] == 0
    vae = tiny_vae(shape=(3, 16, 16))
    mixing = Compose([T.RandAugment(), T.ToDtype(torch.float32, scale=True), VarMixup(vae, num_classes=10),
                      T.MixUp(num_classes=10)])
    x8 = (x[:0] * 255).to(torch.uint8)
    for mode in (mixing.train(), mixing.eval()):
        xm, ym = mode(x8, y[:0])
        assert xm.shape == (0, *x.shape[1:]) and xm.dtype == torch.float32
        assert ym.shape == ((0, 10) if mode.training else (0,))


@pytest.mark.parametrize("mix", [K.RandomMixUpV2, K.RandomCutMixV2])
@pytest.mark.filterwarnings("ignore:RandomCutMixV2 currently uses the old")
def test_an_empty_batch_passes_through_a_kornia_mix(rgb, mix):
    # kornia's RandomCutMixV2 raised its own KeyError 'image_shape' on an empty batch, which its MixUp passes
    x, y = rgb
    x0, y0 = Compose([K.RandomHorizontalFlip(), mix()], num_classes=10)(x[:0], y[:0])
    assert x0.shape == (0, *x.shape[1:]) and y0.shape == (0, 10) and y0.dtype == torch.float32


@pytest.mark.parametrize("make, where", [
    (lambda glow, vae: [T.RandomHorizontalFlip(), VarMixup(vae, num_classes=10).eval()], "VarMixup at step 1"),
    (lambda glow, vae: [LatentNoise(glow).eval(), K.RandomHorizontalFlip()], "LatentNoise at step 0"),
    (lambda glow, vae: [T.RandomApply([LatentNoise(glow).eval()])], "LatentNoise in RandomApply at step 0"),
    (lambda glow, vae: [Compose([LatentNoise(glow)]).eval()], "Compose at step 0"),
])
def test_a_training_compose_warns_once_of_a_step_left_in_eval_mode(rgb, rgb_codecs, make, where):
    # a step in eval() mode is the identity: in a training Compose it augmented nothing, a label mix left the labels
    # class indices (rule 2 says soft from there on), and no warning came without a training model
    x, y = rgb
    augment = Compose(make(*rgb_codecs), num_classes=10)
    with pytest.warns(UserWarning, match=rf"^{where} is in eval\(\) mode, where it returns its inputs unchanged, "
                                         rf"but the Compose holding it is training") as record:
        augment(x, y)
    assert record[0].filename == __file__  # the caller's line
    with warnings.catch_warnings():
        # the library's own warnings (kornia 0.7's DeprecationWarning from torch >= 2.4 is none of them)
        warnings.simplefilter("error", UserWarning)
        augment(x, y)  # once per Compose
        augment.train()(x, y)  # train() sets the steps too
    assert augment.train()(x, y)[1].ndim == (2 if "VarMixup" in where else 1)
    with pytest.warns(UserWarning, match=LEFT_IN_EVAL) as record:  # a training model: one warning, not two
        Compose(make(*rgb_codecs), num_classes=10)(x, y, TinyNet(3))
    assert len([w for w in record if re.match(LEFT_IN_EVAL, str(w.message))]) == 1


def test_a_training_compose_names_every_step_left_in_eval_mode_in_its_one_warning(rgb, rgb_codecs):
    # the first step left in eval() mode is the subject, the others follow in brackets: "as is" one, "as are" several
    (x, y), (glow, vae) = rgb, rgb_codecs
    for steps, others in (
            ([LatentNoise(glow).eval(), VarMixup(vae).eval()], "as is VarMixup at step 1"),
            ([LatentNoise(glow).eval(), T.RandomApply([LatentNoise(glow).eval()]), VarMixup(vae).eval()],
             "as are LatentNoise in RandomApply at step 1, VarMixup at step 2")):
        with pytest.warns(UserWarning, match=rf"^LatentNoise at step 0 \({others}\) is in eval\(\) mode, where it "
                                             rf"returns its inputs unchanged") as record:
            Compose(steps, num_classes=10)(x, y)
        assert len(record) == 1


def test_latent_steps_seeded_with_the_same_int_warn_when_built(rgb, rgb_codecs):
    # two steps of one Compose given the same int seed drew the same stream: with p=0.5 each, the same rows were
    # selected by both and the others by neither, silently
    (x, y), (glow, vae) = rgb, rgb_codecs
    with pytest.warns(UserWarning, match=r"^LatentNoise at step 0, LatentNoise in RandomApply at step 2 and VarMixup "
                                         r"at step 3 are seeded with the same int, generator=0: they draw the same "
                                         r"stream") as record:
        Compose([LatentNoise(glow, p=0.5, generator=0), T.RandomHorizontalFlip(),
                 T.RandomApply([LatentNoise(glow, generator=1), LatentNoise(glow, generator=0)], p=0.0),
                 VarMixup(vae, p=0.5, generator=0)], num_classes=10)
    assert len(record) == 1 and record[0].filename == __file__
    with pytest.warns(UserWarning, match=r"^LatentNoise at step 0 and LatentNoise at step 1 are seeded with the same"):
        augment = Compose([LatentNoise(glow, p=0.5, generator=0), LatentNoise(glow, p=0.5, generator=0)])
    augment(x, y)
    assert torch.equal(augment[0].last_params["selected"], augment[1].last_params["selected"])  # why it warns
    with pytest.warns(UserWarning, match=r"^LatentNoise at step 0 and ISDA at step 1 are seeded with the same int"):
        Compose([LatentNoise(glow, generator=0), ISDA(10, p=0.5, generator=0)])  # ISDA draws its p selection
    shared, noise = torch.Generator().manual_seed(0), LatentNoise(glow, p=0.5, generator=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for steps in ([LatentNoise(glow, generator=0), LatentNoise(glow, generator=1), LatentNoise(glow)],
                      [LatentNoise(glow, generator=shared), LatentNoise(glow, generator=shared)], [noise, noise],
                      [LatentNoise(glow, generator=0), ISDA(10, generator=0)]):  # ISDA at p=1 draws nothing
            Compose(steps)  # seeds of their own, one torch.Generator, one step twice: a stream each draw continues


_FUZZ_GLOW, _FUZZ_VAE = tiny_glow(), tiny_vae()
_FUZZ_STEPS = {
    "LatentNoise": lambda: LatentNoise(_FUZZ_GLOW, eps=1.0, p=0.5, generator=0),
    "VarMixup": lambda: VarMixup(_FUZZ_VAE, p=0.5, generator=0),  # with the Compose's num_classes
    "v2 flip": lambda: T.RandomHorizontalFlip(),
    "v2 MixUp": lambda: T.MixUp(num_classes=10),
    "kornia flip": lambda: K.RandomHorizontalFlip(),
    "x -> x": lambda: lambda x: x.flip(-2),
}
_FUZZ_BREAKING = {  # steps that return something else than the batch's images
    "x -> x[:1]": lambda x: x[:1], "x -> 2B images": lambda x: torch.cat([x, x]), "x -> (x, None)": lambda x: (x, None),
    "x -> 0-d": lambda x: x.mean(),
}


@pytest.mark.filterwarnings("ignore:.* seeded with the same int:UserWarning")  # the factories seed every step 0
@settings(max_examples=25)
@given(names=st.lists(st.sampled_from(sorted(_FUZZ_STEPS)), min_size=1, max_size=4), soft=st.booleans(),
       breaking=st.none() | st.tuples(st.sampled_from(sorted(_FUZZ_BREAKING)), st.integers(0, 4)))
def test_any_chain_of_steps_keeps_the_batch_or_names_the_step_that_broke_it(names, soft, breaking):
    """Audit 167's fuzzing of Compose, kept small: library, torchvision, kornia and plain steps in any order give
    x's shape and dtype with labels of the batch (soft ones summing to 1), or, when a step returns something else
    than the batch's images (also as the last step), an error naming that step."""
    g = torch.Generator().manual_seed(len(names))
    x = torch.rand(4, 1, 8, 8, generator=g)
    y = torch.softmax(torch.randn(4, 10, generator=g), 1) if soft else torch.randint(0, 10, (4,), generator=g)
    steps = [_FUZZ_STEPS[n]() for n in names]
    if breaking:
        at = min(breaking[1], len(steps))
        steps.insert(at, _FUZZ_BREAKING[breaking[0]])
        with pytest.raises(ValueError, match=rf"^<lambda> at step {at} returned "):  # WrongTypeError too
            Compose(steps, num_classes=10)(x, y)
        return
    x2, y2 = Compose(steps, num_classes=10)(x, y)
    assert (x2.shape, x2.dtype) == (x.shape, x.dtype) and len(y2) == 4
    if y2.ndim == 2:
        assert torch.allclose(y2.sum(1), torch.ones(4), atol=1e-5) and (y2 >= 0).all()
    else:
        assert not soft and not any("Mix" in n for n in names) and torch.equal(y2, y)


def test_labels_a_step_made_float_are_named_before_compose_makes_them_soft_for_a_mix():
    # a step of one's own turned the class indices into floats; Compose's softening for VarMixup (given no
    # num_classes of its own) gave torch's "one_hot is only applicable to index tensor of type LongTensor"
    class FloatLabels(T.Transform):
        def __init__(self, dtype):
            super().__init__()
            self.dtype = dtype

        def forward(self, x, y):
            return x, y.to(self.dtype)

    x, y = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    vae = tiny_vae(shape=(3, 16, 16))
    for dtype in (torch.float32, torch.int32):  # int32 too (mutation audit 177): one_hot takes int64 only
        with pytest.raises(ValueError, match=rf"step 1 \(VarMixup\), on the output of step 0 \(FloatLabels\): y "
                                             rf"class indices must be int64, got dtype {dtype}"):  # its own check
            Compose([FloatLabels(dtype), VarMixup(vae, generator=0)], num_classes=10)(x, y)
        with pytest.raises(ValueError, match=rf"step 1 \(MixUp\), on the output of step 0 \(FloatLabels\): y "
                                             rf"class indices must be int64 to be made soft labels, got {dtype}"):
            Compose([FloatLabels(dtype), T.MixUp()], num_classes=10)(x, y)  # Compose makes them soft for it


@STRENGTH_ZERO_EXPECTED
@EVAL_BESIDE_TRAINING
@pytest.mark.filterwarnings("ignore:ISDA. the augmentation armed")
def test_a_nested_compose_that_takes_images_makes_the_chain_take_images_in_either_mode():
    """Audit 186: Compose([ISDA, Compose([fn])]) took any tensor (ISDA's and a callable's chain) while its nested
    Compose of a callable takes images: vectors passed eval() and training refused them at the nested step, blaming
    ISDA's output ("on the output of step 0 (ISDA)")."""
    net = torch.nn.Sequential(torch.nn.Linear(5, 10))
    x, y = torch.rand(4, 5), torch.randint(0, 10, (4,))
    for c in (Compose([ISDA(10), Compose([lambda v: v * 1])]), Compose([Compose([lambda v: v]), ISDA(10)]),
              Compose([ISDA(10), Compose([])])):
        for mode in (c.train, c.eval):
            with pytest.raises(ValueError, match=r"^x must have shape \(B, C, H, W\), got 2 dims"):
                mode()(x, y, net)
    c = Compose([ISDA(10), Compose([ISDA(10)]), lambda v: v * 1])  # a nested Compose taking any tensor: as before
    for mode in (c.train, c.eval):
        assert mode()(x, y, net)[0].shape == x.shape
    tokens = torch.randint(0, 255, (4, 5), dtype=torch.uint8)  # any tensor: uint8 token ids too, in eval() mode
    assert c.eval()(tokens, y, net)[0] is tokens


def test_a_missing_model_is_refused_before_any_step_runs(rgb, rgb_glow):
    """Audit 186: model=None reached LatentAdversarial only after the steps before it had run (their draws made and
    kept, a seeded generator advanced), and the TypeError named no step."""
    x, y = rgb
    noise = LatentNoise(rgb_glow, generator=0)
    noise(x, y)
    before, state = noise.last_params["delta"].clone(), noise._rng.get(x.device).get_state()
    for c, where in ((Compose([noise, LatentAdversarial(rgb_glow, steps=1)]), "LatentAdversarial at step 1"),
                     (Compose([noise, Compose([T.RandomHorizontalFlip(), ISDA(10)])]), "ISDA in Compose at step 1")):
        with pytest.raises(TypeError, match=rf"^model=None, but a step needs the classifier being trained: {where}; "
                                            rf"call t\(x, y, model\)$"):
            c(x, y)
        assert torch.equal(noise.last_params["delta"], before)
        assert torch.equal(noise._rng.get(x.device).get_state(), state)
        assert c.eval()(x, y) == (x, y)  # evaluation takes no model, as ever
    c.train()
    c[1].eval()  # a nested Compose in eval() mode runs none of its steps: it needs no model (and is warned of)
    with pytest.warns(UserWarning, match=r"^Compose at step 1 is in eval\(\) mode"):
        assert c(x, y)[0].shape == x.shape


def test_class_indices_for_a_label_mix_without_classes_are_refused_in_either_mode_before_any_step_runs(rgb,
                                                                                                        rgb_glow):
    """Audit 186: a label mix that knows no classes (MixUp(), VarMixup() in a Compose without num_classes) after
    another step: class indices passed eval() and training refused them at the mix, after the steps before it ran
    (torchvision's refusal blamed "the output of step 0")."""
    x, y = rgb
    vae = tiny_vae(shape=(3, 16, 16))
    noise = LatentNoise(rgb_glow, generator=0)
    for c, where in ((Compose([T.RandomHorizontalFlip(), T.MixUp()]), "MixUp at step 1"),
                     (Compose([noise, VarMixup(vae, generator=1)]), "VarMixup at step 1"),
                     (Compose([noise, T.RandomApply([T.CutMix()])]), "CutMix in RandomApply at step 1")):
        kept = noise.last_params  # a call replaces the dict
        for mode in (c.train, c.eval):
            with pytest.raises(ValueError, match=rf"^\w+ mixes labels: pass num_classes=\.\.\. or \(B, K\) soft "
                                                 rf"labels \({where} gets these class indices"):
                mode()(x, y)
        assert noise.last_params is kept  # refused before step 0 ran
        assert c.train()(x, torch.nn.functional.one_hot(y, 10).float())[1].shape == (6, 10)  # soft labels: as ever

    class OneHot(T.Transform):  # a step of one's own may make the labels soft before the mix: not refused up front
        def forward(self, x, y):
            return x, torch.nn.functional.one_hot(y, 10).float()

    assert Compose([OneHot(), T.MixUp()])(x, y)[1].shape == (6, 10)


def test_a_missing_model_names_every_step_that_needs_it(rgb, rgb_glow):
    # mutation round 19 (audit 191): each step that needs the model is named, not only the first
    x, y = rgb
    with pytest.raises(TypeError, match=r"needs the classifier being trained: LatentAdversarial at step 0, ISDA at "
                                        r"step 2; call t\(x, y, model\)$"):
        Compose([LatentAdversarial(rgb_glow, steps=1), T.RandomHorizontalFlip(), ISDA(10)])(x, y)


def test_class_indices_for_two_label_mixes_without_classes_name_the_first(rgb):
    # mutation round 19 (audit 191): the first label mix is the one that gets the class indices
    x, y = rgb
    for mode in ("train", "eval"):
        with pytest.raises(ValueError, match=r"^MixUp mixes labels: .*\(MixUp at step 1 gets these class indices"):
            getattr(Compose([T.RandomHorizontalFlip(), T.MixUp(), T.CutMix()]), mode)()(x, y)


def test_class_indices_for_a_label_mix_of_ones_own_without_classes_are_refused_in_either_mode(rgb):
    # mutation round 19 (audit 191): only the steps before the mix may make the labels soft; a MixUp subclass of
    # one's own refuses class indices as MixUp does
    class OwnMixUp(T.MixUp):
        pass

    x, y = rgb
    for mode in ("train", "eval"):
        with pytest.raises(ValueError, match=r"^OwnMixUp mixes labels: .*\(OwnMixUp at step 1 gets these class"):
            getattr(Compose([T.RandomHorizontalFlip(), OwnMixUp()]), mode)()(x, y)


def test_class_indices_for_a_label_mix_held_by_a_container_name_the_mix_not_the_container(rgb):
    # mutation round 22 (audit 201): "CutMix mixes labels", not "RandomApply mixes labels"; of two, the first
    x, y = rgb
    for mix, name in ((T.RandomApply([T.CutMix()]), "CutMix"), (T.RandomChoice([T.MixUp(), T.CutMix()]), "MixUp")):
        for mode in ("train", "eval"):
            with pytest.raises(ValueError, match=rf"^{name} mixes labels: .*\({name} in Random\w+ at step 1 gets"):
                getattr(Compose([T.RandomHorizontalFlip(), mix]), mode)()(x, y)


def test_a_step_of_ones_own_inside_a_torchvision_container_may_make_the_labels_soft_before_the_mix(rgb):
    # mutation round 22 (audit 201): the steps before the mix are searched through their containers, as at top level
    class OneHot(T.Transform):
        def forward(self, x, y):
            return x, torch.nn.functional.one_hot(y, 10).float()

    x, y = rgb
    assert Compose([T.Compose([T.RandomHorizontalFlip(), OneHot()]), T.MixUp()])(x, y)[1].shape == (6, 10)


def test_the_last_step_deleted_after_building_is_a_change_too(rgb):
    # mutation round 22 (audit 201): a chain shorter than built, its first steps the same, is refused as changed (its
    # ToDtype, found when built, would still run in eval() mode)
    x, y = rgb
    t = Compose([T.RandomHorizontalFlip(), T.ToDtype(torch.float32, scale=True)])
    del t.steps[-1]
    for mode in (t.train, t.eval):
        with pytest.raises(RuntimeError, match=r"^this Compose's steps were changed after it was built"):
            mode()(x, y)


_CALL_STEPS = {
    "LatentNoise": lambda: LatentNoise(_FUZZ_GLOW, eps=1.0, p=0.5, generator=0),
    "LatentAdversarial": lambda: LatentAdversarial(_FUZZ_GLOW, steps=1, target="true", generator=0),
    "VarMixup()": lambda: VarMixup(_FUZZ_VAE, p=0.5, generator=0),
    "VarMixup(10)": lambda: VarMixup(_FUZZ_VAE, p=0.5, num_classes=10, generator=0),
    "ISDA": lambda: ISDA(10, p=0.5, generator=0),
    "v2 flip": lambda: T.RandomHorizontalFlip(),
    "v2 ToDtype": lambda: T.ToDtype(torch.float32, scale=True),
    "v2 MixUp": lambda: T.MixUp(num_classes=10),
    "kornia flip": lambda: K.RandomHorizontalFlip(),
    "x -> x": lambda: lambda x: x.flip(-1),
}


def _defective(defect):
    """A valid call's ``(x, y, model, index)`` for ``_FUZZ_GLOW``'s (1, 8, 8) images, with one defect."""
    g = torch.Generator().manual_seed(0)
    x, y, model, index = torch.rand(4, 1, 8, 8, generator=g), torch.randint(0, 9, (4,), generator=g), TinyNet(), None
    changes = {"ndim": lambda: (x[:, 0], y, model, index), "channels": lambda: (x.expand(4, 3, 8, 8), y, model, index),
               "uint8": lambda: ((x * 255).to(torch.uint8), y, model, index),
               "NaN": lambda: (x.index_fill(0, torch.tensor([1]), float("nan")), y, model, index),
               "range": lambda: (x * 1.5, y, model, index),
               "class 10": lambda: (x, y.index_fill(0, torch.tensor([2]), 10), model, index),
               "class -1": lambda: (x, y.index_fill(0, torch.tensor([2]), -1), model, index),
               "soft": lambda: (x, torch.softmax(torch.randn(4, 10, generator=g), 1), model, index),
               "3 labels": lambda: (x, y[:3], model, index), "3 positions": lambda: (x, y, model, torch.arange(3)),
               "index": lambda: (x, y, model, torch.arange(4)), "y=None": lambda: (x, None, model, index),
               "model=None": lambda: (x, y, None, index), "none": lambda: (x, y, model, index)}
    return changes[defect]()


def _state(c, model):
    """What a call may change: each latent step's last_params, counts and generators, ISDA's statistics, the model's
    modes, hooks and parameters."""
    from latent_transforms.compose import _parts

    parts = [p for p in _parts(c) if isinstance(p, (LatentNoise, LatentAdversarial, VarMixup, ISDA))]
    return ([(p.last_params, p._counts, {k: g.get_state() for k, g in p._rng._per_device.items()},
              p.estimator.state_dict() if isinstance(p, ISDA) else None) for p in parts],
            None if model is None else [(m.training, len(m._forward_hooks), len(m._forward_pre_hooks))
                                        for m in model.modules()],
            None if model is None else list(model.parameters()))


def _same(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a.nan_to_num(), b.nan_to_num())
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(u, v) for u, v in zip(a, b))
    return a == b


@STRENGTH_ZERO_EXPECTED
@pytest.mark.filterwarnings("ignore:.* seeded with the same int:UserWarning")  # the factories seed every step 0
@settings(max_examples=25)
@example(names=["LatentAdversarial", "VarMixup()"], num_classes=None, defect="none")  # what 400 examples found
@example(names=["ISDA", []], num_classes=None, defect="ndim")
@example(names=["LatentNoise", ["v2 flip", "LatentAdversarial"]], num_classes=10, defect="model=None")
@given(names=st.lists(st.sampled_from(sorted(_CALL_STEPS)) | st.lists(st.sampled_from(sorted(_CALL_STEPS)),
                                                                       max_size=2), max_size=3),
       num_classes=st.sampled_from([None, 10]),
       defect=st.sampled_from(["none", "ndim", "channels", "uint8", "NaN", "range", "class 10", "class -1", "soft",
                               "3 labels", "3 positions", "index", "y=None", "model=None"]))
@EVAL_BESIDE_TRAINING
def test_a_call_is_refused_alike_in_eval_and_train_mode_cleanly_and_without_changing_state(names, num_classes, defect):
    """Audit 186's fuzzing of the call checks, kept small: a Compose of 0-3 steps (latent, ISDA, torchvision,
    kornia, callables, a nested Compose) given a batch with one defect refuses it with a ValueError or TypeError; what
    eval() mode refuses, training refuses alike; what training refuses for the batch eval() mode refuses too (but the
    documented exceptions: a later latent step's codec shape, the labels against the model's outputs, uint8
    that eval() mode would return unconverted, model=None); a refusal at entry changes no state, eval() mode none."""
    import re

    def build():
        return Compose([Compose([_CALL_STEPS[m]() for m in n]) if isinstance(n, list) else _CALL_STEPS[n]()
                        for n in names], num_classes=num_classes)

    try:
        build()
    except ValueError:  # ISDA with a label mix, steps' num_classes that disagree
        return
    refused = {}
    for training in (False, True):
        c = build().train(training)
        x, y, model, index = _defective(defect)
        before = _state(c, model)
        try:
            c(x, y, model, index)
        except (ValueError, TypeError) as e:  # never torch's RuntimeError or IndexError from deep inside
            refused[training] = e
            # a later step's refusal follows the steps before it (named: "Compose step 2 (...), on the output of")
            later = re.match(r"Compose step [1-9]", str(e)) or "for the model's" in str(e)
            assert later or _same(_state(c, model), before), (training, e)
        else:
            assert training or _same(_state(c, model), before)  # eval() mode changes nothing
    bare = {k: re.sub(r"^(Compose step \d+ \([^)]*\), on the output of step \d+ \([^)]*\): )+", "", str(e))
            for k, e in refused.items()}
    if defect == "uint8":  # eval() refuses uint8 it would return unconverted; training refuses it at a float step
        assert (False in refused) <= (True in refused or not c._conversions)
    elif False in refused:
        assert type(refused[True]) is type(refused[False]), refused
        if bare[True] != bare[False]:  # two problems, checked in another order: the batch's, and the steps' own
            with pytest.raises(type(refused[False]), match=re.escape(bare[False])):
                build().eval()(*_defective("none"))
    elif True in refused and defect != "model=None":  # eval() mode uses no model, by design
        assert ("trained on images of shape" in bare[True] or "for the model's" in bare[True]), refused[True]


@STRENGTH_ZERO_EXPECTED
@pytest.mark.parametrize("nested", [False, True])
def test_labels_of_new_classes_for_a_grown_classifier_name_grow_in_a_compose(rgb, nested):
    """Mutation round 23 (audit 204): docs/methods/isda.md says a head grown for new classes is refused naming
    isda.grow(n); in Compose([flip, ISDA(4)]) the Compose checked the new task's labels first and said only "y has
    class index 9, out of range for num_classes=4" (as ISDA alone did before audit 199), not blaming a step. Mutation
    round 25 (audit 209): an ISDA in a nested Compose is found among the parts too, as the classes are."""
    x, y = rgb
    net = TinyNet(channels=3, num_classes=4)
    isda = ISDA(4)
    t = Compose([T.RandomHorizontalFlip(), Compose([isda]) if nested else isda])
    t(x, y % 4, net)
    net(x)
    net.fc = torch.nn.Linear(32, 10)
    with pytest.raises(ValueError, match=r"^the layer 'fc' of TinyNet \(32 -> 10\) has 10 outputs but num_classes=4"
                                         r".*call \.grow\(10\) on this ISDA first") as info:
        t(x, y, net)
    assert isinstance(info.value.__cause__, ValueError) and "class index" in str(info.value.__cause__)
    with pytest.raises(ValueError, match=r"^x contains NaN") as info:  # not a label error: it stands (mutant M15)
        t(x * float("nan"), y % 4, net)
    assert "grow" not in str(info.value)
    net.fc = torch.nn.Linear(32, 4)  # no classifier grown: the labels are named
    with pytest.raises(ValueError, match=r"^y has class index \d, out of range for num_classes=4 \(.*y\[keep\]$"):
        t(x, y, net)


def test_a_compose_num_classes_assigned_after_building_is_refused():
    """Audit 208: a plain attribute, Compose([MixUp()]).num_classes = 10 still refused class indices (which label
    mixes get labels made soft with it was decided when it was built), and 10 -> 5 checked the labels against 5
    while MixUp kept 10."""
    x, y = torch.rand(6, 3, 16, 16), torch.arange(6)
    t = Compose([T.MixUp()])
    with pytest.raises(AttributeError, match=r"num_classes is fixed at construction .*build a new one, "
                                             r"Compose\(list\(t\), num_classes=10\)"):
        t.num_classes = 10
    assert t.num_classes is None and Compose(list(t), num_classes=10)(x, y)[1].shape == (6, 10)
    t = Compose([T.MixUp(num_classes=10)])
    t.num_classes = 10  # as it is: nothing to refuse
    with pytest.raises(AttributeError, match="num_classes is fixed at construction"):
        t.num_classes = 5
    assert t.num_classes == 10 and t(x, y)[1].shape == (6, 10)


def test_a_step_whose_classes_went_down_after_building_is_refused_too():
    """Mutation round 23 (audit 204): fewer classes set on a step since the Compose was built are refused as more
    are: its checks would pass labels the step no longer holds."""
    mix = VarMixup(tiny_vae(shape=(3, 16, 16)), num_classes=4)
    t = Compose([mix])
    mix.num_classes = 2
    with pytest.raises(RuntimeError, match=r"has num_classes=2, but had 4 when this Compose was built"):
        t(torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 3]))


def test_a_label_mix_inside_a_torchvision_container_whose_classes_changed_is_named():
    """Mutation round 23 (audit 204): the classes checked are those of the step's parts (a MixUp inside RandomChoice),
    not of the container, which has none."""
    x, y = torch.rand(6, 3, 16, 16), torch.arange(6)
    mix, cut = T.MixUp(num_classes=10), T.CutMix(num_classes=10)
    t = Compose([T.RandomHorizontalFlip(), T.RandomChoice([mix, cut])])
    assert t(x, y)[1].shape == (6, 10)
    mix.num_classes = 12
    with pytest.raises(RuntimeError, match=r"^MixUp in RandomChoice at step 1 has num_classes=12, but had 10 when"):
        t(x, y)
    mix.num_classes, cut.num_classes = 10, 12  # mutation round 25 (audit 209): each part is checked, not the first
    with pytest.raises(RuntimeError, match=r"^CutMix in RandomChoice at step 1 has num_classes=12, but had 10 when"):
        t(x, y)


@pytest.mark.parametrize("data_format", ["BTCHW", "BCTHW"])
@pytest.mark.parametrize("make", [lambda glow, video: [LatentNoise(glow), video],
                                  lambda glow, video: [video, ISDA(10)],
                                  lambda glow, video: [T.Compose([video]), LatentNoise(glow)]])
def test_kornia_video_sequential_is_refused_when_built_with_the_way_to_the_frames(rgb_glow, data_format, make):
    """kornia's VideoSequential takes 5-d clips and a Compose (B, C, H, W) images (ISDA's any tensor only beside
    plain callables): a Compose holding it refused every batch, 5-d ones as not images and frames by kornia's
    AssertionError "Input must be a 5-dim torch.Tensor", after the steps before it had run (audit 223). Called on the
    clips before the Compose, as the message says, it draws per clip."""
    video = K.VideoSequential(K.RandomHorizontalFlip(), data_format=data_format, same_on_frame=True)
    with pytest.raises(ValueError, match=r"VideoSequential.* at step \d takes video clips, \(B, C, T, H, W\) or "
                                         r"\(B, T, C, H, W\), but a Compose takes \(B, C, H, W\) images.*before the "
                                         r"Compose.*vs\(clips\).flatten\(0, 1\) for data_format='BTCHW' "
                                         r"\(docs/composition.md#video-clips\)$"):
        Compose(make(rgb_glow, video))
    still = torch.rand(2, 1, 3, 16, 16).expand(-1, 4, -1, -1, -1)
    frames = K.VideoSequential(K.RandomHorizontalFlip(p=0.5), data_format="BTCHW", same_on_frame=True)(still)
    assert torch.equal(frames, frames[:, :1].expand_as(frames))  # a clip's frames flipped alike
    x2, _ = Compose([LatentNoise(rgb_glow)])(frames.flatten(0, 1))
    assert x2.shape == (8, 3, 16, 16)


@pytest.mark.parametrize("normalize, where", [
    (lambda: T.Normalize([0.5] * 3, [0.25] * 3), "Normalize at step 1"),
    (lambda: K.Normalize(torch.tensor([0.5] * 3), torch.tensor([0.25] * 3)), "Normalize at step 1"),
    (lambda: kornia.enhance.Normalize(torch.tensor([0.5] * 3), torch.tensor([0.25] * 3)), "Normalize at step 1"),
    (lambda: torchvision.transforms.Normalize([0.5] * 3, [0.25] * 3), "Normalize at step 1"),
    (lambda: T.Compose([T.RandomHorizontalFlip(), T.Normalize([0.5] * 3, [0.25] * 3)]),
     "Normalize in Compose at step 1"),
    (lambda: K.AugmentationSequential(K.RandomHorizontalFlip(), K.Normalize(torch.tensor([0.5] * 3),
                                                                            torch.tensor([0.25] * 3))),
     "Normalize in AugmentationSequential at step 1"),
    # torchvision v1's containers (the classic T.Compose([..., T.Normalize(mean, std)])): v1's Compose, RandomChoice
    # and RandomOrder are no modules, v1's RandomApply holds a list; audit 422: all passed, as Compose ignored v1
    (lambda: torchvision.transforms.Compose([torchvision.transforms.Normalize([0.5] * 3, [0.25] * 3)]),
     "Normalize in Compose at step 1"),
    (lambda: torchvision.transforms.RandomApply([torchvision.transforms.Normalize([0.5] * 3, [0.25] * 3)]),
     "Normalize in RandomApply at step 1"),
    (lambda: torchvision.transforms.RandomChoice([T.Compose([T.Normalize([0.5] * 3, [0.25] * 3)])]),
     "Normalize in RandomChoice at step 1"),
    (lambda: torchvision.transforms.RandomOrder([torchvision.transforms.Compose([
        torchvision.transforms.Normalize([0.5] * 3, [0.25] * 3)])]), "Normalize in RandomOrder at step 1")])
def test_a_normalize_step_is_refused_when_built_as_eval_mode_would_skip_it(rgb, rgb_glow, normalize, where):
    # a torchvision habit, Normalize last: it trained on normalised images, and the same Compose in eval() mode (the
    # quickstart's validation loop) skipped it, giving the model images in [0, 1], silently
    x, y = rgb
    with pytest.raises(ValueError, match=rf"^{where} normalises with mean/std, .* eval\(\) mode .* unnormalised; "
                                         r"normalise inside the model.*nn.Sequential\(v2.Normalize\(mean, std\), "):
        Compose([LatentNoise(rgb_glow, eps=1.0, generator=0), normalize()])
