"""latent_transforms.testing: the public contract check passes a method of one's own written as docs/extending.md
says, and stops at the mistakes such a method can make."""
import pickle
import subprocess
import sys
import warnings

import pytest
import torch

from latent_transforms import LatentTransform
from latent_transforms.labels import mix_labels
from latent_transforms.modelutils import borrowed
from latent_transforms.rng import random_partners, sample_beta
from latent_transforms.testing import check_transform_contract


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


def test_the_check_passes_with_warnings_as_errors(batch):
    """A suite run with ``-W error``: at torch 2.4 the check's own pickle round trip warned (torch.load with
    weights_only=False) and failed a transform that had done nothing wrong."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_transform_contract(lambda **kw: Brighten(**kw), *batch)


def test_a_draw_made_outside_make_params_is_caught_by_the_replay(batch):
    with pytest.raises(AssertionError, match="every random draw must be made in make_params"):
        check_transform_contract(lambda **kw: DrawsInTransform(**kw), *batch)


def test_a_model_run_in_training_mode_is_caught(batch, net):
    with pytest.raises(AssertionError, match=r"model state features\.1\.running_mean changed"):
        check_transform_contract(lambda **kw: RunsTheModelInTrainingMode(**kw), *batch, model=net)


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


def counts(t, x, seen, transformed):
    t._count(x.device, seen, torch.tensor(transformed), torch.tensor(0))


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


def test_a_label_mixing_method_written_as_the_docs_say_passes(batch):
    check_transform_contract(lambda **kw: PixelMixup(num_classes=10, **kw), *batch)


def test_a_method_returning_x_itself_passes_with_returns_x(batch):
    check_transform_contract(lambda **kw: LeavesTheImages(**kw), *batch, returns_x=True)


def test_an_unpicklable_method_is_caught(batch):
    with pytest.raises((pickle.PicklingError, AttributeError), match="pickle"):
        check_transform_contract(lambda **kw: Unpicklable(**kw), *batch)
