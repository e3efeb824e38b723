import contextlib
import datetime
import gc
import json
import math
import os
import pickle
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from latent_transforms import hub, validation
from latent_transforms.base import LEFT_IN_EVAL
from latent_transforms.codecs import Codec, ConvVAE, Glow
from latent_transforms.modelutils import torch_threads

try:
    from hypothesis import settings as hypothesis_settings
except ImportError:  # the GPU session's pytest has no hypothesis, nor does any test it runs need it
    pass
else:
    # every hypothesis test draws the same examples each run (derandomize: seeded by the test's own source), so its
    # cost is the same and a failure replays; with it, no example database (nothing written for xdist's processes to
    # share). deadline=None: a test's time on a loaded CPU is no failure. A test's @settings sets max_examples only.
    hypothesis_settings.register_profile("latent-transforms", derandomize=True, deadline=None)
    hypothesis_settings.load_profile("latent-transforms")
    # recent hypothesis also draws numbers it finds in the source of the modules (not tests) imported so far, which
    # depend on the tests run before in the process (an xdist worker's share, a file run alone): so did the examples.
    # None drawn (private: test_docs.py fails where this no longer takes)
    with contextlib.suppress(ImportError):
        from hypothesis.internal.conjecture import providers as hypothesis_providers
        if hasattr(hypothesis_providers, "_get_local_constants"):
            hypothesis_providers._get_local_constants = hypothesis_providers.Constants

# The tests run in a checkout (CI) or in the unpacked sdist (MANIFEST.in ships what they read), and also from a copy
# of tests/ elsewhere against an installed wheel (a packager's check): there the checkout's docs/, benchmarks/,
# examples/, scripts/ and pyproject.toml are absent, and the tests that read them skip, saying so. In a source tree
# nothing skips: a file missing there fails its test.
ROOT = Path(__file__).resolve().parents[1]
SOURCE_TREE = (ROOT / "pyproject.toml").is_file()
OUTSIDE_THE_SOURCE_TREE = ("reads the source tree's docs/, benchmarks/, examples/, scripts/ or pyproject.toml, and "
                           f"the tests run outside one ({ROOT} has no pyproject.toml)")
needs_source_tree = pytest.mark.skipif(not SOURCE_TREE, reason=OUTSIDE_THE_SOURCE_TREE)


def skip_module_outside_the_source_tree() -> None:
    """``needs_source_tree`` for a whole module that reads the source tree as it is imported."""
    if not SOURCE_TREE:
        pytest.skip(OUTSIDE_THE_SOURCE_TREE, allow_module_level=True)


CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
# at most 2 torch threads; 1 a process where `pytest -n` runs as many as there are CPUs (more threads than CPUs wait on
# each other: the tests' tensors are small)
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", 1))  # pytest -n's processes (this one among them)
torch.set_num_threads(max(1, min(2, torch.get_num_threads(), CPUS // WORKERS)))
# for tests that call ISDA without set_epoch on purpose: its warning that the strength is 0 is expected there
STRENGTH_ZERO_EXPECTED = pytest.mark.filterwarnings("ignore:ISDA's strength lam:UserWarning")
# A test that calls a transform in eval() mode beside a training model on purpose (the identity, its checks)
EVAL_BESIDE_TRAINING = pytest.mark.filterwarnings(f"ignore:{LEFT_IN_EVAL}")


def pytest_addoption(parser, pluginmanager):
    parser.addoption("--device", default="cpu",
                     help="the device of tests/test_device.py and tests/test_host_syncs.py (default cpu; e.g. cuda, cuda:1)")
    # pyproject's `timeout` where pytest-timeout is not installed (the GPU session's pytest): declared here, it means
    # nothing and raises no "unknown config option" warning
    if not pluginmanager.hasplugin("timeout"):
        parser.addini("timeout", "pytest-timeout's limit per test, in seconds (not installed here: no limit)")


@pytest.hookimpl(optionalhook=True)  # pytest without pytest-xdist (the GPU session's) would refuse an unknown hook
def pytest_xdist_auto_num_workers(config):
    """``pytest -n auto``: a process per CPU, at most 8 (each imports torch and some start two more), or
    ``PYTEST_XDIST_AUTO_NUM_WORKERS`` where that is set to a number, as xdist reads it."""
    chosen, capped = os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"), min(8, CPUS)
    try:
        return int(chosen) if chosen else capped
    except ValueError:  # xdist ignored it too, with a warning, but then took a process per CPU, uncapped
        warnings.warn(f"PYTEST_XDIST_AUTO_NUM_WORKERS is not a number: {chosen!r}; ignored ({capped} processes: one "
                      f"per CPU, at most 8)")
        return capped


def pytest_configure(config):
    """A ``--device`` this machine lacks stops the run at once, as a usage error (not a skip, nor an error per test).
    The ``slow`` marker is declared here too, for a copy of tests/ run without pyproject.toml's ``markers``."""
    if not any(line.split(":")[0].strip() == "slow" for line in config.getini("markers")):
        config.addinivalue_line("markers", "slow: takes more than a few seconds")
    name = config.getoption("device")
    try:
        torch.empty(0, device=torch.device(name))
    except (RuntimeError, AssertionError) as e:  # a bad name; CUDA not built in or no GPU (AssertionError, old torch)
        raise pytest.UsageError(f"--device {name}: {e}") from None


@pytest.fixture(scope="session")
def device(pytestconfig) -> torch.device:
    """``pytest --device cuda``'s device (cpu by default)."""
    return torch.device(pytestconfig.getoption("device"))


@pytest.fixture(autouse=True)
def _an_idle_cpu(monkeypatch):
    """The demo and ``train`` choose one thread and say so on a busy CPU: in-process, the tests see an idle one
    (those of that choice set the load they need), so what they read does not depend on this machine's load."""
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """A private empty cache dir (``tmp_path / "hub"``, returned), downloads forbidden, no hub URL, and an empty
    runtime registry and codec cache: what a test registers or loads does not outlive it."""
    home = tmp_path / "hub"
    monkeypatch.setenv("LATENT_TRANSFORMS_HOME", str(home))
    monkeypatch.setenv("LATENT_TRANSFORMS_OFFLINE", "1")
    monkeypatch.delenv("LATENT_TRANSFORMS_HUB_URL", raising=False)
    monkeypatch.setattr(hub, "_registered", {})
    monkeypatch.setattr(hub, "_loaded", {})
    return home


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """A benchmark's main() run in-process sets torch's thread count (1 for --smoke): the tests after it ran on that
    count, which depended on the order the tests ran in."""
    with torch_threads(torch.get_num_threads()):
        yield


@pytest.fixture(autouse=True)
def _a_fresh_compile_cache():
    """torch.compile's code cache emptied after each test that imported Dynamo: torch reuses code compiled for one
    instance of a model class for another of that class, and with ``skip_nnmodule_hook_guards`` (its default) without
    the hooks armed since, so a test compiling a TinyNet ran ISDA's hook-less code in a later test of the same worker
    (test_distributed's compiled DDP broadcast test failed after two of test_isda's compiled-model tests, audit 448)."""
    yield
    if "torch._dynamo" in sys.modules:
        torch._dynamo.reset()


@pytest.fixture
def few_threads_only(monkeypatch):
    """``torch.set_num_threads`` of more than 4096 threads raises ``AssertionError`` in the test: a test of the bound
    on ``--threads`` (100000) run on code that let it through started about 2 OS threads each on the machine running
    the suite, until a segfault ended the run."""
    set_num_threads = torch.set_num_threads

    def guarded(n):
        if n > 4096:
            raise AssertionError(f"torch.set_num_threads({n}) was called")
        set_num_threads(n)
    monkeypatch.setattr(torch, "set_num_threads", guarded)


# argv: a JSON list of [script, args, cwd], the JSON file to write [exit status, stdout, stderr] of each to
_RUN_SCRIPTS = """
import contextlib, io, json, os, runpy, sys, traceback
commands, ended_path, ended = json.loads(sys.argv[1]), sys.argv[2], []
environ, path = dict(os.environ), list(sys.path)
for script, args, cwd in commands:
    os.chdir(cwd)
    sys.path[:] = [os.path.dirname(script), *path]  # as `python SCRIPT` puts the script's folder first
    sys.argv, out, err, code = [script, *args], io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as e:  # as Python ends: a message is printed, exit status 1
            code = 0 if e.code is None else e.code if isinstance(e.code, int) else print(e.code, file=sys.stderr) or 1
        except Exception:  # as Python ends: the traceback, exit status 1
            traceback.print_exc()
            code = 1
    os.environ.clear()  # what a script set (a world of one's RANK) ends with it, as with its process
    os.environ.update(environ)
    ended.append([code, out.getvalue(), err.getvalue()])
with open(ended_path, "w") as fh:
    json.dump(ended, fh)
"""


def scripts_in_one_process(commands: list[tuple[Path, list[str], Path]], env: dict,
                           timeout_s: float) -> list[SimpleNamespace]:
    """``python SCRIPT ARGS`` run in ``CWD`` for each ``(SCRIPT, ARGS, CWD)`` in turn, all in one process with ``env``
    (a process each imported torch again, 2-2.5 s on 2 cores): the ``returncode``, ``stdout`` and ``stderr`` of each,
    as ``subprocess.run`` gives them."""
    with tempfile.TemporaryDirectory() as tmp:
        ended_path = Path(tmp) / "ended.json"
        proc = subprocess.run([sys.executable, "-c", _RUN_SCRIPTS,
                               json.dumps([[str(Path(s).resolve()), a, str(c)] for s, a, c in commands]),
                               str(ended_path)], env=env, capture_output=True, text=True, timeout=timeout_s)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-3000:]  # nothing written past the redirects
        ended = json.loads(ended_path.read_text())
    assert len(ended) == len(commands)
    return [SimpleNamespace(returncode=code, stdout=out, stderr=err) for code, out, err in ended]


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, augment: nn.Module, batches) -> None:
    """One step of ``optimizer`` per ``(x, y)`` of ``batches``, on the cross-entropy of ``augment(x, y, model)``."""
    for x, y in batches:
        x, y = augment(x, y, model)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


# a rank left waiting in a collective call (its peer stuck, or in another call) fails in a minute, not in gloo's
# default 30 (a rank that raised is noticed at once): every wait here ended within 10 s on 2 cores at a load of 9
GLOO_TIMEOUT_S = 60
# a rank stuck outside any collective call (gloo's timeout never fires) fails its spawn after this long, rather than
# hang the suite: the longest spawn here took 9.1 s in CI (2 cores, bad3b1f's --durations)
SPAWN_DEADLINE_S = 120


def rank_file(out_dir, rank: int) -> Path:
    """Where rank ``rank`` saves what it saw, for ``spawn_two_ranks`` to return."""
    return Path(out_dir) / f"rank{rank}.pt"


@contextlib.contextmanager
def gloo_group(rank: int, init_method: str, out_dir):
    """A spawned worker's block as rank ``rank`` of a 2-rank gloo process group, on one thread: yields a dict,
    saved to ``rank_file(out_dir, rank)`` when the block ends. The group is destroyed once the worker has returned
    (``_run_then_exit``); a block that raises leaves it to the process's exit, once spawn has kept its traceback
    (destroyed before, the peer could fail first, "Connection reset")."""
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=GLOO_TIMEOUT_S))
    torch.set_num_threads(1)
    out: dict = {}
    yield out
    torch.save(out, rank_file(out_dir, rank))


def spawn_two_ranks(worker, tmp: Path, grace_s: float = 60, deadline_s: float = SPAWN_DEADLINE_S) -> list[dict]:
    """Run ``worker(rank, init_method, out_dir)`` in two spawned processes, joined (a rank that fails fails the
    call, and so does one still running ``deadline_s`` after the spawn without both having saved); what each saved
    as ``rank_file(tmp, r)``. The ranks meet in a ``file://`` store: no port to lose."""
    started = time.monotonic()
    ranks = mp.spawn(_run_then_exit, args=(worker, f"file://{tmp / 'store'}", str(tmp)), nprocs=2, join=False)
    saved = [rank_file(tmp, r) for r in range(2)]
    # torch 2.4's gloo deadlocked in 1 spawn of 16 here, after both ranks had saved: a DDP module freed as the
    # worker returned destroys its process group holding the GIL, whose thread waits for it to free a gather's
    # tensors. A rank still running grace_s after both saved is stopped, as _run_then_exit skips that teardown.
    both_saved_at = None
    try:
        while not ranks.join(timeout=1):
            if both_saved_at is None and all(f.exists() for f in saved):
                both_saved_at = time.monotonic()
            if both_saved_at is not None and time.monotonic() - both_saved_at > grace_s:
                _stop(ranks)
                break
            if both_saved_at is None and time.monotonic() - started > deadline_s:  # no collective call to time out
                hung = [str(r) for r, process in enumerate(ranks.processes) if process.is_alive()]
                _stop(ranks)
                raise RuntimeError(f"rank{'s' * (len(hung) > 1)} {' and '.join(hung)} still running {deadline_s:g} s "
                                   f"after the spawn, without both ranks having saved: stopped")
    except (mp.ProcessRaisedException, mp.ProcessExitedException):  # spawn's error names the first rank to exit:
        # a rank's error makes its peer fail in its next collective call ("Connection reset by peer"), often first
        raise RuntimeError("a rank failed:\n" + _how_each_rank_ended(ranks)) from None
    finally:  # spawn leaves the traceback file of a rank that raised in the system's temp folder, read or not
        for path in ranks.error_files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    return [torch.load(f, weights_only=True) for f in saved]


def _stop(ranks) -> None:
    """Kill and reap every rank of a ``mp.spawn(..., join=False)`` context."""
    for process in ranks.processes:
        process.kill()
        process.join()


def _how_each_rank_ended(ranks) -> str:
    """Each rank's traceback (spawn kept it in an error file: its own pickle of the traceback's text, as
    ``ProcessRaisedException`` reads it), or its exit code."""
    ends = []
    for rank, (process, path) in enumerate(zip(ranks.processes, ranks.error_files)):
        if os.path.exists(path) and os.path.getsize(path):  # spawn makes every file; a rank it stopped left it empty
            with open(path, "rb") as fh:
                ends.append(f"-- rank {rank} raised:\n{pickle.load(fh)}")
        else:
            ends.append(f"-- rank {rank} exited with code {process.exitcode}")
    return "\n".join(ends)


def _run_then_exit(rank: int, worker, *args) -> None:
    # torch 2.14.1's gloo and autograd teardown at interpreter shutdown aborted about one spawn in ten ("terminate
    # called without an active exception", exit -6, pytorch/pytorch#190489) after the worker had saved all it saw;
    # a gc.collect() first (a DDP module sits in a reference cycle) still left 2 aborts in 76 runs, ending here 0 in
    # 80. A rank that has done its work skips that shutdown; one that raised goes the usual way, its traceback reported.
    worker(rank, *args)
    # the worker's DDP models, freed as it returns or (in reference cycles) collected here, go before the process
    # group they hold, as in benchmarks/fsdp2_attack.py: destroyed at the block's end, it left 1 or 2 DDP objects of
    # each worker here alive, held by the worker's frame, to be freed after the group
    gc.collect()
    if dist.is_initialized():
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def counting_value_reads(monkeypatch) -> list[int]:
    """The batch size of each read of images' values (``validation.check_images``'s one host sync), in order."""
    reads, image_stats = [], validation._image_stats
    monkeypatch.setattr(validation, "_image_stats", lambda x: reads.append(x.shape[0]) or image_stats(x))
    return reads


def tiny_glow(seed: int = 0, shape=(1, 8, 8), levels: int = 2) -> Glow:
    """A random-init frozen Glow whose ActNorms were initialised on random data."""
    torch.manual_seed(seed)
    return Glow(shape, levels=levels, steps=2, hidden=16, num_bins=17).init_actnorm(torch.rand(64, *shape)).freeze()


class OwnCodec(Codec):
    """A codec of one's own, as docs/training.md writes one but without a config: latents (B, 4), images
    (B, *image_shape)."""

    def __init__(self, image_shape=(1, 8, 8)):
        super().__init__(image_shape)
        size = math.prod(self.image_shape)
        self.enc, self.dec = nn.Linear(size, 4), nn.Linear(4, size)

    @property
    def latent_shapes(self):
        return [(4,)]

    def _encode(self, x):
        return [self.enc(x.flatten(1))]

    def _decode(self, z):
        return torch.sigmoid(self.dec(z[0])).view(-1, *self.image_shape)


def cifar_size_glow(seed: int = 0) -> Glow:
    """A random-init frozen Glow of CIFAR-10's image shape (3, 32, 32) and glow-cifar10's 3 levels, narrow and
    shallow like ``tiny_glow``."""
    return tiny_glow(seed, shape=(3, 32, 32), levels=3)


def trained_like_glow_pair(shape=(1, 8, 8)) -> tuple[Glow, Glow]:
    """The same non-trivial Glow twice: unfrozen (plain normflows reference path) and frozen (folded fast path).

    Its weights are moved away from the identity-like init, as training does."""
    torch.manual_seed(0)
    plain = Glow(shape, levels=2, steps=2, hidden=16).init_actnorm(torch.rand(32, *shape))
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return plain, plain.unfrozen_copy().freeze()


def tiny_vae(seed: int = 0, shape=(1, 8, 8)) -> ConvVAE:
    torch.manual_seed(seed)
    return ConvVAE(shape, latent_dim=4, hidden=8).freeze()


class SpyNet(nn.Module):
    """Wraps a classifier and keeps a copy of every batch it is given (``inputs``)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.inputs = net, []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.net(x)


class ClassifierWithItsAugmentation(nn.Module):
    """A LightningModule's shape: the classifier and a transform as submodules, the classifier's forward."""

    def __init__(self, net: nn.Module, augment: nn.Module):
        super().__init__()
        self.net, self.augment = net, augment

    def forward(self, x):
        return self.net(x)


class TinyNet(nn.Module):
    """A classifier with BatchNorm (to catch statistic updates) and a final Linear (for ISDA)."""

    def __init__(self, channels=1, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


@pytest.fixture
def glow():
    return tiny_glow()


@pytest.fixture
def vae():
    return tiny_vae()


@pytest.fixture
def net():
    torch.manual_seed(0)
    return TinyNet()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(12, 1, 8, 8, generator=g), torch.randint(0, 10, (12,), generator=g)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """torch's default dtype set to ``dtype`` for the block, as a training script may set it for the process."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


@contextlib.contextmanager
def default_device(device: str):
    """torch's default device set to ``device`` for the block (a "meta" left over, say)."""
    torch.set_default_device(device)
    try:
        yield
    finally:
        torch.set_default_device(None)
