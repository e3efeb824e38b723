"""How large may eps be? A cheap, test-set-free calibration of LatentNoise/LatentAdversarial for a codec.

Holds out a validation split of the *training* images, trains a classifier on the rest (clean), then for each eps
perturbs the validation images and reports: how many decodes were rejected (non-finite or implausible), the mean
pixel change, the share of pixels changed by more than 0.1, the share of textured patches that moved (for a mask or
boxes kept aside: does the perturbation move content, or change it in place?), and the clean classifier's accuracy on
the perturbed images (does the perturbation keep the class?); and, for scale, the same for the images moved by one
pixel and for each image replaced by the next one.
A useful LatentNoise eps changes images visibly while the class survives; for LatentAdversarial the accuracy drop
is the point, and the rejection rate must stay near zero.

    python benchmarks/calibrate_eps.py --codec glow-digits --data digits
    python benchmarks/calibrate_eps.py --codec glow-cifar10 --data npz:../shared/data/cifar10/train-5k.npz --width 16
    python benchmarks/calibrate_eps.py --smoke --out /tmp/eps-smoke   # tiny random-init Glow, 200 digits: seconds
"""
from __future__ import annotations

import torch

from latent_transforms import LatentAdversarial, LatentNoise, hub
from latent_transforms.data import load_images
from latent_transforms.validation import POSITIVE_INT, THREADS, check_number, option, output_folder
from latent_transforms.evaluation import accuracy, fit_classifier, predict_proba
from latent_transforms.visualize import save_rows

from models import (SMOKE_IMAGES, argument_parser, clean_classifier_model, output_stem,
                    parse_args_with_smoke, run_script, smoke_defaults_help, tiny_codecs, write_json)

EPS = option(check_number, float)  # eps >= 0, the transforms' rule, checked before the classifier trains
TEXTURE = 0.05  # a patch with edges: moved by one pixel, it changes by more than this on average
SMOKE_DEFAULTS = {"data": "digits", "epochs": 1, "width": 4}


def displaced_patches(x: torch.Tensor, out: torch.Tensor, size: int = 8) -> tuple[float | None, int]:
    """Of the ``size`` x ``size`` patches tiling the images' interior (a pixel in from each side) that have edges,
    the share that ``out`` matches better moved by one pixel (any of the 8 directions) than in place, and how many
    there were (``None`` and 0 when none has edges). ``x``, ``out``: (N, C, H, W)."""
    size = min(size, x.shape[-2] - 2, x.shape[-1] - 2)

    def patches(t: torch.Tensor, dy: int = 0, dx: int = 0) -> torch.Tensor:  # (N * P, C * size * size)
        t = torch.roll(t, (dy, dx), (2, 3))[..., 1:-1, 1:-1]
        return t.unfold(2, size, size).unfold(3, size, size).permute(0, 2, 3, 1, 4, 5).flatten(0, 2).flatten(1)

    def error(dy: int, dx: int) -> torch.Tensor:  # (N * P,): how far ``out`` is from ``x`` moved by (dy, dx)
        return (patches(out) - patches(x, dy, dx)).abs().mean(1)

    moved = torch.stack([error(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx], 1).amin(1)
    textured = (patches(x, 0, 1) - patches(x)).abs().mean(1) > TEXTURE
    if not textured.any():
        return None, 0
    return float((moved < error(0, 0))[textured].float().mean()), int(textured.sum())  # a tie: in place


def main() -> None:
    ap = argument_parser(__doc__)
    ap.add_argument("--codec", help="hub name or .safetensors path (required; smoke: tiny random-init Glow)")
    ap.add_argument("--data", help="training images (data spec); the validation split comes from them (required; "
                                   "smoke: digits)")
    ap.add_argument("--val-fraction", type=option(check_number, float, high=1, low_open=True, high_open=True),
                    default=0.1, help="share of the --data images held out for validation")
    ap.add_argument("--noise-eps", type=EPS, nargs="+", default=[0.5, 1, 2, 3, 5, 10, 20], help="LatentNoise L2 radii")
    ap.add_argument("--adv-eps", type=EPS, nargs="+", default=[0.25, 0.5, 1, 2],
                    help="LatentAdversarial L2 radii (one PGD step of that size)")
    ap.add_argument("--epochs", type=POSITIVE_INT, default=20, help="the clean classifier's training epochs")
    ap.add_argument("--width", type=POSITIVE_INT, default=16, help="ResNet-18 width for RGB data")
    ap.add_argument("--threads", type=THREADS, default=1, help="CPU threads for torch")
    ap.add_argument("--out", default="runs/calibrate-eps", help="output folder")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar (the clean classifier's training)")
    ap.add_argument("--smoke", action="store_true", help=f"checks the script in seconds: the first {SMOKE_IMAGES} "
                    f"images of --data, a tiny random-init Glow unless --codec is given, and these defaults instead of "
                    f"the others: " + smoke_defaults_help(SMOKE_DEFAULTS))
    args = parse_args_with_smoke(ap, SMOKE_DEFAULTS, required=("--codec", "--data"))
    dest = output_folder(args.out, "--out")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    codec = hub.load(args.codec) if args.codec else None  # an unknown name fails now
    x, y, _ = load_images(args.data, "train")
    if args.smoke:
        x, y = x[:SMOKE_IMAGES], y[:SMOKE_IMAGES]
    if codec is None:  # --smoke without --codec: a tiny Glow of the images' shape
        codec = tiny_codecs(shape=tuple(x.shape[1:]))[0]
    codec_name = args.codec or "tiny random-init glow (smoke)"
    codec.check_images(x, "the --data images")  # now, not after the classifier is trained
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))
    n_val = int(len(x) * args.val_fraction)
    if n_val == 0:  # else: "x must be a non-empty batch", after the classifier had trained
        raise ValueError(f"--val-fraction {args.val_fraction:g} holds out no image of the {len(x)} --data images; "
                         f"give at least {1 / len(x):.2g}")
    val, rest = perm[:n_val], perm[n_val:]
    model = clean_classifier_model(x.shape[1:], args.width)
    fit_classifier(model, x[rest], y[rest], epochs=args.epochs, batch_size=64, lr=0.05, desc="clean classifier",
                   progress=not args.no_progress)
    xv, yv = x[val], y[val]
    clean = accuracy(predict_proba(model, xv), yv)
    rows, pictures = [], {"original": xv[:10]}
    settings = [("LatentNoise", e, LatentNoise(codec, eps=e, generator=0)) for e in args.noise_eps]
    settings += [("LatentAdversarial", e, LatentAdversarial(codec, eps=e, steps=1, step_size=e, generator=0))
                 for e in args.adv_eps]
    def change(out: torch.Tensor) -> dict:  # what ``out`` changed of the validation images, and the accuracy on it
        displaced, textured = displaced_patches(xv, out)
        return {"mean_abs_change": float((out - xv).abs().mean()),
                "changed_pixels": float(((out - xv).abs().amax(1) > 0.1).float().mean()),
                "displaced_patches": displaced, "textured_patches": textured,
                "accuracy_on_perturbed": accuracy(predict_proba(model, out), yv)}

    for method, eps, t in settings:
        out = torch.cat([t(xv[i:i + 250], yv[i:i + 250], model)[0] for i in range(0, len(xv), 250)])
        rows.append({"method": method, "eps": eps, "rejected": t.stats["rejected"] / t.stats["seen"], **change(out)})
        pictures[f"{method} {eps:g}"] = out[:10]
        print(rows[-1], flush=True)
    # for scale: content moved by one pixel (every textured patch moves), and each image replaced by the next one
    # (how often an unrelated image "moves" a patch: the measure's floor for a change that is not a move)
    for_scale = [{"method": method, **change(out)} for method, out in (
        ("for scale: moved by one pixel", torch.roll(xv, 1, 3)), ("for scale: another image", xv.roll(1, 0)))]
    dest.mkdir(parents=True, exist_ok=True)
    name = output_stem(args.codec) if args.codec else "tiny-glow"
    save_rows(pictures, dest / f"{name}-eps.png")
    write_json(dest / f"{name}-eps.json", {"clean_val_accuracy": clean, "rows": rows, "settings": {
        "codec": codec_name, "data": args.data, "val_fraction": args.val_fraction, "val_images": len(xv),
        "epochs": args.epochs, "width": args.width}, "for_scale": for_scale})
    print(f"\n{codec_name} on {len(xv)} validation images of {args.data} (clean accuracy {100 * clean:.1f}%)\n")
    print("| method | eps | rejected | mean abs pixel change | pixels changed > 0.1 | textured patches moved | clean "
          "classifier's accuracy on perturbed |")
    print("|---|---|---|---|---|---|---|")
    for r in rows + for_scale:
        moved = "-" if r["displaced_patches"] is None else \
            f"{100 * r['displaced_patches']:.1f}% of {r['textured_patches']}"
        eps, rejected = (f"{r['eps']:g}", f"{100 * r['rejected']:.1f}%") if "eps" in r else ("-", "-")
        print(f"| {r['method']} | {eps} | {rejected} | {r['mean_abs_change']:.3f} | "
              f"{100 * r['changed_pixels']:.1f}% | {moved} | {100 * r['accuracy_on_perturbed']:.1f}% |")


if __name__ == "__main__":
    run_script(main)
