"""How good is a codec's latent space? Test bits/dim (flows) or MSE/KL (VAEs), and whether decodes keep class
identity: one classifier trained on clean images is scored on clean test images, on each codec's reconstructions,
on decodes of 50/50 latent mixes of two test images (how often it names one of the two source classes) and, for
flows, on ``LatentNoise`` outputs at several eps (does the perturbation keep the class?).
Writes a PNG of originals, reconstructions and latent interpolations per codec. ``--classifier FILE`` keeps the
clean classifier (safetensors, written on the first run, loaded by later ones), so candidates trained at different
times are scored by the same classifier.

    python benchmarks/codec_quality.py --codec vae-digits --train digits --test digits
    python benchmarks/codec_quality.py --codec vae-cifar10 runs/vae-b003/vae-cifar10.safetensors \
        --train npz:../shared/data/cifar10/train-5k.npz --test npz:../shared/data/cifar10/test.npz --width 16 --epochs 10
    python benchmarks/codec_quality.py --smoke --out /tmp/cq-smoke   # tiny random-init Glow and VAE on digits: seconds
"""
from __future__ import annotations

import argparse
import json

import torch
from safetensors import SafetensorError

from latent_transforms import LatentNoise, hub
from latent_transforms.data import load_images
from latent_transforms.pixel_shift import random_shift_flip
from latent_transforms.validation import POSITIVE_INT, THREADS, check_number, expanded_path, option, output_folder
from latent_transforms.evaluation import accuracy, fit_classifier, predict_proba
from latent_transforms.train import eval_codec
from latent_transforms.visualize import save_rows

from models import (SMOKE_IMAGES, argument_parser, clean_classifier_model, output_stem,
                    parse_args_with_smoke, run_script, smoke_defaults_help, tiny_codecs, write_json)


BATCH = 500  # images per codec call
SMOKE_DEFAULTS = {"train": "digits", "test": "digits", "epochs": 1, "width": 4, "limit_test": 100}


def clean_classifier(args: argparse.Namespace, x_train: torch.Tensor, y_train: torch.Tensor, *, seed: int = 0,
                     crop_flip: bool = False, flag: str = "--classifier", progress: bool = True) -> torch.nn.Module:
    """The clean classifier: trained, or loaded from ``--classifier`` when that file exists (written when not).

    Weights are drawn from torch's global RNG as it stands; ``seed`` seeds the batch order, ``crop_flip`` adds
    random crops (4-pixel shifts) and flips (also drawn from the global RNG). Both are stored with the file when
    not the defaults (which are this script's), and so is ``args.smoke`` (``--smoke``'s first images). ``flag`` names
    the file's option in messages; ``progress`` shows the training's progress bar.
    """
    model = clean_classifier_model(x_train.shape[1:], args.width)
    settings = {"train": args.train, "width": str(args.width), "epochs": str(args.epochs)}  # stored with it
    if seed or crop_flip:
        settings.update(seed=str(seed), crop_flip=str(crop_flip))
    if getattr(args, "smoke", False):  # trained on the first images only: a later full run must not load it
        settings.update(smoke="True")
    path = args.classifier and expanded_path(args.classifier, f"{flag} {args.classifier!r}")
    if path and path.exists():
        try:
            saved, tensors = hub.read_safetensors(path)
        except SafetensorError as e:
            raise ValueError(f"{flag} {path}: not a readable safetensors file ({e}); give another file (it is "
                             f"written on the first run)") from None
        if "train" not in saved:
            raise ValueError(f"{flag} {path}: a safetensors file but not a classifier written by this script (its "
                             f"metadata has no 'train'); give another file (it is written on the first run)")
        if saved != settings:
            raise SystemExit(f"{flag} {path} was trained with {saved}; this run asks for {settings}: give "
                             f"another file (it is written on the first run) or the same settings")
        model.load_state_dict(tensors)
        print(f"clean classifier loaded from {path}")
        return model
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)  # now, not after minutes of training
    fit_classifier(model, x_train, y_train, epochs=args.epochs, batch_size=64, lr=0.05, seed=seed,
                   pixel_augment=(lambda xb: random_shift_flip(xb, 4, True)) if crop_flip else None,
                   desc="clean classifier", progress=progress)
    if path:
        hub.write_safetensors(path, {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                              settings)
        print(f"clean classifier saved to {path}")
    return model


def in_batches(fn, *tensors: torch.Tensor) -> torch.Tensor:
    """fn applied to aligned slices of ``tensors`` of BATCH rows, results concatenated."""
    return torch.cat([fn(*(t[i:i + BATCH] for t in tensors)) for i in range(0, len(tensors[0]), BATCH)])


@torch.no_grad()
def reconstruct(codec, x: torch.Tensor) -> torch.Tensor:
    return in_batches(codec.reconstruct, x)


@torch.no_grad()
def interpolations(codec, a: torch.Tensor, b: torch.Tensor, steps: int = 8) -> dict[str, torch.Tensor]:
    za, zb = codec.encode_flat(a), codec.encode_flat(b)
    rows = {}
    for i in range(len(a)):
        ws = torch.linspace(0, 1, steps).unsqueeze(1)
        z = (1 - ws) * za[i] + ws * zb[i]
        rows[f"interpolation {i + 1}"] = codec.decode_flat(z).clamp(0, 1)
    return rows


@torch.no_grad()
def mixes_name_a_source(codec, model, x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of decoded 50/50 latent mixes of x[i] and x[i - 1] that the classifier assigns to y[i] or y[i - 1]."""
    z = in_batches(codec.encode_flat, x)
    mixed = 0.5 * z + 0.5 * z.roll(1, 0)
    decoded = in_batches(lambda zb: codec.decode_flat(zb).clamp(0, 1), mixed)
    pred = predict_proba(model, decoded).argmax(1)
    return float(((pred == y) | (pred == y.roll(1, 0))).float().mean())


@torch.no_grad()
def noised(codec, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """LatentNoise(eps) outputs of every image, seeded."""
    t = LatentNoise(codec, eps=eps, generator=0)
    return in_batches(lambda xb, yb: t(xb, yb)[0], x, y)


def main() -> None:
    ap = argument_parser(__doc__)
    ap.add_argument("--codec", nargs="+", help="hub names or .safetensors paths, scored by one classifier (required; "
                                               "smoke: a tiny random-init Glow and VAE, tiny-glow and tiny-vae)")
    ap.add_argument("--train", help="data spec of the classifier's training images (required; smoke: digits)")
    ap.add_argument("--test", help="data spec of the test images scored (required; smoke: digits)")
    ap.add_argument("--epochs", type=POSITIVE_INT, default=30, help="the clean classifier's training epochs")
    ap.add_argument("--width", type=POSITIVE_INT, default=32, help="ResNet-18 width for RGB data")
    ap.add_argument("--limit-test", type=POSITIVE_INT, default=2000, help="test images used (CPU budget)")
    ap.add_argument("--noise-eps", type=option(check_number, float), nargs="*", default=[5.0, 10.0, 20.0],
                    help="flows: score the classifier on LatentNoise outputs at these eps (L2, all levels)")
    ap.add_argument("--out", default="runs/codec-quality", help="output folder")
    ap.add_argument("--classifier", metavar="FILE", help="the clean classifier's .safetensors: loaded if it exists "
                    "(trained with the same --train, --width and --epochs), else trained and written there")
    ap.add_argument("--threads", type=THREADS, help="CPU threads for torch (default: torch's)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar (the clean classifier's training)")
    ap.add_argument("--smoke", action="store_true", help=f"checks the script in seconds: the first {SMOKE_IMAGES} "
                    f"--train images, a tiny random-init Glow and VAE unless --codec is given, and these defaults "
                    f"instead of the others: " + smoke_defaults_help(SMOKE_DEFAULTS))
    args = parse_args_with_smoke(ap, SMOKE_DEFAULTS, required=("--codec", "--train", "--test"))
    out = output_folder(args.out, "--out")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    # an unknown name fails now, not after the classifier
    codecs = {spec: hub.load(spec) for spec in args.codec} if args.codec else None
    x_train, y_train, _ = load_images(args.train, "train")
    x_test, y_test, _ = load_images(args.test, "test")
    if x_train.shape[1:] != x_test.shape[1:]:  # else the classifier trained on one was scored on the other, broadcast
        raise ValueError(f"--train images are {tuple(x_train.shape[1:])} and --test images {tuple(x_test.shape[1:])}; "
                         f"give two sets of one image shape")
    x_test, y_test = x_test[: args.limit_test], y_test[: args.limit_test]
    if args.smoke:
        x_train, y_train = x_train[:SMOKE_IMAGES], y_train[:SMOKE_IMAGES]
    if codecs is None:  # --smoke without --codec: tiny codecs of the images' shape
        codecs = dict(zip(("tiny-glow", "tiny-vae"), tiny_codecs(shape=tuple(x_test.shape[1:]))))
    for spec, codec in codecs.items():  # now, not after the classifier is trained
        try:
            codec.check_images(x_test, "the --test images")
        except ValueError as e:
            raise ValueError(f"--codec {spec}: {e}") from None
    model = clean_classifier(args, x_train, y_train, progress=not args.no_progress)
    settings = {"train": args.train, "test": args.test, "test_images": len(x_test),
                "epochs": args.epochs, "width": args.width, "classifier": args.classifier}
    clean = accuracy(predict_proba(model, x_test), y_test)
    out.mkdir(parents=True, exist_ok=True)
    # flows only are scored on LatentNoise outputs: without a flow, those columns would hold only "-"
    noise_columns = args.noise_eps if any(codec.kind == "glow" for codec in codecs.values()) else []
    table = ["| codec | test MSE or bits/dim | classifier on reconstructions | on 50/50 mixes: either class |"
             + "".join(f" on LatentNoise eps={eps:g} |" for eps in noise_columns),
             "|---|---|---|---|" + "---|" * len(noise_columns)]
    for spec, codec in codecs.items():
        quality = {k: float(f"{v:.4g}") for k, v in eval_codec(codec, x_test).items()}  # 0.00514, not 0.0051
        recon = reconstruct(codec, x_test)
        on_recon = accuracy(predict_proba(model, recon), y_test)
        quality.update(classifier_clean_accuracy=round(clean, 4), classifier_on_reconstructions=round(on_recon, 4),
                       mixes_name_a_source=round(mixes_name_a_source(codec, model, x_test, y_test), 4))
        if codec.kind == "glow":
            quality["classifier_on_latent_noise"] = {}
            for eps in args.noise_eps:
                xn = noised(codec, x_test, y_test, eps)
                quality["classifier_on_latent_noise"][f"{eps:g}"] = {
                    "accuracy": round(accuracy(predict_proba(model, xn), y_test), 4),
                    "mean_abs_change": round(float((xn - x_test).abs().mean()), 4)}
        name = output_stem(spec)
        rows = {"original": x_test[:10], "reconstruction": recon[:10],
                **interpolations(codec, x_test[10:13], x_test[13:16])}
        save_rows(rows, out / f"{name}-quality.png")
        write_json(out / f"{name}-quality.json", {**quality, "settings": {"codec": spec, **settings}})
        print(json.dumps({"codec": spec, "test_images": len(x_test), **quality}, indent=2))
        print(f"picture: {out / f'{name}-quality.png'}")
        level = f"{quality['mse']:.3g}" if "mse" in quality else f"{quality['bits_per_dim']:.3f} bits/dim"
        on_noise = quality.get("classifier_on_latent_noise", {})
        table.append(f"| {spec} | {level} | {100 * on_recon:.1f}% | {100 * quality['mixes_name_a_source']:.1f}% |"
                     + "".join(f" {100 * on_noise[f'{eps:g}']['accuracy']:.1f}% |" if on_noise else " - |"
                               for eps in noise_columns))
    print(f"\nclassifier on clean test images: {100 * clean:.1f}% ({len(x_test)} images)\n" + "\n".join(table))

if __name__ == "__main__":
    run_script(main)
