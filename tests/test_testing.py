"""latent_transforms.testing: the public contract check passes a method of one's own written as docs/extending.md
says, and stops at the mistakes such a method can make."""
import subprocess
import sys

import pytest
import torch

from latent_transforms import LatentTransform
from latent_transforms.modelutils import borrowed
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
