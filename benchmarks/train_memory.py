"""The peak memory of a CPU ``train_codec`` call against the memory check's estimate (``train._step_memory``): each case
in a fresh process of 2 training steps on random images, the machine's memory set to the estimate for its batch (so
that the ActNorm init and the final metrics take the batches they would take on such a machine). Each phase's peak
resident memory (``VmHWM``, reset between phases through ``/proc/self/clear_refs``: Linux only) past the memory the
process held before the call (the check's forward of one image and its loading of torch._dynamo counted in the call),
and the whole call's peak against the estimate before audit 418 and now. Prints a Markdown table.

    python benchmarks/train_memory.py
    python benchmarks/train_memory.py --case vae 3 64 64 8
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from latent_transforms import train
from latent_transforms.codecs import Glow
from latent_transforms.progress import progress_bar

# (kind, C, H, W, batch): the training set has 512 images (256 of 64x64 ones)
CASES = [("flow", 3, 32, 32, 64), ("flow", 3, 32, 32, 128), ("vae", 3, 32, 32, 64), ("vae", 3, 32, 32, 128),
         ("flow", 3, 64, 64, 8), ("flow", 3, 64, 64, 16), ("vae", 3, 64, 64, 8), ("vae", 3, 64, 64, 16),
         ("flow", 1, 8, 8, 16), ("vae", 1, 8, 8, 16)]
PHASES = ("check, build", "ActNorm init", "step 1", "step 2", "state save", "final files")


def _status(key: str) -> int:
    return int(re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text())[1]) * 1024


def _phase(peaks: dict[str, int], label: str, current: list[str]) -> None:
    """Close the phase ``current[0]`` (its peak into ``peaks``, the largest if it came before) and open ``label``."""
    peaks[current[0]] = max(peaks.get(current[0], 0), _status("VmHWM"))
    Path("/proc/self/clear_refs").write_text("5")
    current[0] = label


def _wrapped(owner: object, attr: str, label: object, peaks: dict[str, int], current: list[str]) -> None:
    """Make ``owner.attr`` a phase: ``label`` (a str, or a callable giving it) while it runs, "other" after."""
    real = getattr(owner, attr)

    def phase(*args: object, **kwargs: object) -> object:
        _phase(peaks, label() if callable(label) else str(label), current)
        try:
            return real(*args, **kwargs)
        finally:
            _phase(peaks, "other", current)

    setattr(owner, attr, phase)


def run_case(kind: str, c: int, h: int, w: int, batch: int) -> dict[str, object]:
    """One case in this process: the estimate, the memory before the call and each phase's peak (bytes)."""
    torch.set_num_threads(1)
    bins = 17 if c == 1 else 256
    n = 512 if h * w <= 32 * 32 else 256
    x = torch.randint(0, bins, (n, c, h, w), generator=torch.Generator().manual_seed(0)).float() / (bins - 1)
    config = train.default_config(kind, (c, h, w), num_bins=bins)
    before = _status("VmRSS")  # the libraries the check loads (_step_bytes: torch._dynamo) count in the call's peak
    Path("/proc/self/clear_refs").write_text("5")
    peaks: dict[str, int] = {}
    current, steps = ["check, build"], [0]
    kept, state = train._step_bytes(json.dumps(config, sort_keys=True))
    checked: list[int] = []

    def memory_of_the_estimate(device: torch.device) -> int:
        """The estimate for ``batch`` at the check (which reads this process's memory just after): the machine's."""
        per_image, (_, held) = train._step_memory(config)
        checked.append(state + held + batch * per_image)
        return checked[-1]

    train.device_memory = memory_of_the_estimate  # train's own name for it

    def step() -> str:
        steps[0] += 1
        return f"step {min(steps[0], 2)}"

    _wrapped(Glow, "init_actnorm", "ActNorm init", peaks, current)
    _wrapped(train._TrainingRun, "_update", step, peaks, current)
    _wrapped(train._TrainingRun, "checkpoint", "state save", peaks, current)
    for attr in ("_store", "eval_codec", "_save_grid"):
        _wrapped(train, attr, "final files", peaks, current)
    with tempfile.TemporaryDirectory() as out:
        train.train_codec(kind, x, out, max_steps=2, batch_size=batch, progress=False, num_bins=bins)
    _phase(peaks, "end", current)
    return {"old_estimate": state + batch * kept, "need": checked[0], "before": before,
            "peaks": {k: v - before for k, v in peaks.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", nargs=5, metavar=("KIND", "C", "H", "W", "BATCH"),
                        help="one case in this process, printed as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    args = parser.parse_args()
    if args.case:
        kind, *sizes = args.case
        print(json.dumps(run_case(kind, *map(int, sizes))))
        return
    print("| codec, images, batch | old estimate | new estimate | held before | peak rise: " + " / ".join(PHASES) +
          " | rise / old, peak / new | fits |")
    print("|---|---|---|---|---|---|---|")
    for case in progress_bar(CASES, desc="cases", unit="case", disable=args.no_progress):
        done = subprocess.run([sys.executable, __file__, "--case", *map(str, case)], capture_output=True, text=True,
                              check=True)
        r = json.loads(done.stdout.splitlines()[-1])
        peaks = r["peaks"]
        whole = r["before"] + max(peaks.values())
        rise = " / ".join(f"{peaks[p] / 1e6:.0f}" if p in peaks else "-" for p in PHASES)
        kind, c, h, w, batch = case
        print(f"| {kind} {c}x{h}x{w}, {batch} | {r['old_estimate'] / 1e6:.0f} MB | {r['need'] / 1e6:.0f} MB | "
              f"{r['before'] / 1e6:.0f} MB | {rise} MB | {max(peaks.values()) / r['old_estimate']:.2f}, "
              f"{whole / r['need']:.2f} | {'yes' if whole <= r['need'] else 'NO'} |", flush=True)


if __name__ == "__main__":
    main()
