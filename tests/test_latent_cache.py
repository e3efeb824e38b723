import pytest
import torch

from latent_transforms import LatentAdversarial, LatentCache, LatentNoise, VarMixup

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
    with pytest.raises(ValueError, match="int64"):
        t(x, y, index=torch.arange(4).int())
    with pytest.raises(ValueError, match="batch sizes differ"):
        t(x, y, index=torch.arange(3))
    with pytest.raises(ValueError, match="another codec"):
        LatentNoise(tiny_vae(), cache=cache)
    with pytest.raises(ValueError, match="trained on images of shape"):
        LatentCache(glow, torch.rand(4, 3, 8, 8), progress=False)
