"""latent_transforms.testing: the public contract check passes a method of one's own written as docs/extending.md
says, and stops at the mistakes such a method can make."""
import pickle
import subprocess
import sys
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from latent_transforms import CodecTransform, Compose, LatentNoise, LatentTransform, VarMixup
from latent_transforms.labels import mix_labels
from latent_transforms.modelutils import borrowed
from latent_transforms.rng import random_partners, sample_beta
from latent_transforms.testing import check_transform_contract, replayed


class Brighten(LatentTransform):
    """A method as docs/extending.md writes one: every draw in make_params, from the generator."""

    def make_params(self, n, generator, device):
        return {"shift": 0.2 * torch.rand(n, generator=generator, device=device, dtype=torch.float32)}

    def transform(self, x, y, model, params, index=None):
        return x + params["shift"].to(x.dtype).view(-1, 1, 1, 1), y


class DrawsInTransform(LatentTransform):
    """Seeded by its own generator, drawing in transform: the same seed gives the same output, a replay does not."""

    def __init__(self, *, p=1.0, generator=None):
        super().__init__(p=p, generator=generator)
        self.seed = generator

    def transform(self, x, y, model, params, index=None):
        g = torch.Generator().manual_seed(self.seed or 0)
        return x + 0.2 * torch.rand(x.shape[0], 1, 1, 1, generator=g).to(x.dtype), y


class ScoresWithTheModel(Brighten):
    """Brightens the samples the model is unsure of; ``borrow``: runs the model as docs/extending.md says."""

    needs_model = True
    borrow = True

    def transform(self, x, y, model, params, index=None):
        if self.borrow:
            with borrowed(model) as net, torch.no_grad():
                confidence = net(x).softmax(1).amax(1)
        else:
            with torch.no_grad():
                confidence = model(x).softmax(1).amax(1)  # in training mode: BatchNorm statistics move
        return x + ((1 - confidence) * params["shift"]).to(x.dtype).view(-1, 1, 1, 1), y


class RunsTheModelInTrainingMode(ScoresWithTheModel):
    borrow = False


def test_a_method_written_as_the_docs_say_passes(batch, net):
    check_transform_contract(lambda **kw: Brighten(**kw), *batch)
    check_transform_contract(lambda **kw: ScoresWithTheModel(**kw), *batch, model=net)


def test_the_check_passes_with_warnings_as_errors(batch, net):
    """A suite run with ``-W error``: at torch 2.4 the check's own pickle round trip warned (torch.load with
    weights_only=False) and failed a transform that had done nothing wrong."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_transform_contract(lambda **kw: Brighten(**kw), *batch)
        # its transforms put in eval() mode on purpose beside a training model do not warn that they augment nothing
        # (mutation round 27)
        check_transform_contract(lambda **kw: ScoresWithTheModel(**kw), *batch, model=net.train())


def test_a_draw_made_outside_make_params_is_caught_by_the_replay(batch):
    with pytest.raises(AssertionError, match="every random draw must be made in make_params"):
        check_transform_contract(lambda **kw: DrawsInTransform(**kw), *batch)


def test_a_replay_that_is_not_a_tensor_is_not_the_same_output():
    """``replayed`` answers False for labels that came back None on one call and a tensor on the other (the check's
    AssertionError), not an AttributeError from reading None's dtype (mutation round 366)."""
    y = torch.tensor([0, 1])
    assert replayed(y, y.clone()) and not replayed(y, None) and not replayed(None, y)
    assert not replayed(y, y.double()) and not replayed(y.float(), y.double())  # equal values, another dtype


def test_a_model_run_in_training_mode_is_caught(batch, net):
    with pytest.raises(AssertionError, match=r"model state features\.1\.running_mean changed"):
        check_transform_contract(lambda **kw: RunsTheModelInTrainingMode(**kw), *batch, model=net)


def clear_the_gradients(t, x, y, model, x2, y2):
    if isinstance(model, torch.nn.Module):
        model.zero_grad()  # sets them to None
    return x2, y2


def test_a_model_holding_gradients_passes_a_method_that_leaves_them_and_catches_one_that_clears_them(batch, net):
    """A model checked between a step's backward and its optimizer step holds gradients: kept as they were, they pass;
    cleared (``model.zero_grad()`` sets them to None), they are named (mutation round 366: every model checked before
    had none, so gradients kept were never compared)."""
    net(batch[0]).sum().backward()
    check_transform_contract(lambda **kw: ScoresWithTheModel(**kw), *batch, model=net)
    clears = breaching(ScoresWithTheModel, clear_the_gradients)
    with pytest.raises(AssertionError, match="parameter gradients changed"):
        check_transform_contract(lambda **kw: clears(**kw), *batch, model=net)


def test_a_module_that_is_not_a_latent_transform_is_named(batch):
    with pytest.raises(AssertionError, match="must build a LatentTransform, got Identity"):
        check_transform_contract(lambda **kw: torch.nn.Identity(), *batch)


def test_the_check_is_not_removed_by_python_O():
    """Plain asserts vanish under ``python -O``: the check must still fail there."""
    code = ("import torch; from latent_transforms.testing import check_transform_contract\n"
            "try:\n    check_transform_contract(lambda **kw: torch.nn.Identity(), torch.rand(2, 1, 4, 4), "
            "torch.tensor([0, 1]))\nexcept AssertionError as e:\n    print('caught:', e)")
    out = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "caught: make(...) must build a LatentTransform, got Identity" in out.stdout


class PixelMixup(LatentTransform):
    """A label-mixing method as docs/extending.md writes one: partners and weights drawn with latent_transforms.rng."""

    mixes_labels = True
    index_params = ("partner",)
    weight_params = ("lam",)

    def make_params(self, n, generator, device):
        return {"partner": random_partners(n, generator, device), "lam": sample_beta(1.0, n, generator, device)}

    def transform(self, x, y, model, params, index=None):
        w = params["lam"].to(x.dtype).view(-1, 1, 1, 1)
        return w * x + (1 - w) * x[params["partner"]], mix_labels(y, params["partner"], params["lam"], self.num_classes)


class LabelWeightOutsideMakeParams(PixelMixup):
    """Images from make_params' draws, the labels' weights drawn in transform: seeded alike, but not replayed."""

    def __init__(self, *, p=1.0, generator=None):
        super().__init__(p=p, generator=generator, num_classes=10)
        self.seed = generator

    def transform(self, x, y, model, params, index=None):
        lam = torch.rand(x.shape[0], generator=torch.Generator().manual_seed(self.seed or 0))
        return super().transform(x, y, model, params)[0], mix_labels(y, params["partner"], lam, self.num_classes)


def breaching(base, breach):
    """``base`` with one breach of the contract: ``breach(t, x, y, model, x2, y2) -> (x2, y2)`` applied to each call's
    output (``x, y, model``: the call's arguments, a model given in y's place included)."""

    class Breaching(base):
        def forward(self, x, y=None, model=None, index=None, *, params=None):
            if isinstance(y, torch.nn.Module) and base is ScoresWithTheModel:
                x2, y2 = super().forward(x, None, y, index, params=params)
            else:
                x2, y2 = super().forward(x, y, model, index, params=params)
            return breach(self, x, y, model, x2, y2)

    return Breaching


class mixing(PixelMixup):  # noqa: N801 (a short name in the table below)
    def __init__(self, **kw):
        super().__init__(num_classes=10, **kw)


def counts(t, x, seen, transformed, rejected=0):
    t._count(x.device, seen, torch.tensor(transformed), torch.tensor(rejected))


def global_noise(t, x, y, model, x2, y2):
    """x2 moved by less than 1e-5 by a draw from torch's global RNG (close, but another output on the CPU)."""
    return (x2 - 1e-6 * torch.rand(x2.shape)).clamp(0, 1) if t.training and len(x2) else x2, y2


def run_model_in_eval_mode(t, x, y, model, x2, y2):
    if not t.training:
        with torch.no_grad():
            model(x)  # the model in training mode: BatchNorm statistics move
    return x2, y2


def leave_the_model_in_eval_mode(t, x, y, model, x2, y2):
    model.eval()
    return x2, y2


def backward_through_the_model(t, x, y, model, x2, y2):
    model.eval()
    with torch.enable_grad():
        model(x).sum().backward()
    model.train()
    return x2, y2


def negative_weights(t, x, y, model, x2, y2):
    shift = torch.zeros_like(y2)
    shift[:, 0], shift[:, 1] = 0.5, -0.5  # the rows still sum to 1
    return x2, y2 + shift if t.training and len(y2) else y2


def labels_from_the_global_rng(t, x, y, model, x2, y2):
    return x2, 0.5 * y2 + 0.5 * torch.rand(y2.shape).softmax(1) if t.training and len(y2) else y2


def class_without_a_model(base):
    class ModelOptional(base):
        def forward(self, x, y=None, model=None, index=None, *, params=None):
            return (x.clone(), y) if model is None else super().forward(x, y, model, index, params=params)
    return ModelOptional


def class_without_labels(train=True, eval=True):
    class LabelsOptional(PixelMixup):
        def forward(self, x, y=None, model=None, index=None, *, params=None):
            if y is None and (train if self.training else eval):
                return x.clone(), None
            return super().forward(x, y, model, index, params=params)
    return lambda **kw: LabelsOptional(num_classes=10, **kw)


_OMITTED = object()


class LabelsOptionalWhenOmitted(PixelMixup):
    """Refuses y=None, but takes a call that leaves y out as an unlabelled batch."""

    def __init__(self, **kw):
        super().__init__(num_classes=10, **kw)

    def forward(self, x, y=_OMITTED, model=None, index=None, *, params=None):
        if y is _OMITTED:
            return x.clone(), None
        return super().forward(x, y, model, index, params=params)


class TypeErrorWithoutTheWord(ScoresWithTheModel):
    def forward(self, x, y=None, model=None, index=None, *, params=None):
        if model is None:
            raise TypeError("ScoresWithTheModel needs the classifier")
        return super().forward(x, y, model, index, params=params)


class AllSelected(Brighten):
    def _draw_selection(self, batch, generator, device):  # p ignored
        return torch.ones(batch, dtype=torch.bool, device=device)


class GlobalDraws(Brighten):
    def make_params(self, n, generator, device):
        return {"shift": 0.2 * torch.rand(n, device=device)}  # torch's global RNG, not generator


class Unpicklable(Brighten):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.scale = lambda v: v


TRAIN, EVAL = (lambda t: t.training), (lambda t: not t.training)
BREACHES = {  # (make, model?, returns_x, the AssertionError's message)
    "wrong shape": (breaching(Brighten, lambda t, x, y, m, x2, y2: (x2[..., :4], y2)), False, False,
                    r"x2 is \(12, 1, 8, 4\) torch.float32 on cpu, x \(12, 1, 8, 8\)"),
    "wrong dtype": (breaching(Brighten, lambda t, x, y, m, x2, y2: (x2.double(), y2)), False, False,
                    r"x2 is \(12, 1, 8, 8\) torch.float64 on cpu, x \(12, 1, 8, 8\) torch.float32"),
    "wrong device": (breaching(Brighten, lambda t, x, y, m, x2, y2: (x2.to("meta"), y2)), False, False,
                     r"x2 is \(12, 1, 8, 8\) torch.float32 on meta"),
    "above 1": (breaching(Brighten, lambda t, x, y, m, x2, y2: (x2 + 1, y2)), False, False,
                r"x2 is not finite and in \[0, 1\]"),
    "below 0": (breaching(Brighten, lambda t, x, y, m, x2, y2: (x2 - 1, y2)), False, False,
                r"x2 is not finite and in \[0, 1\]"),
    "labels changed": (breaching(Brighten, lambda t, x, y, m, x2, y2: (x2, y2.flip(0))), False, False,
                       "the labels changed"),
    "soft labels too narrow": (breaching(mixing, lambda t, x, y, m, x2, y2: (x2, y2[:, :5])), False, False,
                               r"returned y2 of shape \(12, 5\), not \(12, 10\)"),
    "soft labels not summing to 1": (breaching(mixing, lambda t, x, y, m, x2, y2: (x2, 2 * y2)), False, False,
                                     "not non-negative rows summing to 1"),
    "negative soft labels": (breaching(mixing, negative_weights), False, False, "not non-negative rows summing to 1"),
    "stats not counted": (breaching(Brighten, lambda t, x, y, m, x2, y2: (t.reset_stats(), (x2, y2))[1]), False,
                          False, "do not count the batch of 12"),
    "stats counted twice": (breaching(Brighten, lambda t, x, y, m, x2, y2: (counts(t, x, 0, len(x)), (x2, y2))[1]),
                            False, False, "do not count the batch of 12"),
    "rejections counted past the batch": (breaching(Brighten, lambda t, x, y, m, x2, y2: (
        counts(t, x, 0, 0, len(x)), (x2, y2))[1]), False, False, "do not count the batch of 12"),
    "global draws": (GlobalDraws, False, False, "the same seed gave another output"),
    "global noise under 1e-5": (breaching(Brighten, global_noise), False, False, "the same seed gave another output"),
    "labels from the global RNG": (breaching(mixing, labels_from_the_global_rng), False, False,
                                   "the same seed gave another output"),
    "labels not replayed": (LabelWeightOutsideMakeParams, False, False, "every random draw must be made in make_params"),
    "p ignored": (AllSelected, False, False, "p=0 changed x"),
    "p=0 returns x": (breaching(Brighten, lambda t, x, y, m, x2, y2: (x if t.p == 0 else x2, y2)), False, False,
                      "p=0 returned x's storage"),
    "returns_x but copies": (Brighten, False, True, r"p=0 copied x \(returns_x=True"),
    "p=0 changes labels": (breaching(Brighten, lambda t, x, y, m, x2, y2: (x2, y2.flip(0) if t.p == 0 else y2)),
                           False, False, "p=0 changed the labels"),
    "p=0 changes soft labels": (breaching(mixing, lambda t, x, y, m, x2, y2: (x2, y2.roll(1, 1) if t.p == 0 else y2)),
                                False, False, "p=0 changed the labels"),
    "unselected changed": (breaching(Brighten, lambda t, x, y, m, x2, y2: (
        (x2 + 0.01).clamp(0, 1) if 0 < t.p < 1 and t.training else x2, y2)), False, False,
        r"p=0.5 changed 12 samples but stats\['transformed'\] counts [0-9]$"),
    "eval copies x": (breaching(Brighten, lambda t, x, y, m, x2, y2: (x2.clone() if EVAL(t) else x2, y2)), False,
                      False, r"eval\(\) mode did not return x and y themselves"),
    "eval copies y": (breaching(Brighten, lambda t, x, y, m, x2, y2: (x2, y2.clone() if EVAL(t) else y2)), False,
                      False, r"eval\(\) mode did not return x and y themselves"),
    "model trained in eval mode": (breaching(ScoresWithTheModel, run_model_in_eval_mode), True, False,
                                   r"model state features\.1\.running_mean changed"),
    "model left in eval mode": (breaching(ScoresWithTheModel, leave_the_model_in_eval_mode), True, False,
                                "train/eval flags changed"),
    "model gradients": (breaching(ScoresWithTheModel, backward_through_the_model), True, False,
                        "parameter gradients changed"),
    # named at the first call, before the model it left in eval mode changes the same seed's output (unborrowed)
    "model changed by the first call": (breaching(RunsTheModelInTrainingMode, leave_the_model_in_eval_mode), True,
                                        False, r"model state features\.1\.running_mean changed"),
    "autograd history": (breaching(Brighten, lambda t, x, y, m, x2, y2: (x2 + 0 * x if x.requires_grad else x2, y2)),
                         False, False, "the output at p=1.0 carries autograd history"),
    "autograd history at p=0.5": (breaching(Brighten, lambda t, x, y, m, x2, y2: (
        x2 + 0 * x if x.requires_grad and t.p < 1 else x2, y2)), False, False,
        r"the output at p=0.5 carries autograd history"),
    "a leaf requiring grad": (breaching(Brighten, lambda t, x, y, m, x2, y2: (
        x2.requires_grad_(True) if x.requires_grad else x2, y2)), False, False, "carries autograd history"),
    "batch of one squeezed": (breaching(Brighten, lambda t, x, y, m, x2, y2: (x2[0] if len(x) == 1 else x2, y2)),
                              False, False, r"a batch of one came back as \(1, 8, 8\)"),
    "empty batch in training": (breaching(Brighten, lambda t, x, y, m, x2, y2: (
        x2.flatten(1) if len(x) == 0 and TRAIN(t) else x2, y2)), False, False,
        r"an empty batch in train mode came back as \(0, 64\)"),
    "empty batch in eval": (breaching(Brighten, lambda t, x, y, m, x2, y2: (
        x2.flatten(1) if len(x) == 0 and EVAL(t) else x2, y2)), False, False,
        r"an empty batch in eval mode came back as \(0, 64\)"),
    "empty labels": (breaching(Brighten, lambda t, x, y, m, x2, y2: (x2, y2.view(0, 1) if len(x) == 0 else y2)),
                     False, False, r"an empty batch's labels in train mode came back as \(0, 1\)"),
    "empty batch counted": (breaching(Brighten, lambda t, x, y, m, x2, y2: (
        (counts(t, x, 1, 0) if len(x) == 0 else None), (x2, y2))[1]), False, False,
        "an empty batch in train mode was counted"),
    "float64 to float32": (breaching(Brighten, lambda t, x, y, m, x2, y2: (x2.float(), y2)), False, False,
                           "float64 input came back as torch.float32"),
    "model optional": (class_without_a_model(ScoresWithTheModel), True, False,
                       r"no TypeError raised \(expected one matching 'model'\)"),
    "model refusal without its name": (TypeErrorWithoutTheWord, True, False,
                                       r"TypeError 'ScoresWithTheModel needs the classifier' does not match 'model'"),
    "labels optional": (class_without_labels(), False, False, "no ValueError raised .*needs labels"),
    "labels optional in training": (class_without_labels(eval=False), False, False, "no ValueError raised"),
    "labels optional in eval": (class_without_labels(train=False), False, False, "no ValueError raised"),
    "labels optional when left out": (LabelsOptionalWhenOmitted, False, False, "no ValueError raised"),
    "y=None gives labels": (breaching(Brighten, lambda t, x, y, m, x2, y2: (x2, torch.zeros(len(x)) if y is None else
                                                                           y2)), False, False, "y=None at p=1.0 did not"),
    "y=None gives other images": (breaching(Brighten, lambda t, x, y, m, x2, y2: (x2 / 2 if y is None else x2, y2)),
                                  False, False, "y=None at p=1.0 did not give the labelled call's images"),
    "y=None counted twice": (breaching(Brighten, lambda t, x, y, m, x2, y2: (
        (counts(t, x, len(x), 0) if y is None and TRAIN(t) else None), (x2, y2))[1]), False, False,
        "y=None at p=1.0 did not give the labelled call's images, stats"),
    "y=None at p=0.5": (breaching(Brighten, lambda t, x, y, m, x2, y2: (x2 / 2 if y is None and t.p < 1 else x2, y2)),
                        False, False, "y=None at p=0.5 did not"),
    "model taken in y's place": (breaching(ScoresWithTheModel, lambda t, x, y, m, x2, y2: (x2, None if isinstance(
        y, torch.nn.Module) else y2)), True, False, r"no TypeError raised \(expected one matching 't.*model=model"),
}


@pytest.mark.parametrize("breach", BREACHES)
def test_each_breach_of_the_contract_is_caught_and_named(breach, batch, net):
    """Each check of check_transform_contract trips on a method that breaks only that rule (a check that no method
    can trip would pass any method)."""
    make, with_model, returns_x, message = BREACHES[breach]
    with pytest.raises(AssertionError, match=message):
        check_transform_contract(lambda **kw: make(**kw), *batch, model=net if with_model else None,
                                 returns_x=returns_x)


class LeavesTheImages(Brighten):
    """A method that acts elsewhere (ISDA: on the classifier's features) and returns x itself: returns_x=True."""

    def forward(self, x, y=None, model=None, index=None, *, params=None):
        return x, super().forward(x, y, model, index, params=params)[1]


class FixedShift(Brighten):
    """Draws nothing: its one "draw" is a constant (as LatentAdversarial(random_start=False)'s start)."""

    def make_params(self, n, generator, device):
        return {"shift": torch.full((n,), 0.1, device=device)}


class OftenBrighten(Brighten):
    """Transforms half the samples by default, as torchvision's random flips."""

    def __init__(self, *, p=0.5, generator=None):
        super().__init__(p=p, generator=generator)


def test_draws_that_are_constants_and_a_default_p_below_1_pass(batch):
    """The checks that make_params draws from its generator and that transform keeps the draws pass a method whose
    "draws" are constants and one that selects half its samples by default (its call's draws are not the seed's
    first)."""
    check_transform_contract(lambda **kw: FixedShift(**kw), *batch)
    check_transform_contract(lambda **kw: OftenBrighten(**kw), *batch)
    # audit 439: one whose call selects none of the batch (so draws and keeps none)
    check_transform_contract(lambda p=0.01, **kw: Brighten(p=p, **kw), *batch)


class MarksUnshiftedByNaN(Brighten):
    """Marks the samples it leaves as they are by a NaN shift: a draw the library takes and replays as drawn."""

    def make_params(self, n, generator, device):
        shift = super().make_params(n, generator, device)["shift"]
        return {"shift": shift.masked_fill(shift < 0.1, float("nan"))}

    def transform(self, x, y, model, params, index=None):
        return super().transform(x, y, model, {"shift": params["shift"].nan_to_num(0.0)})


class ShiftsNone(MarksUnshiftedByNaN):
    """Its one "draw" a constant NaN (no shift for any sample)."""

    def make_params(self, n, generator, device):
        return {"shift": torch.full((n,), float("nan"), device=device)}


def test_draws_holding_nan_pass(batch):
    """Audit 439: NaN != NaN, so the same draws holding a NaN were told apart: a NaN drawn from the generator read as
    "transform changed its params in place", a constant NaN as "drew nothing from its generator, yet its draws
    change"."""
    check_transform_contract(lambda **kw: MarksUnshiftedByNaN(**kw), *batch)
    check_transform_contract(lambda **kw: ShiftsNone(**kw), *batch)


def test_a_label_mixing_method_written_as_the_docs_say_passes(batch):
    check_transform_contract(lambda **kw: PixelMixup(num_classes=10, **kw), *batch)


def test_soft_labels_give_their_own_classes_whatever_num_classes_says(batch):
    """(B, K) soft labels set the width K of the mixed labels; num_classes (10 by default) is for class indices
    (mutation round 366: every soft batch checked had K = 10)."""
    y = torch.softmax(torch.randn(len(batch[1]), 4, generator=torch.Generator().manual_seed(0)), 1)
    check_transform_contract(lambda **kw: PixelMixup(num_classes=4, **kw), batch[0], y)


def test_a_method_returning_x_itself_passes_with_returns_x(batch):
    check_transform_contract(lambda **kw: LeavesTheImages(**kw), *batch, returns_x=True)


def test_images_at_the_ends_of_0_1_pass(batch):
    """Black-and-white images (thresholded MNIST) give outputs of exactly 0 and 1: inside [0, 1] (mutation round 372:
    no batch checked held a 0)."""
    x, y = (batch[0] > 0.5).float(), batch[1]
    check_transform_contract(lambda **kw: LeavesTheImages(**kw), x, y, returns_x=True)
    check_transform_contract(lambda **kw: PixelMixup(num_classes=10, **kw), x, y)


def test_an_unpicklable_method_is_caught(batch):
    with pytest.raises((pickle.PicklingError, AttributeError), match="pickle"):
        check_transform_contract(lambda **kw: Unpicklable(**kw), *batch)


# -- what the check did not catch: a change of the caller's x or y, labels' dtype, requires_grad, a torch.Generator --
class ClampsTheCallersImages(Brighten):
    """Clamps the images in place before brightening: the caller's batch changes (the same each time, so the same
    seed still gives the same output)."""

    def transform(self, x, y, model, params, index=None):
        return super().transform(x.clamp_(0.1, 0.9), y, model, params)


class ZeroesTheCallersLabels(Brighten):
    def transform(self, x, y, model, params, index=None):
        return super().transform(x, y.zero_() if y is not None else y, model, params)


class SeededByIntsOnly(Brighten):
    """Takes an int seed, drops a torch.Generator (a private stream instead): not seeded by ``generator=``."""

    def __init__(self, *, p=1.0, generator=None):
        super().__init__(p=p, generator=generator if isinstance(generator, int) else None)


class DrawsFromItsOwnGenerator(Brighten):
    """Draws from a generator of its own, seeded once: every seed makes the same draws (the same seed too, so the
    same output), and the draws are kept in make_params (so replayed)."""

    def __init__(self, *, p=1.0, generator=None):
        super().__init__(p=p, generator=generator)
        self.own = torch.Generator().manual_seed(1234)

    def make_params(self, n, generator, device):
        return super().make_params(n, self.own, device)


class SeededByInitialSeed(Brighten):
    """Draws from a generator seeded by ``generator.initial_seed()`` on each call: every call the same draws."""

    def make_params(self, n, generator, device):
        return super().make_params(n, torch.Generator(device=device).manual_seed(generator.initial_seed()), device)


class HalvesItsDraws(Brighten):
    """Changes its draws in place in transform: a replay of ``last_params`` halves them again."""

    def transform(self, x, y, model, params, index=None):
        params["shift"].mul_(0.5)
        return super().transform(x, y, model, params)


class OftenHalvesItsDraws(HalvesItsDraws, OftenBrighten):
    """HalvesItsDraws transforming half the samples by default."""


def leave_the_parameters_frozen(t, x, y, model, x2, y2):
    if isinstance(model, torch.nn.Module):
        model.requires_grad_(False)  # by hand, not borrowed(model): not given back
    return x2, y2


MORE_BREACHES = {  # as BREACHES; each passed the check before it named them
    "caller's x clamped in place": (ClampsTheCallersImages, False, False, "changed the caller's x in place"),
    "caller's y zeroed in place": (ZeroesTheCallersLabels, False, False, "changed the caller's y in place"),
    "labels made float": (breaching(Brighten, lambda t, x, y, m, x2, y2: (x2, y2.float() if y2 is not None else y2)),
                          False, False, r"the labels changed: y2 \(12,\) torch.float32 on cpu, y \(12,\) torch.int64"),
    "soft labels in float64": (breaching(mixing, lambda t, x, y, m, x2, y2: (x2, y2.double())), False, False,
                               "returned y2 as torch.float64 on cpu, not torch.float32 on cpu"),
    "soft labels on another device": (breaching(mixing, lambda t, x, y, m, x2, y2: (x2, y2.to("meta"))), False, False,
                                      "returned y2 as torch.float32 on meta, not torch.float32 on cpu"),
    "labels on another device": (breaching(Brighten, lambda t, x, y, m, x2, y2: (
        x2, y2.to("meta") if y2 is not None else y2)), False, False,
        r"the labels changed: y2 \(12,\) torch.int64 on meta"),
    "p=0 labels not one-hot": (breaching(mixing, lambda t, x, y, m, x2, y2: (
        x2, 0.9 * y2 + 0.01 if t.p == 0 and t.training and len(y2) else y2)), False, False, "p=0 changed the labels"),
    "p=0 labels in float64": (breaching(mixing, lambda t, x, y, m, x2, y2: (  # torch.equal took them: equal values
        x2, y2.double() if t.p == 0 and t.training else y2)), False, False, "p=0 changed the labels"),
    "requires_grad left off": (breaching(ScoresWithTheModel, leave_the_parameters_frozen), True, False,
                               "parameters' requires_grad changed"),
    "a torch.Generator dropped": (SeededByIntsOnly, False, False,
                                  r"generator=torch.Generator\(\).manual_seed\(0\) gave another output than"),
    "a generator of its own": (DrawsFromItsOwnGenerator, False, False,
                               "make_params drew nothing from its generator, yet its draws \\(shift\\) change"),
    "seeded by generator.initial_seed()": (SeededByInitialSeed, False, False,
                                           "make_params drew nothing from its generator"),
    # caught before by the replay, as a draw made outside make_params
    "draws changed in place": (HalvesItsDraws, False, False, "transform changed its params in place"),
    # audit 439: checked at p=1 only; at p=0.5 blamed on a draw outside make_params
    "draws changed in place at p=0.5": (OftenHalvesItsDraws, False, False, "transform changed its params in place"),
    "y=None gives float64": (breaching(Brighten, lambda t, x, y, m, x2, y2: (x2.double() if y is None else x2, y2)),
                             False, False, "y=None at p=1.0 did not give the labelled call's images"),
    "eval with y=None copies x": (breaching(Brighten, lambda t, x, y, m, x2, y2: (
        x2.clone() if y is None and EVAL(t) else x2, y2)), False, False, r"eval\(\) mode did not return x and None"),
    "eval with y=None gives labels": (breaching(Brighten, lambda t, x, y, m, x2, y2: (
        x2, torch.zeros(len(x), dtype=torch.int64) if y is None and EVAL(t) else y2)), False, False,
        r"eval\(\) mode did not return x and None"),
}


@pytest.mark.parametrize("breach", MORE_BREACHES)
def test_a_breach_the_check_let_pass_is_caught_and_named(breach, batch, net):
    make, with_model, returns_x, message = MORE_BREACHES[breach]
    with pytest.raises(AssertionError, match=message):
        check_transform_contract(lambda **kw: make(**kw), *batch, model=net if with_model else None,
                                 returns_x=returns_x)


# -- a generated family: one rule broken, on a batch of any form the check takes --------------------------------------
ONLY_UNLABELLED = r"y=None at p=1\.0 did not give the labelled call's images"


def shift_labels(y):
    """Another label for every sample, in place: class indices moved by one, soft labels' classes rolled."""
    return y.copy_(y.roll(1, 1) if y.is_floating_point() else (y + 1) % 10)


def other_dtype(t):
    return {torch.float64: torch.float32, torch.int64: torch.int32}.get(t.dtype, torch.float64)


def with_nan(x2):
    x2 = x2.clone()
    x2[0, 0, 0, 0] = float("nan")
    return x2


def in_place(v):
    with torch.no_grad():  # also on the check's x that requires grad
        v.mul_(0.5) if v.is_floating_point() else shift_labels(v)


# rule: (breach(t, x, y, x2, y2) -> the call's output (None: no breach in this call), the message of a labelled
# breach as message(x, mixing), of an unlabelled one (None: no call without labels reaches it))
def busy(t, x):
    return t.training and len(x) > 0


RULES = {
    "x in place": (lambda t, x, y, x2, y2: (in_place(x), (x2, y2))[1], lambda x, m: "changed the caller's x in place",
                   "changed the caller's x in place"),
    "y in place": (lambda t, x, y, x2, y2: (in_place(y), (x2, y2))[1], lambda x, m: "changed the caller's y in place",
                   None),
    "x2 of another dtype": (lambda t, x, y, x2, y2: (x2.to(other_dtype(x2)), y2) if busy(t, x) else None,
                            lambda x, m: rf"x2 is \(.*\) {other_dtype(x)} on cpu, x", ONLY_UNLABELLED),
    "x2 narrower": (lambda t, x, y, x2, y2: (x2[..., 1:], y2) if busy(t, x) else None,
                    lambda x, m: rf"x2 is \({', '.join(map(str, x.shape[:3]))}, {x.shape[3] - 1}\)", ONLY_UNLABELLED),
    "x2 above 1": (lambda t, x, y, x2, y2: (x2 + 2, y2) if busy(t, x) else None,
                   lambda x, m: r"x2 is not finite and in \[0, 1\]", ONLY_UNLABELLED),
    "x2 with a NaN": (lambda t, x, y, x2, y2: (with_nan(x2), y2) if busy(t, x) else None,
                      lambda x, m: r"x2 is not finite and in \[0, 1\]", ONLY_UNLABELLED),
    "global noise": (lambda t, x, y, x2, y2: (x2 * (1 - 0.1 * torch.rand(x2.shape)).to(x2.dtype), y2)
                     if busy(t, x) else None, lambda x, m: "the same seed gave another output", ONLY_UNLABELLED),
    "stats not counted": (lambda t, x, y, x2, y2: (t.reset_stats(), (x2, y2))[1] if busy(t, x) else None,
                          lambda x, m: f"do not count the batch of {len(x)}", ONLY_UNLABELLED + ", stats"),
    "one tensor returned": (lambda t, x, y, x2, y2: x2, lambda x, m: r"the call returned .*, not \(x2, y2\)",
                            r"the call returned .*, not \(x2, y2\)"),
    "labels changed": (lambda t, x, y, x2, y2: (x2, shift_labels(y2.clone())) if busy(t, x) else None,
                       lambda x, m: "p=0 changed the labels" if m else "the labels changed", None),
    "labels of another dtype": (lambda t, x, y, x2, y2: (x2, y2.to(other_dtype(y2))) if busy(t, x) else None,
                                lambda x, m: "returned y2 as torch" if m else "the labels changed: y2", None),
    "labels dropped": (lambda t, x, y, x2, y2: (x2, None) if busy(t, x) else None,
                       lambda x, m: "returned y2 of shape NoneType" if m else "the labels changed: y2 NoneType", None),
    "p=0 not the identity": (lambda t, x, y, x2, y2: (1 - x2, y2) if t.p == 0 and busy(t, x) else None,
                             lambda x, m: "p=0 changed x", None),
    "eval copies x": (lambda t, x, y, x2, y2: (x2.clone(), y2) if not t.training else None,
                      lambda x, m: r"eval\(\) mode did not return x and y themselves",
                      r"eval\(\) mode did not return x and None for y=None"),
    "autograd history": (lambda t, x, y, x2, y2: (x2 + 0 * x, y2) if x.requires_grad else None,
                         lambda x, m: "carries autograd history", None),
    "batch of one squeezed": (lambda t, x, y, x2, y2: (x2[0], y2) if len(x) == 1 else None,
                              lambda x, m: r"a batch of one came back as \(", None),
    "empty batch flattened": (lambda t, x, y, x2, y2: (x2.flatten(1), y2) if len(x) == 0 else None,
                              lambda x, m: "an empty batch in train mode came back as", None),
    "labels for y=None": (lambda t, x, y, x2, y2: (x2, torch.zeros(len(x), dtype=torch.long)),
                          None, ONLY_UNLABELLED + ", stats and None labels"),
}
FAMILY = [(rule, mixes, unlabelled) for rule, (_, labelled, unlabelled_message) in RULES.items()
          for mixes in (False, True) for unlabelled in (False, True)
          if (labelled if not unlabelled else unlabelled_message) is not None and not (mixes and unlabelled)]


def breaking(rule, mixes, unlabelled):
    """A correct method (Brighten, or PixelMixup if ``mixes``) that breaks ``rule`` in its calls with labels, or in
    those without (``unlabelled``), and in no others."""

    class OneRuleBroken(PixelMixup if mixes else Brighten):
        def forward(self, x, y=None, model=None, index=None, *, params=None):
            out = super().forward(x, y, model, index, params=params)
            broken = RULES[rule][0](self, x, y, *out) if (y is None) == unlabelled else None
            return out if broken is None else broken

    return lambda **kw: OneRuleBroken(num_classes=10, **kw) if mixes else OneRuleBroken(**kw)


def any_batch(b, c, h, w, dtype, soft, seed):
    """x: (b, c, h, w) of ``dtype`` in [0, 1]; y: (b,) class indices in [0, 10) or (b, 10) soft labels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, c, h, w, generator=g).to(dtype)
    return x, torch.softmax(3 * torch.randn(b, 10, generator=g), 1) if soft else torch.randint(0, 10, (b,), generator=g)


batches = st.builds(any_batch, b=st.integers(2, 5), c=st.sampled_from([1, 3]), h=st.integers(2, 5),
                    w=st.integers(2, 5), dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
                    soft=st.booleans(), seed=st.integers(0, 2**16))


@settings(max_examples=40)
@given(batch=batches, mixes=st.booleans())
def test_a_correct_method_passes_on_any_batch(batch, mixes):
    """Images of any size in float32, float64 or bfloat16, class indices or soft labels: no false breach."""
    check_transform_contract(lambda **kw: PixelMixup(num_classes=10, **kw) if mixes else Brighten(**kw), *batch)


@pytest.mark.parametrize("rule, mixes, unlabelled", FAMILY)
@settings(max_examples=3)
@given(batch=batches)
def test_one_rule_broken_is_caught_and_named_on_any_batch(rule, mixes, unlabelled, batch):
    """Each rule broken alone, by a method that mixes labels or not, in its labelled calls or its unlabelled ones,
    on a batch of any form: the check stops with the message naming that rule."""
    _, labelled, unlabelled_message = RULES[rule]
    message = unlabelled_message if unlabelled else labelled(batch[0], mixes)
    with pytest.raises(AssertionError, match=message):
        check_transform_contract(breaking(rule, mixes, unlabelled), *batch)


# -- the library's methods and a codec method of one's own, on the label forms and dtypes they take --------------------
class LatentDropout(CodecTransform):
    """docs/extending.md's codec method: a random share ``rate`` of the standardised latent coordinates set to 0."""

    def __init__(self, codec, rate=0.1, *, levels=None, cache=None, p=1.0, generator=None):
        super().__init__(codec, levels=levels, cache=cache, p=p, generator=generator)
        self.rate = rate

    def make_params(self, n, generator, device):
        u = torch.rand(n, self.level_size(), generator=generator, device=device, dtype=torch.float32)
        return {"drop": self.on_levels_only(u < self.rate)}

    def transform(self, x, y, model, params, index=None):
        z = self.encode_flat(x, index)
        with torch.no_grad():
            return self.decode_flat(z.masked_fill(params["drop"], 0.0)), y


@pytest.mark.parametrize("method, labels, dtype", [
    ("noise", "soft", torch.float32),  # soft labels: 'an empty batch's labels ... came back as (0, 10)'
    ("varmixup", "soft", torch.float32),  # 'p=0 changed the labels'
    ("varmixup", "indices", torch.bfloat16),
    ("dropout", "indices", torch.bfloat16),
    ("dropout", "soft", torch.float64),
])
def test_the_librarys_methods_pass_with_soft_labels_and_any_float_dtype(glow, vae, batch, method, labels, dtype):
    x, y = batch
    if labels == "soft":
        y = torch.softmax(torch.randn(len(y), 10, generator=torch.Generator().manual_seed(0)), 1).to(
            torch.float64 if dtype == torch.float64 else torch.float32)
    make = {"noise": lambda **kw: LatentNoise(glow, eps=3.0, **kw),
            "varmixup": lambda **kw: VarMixup(vae, num_classes=10, **kw),
            "dropout": lambda **kw: LatentDropout(glow, rate=0.2, **kw)}[method]
    check_transform_contract(make, x.to(dtype), y)


# -- bad arguments of the check itself: a TypeError or ValueError naming them, not an internal error ------------------
def brighten(**kw):
    return Brighten(**kw)


BAD_ARGUMENTS = {  # name: (arguments(x, y, net) -> (make, x, y, keywords), exception, message); each failed otherwise
    "the transform, not its make": (lambda x, y, net: (Brighten(), x, y, {}), TypeError,
                                    r"make must build the transform .*, got Brighten itself"),
    "a make that is no function": (lambda x, y, net: (3, x, y, {}), TypeError,
                                   "make must build the transform .*, got int"),
    "a make ignoring generator=": (lambda x, y, net: (lambda **kw: Brighten(), x, y, {}), AssertionError,
                                   "built a transform without the generator: make must pass generator= and p="),
    "a make ignoring p=": (lambda x, y, net: (lambda generator, **kw: Brighten(generator=generator), x, y, {}),
                           AssertionError, r"make\(p=0.0\) built a transform with p=1.0"),
    "a batch of one": (lambda x, y, net: (brighten, x[:1], y[:1], {}), ValueError,
                       "x must hold 2 samples or more .*, got 1"),
    "an empty batch": (lambda x, y, net: (brighten, x[:0], y[:0], {}), ValueError,
                       "x must hold 2 samples or more .*, got 0"),
    "no labels": (lambda x, y, net: (brighten, x, None, {}), ValueError, "y must be the batch's labels, .* not None"),
    "labels as a list": (lambda x, y, net: (lambda **kw: PixelMixup(num_classes=10, **kw), x, y.tolist(), {}),
                         TypeError, "y must be a torch.Tensor, got list"),
    "class indices past num_classes": (lambda x, y, net: (lambda **kw: PixelMixup(num_classes=20, **kw), x, y + 10, {}),
                                       ValueError, r"y has class index 1\d, out of range for num_classes=10: .*num_cl"),
    "a class index equal to num_classes": (lambda x, y, net: (lambda **kw: PixelMixup(num_classes=20, **kw), x,
                                                           torch.cat([y[:-1], y.new_tensor([10])]), {}),
                                           ValueError, r"y has class index 10, out of range for num_classes=10: "),
    "a model that is a function": (lambda x, y, net: (ScoresWithTheModel, x, y, {"model": lambda v: net(v)}),
                                   TypeError, "model must be the classifier .*, got function"),
    "num_classes as text": (lambda x, y, net: (brighten, x, y, {"num_classes": "10"}), TypeError,
                            "num_classes must be an int"),
    "returns_x as text": (lambda x, y, net: (brighten, x, y, {"returns_x": "no"}), TypeError,
                          "returns_x must be True or False"),
    "a transform returning one tensor": (lambda x, y, net: (breaching(Brighten, lambda t, *a: a[-2]), x, y, {}),
                                         AssertionError, r"the call returned .*, not \(x2, y2\)"),
    "a transform returning three values": (lambda x, y, net: (breaching(Brighten, lambda t, *a: (a[-2], a[-1], None)), x,
                                                           y, {}), AssertionError, r"the call returned .*, not \(x2, y2\)"),
}


@pytest.mark.parametrize("case", BAD_ARGUMENTS)
def test_a_bad_argument_is_named_not_an_internal_error(case, batch, net):
    arguments, error, message = BAD_ARGUMENTS[case]
    make, x, y, keywords = arguments(*batch, net)
    with pytest.raises(error, match=message):
        check_transform_contract(make, x, y, **keywords)


def test_class_indices_past_num_classes_pass_a_method_that_keeps_them(batch):
    """num_classes is the width of mixed labels: a method that keeps the labels needs none."""
    check_transform_contract(lambda **kw: Brighten(**kw), batch[0], batch[1] + 10)
    # an unlabelled dataset's stand-in labels, as the check's error for y=None suggests, with their one class
    # (mutation round 366: num_classes=1 went unchecked)
    check_transform_contract(lambda **kw: PixelMixup(num_classes=1, **kw), batch[0], torch.zeros_like(batch[1]),
                             num_classes=1)


def test_the_check_names_a_compose_and_what_to_check_instead(glow, batch):
    with pytest.raises(AssertionError, match="got Compose: check each of its steps' make on its own"):
        check_transform_contract(lambda **kw: Compose([LatentNoise(glow, **kw)]), *batch)
