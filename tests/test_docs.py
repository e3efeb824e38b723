"""The documentation builds with ``mkdocs build --strict`` and every picture it references exists."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
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
