"""The benchmark scripts run end to end with ``--smoke`` on the CPU (random data, tiny random-init codecs)."""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import latent_transforms
from latent_transforms import ISDALoss
from latent_transforms.validation import MAX_THREADS

from conftest import ROOT, cifar_size_glow, scripts_in_one_process, skip_module_outside_the_source_tree

skip_module_outside_the_source_tree()  # the scripts of benchmarks/ and scripts/
BENCHMARKS = ROOT / "benchmarks"
TIMEOUT_S = 170

ARMS = ["baseline", "randaugment", "mixup", "latent-noise", "latent-adversarial", "varmixup", "isda",
        "randaugment+latent-adversarial", "isda+latent-noise"]
THROUGHPUT_ROWS = ["train_step", "tv_randaugment_batch", "tv_randaugment_sample", "tv_mixup", "kornia_randaugment",
                   "glow_normflows", "glow_codec", "latent_noise", "latent_adversarial_0", "latent_adversarial_1",
                   "latent_adversarial_3",
                   "varmixup", "varmixup_all", "train_step_isda"]


def _run(args: list[str], tmp_path: Path, home: bool = False) -> subprocess.CompletedProcess:
    """``python ARGS`` in ``tmp_path``, which must end with exit status 0. ``home``: ``~`` is ``tmp_path`` (HOME and
    USERPROFILE), so an ``--out ~/name`` lands in ``tmp_path / name``, and no ``./~`` folder may be left (mutation
    round 39, audit 282: a script writing to its ``args.out`` instead of the checked folder, ``~`` expanded)."""
    env = {**os.environ, "LATENT_TRANSFORMS_HOME": str(tmp_path / "hub"), "LATENT_TRANSFORMS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", **({"HOME": str(tmp_path), "USERPROFILE": str(tmp_path)} if home else {})}
    env.pop("LATENT_TRANSFORMS_HUB_URL", None)
    proc = subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert proc.returncode == 0, f"{' '.join(args)} exited with {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert not (home and (tmp_path / "~").exists()), sorted(map(str, (tmp_path / "~").rglob("*")))
    return proc


# the end-to-end runs of several tests below, run by the smoke_runs fixture: name -> (script, args); each in a folder
# of its own (compile_speedup.py last: the process's Dynamo state is then left to no other script)
SMOKES = {
    "quickstart_figures.py": ("quickstart_figures.py", ["--smoke", "--repeats", "1"]),
    "isda_precision.py": ("isda_precision.py", ["--smoke", "--no-progress"]),
    "isda_memory.py": ("isda_memory.py", ["--classes", "20", "--batch", "8"]),
    "isda_memory.py --update": ("isda_memory.py", ["--update", "--classes", "4", "--batch", "8"]),
    "compile_speedup.py": ("compile_speedup.py", ["--smoke", "--no-progress"]),
}


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory) -> dict:
    """Every command of SMOKES run in one process (``scripts_in_one_process``: a process each imported torch again),
    as ``_run`` runs one: name -> its ``returncode``, ``stdout`` and ``stderr``."""
    root = tmp_path_factory.mktemp("smokes")
    env = {**os.environ, "LATENT_TRANSFORMS_HOME": str(root / "hub"), "LATENT_TRANSFORMS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    env.pop("LATENT_TRANSFORMS_HUB_URL", None)
    for name in SMOKES:
        (root / name).mkdir()
    ended = scripts_in_one_process([(BENCHMARKS / script, args, root / name) for name, (script, args) in SMOKES.items()],
                                   env, timeout_s=2 * TIMEOUT_S)  # several commands
    return dict(zip(SMOKES, ended))


def _smoke(smoke_runs: dict, name: str):
    """The run of SMOKES[name], checked to have ended with exit status 0, as ``_run`` checks its own."""
    (script, args), proc = SMOKES[name], smoke_runs[name]
    assert proc.returncode == 0, f"{script} {' '.join(args)} exited with {proc.returncode}\n{proc.stdout[-3000:]}\n" \
                                 f"{proc.stderr[-5000:]}"
    return proc


@pytest.mark.slow
def test_accuracy_smoke(tmp_path, offline_hub):
    out = tmp_path / "acc"
    # 64 random training images (32 scored), not --smoke's 200: the same arms, epochs, corruptions and report
    proc = _run([str(BENCHMARKS / "accuracy.py"), "--smoke", "--smoke-images", "64", "--no-progress", "--out", str(out)],
                tmp_path)

    results = json.loads((out / "results.json").read_text())
    assert results["config"]["smoke"] is True
    assert list(results["summary"]) == ARMS
    for arm in ARMS:
        s = results["summary"][arm]
        assert 0.0 <= s["accuracy_mean"] <= 1.0 and 0.0 <= s["ece_mean"] <= 1.0
        assert 0.0 <= s["corruption_accuracy_mean"] <= 1.0 and s["seconds_per_epoch"] > 0
        run = results["runs"][arm]["0"]
        assert set(run["corruptions"]) == {"gaussian_noise", "gaussian_blur", "contrast", "brightness", "jpeg"}
        assert all(set(v) == {"1", "3", "5"} for v in run["corruptions"].values())
        assert sum(run["reliability"]["count"]) == results["config"]["n_eval"]
        assert run["wall_seconds"] > 0 and run["device_name"] == results["config"]["device_name"]
    # the latent methods really transformed samples
    assert results["runs"]["latent-noise"]["0"]["transform_stats"]["LatentNoise"]["transformed"] > 0
    assert results["runs"]["isda+latent-noise"]["0"]["transform_stats"]["ISDA"]["transformed"] > 0
    # and ISDA's correction acted (in a 1-epoch smoke its strength stayed 0: every figure the baseline's)
    assert results["runs"]["isda"]["0"]["reliability"] != results["runs"]["baseline"]["0"]["reliability"]

    assert [t["target"] for t in results["targets"]] == ["Target 1", "Target 2", "Target 3"]
    assert all(t["status"] in ("MET", "MISSED") for t in results["targets"])  # every arm ran, so all are decided

    md = (out / "results.md").read_text()
    assert "SMOKE RUN" in md
    for arm in ARMS:
        assert f"| {arm} (" in md, arm
        assert f"| {arm} | {100 * results['runs'][arm]['0']['accuracy']:.1f}% |" in md, arm  # per-seed table
    for text in (md, proc.stdout):
        for n in (1, 2, 3):
            assert re.search(rf"^- Target {n} \(.*\): (MET|MISSED) \(provisional: 1 seed; the issue asks for at "
                             rf"least 3\) -- ", text, re.M), (n, text[-2000:])
    assert "% ± " not in md  # one seed: no spread to show (it printed "± 0.0")
    assert "PARTIAL" not in md and "nonfinite_predictions" in run and run["nonfinite_predictions"] == 0

    from PIL import Image

    with Image.open(out / "reliability.png") as im:
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
    _check_codec_records_and_merge(results, out, tmp_path)


GPU_SESSION = ROOT / "scripts" / "gpu_session.sh"


def _gpu_session_env(tmp_path: Path, **settings: str) -> dict:
    """The environment of a SMOKE=1 scripts/gpu_session.sh call (JOBS=2 shards, no device tests; results in
    tmp_path/out, resuming tmp_path/acc), ``settings`` added."""
    env = {**os.environ, "LATENT_TRANSFORMS_HOME": str(tmp_path / "hub"), "LATENT_TRANSFORMS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "SMOKE": "1", "BUDGET": "150", "PACK_EVERY": "1", "OUT": str(tmp_path / "out"),
           "ACC_DIR": str(tmp_path / "acc"), "JOBS": "2", "PYTHON": sys.executable, "HOME": str(tmp_path),
           "SKIP_DEVICE_TESTS": "1"}
    return {**env, **settings}


def _run_gpu_session(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """``subprocess.run(args, capture_output=True, text=True)`` of the GPU-session script in a session of its own: on
    a timeout every process it started is killed too (``subprocess.run`` kills bash alone: its packer, a loop of
    ``sleep 1``, ran on for 44 minutes after a timeout under load)."""
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_session(proc.pid)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


@pytest.mark.skipif(int(pytest.__version__.split(".")[0]) < 8,
                    reason="the page fetches the newest pytest: an older one installed here (7.0 needs attrs, py, "
                           "tomli) says nothing of what that one needs")
def test_results_page_fetches_every_wheel_pytest_needs_for_the_gpu_session():
    """docs/results.md's ``pip download --no-deps`` of pytest for the GPU image (installed ``--no-deps`` by
    scripts/gpu_session.sh) names every wheel pytest requires on Python 3.12, Linux (audit 407: ``packaging``
    was left out)."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    line = next(line for line in (ROOT / "docs" / "results.md").read_text().splitlines() if "pip download" in line)
    words = line.split()
    assert "--no-deps" in words and "--python-version" in words and words[words.index("--python-version") + 1] == "3.12"
    fetched = set(words[words.index(".whl") + 1:])
    gpu_image = {"python_version": "3.12", "python_full_version": "3.12.0", "sys_platform": "linux", "extra": ""}
    needed = {r.name for r in map(Requirement, requires("pytest")) if r.marker is None or r.marker.evaluate(gpu_image)}
    assert needed and needed <= fetched, f"not fetched: {sorted(needed - fetched)}"
    assert "--no-deps" in GPU_SESSION.read_text()  # the script installs the wheels as they are: none fetched there


def test_gpu_session_script_exits_1_when_a_step_failed(tmp_path):
    # every shard and the merge failing still ended in "results in ..." and exit status 0
    bad = tmp_path / "acc" / "shard-0"
    bad.mkdir(parents=True)
    (bad / "results.json").write_text("not json")  # an earlier shard every new shard reads (--done): it fails
    env = _gpu_session_env(tmp_path, ARMS="baseline", JOBS="1", SKIP_THROUGHPUT="1")
    proc = _run_gpu_session(["bash", "-c", f"umask 022 && exec bash {GPU_SESSION}"], env, TIMEOUT_S)
    assert proc.returncode == 1 and "accuracy.py shard 0/1 exit" in proc.stdout, proc.stdout[-3000:]
    assert "a step failed (above)" in proc.stdout
    import tarfile

    with tarfile.open(tmp_path / "out" / "accuracy" / "shards.tar") as tar:  # its "./" sets the mode of the folder
        assert tar.getmember(".").mode == 0o755  # it is unpacked into: it was mktemp's 0700


def test_gpu_session_script_exits_1_when_only_the_merge_failed(tmp_path):
    # no time left for the shards (BUDGET under 45 s): only the merge of the shards carried in runs, and fails on an
    # unreadable one; that alone must make the exit status 1 (no shard failed to set it)
    bad = tmp_path / "acc" / "shard-0"
    bad.mkdir(parents=True)
    (bad / "results.json").write_text("not json")
    env = _gpu_session_env(tmp_path, BUDGET="30", SKIP_THROUGHPUT="1")
    proc = _run_gpu_session(["bash", str(GPU_SESSION)], env, TIMEOUT_S)
    assert "accuracy.py shard" not in proc.stdout, proc.stdout[-3000:]  # no shard ran
    assert "accuracy.py --merge exit 2" in proc.stdout and "a step failed (above)" in proc.stdout, proc.stdout[-3000:]
    assert proc.returncode == 1


@pytest.mark.parametrize("setting, value", [("BUDGET", "9m"), ("BUDGET", "0"), ("PACK_EVERY", "0.5"), ("JOBS", "0"),
                                            ("JOBS", "two"), ("DEVICE_TESTS_BUDGET", "2m"), ("TP_BUDGET", "0"),
                                            ("TP_BUDGET", "5m")])
def test_gpu_session_script_refuses_a_setting_that_is_not_a_whole_number(tmp_path, setting, value):
    # BUDGET=9m read as 0 in the shell's arithmetic (no shard ran, nothing said why); JOBS=0 ran no shard;
    # TP_BUDGET=0 gave `timeout 0`, which is no time limit at all; 5m, which timeout reads as minutes, went through
    env = _gpu_session_env(tmp_path, SKIP_THROUGHPUT="1", **{setting: value})
    proc = _run_gpu_session(["bash", str(GPU_SESSION)], env, 60)
    assert proc.returncode == 2 and f"{setting} must be a whole number" in proc.stderr and f"got '{value}'" in proc.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was made


@pytest.mark.slow
def test_gpu_session_script_runs_its_steps_and_resumes(tmp_path):
    """scripts/gpu_session.sh, the one-call GPU plan, with SMOKE=1: device tests, throughput, then accuracy in JOBS=2
    shards at once within the budget, merged; what comes back fits the device's limits, and a next call (with another
    JOBS), given it unpacked as the script's header says, runs only what is missing."""
    import tarfile

    out, acc = tmp_path / "out", tmp_path / "acc"
    env = _gpu_session_env(tmp_path, ARMS="baseline isda", SKIP_DEVICE_TESTS="0")

    def call() -> tuple[str, dict, dict]:
        """-> (stdout, the merged results, shard name -> its runs)."""
        proc = _run_gpu_session(["bash", str(GPU_SESSION)], env, TIMEOUT_S)
        assert proc.returncode == 0 and "exit" not in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
        back = [p.relative_to(out) for p in out.rglob("*") if p.is_file()]  # what the device would return
        assert len(back) <= 8 and all(len(p.parts) <= 3 and re.fullmatch(r"[\w.-]+", p.name) for p in back), back
        with tarfile.open(out / "accuracy" / "shards.tar") as tar:
            shards = {Path(m.name).parent.name: json.load(tar.extractfile(m))["runs"] for m in tar.getmembers()
                      if m.name.endswith("results.json")}
        subprocess.run(f"mkdir -p {acc} && tar -xf {out}/accuracy/shards.tar -C {acc} && "
                       f"cp {out}/accuracy/results.* {out}/accuracy/reliability.png {acc}/", shell=True, check=True)
        return proc.stdout, json.loads((out / "accuracy" / "results.json").read_text()), shards

    _, first, shards = call()
    assert re.search(r"^1 passed, \d+ deselected", (out / "device-tests.txt").read_text(), re.M)
    assert "| LatentNoise |" in (out / "throughput" / "throughput.md").read_text()
    assert set(first["runs"]) == {"baseline", "isda"} and first["config"]["smoke"]
    assert shards == {"shard-0": {"baseline": first["runs"]["baseline"]}, "shard-1": {"isda": first["runs"]["isda"]}}
    assert "made in 2 shards (--shard)" in (out / "accuracy" / "results.md").read_text()
    env.update(SKIP_THROUGHPUT="1", ARMS="baseline isda mixup", JOBS="1")
    second, merged, shards = call()  # resumes: only mixup is left; shard-1, not run now, is kept and merged
    assert "Wrote" in second and set(merged["runs"]) == {"baseline", "isda", "mixup"}
    assert {a: merged["runs"][a] for a in first["runs"]} == first["runs"]
    assert shards == {"shard-0": {a: merged["runs"][a] for a in ("baseline", "mixup")},
                      "shard-1": {"isda": first["runs"]["isda"]}}


def _kill_session(sid: int) -> None:
    """SIGKILL every process of session ``sid`` (one this test started: start_new_session=True)."""
    for _ in range(50):
        left = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.getsid(int(entry.name)) == sid:
                        os.kill(int(entry.name), signal.SIGKILL)
                        left.append(entry.name)
                except (ProcessLookupError, PermissionError):
                    pass
        if not left:
            return
        time.sleep(0.1)


@pytest.mark.slow
def test_gpu_session_script_killed_midway_returns_the_runs_finished_before(tmp_path):
    """A device call killed at its time limit (SIGKILL: no EXIT trap runs) still returns, in accuracy/shards.tar, a
    whole archive holding every run finished a few PACK_EVERY periods before the kill: the periodic pack, renaming
    shards.tar.part only once it is complete."""
    import tarfile

    shards_tmp = tmp_path / "tmp"  # the script's mktemp -d (its shards' folders) lands here
    shards_tmp.mkdir()
    env = _gpu_session_env(tmp_path, SKIP_THROUGHPUT="1", TMPDIR=str(shards_tmp),
                           ARMS="baseline mixup isda latent-noise randaugment varmixup")  # 3 runs a shard: ~45 s
    tar_path = tmp_path / "out" / "accuracy" / "shards.tar"

    def log_text() -> str:
        return (tmp_path / "log.txt").read_text()[-3000:]

    with open(tmp_path / "log.txt", "w") as log:
        proc = subprocess.Popen(["bash", str(GPU_SESSION)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline, finished = time.monotonic() + TIMEOUT_S, {}
        while not finished and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            for path in shards_tmp.glob("*/shard-*/results.json"):  # written whole (atomic), after each run
                finished[path.parent.name] = {(a, s) for a, by_seed in json.loads(path.read_text())["runs"].items()
                                              for s in by_seed}
        assert finished, f"no accuracy run finished within {TIMEOUT_S} s (script exit {proc.poll()}):\n{log_text()}"
        time.sleep(4 * int(env["PACK_EVERY"]))  # a few periods: the packer has written shards.tar since
        assert proc.poll() is None, f"the script ended before the kill: nothing cut short\n{log_text()}"
        os.killpg(proc.pid, signal.SIGKILL)  # the script and its packer, as the device's limit does: no EXIT trap
        proc.wait(timeout=10)
    finally:
        _kill_session(proc.pid)  # the shards too (timeout put them in process groups of their own)

    assert tar_path.is_file(), f"no shards.tar after the kill: {sorted(tar_path.parent.glob('*'))}\n{log_text()}"
    raw = tar_path.read_bytes()  # whole, not a shards.tar.part cut short: tar's records and end-of-archive blocks
    assert len(raw) % 10240 == 0 and raw[-1024:] == bytes(1024), len(raw)
    with tarfile.open(tar_path) as tar:  # every member reads to its end
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    packed = {Path(name).parent.name: {(a, s) for a, by_seed in json.loads(data)["runs"].items() for s in by_seed}
              for name, data in members.items() if name.endswith("results.json")}
    for shard, runs in finished.items():
        assert runs <= packed.get(shard, set()), (shard, runs, packed)
        assert f"./{shard}/log.txt" in members


def _check_codec_records_and_merge(results: dict, out: Path, tmp_path: Path) -> None:
    """Every codec arm records the checkpoint it used; --merge recombines split files; mixed checkpoints are refused.
    The merges run accuracy.py's main() here (a process each imported torch again; scripts/gpu_session.sh's tests run
    --merge as a command)."""
    acc = _load_accuracy_module()
    glow, vae = acc.tiny_codecs()  # what --smoke used: recorded by Codec.fingerprint()
    for arm in ARMS:
        used = results["runs"][arm]["0"].get("codec")
        if arm in ("baseline", "randaugment", "mixup", "isda"):
            assert used is None
        else:
            assert used["sha256"] in (glow.fingerprint(), vae.fingerprint()) and "random-init" in used["name"], arm

    def write(name: str, arms: list[str], **edits) -> str:
        part = {**results, "runs": {a: results["runs"][a] for a in arms}, **edits}
        (tmp_path / name).write_text(json.dumps(part))
        return str(tmp_path / name)

    a, b = write("a.json", ARMS[:4]), write("b.json", ARMS[4:])
    acc.main(["--merge", a, b, "--out", str(tmp_path / "merged")])
    merged = json.loads((tmp_path / "merged" / "results.json").read_text())
    assert merged["summary"] == results["summary"] and merged["targets"] == results["targets"]
    assert merged["config"]["merged_from"] == [a, b]

    def refused(args: list[str], match: str) -> None:
        """main(args) ends with ``match``: a SystemExit with its message, or an error run_script makes one line."""
        with pytest.raises((SystemExit, ValueError, LookupError, OSError)) as e:
            acc.main(args)
        assert not isinstance(e.value, SystemExit) or e.value.code not in (0, None), e.value
        assert match in str(e.value), str(e.value)[-2000:]

    dup = write("dup.json", ARMS[3:5])
    refused(["--merge", a, dup, "--out", str(tmp_path / "m2")], "--merge: latent-noise seed 0 is in more than one file")
    other = write("other.json", ARMS[4:], fingerprint={**results["fingerprint"], "epochs": 7})
    refused(["--merge", a, other, "--out", str(tmp_path / "m3")], "made with other data or schedule than")
    # an arm's own settings only have to match among its merged runs: an arm re-run with other settings replaces
    # the old runs when those are left out with --arms
    redo = write("redo.json", ["varmixup"], fingerprint={**results["fingerprint"], "varmixup_p": 0.75})
    refused(["--merge", a, b, redo, "--out", str(tmp_path / "m5")], f"the varmixup runs of {redo} were made with "
            f"varmixup_p=0.75, those of {b} with 0.25")
    others = [arm for arm in ARMS if arm != "varmixup"]
    acc.main(["--merge", a, b, "--arms", *others, "--out", str(tmp_path / "m6")])
    acc.main(["--merge", str(tmp_path / "m6" / "results.json"), redo, "--out", str(tmp_path / "m7")])
    merged = json.loads((tmp_path / "m7" / "results.json").read_text())
    assert merged["fingerprint"]["varmixup_p"] == merged["config"]["varmixup_p"] == 0.75
    assert merged["runs"] == results["runs"] and merged["fingerprint"]["epochs"] == results["fingerprint"]["epochs"]
    runs = json.loads(json.dumps(results["runs"]))
    runs["varmixup"]["0"]["codec"]["sha256"] = "0" * 64
    stale = write("stale.json", ARMS[4:], runs={a: runs[a] for a in ARMS[4:]})
    seed1 = write("seed1.json", [], runs={"varmixup": {"1": results["runs"]["varmixup"]["0"]}})
    refused(["--merge", seed1, stale, "--out", str(tmp_path / "m4")], "varmixup seed 0 was trained with the vae")
    # --resume refuses a folder whose runs used another checkpoint than the one loaded now
    (out / "results.json").write_text(json.dumps({**results, "runs": {**results["runs"], "varmixup": runs["varmixup"]}}))
    refused(["--smoke", "--smoke-images", "64", "--no-progress", "--resume", "--arms", "baseline", "--out", str(out)],
            "--resume: " + str(out / "results.json") + ": varmixup seed 0 was trained with the vae")


@pytest.mark.slow
def test_throughput_smoke(tmp_path):
    out = tmp_path / "tp"
    proc = _run([str(BENCHMARKS / "throughput.py"), "--smoke", "--device", "cpu", "--out", "~/tp"], tmp_path,
                home=True)

    result = json.loads((out / "throughput.json").read_text())
    rows = {r["key"]: r for r in result["rows"]}
    assert set(THROUGHPUT_ROWS) <= set(rows)
    for r in rows.values():
        assert r["seconds"] > 0 and r["images_per_second"] > 0 and r["vs_train_step"] > 0
        assert r["peak_extra_bytes"] is None  # CPU: no peak memory
    assert rows["train_step"]["vs_train_step"] == 1.0
    assert result["config"]["max_abs_diff_normflows_vs_codec_roundtrip"] < 1e-3
    # the round trip itself, not only the two paths' agreement (the issue's bound must hold on the GPU too)
    assert result["config"]["max_abs_roundtrip_error_codec"] < 1e-3
    assert result["config"]["max_abs_roundtrip_error_normflows"] < 1e-3

    md = (out / "throughput.md").read_text()
    assert md.count("\n| ") >= len(THROUGHPUT_ROWS) + 1
    for r in rows.values():
        assert f"| {r['method']} |" in md and f"| {r['method']} |" in proc.stdout
    assert re.search(r"LatentAdversarial cost in PGD steps: fixed [\d.]+ ms, first step -?[\d.]+ ms, each of steps 2-3 "
                     r"-?[\d.]+ ms", md), md[-1500:]


def test_throughput_table_reports_isdas_own_memory():
    """The ISDA row times a whole training step, so its peak is a step's: the table adds ISDA's own share."""
    tp = _load_benchmark("throughput")
    row = dict(timed="t", seconds=0.01, images_per_second=1.0, vs_train_step=1.0)
    result = {"config": {"smoke": False, "batch_size": 256, "device_name": "GPU", "torch": "2", "iters": 1,
                         "warmup": 1, "codecs": {"glow": "g", "vae": "v"}, "width": 64, "compile": False,
                         "max_abs_diff_normflows_vs_codec_roundtrip": 1e-6, "max_abs_roundtrip_error_codec": 2e-6,
                         "max_abs_roundtrip_error_normflows": 3e-6},
              "rows": [{**row, "key": "train_step", "method": "step", "peak_extra_bytes": 900 * 2**20},
                       {**row, "key": "train_step_isda", "method": "isda", "peak_extra_bytes": 912 * 2**20}]}
    md = tp.format_table(result)
    assert "ISDA's own: 12 MiB more than the plain step's peak" in md
    assert "max |decode(encode(x)) - x|: library codec 2.0e-06, normflows path 3.0e-06" in md


def test_throughput_table_says_a_negative_pgd_step_cost_is_noise():
    """Audit 277: on a loaded CPU, `throughput.py --device cpu --iters 2` timed the 3-step attack faster than the
    1-step one and printed "each of steps 2-3 -297.77 ms (linear when these two agree)" without a word on it."""
    tp = _load_benchmark("throughput")
    cfg = {"smoke": False, "batch_size": 8, "device_name": "cpu", "torch": "2", "iters": 2, "warmup": 5,
           "codecs": {"glow": "g", "vae": "v"}, "width": 64, "compile": False,
           "max_abs_diff_normflows_vs_codec_roundtrip": 1e-6, "max_abs_roundtrip_error_codec": 2e-6,
           "max_abs_roundtrip_error_normflows": 3e-6}
    noted = {}
    for three_steps in (9.0, 3.0):  # linear (2 s a step after a first of 2 s), then the 3-step row timed faster
        rows = [dict(key=f"latent_adversarial_{k}", method=f"{k} steps", timed="t", seconds=s, images_per_second=1.0,
                     vs_train_step=1.0, peak_extra_bytes=None)
                for k, s in ((0, 3.0), (1, 5.0), (3, three_steps))]
        md = tp.format_table({"config": cfg, "rows": rows})
        assert "LatentAdversarial cost in PGD steps: fixed 3000.00 ms, first step 2000.00 ms" in md, md
        noted[three_steps] = "below 0, the three rows' times are noise" in md
    assert noted == {9.0: False, 3.0: True}


def _fake_results(path: Path, arm: str, seed: int, accuracy: float, codec: dict | None = None, **settings) -> Path:
    config = {"train": "npz:t.npz", "eval_on": "val", "epochs": 12, "batch_size": 128, "lr": 0.1,
              "weight_decay": 5e-4, "width": 16, "precision": "fp32", "val_fraction": 0.1, "n_train": 4500,
              "n_eval": 500, "glow": None, "vae": None, "noise_eps": 20.0, "latent_p": 1.0, **settings}
    path.mkdir(parents=True)
    run = {"accuracy": accuracy, "seconds_per_epoch": 10.0, **({"codec": codec} if codec else {})}
    (path / "results.json").write_text(json.dumps({"config": config, "runs": {arm: {str(seed): run}}}))
    return path / "results.json"


def _main_here(module, argv: list[str], capsys) -> SimpleNamespace:
    """A benchmark's ``run_script(main)`` on ``argv`` in this process, as its command ends (its own process would
    import torch again): ``returncode``, ``stdout`` and ``stderr``, as ``subprocess.run`` gives them."""
    capsys.readouterr()
    try:
        module.run_script(lambda: module.main(argv))
        code = 0
    except SystemExit as e:  # as Python's exit: a message goes to stderr and exits 1
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        code = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=out, stderr=err)


def _sweep_report(argv: list[str], monkeypatch, capsys) -> SimpleNamespace:
    """``sweep_report.py ARGV`` run here (``_main_here``)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return _main_here(_load_benchmark("sweep_report"), argv, capsys)


def test_sweep_report_names_rows_by_their_settings(tmp_path, monkeypatch, capsys):
    files = [_fake_results(tmp_path / "b0", "baseline", 0, 0.60), _fake_results(tmp_path / "b1", "baseline", 1, 0.62),
             _fake_results(tmp_path / "n0", "latent-noise", 0, 0.55, noise_eps=10.0),
             _fake_results(tmp_path / "n1", "latent-noise", 1, 0.58, noise_eps=10.0),
             _fake_results(tmp_path / "l0", "latent-noise", 0, 0.63, noise_eps=10.0, latent_levels=[0])]
    out = tmp_path / "sweep.md"
    # folders (as --help says; a folder was an IsADirectoryError traceback) and results.json files alike
    given = [str(f.parent) if i % 2 else str(f) for i, f in enumerate(files)]
    r = subprocess.run([sys.executable, str(BENCHMARKS / "sweep_report.py"), *given, "--out", str(out)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "| baseline | 60.0% | 62.0% | 61.0% | +0.0 | 10.00 |" in r.stdout
    # the mean of the per-seed differences (-5, -4), ± their std
    assert "| latent-noise (noise_eps=10, latent_p=1) | 55.0% | 58.0% | 56.5% | -4.5 ± 0.7 | 10.00 |" in r.stdout
    # paired on the seeds shared with the baseline, named when fewer (unpaired: 63.0 - 61.0 = +2.0)
    assert "| latent-noise (noise_eps=10, latent_p=1, latent_levels=[0]) | 63.0% | - | 63.0% | +3.0 (seed 0) | 10.00 |" \
        in r.stdout
    assert out.read_text().strip() == r.stdout.strip()
    # the refusals, run here (the command above ran the script end to end)
    r = _sweep_report([str(files[0]), str(tmp_path)], monkeypatch, capsys)
    assert r.returncode == 2 and f"argument results: no results.json at {tmp_path / 'results.json'}" in r.stderr
    other = _fake_results(tmp_path / "e", "baseline", 2, 0.6, epochs=30)
    r = _sweep_report([str(files[0]), str(other)], monkeypatch, capsys)
    assert r.returncode != 0 and "not the same data/schedule" in r.stderr and "epochs" in r.stderr
    # other images under the same file name, or another seeding/scoring protocol: refused too (were merged)
    for i, key in enumerate(("data_sha256", "protocol")):
        other = _fake_results(tmp_path / f"d{i}", "baseline", 2, 0.6, **{key: "other"})
        r = _sweep_report([str(files[0]), str(other)], monkeypatch, capsys)
        assert r.returncode != 0 and "not the same data/schedule" in r.stderr and key in r.stderr
    # the same setting and seed twice: refused (the second silently replaced the first)
    again = _fake_results(tmp_path / "b0-again", "baseline", 0, 0.09)
    r = _sweep_report([str(files[0]), str(again)], monkeypatch, capsys)
    assert r.returncode != 0 and f"baseline seed 0 is in both {files[0]} and {again}" in r.stderr


def test_sweep_report_puts_folders_with_and_without_a_codec_flag_in_one_table(tmp_path, monkeypatch, capsys):
    """A baseline folder made without --vae beside a VarMixup folder made with --vae PATH: one table (it was refused,
    the flags differing, though the baseline uses no codec; the checkpoints are checked run by run)."""
    codec = {"name": "/ckpt/vae-new.safetensors", "sha256": "a" * 64}
    base = _fake_results(tmp_path / "b0", "baseline", 0, 0.60)
    mix = _fake_results(tmp_path / "v0", "varmixup", 0, 0.62, codec=codec, vae=codec["name"], varmixup_alpha=1.0,
                        varmixup_p=0.25)
    r = _sweep_report([str(base), str(mix)], monkeypatch, capsys)
    assert r.returncode == 0, r.stderr
    assert "| baseline | 60.0% | 60.0% | +0.0 | 10.00 |" in r.stdout
    assert "| varmixup (varmixup_alpha=1, varmixup_p=0.25, varmixup_keep_detail=False) | 62.0% | 62.0% | +2.0 | " \
           "10.00 |" in r.stdout


def test_sweep_report_refuses_runs_made_with_different_checkpoints(tmp_path, monkeypatch, capsys):
    vae = {"varmixup_alpha": 1.0, "varmixup_p": 0.5}
    old = _fake_results(tmp_path / "v0", "varmixup", 0, 0.5, codec={"name": "vae-cifar10", "sha256": "a" * 64}, **vae)
    new = _fake_results(tmp_path / "v1", "varmixup", 1, 0.5, codec={"name": "vae-cifar10", "sha256": "b" * 64},
                        varmixup_keep_detail=True, **vae)
    same = _fake_results(tmp_path / "v2", "varmixup", 2, 0.5, codec={"name": "vae-cifar10", "sha256": "a" * 64}, **vae)
    r = _sweep_report([str(old), str(new)], monkeypatch, capsys)
    assert r.returncode != 0 and "varmixup seed 1 (in " in r.stderr and "sha256 aaaaaaaaaaaa" in r.stderr
    r = _sweep_report([str(old), str(same)], monkeypatch, capsys)
    # a file written before keep_detail existed is named with the value it implies
    assert r.returncode == 0 and "varmixup (varmixup_alpha=1, varmixup_p=0.5, varmixup_keep_detail=False) | 50.0% | 50.0% |" \
        in r.stdout, r.stderr


def test_codec_quality_scores_several_codecs_with_one_classifier(tmp_path):
    out = tmp_path / "cq"
    proc = _run([str(BENCHMARKS / "codec_quality.py"), "--codec", "vae-digits", "glow-digits", "--train", "digits",
                 "--test", "digits", "--epochs", "1", "--limit-test", "100", "--out", str(out)], tmp_path)
    scores = {name: json.loads((out / f"{name}-quality.json").read_text()) for name in ("vae-digits", "glow-digits")}
    assert scores["vae-digits"]["classifier_clean_accuracy"] == scores["glow-digits"]["classifier_clean_accuracy"]
    for s in scores.values():
        assert 0 <= s["classifier_on_reconstructions"] <= 1 and 0 <= s["mixes_name_a_source"] <= 1
    # an exact round trip keeps every prediction of the classifier
    assert scores["glow-digits"]["classifier_on_reconstructions"] == scores["glow-digits"]["classifier_clean_accuracy"]
    assert "| vae-digits | " in proc.stdout and (out / "glow-digits-quality.png").is_file()
    # flows are also scored on LatentNoise outputs, one column per eps; VAEs are not
    noise = scores["glow-digits"]["classifier_on_latent_noise"]
    assert list(noise) == ["5", "10", "20"] and all(0 <= v["accuracy"] <= 1 for v in noise.values())
    assert 0 < noise["5"]["mean_abs_change"] < noise["20"]["mean_abs_change"]
    assert "classifier_on_latent_noise" not in scores["vae-digits"]
    assert "| on LatentNoise eps=5 | on LatentNoise eps=10 | on LatentNoise eps=20 |" in proc.stdout
    assert re.search(r"^\| vae-digits \|.* - \| - \| - \|$", proc.stdout, re.M), proc.stdout


def _markdown_table(stdout: str) -> tuple[list[str], list[list[str]]]:
    """The header cells and the rows' cells of the Markdown table a script printed last."""
    lines = [line for line in stdout.splitlines() if line.startswith("| ")]
    header, *rows = ([cell.strip() for cell in line.strip().strip("|").split(" | ")] for line in lines)
    return header, rows


def test_codec_quality_smoke_scores_a_tiny_glow_and_vae_without_a_progress_bar(tmp_path):
    """Audit 236: codec_quality.py had no --smoke (it was tested with stub codecs or trained checkpoints only) and
    its classifier's progress bar could not be turned off but by TQDM_DISABLE=1."""
    out = tmp_path / "cq"
    proc = _run([str(BENCHMARKS / "codec_quality.py"), "--smoke", "--no-progress", "--out", "~/cq"], tmp_path,
                home=True)
    header, rows = _markdown_table(proc.stdout)
    assert header == ["codec", "test MSE or bits/dim", "classifier on reconstructions", "on 50/50 mixes: either class",
                      "on LatentNoise eps=5", "on LatentNoise eps=10", "on LatentNoise eps=20"]
    assert [row[0] for row in rows] == ["tiny-glow", "tiny-vae"] and all(len(row) == len(header) for row in rows)
    assert rows[0][1].endswith(" bits/dim") and all(re.fullmatch(r"\d+\.\d%", c) for c in rows[0][2:])
    assert rows[1][4:] == ["-", "-", "-"]  # VAEs are not scored on LatentNoise outputs
    assert "classifier on clean test images: " in proc.stdout and "(100 images)" in proc.stdout
    for name in ("tiny-glow", "tiny-vae"):
        settings = json.loads((out / f"{name}-quality.json").read_text())["settings"]
        assert settings["train"] == settings["test"] == "digits" and settings["epochs"] == 1
        assert settings["test_images"] == 100 and (out / f"{name}-quality.png").is_file()
    assert "clean classifier" not in proc.stderr, proc.stderr  # the bar's description


@pytest.fixture(autouse=True)
def _sys_path_restored(monkeypatch):
    """accuracy.py and throughput.py put benchmarks/ first on sys.path when loaded: once for each test that loads one
    (sys.path grew by ~30 copies), and its modules (models.py) shadowed top-level names for the tests after."""
    monkeypatch.setattr(sys, "path", list(sys.path))


def _load_benchmark(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load_accuracy_module():
    return _load_benchmark("accuracy")


@pytest.mark.slow
def test_throughput_keeps_its_rows_when_the_compiled_codec_fails(tmp_path, monkeypatch, offline_hub):
    """A compiler error in the compiled rows (the last ones) is reported in the table, not fatal to the rest."""
    from latent_transforms.codecs import Codec

    def broken(*args, **kwargs):
        raise RuntimeError("inductor blew up")

    monkeypatch.setattr(Codec, "compile_fast_path", lambda self, *a, **k: setattr(self, "_compiled", (broken, broken))
                        or self)
    throughput = _load_benchmark("throughput")
    result = throughput.main(["--smoke", "--device", "cpu", "--compile", "--out", str(tmp_path / "tp")])
    rows = {r["key"]: r for r in result["rows"]}
    assert set(THROUGHPUT_ROWS) <= set(rows) and all("error" not in rows[k] for k in THROUGHPUT_ROWS)
    assert rows["latent_noise_compiled"]["error"] == "RuntimeError: inductor blew up"
    md = (tmp_path / "tp" / "throughput.md").read_text()
    assert "| LatentNoise, compiled codec | t(x, y) | failed: RuntimeError: inductor blew up |" in md


def test_throughput_keeps_the_other_rows_when_an_eager_row_fails(tmp_path, monkeypatch):
    """Only the compiled rows' errors were caught: an eager row running out of memory ended the table there."""
    from latent_transforms import VarMixup

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(VarMixup, "transform", out_of_memory)
    result = _load_benchmark("throughput").main(["--smoke", "--device", "cpu", "--no-compile",
                                                 "--out", str(tmp_path / "tp")])
    rows = {r["key"]: r for r in result["rows"]}
    assert rows["varmixup"]["error"] == "RuntimeError: CUDA out of memory" and "seconds" not in rows["varmixup"]
    keys = list(rows)
    assert all("seconds" in rows[k] for k in keys[keys.index("varmixup") + 1:] if not k.startswith("varmixup"))
    assert not result.get("partial")


@pytest.mark.slow
def test_throughput_killed_while_compiling_keeps_a_complete_table_of_the_other_rows(tmp_path, monkeypatch, offline_hub):
    """The report is rewritten after every row, so a time limit hit in the compiled rows (the last ones) leaves the
    JSON and Markdown of every other row, marked partial."""
    from latent_transforms.codecs import Codec

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # what a time limit looks like from inside: not an Exception, nothing catches it

    monkeypatch.setattr(Codec, "compile_fast_path", lambda self, *a, **k: setattr(self, "_compiled", (killed, killed))
                        or self)
    throughput = _load_benchmark("throughput")
    with pytest.raises(KeyboardInterrupt):
        throughput.main(["--smoke", "--device", "cpu", "--compile", "--out", str(tmp_path / "tp")])
    result = json.loads((tmp_path / "tp" / "throughput.json").read_text())
    keys = [r["key"] for r in result["rows"]]
    assert result["partial"] and set(THROUGHPUT_ROWS) <= set(keys) and not any(k.endswith("_compiled") for k in keys)
    assert all(r["vs_train_step"] > 0 for r in result["rows"])
    md = (tmp_path / "tp" / "throughput.md").read_text()
    assert "| LatentNoise | t(x, y) |" in md and f"**Partial**: 3 of {len(keys) + 3} rows not measured yet." in md


def test_throughput_agreement_probe_is_data_the_flow_models():
    """The shipped glow-cifar10 cannot invert uniform noise images (either path is off by ~0.6 there), so the
    naive-vs-library agreement is checked on images the flow generates, where the two paths agree to rounding."""
    from latent_transforms import hub

    throughput = _load_benchmark("throughput")
    glow = hub.load("glow-cifar10")
    x = throughput.probe_images(glow, 8, torch.device("cpu"))
    assert x.shape == (8, 3, 32, 32)
    diff = (throughput.normflows_roundtrip(glow, x, 0.0, None) - throughput.codec_roundtrip(glow, x, 0.0, None))
    assert diff.abs().max() < 1e-4


def test_accuracy_verdicts_compare_arms_on_the_seeds_they_share():
    verdicts = _load_accuracy_module().verdicts

    def runs_of(**accuracies: list[float | None]) -> dict:
        """arm -> per-seed accuracies (None: no run of that seed); ECE and corruption accuracy follow accuracy."""
        return {arm.replace("_", "-"): {str(seed): {"accuracy": a, "ece": 1 - a, "corruption_accuracy": a - 0.1}
                                        for seed, a in enumerate(accs) if a is not None}
                for arm, accs in accuracies.items()}

    # ISDA lacks seed 2, on which the baseline was lucky: on the shared seeds 0 and 1 ISDA is better on both
    runs = runs_of(baseline=[0.56, 0.56, 0.62], randaugment=[0.55, 0.55, 0.55], isda=[0.57, 0.57, None],
                   varmixup=[0.55, 0.57, None], latent_adversarial=[0.60, 0.60, 0.64])
    t1, t2, t3 = verdicts(runs)
    assert t3["status"] == "MET" and t3["seeds"] == [0, 1], t3
    assert "ISDA 57.0% vs baseline 56.0% (+1.00 points); on seeds 0, 1" in t3["detail"]
    assert t2["status"] == "MISSED" and t2["seeds"] == [0, 1]  # VarMixup 56% vs 56%: corruption not higher
    assert t2["detail"].endswith("(+0.00 points, not higher); on seeds 0, 1"), t2
    assert t1["status"] == "MET" and t1["best_latent_arm"] == "latent-adversarial" and t1["seeds"] == [0, 1, 2]
    assert "baseline 58.0% (+3.33 points, needs +3.00); RandAugment 55.0% (+6.33 points, needs >= 0)" in t1["detail"]
    assert t1["detail"].endswith("; not ranked, with fewer seeds: varmixup (2), isda (2)"), t1
    assert "provisional" not in t1 and t3["provisional"] == "2 seeds; the issue asks for at least 3"
    # the best latent arm is the one with the largest margin over the baseline on its shared seeds, not the
    # highest mean over seeds the baseline lacks
    runs = runs_of(baseline=[0.50, 0.60], randaugment=[0.50, 0.50], isda=[0.54, None], latent_noise=[0.56, None])
    t1, _, _ = verdicts(runs)
    assert t1["best_latent_arm"] == "latent-noise" and t1["seeds"] == [0] and t1["status"] == "MET", t1
    # ... also when the arms' seeds differ: ISDA's +7 on seed 0 over latent-noise's +2 (higher mean) on seed 1
    runs = runs_of(baseline=[0.50, 0.60], randaugment=[0.50, 0.50], isda=[0.57, None], latent_noise=[None, 0.62])
    assert verdicts(runs)[0]["best_latent_arm"] == "isda"
    assert t1["detail"].endswith("; on seed 0"), t1  # one seed: no spread to report
    assert t1["provisional"] == "1 seed; the issue asks for at least 3"
    t3 = verdicts(runs_of(baseline=[0.5, 0.7], isda=[0.6, 0.6]))[2]  # several: each arm's sample std, in points
    assert t3["detail"].endswith("; on seeds 0, 1; std over those seeds baseline 14.1, isda 0.0"), t3
    # an arm's margin over more seeds is not outranked by a larger one on fewer (the verdict read MISSED here,
    # ranking latent-noise's +5.5 on seed 0, which is below RandAugment, over latent-adversarial's +4.3 on 0-2)
    runs = runs_of(baseline=[0.50, 0.50, 0.50], randaugment=[0.57, 0.52, 0.52], latent_noise=[0.555, None, None],
                   latent_adversarial=[0.56, 0.54, 0.53])
    t1, _, _ = verdicts(runs)
    assert t1["best_latent_arm"] == "latent-adversarial" and t1["seeds"] == [0, 1, 2] and t1["status"] == "MET", t1
    assert t1["detail"].endswith("not ranked, with fewer seeds: latent-noise (1)")
    # an exact +3.0 points is met (float32 accuracies read as +2.99999 about half the time)
    for b, l in ((0.4871, 0.5171), (0.6093, 0.6393), (0.1, 0.13)):
        runs = runs_of(baseline=[torch.tensor(b).item()], randaugment=[0.0], latent_noise=[torch.tensor(l).item()])
        assert verdicts(runs)[0]["status"] == "MET", (b, l)
    # no common seed: not evaluated, and the report says why
    t1, t2, t3 = verdicts(runs_of(baseline=[0.5, None], randaugment=[0.5, None], isda=[None, 0.6]))
    assert (t3["status"], t3["detail"]) == ("NOT EVALUATED", "no seed with runs of both")
    assert (t2["status"], t2["detail"]) == ("NOT EVALUATED", "needs varmixup in the results")
    assert (t1["status"], t1["detail"]) == ("NOT EVALUATED",
                                            "no seed with runs of baseline, RandAugment and a latent arm")
    t1, _, _ = verdicts(runs_of(baseline=[0.5], isda=[0.6]))
    assert t1["detail"] == "needs randaugment in the results"


def test_accuracy_table_delta_is_taken_on_the_seeds_shared_with_the_baseline():
    """An arm short of the baseline's lucky seed read -0.9 in the table though it was +0.4 on its own seeds (the
    results.md composition row); the difference is now paired, and the seeds are named when they are fewer."""
    delta = _load_accuracy_module().delta_vs_baseline
    runs = {"baseline": {"0": {"accuracy": 0.56}, "1": {"accuracy": 0.57}, "2": {"accuracy": 0.603}},
            "combo": {"0": {"accuracy": 0.545}, "1": {"accuracy": 0.593}},
            "isda": {"0": {"accuracy": 0.57}, "1": {"accuracy": 0.57}, "2": {"accuracy": 0.60}},
            "one": {"2": {"accuracy": 0.613}}, "none": {"5": {"accuracy": 0.9}}}
    assert delta(runs, "combo", [0, 1, 2]) == "+0.4 ± 2.7 (seeds 0, 1)"  # unpaired: 56.9 - 57.8 = -0.9
    assert delta(runs, "isda", [0, 1, 2]) == "+0.2 ± 0.7"  # ± the std of the per-seed differences +1.0, 0, -0.3
    assert delta(runs, "one", [0, 1, 2]) == "+1.0 (seed 2)"
    assert delta(runs, "none", [0, 1, 2, 5]) == "-"
    assert delta(runs, "baseline", [0, 1, 2]) == "+0.0"


def test_accuracy_runs_seed_by_seed_within_a_time_budget():
    acc = _load_accuracy_module()
    # seed-major: a call cut short leaves every arm with the same seeds; finished runs are skipped
    done = {"baseline": {"0": {}}, "isda": {"0": {}, "1": {}}}
    assert acc.runs_to_do(["baseline", "isda", "varmixup"], [0, 1], done) == [
        ("varmixup", 0), ("baseline", 1), ("varmixup", 1)]
    # a run is expected to take as long as the longest run of its arm, else the longest of another arm scaled by
    # the arms' costs
    took = {"baseline": [10.0, 12.0], "latent-adversarial": [40.0]}
    assert acc.fits_budget("baseline", took, elapsed=88.0, budget=100.0)
    assert not acc.fits_budget("baseline", took, elapsed=88.5, budget=100.0)
    # borrowed from another arm, with a margin: 12 s x 1.0 x 1.5 (40 s / 3.6 x 1.0 x 1.5 is less)
    assert acc.fits_budget("isda", took, elapsed=82.0, budget=100.0)
    assert not acc.fits_budget("isda", took, elapsed=82.5, budget=100.0)
    # LatentAdversarial after one baseline run: 3.6 x 10 s x 1.5 (it was started with 2 x 10 s left)
    assert acc.expected_seconds("latent-adversarial", {"baseline": [10.0]}) == pytest.approx(54.0)
    assert acc.fits_budget("latent-adversarial", {"baseline": [10.0]}, elapsed=46.0, budget=100.0)
    assert not acc.fits_budget("latent-adversarial", {"baseline": [10.0]}, elapsed=46.5, budget=100.0)
    assert set(acc.ARM_COST) == set(acc.ARMS)
    # with --resume, the earlier calls' runs on the same device count too
    earlier = {"baseline": {"0": {"wall_seconds": 9.0, "device_name": "H200"}, "1": {"wall_seconds": 30.0,
                                                                                    "device_name": "CPU"}},
               "isda": {"0": {}}}  # written before run times were recorded
    assert acc.run_times(earlier, "H200") == {"baseline": [9.0]}
    assert acc.expected_seconds("isda", {}) == 0.0  # nothing finished yet: only the time spent
    assert acc.fits_budget("isda", {}, elapsed=99.0, budget=100.0)
    assert not acc.fits_budget("isda", {}, elapsed=100.5, budget=100.0)


def test_accuracy_shards_split_the_runs_to_do_by_expected_cost(tmp_path, capsys):
    """--shard I/N: N shards of about equal expected time, together every run to do once, each seed by seed."""
    acc = _load_accuracy_module()
    arms, seeds = list(acc.ARMS), [0, 1, 2]
    todo = acc.runs_to_do(arms, seeds, {})
    for count in (1, 2, 6):
        shards = [acc.shard_runs(todo, i, count) for i in range(count)]
        assert sorted(run for shard in shards for run in shard) == sorted(todo)
        loads = [sum(acc.ARM_COST[arm] for arm, _ in shard) for shard in shards]
        assert max(loads) - min(loads) <= max(acc.ARM_COST.values()), loads
        assert all([s for _, s in shard] == sorted(s for _, s in shard) for shard in shards)
    assert max(sum(acc.ARM_COST[a] for a, _ in acc.shard_runs(todo, i, 6)) for i in range(6)) < 9.0  # ideal 8.15
    # the finished runs of every shard (--done) are neither run again nor shared out
    done = {"baseline": {"0": {}, "1": {}}, "latent-adversarial": {"0": {}}}
    left = acc.runs_to_do(arms, seeds, acc.all_runs({"isda": {"2": {}}}, done))
    # an arm's runs in several files (--resume and --done) add up
    assert acc.all_runs({"isda": {"0": {}}}, {"isda": {"1": {}}}, {}) == {"isda": {"0": {}, "1": {}}}
    assert len(left) == len(todo) - 4 and ("baseline", 2) in left and ("isda", 2) not in left
    assert sorted(r for i in range(3) for r in acc.shard_runs(left, i, 3)) == sorted(left)
    for bad, why in (("6/6", "I must be in 0..N-1"), ("-1/2", "I must be in 0..N-1"), ("1", "expected I/N"),
                     ("a/b", "expected I/N"), ("0/0", "N must be >= 1"), ("0/-2", "N must be >= 1")):
        with pytest.raises(SystemExit):
            acc.parse_args([f"--shard={bad}"])  # "--shard -1/2" would read -1/2 as an option, not this check
        assert why in capsys.readouterr().err, bad
    # a --done file made with other settings is refused, before any training
    other = {"fingerprint": {"epochs": 99}, "runs": {"baseline": {"0": {}}}}
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="--done: .*other.json was made with other settings \\(.*epochs"):
        acc.main(["--smoke", "--no-progress", "--done", str(tmp_path / "other.json"), "--out", str(tmp_path / "a")])


def test_accuracy_shard_with_no_run_to_do_writes_a_report_that_merge_takes(tmp_path):
    """Audit 149: a shard that got no run (fewer runs to do than shards) wrote no folder, so the --merge of every
    shard's results.json, and a later call's --done naming them, failed on its missing file."""
    acc = _load_accuracy_module()
    common = ["--smoke", "--no-progress", "--no-corruptions", "--arms", "baseline", "--seeds", "0"]
    shards = [tmp_path / f"shard-{i}" for i in range(2)]
    ran, idle = (acc.main([*common, "--shard", f"{i}/2", "--out", str(shards[i])]) for i in range(2))
    assert list(ran["runs"]) == ["baseline"] and idle["runs"] == {}
    assert (shards[1] / "results.md").read_text().startswith("**NO RUNS**: every run asked for is in another --shard")
    done = [shard / "results.json" for shard in shards]
    merged = acc.main(["--merge", *map(str, done), "--out", str(tmp_path / "merged")])
    assert merged["runs"] == json.loads(done[0].read_text())["runs"]  # shard 0's
    again = acc.main([*common, "--shard", "1/2", "--done", *map(str, done), "--resume", "--out", str(shards[1])])
    assert again["runs"] == {}


def test_accuracy_records_date_command_and_commit(tmp_path, monkeypatch, offline_hub):
    """The results config and the report header say when, by which command line and at which commit they were made;
    a merge also names the commit of each file merged. Without git the commit is $GIT_COMMIT, else None."""
    acc = _load_accuracy_module()
    argv = ["--smoke", "--no-progress", "--no-corruptions", "--arms", "baseline", "--out", str(tmp_path / "a")]
    cfg = acc.main(argv)["config"]
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if git.returncode == 0:
        assert cfg["commit"].startswith(git.stdout.strip())
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", cfg["date"])
    assert cfg["command"] == "accuracy.py --smoke --no-progress --no-corruptions --arms baseline --out " + \
        str(tmp_path / "a")
    md = (tmp_path / "a" / "results.md").read_text()
    assert f"Made {cfg['date']} by `{cfg['command']}` at commit {cfg['commit']}." in md
    monkeypatch.setenv("PATH", str(tmp_path))  # no git
    monkeypatch.delenv("GIT_COMMIT", raising=False)
    assert acc.git_commit() is None
    monkeypatch.setenv("GIT_COMMIT", "abc123")
    merged = acc.main(["--merge", str(tmp_path / "a" / "results.json"), "--out", str(tmp_path / "m")])["config"]
    assert merged["commit"] == "abc123" and merged["merged_commits"] == [cfg["commit"]]
    assert merged["command"].startswith("accuracy.py --merge ")
    assert f"at commit abc123; merged from {tmp_path / 'a' / 'results.json'} (commit {cfg['commit']})." in \
        (tmp_path / "m" / "results.md").read_text()


def test_accuracy_trains_on_torchvision_cifar10_without_downloading(tmp_path, monkeypatch):
    """--train cifar10 / --test cifar10 (the 50,000-image setting) with --train-size, torchvision's loader stubbed."""
    import numpy as np
    import torchvision.datasets

    calls = []

    class FakeCIFAR10:
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            n = 600 if train else 100
            self.data = np.random.default_rng(int(train)).integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)
            self.targets = [i % 10 for i in range(n)]

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    acc = _load_accuracy_module()
    root = str(tmp_path / "data")
    results = acc.main(["--train", "cifar10", "--test", "cifar10", "--data-root", root, "--train-size", "300",
                        "--arms", "baseline", "--seeds", "0", "--epochs", "1", "--width", "4", "--batch-size", "64",
                        "--device", "cpu", "--threads", "1", "--no-corruptions", "--no-progress",
                        "--out", str(tmp_path / "acc")])
    assert calls == [(root, True, True), (root, False, True)]
    cfg = results["config"]
    assert (cfg["source_train"], cfg["n_train"], cfg["n_val"], cfg["n_eval"]) == ("cifar10", 270, 30, 100)
    assert not cfg["smoke"] and cfg["precision"] == "fp32" and 0 <= results["runs"]["baseline"]["0"]["accuracy"] <= 1
    assert "trained on 270 images of cifar10 (30 held out for validation); evaluated on 100 test images" in \
        (tmp_path / "acc" / "results.md").read_text()


def test_accuracy_smoke_in_bf16(tmp_path, monkeypatch, offline_hub):
    """--precision bf16 on the CPU: the classifier computes in bf16, also inside LatentAdversarial's attack, while the
    codec's images reach it in fp32."""
    acc = _load_accuracy_module()
    inputs, outputs = set(), set()
    real = acc.build_classifier

    def spied(*a, **k):
        model = real(*a, **k)
        model.net.register_forward_pre_hook(lambda m, args: inputs.add(args[0].dtype))
        model.net.stem[0].register_forward_hook(lambda m, args, out: outputs.add(out.dtype))
        return model

    monkeypatch.setattr(acc, "build_classifier", spied)
    results = acc.main(["--smoke", "--no-progress", "--no-corruptions", "--precision", "bf16",
                        "--arms", "baseline", "latent-adversarial", "--out", str(tmp_path / "acc")])
    assert outputs == {torch.bfloat16} and inputs == {torch.float32}
    assert results["runs"]["latent-adversarial"]["0"]["transform_stats"]["LatentAdversarial"]["transformed"] > 0
    assert all(0 <= r["0"]["accuracy"] <= 1 and r["0"]["nonfinite_predictions"] == 0 for r in results["runs"].values())
    assert ", bf16 on cpu (" in (tmp_path / "acc" / "results.md").read_text()


def test_the_classifier_is_channels_last_on_cuda_only(monkeypatch):
    """Channels-last (the input converted in forward, the weights by ``.to``) is for CUDA's convolutions: on the CPU
    the ResNet-18 keeps its default memory format. A stand-in records the calls, so no GPU is needed."""
    models = _load_benchmark("models")
    built, moves = [], []

    class Recorded(nn.Module):
        def __init__(self, num_classes, width, channels_last):
            super().__init__()
            built.append(channels_last)

        def to(self, *args, **kwargs):
            moves.append((args, kwargs))
            return self

    monkeypatch.setattr(models, "CifarResNet18", Recorded)
    for device, channels_last in (("cpu", False), ("cuda", True)):
        del built[:], moves[:]
        models.build_classifier(10, 8, torch.device(device), "fp32")
        layout = [((), {"memory_format": torch.channels_last})] if channels_last else []
        assert built == [channels_last] and moves == [((torch.device(device),), {})] + layout, device


def test_accuracy_latent_levels_reach_the_latent_arms():
    from latent_transforms.codecs import Glow

    acc = _load_accuracy_module()
    codecs = {"glow": Glow((3, 8, 8), levels=2, steps=1, hidden=4).freeze()}
    for argv, levels in ((["--smoke"], None), (["--smoke", "--latent-levels", "0"], [0])):
        args = acc.parse_args(argv)
        for arm in ("latent-noise", "latent-adversarial", "isda+latent-noise", "randaugment+latent-adversarial"):
            latent = [s for s in acc.make_augment(arm, args, codecs, seed=0).steps if hasattr(s, "levels")]
            assert [s.levels for s in latent] == [levels], arm
        assert "latent_levels" in acc.FINGERPRINT_KEYS and "latent_levels" in acc.arm_setting_keys("latent-noise")


def test_accuracy_arms_are_built_from_their_settings_in_their_order():
    """Every method setting reaches the step that uses it (only --latent-levels was checked), and the compositions
    put RandAugment before LatentAdversarial and ISDA last."""
    from latent_transforms.codecs import ConvVAE, Glow

    acc = _load_accuracy_module()
    codecs = {"glow": Glow((3, 8, 8), levels=2, steps=1, hidden=4).freeze(),
              "vae": ConvVAE((3, 8, 8), latent_dim=4, hidden=4).freeze()}
    args = acc.parse_args(["--noise-eps", "7", "--adv-eps", "0.3", "--adv-steps", "5", "--adv-step-size", "0.11",
                           "--latent-p", "0.5", "--varmixup-alpha", "0.3", "--varmixup-p", "0.9",
                           "--no-varmixup-keep-detail", "--isda-lambda0", "0.1", "--isda-covariance", "diagonal",
                           "--ra-ops", "3", "--ra-magnitude", "5", "--mixup-alpha", "0.2"])
    attrs = {"LatentNoise": ("eps", "p"), "LatentAdversarial": ("eps", "steps", "step_size", "p"),
             "VarMixup": ("alpha", "p", "keep_detail"), "ISDA": ("lambda0", "covariance"), "MixUp": ("alpha",)}

    def described(step):
        name = type(step).__name__
        if name == "PerSampleRandAugment":
            return name, (step.ra.num_ops, step.ra.magnitude)
        return name, tuple(getattr(step, a) for a in attrs[name])

    ra, noise = ("PerSampleRandAugment", (3, 5)), ("LatentNoise", (7.0, 0.5))
    adv, isda = ("LatentAdversarial", (0.3, 5, 0.11, 0.5)), ("ISDA", (0.1, "diagonal"))
    expected = {"randaugment": [ra], "mixup": [("MixUp", (0.2,))], "latent-noise": [noise],
                "latent-adversarial": [adv], "varmixup": [("VarMixup", (0.3, 0.9, False))], "isda": [isda],
                "randaugment+latent-adversarial": [ra, adv], "isda+latent-noise": [noise, isda]}
    assert acc.make_augment("baseline", args, codecs, seed=0) is None and set(expected) | {"baseline"} == set(acc.ARMS)
    for arm, steps in expected.items():
        assert [described(s) for s in acc.make_augment(arm, args, codecs, seed=0).steps] == steps, arm


def test_accuracy_runs_draw_batch_order_crops_and_transforms_from_separate_streams(monkeypatch):
    """One seed for the shuffle, the crops and the transforms made them replay the same numbers (an image's flip
    tied to whether a transform perturbed it); each stream now has its own seed, none the global one."""
    from latent_transforms.codecs import ConvVAE, Glow

    acc = _load_accuracy_module()
    codecs = {"glow": Glow((3, 8, 8), levels=2, steps=1, hidden=4).freeze(),
              "vae": ConvVAE((3, 8, 8), latent_dim=4, hidden=4).freeze()}
    args = acc.parse_args(["--smoke"])
    seen = {}
    monkeypatch.setattr(acc, "RandomCropFlip", lambda seed, device: seen.setdefault("crop", seed))
    monkeypatch.setattr(acc, "fit_classifier", lambda *a, seed, **k: seen.setdefault("shuffle", seed) and 1.0)
    monkeypatch.setattr(acc, "predict_proba", lambda model, x: torch.full((len(x), 10), 0.1))
    data = {"x_train": None, "y_train": None, "x_eval": torch.zeros(4, 3, 8, 8), "y_eval": torch.zeros(4).long()}
    for seed in (0, 1):
        seen.clear()
        acc.run_one("baseline", seed, args, data, codecs, {}, torch.device("cpu"))
        streams = {"run": seed, "shuffle": seen["shuffle"], "crop": seen["crop"]}
        for arm in ("latent-noise", "latent-adversarial", "varmixup"):
            (step,) = acc.make_augment(arm, args, codecs, seed=seed).steps
            streams[arm] = step._rng.spec
        assert len({streams["run"], streams["shuffle"], streams["crop"], streams["latent-noise"]}) == 4, streams
        assert streams["latent-noise"] == streams["latent-adversarial"] == streams["varmixup"], streams
    assert "seed_streams" in acc.protocol()  # runs seeded the old way are not resumed into a new table


def test_accuracy_resume_refuses_other_data_or_protocol_and_notes_code_versions(tmp_path, monkeypatch, offline_hub):
    """--resume compares the images (hashed) and the scoring protocol too, not only the flags; every run records
    the code that made it, and a table mixing code versions says so."""
    import numpy as np

    acc = _load_accuracy_module()
    rng = np.random.default_rng(0)
    data = tmp_path / "train.npz"

    def write_data(shift: int) -> None:
        x = rng.integers(0, 255, (40, 32, 32, 3), dtype=np.uint8)
        np.savez(data, x=(x // 2 + shift).astype(np.uint8), y=np.arange(40) % 10)

    write_data(0)
    argv = ["--smoke", "--no-progress", "--no-corruptions", "--arms", "baseline", "--seeds", "0", "--train",
            f"npz:{data}", "--test", f"npz:{data}", "--out", str(tmp_path / "acc")]
    first = acc.main(argv)
    assert re.fullmatch(r"[0-9a-f]{64}", first["runs"]["baseline"]["0"]["code_sha256"])
    assert first["fingerprint"]["protocol"]["ece_bins"] == 15
    write_data(1)  # the same path, other images
    with pytest.raises(SystemExit, match="other settings \\(data_sha256\\)"):
        acc.main([*argv, "--resume"])
    rng = np.random.default_rng(0)
    write_data(0)  # the original images again
    monkeypatch.setattr(acc, "ECE_BINS", 5)
    with pytest.raises(SystemExit, match="other settings \\(protocol\\)"):
        acc.main([*argv, "--resume"])
    monkeypatch.setattr(acc, "ECE_BINS", 15)
    results = json.loads((tmp_path / "acc" / "results.json").read_text())
    results["runs"]["baseline"]["0"]["code_sha256"] = "0" * 64  # as if made by other code
    (tmp_path / "acc" / "results.json").write_text(json.dumps(results))
    again = acc.main([*argv, "--resume", "--arms", "baseline", "isda"])  # --smoke runs seed 0 only
    assert again["runs"]["baseline"]["0"]["code_sha256"] != again["runs"]["isda"]["0"]["code_sha256"]
    assert "These runs were made by 2 versions of the benchmark and library code" in \
        (tmp_path / "acc" / "results.md").read_text()


def test_accuracy_resume_done_and_merge_refuse_mixing_runs_with_and_without_corruption_scores(tmp_path):
    """--no-corruptions is in the fingerprint: mixed, a table averaged the corruption accuracy over the seeds that had
    one, its ± and n counted every seed, and Target 2 found no seed. A file from before it was recorded had them."""
    acc = _load_accuracy_module()

    def fingerprint(*flags: str) -> dict:
        return acc.make_fingerprint(acc.parse_args(["--smoke", *flags]), "0" * 64)

    def write(name: str, fp: dict, seed: int) -> Path:
        (tmp_path / name).write_text(json.dumps({"fingerprint": fp, "config": {"device_name": "cpu"},
                                                 "runs": {"baseline": {str(seed): {"accuracy": 0.5}}}}))
        return tmp_path / name

    scored, unscored = fingerprint(), fingerprint("--no-corruptions")
    old = write("old.json", {k: v for k, v in scored.items() if k != "no_corruptions"}, 0)
    assert acc.load_runs(old, scored, "--resume", "r") == {"baseline": {"0": {"accuracy": 0.5}}}
    with pytest.raises(SystemExit, match=r"^--resume: .* other settings \(no_corruptions False there, True now\)"):
        acc.load_runs(old, unscored, "--resume", "r")
    new = write("new.json", unscored, 1)
    with pytest.raises(SystemExit, match=r"^--done: .* other settings \(no_corruptions True there, False now\)"):
        acc.load_runs(new, scored, "--done", "d")
    with pytest.raises(SystemExit, match=rf"^--merge: {re.escape(str(new))} was made with other data or schedule than "
                                         rf"{re.escape(str(old))} \(no_corruptions True there, False in the first\)"):
        acc.merge_results([str(old), str(new)], ["baseline"])


def test_accuracy_results_written_before_a_setting_existed_read_as_the_value_the_older_code_ran_with(tmp_path):
    """FINGERPRINT_DEFAULTS: a results.json written before a setting was recorded resumes into a call with the value
    the older code ran with (varmixup kept no detail then: not today's default) and is refused by another value."""
    acc = _load_accuracy_module()
    results = tmp_path / "results.json"
    for key, same, other in (("varmixup_keep_detail", ["--no-varmixup-keep-detail"], []),
                             ("latent_levels", [], ["--latent-levels", "1"]),
                             ("no_corruptions", [], ["--no-corruptions"])):
        then, now = (acc.make_fingerprint(acc.parse_args(flags), "0" * 64) for flags in (same, other))
        old = {k: v for k, v in then.items() if k != key}
        results.write_text(json.dumps({"fingerprint": old, "runs": {"baseline": {"0": {"accuracy": 0.5}}}}))
        assert acc.load_runs(results, then, "--resume", "r") == {"baseline": {"0": {"accuracy": 0.5}}}
        with pytest.raises(SystemExit, match=rf"other settings \({key} "):
            acc.load_runs(results, now, "--resume", "r")


def test_accuracy_fingerprint_reads_the_default_checkpoint_named_or_not(tmp_path):
    """``--glow glow-cifar10`` is the default: a --resume, --done or --merge of runs made without the flag refused it
    as "other settings (glow)". In --smoke, no --glow means the tiny random-init Glow, which is another setting."""
    acc = _load_accuracy_module()
    results = tmp_path / "results.json"
    plain = acc.make_fingerprint(acc.parse_args([]), "0" * 64)
    results.write_text(json.dumps({"fingerprint": plain, "runs": {"baseline": {"0": {"accuracy": 0.5}}}}))
    named = acc.make_fingerprint(acc.parse_args(["--glow", "glow-cifar10", "--vae", "vae-cifar10"]), "0" * 64)
    assert named == plain and plain["glow"] == "glow-cifar10"
    assert acc.load_runs(results, named, "--resume", "r") == {"baseline": {"0": {"accuracy": 0.5}}}
    other = acc.make_fingerprint(acc.parse_args(["--glow", "my-glow"]), "0" * 64)
    with pytest.raises(SystemExit, match=r"other settings \(glow 'glow-cifar10' there, 'my-glow' now\)"):
        acc.load_runs(results, other, "--resume", "r")
    smoke, smoke_named = (acc.make_fingerprint(acc.parse_args(["--smoke", *f]), "0" * 64)
                          for f in ([], ["--glow", "glow-cifar10"]))
    assert smoke["glow"] is None and smoke_named["glow"] == "glow-cifar10"


def test_accuracy_done_runs_made_with_another_checkpoint_are_refused(tmp_path, offline_hub):
    """--done counts other shards' runs as finished only when their codec is this call's: a run of a replaced
    glow-cifar10 is not this one done (it was skipped, and the final --merge then refused the mixed checkpoints)."""
    import numpy as np

    acc = _load_accuracy_module()
    data = tmp_path / "train.npz"
    x = np.random.default_rng(0).integers(0, 255, (40, 32, 32, 3), dtype=np.uint8)
    np.savez(data, x=x, y=np.arange(40) % 10)
    argv = ["--smoke", "--no-progress", "--no-corruptions", "--arms", "latent-noise", "--seeds", "0", "--train",
            f"npz:{data}", "--test", f"npz:{data}"]
    codecs = acc.main([*argv, "--out", str(tmp_path / "shard-0")])["config"]["codecs"]
    assert list(codecs) == ["glow"]  # not also the VAE, which none of its arms uses (mutation round, audit 385)
    other = tmp_path / "shard-0" / "results.json"
    # the same codec: nothing to do (a report of no run, audit 149)
    assert acc.main([*argv, "--out", str(tmp_path / "shard-1"), "--done", str(other)])["runs"] == {}
    results = json.loads(other.read_text())
    results["runs"]["latent-noise"]["0"]["codec"]["sha256"] = "0" * 64  # as if made with another checkpoint
    other.write_text(json.dumps(results))
    with pytest.raises(SystemExit, match=f"--done: {re.escape(str(other))}: latent-noise seed 0 was trained with"):
        acc.main([*argv, "--out", str(tmp_path / "shard-1"), "--resume", "--done", str(other)])
    # nor is it resumed: the runs already in --out are checked too
    with pytest.raises(SystemExit, match=f"--resume: {re.escape(str(other))}: latent-noise seed 0 was trained with"):
        acc.main([*argv, "--out", str(tmp_path / "shard-0"), "--resume"])


def test_accuracy_runs_record_the_codecs_they_ran_on_tiny_in_smoke_unless_one_is_named(tmp_path, offline_hub):
    """Mutation round (audit 385): no test looked at the codecs a --smoke main() ran on, nor ran main() on one it
    loads: a smoke run on glow-cifar10 or on the tiny VAE for the Glow, or a loaded codec recorded nowhere, passed."""
    from latent_transforms import hub

    acc = _load_accuracy_module()
    glow, vae = acc.tiny_codecs()
    ckpt = tmp_path / "vae.safetensors"
    hub.save_checkpoint(vae, ckpt)
    results = acc.main(["--smoke", "--no-progress", "--no-corruptions", "--arms", "latent-noise", "varmixup",
                        "--vae", str(ckpt), "--out", str(tmp_path / "acc")])
    codecs = {"glow": {"name": "tiny random-init glow (smoke)", "sha256": glow.fingerprint()},
              "vae": {"name": str(ckpt), "sha256": hub.load(str(ckpt)).fingerprint()}}
    assert results["config"]["codecs"] == codecs
    assert [results["runs"][arm]["0"]["codec"] for arm in ("latent-noise", "varmixup")] == list(codecs.values())


def test_accuracy_check_codecs_names_the_checkpoint_a_run_used_and_the_one_asked_for():
    """The refusal names both checkpoints by name and fingerprint (the sha256's first 12 digits), or says that the
    run recorded none (an older --resume folder); runs of arms without a codec are not checked."""
    acc = _load_accuracy_module()
    old, new = {"name": "glow-cifar10", "sha256": "ab" * 32}, {"name": "my-glow", "sha256": "cd" * 32}
    runs = {"baseline": {"0": {}}, "latent-noise": {"0": {"codec": new}, "1": {"codec": old}}}
    acc.check_codecs({"baseline": runs["baseline"]}, {}, "--resume: r.json")
    with pytest.raises(SystemExit) as e:
        acc.check_codecs(runs, {"glow": new}, "--resume: r.json")
    assert str(e.value) == "--resume: r.json: latent-noise seed 1 was trained with the glow glow-cifar10 (sha256 " \
                           "abababababab), not my-glow (sha256 cdcdcdcdcdcd); use another --out, or leave that arm out"
    with pytest.raises(SystemExit, match=r"^--done: d.json: latent-noise seed 2 was trained with an unrecorded glow "
                                         r"checkpoint, not my-glow \(sha256 cdcdcdcdcdcd\); use another --out"):
        acc.check_codecs({"latent-noise": {"2": {}}}, {"glow": new}, "--done: d.json")


def test_accuracy_a_diverged_run_is_scored_as_chance_and_a_killed_call_leaves_a_partial_report(tmp_path, monkeypatch, offline_hub):
    """A classifier that diverged (NaN outputs) stopped the whole call, and every --resume stopped at the same run;
    a call killed mid-way left the previous call's report beside the new runs."""
    acc = _load_accuracy_module()
    out = tmp_path / "acc"
    argv = ["--smoke", "--no-progress", "--arms", "baseline", "isda", "mixup", "--out", str(out), "--lr", "1e30"]
    real_run_one = acc.run_one

    def killed_at_mixup(arm, *a, **k):
        if arm == "mixup":
            partial = (out / "results.md").read_text()
            assert partial.startswith("**PARTIAL**: written while the call was still running; not yet run: mixup "
                                      "seed 0."), partial
            raise KeyboardInterrupt
        return real_run_one(arm, *a, **k)

    monkeypatch.setattr(acc, "run_one", killed_at_mixup)
    with pytest.raises(KeyboardInterrupt):
        acc.main(argv)
    monkeypatch.setattr(acc, "run_one", real_run_one)
    results = acc.main([*argv, "--resume"])
    run = results["runs"]["baseline"]["0"]
    assert run["nonfinite_predictions"] > 0 and run["accuracy"] == pytest.approx(0.1, abs=0.1)  # uniform: class 0
    md = (out / "results.md").read_text()
    assert "PARTIAL" not in md and "DIVERGED (non-finite outputs, scored as uniform guesses): baseline seed 0 (" in md
    assert set(results["runs"]) == {"baseline", "isda", "mixup"}
    acc.main([*argv, "--resume", "--arms", "varmixup", "--time-budget", "0.001"])  # stops before its only run
    assert (out / "results.md").read_text().startswith(
        "**INCOMPLETE**: --time-budget 0.001 s stopped the call; not run: varmixup seed 0.")


def test_accuracy_time_budget_that_stops_before_the_first_run_writes_nothing(tmp_path, capsys):
    """Mutation round (audit 385): no test reached the call that finished no run, so one that wrote a report of no
    run (**NO RUNS**, as if every run were another shard's: a --merge would take it) passed."""
    acc = _load_accuracy_module()
    out = tmp_path / "acc"
    argv = ["--smoke", "--no-progress", "--no-corruptions", "--arms", "baseline", "--time-budget", "0.001"]
    assert acc.main([*argv, "--out", str(out)]) == {}
    assert capsys.readouterr().out.endswith(f"not run: baseline seed 0\nNo run finished: nothing written to {out}.\n")
    assert not out.exists() or not any(out.iterdir())


def test_accuracy_time_budget_counts_the_seconds_spent_and_names_the_runs_left(tmp_path, monkeypatch, capsys):
    """Mutation round (audit 385): the tests' budgets stopped the call before its first run whatever the seconds
    spent were, so a main() that passed fits_budget another clock, timed its runs by one, left out this call's
    run times or miscounted the runs done passed them."""
    acc = _load_accuracy_module()
    out, asked = tmp_path / "acc", []

    def fits(arm, took, elapsed, budget):
        asked.append((arm, {a: list(ts) for a, ts in took.items()}, elapsed, budget))
        return arm == "baseline"  # the budget runs out after the first run

    monkeypatch.setattr(acc, "fits_budget", fits)
    start = time.perf_counter()
    results = acc.main(["--smoke", "--no-progress", "--no-corruptions", "--arms", "baseline", "isda", "mixup",
                        "--time-budget", "3600", "--out", str(out)])
    spent = time.perf_counter() - start
    assert [(arm, budget) for arm, _, _, budget in asked] == [("baseline", 3600.0), ("isda", 3600.0)]
    assert all(0 < elapsed < spent for _, _, elapsed, _ in asked), (asked, spent)
    assert list(results["runs"]) == ["baseline"]
    wall = results["runs"]["baseline"]["0"]["wall_seconds"]
    assert 0 < wall < spent and [took for _, took, _, _ in asked] == [{}, {"baseline": [wall]}]
    assert results["runs"]["baseline"]["0"]["corruptions"] == {}  # --no-corruptions: none made, none scored
    assert (out / "results.md").read_text().startswith(
        "**INCOMPLETE**: --time-budget 3600 s stopped the call; not run: isda seed 0, mixup seed 0.\n")
    assert "**PARTIAL**" not in capsys.readouterr().out  # the report rewritten after each run is not printed


def test_accuracy_gpu_warm_up_runs_every_part_it_tunes(monkeypatch):
    """warm_up runs before the first timed run on every device (cheaply here, on the CPU; on a GPU it tunes cuDNN)."""
    acc = _load_accuracy_module()
    glow, vae = acc.tiny_codecs()
    args = acc.parse_args(["--smoke"])
    args.batch_size = 8  # --smoke sets 32
    calls = []
    real = acc.make_augment

    def spy(arm, *a, **k):
        t = real(arm, *a, **k)
        calls.append(t.steps[-1])
        return t

    monkeypatch.setattr(acc, "make_augment", spy)
    fits = []
    monkeypatch.setattr(acc, "fit_classifier",
                        lambda model, x, y, **k: fits.append((len(x), k["batch_size"], k["epochs"], k["progress"])))
    x, y = torch.rand(30, 3, 32, 32), torch.arange(30) % 10  # more than it needs (mutation round, audit 383)
    acc.warm_up(args, {"glow": glow, "vae": vae}, x, y, torch.device("cpu"), {"latent-adversarial", "varmixup"})
    assert fits == [(22, 8, 1, False)]  # one quiet epoch on two full batches and the last, partial one (30 % 8)
    attack, mix = calls
    assert type(attack).__name__ == "LatentAdversarial" and attack.stats["seen"] == 8 + 6, attack.stats  # 2 sizes
    # VarMixup at every likely count of selected images: 1..8 of a batch of 8 and 1..6 of the last 6 at p 0.25
    counts = sorted(set(acc.likely_counts(8, args.varmixup_p)) | set(acc.likely_counts(6, args.varmixup_p)))
    assert type(mix).__name__ == "VarMixup" and mix.stats["seen"] == sum(counts) and counts[0] == 1
    assert list(acc.likely_counts(128, 0.25)) == list(range(12, 53))  # mean 32 +- 4 x 4.9


def test_random_crop_flip_draws_per_sample_offsets_then_flips_from_its_seed():
    """The accuracy benchmark's crop+flip (zero padding 4), against a per-image loop over the same draws in the same
    order (row offsets, column offsets, flips): the crops every arm and every recorded run saw."""
    crop_flip = _load_accuracy_module().RandomCropFlip
    x = torch.rand(12, 3, 10, 10)
    aug = crop_flip(5, torch.device("cpu"))
    g = torch.Generator().manual_seed(5)
    for batch in range(2):  # two batches from one generator: the draws go on where they stopped
        oy, ox = (torch.randint(0, 9, (12, 1), generator=g) for _ in range(2))
        flip = torch.rand(12, 1, generator=g) < 0.5
        padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
        expected = torch.stack([padded[i, :, oy[i]:oy[i] + 10, ox[i]:ox[i] + 10] for i in range(12)])
        expected = torch.where(flip.view(12, 1, 1, 1), expected.flip(-1), expected)
        assert torch.equal(aug(x), expected), batch


def test_per_sample_randaugment_draws_its_ops_for_each_image_and_refuses_a_magnitude_out_of_range():
    """Per image (a batched v2 call applies one draw to the whole batch), with torchvision's defaults (what the
    throughput rows time); magnitudes 0..30 accepted, others refused when built, not when an op is drawn."""
    from torchvision.transforms import v2

    per_sample = _load_accuracy_module().PerSampleRandAugment
    ra, default = per_sample(), v2.RandAugment()
    assert (ra.ra.num_ops, ra.ra.magnitude) == (default.num_ops, default.magnitude)
    x = torch.rand(1, 3, 16, 16).expand(16, -1, -1, -1)  # one image 16 times
    torch.manual_seed(0)
    out = ra(x)
    assert out.shape == x.shape and out.dtype == x.dtype and len(torch.unique(out.flatten(1), dim=0)) > 1
    for magnitude in (0, 30):
        assert per_sample(magnitude=magnitude).ra.magnitude == magnitude
    for magnitude in (-1, 31):
        with pytest.raises(ValueError, match=re.escape(f"magnitude must be in [0, 30], got {magnitude}")):
            per_sample(magnitude=magnitude)


def _scores(a: float, ece: float = 0.1, corr: float | None = 0.5) -> dict:
    return {"accuracy": a, "ece": ece, "corruption_accuracy": corr}


def test_accuracy_verdicts_need_the_full_margin_both_comparators_and_a_strict_win():
    """Target 1 needs +3 points over the baseline AND no loss to RandAugment; Target 2 needs lower ECE AND higher
    corruption accuracy (a tie is neither); Target 3 needs ISDA above the baseline (a tie does not beat it)."""
    verdicts = _load_accuracy_module().verdicts
    base = {"0": _scores(0.50)}
    t1 = verdicts({"baseline": base, "randaugment": {"0": _scores(0.40)}, "isda": {"0": _scores(0.525)}})[0]
    assert t1["status"] == "MISSED", t1  # +2.5 points
    t1 = verdicts({"baseline": base, "randaugment": {"0": _scores(0.56)}, "isda": {"0": _scores(0.535)}})[0]
    assert t1["status"] == "MISSED", t1  # +3.5 points, but 2.5 below RandAugment
    for ra, status in ((0.536, "MISSED"), (0.535, "MET")):  # 0.1 points below RandAugment is a loss; a tie is not
        t1 = verdicts({"baseline": base, "randaugment": {"0": _scores(ra)}, "isda": {"0": _scores(0.535)}})[0]
        assert t1["status"] == status, (ra, t1)
    base2 = {"0": _scores(0.5, ece=0.10, corr=0.40)}
    for ece, corr, status in ((0.08, 0.42, "MET"), (0.08, 0.38, "MISSED"), (0.12, 0.42, "MISSED"),
                              (0.10, 0.42, "MISSED"), (0.08, 0.40, "MISSED")):
        t2 = verdicts({"baseline": base2, "varmixup": {"0": _scores(0.5, ece=ece, corr=corr)}})[1]
        assert t2["status"] == status, (ece, corr, t2)
    assert t2["detail"] == ("ECE 8.00 vs baseline 10.00 (-2.000, lower); corruption accuracy 40.0% vs 40.0% "
                            "(+0.00 points, not higher); on seed 0"), t2  # the last of the loop
    assert verdicts({"baseline": base, "isda": {"0": _scores(0.50)}})[2]["status"] == "MISSED"
    assert verdicts({"baseline": base, "isda": {"0": _scores(0.501)}})[2]["status"] == "MET"


def test_accuracy_verdicts_of_runs_without_corruption_scores():
    """--no-corruptions runs (corruption_accuracy None): Target 2 is not evaluated, and says why; 1 and 3 are."""
    verdicts = _load_accuracy_module().verdicts
    runs = {a: {"0": _scores(acc, corr=None)} for a, acc in
            (("baseline", 0.5), ("randaugment", 0.5), ("varmixup", 0.6), ("isda", 0.6))}
    t1, t2, t3 = verdicts(runs)
    assert (t2["status"], t2["detail"]) == ("NOT EVALUATED", "no seed with runs of both, with corruption accuracy")
    assert t1["status"] == t3["status"] == "MET"


def _results(acc, eval_on: str = "test") -> dict:
    """Hand-made results: baseline seeds 0-2 (accuracy 50/60/70%, 10 s/epoch), ISDA seed 0 only (70%, 20 s/epoch)."""
    def run(a: float, contrast: list[float], sec: float) -> dict:
        return {"accuracy": a, "ece": a / 10, "corruption_accuracy": statistics.mean(contrast),
                "corruptions": {"contrast": dict(zip(("1", "3", "5"), contrast))}, "seconds_per_epoch": sec}

    runs = {"baseline": {"0": run(0.5, [0.2, 0.3, 0.4], 10.0), "1": run(0.6, [0.4, 0.5, 0.6], 10.0),
                         "2": run(0.7, [0.6, 0.7, 0.8], 10.0)},
            "isda": {"0": run(0.7, [0.5, 0.5, 0.5], 20.0)}}
    cfg = {"smoke": False, "width": 64, "epochs": 40, "batch_size": 128, "lr": 0.1, "precision": "fp32",
           "device_name": "cpu", "n_train": 4500, "source_train": "npz:t.npz", "n_val": 500, "n_eval": 500,
           "eval_on": eval_on, "date": "2026-01-01 00:00:00 UTC", "command": "accuracy.py", "commit": None}
    return {"config": cfg, "runs": runs, "summary": acc.summarise(runs), "targets": acc.verdicts(runs)}


def test_accuracy_summary_is_mean_and_sample_std_over_seeds():
    acc = _load_accuracy_module()
    s = _results(acc)["summary"]["baseline"]
    assert s["accuracy_mean"] == pytest.approx(0.6) and s["accuracy_std"] == pytest.approx(0.1)  # n - 1
    assert s["ece_std"] == pytest.approx(0.01) and s["corruption_accuracy_std"] == pytest.approx(0.2)
    # per corruption: over severities, then over seeds
    assert s["per_corruption"] == {"contrast": pytest.approx(0.5)}
    runs = _results(acc)["runs"]
    runs["baseline"]["1"]["seconds_per_epoch"] = 13.0
    assert acc.summarise(runs)["baseline"]["seconds_per_epoch"] == pytest.approx(11.0)  # the mean over the seeds
    one = _results(acc)["summary"]["isda"]  # one seed: its spread is unknown (the JSON said 0.0)
    assert one["accuracy_std"] is None and one["ece_std"] is None and one["corruption_accuracy_std"] is None


def test_accuracy_delta_is_paired_with_its_spread_and_runs_of_several_devices_are_named():
    acc = _load_accuracy_module()
    results = _results(acc)
    runs = results["runs"]
    runs["isda"]["1"] = {**runs["isda"]["0"], "accuracy": 0.62, "device_name": "GPU B"}
    runs["isda"]["0"]["device_name"] = "GPU A"  # the baseline's runs name none: the config's device, "cpu"
    results["summary"] = acc.summarise(runs)
    md = acc.format_report(results)
    # per-seed differences +20 (seed 0) and +2 (seed 1): their mean and sample std
    assert "| +11.0 ± 12.7 (seeds 0, 1) |" in md, md
    assert "fp32 on GPU A / GPU B / cpu;" in md  # the header named the last call's device only
    assert "The runs were made on 3 devices (GPU A; GPU B; cpu): s / epoch and time vs baseline average" in md


def test_accuracy_delta_that_cancels_reads_plus_zero_not_minus_zero():
    """Audit 145: sweep_report.py printed "-0.0 ± 1.4" for seeds at -1 and +1 points (float rounding of 0.08 - 0.09
    + 0.07 - 0.06)."""
    acc = _load_accuracy_module()
    runs = {"baseline": {"0": {"accuracy": 0.09000000357627869}, "1": {"accuracy": 0.05999999865889549}},
            "latent-noise": {"0": {"accuracy": 0.07999999821186066}, "1": {"accuracy": 0.07000000029802322}}}
    assert acc.delta_vs_baseline(runs, "latent-noise", [0, 1]) == "+0.0 ± 1.4"
    runs["latent-noise"]["1"]["accuracy"] = 0.06  # a real loss still reads as one
    assert acc.delta_vs_baseline(runs, "latent-noise", [0, 1]).startswith("-0.5")


def test_accuracy_table_cells():
    """The table's ± (none for one seed), the (n=) of an arm short of seeds, time vs baseline, and the warning that
    validation-split scores are not the issue's evidence."""
    acc = _load_accuracy_module()
    md = acc.format_report(_results(acc, eval_on="val"))
    assert "| baseline (crop + flip) | 60.0% ± 10.0 | +0.0 | 6.00 ± 1.00 | 50.0% ± 20.0 | 10.00 | 1.0x |" in md, md
    assert "| isda (+ ISDA) (n=1) | 70.0% | +20.0 (seed 0) | 7.00 | 50.0% | 20.00 | 2.0x |" in md, md
    assert "(scored on the held-out validation split, for tuning: not the issue's test-set evidence)" in md
    assert "not the issue's test-set evidence" not in acc.format_report(_results(acc, eval_on="test"))


def test_accuracy_report_targets_are_a_markdown_list():
    """docs/results.md quotes the report: its targets run into the paragraph above them (one line with their "- "
    printed) unless a blank line comes first, also after the validation-split note."""
    acc = _load_accuracy_module()
    for eval_on in ("val", "test"):
        lines = acc.format_report(_results(acc, eval_on=eval_on)).split("\n")
        first = next(i for i, line in enumerate(lines) if line.startswith("- Target"))
        assert lines[first - 1] == "", lines[first - 2:first + 1]


def test_accuracy_report_header_notes_and_per_corruption_table():
    """The header names what the runs were scored on and the epochs' count; the notes on several devices, code
    versions and shards appear from two on, not for one; the per-corruption table appears where a run scored
    corruptions, not otherwise (audit 371's survivors, format_report's lines 536-578)."""
    acc = _load_accuracy_module()
    md = acc.format_report(_results(acc, eval_on="val"))
    assert "CIFAR ResNet-18 (width 64), 40 epochs, batch 128, one-cycle SGD lr 0.1, fp32 on cpu; trained on 4500 " \
           "images of npz:t.npz (500 held out for validation); evaluated on 500 held-out validation images; " \
           "seeds 0, 1, 2.\n" in md, md
    results = _results(acc)
    results["config"]["epochs"] = 1
    md = acc.format_report(results)
    assert ", 1 epoch, batch 128," in md and "evaluated on 500 test images;" in md, md
    assert "The runs were made on" not in md  # one device: times compare
    assert "versions of the benchmark" not in md and "shards" not in md  # one code version, no --shard
    assert "Corruption accuracy, per corruption (mean over severities 1, 3, 5 and seeds):\n\n| arm | " + \
           " | ".join(acc.CORRUPTIONS) + " |\n" in md, md
    assert "\n| baseline | " + " | ".join("50.0%" if k == "contrast" else "-" for k in acc.CORRUPTIONS) + " |\n" in md
    results["runs"]["isda"]["0"]["device_name"] = "GPU A"
    results["summary"] = acc.summarise(results["runs"])
    results["runs"]["isda"]["0"].update(code_sha256="ab" * 32, shard=[1, 2])
    md = acc.format_report(results)
    assert "The runs were made on 2 devices (GPU A; cpu)" in md
    assert "made by 2 versions of the benchmark and library code (each run's code_sha256 in results.json; older runs " \
           "recorded none)" in md and "These runs were made in 2 shards (--shard)" in md, md
    for by_seed in results["runs"].values():
        for r in by_seed.values():
            r.update(corruption_accuracy=None, corruptions={})
    results["summary"] = acc.summarise(results["runs"])
    md = acc.format_report(results)
    assert "per corruption" not in md and "| - |" in md  # no corruption scored: the table's cell is "-", no table


def test_accuracy_report_lists_diverged_runs_and_heads_the_targets_with_the_smoke_note():
    """Above the targets: the runs that diverged (none: no note), the targets' heading and, for a --smoke run, that
    its verdicts only show that they are computed (in place of the validation split's note)."""
    acc = _load_accuracy_module()
    results = _results(acc, eval_on="val")
    results["runs"]["baseline"]["0"]["nonfinite_predictions"] = 0
    md = acc.format_report(results)
    assert "DIVERGED" not in md and "(smoke run:" not in md, md
    assert "\n\nTargets of the issue (each compared on the seeds its arms share; latent arms: " + \
           ", ".join(acc.LATENT_ARMS) + "):\n(scored on the held-out validation split" in md, md
    results["runs"]["baseline"]["1"]["nonfinite_predictions"] = 7
    results["runs"]["isda"]["0"]["nonfinite_predictions"] = 3
    results["config"]["smoke"] = True
    md = acc.format_report(results)
    assert "\n\nDIVERGED (non-finite outputs, scored as uniform guesses): baseline seed 1 (7 of its predictions); " \
           "isda seed 0 (3 of its predictions).\n\nTargets of the issue " in md, md
    assert "):\n(smoke run: the verdicts below only show that they are computed)\n\n- Target 1 (" in md, md
    assert "held-out validation split, for tuning" not in md


def test_accuracy_write_report_writes_its_three_files_and_prints_the_report_unless_echo_is_false(tmp_path, capsys):
    """write_report: results.json (wall_seconds since ``start``), results.md (the header, a blank line, the report),
    reliability.png, and the report printed with the files' names; echo=False prints nothing (mutation round,
    audit 383: wall_seconds added ``start`` and the printing was unchecked)."""
    from PIL import Image

    acc = _load_accuracy_module()
    results = _results(acc)
    for run in (r for seeds in results["runs"].values() for r in seeds.values()):
        run["reliability"] = {"count": [2, 0], "correct_sum": [1, 0], "confidence_sum": [1.5, 0.0]}
    start = time.perf_counter()
    written = acc.write_report(tmp_path, {"seeds": [0]}, results["config"], results["runs"], start, header="# H")
    assert 0 <= written["wall_seconds"] <= time.perf_counter() - start, written["wall_seconds"]
    assert json.loads((tmp_path / "results.json").read_text()) == written
    md = acc.format_report(written)
    assert (tmp_path / "results.md").read_text() == f"# H\n\n{md}\n"
    with Image.open(tmp_path / "reliability.png") as im:
        assert im.format == "PNG"
    names = f"{tmp_path / 'results.json'}, {tmp_path / 'results.md'}, {tmp_path / 'reliability.png'}"
    printed = re.fullmatch(re.escape(f"# H\n\n{md}\n\nWrote {names} in ") + r"(\d+) s\.\n", capsys.readouterr().out)
    assert printed and int(printed[1]) <= time.perf_counter() - start + 1, printed
    written = acc.write_report(tmp_path, {"seeds": [0]}, results["config"], results["runs"], start, echo=False)
    assert capsys.readouterr().out == ""
    assert (tmp_path / "results.md").read_text() == f"{acc.format_report(written)}\n"


def test_accuracy_report_names_each_arms_settings_and_checkpoint():
    """The table names arms only: the settings their runs were made with (eps, steps, ...) and the checkpoint follow
    it, so a table read alone says what was compared."""
    acc = _load_accuracy_module()
    results = _results(acc)
    results["config"].update(isda_lambda0=0.25, isda_covariance="diagonal", noise_eps=7.5, latent_p=0.5,
                             latent_levels=None)
    noise = {"accuracy": 0.6, "ece": 0.06, "corruption_accuracy": None, "corruptions": {}, "seconds_per_epoch": 12.0,
             "codec": {"name": "glow-cifar10", "sha256": "ab" * 32}}
    results["runs"]["latent-noise"] = {"0": noise}
    results["summary"] = acc.summarise(results["runs"])
    md = acc.format_report(results)
    assert "- isda: isda_lambda0=0.25, isda_covariance=diagonal\n" in md, md
    assert "- latent-noise: noise_eps=7.5, latent_p=0.5; glow glow-cifar10 (fingerprint abababababab)\n" in md, md
    assert "- baseline" not in md  # no settings, no codec
    assert md.index("- latent-noise:") < md.index("- isda:")  # the table's order, not the runs' (json, merge) order
    for seed, named in (("10", "seed 10"), ("1", "seeds 1, 10"), ("2", "seeds 1, 2, 10")):  # older runs (--merge)
        results["runs"]["latent-noise"][seed] = {k: v for k, v in noise.items() if k != "codec"}  # of no codec record
        results["summary"] = acc.summarise(results["runs"])
        assert f"glow glow-cifar10 (fingerprint abababababab), not recorded for {named}\n" in acc.format_report(results)


def test_accuracy_merged_report_names_each_arms_own_settings_and_an_unrecorded_checkpoint(tmp_path):
    """--merge: each arm's settings are those of the file its runs came from; a latent arm of an older file (no
    codec record, taken as it is) says so instead of naming no checkpoint."""
    acc = _load_accuracy_module()
    fp = acc.make_fingerprint(acc.parse_args(["--device", "cpu"]), "d" * 64)
    run = {"accuracy": 0.5, "ece": 0.05, "corruption_accuracy": None, "corruptions": {}, "seconds_per_epoch": 1.0,
           "reliability": {"count": [1], "correct_sum": [1], "confidence_sum": [1]}}
    glow = {"name": "glow-cifar10", "sha256": "ab" * 32}
    files = []
    for name, settings, runs in (("a", {"noise_eps": 5.0}, {"isda": {"0": run}, "latent-noise": {"0": {**run, "codec": glow}}}),
                                 ("b", {"noise_eps": 99.0, "adv_eps": 1e-05}, {"latent-adversarial": {"0": run}})):
        f = {**fp, **settings}
        cfg = {**f, "device_name": "cpu", "n_val": 0, "n_train": 10, "n_eval": 10, "source_train": "x"}
        (tmp_path / f"{name}.json").write_text(json.dumps({"fingerprint": f, "config": cfg, "runs": runs}))
        files.append(str(tmp_path / f"{name}.json"))
    _, config, runs = acc.merge_results(files, list(acc.ARMS))
    config.update(date="d", command="c", commit=None)
    md = acc.format_report({"config": config, "runs": runs, "summary": acc.summarise(runs),
                            "targets": acc.verdicts(runs)})
    assert "- latent-noise: noise_eps=5, latent_p=1; glow glow-cifar10 (fingerprint abababababab)\n" in md, md
    assert "- latent-adversarial: adv_eps=1e-05, adv_steps=1, adv_step_size=1, latent_p=1; glow checkpoint not " \
           "recorded\n" in md, md


def test_accuracy_reliability_diagram_pools_the_bins_of_every_seed():
    acc = _load_accuracy_module()
    from latent_transforms.evaluation import reliability_bins

    g = torch.Generator().manual_seed(0)
    probs = [torch.softmax(3 * torch.randn(50, 10, generator=g), 1) for _ in range(2)]
    y = [torch.randint(0, 10, (50,), generator=g) for _ in range(2)]
    runs = {"baseline": {str(i): {"reliability": {k: v.tolist() for k, v in reliability_bins(p, t).items()}}
                         for i, (p, t) in enumerate(zip(probs, y))}}
    pooled = acc.pooled_bins(runs)["baseline"]
    expected = reliability_bins(torch.cat(probs), torch.cat(y))
    for k, v in expected.items():
        assert pooled[k] == pytest.approx(v.tolist()), k


def test_accuracy_provenance_of_an_older_merge_names_no_commit_for_its_files():
    """A merge made before merged_commits was recorded still names each file merged, its commit not recorded."""
    acc = _load_accuracy_module()
    cfg = {"date": "d", "command": "c", "commit": None, "merged_from": ["a.json", "b.json"]}
    assert acc._provenance(cfg) == "Made d by `c` at commit not recorded; merged from a.json (commit not recorded), " \
                                   "b.json (commit not recorded)."


def test_accuracy_reliability_diagram_has_a_panel_per_arm_three_a_row_and_a_bar_per_filled_bin(tmp_path):
    """draw_reliability: panels 260x270, at most 3 a row; a bin's bar (blue) rises to its accuracy, a red box spans
    its gap to its confidence, an empty bin has none; the diagonal is grey."""
    acc = _load_accuracy_module()
    from PIL import Image

    bins = {"count": [0, 4], "correct_sum": [0, 4], "confidence_sum": [0, 3]}  # bin 1: accuracy 1, confidence 0.75
    for n_arms, size in ((1, (260, 270)), (4, (780, 540))):
        arms = [f"arm{i}" for i in range(n_arms)]
        path = acc.draw_reliability({a: bins for a in arms}, {a: 0.1 for a in arms},
                                    tmp_path / "new" / "sub" / f"{n_arms}.png")  # its folders made, then reused
        image = Image.open(path).convert("RGB")
        assert image.size == size
    side = 260 - 36 - 14  # a panel's plot area: from (36, 28) within the panel
    for ox, oy in ((0, 0), (260, 0), (520, 0), (0, 270)):
        x0, y0 = ox + 36, oy + 28
        assert image.getpixel((x0 + 2 * side // 3, y0 + 5)) == (70, 110, 200)  # bin 1's bar reaches the top (acc. 1)
        assert image.getpixel((x0 + 2 * side // 3, y0 - 3)) != (70, 110, 200)  # and stops there
        assert image.getpixel((x0 + 2 * side // 3, y0 + side + 3)) != (70, 110, 200)  # it stands on the axis
        assert image.getpixel((x0 + side // 4, y0 + side - 5)) == (255, 255, 255)  # bin 0 is empty: no bar
        # bin 1's gap to its confidence (red): from the bar's top down to 0.75
        assert image.getpixel((x0 + 2 * side // 3, y0)) == image.getpixel((x0 + 2 * side // 3, y0 + side // 4)) == \
            (220, 60, 60)
        assert image.getpixel((x0 + 2 * side // 3, y0 + side // 4 + 1)) == (70, 110, 200)
        for k in (20, 80):  # the diagonal (grey), from (0, 0) up to (1, 1)
            assert image.getpixel((x0 + k, y0 + side - k)) == (120, 120, 120), k
    assert image.getpixel((260 + 36 + side // 2, 270 + 28 + side // 2)) == (255, 255, 255)  # no 5th panel


# flag -> fingerprint key, each flag's value other than its default
_SETTINGS = {"--lr": ("lr", "0.05"), "--weight-decay": ("weight_decay", "0"), "--epochs": ("epochs", "3"),
             "--batch-size": ("batch_size", "64"), "--width": ("width", "16"), "--val-fraction": ("val_fraction", "0.2"),
             "--eval-on": ("eval_on", "val"), "--train-size": ("train_size", "1000"), "--precision": ("precision", "bf16"),
             "--noise-eps": ("noise_eps", "7"), "--adv-eps": ("adv_eps", "0.3"), "--adv-steps": ("adv_steps", "5"),
             "--adv-step-size": ("adv_step_size", "0.11"), "--latent-p": ("latent_p", "0.5"),
             "--varmixup-alpha": ("varmixup_alpha", "0.3"), "--varmixup-p": ("varmixup_p", "0.9"),
             "--isda-lambda0": ("isda_lambda0", "0.1"), "--isda-covariance": ("isda_covariance", "diagonal"),
             "--ra-ops": ("ra_ops", "3"), "--ra-magnitude": ("ra_magnitude", "5"), "--mixup-alpha": ("mixup_alpha", "0.2")}


def test_accuracy_resume_refuses_runs_made_with_any_other_training_or_method_setting(tmp_path):
    acc = _load_accuracy_module()
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"fingerprint": acc.make_fingerprint(acc.parse_args([]), "0" * 64),
                                "runs": {"baseline": {"0": {"accuracy": 0.5}}}}))
    for flag, (key, value) in _SETTINGS.items():
        now = acc.make_fingerprint(acc.parse_args([flag, value]), "0" * 64)
        with pytest.raises(SystemExit, match=rf"other settings \({key} .* there, .* now\)"):
            acc.load_runs(path, now, "--resume", "r")


def test_accuracy_protocol_records_the_corruptions_and_severities(monkeypatch):
    """Runs scored on other corruptions or severities are another protocol: not resumed or merged into one table."""
    acc = _load_accuracy_module()
    before = acc.protocol()
    monkeypatch.setattr(acc, "SEVERITIES", (1, 2, 3))
    assert acc.protocol() != before
    monkeypatch.setattr(acc, "SEVERITIES", (1, 3, 5))
    monkeypatch.setattr(acc, "CORRUPTIONS", {**acc.CORRUPTIONS, "contrast": (0.5, 0.3, 0.1)})
    assert acc.protocol() != before


def test_accuracy_code_sha256_hashes_the_benchmarks_then_the_librarys_sources(tmp_path, monkeypatch):
    """code_sha256: sha256 of benchmarks/*.py, then of the library's *.py at any depth, each sorted by path; a source
    changed anywhere in them is another code version (the report's note on code versions reads it)."""
    import hashlib

    acc = _load_accuracy_module()
    bench, library = tmp_path / "benchmarks", tmp_path / "library"
    (library / "sub").mkdir(parents=True)
    bench.mkdir()
    for path, text in ((bench / "b.py", "B"), (bench / "a.py", "A"), (bench / "notes.md", "N"),
                       (library / "sub" / "z.py", "Z"), (library / "hub.py", "H")):
        path.write_text(text)
    monkeypatch.setattr(acc, "__file__", str(bench / "accuracy.py"))
    monkeypatch.setattr(acc, "hub", SimpleNamespace(__file__=str(library / "hub.py")))
    assert acc.code_sha256() == hashlib.sha256(b"ABHZ").hexdigest()
    (library / "sub" / "z.py").write_text("Z2")
    assert acc.code_sha256() == hashlib.sha256(b"ABHZ2").hexdigest()


def test_accuracy_git_commit_of_a_copy_without_git_is_the_git_commit_variable(tmp_path, monkeypatch):
    """Where git is installed but the tree is a copy without .git (the device machine's), git fails: the commit is
    $GIT_COMMIT, else None, not git's empty output."""
    import shutil

    if shutil.which("git") is None:
        pytest.skip("no git")
    acc = _load_accuracy_module()
    monkeypatch.setattr(acc, "__file__", str(tmp_path / "accuracy.py"))
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    monkeypatch.delenv("GIT_DIR", raising=False)
    monkeypatch.setenv("GIT_COMMIT", "abc123")
    assert acc.git_commit() == "abc123"
    monkeypatch.delenv("GIT_COMMIT")
    assert acc.git_commit() is None


def test_accuracy_corruptions_grow_with_severity_and_follow_cifar10c():
    acc = _load_accuracy_module()
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    mean = x.mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(acc.corrupt(x, "contrast", 0.4, torch.Generator()), ((x - mean) * 0.4 + mean).clamp(0, 1))
    sets = acc.corrupted_sets(x)
    for kind, by_severity in sets.items():
        change = [float((by_severity[s].float() / 255 - x).abs().mean()) for s in acc.SEVERITIES]
        assert change == sorted(change) and change[0] < change[-1], (kind, change)
    again = acc.corrupted_sets(x)  # the very same (noisy) images in every call
    assert all(torch.equal(again[kind][s], images) for kind, d in sets.items() for s, images in d.items())
    grey = torch.full((2, 3, 8, 8), 0.5)
    # brightness adds c to the HSV value (it brightens); the blur repeats the edge pixels, so it keeps a flat image
    assert torch.allclose(acc.corrupt(grey, "brightness", 0.3, torch.Generator()), torch.full_like(grey, 0.8))
    assert torch.allclose(acc.corrupt(grey, "gaussian_blur", 1.0, torch.Generator()), grey)


def test_accuracy_corruptions_stay_in_range_and_follow_make_cifar_c_where_it_is_exact():
    """Mutation audit 386: the blur's kernel (skimage's truncate 4 sigma, 'nearest' borders), the noise's std, the
    clipping of the HSV value and of every image to [0, 1], and the uint8 store could each change unnoticed."""
    ndimage = pytest.importorskip("scipy.ndimage")  # skimage.filters.gaussian, which make_cifar_c.py calls, calls it
    acc = _load_accuracy_module()
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    x[:, :, :8], x[:, :, 8:16] = 1.0, 0.0  # white and black rows: a corruption pushes them out of [0, 1] unclipped
    for kind, levels in acc.CORRUPTIONS.items():
        for c in levels:
            out = acc.corrupt(x, kind, c, torch.Generator().manual_seed(0))
            assert out.shape == x.shape and out.dtype == x.dtype and 0 <= out.min() and out.max() <= 1, (kind, c)
    impulse = torch.zeros(1, 3, 32, 32)  # its blur is the kernel itself: its size, centre and tails
    impulse[..., 16, 16] = 1.0
    for sigma in acc.CORRUPTIONS["gaussian_blur"]:
        for image, atol in ((impulse, 1e-9), (x, 1e-6)):
            reference = ndimage.gaussian_filter(image.double().numpy(), (0, 0, sigma, sigma), mode="nearest",
                                                truncate=4.0)
            assert torch.allclose(acc.corrupt(image, "gaussian_blur", sigma, torch.Generator()),
                                  torch.from_numpy(reference).float(), rtol=1e-4, atol=atol), (sigma, atol)
    grey = torch.full((4, 3, 32, 32), 0.5)  # no pixel clipped: the change is the noise, of std c
    for c in acc.CORRUPTIONS["gaussian_noise"]:
        change = acc.corrupt(grey, "gaussian_noise", c, torch.Generator().manual_seed(0)) - grey
        assert change.std().item() == pytest.approx(c, rel=0.05) and abs(change.mean().item()) < c / 10, c
    orange = torch.tensor([0.9, 0.45, 0.0]).view(1, 3, 1, 1)  # HSV value 0.9 + 0.3 clipped to 1 keeps the hue
    assert torch.allclose(acc.corrupt(orange, "brightness", 0.3, torch.Generator()),
                          torch.tensor([1.0, 0.5, 0.0]).view(1, 3, 1, 1))
    with pytest.raises(ValueError, match=r"^unknown corruption 'fog'$"):
        acc.corrupt(x, "fog", 0.5, torch.Generator())
    sets = acc.corrupted_sets(x)  # stored as CIFAR-10-C is: uint8, 255 x the image (white stays 255)
    for kind in ("gaussian_blur", "contrast", "brightness", "jpeg"):  # the ones that draw no noise
        for severity, c in zip(acc.SEVERITIES, acc.CORRUPTIONS[kind]):
            stored = sets[kind][severity]
            diff = acc.corrupt(x, kind, c, torch.Generator()) * 255 - stored.float()
            assert stored.dtype == torch.uint8 and float(diff.abs().max()) <= 1, (kind, severity)


def test_accuracy_run_scores_corruptions_on_the_corrupted_images_and_ece_in_15_bins(monkeypatch):
    """run_one with training stubbed out: the clean images are called class 0 (right for 2 in 3), the corrupted ones
    (all black) class 2 (never right)."""
    from latent_transforms.evaluation import expected_calibration_error

    acc = _load_accuracy_module()
    n = 40
    conf = torch.linspace(0.12, 0.99, n)  # confidence in class 0, spread over the bins

    def predict(model, x):
        black = x.flatten(1).abs().sum(1) == 0
        p = torch.eye(10)[2].expand(len(x), 10)
        soft = torch.cat([conf[:len(x), None], ((1 - conf[:len(x)]) / 9)[:, None].expand(-1, 9)], 1)
        return torch.where(black[:, None], p, soft)

    monkeypatch.setattr(acc, "fit_classifier", lambda *a, **k: 1.0)
    monkeypatch.setattr(acc, "RandomCropFlip", lambda seed, device: None)
    monkeypatch.setattr(acc, "predict_proba", predict)
    y = (torch.arange(n) % 3 == 0).long()
    data = {"x_train": None, "y_train": None, "x_eval": torch.full((n, 3, 8, 8), 0.5), "y_eval": y}
    corrupted = {"contrast": {1: torch.zeros(n, 3, 8, 8, dtype=torch.uint8)}}
    r = acc.run_one("baseline", 0, acc.parse_args(["--smoke"]), data, {}, corrupted, torch.device("cpu"))
    probs = predict(None, data["x_eval"])
    assert r["accuracy"] == pytest.approx(26 / 40) and r["corruptions"] == {"contrast": {"1": 0.0}}
    assert r["corruption_accuracy"] == 0.0
    # the corruption accuracy is the mean over every corruption and severity (a grey one scored like the clean set)
    corrupted = {"contrast": {1: corrupted["contrast"][1], 5: torch.full((n, 3, 8, 8), 128, dtype=torch.uint8)},
                 "jpeg": {3: torch.full((n, 3, 8, 8), 128, dtype=torch.uint8)}}
    r2 = acc.run_one("baseline", 0, acc.parse_args(["--smoke"]), data, {}, corrupted, torch.device("cpu"))
    clean = pytest.approx(26 / 40)
    assert r2["corruptions"] == {"contrast": {"1": 0.0, "5": clean}, "jpeg": {"3": clean}}
    assert r2["corruption_accuracy"] == pytest.approx(52 / 120)
    # a diverged classifier: its non-finite predictions are counted over the clean and every corrupted set
    monkeypatch.setattr(acc, "predict_proba", lambda model, x: torch.full((len(x), 10), float("nan")))
    r3 = acc.run_one("baseline", 0, acc.parse_args(["--smoke"]), data, {}, corrupted, torch.device("cpu"))
    assert r3["nonfinite_predictions"] == 4 * n and r3["corruption_accuracy"] == clean  # uniform: class 0 everywhere
    assert expected_calibration_error(probs, y, bins=15) != expected_calibration_error(probs, y, bins=10)
    assert r["ece"] == pytest.approx(expected_calibration_error(probs, y, bins=15))
    assert len(r["reliability"]["count"]) == 15


def test_accuracy_validation_split_is_a_seeded_random_draw_of_every_class():
    """The held-out images are drawn at random within each class (fixed by the split seed), not its first images."""
    acc = _load_accuracy_module()
    y = torch.arange(200) % 10
    train, val = acc.stratified_split(y, 0.1)
    assert sorted(torch.cat([train, val]).tolist()) == list(range(200)) and sorted(y[val].tolist()) == sorted(
        list(range(10)) * 2)
    assert torch.equal(val, acc.stratified_split(y, 0.1)[1]) and val.tolist() != list(range(20))
    assert not torch.equal(val, acc.stratified_split(y, 0.1, seed=1)[1])


def test_accuracy_validation_split_is_held_out_of_training_and_scored_with_eval_on_val(tmp_path):
    """--eval-on val scores the held-out training images (round(fraction x n_c) a class), never the test set."""
    import numpy as np

    acc = _load_accuracy_module()
    rng = np.random.default_rng(0)
    train, test = tmp_path / "train.npz", tmp_path / "test.npz"
    np.savez(train, x=rng.integers(0, 128, (170, 32, 32, 3), dtype=np.uint8), y=np.arange(170) % 10)  # 17 a class
    np.savez(test, x=rng.integers(128, 256, (50, 32, 32, 3), dtype=np.uint8), y=np.arange(50) % 10)
    flags = ["--train", f"npz:{train}", "--test", f"npz:{test}", "--val-fraction", "0.1"]
    val = acc.load_data(acc.parse_args([*flags, "--eval-on", "val"]))
    assert val["n_val"] == len(val["y_eval"]) == 20 and len(val["y_train"]) == 150  # round(1.7) = 2 a class
    assert float(val["x_eval"].max()) < 0.5  # training images, not test images
    seen = {tuple(img.flatten()[:64].tolist()) for img in val["x_train"]}
    assert not any(tuple(img.flatten()[:64].tolist()) in seen for img in val["x_eval"])
    assert sorted(val["y_eval"].tolist()) == sorted(list(range(10)) * 2)
    test_scored = acc.load_data(acc.parse_args(flags))
    assert float(test_scored["x_eval"].min()) >= 0.5 and torch.equal(test_scored["x_train"], val["x_train"])
    none_held = acc.load_data(acc.parse_args([*flags[:4], "--val-fraction", "0"]))
    assert none_held["n_val"] == 0 and len(none_held["y_train"]) == 170
    with pytest.raises(SystemExit, match=r"^--eval-on val needs --val-fraction > 0$"):  # nothing held out to score
        acc.load_data(acc.parse_args([*flags[:4], "--val-fraction", "0", "--eval-on", "val"]))
    with pytest.raises(SystemExit, match=r"^--eval-on val: --val-fraction 0.02 holds out no image"):  # 0.34 a class:
        acc.load_data(acc.parse_args([*flags[:4], "--val-fraction", "0.02", "--eval-on", "val"]))  # failed in a run
    smoke = acc.load_data(acc.parse_args([*flags[:4], "--smoke", "--smoke-images", "30"]))  # both sets cut short
    assert len(smoke["y_train"]) == 30 and len(smoke["y_eval"]) == 30 and smoke["n_val"] == 0  # round(0.3) a class


def test_accuracy_eval_on_val_never_reads_the_test_set(monkeypatch):
    """Audit 149: --eval-on val read --test (the 10,000-image test set, or its download) and scored none of it."""
    acc = _load_accuracy_module()
    read = []

    def load_images(spec, split, root):
        read.append(split)
        return torch.rand(100, 3, 32, 32), torch.arange(100) % 10, None

    monkeypatch.setattr(acc, "load_images", load_images)
    val = acc.load_data(acc.parse_args(["--train", "npz:t.npz", "--test", "npz:never.npz", "--eval-on", "val"]))
    assert read == ["train"] and val["source_test"] is None and len(val["y_eval"]) == val["n_val"] == 10
    test = acc.load_data(acc.parse_args(["--train", "npz:t.npz", "--test", "npz:t.npz"]))
    assert read == ["train", "train", "test"] and test["source_test"] == "npz:t.npz" and len(test["y_eval"]) == 100


def test_accuracy_refuses_unlabeled_data_or_images_other_than_3x32x32_naming_the_set(monkeypatch):
    """read_images: a set without labels, or of other-sized images, is refused by name before any training."""
    acc = _load_accuracy_module()
    shapes = {"train": (20, 3, 32, 32), "test": (20, 3, 32, 32)}
    labelled = {"train": True, "test": True}
    monkeypatch.setattr(acc, "load_images", lambda spec, split, root: (
        torch.rand(shapes[split]), torch.arange(20) % 10 if labelled[split] else None, None))
    args = acc.parse_args(["--train", "npz:t.npz", "--test", "npz:e.npz"])
    assert len(acc.load_data(args)["y_eval"]) == 20
    labelled["test"] = False
    with pytest.raises(SystemExit, match=r"^the test data has no labels$"):
        acc.load_data(args)
    labelled["test"], shapes["train"] = True, (20, 1, 32, 32)
    with pytest.raises(SystemExit, match=r"^the training images must be 3x32x32 \(CIFAR-10\), got \(1, 32, 32\)$"):
        acc.load_data(args)


def test_accuracy_refuses_labels_beyond_the_ten_classes_naming_the_set(monkeypatch):
    """Audit 386: test labels of 12 classes (a training set of 10) trained the first run in full, then failed scoring
    the corrupted test images with "y has class index 11, out of range for num_classes=10", naming no --test."""
    acc = _load_accuracy_module()
    classes = {"train": 10, "test": 10}
    monkeypatch.setattr(acc, "load_images", lambda spec, split, root: (
        torch.rand(24, 3, 32, 32), torch.arange(24) % classes[split], None))
    args = acc.parse_args(["--train", "npz:t.npz", "--test", "npz:e.npz"])
    assert int(acc.load_data(args)["y_eval"].max()) == 9
    classes["test"] = 11  # label 10: one past the last class
    with pytest.raises(SystemExit, match=r"^the test labels must be class indices 0 to 9 \(CIFAR-10\), got 10$"):
        acc.load_data(args)


def test_sweep_report_refuses_folders_scored_on_other_images_or_schedules(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sweep = _load_benchmark("sweep_report")
    base = _fake_results(tmp_path / "b0", "baseline", 0, 0.6)
    for i, (key, value) in enumerate((("eval_on", "test"), ("n_eval", 1000), ("val_fraction", 0.2),
                                      ("train", "npz:u.npz"), ("lr", 0.05), ("n_train", 9000))):
        other = _fake_results(tmp_path / f"o{i}", "baseline", 1, 0.6, **{key: value})
        with pytest.raises(SystemExit, match=f"not the same data/schedule as the first folder: .*'{key}'"):
            sweep.collect([base, other])


def test_calibrate_eps_trains_without_its_validation_images_and_scores_the_perturbed_ones(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    cal = _load_benchmark("calibrate_eps")
    x, y = torch.rand(50, 1, 8, 8) + 0.1, torch.zeros(50, dtype=torch.long)
    seen = {}

    class Blackout:  # a stand-in perturbation: every image black
        def __init__(self, codec, eps, **kwargs):
            self.stats = {"rejected": 0, "seen": 0}

        def __call__(self, xb, yb, model=None):
            self.stats["seen"] += len(xb)
            return torch.zeros_like(xb), yb

    def predict(model, xb):  # class 0 for the images, 1 for black ones
        seen.setdefault("val", xb)
        return torch.eye(10)[(xb.flatten(1).sum(1) == 0).long()]

    monkeypatch.setattr(cal, "load_images", lambda spec, split: (x, y, None))
    monkeypatch.setattr(cal, "hub", SimpleNamespace(load=lambda name: SimpleNamespace(check_images=lambda x, what: None)))
    monkeypatch.setattr(cal, "fit_classifier", lambda model, xt, yt, **k: seen.setdefault("train", xt))
    monkeypatch.setattr(cal, "predict_proba", predict)
    monkeypatch.setattr(cal, "LatentNoise", Blackout)
    monkeypatch.setattr(cal, "LatentAdversarial", Blackout)
    monkeypatch.setattr(cal, "save_rows", lambda *a, **k: None)
    monkeypatch.setattr(sys, "argv", ["calibrate_eps.py", "--codec", "c", "--data", "d", "--noise-eps", "5",
                                      "--adv-eps", "1", "--out", str(tmp_path),
                                      "--threads", str(torch.get_num_threads())])  # main sets torch's threads
    cal.main()
    train, val = seen["train"], seen["val"]
    assert len(train) + len(val) == 50 and len(val) == 5
    assert not any(torch.equal(v, t) for v in val for t in train)  # no validation image trained on
    out = json.loads((tmp_path / "c-eps.json").read_text())
    assert out["clean_val_accuracy"] == 1.0 and [r["accuracy_on_perturbed"] for r in out["rows"]] == [0.0, 0.0]
    assert out["settings"] == {"codec": "c", "data": "d", "val_fraction": 0.1, "val_images": 5, "epochs": 20,
                               "width": 16}  # what the figures were measured with
    # two candidates that share a file name are written under their folders' names, not over each other
    for folder in ("b1", "b2"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "glow.safetensors").write_bytes(b"")
        monkeypatch.setattr(sys, "argv", ["calibrate_eps.py", "--codec", str(tmp_path / folder / "glow.safetensors"),
                                          "--data", "d", "--noise-eps", "5", "--adv-eps", "1", "--out", str(tmp_path),
                                          "--threads", str(torch.get_num_threads())])
        cal.main()
    assert (tmp_path / "b1-glow-eps.json").is_file() and (tmp_path / "b2-glow-eps.json").is_file()


def test_calibrate_eps_smoke_prints_a_row_per_eps_and_for_scale_without_a_progress_bar(tmp_path):
    """Audit 236: calibrate_eps.py had no --smoke (tested with stubs only) and its classifier's progress bar could not
    be turned off but by TQDM_DISABLE=1."""
    out = tmp_path / "eps"
    proc = _run([str(BENCHMARKS / "calibrate_eps.py"), "--smoke", "--no-progress", "--out", "~/eps"], tmp_path,
                home=True)
    header, rows = _markdown_table(proc.stdout)
    assert header == ["method", "eps", "rejected", "mean abs pixel change", "pixels changed > 0.1",
                      "textured patches moved", "clean classifier's accuracy on perturbed"]
    assert all(len(row) == len(header) for row in rows)
    assert [row[:2] for row in rows] == [["LatentNoise", e] for e in ("0.5", "1", "2", "3", "5", "10", "20")] + \
        [["LatentAdversarial", e] for e in ("0.25", "0.5", "1", "2")] + \
        [["for scale: moved by one pixel", "-"], ["for scale: another image", "-"]]
    assert all(re.fullmatch(r"\d+\.\d%", row[2]) for row in rows[:-2]) and rows[-2][5].startswith("100.0% of ")
    assert "tiny random-init glow (smoke) on 20 validation images of digits" in proc.stdout
    result = json.loads((out / "tiny-glow-eps.json").read_text())
    assert result["settings"] == {"codec": "tiny random-init glow (smoke)", "data": "digits", "val_fraction": 0.1,
                                  "val_images": 20, "epochs": 1, "width": 4}
    assert len(result["rows"]) == 11 and (out / "tiny-glow-eps.png").is_file()
    assert "clean classifier" not in proc.stderr, proc.stderr  # the bar's description


def test_calibrate_eps_and_codec_quality_need_their_codec_and_data_unless_smoke(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    for script, given, missing in (("calibrate_eps", ["--codec", "c"], "--data"),
                                   ("codec_quality", ["--test", "digits"], "--codec, --train")):
        module = _load_benchmark(script)
        monkeypatch.setattr(module, "load_images", lambda *a: pytest.fail("images were loaded"))
        monkeypatch.setattr(sys, "argv", [f"{script}.py", *given])
        with pytest.raises(SystemExit, match="^2$"):
            module.main()
        assert capsys.readouterr().err.splitlines()[-1] == \
            f"{script}.py: error: the following arguments are required (unless --smoke): {missing}"
    # with --smoke they may be left out, its defaults apply and an option given beside it wins (mutation round 33)
    parse_args_with_smoke = _load_benchmark("models").parse_args_with_smoke
    parser = argparse.ArgumentParser()
    parser.add_argument("--codec")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--smoke", action="store_true")
    for argv, epochs in ((["--smoke"], 1), (["--smoke", "--epochs", "4"], 4)):
        args = parse_args_with_smoke(parser, {"epochs": 1}, required=("--codec",), argv=argv)
        assert (args.codec, args.epochs) == (None, epochs)


@pytest.mark.slow
def test_calibrate_digits_smoke_prints_a_row_per_setting_under_a_progress_bar(tmp_path, monkeypatch, capsys):
    """Audit 236: calibrate_digits.py had no --smoke (tested with stubs only) and printed a line per setting of its
    hour-long run with no progress bar; --no-progress turns the bar off."""
    out = tmp_path / "digits"
    proc = _run([str(BENCHMARKS / "calibrate_digits.py"), "--smoke", "--out", "~/digits"], tmp_path, home=True)
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    cal = _load_benchmark("calibrate_digits")
    names = [name for name, _ in cal.settings(*cal.tiny_codecs(shape=cal.DIGITS_SHAPE), 0)]
    header, rows = _markdown_table(proc.stdout)
    assert header == ["setting", "val accuracy"] and [row[0] for row in rows] == names and len(names) == 18
    assert all(len(row) == 2 for row in rows)
    assert all(re.fullmatch(r"\d+\.\d%", row[1]) for row in rows)
    assert "(100 held-out training images), 2/class, 1 epoch, seed 0\n" in proc.stdout  # was "seeds [0]"
    results = json.loads((out / "calibration.json").read_text())
    assert list(results) == [row[0] for row in rows] and all(len(v) == 1 for v in results.values())
    assert re.search(r"settings: 100%\|.*\| 18/18 ", proc.stderr), proc.stderr  # one step per setting and seed
    monkeypatch.setattr(cal.torch, "set_num_threads", lambda n: None)
    monkeypatch.setattr(cal, "settings", lambda glow, vae, seed: iter([("baseline", None)]))
    monkeypatch.setattr(sys, "argv", ["calibrate_digits.py", "--smoke", "--no-progress", "--out", str(out)])
    cal.main()
    assert "settings" not in capsys.readouterr().err


def test_calibrate_digits_trains_each_seed_on_a_low_data_split_without_its_validation_images(tmp_path, monkeypatch,
                                                                                            capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    cal = _load_benchmark("calibrate_digits")
    x = (torch.arange(60, dtype=torch.float32) / 60).view(60, 1, 1, 1).expand(60, 1, 8, 8)  # image i: all i / 60
    y = torch.arange(60) % 10
    fits, scored = [], []

    def fit(model, xt, yt, augment, **kwargs):
        fits.append((kwargs["seed"], augment, xt, yt))

    def predict(model, xb):  # every prediction right: the label of the image's index
        scored.append(xb)
        return torch.eye(10)[y[(xb[:, 0, 0, 0] * 60).round().long()]]

    monkeypatch.setattr(cal, "load_images", lambda spec, split: (x, y, 17))
    monkeypatch.setattr(cal, "hub", SimpleNamespace(load=lambda name: name))
    monkeypatch.setattr(cal, "settings", lambda glow, vae, seed: iter([("baseline", None), ("noise", f"aug {seed}")]))
    monkeypatch.setattr(cal, "fit_classifier", fit)
    monkeypatch.setattr(cal, "predict_proba", predict)
    monkeypatch.setattr(cal.torch, "set_num_threads", lambda n: None)
    monkeypatch.setattr(sys, "argv", ["calibrate_digits.py", "--val", "20", "--per-class", "2", "--epochs", "1",
                                      "--seeds", "0", "3", "--out", str(tmp_path)])
    cal.main()
    val = {round(float(v) * 60) for v in scored[0][:, 0, 0, 0]}
    assert len(val) == 20 and all(torch.equal(s, scored[0]) for s in scored), "not one validation set throughout"
    assert [(seed, augment) for seed, augment, *_ in fits] == [(0, None), (0, "aug 0"), (3, None), (3, "aug 3")]
    for seed, _, xt, yt in fits:
        trained = [round(float(v) * 60) for v in xt[:, 0, 0, 0]]
        assert not val & set(trained), f"seed {seed} trained on validation images {sorted(val & set(trained))}"
        assert torch.equal(yt, y[trained]) and torch.bincount(yt, minlength=10).tolist() == [2] * 10
    assert not torch.equal(fits[0][2], fits[2][2]), "both seeds trained on the same low-data split"
    assert json.loads((tmp_path / "calibration.json").read_text()) == {"baseline": [1.0, 1.0], "noise": [1.0, 1.0]}
    assert "2/class, 1 epoch, seeds 0, 3\n" in capsys.readouterr().out  # audit 407: was "seeds [0, 3]", a list


def test_calibrate_digits_refuses_a_bad_out_or_val_before_training_and_ends_in_one_line(tmp_path, monkeypatch,
                                                                                         refused_commands):
    """Audit 145: an --out that is a file failed after every setting had trained; --val as large as the training split
    ended in low_data_split's traceback ("y must be (N,) class indices with N > 0")."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    cal = _load_benchmark("calibrate_digits")
    x, y = torch.rand(60, 1, 8, 8), torch.arange(60) % 10
    monkeypatch.setattr(cal, "load_images", lambda spec, split: (x, y, 17))
    monkeypatch.setattr(cal, "hub", SimpleNamespace(load=lambda name: name))
    monkeypatch.setattr(cal, "fit_classifier", lambda *a, **k: pytest.fail("a classifier trained"))
    monkeypatch.setattr(cal.torch, "set_num_threads", lambda n: None)
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(sys, "argv", ["calibrate_digits.py", "--out", str(tmp_path / "file")])
    with pytest.raises(ValueError, match=r"^--out '.*file' is a file; give a folder \(it is created if missing\)$"):
        cal.main()
    monkeypatch.setattr(sys, "argv", ["calibrate_digits.py", "--val", "60", "--out", str(tmp_path / "out")])
    with pytest.raises(ValueError, match="^--val 60 leaves no training images: the digits training split has 60$"):
        cal.main()
    code, stderr = refused_commands[1]["calibrate_digits.py val"]  # --val 100000, as a command
    assert code == 2 and stderr.splitlines() == [
        "calibrate_digits.py: error: --val 100000 leaves no training images: the digits training split has 1257"]


def test_calibrate_eps_refuses_a_val_fraction_that_holds_out_no_image_before_training(tmp_path, monkeypatch):
    """Audit 145: --val-fraction 0.0001 on digits trained the classifier, then ended in "x must be a non-empty
    batch, got (0, 1, 8, 8)"."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    cal = _load_benchmark("calibrate_eps")
    monkeypatch.setattr(cal, "load_images", lambda spec, split: (torch.rand(50, 1, 8, 8), torch.zeros(50).long(), None))
    monkeypatch.setattr(cal, "hub", SimpleNamespace(load=lambda name: SimpleNamespace(check_images=lambda x, what: None)))
    monkeypatch.setattr(cal, "fit_classifier", lambda *a, **k: pytest.fail("the classifier trained"))
    monkeypatch.setattr(sys, "argv", ["calibrate_eps.py", "--codec", "c", "--data", "d", "--val-fraction", "0.01",
                                      "--out", str(tmp_path), "--threads", str(torch.get_num_threads())])
    with pytest.raises(ValueError, match=r"^--val-fraction 0.01 holds out no image of the 50 --data images; give at "
                                         r"least 0.02$"):
        cal.main()


def test_calibrate_eps_reports_a_rejection_rate_the_mean_absolute_change_and_the_perturbed_pictures(tmp_path,
                                                                                                     monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    cal = _load_benchmark("calibrate_eps")
    x, y = torch.full((40, 1, 8, 8), 0.5), torch.zeros(40, dtype=torch.long)
    made, pictures = [], {}

    class Shift:  # a stand-in perturbation: +0.25 on half the pixels, -0.25 on the others; rejects one image a call
        def __init__(self, codec, eps, **kwargs):
            made.append((type(self).__name__, eps, kwargs))
            self.stats = {"rejected": 0, "seen": 0}

        def __call__(self, xb, yb, model=None):
            self.stats["seen"] += len(xb)
            self.stats["rejected"] += 1
            sign = torch.ones_like(xb)
            sign[..., :4] = -1
            return xb + 0.25 * sign, yb

    noise, adversarial = type("LatentNoise", (Shift,), {}), type("LatentAdversarial", (Shift,), {})
    monkeypatch.setattr(cal, "load_images", lambda spec, split: (x, y, None))
    monkeypatch.setattr(cal, "hub", SimpleNamespace(load=lambda name: SimpleNamespace(check_images=lambda x, what: None)))
    monkeypatch.setattr(cal, "fit_classifier", lambda *a, **k: None)
    monkeypatch.setattr(cal, "predict_proba", lambda model, xb: torch.eye(10)[torch.zeros(len(xb), dtype=torch.long)])
    monkeypatch.setattr(cal, "LatentNoise", noise)
    monkeypatch.setattr(cal, "LatentAdversarial", adversarial)
    monkeypatch.setattr(cal, "save_rows", lambda rows, path: pictures.update(rows))
    monkeypatch.setattr(sys, "argv", ["calibrate_eps.py", "--codec", "c", "--data", "d", "--val-fraction", "0.5",
                                      "--noise-eps", "5", "--adv-eps", "0.5", "--out", str(tmp_path),
                                      "--threads", str(torch.get_num_threads())])
    cal.main()
    rows = json.loads((tmp_path / "c-eps.json").read_text())["rows"]
    assert [(r["method"], r["eps"], r["rejected"], r["mean_abs_change"]) for r in rows] == [
        ("LatentNoise", 5.0, 0.05, 0.25), ("LatentAdversarial", 0.5, 0.05, 0.25)]  # 1 of 20 images; |+-0.25|
    # seeded, and the attack takes one step of its whole eps
    assert made == [("LatentNoise", 5.0, {"generator": 0}),
                    ("LatentAdversarial", 0.5, {"steps": 1, "step_size": 0.5, "generator": 0})]
    assert list(pictures) == ["original", "LatentNoise 5", "LatentAdversarial 0.5"]
    assert torch.equal(pictures["original"], x[:10]) and not torch.equal(pictures["LatentNoise 5"], x[:10])
    assert torch.allclose((pictures["LatentAdversarial 0.5"] - x[:10]).abs(), torch.full((10, 1, 8, 8), 0.25))
    # every pixel changed by 0.25; flat grey images have no edges whose moves could be told from changes in place
    assert [(r["changed_pixels"], r["displaced_patches"], r["textured_patches"]) for r in rows] == [(1.0, None, 0)] * 2


def test_calibrate_eps_tells_patches_moved_from_patches_changed_in_place(monkeypatch):
    """For a mask kept aside (docs/composition.md#segmentation-masks-and-boxes): a perturbation that moves content
    by a pixel moves every textured patch; one that changes values in place (noise, a brightness change) moves none,
    nor does the identity (a tie counts as in place)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    cal = _load_benchmark("calibrate_eps")
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert cal.displaced_patches(x, x) == (0.0, 27)  # 3 x 3 patches of 8 x 8 in each 30 x 30 interior
    assert cal.displaced_patches(x, torch.roll(x, (1, -1), (2, 3))) == (1.0, 27)
    assert cal.displaced_patches(x, torch.roll(x, 1, 2)) == (1.0, 27)
    noisy = (0.8 * x + 0.1 + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert cal.displaced_patches(x, noisy) == (0.0, 27)
    stripes = torch.arange(8.0).remainder(2).expand(1, 1, 8, 8).contiguous()  # vertical stripes: a vertical move ties
    assert cal.displaced_patches(stripes, stripes) == (0.0, 1)  # digits' 8 x 8: one 6 x 6 patch


class Identity:
    """A stand-in transform that changes nothing and counts what it saw, as the transforms' stats do."""

    def __init__(self):
        self.stats = {"rejected": 0, "seen": 0}

    def __call__(self, xb, yb, model=None):
        self.stats["seen"] += len(xb)
        return xb, yb


def test_calibrate_eps_reports_for_scale_a_one_pixel_move_and_an_unrelated_image(tmp_path, monkeypatch, capsys):
    """docs/composition.md's last table row (the images moved by one pixel) and its "98%" (against an unrelated image)
    come from the command the page gives: calibrate_eps prints and writes both."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    cal = _load_benchmark("calibrate_eps")
    x, y = torch.rand(40, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.zeros(40, dtype=torch.long)
    monkeypatch.setattr(cal, "load_images", lambda spec, split: (x, y, None))
    monkeypatch.setattr(cal, "hub", SimpleNamespace(load=lambda name: SimpleNamespace(check_images=lambda x, what: None)))
    monkeypatch.setattr(cal, "fit_classifier", lambda *a, **k: None)
    monkeypatch.setattr(cal, "predict_proba", lambda model, xb: torch.eye(10)[torch.zeros(len(xb), dtype=torch.long)])
    monkeypatch.setattr(cal, "LatentNoise", lambda codec, eps, **k: Identity())
    monkeypatch.setattr(cal, "LatentAdversarial", lambda codec, eps, **k: Identity())
    monkeypatch.setattr(cal, "save_rows", lambda *a, **k: None)
    monkeypatch.setattr(sys, "argv", ["calibrate_eps.py", "--codec", "c", "--data", "d", "--val-fraction", "0.25",
                                      "--noise-eps", "5", "--adv-eps", "1", "--out", str(tmp_path),
                                      "--threads", str(torch.get_num_threads())])
    cal.main()
    scale = {r["method"]: r for r in json.loads((tmp_path / "c-eps.json").read_text())["for_scale"]}
    val = x[torch.randperm(40, generator=torch.Generator().manual_seed(1234))[:10]]
    moved, other = scale["for scale: moved by one pixel"], scale["for scale: another image"]
    assert moved["displaced_patches"] == 1.0 and moved["textured_patches"] == 90
    assert moved["mean_abs_change"] == pytest.approx(float((torch.roll(val, 1, 3) - val).abs().mean()))
    assert other["mean_abs_change"] == pytest.approx(float((val.roll(1, 0) - val).abs().mean()))
    assert other["accuracy_on_perturbed"] == 1.0 and other["displaced_patches"] is not None
    table = capsys.readouterr().out
    assert "| for scale: moved by one pixel | - | - | " in table and "| 100.0% of 90 | 100.0% |" in table
    assert "| for scale: another image | - | - | " in table


@pytest.mark.slow
def test_quickstart_figures_smoke_prints_every_figure_of_its_table(smoke_runs):
    """benchmarks/quickstart_figures.py, the command docs/quickstart.md gives for its figures, runs end to end."""
    proc = _smoke(smoke_runs, "quickstart_figures.py")
    table = proc.stdout[proc.stdout.index("| figure | measured |"):]
    for figure in ("one call on 64 images", "64 calls on one image each", "state_dict (the glow codec's weights)",
                   "torch.export of a width-4 CIFAR ResNet-18 alone", "merged from 8 micro-batches of 8",
                   "LatentNoise(glow, eps=100)", "LatentNoise(glow, eps=50), 4 calls on 64 training images",
                   "LatentMixupInference (vae, 300 references) on them, seeds 0, 1, 2: 2 ranks, seed + rank",
                   "| a digits_cnn (1 epoch on "):  # --smoke trains it 1 epoch
        assert figure in table, figure
    assert "| a LatentCache of the glow: floats per image, and a cache of 50,000 images | 3,072, 614 MB |" in table
    # a SIGTERM once half of a checkpoint is written: saved in place, half a file torch.load refuses; saved to
    # another name and renamed, the last checkpoint whole. The saver waits at the half for the signal (the parent's
    # polling once missed it on a busy machine: the whole 64 MB written first, "the save ended before the signal")
    left = re.search(r"\| a 64 MB checkpoint saved in place, SIGTERM once half of it is written: the checkpoint \| "
                     r"([\d,]+) bytes, torch\.load refuses it \(\w+\) \|", table)
    assert left and int(left.group(1).replace(",", "")) == 32 * 10**6, table
    assert re.search(r"\| a 64 MB checkpoint saved to checkpoint\.pt\.part, then os\.replace, SIGTERM once half of it "
                     r"is written: the checkpoint \| [\d,]+ bytes, torch\.load reads the last checkpoint \|", table), table
    assert table.count("\n| ") == 29  # a row per figure under the header
    # the timing rows' ratio, from the same run (a benchmark's table gives one; the times alone are the CPU's)
    batch, one_by_one = (float(re.search(rf"\| LatentNoise, {what} \| ([\d.]+) s \|", table).group(1))
                         for what in ("one call on 64 images", "64 calls on one image each"))
    ratio = float(re.search(r"\| LatentNoise, 64 calls on one image each against one call on 64 images \| ([\d.]+)x \|",
                            table).group(1))
    # the times are printed to 0.01 s: the ratio of the unrounded ones lies within their rounding (0.02 s against
    # 0.11 s read 5.5x where the run's own ratio was 6.7x, and a fixed tolerance failed), the ratio itself to 0.1x
    low, high = (one_by_one - 0.005) / (batch + 0.005), (one_by_one + 0.005) / max(batch - 0.005, 1e-9)
    assert low - 0.05 <= ratio <= high + 0.05, (ratio, batch, one_by_one)


def test_quickstart_figures_interrupted_save_closes_its_pipe_to_the_saver(monkeypatch):
    """Audit 344: the saving process's stdout pipe was never closed (a ResourceWarning per row under -W always). A saver
    without torch here: it says "saving" and ends, so the last checkpoint is left whole."""
    import warnings

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    qf = _load_benchmark("quickstart_figures")
    monkeypatch.setattr(qf, "SAVER", 'print("saving", flush=True)')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = qf.interrupted_save_rows(1)
    assert [value.endswith("torch.load reads the last checkpoint (the save ended before the signal)")
            for _, value in rows] == [True, True], rows
    assert not [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


def test_quickstart_figures_reads_cifar10_through_torchvision_by_default_and_the_shared_copy_by_flag(monkeypatch):
    """On a user's machine the script's defaults download CIFAR-10 (they named ../shared/data/cifar10/*.npz, which only
    the project's machines have: `python benchmarks/quickstart_figures.py` failed there); --data-root is the download
    folder, and --data/--train take the shared copy (npz:PATH)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    qf = _load_benchmark("quickstart_figures")
    monkeypatch.setattr(qf, "hub", SimpleNamespace(load=lambda name: name))

    class Loaded(Exception):
        pass

    for flags, expected in (
            ([], [("cifar10", "test", None), ("cifar10-5k", "train", None)]),
            (["--data-root", "/data/cifar"], [("cifar10", "test", "/data/cifar"), ("cifar10-5k", "train", "/data/cifar")]),
            (["--data", "npz:../shared/data/cifar10/test.npz", "--train", "npz:../shared/data/cifar10/train-5k.npz"],
             [("npz:../shared/data/cifar10/test.npz", "test", None),
              ("npz:../shared/data/cifar10/train-5k.npz", "train", None)])):
        calls = []

        def load_images(spec, split="train", data_root=None):
            calls.append((spec, split, data_root))
            if len(calls) > 2:  # the digits: what is checked has been read
                raise Loaded
            return torch.rand(4, 3, 32, 32), torch.zeros(4, dtype=torch.long), 256

        monkeypatch.setattr(qf, "load_images", load_images)
        monkeypatch.setattr(sys, "argv", ["quickstart_figures.py", *flags])
        with pytest.raises(Loaded):
            qf.main()
        assert calls[:2] == expected, flags


def test_isda_memory_times_the_official_term_by_term_loss_against_the_librarys_same_loss(smoke_runs, monkeypatch):
    """benchmarks/isda_memory.py (docs/methods/isda.md's memory figures) compares two forms of one loss: its term-by-term
    correction gives ISDALoss's value and gradients; each case runs in its own process and fills its table row."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    bench = _load_benchmark("isda_memory")
    torch.manual_seed(0)
    fc, y = nn.Linear(6, 5), torch.tensor([0, 1, 1, 3, 4, 4, 2, 0])
    losses, grads = [], []
    for form in ("library", "term by term"):
        features = torch.randn(8, 6, generator=torch.Generator().manual_seed(1), requires_grad=True)
        loss = ISDALoss(5, covariance="diagonal", feature_dim=6)
        loss.set_progress(1.0)
        for _ in range(2):  # the second step with the statistics of the first
            value = loss(features, fc, y) if form == "library" else bench.term_by_term(loss, features, fc, y)
        losses.append(value)
        grads.append(torch.autograd.grad(value, features)[0])
    assert torch.allclose(losses[0], losses[1], atol=1e-6) and torch.allclose(grads[0], grads[1], atol=1e-6)
    proc = _smoke(smoke_runs, "isda_memory.py")
    table = proc.stdout[proc.stdout.index("| statistics | correction |"):]
    rows = re.findall(r"\n\| (diagonal|full), A = (\d+) \| (matrix products|term by term) \| [\d.e-]+ GB \| "
                      r"[\d.]+ s \| \d+(?:\.\d)? (?:MiB|GiB) \| ([^|]+) \|", table)
    assert len(rows) == len(bench.CASES), table
    # each term-by-term row is set against the matrix products of the same statistics in the same run
    for covariance, a, correction, against in rows:
        paired = correction == "term by term" and ("matrix products", covariance, int(a)) in bench.CASES
        assert re.fullmatch(r"[\d.]+x, [\d.]+x" if paired else "-", against.strip()), (covariance, a, correction, against)
    assert "7 GiB address-space limit (what the process held before the step" in proc.stdout


def test_isda_memory_update_alone_reports_the_update_and_its_covariance_sized_temporary(smoke_runs):
    """Audit 240: isda.md's "about 200 MiB, of which 156 MiB is that output" (K = 100, A = 640, N = 128) had no command;
    --update times one full-covariance FeatureCovariance.update alone and names its K x A x A temporary's size."""
    proc = _smoke(smoke_runs, "isda_memory.py --update")
    assert "FeatureCovariance.update, full covariance, K = 4, A = 640, N = 8, float32" in proc.stdout
    row = re.search(r"\n\| (\d+) MB \| ([\d.]+) s \| (\d+(?:\.\d)? (?:MiB|GiB)) \| (\d+) MiB \|", proc.stdout)
    assert row, proc.stdout
    assert row.group(1) == "7" and row.group(4) == "6"  # 4 x 640 x 640 float32: 6.6 MB, 6 MiB
    assert "| statistics | correction |" not in proc.stdout  # the update alone, not the loss's steps


@pytest.mark.slow
def test_isda_precision_smoke_sets_the_replaced_merge_against_the_librarys(smoke_runs):
    """Audit 240: benchmarks/isda_precision.py, isda.md's precision figures (float32 drift of the covariance against
    float64, the merge the library replaced, a bfloat16 running mean), runs; on a class resumed at 1e6 samples the
    replaced merge drifts further than the library's (its 1 - w rounded to float32's steps)."""
    proc = _smoke(smoke_runs, "isda_precision.py")
    rows = re.findall(r"\n\| (resumed at 1,000,000 samples|from 0 samples), 50 updates \| 0 \| ([\d.e+-]+) \| "
                      r"([\d.e+-]+) \| (\d+)x \|", proc.stdout)
    assert [r[0] for r in rows] == ["resumed at 1,000,000 samples", "from 0 samples"], proc.stdout
    library, replaced = float(rows[0][1]), float(rows[0][2])
    assert library < 1e-6 < replaced  # 1.1e-07 and 1.7e-06 on this machine
    kept, actual = map(float, re.search(r"kept in bfloat16.*: ([\d.]+), where the features' mean is ([\d.]+)\.",
                                        proc.stdout).groups())
    assert 2 < kept <= actual < 4


@pytest.mark.slow
def test_compile_speedup_smoke_alternates_eager_and_compiled_calls_per_column(smoke_runs):
    """Audit 240: performance.md's compiled-codec table had no command (timed "in one process; the code that timed it
    was not recorded"); benchmarks/compile_speedup.py makes it, eager -> compiled with their ratio per cell."""
    proc = _smoke(smoke_runs, "compile_speedup.py")
    table = proc.stdout[proc.stdout.index("| batch |"):]
    assert "| batch | Glow encode + noise + decode | LatentNoise | LatentAdversarial, 1 PGD step (ResNet-18 width 4) " \
           "| decode forward + backward |" in table
    cells = re.findall(r"([\d.]+) -> ([\d.]+) ms \(([\d.]+)x\)", table)
    assert len(cells) == 4, table
    for eager, compiled, ratio in cells:
        assert float(ratio) == pytest.approx(float(eager) / float(compiled), rel=0.05, abs=0.01)
    assert "backend='eager'" in proc.stdout and "First compiled call" in proc.stdout
    assert proc.stderr.count(": done") == 0  # --no-progress


# fsdp2_attack.py refuses torch < 2.9 (test_fsdp2_attack_refuses_a_torch_without_a_cpu_fsdp2_naming_why)
_NEEDS_CPU_FSDP2 = pytest.mark.skipif(torch.__version__ < "2.9", reason="torch < 2.9: no FSDP2 on the CPU")


def test_fsdp2_attack_refuses_a_torch_without_a_cpu_fsdp2_naming_why(monkeypatch, capsys):
    """Audit 276: the script refused torch < 2.6 only; on 2.6 each rank died in fully_shard's first forward
    ('Stream' object has no attribute 'record_event'), on 2.7 and 2.8 the training step's gradient was 3.8e-2 from
    one process's on the whole batch (torch's FSDP2 on gloo, with no attack too). Mutation round 41 (audit 292): the
    whole message, and 2.9.0 taken (``<= "2.9"`` refused it)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = _load_benchmark("fsdp2_attack")
    monkeypatch.setattr(torch, "__version__", torch.torch_version.TorchVersion("2.8.0"))
    monkeypatch.setattr(sys, "argv", ["fsdp2_attack.py", "--smoke"])
    with pytest.raises(SystemExit) as e:
        module.main()
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "fsdp2_attack.py: error: FSDP2 on the CPU (torch.distributed.fsdp.fully_shard) needs torch >= 2.9, this is "
        "2.8.0: torch 2.6's fails (\"'Stream' object has no attribute 'record_event'\"), torch 2.7 and 2.8 give other "
        "gradients than one process on the whole batch")

    class Spawned(Exception):
        pass

    def spawn(*args, **kwargs):
        raise Spawned

    monkeypatch.setattr(module, "mp", SimpleNamespace(spawn=spawn))
    monkeypatch.setattr(torch, "__version__", torch.torch_version.TorchVersion("2.9.0"))
    with pytest.raises(Spawned):  # the first torch it takes: on to the two ranks
        module.main()


@pytest.mark.slow
@_NEEDS_CPU_FSDP2
def test_fsdp2_attack_smoke_gives_the_unwrapped_models_images_and_leaves_no_grad(tmp_path):
    """Audit 240: latent_adversarial.md's FSDP2 figures (the attack's images against the unwrapped model's, no .grad
    left, a training step's gradient after it) had no command; benchmarks/fsdp2_attack.py runs two gloo ranks."""
    proc = _run([str(BENCHMARKS / "fsdp2_attack.py"), "--smoke"], tmp_path)
    images, grads, step = (re.search(rf"\| {what} \| ([\d.e+-]+) \|", proc.stdout).group(1)
                           for what in ("max abs difference of the attack's images, sharded vs unwrapped model",
                                        r"sharded parameters with a \.grad after the attack",
                                        "max abs difference of a training step's gradient after the attack, sharded vs "
                                        "one process on the whole batch"))
    assert float(images) < 1e-6 and int(grads) == 0 and float(step) < 1e-5, proc.stdout
    assert "on 32 random 8x8 images (smoke), 16 per rank" in proc.stdout  # audit 277: it said "32 digits"


@pytest.mark.slow
@_NEEDS_CPU_FSDP2
def test_fsdp2_attack_no_sync_smoke_tells_the_attacks_buffers_from_rounding(tmp_path):
    """Audit 252: reliability.md's gradient accumulation figures (DDP's no_sync with BatchNorm buffers broadcast and
    not, FSDP2's reduce-scatter in the last micro-batch's attack) had no command; fsdp2_attack.py --no-sync measures
    them: only the broadcast buffers, read by the attack, move the accumulated gradients past rounding."""
    proc = _run([str(BENCHMARKS / "fsdp2_attack.py"), "--smoke", "--no-sync", "--batch", "8", "--steps", "1"],
                tmp_path)
    header, rows = _markdown_table(proc.stdout)
    assert header == ["figure", "largest over the ranks and steps"] and len(rows) == 5, proc.stdout
    broadcast, own, no_attack, fsdp2 = (float(value) for _, value in rows[:4])
    assert broadcast > 1e-4 and max(own, no_attack, fsdp2) < 1e-6, proc.stdout
    assert rows[4][1] == "6 / 0", proc.stdout  # every sharded parameter's .grad, written early; none the other way
    assert "on 8 random 8x8 images (smoke) each" in proc.stdout  # audit 277: it said "8 digits each"


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux's per-phase peak memory")
def test_train_memory_measures_each_phase_of_a_run_on_a_machine_of_the_check_s_estimate(tmp_path):
    """benchmarks/train_memory.py (docs/training.md's memory-check figures), one case: the machine's memory set to the
    check's estimate for the batch (which counts what the process holds, above the old estimate), each phase's peak."""
    proc = _run([str(BENCHMARKS / "train_memory.py"), "--case", "flow", "1", "8", "8", "16"], tmp_path)
    r = json.loads(proc.stdout.splitlines()[-1])
    assert {"check, build", "ActNorm init", "step 1", "step 2", "state save", "final files"} <= set(r["peaks"])
    assert r["need"] > r["before"] + r["old_estimate"]


def test_isda_memory_reports_out_of_memory_only_for_a_step_that_ran_out(tmp_path):
    """RLIMIT_AS counts the whole process's address space (torch's libraries and threads: ~3 GiB before any tensor):
    a case out of memory in its step says how much of the limit its step had; one that could not even be set up is an
    error, not a row saying "out of memory" (it named the step's form as the culprit)."""
    held = int(subprocess.run([sys.executable, "-c", "import torch; torch.set_num_threads(1); "
                               "print(open('/proc/self/status').read().split('VmSize:')[1].split()[0])"],
                              capture_output=True, text=True, check=True).stdout) * 1024
    # torch and half a GiB: with 10^6 classes the first case's classifier and diagonal statistics (10^6 x 512, 2 GB
    # each) cannot fit, so the run ends at its first case (at 1,000 classes the fifth, after four fresh processes)
    limit = f"{(held + 2**29) / 2**30:.2f}"
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "isda_memory.py"), "--batch", "8", "--classes", "1000000",
                           "--memory-limit", limit], cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT_S,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and "| diagonal, A = 512 |" not in proc.stdout and "out of memory" not in proc.stdout
    # audit 396: the limit named in one line (it was a RuntimeError's traceback holding the case's own traceback)
    assert proc.stderr.splitlines()[-1] == (
        f"isda_memory.py: error: --memory-limit {float(limit):g}: case 1 of 5 (diagonal, A = 512) ran out of memory "
        f"before its step, allocating its inputs and statistics; give a larger limit (what the process holds before "
        f"the step counts against it)") and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_codec_quality_scores_reconstructions_and_counts_either_source_class_of_a_mix(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    cq = _load_benchmark("codec_quality")
    y = torch.arange(20) % 10
    # a mix named as the class of its second source counts as naming a source
    monkeypatch.setattr(cq, "predict_proba", lambda model, xb: torch.eye(10)[y.roll(1, 0)])
    codec = SimpleNamespace(encode_flat=lambda xb: xb.flatten(1), decode_flat=lambda z: z.view(-1, 1, 8, 8),
                            reconstruct=lambda xb: torch.zeros_like(xb), kind="vae",
                            check_images=lambda xb, what: None)
    x = torch.rand(20, 1, 8, 8) + 0.1
    assert cq.mixes_name_a_source(codec, None, x, y) == 1.0
    # main: the classifier is scored on the codec's reconstructions (all black here: class 1), not the originals
    monkeypatch.setattr(cq, "predict_proba", lambda model, xb: torch.eye(10)[(xb.flatten(1).sum(1) == 0).long()])
    monkeypatch.setattr(cq, "load_images", lambda spec, split: (x, torch.zeros(20, dtype=torch.long), None))
    monkeypatch.setattr(cq, "fit_classifier", lambda *a, **k: 1.0)
    monkeypatch.setattr(cq, "hub", SimpleNamespace(load=lambda spec: codec))
    monkeypatch.setattr(cq, "eval_codec", lambda codec, xb: {"mse": 0.0051437})
    monkeypatch.setattr(cq, "save_rows", lambda *a, **k: None)
    monkeypatch.setattr(sys, "argv", ["codec_quality.py", "--codec", "stub", "--train", "t", "--test", "t", "--out",
                                      str(tmp_path)])
    cq.main()
    q = json.loads((tmp_path / "stub-quality.json").read_text())
    assert q["classifier_clean_accuracy"] == 1.0 and q["classifier_on_reconstructions"] == 0.0
    assert q["mse"] == 0.005144  # 4 significant digits: rounded to 4 decimals it was 0.0051
    assert q["settings"] == {"codec": "stub", "train": "t", "test": "t", "test_images": 20, "epochs": 30,
                             "width": 32, "classifier": None}  # what the figures were measured with
    # no flow scored: no LatentNoise columns (audit 149: three of them, "-" in every row)
    table = capsys.readouterr().out.splitlines()[-3:]
    assert table == ["| codec | test MSE or bits/dim | classifier on reconstructions | on 50/50 mixes: either class |",
                     "|---|---|---|---|", "| stub | 0.00514 | 0.0% | 100.0% |"]


def test_codec_quality_mixes_interpolates_and_reports_a_flow_in_its_table_and_pictures(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    cq = _load_benchmark("codec_quality")
    codec = SimpleNamespace(encode_flat=lambda xb: xb.flatten(1), decode_flat=lambda z: z.view(-1, 1, 8, 8),
                            reconstruct=lambda xb: torch.zeros_like(xb), kind="glow",
                            check_images=lambda xb, what: None)
    x, y = torch.rand(20, 1, 8, 8) * 0.5 + 0.25, torch.zeros(20, dtype=torch.long)
    seen = []
    monkeypatch.setattr(cq, "predict_proba", lambda model, xb: seen.append(xb) or torch.eye(10)[
        (xb.flatten(1).sum(1) == 0).long()])  # class 1 for black images, else 0
    cq.mixes_name_a_source(codec, None, x, y)
    assert torch.allclose(seen[-1], 0.5 * (x + x.roll(1, 0)))  # the decoded 50/50 mixes are what is classified
    rows = cq.interpolations(codec, x[:2], x[2:4], steps=5)
    assert list(rows) == ["interpolation 1", "interpolation 2"] and rows["interpolation 2"].shape == (5, 1, 8, 8)
    assert torch.allclose(rows["interpolation 2"][0], x[1]) and torch.allclose(rows["interpolation 2"][-1], x[3])
    assert torch.allclose(rows["interpolation 2"][1], 0.75 * x[1] + 0.25 * x[3])
    # main, a flow: scored on LatentNoise outputs (here every pixel 0.25 darker), reconstructions pictured
    pictures = {}
    monkeypatch.setattr(cq, "noised", lambda codec, xb, yb, eps: xb - 0.25)
    monkeypatch.setattr(cq, "load_images", lambda spec, split: (x, y, None))
    monkeypatch.setattr(cq, "fit_classifier", lambda *a, **k: 1.0)
    monkeypatch.setattr(cq, "hub", SimpleNamespace(load=lambda spec: codec))
    monkeypatch.setattr(cq, "eval_codec", lambda codec, xb: {"bits_per_dim": 3.25})
    monkeypatch.setattr(cq, "save_rows", lambda rows, path: pictures.update(rows))
    monkeypatch.setattr(sys, "argv", ["codec_quality.py", "--codec", "flow", "--train", "t", "--test", "t",
                                      "--noise-eps", "5", "--out", str(tmp_path)])
    cq.main()
    q = json.loads((tmp_path / "flow-quality.json").read_text())
    assert q["classifier_on_latent_noise"] == {"5": {"accuracy": 1.0, "mean_abs_change": 0.25}}
    assert torch.equal(pictures["original"], x[:10]) and torch.equal(pictures["reconstruction"], torch.zeros(10, 1, 8, 8))
    # the classifier names every original right and every (black) reconstruction wrong: 100% clean, 0% on those
    assert "| flow | 3.250 bits/dim | 0.0% | 100.0% | 100.0% |" in capsys.readouterr().out


def test_the_clean_classifier_is_the_digits_cnn_for_digits_and_a_resnet_18_of_the_width_given_else():
    """A CIFAR ResNet-18 also runs on 1x8x8 digits (its 3-channel normalisation broadcasts), so the wrong model would
    go unnoticed by the scripts."""
    from latent_transforms.models import CifarResNet18

    models = _load_benchmark("models")
    assert not isinstance(models.clean_classifier_model((1, 8, 8), 8), CifarResNet18)
    resnet = models.clean_classifier_model((3, 32, 32), 8)
    assert isinstance(resnet, CifarResNet18) and resnet.stem[0].out_channels == 8


def test_codec_quality_keeps_its_clean_classifier_for_later_runs(tmp_path, monkeypatch):
    """Scores of candidates trained at different times came from different classifiers (one per run); with
    --classifier the first run writes it and later runs load it instead of training, refusing other settings."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    cq = _load_benchmark("codec_quality")
    fits = []

    def fit(model, *args, **kwargs):
        fits.append(1)
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(0.25)

    monkeypatch.setattr(cq, "fit_classifier", fit)
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8)
    args = argparse.Namespace(train="digits", width=32, epochs=3, classifier=str(tmp_path / "clf.safetensors"))
    first = cq.clean_classifier(args, x, y)
    second = cq.clean_classifier(args, x, y)
    assert len(fits) == 1 and (tmp_path / "clf.safetensors").is_file()
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert all(torch.all(p == 0.25) for p in second.parameters())  # loaded, not a fresh init
    # the digits CNN for the digits' shape, and the file holds the settings asked for, the defaults left out (mutation
    # round, audit 401: a ResNet-18 of the shape's last two sizes, and seed and crops recorded always, passed)
    assert type(first) is type(_load_benchmark("models").clean_classifier_model((1, 8, 8), 32))
    assert latent_transforms.hub.read_safetensors(tmp_path / "clf.safetensors")[0] == {"train": "digits", "width": "32",
                                                                                      "epochs": "3"}
    with pytest.raises(SystemExit, match="was trained with .*'epochs': '3'.* this run asks for .*'epochs': '4'"):
        cq.clean_classifier(argparse.Namespace(**{**vars(args), "epochs": 4}), x, y)
    cq.clean_classifier(argparse.Namespace(**{**vars(args), "classifier": None}), x, y)
    assert len(fits) == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["clf.safetensors"]
    # a file that is no safetensors, or another program's, is named as such (it was a traceback / a dict dump)
    (tmp_path / "junk.safetensors").write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"^--classifier .*junk.safetensors: not a readable safetensors file"):
        cq.clean_classifier(argparse.Namespace(**{**vars(args), "classifier": str(tmp_path / "junk.safetensors")}),
                            x, y)
    codec_file = Path(latent_transforms.__file__).parent / "checkpoints" / "glow-digits.safetensors"
    with pytest.raises(ValueError, match=r"a safetensors file but not a classifier written by this script"):
        cq.clean_classifier(argparse.Namespace(**{**vars(args), "classifier": str(codec_file)}), x, y)


def test_codec_quality_classifier_file_records_a_seed_and_crops_and_its_folder_is_made_first(tmp_path, monkeypatch):
    """vae_class_guidance.py's guide is this classifier with seed 1 and crops: a file of the scorer (seed 0) is not
    taken for it; a missing folder is made before training (it failed after minutes of it)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    cq = _load_benchmark("codec_quality")
    seen = []
    monkeypatch.setattr(cq, "fit_classifier", lambda model, *a, **k: seen.append((k["seed"], k["pixel_augment"])))
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8)
    args = argparse.Namespace(train="digits", width=32, epochs=3, classifier=str(tmp_path / "new" / "clf.safetensors"))
    cq.clean_classifier(args, x, y)
    assert seen == [(0, None)] and (tmp_path / "new" / "clf.safetensors").is_file()
    with pytest.raises(SystemExit, match=r"^--guide .* this run asks for .*'seed': '1', 'crop_flip': 'True'"):
        cq.clean_classifier(args, x, y, seed=1, crop_flip=True, flag="--guide")
    args.classifier = None
    cq.clean_classifier(args, x, y, seed=1, crop_flip=True)
    assert seen[-1][0] == 1 and seen[-1][1](x).shape == x.shape
    # "~/clf.safetensors" made a folder named "~" in the current one (and read no file of the home folder)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    cq.clean_classifier(argparse.Namespace(**{**vars(args), "classifier": "~/c/clf.safetensors"}), x, y)
    assert (tmp_path / "home" / "c" / "clf.safetensors").is_file() and not (tmp_path / "~").exists()


def test_codec_quality_crops_are_recorded_alone_and_shift_and_its_latent_noise_is_seeded(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    cq = _load_benchmark("codec_quality")
    from conftest import tiny_glow
    from latent_transforms import hub

    augments = []
    monkeypatch.setattr(cq, "fit_classifier", lambda model, *a, **k: augments.append(k["pixel_augment"]))
    x, y = torch.rand(16, 1, 8, 8) + 1, torch.arange(16) % 10  # every pixel > 0: a shifted-in zero shows
    args = argparse.Namespace(train="digits", width=32, epochs=3, classifier=str(tmp_path / "clf.safetensors"))
    cq.clean_classifier(args, x, y, crop_flip=True)  # seed 0, the default, with crops: both recorded
    assert hub.read_safetensors(tmp_path / "clf.safetensors")[0] == {
        "train": "digits", "width": "32", "epochs": "3", "seed": "0", "crop_flip": "True"}
    out = augments[0](x)
    assert out.shape == x.shape and (out == 0).any()  # shifted with zero padding, not only flipped
    glow = tiny_glow()
    a, b = cq.noised(glow, x[:4] - 1, y[:4], 2.0), cq.noised(glow, x[:4] - 1, y[:4], 2.0)
    assert torch.equal(a, b) and not torch.equal(a, x[:4] - 1)


def test_vae_class_guidance_term_is_zero_on_the_input_and_grows_with_the_change(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    vg = _load_benchmark("vae_class_guidance")
    from latent_transforms.models import CifarResNet18

    torch.manual_seed(0)
    guide = CifarResNet18(width=4).eval().requires_grad_(False)
    x = torch.rand(4, 3, 32, 32)
    for term in ("logits", "features"):
        assert float(vg.guide_term(guide, term, x, x.clone())) == pytest.approx(0.0, abs=1e-6), term
        small, large = [(x + d * torch.randn_like(x)).clamp(0, 1) for d in (0.05, 0.5)]
        recon = large.clone().requires_grad_(True)
        value = vg.guide_term(guide, term, x, recon)
        assert 0 < float(vg.guide_term(guide, term, x, small)) < float(value.detach()), term
        value.backward()
        assert recon.grad.abs().sum() > 0, term  # the term trains the decoder through the reconstruction


def test_vae_class_guidance_terms_are_the_documented_formulas(monkeypatch):
    """logits: KL(guide(x) || guide(recon)), batch mean, in nats; features: per stage (the stem and the end of each
    of the 4 stages), the squared error relative to the stage output's mean square on x, summed."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    vg = _load_benchmark("vae_class_guidance")
    from latent_transforms.models import CifarResNet18

    torch.manual_seed(0)
    guide = CifarResNet18(width=4).eval().requires_grad_(False)
    x, recon = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    outputs = vg.stage_outputs(guide, x)
    assert [tuple(o.shape[1:]) for o in outputs] == [(4, 32, 32), (4, 32, 32), (8, 16, 16), (16, 8, 8), (32, 4, 4)]
    assert torch.allclose(outputs[-1], guide.layers(guide.stem((x - guide.mean) / guide.std)))  # a stage's end
    assert torch.allclose(outputs[1], guide.layers[:2](outputs[0]))
    p, q = torch.log_softmax(guide(x), 1), torch.log_softmax(guide(recon), 1)
    kl = (p.exp() * (p - q)).sum(1).mean()
    assert float(vg.guide_term(guide, "logits", x, recon)) == pytest.approx(float(kl), rel=1e-5)
    relative = sum(((r - t) ** 2).mean() / (t ** 2).mean() for r, t in zip(vg.stage_outputs(guide, recon), outputs))
    assert float(vg.guide_term(guide, "features", x, recon)) == pytest.approx(float(relative), rel=1e-5)
    assert float(vg.guide_term(guide, "features", x, recon)) != pytest.approx(
        float(sum(((r - t) ** 2).mean() for r, t in zip(vg.stage_outputs(guide, recon), outputs))), rel=1e-2)


def test_vae_class_guidance_weighs_the_term_so_its_decoder_gradient_is_balance_times_the_elbos(tmp_path,
                                                                                              monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    vg = _load_benchmark("vae_class_guidance")
    from conftest import tiny_vae

    terms = []

    def guide_term(guide, term, x, recon):  # a stand-in term with a graph to recon
        terms.append(recon.sum() * 0 + 1)
        return terms[-1]

    def gradient_norm(loss, params):  # the ELBO's gradient on the decoder 2, the term's 8
        assert {id(p) for p in params} == {id(p) for p in vae.decoder.parameters()}, "not the decoder's gradient"
        return torch.tensor(8.0 if loss is terms[0] else 2.0)

    vae = tiny_vae().unfrozen_copy()
    monkeypatch.setattr(vg, "hub", SimpleNamespace(load=lambda name: vae, save_checkpoint=lambda *a, **k: "0" * 64))
    monkeypatch.setattr(vg, "load_images", lambda spec, split: (torch.rand(8, 1, 8, 8), torch.arange(8), 17))
    monkeypatch.setattr(vg, "clean_classifier", lambda *a, **k: torch.nn.Identity())
    monkeypatch.setattr(vg, "guide_term", guide_term)
    monkeypatch.setattr(vg, "gradient_norm", gradient_norm)
    monkeypatch.setattr(sys, "argv", ["vae_class_guidance.py", "--codec", "c", "--train", "t", "--balance", "3",
                                      "--steps", "2", "--batch-size", "4", "--no-progress", "--out",
                                      str(tmp_path / "v.safetensors")])
    vg.main()
    assert len(terms) == 2 and json.loads((tmp_path / "v.json").read_text())["weight"] == 3 * 2 / 8


@pytest.mark.parametrize("kind, shape, term, message", [
    ("glow", (1, 8, 8), "logits", "--codec c is a glow; this study fine-tunes VAEs"),
    ("vae", (3, 32, 32), "logits", r"--train images are \(1, 8, 8\); c codes \(3, 32, 32\)"),
    # audit 149: refused only once the guide had trained (the digits CNN has no stages)
    ("vae", (1, 8, 8), "features", "^--term features needs the CIFAR ResNet-18 guide"),
])
def test_vae_class_guidance_refuses_a_codec_it_cannot_fine_tune_before_the_guide_trains(tmp_path, monkeypatch, kind,
                                                                                         shape, term, message):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    vg = _load_benchmark("vae_class_guidance")
    codec = SimpleNamespace(kind=kind, image_shape=shape)
    monkeypatch.setattr(vg, "hub", SimpleNamespace(load=lambda name: SimpleNamespace(float=lambda: codec)))
    monkeypatch.setattr(vg, "load_images", lambda spec, split: (torch.rand(4, 1, 8, 8), torch.arange(4), 17))
    monkeypatch.setattr(vg, "clean_classifier", lambda *a, **k: pytest.fail("the guide trained before the codec was "
                                                                            "checked"))
    monkeypatch.setattr(sys, "argv", ["vae_class_guidance.py", "--codec", "c", "--train", "t", "--term", term,
                                      "--out", str(tmp_path / "v.safetensors")])
    with pytest.raises(SystemExit, match=message):
        vg.main()


def test_vae_class_guidance_refuses_an_out_without_the_checkpoint_suffix_before_loading_anything(tmp_path,
                                                                                                 monkeypatch):
    """Audit 145: --out runs/guided/b0 failed in hub.save_checkpoint, after the whole fine-tune."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    vg = _load_benchmark("vae_class_guidance")
    monkeypatch.setattr(vg, "hub", SimpleNamespace(load=lambda name: pytest.fail("the codec was loaded")))
    monkeypatch.setattr(sys, "argv", ["vae_class_guidance.py", "--codec", "c", "--train", "t", "--out",
                                      str(tmp_path / "b0")])
    with pytest.raises(ValueError, match=r"b0: the checkpoint's file name must end in \.safetensors$"):
        vg.main()


def test_vae_class_guidance_fine_tunes_a_vae_and_its_control_runs_without_a_guide(tmp_path):
    out = tmp_path / "guided" / "vae.safetensors"
    common = ["--codec", "vae-digits", "--train", "digits", "--steps", "3", "--no-progress", "--threads", "1"]
    proc = _run([str(BENCHMARKS / "vae_class_guidance.py"), *common, "--guide-epochs", "1", "--guide",
                 str(tmp_path / "guide.safetensors"), "--out", str(out)], tmp_path)
    assert "clean classifier" not in proc.stderr, "--no-progress left the guide's training bar on"
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["weight"] > 0 and [h["step"] for h in record["history"]] == [0]
    assert record["history"][0]["guide_term"] >= 0 and (tmp_path / "guide.safetensors").is_file()
    from latent_transforms import hub

    tuned, shipped = hub.load(out), hub.load("vae-digits")
    assert tuned.config == shipped.config and hub.read_safetensors(out)[1]["decoder.0.weight"].dtype == torch.float16
    assert any(not torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), shipped.state_dict().values()))
    control = tmp_path / "control.safetensors"
    proc = _run([str(BENCHMARKS / "vae_class_guidance.py"), *common, "--balance", "0", "--steps", "1", "--out",
                 "~/control.safetensors"], tmp_path, home=True)
    assert json.loads(control.with_suffix(".json").read_text())["weight"] == 0.0
    assert ": 1 step in " in proc.stderr, proc.stderr[-2000:]  # audit 407: "1 steps"
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".safetensors") == ["control.safetensors",
                                                                                       "guide.safetensors"]


def test_vae_class_guidance_bar_in_a_log_shows_its_terms_without_writing_each_time(tmp_path):
    # the terms shown every 50 steps refreshed the bar: a log got a state each time, past the 30 s throttle
    proc = _run([str(BENCHMARKS / "vae_class_guidance.py"), "--codec", "vae-digits", "--train", "digits", "--steps",
                 "151", "--batch-size", "8", "--threads", "1", "--balance", "0", "--out",
                 str(tmp_path / "v.safetensors")], tmp_path)
    states = [s for s in re.split(r"[\r\n]", proc.stderr) if s.startswith("fine-tune")]
    assert 1 <= len(states) <= 3 and "151/151" in states[-1]


def test_sweep_report_seconds_per_epoch_is_the_mean_over_seeds(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sweep = _load_benchmark("sweep_report")
    rows = {"baseline": {"0": {"accuracy": 0.6, "seconds_per_epoch": 10.0},
                         "1": {"accuracy": 0.62, "seconds_per_epoch": 20.0}}}
    shared = {"eval_on": "val", "width": 16, "epochs": 12, "n_train": 4500, "n_eval": 500, "precision": "fp32"}
    assert "| baseline | 60.0% | 62.0% | 61.0% | +0.0 | 15.00 |" in sweep.format_table(rows, shared)


def test_sweep_report_table_orders_seeds_as_numbers_and_means_every_seed(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sweep = _load_benchmark("sweep_report")
    run = lambda accuracy: {"accuracy": accuracy, "seconds_per_epoch": 10.0}  # noqa: E731
    rows = {"latent-noise": {"10": run(0.95), "0": run(0.5), "2": run(0.5)},
            "baseline": {"0": run(0.6), "2": run(0.6), "10": run(0.6)}}
    shared = {"eval_on": "val", "width": 16, "epochs": 12, "n_train": 4500, "n_eval": 500, "precision": "fp32"}
    table = sweep.format_table(rows, shared)
    assert table.startswith("val accuracy; width-16 ResNet-18, 12 epochs, 4500 training images, 500 evaluated, fp32.")
    assert "| setting | seed 0 | seed 2 | seed 10 | mean |" in table  # seed 10 last, not between 0 and 2
    # the mean of the three seeds (not their median, 50.0%); the paired differences -10, -10, +35: +5.0 ± 26.0
    assert "| latent-noise | 50.0% | 50.0% | 95.0% | 65.0% | +5.0 ± 26.0 | 10.00 |" in table


def test_sweep_report_of_smoke_runs_says_so_as_their_own_reports_do(monkeypatch):
    """Audit 277: `sweep_report.py` over `accuracy.py --smoke` runs (calibration.md's sweep commands with --smoke, a
    check of the commands in seconds) printed a table like a real sweep's; each run's results.md said SMOKE RUN."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sweep = _load_benchmark("sweep_report")
    rows = {"baseline": {"0": {"accuracy": 0.1, "seconds_per_epoch": 2.0}}}
    shared = {"eval_on": "val", "width": 16, "epochs": 12, "n_train": 180, "n_eval": 20, "precision": "fp32"}
    for smoke in (True, False):
        table = sweep.format_table(rows, {**shared, "smoke": smoke})
        assert table.startswith("**SMOKE RUN**: ") is smoke, table
        assert "val accuracy; width-16 ResNet-18, 12 epochs, 180 training images, 20 evaluated, fp32." in table


def test_sweep_report_checks_its_out_folder_before_printing_anything(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sweep = _load_benchmark("sweep_report")
    results = _fake_results(tmp_path / "b0", "baseline", 0, 0.6)
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(ValueError, match=r"^--out's folder '.*taken' is a file; give a folder \(it is created if "
                                         r"missing\)$"):
        sweep.main([str(results), "--out", str(tmp_path / "taken" / "sweep.md")])
    assert capsys.readouterr().out == ""
    # mutation round 39 (audit 282): the table goes where the folder checked is, '~' expanded, not into ./~
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    table = sweep.main([str(results), "--out", "~/sweep.md"])
    assert (tmp_path / "home" / "sweep.md").read_text() == table + "\n" and not (tmp_path / "~").exists()


def test_accuracy_merge_refuses_a_seed_twice_and_an_arm_made_with_two_settings(tmp_path):
    """The --merge refusals without running the benchmark (the smoke test checks them end to end, in minutes)."""
    acc = _load_accuracy_module()

    def write(name: str, runs: dict, *flags: str) -> str:
        fp = acc.make_fingerprint(acc.parse_args(["--smoke", *flags]), "0" * 64)
        (tmp_path / name).write_text(json.dumps({"fingerprint": fp, "config": {"device_name": "cpu"}, "runs": runs}))
        return str(tmp_path / name)

    a = write("a.json", {"baseline": {"0": {"accuracy": 0.5}}, "isda": {"0": {"accuracy": 0.6}}})
    b = write("b.json", {"isda": {"0": {"accuracy": 0.7}}})
    with pytest.raises(SystemExit, match="isda seed 0 is in more than one file"):
        acc.merge_results([a, b], list(acc.ARMS))
    assert acc.merge_results([a, b], ["baseline"])[2] == {"baseline": {"0": {"accuracy": 0.5}}}
    c = write("c.json", {"isda": {"1": {"accuracy": 0.7}}}, "--isda-lambda0", "0.1")
    with pytest.raises(SystemExit, match=f"the isda runs of {re.escape(c)} were made with isda_lambda0=0.1"):
        acc.merge_results([a, c], list(acc.ARMS))
    with pytest.raises(SystemExit, match="^--merge: none of the files has runs of mixup, varmixup$"):
        acc.merge_results([a, b], ["mixup", "varmixup"])
    # a codec arm's runs made with two checkpoints (a run of no codec record, older, is taken as it is)
    glow, other = ({"name": "glow-cifar10", "sha256": h * 32} for h in ("ab", "cd"))
    d = write("d.json", {"latent-noise": {"0": {"accuracy": 0.5, "codec": glow}, "1": {"accuracy": 0.5}}})
    e = write("e.json", {"latent-noise": {"2": {"accuracy": 0.5, "codec": other}}})
    assert acc.merge_results([d], list(acc.ARMS))[1]["codecs"] == {"glow": glow}  # recorded in the merged config
    with pytest.raises(SystemExit, match=r"^--merge: latent-noise seed 2 was trained with the glow glow-cifar10 "
                                         r"\(sha256 cdcdcdcdcdcd\), not glow-cifar10 \(sha256 abababababab\)"):
        acc.merge_results([d, e], list(acc.ARMS))


def test_accuracy_merge_never_replaces_runs_made_in_its_out_folder_and_names_unreadable_files(tmp_path, monkeypatch):
    # --merge overwrote an existing report, also one of its own inputs; an empty JSON gave "error: fingerprint", a
    # garbage one a JSONDecodeError naming no file
    acc = _load_accuracy_module()
    fp = acc.make_fingerprint(acc.parse_args(["--smoke"]), "0" * 64)
    own = tmp_path / "own"
    own.mkdir()
    (own / "results.json").write_text(json.dumps({"fingerprint": fp, "config": {"device_name": "cpu"},
                                                   "runs": {"baseline": {"0": {"accuracy": 0.5}}}}))
    before = (own / "results.json").read_text()
    for inputs in ([str(own / "results.json")], [str(tmp_path / "other.json")]):
        with pytest.raises(ValueError, match="overwrite .* one of the files merged|holds runs made there"):
            acc.main(["--merge", *inputs, "--out", str(own)])
    monkeypatch.setenv("HOME", str(tmp_path))  # mutation round 39 (audit 282): --out's '~' expanded as checked
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="overwrite .* one of the files merged"):
        acc.main(["--merge", str(own / "results.json"), "--out", "~/own"])
    assert not (tmp_path / "~").exists()
    assert (own / "results.json").read_text() == before
    (tmp_path / "empty.json").write_text("{}")
    (tmp_path / "garbage.json").write_text("not json")
    with pytest.raises(SystemExit, match=r"--merge: .*empty.json is not a results.json of accuracy.py"):
        acc.merge_results([str(tmp_path / "empty.json")], list(acc.ARMS))
    with pytest.raises(SystemExit, match=r"--merge: cannot read .*garbage.json as a results.json"):
        acc.merge_results([str(tmp_path / "garbage.json")], list(acc.ARMS))


def test_accuracy_resume_into_a_merged_report_is_refused(tmp_path):
    # runs added to a merged report (runs/accuracy, where gpu_session.sh's merge goes) were in no shard: the next
    # session's merge dropped them
    acc = _load_accuracy_module()
    out = tmp_path / "acc"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"fingerprint": {}, "config": {"merged_from": ["shard-0/results.json"]},
                                                  "runs": {}}))
    with pytest.raises(ValueError, match="is a merged report"):
        acc.main(["--smoke", "--arms", "baseline", "--resume", "--out", str(out)])


@pytest.mark.parametrize("argv", [["--arms", "baseline", "baseline"], ["--seeds", "0", "1", "0"],
                                  ["--latent-levels", "0", "0"]])  # audit 144: [0, 0] ran as [0], resumed as another
def test_accuracy_refuses_an_arm_or_seed_named_twice(argv, capsys):
    # each ran twice (runs: 4/4 for 2 runs); under --shard the copies could land in two shards and the merge refused
    with pytest.raises(SystemExit):
        _load_accuracy_module().parse_args(["--smoke", *argv])
    assert "more than once" in capsys.readouterr().err


@pytest.mark.parametrize("argv, expected", [
    (["--smoke"], {"epochs": 2, "seeds": [0], "width": 4, "batch_size": 32, "threads": 1}),
    (["--smoke", "--epochs", "3", "--seeds", "1", "2", "--width", "8", "--threads", "2"],  # given: they win
     {"epochs": 3, "seeds": [1, 2], "width": 8, "batch_size": 32, "threads": 2}),
    ([], {"epochs": 40, "seeds": [0, 1, 2], "width": 64, "batch_size": 128, "threads": None}),
])
def test_accuracy_smoke_settings_are_defaults_that_given_options_override(argv, expected):
    args = _load_accuracy_module().parse_args(argv)
    assert {k: getattr(args, k) for k in expected} == expected


def test_accuracy_precision_defaults_to_bf16_on_cuda_only_and_ten_images_are_a_class_balanced_subset():
    acc = _load_accuracy_module()
    assert acc.parse_args(["--device", "cpu"]).precision == "fp32"  # it is recorded in the fingerprint: never None
    assert acc.parse_args(["--device", "cuda:1"]).precision == "bf16"
    assert acc.parse_args(["--device", "cuda", "--precision", "fp32"]).precision == "fp32"  # given: it wins
    assert acc.parse_args(["--train-size", "10"]).train_size == 10  # one image of every class


@pytest.mark.parametrize("argv, message", [
    (["--train-size", "0"], "argument --train-size: must be an int >= 1, got 0"),  # was: the whole training set
    (["--time-budget", "-5"], "argument --time-budget: must be a finite number in (0, inf), got -5.0"),
    (["--seeds", "0", "-1"], "argument --seeds: must be an int in [0, 18446744073709551615], got -1"),
    (["--smoke", "--batch-size", "0"], "argument --batch-size: must be an int >= 1, got 0"),
])
def test_accuracy_bad_numbers_name_the_option(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        _load_accuracy_module().parse_args(argv)
    assert e.value.code == 2 and capsys.readouterr().err.splitlines()[-1].endswith(f"error: {message}")


@pytest.mark.parametrize("flags, message", [
    (["--adv-eps", "-1"], "the latent-adversarial arm cannot be built with these settings: eps must be"),
    (["--ra-magnitude", "31"], "the randaugment arm cannot be built with these settings: RandAugment magnitude "
                               "must be in [0, 30], got 31"),
    (["--isda-lambda0", "nan"], "the isda arm cannot be built with these settings: lambda0 must be"),
])
def test_accuracy_bad_method_setting_fails_before_the_first_run(tmp_path, monkeypatch, flags, message):
    """A setting an arm's transform refuses stops the call at once, not after the runs of the arms before it."""
    acc = _load_accuracy_module()
    monkeypatch.setattr(acc, "run_one", lambda *a, **k: pytest.fail("a run started"))
    arms = ["baseline", "randaugment", "latent-adversarial", "isda"]
    with pytest.raises(SystemExit) as e:
        acc.main(["--smoke", "--no-progress", "--no-corruptions", "--arms", *arms, "--out", str(tmp_path / "a"),
                  *flags])
    assert str(e.value).startswith(message)
    assert not (tmp_path / "a" / "results.json").exists()


def test_codec_quality_and_calibrate_eps_refuse_bad_settings_before_training(tmp_path, monkeypatch, capsys):
    """An unknown codec or a negative eps was found only after the clean classifier's training (minutes)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    cq, cal = _load_benchmark("codec_quality"), _load_benchmark("calibrate_eps")
    for module in (cq, cal):
        monkeypatch.setattr(module, "fit_classifier", lambda *a, **k: pytest.fail("the classifier trained"))
    monkeypatch.setattr(sys, "argv", ["codec_quality.py", "--codec", "no-such-codec", "--train", "digits", "--test",
                                      "digits", "--out", str(tmp_path)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:  # as the command ends: one line, the KeyError's message unquoted
        cq.run_script(cq.main)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("codec_quality.py: error: unknown checkpoint 'no-such-codec' (") \
        and err.count("\n") == 1, err
    for script, module in (("codec_quality.py", cq), ("calibrate_eps.py", cal)):
        monkeypatch.setattr(sys, "argv", [script, "--codec", "glow-digits", "--noise-eps", "-1", "--out", str(tmp_path),
                                          *(["--train", "digits", "--test", "digits"] if module is cq else
                                            ["--data", "digits"])])
        with pytest.raises(SystemExit):
            module.main()
        assert "argument --noise-eps: must be a finite number in [0, inf), got -1.0" in capsys.readouterr().err


def test_output_stem_of_a_bare_file_name_takes_the_current_folders_name(tmp_path, monkeypatch):
    """Audit 145: ``calibrate_eps.py --codec FIRST.safetensors`` run in benchmarks/ (as docs/calibration.md does) wrote
    ``-FIRST-eps.png``: a file name that starts with a dash."""
    stem = _load_benchmark("models").output_stem
    (tmp_path / "b3").mkdir()
    (tmp_path / "b3" / "vae.safetensors").write_bytes(b"")
    monkeypatch.chdir(tmp_path / "b3")
    assert stem("vae.safetensors") == "b3-vae"
    assert stem(str(tmp_path / "b3" / "vae.safetensors")) == "b3-vae"  # as before
    assert stem("vae-cifar10") == "vae-cifar10"  # a hub name as given


def test_an_unknown_device_ends_the_benchmark_in_one_line(tmp_path):
    """accuracy.py/throughput.py --device bogus ended in torch.device's traceback; the line it became left out auto,
    which --help lists (audit 149)."""
    with pytest.raises(SystemExit, match="^--device: device must be cpu, cuda, cuda:N or auto, got 'bogus'$"):
        _load_benchmark("throughput").main(["--device", "bogus", "--out", str(tmp_path / "tp")])


def test_setup_device_sets_the_threads_given_and_turns_cudnn_autotuning_and_tf32_on_for_cuda_only(monkeypatch):
    """Mutation audit 379: no test read what setup_device sets (a CPU run never reaches the CUDA branch)."""
    models = _load_benchmark("models")
    threads = []
    monkeypatch.setattr(models.torch, "set_num_threads", threads.append)
    monkeypatch.setattr(models, "resolve_device", lambda name, auto: torch.device(name))  # cuda:1 without a GPU
    before = torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32  # monkeypatch.undo fails on these
    try:
        torch.backends.cudnn.benchmark = torch.backends.cuda.matmul.allow_tf32 = False
        assert models.setup_device("cpu", None) == torch.device("cpu") and threads == []
        assert models.setup_device("cpu", 3) == torch.device("cpu") and threads == [3]
        assert not torch.backends.cudnn.benchmark and not torch.backends.cuda.matmul.allow_tf32
        assert models.setup_device("cuda:1", None) == torch.device("cuda:1")
        assert torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32 = before


def test_the_benchmarks_take_device_auto_as_the_cli_and_the_examples_do():
    """API audit 126: `latent-transforms train --device auto` and the examples' --device auto worked, the benchmarks'
    ended in "device must be cpu, cuda, cuda:N, got 'auto'"."""
    want = "cuda" if torch.cuda.is_available() else "cpu"
    for name in ("accuracy", "throughput"):
        module = _load_benchmark(name)
        assert module.parse_args(["--device", "auto"]).device == want
        assert module.parse_args([]).device == want  # the default, as before
        assert module.parse_args(["--device", "cpu"]).device == "cpu"


@pytest.mark.parametrize("script", ["accuracy", "throughput", "calibrate_eps", "calibrate_digits", "codec_quality",
                                    "sweep_report", "vae_class_guidance", "compile_speedup",
                                    "isda_precision", "fsdp2_attack"])
def test_every_benchmarks_help_gives_each_default_in_one_form(script, monkeypatch, capsys):
    """Audit 149: the calibration scripts' --help showed no default (`--epochs EPOCHS` and nothing else), the others
    some, as "default 40" or "(default: 40)": every option with a default now ends its help with "(default: X)"."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setenv("COLUMNS", "1000")  # a default is never cut by a line break
    module = _load_benchmark(script)
    parsers = []
    parse_args = argparse.ArgumentParser.parse_args
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args",
                        lambda self, *args, **kwargs: parsers.append(self) or parse_args(self, *args, **kwargs))
    monkeypatch.setattr(sys, "argv", [f"{script}.py", "--help"])
    with pytest.raises(SystemExit) as e:
        module.main()
    assert e.value.code == 0
    options = {block.split()[0].rstrip(","): " ".join(block.split())  # each option's invocation and help
               for block in re.split(r"\n(?=  -)", capsys.readouterr().out) if block.startswith("  -")}
    given = [a for a in parsers[0]._actions if a.option_strings and a.help is not argparse.SUPPRESS
             and a.default not in (None, [], argparse.SUPPRESS) and a.default is not False]  # sweep_report: none
    for action in given:
        values = action.default if isinstance(action.default, list) else [action.default]
        text = options[action.option_strings[0]]
        assert "(default: " in text and all(str(v) in text for v in values), text
        assert text.count("(default:") == 1, text  # not appended again to a help that gives it (%(default)s, words)
    unset = [t for t in options.values() if "(default: None)" in t or "(default: False)" in t]
    assert not unset, unset  # a flag off or an option not given: its help says in words what that means


def test_accuracy_data_and_throughput_compile_mode_help_say_what_the_code_does(monkeypatch, capsys):
    """Audit 277: accuracy.py's --train/--test help named cifar10 and npz:PATH only, though folder:PATH is read (as
    benchmarks/README.md says), and throughput.py's --compile-mode did not say that it turns --compile on."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    helps = {}
    for script in ("accuracy", "throughput"):
        with pytest.raises(SystemExit):
            _load_benchmark(script).parse_args(["--help"])
        helps[script] = " ".join(capsys.readouterr().out.split())
    assert helps["accuracy"].count("npz:PATH or folder:PATH") == 2, helps["accuracy"]
    assert "turns --compile on" in helps["throughput"], helps["throughput"]


@pytest.mark.parametrize("script", ["accuracy", "throughput", "calibrate_eps", "codec_quality", "vae_class_guidance",
                                    "compile_speedup", "isda_memory", "quickstart_figures"])
def test_every_benchmarks_threads_must_be_a_count_a_run_can_start(script, monkeypatch, capsys, few_threads_only):
    """Audit 272: --threads 2**31 passed the parser and torch.set_num_threads ended the run with "Overflow when
    unpacking long", naming no option. Audit 275: 100000, a C int, ended it in a segfault at the first parallel op
    once the system could start no more threads ("libgomp: Thread creation failed")."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = _load_benchmark(script)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", "--threads", "100000"])
    with pytest.raises(SystemExit) as e:
        module.main()
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (f"{script}.py: error: argument --threads: must be an int in "
                                                        f"[1, {MAX_THREADS}], got 100000")


def test_an_empty_output_folder_is_refused(monkeypatch):
    """Audit 272: --out '' was Path(''), the current folder, which the run filled. Audit 275: in the words of the
    library's CLI and demo (one function, validation.output_folder, for all)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    with pytest.raises(ValueError, match=r"^--out must be a path, got ''; give a folder \(it is created if missing\)$"):
        _load_benchmark("accuracy").main(["--smoke", "--out", ""])


def test_scripts_check_their_output_folder_and_data_before_any_work(tmp_path):
    # an --out that was a file failed after the training it was to hold (accuracy.py after its first run,
    # vae_class_guidance.py after the whole fine-tune), and a missing data file was a traceback
    (tmp_path / "afile").write_text("")
    env = {**os.environ, "LATENT_TRANSFORMS_HOME": str(tmp_path / "hub"), "LATENT_TRANSFORMS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    cases = [
        ("accuracy.py", ["--smoke", "--out", "afile/sub"],
         "accuracy.py: error: --out 'afile/sub' is inside 'afile', which is a file; give a folder"),
        ("accuracy.py", ["--smoke", "--train", "npz:missing.npz", "--out", "o"],
         "accuracy.py: error: npz data file 'missing.npz' does not exist"),
        ("throughput.py", ["--smoke", "--device", "cpu", "--out", "afile"],
         "throughput.py: error: --out 'afile' is a file; give a folder (it is created if missing)\n"),
        ("codec_quality.py", ["--codec", "vae-digits", "--train", "digits", "--test", "digits", "--out", "afile"],
         "codec_quality.py: error: --out 'afile' is a file; give a folder (it is created if missing)\n"),
        ("vae_class_guidance.py", ["--codec", "vae-digits", "--train", "digits", "--out", "afile/v.safetensors"],
         "vae_class_guidance.py: error: --out's folder 'afile' is a file; give a folder (it is created if missing)\n"),
        # a ~user that names no home directory was pathlib's bare RuntimeError, a traceback (validation.expanded_path)
        ("throughput.py", ["--smoke", "--device", "cpu", "--out", "~no-such-user-h357/o"],
         "throughput.py: error: --out '~no-such-user-h357/o': its ~ names no home directory"),
        ("calibrate_eps.py", ["--codec", "~no-such-user-h357/c.safetensors", "--data", "digits", "--out", "o"],
         "calibrate_eps.py: error: checkpoint path '~no-such-user-h357/c.safetensors': its ~ names no home directory"),
    ]
    ended = _commands_in_one_process([c[:2] for c in cases], tmp_path, env)
    for (script, _, message), (code, stderr) in zip(cases, ended):
        assert code == 2 and stderr.startswith(message), (script, code, stderr[-2000:])
        assert stderr.count("\n") == 1, stderr[-2000:]


def _commands_in_one_process(commands: list[tuple[str, list[str]]], cwd: Path, env: dict) -> list[tuple[int, str]]:
    """``python benchmarks/SCRIPT ARGS`` of each ``(SCRIPT, ARGS)`` in turn, all in one process in ``cwd`` with ``env``
    (``scripts_in_one_process``): the exit status of each and what it wrote to stderr."""
    ended = scripts_in_one_process([(BENCHMARKS / script, args, cwd) for script, args in commands], env,
                                   timeout_s=2 * TIMEOUT_S)  # several commands
    return [(e.returncode, e.stderr) for e in ended]


# the refusals of several tests below, run by the refused_commands fixture: name -> (script, args); each --out, a
# folder of its own in the fixture's folder
REFUSED = {
    "accuracy.py glow": ("accuracy.py", ["--smoke", "--arms", "latent-noise", "--glow", "vae-digits", "--out", "o1"]),
    "throughput.py glow": ("throughput.py", ["--smoke", "--device", "cpu", "--glow", "vae-digits", "--out", "o2"]),
    "codec_quality.py images": ("codec_quality.py", ["--codec", "glow-cifar10", "--train", "digits", "--test", "digits",
                                                     "--out", "o3"]),
    "calibrate_eps.py images": ("calibrate_eps.py", ["--codec", "glow-cifar10", "--data", "digits", "--out", "o4"]),
    "accuracy.py replace": ("accuracy.py", ["--smoke", "--arms", "mixup", "--out", "earlier"]),
    "calibrate_digits.py val": ("calibrate_digits.py", ["--val", "100000", "--out", "o5"]),
    "compile_speedup.py backend": ("compile_speedup.py", ["--smoke", "--backend", "no-such-backend"]),
    "vae_class_guidance.py glow": ("vae_class_guidance.py", ["--codec", "glow-digits", "--train", "digits", "--out",
                                                             "o6/v.safetensors"]),
}


@pytest.fixture(scope="module")
def refused_commands(tmp_path_factory) -> tuple[Path, dict[str, tuple[int, str]]]:
    """Every command of REFUSED run in one process (``_commands_in_one_process``), in a folder of its own where
    ``earlier/results.json`` holds ``{}``: (that folder, name -> (exit status, stderr))."""
    cwd = tmp_path_factory.mktemp("refused")
    (cwd / "earlier").mkdir()
    (cwd / "earlier" / "results.json").write_text("{}")
    env = {**os.environ, "LATENT_TRANSFORMS_HOME": str(cwd / "hub"), "LATENT_TRANSFORMS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    return cwd, dict(zip(REFUSED, _commands_in_one_process(list(REFUSED.values()), cwd, env)))


def test_accuracy_refuses_to_replace_earlier_runs_without_resume(refused_commands):
    # a second call into the same --out replaced results.json with its own runs after its first one: earlier runs lost
    cwd, ended = refused_commands
    code, stderr = ended["accuracy.py replace"]
    assert code == 2 and stderr == ("accuracy.py: error: earlier/results.json holds earlier runs; "
                                    "pass --resume to keep them and add these, or give another --out\n")
    assert (cwd / "earlier" / "results.json").read_text() == "{}"


@pytest.mark.parametrize("script", ["accuracy.py", "throughput.py"])
def test_a_codec_of_the_other_kind_is_refused(refused_commands, script):
    # accuracy.py --glow vae-cifar10 trained LatentNoise on the VAE without a word; throughput.py raised AttributeError
    code, stderr = refused_commands[1][f"{script} glow"]  # --glow vae-digits
    # audit 407: the bare message, exit 1 (run_script now names the script, exit 2, as argparse's errors)
    assert code == 2 and stderr.startswith(f"{script}: error: cannot load the glow codec 'vae-digits' (ValueError: "
                                           "it is a vae codec; --glow takes a glow)"), stderr[-2000:]
    assert stderr.count("\n") == 1, stderr[-2000:]


def test_a_scripts_own_refusal_names_the_script_in_one_line_exit_2(refused_commands):
    """Audit 407: a ``raise SystemExit("message")`` of a script (vae_class_guidance.py's checks of its codec,
    accuracy.py's of its data) printed the bare message and exited 1; argparse's errors and run_script's say
    ``SCRIPT: error: message``, exit 2."""
    code, stderr = refused_commands[1]["vae_class_guidance.py glow"]  # --codec glow-digits
    assert (code, stderr) == (2, "vae_class_guidance.py: error: --codec glow-digits is a glow; this study fine-tunes "
                                 "VAEs\n")


def test_a_codec_of_the_kind_asked_for_is_loaded(offline_hub):
    """Mutation audit 379: the tests above gave load_codec only codecs of the other kind, so a load_codec that refused
    every codec passed them."""
    load_codec = _load_benchmark("models").load_codec
    assert load_codec("glow", "glow-digits", torch.device("cpu")).kind == "glow"
    assert load_codec("vae", "vae-digits", torch.device("cpu")).kind == "vae"


@pytest.mark.parametrize("args, message", [
    (["--train-size", "155"], "--train-size must be a multiple of the 10 classes (a class-balanced subset), got 155"),
    (["--varmixup-p", "0"], "--varmixup-p must be in (0, 1], got 0"),  # ran the baseline as "varmixup"
    (["--latent-p", "1.5"], "--latent-p must be in (0, 1], got 1.5"),
    (["--val-fraction", "-0.1"], "--val-fraction must be in [0, 1)"),  # held out nothing, without a word
    (["--val-fraction", "1"], "--val-fraction must be in [0, 1)"),
])
def test_accuracy_refuses_settings_that_would_silently_change_the_run(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        _load_accuracy_module().parse_args(["--smoke", *args])
    assert e.value.code == 2 and capsys.readouterr().err.endswith(f"error: {message}\n")


@pytest.mark.parametrize("script", ["codec_quality.py", "calibrate_eps.py"])
def test_a_codec_for_other_images_is_refused_before_the_classifier_trains(refused_commands, script):
    # the classifier trained fully (minutes at the CIFAR defaults), then the codec refused the images
    code, stderr = refused_commands[1][f"{script} images"]  # --codec glow-cifar10 on digits
    assert code == 2 and "trained on images of shape (3, 32, 32)" in stderr, stderr[-2000:]
    assert "epoch" not in stderr  # no training bar ran


@pytest.mark.parametrize("argv, ignored", [
    (["--seeds", "1"], "--seeds"), (["--resume", "--shard", "0/2"], "--resume, --shard"),
    (["--time-budget", "60", "--done", "d.json"], "--done, --time-budget"), (["--smoke"], "--smoke"),
    (["--epochs", "3"], "--epochs"),
])
def test_accuracy_merge_refuses_the_options_it_would_ignore(argv, ignored, capsys):
    """Audit 144: --merge trains nothing, and took --seeds, --shard, --resume or a training setting without a word
    (a --merge ... --seeds 1 reported every seed of the files)."""
    acc = _load_accuracy_module()
    with pytest.raises(SystemExit) as e:
        acc.parse_args(["--merge", "a.json", "b.json", *argv, "--out", "m"])
    assert e.value.code == 2 and f"leave out {ignored} (the settings" in capsys.readouterr().err
    args = acc.parse_args(["--merge", "a.json", "--arms", "baseline", "isda", "--out", "m", "--no-progress"])
    assert args.merge == ["a.json"] and args.arms == ["baseline", "isda"]


def _class_folders(root, counts: list[int]) -> str:
    """A folder: spec of 32x32 RGB images, ``counts[c]`` of class c (in folders c0, c1, ...)."""
    from PIL import Image

    for c, n in enumerate(counts):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (32, 32), (25 * c, 10 * i, 0)).save(root / f"c{c}" / f"{i}.png")
    return f"folder:{root}"


def test_accuracy_smoke_replaces_only_the_downloads_by_random_images(tmp_path):
    """Audit 144: --smoke trained on random images for any spec but npz:, so `--smoke --train bogus` ran without a
    word and a folder: spec was never read; only cifar10 and cifar10-5k (downloads) are replaced."""
    acc = _load_accuracy_module()
    folder = _class_folders(tmp_path / "imgs", [3] * 10)
    data = acc.load_data(acc.parse_args(["--smoke", "--train", folder, "--test", folder]))
    assert data["source_train"] == folder and len(data["y_train"]) + data["n_val"] == 30
    assert acc.load_data(acc.parse_args(["--smoke", "--train", "cifar10-5k"]))["source_train"] == "random (200 images)"
    with pytest.raises(ValueError, match="unknown data spec 'bogus'"):
        acc.load_data(acc.parse_args(["--smoke", "--train", "bogus"]))


def test_accuracy_smoke_random_sets_are_cifar_shaped_of_every_class_and_not_each_other():
    """Mutation audit 386: --smoke's random stand-ins for the downloads could change shape or size, lose class 0, or
    draw the test images with the training images' seed (the test set the training set's first half) unnoticed."""
    acc = _load_accuracy_module()
    args = acc.parse_args(["--smoke"])
    (x_tr, y_tr, source_tr), (x_te, y_te, source_te) = acc.read_images(args, "train"), acc.read_images(args, "test")
    assert x_tr.shape == (200, 3, 32, 32) and x_te.shape == (100, 3, 32, 32)  # the test set half as many
    assert (source_tr, source_te) == ("random (200 images)", "random (100 images)")
    assert set(y_tr.tolist()) == set(y_te.tolist()) == set(range(10))
    assert not torch.equal(x_te, x_tr[:100])
    assert torch.equal(acc.read_images(args, "test")[0], x_te)  # every arm and seed is scored on the same images


def test_accuracy_train_size_larger_than_the_data_names_the_flag():
    """Audit 144: `--smoke --train-size 300` ended in "class 0 has only 20 samples, fewer than per_class=30"."""
    acc = _load_accuracy_module()
    with pytest.raises(SystemExit, match=r"^--train-size 300 needs 30 training images of every class, but class \d "
                                         r"has only \d+ samples.* \(--smoke keeps the first 200 images\)$"):
        acc.load_data(acc.parse_args(["--smoke", "--train-size", "300"]))


@pytest.mark.parametrize("fraction", ["0.98", "0.99"])
def test_accuracy_refuses_a_validation_fraction_that_leaves_a_class_untrained(fraction):
    """Audit 144: `--smoke --val-fraction 0.98` trained on 2 images, 8 classes never seen, without a word; 0.99 held
    out every image and failed after the warm-up with "x is an empty batch"."""
    acc = _load_accuracy_module()
    with pytest.raises(SystemExit, match=rf"^--val-fraction {fraction} holds out every training image of class"):
        acc.load_data(acc.parse_args(["--smoke", "--val-fraction", fraction]))
    assert len(acc.load_data(acc.parse_args(["--smoke", "--val-fraction", "0.5"]))["y_train"]) > 0


def test_accuracy_validation_split_names_exactly_the_classes_left_without_a_training_image(tmp_path):
    """A class left with one training image is trained on; the refusal names every class left with none."""
    acc = _load_accuracy_module()
    folder = _class_folders(tmp_path / "imgs", [2] * 8 + [1, 1])  # at 0.6: one of two held out, one of one
    with pytest.raises(SystemExit, match=r"^--val-fraction 0.6 holds out every training image of classes 8, 9 \(of 18 "
                                         r"images\)"):
        acc.load_data(acc.parse_args(["--smoke", "--train", folder, "--val-fraction", "0.6"]))


def test_reports_are_written_in_utf8_whatever_the_locale(tmp_path):
    # a locale without "Δ" (Windows' cp1252; here ASCII, as LC_ALL=C without UTF-8 mode): results.md's write raised
    # UnicodeEncodeError at the end of the run, and the report was lost
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "PYTHONPATH": str(ROOT)}
    script = ("import sys, locale; sys.path.insert(0, sys.argv[1]); from pathlib import Path; from models import "
              "write_text; assert locale.getpreferredencoding(False).lower() in ('ascii', 'ansi_x3.4-1968'); "
              "write_text(Path(sys.argv[2]), '| arm | \\u0394 vs baseline (paired \\u00b1 std) |')")
    proc = subprocess.run([sys.executable, "-c", script, str(BENCHMARKS), str(tmp_path / "results.md")], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "results.md").read_text(encoding="utf-8") == "| arm | Δ vs baseline (paired ± std) |"


def test_write_json_and_write_text_make_the_folder_they_write_into(tmp_path):
    """Mutation audit 379: no test wrote into a folder not made yet, as a script's first write into its --out does."""
    models = _load_benchmark("models")
    models.write_json(tmp_path / "new" / "shard-0" / "results.json", {"runs": {}})
    models.write_text(tmp_path / "other" / "deeper" / "results.md", "| Δ |")
    assert json.loads((tmp_path / "new" / "shard-0" / "results.json").read_text()) == {"runs": {}}
    assert (tmp_path / "other" / "deeper" / "results.md").read_text(encoding="utf-8") == "| Δ |"


def test_the_benchmarks_noise_eps_is_latent_noise_default_for_a_cifar_size_codec():
    """The benchmarks' --noise-eps default measures what users get: LatentNoise's own default eps for a codec of
    CIFAR-10's 3x32x32 images (session 61's unreached CIFAR_NOISE_EPS mutants)."""
    eps = _load_benchmark("models").CIFAR_NOISE_EPS
    assert eps == latent_transforms.LatentNoise(cifar_size_glow()).eps == 10.0


# -- audit 396 (the benchmark scripts as a new user meets them): bad input ends in one line naming the option --------
def test_a_torch_compile_backend_that_does_not_exist_is_named_in_one_line(refused_commands):
    # compile_speedup.py --backend nosuch ended in Dynamo's InvalidBackend traceback, exit status 1
    code, stderr = refused_commands[1]["compile_speedup.py backend"]
    assert code == 2 and stderr.startswith("compile_speedup.py: error: --backend no-such-backend: Invalid backend: "
                                           "'no-such-backend'") and stderr.count("\n") == 1, stderr[-2000:]


def test_codec_quality_refuses_train_and_test_images_of_two_shapes_before_training(tmp_path, monkeypatch):
    """``--smoke --train npz:cifar10`` trained a CIFAR ResNet-18 and scored it on the 1x8x8 digits of --test (its
    standardisation broadcast one channel to three), exit status 0."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    cq = _load_benchmark("codec_quality")
    shapes = {"train": (3, 32, 32), "test": (1, 8, 8)}
    monkeypatch.setattr(cq, "load_images", lambda spec, split: (torch.rand(20, *shapes[split]), torch.arange(20) % 10,
                                                                None))
    monkeypatch.setattr(cq, "fit_classifier", lambda *a, **k: pytest.fail("the classifier trained"))
    monkeypatch.setattr(sys, "argv", ["codec_quality.py", "--smoke", "--out", str(tmp_path / "out")])
    with pytest.raises(ValueError, match=r"^--train images are \(3, 32, 32\) and --test images \(1, 8, 8\); give two "
                                         r"sets of one image shape$"):
        cq.main()
    assert not (tmp_path / "out").exists()


def test_codec_quality_classifier_of_a_smoke_run_is_not_loaded_by_a_full_one(tmp_path, monkeypatch):
    """``--smoke`` trains on the first 200 images; its --classifier file recorded the same settings as a full run's
    (train, width, epochs), which then loaded it as its own."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    cq = _load_benchmark("codec_quality")
    monkeypatch.setattr(cq, "fit_classifier", lambda *a, **k: None)
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8)
    args = argparse.Namespace(train="digits", width=4, epochs=1, classifier=str(tmp_path / "clf.safetensors"),
                              smoke=True)
    cq.clean_classifier(args, x, y)
    cq.clean_classifier(args, x, y)  # a smoke run loads a smoke run's
    with pytest.raises(SystemExit, match=r"was trained with .*'smoke': 'True'"):
        cq.clean_classifier(argparse.Namespace(**{**vars(args), "smoke": False}), x, y)
    # a caller without --smoke (vae_class_guidance.py's guide) is a full run: it loads a full run's file (mutation
    # round, audit 401: taken for a smoke run, unseen)
    full = argparse.Namespace(**{**vars(args), "smoke": False, "classifier": str(tmp_path / "full.safetensors")})
    cq.clean_classifier(full, x, y)
    cq.clean_classifier(argparse.Namespace(**{k: v for k, v in vars(full).items() if k != "smoke"}), x, y)


@pytest.mark.parametrize("argv, message", [
    (["--memory-limit", "-1"], "argument --memory-limit: must be a finite number in (0, inf), got -1.0"),  # no limit
    (["--memory-limit", "nan"], "argument --memory-limit: must be a finite number in (0, inf), got nan"),  # traceback
    (["--memory-limit", "0"], "argument --memory-limit: must be a finite number in (0, inf), got 0.0"),
])
def test_isda_memory_refuses_a_memory_limit_that_is_no_limit_before_any_case(argv, message, monkeypatch, capsys):
    """-1 set RLIMIT_AS to a negative number, which the cases ran under as no limit (9.8 GiB peaks), the table headed
    "under a -1 GiB address-space limit"; nan ended in a traceback of each case ("cannot convert float NaN")."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = _load_benchmark("isda_memory")
    monkeypatch.setattr(module.subprocess, "run", lambda *a, **k: pytest.fail("a case ran"))
    monkeypatch.setattr(sys, "argv", ["isda_memory.py", *argv])
    with pytest.raises(SystemExit) as e:
        module.main()
    assert e.value.code == 2 and capsys.readouterr().err.splitlines()[-1] == f"isda_memory.py: error: {message}"


def test_isda_memory_refuses_a_memory_limit_above_the_shells_before_any_case(monkeypatch, capsys):
    # a case cannot raise its hard limit: each ended in "not allowed to raise maximum limit", a traceback (audit 401)
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = _load_benchmark("isda_memory")
    monkeypatch.setattr(module.subprocess, "run", lambda *a, **k: pytest.fail("a case ran"))
    monkeypatch.setattr(module.resource, "getrlimit", lambda which: (4 * module.GIB, 4 * module.GIB))
    monkeypatch.setattr(module.torch, "set_num_threads", lambda n: None)
    monkeypatch.setattr(sys, "argv", ["isda_memory.py", "--memory-limit", "4.5"])
    with pytest.raises(SystemExit) as e:
        module.main()
    assert e.value.code == 2 and capsys.readouterr().err.splitlines()[-1] == (
        "isda_memory.py: error: --memory-limit 4.5 is above this shell's address-space limit, 4 GiB (ulimit -v): give "
        "at most that")


def test_isda_memory_takes_only_an_error_about_memory_for_out_of_memory(monkeypatch, capsys):
    """A case whose setrlimit failed (a lower hard limit: ``ulimit -v``) was reported as out of memory, "give a larger
    limit": the traceback's source line names ``args.memory_limit`` (mutation round, audit 401). A step that ran out
    is its row's "out of memory" (that branch left out: the error for a case that never began its step, unseen)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = _load_benchmark("isda_memory")
    stderr = ('Traceback (most recent call last):\n  File "isda_memory.py", line 94, in main\n    '
              'resource.setrlimit(resource.RLIMIT_AS, (int(args.memory_limit * GIB),) * 2)\n'
              'ValueError: not allowed to raise maximum limit\n')
    monkeypatch.setattr(module.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", stderr))
    monkeypatch.setattr(module.torch, "set_num_threads", lambda n: None)  # this process's threads left as they are
    monkeypatch.setattr(sys, "argv", ["isda_memory.py"])
    with pytest.raises(RuntimeError, match=r"(?s)^case 1 of 5 failed before its step under a 7 GiB address-space "
                                           r"limit:\n.*ValueError: not allowed to raise maximum limit\n$"):
        module.main()
    ran_out = "RuntimeError: DefaultCPUAllocator: not enough memory: you tried to allocate 8 bytes\n"
    monkeypatch.setattr(module.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "3000\n", ran_out))
    monkeypatch.setattr(sys, "argv", ["isda_memory.py", "--update"])
    module.main()
    assert "| out of memory | - |" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--smoke", "--eps", "-1"], "argument --eps: must be a finite number in [0, inf), got -1.0"),
    (["--smoke", "--batch", "3"], "--batch must be a multiple of 2, got 3"),  # ranks of 2 and 1 images, "1 per rank"
    (["--smoke", "--no-sync", "--batch", "2"], "--batch must be a multiple of 2 and at least 4 with --no-sync, got 2"),
    (["--batch", "542"], "--batch 542 is more than the 540 digits of the test split"),  # took 540, said 542
    (["--no-sync", "--batch", "182"], "--batch 182 x 3 optimizer steps is more than the 540 digits of the test split"),
    (["--glow", "vae-digits"], "it is a vae codec; --glow takes a glow"),
    (["--smoke", "--glow", "glow-cifar10"], "--glow glow-cifar10 codes images of shape (3, 32, 32); this benchmark "
                                            "attacks digits of shape (1, 8, 8): give a flow of them (glow-digits)"),
])
def test_fsdp2_attack_refuses_bad_settings_before_the_ranks_start(argv, message, monkeypatch, capsys, offline_hub):
    """Each was found in both ranks (two tracebacks, exit status 1), or not at all (an odd --batch, a --batch past
    the test digits)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = _load_benchmark("fsdp2_attack")
    monkeypatch.setattr(module, "mp", SimpleNamespace(spawn=lambda *a, **k: pytest.fail("the ranks started")))
    monkeypatch.setattr(torch, "__version__", torch.torch_version.TorchVersion("2.9.0"))
    monkeypatch.setattr(sys, "argv", ["fsdp2_attack.py", *argv])
    with pytest.raises(SystemExit) as e:
        module.run_script(module.main)
    assert e.value.code == 2 and capsys.readouterr().err.splitlines()[-1] == f"fsdp2_attack.py: error: {message}"


@pytest.mark.parametrize("argv", [["--smoke", "--batch", "2"], ["--smoke", "--no-sync", "--batch", "4"],
                                  ["--batch", "540"], ["--no-sync", "--batch", "180"]])
def test_fsdp2_attack_takes_the_batches_at_the_limits_it_names(argv, monkeypatch, offline_hub):
    """The least --batch (--no-sync: a micro-batch of one image on each rank) and the most the 540 test digits hold
    start the ranks, which load glow-digits, or with --smoke alone a tiny random-init Glow, no codec loaded here
    (mutation round, audit 401: ``<=`` for ``<`` and ``>=`` for ``>`` refused them; a full run's ranks left to the
    tiny Glow, and --smoke loading glow-digits, unseen)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = _load_benchmark("fsdp2_attack")
    smoke = "--smoke" in argv
    started = []

    class Started(Exception):
        pass

    def spawn(fn, args, nprocs):
        started.append(args[1].glow)
        raise Started

    monkeypatch.setattr(module, "mp", SimpleNamespace(spawn=spawn))
    if smoke:
        monkeypatch.setattr(module, "load_codec", lambda *a: pytest.fail("--smoke loaded a codec"))
        monkeypatch.setattr(module, "load_images", lambda *a: pytest.fail("--smoke loaded the digits"))
    monkeypatch.setattr(torch, "__version__", torch.torch_version.TorchVersion("2.9.0"))
    monkeypatch.setattr(sys, "argv", ["fsdp2_attack.py", *argv])
    with pytest.raises(Started):
        module.run_script(module.main)
    assert started == [None if smoke else "glow-digits"]


@pytest.mark.parametrize("script, argv", [("fsdp2_attack", ["--smoke", "--glow", "glow-digits"]),
                                          ("compile_speedup", ["--smoke", "--glow", "glow-digits"])])
def test_smoke_takes_the_glow_given_beside_it(script, argv, monkeypatch, offline_hub):
    """--smoke ran on a tiny random-init Glow whatever --glow said, without a word (calibrate_eps.py, codec_quality.py
    and throughput.py take the codec given)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = _load_benchmark(script)
    loaded = []

    class Started(Exception):
        pass

    def stop(*a, **k):
        raise Started

    codecs = {}
    monkeypatch.setattr(module, "load_codec", lambda kind, name, device: loaded.append(name) or codecs.setdefault(
        name, module.tiny_codecs(shape=(1, 8, 8))[0]))
    if script == "fsdp2_attack":
        measured = []
        monkeypatch.setattr(module, "against_unwrapped", lambda rank, glow, *a: measured.append(glow) or stop())
        monkeypatch.setattr(module.dist, "init_process_group", lambda *a, **k: None)
        monkeypatch.setattr(module, "mp", SimpleNamespace(spawn=lambda fn, args, nprocs: fn(0, *args)))  # rank 0, here
        monkeypatch.setattr(torch, "__version__", torch.torch_version.TorchVersion("2.9.0"))
        monkeypatch.setattr(sys, "argv", [f"{script}.py", *argv])
        with pytest.raises(Started):
            module.main()
        # checked here, and the ranks attack with it (audit 407: each rank loaded it again, 3 loads in all)
        assert loaded == ["glow-digits"] and measured == [codecs["glow-digits"]]
    else:
        monkeypatch.setattr(module, "compiled_copy", stop)
        with pytest.raises(Started):
            module.main(argv)
        assert loaded == ["glow-digits"]


@pytest.mark.parametrize("argv, message", [
    (["--smoke", "--glow", "glow-digits", "--data", "npz:test.npz"],
     "--smoke runs on tiny random-init codecs and random images: drop --data, --glow"),
    (["--data", "npz:test.npz", "--train", "digits", "--data-root", "d"],
     "--data-root is where cifar10 and cifar10-5k are downloaded, and neither --data nor --train is one of them: "
     "leave --data-root out"),
])
def test_quickstart_figures_refuses_the_data_and_codecs_it_would_not_read(argv, message, monkeypatch, capsys):
    # each was left unread without a word (--smoke: tiny random-init codecs and random images)
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = _load_benchmark("quickstart_figures")
    monkeypatch.setattr(module, "tiny_codecs", lambda *a, **k: pytest.fail("the smoke run started"))
    monkeypatch.setattr(module, "hub", SimpleNamespace(load=lambda *a, **k: pytest.fail("a codec loaded")))
    monkeypatch.setattr(sys, "argv", ["quickstart_figures.py", *argv])
    with pytest.raises(SystemExit) as e:
        module.main()
    assert e.value.code == 2 and capsys.readouterr().err.splitlines()[-1] == f"quickstart_figures.py: error: {message}"


@pytest.mark.parametrize("script", ["calibrate_digits", "isda_precision", "accuracy"])
def test_seeds_past_torchs_range_or_named_twice_are_refused_by_name(script, monkeypatch, capsys):
    """calibrate_digits.py and isda_precision.py (and accuracy.py) --seeds 10**20 ended in torch's "Overflow when
    unpacking long long" after the codecs had loaded (isda_precision.py: under its table's header); calibrate_digits.py
    --seeds 0 0 trained every setting twice and averaged the copies, isda_precision.py printed each row twice."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = _load_benchmark(script)
    for seeds, message in ((["1", str(2**64)], f"argument --seeds: must be an int in [0, {2**64 - 1}], got {2**64}"),
                           (["1", "0", "1"], "--seeds names 1 more than once")):
        argv = ["--smoke", "--seeds", *seeds, "--out", "unused"] if script != "isda_precision" else \
            ["--smoke", "--seeds", *seeds]
        monkeypatch.setattr(sys, "argv", [f"{script}.py", *argv])
        with pytest.raises(SystemExit) as e:
            module.parse_args(argv) if script == "accuracy" else module.main()
        assert e.value.code == 2 and capsys.readouterr().err.splitlines()[-1] == f"{script}.py: error: {message}"


def test_calibrate_digits_names_per_class_past_the_smallest_digit_before_loading_codecs(tmp_path, monkeypatch):
    # it was low_data_split's "class 0 has only 118 samples, fewer than per_class=1000", after the codecs loaded
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    cal = _load_benchmark("calibrate_digits")
    x, y = torch.rand(70, 1, 8, 8), torch.cat([torch.arange(60) % 10, torch.zeros(10, dtype=torch.long)])
    monkeypatch.setattr(cal, "load_images", lambda spec, split: (x, y, None))
    monkeypatch.setattr(cal, "hub", SimpleNamespace(load=lambda name: pytest.fail("a codec loaded")))
    monkeypatch.setattr(cal.torch, "set_num_threads", lambda n: None)
    monkeypatch.setattr(sys, "argv", ["calibrate_digits.py", "--val", "1", "--per-class", "6", "--out",
                                      str(tmp_path / "out")])
    with pytest.raises(ValueError, match=r"^--per-class 6 is more than the [56] training images of digit \d left "
                                         r"beside the --val 1 validation images$"):
        cal.main()


def test_throughput_noise_eps_is_checked_as_its_option(capsys):
    # a negative --noise-eps was refused by LatentNoise as "eps must be ...", naming no option
    with pytest.raises(SystemExit) as e:
        _load_benchmark("throughput").parse_args(["--noise-eps", "-1"])
    assert e.value.code == 2 and capsys.readouterr().err.splitlines()[-1].endswith(
        "error: argument --noise-eps: must be a finite number in [0, inf), got -1.0")
