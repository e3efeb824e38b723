"""Every example runs end to end with ``--smoke`` on the CPU (synthetic data, tiny random codecs, no downloads)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
TIMEOUT_S = 300

SCRIPTS = ["one_line.py", "compose_randaugment.py", "isda_hook.py", "train_your_own_flow.py"]


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LATENT_TRANSFORMS_HOME": str(tmp_path / "hub"), "LATENT_TRANSFORMS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    env.pop("LATENT_TRANSFORMS_HUB_URL", None)
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, (f"{' '.join(args)} exited with {proc.returncode}\n"
                                  f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def test_every_example_is_tested():
    scripts = {p.name for p in EXAMPLES.glob("*.py")} - {"common.py"}
    assert scripts == set(SCRIPTS) | {"ddp_torchrun.py"}


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_example_smoke(script, tmp_path):
    proc = _run([sys.executable, str(EXAMPLES / script), "--smoke"], tmp_path)
    assert proc.stdout.strip()


@pytest.mark.slow
def test_one_line_on_a_set_smaller_than_a_batch_without_test_set(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "tiny.npz", x=rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), y=np.arange(20) % 2)
    proc = _run([sys.executable, str(EXAMPLES / "one_line.py"), "--train", "npz:tiny.npz", "--test", "none",
                 "--method", "none", "--epochs", "1", "--width", "4", "--device", "cpu"], tmp_path)
    assert "epoch 1/1: loss" in proc.stdout and "test accuracy" not in proc.stdout


@pytest.mark.slow
def test_ddp_example_smoke(tmp_path):
    proc = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                 str(EXAMPLES / "ddp_torchrun.py"), "--smoke"], tmp_path)
    assert "ranks drew different noise" in proc.stdout
    assert "ranks drew the SAME noise" in proc.stdout
    assert "ISDA statistics identical on all 2 ranks" in proc.stdout
