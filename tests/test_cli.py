"""The ``latent-transforms`` command line through ``cli.main``: list, fetch, --version, errors, train, demo."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from latent_transforms import __version__, hub
from latent_transforms.cli import PROG, main


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """The real registry, but an empty private cache dir and no downloads."""
    monkeypatch.setenv("LATENT_TRANSFORMS_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("LATENT_TRANSFORMS_OFFLINE", "1")
    monkeypatch.delenv("LATENT_TRANSFORMS_HUB_URL", raising=False)


def _exit_code(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capsys.readouterr()
    return e.value.code, out, err


def test_list_shows_every_registered_checkpoint(capsys):
    names = [r["name"] for r in hub.list_checkpoints()]
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    if not names:
        assert out.strip() == "no checkpoints registered"
        return
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "KIND", "SIZE", "TRAINED", "ON", "QUALITY", "AVAILABLE"]
    assert len(lines) == 1 + len(names)
    for name, line in zip(names, lines[1:]):
        assert line.split()[0] == name


def test_list_table_with_a_runtime_entry(capsys, monkeypatch):
    monkeypatch.setattr(hub, "_registered", {})
    hub.register("zz-test-vae", file="zz-test-vae.safetensors", sha256="0" * 64, size=2500,
                 config={"kind": "vae"}, trained_on="nothing", quality={"test_mse": 0.5})
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("NAME") and "AVAILABLE" in lines[0]
    row = next(line for line in lines if line.startswith("zz-test-vae"))
    assert "vae" in row and "2.5 KB" in row and "test_mse=0.5" in row and row.endswith("remote")
    assert {r["name"] for r in hub.list_checkpoints()} <= {line.split()[0] for line in lines[1:]}


def test_fetch_unknown_name_is_one_line_listing_known_names(capsys):
    code, out, err = _exit_code(["fetch", "nosuch"], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"{PROG}: error: ")
    assert "unknown checkpoint 'nosuch'" in err and "known checkpoints:" in err
    assert "Traceback" not in err
    for r in hub.list_checkpoints():
        assert r["name"] in err


def test_version(capsys):
    code, out, _ = _exit_code(["--version"], capsys)
    assert code == 0 and out.strip() == f"{PROG} {__version__}"


def test_no_command_exits_2(capsys):
    code, _, err = _exit_code([], capsys)
    assert code == 2 and "COMMAND" in err


def test_unknown_command_exits_2(capsys):
    code, _, err = _exit_code(["frobnicate"], capsys)
    assert code == 2 and "frobnicate" in err


def test_train_bad_data_spec_is_a_clear_error(tmp_path, capsys):
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


def test_train_without_length_is_a_clear_error(tmp_path, capsys):
    code, _, err = _exit_code(["train", "flow", "--data", "digits", "--out", str(tmp_path)], capsys)
    assert code == 2 and "--max-steps" in err and "Traceback" not in err


@pytest.mark.parametrize("option, message", [
    (["--device", "foo"], "device must be cpu, cuda, cuda:N or auto, got 'foo'"),
    (["--device", "cuda:x"], "device must be cpu, cuda, cuda:N or auto, got 'cuda:x'"),
    (["--device", "meta"], "device 'meta' asked for, but it is not available here; use --device cpu"),
    (["--batch-size", "0"], "batch_size must be an int >= 1, got 0"),
    (["--grad-clip", "-1"], "grad_clip must be a finite number in (0, inf), got -1.0"),
    (["--max-minutes", "inf"], "max_minutes must be a finite number in (0, inf), got inf"),
])
def test_train_bad_option_is_a_clear_error(tmp_path, capsys, option, message):
    pytest.importorskip("sklearn")
    code, _, err = _exit_code(["train", "flow", "--data", "digits", "--out", str(tmp_path / "o"), "--max-steps", "1",
                               "--quiet", *option], capsys)
    assert code == 2 and err == f"{PROG}: error: {message}\n"
    assert not (tmp_path / "o").exists()


def test_train_infinite_epochs_is_a_clear_error(tmp_path, capsys):
    pytest.importorskip("sklearn")
    code, _, err = _exit_code(["train", "flow", "--data", "digits", "--out", str(tmp_path), "--epochs", "inf"], capsys)
    assert code == 2 and err == f"{PROG}: error: epochs must be a finite number in (0, inf), got inf\n"


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
    (["--per-class", "0"], "per_class must be an int >= 1, got 0"),
    (["--per-class", "500"], "fewer than per_class=500"),
    (["--epochs", "0"], "epochs must be an int >= 1, got 0"),
    (["--seeds", "0"], "seeds must be an int >= 1, got 0"),
])
def test_demo_bad_option_fails_before_any_work(tmp_path, capsys, option, message):
    pytest.importorskip("sklearn")
    code, out, err = _exit_code(["demo", "--out", str(tmp_path / "o"), *option], capsys)
    assert code == 2 and err.count("\n") == 1 and message in err and out == ""
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


def test_module_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "latent_transforms.cli", "--version"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{PROG} {__version__}"
