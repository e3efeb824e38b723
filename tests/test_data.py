"""Data loading refuses damaged or unreachable data with one message that says what and where."""
from __future__ import annotations

import urllib.error

import numpy as np
import pytest

from latent_transforms.data import load_images


def test_damaged_npz_is_refused_by_name(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (64, 8, 8, 3), dtype=np.uint8)
    good = tmp_path / "good.npz"
    np.savez_compressed(good, x=x, y=np.arange(64) % 10)
    data = good.read_bytes()
    truncated, flipped = tmp_path / "truncated.npz", tmp_path / "flipped.npz"
    truncated.write_bytes(data[: len(data) // 2])  # a copy or download cut short: was zipfile.BadZipFile
    middle = len(data) // 2
    flipped.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:])  # was zlib.error / CRC
    for path in (truncated, flipped):
        with pytest.raises(ValueError, match=f"{path} is not a readable .npz archive"):
            load_images(f"npz:{path}")


def test_cifar10_that_cannot_be_downloaded_says_where_and_what_else(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(ValueError, match=f"could not download CIFAR-10 into {tmp_path} .*npz:PATH"):
        load_images("cifar10", "train", tmp_path)
