"""Torch's process-wide settings a training script may have changed before it uses the library: the default dtype
(float64, or 16 bits for LLM-style code) and device (a "meta" left over), inference mode, grad mode, deterministic
algorithms, warnings as errors. The library's own tensors follow the data, not these defaults
(docs/reliability.md#torchs-global-settings)."""
import contextlib
import copy
import os
import subprocess
import sys
import threading
import warnings

import pytest
import torch
import torch.nn.functional as F

from latent_transforms import (ISDA, Compose, LatentAdversarial, LatentCache, LatentMixupInference, LatentNoise,
                               VarMixup, hub)
from latent_transforms.codecs import ConvVAE, build_codec
from latent_transforms.torch_defaults import codec_build_defaults
from latent_transforms.data import low_data_split
from latent_transforms.evaluation import fit_classifier, predict_proba
from latent_transforms.rng import sample_beta
from latent_transforms.train import train_codec

from conftest import ROOT, TinyNet, default_device, default_dtype, tiny_glow

# a few training steps make a codec that train_codec warns about (posterior collapse, no better than noise)
UNTRAINED_CODEC_EXPECTED = pytest.mark.filterwarnings("ignore:.*safetensors. the (VAE|flow):UserWarning")


@pytest.fixture(scope="module")
def digits_codecs():
    return hub.load("glow-digits"), hub.load("vae-digits")


def _batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(12, 1, 8, 8, generator=g), torch.randint(0, 10, (12,), generator=g)


def _draws(glow, vae, net, x, y) -> list[torch.Tensor]:
    """Every method's outputs and draws with a seed, and with generator=None after torch.manual_seed."""
    out = []
    for t, model in [(LatentNoise(glow, p=0.5, generator=0), None), (LatentAdversarial(glow, p=0.5, generator=0), net),
                     (VarMixup(vae, alpha=0.2, num_classes=10, p=0.5, generator=0), None),
                     (VarMixup(vae, num_classes=10, posterior="sample", generator=0), None)]:
        out += [*t(x, y, model), *t.last_params.values()]
    torch.manual_seed(3)
    out.append(LatentNoise(glow, p=0.5)(x, y)[0])
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_the_same_seed_draws_alike_whatever_the_default_dtype(digits_codecs, dtype):
    # the p mask and VarMixup's Beta weights were drawn in the default dtype: under float64 other samples were
    # selected from the same seed; under bfloat16 a Beta(0.2, 0.2) weight took one of 938 values, some NaN
    x, y = _batch()
    torch.manual_seed(0)
    net = TinyNet()
    expected = _draws(*digits_codecs, net, x, y)
    with default_dtype(dtype):
        got = _draws(*digits_codecs, net, x, y)
        beta = sample_beta(0.2, 1000, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert beta.dtype == torch.float32
    for a, b in zip(expected, got):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_a_latent_cache_built_under_a_16_bit_default_dtype_takes_its_own_images(digits_codecs):
    # its image signatures were bf16: the cached images themselves were refused ("its signature differs by 0.00239")
    glow, _ = digits_codecs
    x, y = _batch()  # float32 images
    with default_dtype(torch.bfloat16):
        cache = LatentCache(glow, x, progress=False)
        x2, _ = LatentNoise(glow, cache=cache, generator=0)(x, y, index=torch.arange(12))
    assert cache._image_signatures.dtype == torch.float32 and x2.dtype == torch.float32


@UNTRAINED_CODEC_EXPECTED
def test_nothing_is_made_on_the_default_device(monkeypatch, tmp_path):
    # a torch.set_default_device("meta") left over: hub.load built its codec there (Glow: "nonzero() raises
    # unimplemented"; VAE: the checkpoint copied into meta weights, "Cannot copy out of meta tensor"); the seeding
    # draw of generator=None, last_params["batch_size"], a LatentCache's projection, fit_classifier's order and
    # low_data_split's draws were made there; under "cuda" the CPU generators' draws failed on the GPU
    monkeypatch.setattr(hub, "_loaded", {})
    x, y = _batch()
    torch.manual_seed(0)
    net = TinyNet()
    with default_device("meta"):
        glow, vae = hub.load("glow-digits"), hub.load("vae-digits")
        noise = LatentNoise(glow, p=0.5)
        outputs = [*noise(x, y), noise(x, y, params=noise.last_params)[0], noise.last_params["batch_size"],
                   LatentAdversarial(glow)(x, y, net)[0], VarMixup(vae, num_classes=10, posterior="sample")(x, y)[1],
                   LatentMixupInference(net, vae, x)(x), build_codec(glow.config).encode_flat(x)]
        cache = LatentCache(glow, x, progress=False)
        cache.save(tmp_path / "cache.safetensors")
        cache = LatentCache.load(tmp_path / "cache.safetensors", glow)
        index = torch.arange(12, device="cpu")
        split = low_data_split(y, 1)  # a meta permutation indexed the labels with garbage, silently
        outputs += [LatentNoise(glow, cache=cache)(x, y, index=index)[0], cache.latents, cache._image_signatures, split]
        fit_classifier(net, x, y, epochs=1, batch_size=6, progress=False)
        outputs.append(predict_proba(net, x))
        result = train_codec("vae", x, tmp_path / "run", name="v", config={"latent_dim": 2}, max_steps=2,
                             batch_size=6, warmup_steps=0, progress=False)
        # a flow's ActNorm initialisation batch and its dequantisation noise are drawn on the CPU too
        flow = train_codec("flow", x, tmp_path / "run", name="f", config={"levels": 1, "steps": 1, "hidden": 8},
                           max_steps=2, batch_size=6, warmup_steps=0, progress=False)
    assert all(t.device.type == "cpu" for t in [*outputs, *glow.parameters(), *vae.parameters()])
    assert result["complete"] and hub.load_checkpoint(tmp_path / "run" / "v.safetensors").device.type == "cpu"
    assert flow["complete"] and flow["codec"].device.type == "cpu"
    assert torch.equal(split, low_data_split(y, 1))


def test_images_and_labels_are_read_onto_the_cpu_whatever_the_default_device(monkeypatch, tmp_path):
    # CIFAR-10's and a folder of class folders' labels were made on the default device ("meta": their values lost)
    import numpy as np
    import torchvision.datasets
    from PIL import Image

    from latent_transforms.data import load_images

    class FakeCIFAR10:
        def __init__(self, root, train, download):
            self.data, self.targets = np.zeros((3, 32, 32, 3), np.uint8), [0, 1, 2]

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / c / "0.png")
    with default_device("meta"):
        read = [load_images("cifar10", "train", tmp_path), load_images(f"folder:{tmp_path}")]
    for (x, y, _), labels in zip(read, ([0, 1, 2], [0, 1])):
        assert x.device.type == "cpu" and y.device.type == "cpu" and y.tolist() == labels


def test_a_glows_actnorm_flags_keep_their_dtype_and_device_when_initialised():
    # normflows replaced the flag with torch.tensor(1.0) on the first batch: float64 under a float64 default, a meta
    # tensor under a "meta" one (train_codec's training state could not be saved)
    glow = build_codec(tiny_glow().config)  # its ActNorms not initialised
    with default_dtype(torch.float64), default_device("meta"):
        glow.init_actnorm(torch.rand(8, 1, 8, 8, device="cpu", dtype=torch.float32))
    flags = [t for k, t in glow.named_buffers() if k.endswith("data_dep_init_done")]
    assert flags and all(t.dtype == torch.float32 and t.device.type == "cpu" and t.item() == 1.0 for t in flags)


def test_codecs_caches_and_references_made_inside_inference_mode_stay_usable_outside(monkeypatch, digits_codecs,
                                                                                        tmp_path):
    # a Glow loaded inside torch.inference_mode() failed at once ("Inference tensors do not track version
    # counter"); a VAE, a LatentCache and LatentMixupInference's reference latents made there were inference tensors
    # that load_state_dict could not write afterwards, and hub.load cached such a VAE for the rest of the process
    monkeypatch.setattr(hub, "_loaded", {})
    x, y = _batch()
    torch.manual_seed(0)
    net, own = TinyNet(), tiny_glow()
    hub.save_checkpoint(own, tmp_path / "own.safetensors")
    LatentCache(digits_codecs[0], x, progress=False).save(tmp_path / "cache.safetensors")
    trainable = ConvVAE((1, 8, 8), latent_dim=4, hidden=8)  # its weights require grad
    with torch.inference_mode():
        glow, vae = hub.load("glow-digits"), hub.load("vae-digits")
        twin, built = own.unfrozen_copy(), build_codec(own.config)
        from_file = hub.load_checkpoint(tmp_path / "own.safetensors")  # not through hub.load
        cache = LatentCache(digits_codecs[0], x, progress=False)
        loaded_cache = LatentCache.load(tmp_path / "cache.safetensors", digits_codecs[0])
        predictor = LatentMixupInference(net, digits_codecs[1], x, generator=0)
        over_trainable = LatentMixupInference(net, trainable, x, generator=0)
    for module in (glow, vae, hub.load("vae-digits"), twin, built, from_file, cache, loaded_cache, predictor,
                   over_trainable):
        assert not any(t.is_inference() for t in [*module.parameters(), *module.buffers()])
        module.load_state_dict(module.state_dict())
    # the reference latents are a plain buffer, not the end of a graph through the codec's weights
    assert not over_trainable.reference_latents.requires_grad
    copy.deepcopy(over_trainable)
    x_own, _ = LatentNoise(from_file, generator=0)(x, y)  # a frozen Glow's folded fast path, usable outside
    assert torch.equal(x_own, LatentNoise(own, generator=0)(x, y)[0])
    x2, _ = LatentNoise(glow, generator=0)(x, y)
    assert torch.equal(x2, LatentNoise(digits_codecs[0], generator=0)(x, y)[0])


def test_a_codec_build_leaves_the_callers_default_dtype_as_it_was(tmp_path):
    # the default dtype is float32 while a codec is built, then set back to the caller's
    own = tiny_glow()
    hub.save_checkpoint(own, tmp_path / "own.safetensors")
    with default_dtype(torch.float64):
        for build in (lambda: build_codec(own.config), own.unfrozen_copy,
                      lambda: hub.load_checkpoint(tmp_path / "own.safetensors")):
            assert build().dtype == torch.float32
            assert torch.get_default_dtype() == torch.float64
    assert torch.get_default_dtype() == torch.float32


def test_codec_builds_in_two_threads_take_turns():
    # under a float64 default, a build in another thread that began while this one had switched to float32 would see
    # float32, leave it, and be half built in float64 once this one switched back: it waits for this one instead
    entered = threading.Event()

    def other_build():
        with codec_build_defaults():
            entered.set()

    with default_dtype(torch.float64):
        with codec_build_defaults():
            thread = threading.Thread(target=other_build)
            thread.start()
            assert not entered.wait(0.3)
            assert torch.get_default_dtype() == torch.float32
        thread.join(30)
        assert entered.is_set() and torch.get_default_dtype() == torch.float64


def test_a_codec_built_inside_a_codec_build_is_built():
    # a codec class of one's own may build its parts with build_codec (or hub.load) in its constructor, which
    # unfrozen_copy and load_checkpoint run inside codec_build_defaults: the inner build must not wait for the outer
    config, built = tiny_glow().config, []

    def nested_build():
        with codec_build_defaults():
            built.append(build_codec(config))

    thread = threading.Thread(target=nested_build, daemon=True)  # a deadlock would leave it waiting, not the tests
    thread.start()
    thread.join(20)
    assert len(built) == 1 and built[0].config == config


def test_the_cpu_is_made_the_default_device_only_where_another_is():
    # mutation round 45: torch's device mode, entered where the CPU is the default already, intercepts every op of
    # the block for nothing
    from latent_transforms.torch_defaults import cpu_as_default_device

    assert isinstance(cpu_as_default_device(), contextlib.nullcontext)
    with default_device("meta"):
        assert cpu_as_default_device() == torch.device("cpu")


_FIRST_OPTIMIZER_UNDER_META = """
import sys, torch
from latent_transforms.evaluation import fit_classifier
from latent_transforms.train import train_codec
x, y = torch.rand(12, 1, 8, 8), torch.arange(12) % 10
net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
torch.set_default_device("meta")
if sys.argv[1] == "fit_classifier":
    fit_classifier(net, x, y, epochs=1, batch_size=6, progress=False)
else:
    train_codec("vae", x, sys.argv[2], name="v", config={"latent_dim": 2}, max_steps=2, batch_size=6,
                warmup_steps=0, progress=False)
torch.set_default_device(None)
torch.compile(lambda t: t + 1, backend="eager")(torch.zeros(1))  # torch._dynamo whole
"""


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["fit_classifier", "train_codec"])
def test_the_first_optimizer_of_a_process_is_made_under_a_meta_default_device(tmp_path, trainer):
    """torch 2.6 to 2.8 import torch._dynamo when a process makes its first optimizer, and under a "meta" default
    device that import failed (torch's "Tensor.item() cannot be called on meta tensors", then "partially initialized
    module 'torch._dynamo'"), leaving it half-imported for every later optimizer and torch.compile of the process.
    A fresh process: torch._dynamo is imported once."""
    root = str(ROOT)
    env = {**os.environ, "LATENT_TRANSFORMS_HOME": str(tmp_path / "hub"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", _FIRST_OPTIMIZER_UNDER_META, trainer, str(tmp_path / "run")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@UNTRAINED_CODEC_EXPECTED
@pytest.mark.parametrize("kind,config", [("vae", {"latent_dim": 2}), ("flow", {"levels": 1, "steps": 1, "hidden": 8})])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_train_codec_trains_in_float32_whatever_the_default_dtype(tmp_path, kind, config, dtype):
    # under float64 the codec was built and trained in float64 (other weights from the same seed); under bfloat16
    # a Glow could not be built ("geqrf_cpu" not implemented) and a VAE was built in bf16, then refused by its own
    # check
    x = torch.rand(24, 1, 8, 8, generator=torch.Generator().manual_seed(0))  # float32, made before the change
    settings = dict(name="c", config=config, max_steps=3, batch_size=8, warmup_steps=0, progress=False, flips=True)
    expected = train_codec(kind, x, tmp_path / "float32", **settings)
    with default_dtype(dtype):
        got = train_codec(kind, x, tmp_path / "other", **settings)
    assert got["metrics"] == expected["metrics"]  # the flow's dequantisation noise drawn in float32 too
    a, b = (hub.load_checkpoint(tmp_path / run / "c.safetensors") for run in ("float32", "other"))
    assert b.dtype == torch.float32
    assert all(torch.equal(t, b.state_dict()[k]) for k, t in a.state_dict().items())


@pytest.mark.filterwarnings("ignore:Anomaly Detection has been enabled:UserWarning")  # torch's, on entering it
@pytest.mark.parametrize("setting", ["deterministic", "deterministic_warn_only", "anomaly", "no_grad", "grad_off"])
def test_every_method_trains_under_a_global_setting_with_every_warning_an_error(digits_codecs, setting):
    # on the CPU none of the ops the methods use has only a nondeterministic kernel; a call under no_grad or with
    # grad mode off gives images the next training step takes; and no call warns
    glow, vae = digits_codecs
    x, y = _batch()
    torch.manual_seed(0)
    net = TinyNet()
    isda = ISDA(num_classes=10)
    isda.set_epoch(1, 2)
    methods = [LatentNoise(glow, p=0.5), LatentAdversarial(glow, p=0.5), isda,
               Compose([VarMixup(vae, num_classes=10), LatentNoise(glow, generator=0)])]
    around = {"no_grad": torch.no_grad, "grad_off": lambda: torch.set_grad_enabled(False)}.get(setting,
                                                                                              contextlib.nullcontext)
    was_deterministic, was_warn_only = torch.are_deterministic_algorithms_enabled(), \
        torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        if setting.startswith("deterministic"):
            torch.use_deterministic_algorithms(True, warn_only=setting.endswith("warn_only"))
        with warnings.catch_warnings(), (torch.autograd.detect_anomaly() if setting == "anomaly"
                                         else contextlib.nullcontext()):
            warnings.simplefilter("error")
            for t in methods:
                model = copy.deepcopy(net)
                with around():
                    x2, y2 = t(x, y, model)
                F.cross_entropy(model(x2), y2).backward()
                assert x2.shape == x.shape and all(p.grad is not None for p in model.parameters())
    finally:
        torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)
