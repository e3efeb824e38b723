"""The metrics and training loop shared by the demo and the benchmarks (latent_transforms.evaluation)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latent_transforms.evaluation import (accuracy, expected_calibration_error, fit_classifier, predict_proba,
                                          reliability_bins)
from latent_transforms.models import CIFAR10_MEAN, CIFAR10_STD, CifarResNet18
from latent_transforms.modelutils import borrowed, describe_device, logits_of
from latent_transforms.validation import WrongTypeError


def _probs(confidences: list[float], predicted: list[int], k: int = 3) -> torch.Tensor:
    """Rows whose largest probability is ``confidences[i]`` at class ``predicted[i]``, the rest spread evenly."""
    rows = []
    for c, p in zip(confidences, predicted):
        row = torch.full((k,), (1 - c) / (k - 1))
        row[p] = c
        rows.append(row)
    return torch.stack(rows)


def test_ece_by_hand():
    # bin (0.6, 0.667]: confidences 0.65, 0.65, one right -> gap |0.65 - 0.5| = 0.15, weight 2/4
    # bin (0.933, 1.0]: confidences 0.95, 0.95, both right -> gap 0.05, weight 2/4
    probs = _probs([0.65, 0.65, 0.95, 0.95], [0, 1, 2, 2])
    y = torch.tensor([0, 2, 2, 2])
    assert accuracy(probs, y) == pytest.approx(0.75)
    assert expected_calibration_error(probs, y, bins=15) == pytest.approx(0.5 * 0.15 + 0.5 * 0.05, abs=1e-6)
    # perfectly calibrated within each bin: zero
    assert expected_calibration_error(_probs([0.5, 0.5], [0, 0]), torch.tensor([0, 1]), bins=10) == pytest.approx(0.0, abs=1e-6)
    # one bin: |mean confidence - accuracy|
    assert expected_calibration_error(probs, y, bins=1) == pytest.approx(abs(0.8 - 0.75), abs=1e-6)
    r = reliability_bins(probs, y, bins=15)
    assert r["count"][9].item() == 2 and r["count"][14].item() == 2 and r["count"].sum().item() == 4
    assert r["confidence_sum"][9].item() == pytest.approx(1.3) and r["correct_sum"].tolist()[9::5] == [1.0, 2.0]
    # a confidence on a bin edge goes to the lower bin, (lo, hi]: 0.6 with 5 bins is in (0.4, 0.6]
    assert reliability_bins(_probs([0.6], [0]), torch.tensor([0]), bins=5)["count"].tolist() == [0, 0, 1, 0, 0]


def test_bin_sums_stay_exact_past_float32_integers():
    # float32 sums stopped counting at 2^24 samples (16,777,216 + 1 == 16,777,216): pooled runs lost samples
    n = 2**24 + 3
    probs, y = torch.ones(n, 1), torch.zeros(n, dtype=torch.int64)
    r = reliability_bins(probs, y, bins=2)
    assert r["count"].tolist() == [0, n] and r["correct_sum"][1].item() == n and r["confidence_sum"][1].item() == n
    assert expected_calibration_error(probs, y, bins=2) == 0.0


def test_float64_confidences_are_binned_and_summed_in_float64():
    # audit 408: float64 confidences were rounded to float32 first; 0.7 + 1 ulp (in (0.7, 0.8]) became 0.69999999 and
    # went to the bin below, 0.6 + 1 ulp too (0.6000000238 * 10 rounds to 6 in float32), and the sums held the rounded
    # values
    for c, right in ((0.7, 7), (0.9, 9), (0.6, 6)):
        above = torch.nextafter(torch.tensor(c, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
        probs = torch.stack([above, 1 - above]).unsqueeze(0)
        bins = reliability_bins(probs, torch.tensor([0]), bins=10)
        assert bins["count"].tolist() == [float(i == right) for i in range(10)], c
        assert bins["confidence_sum"][right].item() == above.item()
        # on the edge itself (k / bins as a float64): the lower bin, (lo, hi]
        edge = torch.tensor([[c, 1 - c]], dtype=torch.float64)
        assert reliability_bins(edge, torch.tensor([0]), bins=10)["count"][right - 1].item() == 1, c


def test_bfloat16_probabilities_are_accepted_and_binned_as_their_float32_values():
    # bf16 softmax rows sum to 1 only to bf16's precision (they were refused as "not probabilities"), and
    # conf * bins computed in bf16 put samples in the bin below (0.9336 * 15 = 14.004 rounds to 14.0)
    probs = torch.randn(2000, 10, generator=torch.Generator().manual_seed(0)).mul(3).softmax(1).bfloat16()
    y = torch.randint(0, 10, (2000,), generator=torch.Generator().manual_seed(1))
    conf = probs.float().max(1).values
    expected = torch.bincount((conf * 15).ceil().long().clamp(1, 15) - 1, minlength=15).double()
    assert torch.equal(reliability_bins(probs, y)["count"], expected)
    assert 0 <= expected_calibration_error(probs, y) <= 1
    off = torch.full((4, 10), 0.0971, dtype=torch.bfloat16)  # rows summing to 0.97: not a softmax's rounding
    with pytest.raises(ValueError, match="probs must be probabilities"):  # soft labels' looser bound let them pass
        expected_calibration_error(off, torch.zeros(4, dtype=torch.int64))


def test_predict_proba_is_batch_independent_and_restores_the_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    model.train()
    x = torch.rand(300, 3, 8, 8)
    default = predict_proba(model, x)
    assert model.training  # eval inside, train mode back after
    assert default.shape == (300, 5) and torch.allclose(default.sum(1), torch.ones(300))
    with torch.no_grad():
        model.eval()
        whole = model(x).softmax(1)
    torch.testing.assert_close(default, whole)  # eval mode: no dropout, running BN statistics
    torch.testing.assert_close(predict_proba(model, x, batch_size=7), whole)
    model.train()
    model[1].eval()  # a BatchNorm frozen during fine-tuning stays frozen
    predict_proba(model, x[:4])
    assert [m.training for m in model] == [True, False, True, True, True, True, True]


def test_predict_proba_runs_batches_of_128_on_the_cpu_by_default():
    sizes = []
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    model.register_forward_hook(lambda module, args, out: sizes.append(len(args[0])))
    predict_proba(model, torch.rand(300, 3, 2, 2))
    assert sizes == [128, 128, 44]  # smaller batches stay in the CPU's cache (the docstring's measurement)
    sizes.clear()
    predict_proba(model, torch.rand(300, 3, 2, 2), batch_size=100)
    assert sizes == [100, 100, 100]


def test_predict_proba_of_a_16_bit_model_is_the_float32_softmax_of_its_logits():
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Flatten(), nn.Linear(12, 5)).bfloat16(), torch.rand(16, 3, 2, 2).bfloat16()
    probs = predict_proba(model, x)
    with torch.no_grad():
        expected = model(x).float().softmax(1)
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs, expected, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_predict_proba_keeps_a_float32_or_float64_models_dtype_as_latent_mixup_inference(dtype):
    """predict_proba cast every model's logits to float32, where LatentMixupInference gives a float64 model float64
    probabilities: both give the logits' dtype, at least float32 (16 bits: the test above)."""
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Flatten(), nn.Linear(12, 5)).to(dtype), torch.rand(16, 3, 2, 2, dtype=dtype)
    probs = predict_proba(model, x, batch_size=8)
    with torch.no_grad():
        expected = model(x).softmax(1)
    assert probs.dtype == dtype
    torch.testing.assert_close(probs, expected, rtol=0, atol=0)
    assert predict_proba(model, x[:0]).dtype == dtype  # the empty batch's (0, K) alike


def test_predict_proba_of_an_empty_batch_is_the_models_0_by_k_that_pools_as_no_rows():
    """A rank's empty shard (``x[rank::world]`` of fewer samples than ranks) raised "x must be a non-empty batch" while
    the other ranks waited in their all_reduce of reliability_bins' sums; LatentMixupInference gives (0, K)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5)).bfloat16()
    probs = predict_proba(model, torch.rand(0, 3, 2, 2).bfloat16())
    assert probs.shape == (0, 5) and probs.dtype == torch.float32  # float32, as for a batch of rows
    empty = reliability_bins(probs, torch.zeros(0, dtype=torch.int64))
    assert all(v.shape == (15,) and not v.any() for v in empty.values())


def test_predict_proba_tells_integer_images_their_scaling_not_a_cast():
    """uint8 images given to a float model were told to cast, "x.to(torch.float32) or model.to(torch.uint8)": the
    cast leaves them at 0 to 255, where the model was trained on [0, 1]."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    with pytest.raises(ValueError, match=r"predict_proba got x in torch.uint8 for its model in torch.float32, which "
                                         r"torch refused \(.*\): a float model takes float images: convert with "
                                         r"x.float\(\) / 255 for uint8 images$"):
        predict_proba(model, torch.zeros(2, 3, 2, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"got x in torch.float64 .*: cast one to the other's dtype "
                                         r"\(x.to\(torch.float32\) or model.to\(torch.float64\)\)"):  # floats: a cast
        predict_proba(model, torch.zeros(2, 3, 2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"got x in torch.int64 .*: cast it to the model's dtype "
                                         r"\(x.to\(torch.float32\)\)$"):  # not images: a cast (model.to(int64) fails)
        predict_proba(model, torch.zeros(2, 12, dtype=torch.int64))  # (mutation round 37: told "/ 255")


def test_predict_proba_names_a_model_on_another_device_than_x():
    """torch's own error named neither device ("Input type (torch.FloatTensor) and weight type
    (torch.cuda.FloatTensor) should be the same"); a model that moves its input itself still runs. The meta device
    stands in for a GPU."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5)).to("meta")
    with pytest.raises(ValueError, match=r"^predict_proba's model is on meta but x is on cpu; move it with "
                                         r"\.to\('cpu'\) \(latent-transforms never moves data between devices\)$"):
        predict_proba(model, torch.rand(2, 3, 2, 2))
    moving = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    moving.register_forward_pre_hook(lambda m, args: (args[0].to("meta"),))
    moving.to("meta")
    assert predict_proba(moving, torch.rand(2, 3, 2, 2)).shape == (2, 5)
    moving.register_forward_hook(lambda m, args, out: (_ for _ in ()).throw(RuntimeError("a bug of its own")))
    with pytest.raises(RuntimeError, match="^a bug of its own$"):  # not about devices: torch's error as it is
        predict_proba(moving, torch.rand(2, 3, 2, 2))


def test_predict_proba_names_its_model_when_it_is_not_an_nn_module():
    # mutation round 48: borrowed's check_model without its who said "the model must be the classifier"
    with pytest.raises(TypeError, match=r"^predict_proba's model must be the classifier, an nn.Module"):
        predict_proba(lambda x: x, torch.rand(2, 3))


def test_predict_proba_names_a_model_that_returns_a_tuple():
    class WithFeatures(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :3], x

    with pytest.raises(ValueError, match=r"predict_proba needs model\(x\) to return \(B, K\) logits, got a tuple; "
                                         r"pass a wrapper nn.Module whose forward returns the logits \(for example "
                                         r"model\(x\)\[0\] or model\(x\)\['logits'\]\)$"):
        predict_proba(WithFeatures(), torch.rand(4, 3, 2, 2))


@pytest.mark.parametrize("probs,y,match", [
    (torch.full((3, 2), 0.5), torch.zeros(3, 1, dtype=torch.int64), "must be \\(N,\\) class indices"),
    (torch.full((3, 2), 0.5), torch.zeros(1, dtype=torch.int64), r"with N=3 \(the rows of probs\), got shape \(1,\)"),
    (torch.tensor([[2.0, -1.0]]), torch.zeros(1, dtype=torch.int64), "softmax logits first"),  # logits by mistake
    (torch.tensor([[-0.2, 0.6, 0.6]]), torch.zeros(1, dtype=torch.int64), r"values in \[-0.2, 0.6\]"),  # sums to 1
    (torch.tensor([[float("nan"), 1.0]]), torch.zeros(1, dtype=torch.int64), "must be probabilities"),
    (torch.zeros(0, 2), torch.zeros(0, dtype=torch.int64), "non-empty"),
    (torch.zeros(2, 0), torch.zeros(2, dtype=torch.int64), r"\(N, K\) float tensor, got \(2, 0\)"),  # min()'s error
    (torch.full((1, 2), 0.5), torch.tensor([2]), "out of range"),
])
def test_metrics_refuse_what_is_not_a_prediction(probs, y, match):
    for metric in (accuracy, expected_calibration_error):
        with pytest.raises(ValueError, match=match):
            metric(probs, y)


def test_metrics_refuse_probs_that_are_not_a_tensor_as_a_wrong_type():
    """A list of rows was a plain ValueError, where the package gives a wrong type a TypeError: a WrongTypeError, both,
    keeps `except ValueError` working."""
    for metric in (accuracy, expected_calibration_error, reliability_bins):
        with pytest.raises(WrongTypeError, match=r"probs must be a .*\(N, K\) float tensor, got list"):
            metric([[0.5, 0.5]], torch.zeros(1, dtype=torch.int64))



def test_training_bar_in_a_log_shows_its_loss_without_writing_every_epoch(capsys):
    # the loss shown each epoch refreshed the bar: a log got one state per epoch past the 30 s throttle
    model, x, y = nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), torch.rand(8, 3, 2, 2), torch.zeros(8, dtype=torch.int64)
    fit_classifier(model, x, y, epochs=40, batch_size=8, desc="fit")
    states = [s for s in capsys.readouterr().err.split("\r") if s.strip()]
    assert 1 <= len(states) <= 3 and all(s.startswith("fit") for s in states)

def test_bad_training_and_prediction_settings_are_named():
    model, x, y = nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), torch.rand(8, 3, 2, 2), torch.zeros(8, dtype=torch.int64)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        fit_classifier(model, x, y, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="epochs must be an int >= 1"):
        fit_classifier(model, x, y, epochs=0, progress=False)
    with pytest.raises(ValueError, match="batch sizes differ"):
        fit_classifier(model, x, y[:4], progress=False)
    with pytest.raises(ValueError, match="NaN"):
        fit_classifier(model, x.clone().fill_(float("nan")), y, progress=False)
    with pytest.raises(ValueError, match=r"weight_decay must be a finite number in \[0, inf\), got -0.1"):
        fit_classifier(model, x, y, weight_decay=-0.1, progress=False)  # torch's SGD named no fix
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        predict_proba(model, x, batch_size=0)
    with pytest.raises(ValueError, match="bins must be an int >= 1"):
        expected_calibration_error(torch.full((1, 2), 0.5), torch.zeros(1, dtype=torch.int64), bins=0)
    # found by bad-input fuzzing (audit 234): torch's OverflowError "int too big to convert" (2**70), its RuntimeErrors
    # "Promotion for uint16, uint32, uint64 types is not supported" (2**63) and "Storage size calculation overflowed"
    # (2**62) named no argument; within the bound, the allocator's own "can't allocate memory"
    bound = (2**63 - 1) // (3 * 8)  # three float64 sums per bin
    for bins in (2**70, 2**63, 2**62, bound + 1):
        for f in (expected_calibration_error, reliability_bins):
            with pytest.raises(ValueError, match=rf"^bins must be an int in \[1, {bound}\] \(24 bytes each; a torch "
                                                 rf"tensor holds at most 2\*\*63 - 1 bytes\), got {bins}$"):
                f(torch.full((1, 2), 0.5), torch.zeros(1, dtype=torch.int64), bins=bins)


class _Pair(nn.Module):
    """Logits and features, as a model that returns both does."""

    def forward(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return logits, logits


@pytest.mark.parametrize("model, y, error, match", [
    (nn.Sequential(nn.Flatten(), nn.Linear(12, 5)), torch.arange(8), ValueError,  # was IndexError "Target 7 is out of bounds."
     r"^fit_classifier: labels y must be class indices in \[0, 5\) for the model's 5 outputs, got 7$"),
    (nn.Sequential(nn.Flatten(), nn.Linear(12, 7)), torch.arange(8), ValueError,  # the first label beyond (round 33)
     r"^fit_classifier: labels y must be class indices in \[0, 7\) for the model's 7 outputs, got 7$"),
    (nn.Sequential(nn.Flatten(), nn.Linear(12, 10)), torch.full((8, 5), 0.2), ValueError,  # was torch's "0D or 1D target"
     r"^fit_classifier: soft labels y have 5 columns but the model has 10 outputs$"),
    (None, torch.arange(8), TypeError, r"^fit_classifier's model must be the classifier, an nn.Module"),  # AttributeError
    (lambda x: x, torch.arange(8), TypeError, r"^fit_classifier's model must be the classifier"),
    (nn.Sequential(nn.Flatten(), nn.Linear(12, 10), _Pair()), torch.arange(8), ValueError,  # cross_entropy's TypeError
     r"^fit_classifier needs model\(x\) to return \(B, K\) logits, got a tuple"),
    (nn.Sequential(nn.Flatten(), nn.Linear(12, 1)), torch.zeros(8, dtype=torch.int64), ValueError,  # trained on nothing
     r"^fit_classifier needs model\(x\) to return \(B, K\) class logits, K >= 2, got one output"),
])
def test_fit_classifier_names_a_model_that_does_not_fit_the_labels(model, y, error, match):
    """Found by bad-input fuzzing (audit 234): fit_classifier checked x and y but not what the model made of them, and
    torch's errors came from deep in the loop (or, for one output, a loss of 0 trained nothing, silently)."""
    with pytest.raises(error, match=match):
        fit_classifier(model, torch.rand(8, 3, 2, 2), y, epochs=1, batch_size=4, progress=False)


def test_fit_classifier_trains_on_soft_labels_of_the_models_width():
    """Mutation round 33 (audit 239): soft labels are checked by their columns, not their rows (8 rows, 5 classes)."""
    y = F.one_hot(torch.arange(8) % 5, 5).float()
    assert fit_classifier(nn.Sequential(nn.Flatten(), nn.Linear(12, 5)), torch.rand(8, 3, 2, 2), y, epochs=1,
                          batch_size=4, progress=False) > 0


@pytest.mark.parametrize("seed", [0, 1])
def test_fit_classifier_names_a_label_out_of_range_wherever_it_is_in_y(seed):
    """Mutation round 32 (audit 238): all of y is checked at the first step, not the first batch's labels only (a
    label outside the model's outputs in a later batch was torch's IndexError there, the model half trained)."""
    y = torch.zeros(8, dtype=torch.int64)
    y[0] = 7  # in the first batch of one only where the shuffle puts it first
    with pytest.raises(ValueError, match=r"^fit_classifier: labels y must be class indices in \[0, 5\) .*, got 7$"):
        fit_classifier(nn.Sequential(nn.Flatten(), nn.Linear(12, 5)), torch.rand(8, 3, 2, 2), y, epochs=1,
                       batch_size=1, seed=seed, progress=False)


@pytest.mark.parametrize("classes", [10, 3])  # more or fewer than the model's (fewer: mutation round 33, audit 239)
def test_fit_classifier_names_an_augment_whose_soft_labels_do_not_fit_the_model(classes):
    """Mutation round 32 (audit 238) noticed: soft labels of another width from the augment (VarMixup(num_classes=10)
    for a 5-output model) met torch's "0D or 1D target tensor expected, multi-target not supported"."""
    def other_classes(x, y, model):
        return x, F.one_hot(y, classes).float()

    with pytest.raises(ValueError, match=rf"^fit_classifier: augment returned soft labels of {classes} classes for "
                                         rf"the model's 5 outputs: build it with num_classes=5$"):
        fit_classifier(nn.Sequential(nn.Flatten(), nn.Linear(12, 5)), torch.rand(8, 3, 2, 2),
                       torch.zeros(8, dtype=torch.int64), other_classes, epochs=1, batch_size=4, progress=False)


def test_fit_classifier_learns_a_separable_problem_and_is_seeded():
    def run(draws: int = 0) -> tuple[nn.Module, float]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
        g = torch.Generator().manual_seed(1)
        x = torch.rand(128, 3, 2, 2, generator=g)
        y = (x.mean((1, 2, 3)) > 0.5).long()
        torch.rand(draws)  # torch's global RNG elsewhere: the batches' order comes from seed= alone
        seconds = fit_classifier(model, x, y, epochs=40, batch_size=32, lr=0.5, progress=False)
        assert seconds > 0
        return model, accuracy(predict_proba(model, x), y)

    (m1, acc1), (m2, _) = run(), run(draws=5)
    assert acc1 >= 0.9, acc1
    for a, b in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # same seeds: the same weights


def _tiny_problem(classes: int):
    """A linear classifier of 2x2 RGB images and 8 images with labels cycling over ``classes``."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, classes)), torch.rand(8, 3, 2, 2), torch.arange(8) % classes


def test_fit_classifier_drives_every_isdas_epoch_schedule():
    from latent_transforms import ISDA, Compose

    model, x, y = _tiny_problem(3)
    seen = []

    class Recording(ISDA):
        def set_epoch(self, epoch, total_epochs):
            seen.append((epoch, total_epochs))
            super().set_epoch(epoch, total_epochs)

    inner = Recording(3)
    fit_classifier(model, x, y, Compose([inner]), epochs=3, batch_size=4, progress=False)
    assert seen == [(0, 3), (1, 3), (2, 3)] and inner.lam == 0.5 * 2 / 3  # inside a Compose too


def test_confidently_wrong_one_hot_predictions_have_ece_one_in_the_last_bin():
    probs = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 0]), 3).float()  # confidence exactly 1.0
    y = torch.tensor([1, 2, 0, 2])  # every prediction wrong
    assert expected_calibration_error(probs, y) == pytest.approx(1.0)
    for bins in (15, 10, 1):
        assert expected_calibration_error(probs, y, bins=bins) == pytest.approx(1.0)
        r = reliability_bins(probs, y, bins=bins)
        assert r["count"].tolist() == [0.0] * (bins - 1) + [4.0]
        assert r["confidence_sum"][-1].item() == 4.0 and r["correct_sum"].sum().item() == 0.0
    # the same predictions, all right: perfectly calibrated
    assert expected_calibration_error(probs, probs.argmax(1)) == pytest.approx(0.0)


def test_fit_classifier_runs_the_forward_under_the_given_autocast():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    dtypes = []
    model[1].register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    x, y = torch.rand(8, 3, 2, 2), torch.arange(8) % 2
    for dtype in (torch.bfloat16, torch.float16):  # the one given (mutation audit 177: not always bfloat16)
        fit_classifier(model, x, y, epochs=1, batch_size=4, autocast_dtype=dtype, progress=False)
        assert dtypes == [dtype] * 2
        dtypes.clear()
    fit_classifier(model, x, y, epochs=1, batch_size=4, progress=False)
    assert dtypes == [torch.float32] * 2
    dtypes.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # none given: float32 under the caller's autocast too
        fit_classifier(model, x, y, epochs=1, batch_size=4, progress=False)
    assert dtypes == [torch.float32] * 2
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_fit_classifier_puts_the_augmentation_in_training_mode():
    from latent_transforms import LatentTransform

    class Jitter(LatentTransform):
        def make_params(self, n, generator, device):
            return {"noise": torch.randn(n, generator=generator, device=device)}

        def transform(self, x, y, model, params, index=None):
            return x + 0.01 * params["noise"].view(-1, 1, 1, 1), y

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    augment = Jitter(generator=0).eval()  # e.g. left in eval mode by an evaluation before
    x, y = torch.rand(8, 3, 2, 2), torch.arange(8) % 2
    fit_classifier(model, x, y, augment, epochs=2, batch_size=2, progress=False)
    assert augment.training and augment.stats["seen"] == 16 and augment.stats["transformed"] == 16


@pytest.mark.parametrize("n, batch_size, epochs", [(8, 4, 2), (8, 8, 1), (8, 4, 1), (6, 2, 1)])
def test_fit_classifier_runs_very_short_schedules(n, batch_size, epochs):
    # 4 steps in all made torch's OneCycleLR divide by zero (warm-up of 0.25 * 4 - 1 = 0 steps)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    before = [p.detach().clone() for p in model.parameters()]
    fit_classifier(model, torch.rand(n, 3, 2, 2), torch.arange(n) % 3, epochs=epochs, batch_size=batch_size,
                   progress=False)
    for old, new in zip(before, model.parameters()):  # and trained: every weight moved, none made NaN
        assert torch.isfinite(new).all() and not torch.equal(old, new)


def test_reliability_bins_of_no_rows_are_zeros_that_pool_with_the_other_ranks():
    # a rank whose batch is all DistributedSampler padding (left out) pools zeros; it raised "non-empty", and the
    # other ranks then waited in their all_reduce of the sums
    probs, y = _probs([0.65, 0.65, 0.95], [0, 1, 2]), torch.tensor([0, 2, 2])
    empty = reliability_bins(probs[:0], y[:0], bins=15)
    assert all(v.shape == (15,) and v.dtype == torch.float64 and not v.any() for v in empty.values())
    whole = reliability_bins(probs, y, bins=15)
    pooled = {k: v + empty[k] for k, v in reliability_bins(probs[:2], y[:2], bins=15).items()}
    pooled = {k: v + reliability_bins(probs[2:], y[2:], bins=15)[k] for k, v in pooled.items()}
    assert all(torch.equal(pooled[k], whole[k]) for k in whole)
    with pytest.raises(ValueError, match=r"N=0 \(the rows of probs\), got shape \(1,\)"):
        reliability_bins(probs[:0], y[:1])
    # max()'s IndexError; not "non-empty": an empty batch is taken
    with pytest.raises(ValueError, match=r"probs must be a \(N, K\) float tensor, got \(0, 0\)"):
        reliability_bins(torch.zeros(0, 0), y[:0])
    for metric in (accuracy, expected_calibration_error):  # a mean of no samples: still refused
        with pytest.raises(ValueError, match="non-empty"):
            metric(probs[:0], y[:0])


def test_the_ece_of_pooled_bins_is_the_ece_of_all_their_rows():
    # reliability.md's evaluation on several processes pools reliability_bins' sums with one all_reduce, then
    # takes their ECE: the same number as expected_calibration_error of the rows together
    from latent_transforms.evaluation import ece_of_bins

    probs, y = _probs([0.65, 0.62, 0.95, 0.8], [0, 1, 2, 0]), torch.tensor([0, 2, 2, 1])
    pooled = {k: v + reliability_bins(probs[3:], y[3:])[k] for k, v in reliability_bins(probs[:3], y[:3]).items()}
    assert ece_of_bins(pooled) == expected_calibration_error(probs, y) > 0
    with pytest.raises(ValueError, match="the bins hold no samples"):
        ece_of_bins(reliability_bins(probs[:0], y[:0]))
    # audit 271's fuzzing: a key missing was a KeyError ('count'), sums of other bins torch's "The size of tensor a (3)
    # must match the size of tensor b (4)"
    with pytest.raises(TypeError, match=r"bins must be reliability_bins' dict of count, confidence_sum, correct_sum, "
                                        r"got list$"):
        ece_of_bins([])
    with pytest.raises(ValueError, match=r"dict of count, confidence_sum, correct_sum, got \['count', "
                                         r"'correct_sum'\]$"):
        ece_of_bins({k: v for k, v in pooled.items() if k != "confidence_sum"})
    with pytest.raises(ValueError, match=r"must be \(bins,\) tensors of one length .* got \(15,\), \(14,\), \(15,\)$"):
        ece_of_bins({**pooled, "confidence_sum": pooled["confidence_sum"][:-1]})
    with pytest.raises(ValueError, match=r"got \(1, 15\), \(1, 15\), \(1, 15\)$"):
        ece_of_bins({k: v[None] for k, v in pooled.items()})


def test_ece_and_reliability_bins_default_to_15_bins():
    # 0.62 and 0.68 share a bin of width 0.1 but not one of width 1/15 (edges 0.6, 0.667, 0.733):
    # 15 bins: (|0.62 - 1| + |0.68 - 0|) / 2 = 0.53; 10 bins would give |1.30 - 1| / 2 = 0.15
    probs, y = _probs([0.62, 0.68], [0, 0]), torch.tensor([0, 1])
    assert expected_calibration_error(probs, y) == pytest.approx(0.53, abs=1e-6)
    assert expected_calibration_error(probs, y) == expected_calibration_error(probs, y, bins=15)
    assert reliability_bins(probs, y)["count"].shape == (15,)


def test_metrics_refuse_rows_that_do_not_sum_to_one():
    # per-class sigmoids (each in [0, 1]) are not a distribution: the rows sum to 1.7 and 0.5
    probs, y = torch.tensor([[0.9, 0.8], [0.3, 0.2]]), torch.tensor([0, 1])
    for metric in (accuracy, expected_calibration_error, reliability_bins):
        with pytest.raises(ValueError, match="summing to 1.*row sum off by 0.7"):
            metric(probs, y)


def test_logits_of_refuses_another_batch_size():
    with pytest.raises(ValueError, match=r"needs model\(x\) to return \(B, K\) logits, got a tensor of shape \(3, 10\)"):
        logits_of(lambda x: torch.zeros(3, 10), torch.zeros(4, 1, 8, 8), "someone")


def test_describe_device_names_the_cpu_and_its_threads(monkeypatch):
    import latent_transforms.modelutils as modelutils

    monkeypatch.setattr(modelutils.platform, "processor", lambda: "x86_64")
    for threads, text in ((1, "cpu (x86_64, 1 thread)"), (2, "cpu (x86_64, 2 threads)")):
        monkeypatch.setattr(modelutils.torch, "get_num_threads", lambda: threads)
        assert describe_device(torch.device("cpu")) == text


def test_borrowed_gives_back_what_it_changed_when_switching_the_model_fails():
    class Stubborn(nn.Module):  # a module whose train()/eval() raises, after its sibling was switched
        def train(self, mode=True):
            raise RuntimeError("no eval for me")

    model = nn.Sequential(nn.Linear(2, 2), Stubborn())  # in training mode, as built
    with pytest.raises(RuntimeError, match="no eval for me"):
        with borrowed(model):
            pass
    assert model[0].training and all(p.requires_grad for p in model.parameters())
    with pytest.raises(RuntimeError, match="no eval for me"):  # nothing left half-borrowed: the next call starts anew
        with borrowed(model):
            pass


def test_borrowed_lends_the_module_inside_data_parallel_wrappers():
    # an attack runs the local module: DataParallel's (and DDP's) forward would scatter or sync buffers
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    with borrowed(nn.DataParallel(nn.DataParallel(net))) as inner:
        assert inner is net and not net.training
    assert net.training
    with borrowed(torch.compile(nn.DataParallel(net))) as inner:  # torch.compile(DDP(model)), PyTorch's order
        assert inner is net and not net.training
    assert net.training


def test_borrowed_turns_gradients_and_training_off_until_the_last_of_nested_borrows_ends():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))  # training, gradients on
    model[2].weight.requires_grad_(False)  # a frozen parameter stays frozen after
    x = torch.rand(5, 3, requires_grad=True)
    with borrowed(model) as outer:
        with borrowed(model) as inner:
            assert inner is outer is model
        # the inner exit gives nothing back: the outer borrow still has the model in eval mode, gradients off
        assert not any(m.training for m in model.modules())
        assert not any(p.requires_grad for p in model.parameters())
        outer(x).sum().backward()  # an attack's gradient with respect to the input
    assert x.grad is not None and all(p.grad is None for p in model.parameters())  # no parameter .grad made
    assert all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == [True, True, True, True, False, True]


@pytest.mark.parametrize("other", ["wrapper", "compiled"])
def test_borrows_of_models_sharing_modules_give_them_back_whichever_ends_first(other):
    # borrows were counted per model: a thread borrowing nn.Sequential(normalize, net) (or torch.compile(net)) while
    # another borrowed net took net's modules as they were then, in eval mode with gradients off, and, ending last,
    # left them so: net trained no more
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    net[2].weight.requires_grad_(False)
    shared = nn.Sequential(nn.Identity(), net) if other == "wrapper" else torch.compile(net)  # compiles nothing yet
    first, second = borrowed(net), borrowed(shared)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # the first to start ends first (threads): net stays lent to the second
    # torch.compile's wrapper has net's train flag (torch 2.4's: a stale one of its own, always True)
    lent = list(shared.modules() if other == "wrapper" else net.modules())
    assert not any(m.training for m in lent) and not any(p.requires_grad for p in net.parameters())
    second.__exit__(None, None, None)
    assert all(m.training for m in shared.modules())
    assert [p.requires_grad for p in net.parameters()] == [True, True, True, True, False, True]


@pytest.mark.parametrize("other", ["wrapper", "compiled"])
def test_a_wrapper_borrowed_inside_a_borrow_of_its_model_leaves_the_model_lent_when_it_ends(other):
    # mutation round 42: giving a wrapper its mode back with train(mode) switched the model inside it back too; torch
    # 2.4's compiled wrapper, given back its own (stale) flag, set net's (audit 310)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    wrapper = nn.Sequential(nn.Identity(), net) if other == "wrapper" else torch.compile(net)
    with borrowed(net):
        with borrowed(wrapper):
            pass
        assert not any(m.training for m in net.modules()) and not any(p.requires_grad for p in net.parameters())
    assert all(m.training for m in wrapper.modules()) and all(p.requires_grad for p in net.parameters())


class _ReadsThroughToItsModel(nn.Module):
    """A wrapper that reads an attribute it lacks from the model inside it (as PEFT's PeftModel does)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.model, name)


def test_a_wrapper_reading_through_to_a_compiled_model_gets_its_mode_back():
    # audit 312: torch.compile's wrapper, told by its _orig_mod, was told by hasattr(m, "_orig_mod"), which such a
    # wrapper of a compiled model answers through the model: never lent, it stayed in eval mode after every borrow
    wrapper = _ReadsThroughToItsModel(torch.compile(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))))
    with borrowed(wrapper):
        assert not any(m.training for m in wrapper.model._orig_mod.modules()) and not wrapper.training
    assert wrapper.training and all(m.training for m in wrapper.model._orig_mod.modules())


def test_a_compiled_wrappers_own_train_flag_is_not_lent():
    # mutation round 45: without borrowed's filter of torch.compile's wrapper, the [compiled] case of the test of a
    # wrapper borrowed inside a borrow of its model fails at torch 2.4 alone; a stand-in for 2.4's OptimizedModule (a
    # stale train flag of its own whose setting sets its model's) shows it on any torch
    class Torch24Compiled(nn.Module):
        def __init__(self, mod: nn.Module):
            super().__init__()
            self._orig_mod = mod

        def __setattr__(self, name, value):
            if name == "training" and "_orig_mod" in self._modules:
                self._orig_mod.training = value
            super().__setattr__(name, value)

    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    wrapper = Torch24Compiled(net)
    with borrowed(net):
        with borrowed(wrapper):
            pass
        assert not any(m.training for m in net.modules())
    assert all(m.training for m in net.modules())


def test_a_borrow_gives_back_the_modes_set_since_the_last_borrow_ended():
    # mutation round 42: a module's record kept after its last borrow ended gave the next borrow's end stale flags
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    with borrowed(model):
        pass
    model.eval(), model[0].weight.requires_grad_(False)
    with borrowed(model):
        pass
    assert not any(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == [False, True, True, True]


def test_borrows_are_counted_and_given_back_under_the_lock(monkeypatch):
    # two threads ending unlocked could lose a decrement (a read, then a write) and neither give the model back
    import latent_transforms.modelutils as modelutils

    locked, released = [], modelutils._released
    monkeypatch.setattr(modelutils, "_released",
                        lambda objects: locked.append(modelutils._BORROW_LOCK.locked()) or released(objects))
    with borrowed(nn.Linear(2, 2)):
        pass
    assert locked == [True, True]  # the modules', then the parameters'


def test_cifar_resnet_standardises_its_input():
    torch.manual_seed(0)
    net = CifarResNet18(width=4).eval()
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        out = net(x)
        net.mean.zero_(), net.std.fill_(1.0)
        want = net((x - torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR10_STD).view(1, 3, 1, 1))
    assert torch.allclose(out, want, atol=1e-5)


def test_cifar_resnet_is_resnet18_downsampling_once_per_later_stage():
    torch.manual_seed(0)
    net = CifarResNet18(num_classes=7, width=4).eval()
    x = torch.rand(2, 3, 32, 32)
    shapes, h = [], net.stem((x - net.mean) / net.std)
    with torch.no_grad():
        for block in net.layers:
            h = block(h)
            shapes.append(tuple(h.shape[1:]))
        # 4 stages of 2 BasicBlocks: widths w, 2w, 4w, 8w at 32, 16, 8, 4 pixels (only each stage's first block strides)
        assert shapes == [(4, 32, 32)] * 2 + [(8, 16, 16)] * 2 + [(16, 8, 8)] * 2 + [(32, 4, 4)] * 2
        assert net(x).shape == (2, 7) and net.fc.in_features == 32
        # a residual block adds its input (through a 1x1 projection where the shape changes) before the last ReLU
        block = net.layers[1]
        inner = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(h := net.layers[0](net.stem(x)))))))
        assert torch.allclose(block(h), torch.relu(inner + h))
    seen = []
    for channels_last in (False, True):
        net = CifarResNet18(width=4, channels_last=channels_last).eval()
        net.stem[0].register_forward_pre_hook(
            lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
        with torch.no_grad():
            net(x)
    assert seen == [False, True]  # channels_last: the standardised input is made channels-last
    with torch.device("meta"):  # no memory, no init
        full = CifarResNet18(width=64)
    assert sum(p.numel() for p in full.parameters()) == 11_173_962  # ResNet-18 for CIFAR-10


def test_fit_classifier_runs_the_pixel_augmentation_on_every_batch_before_the_augmentation():
    model, x, y = _tiny_problem(2)
    events = []

    def flip(xb):
        events.append(("pixel", xb.shape[0]))
        return xb.flip(-1) * 0  # all black: what the augmentation must get

    def augment(xb, yb, net):
        events.append(("latent", float(xb.abs().sum())))
        return xb, yb

    fit_classifier(model, x, y, augment, epochs=2, batch_size=4, pixel_augment=flip, progress=False)
    assert events == [("pixel", 4), ("latent", 0.0)] * 4  # 2 epochs of 2 batches, the pixel step first


@pytest.mark.parametrize("n, batch_size, sizes", [(7, 3, [3, 3, 1]), (5, 8, [5])])
def test_fit_classifier_trains_on_every_sample_each_epoch_the_last_batch_smaller(n, batch_size, sizes):
    model, x, y = _tiny_problem(2)
    batches = []

    def augment(xb, yb, net):
        batches.append(xb)
        return xb, yb

    fit_classifier(model, x[:n], y[:n], augment, epochs=2, batch_size=batch_size, progress=False)
    assert [len(b) for b in batches] == sizes * 2
    for epoch in (batches[:len(sizes)], batches[len(sizes):]):  # each epoch: every sample once, in its own order
        assert torch.equal(torch.cat(epoch).flatten(1).sort(0).values, x[:n].flatten(1).sort(0).values)


def test_digits_cnn_is_two_conv_bn_relu_stages_and_a_linear_layer():
    from latent_transforms.models import digits_cnn

    net = digits_cnn(num_classes=7)
    assert [type(m).__name__ for m in net] == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU",
                                               "AdaptiveAvgPool2d", "Flatten", "Linear"]
    assert sum(p.numel() for p in net.parameters()) == 320 + 64 + 18_496 + 128 + 64 * 7 + 7
    assert net.eval()(torch.rand(3, 1, 8, 8)).shape == (3, 7)
