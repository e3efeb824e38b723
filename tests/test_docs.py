"""The documentation builds with ``mkdocs build --strict`` and every picture it references exists."""
from __future__ import annotations

import ast
import builtins
import inspect
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SNIPPET = re.compile(r"```python\n(.*?)```", re.S)
# What a page's text asks the reader to bring (a batch, a model, a loader ...). Every other name its snippets use
# must be imported or defined by the page itself, at or before the snippet that uses it: a reader runs them in order.
READER_CONTEXT = {  # pages not named here bring nothing
    "quickstart.md": {"loader", "model", "optimizer", "epochs"},
    "composition.md": {"x", "y", "model", "loader", "epochs", "x_uint8", "train_images", "train_labels", "idx"},
    "index.md": {"augment", "x", "y", "model"},
    "methods/isda.md": {"x", "y", "model", "loader", "epochs", "backbone", "features", "logits"},
    "methods/latent_adversarial.md": {"x", "y", "model"},
    "methods/latent_noise.md": {"x", "y"},
    "methods/mixup_inference.md": {"model", "x_train", "x_test_batch", "y_test_batch"},
    "methods/varmixup.md": {"x", "y", "model"},
}
PAGES = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+\.png)[^)]*\)|<img[^>]*\bsrc=\"([^\"]+\.png)\"")


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


def test_every_referenced_picture_exists():
    refs = _referenced_pictures()
    assert refs, "the docs reference no pictures at all (expected docs/images/demo.png at least)"
    missing = [f"{page.relative_to(ROOT)}: {ref}" for page, ref, path in refs if not path.is_file()]
    assert not missing, "missing pictures (run scripts/make_doc_pictures.py):\n" + "\n".join(missing)
    outside = [f"{page.relative_to(ROOT)}: {ref}" for page, ref, path in refs
               if DOCS / "images" not in path.parents]
    assert not outside, "pictures must live in docs/images/:\n" + "\n".join(outside)


def test_readme_pictures_exist():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for match in IMAGE.finditer(readme):
        ref = match.group(1) or match.group(2)
        if "://" not in ref:
            assert (ROOT / ref).is_file(), f"README.md references a missing picture: {ref}"


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
def test_mkdocs_build_strict(tmp_path):
    cmd = _mkdocs()
    if cmd is None:
        pytest.skip("mkdocs is not installed (pip install '.[docs]')")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([*cmd, "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "api" / "index.html").is_file()


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

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.known.add(node.name)
        self.known.update(a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg))
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
def test_page_snippets_define_what_they_use(page):
    text = (DOCS / page).read_text(encoding="utf-8")
    visitor = _UnboundNames(READER_CONTEXT.get(page, set()))
    missing = []
    for match in SNIPPET.finditer(text):
        first = text[:match.start()].count("\n") + 2  # the snippet's first line in the page
        visitor.missing = []
        visitor.visit(ast.parse(textwrap.dedent(match.group(1))))  # snippets in a list item are indented
        missing += [f"docs/{page}:{first + line - 1}: {name}" for line, name in visitor.missing]
    assert not missing, "names used before the page imports or defines them:\n" + "\n".join(missing)


def test_training_page_gives_the_users_codec_its_own_name():
    """A shipped checkpoint's name is refused by `latent-transforms register` and hub.register(persist=True), and a
    file under its file name loads the shipped one."""
    from latent_transforms import hub
    from latent_transforms.data import describe_spec
    from latent_transforms.train import KINDS

    shipped = set(hub._shipped_registry())
    text = (DOCS / "training.md").read_text(encoding="utf-8")
    names = []
    for command in re.findall(r"^latent-transforms train .*$", text.replace("\\\n", " "), re.M):
        args = shlex.split(command, comments=True)
        default = f"{KINDS[args[2]]}-{describe_spec(args[args.index('--data') + 1])}"
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
