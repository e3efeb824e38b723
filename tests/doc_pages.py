"""The documentation's pages and their ```python snippets, shared by test_docs.py and test_doc_snippets.py."""
from __future__ import annotations

import re

from conftest import ROOT

DOCS = ROOT / "docs"
SNIPPET = re.compile(r"```python\n(.*?)```", re.S)
# What a page's text asks the reader to bring (a batch, a model, a loader ...). Every other name its snippets use
# must be imported or defined by the page itself, at or before the snippet that uses it: a reader runs them in order.
READER_CONTEXT = {  # pages not named here bring nothing
    "quickstart.md": {"loader", "test_loader", "model", "optimizer", "epochs"},
    "composition.md": {"x", "y", "model", "loader", "epochs", "x_uint8", "train_images", "train_labels", "idx",
                       "train_loader", "teacher"},
    "index.md": {"augment", "x", "y", "model"},
    "lightning.md": {"model", "epochs", "train_loader", "test_loader"},
    "accelerate.md": {"model", "optimizer", "epochs", "train_loader"},
    "extending.md": {"x", "y", "backbone", "head"},
    "methods/isda.md": {"x", "y", "model", "loader", "epochs", "backbone", "features", "logits"},
    "methods/latent_adversarial.md": {"x", "y", "model"},
    "methods/latent_noise.md": {"x", "y"},
    "methods/mixup_inference.md": {"model", "x_train", "x_test_batch", "y_test_batch"},
    "methods/varmixup.md": {"x", "y", "model"},
    "reliability.md": {"model", "optimizer", "test_loader"},
    "../README.md": {"loader", "model", "optimizer"},
}
PAGES = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")) + ["../README.md"]  # mkdocs checks docs/ only
