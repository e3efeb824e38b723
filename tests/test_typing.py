"""The package is typed for its users (PEP 561): it ships ``py.typed``, and the one-line call has the types it
documents for a type checker, not nn.Module's ``Any``."""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import latent_transforms

ROOT = Path(__file__).resolve().parents[1]


def test_the_package_ships_its_py_typed_marker():
    """Without ``py.typed`` in the installed package, mypy and pyright treat latent_transforms as untyped (mypy:
    "module is installed, but missing library stubs or py.typed marker"). CI tests the installed wheel, so the first
    check fails there if the wheel leaves the marker out; the second fails wherever the package data stops naming it."""
    package = Path(latent_transforms.__file__).parent
    assert (package / "py.typed").is_file(), f"no py.typed in {package}"
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = re.search(r"^\[tool\.setuptools\.package-data\]\n(.*?)(?=^\[|\Z)", pyproject, re.M | re.S)
    assert section is not None, "pyproject.toml has no [tool.setuptools.package-data]"
    entry = re.search(r"^latent_transforms\s*=\s*\[(.*?)\]", section.group(1), re.M | re.S)
    assert entry is not None and '"py.typed"' in entry.group(1), section.group(0)


USER_CODE = '''
import torch
from torch import nn
from typing_extensions import assert_type

from latent_transforms import (ISDA, Compose, ISDALoss, LatentAdversarial, LatentCache, LatentMixupInference,
                               LatentNoise, VarMixup)


def one_line(t: LatentNoise, v: VarMixup, i: ISDA, c: Compose, x: torch.Tensor, y: torch.Tensor,
             maybe: torch.Tensor | None, model: nn.Module) -> None:
    x2, y2 = t(x, y, model)
    assert_type(x2, torch.Tensor)
    assert_type(y2, torch.Tensor)
    assert_type(v(x, y), tuple[torch.Tensor, torch.Tensor])
    assert_type(i(x, y, model), tuple[torch.Tensor, torch.Tensor])
    i(x, y, model, params=t.last_params)  # type: ignore[call-arg]  # ISDA replays nothing: no params=
    assert_type(t(x), tuple[torch.Tensor, None])
    assert_type(t(x, None, model), tuple[torch.Tensor, None])
    assert_type(t(x, maybe, model, params=t.last_params), tuple[torch.Tensor, torch.Tensor | None])
    assert_type(c(x, y, model, index=y), tuple[torch.Tensor, torch.Tensor])
    assert_type(c(x), tuple[torch.Tensor, None])


def hooks(a: LatentAdversarial, v: VarMixup, g: torch.Generator, x: torch.Tensor) -> None:
    params = a.make_params(2, g, x.device)  # an untyped override is an error under --strict
    assert_type(params, dict[str, torch.Tensor])
    assert_type(v.transform(x, x, None, v.make_params(2, g, x.device)), tuple[torch.Tensor, torch.Tensor | None])


def other_calls(m: LatentMixupInference, loss: ISDALoss, cache: LatentCache, x: torch.Tensor, y: torch.Tensor,
                fc: nn.Linear) -> None:
    assert_type(m(x), torch.Tensor)
    assert_type(loss(x, fc, y), torch.Tensor)
    assert_type(cache(y), torch.Tensor)
    assert_type(cache.latents, torch.Tensor)
'''


@pytest.mark.slow
def test_a_typed_user_project_gets_the_documented_types(tmp_path):
    """mypy --strict on a user's code: ``x2, y2 = t(x, y, model)`` gives tensors (labels in, labels out; ``None`` in,
    ``None`` out), and so on. Where mypy is not installed (it is no dependency) this is skipped; the marker test above
    runs everywhere."""
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed")
    # the imported package's sources, found through MYPYPATH: also under an editable install, whose import hook
    # mypy cannot follow
    shutil.copytree(Path(latent_transforms.__file__).parent, tmp_path / "path" / "latent_transforms",
                    ignore=shutil.ignore_patterns("__pycache__", "checkpoints"))
    (tmp_path / "user.py").write_text(textwrap.dedent(USER_CODE), encoding="utf-8")
    env = {**os.environ, "MYPYPATH": str(tmp_path / "path")}
    out = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
                          "--ignore-missing-imports", "--no-incremental", "--python-version", "3.10", "user.py"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
