"""The package is typed for its users (PEP 561): it ships ``py.typed``, and the one-line call has the types it
documents for a type checker, not nn.Module's ``Any``."""
from __future__ import annotations

import importlib.util
import inspect
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import latent_transforms

from conftest import ROOT, needs_source_tree


def test_the_package_ships_its_py_typed_marker():
    """Without ``py.typed`` in the installed package, mypy and pyright treat latent_transforms as untyped (mypy:
    "module is installed, but missing library stubs or py.typed marker"). CI tests the installed wheel, so this fails
    there if the wheel leaves the marker out; the next test fails wherever the package data stops naming it."""
    package = Path(latent_transforms.__file__).parent
    assert (package / "py.typed").is_file(), f"no py.typed in {package}"


@needs_source_tree
def test_the_package_data_names_the_py_typed_marker():
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = re.search(r"^\[tool\.setuptools\.package-data\]\n(.*?)(?=^\[|\Z)", pyproject, re.M | re.S)
    assert section is not None, "pyproject.toml has no [tool.setuptools.package-data]"
    entry = re.search(r"^latent_transforms\s*=\s*\[(.*?)\]", section.group(1), re.M | re.S)
    assert entry is not None and '"py.typed"' in entry.group(1), section.group(0)


USER_CODE = '''
import torch
from torch import nn
from typing_extensions import assert_type

from torch.nn.modules.module import _IncompatibleKeys
from latent_transforms import (ISDA, Codec, Compose, ConvVAE, Glow, ISDALoss, LatentAdversarial, LatentCache,
                               LatentMixupInference, LatentNoise, VarMixup)
from latent_transforms.validation import check_choice


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


def codecs(glow: Glow, vae: ConvVAE, codec: Codec, t: LatentNoise, c: Compose, x: torch.Tensor) -> None:
    assert_type(vae.freeze(), ConvVAE)  # the codec's own class: vae.freeze().posterior(x), not Codec's
    assert_type(vae.freeze().posterior(x), tuple[torch.Tensor, torch.Tensor])
    assert_type(vae.unfrozen_copy(), ConvVAE)
    assert_type(vae.compile_fast_path(False), ConvVAE)
    assert_type(vae.train(False), ConvVAE)
    assert_type(Glow().init_actnorm(x).freeze(), Glow)
    assert_type(codec.load_state_dict(codec.state_dict()), _IncompatibleKeys)  # torch's, not Any
    assert_type(t.load_state_dict(t.state_dict(), strict=False), _IncompatibleKeys)
    assert_type(c.load_state_dict(c.state_dict()), _IncompatibleKeys)


def settings(t: LatentNoise, a: LatentAdversarial, i: ISDA, m: LatentMixupInference, v: VarMixup) -> None:
    assert_type(t.eps, float)  # what the setting's check returns, not Any
    assert_type(t.p, float)
    assert_type(t.num_classes, int | None)
    assert_type(a.steps, int)
    assert_type(i.lambda0, float)
    assert_type(i.num_classes, int)
    assert_type(m.model, nn.Module)
    assert_type(v.per_sample, bool)
    t.eps = 0.5  # a sweep
    t.eps = "0.5"  # type: ignore[assignment]  # refused at run time too (WrongTypeError); an unused ignore fails


def own_method(mode: object) -> None:
    kept: str = check_choice("mode", mode, ("add", "scale"))  # one of the choices' type, not object
    assert_type(check_choice("norm", mode, ("l2", "linf", None)), str | None)
'''


@pytest.mark.slow
def test_a_typed_user_project_gets_the_documented_types(tmp_path):
    """mypy --strict on a user's code: ``x2, y2 = t(x, y, model)`` gives tensors (labels in, labels out; ``None`` in,
    ``None`` out), and so on. Where mypy is not installed (the ``test`` extra installs it; the package does not need
    it) this is skipped; the marker test above runs everywhere."""
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


@pytest.mark.slow
@needs_source_tree  # pyproject.toml's [tool.mypy]
def test_the_package_itself_type_checks(tmp_path):
    """mypy on the package's own code, with pyproject.toml's ``[tool.mypy]`` (``check_untyped_defs``,
    ``disallow_any_generics`` and more), finds nothing: a ``Tensor | None`` passed where a tensor is needed, a bare
    ``dict`` or ``Callable`` (``Any`` inside), a narrowing or an ignore no longer needed. Skipped where mypy is not
    installed, as the test above."""
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed")
    # a copy: the installed package may be in site-packages, which mypy does not check
    shutil.copytree(Path(latent_transforms.__file__).parent, tmp_path / "latent_transforms",
                    ignore=shutil.ignore_patterns("__pycache__", "checkpoints"))
    out = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                          "--no-incremental", "latent_transforms"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr


def _public_functions():
    """(qualified name, function) of the package's public API: the functions of ``__all__`` and the public methods
    (and ``__init__``) the classes of ``__all__`` define or inherit from the package, not from torch."""
    for name in latent_transforms.__all__:
        obj = getattr(latent_transforms, name)
        if not inspect.isclass(obj):
            yield name, obj
            continue
        for klass in obj.__mro__:
            if not klass.__module__.startswith("latent_transforms"):
                continue
            for attr, member in vars(klass).items():
                if attr.startswith("_") and attr != "__init__":
                    continue
                member = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
                # a setting's property is made by validation.setting, whose types the mypy test above checks
                if inspect.isfunction(member) and "<locals>" not in member.__qualname__:
                    yield f"{name}.{attr} (from {klass.__name__})", member


def test_the_public_api_is_fully_annotated():
    """A parameter or return left unannotated is ``Any`` to mypy and ``Unknown`` to pyright --strict: ``codec.
    load_state_dict(...)`` was ``Any`` (nn.Module's is torch's ``_IncompatibleKeys``), a CodecTransform subclass's
    ``super().__init__(codec, p=p)`` went through an untyped ``**kwargs``. No type checker needed."""
    untyped = []
    for qualname, fn in _public_functions():
        signature = inspect.signature(fn)
        missing = [p.name for p in list(signature.parameters.values())[1 if "." in qualname else 0:]
                   if p.annotation is inspect.Parameter.empty]
        if missing or (signature.return_annotation is inspect.Signature.empty and fn.__name__ != "__init__"):
            untyped.append(f"{qualname}: unannotated {missing or 'return'}")
    assert not untyped, "\n".join(untyped)
