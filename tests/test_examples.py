"""Every example runs end to end on the CPU without downloads: with ``--smoke`` (synthetic data, tiny random codecs)
and on small ``--train npz:...`` files (the shipped codecs)."""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, scripts_in_one_process, skip_module_outside_the_source_tree

skip_module_outside_the_source_tree()  # the scripts of examples/
EXAMPLES = ROOT / "examples"
TIMEOUT_S = 300

SCRIPTS = ["one_line.py", "compose_randaugment.py", "isda_hook.py", "train_your_own_flow.py"]


def _env(tmp_path: Path) -> dict:
    """The examples' environment: offline, a hub of their own in ``tmp_path``."""
    env = {**os.environ, "LATENT_TRANSFORMS_HOME": str(tmp_path / "hub"), "LATENT_TRANSFORMS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
           "TMPDIR": str(tmp_path)}  # torchrun leaves a torchelastic_* folder in the temp dir
    env.pop("LATENT_TRANSFORMS_HUB_URL", None)
    return env


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=TIMEOUT_S)
    _check_ran(args, proc)
    return proc


def _check_ran(args: list[str], proc) -> None:
    """``args`` ended with exit status 0 (``proc``: its ``returncode``, ``stdout``, ``stderr``)."""
    assert proc.returncode == 0, (f"{' '.join(args)} exited with {proc.returncode}\n"
                                  f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")


def _npz(path: Path, n: int, labels: bool = True, seed: int = 0, side: int = 32) -> str:
    """Write ``n`` random ``side``x``side`` RGB uint8 images (labels 0, 1, 0, ...: two classes) to ``path``; its
    ``npz:`` spec."""
    rng = np.random.default_rng(seed)
    arrays = {"x": rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)}
    if labels:
        arrays["y"] = np.arange(n) % 2
    np.savez(path, **arrays)
    return f"npz:{path}"


def _common():
    """examples/common.py as a module (the examples import it as ``common``)."""
    spec = importlib.util.spec_from_file_location("examples_common", EXAMPLES / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_is_tested():
    scripts = {p.name for p in EXAMPLES.glob("*.py")} - {"common.py"}
    assert scripts == set(SCRIPTS) | {"ddp_torchrun.py"}


# the example commands of the slow tests below (all but torchrun's), run by the example_runs fixture: name -> (script, args);
# each runs in a folder of its own, that name, where the npz files of NPZ are written first
COMMANDS = {
    **{script: (script, ["--smoke"]) for script in SCRIPTS},
    "one_line.py adversarial": ("one_line.py", ["--smoke", "--method", "adversarial"]),
    "one_line.py tiny": ("one_line.py", ["--train", "npz:tiny.npz", "--test", "none", "--method", "none", "--epochs",
                                         "2", "--width", "4", "--device", "cpu"]),
    "compose npz": ("compose_randaugment.py", ["--train", "npz:train.npz", "--test", "npz:test.npz", "--steps", "1",
                                               "--batch-size", "4", "--width", "4", "--device", "cpu"]),
    "isda npz": ("isda_hook.py", ["--train", "npz:train.npz", "--epochs", "1", "--batch-size", "8", "--width", "4",
                                  "--device", "cpu", "--covariance", "diagonal"]),
    "ddp npz": ("ddp_torchrun.py", ["--train", "npz:train.npz", "--test", "npz:test.npz", "--batch-size", "4",
                                    "--width", "4"]),
    "ddp few steps": ("ddp_torchrun.py", ["--train", "npz:train.npz", "--batch-size", "4", "--width", "4"]),
    "isda_hook.py smoke, 1 epoch": ("isda_hook.py", ["--smoke", "--epochs", "1", "--covariance", "diagonal"]),
    "compose digits": ("compose_randaugment.py", ["--train", "digits", "--codec", "glow-digits", "--steps", "1",
                                                  "--batch-size", "4", "--width", "4", "--device", "cpu"]),
}
# name -> the npz files written to its folder first: file -> (images, seed[, side: 32 unless given])
NPZ = {"one_line.py tiny": {"tiny.npz": (20, 0, 16)}, "compose npz": {"train.npz": (20, 0), "test.npz": (6, 1)},
       "isda npz": {"train.npz": (20, 0)}, "ddp npz": {"train.npz": (20, 0), "test.npz": (6, 1)},
       "ddp few steps": {"train.npz": (8, 0)}}


# a script for the runner's own test: prints where and how it runs, sets a variable, then ends as argv[1] says
_ENDS = """import os, sys
print(os.getcwd(), sys.argv[1:], os.environ.get("GIVEN"), os.environ.get("SET"), sys.path.count(sys.path[0]))
print("to stderr", file=sys.stderr)
os.environ["SET"] = "by an earlier script"
how = sys.argv[1]
if how == "raise":
    raise ValueError("raised")
if how == "fd":
    os.write(2, b"past the redirect")
sys.exit(None if how == "none" else int(how) if how.isdigit() else how)
"""


def test_scripts_run_in_one_process_end_as_each_in_its_own_would(tmp_path):
    """``scripts_in_one_process``, which runs the examples and the benchmarks' refusals (mutation round 37: a runner
    that reported a traceback as exit status 0, or left a script's os.environ to the next, passed every test of
    them): each script in its folder, with its arguments, the environment given and its folder first on sys.path,
    ends with its own process's exit status, stdout and stderr; a write past the redirects fails the run."""
    script, here = tmp_path / "ends.py", tmp_path / "here"
    script.write_text(_ENDS)
    here.mkdir()
    env = {**os.environ, "GIVEN": "yes"}
    hows, cwds = ["0", "raise", "3", "a message", "none"], [here] + [tmp_path] * 4
    ended = scripts_in_one_process([(script, [how], cwd) for how, cwd in zip(hows, cwds)], env, timeout_s=60)
    assert [e.returncode for e in ended] == [0, 1, 3, 1, 0]
    assert [e.stdout for e in ended] == [f"{cwd} {[how]} yes None 1\n" for how, cwd in zip(hows, cwds)]
    stderr = [e.stderr for e in ended]
    assert stderr[0] == stderr[2] == stderr[4] == "to stderr\n" and stderr[3] == "to stderr\na message\n"
    assert stderr[1].startswith("to stderr\nTraceback (most recent call last):\n"), stderr[1]
    assert stderr[1].endswith("\nValueError: raised\n"), stderr[1]
    with pytest.raises(AssertionError, match="past the redirect"):
        scripts_in_one_process([(script, ["fd"], tmp_path)], env, timeout_s=60)


@pytest.fixture(scope="module")
def example_runs(tmp_path_factory) -> dict:
    """Every command of COMMANDS run in one process (``scripts_in_one_process``: a process each imported torch
    again), offline: name -> its ``returncode``, ``stdout`` and ``stderr``."""
    root = tmp_path_factory.mktemp("examples")
    for name in COMMANDS:
        (root / name).mkdir()
        for file, (n, seed, *side) in NPZ.get(name, {}).items():
            _npz(root / name / file, n, seed=seed, side=side[0] if side else 32)
    ended = scripts_in_one_process([(EXAMPLES / script, args, root / name) for name, (script, args) in COMMANDS.items()],
                                   _env(root), timeout_s=2 * TIMEOUT_S)  # several commands
    return dict(zip(COMMANDS, ended))


def _ran(example_runs: dict, name: str):
    """The run of COMMANDS[name], checked to have ended with exit status 0."""
    (script, args), proc = COMMANDS[name], example_runs[name]
    _check_ran([script, *args], proc)
    return proc


# what each --smoke run prints when its method was applied (a transform that saw no image, or ISDA left at strength
# 0 or without statistics, still ran to the end); the loss is the mean per image, near ln 10 untrained;
# and the first epoch trains at the --lr given (a decay step fell on epoch 0 with --epochs 1 to 3: one_line.py --smoke
# trained at lr 0.0008, isda_hook.py --epochs 1 at 0.001)
SMOKE_OUTPUT = {
    "one_line.py": [r"augmentation: LatentNoise\(eps=10\.0, ", r"epoch 1/1: lr 0\.1, loss [1-9]\.\d{3}, [\d.]+ s, "
                    r"augmentation \{'seen': 64, 'transformed': 64, 'rejected': 0\}",
                    r"\ntest accuracy: [\d.]+% on 32 images"],
    "compose_randaugment.py": [r"\nISDA: \{'seen': 32, 'transformed': 32, 'rejected': 0\}",
                               r"y \(16,\) torch\.int64",  # ISDA last: class indices, armed for the next forward
                               r"\n== torchvision v2 \+ ISDA: RandomCrop -> RandomHorizontalFlip -> LatentNoise -> "
                               r"RandAugment -> ISDA\n"],
    "isda_hook.py": [r"\nepoch 1/2: lr 0\.1, lambda 0\.000, ",
                     r"\nepoch 2/2: lr 0\.001, lambda 0\.250, loss [\d.]+, test accuracy [\d.]+%, "
                     r"features seen per class [1-9]",
                     r"saved and reloaded the ISDA statistics: cov \(10, 64, 64\)"],  # full covariances
    "train_your_own_flow.py": [r"^64 images of shape \(3, 16, 16\) from ",
                               r"augmentation stats \{'seen': 8, 'transformed': 8, 'rejected': 0\}"],
}
# the training loops' progress bar on stderr (an epoch of one_line.py on 5,000 CIFAR-10 images took 12 silent minutes
# on a busy 2-core CPU)
SMOKE_BAR = {"one_line.py": "epoch 1/1:   0%|", "isda_hook.py": "epoch 2/2:   0%|"}
# kornia 0.7.2 (the floor) warns as it is imported under torch >= 2.4 (its lightglue.py decorates with the deprecated
# torch.cuda.amp.custom_fwd): kornia's warning, not the examples'
KORNIA_IMPORT_WARNING = re.compile(r"^.*kornia[/\\]feature[/\\]lightglue\.py:\d+: FutureWarning: "
                                   r"`torch\.cuda\.amp\.custom_fwd.*\n.*\n", re.M)


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_example_smoke(script, example_runs):
    proc = _ran(example_runs, script)
    assert all(re.search(pattern, proc.stdout) for pattern in SMOKE_OUTPUT[script]), proc.stdout[-3000:]
    assert SMOKE_BAR.get(script, "") in proc.stderr, proc.stderr[-3000:]
    # compose_randaugment.py warned that its own model trained
    assert "Warning" not in KORNIA_IMPORT_WARNING.sub("", proc.stderr), proc.stderr[-3000:]


@pytest.mark.slow
def test_one_line_smoke_with_the_adversarial_method(example_runs):
    """--method adversarial, the README's other one-line augmentation, attacks the model being trained."""
    proc = _ran(example_runs, "one_line.py adversarial")
    assert re.search(r"(?m)^augmentation: LatentAdversarial\(eps=1\.0, steps=1, ", proc.stdout), proc.stdout[-3000:]
    assert all(re.search(pattern, proc.stdout) for pattern in SMOKE_OUTPUT["one_line.py"][1:]), proc.stdout[-3000:]


@pytest.mark.slow
def test_one_line_on_a_set_smaller_than_a_batch_without_test_set(example_runs):
    """... of 16x16 images: the crops keep the images' size (a crop of 32 ended in torchvision's traceback, and cut
    larger images down to 32x32 without a word: audit 395)."""
    proc = _ran(example_runs, "one_line.py tiny")  # 20 images
    assert "epoch 1/2: lr 0.1, loss" in proc.stdout and "test accuracy" not in proc.stdout
    # the LR each epoch trains at, decayed (x 0.2 at each of its 3 milestones, all at epoch 1 of 2): mutation round 41
    # (audit 292) printed --lr every epoch, unseen with --epochs 1
    assert "epoch 2/2: lr 0.0008, loss" in proc.stdout


@pytest.mark.slow
def test_ddp_example_smoke(tmp_path):
    proc = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                 str(EXAMPLES / "ddp_torchrun.py"), "--smoke"], tmp_path)
    assert "ranks drew different noise" in proc.stdout
    assert "ranks drew the SAME noise" in proc.stdout
    assert "ISDA statistics identical on all 2 ranks" in proc.stdout
    assert "on 32 images (a share on each of the 2 ranks)" in proc.stdout  # each test image scored once


@pytest.mark.slow
def test_ddp_example_ends_every_rank_in_one_line_on_data_it_cannot_read(tmp_path):
    """Audit 407: rank 0's one line was followed by rank 1's traceback ("[rank1]: Traceback ... Connection closed by
    peer"): it waited for rank 0 at a barrier. Now every rank ends with rank 0's exit status, and the line is said
    once."""
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            str(EXAMPLES / "ddp_torchrun.py"), "--train", "npz:missing.npz"]
    proc = subprocess.run(args, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode != 0
    said = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert said == ["ddp_torchrun.py: error: --train npz:missing.npz: npz data file 'missing.npz' does not exist"], \
        proc.stderr[-5000:]
    assert "[rank" not in proc.stderr and "Connection closed" not in proc.stderr, proc.stderr[-5000:]


_RANK_0_FAILS = """import sys
sys.path.insert(0, sys.argv[2])
from ddp_torchrun import rank_0_first, setup


def load():
    if sys.argv[1] == "raises":
        raise RuntimeError("no data here")
    sys.exit("r0: error: no data here")


rank_0_first(setup()[0], load)
"""


@pytest.mark.slow
@pytest.mark.parametrize("how, line", [("raises", "RuntimeError: no data here"), ("exits", "r0: error: no data here")])
def test_ddp_example_says_once_why_rank_0_could_not_load(tmp_path, how, line):
    """An exception on rank 0 other than SystemExit left rank 1 waiting for it, to end a second later in a traceback
    of its own ("Connection closed by peer"); a SystemExit with a message had it printed by every rank."""
    (tmp_path / "r0.py").write_text(_RANK_0_FAILS)
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "r0.py", how,
            str(EXAMPLES)]
    proc = subprocess.run(args, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 1
    assert [s for s in proc.stderr.splitlines() if s.endswith(line)] != [] and proc.stderr.count(line) == 1, \
        proc.stderr[-5000:]
    assert "Connection closed" not in proc.stderr and "[rank1]" not in proc.stderr, proc.stderr[-5000:]


@pytest.mark.parametrize("error", [RuntimeError, SystemExit])
def test_ddp_example_destroys_the_process_group_where_rank_0_raises(tmp_path, monkeypatch, capsys, error):
    """(audit 424) Every other way out of rank_0_first destroyed the group; rank 0's exception left it to the exit,
    where NCCL's warns ("destroy_process_group() was not called before program exit") below the traceback. A
    SystemExit (data that cannot be loaded: a one-line error) ends every rank with its status, the group destroyed.
    (audit 440) Rank 0 says why before it tells the others: told first, they ended, and torchrun stopped rank 0
    before its exit printed the reason (1 failure of the DDP example's test in a loaded run)."""
    import torch.distributed as dist

    module = _example("ddp_torchrun.py", monkeypatch)
    told = []

    def tell(objects, src):
        told.append((list(objects), capsys.readouterr().err))  # what rank 0 had printed when it told the others
        return broadcast(objects, src=src)

    def load():
        raise error("no data here")

    broadcast = dist.broadcast_object_list
    monkeypatch.setattr(dist, "broadcast_object_list", tell)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with pytest.raises(SystemExit) as e:
            module.rank_0_first(0, load)
        assert e.value.code == 1 and not dist.is_initialized()
        assert len(told) == 1 and told[0][0] == [1], told
        said = told[0][1]
        assert said.endswith("RuntimeError: no data here\n" if error is RuntimeError else "no data here\n"), said
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.slow
def test_an_option_given_beside_smoke_wins(example_runs):
    """--smoke's sizes are defaults: `isda_hook.py --smoke --epochs 1` trained its 2 epochs all the same (audit 395)."""
    proc = _ran(example_runs, "isda_hook.py smoke, 1 epoch")
    assert "\nepoch 1/1: lr 0.1, lambda 0.000, " in proc.stdout and "epoch 2/" not in proc.stdout, proc.stdout[-3000:]
    assert "cov (10, 64)" in proc.stdout  # the other options are taken too


@pytest.mark.slow
def test_compose_example_on_npz_data(example_runs):
    proc = _ran(example_runs, "compose npz")  # 20 training images, 6 test images
    assert proc.stdout.count("test accuracy: ") == 3 and "on 6 images" in proc.stdout
    assert "y (4, 2) torch.float32" in proc.stdout     # mixed labels over the npz's two classes


@pytest.mark.slow
def test_compose_example_on_images_of_another_size(example_runs):
    """8x8 greyscale digits, with the digits Glow: the crops keep the images' size (a crop of 32 ended in
    torchvision's traceback: audit 395)."""
    proc = _ran(example_runs, "compose digits")
    assert proc.stdout.count("step 1: x (4, 1, 8, 8) in ") == 3, proc.stdout[-3000:]


@pytest.mark.slow
def test_isda_example_on_npz_data_without_test_set(example_runs):
    proc = _ran(example_runs, "isda npz")  # 20 training images
    assert "epoch 1/1: lr 0.1, lambda 0.000" in proc.stdout and "test accuracy" not in proc.stdout   # --test: none
    assert "saved and reloaded the ISDA statistics: cov (2, 32)" in proc.stdout  # diagonal: a variance per feature


@pytest.mark.slow
def test_ddp_example_on_npz_data_in_one_process(example_runs):
    """Without torchrun the script is a world of one (test_ddp_example_smoke runs two ranks)."""
    proc = _ran(example_runs, "ddp npz")  # 20 training images, 6 test images
    assert "ISDA statistics identical on all 1 ranks" in proc.stdout
    assert "test accuracy:" in proc.stdout and "on 6 images" in proc.stdout
    assert "LatentMixupInference: probabilities (8, 2)" in proc.stdout


@pytest.mark.slow
def test_ddp_example_with_fewer_steps_than_transforms(example_runs):
    """A small data set (a user's own) gives fewer steps than the 5 transforms that take turns: ISDA never runs,
    and the checks say so instead of crashing on statistics it never gathered."""
    proc = _ran(example_runs, "ddp few steps")  # 8 training images
    assert "ISDA never ran: 2 steps in all, fewer than 5" in proc.stdout
    assert "LatentMixupInference: probabilities (8, 2)" in proc.stdout


def _example_data(argv: list[str]):
    """examples/common.py's example_data for these command-line options."""
    common = _common()
    parser = argparse.ArgumentParser(prog="example.py")
    common.add_data_args(parser)
    parser.add_argument("--smoke", action="store_true")
    return common.example_data(parser, parser.parse_args(argv))


def test_example_data_help_names_every_spec_it_reads():
    """--train folder:PATH works (load_images reads it), so the help says so: it named cifar10 and npz:PATH only.
    Audit 407: ``digits`` (``compose digits`` above) was read by --train and --test but named by neither."""
    parser = argparse.ArgumentParser(prog="example.py")
    _common().add_data_args(parser)
    assert parser.format_help().count("folder:PATH") == 2
    text = " ".join(parser.format_help().split())
    assert "subset), digits (scikit-learn's" in text and "cifar10, digits or none" in text


@pytest.mark.parametrize("script", ["one_line.py", "compose_randaugment.py"])
def test_codec_help_names_both_kinds_it_takes(script, monkeypatch, capsys):
    """Audit 407: --codec's help said "of a Glow", but a VAE works as well (LatentNoise and LatentAdversarial take
    either): ``one_line.py --train digits --codec vae-digits`` trains."""
    module = _example(script, monkeypatch)
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    with pytest.raises(SystemExit) as e:
        module.main()
    assert e.value.code == 0
    assert "of a codec, a Glow or a VAE (default: glow-cifar10;" in " ".join(capsys.readouterr().out.split())


def test_example_data_reads_npz_specs(tmp_path):
    train, test = _npz(tmp_path / "train.npz", 5), _npz(tmp_path / "test.npz", 3, seed=1)
    x_train, y_train, x_test, y_test = _example_data(["--train", train, "--test", test])
    assert x_train.shape == (5, 3, 32, 32) and y_train.tolist() == [0, 1, 0, 1, 0]
    assert x_test.shape == (3, 3, 32, 32) and y_test.tolist() == [0, 1, 0]
    assert _example_data(["--train", train])[2:] == (None, None)      # no test set unless training on cifar10


def test_example_data_refuses_a_data_root_it_would_not_use(tmp_path, capsys):
    """--data-root is for CIFAR-10's download: beside npz data alone it was ignored in silence (audit 395; the CLI's
    `train` refuses it so since audit 394)."""
    train = _npz(tmp_path / "train.npz", 5)
    with pytest.raises(SystemExit) as exit_info:
        _example_data(["--train", train, "--data-root", str(tmp_path / "cifar")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.endswith("example.py: error: --data-root is where cifar10 and cifar10-5k "
                                                      "are downloaded, and neither --train nor --test is one of them: "
                                                      "leave --data-root out\n"), err


def test_example_smoke_data_and_codecs_are_seeded_and_images_are_counted_batch_by_batch():
    """The --smoke data and codecs are the same in every process (DDP ranks build their own), building a codec leaves
    torch's RNG as it was, the smoke test images are not training images, and count_correct counts every image
    against its own label, batch by batch."""
    import torch

    common = _common()
    x, y = common.synthetic_images(40, seed=0)
    assert torch.equal(x, common.synthetic_images(40, seed=0)[0]) and torch.equal(y, torch.arange(40) % 10)
    assert not torch.equal(x, common.synthetic_images(40, seed=1)[0])
    brightness = [float(x[y == c].mean()) for c in range(10)]
    assert brightness == sorted(brightness)  # something to learn: brighter with the class
    x_train, y_train, x_test, y_test = _example_data(["--smoke"])
    assert len(x_train) == 64 and len(x_test) == 32 and not torch.equal(x_test, x_train[:32])
    for build in (common.tiny_glow, common.tiny_vae):
        state = torch.get_rng_state()
        first = build().state_dict()
        assert torch.equal(torch.get_rng_state(), state), build.__name__
        torch.rand(3)  # another global RNG state: the same codec
        again, other = build().state_dict(), build(seed=1).state_dict()
        assert all(torch.equal(v, again[k]) for k, v in first.items()), build.__name__
        assert not all(torch.equal(v, other[k]) for k, v in first.items()), build.__name__

    def model(images):  # predicts the class written in the first pixel
        return torch.nn.functional.one_hot(images.flatten(1)[:, 0].long(), 5).float()

    images = torch.arange(5.0).view(5, 1, 1, 1)
    assert common.count_correct(model, images, torch.tensor([0, 1, 2, 0, 4]), "cpu", batch_size=2) == 4


def test_example_data_that_cannot_be_loaded_ends_in_one_line(tmp_path, monkeypatch, capsys):
    """A one-line message, no traceback: CIFAR-10 that cannot be downloaded (offline), a missing file, no labels."""
    import urllib.error

    import torchvision.datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    cases = [(["--data-root", str(tmp_path / "cifar")],
              [f"--train cifar10: could not download CIFAR-10 into {tmp_path / 'cifar'}",
               "--train npz:PATH --test npz:PATH"]),
             (["--train", f"npz:{tmp_path / 'missing.npz'}"], ["missing.npz' does not exist"]),
             (["--train", _npz(tmp_path / "unlabelled.npz", 3, labels=False)], ["no labels"])]
    for argv, expected in cases:
        with pytest.raises(SystemExit) as exit_info:
            _example_data(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, err
        assert err.startswith("example.py: error: ") and err.count("\n") == 1, err
        assert all(e in err for e in expected), err
        assert ("or --data-root DIR" in err) == (argv[0] == "--data-root"), err  # the hint is for CIFAR-10 alone


def test_a_bad_codec_device_or_image_folder_ends_the_examples_in_one_line(tmp_path, capsys):
    """They printed a traceback (UnknownCheckpointError, MissingFileError, torch's "Found no NVIDIA driver")."""
    common = _common()
    parser = argparse.ArgumentParser(prog="example.py")
    cases = [(lambda: common.load_codec(parser, "--codec", "glow-cifar1O", "cpu"),
              "--codec glow-cifar1O: unknown checkpoint 'glow-cifar1O' (not a registered name"),
             (lambda: common.load_codec(parser, "--vae", str(tmp_path / "no.safetensors"), "cpu"),
              f"--vae {tmp_path / 'no.safetensors'}: no checkpoint file at"),
             (lambda: common.pick_device(parser, "cuda:99"), "--device: device 'cuda:99' asked for, but"),
             (lambda: common.pick_device(parser, "gpu"), "--device: device must be cpu, cuda, cuda:N or auto"),
             (lambda: _run_in(common, parser), "--images: image folder"),
             (lambda: _raise_in(common, parser, KeyError("no column 'x'")), "--key: no column 'x'\n")]  # not its repr
    for call, expected in cases:
        with pytest.raises(SystemExit) as exit_info:
            call()
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.startswith(f"example.py: error: {expected}") and err.count("\n") == 1
    assert common.pick_device(parser, "auto").type in ("cpu", "cuda")
    assert common.load_codec(parser, "--codec", "glow-digits", "cpu").kind == "glow"


def _raise_in(common, parser, error):
    with common.one_line_errors(parser, "--key"):
        raise error


def _run_in(common, parser):
    from latent_transforms.data import load_images

    with common.one_line_errors(parser, "--images"):
        load_images("folder:/nonexistent-folder")


def test_train_your_own_flow_needs_images_or_smoke(monkeypatch, capsys):
    """Without --images (and without --smoke) it says so, before looking for any folder."""
    module = _example("train_your_own_flow.py", monkeypatch)
    monkeypatch.setattr(sys, "argv", ["train_your_own_flow.py", "--device", "cpu"])
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.endswith("train_your_own_flow.py: error: --images is required (or --smoke)\n")


def test_train_your_own_flow_ends_a_training_error_in_one_line(tmp_path):
    # images the flow cannot take (15 is not divisible by 2**levels) ended in a 9-frame traceback
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    for i in range(4):
        Image.fromarray(np.full((15, 15, 3), 40 * i, dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    env = {**os.environ, "LATENT_TRANSFORMS_HOME": str(tmp_path / "hub"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(EXAMPLES / "train_your_own_flow.py"), "--images", str(tmp_path / "imgs"),
                           "--out", str(tmp_path / "out")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.startswith("train_your_own_flow.py: error: training: image height and width must be "
                                  "divisible by 2**levels") and proc.stderr.count("\n") == 1, proc.stderr[-3000:]


def _example(script: str, monkeypatch):
    """examples/``script`` as a module, its main() not run."""
    monkeypatch.setitem(sys.modules, "common", _common())  # the examples import it as ``common``
    spec = importlib.util.spec_from_file_location(f"example_{script[:-3]}", EXAMPLES / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _main(script: str, argv: list[str], monkeypatch) -> None:
    """Run ``script``'s main() here with ``argv``, which must end it with exit status 2 (ddp_torchrun.py's process
    group is never started: a bad option is refused as the arguments are parsed)."""
    module = _example(script, monkeypatch)

    def setup():
        raise AssertionError("parsed past the options")

    monkeypatch.setattr(module, "setup", setup, raising=False)
    monkeypatch.setattr(sys, "argv", [script, *argv])
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    assert exit_info.value.code == 2, exit_info.value.code


# (script, options, the error's last line): each took the value (--epochs 0 trained nothing, --lr nan trained to nan,
# isda_hook.py --epochs 0 ended in an AttributeError, --lambda0 -1 in a traceback, train_your_own_flow.py --eps -1
# only after training, its files left behind; --batch-size 0 and --width 0 in torch's tracebacks): audit 395
OUT_OF_RANGE = [
    ("one_line.py", ["--epochs", "0"], "argument --epochs: must be an int >= 1, got 0"),
    ("one_line.py", ["--lr", "nan"], "argument --lr: must be a finite number in (0, inf), got nan"),
    ("one_line.py", ["--width", "0"], "argument --width: must be an int >= 1, got 0"),
    ("compose_randaugment.py", ["--steps", "0"], "argument --steps: must be an int >= 1, got 0"),
    ("compose_randaugment.py", ["--batch-size", "-1"], "argument --batch-size: must be an int >= 1, got -1"),
    ("isda_hook.py", ["--epochs", "0"], "argument --epochs: must be an int >= 1, got 0"),
    ("isda_hook.py", ["--lambda0", "-1"], "argument --lambda0: must be a finite number in [0, inf), got -1.0"),
    ("ddp_torchrun.py", ["--batch-size", "0"], "argument --batch-size: must be an int >= 1, got 0"),
    ("train_your_own_flow.py", ["--eps", "-1"], "argument --eps: must be a finite number in [0, inf), got -1.0"),
    ("train_your_own_flow.py", ["--epochs", "0"], "argument --epochs: must be a finite number in (0, inf), got 0.0"),
]


@pytest.mark.parametrize("script, options, expected", OUT_OF_RANGE, ids=[f"{s} {o[0]}" for s, o, _ in OUT_OF_RANGE])
def test_an_out_of_range_option_ends_the_example_in_one_line(script, options, expected, tmp_path, monkeypatch, capsys):
    data = ["--images", str(tmp_path / "missing")] if script == "train_your_own_flow.py" else \
        ["--train", f"npz:{tmp_path / 'missing.npz'}"]  # were the option taken, this error would end it
    _main(script, [*data, *options, "--device", "cpu"] if script != "ddp_torchrun.py" else [*data, *options],
          monkeypatch)
    assert capsys.readouterr().err.endswith(f"{script}: error: {expected}\n")


# (script, options given beside --smoke, the ones named): --smoke ran on its own data and codecs and ignored them,
# and train_your_own_flow.py --smoke --images DIR wrote its 64 random PNGs into DIR (over 000.png...): audit 395
SMOKE_REPLACES = [
    ("one_line.py", ["--train", "npz:x.npz", "--codec", "glow-digits"], "--train, --codec"),
    ("compose_randaugment.py", ["--data-root", "cifar"], "--data-root"),
    ("isda_hook.py", ["--test", "none"], "--test"),
    ("ddp_torchrun.py", ["--glow", "glow-digits", "--vae", "vae-digits"], "--glow, --vae"),
    ("train_your_own_flow.py", ["--images", "IMAGES"], "--images"),
]


@pytest.mark.parametrize("script, options, named", SMOKE_REPLACES, ids=[s for s, _, _ in SMOKE_REPLACES])
def test_smoke_refuses_the_options_its_own_data_and_codecs_replace(script, options, named, tmp_path, monkeypatch,
                                                                    capsys):
    images = tmp_path / "images"
    images.mkdir()
    monkeypatch.chdir(tmp_path)
    _main(script, ["--smoke", *[str(images) if o == "IMAGES" else o for o in options]], monkeypatch)
    expected = f"{script}: error: --smoke makes its own data and codecs: leave out {named}\n"
    assert capsys.readouterr().err.endswith(expected)
    assert not any(images.iterdir()) and sorted(p.name for p in tmp_path.iterdir()) == ["images"]  # nothing written


def test_smoke_sizes_are_defaults_and_the_options_it_replaces_are_none():
    """common.parse_args, which every example's --smoke goes through (mutation round, audit 401: returning None,
    refusing every --smoke run, or leaving the replaced options at its own placeholder failed only the slow runs)."""
    common = _common()
    parser = argparse.ArgumentParser(prog="example.py")
    parser.add_argument("--train", default="cifar10")
    parser.add_argument("--epochs", type=int, default=30)
    common.add_smoke_arg(parser, "synthetic images", {"epochs": 2})
    assert "synthetic images; --epochs 2 unless given (CPU, seconds)" in " ".join(parser.format_help().split())
    for argv, expected in (([], {"train": "cifar10", "epochs": 30, "smoke": False}),
                           (["--smoke"], {"train": None, "epochs": 2, "smoke": True}),
                           (["--smoke", "--epochs", "1"], {"train": None, "epochs": 1, "smoke": True})):
        assert vars(common.parse_args(parser, {"epochs": 2}, ("--train",), argv)) == expected, argv


def test_train_your_own_flow_takes_the_no_resume_its_errors_name(tmp_path, monkeypatch):
    """train_codec's errors for an OUT holding another run, or a bad or diverged state, say "start afresh with
    --no-resume", which the script did not take (audit 395): it is passed on as resume=False."""
    from PIL import Image

    module = _example("train_your_own_flow.py", monkeypatch)
    resumed = []

    def train_codec(*args, resume=True, **kwargs):  # stops the script before it trains
        resumed.append(resume)
        raise ValueError("stopped")

    monkeypatch.setattr(module, "train_codec", train_codec)
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "images" / "0.png")
    for extra in ([], ["--no-resume"]):
        monkeypatch.setattr(sys, "argv", ["train_your_own_flow.py", "--images", str(tmp_path / "images"), "--out",
                                          str(tmp_path / "out"), "--device", "cpu", *extra])
        with pytest.raises(SystemExit):
            module.main()
    assert resumed == [True, False]
