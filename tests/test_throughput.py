"""benchmarks/throughput.py's measurement and report (issue 8), without timing anything: fake clocks and memory."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, skip_module_outside_the_source_tree

skip_module_outside_the_source_tree()  # benchmarks/throughput.py
SPEC = importlib.util.spec_from_file_location("throughput_benchmark", ROOT / "benchmarks" / "throughput.py")
tp = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(tp)


def test_batch_size_defaults_to_the_targets_batch_on_cuda():
    assert tp.parse_args(["--device", "cuda"]).batch_size == 256
    assert tp.parse_args(["--device", "cpu"]).batch_size == 8
    assert tp.parse_args(["--device", "cuda", "--batch-size", "64"]).batch_size == 64


@pytest.mark.parametrize("argv, expected", [
    (["--smoke"], {"batch_size": 8, "iters": 2, "warmup": 1, "width": 8, "threads": 1}),
    (["--smoke", "--iters", "5", "--width", "16", "--threads", "2"],  # given beside --smoke: they win
     {"batch_size": 8, "iters": 5, "warmup": 1, "width": 16, "threads": 2}),
    (["--device", "cpu"], {"batch_size": 8, "iters": 20, "warmup": 5, "width": 64, "threads": None}),
])
def test_smoke_settings_are_defaults_that_given_options_override(argv, expected):
    args = tp.parse_args(argv)
    assert {k: getattr(args, k) for k in expected} == expected


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "1"], "argument --batch-size: must be an int >= 2, got 1"),
    (["--iters", "0"], "argument --iters: must be an int >= 1, got 0"),
    (["--warmup", "-1"], "argument --warmup: must be an int >= 0, got -1"),
    (["--smoke", "--width", "0"], "argument --width: must be an int >= 1, got 0"),
])
def test_bad_numbers_name_the_option(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        tp.parse_args(argv)
    assert e.value.code == 2 and capsys.readouterr().err.splitlines()[-1].endswith(f"error: {message}")


def test_compile_mode_turns_the_compiled_rows_on_and_refuses_no_compile():
    assert tp.parse_args(["--device", "cpu", "--compile-mode", "reduce-overhead"]).compile
    with pytest.raises(SystemExit):
        tp.parse_args(["--device", "cpu", "--no-compile", "--compile-mode", "reduce-overhead"])


def test_a_misspelt_compile_mode_is_a_users_mistake_not_a_traceback(tmp_path, monkeypatch, offline_hub):
    """Audit 145: --compile-mode foo ended in torch's RuntimeError traceback (run_script turns a ValueError into one
    line, exit 2); no row is built."""
    monkeypatch.setattr(tp, "build_rows", lambda *a: pytest.fail("rows were built"))
    with pytest.raises(ValueError, match="^--compile-mode foo: .*reduce-overhead"):
        tp.main(["--smoke", "--device", "cpu", "--compile-mode", "foo", "--out", str(tmp_path / "tp")])


def test_isda_step_alternates_with_the_plain_step(monkeypatch):
    """Each iteration times both steps, the order alternating; the overhead is the median of the paired ratios."""
    order = []
    isda, plain = (lambda: None), (lambda: None)
    seconds = {isda: 1.1, plain: 1.0}
    monkeypatch.setattr(tp, "timed", lambda fn, device: order.append("isda" if fn is isda else "plain") or seconds[fn])
    result = tp.measure(isda, torch.device("cpu"), warmup=1, iters=4, paired=plain)
    assert order == ["isda", "plain", "plain", "isda"] * 2 + ["isda", "plain"]
    assert result["seconds"] == 1.1 and result["paired_seconds"] == 1.0
    assert result["vs_paired"] == pytest.approx(1.1)


def test_peak_memory_counts_what_the_warm_up_allocated(monkeypatch):
    """ISDA's covariances are allocated at its first call, a warm-up call: the row's peak must include them. A first
    call's transient workspace (cuDNN's autotuning at a new shape) is not the method's: it counted."""
    memory = {"allocated": 1000, "peak": 1000}
    first = []

    def fn():  # keeps 100 bytes from its first call on; 50 more while it runs; 10,000 once, at the first call
        if not first:
            first.append(True)
            memory["peak"] = max(memory["peak"], memory["allocated"] + 10_000)
            memory["allocated"] += 100
        memory["peak"] = max(memory["peak"], memory["allocated"] + 50)

    monkeypatch.setattr(sys.modules[tp.timed.__module__], "sync", lambda device: None)  # benchmarks/models.py's
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: memory["allocated"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: memory["peak"])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats",
                        lambda device=None: memory.update(peak=memory["allocated"]))
    assert tp.measure(fn, torch.device("cuda"), warmup=2, iters=3)["peak_extra_bytes"] == 150


def _row(key: str, method: str, seconds: float, peak_mib: float | None = None, **extra) -> dict:
    return {"key": key, "method": method, "timed": "t", "seconds": seconds, "images_per_second": 256 / seconds,
            "vs_train_step": seconds / 0.010, "peak_extra_bytes": None if peak_mib is None else peak_mib * 2**20,
            "first_call_seconds": seconds, **extra}


def _result(device: str, rows: list[dict]) -> dict:
    return {"config": {"smoke": False, "device": device, "batch_size": 256, "device_name": device, "torch": "2",
                       "iters": 20, "warmup": 5, "noise_eps": 10.0, "codecs": {"glow": "glow-cifar10", "vae": "vae-cifar10"},
                       "width": 64, "precision": "bf16", "isda_covariance": "full", "compile": False,
                       "max_abs_diff_compiled_vs_eager_codec_roundtrip": None,
                       "max_abs_diff_normflows_vs_codec_roundtrip": 1e-6,
                       "max_abs_roundtrip_error_codec": 2e-6, "max_abs_roundtrip_error_normflows": 3e-6},
            "rows": rows}


ROWS = [_row("train_step", "step", 0.010, 900),
        _row("glow_normflows", "naive", 0.060, 10),
        _row("latent_noise", "LatentNoise", 0.004, 10),
        _row("latent_noise_compiled", "LatentNoise, compiled codec", 0.003, 10),
        _row("latent_adversarial_1", "LatentAdversarial, 1 PGD step", 0.025, 300),
        _row("latent_adversarial_1_plain", "plain", 0.040, 3000),  # the reference path: not a target
        _row("varmixup", "VarMixup", 0.001, 20),
        _row("latent_noise_cached", "LatentNoise with a LatentCache", 0.002, 100, cache_bytes=256 * 3072 * 4,
             cifar10_cache_bytes=50_000 * 3072 * 4),
        _row("train_step_isda", "isda", 0.0108, 912, vs_paired=1.08, paired_seconds=0.010, all_seconds=[0.0108])]


def test_targets_are_judged_on_a_cuda_gpu_at_batch_256():
    md = tp.format_table(_result("cuda", ROWS))
    assert "| LatentNoise <= 0.5x a training step | 0.3x (LatentNoise, compiled codec) | pass |" in md
    assert "| LatentNoise >= 10x faster than the naive normflows path | 20x as fast (LatentNoise, compiled codec) " \
           "| pass |" in md
    assert "| LatentAdversarial, 1 PGD step, <= 2x a training step | 2.5x (LatentAdversarial, 1 PGD step) " \
           "| fail |" in md
    assert "| VarMixup (default p) <= 0.15x a training step | 0.1x | pass |" in md
    assert "| ISDA adds <= 10% to a plain training step | +8.0% (timed side by side) | pass |" in md
    # the cache row with a full CIFAR-10 cache: 100 MiB + 50,000 x 3,072 x 4 bytes
    assert "| peak extra memory of every method <= 2 GB (a cache row: with a 50,000-image cache) | 0.72 GB " \
           "(LatentNoise with a LatentCache) | pass |" in md
    assert "| 100 MiB; cache 3.0 MiB (50,000 images: 586 MiB) |" in md
    assert "ISDA adds +8.0% (median of the per-pair ratios)" in md
    missing = tp.format_table(_result("cuda", [r for r in ROWS if r["key"] != "varmixup"]))
    assert "| VarMixup (default p) <= 0.15x a training step | - | not measured |" in missing


def test_targets_are_not_judged_on_a_cpu():
    md = tp.format_table(_result("cpu", [{**r, "peak_extra_bytes": None} for r in ROWS]))
    assert "targets are for a CUDA GPU at batch 256" in md and "| fail |" not in md and "| pass |" not in md
    assert "| LatentAdversarial, 1 PGD step, <= 2x a training step | 2.5x (LatentAdversarial, 1 PGD step) | n/a |" in md
    assert "| peak extra memory of every method <= 2 GB (a cache row: with a 50,000-image cache) | - | n/a |" in md


@pytest.mark.parametrize("setting, named", [({"width": 16}, "ResNet-18 width 16"),
                                             ({"precision": "fp32"}, "classifier in fp32"),
                                             ({"isda_covariance": "diagonal"}, "ISDA diagonal covariance"),
                                             # were judged: 1 timed iteration, no warm-up, or no noise at all
                                             ({"iters": 1}, "1 timed iterations"),
                                             ({"warmup": 0}, "0 warm-up iterations"),
                                             ({"noise_eps": 0.0}, "LatentNoise eps 0.0")])
def test_targets_are_not_judged_off_the_targets_training_step_or_isda(setting, named):
    """The ratios divide by the step of the ResNet built, and ISDA's covariance sets its cost: on a CUDA GPU at batch
    256 another width, precision or covariance is not the issue's setting either."""
    result = _result("cuda", ROWS)
    result["config"].update(setting)
    md = tp.format_table(result)
    assert f"This run is not that setting ({named}): its figures are shown, the targets marked n/a" in md
    assert "| pass |" not in md and "| fail |" not in md
    assert "| ISDA adds <= 10% to a plain training step | +8.0% (timed side by side) | n/a |" in md


def test_a_report_cut_short_while_written_leaves_the_previous_table(tmp_path, monkeypatch):
    """throughput.md goes through a temporary file, as throughput.json does: a kill mid-write (a time limit's TERM)
    leaves the last complete table, not half of one."""
    args = tp.parse_args(["--device", "cpu", "--no-compile"])
    errors = {"max_abs_roundtrip_error_codec": 2e-6, "max_abs_roundtrip_error_normflows": 3e-6}
    report = dict(out=tmp_path, args=args, device=torch.device("cpu"), notes=dict(tp.TARGET_CODECS), glow=None,
                  rows=[dict(r) for r in ROWS], agreement=1e-6, roundtrip_errors=errors, compiled_agreement=None,
                  start=0.0)
    tp.write_report(**report, partial=True)
    before = (tmp_path / "throughput.md").read_text()
    write_text = Path.write_text

    def killed(path, text, *args, **kwargs):
        write_text(path, text[:len(text) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", killed)
    with pytest.raises(KeyboardInterrupt):
        tp.write_report(**report, partial=False)
    monkeypatch.undo()
    assert (tmp_path / "throughput.md").read_text() == before and "**Partial**" in before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["throughput.json", "throughput.md"]


def test_the_official_cifar_row_uses_the_official_step_size(monkeypatch):
    """The "3 PGD steps (official CIFAR)" row: eps 1, 3 steps of 0.5, as the official CIFAR setting (not the
    library's step 1)."""
    made = []

    class Recorded(tp.LatentAdversarial):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(tp, "LatentAdversarial", Recorded)
    args = tp.parse_args(["--smoke", "--device", "cpu", "--no-compile"])
    rows = tp.build_rows(args, torch.device("cpu"), dict(zip(("glow", "vae"), tp.tiny_codecs())))
    assert "LatentAdversarial, 3 PGD steps (official CIFAR)" in [r["method"] for r in rows]
    assert [(a.eps, a.step_size) for a in made if a.steps == 3] == [(1.0, 0.5)]


def test_varmixup_rows_say_how_many_samples_their_selection_mixes(tmp_path, monkeypatch, offline_hub):
    """Audit 145: at --batch-size 2 the default-p VarMixup row timed a selection of no sample (a pass-through) and the
    VarMixup target was read from it, with nothing in the table to say so."""
    for batch, mixed in ((2, 0), (8, 2)):  # seed 0's selections
        out = tmp_path / f"b{batch}"
        result = tp.main(["--smoke", "--device", "cpu", "--no-compile", "--batch-size", str(batch), "--iters", "1",
                          "--warmup", "0", "--out", str(out)])
        rows = {r["key"]: r for r in result["rows"]}
        assert rows["varmixup"]["samples_mixed"] == rows["varmixup_cached"]["samples_mixed"] == mixed
        assert "samples_mixed" not in rows["varmixup_all"]
        md = (out / "throughput.md").read_text()
        assert f"| t(x, y), the same selection each call, {mixed} of {batch} samples mixed |" in md
        assert f"| t(x, y, index=i), the same selection each call, {mixed} of {batch} samples mixed |" in md


@pytest.mark.slow
def test_smoke_run_has_every_row_and_passes_the_compile_mode(tmp_path, monkeypatch):
    """The plain-path and cached rows run; the cache rows give their sizes; --compile-mode reaches torch.compile
    (faked: nothing compiles)."""
    modes = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: modes.append(kwargs.get("mode")) or fn)
    monkeypatch.setenv("LATENT_TRANSFORMS_OFFLINE", "1")
    monkeypatch.setenv("LATENT_TRANSFORMS_HOME", str(tmp_path / "hub"))
    tp.main(["--smoke", "--device", "cpu", "--compile-mode", "reduce-overhead", "--out", str(tmp_path / "tp")])
    result = json.loads((tmp_path / "tp" / "throughput.json").read_text())
    rows = {r["key"]: r for r in result["rows"]}
    assert {"latent_noise_plain", "latent_adversarial_1_plain", "latent_adversarial_1_cached"} <= set(rows)
    assert modes == ["reduce-overhead"] * 2 and result["config"]["compile_mode"] == "reduce-overhead"
    glow_dim = 3 * 32 * 32  # a flow keeps every dimension
    for key in ("latent_noise_cached", "latent_adversarial_1_cached"):
        assert rows[key]["cache_bytes"] == 8 * glow_dim * 4
        assert rows[key]["cifar10_cache_bytes"] == 50_000 * glow_dim * 4
    isda = rows["train_step_isda"]
    assert isda["vs_train_step"] == isda["vs_paired"] and len(isda["paired_all_seconds"]) == 2
    md = (tmp_path / "tp" / "throughput.md").read_text()
    assert "| LatentNoise, compiled codec, mode=reduce-overhead | t(x, y) |" in md and "| n/a |" in md


def test_warm_up_calls_are_not_timed(monkeypatch):
    clock = iter([9.0, 1.0, 2.0, 3.0])  # the warm-up call (a compile, say) is slow
    monkeypatch.setattr(tp, "timed", lambda fn, device: next(clock))
    result = tp.measure(lambda: None, torch.device("cpu"), warmup=1, iters=3)
    assert result["seconds"] == 2.0 and result["all_seconds"] == [1.0, 2.0, 3.0] and result["first_call_seconds"] == 9.0


def test_median_seconds_synchronises_each_call_and_leaves_the_warm_up_out(monkeypatch):
    """benchmarks/models.py's timing, which throughput.py, quickstart_figures.py and isda_memory.py share (each timed
    its own way before): on CUDA the device synchronised before and after each call, the warm-up calls run the same
    way and are left out of the median."""
    models = sys.modules[tp.timed.__module__]  # benchmarks/models.py, which throughput.py takes ``timed`` from
    events, clock = [], iter(range(100))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append(f"sync {device}"))
    monkeypatch.setattr(models.time, "perf_counter", lambda: next(clock) ** 2)  # call i lasts 4i + 1 "seconds"
    seconds = models.median_seconds(lambda: events.append("call"), torch.device("cuda:1"), repeats=3, warmup=2)
    assert events == ["sync cuda:1", "call", "sync cuda:1"] * 5
    assert seconds == 13  # the median of calls 2, 3 and 4 (9, 13, 17 s); the warm-up's 1 and 5 s are left out
    events.clear()
    models.median_seconds(lambda: events.append("call"), torch.device("cpu"), repeats=2)
    assert events == ["call"] * 3  # nothing to wait for on the CPU


def test_smoke_defaults_help_lists_them_as_typed_on_the_command_line():
    """Mutation round 34: the five scripts' --smoke help lists its defaults through benchmarks/models.py's helper: an
    option as spelled on the command line (dashes), a list as its values one by one."""
    models = sys.modules[tp.timed.__module__]
    assert models.smoke_defaults_help({"batch_size": 8, "seeds": [0, 1], "backend": "eager"}) == \
        "--batch-size 8, --seeds 0 1, --backend eager"


def test_targets_are_not_judged_at_another_batch_size():
    result = _result("cuda", ROWS)
    result["config"]["batch_size"] = 64
    md = tp.format_table(result)
    assert "This run is not that setting (batch 64)" in md and "| pass |" not in md and "| fail |" not in md


def test_table_gives_each_pgd_steps_cost():
    rows = [_row("train_step", "step", 0.010), _row("latent_adversarial_0", "a0", 0.010),
            _row("latent_adversarial_1", "a1", 0.020), _row("latent_adversarial_3", "a3", 0.040)]
    md = tp.format_table(_result("cuda", rows))
    assert "fixed 10.00 ms, first step 10.00 ms, each of steps 2-3 10.00 ms" in md


def test_images_per_second_is_the_batch_over_its_seconds(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENT_TRANSFORMS_OFFLINE", "1")
    monkeypatch.setenv("LATENT_TRANSFORMS_HOME", str(tmp_path / "hub"))
    monkeypatch.setattr(tp, "measure", lambda fn, device, warmup, iters, paired=None: {
        "seconds": 0.5, "all_seconds": [0.5], "first_call_seconds": 0.5, "peak_extra_bytes": None})
    monkeypatch.setattr(tp, "normflows_roundtrip", lambda glow, x, eps, g: x + 0.25)  # this path off by 0.25
    result = tp.main(["--smoke", "--device", "cpu", "--no-compile", "--out", str(tmp_path / "tp")])
    assert {r["images_per_second"] for r in result["rows"]} == {16.0}  # batch 8 in 0.5 s
    assert "| 500.00 | 16 | 1x |" in (tmp_path / "tp" / "throughput.md").read_text()
    config = result["config"]  # each path's round-trip error under its own name
    assert config["max_abs_roundtrip_error_normflows"] == pytest.approx(0.25)
    assert config["max_abs_roundtrip_error_codec"] < 1e-3 and config["max_abs_diff_normflows_vs_codec_roundtrip"] > 0.2
    # every row's x is a ratio to the training step, the first row: its failure ends the run with its own error
    monkeypatch.setattr(tp, "measure", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("CUDA out of memory")))
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        tp.main(["--smoke", "--device", "cpu", "--no-compile", "--out", str(tmp_path / "failed")])


def test_a_figure_exactly_at_a_targets_bound_meets_it():
    # "<= 0.5x" and ">= 10x": the bound itself passes, on either side
    assert tp.target("at most", 0.5, 0.5, "{:.3g}x")["met"] is True
    assert tp.target("at most", 0.5001, 0.5, "{:.3g}x")["met"] is False
    assert tp.target("at least", 10.0, 10, "{:.3g}x", at_least=True)["met"] is True
    assert tp.target("at least", 9.999, 10, "{:.3g}x", at_least=True)["met"] is False
    assert tp.target("unmeasured", None, 10, "{:.3g}x")["met"] is None


def test_cache_sizes_count_the_latents_in_their_own_dtype():
    # a half-precision codec's cache holds 2-byte latents: a full CIFAR-10 cache is half a float32 one's size
    from types import SimpleNamespace

    for dtype, size in ((torch.float32, 4), (torch.float16, 2)):
        sizes = tp.cache_sizes(SimpleNamespace(latents=torch.zeros(6, 3072, dtype=dtype)))
        assert sizes == {"cache_bytes": 6 * 3072 * size, "cifar10_cache_bytes": 50_000 * 3072 * size}


def test_report_gives_each_row_its_cost_in_training_steps_and_counts_the_rows_still_to_come(tmp_path):
    """An augmentation row's x is its seconds over the training step's; the ISDA row's is its paired median ratio
    (not its seconds over the other row's step, timed apart); a partial report says how many rows are not measured."""
    args = tp.parse_args(["--device", "cpu", "--no-compile"])
    errors = {"max_abs_roundtrip_error_codec": 2e-6, "max_abs_roundtrip_error_normflows": 3e-6}
    pending = [{"key": "varmixup_all", "method": "later", "timed": "t(x, y)"}] * 2  # not measured yet
    rows = [dict(r) for r in ROWS] + [dict(r) for r in pending]
    rows[-3]["seconds"] = 0.0125  # the ISDA step: 1.25x the train_step row's seconds, 1.08x its own plain step's
    result = tp.write_report(tmp_path, args, torch.device("cpu"), dict(tp.TARGET_CODECS), None, rows, 1e-6, errors,
                             None, 0.0, partial=True)
    by_key = {r["key"]: r for r in result["rows"]}
    assert by_key["latent_noise"]["vs_train_step"] == pytest.approx(0.4)
    assert by_key["train_step_isda"]["vs_train_step"] == 1.08
    assert len(result["rows"]) == len(ROWS) and result["partial"]
    assert (tmp_path / "throughput.md").read_text().endswith("**Partial**: 2 of 11 rows not measured yet.\n")



def test_a_random_init_codec_has_the_librarys_default_size():
    """Timed in place of a missing hub codec: its speed stands for the default's only at the default's size."""
    from latent_transforms.codecs import ConvVAE, Glow

    for kind, default in (("glow", Glow()), ("vae", ConvVAE())):
        shapes = {name: t.shape for name, t in tp.random_init_codec(kind).state_dict().items()}
        assert shapes == {name: t.shape for name, t in default.state_dict().items()}, kind


def test_the_codec_round_trip_adds_noise_of_l2_norm_eps_per_image():
    from types import SimpleNamespace

    codec = SimpleNamespace(encode_flat=lambda x: x.flatten(1) * 2, decode_flat=lambda u: u / 2)
    x = torch.rand(5, 3, 4, 4)
    assert torch.equal(tp.codec_roundtrip(codec, x, 0.0, None), x.flatten(1))
    out = tp.codec_roundtrip(codec, x, 3.0, torch.Generator().manual_seed(0))
    assert torch.allclose(((out - x.flatten(1)) * 2).norm(dim=1), torch.full((5,), 3.0))  # in the latent space


def test_a_failed_row_keeps_the_compiled_rows_note_of_those_that_ran(tmp_path, monkeypatch):
    """Audit 149: any failed row (an eager VarMixup out of memory) dropped the compiled rows' note and the compiled vs
    eager round trip, though both Glow round trips had run; a compiled row that failed is left out of the note."""
    from latent_transforms import VarMixup

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    def measure(fn, device, warmup, iters, paired=None):  # one call each, no timing
        fn()
        return {"seconds": 0.5, "all_seconds": [0.5], "first_call_seconds": 2.0, "peak_extra_bytes": None}

    monkeypatch.setenv("LATENT_TRANSFORMS_OFFLINE", "1")
    monkeypatch.setenv("LATENT_TRANSFORMS_HOME", str(tmp_path / "hub"))
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)  # nothing compiles
    monkeypatch.setattr(VarMixup, "transform", out_of_memory)
    monkeypatch.setattr(tp, "measure", measure)
    result = tp.main(["--smoke", "--device", "cpu", "--compile", "--out", str(tmp_path / "tp")])
    assert "error" in {r["key"]: r for r in result["rows"]}["varmixup"]
    assert result["config"]["max_abs_diff_compiled_vs_eager_codec_roundtrip"] < 1e-4
    md = (tmp_path / "tp" / "throughput.md").read_text()
    assert "had not built: Glow encode + noise + decode, library codec, compiled (folded fast path) 2.0 s, " \
           "LatentNoise, compiled codec 2.0 s, LatentAdversarial, 1 PGD step, compiled codec 2.0 s. Glow round trip, " \
           "compiled vs eager codec, no noise: max |difference| " in md
    compiled = [_row("glow_codec_compiled", "compiled round trip", 0.002, first_call_seconds=30.0),
                {"key": "latent_noise_compiled", "method": "compiled LatentNoise", "timed": "t", "error": "failed"}]
    md = tp.format_table(_result("cuda", [ROWS[0], *compiled]))
    assert "had not built: compiled round trip 30.0 s.\n" in md  # not measured: no round-trip figure
