#!/usr/bin/env python
"""One table from several ``accuracy.py`` output folders: a settings sweep (issue 9's calibration on a val split).

``accuracy.py`` refuses to mix settings in one folder, so a sweep runs one folder per setting (and, to use both
cores of a small machine, per seed). This script reads every ``results.json`` given, names each row by its arm and
the arm's method settings (folders that differ in them give rows of their own), and prints accuracy per seed, the
mean and the difference from the baseline on the seeds both have (as ``accuracy.py``'s table). It refuses folders
whose latent arms were trained with different checkpoints (their ``codec`` records)::

    python benchmarks/sweep_report.py runs/sweep/*/results.json --out runs/sweep/sweep.md
"""
from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

from latent_transforms.validation import output_folder

from accuracy import SMOKE_BANNER, arm_settings, common_codecs, delta_vs_baseline, read_results, setting
from models import argument_parser, run_script, write_text

# what every folder must share (data and its sha256, schedule, seeding and scoring protocol); the arm settings
# (accuracy.ARM_SETTINGS) name the rows. Not the --glow/--vae flags, which a folder of arms without a codec need not
# give: the checkpoints are checked run by run (common_codecs)
SHARED = ["smoke", "train", "test", "eval_on", "epochs", "batch_size", "lr", "weight_decay", "width", "precision",
          "val_fraction", "n_train", "n_eval", "data_sha256", "protocol"]


def collect(paths: list[Path]) -> tuple[dict, dict]:
    """-> ({row name: {seed: run}}, the shared config): the rows as accuracy.py's runs, one per arm and settings."""
    rows: dict[str, dict[str, dict]] = defaultdict(dict)
    source: dict[tuple[str, str], Path] = {}  # (row, seed) -> the file it came from
    shared = None
    every_run: dict[str, dict] = {}  # arm -> {"seed (in path)": run}, to check that they share their checkpoints
    for path in paths:
        result = read_results(path, "sweep_report.py", ("config", "runs"))
        cfg = result["config"]
        mine = {k: setting(cfg, k) for k in SHARED}
        if shared is None:
            shared = mine
        elif mine != shared:
            diff = {k: (shared[k], mine[k]) for k in SHARED if shared[k] != mine[k]}
            raise SystemExit(f"{path}: not the same data/schedule as the first folder: {diff}")
        for arm, seeds in result["runs"].items():
            settings = arm_settings(cfg, arm)
            name = f"{arm} ({settings})" if settings else arm
            for seed, run in seeds.items():
                if (name, seed) in source:
                    raise SystemExit(f"{name} seed {seed} is in both {source[name, seed]} and {path}: give each "
                                     f"run once")
                source[name, seed] = path
                rows[name][seed] = run
                every_run.setdefault(arm, {})[f"{seed} (in {path})"] = run
    if shared is None:
        raise SystemExit("no results.json given")
    common_codecs(every_run, "sweep_report")
    return rows, shared


def format_table(rows: dict, shared: dict) -> str:
    seeds = sorted({int(s) for r in rows.values() for s in r})
    lines = [SMOKE_BANNER, ""] if shared.get("smoke") else []  # accuracy.py --smoke runs, as their own report says
    lines += [f"{shared['eval_on']} accuracy; width-{shared['width']} ResNet-18, {shared['epochs']} epochs, "
              f"{shared['n_train']} training images, {shared['n_eval']} evaluated, {shared['precision']}.", "",
              "| setting | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | Δ vs baseline (paired ± std) | s / epoch |",
              "|---|" + "---|" * (len(seeds) + 3)]
    for name, by_seed in sorted(rows.items(), key=lambda kv: (kv[0] != "baseline", kv[0])):
        mean = statistics.mean(run["accuracy"] for run in by_seed.values())
        delta = delta_vs_baseline(rows, name, seeds)  # on the seeds shared with the baseline; "-" without one
        cells = [f"{100 * by_seed[str(s)]['accuracy']:.1f}%" if str(s) in by_seed else "-" for s in seeds]
        epoch_s = statistics.mean(run["seconds_per_epoch"] for run in by_seed.values())
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {100 * mean:.1f}% | {delta} | {epoch_s:.2f} |")
    return "\n".join(lines)


def results_file(text: str) -> Path:
    """An argparse type: a ``results.json``, or an ``accuracy.py`` output folder holding one."""
    path = Path(text)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no results.json at {path}")
    return path


def main(argv=None) -> str:
    p = argument_parser(__doc__)
    p.add_argument("results", nargs="+", type=results_file,
                   help="accuracy.py output folders, or their results.json files")
    p.add_argument("--out", type=Path, help="also write the table here")
    args = p.parse_args(argv)
    out = None if args.out is None else output_folder(args.out.parent, "--out's folder") / args.out.name
    table = format_table(*collect(args.results))
    print(table)
    if out:
        write_text(out, table + "\n")
    return table


if __name__ == "__main__":
    run_script(main)
