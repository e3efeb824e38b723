"""Torch's process-wide settings a training script may have changed before it uses the library: the default dtype
(float64, or 16 bits for LLM-style code) and device (a "meta" left over), inference mode, grad mode, deterministic
algorithms, warnings as errors. The library's own tensors follow the data, not these defaults
(docs/reliability.md#torchs-global-settings)."""
import contextlib
import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

from latent_transforms import (ISDA, Compose, LatentAdversarial, LatentCache, LatentMixupInference, LatentNoise,
                               VarMixup, hub)
from latent_transforms.codecs import build_codec
from latent_transforms.data import low_data_split
from latent_transforms.evaluation import fit_classifier, predict_proba
from latent_transforms.rng import sample_beta
from latent_transforms.train import train_codec

from conftest import TinyNet, tiny_glow

# a few training steps make a codec that train_codec warns about (posterior collapse, no better than noise)
UNTRAINED_CODEC_EXPECTED = pytest.mark.filterwarnings("ignore:.*safetensors. the (VAE|flow):UserWarning")


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


@contextlib.contextmanager
def default_device(device: str):
    torch.set_default_device(device)
    try:
        yield
    finally:
        torch.set_default_device(None)


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
    assert cache.signatures.dtype == torch.float32 and x2.dtype == torch.float32


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
        outputs += [LatentNoise(glow, cache=cache)(x, y, index=index)[0], cache.latents, cache.signatures,
                    low_data_split(y, 1)]
        fit_classifier(net, x, y, epochs=1, batch_size=6, progress=False)
        outputs.append(predict_proba(net, x))
        trains = _adam_steps_under_meta()
        if trains:  # torch 2.4's Adam keeps its step count on the default device: a VAE's training fails there
            result = train_codec("vae", x, tmp_path / "run", name="v", config={"latent_dim": 2}, max_steps=2,
                                 batch_size=6, warmup_steps=0, progress=False)
    assert all(t.device.type == "cpu" for t in [*outputs, *glow.parameters(), *vae.parameters()])
    if trains:
        assert result["complete"] and hub.load_checkpoint(tmp_path / "run" / "v.safetensors").device.type == "cpu"


def _adam_steps_under_meta() -> bool:
    """Whether torch's Adam steps a CPU parameter under a "meta" default device (torch 2.14's does; 2.4's made its
    step count there: "Tensor.item() cannot be called on meta tensors")."""
    p = torch.zeros(1, device="cpu", requires_grad=True)
    p.grad = torch.ones(1, device="cpu")
    try:
        torch.optim.Adam([p]).step()
    except (RuntimeError, NotImplementedError):
        return False
    return True


def test_codecs_caches_and_references_made_inside_inference_mode_stay_usable_outside(monkeypatch, digits_codecs):
    # a Glow loaded inside torch.inference_mode() failed at once ("Inference tensors do not track version
    # counter"); a VAE, a LatentCache and LatentMixupInference's reference latents made there were inference tensors
    # that load_state_dict could not write afterwards, and hub.load cached such a VAE for the rest of the process
    monkeypatch.setattr(hub, "_loaded", {})
    x, y = _batch()
    torch.manual_seed(0)
    net, own = TinyNet(), tiny_glow()
    with torch.inference_mode():
        glow, vae = hub.load("glow-digits"), hub.load("vae-digits")
        twin = own.unfrozen_copy()
        cache = LatentCache(digits_codecs[0], x, progress=False)
        predictor = LatentMixupInference(net, digits_codecs[1], x, generator=0)
    for module in (glow, vae, hub.load("vae-digits"), twin, cache, predictor):
        assert not any(t.is_inference() for t in [*module.parameters(), *module.buffers()])
        module.load_state_dict(module.state_dict())
    x2, _ = LatentNoise(glow, generator=0)(x, y)
    assert torch.equal(x2, LatentNoise(digits_codecs[0], generator=0)(x, y)[0])


@UNTRAINED_CODEC_EXPECTED
@pytest.mark.parametrize("kind,config", [("vae", {"latent_dim": 2}), ("flow", {"levels": 1, "steps": 1, "hidden": 8})])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_train_codec_trains_in_float32_whatever_the_default_dtype(tmp_path, kind, config, dtype):
    # under float64 the codec was built and trained in float64 (other weights from the same seed); under bfloat16
    # a Glow could not be built ("geqrf_cpu" not implemented) and a VAE was built in bf16, then refused by its own
    # check
    x = torch.rand(24, 1, 8, 8, generator=torch.Generator().manual_seed(0))  # float32, made before the change
    settings = dict(name="c", config=config, max_steps=3, batch_size=8, warmup_steps=0, progress=False, flips=True)
    train_codec(kind, x, tmp_path / "float32", **settings)
    with default_dtype(dtype):
        train_codec(kind, x, tmp_path / "other", **settings)
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
