"""Pieces the examples share: the tiny random codecs of ``--smoke`` runs, synthetic data, device choice.

Nothing here is part of the library; copy what you need. The classifier of the examples is the library's reference
CIFAR ResNet-18, ``latent_transforms.models.CifarResNet18`` (it standardises its input itself, after augmentation).
"""
from __future__ import annotations

import warnings

import torch

# normflows' invertible 1x1 convolutions call torch.lu, which is deprecated; harmless here.
warnings.filterwarnings("ignore", message="torch.lu is deprecated")


def tiny_glow(image_shape=(3, 32, 32), seed: int = 0):
    """A random-init, frozen Glow for ``--smoke`` runs (a trained one comes from ``hub.load``).

    ActNorm initialises itself from the first batch it sees, so it is shown one batch of random images before
    freezing. With the same ``seed`` every process builds the same codec (needed under DDP).
    """
    from latent_transforms.codecs import Glow

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        glow = Glow(image_shape, levels=2, steps=1, hidden=16).init_actnorm(torch.rand(32, *image_shape))
    return glow.freeze()


def tiny_vae(image_shape=(3, 32, 32), seed: int = 0):
    """A random-init, frozen ConvVAE for ``--smoke`` runs."""
    from latent_transforms.codecs import ConvVAE

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vae = ConvVAE(image_shape, latent_dim=16, hidden=8)
    return vae.freeze()


def synthetic_images(n: int = 64, image_shape=(3, 32, 32), num_classes: int = 10, seed: int = 0):
    """``n`` random images in [0, 1] with class-dependent brightness (so there is something to learn) and labels."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % num_classes
    x = 0.25 * torch.rand(n, *image_shape, generator=g) + 0.7 * (y.float() / num_classes).view(-1, 1, 1, 1)
    return x.clamp(0, 1), y


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def example_data(smoke: bool, train: str = "cifar10", test: str | None = "cifar10", data_root=None):
    """(x_train, y_train, x_test, y_test): 64 + 32 synthetic images with --smoke, else the given data specs
    (``test=None``: no test set)."""
    if smoke:
        return (*synthetic_images(64), *synthetic_images(32, seed=1))
    from latent_transforms.data import load_images

    x_train, y_train, _ = load_images(train, "train", data_root)
    x_test, y_test = load_images(test, "test", data_root)[:2] if test else (None, None)
    return x_train, y_train, x_test, y_test
