#!/usr/bin/env python
"""One table from several ``accuracy.py`` output folders: a settings sweep (issue 9's calibration on a val split).

``accuracy.py`` refuses to mix settings in one folder, so a sweep runs one folder per setting (and, to use both
cores of a small machine, per seed). This script reads every ``results.json`` given, names each row by the method
settings that differ between folders, and prints accuracy per seed, the mean and the difference from the baseline
arm's mean. It refuses folders whose latent arms were trained with different checkpoints (their ``codec`` records)::

    python benchmarks/sweep_report.py runs/sweep/*/results.json --out runs/sweep/sweep.md
"""
from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

from accuracy import ARM_SETTINGS, common_codecs, setting

# what every folder must share (data and its sha256, schedule, seeding and scoring protocol, codecs); the arm
# settings (accuracy.ARM_SETTINGS) name the rows
SHARED = ["smoke", "train", "test", "eval_on", "epochs", "batch_size", "lr", "weight_decay", "width", "precision",
          "val_fraction", "n_train", "n_eval", "glow", "vae", "data_sha256", "protocol"]


def collect(paths: list[Path]) -> tuple[dict, dict]:
    """-> ({row name: {seed: (accuracy, seconds per epoch)}}, the shared config)."""
    rows: dict[str, dict[int, tuple[float, float]]] = defaultdict(dict)
    source: dict[tuple[str, int], Path] = {}  # (row, seed) -> the file it came from
    shared = None
    every_run: dict[str, dict] = {}  # arm -> {"seed (in path)": run}, to check that they share their checkpoints
    for path in paths:
        result = json.loads(path.read_text())
        cfg = result["config"]
        mine = {k: setting(cfg, k) for k in SHARED}
        if shared is None:
            shared = mine
        elif mine != shared:
            diff = {k: (shared[k], mine[k]) for k in SHARED if shared[k] != mine[k]}
            raise SystemExit(f"{path}: not the same data/schedule as the first folder: {diff}")
        for arm, seeds in result["runs"].items():
            values = [(k, v) for k in ARM_SETTINGS.get(arm, []) if (v := setting(cfg, k)) is not None]  # None: default
            settings = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in values)
            name = f"{arm} ({settings})" if settings else arm
            for seed, run in seeds.items():
                if (name, int(seed)) in source:
                    raise SystemExit(f"{name} seed {seed} is in both {source[name, int(seed)]} and {path}: give each "
                                     f"run once")
                source[name, int(seed)] = path
                rows[name][int(seed)] = (run["accuracy"], run["seconds_per_epoch"])
                every_run.setdefault(arm, {})[f"{seed} (in {path})"] = run
    if shared is None:
        raise SystemExit("no results.json given")
    common_codecs(every_run, "sweep_report")
    return rows, shared


def format_table(rows: dict, shared: dict) -> str:
    seeds = sorted({s for r in rows.values() for s in r})
    base = rows.get("baseline")
    base_mean = statistics.mean(a for a, _ in base.values()) if base else None
    lines = [f"{shared['eval_on']} accuracy; width-{shared['width']} ResNet-18, {shared['epochs']} epochs, "
             f"{shared['n_train']} training images, {shared['n_eval']} evaluated, {shared['precision']}.", "",
             "| setting | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | Δ vs baseline | s / epoch |",
             "|---|" + "---|" * (len(seeds) + 3)]
    for name, by_seed in sorted(rows.items(), key=lambda kv: (kv[0] != "baseline", kv[0])):
        accs = [by_seed[s][0] for s in seeds if s in by_seed]
        mean = statistics.mean(accs)
        delta = "-" if base_mean is None else f"{100 * (mean - base_mean):+.1f}"
        cells = [f"{100 * by_seed[s][0]:.1f}%" if s in by_seed else "-" for s in seeds]
        epoch_s = statistics.mean(t for _, t in by_seed.values())
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {100 * mean:.1f}% | {delta} | {epoch_s:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="+", type=Path, help="results.json files of accuracy.py runs")
    p.add_argument("--out", type=Path, help="also write the table here")
    args = p.parse_args(argv)
    table = format_table(*collect(args.results))
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")
    return table


if __name__ == "__main__":
    main()
