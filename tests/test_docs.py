"""The documentation builds with ``mkdocs build --strict`` and every picture it references exists."""
from __future__ import annotations

import ast
import builtins
import functools
import importlib
import inspect
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import types
import unicodedata
from pathlib import Path

import pytest

from conftest import needs_source_tree
from doc_pages import DOCS, PAGES, READER_CONTEXT, ROOT, SNIPPET

IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+\.png)[^)]*\)|<img[^>]*\bsrc=\"([^\"]+\.png)\"")


def _is_class(obj: object) -> bool:
    """``inspect.isclass`` but False for an alias such as ``codecs.Latents`` (``list[torch.Tensor]``), which Python
    3.10's ``inspect.isclass`` takes for a class (3.11 on does not)."""
    return inspect.isclass(obj) and not isinstance(obj, types.GenericAlias)


def _mkdocs() -> list[str] | None:
    exe = Path(sys.executable).with_name("mkdocs")
    if exe.is_file():
        return [str(exe)]
    if shutil.which("mkdocs"):
        return [shutil.which("mkdocs")]
    try:
        import mkdocs  # noqa: F401
    except ImportError:
        return None
    return [sys.executable, "-m", "mkdocs"]


def _referenced_pictures() -> list[tuple[Path, str, Path]]:
    found = []
    for page in sorted(DOCS.rglob("*.md")):
        for match in IMAGE.finditer(page.read_text(encoding="utf-8")):
            ref = match.group(1) or match.group(2)
            if "://" not in ref:
                found.append((page, ref, (page.parent / ref).resolve()))
    return found


@needs_source_tree
def test_every_referenced_picture_exists():
    refs = _referenced_pictures()
    assert refs, "the docs reference no pictures at all (expected docs/images/demo.png at least)"
    missing = [f"{page.relative_to(ROOT)}: {ref}" for page, ref, path in refs if not path.is_file()]
    assert not missing, "missing pictures (run scripts/make_doc_pictures.py):\n" + "\n".join(missing)
    outside = [f"{page.relative_to(ROOT)}: {ref}" for page, ref, path in refs
               if DOCS / "images" not in path.parents]
    assert not outside, "pictures must live in docs/images/:\n" + "\n".join(outside)


def test_the_suite_runs_without_pytest_xdist_hypothesis_or_pytest_timeout(tmp_path):
    """README's `pytest -q -n auto` needs pytest-xdist; the GPU session's pytest has none, and conftest's xdist hook
    then made pytest refuse to start ("unknown hook"). Nor has it hypothesis, which conftest sets up where it is, nor
    pytest-timeout, whose limit pyproject sets: no warning about an unknown option."""
    (tmp_path / "hypothesis.py").write_text("raise ModuleNotFoundError(\"No module named 'hypothesis'\")\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                           "-p", "no:hypothesispytest", "-p", "no:timeout", "tests/test_visualize.py", "-k",
                           "test_grid_layout_and_pixels"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "warning" not in proc.stdout, proc.stdout[-3000:]


@needs_source_tree
def test_a_test_still_running_after_15_minutes_fails(pytestconfig):
    """pytest-timeout (the test extra's) with pyproject's limit: a hung test (a lock never released, a rank waiting
    for another) fails, naming where it waits, instead of holding the suite until CI stops it unread."""
    assert pytestconfig.pluginmanager.hasplugin("timeout") and pytestconfig.getini("timeout") == "900"


def test_pytest_n_auto_runs_a_process_per_cpu_at_most_8(monkeypatch):
    """conftest's cap; a PYTEST_XDIST_AUTO_NUM_WORKERS that is not a number was ignored by xdist (with a warning that
    does not name it) and by the cap alike: a process per CPU, however many."""
    import conftest

    monkeypatch.setattr(conftest, "CPUS", 32)
    monkeypatch.delenv("PYTEST_XDIST_AUTO_NUM_WORKERS", raising=False)
    assert conftest.pytest_xdist_auto_num_workers(None) == 8
    monkeypatch.setenv("PYTEST_XDIST_AUTO_NUM_WORKERS", "12")
    assert conftest.pytest_xdist_auto_num_workers(None) == 12  # the number asked for, as xdist reads it
    monkeypatch.setenv("PYTEST_XDIST_AUTO_NUM_WORKERS", "all")  # xdist warned, then took all 32 CPUs
    with pytest.warns(UserWarning, match=r"AUTO_NUM_WORKERS is not a number: 'all'; ignored \(8 processes"):
        assert conftest.pytest_xdist_auto_num_workers(None) == 8


def test_a_hypothesis_test_draws_the_same_examples_whatever_ran_before_it(tmp_path, monkeypatch):
    """conftest's profile: test_safety's examples were drawn afresh each run (its cost varied, a failure could not be
    replayed), and derandomized ones still took in numbers from the source of the modules imported so far."""
    from hypothesis import given, settings, strategies as st
    try:
        from hypothesis.internal.conjecture import providers
    except ImportError:  # a hypothesis before local constants: derandomize alone fixes the examples
        providers = None
    if providers is not None and not hasattr(providers, "_get_local_constants"):  # a private name of hypothesis's
        pytest.skip("this hypothesis has no providers._get_local_constants: conftest cannot keep the numbers of the "
                    "modules imported so far out of the examples (see how this version collects them)")

    runs: list[list] = []

    @settings(max_examples=10)  # as the suite's tests set theirs: the rest from the profile
    @given(st.lists(st.floats(0, 1) | st.integers(0, 10**6), min_size=10, max_size=10))  # 100 numbers a run
    def draw(numbers):
        runs[-1].append(numbers)

    runs.append([])
    draw()
    (tmp_path / "other_numbers.py").write_text("NUMBERS = [0.123456789, 0.987654321, 0.31415926, 7777, 654321]\n")
    monkeypatch.syspath_prepend(tmp_path)
    importlib.import_module("other_numbers")  # as a module an earlier test imported, numbers in its source
    try:
        runs.append([])
        draw()
    finally:
        del sys.modules["other_numbers"]
    assert runs[0] == runs[1] and len(runs[0]) == 10
    assert settings().database is None  # no .hypothesis/examples: nothing for xdist's processes to share
    assert settings().deadline is None  # a loaded CPU's time is no failure (mutation round 48: dropped unnoticed)
    # and no test's @settings undoes the profile
    undone = [(path.name, text.count("\n", 0, match.start()) + 1)
              for path in sorted((ROOT / "tests").glob("test_*.py")) for text in [path.read_text(encoding="utf-8")]
              for match in re.finditer(r"\b(derandomize|database)\s*=|\b(load|get)_profile\(", text)]
    assert not undone, "hypothesis settings of a test's own (conftest's profile sets them): " + ", ".join(
        f"{name}:{line}" for name, line in undone)


@needs_source_tree
def test_readme_pictures_exist():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    refs = [match.group(1) or match.group(2) for match in IMAGE.finditer(readme)]
    assert refs, "README.md shows no .png picture that this check reads (another format or syntax?)"
    for ref in refs:
        if "://" not in ref:
            assert (ROOT / ref).is_file(), f"README.md references a missing picture: {ref}"


@needs_source_tree
def test_the_readme_picture_is_the_one_the_demo_writes(tmp_path):
    # the docs' overview was drawn from 10 other digits with another classifier than the demo's 12: a user comparing
    # README's picture with their demo.png saw different images
    from PIL import Image

    from latent_transforms import demo, hub

    ours = demo.overview_picture(hub.load("glow-digits"), hub.load("vae-digits"), tmp_path / "demo.png")
    with Image.open(ours) as a, Image.open(DOCS / "images" / "demo.png") as b:
        assert a.size == b.size
        first = (0, 0, a.size[0], a.size[1] * 2 // 5)  # originals and LatentNoise: no classifier, seeded alike
        assert a.convert("L").crop(first).tobytes() == b.convert("L").crop(first).tobytes()


@pytest.mark.slow
@needs_source_tree
def test_mkdocs_build_strict(tmp_path):
    cmd = _mkdocs()
    if cmd is None:
        pytest.skip("mkdocs is not installed (pip install '.[docs]')")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([*cmd, "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    assert (tmp_path / "site" / "index.html").is_file()
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    # the docstrings are rendered as Markdown (mkdocstrings, Google style): a Sphinx role is printed as written
    roles = sorted(set(re.findall(r":(?:class|func|meth|attr|mod|obj):", api)))
    assert not roles, f"the API page shows Sphinx roles literally ({', '.join(roles)}): write ``Name`` in docstrings"
    # a list with no blank line before it (in a page or a docstring) runs into the paragraph above, "- " printed
    run_in = [f"{page.relative_to(tmp_path / 'site')}: {re.sub(r'<[^>]+>', '', p)[:80]!r}"
              for page in sorted((tmp_path / "site").rglob("*.html"))
              for p in re.findall(r"<p>(.*?)</p>", page.read_text(encoding="utf-8"), re.S) if re.search(r"\n- ", p)]
    assert not run_in, "lists printed as text (put a blank line before the list):\n" + "\n".join(run_in)


class _UnboundNames(ast.NodeVisitor):
    """Names read before anything binds them, visiting statements in execution order (enough for doc snippets)."""

    def __init__(self, known: set[str]):
        self.known, self.missing = set(known), []

    def _bind(self, target: ast.AST) -> None:
        self.known.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))

    def _visit_all(self, nodes) -> None:
        for node in nodes:
            self.visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load) and node.id not in self.known and not hasattr(builtins, node.id):
            self.missing.append((node.lineno, node.id))
        elif not isinstance(node.ctx, ast.Load):
            self.known.add(node.id)

    def visit_Import(self, node: ast.Import) -> None:
        self.known.update(a.asname or a.name.split(".")[0] for a in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        self.known.update(a.asname or a.name for a in node.names)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for target in node.targets:
            self._bind(target)

    def visit_For(self, node: ast.For) -> None:
        self.visit(node.iter)
        self._bind(node.target)
        self._visit_all(node.body + node.orelse)

    def visit_With(self, node: ast.With) -> None:
        for item in node.items:
            self.visit(item.context_expr)
            if item.optional_vars is not None:
                self._bind(item.optional_vars)
        self._visit_all(node.body)

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.type is not None:
            self.visit(node.type)
        if node.name:  # `except RuntimeError as e`
            self.known.add(node.name)
        self._visit_all(node.body)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.known.add(node.name)
        self.known.update(a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg))
        self._visit_all(node.body)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._visit_all(node.bases + node.decorator_list)
        self.known.add(node.name)
        self._visit_all(node.body)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self.known.update(a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg))
        self.visit(node.body)

    def _comprehension(self, node, *parts) -> None:
        for gen in node.generators:
            self.visit(gen.iter)
            self._bind(gen.target)
            self._visit_all(gen.ifs)
        self._visit_all(parts)

    def visit_ListComp(self, node):
        self._comprehension(node, node.elt)

    visit_SetComp = visit_GeneratorExp = visit_ListComp

    def visit_DictComp(self, node):
        self._comprehension(node, node.key, node.value)


@pytest.mark.parametrize("page", PAGES)
@needs_source_tree
def test_page_snippets_define_what_they_use(page):
    text = (DOCS / page).read_text(encoding="utf-8")
    visitor = _UnboundNames(READER_CONTEXT.get(page, set()))
    missing = []
    for match in SNIPPET.finditer(text):
        first = text[:match.start()].count("\n") + 2  # the snippet's first line in the page
        visitor.missing = []
        visitor.visit(ast.parse(textwrap.dedent(match.group(1))))  # snippets in a list item are indented
        missing += [f"{(DOCS / page).resolve().relative_to(ROOT)}:{first + line - 1}: {name}"
                    for line, name in visitor.missing]
    assert not missing, "names used before the page imports or defines them:\n" + "\n".join(missing)


@needs_source_tree
def test_snippets_load_checkpoints_without_pickle():
    """torch.load unpickles any object (and says so in a FutureWarning) unless given weights_only=True, its default
    only from torch 2.6 on: a snippet that leaves it out runs arbitrary pickle at the torch 2.4 floor."""
    unsafe = []
    for page in PAGES:
        text = (DOCS / page).read_text(encoding="utf-8")
        for snippet in SNIPPET.finditer(text):
            unsafe += [f"{page}:{text[:snippet.start(1) + m.start()].count(chr(10)) + 1}"
                       for m in re.finditer(r"torch\.load\((?:[^()]|\([^()]*\))*\)", snippet.group(1))
                       if "weights_only=True" not in m.group()]
    assert not unsafe, f"torch.load without weights_only=True: {unsafe}"


@needs_source_tree
def test_snippets_save_checkpoints_atomically():
    """torch.save writes its file in place: a job stopped while it writes (SLURM's SIGTERM before the time limit, a
    preemption) left a truncated checkpoint.pt instead of the last good one (a 256 MB one, SIGTERM once half of it
    was written: 132 MB left, which torch.load refused; benchmarks/quickstart_figures.py). A snippet saves to another path and os.replace-s it onto the checkpoint after."""
    unsafe = []
    for page in PAGES:
        text = (DOCS / page).read_text(encoding="utf-8")
        for snippet in SNIPPET.finditer(text):
            calls = [node for node in ast.walk(ast.parse(textwrap.dedent(snippet.group(1))))
                     if isinstance(node, ast.Call) and ast.unparse(node.func) in ("torch.save", "os.replace")]
            calls.sort(key=lambda node: (node.lineno, node.col_offset))
            for i, call in enumerate(calls):
                if ast.unparse(call.func) == "torch.save" and len(call.args) == 2 and not any(
                        ast.unparse(later.func) == "os.replace" and ast.unparse(later.args[0]) == ast.unparse(
                            call.args[1]) for later in calls[i + 1:]):
                    unsafe.append(f"{page}:{text[:snippet.start(1)].count(chr(10)) + call.lineno}")
    assert not unsafe, f"torch.save onto the checkpoint itself, not a temporary file os.replace-d onto it: {unsafe}"


@pytest.mark.parametrize("readme", ["README.md", "benchmarks/README.md"])
@needs_source_tree
def test_readme_links_lead_to_files_that_exist(readme):
    """mkdocs --strict checks the links of docs/ only."""
    page = ROOT / readme
    links = re.findall(r"\]\(([^)\s#]+)(?:#[^)\s]*)?\)", page.read_text(encoding="utf-8"))
    local = [link for link in links if "://" not in link and not link.startswith("mailto:")]
    assert local, f"{readme} links no file"  # the pattern still finds them
    missing = [link for link in local if not (page.parent / link).exists()]
    assert not missing, f"{readme} links files that do not exist: {missing}"


@needs_source_tree
def test_readme_links_every_page_of_the_docs():
    """The docs site is not published: on the repository's front page README's links are the only way to the pages
    (its documentation section named them without a link)."""
    readme = ROOT / "README.md"
    linked = {(ROOT / link).resolve() for link in re.findall(r"\]\(([^)\s#]+\.md)(?:#[^)\s]*)?\)",
                                                             readme.read_text(encoding="utf-8"))}
    unlinked = [str(page.relative_to(ROOT)) for page in sorted(DOCS.rglob("*.md")) if page.resolve() not in linked]
    assert not unlinked, f"README.md does not link these pages of docs/: {unlinked}"


def _anchors(page: Path) -> set[str]:
    """The ids mkdocs gives a page's headings: Python-Markdown's toc slugify, and _1, _2 ... after a repeated one."""
    text = re.sub(r"^( *)```.*?^\1```", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)
    ids = set()
    for heading in re.findall(r"^#{1,6} +(.+?)(?: +#+)? *$", text, re.M):
        heading = unicodedata.normalize("NFKD", heading).encode("ascii", "ignore").decode()
        slug = re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", heading).strip().lower())
        unique, n = slug, 0
        while unique in ids:
            n += 1
            unique = f"{slug}_{n}"
        ids.add(unique)
    return ids


@needs_source_tree
def test_links_to_a_section_lead_to_a_heading():
    """A `page.md#section` link or reference names a heading of that page: mkdocs --strict checks docs/'s links only,
    in its slow test and only where mkdocs is installed, and nothing checked README's, benchmarks/README's or those
    the package's error messages give (docs/training.md#your-own-model-as-a-codec), which a renamed heading breaks."""
    refs = []
    for page in DOC_PAGES:
        text = page.read_text(encoding="utf-8")
        for m in re.finditer(r"\]\(([^)\s#]*)#([^)\s]+)\)", text):
            target = (page.parent / m.group(1)).resolve() if m.group(1) else page
            refs.append((f"{page.relative_to(ROOT)}:{text[:m.start()].count(chr(10)) + 1}", target, m.group(2)))
    sources = [*(ROOT / "latent_transforms").rglob("*.py"),
               *(path for folder in ("examples", "benchmarks", "scripts") for path in (ROOT / folder).glob("*.py"))]
    for source in sorted(sources):
        text = source.read_text(encoding="utf-8")
        for m in re.finditer(r"\b(docs/[\w/]+\.md)#([\w-]+)", text):
            refs.append((f"{source.relative_to(ROOT)}:{text[:m.start()].count(chr(10)) + 1}", ROOT / m.group(1),
                         m.group(2)))
    assert len(refs) > 100, len(refs)  # the links were found
    anchors, broken = {}, []
    for where, target, anchor in refs:
        if target.suffix != ".md" or not target.is_file():
            continue  # a missing file: mkdocs and test_readme_links_lead_to_files_that_exist say so
        if target not in anchors:
            anchors[target] = _anchors(target)
        if anchor not in anchors[target]:
            broken.append(f"{where}: {target.relative_to(ROOT)}#{anchor}")
    assert not broken, "links to a section that the page does not have:\n" + "\n".join(broken)


@needs_source_tree
def test_the_api_reference_members_exist():
    """Every name of docs/api.md's ``members:``/``inherited_members:`` lists is an attribute of its object:
    ``mkdocs build --strict`` leaves a misspelt or removed member out of the page without a warning."""
    import importlib

    text = (DOCS / "api.md").read_text(encoding="utf-8")
    missing = []
    for target, options in re.findall(r"^::: ([\w.]+)\n((?:    .*\n)*)", text, re.M):
        try:
            obj = importlib.import_module(target)
        except ImportError:
            module, _, name = target.rpartition(".")
            obj = getattr(importlib.import_module(module), name)
        for names in re.findall(r"members: \[([^\]]*)\]", options):
            missing += [f"{target}.{n}" for n in map(str.strip, names.split(",")) if n and not hasattr(obj, n)]
    assert re.search(r"^::: latent_transforms\.base\.LatentTransform\n    options:\n      members: \[", text, re.M)
    assert not missing, f"docs/api.md lists members that do not exist: {missing}"

@needs_source_tree
def test_the_api_reference_shows_every_public_name_of_the_package_and_its_codecs():
    """docs/api.md renders every name of latent_transforms.__all__ and every class and function of
    latent_transforms.codecs.__all__, and names the others (CODECS, Latents): a new public name must be added there."""
    import latent_transforms
    import latent_transforms.codecs as codecs

    text = (DOCS / "api.md").read_text(encoding="utf-8")
    rendered = {target.rsplit(".", 1)[-1] for target in re.findall(r"^::: ([\w.]+)$", text, re.M)}
    missing = [n for n in latent_transforms.__all__ if n not in rendered]
    for name in codecs.__all__:
        obj = getattr(codecs, name)
        if _is_class(obj) or inspect.isfunction(obj):
            if name not in rendered:
                missing.append(f"codecs.{name}")
        elif f"`{name}`" not in text and f"codecs.{name}`" not in text:
            missing.append(f"codecs.{name} (not named)")
    assert not missing, f"docs/api.md leaves out: {missing}"


@needs_source_tree
def test_what_the_pages_name_by_its_module_path_the_api_reference_renders():
    """A class or function a page names as ``latent_transforms.MODULE.NAME`` or imports from a module of the package is
    rendered in docs/api.md (audit 246: reliability.md told code of one's own to use
    ``latent_transforms.validation.values_read()``, which no page documented, and its 16-bit snippet imported
    ``unflatten_latents`` from ``latent_transforms.codecs.base`` rather than ``latent_transforms.codecs``)."""
    import importlib

    rendered = _rendered_api()
    named = set()
    for page in PAGES:
        text = (DOCS / page).read_text(encoding="utf-8")
        named |= set(re.findall(r"`(latent_transforms(?:\.\w+)+)", text))
        for module, names in re.findall(r"^\s*from (latent_transforms(?:\.\w+)*) import ([\w, ]+)$", text, re.M):
            named |= {f"{module}.{name.strip()}" for name in names.split(",")}
    missing = []
    for dotted in sorted(named):
        module, _, name = dotted.rpartition(".")
        try:
            obj = getattr(importlib.import_module(module), name, None)
        except ImportError:  # a member of a class (latent_transforms.codecs.Codec.encode): its class is rendered
            continue
        top_level = module == "latent_transforms" and any(obj is o for o in rendered.values())
        if (_is_class(obj) or inspect.isfunction(obj)) and dotted not in rendered and not top_level:
            missing.append(dotted)
    assert not missing, f"pages name these, which docs/api.md does not render: {missing}"


def _public_names_of(cls: type) -> set[str]:
    """The names without a leading ``_`` that ``cls`` has beyond ``nn.Module``'s: its class attributes, and what the
    library's code of it and its bases assigns to ``self`` or registers (buffers, submodules)."""
    from torch import nn

    names = set(dir(cls))
    for base in cls.__mro__:
        if base.__module__.partition(".")[0] == "latent_transforms":
            for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(base)))):
                if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and \
                        isinstance(node.value, ast.Name) and node.value.id == "self":
                    names.add(node.attr)
                elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args and \
                        node.func.attr in ("register_buffer", "register_parameter", "add_module") and \
                        isinstance(node.args[0], ast.Constant):
                    names.add(node.args[0].value)
    return {n for n in names if not n.startswith("_")} - set(dir(nn.Module)) - set(dir(OSError))


@needs_source_tree
def test_every_public_name_of_a_rendered_class_is_documented():
    """Each class docs/api.md renders (and each of ``latent_transforms.__all__``) has no public name that the page
    leaves out: a name is shown by a ``members:`` list of the class or of a rendered base, is a constructor option of
    one, is named in one's rendered docstring (````name````, ````t.name````), or is named on the page as
    ```Class.name```. Audit 256: ``value_checks``, ``index_size``, ``accepted_labels``, ``takes_images``,
    ``Codec.check_positive``, ``ConvVAE.kl_divergence``, ``LatentCache.image_checks`` and FeatureCovariance's ``sync``
    and ``group`` (assignable past ``sync_stats``' check) looked public and were nowhere in the reference."""
    import importlib

    import latent_transforms

    text = (DOCS / "api.md").read_text(encoding="utf-8")
    shown: dict[type, set[str]] = {}
    for target, options in re.findall(r"^::: ([\w.]+)\n((?:    .*\n)*)", text + "\n", re.M):
        lists = [set(map(str.strip, names.split(","))) - {""}
                 for names in re.findall(r"(?<!inherited_)members: \[([^\]]*)\]", options)]
        try:
            module = importlib.import_module(target)
        except ImportError:
            module_name, _, name = target.rpartition(".")
            shown[getattr(importlib.import_module(module_name), name)] = set().union(*lists)
            continue
        for name in set().union(*lists):
            if inspect.isclass(getattr(module, name)):
                shown.setdefault(getattr(module, name), set())
    for name in latent_transforms.__all__:
        assert getattr(latent_transforms, name) in shown or not inspect.isclass(getattr(latent_transforms, name))
    missing = []
    for cls in [c for c in shown if inspect.isclass(c)]:
        documented = set(re.findall(rf"`{cls.__name__}\.(\w+)`", text))
        for base in (b for b in cls.__mro__ if b in shown):
            documented |= shown[base] | set(re.findall(r"``(?:\w+\.)?(\w+)", base.__dict__.get("__doc__") or ""))
            if not issubclass(base, BaseException):
                documented |= set(inspect.signature(base).parameters)
        missing += [f"{cls.__name__}.{n}" for n in sorted(_public_names_of(cls) - documented)]
    assert len(shown) > 20, sorted(c.__name__ for c in shown)  # the page's classes were found
    assert not missing, ("public names docs/api.md does not document (render them with a docstring, or rename them "
                         f"with a leading underscore): {missing}")


@needs_source_tree
def test_every_module_declares_what_the_api_reference_documents():
    """Every module of the package has an ``__all__``: the classes and functions of it that docs/api.md renders (by
    whatever path), and constants the page names (``hub.FORMAT``, ``data.SPLIT_SPECS``); the rest, shared machinery
    imported across the package's modules, is not API. Without one, ``help()`` printed the names a module imports,
    such as ``Callable``, and ``import *`` took them (API audit 235: evaluation, visualize and models had none, train
    exported ``register_cli``, the CLI's plumbing, testing the helpers its contract check is built of; audit 256: 23
    modules had none, offering ``check_batch``, ``setting``, ``random_shift_flip`` ... as public)."""
    import importlib
    import pkgutil

    import latent_transforms

    text = (DOCS / "api.md").read_text(encoding="utf-8")
    rendered = [obj for obj in _rendered_api().values() if "." not in obj.__qualname__]
    wrong = []
    for info in pkgutil.walk_packages(latent_transforms.__path__, "latent_transforms."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        public = getattr(module, "__all__", None)
        if public is None:
            wrong.append(f"{info.name} has no __all__")
            continue
        for name in public:
            obj = getattr(module, name)
            if not any(obj is o for o in rendered) and f"{name}`" not in text:
                wrong.append(f"{info.name}.__all__ has {name}, which docs/api.md neither renders nor names")
        wrong += [f"docs/api.md renders {info.name}.{o.__name__}, which its __all__ leaves out" for o in rendered
                  if o.__module__ == info.name and o.__name__ not in public]
    assert len(rendered) > 50, len(rendered)  # the page's classes and functions were found
    assert not wrong, "\n".join(wrong)



# Names a module defines without a leading underscore that its own code alone uses, each shown to users otherwise
MACHINERY_SHOWN = {
    "codecs.glow.BoundedAffineCoupling": "a codec network's layer, printed in its repr and pickled with a whole codec",
    "codecs.glow.SyncFreeActNorm": "a codec network's layer, printed in its repr and pickled with a whole codec",
    "codecs.vae.ResidualBlock": "a codec network's layer, printed in its repr and pickled with a whole codec",
    "demo.run_demo": "docs/results.md reproduces a figure with it",
    "evaluation.Augment": "fit_classifier's signature, rendered in docs/api.md, names it",
    "models.CIFAR10_MEAN": "CifarResNet18's signature, rendered in docs/api.md, shows it as mean's default",
    "models.CIFAR10_STD": "CifarResNet18's signature, rendered in docs/api.md, shows it as std's default",
    "train.WeightEMA": "train_codec's docstring, rendered in docs/api.md, names it",
}


@needs_source_tree
def test_a_name_outside_a_modules_all_is_private_unless_other_code_of_the_project_uses_it():
    """A module's functions, classes and constants outside its ``__all__`` are the package's shared machinery: used by
    another module of it, or by the benchmarks, examples and scripts; those that only their own module (and the tests)
    use have a leading underscore, so that ``latent_transforms.MODULE.<Tab>`` offers no internal name as public (audit
    298: 25 did, such as ``train.RECIPES``, ``hub.SHIPPED_DIR``, ``cli.build_parser``, ``base.WINDOW``)."""
    package = ROOT / "latent_transforms"
    users = sorted(package.rglob("*.py")) + [path for folder in ("benchmarks", "examples", "scripts")
                                             for path in (ROOT / folder).rglob("*") if path.is_file()]
    texts = {path: path.read_text(encoding="utf-8", errors="replace") for path in users + [ROOT / "pyproject.toml"]}
    words = {path: set(re.findall(r"\w+", text)) for path, text in texts.items()}
    alone = []
    for path in sorted(package.rglob("*.py")):
        public, defined = [], []
        for node in ast.parse(texts[path]).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                defined.append(node.name)
            for target in node.targets if isinstance(node, ast.Assign) else [node.target] \
                    if isinstance(node, ast.AnnAssign) else []:
                names = [n.id for n in ast.walk(target) if isinstance(n, ast.Name)]
                public += ast.literal_eval(node.value) if names == ["__all__"] else []
                defined += names
        module = ".".join(path.relative_to(package).with_suffix("").parts)
        alone += [f"{module}.{name}" for name in defined if not name.startswith("_") and name not in public
                  and not any(name in used for other, used in words.items() if other != path)]
    assert len(texts) > 50, len(texts)  # the package's modules and the project's scripts were read
    assert sorted(alone) == sorted(MACHINERY_SHOWN), "used by their own module alone: rename them with a leading _"


@needs_source_tree
def test_what_the_api_reference_shows_of_a_package_or_by_its_path_is_in_that_modules_all():
    """The other way round (mutation round 37: ``isda_logits`` left out of ``latent_transforms.__all__``,
    ``exact_math`` or ``CODECS`` out of ``latent_transforms.codecs.__all__``, ``FORMAT`` out of ``hub.__all__`` passed,
    as the test above looks for a rendered name in the ``__all__`` of the module that defines it): each class and
    function docs/api.md renders that the package or its ``codecs`` holds from their modules, and each name the page
    gives as ```latent_transforms.MODULE.NAME```, is in that package's or module's ``__all__``."""
    import importlib

    import latent_transforms
    import latent_transforms.codecs

    text = (DOCS / "api.md").read_text(encoding="utf-8")
    rendered = list(_rendered_api().values())
    given = [(package, name) for package in (latent_transforms, latent_transforms.codecs)  # not what codecs imports
             for name, obj in vars(package).items() if any(obj is o for o in rendered)
             and obj.__module__.startswith(package.__name__ + ".")]  # for its own use (WrongTypeError)
    for module, name in re.findall(r"`(latent_transforms(?:\.\w+)*)\.(\w+)`", text):
        try:
            given.append((importlib.import_module(module), name))
        except ImportError:  # a member of a class (latent_transforms.codecs.Codec.encode): its class is rendered
            continue
    left_out = [f"{module.__name__}.{name}" for module, name in given if name not in module.__all__]
    assert len(given) > 20, given  # the package's classes and the page's names were found
    assert not left_out, f"docs/api.md shows these, which the __all__ of their module leaves out: {left_out}"


def _pyproject_list(pyproject: str, key: str) -> list[str]:
    """The distribution names of pyproject's ``key = [...]`` list (``dependencies`` or an extra), lower case."""
    entry = re.search(rf"^{key}\s*=\s*\[(.*?)\]$", pyproject, re.M | re.S)
    assert entry is not None, f"pyproject.toml has no {key} list"
    return [re.match(r"[A-Za-z0-9_.-]+", spec).group(0).lower() for spec in re.findall(r'"([^"]+)"', entry.group(1))]


@needs_source_tree
def test_the_quickstarts_install_lines_name_what_each_installs():
    """Each ``pip install`` line of the quickstart names what it adds: the dependencies, the demo extra, then the
    test extra less the demo's (mkdocs's plugins go by "mkdocs")."""
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    page = (DOCS / "quickstart.md").read_text(encoding="utf-8")
    install = re.compile(r'^pip install "(\.(?:\[[a-z,]+\])?)"\s+#(.*)$', re.M)
    lines = {m.group(1): m.group(2).lower() for m in install.finditer(page)}
    demo = _pyproject_list(pyproject, "demo")
    adds = {".": _pyproject_list(pyproject, "dependencies"), ".[demo]": demo,
            ".[demo,test]": [d for d in _pyproject_list(pyproject, "test") if d not in demo]}
    unnamed = {line: [d for d in names if ("mkdocs" if d.startswith("mkdocs") else d) not in
                      re.findall(r"[a-z0-9_.-]+", lines.get(line, ""))] for line, names in adds.items()}
    assert not any(unnamed.values()), f"docs/quickstart.md's install lines leave out: {unnamed}"


@needs_source_tree
def test_training_page_gives_the_users_codec_its_own_name():
    """A shipped checkpoint's name is refused by `latent-transforms register` and hub.register(persist=True), and a
    file under its file name loads the shipped one."""
    from latent_transforms import hub
    from latent_transforms.data import describe_spec
    from latent_transforms.train import _KINDS

    shipped = set(hub._shipped_registry())
    text = (DOCS / "training.md").read_text(encoding="utf-8")
    names = []
    for command in re.findall(r"^latent-transforms train .*$", text.replace("\\\n", " "), re.M):
        args = shlex.split(command, comments=True)
        default = f"{_KINDS[args[2]]}-{describe_spec(args[args.index('--data') + 1])}"
        names.append(args[args.index("--name") + 1] if "--name" in args else default)
    for code in SNIPPET.findall(text):
        names += re.findall(r"""\bname=["']([^"']+)["']""", code)
        names += [Path(ref).stem for ref in re.findall(r"""hub\.(?:load|register)\(["']([^"']+)["']""", code)]
        names += [Path(ref).stem for ref in re.findall(r"""["']([^"']+)\.(?:safetensors|json)["']""", code)]
    assert len(names) >= 8, names  # the commands, train_codec(name=...), the paths and hub calls were all found
    assert not shipped & set(names), f"docs/training.md uses shipped names for the reader's codec: {shipped & set(names)}"


def test_every_option_after_the_leading_arguments_is_keyword_only():
    """docs/api.md promises it; FeatureCovariance, Compose, Glow and ConvVAE took every option positionally."""
    import latent_transforms
    leading = {"LatentTransform": [], "CodecTransform": ["codec"], "Compose": ["transforms"],
               "LatentNoise": ["codec", "eps"], "LatentAdversarial": ["codec", "eps"], "VarMixup": ["codec", "alpha"],
               "ISDA": ["num_classes", "lambda0"], "ISDALoss": ["num_classes", "lambda0"],
               "FeatureCovariance": ["num_classes", "feature_dim"], "LatentMixupInference": ["model", "codec", "references"],
               "LatentCache": ["codec", "images"], "Codec": ["image_shape"], "Glow": ["image_shape"],
               "ConvVAE": ["image_shape"]}
    found = {}
    for name in latent_transforms.__all__:
        obj = getattr(latent_transforms, name)
        if inspect.isclass(obj):
            found[name] = [p.name for p in inspect.signature(obj).parameters.values()
                           if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    assert found == leading


def test_the_base_class_docstring_names_the_hooks_with_the_parameters_they_are_called_with():
    """LatentTransform's docstring, rendered in docs/api.md, names ``make_params(...)``, ``transform(...)`` and
    ``check_inputs(...)`` with their parameters (audit 335: it gave ``transform(x, y, model, params)``, and a subclass
    written from it failed with a TypeError: the call passes ``index`` too)."""
    from latent_transforms import LatentTransform

    for hook in ("make_params", "transform", "check_inputs"):
        named = re.findall(rf"``{hook}\(([^)]*)\)", LatentTransform.__doc__ or "")
        wanted = list(inspect.signature(getattr(LatentTransform, hook)).parameters)[1:]  # without self
        assert named, f"the docstring no longer names {hook}(...)"
        assert all([a.split("=")[0].strip() for a in args.split(",")] == wanted for args in named), (hook, named)



# --- the public names as a REPL shows them: repr in the constructor's spelling, signatures, help's first line ---

def _public_callables() -> dict[str, object]:
    """``{name: class or function}`` of ``latent_transforms.__all__`` and ``latent_transforms.codecs.__all__``."""
    import latent_transforms
    import latent_transforms.codecs as codecs

    return {name: getattr(module, name) for module in (latent_transforms, codecs) for name in module.__all__
            if _is_class(getattr(module, name)) or inspect.isfunction(getattr(module, name))}


@functools.cache
def _small_codecs():
    """A tiny Glow and a tiny VAE, for (1, 8, 8) images, built once: what a repr test builds its objects from."""
    from conftest import tiny_glow, tiny_vae

    return tiny_glow(), tiny_vae()


def _settings_of(name: str) -> dict:
    """Every option of the class ``name`` of ``latent_transforms.__all__`` set otherwise than by default (the objects it
    is built from: a tiny codec, a model, images)."""
    import torch
    from torch import nn

    from latent_transforms import LatentCache, LatentNoise

    (glow, vae), images = _small_codecs(), torch.rand(4, 1, 8, 8)
    codec = {"codec": glow, "levels": [1], "p": 0.5, "generator": 3}
    isda = {"num_classes": 10, "lambda0": 0.25, "covariance": "diagonal", "feature_dim": 16, "sync_stats": False}
    return {
        "LatentTransform": lambda: {"p": 0.5, "generator": 3, "num_classes": 10},
        "CodecTransform": lambda: {**codec, "num_classes": 10},
        "LatentNoise": lambda: {**codec, "eps": 3.0, "norm": "linf",
                                "cache": LatentCache(glow, images, progress=False)},
        "LatentAdversarial": lambda: {**codec, "eps": 2.0, "steps": 3, "step_size": 0.5, "norm": "linf",
                                      "random_start": False, "target": "true"},
        "VarMixup": lambda: {**codec, "codec": vae, "levels": [0], "alpha": 0.4, "num_classes": 10,
                             "posterior": "sample", "per_sample": False, "keep_detail": False},
        "ISDA": lambda: {**isda, "layer": "fc", "p": 0.5, "generator": 3},
        "ISDALoss": lambda: isda,
        "FeatureCovariance": lambda: {"num_classes": 10, "feature_dim": 16, "covariance": "diagonal",
                                      "sync_stats": False},
        "LatentMixupInference": lambda: {"model": nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), "codec": glow,
                                         "references": images, "lam": 0.3, "num_mixes": 2, "generator": 3},
        "LatentCache": lambda: {"codec": glow, "images": images, "batch_size": 2, "progress": False,
                                "verify_images": False},
        "Compose": lambda: {"transforms": [LatentNoise(glow, p=0.5)], "num_classes": 10},
        "Glow": lambda: {"image_shape": (1, 8, 8), "levels": 2, "steps": 1, "hidden": 8, "alpha": 0.1,
                         "scale_floor": 0.1, "num_bins": 32},
        "ConvVAE": lambda: {"image_shape": (1, 8, 8), "latent_dim": 4, "hidden": 8, "beta": 0.5, "latent_side": 2,
                            "decoder_blocks": 1},
    }[name]()


# What a repr shows besides the constructor's options, by design: the object's state (the schedule's progress, that
# sets lam; whether a codec is frozen) and a cache's content (N latents, positional, of latent_dim numbers) ...
REPR_STATE = {"ISDA": {"progress"}, "ISDALoss": {"progress"}, "Glow": {"frozen"}, "ConvVAE": {"frozen"},
              "LatentCache": {"latent_dim"}}
# ... and the options an object does not keep: a cache holds latents, not the codec and images they came from
NOT_KEPT = {"LatentCache": {"codec", "images", "batch_size", "progress"}}


@pytest.mark.parametrize("name", sorted(n for n, o in _public_callables().items()  # Codec: abstract
                                         if inspect.isclass(o) and n != "Codec"))
@pytest.mark.parametrize("options", ["required", "all"])
def test_a_public_class_repr_is_its_constructor_call(name, options):
    """``repr(obj)``, as torchvision's and kornia's, is the constructor's call that built it, in its spelling: every
    option set (values as given; the objects it is built from by their class, a tensor by its length) and no keyword
    the constructor would refuse, one line but a container's steps (a codec's networks below it, as nn.Module prints
    them). Audit 298: Compose printed nn.Module's ``(steps): ModuleList(...)``, not the steps as given."""
    import torch
    from torch import nn

    from latent_transforms import LatentTransform

    cls = _public_callables()[name]
    params = dict(inspect.signature(cls).parameters)
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):  # CodecTransform's: LatentTransform's options
        params |= inspect.signature(LatentTransform).parameters
    given = _settings_of(name)
    if options == "required":
        given = {k: v for k, v in given.items()
                 if params[k].default is params[k].empty or k in ("codec", "image_shape")}  # the leading ones
    obj = cls(**given)
    text = repr(obj)
    if "\n  (" in text:  # nn.Module's: the settings on the first line, the submodules below
        text = f"{name}({obj.extra_repr()})"
    call = ast.parse(text, mode="eval").body
    assert isinstance(call, ast.Call) and ast.unparse(call.func) == name, text
    shown = {k.arg: k.value for k in call.keywords}
    assert not set(shown) - set(params) - REPR_STATE.get(name, set()), f"keywords {name}() does not take: {text}"
    shown |= {p: a for p, a in zip(params, call.args) if name != "LatentCache"}  # its positional N is its size
    for option, value in given.items():
        if option in NOT_KEPT.get(name, ()):
            continue
        assert option in shown, f"{name}'s repr leaves out {option}: {text}"
        if isinstance(value, list) and isinstance(value[0], nn.Module):  # Compose's steps, each by its own repr
            assert [ast.unparse(s) for s in shown[option].elts] == [repr(s) for s in value], text
        elif isinstance(value, (bool, int, float, str, list, tuple)):
            stated = ast.literal_eval(shown[option])
            assert (list(stated) == list(value)) if isinstance(value, (list, tuple)) else stated == value, text
        elif isinstance(value, torch.Tensor):  # references: their count
            assert ast.literal_eval(shown[option]) == len(value), text
        else:  # a codec, a model, a cache: by their class
            assert ast.unparse(shown[option]).startswith(type(value).__name__), text


@pytest.mark.parametrize("name", sorted(_public_callables()))
def test_a_public_name_reads_well_in_help_and_its_signature(name):
    """``help(latent_transforms.X)``: the docstring's first line says what X is in words (audit 298:
    LatentMixupInference's was a formula), its signature shows the annotations as written (FeatureCovariance's
    ``sync_stats`` showed ``"'bool | dist.ProcessGroup'"``, quoted twice), and the docstring names each parameter, in
    an Args section or in a shapes line ``x: (B, C, H, W) ...`` (flatten_latents' ``z`` and unflatten_latents'
    ``flat`` were in none)."""
    obj = _public_callables()[name]
    doc = inspect.getdoc(obj) or ""
    assert re.match(r"[A-Za-z]", doc), f"{name}'s docstring starts {doc[:40]!r}"
    for function in [obj, *(m for k, m in vars(obj).items() if not k.startswith("_") and inspect.isfunction(m))] \
            if inspect.isclass(obj) else [obj]:
        signature = inspect.signature(function)
        annotations = [p.annotation for p in signature.parameters.values()] + [signature.return_annotation]
        quoted = [a for a in annotations if isinstance(a, str) and a[:1] in "'\""]
        assert not quoted, f"{name}.{function.__name__}{signature}: an annotation quoted twice"
    unnamed = _unnamed_parameters(obj, doc)
    assert not unnamed, f"{name}'s docstring names none of {unnamed}"


def _unnamed_parameters(obj, doc: str) -> list[str]:
    """The parameters of ``obj``'s signature (but self, cls, ``*args`` and ``**kwargs``) that ``doc`` never names."""
    try:
        params = inspect.signature(obj).parameters
    except ValueError:  # an exception class with BaseException's __init__: no signature, nothing to name
        return []
    return [p for p, v in params.items() if p not in ("self", "cls")
            and v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD) and not re.search(rf"\b{p}\b", doc)]


# --- the commands the docs give: every --flag must exist, and every literal value of an option with choices ---

DOC_PAGES = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted(DOCS.rglob("*.md"))]
FENCE = re.compile(r"^( *)```[^\n]*\n(.*?)^\1```", re.M | re.S)
COMMAND_START = re.compile(r"(?<![\w./-])(?:latent-transforms|python3?|torchrun)\s")
LINE_BREAK = re.compile(r"[\n\v]")
ASSIGNMENT = re.compile(r"^\s*([A-Za-z_]\w*)=\"([^\"]*)\"", re.M)


class _Parsed(Exception):
    def __init__(self, parser):
        super().__init__()
        self.parser = parser


def _script_parser(path: Path):
    """The ArgumentParser a script's main() builds, caught at its parse_args: nothing runs."""
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_docs_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    saved_path = list(sys.path)  # put back below: examples/ first on sys.path shadowed top-level names afterwards
    for folder in (str(path.parent), str(ROOT)):  # benchmarks import their siblings, examples their common.py
        if folder not in sys.path:
            sys.path.insert(0, folder)

    def caught(self, *args, **kwargs):
        raise _Parsed(self)

    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = caught
    modules = set(sys.modules)  # the script's siblings (models, common) are unloaded below: no later import finds
    try:
        spec.loader.exec_module(module)
        argv = [[]] if any(p.default is p.empty for p in inspect.signature(module.main).parameters.values()) else []
        module.main(*argv)  # main(argv) without a default gets []
    except _Parsed as parsed:
        return parsed.parser
    finally:
        argparse.ArgumentParser.parse_args = original
        sys.path[:] = saved_path
        for name in set(sys.modules) - modules:  # only the script's folder's: a package's submodules stay loaded
            if Path(getattr(sys.modules[name], "__file__", None) or "/").parent == path.parent:
                del sys.modules[name]
    raise AssertionError(f"{path} built no parser")


def _doc_command_chunks():
    """(page, first line, text) of every fenced block and inline code span of the pages, line continuations joined
    and the block's own VAR="..." assignments expanded."""
    for page in DOC_PAGES:
        text = page.read_text(encoding="utf-8")
        chunks = [(m.start(2), m.group(2)) for m in FENCE.finditer(text)]
        prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
        chunks += [(m.start(1), m.group(1)) for m in re.finditer(r"`([^`]+)`", prose)]
        for start, chunk in chunks:
            chunk = chunk.replace("\\\n", "\v")  # a continued line: one command, still counted as a line
            for _ in range(2):  # RUN="python ... $DATA": a value may use an earlier one
                for name, value in ASSIGNMENT.findall(chunk):
                    chunk = re.sub(rf"\${{?{name}\b}}?", lambda _: value.replace("\v", " "), chunk)
            yield page, text[:start].count("\n") + 1, chunk


def _doc_commands():
    """(where, program, argv) of every command of the CLI or of a script in the repository that the pages give."""
    import argparse

    from latent_transforms.cli import _build_parser

    subcommands = next(a for a in _build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    for page, line, chunk in _doc_command_chunks():
        written = set(re.findall(r"\bcat > *(\S+) *<<", chunk))  # a script the block itself writes: the reader's
        starts = [m.start() for m in COMMAND_START.finditer(chunk)]
        for begin, end in zip(starts, starts[1:] + [len(chunk)]):
            command = re.split(r"\s#|;|&&|\||&|\"|\n", chunk[begin:end])[0].replace("\v", " ")
            try:
                words = shlex.split(command)
            except ValueError:
                words = command.split()
            where = f"{page.relative_to(ROOT)}:{line + len(LINE_BREAK.findall(chunk, 0, begin))}"
            if words[0] == "latent-transforms":
                if len(words) > 1 and words[1] in subcommands:
                    yield where, f"latent-transforms {words[1]}", subcommands[words[1]], words[2:]
                continue
            scripts = [i for i, w in enumerate(words) if w.endswith(".py")]
            if not scripts:
                continue
            name = words[scripts[0]]
            if name in written:
                continue
            path = next((p for p in (ROOT / name, ROOT / "benchmarks" / name, ROOT / "examples" / name) if p.is_file()),
                        None)
            yield where, name, path, words[scripts[0] + 1:]


@needs_source_tree
def test_doc_commands_use_options_that_exist():
    """Every `--flag` in a command the docs give exists in that script's (or CLI subcommand's) argparse, and every
    literal value given to an option with choices (`--arms`, `--eval-on`, ...) is one of them."""
    parsers, wrong, checked = {}, [], 0
    for where, name, target, args in _doc_commands():
        if target is None:
            wrong.append(f"{where}: {name}: no such script")
            continue
        if isinstance(target, Path):
            if target not in parsers:
                parsers[target] = _script_parser(target)
            target = parsers[target]
        options = target._option_string_actions
        for i, word in enumerate(args):
            if not word.startswith("--") or word == "--":
                continue
            flag = word.split("=")[0]
            checked += 1
            if flag not in options:
                wrong.append(f"{where}: {name}: no option {flag}")
                continue
            action = options[flag]
            if action.choices is None or "=" in word:
                continue
            many = action.nargs in ("+", "*") or isinstance(action.nargs, int)
            values = []
            for value in args[i + 1:]:
                if value.startswith("-"):
                    break
                values.append(value)
                if not many:
                    break
            values = [v for v in values if "$" not in v and not v.isupper() and v != "..."]  # placeholders
            wrong += [f"{where}: {name}: {flag} {v!r} is not one of {list(action.choices)}"
                      for v in values if v not in action.choices]
    assert checked > 100, checked  # the commands were found
    assert not wrong, "doc commands that their script would refuse:\n" + "\n".join(wrong)


# --- the defaults the pages state: a method page's parameter table and a quoted signature, against the code ---

METHOD_PAGES = {"latent_noise.md": "LatentNoise", "latent_adversarial.md": "LatentAdversarial",
                "varmixup.md": "VarMixup", "isda.md": "ISDA", "mixup_inference.md": "LatentMixupInference"}
TABLE_ROW = re.compile(r"^\| `(\w+)` \| ([^|]+) \|", re.M)
QUOTED_SIGNATURE = re.compile(r"`(\w+)\(([^`()]*)\)`")
_NOT_STATED = object()


def _stated_value(cell: str):
    """The literal a table cell starts with (`0.25`, `"l2"`, `None (all)`, 0.5), else _NOT_STATED."""
    cell = cell.strip()
    quoted = re.match(r"`([^`]+)`", cell)
    text = quoted.group(1) if quoted else re.split(r"[\s(]", cell, maxsplit=1)[0]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return _NOT_STATED


@needs_source_tree
def test_stated_defaults_are_the_code_defaults():
    """A method page's parameter table (`| `eps` | `1.0` | ...`) and a quoted signature of a public class or function
    (`ISDA(num_classes, lambda0=0.5, *, covariance="full", ...)`) state the defaults the code has."""
    import latent_transforms

    wrong, checked = [], 0
    for page, name in METHOD_PAGES.items():
        params = inspect.signature(getattr(latent_transforms, name)).parameters
        for match in TABLE_ROW.finditer((DOCS / "methods" / page).read_text(encoding="utf-8")):
            param, stated = match.group(1), _stated_value(match.group(2))
            if param not in params or stated is _NOT_STATED:
                continue
            default = params[param].default
            if default is inspect.Parameter.empty or (default is None and stated is not None):  # required; computed
                continue
            checked += 1
            if stated != default or type(stated) is bool is not type(default):
                wrong.append(f"docs/methods/{page}: {name}({param}=...) is stated {stated!r}, the code's is {default!r}")
    for page in DOC_PAGES:
        text = page.read_text(encoding="utf-8")
        for match in QUOTED_SIGNATURE.finditer(text):
            name, args = match.groups()
            obj = getattr(latent_transforms, name, None)
            if obj is None or "=" not in args:
                continue
            try:
                stated = ast.parse(f"def f({args}): pass").body[0].args
            except SyntaxError:  # a call such as LatentNoise(codec, 5.0, p=0.5), not a signature
                continue
            params = inspect.signature(obj).parameters
            if not stated.args or stated.args[0].arg != next(iter(params)):  # a call, LatentNoise(eps=20), not a signature
                continue
            where = f"{page.relative_to(ROOT)}:{text[:match.start()].count(chr(10)) + 1}"
            positional = [a.arg for a in stated.posonlyargs + stated.args]
            for arg, node in zip(positional[len(positional) - len(stated.defaults):] + [a.arg for a in stated.kwonlyargs],
                                 stated.defaults + stated.kw_defaults):
                checked += 1
                if arg not in params:
                    wrong.append(f"{where}: {name} has no parameter {arg!r}")
                elif node is not None and ast.literal_eval(node) != params[arg].default:
                    wrong.append(f"{where}: {name}({arg}=...) is stated {ast.literal_eval(node)!r}, the code's is "
                                 f"{params[arg].default!r}")
                elif (params[arg].kind is params[arg].KEYWORD_ONLY) != (arg in [a.arg for a in stated.kwonlyargs]):
                    wrong.append(f"{where}: {name}'s {arg!r} is {params[arg].kind.description} in the code")
    assert checked > 30, checked  # the tables and signatures were found
    assert not wrong, "defaults the docs state that the code does not have:\n" + "\n".join(wrong)


# --- the docstrings of what docs/api.md renders: an Args section names the parameters the signature has ---

ARGS_SECTION = re.compile(r"^(?:Args|Arguments|Parameters):\n((?:[ \t]+.*\n|\n)*)", re.M)
ARG_ENTRY = re.compile(r"^    (\*{0,2}\w+(?:, \*{0,2}\w+)*)(?: \([^)]*\))?:(.*(?:\n {8,}.*)*)", re.M)
STATED_DEFAULT = re.compile(r"\(default (?:``)?([^`),;]+?)(?:``)?[),;]|[Dd]efault:? ``([^`]+)``")


def _rendered_api() -> dict[str, object]:
    """``{dotted name: object}`` of each class, function and method docs/api.md renders (``:::`` and members)."""
    import importlib

    found = {}
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    for target, options in re.findall(r"^::: ([\w.]+)\n((?:    .*\n)*)", text + "\n", re.M):
        try:
            owner, is_module = importlib.import_module(target), True
        except ImportError:
            module, _, name = target.rpartition(".")
            owner, is_module = getattr(importlib.import_module(module), name), False
            found[target] = owner
        for names in re.findall(r"(?<!inherited_)members: \[([^\]]*)\]", options):
            for member in filter(None, map(str.strip, names.split(","))):
                obj = getattr(owner, member) if is_module else inspect.getattr_static(owner, member)
                found[f"{target}.{member}"] = getattr(obj, "__func__", obj)  # a staticmethod's or classmethod's
    return {k: v for k, v in found.items() if inspect.isclass(v) or inspect.isfunction(v)}


@needs_source_tree
def test_rendered_docstrings_name_every_parameter_and_args_state_the_defaults():
    """Where a rendered docstring has an ``Args:`` section (Google style, as mkdocstrings reads it), it names every
    parameter of the signature and no other, and a literal default it states (``(default 1.0)``, ``Default:
    ``"l2"```) is the signature's (API audit 235: check_transform_contract's ``y`` hid inside ``x``'s entry, where
    mkdocstrings shows no ``y`` row; train_codec's ``x_train`` had none). Without one, its text names each parameter
    (audit 301: 25, among them hub.register's ``trained_on`` and ``notes``, fit_classifier's ``desc`` and
    ``progress``, load_images' ``split``)."""
    wrong, sections, defaults = [], 0, 0
    for name, obj in _rendered_api().items():
        doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
        section = ARGS_SECTION.search(inspect.cleandoc(doc or "") + "\n")
        if section is None:
            wrong += [f"{name}: its docstring never names parameter {p!r}" for p in _unnamed_parameters(obj, doc or "")]
            continue
        sections += 1
        params = inspect.signature(obj).parameters
        required = [p for p, v in params.items() if v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)]
        entries = {arg.lstrip("*"): body for args, body in ARG_ENTRY.findall(section.group(1))
                   for arg in args.split(", ")}
        wrong += [f"{name}: the docstring's Args name {arg!r}, which the signature does not have"
                  for arg in entries if arg not in params]
        wrong += [f"{name}: parameter {p!r} has no entry in the docstring's Args" for p in required if p not in entries]
        for arg, body in entries.items():
            default = params[arg].default if arg in params else None
            if default is None or default is inspect.Parameter.empty:  # computed from other settings: stated in words
                continue
            for match in STATED_DEFAULT.finditer(" ".join(body.split())):
                try:
                    stated = ast.literal_eval(match.group(1) or match.group(2))
                except (ValueError, SyntaxError):
                    continue
                defaults += 1
                if stated != default:
                    wrong.append(f"{name}: the docstring states {arg}={stated!r}, the signature's default is {default!r}")
    assert sections >= 12 and defaults >= 10, (sections, defaults)  # the sections and their defaults were found
    assert not wrong, "docstrings that disagree with their signature:\n" + "\n".join(wrong)
