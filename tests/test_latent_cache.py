import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from latent_transforms import Compose, LatentAdversarial, LatentCache, LatentNoise, VarMixup
from latent_transforms.codecs import ConvVAE

from conftest import tiny_glow, tiny_vae


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    return torch.rand(40, 1, 8, 8, generator=g), torch.randint(0, 10, (40,), generator=g)


@pytest.mark.parametrize("make", [
    lambda c, **kw: LatentNoise(c, eps=2.0, **kw),
    lambda c, **kw: VarMixup(c, num_classes=10, **kw),
    lambda c, **kw: LatentAdversarial(c, steps=1, **kw),
])
@pytest.mark.parametrize("p", [1.0, 0.5])
def test_cached_path_matches_encoding_path(data, make, p, net):
    images, labels = data
    glow = tiny_glow()
    cache = LatentCache(glow, images, batch_size=16, progress=False)
    assert len(cache) == 40 and cache.latents.shape == (40, glow.latent_dim)
    idx = torch.tensor([3, 7, 11, 19, 23, 31])
    x, y = images[idx], labels[idx]
    plain = make(glow, generator=0, p=p)(x, y, net)
    cached = make(glow, generator=0, p=p, cache=cache)(x, y, net, index=idx)
    assert torch.allclose(plain[0], cached[0], atol=1e-5) and torch.equal(plain[1], cached[1])

    empty = make(glow, generator=0, p=p, cache=cache)(x[:0], y[:0], net, index=idx[:0])  # IndexError from max()
    assert empty[0].shape == (0, 1, 8, 8) and len(empty[1]) == 0

def test_cache_errors_are_named(data):
    images, labels = data
    glow = tiny_glow()
    cache = LatentCache(glow, images, progress=False)
    x, y = images[:4], labels[:4]
    with pytest.raises(ValueError, match="needs a latent cache"):
        LatentNoise(glow, generator=0)(x, y, index=torch.arange(4))
    t = LatentNoise(glow, generator=0, cache=cache)
    with pytest.raises(ValueError, match="outside \\[0, 40\\)"):
        t(x, y, index=torch.tensor([0, 1, 2, 40]))
    with pytest.raises(ValueError, match="outside \\[0, 40\\)"):  # looked up directly (mutation round 27)
        cache(torch.tensor([0, 40]))
    with pytest.raises(TypeError, match="progress must be True or False, got 'no'"):  # was a silent progress bar off
        LatentCache(glow, images, progress="no")
    with pytest.raises(ValueError, match="int64"):
        t(x, y, index=torch.arange(4).int())
    with pytest.raises(ValueError, match="batch sizes differ"):
        t(x, y, index=torch.arange(3))
    with pytest.raises(ValueError, match="another codec"):
        LatentNoise(tiny_vae(), cache=cache)
    with pytest.raises(ValueError, match="another codec"):  # same architecture, other weights
        LatentNoise(tiny_glow(seed=1), cache=cache)
    LatentNoise(tiny_glow(), cache=cache)  # another object with the same weights is fine
    for unlucky in (LatentNoise(glow, cache=cache, p=0.0), LatentNoise(glow, cache=cache).eval()):
        with pytest.raises(ValueError, match="outside \\[0, 40\\)"):  # whether or not a sample is selected
            unlucky(x, y, index=torch.tensor([0, 1, 2, 40]))
    with pytest.raises(ValueError, match="index is on meta but the cache on cpu"):  # was moved silently
        cache(torch.arange(4, device="meta"))
    elsewhere = LatentNoise(glow, cache=LatentCache(glow, images, progress=False).to("meta"), generator=0)
    with pytest.raises(ValueError, match="the latent cache is on meta but x is on cpu"):  # named before the lookup
        elsewhere(x, y, index=torch.arange(4))
    with pytest.raises(ValueError, match=r"trained on images of shape \(1, 8, 8\) \(C, H, W\), got images of shape "
                                         r"\(4, 3, 8, 8\);"):  # said "got x of shape (1, 3, 8, 8)", its first image
        LatentCache(glow, torch.rand(4, 3, 8, 8), progress=False)
    with pytest.raises(ValueError, match=r"got images of shape \(4, 8, 8, 1\); .* pass images.permute\(0, 3, 1, 2\)"):
        LatentCache(glow, torch.rand(4, 8, 8, 1), progress=False)
    with pytest.raises(ValueError, match=r"images must be a float tensor .* convert with images.float\(\) / 255"):
        LatentCache(glow, (images * 255).byte(), progress=False)  # said x.float(), naming no x
    with pytest.raises(ValueError, match=r"images must be a dense tensor, got layout torch.sparse_coo"):
        LatentCache(glow, images.to_sparse(), progress=False)  # torch's NotImplementedError for aten::aminmax
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):  # was range()'s own error
        LatentCache(glow, images, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="verify_images must be True or False"):  # "no" would read as true
        LatentCache(glow, images, progress=False, verify_images="no")


def test_cache_takes_a_hub_name_like_the_transforms():
    images = torch.rand(6, 1, 8, 8)
    cache = LatentCache("glow-digits", images, progress=False)  # was an AttributeError: 'str' has no 'check_images'
    t = LatentNoise("glow-digits", cache=cache, generator=0)
    assert torch.allclose(t(images[:2], torch.zeros(2, dtype=torch.int64), index=torch.arange(2))[0],
                          LatentNoise("glow-digits", generator=0)(images[:2], torch.zeros(2, dtype=torch.int64))[0],
                          atol=1e-5)


def test_compose_forwards_index_to_its_first_step(data):
    import kornia.augmentation as K

    from latent_transforms import Compose

    images, labels = data
    glow = tiny_glow()
    cache = LatentCache(glow, images, progress=False)
    idx = torch.tensor([5, 9, 14, 30])
    x, y = images[idx], labels[idx]
    flip = K.RandomHorizontalFlip(p=1.0)
    direct = flip(LatentNoise(glow, eps=2.0, generator=0, cache=cache)(x, y, index=idx)[0])
    composed = Compose([LatentNoise(glow, eps=2.0, generator=0, cache=cache), flip])(x, y, index=idx)[0]
    assert torch.equal(direct, composed)
    # the cache holds the images as given: a step after a pixel transform must not look them up
    with pytest.raises(ValueError, match="first step is RandomHorizontalFlip"):
        Compose([flip, LatentNoise(glow, cache=cache)])(x, y, index=idx)
    with pytest.raises(ValueError, match="batch sizes differ"):
        Compose([LatentNoise(glow, cache=cache)])(x, y, index=idx[:3])


def test_repr_is_one_line_with_the_codec_settings(data):
    images, _ = data
    glow = tiny_glow()
    t = LatentNoise(glow, eps=2.0, cache=LatentCache(glow, images, progress=False))
    assert "\n" not in repr(t)
    assert repr(t).startswith("LatentNoise(eps=2.0") and "codec=Glow(levels=" in repr(t) and "LatentCache(40)" in repr(t)
    assert "\n" not in repr(VarMixup(tiny_vae(), num_classes=10)) and "codec=ConvVAE(" in repr(VarMixup(tiny_vae(), num_classes=10))
    # the latent levels each method perturbs (only LatentNoise showed them; the codec's levels= is a level count)
    for t in (LatentNoise(glow, levels=[0]), LatentAdversarial(glow, levels=[0]), VarMixup(glow, levels=[0])):
        assert repr(t).count("levels=[0]") == 1, repr(t)
    assert "levels=" not in repr(LatentNoise(glow)).split("codec=")[0]


def test_index_looks_the_latents_up_instead_of_encoding_x(data):
    images, labels = data
    glow = tiny_glow()
    cache = LatentCache(glow, images, progress=False, verify_images=False)
    idx = torch.tensor([2, 5, 8, 13])
    modified = 1 - images[idx]  # not the cached images: the output must follow the cache, not x
    x2, _ = LatentNoise(glow, eps=0.0, cache=cache, generator=0)(modified, labels[idx], index=idx)
    assert (x2 - images[idx]).abs().max() < 1e-4
    assert (x2 - modified).abs().max() > 0.5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_images_that_are_not_the_cached_ones_are_refused(data, tmp_path, dtype):
    """x flipped or shifted by a pixel augmentation before the transform was silently replaced by the cached images
    (the augmentation lost); the cached images themselves pass, also as a 16-bit batch."""
    images, labels = data
    glow = tiny_glow()
    cache = LatentCache(glow, images, progress=False)
    idx = torch.tensor([2, 5, 8, 13])
    t = LatentNoise(glow, eps=0.5, cache=cache, generator=0)  # a batch of any float dtype, the codec in float32
    t(images[idx].to(dtype), labels[idx], index=idx)
    modified = images[idx].clone()
    modified[2] = modified[2].flip(-1)
    with pytest.raises(ValueError, match=r"x is not the images this latent cache holds at index \(row 2, position 8: "
                                         r"its signature differs by .*put it before any pixel augmentation"):
        t(modified.to(dtype), labels[idx], index=idx)
    with pytest.raises(ValueError, match="x is not the images"):  # in eval() mode too, as every input check
        t.eval()(modified.to(dtype), labels[idx], index=idx)
    cache.save(tmp_path / "c.safetensors")  # the signatures are saved with the latents
    loaded = LatentNoise(glow, eps=0.5, cache=LatentCache.load(tmp_path / "c.safetensors", glow), generator=0)
    with pytest.raises(ValueError, match="x is not the images"):
        loaded(modified, labels[idx], index=idx)
    loaded(images[idx], labels[idx], index=idx)


def test_the_cached_images_in_16_bits_pass_the_image_check_also_at_cifar_size():
    """The signatures are projections on random signs / sqrt(pixels), of the scale of one pixel whatever the image
    size: a 16-bit copy of a cached 3x32x32 batch (its rounding summed over 3,072 pixels) is still the cached images."""
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    glow = tiny_glow(shape=(3, 32, 32), levels=1)
    cache, idx = LatentCache(glow, images, progress=False), torch.arange(4)
    x2 = LatentNoise(glow, eps=0.5, cache=cache, generator=0)(images, index=idx)[0]
    for dtype in (torch.bfloat16, torch.float16):  # and transformed from the cached latents, as the images themselves
        assert torch.equal(LatentNoise(glow, eps=0.5, cache=cache, generator=0)(images.to(dtype), index=idx)[0],
                           x2.to(dtype))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_16_bit_copy_whose_rounding_all_goes_one_way_is_still_the_cached_images(dtype):
    """A 16-bit batch's signatures may differ by 4 of its eps: each pixel in [0.5, 1) rounds by up to eps / 4, so an
    8x8 image whose roundings all follow a projection's signs moves it by up to sqrt(64) x eps / 4 = 2 eps (here by
    1.6 eps, which a tolerance of 1 eps refused as other images)."""
    from latent_transforms.latent_cache import _projection

    eps, signs = torch.finfo(dtype).eps, _projection(64)[:, 0].sign().view(1, 1, 8, 8)
    images = 0.75 + 0.2 * eps * torch.cat([signs, -signs])  # 0.75 in 16 bits: the nearest to each pixel
    x = images.to(dtype)
    assert (x == 0.75).all()
    moved = ((images - x.float()).flatten(1) @ _projection(64)).abs().amax(1)
    assert torch.allclose(moved, torch.tensor(1.6 * eps), rtol=1e-3)  # between eps and 4 eps
    glow = tiny_glow()
    LatentNoise(glow, cache=LatentCache(glow, images, progress=False), generator=0)(x, index=torch.arange(2))


def test_a_cache_of_an_unfrozen_codec_holds_latents_without_autograd_history(data):
    """A codec of one's own that was not frozen has parameters that require gradients: encoding the whole set with
    them recorded would keep every chunk's graph alive with the cache."""
    images, _ = data
    torch.manual_seed(0)
    cache = LatentCache(ConvVAE((1, 8, 8), latent_dim=4, hidden=8), images, batch_size=16, progress=False)
    assert not cache.latents.requires_grad and cache.latents.grad_fn is None


def test_a_cached_transform_given_images_of_another_shape_and_an_index_names_the_codecs_shape(data):
    """The image check (the cache's projections of 64 pixels) is left out for images the codec refuses anyway: they
    get its message, not a broadcasting error."""
    images, labels = data
    glow = tiny_glow()
    t = LatentNoise(glow, cache=LatentCache(glow, images, progress=False))
    with pytest.raises(ValueError, match=r"trained on images of shape \(1, 8, 8\) \(C, H, W\), got x of shape "
                                         r"\(4, 1, 16, 16\)"):
        t(torch.rand(4, 1, 16, 16), labels[:4], index=torch.arange(4))


def test_cache_latents_live_on_the_requested_device(data, tmp_path):
    images, _ = data
    cache = LatentCache(tiny_glow(), images[:5], batch_size=2, device="meta", progress=False)
    assert cache.latents.device.type == "meta" and cache.latents.shape == (5, tiny_glow().latent_dim)
    # LatentCache.load's device= too, the image signatures with the latents (mutation round 366: load went untested)
    path = tmp_path / "cache.safetensors"
    LatentCache(tiny_glow(), images[:5], progress=False).save(path)
    loaded = LatentCache.load(path, tiny_glow(), device="meta")
    assert loaded.latents.device.type == loaded._image_signatures.device.type == "meta"
    assert loaded.latents.shape == (5, tiny_glow().latent_dim)


def test_a_cache_of_a_float64_codec_holds_float64_latents_and_looks_up_checked_positions(data):
    images, _ = data
    cache = LatentCache(tiny_glow().double(), images[:6].double(), batch_size=4, progress=False)
    assert cache.latents.dtype == torch.float64  # as the codec: a transform refuses latents of another dtype
    assert torch.equal(cache(torch.tensor([5, 0])), cache.latents[[5, 0]])
    with pytest.raises(ValueError, match=r"index has positions outside \[0, 6\): min 0, max 6"):
        cache(torch.tensor([0, 6]))  # called directly, the cache checks the positions itself


@pytest.mark.parametrize("n", [17, 33, 16, 1])
def test_cache_encodes_every_image_whatever_the_batch_size(data, n):
    images, _ = data
    glow = tiny_glow()
    cache = LatentCache(glow, images[:n], batch_size=16, progress=False)
    assert len(cache) == n
    with torch.no_grad():
        assert torch.allclose(cache.latents[-1], glow.encode_flat(images[n - 1:n])[0], atol=1e-5)
        assert torch.allclose(cache.latents, glow.encode_flat(images[:n]), atol=1e-5)


def test_a_cache_shows_its_encoding_bar_only_when_asked(data, capsys):
    # mutation round (audit 377): no test read the bar, so progress=False could have shown it (and True hidden it)
    images, _ = data
    glow = tiny_glow()
    LatentCache(glow, images, batch_size=16, progress=False)
    assert capsys.readouterr().err == ""
    LatentCache(glow, images, batch_size=16)
    assert "encoding" in capsys.readouterr().err


def test_a_cache_saved_and_loaded_at_a_path_in_the_home_folder_is_there(data, tmp_path, monkeypatch):
    # "~/cache.safetensors" was taken literally: "the directory ~ does not exist", and load found no file
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    cache = LatentCache(tiny_glow(), data[0][:4], progress=False)
    cache.save("~/cache.safetensors")
    assert torch.equal(LatentCache.load("~/cache.safetensors", tiny_glow()).latents, cache.latents)
    assert (tmp_path / "cache.safetensors").is_file() and not (tmp_path / "~").exists()


def test_cache_saves_loads_and_keeps_its_codec_identity(data, tmp_path):
    images, labels = data
    glow, other = tiny_glow(), tiny_glow(seed=1)
    cache = LatentCache(glow, images, progress=False)
    path = tmp_path / "cache.safetensors"
    cache.save(path)
    loaded = LatentCache.load(path, glow)
    assert torch.equal(loaded.latents, cache.latents) and loaded._codec_fingerprint == cache._codec_fingerprint
    x, y, idx = images[:4], labels[:4], torch.arange(4)
    assert torch.equal(LatentNoise(glow, cache=loaded, generator=0)(x, y, index=idx)[0],
                       LatentNoise(glow, cache=cache, generator=0)(x, y, index=idx)[0])
    with pytest.raises(ValueError, match=rf"was encoded with another codec than the one given \(fingerprint "
                                         rf"{glow.fingerprint()[:12]}, the codec's {other.fingerprint()[:12]}\)$"):
        LatentCache.load(path, other)  # both named (mutation round 352: the given codec's went unchecked)
    with pytest.raises(ValueError, match="verify_images must be True or False"):  # "no" would read as true
        LatentCache.load(path, glow, verify_images="no")
    path.with_name("cut.safetensors").write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="cut.safetensors is not a readable latent cache"):
        LatentCache.load(path.with_name("cut.safetensors"), glow)
    # a state_dict carries the codec's fingerprint: another codec's latents loaded into a cache are refused
    t = LatentNoise(other, cache=LatentCache(other, images, progress=False), generator=0)
    t.cache.load_state_dict(cache.state_dict())  # was accepted and used silently
    with pytest.raises(ValueError, match="encoded with another codec than this transform's"):
        t(x, y, index=idx)
    with pytest.raises(ValueError, match="encoded with another codec than this transform's"):
        LatentNoise(other, cache=LatentCache(other, images, progress=False)).load_state_dict(
            {**t.state_dict(), **{f"cache.{k}": v for k, v in cache.state_dict().items()}})
    t.load_state_dict(LatentNoise(glow, cache=cache).state_dict())  # codec and cache together: consistent
    assert torch.equal(t(x, y, index=idx)[0], LatentNoise(glow, cache=cache, generator=0)(x, y, index=idx)[0])


def test_a_cast_cached_transform_keeps_its_cache(data, tmp_path):
    """The fingerprint hashed the weights' dtype: after .double(), a cached transform's state_dict round trip said
    the cache came from another codec, and a float32 cache file could not be loaded for the float64 codec."""
    images, labels = data
    glow = tiny_glow()
    cache = LatentCache(glow, images, progress=False)
    t = LatentNoise(glow, cache=cache, generator=0).double()
    assert glow.double().fingerprint() == tiny_glow().fingerprint()  # the same weights, held in float64
    t.load_state_dict(t.state_dict())
    fresh = LatentNoise(tiny_glow(), cache=LatentCache(tiny_glow(), images, progress=False)).double()
    fresh.load_state_dict(t.state_dict())
    x, idx = images[:4].double(), torch.arange(4)
    assert t(x, labels[:4], index=idx)[0].dtype == torch.float64
    cache.float().save(tmp_path / "cache.safetensors")
    loaded = LatentCache.load(tmp_path / "cache.safetensors", glow)  # glow is float64 now
    assert loaded.latents.dtype == torch.float64
    LatentNoise(glow, cache=loaded)(x, labels[:4], index=idx)
    # only a cache cast apart from its codec is refused, naming both dtypes
    t.cache.float()
    with pytest.raises(ValueError, match="holds torch.float32 latents but the codec is torch.float64"):
        t(x, labels[:4], index=idx)
    other = tiny_glow().double()
    other.load_state_dict({k: v + 1e-12 for k, v in other.state_dict().items()})  # not float32 numbers any more
    assert other.fingerprint() != tiny_glow().fingerprint()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_cast_to_16_bits_keeps_the_latents_and_the_image_signatures_whole(data, dtype):
    """.half() rounded the image signatures: a cached transform blamed the images ("x is not the images this latent
    cache holds"), and after .half().float() the cache refused its own images for good. Then it cast the codec, which
    was refused, and the latents; now the codec and the latents keep their dtype (the transform takes latents of its
    codec's dtype only), and the cast transform gives the uncast one's outputs."""
    images, labels = data
    x, y, idx = images[:4], labels[:4], torch.arange(4)

    def cached():
        glow = tiny_glow()
        return LatentNoise(glow, cache=LatentCache(glow, images, progress=False), generator=0)

    cast, uncast = cached().to(dtype), cached()
    assert cast.cache.latents.dtype == torch.float32 and torch.equal(cast.cache.latents, uncast.cache.latents)
    for batch in (x, x.to(dtype)):
        assert torch.equal(cast(batch, y, index=idx)[0], uncast(batch, y, index=idx)[0])
    cache = LatentCache(tiny_glow(), images, progress=False).half().float()
    assert cache._image_signatures.dtype == cache._image_projection.dtype == torch.float32
    doubled = LatentCache(tiny_glow(), images, progress=False).double()  # they stay float32 there too (round 27)
    assert doubled.latents.dtype == torch.float64
    assert doubled._image_signatures.dtype == doubled._image_projection.dtype == torch.float32
    LatentNoise(tiny_glow(), cache=cache, generator=0)(x, y, index=idx)  # its own images: accepted
    with pytest.raises(ValueError, match="x is not the images"):
        LatentNoise(tiny_glow(), cache=cache, generator=0)(x.flip(3), y, index=idx)


def test_a_module_cast_to_16_bits_for_inference_still_loads_its_state_dict(data):
    # the 16-bit check ran before the fingerprint's: weights a float16 file holds exactly (its fingerprint matches)
    # made load_state_dict of a .half().eval() module fail, where the transform is the identity anyway
    images, _ = data

    def build():
        glow = tiny_glow()
        with torch.no_grad():
            for t in glow.state_dict().values():
                if t.is_floating_point():
                    t.copy_(t.half().float())
        return torch.nn.ModuleDict({"augment": LatentNoise(glow, cache=LatentCache(glow, images, progress=False))})

    state = build().state_dict()
    build().half().eval().load_state_dict(state)


@pytest.mark.parametrize("make", [
    lambda c, cache: LatentNoise(c, eps=2.0, cache=cache),
    lambda c, cache: VarMixup(c, num_classes=10, cache=cache),
])
def test_an_index_given_in_the_model_slot_is_refused(data, make):
    """t(x, y, idx) puts the dataset positions in model's place: a method that does not use the model ignored them,
    and its cache with them (out-of-range positions passed too)."""
    images, labels = data
    glow = tiny_glow()
    cache = LatentCache(glow, images, progress=False)
    idx = torch.tensor([2, 5, 8, 13])
    with pytest.raises(TypeError, match="index=idx"):
        make(glow, cache)(images[idx], labels[idx], idx)
    with pytest.raises(TypeError, match="index=idx"):  # a Compose too, whose first step would take index=
        Compose([make(glow, cache)], num_classes=10)(images[idx], labels[idx], idx)


def test_building_a_cache_holds_one_encoded_chunk_at_a_time(data):
    """The cache is N x D floats: building it kept every encoded chunk alive until a final torch.cat (a transient
    second copy of the whole cache: 0.6 GB more for CIFAR-10, on the GPU for a GPU codec)."""
    import weakref

    images, _ = data
    glow = tiny_glow()
    encode, chunks, alive = glow.encode_flat, [], []

    def recording(x, **kwargs):
        alive.append(sum(r() is not None for r in chunks))  # chunks still alive when the next one is encoded
        out = encode(x, **kwargs)
        chunks.append(weakref.ref(out))
        return out

    glow.encode_flat = recording
    cache = LatentCache(glow, images, batch_size=8, progress=False)
    assert len(cache) == len(images) and len(alive) == 5
    with torch.no_grad():
        assert torch.allclose(cache.latents, encode(images), atol=1e-5)
    assert max(alive) <= 1, alive


def test_loading_a_cache_names_a_missing_file_and_refuses_latents_it_cannot_use(data, tmp_path):
    """A missing file was a plain ValueError (the hub's is a FileNotFoundError); NaN latents with the right fingerprint
    loaded silently (every augmented sample then rejected) and integer ones failed at the first call."""
    from safetensors.torch import save_file

    from latent_transforms.latent_cache import FORMAT

    glow = tiny_glow()
    with pytest.raises(FileNotFoundError, match="no latent cache file at") as e:
        LatentCache.load(tmp_path / "nope.safetensors", glow)
    assert isinstance(e.value, ValueError)  # as every other unusable file: `except ValueError` still catches it
    with pytest.raises(TypeError, match="verify_images must be True or False, got 'no'"):  # before the file is read
        LatentCache.load(tmp_path / "nope.safetensors", glow, verify_images="no")  # (mutation round 27)
    for latents, what in ((torch.full((6, glow.latent_dim), float("nan")), "with NaN or inf"),
                          (torch.zeros(6, glow.latent_dim, dtype=torch.int64), "torch.int64"),
                          # finite in float64, inf once cast to the codec's float32: was loaded as inf latents
                          (torch.full((6, glow.latent_dim), 1e300, dtype=torch.float64),
                           "torch.float64 with entries beyond the range of torch.float32, the codec's dtype")):
        path = tmp_path / "c.safetensors"
        save_file({"latents": latents}, str(path), metadata={"format": FORMAT, "codec_fingerprint": glow.fingerprint()})
        with pytest.raises(ValueError, match=f"c.safetensors: the latents must be finite floats, got .*{what}"):
            LatentCache.load(path, glow)
    with pytest.raises(TypeError, match="cache must be a LatentCache"):  # was an AttributeError at construction
        LatentNoise(glow, cache=torch.zeros(3, glow.latent_dim))
    with pytest.raises(ValueError, match="device must be cpu, cuda, cuda:N, got 'bogus'"):
        LatentCache(glow, data[0], device="bogus")


def test_a_codec_changed_after_the_transform_was_built_is_noticed(data):
    """The fingerprint was taken once: weights loaded in place, or another codec assigned, decoded the old latents
    (max change 0.94 at eps=0); a cache attached after construction was refused as 'another codec'."""
    images, labels = data
    glow = tiny_glow()
    cache = LatentCache(glow, images, progress=False)
    x, y, idx = images[:4], labels[:4], torch.arange(4)
    t = LatentNoise(glow, eps=0.0, cache=cache, generator=0)
    glow.load_state_dict(tiny_glow(seed=1).state_dict())
    with pytest.raises(ValueError, match="encoded with another codec than this transform's"):
        t(x, y, index=idx)
    t = LatentNoise(tiny_glow(), eps=0.0, cache=LatentCache(tiny_glow(), images, progress=False), generator=0)
    with pytest.raises(ValueError, match="encoded with another codec than this transform's"):
        t.codec = tiny_glow(seed=1)  # refused as assigned (audit 208), as the constructor refuses the pair
    late = LatentNoise(tiny_glow(), eps=0.0, generator=0)
    late.cache = LatentCache(late.codec, images, progress=False)  # attached after construction: accepted
    assert (late(x, y, index=idx)[0] - x).abs().max() < 1e-4


def _new_data(glow):
    vector = torch.nn.utils.parameters_to_vector(glow.parameters())
    torch.nn.utils.vector_to_parameters(vector + 0.1, glow.parameters())  # p.data = ...: new storage, same counters


def _swapped(glow):
    for p, q in zip(glow.parameters(), tiny_glow(seed=1).parameters()):  # a twin's: its counters are the same
        torch.utils.swap_tensors(p, q)


def _actnorm_reset(glow):
    for name, flag in glow.named_buffers():
        if name.endswith("data_dep_init_done"):
            flag.zero_()  # the next batch would initialise the ActNorms anew


@pytest.mark.parametrize("change", [_new_data, _swapped, lambda glow: setattr(glow, "alpha", 0.01), _actnorm_reset],
                         ids=["vector_to_parameters", "swap_tensors", "alpha", "buffer"])
def test_a_codec_changed_under_a_live_cache_is_noticed(data, change):
    """When to fingerprint the codec again was told by its weights' version counters only: weights given new storage
    (``p.data = ...``, as ``vector_to_parameters`` does; ``swap_tensors``) or a setting that changes the encoding (a
    Glow's ``alpha``) moved none, and the old latents were decoded by the changed codec (latents off by 12 with a
    twin's weights). A buffer's counter is read too."""
    images, labels = data
    glow = tiny_glow()
    t = LatentNoise(glow, eps=0.0, cache=LatentCache(glow, images[:4], progress=False), generator=0)
    change(glow)
    with pytest.raises(ValueError, match="encoded with another codec than this transform's"):
        t(images[:4], labels[:4], index=torch.arange(4))


def test_assigning_the_codec_again_after_a_write_through_data_refuses_the_cache_in_one_error(data):
    """docs/composition.md: after a write through ``.data`` (which moves no version counter), ``t.codec = t.codec``
    fingerprints the codec now. The refusal came twice, chained ("During handling of the above exception, another
    exception occurred"): putting the codec before back ran into the same refusal (audit 406). One error now; the
    codec stays, and the transform refuses the stale cache from then on."""
    images, labels = data
    glow = tiny_glow()
    t = LatentNoise(glow, eps=0.0, cache=LatentCache(glow, images[:4], progress=False), generator=0)
    with torch.no_grad():
        next(glow.parameters()).data.add_(0.1)
    with pytest.raises(ValueError, match="encoded with another codec than this transform's") as refused:
        t.codec = t.codec
    assert refused.value.__context__ is None and refused.value.__cause__ is None
    assert t.codec is glow
    with pytest.raises(ValueError, match="encoded with another codec than this transform's"):
        t(images[:4], labels[:4], index=torch.arange(4))


def test_a_cache_of_an_untrained_glow_matches_the_glow_it_initialised(data):
    """The fingerprint was taken before encoding, whose first chunk initialises an untrained Glow's ActNorm layers:
    every transform then refused the cache."""
    from latent_transforms.codecs import Glow

    images, labels = data
    torch.manual_seed(0)
    glow = Glow((1, 8, 8), levels=2, steps=2, hidden=16, num_bins=17)
    cache = LatentCache(glow, images, batch_size=8, progress=False)
    assert cache._codec_fingerprint == glow.fingerprint()
    LatentNoise(glow, eps=1.0, cache=cache, generator=0)(images[:4], labels[:4], index=torch.arange(4))


def test_compose_in_eval_checks_the_index_range_as_its_first_step_does(data):
    images, labels = data
    glow = tiny_glow()
    step = LatentNoise(glow, cache=LatentCache(glow, images[:10], progress=False))
    bad = torch.tensor([0, 99])
    for t in (step.eval(), Compose([step]).eval()):  # the Compose accepted it
        with pytest.raises(ValueError, match=r"outside \[0, 10\)"):
            t(images[:2], labels[:2], index=bad)


def test_a_flipped_bit_in_a_saved_cache_is_refused(data, tmp_path):
    images, _ = data
    glow = tiny_glow()
    LatentCache(glow, images, progress=False).save(tmp_path / "c.safetensors")
    raw = bytearray((tmp_path / "c.safetensors").read_bytes())
    raw[-5] ^= 0x01  # in the latents' bytes: loaded silently before (latents off by up to 1.1)
    (tmp_path / "d.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="d.safetensors: the latents do not match the sha256 saved with them"):
        LatentCache.load(tmp_path / "d.safetensors", glow)
    assert len(LatentCache.load(tmp_path / "c.safetensors", glow)) == len(images)


_SAVED_GLOW = tiny_glow()
_SAVED_CACHE = LatentCache(_SAVED_GLOW, torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)),
                           progress=False)


@settings(max_examples=40)
@given(cut=st.none() | st.floats(0, 1, exclude_max=True), flip=st.tuples(st.floats(0, 1, exclude_max=True),
                                                                          st.integers(0, 7)))
def test_a_damaged_cache_file_is_loaded_whole_or_refused_by_name(tmp_path_factory, cut, flip):
    """Audit 167's fuzzing of saved caches, kept small: a file cut anywhere, or with any one bit flipped (header,
    metadata or tensors), loads as the cache that was saved or raises a ValueError naming the file; never another
    cache, nor safetensors' or torch's own error."""
    path = tmp_path_factory.mktemp("cache") / "c.safetensors"
    _SAVED_CACHE.save(path)
    raw = bytearray(path.read_bytes())
    if cut is None:
        raw[int(flip[0] * len(raw))] ^= 1 << flip[1]
    else:
        raw = raw[:int(cut * len(raw))]
    path.write_bytes(bytes(raw))
    try:
        loaded = LatentCache.load(path, _SAVED_GLOW)
    except ValueError as e:
        assert str(e).startswith(str(path)), e
        return
    assert torch.equal(loaded.latents, _SAVED_CACHE.latents)
    assert torch.equal(loaded._image_signatures, _SAVED_CACHE._image_signatures)


def test_a_loaded_state_dict_brings_its_images_signatures():
    # the signatures stayed those of the images the cache was built on: the images of the loaded latents were
    # refused, and the old images accepted, silently decoding the other images' latents
    glow = tiny_glow()
    a, b = (torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(s)) for s in (0, 1))
    cache_a, cache_b = LatentCache(glow, a, progress=False), LatentCache(glow, b, progress=False)
    assert set(cache_a.state_dict()) == {"latents", "_extra_state"}  # the signatures in the extra state only (round 27)
    cache_b.load_state_dict(cache_a.state_dict())
    t = LatentNoise(glow, eps=0.0, cache=cache_b, generator=0)
    idx, y = torch.arange(4), torch.arange(4)
    assert (t(a[:4], y, index=idx)[0] - a[:4]).abs().max() < 1e-4
    with pytest.raises(ValueError, match="not the images this latent cache holds at index"):
        t(b[:4], y, index=idx)
    old = {k: v for k, v in cache_a.state_dict().items()}  # a state from before signatures were in it: not checked
    old["_extra_state"] = {"codec_fingerprint": cache_a._codec_fingerprint}
    cache_b.load_state_dict(old)
    assert cache_b._image_signatures is None
    with pytest.raises(ValueError, match=r"signatures must be \(12, 2\) for 12 latents, got shape \(3, 2\)"):
        cache_b.load_state_dict({**old, "_extra_state": {**old["_extra_state"], "signatures": torch.zeros(3, 2)}})
    # the loaded latents' codec comes with them (mutation round 27: the old fingerprint stayed, and a transform took
    # the loaded latents of another codec's as its own)
    other = LatentCache(tiny_glow(seed=1), b, progress=False)
    other.load_state_dict(cache_a.state_dict())
    assert other._codec_fingerprint == glow.fingerprint() != tiny_glow(seed=1).fingerprint()
    LatentNoise(glow, cache=other)


def test_a_state_dict_of_other_images_is_refused_naming_both_shapes():
    """Checkpoint audit 287: the state of a cache of 12 images loaded into one of 5 raised "signatures must be (5, 2)
    for 5 latents, got shape (12, 2)", from the extra state, which hid torch's size mismatch on the latents."""
    glow, x = tiny_glow(), torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    twelve, five = LatentCache(glow, x, progress=False), LatentCache(glow, x[:5], progress=False)
    before = five.latents.clone(), five._image_signatures.clone()
    for load, prefix in ((five.load_state_dict, ""),
                         (LatentNoise(glow, cache=five).load_state_dict, "cache.")):  # in a transform too
        state = LatentNoise(glow, cache=twelve).state_dict() if prefix else twelve.state_dict()
        with pytest.raises(RuntimeError, match=rf"\t{prefix}latents: this state holds \(12, 64\) \(N images, D latent "
                                               rf"values\), this cache \(5, 64\): build the cache over the images"):
            load(state, strict=False)
    state = five.state_dict()  # as many images, another latent width (mutation round 44: torch's size mismatch)
    state["latents"] = torch.zeros(5, 32)
    with pytest.raises(RuntimeError, match=r"\tlatents: this state holds \(5, 32\) \(N images, D latent values\), "
                                           r"this cache \(5, 64\)"):
        five.load_state_dict(state, strict=False)
    assert torch.equal(five.latents, before[0]) and torch.equal(five._image_signatures, before[1])


def test_a_state_without_the_caches_entries_names_them_missing_and_leaves_the_cache_as_it_was():
    """Mutation round (audit 377): a transform's state saved without a cache, loaded into one with a cache, must name
    the cache's missing keys, as torch does for any module (the latents' checks read the absent entry's shape)."""
    glow, x = tiny_glow(), torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    cache = LatentCache(glow, x, progress=False)
    t, before = LatentNoise(glow, cache=cache), cache.latents.clone()
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "cache.latents", "cache._extra_state"'):
        t.load_state_dict(LatentNoise(glow).state_dict())
    assert t.load_state_dict(LatentNoise(glow).state_dict(), strict=False).missing_keys == ["cache.latents",
                                                                                           "cache._extra_state"]
    assert torch.equal(cache.latents, before)


def test_latents_beyond_float16s_largest_value_are_kept_whole_or_refused_never_taken_as_inf(data, tmp_path):
    """A cache stores its latents in the codec's dtype: 1e5, past float16's largest value (65504), survives a .half()
    and a save/load. A 16-bit copy of them (a checkpoint halved to save space) holds inf: LatentCache.load refused
    such a file, but load_state_dict copied the inf latents in silently, as it did NaN ones and float64 ones past
    float32's range; now it refuses them by name and loads nothing of the cache."""
    from safetensors.torch import save_file

    from latent_transforms.latent_cache import FORMAT

    glow, images = tiny_glow(), data[0][:6]
    cache = LatentCache(glow, images, progress=False)
    with torch.no_grad():
        cache.latents[0, 0] = 1e5
    assert cache.half().latents.dtype == torch.float32 and cache.latents[0, 0] == 1e5
    cache.save(tmp_path / "c.safetensors")
    assert LatentCache.load(tmp_path / "c.safetensors", glow).latents[0, 0] == 1e5
    state = cache.state_dict()
    half = state["latents"].half()
    assert half[0, 0] == float("inf")
    target = LatentCache(glow, data[0][6:12], progress=False)  # other images: nothing of the state may arrive
    before = target.latents.clone(), target._image_signatures.clone(), target._codec_fingerprint
    transform = LatentNoise(glow, cache=target)
    for latents, what in (
            (half, r"torch.float16 with NaN or inf entries \(a copy in torch.float16 stores latents beyond 65504 as "
                   r"inf: keep them in the codec's dtype\)"),
            (torch.full_like(state["latents"], float("nan"), dtype=torch.float16),  # NaN: no word of 65504
             r"torch.float16 with NaN or inf entries"),
            (torch.full_like(state["latents"], 1e300, dtype=torch.float64),
             r"torch.float64 with entries beyond the range of torch.float32, the codec's dtype")):
        for load, prefix in ((target.load_state_dict, ""), (transform.load_state_dict, "cache.")):
            with pytest.raises(RuntimeError, match=rf"\t{prefix}latents: the latents must be finite floats, got "
                                                   rf"{what}; nothing of this cache was loaded"):
                load({f"{prefix}latents": latents, f"{prefix}_extra_state": state["_extra_state"]}, strict=False)
            assert torch.equal(target.latents, before[0]) and torch.equal(target._image_signatures, before[1])
            assert target._codec_fingerprint == before[2]
    path = tmp_path / "half.safetensors"  # the same copy in a file: refused as before, now saying why it holds inf
    save_file({"latents": half}, str(path), metadata={"format": FORMAT, "codec_fingerprint": glow.fingerprint()})
    with pytest.raises(ValueError, match=r"half.safetensors: the latents must be finite floats, got torch.float16 with "
                                         r"NaN or inf entries \(a copy in torch.float16 stores latents beyond 65504"):
        LatentCache.load(path, glow)
    finite = state["latents"].clone()
    finite[0, 0] = 1.0
    target.load_state_dict({**state, "latents": finite.half()})  # finite 16-bit latents load, in the codec's dtype
    assert target.latents.dtype == torch.float32 and torch.equal(target.latents, finite.half().float())


def test_a_cache_file_saved_without_image_signatures_is_used_unchecked_and_saved_again_without_them(data, tmp_path):
    # a file written before 2026-12-02 holds the latents only: its images are not checked, and saved again it
    # holds the latents only (no branch of the suite loaded such a file for a call, nor saved one)
    from latent_transforms import hub
    from latent_transforms.latent_cache import FORMAT

    images, labels = data
    glow = tiny_glow()
    cache = LatentCache(glow, images, progress=False)
    hub.write_safetensors(tmp_path / "old.safetensors", {"latents": cache.latents.contiguous()},
                          {"format": FORMAT, "codec_fingerprint": glow.fingerprint()})
    old = LatentCache.load(tmp_path / "old.safetensors", glow)
    assert old._image_signatures is None
    x2, _ = LatentNoise(glow, eps=0.0, cache=old, generator=0)(1 - images[:4], labels[:4], index=torch.arange(4))
    assert (x2 - images[:4]).abs().max() < 1e-4  # the cached images' latents, whatever x holds
    old.save(tmp_path / "again.safetensors")
    again = LatentCache.load(tmp_path / "again.safetensors", glow)
    assert again._image_signatures is None and torch.equal(again.latents, cache.latents)


def test_nan_image_signatures_are_refused_when_a_cache_is_loaded(data, tmp_path):
    # NaN signatures (with a consistent checksum) loaded, and `worst > tolerance` is False for NaN: the image check
    # then passed every batch, another dataset's images included
    from latent_transforms import hub
    from latent_transforms.latent_cache import FORMAT

    images, _ = data
    glow = tiny_glow()
    cache = LatentCache(glow, images, progress=False)
    tensors = {"latents": cache.latents.contiguous(), "signatures": torch.full((len(images), 2), float("nan"))}
    hub.write_safetensors(tmp_path / "c.safetensors", tensors, {"format": FORMAT, **hub.checksum_metadata(tensors),
                                                                "codec_fingerprint": glow.fingerprint()})
    with pytest.raises(ValueError, match="c.safetensors: the image signatures must be finite floats"):
        LatentCache.load(tmp_path / "c.safetensors", glow)
    # in memory: the check refuses, never passes
    cache._image_signatures = torch.full_like(cache._image_signatures, float("nan"))
    with pytest.raises(ValueError, match="x is not the images this latent cache holds"):
        LatentNoise(glow, eps=2.0, cache=cache)(images[:4], index=torch.arange(4))


def test_a_loaded_caches_image_signatures_are_float32_as_a_built_ones(data, tmp_path):
    """A file's float64 signatures stayed float64 (a .double() or a state round trip kept or changed them), and 16-bit
    ones loaded, then refused the cached images themselves ("its signature differs by 0.00011")."""
    from latent_transforms import hub
    from latent_transforms.latent_cache import FORMAT

    images, _ = data
    glow = tiny_glow()
    cache = LatentCache(glow, images, progress=False)
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        tensors = {"latents": cache.latents.contiguous(), "signatures": cache._image_signatures.to(dtype)}
        hub.write_safetensors(tmp_path / "c.safetensors", tensors, {
            "format": FORMAT, **hub.checksum_metadata(tensors), "codec_fingerprint": glow.fingerprint()})
        if dtype == torch.float64:
            loaded = LatentCache.load(tmp_path / "c.safetensors", glow)
            assert loaded._image_signatures.dtype == torch.float32
            assert torch.equal(loaded._image_signatures, cache._image_signatures)
            LatentNoise(glow, eps=0.0, cache=loaded, generator=0)(images, index=torch.arange(len(images)))
            state = cache.state_dict()  # float64 in a state too (one saved when .double() cast the signatures)
            state["_extra_state"] = {**state["_extra_state"], "signatures": tensors["signatures"]}
            loaded.load_state_dict(state)
            assert loaded._image_signatures.dtype == torch.float32  # mutation round 352: it stayed float64
        else:
            with pytest.raises(ValueError, match=f"c.safetensors: the image signatures must be finite floats of 32 "
                                                 f"or 64 bits .* refuse the cached images themselves.*{dtype}"):
                LatentCache.load(tmp_path / "c.safetensors", glow)


def test_saving_a_cache_where_it_cannot_be_written_names_the_file(data, tmp_path, monkeypatch):
    # the error named the hidden temp file ".c.safetensors.a_crktpi.part" (a full disk: no path at all)
    import tempfile

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", full)
    with pytest.raises(OSError, match=r"cannot write .*c\.safetensors \(No space left on device\)") as e:
        LatentCache(tiny_glow(), data[0], progress=False).save(tmp_path / "c.safetensors")
    assert ".part" not in str(e.value)


def test_an_index_that_is_not_a_tensor_is_a_type_error(data):
    # a list or an array of positions was a ValueError, where a list for x or y is a TypeError
    import numpy as np

    images, _ = data
    t = LatentNoise(tiny_glow(), eps=2.0, cache=LatentCache(tiny_glow(), images, progress=False))
    for index in ([0, 1, 2, 3], np.arange(4)):
        with pytest.raises(TypeError, match="index must be a .B,. int64 tensor of dataset positions, got"):
            t(images[:4], index=index)


@pytest.mark.parametrize("metadata", [{}, {"format": "latent-transforms/1"}, {"format": "latent-transforms-latent-cache/2"}])
def test_a_file_of_latents_in_another_format_is_not_taken_for_a_latent_cache(tmp_path, metadata):
    from safetensors.torch import save_file

    glow = tiny_glow()
    path = tmp_path / "c.safetensors"
    save_file({"latents": torch.zeros(6, glow.latent_dim)}, str(path),
              metadata={**metadata, "codec_fingerprint": glow.fingerprint()})
    with pytest.raises(ValueError, match="c.safetensors is not a latent cache written by LatentCache.save"):
        LatentCache.load(path, glow)


@pytest.mark.parametrize("extra", [{"images": torch.zeros(6, 64)}, {"signatures": torch.zeros(6, 2), "images": torch.zeros(1)}])
def test_a_file_in_the_cache_format_holding_other_tensors_is_not_taken_for_a_latent_cache(tmp_path, extra):
    from safetensors.torch import save_file

    from latent_transforms.latent_cache import FORMAT

    glow = tiny_glow()
    path = tmp_path / "c.safetensors"
    save_file({"latents": torch.zeros(6, glow.latent_dim), **extra}, str(path),
              metadata={"format": FORMAT, "codec_fingerprint": glow.fingerprint()})
    with pytest.raises(ValueError, match="c.safetensors is not a latent cache written by LatentCache.save"):
        LatentCache.load(path, glow)


@pytest.mark.parametrize("shape", [(6, 1), (6, 1, 0)])  # + D at the end: (6, D + 1), and (6, 1, D), not (N, D)
def test_a_loaded_cache_of_another_latent_width_is_refused_even_with_the_codecs_fingerprint(tmp_path, shape):
    from safetensors.torch import save_file

    from latent_transforms.latent_cache import FORMAT

    glow = tiny_glow()
    shape = (*shape[:-1], shape[-1] + glow.latent_dim)
    path = tmp_path / "c.safetensors"
    save_file({"latents": torch.zeros(shape)}, str(path),
              metadata={"format": FORMAT, "codec_fingerprint": glow.fingerprint()})
    with pytest.raises(ValueError, match=rf"c.safetensors: latents must be \(N, {glow.latent_dim}\) for this codec's "
                                         rf"{glow.latent_dim} latent dimensions, got shape {re.escape(str(shape))}"):
        LatentCache.load(path, glow)


def test_a_cache_loaded_with_verify_images_off_uses_its_latents_whatever_x_holds(data, tmp_path):
    images, labels = data
    glow = tiny_glow()
    LatentCache(glow, images, progress=False).save(tmp_path / "c.safetensors")  # saved with its image signatures
    idx = torch.tensor([2, 5, 8, 13])
    modified = 1 - images[idx]
    unchecked = LatentCache.load(tmp_path / "c.safetensors", glow, verify_images=False)
    assert unchecked.verify_images is False
    x2, _ = LatentNoise(glow, eps=0.0, cache=unchecked, generator=0)(modified, labels[idx], index=idx)
    assert (x2 - images[idx]).abs().max() < 1e-4  # the cached images' latents, no refusal
    with pytest.raises(ValueError, match="x is not the images"):  # the default still checks
        LatentNoise(glow, eps=0.0, cache=LatentCache.load(tmp_path / "c.safetensors", glow), generator=0)(
            modified, labels[idx], index=idx)


def test_a_cache_file_whose_signatures_do_not_fit_its_latents_is_refused(data, tmp_path):
    """Signatures for fewer images than latents (a consistent checksum) are named when loaded, not met at a call."""
    from latent_transforms import hub
    from latent_transforms.latent_cache import FORMAT

    images, _ = data
    glow = tiny_glow()
    cache = LatentCache(glow, images, progress=False)
    n = len(images)
    # one signature a row passed too (mutation round 44: only the rows were compared)
    for signatures, shape in ((cache._image_signatures[:3], r"3, 2"), (cache._image_signatures[:, :1], rf"{n}, 1")):
        tensors = {"latents": cache.latents.contiguous(), "signatures": signatures.contiguous()}
        hub.write_safetensors(tmp_path / "c.safetensors", tensors, {"format": FORMAT, **hub.checksum_metadata(tensors),
                                                                    "codec_fingerprint": glow.fingerprint()})
        with pytest.raises(ValueError, match=rf"c.safetensors: signatures must be \({n}, 2\), got shape \({shape}\)"):
            LatentCache.load(tmp_path / "c.safetensors", glow)


def test_a_cache_repr_shows_its_size_and_settings(data):
    """API audit 126: repr(LatentCache(...)) was 'LatentCache()' while a transform names it LatentCache(N)."""
    images, _ = data
    glow = tiny_glow()
    cache = LatentCache(glow, images, progress=False, verify_images=False)
    assert repr(cache) == f"LatentCache(40, latent_dim={glow.latent_dim}, verify_images=False)"


def test_the_signatures_projection_is_fixed_so_a_saved_cache_still_checks_its_images():
    # a cache file keeps its images' signatures, not the projection that made them: a projection drawn otherwise (a
    # changed seed) would refuse every image of the caches saved before, as if they were other images
    from latent_transforms.latent_cache import _projection

    signs = torch.tensor([[-1, 1, 1, 1, 1, 1, -1, -1], [1, -1, 1, 1, 1, -1, 1, -1]]).T.float()
    assert torch.equal(_projection(8), signs / 8 ** 0.5)


def test_images_that_only_one_of_the_two_projections_tells_apart_are_refused():
    # the two signatures are judged by the larger of their differences: a change that leaves one projection as it
    # was (here orthogonal to the first) is still told apart by the other, whichever way it moves it (mutation round
    # 27: a signature lowered passed when the differences were not taken as absolute values)
    from latent_transforms.latent_cache import _projection

    images = 0.25 + 0.5 * torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    glow = tiny_glow()
    cache = LatentCache(glow, images, progress=False)
    p = _projection(64)
    v = p[:, 1] - (p[:, 1] @ p[:, 0]) / (p[:, 0] @ p[:, 0]) * p[:, 0]
    for sign, size in ((1, 0.01), (-1, 0.01), (1, 5e-4)):  # 5e-4: past the 1e-4 tolerance (round 44: 1e-3 passed)
        x = images[:4].clone()
        x[2] += sign * size * v.view(1, 8, 8)
        assert ((x[2] - images[2]).flatten() @ p[:, 0]).abs() < 1e-5 < ((x[2] - images[2]).flatten() @ p[:, 1]).abs()
        with pytest.raises(ValueError, match=r"not the images this latent cache holds at index \(row 2, position 2"):
            LatentNoise(glow, cache=cache, generator=0)(x, index=torch.arange(4))


def test_a_codec_put_in_with_add_module_is_checked_against_the_cache():
    # mutation round 46 (audit 315): add_module bypasses the codec's setter; a codec of the same architecture has the
    # same weight versions, so only the codec's id in the key tells it is another (its latents were decoded silently)
    glow, x = tiny_glow(), torch.rand(4, 1, 8, 8)
    t = LatentNoise(glow, cache=LatentCache(glow, x, progress=False), generator=0)
    t.add_module("codec", tiny_glow(seed=1))
    with pytest.raises(ValueError, match="the latent cache was encoded with another codec"):
        t(x, None, None, index=torch.arange(4))


def test_16_bit_codec_weights_loaded_beside_a_cache_are_named_as_16_bit():
    # mutation round 46 (audit 315): the rounded weights no longer match the cache's fingerprint, but the cause is
    # their dtype, not another codec
    glow = tiny_glow()
    t = LatentNoise(glow, cache=LatentCache(glow, torch.rand(4, 1, 8, 8), progress=False))
    state = {k: v.half() if k.startswith("codec.") and v.is_floating_point() else v for k, v in t.state_dict().items()}
    with pytest.raises(ValueError, match="codec's weights are torch.float16, but codecs compute in float32"):
        t.load_state_dict(state, assign=True)


def test_encode_flat_called_directly_with_an_index_checks_it_as_a_call_does(data, monkeypatch):
    # audit 397: its docstring said the index is checked on entry, which only a transform's call did: called directly
    # (a subclass's own code, a user's), -1 gave the last latent, 40 torch's IndexError, no cache "'NoneType' object
    # is not callable" and x of other images the cached images' latents
    images, _ = data
    glow = tiny_glow()
    t = LatentNoise(glow, cache=LatentCache(glow, images, progress=False))
    x, idx = images[:2], torch.tensor([0, 1])
    with monkeypatch.context() as m:  # looked up, not encoded again (mutation round, audit 401: the same latents)
        m.setattr(glow, "encode_flat", lambda images: pytest.fail("encoded the images it has cached"))
        assert torch.equal(t.encode_flat(x, idx), t.cache.latents[:2])
    with pytest.raises(ValueError, match=re.escape("outside [0, 40)")):
        t.encode_flat(images[-1:], torch.tensor([-1]))
    with pytest.raises(ValueError, match=re.escape("outside [0, 40)")):
        t.encode_flat(x, torch.tensor([0, 40]))
    with pytest.raises(ValueError, match="batch sizes differ"):
        t.encode_flat(images[:3], idx)
    with pytest.raises(ValueError, match="not the images this latent cache holds"):
        t.encode_flat(images[2:4], idx)
    with pytest.raises(ValueError, match="needs a latent cache"):
        LatentNoise(glow).encode_flat(x, idx)
