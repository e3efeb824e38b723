"""ISDA at ImageNet's size on the CPU: the time and peak memory of one ``ISDALoss`` step (forward and backward, the
statistics' update included), its correction formed as matrix products (this library) or term by term over
``N x C x A`` tensors (the official ImageNet code's diagonal correction, with the same update), each case in a
fresh process whose statistics are sized before the step. Prints a Markdown table with the term-by-term form's time
and peak against the matrix products' (same statistics, same A). ``--update``: one full-covariance statistics update
alone (``FeatureCovariance.update``, A = 640) in place of the steps, with the size of its ``K x A x A`` temporary.

    python benchmarks/isda_memory.py
    python benchmarks/isda_memory.py --update --classes 100 --batch 128
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from latent_transforms import ISDALoss
from latent_transforms.feature_covariance import FeatureCovariance
from latent_transforms.validation import POSITIVE_FLOAT, POSITIVE_INT, THREADS

from models import argument_parser, run_script, timed

# (correction, covariance, A): C = K classes, N samples per step, as --classes and --batch give them
CASES = [("matrix products", "diagonal", 512), ("term by term", "diagonal", 512),
         ("matrix products", "diagonal", 2048), ("term by term", "diagonal", 2048),
         ("matrix products", "full", 512)]
UPDATE_CASES = [("update alone", "full", 640)]  # --update: FeatureCovariance.update, no correction
GIB, MIB = 2**30, 2**20


def size(n: int) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / MIB:.0f} MiB"


def term_by_term(loss: ISDALoss, features: torch.Tensor, fc: nn.Linear, y: torch.Tensor) -> torch.Tensor:
    """The official ImageNet code's loss: its diagonal correction formed over ``N x C x A`` tensors, after the same
    statistics update as ``loss``'s."""
    n, a = features.shape
    loss.estimator.update(features.detach(), y)
    w = fc.weight.expand(n, fc.out_features, a)
    w_y = torch.gather(w, 1, y.view(n, 1, 1).expand_as(w))
    sigma2 = loss.lam * ((w - w_y) ** 2 * loss.estimator.cov[y].view(n, 1, a)).sum(2)
    return F.cross_entropy(fc(features) + 0.5 * sigma2, y)


def rss(field: str) -> int:
    """``VmRSS`` or ``VmHWM`` (the peak since the last reset) of this process, in bytes."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1]) * 1024


def one_case(cases: list, case: int, classes: int, batch: int) -> None:
    """Runs a case in this process; prints the address space held before the step (bytes: what of the limit the step
    cannot use), then seconds and the peak RSS above what was held before the step."""
    correction, covariance, a = cases[case]
    torch.manual_seed(0)
    fc = nn.Linear(a, classes)
    features, y = torch.randn(batch, a, requires_grad=True), torch.randint(0, classes, (batch,))
    if correction == "update alone":
        estimator = FeatureCovariance(classes, a, covariance=covariance)  # sized now, as the loss's statistics
        step = lambda: estimator.update(features.detach(), y)  # noqa: E731
    else:
        loss = ISDALoss(classes, covariance=covariance, feature_dim=a)  # sized now: not counted in the step's peak
        loss.set_progress(1.0)  # full strength: at 0 the correction is skipped
        form = loss if correction == "matrix products" else lambda f, fc, y: term_by_term(loss, f, fc, y)
        step = lambda: form(features, fc, y).backward()  # noqa: E731
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (a first step's memory, freed
    # but kept by the allocator, would hide the peak of a second one: the step measured is the first)
    print(rss("VmSize"), flush=True)
    before = rss("VmRSS")
    seconds = timed(step, features.device)
    print(f"{seconds:.6f} {max(rss('VmHWM') - before, 0)}")


def main() -> None:
    ap = argument_parser(__doc__)
    ap.add_argument("--classes", type=POSITIVE_INT, default=1000, help="C, also ISDA's K")
    ap.add_argument("--batch", type=POSITIVE_INT, default=256, help="N")
    ap.add_argument("--memory-limit", type=POSITIVE_FLOAT, default=7.0, help="each case's address-space limit, GiB")
    ap.add_argument("--threads", type=THREADS, default=1, help="CPU threads for torch")
    ap.add_argument("--update", action="store_true",
                    help="time one full-covariance statistics update alone (A = 640) instead of the loss's steps")
    ap.add_argument("--case", type=int, help=argparse.SUPPRESS)  # internal: the case a child process runs
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cases = UPDATE_CASES if args.update else CASES
    if args.case is not None:
        resource.setrlimit(resource.RLIMIT_AS, (int(args.memory_limit * GIB),) * 2)
        return one_case(cases, args.case, args.classes, args.batch)
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]  # a case cannot raise its limit past the shell's (ulimit -v)
    if hard != resource.RLIM_INFINITY and int(args.memory_limit * GIB) > hard:
        ap.error(f"--memory-limit {args.memory_limit:g} is above this shell's address-space limit, {hard / GIB:g} GiB "
                 f"(ulimit -v): give at most that")
    results, held = {}, {}  # case -> (seconds, peak bytes) or None (out of memory); case -> address space before
    for i, (correction, covariance, a) in enumerate(cases):
        proc = subprocess.run([sys.executable, __file__, "--case", str(i), "--classes", str(args.classes), "--batch",
                               str(args.batch), "--memory-limit", str(args.memory_limit), "--threads",
                               str(args.threads)] + ["--update"] * args.update, capture_output=True, text=True)
        lines = proc.stdout.split()
        started = bool(lines) and lines[0].isdigit()  # it printed its address space: the step began
        held[i] = int(lines[0]) if started else 0
        # the error's own line: a traceback's source lines name memory_limit (a failed setrlimit was out of memory)
        ran_out = "memory" in (proc.stderr.strip().splitlines() or [""])[-1].lower()
        if proc.returncode == 0:
            results[i] = float(lines[-2]), int(lines[-1])
        elif started and ran_out:
            results[i] = None
        elif ran_out:  # the limit is the user's: one line, not the child's traceback
            raise ValueError(f"--memory-limit {args.memory_limit:g}: case {i + 1} of {len(cases)} ({covariance}, A = "
                             f"{a}) ran out of memory before its step, allocating its inputs and statistics; give a "
                             f"larger limit (what the process holds before the step counts against it)")
        else:
            raise RuntimeError(f"case {i + 1} of {len(cases)} failed{'' if started else ' before its step'} under a "
                               f"{args.memory_limit:g} GiB address-space limit:\n{proc.stderr[-3000:]}")
        print(f"case {i + 1} of {len(cases)} done", file=sys.stderr, flush=True)
    if args.update:
        correction, covariance, a = cases[0]
        print(f"\nFeatureCovariance.update, full covariance, K = {args.classes}, A = {a}, N = {args.batch}, float32, "
              f"{args.threads} thread(s), torch {torch.__version__}\n")
        print("| statistics' size | time | peak RSS above the features and statistics | its K x A x A temporary |")
        print("|---|---|---|---|")
        cells = "out of memory | -" if results[0] is None else f"{results[0][0]:.2f} s | {size(results[0][1])}"
        print(f"| {args.classes * a * a * 4 / 1e6:.0f} MB | {cells} | {size(args.classes * a * a * 4)} |")
        return
    print(f"\nISDALoss, K = C = {args.classes}, N = {args.batch}, float32, one step with its backward, "
          f"{args.threads} thread(s), torch {torch.__version__}, each case under a {args.memory_limit:g} GiB "
          f"address-space limit (what the process held before the step, torch's libraries and threads included, "
          f"counts against it)\n")
    print("| statistics | correction | statistics' size | time | peak RSS above the step's inputs and statistics "
          "| against matrix products: time, peak RSS |")
    print("|---|---|---|---|---|---|")
    for i, (correction, covariance, a) in enumerate(cases):
        statistics = args.classes * a * (a if covariance == "full" else 1) * 4 / 1e9
        result, against = results[i], "-"
        reference = next((results[j] for j, case in enumerate(CASES) if case == ("matrix products", covariance, a)),
                         None)
        if result is None:
            cells = f"out of memory ({size(int(args.memory_limit * GIB) - held[i])} of the limit left for the step) | -"
        else:
            cells = f"{result[0]:.1f} s | {size(result[1])}"
            if correction != "matrix products" and reference is not None:
                against = f"{result[0] / reference[0]:.1f}x, {result[1] / max(reference[1], 1):.1f}x"
        print(f"| {covariance}, A = {a} | {correction} | {statistics:.3g} GB | {cells} | {against} |")


if __name__ == "__main__":
    run_script(main)
