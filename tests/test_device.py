"""Every method on the device ``pytest --device`` names: cpu by default (CI runs this file as it is), and on a GPU
machine ``pytest --device cuda tests/test_device.py`` (``scripts/gpu_session.sh`` runs it first). The rest of the
suite runs on the CPU; these are the promises only another device puts to the test: outputs stay on the data's
device and no tensor crosses devices behind the user's back, generators on that device replay, the codecs keep their
exact float32 math under the caller's TF32 and autocast, a frozen Glow's fast path follows weights written after it
was moved, and the latent cache, the hub's loading and the documented compositions run there.
"""
from __future__ import annotations

import contextlib
import copy
import os
import traceback
from types import SimpleNamespace

import kornia
import kornia.augmentation as K
import pytest
import torch
import torchvision
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision.transforms import v2

from contract import check_transform_contract, replayed
from conftest import (STRENGTH_ZERO_EXPECTED, ClassifierWithItsAugmentation, TinyNet, cifar_size_glow, tiny_glow,
                      tiny_vae)
from latent_transforms import (ISDA, Compose, LatentAdversarial, LatentCache, LatentMixupInference, LatentNoise,
                               VarMixup, hub)
from latent_transforms.codecs import Glow
from latent_transforms.isda import ISDALoss

METHODS = {
    "LatentNoise": lambda glow, vae, **kw: LatentNoise(glow, eps=3.0, **kw),
    "LatentAdversarial": lambda glow, vae, **kw: LatentAdversarial(glow, steps=2, **kw),
    "LatentAdversarial-true": lambda glow, vae, **kw: LatentAdversarial(glow, target="true", **kw),
    "VarMixup-vae": lambda glow, vae, **kw: VarMixup(vae, num_classes=10, **kw),
    "VarMixup-glow": lambda glow, vae, **kw: VarMixup(glow, num_classes=10, keep_detail=False, **kw),
    "ISDA": lambda glow, vae, **kw: ISDA(10, **kw),
}


@pytest.fixture
def parts(device):
    """``(glow, vae, net, x, y)`` on the device: tiny codecs, a classifier with BatchNorm, a batch of 12."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(12, 1, 8, 8, generator=g), torch.randint(0, 10, (12,), generator=g)
    torch.manual_seed(0)
    net = TinyNet()
    return tiny_glow().to(device), tiny_vae().to(device), net.to(device), x.to(device), y.to(device)


_TORCH = os.path.dirname(torch.__file__)
_OTHERS = tuple(os.path.dirname(m.__file__) for m in (kornia, torchvision))  # their pixel steps are theirs to mind


class CrossDevice(TorchDispatchMode):
    """Records each op whose tensors (inputs and outputs) lie on more than one device, a copy between devices or an
    op given a tensor from another device, unless kornia or torchvision made it, with the line that made it. Left
    out: 0-dim CPU inputs (torch takes them as scalars) and CPU outputs of at most 64 numbers (a read of a few values
    to the host, such as the one check of a call's inputs: tests/test_host_syncs.py counts and pins those)."""

    def __init__(self):
        super().__init__()
        self.ops, self.crossings = 0, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        devices = {t.device for t in pytree.tree_leaves((args, kwargs))
                   if isinstance(t, torch.Tensor) and not (t.device.type == "cpu" and t.ndim == 0)}
        devices |= {t.device for t in pytree.tree_leaves(out)
                    if isinstance(t, torch.Tensor) and not (t.device.type == "cpu" and t.numel() <= 64)}
        if len(devices) > 1:
            caller = next((f for f in reversed(traceback.extract_stack()[:-1]) if not f.filename.startswith(_TORCH)),
                          None)  # None: an autograd worker thread's backward
            if caller is None or not caller.filename.startswith(_OTHERS):
                where = "" if caller is None else f" at {os.path.basename(caller.filename)}:{caller.lineno}"
                self.crossings.append(f"{func}{where}: {sorted(map(str, devices))}")
        return out


def test_the_recorder_sees_a_copy_between_devices_and_a_mixed_op():
    with CrossDevice() as seen:
        a = torch.ones(3).to("meta")
        a + torch.ones(3, device="meta")  # one device: not recorded
        torch.ones(3, device="meta") * torch.tensor(2.0)  # a 0-dim CPU tensor is a scalar: not recorded
    assert seen.ops >= 4 and len(seen.crossings) == 1 and "_to_copy" in seen.crossings[0]


@pytest.mark.filterwarnings("ignore:ISDA. the augmentation armed")  # the contract calls without forwards
@STRENGTH_ZERO_EXPECTED
@pytest.mark.parametrize("method", METHODS)
def test_every_method_keeps_the_contract_on_the_device(parts, method):
    glow, vae, net, x, y = parts
    check_transform_contract(lambda **kw: METHODS[method](glow, vae, **kw), x, y, model=net,
                             returns_x=method == "ISDA")


@pytest.mark.parametrize("method", METHODS)
def test_no_tensor_crosses_devices_in_a_call(parts, method):
    glow, vae, net, x, y = parts
    t = METHODS[method](glow, vae, generator=0, p=0.5)
    if method == "ISDA":
        t.set_epoch(1, 2)

    def step():
        x2, y2 = t(x, y, net)
        if method == "ISDA":  # its work is in the hooked forward and the loss
            torch.nn.functional.cross_entropy(net(x2), y2).backward()

    step()  # the first call sets up what is made once (generators, ISDA's statistics)
    with CrossDevice() as seen:
        step()
    assert seen.ops > 0 and seen.crossings == []


@pytest.mark.parametrize("method", METHODS)
def test_every_method_under_the_training_loops_bf16_autocast(parts, device, method):
    """A GPU training loop runs its step, the augmentation included, under a bf16 autocast: the codecs still compute
    in float32 (the model-free methods give what they give outside it), the model's bf16 logits drive the attack,
    and ISDA's loss and backward run."""
    glow, vae, net, x, y = parts
    t = METHODS[method](glow, vae, generator=0)
    if method == "ISDA":
        t.set_epoch(1, 2)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        x2, y2 = t(x, y, net)
        if method == "ISDA":
            loss = torch.nn.functional.cross_entropy(net(x2), y2)
    if method == "ISDA":
        loss.backward()
        assert torch.isfinite(loss)
    assert x2.dtype == x.dtype and x2.device == x.device and torch.isfinite(x2).all() and 0 <= x2.min() <= x2.max() <= 1
    assert t.stats["rejected"] == 0
    if not t.needs_model:
        outside = METHODS[method](glow, vae, generator=0)(x, y)
        assert replayed(x2, outside[0]) and replayed(y2, outside[1])


@pytest.mark.parametrize("method", [m for m in METHODS if m != "ISDA"])  # ISDA's state: tests/test_isda.py
def test_a_module_cast_to_bf16_casts_its_classifier_and_keeps_its_codec_in_float32(parts, device, method):
    """Lightning's precision="bf16-true" casts the whole LightningModule, moved to the device in the same call here:
    the codec was cast too, and refused at the first call. The classifier is bf16, the codec float32 on the
    classifier's device with its weights as they were, and a bf16 batch comes back bf16, as the uncast transform
    gives it."""
    glow, vae, net, x, y = parts
    module = ClassifierWithItsAugmentation(copy.deepcopy(net).cpu(),
                                           METHODS[method](tiny_glow(), tiny_vae(), generator=0))
    module.to(device, torch.bfloat16)
    codec, reference = module.augment.codec, METHODS[method](glow, vae, generator=0)
    assert module.net.fc.weight.dtype == torch.bfloat16 and module.net.fc.weight.device.type == device.type
    assert codec.dtype == torch.float32 and codec.device == module.net.fc.weight.device
    assert all(torch.equal(w, reference.codec.state_dict()[k]) for k, w in codec.state_dict().items())
    x2, y2 = module.augment(x.to(torch.bfloat16), y, module.net)
    expected_x2, expected_y2 = reference(x.to(torch.bfloat16), y, module.net)
    assert x2.dtype == torch.bfloat16 and replayed(x2, expected_x2) and replayed(y2, expected_y2)


def test_isda_logits_take_a_0_dim_cpu_strength_as_torch_takes_a_number(device):
    """The tensors of isda_logits must be on the logits' device, but a 0-d CPU lam is a number to torch."""
    from latent_transforms.isda import isda_logits

    g = torch.Generator().manual_seed(0)
    args = [t.to(device) for t in (torch.randn(4, 3, generator=g), torch.randn(3, 2, generator=g),
                                   torch.tensor([0, 1, 2, 0]), torch.rand(3, 2, generator=g))]
    torch.testing.assert_close(isda_logits(*args, torch.tensor(0.5)), isda_logits(*args, 0.5))


def test_no_tensor_crosses_devices_with_a_latent_cache_or_mixup_inference(parts, device):
    glow, vae, net, x, y = parts
    cached = LatentNoise(glow, cache=LatentCache(glow, x), generator=0)  # built outside: it hashes the codec's weights
    mixup_inference = LatentMixupInference(net, vae, x[:6], num_mixes=2, generator=0)
    with CrossDevice() as seen:
        cached(x[:4], y[:4], index=torch.arange(4, device=device))
        mixup_inference(x)
    assert seen.ops > 0 and seen.crossings == []


def test_a_seeded_generator_on_the_device_replays(parts, device):
    glow, _, _, x, y = parts
    outputs = [LatentNoise(glow, eps=3.0, generator=torch.Generator(device).manual_seed(7))(x, y)[0] for _ in range(2)]
    assert replayed(*outputs) and not torch.equal(outputs[0], x)
    if device.type != "cpu":  # a CPU generator cannot draw on another device: named, not a torch error
        with pytest.raises(ValueError, match="generator"):
            LatentNoise(glow, eps=3.0, generator=torch.Generator())(x, y)


@pytest.mark.parametrize("codec", ["glow-digits", "vae-digits"])
def test_codecs_keep_exact_math_under_the_callers_tf32_and_autocast(device, codec):
    """TF32 (which cuDNN turns on by default) took a Glow's round trip from 2e-6 to 1e-2 on an H100, bf16 to 7e-2:
    the codecs compute in float32 with both off, whatever the training loop around them has set."""
    c = hub.load(codec, device=device)
    x = c.sample(16, generator=0).clamp(0, 1)
    reference = c.decode_flat(c.encode_flat(x))
    flags = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("high")  # TF32 matmuls
    torch.backends.cudnn.allow_tf32 = True
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            z = c.encode_flat(x)
            x2 = c.decode_flat(z)
    finally:
        torch.set_float32_matmul_precision(flags[0])
        torch.backends.cudnn.allow_tf32 = flags[1]
    assert z.dtype == x2.dtype == torch.float32 and x2.device == x.device
    assert (x2 - reference).abs().max() <= 1e-5
    if codec.startswith("glow"):
        assert (x2 - x).abs().max() <= 1e-4  # invertible to float32 rounding


def test_a_frozen_glow_moved_to_the_device_follows_weights_written_in_place(device):
    """The folded fast path records the tensors it was folded from. A move makes new buffers (parameters keep their
    objects): an in-place write to one, here the 1x1 convolutions' channel permutations alone, must still refold it."""
    glow = hub.load("glow-digits")  # frozen: folded
    # the move; on the CPU .to() keeps every tensor, so new ones are made as a move to another device makes them
    glow = glow.to(device) if device.type != "cpu" else glow._apply(torch.clone)
    other = glow.unfrozen_copy()
    ours = dict(glow.named_buffers())
    with torch.no_grad():
        for name, b in other.named_buffers():
            if name.endswith(".P"):  # another channel permutation, written into the moved glow's buffer
                b.copy_(b.roll(1, 0))
                ours[name].copy_(b)
    x = torch.rand(4, 1, 8, 8, device=device)
    assert torch.allclose(glow.encode_flat(x), other.encode_flat(x), atol=1e-5)  # other: the plain normflows path


def test_the_documented_compositions_run_on_the_device(device):
    """docs/composition.md's torchvision and kornia pipelines, on RGB 32x32 images on the device."""
    glow = cifar_size_glow().to(device)
    torch.manual_seed(0)
    net = TinyNet(channels=3).to(device)
    x, y = torch.rand(8, 3, 32, 32, device=device), torch.randint(0, 10, (8,), device=device)
    pipelines = [
        Compose([v2.RandomCrop(32, padding=4, padding_mode="reflect"), v2.RandomHorizontalFlip(),
                 LatentNoise(glow, p=0.5, generator=0), v2.RandAugment(), LatentAdversarial(glow, p=0.5, generator=1),
                 v2.MixUp(num_classes=10)]),
        Compose([K.RandomCrop((32, 32), padding=4, padding_mode="reflect"), K.RandomHorizontalFlip(),
                 LatentNoise(glow, p=0.5, generator=0), K.auto.RandAugment(n=2, m=10),
                 LatentAdversarial(glow, p=0.5, generator=1), K.RandomMixUpV2()], num_classes=10),
    ]
    for augment in pipelines:
        with CrossDevice() as seen:
            x2, y2 = augment(x, y, net)
        assert x2.device == y2.device == x.device and x2.dtype == x.dtype and y2.shape == (8, 10)
        assert torch.isfinite(x2).all() and seen.crossings == []


# -- Apple's MPS, which has no float64, simulated on the CPU ----------------------------------------------------------
_NO_FLOAT64 = ("Cannot convert a MPS Tensor to float64 dtype as the MPS framework doesn't support float64. "
               "Please use float32 instead.")  # the TypeError of torch on a Mac


class _NoFloat64OnMPS(TorchDispatchMode):
    """Any op whose result would be a float64 tensor on "mps" raises MPS's ``TypeError``."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(isinstance(t, torch.Tensor) and t.dtype == torch.float64 and t.device.type == "mps"
               for t in pytree.tree_leaves(out)):
            raise TypeError(f"{func}: {_NO_FLOAT64}")
        return out


class _MovesToMPS(TorchFunctionMode):
    """``Tensor.to("mps")`` as a fake tensor there (this torch has no MPS to copy to; a float64 one raises). The
    bindings of ``~t`` and ``t[index]`` refuse fake MPS tensors: ``torch.bitwise_not(t)``, and the shape that
    indexing gives on the meta device (a new tensor, not a view: fake tensors hold no values to share)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.__invert__:
            return torch.bitwise_not(*args)
        if func is torch.Tensor.__getitem__ and args[0].device.type == "mps":
            meta = pytree.tree_map_only(torch.Tensor, lambda t: torch.empty(t.shape, dtype=t.dtype, device="meta"), args)
            out = meta[0][meta[1]]
            return torch.empty(out.shape, dtype=out.dtype, device="mps")
        if func is torch.Tensor.to:
            to_device, dtype = torch._C._nn._parse_to(*args[1:], **kwargs)[:2]
            src = args[0]
            if to_device is not None and to_device.type == "mps" and src.device.type != "mps":
                if (dtype or src.dtype) == torch.float64:
                    raise TypeError(_NO_FLOAT64)
                return torch.empty(src.shape, dtype=dtype or src.dtype, device="mps")
        return func(*args, **kwargs)


@contextlib.contextmanager
def simulated_mps():
    """Fake tensors on an "mps" device (shapes, dtypes and devices, no values: an op that reads a value on the host
    raises) that refuse float64 as MPS does."""
    with FakeTensorMode(allow_non_fake_inputs=True), _NoFloat64OnMPS(), _MovesToMPS():
        yield


def test_isda_and_its_statistics_move_to_mps_and_update_there():
    # ISDA's float64 schedule progress made isda.to("mps") (and model.to("mps") of a model holding ISDALoss) a
    # TypeError, and the statistics' merge took m / (n + m) in float64 on the features' device
    with simulated_mps():
        isda = ISDA(3, feature_dim=4).to("mps")
        assert isda.schedule_progress.device.type == "mps" and isda.schedule_progress.dtype == torch.float32
        assert all(b.device.type == "mps" for b in isda.estimator.buffers())
        assert isda.estimator.count.dtype == torch.int64  # only float64 becomes float32 there (mutation audit 177)
        isda.estimator.update(torch.randn(5, 4, device="mps"), torch.randint(0, 3, (5,), device="mps"), check_y=False)
        assert isda.estimator.mean.device.type == "mps" and isda.estimator.cov.dtype == torch.float32


@pytest.mark.parametrize("make", [lambda: ISDA(3), lambda: ISDALoss(3, feature_dim=4)], ids=["ISDA", "ISDALoss"])
def test_isda_builds_under_mps_as_torchs_default_device(make):
    # its float64 schedule buffer, made on the default device, was MPS's TypeError
    with simulated_mps():
        torch.set_default_device("mps")
        try:
            isda = make()
        finally:
            torch.set_default_device(None)
    assert isda.schedule_progress.device.type == "mps" and isda.schedule_progress.dtype == torch.float32
    assert ISDA(3).schedule_progress.dtype == torch.float64  # elsewhere the progress keeps all its digits


def test_the_wide_float_is_float64_on_every_device_but_mps():
    # (mutation audit 177) MPS alone has no float64: a GPU's class counts and reliability bins in float32 would stop
    # counting at 2**24 samples
    from latent_transforms.validation import wide_float

    devices = ("cpu", "cuda", torch.device("cuda", 1), "meta", "xpu", "mps", torch.device("mps", 0))
    assert [wide_float(d) for d in devices] == [torch.float64] * 5 + [torch.float32] * 2


def test_a_glow_folds_its_weights_for_mps_on_the_cpu():
    # freeze() and a refold after weights written in place computed the folded weights in float64 on the weights'
    # device: hub.load("glow-digits", device="mps") raised MPS's TypeError
    # (a Glow's parameters cannot become fake MPS tensors: a step stands in, with its weights there)
    glow = tiny_glow()
    block = glow.flow.flows[0][0]
    conv, actnorm = block.flows[1], block.flows[2]
    with simulated_mps():
        step = torch.nn.Module()
        step.flows = [None, SimpleNamespace(num_channels=conv.num_channels, **{
            k: getattr(conv, k).detach().to("mps") for k in ("L", "U", "sign_S", "log_S", "P")}),
            SimpleNamespace(s=actnorm.s.detach().to("mps"), t=actnorm.t.detach().to("mps"))]
        on_mps = SimpleNamespace(flow=SimpleNamespace(flows=[[step, None]]), dtype=torch.float32,
                                 device=torch.device("mps"), _record_fold_sources=lambda: None)
        Glow._fold_weights(on_mps)
    for name in ("enc_weight", "enc_bias", "dec_weight", "dec_bias"):
        folded, value = getattr(step, name), getattr(block, name)
        assert folded.device.type == "mps" and (folded.shape, folded.dtype) == (value.shape, value.dtype)


def test_autocast_is_left_alone_on_a_device_torch_has_no_autocast_for(monkeypatch):
    # torch before 2.5 has no MPS autocast: torch.autocast("mps", enabled=False) raised "unsupported scalarType" and
    # torch.is_autocast_enabled("mps") "unknown device type for autocast", in every ISDA update and codec call
    from latent_transforms.codecs.precision import exact_math

    available, autocast, enabled = torch.amp.is_autocast_available, torch.autocast, torch.is_autocast_enabled

    def refusing(name, real):
        def call(device_type, *args, **kwargs):
            if device_type == "mps":
                raise RuntimeError(f"{name}: unknown device type for autocast")
            return real(device_type, *args, **kwargs)
        return call

    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda kind: kind != "mps" and available(kind))
    monkeypatch.setattr(torch, "autocast", refusing("autocast", autocast))
    monkeypatch.setattr(torch, "is_autocast_enabled", refusing("is_autocast_enabled", enabled))
    with exact_math("mps"):
        pass
    with simulated_mps():
        isda = ISDA(3, feature_dim=4).to("mps")
        isda.estimator.update(torch.randn(5, 4, device="mps"), torch.randint(0, 3, (5,), device="mps"), check_y=False)
        assert isda.estimator.cov.device.type == "mps"


def test_autocast_available_answers_while_compiling_as_torch_does_outside(monkeypatch):
    # audit 441: traced, only mps and meta were asked at import: a lazy or vulkan tensor was said to have an autocast,
    # and no_autocast entered torch.autocast("lazy", enabled=False), which raises "unsupported scalarType"
    from latent_transforms.torch_defaults import _no_autocast, autocast_available

    kinds = ("cpu", "cuda", "ipu", "xpu", "opengl", "opencl", "ideep", "hip", "ve", "fpga", "maia", "xla", "lazy",
             "vulkan", "mps", "meta", "hpu", "mtia", "privateuseone")  # c10's device types but mkldnn (deprecated)
    outside = {kind: torch.amp.is_autocast_available(kind) for kind in kinds}
    assert outside["cpu"] and not outside["meta"] and not outside["lazy"]
    assert {kind: autocast_available(kind) for kind in kinds} == outside
    assert _no_autocast("nowhere") is False  # a name torch does not know (a later torch's dropped one): no tensor there
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda kind: pytest.fail("asked while compiling"))
    assert {kind: autocast_available(kind) for kind in kinds} == outside
