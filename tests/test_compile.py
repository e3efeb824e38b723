"""``Codec.compile_fast_path``: compiled encode/decode match the eager fast path and the plain reference path.

The behavioural checks compile with ``backend="aot_eager"`` (Dynamo capture and AOTAutograd, no C++ build); one
test uses the default inductor backend, which on a CPU builds C++ with the system compiler.
"""
import pytest
import torch
import torch._dynamo

from latent_transforms import LatentNoise
from latent_transforms.codecs import Glow
from latent_transforms.hub import load_checkpoint, save_checkpoint

from conftest import tiny_glow, tiny_vae, trained_like_glow_pair

FAST = {"backend": "aot_eager"}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from scratch (Dynamo caches per code object, shared by every Glow or VAE)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_fast_path_is_one_graph_each_way():
    glow, x = tiny_glow(), torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        for fn, arg in ((Glow._encode, x), (Glow._decode, glow.encode(x))):
            explained = torch._dynamo.explain(fn)(glow, arg)
            assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


@pytest.mark.slow
def test_compiled_glow_matches_eager_fast_path_and_plain_reference():
    plain, fast = trained_like_glow_pair()
    compiled = plain.unfrozen_copy()
    assert compiled.freeze().compile_fast_path(**FAST) is compiled and compiled.compiled
    for batch in (6, 3):  # a second batch size reuses or recompiles the graph, never fails
        x = torch.rand(batch, 1, 8, 8, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            zc, zf, zp = compiled.encode(x), fast.encode(x), plain.encode(x)
            for a, b, c in zip(zc, zf, zp):
                assert a.dtype == torch.float32 and a.shape == b.shape
                assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a, c, atol=1e-4)
            xc = compiled.decode(zp)
            assert torch.allclose(xc, fast.decode(zp), atol=1e-6) and torch.allclose(xc, plain.decode(zp), atol=1e-5)
            assert (compiled.decode(zc) - x).abs().max() <= 1e-3


def test_a_transform_with_a_compiled_codec_pickles_and_its_copy_compiles_again():
    # the compiled functions refused to pickle: no spawned DataLoader worker, no torch.save of the transform
    import pickle

    t = LatentNoise(tiny_vae().compile_fast_path(**FAST), generator=0)
    copy = pickle.loads(pickle.dumps(t))
    assert copy.codec.compiled and copy.codec._compile_args == (None, FAST)
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(copy(x)[0], t(x)[0])  # same generator state, same codec: the same output


def test_compiled_vae_matches_eager():
    vae, compiled = tiny_vae(), tiny_vae().compile_fast_path(**FAST)
    for batch in (5, 2):
        x = torch.rand(batch, 1, 8, 8, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            (zc,), (z,) = compiled.encode(x), vae.encode(x)
            assert torch.allclose(zc, z, atol=1e-6)
            assert torch.allclose(compiled.decode([z]), vae.decode([z]), atol=1e-6)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(compiled.encode(x, sample=True, generator=g1)[0], vae.encode(x, sample=True, generator=g2)[0])


@pytest.mark.slow
def test_compiled_decode_gradient_matches_eager():
    """LatentAdversarial differentiates decode with respect to the latents."""
    glow, compiled = tiny_glow(), tiny_glow().compile_fast_path(**FAST)
    with torch.no_grad():
        z = glow.encode(torch.rand(4, 1, 8, 8))
    grads = []
    for codec in (glow, compiled):
        zg = [t.clone().requires_grad_(True) for t in z]
        (codec.decode(zg) ** 2).sum().backward()
        grads.append([t.grad for t in zg])
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(*grads))


@pytest.mark.slow
def test_transform_with_varying_batch_sizes_matches_eager():
    """p < 1 selects a different number of samples on every call."""
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(8, dtype=torch.int64)
    eager = LatentNoise(tiny_glow(), eps=1.0, p=0.5, generator=0).train()
    compiled = LatentNoise(tiny_glow().compile_fast_path(**FAST), eps=1.0, p=0.5, generator=0).train()
    for _ in range(3):
        assert torch.allclose(compiled(x, y)[0], eager(x, y)[0], atol=1e-5)
    assert compiled.stats == eager.stats


def test_turning_it_off_saving_and_loading(tmp_path):
    glow = tiny_glow().compile_fast_path(**FAST)
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        z = glow.encode(x)
    assert set(glow.state_dict()) == set(tiny_glow().state_dict())
    save_checkpoint(glow, tmp_path / "glow.safetensors")
    loaded = load_checkpoint(tmp_path / "glow.safetensors")
    assert glow.compile_fast_path(enabled=False) is glow and not glow.compiled and not loaded.compiled
    with torch.no_grad():
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(glow.encode(x), z))
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(loaded.encode(x), z))
    with pytest.raises(ValueError, match="takes no torch.compile arguments"):
        glow.compile_fast_path(enabled=False, backend="eager")


def test_unfrozen_codec_is_refused():
    with pytest.raises(ValueError, match="needs a frozen codec: call Glow.freeze"):
        Glow((1, 8, 8), levels=1, steps=1, hidden=8).compile_fast_path()


@pytest.mark.slow
def test_inductor_round_trip_matches_eager(tmp_path, monkeypatch):
    """The default backend (inductor, which on a CPU builds C++: about 20 s for this one-step Glow)."""
    import torch._inductor.config

    # its C++ builds and caches in tmp_path, not $TMPDIR/torchinductor_$USER (which also made a second run reuse the
    # first one's builds); precompiled headers always go there, so none are made
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    if hasattr(torch._inductor.config, "cpp_cache_precompile_headers"):  # not in torch 2.4
        monkeypatch.setattr(torch._inductor.config, "cpp_cache_precompile_headers", False)
    torch.manual_seed(0)
    glow = Glow((1, 4, 4), levels=1, steps=1, hidden=8).init_actnorm(torch.rand(16, 1, 4, 4))
    compiled = glow.unfrozen_copy()
    compiled.freeze().compile_fast_path()
    x = torch.rand(4, 1, 4, 4)
    with torch.no_grad():
        z = glow.freeze().encode(x)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(compiled.encode(x), z))
        assert torch.allclose(compiled.decode(z), glow.decode(z), atol=1e-5)
    # torch 2.4's inductor linked its CPU kernels with -ffast-math, whose loader turns off subnormal floats for the
    # whole process (a later test's hypothesis refused to run): turn them back on
    torch.set_flush_denormal(False)
