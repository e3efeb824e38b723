"""The package as it is distributed: the wheel holds every file the package reads at run time (and not the tests),
the sdist the tests and every file they read, and the tests copied out of the source tree (a packager testing the
installed wheel) skip what needs the source tree instead of failing on it."""
from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import latent_transforms
from conftest import ROOT, needs_source_tree

PACKAGE = ROOT / "latent_transforms"
# what the sdist adds to the package for the tests (MANIFEST.in); the wheel holds none of it
FOR_THE_TESTS = ("tests", "docs", "benchmarks", "examples", "scripts")


def _package_data_globs() -> list[str]:
    """pyproject.toml's ``[tool.setuptools.package-data]`` globs for the package, relative to its folder."""
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = re.search(r"^\[tool\.setuptools\.package-data\]\n(.*?)(?=^\[|\Z)", pyproject, re.M | re.S)
    assert section is not None, "pyproject.toml has no [tool.setuptools.package-data]"
    entry = re.search(r"^latent_transforms\s*=\s*\[(.*?)\]", section.group(1), re.M | re.S)
    assert entry is not None, section.group(0)
    return re.findall(r'"([^"]+)"', entry.group(1))


def _read_at_run_time() -> set[str]:
    """The package's data files its code opens (paths relative to the package): ``py.typed`` for type checkers, the
    shipped registry and each checkpoint it names (hub's ``_SHIPPED_DIR``)."""
    registry = json.loads((PACKAGE / "checkpoints" / "registry.json").read_text(encoding="utf-8"))
    return {"py.typed", "checkpoints/registry.json",
            *(f"checkpoints/{entry['file']}" for entry in registry["checkpoints"].values())}


def _data_files() -> set[str]:
    return {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts}


@needs_source_tree
def test_the_package_data_globs_cover_every_file_the_package_reads():
    """A checkpoint or registry the globs miss is in the checkout but not in a wheel: ``hub.load`` finds it under an
    editable install and fails for every user of the wheel. The data files the globs leave out are the checkpoints'
    preview pictures, which nothing reads (``train`` writes them beside a run's checkpoint for its user to see)."""
    globs = _package_data_globs()
    shipped = {p.relative_to(PACKAGE).as_posix() for g in globs for p in PACKAGE.glob(g) if p.is_file()}
    assert not _read_at_run_time() - shipped, f"read at run time, not in the wheel: {_read_at_run_time() - shipped}"
    left_out = _data_files() - shipped
    assert all(re.fullmatch(r"checkpoints/[^/]+\.png", name) for name in left_out), \
        f"data files in the package that no package-data glob ships (add a glob, or say here why not): {left_out}"


def test_the_installed_distribution_has_the_packages_version():
    """``pip show latent-transforms``, the wheel's name and ``latent-transforms --version`` say one version."""
    assert importlib.metadata.version("latent-transforms") == latent_transforms.__version__


@needs_source_tree
def test_the_version_is_written_once():
    """pyproject.toml held its own ``version = "0.1.0"`` beside ``__version__``: bumping one alone would ship a wheel
    whose name and metadata say another version than ``latent_transforms.__version__`` and ``--version`` do."""
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    project = re.search(r"^\[project\]\n(.*?)(?=^\[|\Z)", pyproject, re.M | re.S)
    assert project is not None and not re.search(r"^version\s*=", project.group(1), re.M), project
    assert re.search(r'^dynamic\s*=\s*\[[^]]*"version"', project.group(1), re.M)
    assert re.search(r'^version\s*=\s*\{\s*attr\s*=\s*"latent_transforms\.__version__"\s*\}', pyproject, re.M)


def _setuptools_version() -> tuple[int, ...] | None:
    try:
        return tuple(int(part) for part in re.findall(r"\d+", importlib.metadata.version("setuptools"))[:2])
    except importlib.metadata.PackageNotFoundError:
        return None


def _source_copy(dest: Path) -> Path:
    """The files a release is built from: a checkout's files that git does not ignore, else (an unpacked sdist)
    all of them."""
    listed = None
    if (ROOT / ".git").exists() and shutil.which("git"):
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, text=True)
    if listed is not None and listed.returncode == 0:
        names = [n for n in listed.stdout.split("\0") if n]
    else:
        names = [p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*") if p.is_file()
                 and not any(part == "__pycache__" or part.endswith(".egg-info") for part in p.parts)]
    for name in names:
        if (ROOT / name).is_file():  # a tracked file deleted in the working tree is no part of the build
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


@pytest.mark.slow
@needs_source_tree
def test_the_sdist_holds_the_tests_and_what_they_read_and_the_wheel_the_package_alone(tmp_path):
    """Built as a release is (setuptools' build backend, from a copy of the source tree): the sdist shipped
    tests/test_*.py alone, without conftest.py, the helpers, the data or the docs/benchmarks/examples they read, so
    ``pytest`` in an unpacked sdist failed (fixture 'offline_hub' not found, ModuleNotFoundError: conftest); now
    it holds them all. The wheel holds the package, its data and nothing of the tests."""
    version = _setuptools_version()
    if version is None or version < (77, 0):
        pytest.skip(f"setuptools >= 77 (pyproject.toml's build requirement) is not installed here: {version}")
    src, out = _source_copy(tmp_path / "src"), tmp_path / "dist"
    out.mkdir()

    def build(hook: str, cwd: Path) -> Path:  # a process each: setuptools' second hook in one process misplaces files
        proc = subprocess.run([sys.executable, "-c", f"import sys; from setuptools import build_meta as b; "
                               f"print('\\n' + b.{hook}(sys.argv[1]))", str(out)], cwd=cwd, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return out / proc.stdout.splitlines()[-1]

    sdist = build("build_sdist", src)
    with tarfile.open(sdist) as tar:
        top = sdist.name.removesuffix(".tar.gz")
        in_sdist = {m.name.removeprefix(top + "/") for m in tar.getmembers() if m.isfile()}
        # our own sdist; the filter (Python 3.10.12 on) keeps 3.12's and 3.13's warning for an unfiltered one away
        tar.extractall(tmp_path / "unpacked", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    wheel = build("build_wheel", tmp_path / "unpacked" / top)  # as `python -m build` does: from the sdist
    sources = {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()}
    wanted = {name for name in sources if name.split("/")[0] in FOR_THE_TESTS or "/" not in name
              and name in ("pyproject.toml", "README.md", "LICENSE", "mkdocs.yml")}
    assert "tests/conftest.py" in wanted and "docs/index.md" in wanted
    assert not wanted - in_sdist, f"left out of the sdist: {sorted(wanted - in_sdist)}"
    assert not [n for n in in_sdist if "__pycache__" in n or n.endswith(".pyc")]

    assert sdist.name == f"latent_transforms-{latent_transforms.__version__}.tar.gz"
    assert wheel.name == f"latent_transforms-{latent_transforms.__version__}-py3-none-any.whl"
    assert "LICENSE" in in_sdist  # the MIT licence asks for its text to travel with every copy
    with zipfile.ZipFile(wheel) as whl:
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in whl.namelist()), whl.namelist()
        in_wheel = {n for n in whl.namelist() if ".dist-info/" not in n}
    modules = {f"latent_transforms/{p.relative_to(PACKAGE).as_posix()}" for p in PACKAGE.rglob("*.py")}
    data = {f"latent_transforms/{name}" for name in _read_at_run_time()}
    assert modules | data <= in_wheel, f"left out of the wheel: {sorted(modules | data - in_wheel)}"
    assert all(n.startswith("latent_transforms/") for n in in_wheel), sorted(in_wheel)
    assert not [n for n in in_wheel if n.endswith(".png") or "__pycache__" in n], sorted(in_wheel)


@pytest.mark.slow
@needs_source_tree
def test_the_tests_copied_out_of_the_source_tree_skip_what_needs_it(tmp_path):
    """A packager tests the installed wheel with a copy of tests/ (no docs/, benchmarks/, examples/, pyproject.toml
    beside it): test_throughput.py and test_doc_snippets.py stopped the run at collection (FileNotFoundError), the
    tests of test_docs, test_examples, test_benchmarks and test_typing that read those files failed. They skip now,
    saying why; the rest of those files runs."""
    shutil.copytree(ROOT / "tests", tmp_path / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    files = ["test_throughput.py", "test_doc_snippets.py", "test_examples.py", "test_benchmarks.py", "test_typing.py",
             "test_docs.py"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "-rs",
                           "-m", "not slow", "-k", "not repr and not reads_well", *(f"tests/{f}" for f in files)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    assert proc.stdout.count("the tests run outside one") >= len(files), proc.stdout[-5000:]
    assert re.search(r"\b[1-9]\d* passed", proc.stdout), proc.stdout[-3000:]  # test_docs' and test_typing's others
