"""How far ISDA's float32 statistics drift from float64's over long runs, on the CPU: ``FeatureCovariance`` (its
covariance merged as one increment, ``S + w (S' - S + (1 - w) d d^T)``) and the merge it replaced
(``(1 - w) S + w S' + w (1 - w) d d^T``, its decay ``1 - w`` rounded to float32's steps of 6e-8 near 1), each in float32
against ``FeatureCovariance`` in float64 on the same stream; and a running mean kept in bfloat16 (what 16-bit
statistics did before they were refused) against the features' mean. Diagonal covariance, 8 features. Prints a
Markdown table with the old merge's error against the library's.

    python benchmarks/isda_precision.py
    python benchmarks/isda_precision.py --smoke   # short streams: checks the script
"""
from __future__ import annotations

import sys

import torch

from latent_transforms.feature_covariance import FeatureCovariance
from latent_transforms.validation import POSITIVE_INT

from models import SEED, argument_parser, parse_args_with_smoke, refuse_repeats, run_script, smoke_defaults_help

FEATURES = 8
SMOKE_DEFAULTS = {"resumed_steps": 50, "from_zero_steps": 50, "seeds": [0]}


class ReplacedMerge:
    """The diagonal merge before 2026-12-05, in float32: mean ``+ w d``, covariance ``(1 - w) S + w S' + w (1 - w) d^2``
    (``w = m / (n + m)`` from int64 counts in float64, as the library's)."""

    def __init__(self, estimator: FeatureCovariance):
        self.mean, self.cov = estimator.mean[0].clone(), estimator.cov[0].clone()
        self.count = int(estimator.count[0])

    def update(self, f: torch.Tensor) -> None:
        m = len(f)
        w = torch.tensor(m / (self.count + m), dtype=torch.float64).float()
        batch_mean = f.mean(0)
        delta = batch_mean - self.mean
        self.cov = (1 - w) * self.cov + w * ((f - batch_mean) ** 2).mean(0) + w * (1 - w) * delta * delta
        self.mean = self.mean + w * delta
        self.count += m


def relative_error(cov: torch.Tensor, reference: torch.Tensor) -> float:
    return float((cov.double() - reference).norm() / reference.norm())


def drift(start: int, steps: int, seed: int) -> tuple[float, float]:
    """One class resumed at ``start`` samples (mean 1, variance 0.5), then ``steps`` updates of one sample: the
    covariance's relative error against float64's, library merge and replaced merge, both float32."""
    g = torch.Generator().manual_seed(seed)
    est = FeatureCovariance(1, FEATURES, covariance="diagonal", sync_stats=False)
    est.mean.fill_(1.0)
    est.cov.fill_(0.5)
    est.count.fill_(start)
    wide, replaced = FeatureCovariance(1, FEATURES, covariance="diagonal", sync_stats=False).double(), ReplacedMerge(est)
    wide.load_state_dict(est.state_dict())
    y = torch.zeros(1, dtype=torch.int64)
    for f in 1 + 0.5**0.5 * torch.randn(steps, 1, FEATURES, generator=g):
        est.update(f, y, check_y=False)
        wide.update(f.double(), y, check_y=False)
        replaced.update(f)
    return relative_error(est.cov[0], wide.cov[0]), relative_error(replaced.cov, wide.cov[0])


def bf16_mean(steps: int, per_step: int, seed: int) -> tuple[float, float]:
    """A running mean kept in bfloat16, ``per_step`` features merged per step (variance 1, their mean rising from 2 to
    4 over the steps, as features move while a network trains), the merge computed in float32 and written back: its
    value at the end, and the features' mean."""
    g = torch.Generator().manual_seed(seed)
    stream = torch.linspace(2, 4, steps).unsqueeze(1) + torch.randn(steps, per_step, generator=g)
    mean = torch.zeros((), dtype=torch.bfloat16)
    for n, f in enumerate(stream):
        w = per_step / (n * per_step + per_step)
        mean = (mean.float() + w * (f.mean() - mean.float())).to(torch.bfloat16)
    return float(mean), float(stream.mean())


def main(argv=None) -> None:
    ap = argument_parser(__doc__)
    ap.add_argument("--resumed-at", type=POSITIVE_INT, default=10**6, help="the first stream's samples before it")
    ap.add_argument("--resumed-steps", type=POSITIVE_INT, default=5000, help="the first stream's updates")
    ap.add_argument("--from-zero-steps", type=POSITIVE_INT, default=115_000,
                    help="the second stream's updates from no sample (ImageNet's 90 epochs of one class)")
    ap.add_argument("--seeds", type=SEED, nargs="+", default=[0], help="a row each")
    ap.add_argument("--bf16-steps", type=POSITIVE_INT, default=200, help="the bfloat16 mean's updates")
    ap.add_argument("--bf16-per-step", type=POSITIVE_INT, default=4, help="features per bfloat16 update")
    ap.add_argument("--no-progress", action="store_true", help="no line on stderr as each stream is done")
    ap.add_argument("--smoke", action="store_true", help="checks the script in seconds, with these defaults instead of "
                    "the others: " + smoke_defaults_help(SMOKE_DEFAULTS))
    args = parse_args_with_smoke(ap, SMOKE_DEFAULTS, argv=argv)
    refuse_repeats(ap, "--seeds", args.seeds)
    torch.set_num_threads(1)
    print(f"\nFeatureCovariance, diagonal, {FEATURES} features, one sample per update, float32 against float64; "
          f"torch {torch.__version__}\n")
    print("| stream | seed | relative error of the covariance: library merge | replaced merge | replaced ÷ library |")
    print("|---|---|---|---|---|")
    for name, start, steps in ((f"resumed at {args.resumed_at:,} samples, {args.resumed_steps:,} updates",
                                args.resumed_at, args.resumed_steps),
                               (f"from 0 samples, {args.from_zero_steps:,} updates", 0, args.from_zero_steps)):
        for seed in args.seeds:
            library, replaced = drift(start, steps, seed)
            print(f"| {name} | {seed} | {library:.1e} | {replaced:.1e} | {replaced / max(library, 1e-300):.0f}x |",
                  flush=True)
            if not args.no_progress:
                print(f"{name}, seed {seed}: done", file=sys.stderr, flush=True)
    kept, actual = bf16_mean(args.bf16_steps, args.bf16_per_step, args.seeds[0])
    print(f"\nA running mean kept in bfloat16, {args.bf16_per_step} features per update (their mean rising from 2 to 4), "
          f"{args.bf16_steps * args.bf16_per_step:,} in all (seed {args.seeds[0]}): {kept:.2f}, where the features' "
          f"mean is {actual:.2f}.")


if __name__ == "__main__":
    run_script(main)
