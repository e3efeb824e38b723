"""Every ```python snippet of the docs runs: page by page, in order, in one namespace per page, as a reader runs them.

test_docs.py checks the snippets' names statically; here they run on the CPU, offline, in a temporary folder, with
small real objects for what the page asks the reader to bring (READER_CONTEXT).
"""
from __future__ import annotations

import importlib.util
import re
import sys
import textwrap
import types
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

import latent_transforms.data
import latent_transforms.train
from latent_transforms import LatentNoise, hub
from latent_transforms.codecs import Codec

from conftest import TinyNet, skip_module_outside_the_source_tree
from doc_pages import DOCS, PAGES, READER_CONTEXT, ROOT, SNIPPET

skip_module_outside_the_source_tree()  # the pages of docs/ and the README

IMAGE_SHAPE = (3, 32, 32)  # the pages' x, y, model: CIFAR-10's
# shrunk for this test, the snippets unchanged: load_images gives the first images of a split, train_codec
# (max_minutes=4 in training.md) trains a second, compile_fast_path compiles without inductor's C++ build
IMAGES = 64
TRAINING_MINUTES = 0.02


# packages a page shows its snippets with that the project does not depend on (composition.md's timm paragraph,
# lightning.md, accelerate.md, quickstart.md's Hydra config): a snippet importing one runs where it is installed and
# is left out where it is not
NOT_DEPENDENCIES = ("timm", "lightning", "accelerate", "hydra", "omegaconf")


def _missing_package(code: str) -> str | None:
    """The first package of NOT_DEPENDENCIES a snippet imports that is not installed."""
    return next((name for name in NOT_DEPENDENCIES if re.search(rf"^\s*(from|import) {name}\b", code, re.M)
                 and importlib.util.find_spec(name) is None), None)


def _page_snippets(page: str) -> list[tuple[int, str]]:
    """(first line, code) of each snippet of a page."""
    text = (DOCS / page).read_text(encoding="utf-8")
    return [(text[:m.start()].count("\n") + 2, textwrap.dedent(m.group(1))) for m in SNIPPET.finditer(text)]


def _batch(n: int, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *IMAGE_SHAPE, generator=g), torch.randint(0, num_classes, (n,), generator=g)


def _reader_context(page: str) -> dict:
    """What the page asks the reader to bring: an 8-image batch, a small classifier, a loader of two batches, two
    epochs ..."""
    num_classes = 100 if page == "methods/isda.md" else 10  # the ISDA page's example is CIFAR-100
    torch.manual_seed(0)
    model = TinyNet(channels=IMAGE_SHAPE[0], num_classes=num_classes)
    x, y = _batch(8, num_classes, seed=0)
    train_images, train_labels = _batch(16, num_classes, seed=1)
    features = model.features(x)
    offered = {
        "x": x, "y": y, "model": model, "epochs": 2,  # ISDA's lam is 0 in the first
        "teacher": TinyNet(channels=IMAGE_SHAPE[0], num_classes=num_classes),
        "loader": DataLoader(TensorDataset(*_batch(16, num_classes, seed=2)), batch_size=8),
        "train_loader": DataLoader(TensorDataset(*_batch(16, num_classes, seed=2)), batch_size=8),
        "test_loader": DataLoader(TensorDataset(*_batch(16, num_classes, seed=3)), batch_size=8),
        "optimizer": torch.optim.SGD(model.parameters(), lr=0.01),
        "augment": LatentNoise("glow-cifar10", generator=0),
        "x_uint8": (x * 255).to(torch.uint8),
        "train_images": train_images, "train_labels": train_labels, "idx": torch.tensor([3, 0, 7, 12]),
        "backbone": model.features, "head": model.fc, "features": features, "logits": model.fc(features),
        "x_train": train_images, "x_test_batch": x, "y_test_batch": y,
    }
    return {name: offered[name] for name in READER_CONTEXT.get(page, ())}


def _shrink_what_the_snippets_run(monkeypatch) -> None:
    load_images, train_codec = latent_transforms.data.load_images, latent_transforms.train.train_codec
    compile_fast_path = Codec.compile_fast_path

    def first_images(*args, **kwargs):
        x, y, num_bins = load_images(*args, **kwargs)
        return x[:IMAGES], None if y is None else y[:IMAGES], num_bins

    def short_training(*args, max_minutes=None, **kwargs):
        with warnings.catch_warnings():  # a second of training on random images: a codec too weak to use, and told so
            warnings.filterwarnings("ignore", "(.*not worth perturbing|.*latent carries almost nothing)", UserWarning)
            return train_codec(*args, **kwargs, max_minutes=None if max_minutes is None else TRAINING_MINUTES)

    def without_inductor(self, enabled=True, **kwargs):
        if enabled:
            kwargs.setdefault("backend", "aot_eager")
        return compile_fast_path(self, enabled, **kwargs)

    monkeypatch.setattr(latent_transforms.data, "load_images", first_images)
    monkeypatch.setattr(latent_transforms.train, "train_codec", short_training)
    monkeypatch.setattr(Codec, "compile_fast_path", without_inductor)


@pytest.fixture
def reader(tmp_path, monkeypatch):
    """A CPU-only reader, offline, with an empty cache dir, in a fresh folder whose ../shared/data/cifar10/test.npz
    (the repository's neighbour some pages read) holds 8 random images, and whose my_images/train (training.md's
    ImageFolder) holds two class folders of 4 grey 8x8 PNGs each."""
    monkeypatch.setenv("LATENT_TRANSFORMS_OFFLINE", "1")
    monkeypatch.setenv("LATENT_TRANSFORMS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LATENT_TRANSFORMS_HUB_URL", raising=False)
    monkeypatch.setattr(hub, "_registered", {})  # hub.register(...) lasts for the process: not past this test
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _shrink_what_the_snippets_run(monkeypatch)
    data = tmp_path / "shared" / "data" / "cifar10"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.savez(data / "test.npz", x=rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
             y=rng.integers(0, 10, 8, dtype=np.int64))
    (tmp_path / "repo").mkdir()
    for i, image in enumerate(rng.integers(0, 256, (8, 8, 8), dtype=np.uint8)):
        folder = tmp_path / "repo" / "my_images" / "train" / "ab"[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i}.png")
    monkeypatch.chdir(tmp_path / "repo")
    yield
    torch._dynamo.reset()  # a snippet's compile_fast_path compiles for this test only


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if SNIPPET.search((DOCS / p).read_text(encoding="utf-8"))])
def test_page_snippets_run_in_order(page, reader, monkeypatch):
    module = types.ModuleType("__doc_snippet__")  # importable, as a reader's script is: its classes pickle
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace = module.__dict__
    namespace.update(_reader_context(page))
    path = (DOCS / page).resolve()
    for first, code in _page_snippets(page):
        where = f"{path.relative_to(ROOT)}:{first}"
        if _missing_package(code):
            continue
        try:  # a traceback names the page's own lines
            exec(compile("\n" * (first - 1) + code, str(path), "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"the snippet at {where} failed: {type(e).__name__}: {e}") from e

