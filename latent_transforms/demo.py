"""The offline demo: every augmentation (not ``LatentMixupInference``, a predictor) on scikit-learn's digits with the
shipped digits codecs, on the CPU.

Writes a PNG of what each latent method does (ISDA changes no image) and prints test accuracy with and without
each method when a small CNN is trained on a low-data split (``per_class`` images of each digit).
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import hub
from .codecs import Codec
from .data import load_images, low_data_split
from .evaluation import accuracy, fit_classifier, predict_proba
from .isda import ISDA
from .latent_adversarial import LatentAdversarial
from .latent_noise import LatentNoise
from .models import digits_cnn
from .modelutils import threads_for_this_cpu, torch_threads
from .validation import (MAX_THREADS, POSITIVE_INT, THREADS, WrongTypeError, check_count, is_sequence, make_folder,
                         option, output_folder, shown, spelled_as_flags)
from .varmixup import VarMixup
from .visualize import save_rows

__all__: list[str] = []  # the package's own machinery: none of it is API (docs/api.md)

# Settings for the digits codecs (glow-digits' 64-dim latent, vae-digits' 16-dim one), chosen on a validation split
# of the training images, never the test set (benchmarks/calibrate_digits.py; docs/calibration.md).
NOISE_EPS = 1.0
ADV_EPS, ADV_STEPS, ADV_STEP_SIZE = 0.5, 1, 0.5
# VarMixup: the library's default p (0.25) is also the best share on the digits validation split.
_SMOKE_EPOCHS = 15  # 12 steps (3 epochs) left every arm at 10%, which looked broken; 15 reach ~58% in ~7 s on 2 cores
_MAX_SEEDS = 1000  # --seeds: each seed trains every arm (1,000 is hours); 10**9 built gigabytes of seeds at once


def _make_arms(glow: Any, vae: Any, seed: int) -> dict[str, Callable[[], nn.Module | None]]:  # codecs, or None
    """Each arm: a factory of the augmentation used in the training loop (None = baseline)."""
    return {
        "baseline": lambda: None,
        "LatentNoise": lambda: LatentNoise(glow, eps=NOISE_EPS, generator=seed),
        "LatentAdversarial": lambda: LatentAdversarial(glow, eps=ADV_EPS, steps=ADV_STEPS, step_size=ADV_STEP_SIZE,
                                                       generator=seed),
        "VarMixup": lambda: VarMixup(vae, num_classes=10, generator=seed),
        "ISDA": lambda: ISDA(num_classes=10, lambda0=0.5),
    }


def run_demo(out_dir: str | Path = "latent-transforms-demo", per_class: int = 10, epochs: int = 40,
             seeds: tuple[int, ...] = (0, 1, 2), arms: list[str] | None = None, progress: bool = True,
             threads: int | None = None) -> dict[str, dict[str, list[float]]]:
    """Run the demo; returns ``{arm: {"accuracy": [...], "seconds": [...]}}`` and writes ``out_dir/demo.png``.

    ``threads``: CPU threads for torch (default: torch's, at most 4; 1 on a CPU other jobs keep busy; given, at most
    ``validation.MAX_THREADS``), for the run: torch's thread count and global RNG are as they were when it returns or
    is interrupted."""
    per_class = check_count("per_class", per_class, 1)
    if threads is None:
        threads = threads_for_this_cpu(min(4, torch.get_num_threads()))
    else:
        threads = check_count("threads", threads, 1, MAX_THREADS)
    check_count("epochs", epochs, 1)
    if not is_sequence(seeds):  # an int: "'int' object is not iterable", naming nothing
        raise WrongTypeError(f"seeds must be a list of int seeds, such as (0, 1, 2), got {shown(seeds)}")
    if not seeds:
        raise ValueError(f"seeds must hold at least one seed, got {seeds!r}")
    for seed in seeds:
        check_count("seed", seed)
    known = list(_make_arms(None, None, 0))
    if arms is not None and not is_sequence(arms):  # a str: its letters were the arms ("unknown arms ['I', 'S', ...]")
        one = f"; one arm? arms=[{arms!r}]" if isinstance(arms, str) else ""
        raise WrongTypeError(f"arms must be a list of arm names from {known} (None: all), got {shown(arms)}{one}")
    if arms is not None and not arms:
        raise ValueError(f"arms must name at least one arm (None: all of {known}), got {arms!r}")
    names = known if arms is None else arms
    unknown = [a for a in names if a not in known]
    if unknown:
        raise ValueError(f"unknown arms {unknown}; choose from {known}")
    out = output_folder(out_dir)  # refused here, not after the digits and codecs are loaded
    x_train, y_train, _ = load_images("digits", "train")
    x_test, y_test, _ = load_images("digits", "test")
    assert y_train is not None and y_test is not None  # the digits have labels
    counts = torch.bincount(y_train)
    # before low_data_split, which calls it "class 0 has only ... samples"; as Python ints (per_class=2**64 against
    # the tensor met "OverflowError: int too big to convert")
    if per_class > int(counts.min()):
        digit = int(counts.argmin())
        raise ValueError(f"per_class {shown(per_class)} is more than the {int(counts[digit])} training images of digit "
                         f"{digit}")
    splits = {seed: low_data_split(y_train, per_class, seed=seed) for seed in seeds}
    # the run's threads (1 on a busy CPU) and random stream: a notebook's later cells are left as they were
    with torch_threads(threads), torch.random.fork_rng(devices=[]):
        glow, vae = hub.load("glow-digits"), hub.load("vae-digits")

        picture = overview_picture(glow, vae, make_folder(out) / "demo.png", test=(x_test, y_test))
        results: dict[str, dict[str, list[float]]] = {}
        for seed in seeds:
            x, y = x_train[splits[seed]], y_train[splits[seed]]
            for name in names:
                augment = _make_arms(glow, vae, seed)[name]()
                torch.manual_seed(seed)
                model = digits_cnn()
                seconds = fit_classifier(model, x, y, augment, epochs=epochs, batch_size=32, lr=0.05, seed=seed,
                                         desc=f"{name} seed {seed}", progress=progress)
                acc = accuracy(predict_proba(model, x_test), y_test)
                results.setdefault(name, {"accuracy": [], "seconds": []})
                results[name]["accuracy"].append(acc)
                results[name]["seconds"].append(seconds)
    print(format_table(results, per_class, epochs, len(x_test)))
    print(f"\nPicture of the augmentations: {picture.resolve()}")
    return results


def format_table(results: dict[str, dict[str, list[float]]], per_class: int, epochs: int, n_test: int) -> str:
    base = statistics.mean(results["baseline"]["seconds"]) if "baseline" in results else None
    lines = [f"digits, {per_class} training images per class, {epochs} epoch{'s' if epochs != 1 else ''}, "
             f"test on {n_test} images",
             "", "| method | test accuracy (mean ± std over seeds) | train time per run | time vs baseline |",
             "|---|---|---|---|"]
    for name, r in results.items():
        acc = r["accuracy"]
        spread = f"± {100 * statistics.stdev(acc):.1f}" if len(acc) > 1 else "(1 seed)"  # not a spread of 0
        sec = statistics.mean(r["seconds"])
        ratio = f"{sec / base:.1f}x" if base else "-"
        lines.append(f"| {name} | {100 * statistics.mean(acc):.1f}% {spread} | {sec:.1f} s | {ratio} |")
    if all(len(r["accuracy"]) == 1 for r in results.values()):
        lines.append("\none seed: no spread to judge differences by; compare methods over several seeds (--seeds)")
    return "\n".join(lines)


def _picture_rows(glow: Codec, vae: Codec, x: torch.Tensor, y: torch.Tensor, model: nn.Module
                 ) -> dict[str, torch.Tensor]:
    """The rows of ``demo.png`` (also the docs' overview picture): the originals ``x: (B, 1, 8, 8)``, each method's
    output with the demo's settings (VarMixup on every image; LatentAdversarial attacks ``model``) and the VAE's
    reconstructions."""
    rows = {"original": x}
    for name, t in [("LatentNoise", LatentNoise(glow, eps=NOISE_EPS, generator=0)),
                    ("LatentAdversarial", LatentAdversarial(glow, eps=ADV_EPS, steps=ADV_STEPS,
                                                            step_size=ADV_STEP_SIZE, generator=0)),
                    ("VarMixup", VarMixup(vae, num_classes=10, p=1.0, generator=0))]:
        rows[name] = t(x, y, model)[0]
    rows["VAE reconstruction"] = vae.reconstruct(x)
    return rows


def overview_picture(glow: Codec, vae: Codec, path: Path, test: tuple[torch.Tensor, torch.Tensor] | None = None
                     ) -> Path:
    """``demo.png``, also the docs' overview picture (``scripts/make_doc_pictures.py``): ``_picture_rows`` of the
    first 12 digits test images, LatentAdversarial attacking a weak classifier trained on them. ``test``: the
    digits test split ``(x, y)`` when the caller has it (else it is loaded)."""
    x, y = test if test is not None else load_images("digits", "test")[:2]
    assert y is not None  # the digits have labels
    x, y = x[:12], y[:12]
    torch.manual_seed(0)
    model = digits_cnn()
    fit_classifier(model, x, y, epochs=5, progress=False)  # a weak classifier to attack, just for the picture
    return save_rows(_picture_rows(glow, vae, x, y, model), path)


def register_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "demo", help="offline CPU demo on scikit-learn digits: a picture and an accuracy table",
        description="Train a small CNN on a few images per digit of scikit-learn's digits, without and with each "
                    "method (shipped glow-digits and vae-digits codecs), over several seeds; print test accuracy and "
                    "time per method and write demo.png, what each latent method makes of 12 test digits. Offline, on the "
                    "CPU.")
    p.add_argument("--out", default="latent-transforms-demo", help="folder for demo.png (default: %(default)s)")
    p.add_argument("--per-class", type=POSITIVE_INT, default=10, help="training images per digit (default: %(default)s)")
    p.add_argument("--epochs", type=POSITIVE_INT,
                   help=f"training epochs per run (default: 40; --smoke: {_SMOKE_EPOCHS})")
    p.add_argument("--seeds", type=option(check_count, low=1, high=_MAX_SEEDS),
                   help=f"number of seeds, at most {_MAX_SEEDS} (default: 3; --smoke: 1)")
    p.add_argument("--threads", type=THREADS,
                   help="CPU threads for torch (default: torch's, at most 4; 1 where other jobs keep the CPU busy, "
                        "which is faster then)")
    p.add_argument("--smoke", action="store_true",
                   help=f"one seed, {_SMOKE_EPOCHS} epochs unless --seeds/--epochs say otherwise: checks the pipeline "
                        f"in seconds")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    epochs = args.epochs or (_SMOKE_EPOCHS if args.smoke else 40)
    seeds = args.seeds or (1 if args.smoke else 3)
    try:
        run_demo(args.out, per_class=args.per_class, epochs=epochs, seeds=tuple(range(seeds)), threads=args.threads)
    except ValueError as e:  # "per_class 500 is more than ...": the command line has --per-class
        raise spelled_as_flags(e, ["per_class"]) from None
    print(f"Done in {time.perf_counter() - start:.0f} s.")
