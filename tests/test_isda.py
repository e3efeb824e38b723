import contextlib
import copy
import re
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch.utils.checkpoint  # not imported by torch itself on torch 2.4
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from latent_transforms import LatentNoise, feature_covariance, modelutils
from latent_transforms.feature_covariance import FeatureCovariance
from latent_transforms.isda import ISDA, ISDALoss, isda_logits

from contract import assert_model_unchanged, check_transform_contract, model_state
from conftest import (EVAL_BESIDE_TRAINING, STRENGTH_ZERO_EXPECTED, ClassifierWithItsAugmentation, TinyNet, tiny_vae,
                      train_steps)



def features_of(model: TinyNet, x: torch.Tensor) -> torch.Tensor:
    return model.features(x)


def pooled(features: torch.Tensor, y: torch.Tensor, k: int):
    """Per-class mean and biased covariance of all rows, computed directly (torch.cov, correction=0)."""
    a = features.shape[1]
    mean = torch.zeros(k, a, dtype=features.dtype)
    cov = torch.zeros(k, a, a, dtype=features.dtype)
    for c in range(k):
        f = features[y == c]
        if len(f):
            mean[c] = f.mean(0)
            cov[c] = torch.cov(f.T, correction=0).reshape(a, a)
    return mean, cov, torch.bincount(y, minlength=k)


def augmented_by_loops(logits, weight, y, cov, lam):
    """The formula, one entry at a time."""
    out = logits.clone()
    for n in range(logits.shape[0]):
        s = cov[y[n]] if cov.ndim == 3 else torch.diag(cov[y[n]])
        for j in range(logits.shape[1]):
            d = weight[j] - weight[y[n]]
            out[n, j] = logits[n, j] + 0.5 * lam * (d @ s @ d)
    return out


# -- the shared contract --------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:ISDA. the augmentation armed")  # the contract calls without forwards
@STRENGTH_ZERO_EXPECTED
def test_contract(batch, net):
    check_transform_contract(lambda **kw: ISDA(10, **kw), *batch, model=net, returns_x=True)


def test_an_unlabelled_batch_is_told_which_labels_isda_takes(batch, net):
    with pytest.raises(ValueError, match=r"ISDA needs labels: .* y \(B,\) int64 class indices, not y=None"):
        ISDA(10)(batch[0], model=net)  # not "or (B, K) soft labels", which ISDA refuses next


# -- the loss ----------------------------------------------------------------------------------------------------------
@STRENGTH_ZERO_EXPECTED
def test_lambda_zero_is_plain_cross_entropy(batch, net):
    x, y = batch
    plain = net(x)
    isda = ISDA(10)  # progress 0 -> lam 0
    x2, y2 = isda(x, y, net)
    assert x2 is x and y2 is y
    out = net(x)
    assert torch.equal(out, plain)
    assert torch.equal(F.cross_entropy(out, y), F.cross_entropy(plain, y))
    assert int(isda.estimator.count.sum()) == len(y)  # the statistics were still collected


@pytest.mark.parametrize("covariance", ["full", "diagonal"])
def test_augmented_logits_match_the_formula(covariance, batch, net):
    net = net.double()
    x, y = batch[0].double(), batch[1]
    isda = ISDA(10, lambda0=0.8, covariance=covariance)
    isda.set_progress(0.5)
    with torch.no_grad():
        feats = features_of(net, x)
        logits = net.fc(feats)
    isda(x, y, net)
    out = net(x)
    # the estimator was updated with this batch before use: its statistics are this batch's
    mean, cov, count = pooled(feats, y, 10)
    est = isda.estimator
    assert torch.equal(est.count, count)
    assert torch.allclose(est.mean, mean, atol=1e-12)
    expect_cov = cov if covariance == "full" else torch.diagonal(cov, dim1=1, dim2=2)
    assert torch.allclose(est.cov, expect_cov, atol=1e-12)
    expected = augmented_by_loops(logits, net.fc.weight.detach(), y, expect_cov, 0.4)
    assert torch.allclose(out, expected, atol=1e-10)
    assert (out - logits).abs().max() > 1e-3  # the correction is not trivially 0
    assert torch.equal(out.gather(1, y[:, None]), logits.gather(1, y[:, None]))  # 0 for the true class


@pytest.mark.parametrize("covariance", ["full", "diagonal"])
def test_table_and_per_sample_paths_agree(covariance):
    g = torch.Generator().manual_seed(1)
    c, a = 6, 5
    weight = torch.randn(c, a, generator=g, dtype=torch.float64)
    m = torch.randn(c, a, a, generator=g, dtype=torch.float64)
    cov = m @ m.transpose(1, 2) if covariance == "full" else torch.rand(c, a, generator=g, dtype=torch.float64)
    for n in (3, 9):  # n < C: per sample; n >= C: per-class table
        logits = torch.randn(n, c, generator=g, dtype=torch.float64)
        y = torch.randint(0, c, (n,), generator=g)
        got = isda_logits(logits, weight, y, cov, 0.3)
        assert torch.allclose(got, augmented_by_loops(logits, weight, y, cov, 0.3), atol=1e-10)
    lam = torch.tensor([0.0, 0.3, 0.0], dtype=torch.float64)  # per-sample strengths
    got = isda_logits(logits[:3], weight, y[:3], cov, lam)
    assert torch.equal(got[0], logits[0]) and torch.equal(got[2], logits[2])
    assert torch.allclose(got[1], augmented_by_loops(logits[1:2], weight, y[1:2], cov, 0.3)[0], atol=1e-10)


class LargestTensor(TorchDispatchMode):
    """Records the number of elements of the largest tensor any op makes (autograd's backward included)."""

    numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.numel = max([self.numel] + [t.numel() for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)])
        return out


@pytest.mark.parametrize("n", [8, 40])  # fewer samples than classes, and more
def test_the_diagonal_correction_never_forms_n_x_c_x_a_and_keeps_its_digits_under_a_common_offset(n):
    """The diagonal correction (the official ImageNet setting) took 3 N C A numbers, 6.3 GB for N = 256, C = 1000,
    A = 2048 (2 GB more peak RSS and 6.4 s a step on a CPU at A = 512): now matrix products of (N, A) and (C, A)
    rows. The weights are centred first: expanded as it is, a common offset of 100 would cost ~1e-3 of the
    correction in float32."""
    g = torch.Generator().manual_seed(4)
    c, a = 16, 32
    weight = (100 + torch.rand(c, a, generator=g)).requires_grad_()
    cov = torch.rand(c, a, generator=g)
    y = torch.arange(n) % c
    logits = torch.zeros(n, c, requires_grad=True)
    with LargestTensor() as largest:
        got = isda_logits(logits, weight, y, cov, 0.6)
        got.square().sum().backward()
    assert largest.numel <= max(n, c) * a < n * c * a
    expected = augmented_by_loops(logits.detach().double(), weight.detach().double(), y, cov.double(), 0.6)
    torch.testing.assert_close(got.detach().double(), expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(got.gather(1, y[:, None]), torch.zeros(n, 1))  # 0 for the true class, whatever the rounding
    w64 = weight.detach().double().requires_grad_()  # the gradient reaches the weight as the formula's does
    augmented_by_loops(torch.zeros(n, c, dtype=torch.float64), w64, y, cov.double(), 0.6).square().sum().backward()
    torch.testing.assert_close(weight.grad.double(), w64.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lam", [1.0, 0.0])  # lam 0 (the first epoch) returned the logits unchecked
def test_isda_logits_rejects_bad_shapes(lam):
    logits, w, y = torch.zeros(4, 3), torch.zeros(3, 2), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="cov must be"):
        isda_logits(logits, w, y, torch.zeros(3, 5), lam)
    with pytest.raises(ValueError, match="weight must be"):
        isda_logits(logits, torch.zeros(5, 2), y, torch.zeros(5, 2), lam)
    with pytest.raises(ValueError, match="class index 3, out of range"):
        isda_logits(logits, w, torch.tensor([0, 1, 2, 3]), torch.zeros(3, 2), lam)
    assert isda_logits(logits, w, y, torch.zeros(3, 2), 0.0) is logits


def test_isda_logits_validates_the_labels():
    logits, w, cov = torch.zeros(4, 3), torch.zeros(3, 2), torch.zeros(3, 2)
    with pytest.raises(ValueError, match="negative class index -1"):
        isda_logits(logits, w, torch.tensor([0, 1, 2, -1]), cov, 1.0)
    with pytest.raises(ValueError, match="class index 3, out of range for num_classes=3"):
        isda_logits(logits, w, torch.tensor([0, 1, 2, 3]), cov, 1.0)
    with pytest.raises(ValueError, match="int64"):
        isda_logits(logits, w, torch.tensor([0, 1, 2, 2], dtype=torch.int32), cov, 1.0)
    # a list was an AttributeError ('list' object has no attribute 'shape'); with check_y=False int32 passed
    with pytest.raises(TypeError, match="y must be a .N,. int64 torch.Tensor of class indices, got \\[int"):
        isda_logits(logits, w, [0, 1, 2, 2], cov, 1.0)
    with pytest.raises(ValueError, match=r"y must be \(N,\) = \(4,\) int64 class indices, got .*int32"):
        isda_logits(logits, w, torch.tensor([0, 1, 2, 2], dtype=torch.int32), cov, 1.0, check_y=False)
    # audit 271's fuzzing: check_y=None skipped the checks (FeatureCovariance's met scatter()'s "index -1 is out of
    # bounds for dimension 0 with size 3")
    for check in (lambda: isda_logits(logits, w, torch.tensor([0, 1, 2, -1]), cov, 1.0, check_y=None),
                  lambda: FeatureCovariance(3, 2).update(torch.zeros(4, 2), torch.tensor([0, 1, 2, -1]), check_y=None)):
        with pytest.raises(TypeError, match=r"^check_y must be True or False, got None$"):
            check()
    for y in (torch.tensor([0.0, 1.0, 2.0, 1.0]), torch.tensor([0, 1, 2, 1], dtype=torch.int32)):  # scatter()'s errors
        with pytest.raises(ValueError, match=rf"^y class indices must be int64, got dtype {y.dtype}"):
            FeatureCovariance(3, 2).update(torch.zeros(4, 2), y, check_y=False)  # the values unread, not the form


@pytest.mark.parametrize("full", [False, True])
def test_isda_logits_refuses_negative_or_non_finite_variances(full):
    """Audit 416: a user's own statistics with a variance below 0 were taken: the diagonal form's correction was
    clamped to 0 (no augmentation), the full form's turned negative (the loss made easier), without a word; a NaN made
    every logit NaN. check_y=False (ISDA's own statistics) reads none of them."""
    logits, w, y = torch.randn(4, 3), torch.randn(3, 5), torch.tensor([0, 1, 2, 0])
    variances = torch.rand(3, 5) + 0.1
    for value, got in ((-0.5, "variance -0.5"), (float("nan"), "variance nan"), (float("inf"), "variance inf")):
        bad = variances.clone()
        bad[2, 3] = value
        cov = torch.diag_embed(bad) if full else bad
        with pytest.raises(ValueError, match=rf"^cov must hold finite variances >= 0 .*, got {got} for class 2, "
                                             r"feature 3$"):
            isda_logits(logits, w, y, cov, 1.0)
        isda_logits(logits, w, y, cov, 1.0, check_y=False)  # unread
    if full:  # an entry off the diagonal: named by its row
        cov = torch.diag_embed(variances)
        cov[1, 4, 0] = float("nan")
        with pytest.raises(ValueError, match=r"got a non-finite covariance for class 1, feature 4$"):
            isda_logits(logits, w, y, cov, 1.0)
    cov = torch.diag_embed(variances) if full else variances
    assert (isda_logits(logits, w, y, cov, 1.0) >= logits).all()  # the correction of variances >= 0: never below


def test_isda_logits_compute_in_the_wider_dtype_treat_cov_as_a_constant_and_refuse_non_finite_strengths():
    g = torch.Generator().manual_seed(2)
    n, c, a = 5, 3, 4
    logits = torch.randn(n, c, generator=g, dtype=torch.float64)
    weight = torch.randn(c, a, generator=g).requires_grad_()  # float32 weights, float64 covariances: in float64
    m = torch.randn(c, a, a, generator=g, dtype=torch.float64)
    cov = (m @ m.transpose(1, 2) * 1e3).requires_grad_()
    y = torch.randint(0, c, (n,), generator=g)
    got = isda_logits(logits, weight, y, cov, 0.7)
    expected = augmented_by_loops(logits, weight.detach().double(), y, cov.detach(), 0.7)
    assert torch.allclose(got, expected, atol=1e-9, rtol=0)  # computed in float32: off by ~1e-4
    got.sum().backward()
    assert cov.grad is None and weight.grad is not None  # the covariance is a constant: no gradient reaches it
    for bad in (float("nan"), float("inf"), -0.5):  # the value refused named, not only the shape that was right
        with pytest.raises(ValueError, match=f"lam must be a float >= 0 or \\(5,\\) finite strengths >= 0, got "
                                             f"torch.float32 of shape \\(5,\\): {bad} at index 1$"):
            isda_logits(logits, weight.detach(), y, cov.detach(), torch.tensor([0.1, bad, 0.0, 0.2, 0.3]))
    with pytest.raises(ValueError, match=r"got torch.float32 of shape \(\): nan at index 0$"):
        isda_logits(logits, weight.detach(), y, cov.detach(), torch.tensor(float("nan")))


def test_the_correction_is_computed_in_the_weights_dtype_for_16_bit_logits_and_under_autocast():
    # under AMP the logits are bf16 but the weight and statistics float32: in bf16, w_j - w_y of weights near 100
    # (a spacing of 0.5 there) lost the differences the correction is made of
    g = torch.Generator().manual_seed(3)
    n, c, a = 8, 4, 6
    weight = 100 + torch.rand(c, a, generator=g)
    m = torch.randn(c, a, a, generator=g)
    cov = m @ m.transpose(1, 2)
    y = torch.arange(n) % c
    logits = torch.zeros(n, c, dtype=torch.bfloat16)  # zeros: the output is the correction, rounded once to bf16
    got = isda_logits(logits, weight, y, cov, 0.6)
    expected = augmented_by_loops(logits.double(), weight.double(), y, cov.double(), 0.6)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), expected, rtol=8e-3, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the caller's autocast: the correction's matmuls stay float32
        got = isda_logits(logits.float(), weight, y, cov, 0.6)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("check_y", [True, False])
@pytest.mark.parametrize("lam", [0.5, 0.0])  # 0: the logits are returned as they are, once checked
@pytest.mark.parametrize("name", ["logits", "weight", "cov", "y", "lam"])
def test_isda_logits_names_the_tensor_on_another_device(name, lam, check_y):
    """torch's own errors named no argument ("Tensor on device meta is not on the expected device cpu!",
    "unsupported scalarType", "Cannot copy out of meta tensor"); y on another device with check_y=False, and any
    of them with lam 0, passed unnoticed."""
    args = {"logits": torch.zeros(4, 3), "weight": torch.zeros(3, 2), "y": torch.tensor([0, 1, 2, 0]),
            "cov": torch.zeros(3, 2), "lam": torch.full((4,), lam) if name == "lam" else lam}
    args[name] = args[name].to("meta")
    message = r"^weight is on cpu but logits are on meta; move it with .to\('meta'\)" if name == "logits" else \
        rf"^{name} is on meta but logits are on cpu; move it with .to\('cpu'\)"
    with pytest.raises(ValueError, match=message):
        isda_logits(**args, check_y=check_y)


def test_isda_loss_names_the_tensor_on_another_device():
    """fc on another device than the features gave torch's "Tensor on device meta is not on the expected device
    cpu!", labels there "Cannot copy out of meta tensor; no data!"."""
    loss, f, y = ISDALoss(3), torch.randn(2, 5), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"^fc is on meta but the features are on cpu; move it with .to\('cpu'\)"):
        loss(f, nn.Linear(5, 3).to("meta"), y)
    with pytest.raises(ValueError, match=r"^y is on meta but the features are on cpu; move it with .to\('cpu'\)"):
        loss(f, nn.Linear(5, 3), y.to("meta"))
    assert loss.estimator.feature_dim is None  # refused before any statistics
    with pytest.raises(TypeError, match=r"^y must be a torch.Tensor, got list; torch.tensor\(y\) makes \(B,\) class "
                                        r"indices of it$"):  # no device of its own to compare (coverage audit 309)
        loss(f, nn.Linear(5, 3), [0, 1])


def test_isda_reads_and_assigns_its_statistics_settings_through_the_estimator():
    """Coverage audit 309: ISDA.feature_dim and the sync_stats setter had run in no test."""
    from latent_transforms.validation import WrongTypeError
    isda = ISDA(10, feature_dim=32)
    assert isda.feature_dim == isda.estimator.feature_dim == 32 and isda.sync_stats is True
    isda.sync_stats = False
    assert isda.estimator.sync_stats is False and isda.sync_stats is False
    with pytest.raises(WrongTypeError, match=r"^sync_stats must be True, False or a torch.distributed ProcessGroup, got "
                                             r"'yes'$"):  # checked as the constructor's
        isda.sync_stats = "yes"
    assert isda.estimator.sync_stats is False


@pytest.mark.parametrize("features_dtype, fc_dtype", [(torch.bfloat16, torch.float32), (torch.float16, torch.float32),
                                                      (torch.float64, torch.float32), (torch.float32, torch.float64)])
def test_isda_loss_names_the_dtypes_torch_refused_to_mix(features_dtype, fc_dtype):
    """Features in another dtype than fc (bf16 features of a bf16 backbone, a float32 fc) gave torch's "mat1 and
    mat2 must have the same dtype, but got BFloat16 and Float", which says neither which is fc's nor the fix; under
    autocast they mix."""
    loss, y = ISDALoss(3), torch.tensor([0, 1, 2, 0])
    loss.set_progress(1.0)
    f, fc = torch.randn(4, 5, dtype=features_dtype), nn.Linear(5, 3).to(fc_dtype)
    wide = torch.float64 in (features_dtype, fc_dtype)
    with pytest.raises(ValueError, match=rf"^ISDALoss got features in {features_dtype} for its fc in {fc_dtype}, "
                                         rf"which torch refused \(mat1 and mat2 must have the same dtype.*\): cast one "
                                         rf"to the other's dtype \(features.to\({fc_dtype}\) or fc.to\("
                                         rf"{features_dtype}\)\)" + ("; torch.autocast leaves float64 as it is$" if wide
                                                                      else ", or run it under torch.autocast")) as e:
        loss(f, fc, y)
    assert isinstance(e.value.__cause__, RuntimeError) and loss.estimator.feature_dim is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if wide:  # autocast casts no float64: refused there too, with the same words
            with pytest.raises(ValueError, match="autocast leaves float64 as it is"):
                loss(f, fc, y)
            return
        out = loss(f, fc, y)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(fc.weight.grad).all() and int(loss.estimator.count.sum()) == 4


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_the_hook_takes_a_model_and_batch_of_another_dtype(batch, net, dtype):
    """The hook's path has nothing to refuse: the model's own forward refuses x in another dtype than the model
    (torch's error, in the caller's model(x)); one in the model's dtype is augmented, the statistics float32 or
    float64."""
    x, y = batch[0].to(dtype), batch[1]
    net = net.to(dtype)
    isda = ISDA(10, lambda0=1.0)
    isda.set_progress(1.0)
    isda(x, y, net)
    loss = F.cross_entropy(net(x), y)
    loss.backward()
    assert torch.isfinite(loss) and isda.stats["transformed"] == len(y) and int(isda.estimator.count.sum()) == len(y)
    assert isda.estimator.cov.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)


# -- the estimator -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("diagonal", [False, True])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_estimator_is_the_pooled_covariance_of_a_stream(diagonal, dtype, tol):
    g = torch.Generator().manual_seed(0)
    k, a = 5, 4
    est = FeatureCovariance(k, covariance="diagonal" if diagonal else "full")
    seen_f, seen_y = [], []
    for step, n in enumerate([7, 1, 12, 3, 20]):
        y = torch.randint(0, k, (n,), generator=g)
        if step == 2:
            y = y % 2  # classes 2..4 absent from this batch
        f = (torch.randn(n, a, generator=g) * 2 + torch.arange(a) + 3 * y[:, None]).to(dtype)
        before = {name: b.clone() for name, b in est.named_buffers()}
        est.update(f, y)
        if step == 2:
            for name, b in est.named_buffers():  # absent classes keep their statistics bit for bit
                assert torch.equal(b[2:], before[name][2:])
        seen_f.append(f)
        seen_y.append(y)
        mean, cov, count = pooled(torch.cat(seen_f).double(), torch.cat(seen_y), k)
        if diagonal:
            cov = torch.diagonal(cov, dim1=1, dim2=2)
        assert est.mean.dtype == dtype and est.cov.shape == cov.shape
        assert torch.equal(est.count, count)
        assert torch.allclose(est.mean.double(), mean, atol=tol, rtol=tol)
        assert torch.allclose(est.cov.double(), cov, atol=tol, rtol=tol)


@pytest.mark.parametrize("covariance", ["full", "diagonal"])
def test_float32_statistics_of_a_class_seen_millions_of_times_keep_tracking_its_covariance(covariance):
    # a run resumed at 3e6 samples per class, one more per class and step (w = m / (n + m) = 3.3e-7): merged as
    # (1-w) S + w S', the covariance decayed by 1-w rounded to float32's steps of 6e-8 near 1, and drifted from
    # float64's by 1.3e-4 in 2000 steps; merged as an increment S + w (S' - S + ...), by 1e-5
    g = torch.Generator().manual_seed(0)
    k, a, n0 = 4, 6, 3 * 10**6
    est = FeatureCovariance(k, a, covariance=covariance, sync_stats=False)
    est.mean.copy_(torch.rand(k, a, generator=g) + 0.5)
    cov = torch.eye(a) * 0.5 + 0.1
    est.cov.copy_(cov.diagonal().expand(k, a) if covariance == "diagonal" else cov.expand(k, a, a))
    est.count.fill_(n0)
    wide = copy.deepcopy(est).double()  # float64: exact to 1e-14 on this stream
    stream = est.mean + torch.randn(2000, k, a, generator=g) @ torch.linalg.cholesky(cov).T   # (T, K, A)
    for f in stream:
        est.update(f, torch.arange(k), check_y=False)
        wide.update(f.double(), torch.arange(k), check_y=False)
    assert est.count.tolist() == [n0 + 2000] * k
    error = (est.cov.double() - wide.cov).flatten(1).norm(dim=1) / wide.cov.flatten(1).norm(dim=1)
    assert error.max() < 3e-5, error



@pytest.mark.parametrize("paused_in", ["_allocate", "_merge"])
def test_updates_from_threads_are_merged_one_at_a_time(monkeypatch, paused_in):
    """Threads sharing an estimator (a thread pool gathering features) each read the statistics, then wrote them in
    place: two first updates each sized them (the second dropping the first's batch), and merges that overlapped mixed
    one's count with another's mean (after 200 batches from 4 threads the means were off by 3.5e-3, by 2e-8 from the
    order alone). The first thread waits inside (sizing, or merging) for the second's whole update: without a lock it
    runs meanwhile; with one, the wait times out and the second merges after the first."""
    import threading
    torch.manual_seed(0)
    batches = [(torch.randn(16, 4), torch.randint(0, 3, (16,))) for _ in range(2)]
    serial = FeatureCovariance(3, sync_stats=False)
    for f, y in batches:
        serial.update(f, y)
    est, second_done, merged = FeatureCovariance(3, sync_stats=False), threading.Event(), []
    real, real_merge = getattr(FeatureCovariance, paused_in), FeatureCovariance._merge

    def paused(self, *args):
        if threading.current_thread() is first:
            second.start()
            second_done.wait(2)
        return real(self, *args)

    def merge(self, *args):  # the order of the merges, taken while the update runs (after it, the threads raced)
        (paused if paused_in == "_merge" else real_merge)(self, *args)
        merged.append(threading.current_thread().name)

    monkeypatch.setattr(FeatureCovariance, paused_in, paused)
    monkeypatch.setattr(FeatureCovariance, "_merge", merge)
    first = threading.Thread(target=est.update, args=batches[0], name="first")
    second = threading.Thread(target=lambda: (est.update(*batches[1]), second_done.set()), name="second")
    first.start()
    first.join(10)
    second.join(10)
    assert merged == ["first", "second"]
    for name in ("count", "mean", "cov"):
        torch.testing.assert_close(getattr(est, name), getattr(serial, name))


def test_an_update_traced_by_torch_compile_takes_no_lock():
    """The lock above is left out while torch.compile traces (mutation round, audit 430: untested): taken there,
    torch.compile(fullgraph=True) refused the update ("Dynamo does not know how to enter a `lock` context manager")."""
    torch.manual_seed(0)
    batches = [(torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])) for _ in range(2)]
    eager, traced = FeatureCovariance(3, sync_stats=False), FeatureCovariance(3, sync_stats=False)
    for est in (eager, traced):
        est.update(*batches[0])  # sized eagerly
    eager.update(*batches[1])
    torch.compile(lambda f, y: traced.update(f, y, check_y=False), backend="eager", fullgraph=True)(*batches[1])
    for name in ("count", "mean", "cov"):
        torch.testing.assert_close(getattr(traced, name), getattr(eager, name))


def test_the_weight_of_a_batch_is_exact_for_counts_float32_cannot_hold():
    # w = m / (n + m) in float64 (mutation round 47): n + m = 2**24 + 1 is 2**24 in float32, and w came out 2**-24
    est = FeatureCovariance(1, 1, sync_stats=False)
    est.count.fill_(2**24)
    est.update(torch.ones(1, 1), torch.zeros(1, dtype=torch.int64))
    assert est.mean.item() == torch.tensor(1 / (2**24 + 1)).item() != 2**-24

def test_statistics_cast_to_float64_before_sizing_stay_float64_for_float32_features():
    # for long runs (docs/methods/isda.md, Precision): .double() of an unsized estimator used to be forgotten at
    # the first update, which sized float32 statistics from float32 features
    isda = ISDALoss(3, covariance="diagonal").double()
    isda.set_progress(1.0)
    fc = nn.Linear(4, 3)
    loss = isda(torch.randn(5, 4), fc, torch.tensor([0, 1, 2, 0, 1]))
    assert isda.estimator.mean.dtype == isda.estimator.cov.dtype == torch.float64 and loss.dtype == torch.float32
    est = FeatureCovariance(3).double().float()  # the latest cast counts
    est.update(torch.randn(2, 4, dtype=torch.float64), torch.tensor([0, 1]))
    assert est.cov.dtype == torch.float32


@pytest.mark.parametrize("covariance", ["full", "diagonal"])
def test_the_statistics_are_detached_from_the_features_graph(covariance):
    # features straight from the backbone require grad: merged undetached, the buffers joined the autograd graph
    # and every step's graph stayed alive through them
    est = FeatureCovariance(3, covariance=covariance)
    for _ in range(2):  # the second merge starts from the first one's buffers
        feats = torch.randn(6, 4).requires_grad_()
        est.update(feats * 2, torch.tensor([0, 0, 1, 1, 2, 2]))
        for name, b in est.named_buffers():
            assert not b.requires_grad and b.grad_fn is None, name
    assert feats.grad is None


def test_features_narrower_than_the_statistics_are_refused_not_broadcast():
    """One feature per row against statistics of two: refused, where the merge would broadcast the lone column over
    both dimensions and change the statistics."""
    est = FeatureCovariance(3, feature_dim=2)
    with pytest.raises(ValueError, match=r"features have dimension 1, the statistics 2"):
        est.update(torch.ones(4, 1), torch.zeros(4, dtype=torch.int64))
    assert est.count.tolist() == [0, 0, 0] and not est.mean.any()


@pytest.mark.parametrize("sizing", ["eager", "lazy", "ISDALoss"])
def test_a_full_covariance_beyond_the_devices_memory_is_refused_before_allocating(monkeypatch, sizing):
    """ImageNet's 1000 classes x 2048 ResNet-50 features take 16.8 GB of full covariances, and each update as much
    again: torch's "can't allocate memory: you tried to allocate 16777216000 bytes" named neither ISDA nor the fix,
    and a CPU update that fit the RAM once but not twice could be ended by the OOM killer. Checked on the sizes
    alone (a 20 GB device here), nothing allocated."""
    monkeypatch.setattr(feature_covariance, "device_memory", lambda device: 20 * 10**9)
    figures = (r"1000 classes and 2048 features holds 1000 x 2048 x 2048 float32 numbers, 16\.8 GB, and each update "
               r"needs as much again.*covariance=\"diagonal\" \(1000 x 2048 numbers, 8\.2 MB.*33\.6 GB in all, more "
               r"than the 20\.0 GB of cpu")
    features, y, loss = torch.zeros(2, 2048), torch.tensor([0, 1]), ISDALoss(1000)
    loss.set_progress(0.5)
    with pytest.raises(torch.OutOfMemoryError, match=figures):
        if sizing == "eager":
            FeatureCovariance(1000, 2048)
        elif sizing == "lazy":
            FeatureCovariance(1000).update(features, y)
        else:
            loss(features, nn.Linear(2048, 1000), y)
    assert FeatureCovariance(1000, 2048, covariance="diagonal").cov.shape == (1000, 2048)  # the fix: 8.2 MB


def test_a_full_covariance_update_beyond_the_devices_memory_is_refused_before_merging(monkeypatch):
    """Statistics that fit but an update that does not (its batch covariance, K A A, and the spread of the batch's
    centred features, N K A): refused before merging, naming the batch; the statistics are left as they were."""
    monkeypatch.setattr(feature_covariance, "device_memory", lambda device: 10**6)
    est = FeatureCovariance(10, 64)  # 2 x 10 x 64 x 64 float32 numbers: 0.33 MB
    est.update(torch.randn(5, 64), torch.arange(5))
    before = {name: b.clone() for name, b in est.named_buffers()}
    with pytest.raises(torch.OutOfMemoryError, match=r"0\.0 GB for a batch of 1000: use covariance=\"diagonal\""):
        est.update(torch.randn(1000, 64), torch.arange(1000) % 10)  # + 1000 x 10 x 64: 2.9 MB in all
    assert all(torch.equal(b, before[name]) for name, b in est.named_buffers())


def test_a_failed_full_covariance_allocation_names_the_figures_and_leaves_the_estimator_unsized(monkeypatch):
    """Where the device's memory is unknown (or taken by the model), torch's allocation failure is reported with the
    figures and the fix; the means allocated before the failed covariance used to stay, a half-sized estimator."""
    monkeypatch.setattr(feature_covariance, "device_memory", lambda device: None)
    est = FeatureCovariance(10)
    # 10 x 2**22 x 2**22 float32 numbers: 7e14 bytes, beyond any address space, so torch fails at once
    with pytest.raises(torch.OutOfMemoryError, match=r"703687\.4 GB.*diagonal.*Out of memory on cpu: .*can't allocate"):
        est.update(torch.zeros(2, 2**22), torch.tensor([0, 1]))
    assert est.mean is None and est.cov is None and est.count is None
    est = FeatureCovariance(10, 4)

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1000 bytes")

    monkeypatch.setattr(feature_covariance.F, "one_hot", out_of_memory)  # in the update's merge
    with pytest.raises(torch.OutOfMemoryError, match=r"for a batch of 2: use covariance=\"diagonal\".*1000 bytes"):
        est.update(torch.zeros(2, 4), torch.tensor([0, 1]))


def test_a_machine_whose_memory_is_not_known_sizes_the_full_covariance_without_the_check(monkeypatch):
    """No os.sysconf (Windows), or no SC_PHYS_PAGES there: the RAM is not known, the statistics are allocated."""
    for missing in (AttributeError("module 'os' has no attribute 'sysconf'"), ValueError("unrecognized name")):
        def sysconf(name, missing=missing):
            raise missing

        monkeypatch.setattr(modelutils.os, "sysconf", sysconf)
        assert feature_covariance.device_memory(torch.device("cpu")) is None
        assert FeatureCovariance(3, 4).cov.shape == (3, 4, 4)


def test_an_error_in_a_full_covariance_update_that_is_not_out_of_memory_passes_unchanged(monkeypatch):
    """Only an allocation failure is reported as the covariance's memory; any other error of the update is torch's."""
    est = FeatureCovariance(10, 4)

    def not_memory(*args, **kwargs):
        raise RuntimeError("a kernel's own error")

    monkeypatch.setattr(feature_covariance.F, "one_hot", not_memory)  # in the update's merge
    with pytest.raises(RuntimeError, match=r"^a kernel's own error$") as e:
        est.update(torch.zeros(2, 4), torch.tensor([0, 1]))
    assert type(e.value) is RuntimeError


def test_estimator_checks_and_lazy_state_dict():
    est = FeatureCovariance(3, feature_dim=2)
    with pytest.raises(ValueError, match="dimension"):
        est.update(torch.zeros(4, 5), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"\(N,\)"):
        est.update(torch.zeros(4, 2), torch.zeros(3, dtype=torch.int64))
    est.update(torch.randn(6, 2), torch.tensor([0, 0, 1, 1, 2, 2]))
    lazy = FeatureCovariance(3)
    assert lazy.feature_dim is None and dict(lazy.state_dict()) == {}
    lazy.reset()  # nothing seen yet: nothing to forget, still unsized
    assert lazy.feature_dim is None and dict(lazy.state_dict()) == {}
    lazy.load_state_dict(est.state_dict())  # sized from the checkpoint
    for name, b in est.named_buffers():
        assert torch.equal(b, getattr(lazy, name))
    with pytest.raises(RuntimeError, match="cov holds a full covariance, this estimator's is 'diagonal'"):
        FeatureCovariance(3, covariance="diagonal").load_state_dict(est.state_dict())  # "cov" matched torch's own error
    lazy.reset()
    assert int(lazy.count.sum()) == 0 and lazy.feature_dim == 2


def test_building_isda_without_a_process_group_leaves_torch_dynamo_alone():
    """The synced estimator put its gather under torch.compiler.disable when built, importing torch._dynamo: ISDA(10)
    took 1.4-2.0 s in a fresh process (0.4 ms without), where no gather is needed (tests/test_isda_ddp.py: built
    before the process group, the gather is made at the first one, inside compiled code too)."""
    import subprocess
    import sys

    code = ("import sys, torch; from latent_transforms import ISDA, ISDALoss, FeatureCovariance; "
            "ISDA(10); ISDALoss(10); FeatureCovariance(3).update(torch.randn(4, 2), torch.tensor([0, 1, 2, 0])); "
            "assert 'torch._dynamo' not in sys.modules, 'imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("covariance", ["full", "diagonal"])
def test_reset_forgets_the_covariances_too(covariance):
    """After reset() a class absent from the next batches keeps its statistics as they are: they must be the zeros of
    no feature seen, not the covariance of the features reset was to forget (ISDA would augment along it)."""
    est = FeatureCovariance(3, 2, covariance=covariance)
    est.update(torch.randn(6, 2, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 0, 1, 1, 2, 2]))
    assert est.cov.any()
    est.reset()
    est.update(torch.randn(2, 2), torch.tensor([0, 0]))  # classes 1 and 2 absent
    assert not est.cov[1:].any() and not est.mean[1:].any() and est.count.tolist() == [2, 0, 0]


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")
def test_lazy_statistics_load_where_the_module_was_moved():
    # build, .to(device), load_state_dict(load_file(path)): the checkpoint's CPU tensors sized the statistics on the
    # CPU, and the next step on the GPU was refused with "move the ISDA module with .to('cuda')", which had been done
    est = FeatureCovariance(3)
    est.update(torch.randn(6, 2), torch.tensor([0, 0, 1, 1, 2, 2]))
    saved = est.state_dict()  # float32, on the CPU
    resumed = ISDA(3).double()
    resumed.load_state_dict({f"estimator.{k}": v for k, v in saved.items()})
    assert resumed.estimator.cov.dtype == torch.float64 and resumed.estimator.count.dtype == torch.int64
    assert torch.equal(resumed.estimator.cov, saved["cov"].double())
    meta = FeatureCovariance(3).to("meta")
    meta.load_state_dict(saved)
    assert meta.mean.device.type == meta.cov.device.type == meta.count.device.type == "meta"
    plain = FeatureCovariance(3)  # never moved: the checkpoint's dtype, as before
    plain.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in saved.items()})
    assert plain.cov.dtype == torch.float64
    plain.load_state_dict(saved)  # sized: loaded into its statistics, which keep their dtype (as any buffer does)
    assert plain.cov.dtype == torch.float64 and torch.equal(plain.cov, saved["cov"].double())


@pytest.mark.parametrize("diagonal", [False, True])
def test_estimator_validates_the_labels(diagonal):
    est, f = FeatureCovariance(3, covariance="diagonal" if diagonal else "full"), torch.zeros(4, 2)
    with pytest.raises(ValueError, match="negative class index -1"):
        est.update(f, torch.tensor([0, 1, 2, -1]))
    with pytest.raises(ValueError, match="class index 3, out of range for num_classes=3"):
        est.update(f, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="int64"):
        est.update(f, torch.tensor([0, 1, 2, 2], dtype=torch.int32))
    assert est.count is None  # nothing was merged


@pytest.mark.parametrize("covariance", ["full", "diagonal"])
@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_non_finite_rows_are_ignored(covariance, bad):
    g = torch.Generator().manual_seed(0)
    k, a = 5, 3
    fc = nn.Linear(a, k).double()
    loss = ISDALoss(k, lambda0=1.0, covariance=covariance)
    loss.set_progress(1.0)
    finite_only = FeatureCovariance(k, covariance=covariance)
    first_f, first_y = torch.randn(10, a, generator=g, dtype=torch.float64), torch.arange(10) % k
    loss(first_f, fc, first_y)
    finite_only.update(first_f, first_y)
    est = loss.estimator
    before = {name: b.clone() for name, b in est.named_buffers()}
    f, y = torch.randn(6, a, generator=g, dtype=torch.float64), torch.tensor([0, 0, 0, 1, 1, 0])
    f[2, 1] = bad  # one class-0 row overflowed (an fp16 step that GradScaler skips)
    loss(f, fc, y)
    keep = torch.arange(6) != 2
    finite_only.update(f[keep], y[keep])
    for name, b in est.named_buffers():
        assert torch.equal(b[2:], before[name][2:])  # classes absent from the batch: bit for bit
        assert torch.allclose(b, getattr(finite_only, name), rtol=1e-12, atol=1e-12)  # class 0: its finite rows
    assert torch.equal(est.count, finite_only.count)
    clean_f, clean_y = torch.randn(10, a, generator=g, dtype=torch.float64), torch.arange(10) % k
    assert torch.isfinite(loss(clean_f, fc, clean_y))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_buffers_are_refused_not_left_stuck(dtype):
    # bf16 buffers were updated in float32 and written back: with a few samples per class and step the running
    # mean stopped moving after a few hundred samples (2.06 where the features' mean was 2.89). A cast keeps them in
    # float32 (below): a 16-bit checkpoint sizes them in 16 bits
    g = torch.Generator().manual_seed(0)
    est = FeatureCovariance(2)
    est.load_state_dict({"mean": torch.zeros(2, 2, dtype=dtype), "cov": torch.zeros(2, 2, 2, dtype=dtype),
                         "count": torch.zeros(2, dtype=torch.int64)})
    f, y = torch.randn(8, 2, generator=g) + 3, torch.zeros(8, dtype=torch.int64)
    with pytest.raises(ValueError, match=f"the class statistics are {dtype}.*keep them in float32"):
        est.update(f, y)
    assert int(est.count.sum()) == 0
    est.float().update(f, y)
    torch.testing.assert_close(est.mean[0], f.mean(0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_16_bit_cast_of_a_module_holding_isda_keeps_its_state_in_its_dtype(batch, net, dtype):
    # Lightning's precision="bf16-true" casts the whole LightningModule, the ISDA it holds too, after a resume has
    # loaded its statistics (ckpt_path=): the resumed run's first step refused them as bf16, where a fresh run, whose
    # statistics were sized by its first update in float32, trained; and the schedule's progress was rounded to bf16
    x, y = batch
    isda = ISDA(10)
    isda.set_epoch(1, 3)
    isda(x, y, net)
    net(x)
    saved = {k: v.clone() for k, v in isda.state_dict().items()}
    loaded_after = ISDA(10)
    nn.ModuleList([net, isda, loaded_after]).to(dtype)  # isda sized before the cast, loaded_after by the load after it
    loaded_after.load_state_dict(saved)
    for resumed in (isda, loaded_after):
        assert resumed.estimator.mean.dtype == resumed.estimator.cov.dtype == torch.float32
        assert resumed.schedule_progress.dtype == torch.float64 and float(resumed.schedule_progress) == 1 / 3
        assert torch.equal(resumed.estimator.cov, saved["estimator.cov"])
        resumed(x.to(dtype), y, net)
        net(x.to(dtype))
        assert int(resumed.estimator.count.sum()) == 2 * len(y) and torch.isfinite(resumed.estimator.cov).all()


def test_rows_too_large_to_square_are_ignored_like_non_finite_ones():
    # a finite feature of 1e20 overflowed the float32 covariance to inf: the ISDA loss was NaN for good
    g = torch.Generator().manual_seed(0)
    est, clean = FeatureCovariance(3), FeatureCovariance(3)
    f, y = torch.randn(6, 4, generator=g), torch.tensor([0, 0, 1, 1, 2, 2])
    huge = f.clone()
    huge[1, 2] = 1e20
    est.update(huge, y)
    keep = torch.arange(6) != 1
    clean.update(f[keep], y[keep])
    assert torch.isfinite(est.cov).all() and torch.equal(est.count, clean.count)
    torch.testing.assert_close(est.cov, clean.cov)


def test_rows_whose_squares_fit_but_whose_sum_of_squares_overflows_are_ignored():
    # 1.5e19 squares to 2.25e38 < float32's 3.4e38, but two of them in one class summed to inf: the bound leaves
    # headroom for the sums (1.8e13 in float32), so such rows change no statistic
    est, clean = FeatureCovariance(2), FeatureCovariance(2)
    f = torch.tensor([[1.5e19, 0.0], [-1.5e19, 1.0], [1.0, 2.0], [2.0, 1.0], [0.5, 0.5]])
    y = torch.tensor([0, 0, 1, 1, 0])
    est.update(f, y)
    clean.update(f[2:], y[2:])
    assert torch.isfinite(est.cov).all() and torch.equal(est.count, torch.tensor([1, 2]))
    torch.testing.assert_close(est.cov, clean.cov)
    torch.testing.assert_close(est.mean, clean.mean)



def test_rows_are_ignored_from_the_documented_bound_of_1_8e13_in_float32():
    est = FeatureCovariance(1, sync_stats=False)  # mutation round 47: a bound 1000 times higher passed the tests above
    est.update(torch.tensor([[1.7e13], [2e13], [0.0]]), torch.zeros(3, dtype=torch.int64))
    assert est.count.tolist() == [2] and est.mean.item() == pytest.approx(0.85e13)

def test_labels_on_another_device_are_refused():
    with pytest.raises(ValueError, match="y is on meta but the features on cpu"):
        FeatureCovariance(3).update(torch.randn(2, 4), torch.zeros(2, dtype=torch.int64, device="meta"))


# -- the hook -----------------------------------------------------------------------------------------------------------
def test_hook_is_one_shot_and_the_call_leaves_the_model_unchanged(batch, net):
    x, y = batch
    isda = ISDA(10, lambda0=1.0)
    isda.set_progress(1.0)
    plain = net(x).detach()
    before = model_state(net)
    isda(x, y, net)
    assert_model_unchanged(net, before)
    assert len(net.fc._forward_hooks) == 1
    first = net(x)
    assert not torch.allclose(first, plain)
    assert len(net.fc._forward_hooks) == 0
    assert torch.equal(net(x), plain)  # the next forward is plain again
    assert int(isda.estimator.count.sum()) == len(y)  # and did not update the statistics


@STRENGTH_ZERO_EXPECTED
def test_latest_arm_wins_with_a_warning_and_transformed_counts_fired_hooks(batch, net):
    x, y = batch
    a, b = ISDA(10), ISDA(10)
    a(x, y, net)
    with pytest.warns(UserWarning, match="'fc' \\(nn.Linear 32 -> 10\\) by the previous call was never applied") as caught:
        b(x, y, net)
    assert caught[0].filename == __file__  # points at the user's call, not into torch
    # mutation round 25 (audit 209): a model of one such head names no others (no "a head per task?" with an empty list)
    assert next(str(w.message) for w in caught if "never applied" in str(w.message)).endswith("right before model(x)")
    with pytest.warns(UserWarning, match="never applied"):
        a(x, y, net)
    assert len(net.fc._forward_hooks) == 1
    assert a.stats == {"seen": 2 * len(y), "transformed": 0, "rejected": 0}  # armed twice, applied never (yet)
    net(x)
    assert int(a.estimator.count.sum()) == len(y) and b.estimator.count is None
    assert a.stats["transformed"] == len(y) and b.stats == {"seen": len(y), "transformed": 0, "rejected": 0}


@STRENGTH_ZERO_EXPECTED
def test_a_fired_hook_left_armed_is_replaced_without_a_warning(batch, net):
    """Mutation round 49 (audit 337): torch 2.4's compiled code ran the hook but dropped its ``_disarm``, leaving a
    fired hook on the layer; the next arm replaces it silently (it was applied), with one hook on the layer."""
    from latent_transforms.isda import _ARMED

    x, y = batch
    isda = ISDA(10)
    isda(x, y, net)
    _ARMED[net.fc][1].fired = True  # as torch 2.4's compiled forward left it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        isda(x, y, net)
    assert len(net.fc._forward_hooks) == 1 and not _ARMED[net.fc][1].fired
    isda.disarm(net)


@STRENGTH_ZERO_EXPECTED
def test_a_forward_that_raises_before_the_classifier_leaves_the_hook_pending_until_disarmed(batch, net):
    # as docs/reliability.md says: nothing tells the hook that the forward failed before reaching it
    x, y = batch
    isda = ISDA(10)
    net.features.register_forward_hook(lambda m, args, out: 1 / 0)  # the backbone fails
    isda(x, y, net)
    with pytest.raises(ZeroDivisionError):
        net(x)
    assert len(net.fc._forward_hooks) == 1
    with pytest.warns(UserWarning, match="never applied"):
        isda(x, y, net)  # replaced, with a warning
    isda.disarm(net)
    assert len(net.fc._forward_hooks) == 0 and isda.estimator.count is None


@STRENGTH_ZERO_EXPECTED
def test_a_compiled_model_that_skips_the_hook_is_reported(batch, net):
    """torch.compile (hook guards skipped, torch's default) ignores a hook added after the model was compiled:
    ISDA then never runs; the next arm says so, and stats show nothing transformed."""
    x, y = batch
    compiled = torch.compile(net, backend="eager")
    compiled(x)  # compiled before ISDA armed anything (a warm-up or an epoch without ISDA)
    isda = ISDA(10)
    isda(x, y, compiled)
    compiled(x)
    if isda.estimator.count is not None:
        pytest.skip("this torch version's compiled code runs hooks added later")
    with pytest.warns(UserWarning, match="skip_nnmodule_hook_guards"):
        isda(x, y, compiled)
    assert isda.stats["transformed"] == 0
    compiled(x)
    # under DDP with shared statistics, every rank raises here instead: a recompile on one rank (a smaller last
    # batch) made the hook fire there alone, and its statistics gather hung until the process group's timeout
    isda.estimator.gathers = lambda: True
    with pytest.raises(RuntimeError, match="skip_nnmodule_hook_guards.*DistributedDataParallel a recompile on one "
                                           "rank .* would make the hook fire on that rank alone"):
        isda(x, y, compiled)
    isda.disarm(compiled)


@STRENGTH_ZERO_EXPECTED
def test_a_model_compiled_after_another_of_its_class_is_reported_naming_the_reset(batch, net):
    """Audit 448: torch reuses the code compiled for one instance of a class for another (hook guards skipped, its
    default): ISDA armed on a fresh model before compiling it (the documented way) never ran in a process that had
    compiled one of its class before (a baseline run of a sweep). The warning names that case and the reset (which,
    called before compiling the new model, let the hook run: 6 of 6 transformed, checked by a script, not here: a
    model compiled with the hook armed after a reset made torch's "Dynamo does not know how to trace" warning
    reappear in the next test's compile)."""
    x, y = batch
    earlier = copy.deepcopy(net)
    torch.compile(earlier, backend="eager")(x)  # the run before: same class, no ISDA
    isda = ISDA(10)
    isda.set_progress(1.0)
    isda(x, y, net)  # armed before the compile
    compiled = torch.compile(net, backend="eager")
    compiled(x)
    if isda.estimator.count is not None:
        pytest.skip("this torch version's compiled code runs the hook of another instance")
    with pytest.warns(UserWarning, match=r"never applied.*another instance of the model's class.*"
                                         r"torch\._dynamo\.reset\(\) before compiling this model"):
        isda(x, y, compiled)
    assert isda.stats["transformed"] == 0
    isda.disarm(compiled)


@STRENGTH_ZERO_EXPECTED
def test_a_compiled_model_that_runs_the_hook_is_not_reported(batch, net):
    """torch 2.4's compiled code runs a hook added later, but drops the hook's taking itself off the layer: the next
    arm found it still there and warned 'never applied' every step (under DDP with shared statistics: raised)."""
    x, y = batch
    compiled = torch.compile(net, backend="eager")
    compiled(x)
    isda = ISDA(10)
    isda(x, y, compiled)
    compiled(x)
    if isda.estimator.count is None:
        pytest.skip("this torch version's compiled code ignores hooks added later (the test above)")
    isda.estimator.gathers = lambda: True  # shared statistics: the arm alone asks (the forward would gather)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        isda(x, y, compiled)
    del isda.estimator.gathers
    compiled(x)
    assert isda.stats == {"seen": 2 * len(y), "transformed": 2 * len(y), "rejected": 0}
    isda.disarm(compiled)


def test_model_transforms_refuse_data_loader_workers_and_data_parallel(batch, net):
    from latent_transforms import LatentAdversarial
    from latent_transforms.codecs import Glow

    x, y = batch
    glow = Glow(tuple(x.shape[1:]), levels=1, steps=1, hidden=4).freeze()
    for t in (ISDA(10), LatentAdversarial(glow)):
        loader = torch.utils.data.DataLoader(list(zip(x, y)), batch_size=4, num_workers=1,
                                             collate_fn=lambda items, t=t: t(*map(torch.stack, zip(*items)), net))
        batches = iter(loader)
        try:
            with pytest.raises(RuntimeError, match="called in a DataLoader worker, on the worker's copy of the model"):
                next(batches)
        finally:  # the raised error's traceback keeps the iterator alive: left to the GC, its shutdown waited 5 s
            batches._shutdown_workers()  # for its worker in whichever later test the collection ran
    with pytest.raises(ValueError, match=r"ISDA does not support nn.DataParallel over several devices \(device_ids="
                                         r"\[0, 1\]: its replicas"):
        ISDA(10)(x, y, data_parallel(net, [0, 1]))


def data_parallel(net: nn.Module, device_ids: list[int]) -> nn.DataParallel:
    """``nn.DataParallel(net)`` as built on a machine with ``device_ids`` GPUs (built on the CPU, it has none, and then
    calls ``net`` itself: only ISDA's reading of ``device_ids`` is stood in for)."""
    wrapper = nn.DataParallel(net)
    wrapper.device_ids = device_ids
    return wrapper


@pytest.mark.parametrize("device_ids", [None, [0]])
def test_data_parallel_on_one_device_is_augmented_as_its_model(batch, net, device_ids):
    """Audit 443: the official ISDA code wraps its model in nn.DataParallel, which on one GPU (or the CPU, no device)
    calls the model it holds on the whole batch, with no replicas; ISDA refused it all the same ("its replicas would
    each see part of the batch"). Its logits and statistics are now those of the model itself."""
    x, y = batch
    twin = copy.deepcopy(net)
    wrapper = nn.DataParallel(net) if device_ids is None else data_parallel(net, device_ids)
    if device_ids is not None:  # no GPU here: the wrapper's forward would scatter to cuda:0; its module runs instead
        wrapper.forward = lambda x: wrapper.module(x)
    logits = []
    for model in (wrapper, twin):
        isda = ISDA(10, lambda0=1.0)
        isda.set_progress(1.0)
        isda(x, y, model)
        logits.append(model(x))
        assert isda.stats["transformed"] == len(y) and isda.find_layer(model)[1] is model.get_submodule(
            "module.fc" if model is wrapper else "fc")
        if model is wrapper:
            stats = isda.estimator.state_dict()
    assert torch.equal(logits[0], logits[1])
    assert all(torch.equal(v, isda.estimator.state_dict()[k]) for k, v in stats.items())


@EVAL_BESIDE_TRAINING
def test_eval_mode_arms_nothing(batch, net):
    x, y = batch
    isda = ISDA(10).eval()
    assert isda(x, y, net) == (x, y)
    assert len(net.fc._forward_hooks) == 0
    net.eval()
    with torch.no_grad():  # a validation step; with gradients on it warns (test_a_model_in_eval_mode_...)
        isda.train()(x, y, net)
    assert len(net.fc._forward_hooks) == 0
    assert isda.stats == {"seen": len(y), "transformed": 0, "rejected": 0}


def test_a_model_in_eval_mode_whose_classifier_trains_is_augmented():
    """Audit 243: fine-tuning a torchvision ResNet with model.eval() (BatchNorm's statistics kept), then
    model.fc.train(): ISDA armed nothing (it read the model's own flag, not the classifier's) and the loss stayed
    plain cross-entropy, stats['transformed'] 0, without a word."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])
    isda = ISDA(10, lambda0=1.0)
    isda.set_progress(1.0)
    model.eval()
    model.fc.train()
    bn = model.bn1.running_mean.clone()
    plain = model(x).detach()
    for _ in range(2):  # the first forward gives the statistics the second one's correction uses
        isda(x, y, model)
        augmented = model(x)
    assert isda.stats["transformed"] == 8
    assert (augmented - plain).abs().max() > 1e-3 and torch.equal(augmented.gather(1, y[:, None]),
                                                                   plain.gather(1, y[:, None]))
    assert torch.equal(model.bn1.running_mean, bn)  # the backbone stayed in eval mode


def test_a_model_in_eval_mode_with_a_trainable_classifier_warns_once_that_nothing_is_augmented():
    """Audit 243: model.eval() for the whole model while its head trains (a fine-tuning habit) left ISDA silent:
    nothing augmented, stats['transformed'] 0. With gradients on and the classifier's weight trainable it warns once,
    naming the call that puts the classifier in train mode; a validation step (no_grad) and a frozen head do not."""
    import torchvision

    x, y = torch.rand(2, 3, 32, 32), torch.tensor([0, 1])
    model = torchvision.models.mobilenet_v3_small(weights=None, num_classes=10).eval()  # classifier: a Sequential
    isda = ISDA(10)
    isda.set_progress(0.5)
    with pytest.warns(UserWarning, match=r"MobileNetV3 and its classifier 'classifier\.3' \(nn.Linear 1024 -> "
                                         r"10\) are in eval mode.*model\.get_submodule\('classifier\.3'\)\.train\(\)"
                      ) as caught:
        isda(x, y, model)
    # mutation round 34: it points at the user's call, and says what to do in a validation step
    warned = next(w for w in caught if "are in eval mode" in str(w.message))
    assert warned.filename == __file__
    assert str(warned.message).endswith("A validation step? Call isda.eval() there, or run it under torch.no_grad()")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        isda(x, y, model)  # once per ISDA
        with torch.no_grad():
            ISDA(10)(x, y, model)
        model.classifier[3].requires_grad_(False)
        ISDA(10)(x, y, model)
    assert isda.stats["transformed"] == 0
    net = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    with pytest.warns(UserWarning, match=r"call model\.fc\.train\(\) after it"):
        ISDA(10)(x, y, net)


@pytest.mark.parametrize("wrapped", ["alone", "Compose", "nested Compose"])
def test_isda_warnings_point_at_the_users_call_through_a_compose_too(batch, wrapped):
    """Audit 247: ISDA's warnings (no schedule; model and classifier in eval mode; an arm never applied; ISDA left in
    eval() mode) named a fixed stacklevel: inside a Compose they pointed at compose.py's step call, not the user's
    line. Each now names the line of ``t(x, y, model)``, alone or composed."""
    from torchvision.transforms import v2
    from latent_transforms import Compose

    x, y = batch
    net = TinyNet()

    def wrap(isda):
        return {"alone": isda, "Compose": Compose([v2.RandomHorizontalFlip(), isda]),
                "nested Compose": Compose([Compose([v2.RandomHorizontalFlip(), isda])])}[wrapped]

    def call(t):
        return t(x, y, net)
    where = [(__file__, call.__code__.co_firstlineno + 1)]  # the line of t(x, y, net)
    isda = ISDA(10)
    for warning, set_up in [("strength lam = lambda0", lambda: None),  # no set_epoch
                            ("never applied", lambda: None),  # the previous call's arm: no model(x) after it
                            ("classifier 'fc' .* are in eval mode", lambda: (isda.disarm(net), net.eval())),
                            ("in eval\\(\\) mode, where it returns its inputs unchanged",
                             lambda: (net.train(), isda.eval()))]:  # isda.eval() after the Compose's train()
        set_up()
        with pytest.warns(UserWarning, match=warning) as record:
            call(wrap(isda))
        assert [(w.filename, w.lineno) for w in record if re.search(warning, str(w.message))] == where, warning


def test_a_model_in_eval_mode_without_a_linear_classifier_is_passed_through_as_before():
    """Mutation round 34: for a model in eval mode ISDA now looks up its classifier's mode; a model with no nn.Linear
    (a convolutional head, refused in training) is still passed through untouched in eval mode, not refused."""
    model = nn.Sequential(nn.Conv2d(1, 10, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    isda = ISDA(10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isda(x, y, model) == (x, y)
    assert isda.stats == {"seen": 2, "transformed": 0, "rejected": 0}


@STRENGTH_ZERO_EXPECTED
def test_hook_waits_for_a_training_forward_and_checks_the_batch(batch, net):
    x, y = batch
    isda = ISDA(10)
    isda(x, y, net)
    net.eval()
    net(x[:3])  # an eval forward passes through and leaves it armed
    assert len(net.fc._forward_hooks) == 1
    net.train()
    with pytest.raises(ValueError, match="armed with 12 labels"):
        net(x[:5])
    assert len(net.fc._forward_hooks) == 0  # disarmed on error too


def test_missing_model_soft_labels_and_bad_models(batch, net):
    x, y = batch
    with pytest.raises(TypeError, match="model"):
        ISDA(10)(x, y)
    for isda in (ISDA(10), ISDA(10).eval()):  # eval() returned soft labels unchanged: refused only once training
        with pytest.raises(ValueError, match="class indices"):
            isda(x, F.one_hot(y, 10).float(), net)
    conv_only = nn.Sequential(nn.Conv2d(1, 10, 8), nn.Flatten())
    with pytest.raises(ValueError, match=r"Sequential.*layer="):
        ISDA(10)(x, y, conv_only)
    with pytest.raises(ValueError, match="num_classes=5"):
        ISDA(5)(x, y % 5, net)
    with pytest.raises(ValueError, match="no submodule 'head'"):
        ISDA(10, layer="head")(x, y, net)
    with pytest.raises(ValueError, match="Conv2d"):
        ISDA(10, layer="features.0")(x, y, net)
    with pytest.raises(ValueError, match="covariance"):
        ISDA(10, covariance="low-rank")
    with pytest.raises(ValueError, match="lambda0"):
        ISDA(10, lambda0=-1)


def test_label_smoothed_soft_labels_are_told_to_smooth_in_the_loss(batch, net):
    """Smoothed one-hot rows (label_smoothing=0.1 made into the labels) have a single class: the refusal says to pass
    their argmax and give the smoothing to F.cross_entropy, which applies it to the augmented logits."""
    x, y = batch
    smoothed = F.one_hot(y, 10).float() * 0.9 + 0.01
    for t, call in ((ISDA(10), lambda t: t(x, smoothed, net)),
                    (ISDALoss(10), lambda t: t(features_of(net, x), net.fc, smoothed))):
        with pytest.raises(ValueError, match=r"y.argmax\(1\) if the labels are one-hot or label-smoothed \(smooth in "
                                             r"the loss instead: F.cross_entropy\(logits, y, label_smoothing=...\)\)"):
            call(t)
    isda = ISDA(10)
    isda.set_epoch(1, 2)
    isda(x, smoothed.argmax(1), net)
    loss = F.cross_entropy(net(x), smoothed.argmax(1), label_smoothing=0.1)
    assert isda.stats["transformed"] == len(y) and torch.isfinite(loss)


@pytest.mark.parametrize("covariance", ["full", "diagonal"])
def test_a_class_seen_once_has_zero_covariance_and_its_sample_no_correction(covariance):
    """Long-tailed data (docs/methods/isda.md, "Imbalanced data"): a class seen once has a covariance of exactly 0,
    finite, so its sample's logits are left as they are; seen twice, the covariance is rank 1 and the sample is
    augmented. The head class beside it is augmented from the first batch."""
    torch.manual_seed(0)
    fc, loss = nn.Linear(16, 10), ISDALoss(10, covariance=covariance)
    features, y = torch.randn(8, 16), torch.tensor([0, 0, 0, 0, 0, 0, 1, 2])  # classes 1 and 2 once each
    logits = fc(features)
    augmented = loss.augment(features, logits, fc.weight, y, lam=1.0)
    cov = loss.estimator.cov
    assert loss.estimator.count[:3].tolist() == [6, 1, 1]
    assert torch.isfinite(cov).all() and (cov[1:3] == 0).all() and (cov[0] != 0).any()
    assert torch.equal(augmented[6:], logits[6:]) and (augmented[:6] > logits[:6]).any()
    second = torch.randn(1, 16)  # class 1's second sample
    again = loss.augment(second, fc(second), fc.weight, y[6:7], lam=1.0)
    assert (cov[1] != 0).any() and (again > fc(second)).any()
    if covariance == "full":
        assert torch.linalg.matrix_rank(cov[1]) == 1


def test_the_default_layer_is_the_classifier_not_a_linear_layer_of_a_transforms_codec(batch, net):
    # the VAE of a transform registered after the classifier holds the model's last nn.Linear: ISDA hooked it and
    # refused its outputs ("the layer 'augment.codec.decoder.0' ... has 256 outputs but num_classes=10")
    x, y = batch
    model = ClassifierWithItsAugmentation(net, LatentNoise(tiny_vae()))
    isda = ISDA(10)
    isda.set_epoch(1, 2)
    assert isda.find_layer(model) == ("net.fc", net.fc)
    isda(x, y, model)
    model(x)
    assert isda.stats["transformed"] == len(y)


class _Distillation(nn.Module):
    """A distillation module as a LightningModule holds one: the student, then the frozen teacher (so the teacher's
    ``fc`` is the last ``nn.Linear``); the forward is the student's."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.student, self.teacher = TinyNet(), TinyNet().requires_grad_(False)

    def forward(self, x):
        return self.student(x)


def test_a_frozen_teacher_is_named_when_the_model_is_in_eval_mode_and_the_students_head_trains(batch):
    """Audit 247: kd.eval(); kd.student.fc.train() (fine-tuning with BatchNorm's statistics kept): ISDA looked at the
    model's last nn.Linear, the teacher's, in eval mode, and augmented nothing, with no warning (its weight is frozen).
    It now refuses it naming the student's head, as in train mode; with that head named, the student is augmented."""
    x, y = batch
    kd = _Distillation().eval()
    kd.student.fc.train()
    with pytest.raises(ValueError, match=r"'teacher.fc' .*is in eval mode while _Distillation is in eval mode with a "
                                         r"classifier in train mode, .*distillation\), or another task's head "
                                         r"\(a head per task\)\? pass ISDA\(..., layer='student.fc'\)"):
        ISDA(10)(x, y, kd)
    with pytest.raises(ValueError, match=r"'teacher.fc' .*is in eval mode while _Distillation is in eval mode with a "
                                         r"classifier in train mode, .*layer='student.fc'\)"):
        ISDA(10, layer="teacher.fc")(x, y, kd)  # named, it never fires either (mutation round 35: nothing, silently)
    isda = ISDA(10, layer="student.fc")
    isda.set_epoch(1, 2)
    isda(x, y, kd)
    kd(x)
    assert isda.stats["transformed"] == len(y)
    with torch.no_grad():  # a validation step: the whole model in eval mode, nothing refused or armed
        kd.eval()
        ISDA(10)(x, y, kd)
    assert not kd.teacher.fc._forward_hooks and not kd.student.fc._forward_hooks


@pytest.mark.parametrize("teacher_mode", ["eval", "train"])
def test_a_frozen_teacher_the_model_holds_is_not_hooked_by_default(batch, teacher_mode):
    # isda(x, y, kd_module) hooked the teacher's fc, the model's last nn.Linear: in eval mode it never fired (a
    # warning one call later named no fix), in train mode (Lightning's model.train() at each epoch) a teacher forward
    # with gradients enabled got the augmentation and the student's forward none
    x, y = batch
    kd = _Distillation()
    getattr(kd.teacher, teacher_mode)()
    isda = ISDA(10)
    isda.set_epoch(1, 2)
    state = "in eval mode" if teacher_mode == "eval" else "frozen"
    with pytest.raises(ValueError, match=f"'teacher.fc' .*is {state}.*distillation.*layer='student.fc'"):
        isda(x, y, kd)
    assert not kd.teacher.fc._forward_hooks and not kd.student.fc._forward_hooks  # nothing armed
    with pytest.raises(ValueError, match="a teacher's probabilities .*give ISDA the dataset's class indices"):
        ISDA(10, layer="student.fc")(x, kd.teacher(x).softmax(1), kd)
    isda = ISDA(10, layer="student.fc")
    isda.set_epoch(1, 2)
    with torch.no_grad():
        plain = kd.teacher(x), kd.student(x)
    x2, y2 = isda(x, y, kd)
    with torch.no_grad():
        assert torch.equal(kd.teacher(x2), plain[0])  # the teacher's forward is left alone
    assert not torch.allclose(kd(x2), plain[1])  # the student's gets the augmented logits
    assert isda.stats["transformed"] == len(y)


def test_a_frozen_classifier_of_its_own_is_hooked_but_not_one_in_eval_mode(batch, net):
    # a fixed head (frozen, no trainable Linear of as many outputs beside it) still trains the backbone: hooked as
    # before, also beside a probe of as many outputs that does not train (in eval mode or frozen: no student to name
    # instead; mutation round 19, audit 191); a head in eval mode while the model trains would never fire the hook
    x, y = batch
    net.fc.requires_grad_(False)
    for probe in (None, nn.Linear(32, 10).eval(), nn.Linear(32, 10).requires_grad_(False)):
        model = net if probe is None else nn.Sequential(OrderedDict(probe=probe, net=net))  # net.fc stays the last
        isda = ISDA(10)
        isda.set_epoch(1, 2)
        isda(x, y, model)
        net(x)
        assert isda.stats["transformed"] == len(y)
    net.fc.eval()
    with pytest.raises(ValueError, match="'fc' .*eval mode while TinyNet trains.*put it in train mode"):
        isda(x, y, net)



def test_a_trainable_layer_in_eval_mode_is_refused_saying_why(batch, net):
    # mutation round 19 (audit 191): a head in eval mode while the model trains is refused whether or not it is frozen
    # (the hook never fires), and the message says why: the hook fires on training forwards only
    x, y = batch
    net.fc.eval()
    with pytest.raises(ValueError, match=r"'fc' .*is in eval mode while TinyNet trains, so it is not the classifier "
                                         r"being trained \(the hook fires on training forwards only\): put it in "
                                         r"train mode"):
        ISDA(10)(x, y, net)


def test_a_frozen_layer_the_caller_names_is_hooked_beside_a_trainable_one(batch):
    # mutation round 19 (audit 191): only the layer found by default is second-guessed; one named by the caller is
    # their choice, frozen or not
    x, y = batch
    kd = _Distillation()
    isda = ISDA(10, layer="teacher.fc")
    isda.set_epoch(1, 2)
    isda(x, y, kd)
    kd.teacher(x)
    assert isda.stats["transformed"] == len(y)


def test_the_refusal_of_a_frozen_teacher_names_the_students_last_linear(batch):
    # mutation round 19 (audit 191): the layer to pass is the last trainable nn.Linear of as many outputs, as the
    # default is the last nn.Linear (a student's hidden Linear of 10 outputs is not its classifier)
    x, y = batch
    kd = _Distillation()
    kd.student = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.ReLU(), nn.Linear(10, 10))  # keeps its place
    with pytest.raises(ValueError, match=r"'teacher.fc' .*distillation\), or another task's head \(a head per task\)\? "
                                         r"pass ISDA\(..., layer='student.3'\) \(or another that trains: 'student.1'\)$"):
        ISDA(10)(x, y, kd)


def test_a_frozen_teacher_in_a_compose_is_not_blamed_on_the_previous_step(batch):
    # mutation round 19 (audit 191): the refusal is about the model, not the batch a previous step made
    from latent_transforms import Compose

    x, y = batch
    with pytest.raises(ValueError, match=r"^ISDA's layer 'teacher.fc' "):
        Compose([lambda v: v.flip(-1), ISDA(10)])(x, y, _Distillation())

class _Wrapper(nn.Module):
    """The shape of a DDP wrapper: the model lives in .module (``aux``: a later Linear that is not the classifier)."""

    def __init__(self, module, aux: bool = False):
        super().__init__()
        self.module = module
        if aux:
            self.aux = nn.Linear(3, 3)

    def forward(self, x):
        return self.module(x)


@STRENGTH_ZERO_EXPECTED
def test_named_layer_and_ddp_style_wrapper(batch, net):
    x, y = batch
    wrapped = _Wrapper(net, aux=True)
    with pytest.raises(ValueError, match="'aux'.*3 outputs"):
        ISDA(10)(x, y, wrapped)
    isda = ISDA(10, layer="module.fc")
    assert isda.find_layer(wrapped) == ("module.fc", net.fc)
    isda(x, y, wrapped)
    wrapped(x)
    assert int(isda.estimator.count.sum()) == len(y)


def test_a_layer_named_inside_a_data_parallel_wrapper_is_found_by_its_name_in_the_model(net):
    """Mutation round 360: ``layer="fc"`` names the classifier of the model a DDP/DataParallel wrapper holds (the
    wrapper's own path is ``module.fc``); without the wrapper's ``module`` looked up it was "has no submodule 'fc'"."""
    assert ISDA(10, layer="fc").find_layer(nn.DataParallel(net)) == ("fc", net.fc)


@pytest.mark.parametrize("compiled", ["wrapped", "in place"])
def test_a_hook_that_never_fired_on_a_compiled_model_names_the_compile(batch, net, compiled):
    # under DDP the compiled model is the wrapper's .module, and nn.Module.compile() compiles in place (no
    # OptimizedModule; the warning pointed at nothing compiled): both must point at torch.compile's hook guards
    x, y = batch
    plain = copy.deepcopy(net)
    if compiled == "wrapped":
        model = _Wrapper(torch.compile(net, backend="eager"))  # nothing is compiled: no forward runs
    else:
        model = net
        net.compile(backend="eager")
    isda = ISDA(10)
    isda.set_progress(0.5)
    isda(x, y, model)
    with pytest.warns(UserWarning, match="never applied.*torch.compile'd.*skip_nnmodule_hook_guards"):
        isda(x, y, model)
    isda.disarm(model)
    isda(x, y, plain)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        isda(x, y, plain)
    assert len(caught) == 1 and "torch.compile" not in str(caught[0].message)  # a plain model: no compile hint
    isda.disarm(plain)


def test_a_model_compiled_with_fullgraph_is_refused_by_name(batch, net):
    """The hook's Python breaks the compiled graph at the layer; torch.compile(fullgraph=True) turned that into
    torch's 'Unsupported: Attempted to represent unregistered RemovableHandle' at model(x), and the next call warned
    that the hook never fired. Refused when arming, naming fullgraph and ISDALoss; nothing is left armed."""
    x, y = batch
    compiled = torch.compile(net, backend="eager", fullgraph=True)
    isda = ISDA(10)
    isda.set_progress(0.5)
    with pytest.raises(ValueError, match=r"fullgraph=True.*ISDALoss"):
        isda(x, y, compiled)
    with pytest.raises(ValueError, match=r"fullgraph=True"):
        isda(x, y, _Wrapper(compiled))  # DDP's .module
    assert not net.fc._forward_hooks
    isda(x, y, torch.compile(net, backend="eager"))  # without fullgraph: armed as ever
    assert net.fc._forward_hooks
    isda.disarm(net)


def test_a_model_compiled_in_place_with_fullgraph_is_refused_by_name(batch, net):
    """Audit 446: model.compile(fullgraph=True) was not recognised; torch refused it at model(x), since audit 443 with
    "Unsupported: Call to `torch.compiler.disable()` ... Move the torch.compiler.disable() call outside the compiled
    function", a call the user never made. Refused when arming, as torch.compile(model, fullgraph=True) is."""
    x, y = batch
    isda = ISDA(10)
    isda.set_progress(0.5)
    net.compile(backend="eager", fullgraph=True)
    with pytest.raises(ValueError, match=r"model.compile\(fullgraph=True\) refuses .*ISDALoss"):
        isda(x, y, net)
    with pytest.raises(ValueError, match=r"fullgraph=True"):
        isda(x, y, _Wrapper(net))  # DDP's .module
    assert not net.fc._forward_hooks
    net.compile(backend="eager")  # without fullgraph: armed as ever
    isda(x, y, net)
    assert net.fc._forward_hooks
    isda.disarm(net)


# Dynamo's warnings: torch 2.14's "Dynamo does not know how to trace ...", torch 2.4's "Graph break due to ..."
TORCH_COMPILE_WARNING = re.compile(r"Dynamo|[Gg]raph break")


def test_a_compiled_model_is_augmented_as_the_eager_one_without_a_torch_warning(batch, net):
    """Audit 443: the hook form on a model compiled after ISDA armed its first hook (the documented way) gave the eager
    model's logits and gradients, but dynamo traced into the hook and warned at every compile of the model ("Dynamo
    does not know how to trace the builtin ..._top_saved_tensors_default_hooks"). The hook now runs untraced, the
    graph break it makes anyway."""
    x, y = batch
    twin = copy.deepcopy(net)
    compiled = torch.compile(net, backend="eager")
    results = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # not "error": torch's own that Dynamo hides (a non-leaf's .grad) would raise
        for model, params in ((compiled, net), (twin, twin)):
            isda = ISDA(10, lambda0=1.0)
            isda.set_progress(1.0)
            for step in range(2):  # the second forward runs the code compiled with the first's hook
                isda(x[step::2], y[step::2], model)
                loss = F.cross_entropy(model(x[step::2]), y[step::2])
            loss.backward()
            results.append((loss.detach(), [p.grad for p in params.parameters()], isda.estimator.cov.clone()))
            assert isda.stats["transformed"] == len(y)
    assert not [str(w.message) for w in caught if TORCH_COMPILE_WARNING.search(str(w.message))]
    (loss, grads, cov), (loss_eager, grads_eager, cov_eager) = results
    torch.testing.assert_close(loss, loss_eager)
    torch.testing.assert_close(cov, cov_eager)
    for g, ge in zip(grads, grads_eager):
        torch.testing.assert_close(g, ge)


def test_compiled_models_augmented_across_dynamo_resets_without_a_torch_warning(batch, net):
    """Audit 448: the hook's untraced form, kept from a compile before ``torch._dynamo.reset()`` (what the
    never-applied warning advises; a notebook's sweep), was traced into at a later compile: torch warned "Dynamo does
    not know how to trace the builtin ..._top_saved_tensors_default_hooks". It is made afresh in compiled code."""
    x, y = batch
    for _ in range(3):
        model = copy.deepcopy(net)
        isda = ISDA(10, lambda0=1.0)
        isda.set_progress(1.0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            isda(x, y, model)  # armed before the compile, the documented way
            compiled = torch.compile(model, backend="eager")
            compiled(x)
            isda(x, y, compiled)
            compiled(x)
        assert not [str(w.message) for w in caught if TORCH_COMPILE_WARNING.search(str(w.message))]
        assert isda.stats["transformed"] == 2 * len(y)
        isda.disarm(compiled)
        torch._dynamo.reset()


def test_what_runs_untraced_in_compiled_code_is_made_there_without_a_torch_warning():
    """Audit 447: ISDA's hook in a compiled model (and, under DDP, the statistics' gather and the broadcast exclusion)
    made its ``torch.compiler.disable`` form at its first need, in the code being compiled, and kept it in a list:
    torch 2.4's Dynamo could not trace the ``list.append`` and warned "Graph break due to unsupported builtin
    None.list.append" at the user's first compile. ``untraced`` keeps none in compiled code (and those it makes
    eagerly in a dict); the function runs eagerly, made once where called eagerly."""
    from latent_transforms.torch_defaults import untraced

    ran = []

    def work(x):  # a new function: its untraced form is made inside the compiled code
        ran.append(torch.compiler.is_compiling())
        return x * 2

    compiled = torch.compile(lambda x: untraced(work)(x + 1) - 1, backend="eager")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs = [compiled(torch.ones(2)) for _ in range(2)]
    assert not [str(w.message) for w in caught if TORCH_COMPILE_WARNING.search(str(w.message))]
    assert [o.tolist() for o in outs] == [[3.0, 3.0]] * 2 and ran == [False, False]
    assert untraced(work) is untraced(work)


def test_schedule():
    isda = ISDA(10, lambda0=0.5)
    assert isda.lam == 0.0
    isda.set_epoch(0, 160)
    assert isda.lam == 0.0  # the first epoch is plain CE, as in the official code
    isda.set_epoch(80, 160)
    assert isda.lam == 0.25
    isda.set_progress(1.0)
    assert isda.lam == 0.5
    with pytest.raises(ValueError, match=r"progress must be a finite number in \[0, 1\], got 1.5"):
        isda.set_progress(1.5)
    with pytest.raises(ValueError, match=r"epoch must be an int in \[0, total_epochs=160\] \(0-based\), got 161"):
        isda.set_epoch(161, 160)
    with pytest.raises(ValueError, match="epoch must be an int >= 0, got True"):  # a bool was taken as epoch 1
        isda.set_epoch(True, 3)
    isda.set_epoch(np.int64(1), np.int64(2))  # NumPy ints work, as everywhere else
    assert isda.lam == 0.25


def test_settings_take_numpy_scalars_like_the_other_methods():
    # ISDA refused NumPy scalars that VarMixup/LatentNoise take (its own checks instead of validation's)
    isda = ISDA(np.int64(10), lambda0=np.float32(0.5))
    assert isda.num_classes == 10 and type(isda.num_classes) is int and isda.lambda0 == 0.5
    assert FeatureCovariance(np.int64(3), feature_dim=np.int64(4)).feature_dim == 4
    assert ISDALoss(np.int64(10)).num_classes == 10
    for bad, match in [(lambda: ISDA(10.0), "num_classes must be an int >= 1"),
                       (lambda: ISDA(10, lambda0=float("nan")), "lambda0 must be a finite number"),
                       (lambda: FeatureCovariance(0), "num_classes must be an int >= 1"),
                       (lambda: FeatureCovariance(3, feature_dim=0), "feature_dim must be an int >= 1"),
                       (lambda: ISDA(10, covariance="low-rank"), r"covariance must be one of \('full', 'diagonal'\)")]:
        with pytest.raises(ValueError, match=match):
            bad()


def test_p_selects_which_samples_get_the_correction(batch, net):
    x, y = batch[0], torch.arange(6).repeat(2)  # every class twice: every selected sample gets a correction
    plain = net(x).detach()
    isda = ISDA(10, lambda0=1.0, p=0.5, generator=0)
    isda.set_progress(1.0)
    isda(x, y, net)
    out = net(x).detach()
    changed = (out != plain).any(1)
    assert 0 < int(changed.sum()) < len(y)
    assert isda.stats["transformed"] == int(changed.sum())
    assert int(isda.estimator.count.sum()) == len(y)  # every sample updates the statistics


# -- loss form, gradients, state -------------------------------------------------------------------------------------
@pytest.mark.parametrize("covariance", ["full", "diagonal"])
def test_loss_form_equals_hook_form(covariance, batch, net):
    x, y = batch
    net2 = copy.deepcopy(net)
    hook, loss_form = ISDA(10, lambda0=2.0, covariance=covariance), ISDALoss(10, lambda0=2.0, covariance=covariance)
    for t in (hook, loss_form):
        t.set_epoch(3, 4)
    for _ in range(2):  # second step uses statistics of two batches
        hook(x, y, net)
        l1 = F.cross_entropy(net(x), y)
        l2 = loss_form(net2.features(x), net2.fc, y)
        assert torch.allclose(l1, l2, atol=1e-6)
        net.zero_grad()
        net2.zero_grad()
        l1.backward()
        l2.backward()
        for p1, p2 in zip(net.parameters(), net2.parameters()):
            assert torch.allclose(p1.grad, p2.grad, atol=1e-6)
        x = x.flip(0)
    for b1, b2 in zip(hook.estimator.buffers(), loss_form.estimator.buffers()):
        assert torch.allclose(b1.double(), b2.double(), atol=1e-6)
    assert torch.equal(loss_form.eval()(net2.features(x), net2.fc, y), F.cross_entropy(net2(x), y))


class OfficialISDALoss:
    """The official criterion, ``loss, y = isda(model, fc, x, target, ratio)``, re-typed in its own tensor algebra
    from blackfeather-wang/ISDA-for-Deep-Networks: ``EstimatorCV.update_CV`` and ``ISDALoss.isda_aug`` of
    ``ISDA.py`` (full covariance, CIFAR) and of ``Image classification on ImageNet/ISDA_imagenet.py`` (diagonal),
    on the CPU instead of ``.cuda()``; ``model`` is the backbone, ``fc`` the final ``nn.Linear``."""

    def __init__(self, feature_num, class_num, diagonal, dtype=torch.float64):
        c, a = class_num, feature_num
        self.class_num, self.diagonal = c, diagonal
        self.CoVariance = torch.zeros((c, a) if diagonal else (c, a, a), dtype=dtype)
        self.Ave, self.Amount = torch.zeros(c, a, dtype=dtype), torch.zeros(c, dtype=dtype)

    def update_CV(self, features, labels):
        n, c, a = features.shape[0], self.class_num, features.shape[1]
        onehot = torch.zeros(n, c, dtype=features.dtype).scatter_(1, labels.view(-1, 1), 1)
        nxcxa_onehot = onehot.view(n, c, 1).expand(n, c, a)
        by_sort = features.view(n, 1, a).expand(n, c, a).mul(nxcxa_onehot)
        amount_cxa = nxcxa_onehot.sum(0)
        amount_cxa[amount_cxa == 0] = 1
        ave_cxa = by_sort.sum(0) / amount_cxa
        var_temp = by_sort - ave_cxa.expand(n, c, a).mul(nxcxa_onehot)
        weight = onehot.sum(0) / (onehot.sum(0) + self.Amount)  # sum_weight_CV / (sum_weight_CV + Amount)
        weight[weight != weight] = 0
        d = self.Ave - ave_cxa
        if self.diagonal:
            var_temp, w = var_temp.pow(2).sum(0).div(amount_cxa), weight.view(c, 1)
            additional = w.mul(1 - w).mul(d.pow(2))
        else:
            var_temp = torch.bmm(var_temp.permute(1, 2, 0), var_temp.permute(1, 0, 2)).div(amount_cxa.view(c, a, 1))
            w = weight.view(c, 1, 1)
            additional = w.mul(1 - w).mul(torch.bmm(d.view(c, a, 1), d.view(c, 1, a)))
        self.CoVariance = self.CoVariance.mul(1 - w) + var_temp.mul(w) + additional
        self.Ave = self.Ave.mul(1 - weight.view(c, 1)) + ave_cxa.mul(weight.view(c, 1))
        self.Amount += onehot.sum(0)

    def isda_aug(self, fc, features, y, labels, cv_matrix, ratio):
        n, c, a = features.shape[0], self.class_num, features.shape[1]
        weight_m = list(fc.parameters())[0]
        nxw_ij = weight_m.expand(n, c, a)
        nxw_kj = torch.gather(nxw_ij, 1, labels.view(n, 1, 1).expand(n, c, a))
        cv_temp = cv_matrix[labels]
        if self.diagonal:
            sigma2 = ratio * (weight_m - nxw_kj).pow(2).mul(cv_temp.view(n, 1, a).expand(n, c, a)).sum(2)
        else:
            sigma2 = ratio * torch.bmm(torch.bmm(nxw_ij - nxw_kj, cv_temp), (nxw_ij - nxw_kj).permute(0, 2, 1))
            sigma2 = sigma2.mul(torch.eye(c, dtype=sigma2.dtype).expand(n, c, c)).sum(2).view(n, c)
        return y + 0.5 * sigma2

    def __call__(self, model, fc, x, target_x, ratio):
        features = model(x)
        y = fc(features)
        self.update_CV(features.detach(), target_x)
        aug = self.isda_aug(fc, features, y, target_x, self.CoVariance.detach(), ratio)
        return F.cross_entropy(aug, target_x), y


@pytest.mark.parametrize("covariance", ["full", "diagonal"])
def test_isda_loss_equals_the_official_criterion_under_the_official_schedule(covariance):
    """docs/methods/isda.md's migration table: ``ISDALoss(feature_num, class_num)`` and
    ``loss, y = isda(model, fc, x, target, ratio)`` with ``ratio = lambda_0 * epoch / epochs`` (train.py) are
    ``ISDALoss(class_num, lambda0)``, ``set_epoch(epoch, epochs)`` and ``isda_loss(model(x), fc, target)``: the same
    statistics after every batch (classes absent from one batch included), loss and gradients, epoch after epoch."""
    g = torch.Generator().manual_seed(0)
    k, a, epochs, lambda_0 = 6, 5, 4, 0.5
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(7, a), nn.Tanh()).double()
    fc = nn.Linear(a, k).double()
    ours = ISDALoss(k, lambda0=lambda_0, covariance=covariance, sync_stats=False)
    official = OfficialISDALoss(a, k, diagonal=covariance == "diagonal")
    for epoch in range(epochs):
        ours.set_epoch(epoch, epochs)
        ratio = lambda_0 * (epoch / epochs)
        assert ours.lam == ratio
        for n in (9, 4):  # the batch of 4 misses some of the 6 classes
            x = torch.randn(n, 7, generator=g, dtype=torch.float64) * 2
            y = torch.randint(0, k, (n,), generator=g)
            expected, logits = official(backbone, fc, x, y, ratio)
            assert torch.equal(logits, fc(backbone(x)))  # the official y: the plain logits
            want = torch.autograd.grad(expected, [*backbone.parameters(), *fc.parameters()])
            got = ours(backbone(x), fc, y)
            assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12), (epoch, got, expected)
            for gw, ww in zip(torch.autograd.grad(got, [*backbone.parameters(), *fc.parameters()]), want):
                assert torch.allclose(gw, ww, rtol=1e-10, atol=1e-12)
            est = ours.estimator
            assert torch.equal(est.count.double(), official.Amount)
            assert torch.allclose(est.mean, official.Ave, rtol=1e-12, atol=1e-12)
            assert torch.allclose(est.cov, official.CoVariance, rtol=1e-10, atol=1e-12)
    assert ours.lam > 0 and (est.cov != 0).any()  # the correction was on in the later epochs


def test_gradient_flows_to_backbone_and_through_the_correction_to_fc(batch, net):
    x, y = batch
    isda = ISDA(10, lambda0=5.0)
    isda.set_progress(1.0)
    isda(x, y, net)
    F.cross_entropy(net(x), y).backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    assert all(g.abs().sum() > 0 for g in grads.values())
    net.zero_grad()
    F.cross_entropy(net(x), y).backward()  # plain CE: fc's gradient differs by the correction's share
    assert not torch.allclose(grads["fc.weight"], net.fc.weight.grad)


@STRENGTH_ZERO_EXPECTED
def test_state_dict_round_trip(batch, net):
    x, y = batch
    isda = ISDA(10, covariance="diagonal")
    isda(x, y, net)
    net(x)
    fresh = ISDA(10, covariance="diagonal")  # lazily sized: loads the checkpoint's size
    fresh.load_state_dict(isda.state_dict())
    for (n1, b1), (n2, b2) in zip(isda.state_dict().items(), fresh.state_dict().items()):
        assert n1 == n2 and torch.equal(b1, b2)
    sized = ISDA(10, covariance="diagonal", feature_dim=32)
    sized.load_state_dict(isda.state_dict())
    assert torch.equal(sized.estimator.cov, isda.estimator.cov)
    with pytest.raises(ValueError, match=r"takes 32 features, the statistics have 7 .*: use a new ISDA"):
        ISDA(10, feature_dim=7)(x, y, net)


@pytest.mark.parametrize("make", [lambda: ISDA(10, lambda0=0.5), lambda: ISDALoss(10, lambda0=0.5)])
def test_the_strength_schedule_travels_with_the_state_dict(make):
    # progress was a plain attribute: a run resumed mid-epoch from state_dict() trained at lam = 0 until the next
    # set_epoch, silently
    isda = make()
    isda.set_epoch(5, 10)
    resumed = make()
    resumed.load_state_dict(isda.state_dict())
    assert resumed.lam == isda.lam == 0.25
    assert all(isinstance(v, torch.Tensor) for v in isda.state_dict().values())  # safetensors can store it
    old = {k: v for k, v in isda.state_dict().items() if k != "schedule_progress"}  # saved before progress was kept
    resumed.set_progress(0.5)
    resumed.load_state_dict(old)
    assert resumed.lam == 0.25
    with pytest.raises(ValueError, match="progress must be"):
        resumed.load_state_dict({**isda.state_dict(), "schedule_progress": torch.tensor(2.0, dtype=torch.float64)})


@pytest.mark.parametrize("make", [lambda: ISDA(10, lambda0=0.5), lambda: ISDALoss(10, lambda0=0.5)])
def test_progress_assigned_is_set_progress(make):
    # a plain attribute changed lam but not schedule_progress: state_dict() saved the earlier progress, and a run
    # resumed from it trained at another strength
    isda = make()
    isda.progress = 0.75
    resumed = make()
    resumed.load_state_dict(isda.state_dict())
    assert resumed.lam == isda.lam == 0.375
    with pytest.raises(ValueError, match="progress must be"):
        isda.progress = 1.5


@pytest.mark.parametrize("make", [lambda: ISDA(10, covariance="full"), lambda: ISDALoss(10, covariance="full")])
def test_the_covariance_form_is_fixed_at_construction(make):
    # assigned as a plain attribute, the repr (what a sweep logs) said "diagonal" while the statistics stayed full
    isda = make()
    with pytest.raises(AttributeError, match=r"covariance is fixed at construction .*now 'full'.*covariance='diagonal'"):
        isda.covariance = "diagonal"
    assert "covariance='full'" in repr(isda) and isda.estimator.covariance == isda.covariance == "full"


@pytest.mark.parametrize("make", [ISDA, ISDALoss, FeatureCovariance])
def test_a_covariance_form_assigned_is_not_told_to_grow(make):
    """Mutation round 32 (audit 238): only a larger num_classes is told ``.grow(n)``; "full" after "diagonal" (a
    string that compares larger) is told to build a new one, whichever the owner."""
    t = make(4, covariance="diagonal")
    with pytest.raises(AttributeError, match=rf"now 'diagonal'\): build a new {make.__name__}\(\.\.\., "
                                             rf"covariance='full'\)$"):
        t.covariance = "full"
    assert t.covariance == "diagonal"


def test_the_sizing_settings_are_missing_until_set_as_plain_attributes_were():
    """Mutation round 41 (audit 292): read through ``vars(self)``, an unset num_classes or covariance is missing
    (``AttributeError``, as the plain attribute was), not ``None``."""
    unset = FeatureCovariance.__new__(FeatureCovariance)
    for name in ("num_classes", "covariance"):
        with pytest.raises(AttributeError, match=name):
            getattr(unset, name)


def test_torchvision_resnet18_auto_detects_fc():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    isda = ISDA(10, lambda0=0.5)
    isda.set_progress(1.0)
    assert isda.find_layer(model) == ("fc", model.fc)
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 1, 3])
    isda(x, y, model)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    assert torch.isfinite(loss) and model.conv1.weight.grad is not None
    assert isda.estimator.mean.shape == (10, 512) and isda.estimator.cov.shape == (10, 512, 512)


def test_autocast_bf16_keeps_float32_statistics(batch, net):
    x, y = batch
    isda = ISDA(10)
    isda.set_progress(1.0)
    isda(x, y, net)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert isda.estimator.cov.dtype == torch.float32


# -- training smoke ----------------------------------------------------------------------------------------------------
def test_training_smoke_on_digits():
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x_all = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16
    y_all = torch.tensor(digits.target, dtype=torch.int64)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    isda = ISDA(10, lambda0=0.5)
    g = torch.Generator().manual_seed(0)
    losses = []
    for step in range(20):
        isda.set_epoch(step // 5, 4)  # 4 "epochs" of 5 steps: lam ramps 0, 0.125, 0.25, 0.375
        idx = torch.randint(0, len(y_all), (64,), generator=g)
        x, y = isda(x_all[idx], y_all[idx], model)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    assert int(isda.estimator.count.sum()) == 20 * 64


@STRENGTH_ZERO_EXPECTED
def test_inside_compose_as_the_last_step(batch, net):
    from latent_transforms import Compose

    x, y = batch
    isda = ISDA(10)
    x2, y2 = Compose([lambda t: t.flip(-1), isda])(x, y, net)
    assert torch.equal(x2, x.flip(-1)) and torch.equal(y2, y)
    net(x2)
    assert int(isda.estimator.count.sum()) == len(y)


# -- data that are not images: ISDA reads the classifier's features, never x ------------------------------------------
NOT_IMAGES = {  # (body: x -> (B, 8) features, x); standardised values, outside [0, 1]
    "vectors (B, D)": (lambda: nn.Sequential(nn.Linear(6, 8), nn.ReLU()),
                       lambda g: 3 * torch.randn(12, 6, generator=g)),
    "sequences (B, T, D)": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(24, 8), nn.ReLU()),
                            lambda g: 3 * torch.randn(12, 4, 6, generator=g)),
    "spectrograms (B, 1, F, T)": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(24, 8), nn.ReLU()),
                                  lambda g: 3 * torch.randn(12, 1, 4, 6, generator=g) - 5),
    "token ids (B, T) int64": (lambda: nn.Sequential(nn.Embedding(20, 4), nn.Flatten(), nn.Linear(24, 8), nn.ReLU()),
                               lambda g: torch.randint(0, 20, (12, 6), generator=g)),
}


@EVAL_BESIDE_TRAINING
@pytest.mark.parametrize("wrap", ["alone", "Compose", "Compose after a callable"])
@pytest.mark.parametrize("kind", sorted(NOT_IMAGES))
def test_data_that_are_not_images_get_the_loss_form_s_loss(kind, wrap):
    """Found by a persona audit (data that are not images): every call refused vectors, sequences and token ids,
    "x must have shape (B, C, H, W)", and standardised spectrograms, "x values must lie in [0, 1]", though ISDA
    never reads x (ISDALoss took the same models' features)."""
    from latent_transforms import Compose

    torch.manual_seed(0)
    make_body, make_x = NOT_IMAGES[kind]
    body, fc = make_body(), nn.Linear(8, 3)
    model = nn.Sequential(body, fc)
    x, y = make_x(torch.Generator().manual_seed(0)), torch.arange(12) % 3
    isda, loss_form = ISDA(3, lambda0=2.0), ISDALoss(3, lambda0=2.0)
    isda.set_epoch(1, 2), loss_form.set_epoch(1, 2)
    t = {"alone": isda, "Compose": Compose([isda]), "Compose after a callable": Compose([lambda v: v, isda])}[wrap]
    x2, y2 = t(x, y, model)
    assert x2 is x and y2 is y
    hooked = F.cross_entropy(model(x), y)
    assert isda.stats["transformed"] == 12
    assert torch.allclose(hooked, loss_form(body(x), fc, y), atol=1e-6)
    assert hooked > F.cross_entropy(model(x), y) + 1e-3  # the correction is there
    t.eval()
    assert t(x, y, model)[0] is x  # eval() mode: the identity, refusing nothing either


def test_data_that_are_not_images_are_still_checked_and_image_steps_still_get_images(net):
    from torchvision.transforms import v2

    from latent_transforms import Compose

    x, y = torch.randn(4, 6), torch.arange(4)
    with pytest.raises(ValueError, match=r"x must be a batch \(B, \.\.\.\) with the samples along its first dimension, "
                                         r"got a 0-d tensor"):
        ISDA(10)(x[0, 0], y[:1], net)
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got ndarray"):
        ISDA(10)(x.numpy(), y, net)
    with pytest.raises(ValueError, match=r"x has an empty dimension besides the batch's \(shape \(4, 0\)\)"):
        ISDA(10)(x[:, :0].long(), y, net)  # token ids of no tokens
    with pytest.raises(ValueError, match="batch sizes differ: x has 4 samples, y has 3"):
        Compose([ISDA(10)])(x, y[:3], net)
    with pytest.raises(ValueError, match="y class indices must be int64"):
        ISDA(10)(x.long(), y.int(), net)
    for t, needs in ((ISDA(10), r"ISDA needs labels: call t\(x, y, \.\.\.\) with y"),
                     (Compose([ISDA(10)]), r"y=None \(an unlabelled batch\), but a step needs labels: ISDA at step 0")):
        with pytest.raises(ValueError, match=f"^{needs}"):  # token ids without labels: no value to check in the batch
            t(x.long(), None, net)
    bad = x.clone()
    bad[1, 2] = float("nan")
    for t in (ISDA(10), ISDA(10).eval(), Compose([ISDA(10)]), Compose([lambda v: v, ISDA(10)]).eval()):
        with pytest.raises(ValueError, match=r"^x contains NaN or inf \(in samples \[1\]\)"):  # in any range, finite
            t(bad, y, net)
    for steps in ([v2.RandomHorizontalFlip(), ISDA(10)], [lambda v: v], [LatentNoise(tiny_vae()), ISDA(10)]):
        with pytest.raises(ValueError, match=r"x must have shape \(B, C, H, W\)"):  # steps that take images
            Compose(steps)(x, y, net)
    images = Compose([ISDA(10), v2.RandomHorizontalFlip()])
    for mode in (True, False):  # ISDA first reads no image values: the Compose does, for the flip
        with pytest.raises(ValueError, match=r"x values must lie in \[0, 1\]"):
            images.train(mode)(torch.randn(4, 1, 8, 8), y, net)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning",
                            "ignore:Sparse CSR tensor support is in beta:UserWarning")
def test_data_whose_values_cannot_be_read_are_named(net):
    """Sparse, nested and meta x reached torch's own errors in the value check ("Could not run 'aten::aminmax' with
    arguments from the 'SparseCPU' backend", "NestedTensorImpl doesn't support sizes", "Cannot copy out of meta
    tensor; no data!"); each is named with its fix, in both modes."""
    x, y = torch.randn(2, 6), torch.arange(2)
    jagged = torch.nested.nested_tensor([torch.rand(3, 4), torch.rand(5, 4)], layout=torch.jagged)
    cases = [(x.to_sparse(), y, r"x must be a dense tensor, got layout torch.sparse_coo; convert with x.to_dense\(\)"),
             (x.to_sparse_csr(), y, r"x must be a dense tensor, got layout torch.sparse_csr"),
             (torch.nested.nested_tensor([torch.rand(3, 4), torch.rand(5, 4)]), y,
              r"x is a nested tensor \(samples of different sizes\); pad them to one size, "
              r"torch.nested.to_padded_tensor\(x, 0.0\)"),
             (jagged, y, r"x is a nested tensor \(samples of different sizes\); pad them to one size, "
              r"torch.nn.utils.rnn.pad_sequence\(x.unbind\(\), batch_first=True\)"),
             (x.to("meta"), y.to("meta"), r"x is on the meta device, which holds shapes, not values")]
    for bad, labels, match in cases:
        for t in (ISDA(10), ISDA(10).eval()):
            with pytest.raises(ValueError, match=match):
                t(bad, labels, net)
    # the jagged layout's fix runs from torch 2.4 on (its torch.nested.to_padded_tensor is NotImplemented there)
    padded = torch.nn.utils.rnn.pad_sequence(jagged.unbind(), batch_first=True)
    assert padded.shape == (2, 5, 4) and torch.equal(padded[0, :3], jagged.unbind()[0]) and not padded[0, 3:].any()
    isda = ISDA(10)
    isda.set_progress(1.0)
    assert isda(padded, y, net)[0] is padded  # taken as it is


def test_labels_are_checked_once_per_training_step(monkeypatch, batch, net):
    """Each label check is a host sync: the hook and ISDALoss check y where it enters, not again inside."""
    from latent_transforms import validation

    calls, real = [], validation._label_stats  # what check_labels and check_batch read the labels' values with

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(validation, "_label_stats", counting)
    x, y = batch
    isda = ISDA(10)
    isda.set_progress(1.0)
    isda(x, y, net)
    F.cross_entropy(net(x), y).backward()
    assert len(calls) == 1
    calls.clear()
    loss = ISDALoss(10)
    loss.set_progress(1.0)
    loss(net.features(x), net.fc, y)
    assert len(calls) == 1
    calls.clear()
    loss.augment(net.features(x), net(x), net.fc.weight, y)  # the public pieces still check
    assert len(calls) == 1


@pytest.mark.parametrize("copy_model", [copy.deepcopy, lambda m: __import__("pickle").loads(__import__("pickle").dumps(m))])
def test_a_copy_of_an_armed_model_is_left_without_the_hook(batch, net, copy_model):
    """A model copied (an EMA or best-model copy, a checkpoint by pickling) between isda(x, y, model) and model(x)
    carried the pending hook for good, with a copy of the ISDA (its K x A x A statistics) behind it, and its first
    training forward was augmented with the original batch's labels."""
    x, y = batch
    isda = ISDA(10, lambda0=1.0)
    isda.set_progress(1.0)
    isda(x, y, net)
    net(x)  # statistics collected, so an augmentation would change the logits
    isda(x, y, net)
    twin = copy_model(net)
    plain = copy.deepcopy(twin.fc)  # the copy's own layer, without hooks: what its logits must be
    net(x)  # the original's hook fires and removes itself
    assert torch.equal(twin(x), plain(twin.features(x)))
    twin(x)
    assert len(net.fc._forward_hooks) == 0 and len(twin.fc._forward_hooks) == 0


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # torch 2.14 warns
def test_a_model_trained_with_the_hook_exports_as_one_never_hooked(batch, net):
    """What a user who trained with ISDA then serves: no hook or key is left on the model, and torch.jit.script,
    torch.jit.trace and torch.export give the eval outputs of the model's own weights loaded into a fresh one."""
    x, y = batch
    isda = ISDA(10, lambda0=1.0)
    isda.set_progress(1.0)
    keys = list(net.state_dict())
    train_steps(net, torch.optim.SGD(net.parameters(), lr=0.1), isda, [(x, y)] * 3)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())
    assert list(net.state_dict()) == keys
    fresh = TinyNet()
    fresh.load_state_dict(net.state_dict())
    net.eval()
    expected = fresh.eval()(x)
    assert torch.equal(net(x), expected)
    assert torch.equal(torch.jit.script(net)(x), expected)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace is deprecated
        assert torch.equal(torch.jit.trace(net, x)(x), expected)
    assert torch.equal(torch.export.export(net, (x,)).module()(x), expected)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # torch 2.14 warns
def test_torch_jit_script_of_a_model_with_a_pending_hook_names_disarm(batch, net):
    """isda(x, y, model) with no training forward after it (a loop stopped between the two) left the hook on the
    layer, and torch.jit.script(model) failed with "'_ArmedHook' object has no attribute '__name__'"."""
    x, y = batch
    isda = ISDA(10)
    isda.set_progress(0.5)
    isda(x, y, net)
    net.eval()
    with pytest.raises(AttributeError, match=r"armed on the layer 'fc' .*isda\.disarm\(model\)"):
        torch.jit.script(net)
    isda.disarm(net)
    assert torch.equal(torch.jit.script(net)(x), net(x))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # torch 2.14 warns
@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:FutureWarning")
@pytest.mark.parametrize("layer", [None, "fc"])
def test_a_scripted_model_is_named_as_what_isda_cannot_hook(batch, net, layer):
    """Audit 443: a model given as torch.jit.script(model) (or traced) was refused with "ISDA found no nn.Linear in
    RecursiveScriptModule ...; convolutional heads are not supported", and layer='fc' with "is a
    RecursiveScriptModule, ISDA needs the final nn.Linear": its layers are TorchScript modules, which run no hook added
    after scripting (a submodule takes one and never runs it). The error now says so and what to do."""
    x, y = batch
    scripted = torch.jit.script(net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, x)
    for model in (scripted, traced, nn.DataParallel(scripted)):  # Audit 446: also as the module of a wrapper
        model.train()
        with pytest.raises(ValueError, match=r"^ISDA cannot hook the classifier of a torch.jit.script'ed or traced "
                                             r"model .*Train the eager model with ISDA .*ISDALoss"):
            ISDA(10, layer=layer)(x, y, model)
        assert not any(m._forward_hooks for m in model.modules())


def _head_first(backbone: nn.Module, features: int, num_classes: int) -> nn.Module:
    """A classifier whose head is assigned before its backbone: its last nn.Linear is the backbone's."""

    class HeadFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(features, num_classes)
            self.backbone = backbone

        def forward(self, x):
            return self.fc(self.backbone(x))

    return HeadFirst()


def test_a_classifier_before_a_backbone_with_linear_layers_is_named(batch):
    """Audit 443: a head assigned before a transformer backbone (timm's or torchvision's ViT, Swin or ConvNeXt with
    num_classes=0: their blocks hold nn.Linear layers), or before a projection head, is not the last nn.Linear. The
    error named the block's MLP layer and said "either num_classes is miscounted (num_classes=8 for this classifier)
    ... call .grow(8)", which hooked the block; labels out of range were blamed on a grown classifier too. It now
    names the layer of num_classes outputs to pass."""
    x, y = batch
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.GELU(), nn.Linear(16, 8))  # a block's MLP: the last Linear
    model = _head_first(mlp, 8, 10)
    with pytest.raises(ValueError, match=r"^the layer 'backbone\.3' of HeadFirst \(16 -> 8\) has 8 outputs but "
                                         r"num_classes=10: it is the last nn.Linear .*the model's nn.Linear of 10 "
                                         r"outputs, 'fc', comes before it .*pass ISDA\(\.\.\., layer='fc'\)$") as info:
        ISDA(10)(x, y, model)
    assert "grow" not in str(info.value) and "miscounted" not in str(info.value)
    isda = ISDA(10, layer="fc")
    isda.set_progress(1.0)
    isda(x, y, model)
    model(x)
    assert isda.stats["transformed"] == len(y)
    # labels past num_classes: the labels' own error, not "a classifier grown for new classes? call .grow(8)"
    with pytest.raises(ValueError, match=r"^y has class index 9, out of range for num_classes=6") as info:
        ISDA(6)(x, y, _head_first(mlp, 8, 6))
    assert "grow" not in str(info.value)
    with pytest.raises(ValueError, match=r"pass layer='\.\.\.' naming it\); a classifier grown"):  # layer= given
        ISDA(6, layer="backbone.3")(x, y % 6, model)


def test_two_heads_before_a_backbone_with_linear_layers_are_named_and_the_last_is_suggested(batch):
    """Audit 446: with several nn.Linear layers of num_classes outputs before the backbone's last one (a distilled
    model's two heads), the error names them all, in model.modules() order, and suggests the last, as the default
    lookup takes the last."""
    x, y = batch

    class TwoHeadsFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.head, self.head_dist = nn.Linear(8, 10), nn.Linear(8, 10)
            self.backbone = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.GELU(), nn.Linear(16, 8))

        def forward(self, x):
            features = self.backbone(x)
            return (self.head(features) + self.head_dist(features)) / 2

    with pytest.raises(ValueError, match=r"the model's nn.Linear of 10 outputs, 'head', 'head_dist', come before it "
                                         r".*pass ISDA\(\.\.\., layer='head_dist'\)$"):
        ISDA(10)(x, y, TwoHeadsFirst())


def test_a_torchvision_vit_backbone_after_its_head_names_the_head():
    """Audit 443, with torchvision's VisionTransformer as the backbone (heads removed), as users build one."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=8, patch_size=4, num_layers=1, num_heads=2, hidden_dim=8,
                                               mlp_dim=16, num_classes=10)
    vit.heads = nn.Identity()
    model = _head_first(vit, 8, 10)
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"the layer 'backbone\.encoder\.layers\.encoder_layer_0\.mlp\.3' .*"
                                         r"pass ISDA\(\.\.\., layer='fc'\)$"):
        ISDA(10)(x, y, model)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # torch 2.14 warns
@pytest.mark.parametrize("copy_model", [copy.deepcopy, lambda m: __import__("pickle").loads(__import__("pickle").dumps(m))])
def test_disarm_takes_the_inert_hook_off_a_copy_of_an_armed_model(batch, net, copy_model):
    """A copy made while a hook was pending (torch.save(model), an EMA copy) carries an inert hook, which
    isda.disarm(copy) left there: torch.jit.script(copy) then failed until a forward had run."""
    x, y = batch
    isda = ISDA(10)
    isda.set_progress(0.5)
    isda(x, y, net)
    twin = copy_model(net).eval()
    isda.disarm(twin)
    assert not twin.fc._forward_hooks and net.fc._forward_hooks  # the original's pending hook is its own
    assert torch.equal(torch.jit.script(twin)(x), twin(x))
    isda.disarm(net)
    assert not net.fc._forward_hooks


def test_disarm_leaves_the_layers_other_hooks(batch, net):
    """Mutation round 26 (audit 215): disarm removes ISDA's own hooks only, not one the user put on the layer."""
    x, y = batch
    seen = []
    handle = net.fc.register_forward_hook(lambda m, args, out: seen.append(out.shape))
    isda = ISDA(10)
    isda.set_progress(0.5)
    isda(x, y, net)
    isda.disarm(copy.deepcopy(net))
    isda.disarm(net)
    assert list(net.fc._forward_hooks) == [handle.id]
    net(x)
    assert seen == [(len(x), 10)]


def test_a_pending_hook_does_not_keep_a_deleted_isda_alive(batch, net):
    """isda(x, y, model) whose model(x) never ran (it raised and the step was skipped), then the ISDA is dropped:
    the model kept it (and its statistics) alive and applied its stale augmentation to a later forward."""
    import gc
    import weakref

    x, y = batch
    plain = net(x).detach()
    isda = ISDA(10, lambda0=1.0)
    isda.set_progress(1.0)
    isda(x, y, net)
    net(x)  # a normal step: statistics collected, so a stale augmentation would change the logits
    isda(x, y, net)  # armed; the forward that should consume it never runs
    ref = weakref.ref(isda)
    del isda
    gc.collect()
    assert ref() is None
    with pytest.warns(UserWarning, match=r"the ISDA that armed the augmentation on 'fc' \(nn.Linear 32 -> 10\) was garbage-collected"):
        assert torch.equal(net(x), plain)
    assert len(net.fc._forward_hooks) == 0


def test_an_isda_made_afresh_each_step_warns_that_it_augments_nothing(batch, net):
    """``x, y = ISDA(10)(x, y, model)`` inside the loop: the ISDA was collected before model(x) and the training
    was plain cross-entropy without a word."""
    import gc

    x, y = batch

    def scheduled():
        isda = ISDA(10)
        isda.set_progress(1.0)
        return isda

    x2, y2 = scheduled()(x, y, net)
    gc.collect()
    with pytest.warns(UserWarning, match="create the ISDA once, outside the training loop"):
        net(x2)
    net.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scheduled()(x, y, net.train())
        gc.collect()
        net.eval()(x)  # an eval forward is never augmented: nothing lost, no warning
        net.train()(x)  # the hook removed itself at the eval forward


def test_the_warning_of_a_collected_isda_names_the_users_line_not_torchs(batch):
    """Its stacklevel=2 named nn.Module's call of the hook, in torch's module.py: it points at the first line outside
    the library and nn.Module's calls, here this file's model(x) (a model's forward of your own: its line)."""
    import gc
    import linecache

    x, y = batch
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))  # its forward is torch's too: the line is model(x)'s
    isda = ISDA(10)
    isda.set_progress(1.0)
    isda(x, y, model)
    del isda
    gc.collect()
    with pytest.warns(UserWarning, match="was garbage-collected") as record:
        model(x)
    assert record[0].filename == __file__ and linecache.getline(__file__, record[0].lineno).strip() == "model(x)"


def test_the_loss_form_and_the_functional_name_what_they_were_given():
    """ISDALoss said "x has 6 samples" (it has no x); isda_logits on 1-D or 3-D logits said "not enough values to
    unpack", on a list "'list' object has no attribute 'shape'"; FeatureCovariance.update on a list the same."""
    with pytest.raises(ValueError, match="batch sizes differ: features has 6 samples, y has 5"):
        ISDALoss(5)(torch.randn(6, 8), nn.Linear(8, 5), torch.zeros(5, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"^ISDALoss needs class indices y: \(B,\) int64, got soft labels of shape \(6, 5\)"):
        ISDALoss(5)(torch.randn(6, 8), nn.Linear(8, 5), torch.full((6, 5), 0.2))  # (mutation round 18, audit 181)
    y = torch.zeros(6, dtype=torch.int64)
    for logits, message in ((torch.randn(5), r"logits must be \(N, C\)"), (torch.randn(1, 6, 5), r"logits must be \(N, C\)"),
                            ([[0.0] * 5] * 6, "logits must be a float torch.Tensor")):
        with pytest.raises((ValueError, TypeError), match=message):
            isda_logits(logits, torch.randn(5, 8), y, torch.rand(5, 8), 0.5)
    with pytest.raises(TypeError, match="cov must be a float torch.Tensor"):
        isda_logits(torch.randn(6, 5), torch.randn(5, 8), y, [[0.0] * 8] * 5, 0.5)
    with pytest.raises(TypeError, match="features must be a torch.Tensor, got list"):
        FeatureCovariance(3).update([[0.0, 1.0]], torch.zeros(1, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"features must be \(N, A\), got shape \(4,\)"):  # was an IndexError
        FeatureCovariance(3).update(torch.randn(4), torch.zeros(4, dtype=torch.int64))
    # found by bad-input fuzzing (audit 234): int and bool features were cast to float, complex ones lost their
    # imaginary part (torch's UserWarning only), and the statistics were updated from them
    for features in (torch.ones(4, 2, dtype=torch.int64), torch.ones(4, 2, dtype=torch.bool), torch.ones(4, 2) * 1j):
        est = FeatureCovariance(3)
        with pytest.raises(ValueError, match=f"^features must be float, got dtype {features.dtype}$"):
            est.update(features, torch.zeros(4, dtype=torch.int64))
        assert est.mean is None  # no statistics made from them
    with pytest.raises(TypeError, match=r"covariance must be one of \('full', 'diagonal'\), got True"):
        FeatureCovariance(3, covariance=True)


def test_the_official_argument_order_is_named_as_the_cause(batch, net):
    """Migration audit 170: the official ``ISDALoss(feature_num, class_num)`` takes the feature width first; typed
    here, ``ISDALoss(32, 10)`` is ``num_classes=32, lambda0=10``. Refused at the first call, but the message read
    "fc has 10 outputs but num_classes=32" (and for the hook, "pass layer='...' naming the classifier": not the
    cause), naming neither the swapped order nor the right call."""
    x, y = batch
    order = r"num_classes=32 is the layer's input width: the official ISDALoss\(feature_num, class_num\) takes"
    with pytest.raises(ValueError, match=order + r".*ISDALoss\(10, lambda0=\.\.\.\)"):
        ISDALoss(32, 10)(net.features(x), net.fc, y)
    with pytest.raises(ValueError, match=order + r".*ISDA\(10, lambda0=\.\.\.\)") as info:
        ISDA(32, 10)(x, y, net)
    assert "layer=" not in str(info.value)
    # another mismatch: no word of the official order (a head of more outputs is named as perhaps grown)
    with pytest.raises(ValueError, match=r"num_classes=5: either num_classes is miscounted \(num_classes=10 for this "
                                         r"classifier\) or 'fc' is not the classifier \(pass layer='\.\.\.' naming "
                                         r"it\); a classifier grown") as info:
        ISDA(5)(x, y % 5, net)
    with pytest.raises(ValueError, match=r"num_classes=5: either num_classes is miscounted \(num_classes=10 for this "
                                         r"classifier\) or fc is not the classifier \(pass its nn.Linear\); a "
                                         r"classifier grown") as loss_info:
        ISDALoss(5)(net.features(x), net.fc, y % 5)
    with pytest.raises(ValueError, match=r"10 outputs but num_classes=50: either num_classes is miscounted") as wide:
        ISDA(50)(x, y, net)  # more classes than the layer's 32 inputs: not its input width either
    assert "official" not in str(info.value) + str(loss_info.value) + str(wide.value)


def test_the_official_full_layer_given_as_fc_names_the_linear_inside_it(batch, net):
    """First-hour audit 174: the official CIFAR code's classifier is ``fc = Full_layer(feature_num, class_num)``, an
    ``nn.Module`` holding the ``nn.Linear`` as ``fc.fc``, and its criterion takes ``fc`` itself. Passed here as it is,
    the error said only "fc must be the classifier's nn.Linear, got Full_layer", not what to pass."""

    class Full_layer(nn.Module):  # the official one, as in ISDA-for-Deep-Networks' CIFAR networks
        def __init__(self, feature_num, class_num):
            super().__init__()
            self.fc = nn.Linear(feature_num, class_num)

        def forward(self, x):
            return self.fc(x)

    x, y = batch
    fc = Full_layer(net.fc.in_features, net.fc.out_features)
    with pytest.raises(TypeError, match=r"got Full_layer: pass the one inside it, fc\.fc$"):
        ISDALoss(10)(net.features(x), fc, y)
    with pytest.raises(ValueError, match=r"is a Full_layer, ISDA needs the final nn.Linear: the one inside it, "
                                         r"layer='head\.fc'$"):
        ISDA(10, layer="head")(x, y, nn.ModuleDict({"body": net.features, "head": fc}))
    two = nn.Sequential(nn.Linear(32, 16), nn.Linear(16, 10))  # more than one inside: no guess
    with pytest.raises(TypeError, match=r"got Sequential$"):
        ISDALoss(10)(net.features(x), two, y)
    with pytest.raises(TypeError, match=r"got function$"):  # no module: nothing inside to name
        ISDALoss(10)(net.features(x), lambda f: net.fc(f), y)


def test_statistics_merged_under_cpu_autocast_are_the_float32_ones():
    # the merge turns autocast off: under a bfloat16 autocast its matrix product ran in bfloat16
    g = torch.Generator().manual_seed(0)
    f, y = torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g)
    plain, mixed = FeatureCovariance(3), FeatureCovariance(3)
    plain.update(f, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed.update(f, y)
    assert mixed.cov.dtype == torch.float32 and torch.equal(mixed.cov, plain.cov)
    assert torch.equal(mixed.mean, plain.mean)


def test_statistics_first_sized_under_inference_mode_keep_training_afterwards():
    # sized inside torch.inference_mode(), they were inference tensors: every later training step raised
    # "Inplace update to inference tensor outside InferenceMode is not allowed"
    from conftest import TinyNet

    torch.manual_seed(0)
    net, isda = TinyNet(), ISDA(10)
    isda.set_progress(0.5)
    x, y = torch.rand(4, 1, 8, 8), torch.arange(4)
    with torch.inference_mode():  # (a forward there is no training forward: the armed hook waits, tested below)
        isda.estimator.update(net.features(x), y)
    assert not isda.estimator.mean.is_inference() and int(isda.estimator.count.sum()) == 4
    isda(x, y, net)
    torch.nn.functional.cross_entropy(net(x), y).backward()
    assert int(isda.estimator.count.sum()) == 8


@pytest.mark.parametrize("no_grad", [torch.no_grad, torch.inference_mode])
def test_a_forward_without_gradients_in_between_leaves_the_hook_for_the_training_forward(no_grad):
    """A semi-supervised step arms ISDA on the labelled batch, then pseudo-labels an unlabelled batch of the same size
    with the model under torch.no_grad(), then trains: the no_grad forward fired the hook (its features were paired
    with the labelled batch's labels in the statistics) and the training forward went unaugmented, silently."""
    torch.manual_seed(0)
    net, isda = TinyNet(), ISDA(10)
    isda.set_progress(1.0)
    xl, yl, xu = torch.rand(6, 1, 8, 8), torch.arange(6) % 3, torch.rand(6, 1, 8, 8)
    isda(xl, yl, net)
    with no_grad():
        pseudo = net(xu)
    assert isda.estimator.count is None  # the pseudo-labelling forward was passed over: no statistics yet
    with torch.no_grad():
        assert torch.equal(pseudo, net.fc(features_of(net, xu)))  # and not augmented
        feats = features_of(net, xl)
        plain = net.fc(feats)
    augmented = net(xl)  # the training forward
    assert torch.equal(isda.estimator.mean, pooled(feats, yl, 10)[0])  # the labelled batch's own features
    assert not torch.allclose(augmented, plain)


class Checkpointed(nn.Module):
    """TinyNet whose whole forward, classifier included, is under activation checkpointing."""

    def __init__(self, use_reentrant: bool):
        super().__init__()
        self.net, self.use_reentrant = TinyNet(), use_reentrant

    def forward(self, x):
        return torch.utils.checkpoint.checkpoint(self.net, x, use_reentrant=self.use_reentrant)


@pytest.mark.parametrize("covariance", ["full", "diagonal"])
def test_a_classifier_under_activation_checkpointing_is_augmented_once(batch, covariance):
    """The backward recomputes the checkpointed forward, where the one-shot hook no longer runs: the correction's
    saved tensors were expected again there (torch's "CheckpointError: A different number of tensors was saved"; on
    torch 2.4 to 2.7, which cannot tell a checkpoint's hooks, until 2026-12-05)."""
    x, y = batch
    runs = []
    for make in (TinyNet, lambda: Checkpointed(use_reentrant=False)):
        torch.manual_seed(0)
        model = make()
        net = getattr(model, "net", model)
        isda = ISDA(10, lambda0=5.0, covariance=covariance)
        isda.set_progress(1.0)
        for _ in range(2):
            isda(x, y, model)
            logits = model(x)
            F.cross_entropy(logits, y).backward()
        grads = {n: p.grad for n, p in net.named_parameters()}
        runs.append((logits, grads, isda.estimator.count, isda.stats))
    (plain, plain_grads, plain_count, plain_stats), (ckpt, ckpt_grads, ckpt_count, ckpt_stats) = runs
    torch.testing.assert_close(ckpt, plain)
    torch.testing.assert_close(ckpt_grads, plain_grads)
    assert torch.equal(ckpt_count, plain_count) and ckpt_count.sum() == 2 * len(y)  # one update per forward
    assert ckpt_stats == plain_stats == {"seen": 24, "transformed": 24, "rejected": 0}


def test_the_drop_in_augments_where_saved_tensor_hooks_are_disabled(batch):
    """Under a torch.func transform no saved-tensor hooks can be set (torch's RuntimeError naming the transform):
    torch 2.4 to 2.7, which cannot tell a checkpoint's, set ISDA's own around the correction whenever they can."""
    x, y = batch
    runs = []
    for disabled in (False, True):
        torch.manual_seed(0)
        model, isda = TinyNet(), ISDA(10, lambda0=5.0)
        isda.set_progress(1.0)
        with (torch.autograd.graph.disable_saved_tensors_hooks("no hooks under this transform") if disabled
              else contextlib.nullcontext()):
            isda(x, y, model)
            logits = model(x)
            F.cross_entropy(logits, y).backward()
        runs.append((logits, model.fc.weight.grad))
    torch.testing.assert_close(runs[1], runs[0])
    with torch.no_grad():
        assert not torch.allclose(runs[1][0], model.fc(features_of(model, x)))  # augmented


@pytest.mark.parametrize("checkpointed", [False, True])
def test_a_covariance_updated_before_the_backward_is_refused_as_without_checkpointing(batch, checkpointed):
    """With covariance='full' the correction saves the covariance itself, which a second augmented forward updates in
    place before the first one's backward: autograd refuses that, but not for a tensor its saved-tensor hooks keep,
    so under a checkpoint the backward used the newer covariance, silently (torch 2.8 and later, until 2026-12-05)."""
    x, y = batch
    torch.manual_seed(0)
    model = Checkpointed(use_reentrant=False) if checkpointed else TinyNet()
    isda = ISDA(10, lambda0=5.0)
    isda.set_progress(1.0)
    losses = []
    for _ in range(2):
        isda(x, y, model)
        losses.append(F.cross_entropy(model(x), y))
    ours = r"ISDA's correction saved for the backward was modified in place since .* Call backward\(\) before"
    with pytest.raises(RuntimeError, match=ours if checkpointed else rf"modified by an inplace operation|{ours}"):
        sum(losses).backward()


def test_a_classifier_under_reentrant_checkpointing_is_refused(batch):
    """use_reentrant=True runs the forward without gradients and again in the backward: the hook fired there, so the
    loss was plain cross-entropy and its gradients those of the augmented logits, with no error."""
    x, y = batch
    model, isda = Checkpointed(use_reentrant=True), ISDA(10)
    isda.set_progress(1.0)
    isda(x, y, model)
    loss = F.cross_entropy(model(x.requires_grad_()), y)
    with pytest.raises(RuntimeError, match=r"ISDA's augmentation of the layer 'net.fc' .* would be applied in the "
                                           r"backward pass: .*use_reentrant=True.* Pass use_reentrant=False, or keep "
                                           r"the classifier out of the checkpointed region"):
        loss.backward()
    assert isda.estimator.count is None and not model.net.fc._forward_hooks  # no statistics, no hook left


def test_a_forward_hook_of_the_users_on_the_classifier_still_sees_the_plain_logits(batch, net):
    """ISDA's hook runs after the classifier's own forward hooks, as before 1d2af27; only on a layer fully_shard'ed
    itself does it go first (FSDP's last hook reshards the weight). Gone first always, a hook logging the training
    logits (accuracy, say) logged the augmented ones."""
    x, y = batch
    logged = []
    net.fc.register_forward_hook(lambda module, args, out: logged.append(out.detach().clone()))
    isda = ISDA(10, lambda0=5.0)
    isda.set_progress(1.0)
    isda(x, y, net)
    augmented = net(x)
    with torch.no_grad():
        plain = net.fc(features_of(net, x))
    assert torch.equal(logged[0], plain) and not torch.allclose(augmented, plain)


def test_a_training_call_before_any_schedule_warns_once(batch, net):
    # without set_epoch ISDA ran at lam = 0 for the whole run, loss and accuracy exactly the baseline's, silently
    x, y = batch
    isda = ISDA(10)
    with pytest.warns(UserWarning, match=r"ISDA's strength lam = lambda0 \* progress is 0 until you call set_epoch") as w:
        isda(x, y, net)
        net(x)
    assert w[0].filename == __file__  # points at the call
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        isda(x, y, net)  # once per instance
        net(x)
        scheduled = ISDA(10)
        scheduled.set_epoch(0, 10)  # lam 0 in the first epoch, as the official schedule: no warning
        scheduled(x, y, net)
        net(x)
    loss = ISDALoss(10)
    with pytest.warns(UserWarning, match=r"ISDALoss's strength"):
        loss(torch.randn(len(y), 32), net.fc, y)


def test_a_loaded_state_that_never_left_zero_still_warns():
    # any load_state_dict marked the schedule as set: a resumed run that never called set_epoch stayed silent at 0
    x, y, net = torch.rand(6, 1, 8, 8), torch.randint(0, 10, (6,)), TinyNet()
    isda = ISDA(10)
    isda.load_state_dict(ISDA(10).state_dict())
    with pytest.warns(UserWarning, match="strength lam = lambda0"):
        isda(x, y, net)
        net(x)
    ramped = ISDA(10)
    ramped.set_epoch(3, 10)
    resumed = ISDA(10)
    resumed.load_state_dict(ramped.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed(x, y, net)
        net(x)


def test_set_epoch_takes_the_last_epoch_number_itself():
    """``epoch`` in [0, total_epochs]: epoch == total_epochs is the full strength, one more is refused."""
    isda = ISDA(10, lambda0=0.5, sync_stats=False)
    isda.set_epoch(4, 4)
    assert isda.lam == 0.5
    with pytest.raises(ValueError, match=r"epoch must be an int in \[0, total_epochs=4\]"):
        isda.set_epoch(5, 4)


def test_isda_repr_shows_every_setting_and_isdaloss_refuses_a_list_as_a_type_error():
    """API audit 126: ISDA's one-line repr left out feature_dim and sync_stats (its estimator, a submodule, is not
    printed); ISDALoss refused features=[...] with a plain ValueError where y=[...] is a TypeError."""
    from latent_transforms.validation import WrongTypeError

    isda = ISDA(10, 0.25, covariance="diagonal", layer="fc", feature_dim=32, sync_stats=False, p=0.5)
    assert repr(isda) == ("ISDA(num_classes=10, lambda0=0.25, covariance='diagonal', progress=0.0, layer='fc', "
                          "feature_dim=32, sync_stats=False, p=0.5)")
    with pytest.raises(WrongTypeError, match=r"features must be a \(N, 3\) float tensor"):
        ISDALoss(10)([[0.0] * 3], nn.Linear(3, 10), torch.zeros(1, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"features must be a \(N, 3\) float tensor") as e:
        ISDALoss(10)(torch.zeros(1, 4), nn.Linear(3, 10), torch.zeros(1, dtype=torch.int64))
    assert not isinstance(e.value, TypeError)


@pytest.mark.parametrize("make", [ISDA, ISDALoss])
def test_statistics_shared_over_a_process_group_print_as_such(make):
    """Mutation round 32 (audit 238): ISDALoss's one-line repr (audit 235) shares ISDA's estimator part; given a
    process group, both print it as one, not as ``sync_stats=True``."""
    import torch.distributed as dist

    group = dist.ProcessGroup(0, 1)  # a group of this rank alone, no process group initialised (torch 2.4 has no
    # (store, rank, size) constructor: it takes Options too)
    assert "sync_stats=<process group>" in repr(make(10, sync_stats=group))  # was sync_stats=True, as without one


def test_isdaloss_and_feature_covariance_print_their_settings_and_a_shallow_copy_shares_the_statistics():
    """Coverage audit 188: neither repr nor FeatureCovariance.__copy__ ran in any test. API audit 235: ISDALoss printed
    four lines, its estimator as a submodule tree (and no comma before it), where ISDA prints one."""
    loss = ISDALoss(10, 0.5, covariance="diagonal", feature_dim=3, sync_stats=False)
    assert repr(loss) == ("ISDALoss(num_classes=10, lambda0=0.5, covariance='diagonal', progress=0.0, feature_dim=3, "
                          "sync_stats=False)")
    stats = FeatureCovariance(4, 3, covariance="diagonal", sync_stats=False)
    stats.update(torch.rand(4, 3), torch.arange(4))
    shallow, deep = copy.copy(stats), copy.deepcopy(stats)
    assert type(shallow) is FeatureCovariance and shallow.count is stats.count and shallow.sync_stats is False
    assert deep.count is not stats.count and torch.equal(deep.count, stats.count)


def test_features_on_another_device_than_the_statistics_are_told_to_move_the_module():
    """Coverage audit 188: never reached (one device here); the meta device stands for a second one."""
    stats = FeatureCovariance(4, 3, sync_stats=False)
    stats.update(torch.rand(4, 3), torch.arange(4))
    with pytest.raises(ValueError, match=r"^the class statistics are on cpu but the features on meta; move the "
                                         r"ISDA/FeatureCovariance module with .to\('meta'\)$"):
        stats.update(torch.rand(4, 3, device="meta"), torch.arange(4, device="meta"), check_y=False)


def test_isdaloss_passes_on_an_error_of_its_classifier_that_is_not_a_dtype_clash():
    class Failing(nn.Linear):
        def forward(self, x):
            raise RuntimeError("the layer's own failure")

    with pytest.raises(RuntimeError, match=r"^the layer's own failure$"):
        ISDALoss(10)(torch.zeros(2, 3), Failing(3, 10), torch.zeros(2, dtype=torch.int64))


def test_an_empty_batch_gives_a_zero_loss_connected_to_the_graph_and_leaves_the_statistics(batch, net):
    """A DDP rank's empty batch must still join the statistics' gather (tests/test_isda_ddp.py): ISDALoss refused
    it ("features must be a non-empty ..."), ISDA too ("x is an empty batch"), so the other ranks waited in the
    gather until the process group's timeout. The loss of no rows is 0, not F.cross_entropy's NaN mean."""
    x, y = batch
    loss, hook = ISDALoss(10, lambda0=1.0), ISDA(10, lambda0=1.0)
    for t in (loss, hook):
        t.set_progress(1.0)
    net2 = copy.deepcopy(net)
    loss(net2.features(x), net2.fc, y)
    hook(x, y, net)
    net(x)
    before = [copy.deepcopy(dict(t.estimator.named_buffers())) for t in (loss, hook)]
    for mode in (True, False):
        out = loss.train(mode)(net2.features(x[:0]), net2.fc, y[:0])
        assert out.item() == 0 and out.grad_fn is not None
        net2.zero_grad()
        out.backward()  # every parameter gets a gradient (zeros): DDP's all-reduce has every bucket
        assert all(p.grad is not None and not p.grad.any() for p in net2.parameters())
    x0, y0 = hook(x[:0], y[:0], net)
    assert x0.shape == (0, 1, 8, 8) and y0.shape == (0,)
    assert net(x[:0]).shape == (0, 10) and len(net.fc._forward_hooks) == 0  # fired
    assert hook.stats == {"seen": len(y), "transformed": len(y), "rejected": 0}
    for t, kept in zip((loss, hook), before):
        assert all(torch.equal(b, kept[n]) for n, b in t.estimator.named_buffers())
    with pytest.raises(ValueError, match=r"x has an empty dimension besides the batch's \(shape \(0, 1, 0, 8\)\)"):
        hook(x[:0, :, :0], y[:0], net)  # ISDA takes any (B, ...) tensor, not only images


def test_isda_logits_take_a_0_dim_cpu_lam_with_logits_elsewhere_but_no_other_lam_there(monkeypatch):
    """A 0-d CPU lam is a number to torch, on any device (tests/test_device.py runs it on a GPU); a 0-d lam on
    another device, or a per-sample CPU lam, is refused by name as every other tensor."""
    monkeypatch.setattr(torch, "autocast", lambda *args, **kwargs: contextlib.nullcontext())  # none on meta
    g = torch.Generator().manual_seed(0)
    meta = [t.to("meta") for t in (torch.randn(4, 3, generator=g), torch.randn(3, 2, generator=g),
                                   torch.tensor([0, 1, 2, 0]), torch.rand(3, 2, generator=g))]
    out = isda_logits(*meta, torch.tensor(0.5), check_y=False)  # values on meta cannot be read: check_y=False
    assert out.device.type == "meta" and out.shape == (4, 3)
    # a per-sample lam's values unread too (mutation round, audit 398: read whenever its shape was right)
    assert isda_logits(*meta, torch.full((4,), 0.5, device="meta"), check_y=False).shape == (4, 3)
    with pytest.raises(ValueError, match=r"^lam is on cpu but logits are on meta; move it with .to\('meta'\)"):
        isda_logits(*meta, torch.full((4,), 0.5), check_y=False)
    cpu = [torch.zeros(4, 3), torch.zeros(3, 2), torch.tensor([0, 1, 2, 0]), torch.zeros(3, 2)]
    with pytest.raises(ValueError, match=r"^lam is on meta but logits are on cpu; move it with .to\('cpu'\)"):
        isda_logits(*cpu, torch.tensor(0.5, device="meta"))


# -- class-incremental learning: a classifier grown for new classes --------------------------------------------------
def grown(fc: nn.Linear, classes: int) -> nn.Linear:
    """``fc`` with outputs added for new classes, those of the old kept (as continual-learning libraries grow heads)."""
    new = nn.Linear(fc.in_features, classes)
    with torch.no_grad():
        new.weight[: fc.out_features] = fc.weight
        new.bias[: fc.out_features] = fc.bias
    return new


@pytest.mark.parametrize("covariance", ["full", "diagonal"])
def test_classes_not_seen_yet_leave_the_loss_finite(batch, net, covariance):
    """Continual-learning audit 199 (docs/methods/isda.md): a fixed 10-way head of which 4 classes are trained; the
    others' statistics stay empty (count 0) and never enter a loss, at the ImageNet strength too."""
    x, y = batch
    isda = ISDA(10, 7.5, covariance=covariance)
    isda.set_progress(1.0)
    for labels in (y[:2] % 2, y % 4):  # one sample per class first
        isda(x[: len(labels)], labels, net)
        F.cross_entropy(net(x[: len(labels)]), labels).backward()
        assert all(torch.isfinite(p.grad).all() for p in net.parameters())
    assert (isda.estimator.count[4:] == 0).all() and torch.isfinite(isda.estimator.cov).all()


@pytest.mark.parametrize("covariance", ["full", "diagonal"])
def test_grow_adds_empty_classes_and_keeps_the_statistics_seen(covariance):
    """Continual-learning audit 199: statistics had a fixed number of classes; a head grown for new classes could only
    get a new ISDA, losing what was gathered on the classes seen. grow(n) adds the new ones, empty."""
    g = torch.Generator().manual_seed(0)
    a, y = torch.randn(40, 3, generator=g, dtype=torch.float64), torch.arange(40) % 4
    est = FeatureCovariance(2, covariance=covariance).double()
    est.grow(2)  # as many: nothing changes (nor sizes the estimator)
    est.update(a[y < 2], y[y < 2])
    kept = {n: b.clone() for n, b in est.named_buffers()}
    est.grow(4)
    assert est.num_classes == 4 and est.count.tolist() == [10, 10, 0, 0]
    for n, b in est.named_buffers():
        assert b.dtype == kept[n].dtype and torch.equal(b[:2], kept[n]) and not b[2:].any()
    est.update(a[y >= 1], y[y >= 1])  # a replayed old class beside the new ones
    mean, cov, count = pooled(torch.cat([a[y < 2], a[y >= 1]]), torch.cat([y[y < 2], y[y >= 1]]), 4)
    assert torch.equal(est.count, count) and torch.allclose(est.mean, mean)
    assert torch.allclose(est.cov, cov if covariance == "full" else torch.diagonal(cov, dim1=1, dim2=2))
    with pytest.raises(ValueError, match=r"grow\(num_classes\) adds classes: got 3, fewer than the 4"):
        est.grow(3)
    lazy = FeatureCovariance(2)
    with torch.inference_mode():
        lazy.grow(5)  # not sized yet: sized with 5 classes at its first update
    lazy.update(a, y)
    assert lazy.count.tolist() == [10, 10, 10, 10, 0]


@STRENGTH_ZERO_EXPECTED
def test_a_classifier_grown_for_new_classes_is_told_to_grow_the_statistics(batch, net):
    """Continual-learning audit 199: with the head grown from 4 to 10 outputs, ISDA(4) refused the new task's labels
    as "y has class index 9, out of range for num_classes=4", and ISDALoss said "fc has 10 outputs but num_classes=4",
    neither naming the cause or a way to keep the statistics; after grow(10) both train on, with the statistics of
    every feature seen."""
    x, y = batch
    old = nn.Linear(32, 4)
    net.fc = old
    isda, loss = ISDA(4, covariance="diagonal"), ISDALoss(4, covariance="diagonal")
    for t in (isda, loss):
        t.set_progress(1.0)
    first = y % 4
    isda(x, first, net)
    net(x)
    loss(net.features(x), net.fc, first)
    net.fc = grown(old, 10)
    grow = r"10 outputs but num_classes=4.*class-incremental learning\)\? call \.grow\(10\) on this {} first"
    with pytest.raises(ValueError, match=grow.format("ISDA")):
        isda(x, y, net)  # labels of the new classes
    with pytest.raises(ValueError, match=grow.format("ISDA")):
        isda(x, first, net)  # a replayed batch of old classes only
    with pytest.raises(ValueError, match=grow.format("ISDALoss")):
        loss(net.features(x), net.fc, y)
    with pytest.raises(ValueError, match="NaN") as info:  # not a label error: named as it is, not as the grown head
        isda(x * float("nan"), y, net)
    assert "grow" not in str(info.value)
    isda.grow(10)
    loss.grow(10)
    assert isda.num_classes == loss.num_classes == 10
    isda(x, y, net)
    hooked = net(x)
    features = net.features(x)
    assert torch.allclose(loss(features, net.fc, y), F.cross_entropy(hooked, y))
    mean, cov, count = pooled(torch.cat([features, features]).detach(), torch.cat([first, y]), 10)
    for t in (isda, loss):
        assert torch.equal(t.estimator.count, count) and torch.allclose(t.estimator.mean, mean, atol=1e-6)
        assert torch.allclose(t.estimator.cov, torch.diagonal(cov, dim1=1, dim2=2), atol=1e-6)


@pytest.mark.parametrize("make", [ISDA, ISDALoss])
def test_num_classes_is_the_statistics_and_is_not_set_around_them(make):
    """Continual-learning audit 199: ``isda.num_classes = 10`` for a grown head passed, leaving the statistics at 4
    classes: labels 4 went to the rows ignored as non-finite, unrecorded, then the hook raised "cov must be (C, A, A)
    ... = (10, 32, 32) ..., got (4, 32, 32)"; a label above 4 raised torch's "index 9 is out of bounds" (on CUDA, a
    device-side assert)."""
    t = make(4)
    t.num_classes = 4  # as it is: nothing to refuse
    with pytest.raises(AttributeError, match=r"num_classes is fixed at construction \(it sizes the class statistics, "
                                             r"now 4\): \.grow\(10\) adds classes"):
        t.num_classes = 10
    assert t.num_classes == t.estimator.num_classes == 4


@STRENGTH_ZERO_EXPECTED
def test_a_state_of_other_classes_is_refused_naming_them_and_grow(batch, net):
    """Continual-learning audit 199: loading the statistics of the first task's 4 classes into ISDA(10) gave torch's
    three "size mismatch for estimator.mean/cov/count" lines, naming neither the classes nor grow()."""
    x, y = batch
    net.fc = nn.Linear(32, 4)
    four = ISDA(4, covariance="diagonal")
    four(x, y % 4, net)
    net(x)
    saved = four.state_dict()
    for ten in (ISDA(10), ISDA(10, feature_dim=32)):  # lazily sized, and sized
        with pytest.raises(RuntimeError, match=r"estimator\.mean holds the statistics of 4 classes, this estimator "
                                               r"has 10: load them into .* of 4 classes, then call its grow\(10\)"):
            ten.load_state_dict(saved)
    with pytest.raises(RuntimeError, match=r"statistics of 10 classes, this estimator has 4: build it with "
                                           r"num_classes=10$"):
        FeatureCovariance(4).load_state_dict(FeatureCovariance(10, feature_dim=2).state_dict())
    resumed = ISDA(4, covariance="diagonal")
    resumed.load_state_dict(saved)
    resumed.grow(10)
    assert resumed.estimator.count.tolist() == four.estimator.count.tolist() + [0] * 6
    ISDA(10, covariance="diagonal").load_state_dict(resumed.state_dict())


@STRENGTH_ZERO_EXPECTED
def test_a_state_of_another_feature_size_or_covariance_form_is_refused_whole_by_name(batch, net):
    """Checkpoint audit 287: statistics of another feature size or covariance form got torch's "size mismatch" lines,
    after the schedule and the sample counts were loaded: the ISDA that refused them went on with the other run's
    lam and counts over its own statistics."""
    x, y = batch
    saved = ISDA(10)
    saved.set_epoch(5, 10)
    saved(x, y, net)
    net(x)
    state = saved.state_dict()  # 32 features, full covariance, 12 samples, lam 0.25
    sized, flat = ISDA(10), nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    sized(x[:2], y[:2], flat)
    flat(x[:2])  # sized by the forward, 64 features
    for target, match in (
            (ISDA(10, feature_dim=16), r"estimator\.mean holds statistics of 32 features, this estimator's are of 16 "
                                       r"\(of another model, or feature_dim=\.\.\.\): build it with feature_dim=32"),
            (sized, r"estimator\.mean holds statistics of 32 features, this estimator's are of 64"),
            (ISDA(10, covariance="diagonal"), r"estimator\.cov holds a full covariance, this estimator's is "
                                              r"'diagonal': build it with covariance='full'$")):
        before = {k: v.clone() for k, v in target.state_dict().items()}
        for strict in (True, False):
            with pytest.raises(RuntimeError, match=match):
                target.load_state_dict(state, strict=strict)
        assert all(torch.equal(v, target.state_dict()[k]) for k, v in before.items())  # nothing loaded
        assert target.lam == 0
    for other in (ISDA(12), ISDALoss(12)):  # other classes: refused before the schedule is loaded too
        with pytest.raises(RuntimeError, match=r"statistics of 10 classes, this estimator has 12"):
            other.load_state_dict(state)
        assert other.progress == 0 and other.estimator.mean is None
    held = nn.ModuleDict({"isda": ISDA(10, feature_dim=16)})  # inside a model: the estimator's keys under its prefix
    with pytest.raises(RuntimeError, match=r"isda\.estimator\.mean holds statistics of 32 features"):
        held.load_state_dict({f"isda.{k}": v for k, v in state.items()})
    assert held.isda.progress == 0 and held.isda.estimator.count.sum() == 0
    diagonal = FeatureCovariance(10, feature_dim=32, covariance="diagonal")
    for key in ("mean", "cov"):  # (D,) where (K, D) belongs: torch's size mismatch, not a feature size or form named
        with pytest.raises(RuntimeError, match=rf"\tsize mismatch for {key}: copying a param with shape "
                                               rf"torch\.Size\(\[32\]\)"):
            copy.deepcopy(diagonal).load_state_dict({**diagonal.state_dict(), key: diagonal.state_dict()[key][0]})
    with pytest.raises(RuntimeError, match=r"^Error\(s\) in loading state_dict for FeatureCovariance:\n\tcov holds a "
                                           r"diagonal covariance, this estimator's is 'full'"):
        FeatureCovariance(10).load_state_dict(diagonal.state_dict())


def test_statistics_holding_nan_or_inf_are_refused_when_loaded():
    """Audit 241: update() keeps the statistics finite, but a state holding a NaN (a damaged file, statistics written
    by hand) loaded without a word, and every augmented logit and loss was NaN from then on."""
    fc = FeatureCovariance(3)
    fc.update(torch.randn(8, 5), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))
    for key, bad in (("cov", float("nan")), ("mean", float("inf"))):
        state = {k: v.clone() for k, v in fc.state_dict().items()}
        state[key][1, 0] = bad
        for target in (FeatureCovariance(3), fc, ISDALoss(3)):  # unsized, sized, and under an ISDALoss
            prefix = "estimator." if isinstance(target, ISDALoss) else ""
            before = {k: v.clone() for k, v in target.state_dict().items()}
            with pytest.raises(RuntimeError, match=rf"{prefix}{key} holds NaN or inf .*: every augmented logit and "
                                                   rf"loss would be NaN"):
                target.load_state_dict({prefix + k: v for k, v in state.items()}, strict=False)
            assert all(torch.equal(v, target.state_dict()[k]) for k, v in before.items())  # nothing loaded


@pytest.mark.parametrize("make", [lambda: ISDA(3, lambda0=0.5), lambda: ISDALoss(3, lambda0=0.5)])
def test_a_schedule_progress_out_of_range_is_refused_before_anything_is_loaded(make):
    """Audit 445: a state whose schedule_progress is 2.0 or NaN (a damaged file) raised set_progress's error only after
    loading it into the buffer: the module then held progress 0.1 for lam but 2.0 in its buffer, which its next
    state_dict() saved, and the error named neither the key nor the file."""
    saved = make()
    saved.estimator.update(torch.randn(8, 5), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))
    target = make()
    target.set_progress(0.1)
    for bad in (2.0, -0.5, float("nan")):
        state = {**saved.state_dict(), "schedule_progress": torch.tensor(bad, dtype=torch.float64)}
        with pytest.raises(ValueError, match=r"^schedule_progress must be a finite number in \[0, 1\], got .*: "
                                             r"nothing of this ISDA(Loss)? was loaded"):
            target.load_state_dict(state)
        assert target.progress == float(target.schedule_progress) == 0.1 and target.estimator.mean is None
    held = nn.ModuleDict({"isda": make()})  # named under its prefix
    with pytest.raises(ValueError, match=r"^isda\.schedule_progress must be"):
        held.load_state_dict({f"isda.{k}": v for k, v in state.items()})


def test_sample_counts_negative_fractional_or_of_another_shape_are_refused_whole():
    """Audit 445: counts are what the merge weights m / (n + m) of every later update come from; a damaged state's
    negative counts loaded without a word (a weight above 1: statistics of nothing), and counts of another shape got
    torch's size mismatch after the mean and covariance had been loaded over the old counts."""
    fc = FeatureCovariance(3)
    fc.update(torch.randn(8, 5), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))
    count = fc.state_dict()["count"]
    inf, past_int64 = count.double(), count.double()  # Audit 446: both were loaded as -2**63, a negative count
    inf[0], past_int64[1] = float("inf"), 2.0 ** 63
    for bad, match in ((-count, "holds negative or fractional"), (count.double() + 0.5, "holds negative or fractional"),
                       (inf, "holds negative or fractional sample counts, or ones past int64's range"),
                       (past_int64, "holds negative or fractional"),
                       (count[:2], r"has shape \(2,\), the statistics' 3 classes need \(3,\)")):
        for target in (FeatureCovariance(3), fc, ISDALoss(3)):  # unsized, sized, and under an ISDALoss
            prefix = "estimator." if isinstance(target, ISDALoss) else ""
            before = {k: v.clone() for k, v in target.state_dict().items()}
            with pytest.raises(RuntimeError, match=rf"{prefix}count {match}"):
                target.load_state_dict({prefix + k: v for k, v in {**fc.state_dict(), "count": bad}.items()},
                                       strict=False)
            assert all(torch.equal(v, target.state_dict()[k]) for k, v in before.items())  # nothing loaded
    FeatureCovariance(3).load_state_dict({**fc.state_dict(), "count": count.double()})  # whole float counts: as before
    FeatureCovariance(3).load_state_dict({**fc.state_dict(), "count": count.double() + 2.0 ** 62})  # within int64


def test_a_state_on_the_meta_device_is_loaded_without_reading_its_values():
    """Mutation round 34: the NaN/inf check at load reads the statistics' values; a deferred initialisation's state on
    the meta device has none to read (bool() of it raised), and loads as before, with assign=True."""
    fc = FeatureCovariance(3)
    fc.update(torch.randn(8, 5), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))
    meta = {k: v.to("meta") if v.is_floating_point() else v for k, v in fc.state_dict().items()}
    target = FeatureCovariance(3)
    target.load_state_dict(meta, assign=True)
    assert target.mean.is_meta and target.cov.is_meta and target.mean.shape == (3, 5)


def test_a_hook_on_one_head_of_several_names_them(batch):
    """Continual-learning audit 199: a model with a head per task (task-incremental learning) runs one of them; ISDA
    hooked the last one, which never ran, and warned "no training forward of the model ran after it" (one had)."""
    x, y = batch

    class PerTask(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.heads, self.task = TinyNet().features, nn.ModuleList(nn.Linear(32, 2) for _ in range(3)), 0

        def forward(self, x):
            return self.heads[self.task](self.body(x))

    model, isda = PerTask(), ISDA(2, 0.5)
    isda.set_progress(1.0)
    isda(x, y % 2, model)
    model(x)
    with pytest.warns(UserWarning, match=r"'heads\.2' .* never applied \(no training forward ran through that layer "
                                         r"after it\).* other nn\.Linear layers of 2 outputs \(heads\.0, heads\.1\): a "
                                         r"head per task\? pass ISDA\(\.\.\., layer='\.\.\.'\)"):
        isda(x, y % 2, model)
    first = ISDA(2, 0.5, layer="heads.0")
    first.set_progress(1.0)
    first(x, y % 2, model)
    model(x)
    assert first.stats["transformed"] == len(y)


def test_a_head_per_task_is_refused_naming_the_head_that_trains(batch):
    """Audit 259: with model.eval() and the current task's head in train mode (BatchNorm's statistics kept), ISDA
    naming another head, or finding the last one by default, is refused as a distillation teacher's is, the message
    naming either case and the head that trains (it spoke of a frozen teacher only); the head that trains is augmented."""
    x, y = batch
    model = nn.ModuleDict({"body": TinyNet().features, "heads": nn.ModuleList(nn.Linear(32, 2) for _ in range(3))})
    model.eval()
    model["heads"][1].train()
    for layer, found in (("heads.0", "heads.0"), (None, "heads.2")):
        with pytest.raises(ValueError, match=rf"^ISDA's layer '{found}' .*is in eval mode while ModuleDict is in eval "
                                             r"mode with a classifier in train mode, .*: a frozen teacher's the model "
                                             r"holds \(distillation\), or another task's head \(a head per task\)\? "
                                             r"pass ISDA\(..., layer='heads.1'\)$"):
            ISDA(2, layer=layer)(x, y % 2, model)
    isda = ISDA(2, layer="heads.1")
    isda.set_progress(1.0)
    isda(x, y % 2, model)
    model["heads"][1](model["body"](x))
    assert isda.stats["transformed"] == len(y)


def test_a_grow_refused_for_memory_keeps_the_classes_and_statistics(monkeypatch):
    """Mutation round 23 (audit 204): a grow past the device's memory is refused, the estimator left as it was (its
    classes, statistics and update), not holding the new number of classes over the old statistics."""
    est = FeatureCovariance(2, feature_dim=3)
    est.update(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))
    kept = {n: b.clone() for n, b in est.named_buffers()}
    monkeypatch.setattr(feature_covariance, "device_memory", lambda device: 10**4)
    with pytest.raises(torch.OutOfMemoryError, match=r"full covariance for 1000 classes and 3 features"):
        est.grow(1000)
    assert est.num_classes == 2 and all(torch.equal(b, kept[n]) for n, b in est.named_buffers())
    est.update(torch.randn(2, 3), torch.tensor([1, 1]))
    assert est.count.tolist() == [2, 4]


def test_a_grow_whose_count_fails_to_allocate_puts_back_the_statistics_already_replaced(monkeypatch):
    """Mutation round 360: the means and covariances of the new size are assigned before the count is allocated; an
    allocation failure there puts all three back (the classes restored alone left 5-class statistics with a 2-class
    count)."""
    est = FeatureCovariance(2, feature_dim=3)
    est.update(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))
    kept = {n: b.clone() for n, b in est.named_buffers()}
    zeros = torch.zeros

    def count_fails(*args, dtype=None, **kwargs):
        if dtype == torch.int64:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 40 bytes")
        return zeros(*args, dtype=dtype, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(feature_covariance.torch, "zeros", count_fails)
        with pytest.raises(torch.OutOfMemoryError, match=r"Out of memory on cpu: .*40 bytes"):
            est.grow(5)
    assert est.num_classes == 2 and all(torch.equal(b, kept[n]) for n, b in est.named_buffers())


def test_grow_keeps_the_statistics_device():
    """Mutation round 23 (audit 204): the new classes' statistics are made on the device of those kept (meta here,
    standing for CUDA), not on the CPU where the estimator was built; grow(C) changes nothing, not even the tensors."""
    est = FeatureCovariance(2, feature_dim=3).to("meta")
    before = est.mean
    est.grow(2)
    assert est.mean is before
    est.grow(4)
    assert {b.device.type for b in est.buffers()} == {"meta"} and est.mean.shape == (4, 3)


@pytest.mark.parametrize("make", [ISDA, ISDALoss])
def test_fewer_num_classes_is_refused_too(make):
    """Mutation round 23 (audit 204): ``t.num_classes = 2`` on statistics of 4 classes was refused only because a
    larger count is: fewer is refused alike, the statistics kept."""
    t = make(4)
    with pytest.raises(AttributeError, match=r"num_classes is fixed at construction \(it sizes the class statistics, "
                                             r"now 4\): build a new IS\w+\(\.\.\., num_classes=2\)$"):
        t.num_classes = 2  # not grow(2), which refuses fewer classes
    assert t.num_classes == t.estimator.num_classes == 4


@STRENGTH_ZERO_EXPECTED
def test_a_classifier_of_fewer_outputs_is_not_named_as_grown(batch, net):
    """Mutation round 23 (audit 204): the grown-classifier hint (grow(n)) is for a classifier of more
    outputs than the statistics' classes; one of fewer, or the official argument order with more outputs than
    features, gets its own hint only."""
    x, y = batch
    with pytest.raises(ValueError, match=r"10 outputs but num_classes=12: either num_classes is miscounted "
                                         r"\(num_classes=10 for this classifier\) or 'fc' is not the classifier "
                                         r"\(pass layer='\.\.\.' naming it\)$"):  # audit 275: both causes named
        ISDA(12)(x, y, net)
    with pytest.raises(ValueError, match=r"^fc has 10 outputs but num_classes=12: either num_classes is miscounted "
                                         r"\(num_classes=10 for this classifier\) or fc is not the classifier \(pass "
                                         r"its nn.Linear\)$"):
        ISDALoss(12)(net.features(x), net.fc, y)
    fc = nn.Linear(8, 10)  # ISDALoss(feature_num=8, class_num=10), the official order
    for t, call in ((ISDALoss(8, 10), lambda t: t(torch.randn(len(y), 8), fc, y)),
                    (ISDA(8, 10), lambda t: t(x, y, nn.Sequential(net.features, nn.Linear(32, 8), fc)))):
        with pytest.raises(ValueError, match=r"official ISDALoss\(feature_num, class_num\)") as info:
            call(t)
        assert "grow" not in str(info.value)


@STRENGTH_ZERO_EXPECTED
def test_labels_out_of_range_are_named_when_no_classifier_is_grown(batch, net):
    """Mutation round 23 (audit 204): the label error is replaced by the grown-classifier one only for a classifier of
    more outputs than the statistics' classes; without an nn.Linear, for a model that is not an nn.Module, for one of
    as many outputs (whatever its input width) or of fewer, the labels are named."""
    x, y = batch
    labels = r"y has class index 9, out of range for num_classes=(4|8) \(.*, then x\[keep\] and y\[keep\]$"

    class NoLinear(nn.Module):
        def forward(self, x):
            return x.flatten(1)

    sized = ISDA(4, feature_dim=5)  # statistics of 5 features: the 32 -> 4 head's width differs
    sized.estimator.update(torch.randn(4, 5), torch.arange(4))
    net.fc = nn.Linear(32, 4)
    for t, model in ((ISDA(4), NoLinear()), (ISDA(4), lambda x: net(x)), (sized, net), (ISDA(8), net)):
        with pytest.raises(ValueError, match=labels):
            t(x, y, model)


def test_the_never_fired_warning_lists_only_heads_being_trained(batch):
    """Mutation round 23 (audit 204): the heads named beside the one hooked are those that may run in training: of as
    many outputs, in train() mode and with a weight that trains (a frozen or an eval() head of an old task is not)."""
    x, y = batch

    class PerTask(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = TinyNet().features
            self.heads = nn.ModuleList([nn.Linear(32, 2), nn.Linear(32, 2), nn.Linear(32, 3), nn.Linear(32, 2),
                                        nn.Linear(32, 2)])

        def forward(self, x):
            return self.heads[3](self.body(x))

    model, isda = PerTask(), ISDA(2, 0.5)
    model.heads[0].weight.requires_grad_(False)
    model.heads[1].eval()
    isda.set_progress(1.0)
    isda(x, y % 2, model)
    model(x)
    with pytest.warns(UserWarning, match=r"'heads\.4' .* never applied") as caught:
        isda(x, y % 2, model)
    text = next(str(w.message) for w in caught if "never applied" in str(w.message))
    assert "other nn.Linear layers of 2 outputs (heads.3): a head per task?" in text
    isda.disarm(model)


class MeanOverFrames(nn.Module):
    """A clip model (B, T, C, H, W) -> (B, K) whose head runs on each frame: its frames' mean logits (TSN's)."""

    def __init__(self, frame_model):
        super().__init__()
        self.frame_model = frame_model

    def forward(self, clips):
        return self.frame_model(clips.flatten(0, 1)).unflatten(0, clips.shape[:2]).mean(1)


def test_a_head_run_per_frame_is_told_to_arm_with_the_labels_per_frame_and_that_gives_the_clips_isda_logits():
    """A clip model whose final Linear sees each of T frames got "call isda(x, y, model) right before model(x) on the
    same batch", which the user had done (audit 223); armed with the labels repeated per frame, as the message now
    says, each clip's mean logits gain one ISDA term per label (docs/composition.md#video-clips)."""
    torch.manual_seed(0)
    clip_model, T = MeanOverFrames(TinyNet(channels=1)), 4
    clips, y = torch.rand(3, T, 1, 8, 8), torch.tensor([2, 5, 2])
    isda = ISDA(10)
    isda.set_epoch(1, 2)
    isda(clips, y, clip_model)
    with pytest.raises(ValueError, match=r"armed with 3 labels but the layer .* saw a batch of 12 features; .*; a head "
                                         r"run on each of a clip's 4 frames\? arm it with the labels repeated per "
                                         r"frame \(docs/composition.md#video-clips\)$"):
        clip_model(clips)
    with pytest.raises(ValueError, match=r"saw a batch of 5 features; call isda\(x, y, model\) right before model\(x\) "
                                         r"on the same batch$"):  # not a whole number of frames per label
        isda(clips, y, clip_model)
        clip_model.frame_model(torch.rand(5, 1, 8, 8))
    for _ in range(2):  # statistics first, then a term of the second call's
        frames, y_frames = isda(clips.flatten(0, 1), y.repeat_interleave(T), clip_model)
        augmented = clip_model(frames.unflatten(0, (3, T)))
    term = augmented - clip_model(clips)  # not armed: the plain logits
    assert torch.equal(frames.unflatten(0, (3, T)), clips) and torch.equal(y_frames, y.repeat_interleave(T))
    assert term.abs().max() > 0 and torch.allclose(term[0], term[2], atol=1e-6)  # one term per label


def test_a_hook_armed_with_an_empty_batch_is_told_the_mismatch_of_a_batch_of_rows():
    """Mutation round 29 (audit 224): armed with no labels (a DDP rank's empty batch arms the hook), a forward of rows
    raised ZeroDivisionError ("integer modulo by zero") in the clip hint's check, for the mismatch's ValueError."""
    torch.manual_seed(0)
    model, isda = TinyNet(channels=1), ISDA(10)
    isda.set_epoch(1, 2)
    isda(torch.rand(0, 1, 8, 8), torch.zeros(0, dtype=torch.long), model)
    with pytest.raises(ValueError, match=r"armed with 0 labels but the layer .* saw a batch of 2 features; call "
                                         r"isda\(x, y, model\) right before model\(x\) on the same batch$"):
        model(torch.rand(2, 1, 8, 8))
    isda(torch.rand(2, 1, 8, 8), torch.tensor([1, 2]), model)
    with pytest.raises(ValueError, match=r"armed with 2 labels but the layer .* saw a batch of 0 features; call "
                                         r"isda\(x, y, model\) right before model\(x\) on the same batch$"):
        model(torch.rand(0, 1, 8, 8))  # no clip's 0 frames either
