"""Choose the demo's defaults on a validation split of the digits *training* images (never the test set).

For each setting: train the demo CNN on a low-data subset (per class) of the training split minus a held-out
validation set, and report validation accuracy (mean over seeds). Prints a Markdown table; writes JSON.

    python benchmarks/calibrate_digits.py --out runs/calibrate-digits
    python benchmarks/calibrate_digits.py --smoke --out /tmp/digits-smoke   # tiny random-init codecs: seconds
"""
from __future__ import annotations

import statistics

import torch

from latent_transforms import ISDA, LatentAdversarial, LatentNoise, VarMixup, hub
from latent_transforms.data import load_images, low_data_split
from latent_transforms.models import digits_cnn
from latent_transforms.progress import progress_bar
from latent_transforms.validation import POSITIVE_INT, output_folder
from latent_transforms.evaluation import accuracy, fit_classifier, predict_proba

from models import (DIGITS_SHAPE, SEED, argument_parser, parse_args_with_smoke, refuse_repeats, run_script,
                    smoke_defaults_help, tiny_codecs, write_json)

SMOKE_DEFAULTS = {"per_class": 2, "val": 100, "epochs": 1, "seeds": [0]}


def settings(glow, vae, seed):
    yield "baseline", None
    for eps in (1.0, 2.0, 3.0, 5.0, 8.0):
        yield f"LatentNoise eps={eps}", LatentNoise(glow, eps=eps, generator=seed)
    for eps in (0.5, 1.5, 3.0):
        yield f"LatentAdversarial eps={eps} steps=1", LatentAdversarial(glow, eps=eps, steps=1, step_size=eps, generator=seed)
    for keep_detail in (False, True):
        for p in (0.25, 0.5, 1.0):
            yield (f"VarMixup p={p} keep_detail={keep_detail}",
                   VarMixup(vae, num_classes=10, p=p, keep_detail=keep_detail, generator=seed))
    for lam in (0.1, 0.5, 2.0):
        yield f"ISDA lambda0={lam}", ISDA(num_classes=10, lambda0=lam)


def main() -> None:
    ap = argument_parser(__doc__)
    ap.add_argument("--per-class", type=POSITIVE_INT, default=10, help="training images per class (low data)")
    ap.add_argument("--val", type=POSITIVE_INT, default=400, help="validation images held out of the training split")
    ap.add_argument("--epochs", type=POSITIVE_INT, default=40, help="training epochs of each setting")
    ap.add_argument("--seeds", type=SEED, nargs="+", default=[0, 1], metavar="SEED",
                    help="the seed values, not their number")
    ap.add_argument("--out", default="runs/calibrate-digits", help="output folder")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar (one step per setting and seed)")
    ap.add_argument("--smoke", action="store_true", help="checks the script in seconds: tiny random-init codecs "
                    "instead of glow-digits and vae-digits, and these defaults instead of the others: "
                    + smoke_defaults_help(SMOKE_DEFAULTS))
    args = parse_args_with_smoke(ap, SMOKE_DEFAULTS)
    refuse_repeats(ap, "--seeds", args.seeds)
    out = output_folder(args.out, "--out")  # now, not after every setting has trained
    torch.set_num_threads(1)
    x, y, _ = load_images("digits", "train")
    if args.val >= len(x):  # else: "y must be (N,) class indices with N > 0, got shape (0,)"
        raise ValueError(f"--val {args.val} leaves no training images: the digits training split has {len(x)}")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))
    val, rest = perm[: args.val], perm[args.val:]
    counts = torch.bincount(y[rest], minlength=10)
    if args.per_class > counts.min():  # else low_data_split's "class 0 has only ... samples, fewer than per_class=..."
        digit = int(counts.argmin())
        raise ValueError(f"--per-class {args.per_class} is more than the {int(counts[digit])} training images of digit "
                         f"{digit} left beside the --val {args.val} validation images")
    glow, vae = tiny_codecs(shape=DIGITS_SHAPE) if args.smoke else (hub.load("glow-digits"), hub.load("vae-digits"))
    results: dict[str, list[float]] = {}
    split = {seed: rest[low_data_split(y[rest], args.per_class, seed=seed)] for seed in args.seeds}
    runs = [(seed, name, augment) for seed in args.seeds for name, augment in settings(glow, vae, seed)]
    for seed, name, augment in progress_bar(runs, desc="settings", disable=args.no_progress):
        idx = split[seed]
        torch.manual_seed(seed)
        model = digits_cnn()
        fit_classifier(model, x[idx], y[idx], augment, epochs=args.epochs, batch_size=32, lr=0.05, seed=seed,
                       progress=False)
        results.setdefault(name, []).append(accuracy(predict_proba(model, x[val]), y[val]))
        print(f"seed {seed} {name}: {100 * results[name][-1]:.1f}%", flush=True)
    write_json(out / "calibration.json", results)  # whole or not at all
    print(f"\nvalidation accuracy ({args.val} held-out training images), {args.per_class}/class, "
          f"{args.epochs} epoch{'s' if args.epochs != 1 else ''}, seed{'s' if len(args.seeds) != 1 else ''} "
          f"{', '.join(map(str, args.seeds))}\n\n| setting | val accuracy |\n|---|---|")
    for name, accs in results.items():
        print(f"| {name} | {100 * statistics.mean(accs):.1f}% |")


if __name__ == "__main__":
    run_script(main)
