"""The ``latent-transforms`` command line through ``cli.main``: list, fetch, --version, errors, train, demo."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import torch

from latent_transforms import __version__, demo, hub, modelutils, train
from latent_transforms.cli import _PROG, main
from latent_transforms.codecs import build_codec
from latent_transforms.data import load_images
from latent_transforms.validation import MAX_THREADS

from conftest import ROOT, needs_source_tree

# The real registry, but an empty private cache dir and no downloads (conftest's offline_hub); entries registered
# here on purpose without their file (register warns a user about that; tested in test_hub.py)
pytestmark = [pytest.mark.usefixtures("offline_hub"), pytest.mark.filterwarnings("ignore:registered .*, but its file")]


def _exit_code(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capsys.readouterr()
    return e.value.code, out, err


def test_importing_the_package_leaves_torch_dynamo_alone():
    # FeatureCovariance's @torch.compiler.disable imported torch._dynamo with the package: 1.8 s of every CLI start
    code = ("import sys, latent_transforms; from latent_transforms import LatentNoise, Compose; "
            "assert 'torch._dynamo' not in sys.modules, 'imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_list_shows_every_registered_checkpoint(capsys):
    names = [r["name"] for r in hub.list_checkpoints()]
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    if not names:
        assert out.strip() == "no checkpoints registered"
        return
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "KIND", "SIZE", "AVAILABLE", "QUALITY"]
    assert len(lines) == 1 + len(names) + 2 and f"`{_PROG} list -v`: every quality figure" in lines[-1]
    for name, line in zip(names, lines[1:]):
        assert line.split()[0] == name
    assert max(map(len, lines)) <= 100  # it was ~350 columns: training data and every quality figure on one line


def test_list_verbose_shows_every_detail(capsys):
    rows = hub.list_checkpoints()
    assert main(["list", "-v"]) == 0
    out = capsys.readouterr().out
    for r in rows:
        assert f"{r['name']}  ({r['config']['kind']}, " in out and r["sha256"] in out
        assert f"  trained on: {r['trained_on']}" in out
        for key in r.get("quality") or {}:
            assert f"{key}=" in out


def test_list_verbose_says_the_training_device_and_the_classifier_images(capsys):
    rows = hub.list_checkpoints()
    assert main(["list", "-v"]) == 0
    quality_lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  quality:")]
    assert len(quality_lines) == len(rows)
    for r, line in zip(rows, quality_lines):
        if not r["shipped"]:
            continue
        q = r["quality"]
        assert f"train_device_minutes={q['train_device_minutes']:.4g}, train_device={q['train_device']}" in line
        assert f"classifier_eval_images={q['classifier_eval_images']}" in line


def test_list_table_with_a_runtime_entry(capsys, monkeypatch):
    monkeypatch.setattr(hub, "_registered", {})
    hub.register("zz-test-vae", file="zz-test-vae.safetensors", sha256="0" * 64, size=2500,
                 config={"kind": "vae"}, trained_on="nothing", quality={"test_mse": 0.5})
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("NAME") and "AVAILABLE" in lines[0]
    row = next(line for line in lines if line.startswith("zz-test-vae"))
    assert row.split() == ["zz-test-vae", "vae", "2.5", "KB", "missing", "test_mse=0.5"]  # no hub URL: not "remote"
    monkeypatch.setenv("LATENT_TRANSFORMS_HUB_URL", "file:///nowhere")
    assert main(["list"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("zz-test-vae"))
    assert row.split() == ["zz-test-vae", "vae", "2.5", "KB", "remote", "test_mse=0.5"]
    assert {r["name"] for r in hub.list_checkpoints()} <= {line.split()[0] for line in lines[1:] if line}


def test_fetch_unknown_name_is_one_line_listing_known_names(capsys):
    code, out, err = _exit_code(["fetch", "nosuch"], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"{_PROG}: error: ")
    assert "unknown checkpoint 'nosuch' (not a registered name)" in err and "known checkpoints:" in err
    assert "Traceback" not in err and ".safetensors file" not in err  # fetch takes no path: no path suggested
    for r in hub.list_checkpoints():
        assert r["name"] in err
    with pytest.raises(hub.UnknownCheckpointError, match=r"not a registered name nor an existing \.safetensors file"):
        hub.load("nosuch")  # which does


def test_fetch_of_an_empty_name_says_it_is_empty(capsys):
    """It said "fetch takes a registered checkpoint name, got the path ''" (audit 302)."""
    code, out, err = _exit_code(["fetch", ""], capsys)
    assert code == 2 and out == ""
    assert err == (f"{_PROG}: error: the checkpoint name is empty: give a registered checkpoint name (`{_PROG} list` "
                   f"or hub.list_checkpoints() lists them)\n")


def test_fetch_of_a_file_path_says_fetch_takes_names(tmp_path, capsys):
    """An existing file was reported as 'not a registered name nor an existing .safetensors file'."""
    ckpt, _ = _run_files(tmp_path, "mine")
    for given in (str(ckpt), str(tmp_path / "missing.safetensors")):
        code, out, err = _exit_code(["fetch", given], capsys)
        assert code == 2 and out == ""
        assert err == (f"{_PROG}: error: fetch takes a registered checkpoint name, got the path {given!r}; load a file "
                       f"with hub.load(path), or register the run that wrote it ({_PROG} register RUN.json) to fetch "
                       f"it by name\n")


def _run_files(folder: Path, name: str, seed: int = 0) -> tuple[Path, Path]:
    """A tiny codec's ``NAME.safetensors`` and the ``NAME.json`` that ``train`` writes beside it (the parts used)."""
    torch.manual_seed(seed)
    codec = build_codec({"kind": "vae", "image_shape": [1, 8, 8], "latent_dim": 4, "hidden": 8})
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = folder / f"{name}.safetensors"
    sha = hub.save_checkpoint(codec, ckpt)
    entry = {"file": ckpt.name, "sha256": sha, "size": ckpt.stat().st_size, "config": codec.config,
             "trained_on": "digits", "quality": {"test_mse": 0.5}, "notes": ""}
    js = folder / f"{name}.json"
    js.write_text(json.dumps({"name": name, "file": ckpt.name, "sha256": sha, "registry_entry": entry}))
    return ckpt, js


def _cache_files() -> list[str]:
    return sorted(p.name for p in hub.cache_dir().iterdir()) if hub.cache_dir().exists() else []


def test_register_a_run_then_list_fetch_and_load_it_by_name(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(hub, "_registered", {})
    monkeypatch.setattr(hub, "_loaded", {})
    ckpt, js = _run_files(tmp_path / "runs", "zz-run")
    assert main(["register", str(js)]) == 0
    out = capsys.readouterr().out
    assert out == (f"registered 'zz-run' in {hub.user_registry_path()} (checkpoint: "
                   f"{hub.cache_dir() / 'zz-run.safetensors'})\n"
                   f"load it:  codec = latent_transforms.hub.load('zz-run')\n")
    assert _cache_files() == ["registry.json", "zz-run.safetensors"]
    assert hub.sha256_file(hub.cache_dir() / "zz-run.safetensors") == hub.sha256_file(ckpt)
    assert main(["register", str(js), "--name", "zz-other"]) == 0  # file name follows the name
    capsys.readouterr()
    entries = json.loads((hub.cache_dir() / "registry.json").read_text())["checkpoints"]
    assert {k: v["file"] for k, v in entries.items()} == {"zz-run": "zz-run.safetensors",
                                                          "zz-other": "zz-other.safetensors"}
    monkeypatch.setattr(hub, "_registered", {})  # as in another process: from the user registry file alone
    assert main(["list"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("zz-run "))
    assert row.split()[1] == "vae" and row.split()[-2:] == ["cached", "test_mse=0.5"]
    assert main(["fetch", "zz-other"]) == 0
    assert capsys.readouterr().out.strip() == str(hub.cache_dir() / "zz-other.safetensors")
    by_name, by_path = hub.load("zz-run"), hub.load(ckpt)
    assert all(torch.equal(a, b) for a, b in zip(by_name.state_dict().values(), by_path.state_dict().values()))
    # the same run again: nothing to do (was "already registered; pass --overwrite")
    assert main(["register", str(js)]) == 0
    assert capsys.readouterr().out == (f"'zz-run' is already registered with this run's checkpoint "
                                       f"({hub.cache_dir() / 'zz-run.safetensors'}); nothing changed\n")
    report = json.loads(js.read_text())
    report["registry_entry"]["notes"] = "retrained"
    js.write_text(json.dumps(report))
    code, _, err = _exit_code(["register", str(js)], capsys)  # taken by other details: only with --overwrite
    assert code == 2 and err.count("\n") == 1 and "'zz-run' is already registered (another checkpoint, or" in err
    assert "--overwrite" in err
    assert main(["register", str(js), "--overwrite"]) == 0
    assert hub._registry()["zz-run"]["notes"] == "retrained"
    # another checkpoint registered under the name by another process: this one's next load reads it (it kept the old)
    monkeypatch.setattr(hub, "_registered", {})  # a notebook: the name comes from the user registry file alone
    before = hub.load("zz-run")
    retrained, js2 = _run_files(tmp_path / "runs2", "zz-run", seed=1)
    env = {**os.environ, "LATENT_TRANSFORMS_HOME": str(hub.cache_dir())}
    subprocess.run([sys.executable, "-m", "latent_transforms.cli", "register", str(js2), "--overwrite"], env=env,
                   check=True, capture_output=True, timeout=120)
    after, fresh = hub.load("zz-run"), hub.load(retrained)
    assert all(torch.equal(a, b) for a, b in zip(after.state_dict().values(), fresh.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(after.state_dict().values(), before.state_dict().values()))
    assert len([k for k in hub._loaded if k[0] == "zz-run"]) == 1  # the earlier checkpoint's copy is dropped
    # the cached file deleted: "missing" in the list, and fetch says how to put it back
    (hub.cache_dir() / "zz-run.safetensors").unlink()
    assert main(["list"]) == 0
    assert next(line for line in capsys.readouterr().out.splitlines() if line.startswith("zz-run ")).split()[4] == \
        "missing"
    code, _, err = _exit_code(["fetch", "zz-run"], capsys)
    assert code == 2 and "`latent-transforms register RUN.json` copies its file back" in err
    assert err.index("latent-transforms register") < err.index("hub.register")  # the shell's way first (audit 302)
    assert main(["register", str(js2)]) == 0 and hub.fetch("zz-run") == hub.cache_dir() / "zz-run.safetensors"


@needs_source_tree
def test_register_run_from_python_is_the_command_and_the_training_page_snippet_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "_registered", {})
    monkeypatch.setattr(hub, "_loaded", {})
    monkeypatch.chdir(tmp_path)
    ckpt, js = _run_files(tmp_path / "runs", "my-glow-digits")
    page = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    snippet = next(s for s in re.findall(r"```python\n(.*?)```", page, re.S) if "register_run" in s)
    scope = {"hub": hub}
    with warnings.catch_warnings():  # the file is copied once registered: no "not in the cache dir" warning
        warnings.simplefilter("error")
        exec(snippet, scope)
    assert scope["done"] == hub.RegisteredRun("my-glow-digits", hub.cache_dir() / "my-glow-digits.safetensors", True)
    assert scope["codec"].fingerprint() == hub.load(ckpt).fingerprint()
    registry = hub.cache_dir() / "registry.json"
    written = registry.read_bytes()
    assert hub.register_run(js).changed is False and registry.read_bytes() == written  # again: nothing to do
    with pytest.raises(ValueError, match=r"already registered \(another checkpoint, or other details\); pass "
                                         r"--overwrite \(Python: overwrite=True\)"):
        hub.register_run(_run_files(tmp_path / "other", "my-glow-digits", seed=1)[1])
    assert hub.register_run(js, name="zz-py") == hub.RegisteredRun("zz-py", hub.cache_dir() / "zz-py.safetensors",
                                                                   changed=True)
    monkeypatch.setattr(hub, "_registered", {})  # another process: from the user registry file
    assert hub.load("zz-py").fingerprint() == scope["codec"].fingerprint()


def test_register_run_of_a_run_registered_for_this_process_only_writes_the_user_registry(tmp_path, monkeypatch):
    """hub.register(**registry_entry) without persist (training.md's old snippet) then register_run: the name is
    not yet in the user registry, so it is written there (it said changed=False and wrote nothing)."""
    monkeypatch.setattr(hub, "_registered", {})
    monkeypatch.setattr(hub, "_loaded", {})
    ckpt, js = _run_files(tmp_path / "runs", "zz-here")
    hub.cache_dir().mkdir(parents=True, exist_ok=True)
    (hub.cache_dir() / ckpt.name).write_bytes(ckpt.read_bytes())
    hub.register("zz-here", **json.loads(js.read_text())["registry_entry"])
    assert hub.register_run(js).changed is True
    monkeypatch.setattr(hub, "_registered", {})  # another process: from the user registry file
    assert "zz-here" in hub._registry() and hub.register_run(js).changed is False


def test_register_run_over_another_persisted_entry_registered_again_in_process_asks_for_overwrite(tmp_path,
                                                                                                  monkeypatch):
    """The name holds run A in the user registry and run A' in this process only (hub.register(overwrite=True)):
    registering A' for every process replaces A there, so it takes overwrite=True (it is not "nothing changed")."""
    monkeypatch.setattr(hub, "_registered", {})
    monkeypatch.setattr(hub, "_loaded", {})
    _, js = _run_files(tmp_path / "runs", "zz-mix")
    assert hub.register_run(js).changed is True
    first = tmp_path / "runs" / "first.json"  # run A itself, beside its checkpoint
    first.write_text(js.read_text())
    report = json.loads(js.read_text())
    report["registry_entry"]["notes"] = "retrained"
    js.write_text(json.dumps(report))
    hub.register("zz-mix", **report["registry_entry"], overwrite=True)  # this process only
    registry = hub.cache_dir() / "registry.json"
    written = registry.read_bytes()
    with pytest.raises(ValueError, match=r"'zz-mix' is already registered \(another checkpoint, or other details\); "
                                         r"pass --overwrite"):
        hub.register_run(js)
    with pytest.raises(ValueError, match=r"'zz-mix' is already registered"):  # A again: this process holds A'
        hub.register_run(first)
    assert registry.read_bytes() == written
    assert hub.register_run(js, overwrite=True).changed is True
    assert json.loads(registry.read_text())["checkpoints"]["zz-mix"]["notes"] == "retrained"


def test_register_run_over_another_entry_registered_for_this_process_only_asks_for_overwrite(tmp_path, monkeypatch):
    """The name holds another entry in this process alone (hub.register without persist): not this run registered
    for this process only, so registering the run replaces it, which takes overwrite=True."""
    monkeypatch.setattr(hub, "_registered", {})
    monkeypatch.setattr(hub, "_loaded", {})
    ckpt, js = _run_files(tmp_path / "runs", "zz-here")
    hub.cache_dir().mkdir(parents=True, exist_ok=True)
    (hub.cache_dir() / ckpt.name).write_bytes(ckpt.read_bytes())
    hub.register("zz-here", **{**json.loads(js.read_text())["registry_entry"], "notes": "another"})
    with pytest.raises(ValueError, match=r"'zz-here' is already registered \(another checkpoint, or other details\); "
                                         r"pass --overwrite"):
        hub.register_run(js)
    assert not (hub.cache_dir() / "registry.json").exists()
    assert hub.register_run(js, overwrite=True).changed is True


@pytest.mark.parametrize("bad, what", [("", "an empty"), (5, "int 5 as")])
def test_register_run_of_a_run_without_a_usable_name_asks_for_one(tmp_path, monkeypatch, bad, what):
    monkeypatch.setattr(hub, "_registered", {})
    _, js = _run_files(tmp_path / "runs", "zz-anon")
    report = json.loads(js.read_text())
    report["name"] = bad
    js.write_text(json.dumps(report))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(js))} has {what} 'name'; give one with --name "
                                         r"\(Python: name=\)$"):
        hub.register_run(js)
    assert _cache_files() == []
    assert hub.register_run(js, name="zz-named").changed is True


def test_unregister_removes_the_name_and_its_cached_copy(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(hub, "_registered", {})
    monkeypatch.setattr(hub, "_loaded", {})
    _, js = _run_files(tmp_path / "runs", "zz-run")
    code, _, err = _exit_code(["unregister", "zz-run"], capsys)  # nothing registered yet: no user registry file
    assert code == 2 and f"file {hub.user_registry_path()} does not exist); you have registered none" in err
    for name in ("zz-run", "zz-kept"):
        assert main(["register", str(js), "--name", name]) == 0
    monkeypatch.setattr(hub, "_registered", {})  # another process
    assert main(["unregister", "zz-run"]) == 0
    out = capsys.readouterr().out
    assert f"unregistered 'zz-run' from {hub.cache_dir() / 'registry.json'}" in out
    assert f"deleted {hub.cache_dir() / 'zz-run.safetensors'}" in out
    assert _cache_files() == ["registry.json", "zz-kept.safetensors"]
    assert main(["unregister", "zz-kept", "--keep-file"]) == 0
    assert _cache_files() == ["registry.json", "zz-kept.safetensors"]
    assert json.loads((hub.cache_dir() / "registry.json").read_text())["checkpoints"] == {}
    code, _, err = _exit_code(["unregister", "zz-kept"], capsys)  # was "... is not in this process's registry nor
    # the user registry file ...": no process of the shell user's holds a registry, and nothing said what to do
    assert code == 2 and err == (f"{_PROG}: error: checkpoint 'zz-kept' is not a name you registered (the user registry "
                                 f"file {hub.user_registry_path()} does not hold it); you have registered none "
                                 f"(`{_PROG} list` shows the checkpoints there are)\n")
    assert main(["register", str(js), "--name", "zz-other"]) == 0
    for name, hint in (("zz-kept", "the names you registered: zz-other"), ("zz-Other", "did you mean 'zz-other'?")):
        code, _, err = _exit_code(["unregister", name], capsys)
        assert code == 2 and err.endswith(f"does not hold it); {hint}\n") and err.count("\n") == 1
    shipped = sorted(hub._shipped_registry())
    if shipped:
        code, _, err = _exit_code(["unregister", shipped[0]], capsys)
        assert code == 2 and f"{shipped[0]!r} is a shipped checkpoint" in err


def test_register_refuses_a_shipped_name_unless_renamed(tmp_path, capsys):
    shipped = sorted(hub._shipped_registry())
    if not shipped:
        pytest.skip("no shipped checkpoints")
    _, js = _run_files(tmp_path / "runs", shipped[0])
    for extra in ([], ["--overwrite"]):
        code, out, err = _exit_code(["register", str(js), *extra], capsys)
        assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err
        assert f"{shipped[0]!r} is a shipped checkpoint's name" in err and f"--name my-{shipped[0]}" in err
    assert _cache_files() == []  # nothing copied, nothing registered
    assert main(["register", str(js), "--name", f"my-{shipped[0]}"]) == 0
    assert f"my-{shipped[0]}.safetensors" in _cache_files()


def test_register_refuses_a_checkpoint_that_does_not_match_its_run(tmp_path, capsys):
    ckpt, js = _run_files(tmp_path / "runs", "zz-run")
    data = bytearray(ckpt.read_bytes())
    data[-1] ^= 1  # one bit of a weight flipped after training
    ckpt.write_bytes(bytes(data))
    code, out, err = _exit_code(["register", str(js)], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert "sha256" in err and str(ckpt) in err
    assert _cache_files() == []  # nothing half-written in the cache dir
    ckpt.unlink()
    code, _, err = _exit_code(["register", str(js)], capsys)
    assert code == 2 and err.count("\n") == 1 and f"no checkpoint file {ckpt}" in err
    assert _cache_files() == []


def test_register_refuses_a_run_whose_config_is_not_its_checkpoints(tmp_path, capsys):
    """A run JSON saying "glow" for a VAE's file was registered, listed as a glow, and refused only by hub.load
    (audit 302); the file's own config, read in the hash pass, is checked, and a file with none is refused."""
    ckpt, js = _run_files(tmp_path / "runs", "zz-run")
    report = json.loads(js.read_text())
    report["registry_entry"]["config"]["kind"] = "glow"
    js.write_text(json.dumps(report))
    code, out, err = _exit_code(["register", str(js)], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err == (f"{_PROG}: error: {js} does not describe {ckpt}: its registry_entry config differs from the file's "
                   f"(key: (run JSON, file)): {{'kind': ('glow', 'vae')}}; the JSON was edited or belongs to another "
                   f"checkpoint: set its config to the file's, or register the JSON written with this file; nothing "
                   f"registered\n")
    assert _cache_files() == [] and "zz-run" not in hub._registry()
    ckpt.write_bytes(b"not a checkpoint")  # the run's sha256 made to match: the file has no config at all
    report["registry_entry"]["sha256"] = hub.sha256_file(ckpt)
    js.write_text(json.dumps(report))
    code, _, err = _exit_code(["register", str(js)], capsys)
    assert code == 2 and err.count("\n") == 1 and f"{ckpt} is not a latent-transforms checkpoint" in err
    assert _cache_files() == []


@pytest.mark.parametrize("failing", ["registry", "copy"])
def test_register_on_a_full_disk_leaves_no_checkpoint_and_says_what_it_needs(tmp_path, capsys, monkeypatch, failing):
    # the copy's error did not say how many bytes the checkpoint needs, where a download's does
    ckpt, js = _run_files(tmp_path / "runs", "zz-run")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")  # as a write to a full disk: no file named

    monkeypatch.setattr(*(hub, "_persist") if failing == "registry" else (hub.shutil, "copyfile"), full_disk)
    code, _, err = _exit_code(["register", str(js)], capsys)
    assert code == 2 and err == (f"{_PROG}: error: cannot write to the cache dir {hub.cache_dir()} (No space left on "
                                 f"device): zz-run.safetensors needs {ckpt.stat().st_size} bytes; free space there or "
                                 f"set LATENT_TRANSFORMS_HOME to a directory with room\n")
    assert _cache_files() == []  # the copy is only renamed into place once registered: no file, no .part
    assert "zz-run" not in hub._registry()


def test_register_into_a_cache_dir_that_cannot_be_made_says_so(tmp_path, capsys, monkeypatch):
    # the raw OSError named the directory's parent, or a hidden .part file
    _, js = _run_files(tmp_path / "runs", "zz-run")
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("LATENT_TRANSFORMS_HOME", str(tmp_path / "a-file" / "cache"))
    code, out, err = _exit_code(["register", str(js)], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and ".part" not in err
    assert f"cannot write to the cache dir {tmp_path / 'a-file' / 'cache'}" in err and "LATENT_TRANSFORMS_HOME" in err


@pytest.mark.parametrize("content, message", [
    (None, "no run JSON at"),  # was "[Errno 2] No such file or directory"
    ("{not json", "is not a JSON file"),
    ('{"name": "x"}', "has no 'registry_entry'"),
    (b"\x80\x81", "is not a JSON file"),  # not UTF-8: UnicodeDecodeError, a ValueError too
    ("[" * 100_000 + "]" * 100_000, "is not a JSON file"),  # nested 100,000 deep: a RecursionError's traceback
    ('{"name": "x", "registry_entry": {"file": "x.safetensors", "sha256": "' + "0" * 64 + '"}}', "has no 'config'"),
])
def test_register_refuses_what_train_did_not_write(tmp_path, capsys, content, message):
    js = tmp_path / "run.json"
    if content is not None:
        js.write_bytes(content) if isinstance(content, bytes) else js.write_text(content)
    code, _, err = _exit_code(["register", str(js)], capsys)
    assert code == 2 and err.count("\n") == 1 and message in err and str(js) in err
    assert _cache_files() == []


def test_version(capsys):
    code, out, _ = _exit_code(["--version"], capsys)
    assert code == 0 and out.strip() == f"{_PROG} {__version__}"


def test_no_command_exits_2(capsys):
    code, _, err = _exit_code([], capsys)
    assert code == 2 and "COMMAND" in err


def test_unknown_command_exits_2(capsys):
    code, _, err = _exit_code(["frobnicate"], capsys)
    assert code == 2 and "frobnicate" in err


def test_train_bad_data_spec_is_a_clear_error(tmp_path, capsys, monkeypatch):
    code, out, err = _exit_code(["train", "flow", "--data", "bogus", "--out", str(tmp_path / "o"),
                                 "--max-steps", "1", "--device", "cpu", "--quiet"], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "unknown data spec 'bogus'" in err and "digits" in err
    code, _, err = _exit_code(["train", "flow", "--data", f"npz:{tmp_path / 'missing.npz'}", "--out",
                               str(tmp_path / "o"), "--max-steps", "1", "--quiet"], capsys)
    assert code == 2 and "does not exist" in err and "Traceback" not in err
    np.save(tmp_path / "images.npy", np.zeros((4, 8, 8), dtype=np.uint8))
    code, _, err = _exit_code(["train", "flow", "--data", f"npz:{tmp_path / 'images.npy'}", "--out",
                               str(tmp_path / "o"), "--max-steps", "1", "--quiet"], capsys)
    assert code == 2 and err.count("\n") == 1 and "is a .npy array, not an .npz archive" in err
    with monkeypatch.context() as m:  # digits without scikit-learn, an ImportError: one line, not a traceback
        for module in ("sklearn", "sklearn.datasets", "sklearn.model_selection"):
            m.setitem(sys.modules, module, None)
        code, _, err = _exit_code(["train", "flow", "--data", "digits", "--out", str(tmp_path / "o"),
                                   "--max-steps", "1", "--quiet"], capsys)
    assert code == 2 and err == f"{_PROG}: error: the 'digits' data set needs scikit-learn (the package's 'demo' " \
                                "extra): pip install scikit-learn\n", err


def test_train_without_length_is_a_clear_error(tmp_path, capsys):
    code, _, err = _exit_code(["train", "flow", "--data", "digits", "--out", str(tmp_path)], capsys)
    assert code == 2 and "--max-steps" in err and "Traceback" not in err


@pytest.mark.parametrize("option, message", [
    (["--device", "foo"], "--device must be cpu, cuda, cuda:N or auto, got 'foo'"),
    (["--device", "cuda:x"], "--device must be cpu, cuda, cuda:N or auto, got 'cuda:x'"),
    (["--device", "meta"], "--device 'meta' holds shapes, not values: train on cpu or cuda"),
    (["--device", "xpu"], "--device 'xpu' asked for, but it is not available here; use 'cpu'"),
])
def test_train_bad_option_is_a_clear_error(tmp_path, capsys, option, message):
    pytest.importorskip("sklearn")
    code, _, err = _exit_code(["train", "flow", "--data", "digits", "--out", str(tmp_path / "o"), "--max-steps", "1",
                               "--quiet", *option], capsys)
    assert code == 2 and err == f"{_PROG}: error: {message}\n"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("data", [["--data", "digits"], ["--data", "npz:nonexistent.npz"],
                                  ["--data", "digits", "--test-data", "npz:nonexistent.npz"]])
def test_train_data_root_without_cifar10_is_refused(tmp_path, capsys, data):
    """Audit 394: --data-root (where cifar10 is downloaded) with data that is not cifar10 was ignored in silence, even
    a --data-root that is a file: the run went on, as if the user's folder held something it used."""
    code, out, err = _exit_code(["train", "flow", *data, "--data-root", str(tmp_path / "root"), "--out",
                                 str(tmp_path / "o"), "--max-steps", "1", "--quiet"], capsys)
    assert code == 2 and out == "" and err == f"{_PROG}: error: --data-root is where cifar10 and cifar10-5k are " \
        f"downloaded, and neither --data nor --test-data is one of them: leave --data-root out\n"
    assert not (tmp_path / "o").exists() and not (tmp_path / "root").exists()


@pytest.mark.parametrize("option, message", [
    (["--batch-size", "0"], "argument --batch-size: must be an int >= 1, got 0"),  # was: batch_size must be ...
    (["--batch-size", "two"], "argument --batch-size: invalid int value: 'two'"),
    (["--grad-clip", "-1"], "argument --grad-clip: must be a finite number in (0, inf), got -1.0"),
    (["--max-minutes", "inf"], "argument --max-minutes: must be a finite number in (0, inf), got inf"),
    (["--epochs", "inf"], "argument --epochs: must be a finite number in (0, inf), got inf"),
    (["--lr", "nan"], "argument --lr: must be a finite number in (0, 1], got nan"),
    (["--checkpoint-every", "0"], "argument --checkpoint-every: must be an int >= 1, got 0"),
    (["--translate", "-1"], "argument --translate: must be an int >= 0, got -1"),
    (["--threads", "0"], f"argument --threads: must be an int in [1, {MAX_THREADS}], got 0"),
    (["--hidden", "0"], "argument --hidden: must be an int >= 1, got 0"),
    (["--beta", "-1"], "argument --beta: must be a finite number in [0, inf), got -1.0"),
    (["--ema", "1.5"], "argument --ema: must be a finite number in (0, 1), got 1.5"),  # was after the data loaded
    (["--ema", "1"], "argument --ema: must be a finite number in (0, 1), got 1.0"),
    (["--seed", "99999999999999999999"], "argument --seed: must be an int in [0, 4294967295], got "
                                         "99999999999999999999"),  # was "Overflow when unpacking long long"
    (["--threads", "2147483648"], f"argument --threads: must be an int in [1, {MAX_THREADS}], got 2147483648"),  # was
    # torch.set_num_threads' "Overflow when unpacking long", naming no option
    (["--threads", "100000"], f"argument --threads: must be an int in [1, {MAX_THREADS}], got 100000"),  # audit 275:
    # was a segfault at the first parallel op, once the system could start no more threads ("libgomp: Thread creation")
    (["--max-steps", str(10**400)], f"argument --max-steps: must be an int in [1, {2**63 - 1}], got an int near "
                                    f"10**400"),  # audit 424: was the progress bar's "int too large to convert to
    # float" once the data had loaded, naming no option; with --quiet, a run that trained on
])
def test_train_bad_number_names_the_option(tmp_path, capsys, option, message, few_threads_only):
    """A number the library would refuse is refused by argparse, naming the option, not the Python parameter."""
    code, out, err = _exit_code(["train", "flow", "--data", "digits", "--out", str(tmp_path / "o"), "--max-steps", "1",
                                 "--quiet", *option], capsys)
    assert code == 2 and out == "" and err.splitlines()[-1] == f"{_PROG} train: error: {message}"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("kind, option, value", [("flow", "--steps", 10**20), ("vae", "--decoder-blocks", 10**20),
                                                  pytest.param("flow", "--steps", 10**320, id="flow---steps-10**320")])
def test_train_codec_too_big_for_the_memory_is_refused_before_it_is_built(tmp_path, capsys, kind, option, value):
    """Audit 272: --steps 10**20 built Glow steps one by one for hours (10 GB in 10 minutes) until the system killed
    the process; --decoder-blocks 10**12 likewise. Audit 424: --steps 10**320, a codec of more parameters than a float
    holds, ended in the refusal's own "int too large to convert to float", naming no option."""
    pytest.importorskip("sklearn")
    code, out, err = _exit_code(["train", kind, "--data", "digits", "--out", str(tmp_path / "o"), "--max-steps", "1",
                                 "--quiet", option, str(value)], capsys)
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert re.fullmatch(rf"{_PROG}: error: {option} {value} makes a codec of \S+ parameters for \S+ images, \S+ GB "
                        rf"of float32 weights alone, more than this machine's \S+ GB of memory\n", err), err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("options, message", [
    (["--hidden", "100000", "--decoder-blocks", "2000"],
     r"--decoder-blocks 2000 and --hidden 100000 make a codec of \S+ parameters for 1x8x8 images, .*"),
    (["--latent-side", "8", "--decoder-blocks", "2"],
     r"--decoder-blocks must be 0 with --latent-side 8 at the image side 8: .*; got 2 \(.*\)")])
def test_train_refusal_naming_several_settings_spells_each_as_its_flag(tmp_path, capsys, options, message):
    """Only the setting a message began with was spelled as its flag: "--decoder-blocks 2000 and hidden 100000"."""
    pytest.importorskip("sklearn")
    code, out, err = _exit_code(["train", "vae", "--data", "digits", "--out", str(tmp_path / "o"), "--max-steps", "1",
                                 "--quiet", *options], capsys)
    assert code == 2 and out == "" and re.fullmatch(rf"{_PROG}: error: {message}\n", err), err
    assert not (tmp_path / "o").exists()


def test_train_batch_past_the_memory_of_a_cpu_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    """Helper 356: a CPU step past the memory was killed by the system, silently; it is refused, naming the fix."""
    pytest.importorskip("sklearn")
    per_image, (state, held) = train._step_memory(train.default_config("flow", (1, 8, 8), num_bins=17))
    monkeypatch.setattr(train, "process_memory", lambda: held - train._STEP_WORKING_BYTES)  # as now, whatever it loads
    monkeypatch.setattr(train.os, "sysconf", lambda name: {"SC_PAGE_SIZE": 1,
                                                           "SC_PHYS_PAGES": state + held + 10 * per_image}[name])
    code, out, err = _exit_code(["train", "flow", "--data", "digits", "--out", str(tmp_path / "o"), "--max-steps", "1",
                                 "--device", "cpu", "--quiet"], capsys)
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert re.fullmatch(rf"{_PROG}: error: --batch-size 64 needs about \S+ GB for a training step \(\S+ MB for each "
                        rf"1x8x8 image, .*\), more than this machine's \S+ GB of memory; a batch of at most 10 fits by "
                        rf"this estimate\n", err), err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", [["train", "flow", "--data", "digits", "--max-steps", "1", "--quiet"],
                                     ["demo", "--smoke"]])
@pytest.mark.parametrize("out, message", [
    ("", "the output folder must be a path, got ''"),  # was: Path('') trained into (or demo wrote to) the cwd
    ("afile", "the output folder 'afile' is a file"),  # demo's was "[Errno 17] File exists" after its work
    ("afile/sub", "the output folder 'afile/sub' is inside 'afile', which is a file"),  # was "[Errno 20] Not a ..."
])
def test_an_out_that_is_empty_or_a_file_is_refused_before_training(tmp_path, capsys, monkeypatch, command, out,
                                                                   message):
    pytest.importorskip("sklearn")
    monkeypatch.chdir(tmp_path)
    Path("afile").write_text("x")
    monkeypatch.setattr(demo, "load_images", None)  # the demo's work (loading the digits) would be a TypeError
    code, stdout, err = _exit_code([*command, "--out", out], capsys)
    assert code == 2 and stdout == "" and err.startswith(f"{_PROG}: error: {message}; give a folder")
    assert len(err.splitlines()) == 1 and sorted(os.listdir()) == ["afile"]


@pytest.mark.parametrize("command", ["train", "demo"])
@pytest.mark.parametrize("failure", ["read-only", "not made"])
def test_an_out_that_cannot_be_written_is_named(tmp_path, capsys, monkeypatch, command, failure):
    """It was the OSError alone ("[Errno 2] No such file or directory: '/proc/o'", or the hidden lock file's
    "[Errno 13] Permission denied"), after the demo's work too (saving demo.png)."""
    from conftest import tiny_glow, tiny_vae
    from latent_transforms import validation

    np.savez(tmp_path / "x.npz", x=np.zeros((4, 8, 8), dtype=np.uint8))
    if command == "demo":
        pytest.importorskip("sklearn")
        monkeypatch.setattr(demo.hub, "load", {"glow-digits": tiny_glow(), "vae-digits": tiny_vae()}.__getitem__)
    out = tmp_path / "o"
    if failure == "read-only":  # as root (no permission is refused) or on a read-only mount
        out.mkdir()
        # writable but not searchable (a folder of mode 0o600): it cannot be written into either
        monkeypatch.setattr(validation.os, "access", lambda path, mode: Path(path) != out or not mode & os.X_OK)
    else:
        def refused(self, *args, **kwargs):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

        monkeypatch.setattr(Path, "mkdir", refused)
    argv = ["train", "flow", "--data", f"npz:{tmp_path / 'x.npz'}", "--max-steps", "1", "--quiet", "--levels", "1",
            "--steps", "1"] if command == "train" else ["demo", "--smoke"]
    code, stdout, err = _exit_code([*argv, "--out", str(out)], capsys)
    why = os.strerror(errno.EACCES if failure == "read-only" else errno.EROFS)
    assert code == 2 and stdout == "" and err == (f"{_PROG}: error: cannot write into the output folder {str(out)!r} "
                                                  f"({why}); give a folder you can write to\n")
    if failure == "read-only":  # from Python, the OSError's own type
        with pytest.raises(PermissionError, match="^cannot write into the output folder"):
            validation.make_folder(out)


NO_HOME = "~no-such-user-h357"  # a ~user that names no home directory


@pytest.mark.parametrize("entry, what", [
    (lambda: hub.load(f"{NO_HOME}/c.safetensors"), f"checkpoint path '{NO_HOME}/c.safetensors'"),
    (lambda: hub.load_checkpoint(Path(NO_HOME, "c.safetensors")), f"checkpoint path '{NO_HOME}/c.safetensors'"),
    (lambda: hub.register_run(f"{NO_HOME}/r.json"), f"run JSON '{NO_HOME}/r.json'"),
    (lambda: load_images(f"folder:{NO_HOME}/imgs"), f"data spec 'folder:{NO_HOME}/imgs'"),
    (lambda: load_images(f"npz:{NO_HOME}/x.npz"), f"data spec 'npz:{NO_HOME}/x.npz'"),
    (lambda: load_images("cifar10", data_root=Path(NO_HOME, "data")), f"data root '{NO_HOME}/data'"),
    (lambda: train.train_codec("flow", torch.zeros(4, 1, 8, 8), f"{NO_HOME}/o", max_steps=1, progress=False),
     f"the output folder '{NO_HOME}/o'"),
    (lambda: demo.run_demo(f"{NO_HOME}/o"), f"the output folder '{NO_HOME}/o'"),
    (["register", f"{NO_HOME}/r.json"], f"run JSON '{NO_HOME}/r.json'"),
    (["train", "flow", "--data", f"folder:{NO_HOME}/imgs", "--out", "o"], f"data spec 'folder:{NO_HOME}/imgs'"),
    (["train", "flow", "--data", "npz:x.npz", "--test-data", f"npz:{NO_HOME}/t.npz", "--out", "o"],
     f"data spec 'npz:{NO_HOME}/t.npz'"),
    (["train", "flow", "--data", "cifar10", "--data-root", f"{NO_HOME}/data", "--out", "o"],
     f"data root '{NO_HOME}/data'"),
    (["train", "flow", "--data", "npz:x.npz", "--out", f"{NO_HOME}/o"], f"the output folder '{NO_HOME}/o'"),
    (["demo", "--out", f"{NO_HOME}/o"], f"the output folder '{NO_HOME}/o'"),
], ids=lambda v: v if isinstance(v, str) else "cli" if isinstance(v, list) else "api")
def test_a_tilde_that_names_no_home_directory_is_refused_naming_the_argument(tmp_path, capsys, monkeypatch, entry,
                                                                             what):
    """Was pathlib's bare "RuntimeError: Could not determine home directory." (the CLI: a traceback, exit 1) for every
    path a user gives (ddeb082 named LATENT_TRANSFORMS_HOME and XDG_CACHE_HOME only): one helper,
    validation.expanded_path, for all, naming the argument and its value; nothing is made or read."""
    monkeypatch.chdir(tmp_path)
    np.savez("x.npz", x=np.zeros((4, 8, 8), dtype=np.uint8))
    monkeypatch.setattr(demo, "load_images", None)  # the demo's work (loading the digits) would be a TypeError
    message = f"{what}: its ~ names no home directory (no such user, or no HOME and no password entry); give the " \
              f"full path instead"
    if callable(entry):
        with pytest.raises(ValueError) as e:
            entry()
        assert str(e.value) == message
    else:
        code, out, err = _exit_code([*entry, "--max-steps", "1", "--quiet"] if entry[0] == "train" else entry, capsys)
        assert code == 2 and out == "" and err == f"{_PROG}: error: {message}\n"
    assert os.listdir() == ["x.npz"]


def test_train_test_data_of_another_shape_names_the_options(tmp_path, capsys):
    grey, colour = tmp_path / "grey.npz", tmp_path / "colour.npz"
    np.savez(grey, x=np.zeros((4, 8, 8), dtype=np.uint8))
    np.savez(colour, x=np.zeros((4, 8, 8, 3), dtype=np.uint8))
    code, _, err = _exit_code(["train", "flow", "--data", f"npz:{grey}", "--test-data", f"npz:{colour}", "--out",
                               str(tmp_path / "o"), "--max-steps", "1", "--quiet"], capsys)
    # was: x_test images are (3, 8, 8), x_train images (1, 8, 8)
    assert code == 2 and err == f"{_PROG}: error: --test-data images are (3, 8, 8), --data images (1, 8, 8) " \
                                "(channels, height, width)\n"


@pytest.mark.parametrize("error, shown", [
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB."),
     "CUDA out of memory. Tried to allocate 2.00 GiB."),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried "
                  "to allocate 4000000000000 bytes. Error code 12 (Cannot allocate memory)"),
     "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to allocate "
     "4000000000000 bytes. Error code 12 (Cannot allocate memory)"),
    # mutation round (audit 351): torch's message over two lines, with double spaces, is shown on the error's one line
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.\nIf reserved but unallocated memory "
                                 "is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True.  See "
                                 "documentation for Memory Management"),
     "CUDA out of memory. Tried to allocate 2.00 GiB. If reserved but unallocated memory is large try setting "
     "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True. See documentation for Memory Management"),
])
def test_train_out_of_memory_is_a_clear_error(tmp_path, capsys, monkeypatch, error, shown):
    pytest.importorskip("sklearn")

    errors = [error, RuntimeError("another RuntimeError: a bug, shown with its traceback")]

    def fail(*args, **kwargs):
        raise errors.pop(0)

    monkeypatch.setattr(train, "train_codec", fail)
    argv = ["train", "flow", "--data", "digits", "--out", str(tmp_path), "--max-steps", "1", "--quiet"]
    code, _, err = _exit_code(argv, capsys)  # was a traceback
    assert code == 2 and err == f"{_PROG}: error: out of memory ({shown}); with `train`, try a smaller --batch-size " \
                                "or --hidden\n"
    with pytest.raises(RuntimeError, match="another RuntimeError"):
        main(argv)


def test_train_diverged_run_is_a_clear_error(tmp_path, capsys, monkeypatch):
    # --lr 1e30 made such a run; lr is now at most 1, so the test metrics of a run gone this far are made NaN here
    pytest.importorskip("sklearn")
    monkeypatch.setattr(train, "eval_codec", lambda codec, x, **kw: {"bits_per_dim": float("nan"),
                                                                       "roundtrip_max_err": float("nan")})
    code, out, err = _exit_code(["train", "flow", "--data", "digits", "--out", str(tmp_path / "o"), "--name", "g",
                                 "--levels", "1", "--steps", "1", "--hidden", "8", "--max-steps", "2",
                                 "--device", "cpu"], capsys)
    # was: exit 0, test bits_per_dim NaN in g.json (non-standard JSON) and "register it: ..."
    last = err.splitlines()[-1]
    assert code == 2 and "Traceback" not in err and "register it" not in out and "wrote" not in out
    assert last.startswith(f"{_PROG}: error: the run diverged: test bits_per_dim, roundtrip_max_err not finite")
    assert f"the training state stays in {tmp_path / 'o' / 'g.state.safetensors'}" in last
    assert "--lr" in last and "--grad-clip" in last and "--no-resume" in last
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["g.state.safetensors"]


def test_train_malformed_state_is_a_clear_error(tmp_path, capsys):
    pytest.importorskip("sklearn")
    from safetensors.torch import save_file

    from latent_transforms.train import STATE_FORMAT

    state = tmp_path / "glow-digits.state.safetensors"
    save_file({}, str(state), metadata={"format": STATE_FORMAT, "info": "{}", "optim_param_groups": "[]"})
    code, _, err = _exit_code(["train", "flow", "--data", "digits", "--out", str(tmp_path), "--max-steps", "1",
                               "--device", "cpu", "--quiet"], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"{state} is not a valid training state: metadata 'optim_scalars' is missing" in err and "--no-resume" in err


def test_demo_help(capsys):
    code, out, _ = _exit_code(["demo", "--help"], capsys)
    assert code == 0 and "--smoke" in out and "--per-class" in out


@pytest.mark.parametrize("option, message", [
    (["--per-class", "0"], "argument --per-class: must be an int >= 1, got 0"),
    (["--per-class", "500"], "--per-class 500 is more than the 122 training images of digit 8"),  # audit 394: was
    # "class 0 has only 124 samples, fewer than per_class=500", naming the Python parameter
    (["--epochs", "0"], "argument --epochs: must be an int >= 1, got 0"),
    (["--seeds", "0"], "argument --seeds: must be an int in [1, 1000], got 0"),
    (["--smoke", "--seeds", "-1"], "argument --seeds: must be an int in [1, 1000], got -1"),
    (["--seeds", "99999999999999999999"], "argument --seeds: must be an int in [1, 1000], got 9999"),  # audit 394: was
    # "Python int too large to convert to C ssize_t", naming no option; and --seeds 1000000000 built a tuple of 10**9
    # seeds (gigabytes) before any check
    (["--threads", "0"], f"argument --threads: must be an int in [1, {MAX_THREADS}], got 0"),
    (["--threads", "99999999999999999999"], f"argument --threads: must be an int in [1, {MAX_THREADS}], got 9999"),
    (["--threads", "100000"], f"argument --threads: must be an int in [1, {MAX_THREADS}], got 100000"),
])
def test_demo_bad_option_fails_before_any_work(tmp_path, capsys, option, message, few_threads_only):
    pytest.importorskip("sklearn")
    code, out, err = _exit_code(["demo", "--out", str(tmp_path / "o"), *option], capsys)
    assert code == 2 and message in err.splitlines()[-1] and out == ""
    assert not (tmp_path / "o").exists()  # no demo.png before the error


def test_train_help(capsys):
    code, out, _ = _exit_code(["train", "--help"], capsys)
    assert code == 0 and "--data" in out and "--max-steps" in out


@pytest.mark.slow  # ~3-10 s: imports sklearn and torch._dynamo (the optimizer), 2 steps, eval, PNG
def test_train_tiny_flow_writes_a_loadable_checkpoint(tmp_path, capsys):
    pytest.importorskip("sklearn")
    out_dir = tmp_path / "out"
    assert main(["train", "flow", "--data", "digits", "--out", str(out_dir), "--max-steps", "2", "--levels", "1",
                 "--steps", "1", "--hidden", "8", "--batch-size", "16", "--device", "cpu", "--quiet"]) == 0
    assert capsys.readouterr().out == ""  # --quiet
    ckpt = out_dir / "glow-digits.safetensors"
    assert ckpt.is_file() and (out_dir / "glow-digits.png").is_file()
    report = json.loads((out_dir / "glow-digits.json").read_text())
    assert report["training"]["steps"] == 2 and report["sha256"] == hub.sha256_file(ckpt)
    assert report["config"]["levels"] == 1 and report["config"]["steps"] == 1 and report["config"]["hidden"] == 8
    codec = hub.load(ckpt)
    assert codec.kind == "glow" and codec.config == report["config"]


@pytest.mark.parametrize("module", ["latent_transforms.cli", "latent_transforms"])  # the second: a user's guess
def test_module_entry_point_runs(module):
    r = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{_PROG} {__version__}"


def test_register_refuses_a_name_whose_file_another_checkpoint_uses(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(hub, "_registered", {})
    _, js = _run_files(tmp_path / "runs", "zz-run")
    entry = json.loads(js.read_text())["registry_entry"]
    hub.register("zz-alias", file="zz-b.safetensors", sha256=entry["sha256"], config=entry["config"], persist=True)
    code, out, err = _exit_code(["register", str(js), "--name", "zz-b"], capsys)
    assert code == 2 and err == "latent-transforms: error: zz-b.safetensors is the file of checkpoint 'zz-alias'; " \
                                "give another --name (Python: name=)\n"
    assert "zz-b" not in hub._registry()


def test_unregister_of_a_name_whose_file_is_not_in_the_cache_dir_only_removes_the_name(capsys, monkeypatch):
    # mutation round (audit 351): hub.register(persist=True) copies no file; with none there, nothing is deleted
    monkeypatch.setattr(hub, "_registered", {})
    hub.register("zz-bare", file="zz-bare.safetensors", sha256="0" * 64, config={"kind": "vae"}, persist=True)
    assert main(["unregister", "zz-bare"]) == 0
    assert capsys.readouterr().out == f"unregistered 'zz-bare' from {hub.user_registry_path()}\n"
    assert "zz-bare" not in hub._registry()


def test_unregister_keeps_a_file_another_name_uses(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(hub, "_registered", {})
    _, js = _run_files(tmp_path / "runs", "zz-run")
    assert main(["register", str(js)]) == 0
    entry = hub._registry()["zz-run"]
    hub.register("zz-alias", file=entry["file"], sha256=entry["sha256"], config=entry["config"], persist=True)
    assert main(["unregister", "zz-run"]) == 0
    out = capsys.readouterr().out
    assert f"kept {hub.cache_dir() / 'zz-run.safetensors'}: checkpoint 'zz-alias' uses it too" in out
    assert "zz-run.safetensors" in _cache_files() and hub.load("zz-alias").kind == "vae"


def test_demo_table_times_each_arm_against_the_baseline():
    results = {"baseline": {"accuracy": [0.5, 0.7], "seconds": [2.0, 2.0]},
               "ISDA": {"accuracy": [0.6, 0.6], "seconds": [5.0, 5.0]}}
    table = demo.format_table(results, per_class=10, epochs=40, n_test=540)
    assert "| baseline | 60.0% ± 14.1 | 2.0 s | 1.0x |" in table and "| ISDA | 60.0% ± 0.0 | 5.0 s | 2.5x |" in table
    assert "one seed" not in table
    one = demo.format_table({k: {"accuracy": r["accuracy"][:1], "seconds": r["seconds"][:1]} for k, r in results.items()},
                            per_class=10, epochs=15, n_test=540)
    assert "| baseline | 50.0% (1 seed) | 2.0 s | 1.0x |" in one and "± 0.0" not in one  # no spread from one seed
    assert one.endswith("one seed: no spread to judge differences by; compare methods over several seeds (--seeds)")


def test_demo_picture_shows_a_varmixup_of_every_image(monkeypatch):
    """demo.png's VarMixup row (the docs' overview) mixes every image (p=1), not the library's default share (p=0.25),
    which would leave most of the row copies of the originals."""
    from conftest import tiny_vae

    monkeypatch.setattr(demo, "LatentNoise", lambda codec, **settings: lambda x, y, model: (x, y))  # the Glow's rows:
    monkeypatch.setattr(demo, "LatentAdversarial", demo.LatentNoise)  # not this test's, and seconds on a busy CPU
    x, y = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(12) % 10
    rows = demo._picture_rows(None, tiny_vae(), x, y, None)
    assert list(rows) == ["original", "LatentNoise", "LatentAdversarial", "VarMixup", "VAE reconstruction"]
    unchanged = (rows["VarMixup"] == x).flatten(1).all(1)
    assert not unchanged.any(), f"VarMixup left images {unchanged.nonzero().flatten().tolist()} of 12 as they were"


def test_run_demo_trains_every_arm_from_one_init_per_seed_and_scores_the_test_split(tmp_path, monkeypatch, capsys):
    """run_demo's loop, its training and scoring spied on: each seed's arms start from the same weights (seeded
    before each model is built) on that seed's low-data split, with the demo's settings, and are scored on the whole
    digits test split; torch's threads are set as asked."""
    from conftest import tiny_glow, tiny_vae
    from latent_transforms.data import low_data_split

    g = torch.Generator().manual_seed(0)
    x_train, y_train = torch.rand(60, 1, 8, 8, generator=g), torch.arange(60) % 10
    x_test, y_test = torch.rand(30, 1, 8, 8, generator=g), torch.arange(30) % 10
    splits = {"train": (x_train, y_train, 17), "test": (x_test, y_test, 17)}
    monkeypatch.setattr(demo, "load_images", lambda spec, split: splits[split] if spec == "digits" else None)
    codecs = {"glow-digits": tiny_glow(), "vae-digits": tiny_vae()}  # the shipped ones take seconds to load
    monkeypatch.setattr(demo.hub, "load", codecs.__getitem__)
    monkeypatch.setattr(demo, "ISDA", lambda **settings: settings)  # its settings, not a module: ISDA's first build is slow
    fits, scored, threads, fit_kwargs = [], [], [], []
    monkeypatch.setattr(demo, "overview_picture", lambda glow, vae, path, test=None: Path(path))

    def fit(model, x, y, augment, **kwargs):
        fits.append((kwargs["seed"], augment, [p.detach().clone() for p in model.parameters()], x, y))
        fit_kwargs.append(kwargs)
        return 1.0

    def predict(model, x):
        scored.append(x)
        return torch.eye(10)[y_test]  # every prediction right

    monkeypatch.setattr(demo, "fit_classifier", fit)
    monkeypatch.setattr(demo, "predict_proba", predict)
    monkeypatch.setattr(demo.torch, "set_num_threads", threads.append)
    results = demo.run_demo(tmp_path, per_class=2, epochs=1, seeds=(0, 3), arms=["baseline", "ISDA", "LatentNoise"],
                            progress=False, threads=1)
    assert threads[::2] == [1] and list(results) == ["baseline", "ISDA", "LatentNoise"]  # then set back
    assert all(r["accuracy"] == [1.0, 1.0] for r in results.values())
    assert all(x is x_test or torch.equal(x, x_test) for x in scored) and len(scored) == 6
    for seed, runs in ((0, fits[:3]), (3, fits[3:])):
        split = low_data_split(y_train, 2, seed=seed)
        for run_seed, _, weights, x, y in runs:
            assert run_seed == seed and torch.equal(x, x_train[split]) and torch.equal(y, y_train[split])
            assert all(torch.equal(a, b) for a, b in zip(weights, runs[0][2]))  # one init per seed
    assert not all(torch.equal(a, b) for a, b in zip(fits[0][2], fits[3][2]))  # another seed, another init
    baseline, isda, noise = (augment for _, augment, *_ in fits[:3])
    assert baseline is None and isda == {"num_classes": 10, "lambda0": 0.5} and noise.eps == demo.NOISE_EPS
    assert [augment.generator for _, augment, *_ in (fits[2], fits[5])] == [0, 3]  # each seed's own draws
    assert all(kwargs["epochs"] == 1 for kwargs in fit_kwargs)  # as given
    out = capsys.readouterr().out
    assert "| ISDA | 100.0% ± 0.0 |" in out and "2 training images per class, 1 epoch, test on 30 images" in out
    assert f"Picture of the augmentations: {(tmp_path / 'demo.png').resolve()}" in out
    # threads not given: torch's, at most 4; arms not given: every arm, with the demo's settings
    monkeypatch.setattr(demo.torch, "get_num_threads", lambda: 8)
    monkeypatch.setattr(modelutils.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    results = demo.run_demo(tmp_path, per_class=1, epochs=1, seeds=(0,), progress=False)
    assert threads[::2] == [1, 4]
    assert list(results) == ["baseline", "LatentNoise", "LatentAdversarial", "VarMixup", "ISDA"]
    adversarial, varmixup = fits[8][1], fits[9][1]  # this run's arms: fits[6:11]
    assert (adversarial.eps, adversarial.steps, adversarial.step_size, adversarial.generator) == \
        (demo.ADV_EPS, demo.ADV_STEPS, demo.ADV_STEP_SIZE, 0)
    assert (varmixup.num_classes, varmixup.generator) == (10, 0)
    monkeypatch.setattr(modelutils.os, "getloadavg", lambda: (9.0, 9.0, 9.0))  # a busy CPU: one thread
    demo.run_demo(tmp_path, per_class=1, epochs=1, seeds=(0,), arms=["baseline"], progress=False)
    assert threads[::2] == [1, 4, 1] and threads[3::2] == [8, 8]


@pytest.mark.parametrize("interrupt", [False, True])
def test_run_demo_leaves_torchs_threads_and_global_rng_as_they_were(tmp_path, monkeypatch, interrupt):
    """In a notebook the cells after run_demo ran on its thread count (1 on a busy CPU) and its reseeded global RNG,
    also after a Ctrl-C in its training."""
    from conftest import tiny_glow, tiny_vae

    g = torch.Generator().manual_seed(0)
    data = {split: (torch.rand(30, 1, 8, 8, generator=g), torch.arange(30) % 10, 17) for split in ("train", "test")}
    monkeypatch.setattr(demo, "load_images", lambda spec, split: data[split])
    monkeypatch.setattr(demo.hub, "load", {"glow-digits": tiny_glow(), "vae-digits": tiny_vae()}.__getitem__)
    monkeypatch.setattr(demo, "overview_picture", lambda glow, vae, path, test=None: Path(path))

    def fit(model, x, y, augment, **kwargs):
        torch.rand(3)  # a training's draws from the global RNG
        if interrupt:
            raise KeyboardInterrupt
        return 1.0

    monkeypatch.setattr(demo, "fit_classifier", fit)
    monkeypatch.setattr(demo, "predict_proba", lambda model, x: torch.eye(10)[data["test"][1]])
    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    other = 1 if threads != 1 else 2
    with pytest.raises(KeyboardInterrupt) if interrupt else contextlib.nullcontext():
        demo.run_demo(tmp_path, per_class=1, epochs=1, seeds=(0,), arms=["baseline"], progress=False, threads=other)
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.get_rng_state(), rng)


def test_run_demo_takes_per_class_up_to_the_images_of_its_rarest_digit(tmp_path, monkeypatch):
    """Audit 394's check before the split: per_class up to the rarest digit's training images is taken (mutation
    round, audit 398: only 500, far past it, was tested); one more is refused naming that digit, not the first."""
    from conftest import tiny_glow, tiny_vae

    y = torch.tensor([d for d in range(10) for _ in range(4 if d == 7 else 5)])
    data = {split: (torch.rand(len(y), 1, 8, 8), y, 17) for split in ("train", "test")}
    monkeypatch.setattr(demo, "load_images", lambda spec, split: data[split])
    monkeypatch.setattr(demo.hub, "load", {"glow-digits": tiny_glow(), "vae-digits": tiny_vae()}.__getitem__)
    monkeypatch.setattr(demo, "overview_picture", lambda glow, vae, path, test=None: Path(path))
    monkeypatch.setattr(demo, "fit_classifier", lambda model, x, y, augment, **kwargs: 1.0)
    monkeypatch.setattr(demo, "predict_proba", lambda model, x: torch.eye(10)[y])
    with pytest.raises(ValueError, match=r"^per_class 5 is more than the 4 training images of digit 7$"):
        demo.run_demo(tmp_path, per_class=5, epochs=1, seeds=(0,), arms=["baseline"], progress=False)
    # audit 425: a per_class past int64 met the tensor comparison's "OverflowError: int too big to convert"
    for huge, shown in ((2**64, str(2**64)), (10**5000, r"an int near 10\*\*5000")):
        with pytest.raises(ValueError, match=rf"^per_class {shown} is more than the 4 training images of digit 7$"):
            demo.run_demo(tmp_path, per_class=huge, epochs=1, seeds=(0,), arms=["baseline"], progress=False)
    results = demo.run_demo(tmp_path, per_class=4, epochs=1, seeds=(0,), arms=["baseline"], progress=False)
    assert results["baseline"]["accuracy"] == [1.0]


@pytest.mark.parametrize("argv, epochs, seeds", [
    (["--smoke"], 15, (0,)),  # was 3 epochs: every arm at chance, 10.0% ± 0.0, which looked broken
    ([], 40, (0, 1, 2)),
    (["--smoke", "--epochs", "5"], 5, (0,)),  # an option given beside --smoke wins (it was silently replaced)
    (["--smoke", "--seeds", "2"], 15, (0, 1)),
    (["--epochs", "7", "--seeds", "1"], 7, (0,)),
])
def test_demo_smoke_is_one_seed_of_15_epochs_unless_told_otherwise(monkeypatch, capsys, argv, epochs, seeds):
    calls = []
    monkeypatch.setattr(demo, "run_demo", lambda out, **kw: calls.append(kw))
    assert main(["demo", *argv]) == 0
    assert main(["demo", *argv, "--threads", "1"]) == 0
    assert calls == [{"per_class": 10, "epochs": epochs, "seeds": seeds, "threads": t} for t in (None, 1)]


def test_list_table_headline_is_the_test_figures_else_the_first_two(capsys, monkeypatch):
    monkeypatch.setattr(hub, "_registered", {})
    hub.register("zz-a", file="zz-a.safetensors", sha256="0" * 64, size=999, config={"kind": "vae"},
                 trained_on="x", quality={"train_device_minutes": 1.5, "test_mse": 0.25})
    hub.register("zz-b", file="zz-b.safetensors", sha256="1" * 64, size=1_500_000, config={"kind": "glow"},
                 trained_on="x", quality={"a": 1, "b": 2.5, "c": 3})
    monkeypatch.setenv("LATENT_TRANSFORMS_HUB_URL", "file:///nowhere")
    assert main(["list"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("zz-")}
    assert rows["zz-a"] == ["zz-a", "vae", "999", "B", "remote", "test_mse=0.25"]
    assert rows["zz-b"] == ["zz-b", "glow", "1.5", "MB", "remote", "a=1,", "b=2.5"]


def test_a_reader_that_stops_early_is_no_error():
    # `latent-transforms list -v | head` printed "latent-transforms: error: [Errno 32] Broken pipe" and exited 2
    with subprocess.Popen([sys.executable, "-m", "latent_transforms.cli", "list", "-v"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc:  # closes the stderr pipe (a ResourceWarning)
        proc.stdout.close()  # the reader is gone before the listing is written
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=120) == 141 and err == "", err


def test_a_broken_pipe_that_is_not_stdout_is_an_error(monkeypatch, capsys):
    # every BrokenPipeError exited 141 silently (and sent stdout to /dev/null)
    def broken(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(hub, "list_checkpoints", lambda: broken(None))
    with pytest.raises(SystemExit) as e:
        main(["list"])
    assert e.value.code == 2 and "error: [Errno 32] Broken pipe" in capsys.readouterr().err


def test_list_sizes_switch_unit_at_a_thousand(capsys, monkeypatch):
    monkeypatch.setattr(hub, "_registered", {})
    for name, size in (("zz-999", 999), ("zz-1000", 1000), ("zz-1m", 1_000_000), ("zz-1g", 1_000_000_000)):
        hub.register(name, file=f"{name}.safetensors", sha256="0" * 64, size=size, config={"kind": "vae"})
    assert main(["list"]) == 0
    rows = {line.split()[0]: line.split()[2:4] for line in capsys.readouterr().out.splitlines() if line.startswith("zz-")}
    assert rows == {"zz-999": ["999", "B"], "zz-1000": ["1.0", "KB"], "zz-1m": ["1.0", "MB"], "zz-1g": ["1.0", "GB"]}


@pytest.mark.parametrize("damage", ["delete", "corrupt"])
def test_registering_a_run_again_whose_cached_copy_is_gone_or_damaged_copies_it_back(tmp_path, capsys, monkeypatch,
                                                                                     damage):
    # it was refused as "already registered (another checkpoint, or other details); pass --overwrite", of the very
    # same run: only its file was missing or damaged
    monkeypatch.setattr(hub, "_registered", {})
    ckpt, js = _run_files(tmp_path / "runs", "zz-run")
    assert main(["register", str(js)]) == 0
    capsys.readouterr()
    copy = hub.cache_dir() / "zz-run.safetensors"
    registry = hub.user_registry_path().read_text()
    copy.unlink() if damage == "delete" else copy.write_bytes(b"not the checkpoint")
    assert main(["register", str(js)]) == 0
    assert "nothing changed" not in capsys.readouterr().out and hub.sha256_file(copy) == hub.sha256_file(ckpt)
    assert hub.user_registry_path().read_text() == registry  # the entry as it was
    assert hub.register_run(js).changed is False  # whole again: nothing to do


def test_list_shows_an_unknown_size_and_no_quality_as_such(capsys, monkeypatch):
    monkeypatch.setattr(hub, "_registered", {})
    hub.register("zz-bare", file="zz-bare.safetensors", sha256="0" * 64, config={"kind": "vae"})  # no size, quality
    assert main(["list"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("zz-bare"))
    assert row.split() == ["zz-bare", "vae", "?", "missing", "-"]
    assert main(["list", "-v"]) == 0
    out = capsys.readouterr().out
    assert "zz-bare  (vae, ?, missing)" in out
    block = out[out.index("zz-bare  ("):].splitlines()[1:5]
    assert [line.split(":", 1)[1].strip() for line in block[:3]] == ["-", "-", "-"]  # trained on, quality, notes


def test_list_says_which_checkpoints_are_shipped_and_pads_no_line(capsys, monkeypatch):
    shipped = [r["name"] for r in hub.list_checkpoints() if r["shipped"]]
    if not shipped:
        pytest.skip("no checkpoint is shipped")
    monkeypatch.setattr(hub, "_registered", {})
    hub.register("zz-wide-quality-" + "x" * 40, file="zz-w.safetensors", sha256="0" * 64, size=1,
                 config={"kind": "vae"}, quality={"test_mse": 0.123456789, "test_kl": 12345.6789})
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    columns = {line.split()[0]: line for line in lines[1:] if line}
    start = lines[0].index("AVAILABLE")
    for name in shipped:  # the cache dir is empty: shipped only
        assert columns[name][start:].split()[0] == "shipped"
    assert all(line == line.rstrip() for line in lines)  # the last column was padded to its width
    entry = next(r for r in hub.list_checkpoints() if r["name"] == shipped[0])
    hub.cache_dir().mkdir(parents=True, exist_ok=True)
    shutil.copyfile(hub._SHIPPED_DIR / entry["file"], hub.cache_dir() / entry["file"])  # as a fetch would leave it
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith(shipped[0] + " "))
    assert row[lines[0].index("AVAILABLE"):].startswith("cached, shipped "), f"not listed as in both places: {row}"


def test_a_reader_that_stops_before_a_short_listing_is_no_error():
    # the short table fits the pipe's buffer: it is written only when stdout is flushed, which must happen where a
    # broken pipe is caught (at exit it was "Exception ignored ... BrokenPipeError" and status 120)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # else each print writes at once
    with subprocess.Popen([sys.executable, "-m", "latent_transforms.cli", "list"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=env) as proc:
        proc.stdout.close()
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=120) == 141 and err == "", err


@pytest.mark.skipif(os.name != "posix", reason="SIGINT ends a process by the signal on POSIX only")
def test_the_command_interrupted_ends_by_sigint_so_that_a_calling_shell_loop_stops_too():
    """Audit 405 (real signals): the command exited 130 itself on Ctrl-C, and bash takes a command that did not die of
    SIGINT as having handled it: a script's `until [ -e runs/NAME.json ]; do latent-transforms train ...; done` went
    on to its next call, resuming the run. It ends by SIGINT after its line, as Python does (status 130 in a shell);
    main(argv) in a process of one's own raises SystemExit(130) (test_train's SIGTERM and Ctrl-C test). What it wrote
    to stdout before, a pipe's buffer, is written out first (mutation round, audit 409: a signal's end drops it)."""
    code = ("import sys; from latent_transforms import cli, hub\n"
            "def ctrl_c():\n    print('said before')\n    raise KeyboardInterrupt\n"
            "hub.list_checkpoints = ctrl_c\nsys.argv = ['latent-transforms', 'list']\nsys.exit(cli.main())\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # else each print writes at once
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == -signal.SIGINT and p.stderr == f"{_PROG}: interrupted\n", (p.returncode, p.stderr)
    assert p.stdout == "said before\n"


def test_a_broken_pipe_that_is_not_stdout_is_an_error_while_stdout_is_a_live_pipe():
    # stdout is a pipe whose reader is still there (writable: POLLOUT, no POLLERR): another pipe broke
    code = ("import sys; from latent_transforms import cli, hub\n"
            "def broken():\n    raise BrokenPipeError(32, 'Broken pipe')\n"
            "hub.list_checkpoints = broken\nsys.exit(cli.main(['list']))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr == f"{_PROG}: error: [Errno 32] Broken pipe\n", p.stderr
