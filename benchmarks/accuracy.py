#!/usr/bin/env python
"""CIFAR-10 accuracy benchmark (issue 5): a CIFAR ResNet-18 trained with each augmentation, same seeds, schedule, data.

Arms (``--arms`` picks a subset; all by default):

* ``baseline``: per-sample random crop (pad 4) + horizontal flip on the device. Every other arm adds to it.
* ``randaugment``: + torchvision v2 ``RandAugment`` (drawn per image). ``mixup``: + torchvision v2 ``MixUp``.
* ``latent-noise``, ``latent-adversarial`` (Glow), ``varmixup`` (VAE), ``isda`` (the classifier's features).
* ``randaugment+latent-adversarial`` (``latent_transforms.Compose``), ``isda+latent-noise``.

Reports, per arm: accuracy (mean ± std over seeds), ECE (15 bins), accuracy under CIFAR-10-C-style corruptions made
on the fly (Gaussian noise, Gaussian blur, contrast, brightness, JPEG; severities 1, 3 and 5 of CIFAR-10-C), and
training time per epoch. Writes ``OUT/results.md``, ``OUT/results.json`` and ``OUT/reliability.png``, and says
after the table which of the issue's targets are met, computed from the numbers. The report and the JSON record the UTC
date, the command line and the git commit of the call (for ``--merge``, also those of the files merged).

Examples::

    # GPU, the 5k-image subset, 3 seeds (see docs/results.md for the full set-up)
    python benchmarks/accuracy.py --train npz:.data/cifar10/train-5k.npz --test npz:.data/cifar10/test.npz \\
        --seeds 0 1 2 --out runs/accuracy --resume
    # end to end on the CPU in well under 2 minutes, with tiny random-init codecs
    python benchmarks/accuracy.py --smoke --out /tmp/acc-smoke
    # several processes on one GPU (scripts/gpu_session.sh): shard I of N each, then one report; --done names the
    # shards' files of earlier calls (a file that does not exist is refused: leave --done out of a first call)
    python benchmarks/accuracy.py ... --resume --shard 0/2 --done S0/results.json S1/results.json --out S0 &
    python benchmarks/accuracy.py ... --resume --shard 1/2 --done S0/results.json S1/results.json --out S1; wait
    python benchmarks/accuracy.py --merge S0/results.json S1/results.json --out runs/accuracy
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import (CIFAR_NOISE_EPS, SEED, PerSampleRandAugment, RandomCropFlip, add_device_argument,  # noqa: E402
                    argument_parser, build_classifier, library_default, load_codec, parse_args_with_smoke,
                    refuse_repeats, run_script, setup_device, smoke_defaults_help, tiny_codecs, write_json, write_text)

from latent_transforms import Compose, hub  # noqa: E402
from latent_transforms.base import LatentTransform  # noqa: E402
from latent_transforms.codecs import exact_math  # noqa: E402
from latent_transforms.data import CIFAR10_SPECS, DEFAULT_DATA_ROOT, load_images, low_data_split  # noqa: E402
from latent_transforms.evaluation import (accuracy, expected_calibration_error, fit_classifier,  # noqa: E402
                                          predict_proba, reliability_bins)
from latent_transforms.isda import ISDA  # noqa: E402
from latent_transforms.latent_adversarial import LatentAdversarial  # noqa: E402
from latent_transforms.latent_noise import LatentNoise  # noqa: E402
from latent_transforms.modelutils import describe_device  # noqa: E402
from latent_transforms.progress import progress_bar  # noqa: E402
from latent_transforms.validation import (POSITIVE_FLOAT, POSITIVE_INT, THREADS,  # noqa: E402
                                          check_number, option, output_folder)
from latent_transforms.varmixup import VarMixup  # noqa: E402

NUM_CLASSES = 10
ECE_BINS = 15
SPLIT_SEED = 0  # the held-out validation images do not depend on the run seed
FORMAT = "latent-transforms-accuracy/1"

ARMS: dict[str, str] = {  # key -> what the arm trains with (on top of crop+flip)
    "baseline": "crop + flip",
    "randaugment": "+ RandAugment (torchvision v2)",
    "mixup": "+ MixUp (torchvision v2)",
    "latent-noise": "+ LatentNoise",
    "latent-adversarial": "+ LatentAdversarial",
    "varmixup": "+ VarMixup",
    "isda": "+ ISDA",
    "randaugment+latent-adversarial": "+ RandAugment, then LatentAdversarial",
    "isda+latent-noise": "+ LatentNoise, with ISDA",
}
# Wall time of a run relative to a baseline run (measured on the CPU proxy): the --time-budget estimate for an arm not
# run yet, and the balance of --shard's split. On a GPU the arms' relative costs may be larger (RandAugment's per-image
# Python calls and the Glow's many small kernels do not speed up as the classifier's step does): an estimate borrowed
# from another arm is taken BORROWED_MARGIN times (a run cut by the call's end is lost whole).
BORROWED_MARGIN = 1.5
ARM_COST = {"baseline": 1.0, "randaugment": 1.2, "mixup": 1.0, "latent-noise": 1.7, "latent-adversarial": 3.6,
            "varmixup": 1.2, "isda": 1.0, "randaugment+latent-adversarial": 3.6, "isda+latent-noise": 2.0}
CODEC_OF_ARM = {"latent-noise": "glow", "latent-adversarial": "glow", "varmixup": "vae",
                "randaugment+latent-adversarial": "glow", "isda+latent-noise": "glow"}
_NOISE, _ADV = ["noise_eps", "latent_p", "latent_levels"], ["adv_eps", "adv_steps", "adv_step_size", "latent_p",
                                                            "latent_levels"]
_RA, _ISDA = ["ra_ops", "ra_magnitude"], ["isda_lambda0", "isda_covariance"]
ARM_SETTINGS: dict[str, list[str]] = {  # the method settings each arm's runs depend on (codecs: CODEC_OF_ARM)
    "baseline": [], "randaugment": _RA, "mixup": ["mixup_alpha"], "latent-noise": _NOISE, "latent-adversarial": _ADV,
    "varmixup": ["varmixup_alpha", "varmixup_p", "varmixup_keep_detail"], "isda": _ISDA,
    "randaugment+latent-adversarial": _RA + _ADV, "isda+latent-noise": _ISDA + _NOISE,
}
# Arms made of this package's methods only (the RandAugment composition is left out: it contains the comparator).
MIN_SEEDS = 3  # a verdict on fewer seeds is marked provisional
LATENT_ARMS = ("latent-noise", "latent-adversarial", "varmixup", "isda", "isda+latent-noise")

# CIFAR-10-C parameters (Hendrycks & Dietterich, ICLR 2019, make_cifar_c.py), severities 1, 3 and 5 of 1..5.
SEVERITIES = (1, 3, 5)
CORRUPTIONS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.04, 0.08, 0.10),  # std of additive noise
    "gaussian_blur": (0.4, 0.7, 1.0),      # blur sigma in pixels
    "contrast": (0.75, 0.4, 0.15),         # (x - per-channel mean) * c + mean
    "brightness": (0.05, 0.15, 0.3),       # HSV value + c
    "jpeg": (80, 58, 40),                  # JPEG quality
}


# -- data -----------------------------------------------------------------------------------------------
def stratified_split(y: torch.Tensor, fraction: float, seed: int = SPLIT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """(train_idx, val_idx): ``round(fraction * n_c)`` images of every class c held out, fixed by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    train, val = [], []
    for c in torch.unique(y).tolist():
        members = (y == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=g)]
        k = int(round(fraction * len(members)))
        val.append(members[:k])
        train.append(members[k:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def read_images(args, split: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(images, labels, their source) of ``--train`` (``split`` "train") or ``--test`` ("test"), on the CPU.

    --smoke replaces only the torchvision downloads by random images (the test set half as many): a file or folder
    is read (its first ``--smoke-images``), and a spec that is neither is refused (`--smoke --train bogus` trained on
    random images without a word)."""
    spec, name = (args.train, "training") if split == "train" else (args.test, "test")
    if args.smoke and spec in CIFAR10_SPECS:
        n = args.smoke_images if split == "train" else args.smoke_images // 2
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        return (torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, NUM_CLASSES, (n,), generator=g),
                f"random ({n} images)")
    x, y, _ = load_images(spec, split, args.data_root)
    if y is None:
        raise SystemExit(f"the {name} data has no labels")
    if tuple(x.shape[1:]) != (3, 32, 32):
        raise SystemExit(f"the {name} images must be 3x32x32 (CIFAR-10), got {tuple(x.shape[1:])}")
    if len(y) and int(y.max()) >= NUM_CLASSES:  # test labels of 12 classes: a run trained, then failed
        raise SystemExit(f"the {name} labels must be class indices 0 to {NUM_CLASSES - 1} (CIFAR-10), got "
                         f"{int(y.max())}")
    if args.smoke:
        x, y = x[:args.smoke_images], y[:args.smoke_images]
    return x, y, spec


def load_data(args) -> dict:
    """Training, validation and evaluation tensors (CPU), after subsetting and the validation split; the test set is
    read only when it is scored (not with ``--eval-on val``: its ``source_test`` is None)."""
    x_tr, y_tr, source_train = read_images(args, "train")
    if args.train_size:
        per_class = args.train_size // NUM_CLASSES
        try:
            idx = low_data_split(y_tr, per_class, seed=SPLIT_SEED)
        except ValueError as e:  # "class 0 has only 20 samples, fewer than per_class=50" named no flag
            kept = f" (--smoke keeps the first {args.smoke_images} images)" if args.smoke else ""
            raise SystemExit(f"--train-size {args.train_size} needs {per_class} training images of every class, but "
                             f"{e}{kept}") from None
        x_tr, y_tr = x_tr[idx], y_tr[idx]
    tr, va = stratified_split(y_tr, args.val_fraction) if args.val_fraction > 0 else (torch.arange(len(y_tr)), None)
    untrained = sorted(set(torch.unique(y_tr).tolist()) - set(torch.unique(y_tr[tr]).tolist()))
    if untrained:  # 0.98 of 200 images trained on 2 (8 classes never seen) without a word; 0.99 on none, which failed
        raise SystemExit(f"--val-fraction {args.val_fraction:g} holds out every training image of class"
                         f"{'es' if len(untrained) > 1 else ''} {', '.join(map(str, untrained))} (of "
                         f"{len(y_tr)} images): use a smaller fraction or more images")
    if args.eval_on == "val" and va is None:
        raise SystemExit("--eval-on val needs --val-fraction > 0")
    if args.eval_on == "val" and not len(va):  # else "x must be a non-empty batch", in the first run
        raise SystemExit(f"--eval-on val: --val-fraction {args.val_fraction:g} holds out no image (it rounds to 0 of "
                         f"every class, of {len(y_tr)} images): use a larger fraction or more images")
    data = {"x_train": x_tr[tr], "y_train": y_tr[tr], "source_train": source_train,
            "n_val": 0 if va is None else len(va)}
    if args.eval_on == "val":
        data["x_eval"], data["y_eval"], data["source_test"] = x_tr[va], y_tr[va], None
    else:
        data["x_eval"], data["y_eval"], data["source_test"] = read_images(args, "test")
    return data


# -- corruptions ----------------------------------------------------------------------------------------
def corrupt(x: torch.Tensor, kind: str, c: float, generator: torch.Generator) -> torch.Tensor:
    """x: (B, 3, H, W) in [0, 1] -> the CIFAR-10-C-style corruption ``kind`` of strength ``c``, in [0, 1]."""
    import kornia

    if kind == "gaussian_noise":
        return (x + c * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)).clamp(0, 1)
    if kind == "gaussian_blur":  # skimage.filters.gaussian: truncate 4 sigma, 'nearest' borders
        radius = int(4 * c + 0.5)
        return kornia.filters.gaussian_blur2d(x, 2 * radius + 1, (c, c), border_type="replicate").clamp(0, 1)
    if kind == "contrast":
        mean = x.mean(dim=(2, 3), keepdim=True)
        return ((x - mean) * c + mean).clamp(0, 1)
    if kind == "brightness":
        hsv = kornia.color.rgb_to_hsv(x)
        hsv = torch.cat([hsv[:, :2], (hsv[:, 2:] + c).clamp(0, 1)], dim=1)
        return kornia.color.hsv_to_rgb(hsv).clamp(0, 1)
    if kind == "jpeg":
        quality = torch.full((x.shape[0],), float(c), device=x.device, dtype=x.dtype)
        return kornia.enhance.jpeg_codec_differentiable(x, quality).clamp(0, 1)
    raise ValueError(f"unknown corruption {kind!r}")


def corrupted_sets(x: torch.Tensor, chunk: int = 1000) -> dict[str, dict[int, torch.Tensor]]:
    """Every corruption at every severity of the evaluation images, made once (fixed seed) and kept as uint8
    (as CIFAR-10-C is stored), so every arm and seed is scored on the very same images."""
    out: dict[str, dict[int, torch.Tensor]] = {}
    for i, (kind, levels) in enumerate(CORRUPTIONS.items()):
        out[kind] = {}
        for severity, c in zip(SEVERITIES, levels):
            g = torch.Generator(device=x.device).manual_seed(1000 * i + severity)
            parts = [(corrupt(x[j:j + chunk], kind, c, g) * 255).to(torch.uint8) for j in range(0, len(x), chunk)]
            out[kind][severity] = torch.cat(parts)
    return out


# -- arms -----------------------------------------------------------------------------------------------
def stream_seed(seed: int, stream: str) -> int:
    """The seed of one random stream of run ``seed``: the batch order, the crops and the transforms each draw from
    their own generator, and none replays the global one (model init, RandAugment, MixUp); one seed for all would
    tie, say, an image's flip to whether a transform perturbs it."""
    return int.from_bytes(hashlib.sha256(f"{stream}:{seed}".encode()).digest()[:8], "little") >> 1


SEED_STREAMS = "torch.manual_seed(seed); shuffle, crops, transforms: stream_seed(seed, 'shuffle' / 'crop' / 'augment')"


def make_augment(arm: str, args, codecs: dict, seed: int) -> nn.Module | None:
    """The augmentation of ``arm`` (None for the baseline), freshly built for run ``seed``."""
    k = NUM_CLASSES
    seed = stream_seed(seed, "augment")
    glow, vae = codecs.get("glow"), codecs.get("vae")

    def randaugment():
        return PerSampleRandAugment(args.ra_ops, args.ra_magnitude)

    def noise():
        return LatentNoise(glow, eps=args.noise_eps, levels=args.latent_levels, p=args.latent_p, generator=seed)

    def adversarial():
        return LatentAdversarial(glow, eps=args.adv_eps, steps=args.adv_steps, step_size=args.adv_step_size,
                                 levels=args.latent_levels, p=args.latent_p, generator=seed)

    def isda():
        return ISDA(num_classes=k, lambda0=args.isda_lambda0, covariance=args.isda_covariance)

    if arm == "baseline":
        return None
    if arm == "randaugment":
        steps = [randaugment()]
    elif arm == "mixup":
        from torchvision.transforms import v2

        steps = [v2.MixUp(alpha=args.mixup_alpha, num_classes=k)]
    elif arm == "latent-noise":
        steps = [noise()]
    elif arm == "latent-adversarial":
        steps = [adversarial()]
    elif arm == "varmixup":
        steps = [VarMixup(vae, alpha=args.varmixup_alpha, num_classes=k, p=args.varmixup_p,
                          keep_detail=args.varmixup_keep_detail, generator=seed)]
    elif arm == "isda":
        steps = [isda()]
    elif arm == "randaugment+latent-adversarial":
        steps = [randaugment(), adversarial()]
    elif arm == "isda+latent-noise":
        steps = [noise(), isda()]
    else:
        raise ValueError(f"unknown arm {arm!r}")
    # Steps are already on the device (codecs loaded there; ISDA sizes its statistics on the features' device).
    return Compose(steps, num_classes=k)


def transform_stats(augment: nn.Module | None) -> dict:
    if augment is None:
        return {}
    return {type(m).__name__: m.stats for m in augment.modules() if isinstance(m, LatentTransform)}


# -- one run --------------------------------------------------------------------------------------------
def predict_uint8(model: nn.Module, x8: torch.Tensor, chunk: int = 1000) -> torch.Tensor:
    return torch.cat([predict_proba(model, x8[i:i + chunk].float().div_(255)) for i in range(0, len(x8), chunk)])


def scored_as_chance(probs: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``probs`` with every non-finite row (a classifier that diverged) made uniform, and how many there were: such a
    run is scored as guessing, recorded and named in the report, and the call goes on to the next run."""
    bad = ~torch.isfinite(probs).all(1)
    return torch.where(bad[:, None], torch.full_like(probs, 1 / probs.shape[1]), probs), int(bad.sum())


def run_one(arm: str, seed: int, args, data: dict, codecs: dict, corrupted: dict, device: torch.device) -> dict:
    torch.manual_seed(seed)  # model init, RandAugment and MixUp draws
    model = build_classifier(NUM_CLASSES, args.width, device, args.precision)
    augment = make_augment(arm, args, codecs, seed)
    seconds = fit_classifier(
        model, data["x_train"], data["y_train"], augment, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, seed=stream_seed(seed, "shuffle"),
        pixel_augment=RandomCropFlip(stream_seed(seed, "crop"), device),
        desc=f"{arm} seed {seed}", progress=not args.no_progress)
    probs, nonfinite = scored_as_chance(predict_proba(model, data["x_eval"]))
    y = data["y_eval"]
    corr = {}
    for kind, by_severity in corrupted.items():
        corr[kind] = {}
        for s, x8 in by_severity.items():
            p, n = scored_as_chance(predict_uint8(model, x8))
            corr[kind][str(s)], nonfinite = accuracy(p, y), nonfinite + n
    corr_values = [a for d in corr.values() for a in d.values()]
    return {
        "accuracy": accuracy(probs, y),
        "ece": expected_calibration_error(probs, y, bins=ECE_BINS),
        "corruption_accuracy": statistics.mean(corr_values) if corr_values else None,
        "corruptions": corr,
        "seconds": seconds,
        "seconds_per_epoch": seconds / args.epochs,
        "reliability": {k: v.tolist() for k, v in reliability_bins(probs, y, ECE_BINS).items()},
        "transform_stats": transform_stats(augment),
        "nonfinite_predictions": nonfinite,  # of the evaluation images, clean and corrupted: > 0 when it diverged
    }


# -- summary, verdicts, report ---------------------------------------------------------------------------
def _mean_std(values: list[float]) -> tuple[float, float | None]:
    """The mean and the sample std; the std of one value is unknown: None (not 0)."""
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


def summarise(runs: dict) -> dict:
    summary = {}
    for arm in ARMS:
        by_seed = runs.get(arm, {})
        if not by_seed:
            continue
        rs = [by_seed[s] for s in sorted(by_seed, key=int)]
        acc, acc_std = _mean_std([r["accuracy"] for r in rs])
        ece, ece_std = _mean_std([r["ece"] for r in rs])
        corr_vals = [r["corruption_accuracy"] for r in rs if r["corruption_accuracy"] is not None]
        corr, corr_std = _mean_std(corr_vals) if corr_vals else (None, None)
        sec, _ = _mean_std([r["seconds_per_epoch"] for r in rs])
        per_corruption = {}
        for kind in CORRUPTIONS:
            vals = [statistics.mean(r["corruptions"][kind].values()) for r in rs if kind in r["corruptions"]]
            if vals:
                per_corruption[kind] = statistics.mean(vals)
        summary[arm] = {"seeds": sorted((int(s) for s in by_seed)), "accuracy_mean": acc, "accuracy_std": acc_std,
                        "ece_mean": ece, "ece_std": ece_std, "corruption_accuracy_mean": corr,
                        "corruption_accuracy_std": corr_std, "per_corruption": per_corruption,
                        "seconds_per_epoch": sec}
    return summary


def _pts(a: float) -> str:
    return f"{100 * a:.1f}%"


def _diff(d: float, digits: int = 2) -> str:
    """A difference in points (a fraction times 100), signed; a rounded 0 is +0, not -0."""
    text = f"{100 * d:+.{digits}f}"
    return "+" + text[1:] if float(text) == 0 else text


def _pm(std: float | None, digits: int = 1) -> str:
    """`` ± std`` in points; nothing for a single seed (whose std is not zero but unknown: None)."""
    return "" if std is None else f" ± {100 * std:.{digits}f}"


def _at_least(difference: float, margin: float) -> bool:
    """``difference >= margin`` for accuracies that went through float32: an exact tie is a tie (+3.0 points read as
    below +3.0 half the time)."""
    return round(difference - margin, 6) >= 0


def _paired(runs: dict, arms: list[str], keys: tuple[str, ...] = ("accuracy",)) -> tuple[list[int], dict]:
    """-> (seeds, {arm: {key: (mean, std)}}) over the seeds all ``arms`` have, so that arms are compared on the same
    seeds: with unequal seed sets, a lucky or unlucky seed of one arm would otherwise decide a target. No seeds when
    an arm has no runs, or lacks one of ``keys`` on a shared seed."""
    seeds = sorted(set.intersection(*(set(runs.get(a, {})) for a in arms)), key=int)
    if not seeds or any(runs[a][s][k] is None for a in arms for s in seeds for k in keys):
        return [], {}
    return [int(s) for s in seeds], {a: {k: _mean_std([runs[a][s][k] for s in seeds]) for k in keys} for a in arms}


def _on_seeds(seeds: list[int], paired: dict | None = None) -> str:
    """The seeds a verdict was computed on and (``paired``) each compared arm's seed-to-seed std of accuracy."""
    if len(seeds) == 1:
        return f"on seed {seeds[0]}"
    spread = ", ".join(f"{a} {100 * m['accuracy'][1]:.1f}" for a, m in (paired or {}).items())
    return f"on seeds {', '.join(map(str, seeds))}" + (f"; std over those seeds {spread}" if spread else "")


def verdicts(runs: dict) -> list[dict]:
    """The issue's three targets, decided from the measured runs (never hard-coded). Each target compares its arms
    on the seeds they all have (the means may differ from the table's where an arm lacks a seed)."""
    out = []
    have = [a for a in ARMS if runs.get(a)]

    def missing(name: str, text: str, needed: list[str], runs_of: str) -> dict:
        absent = [a for a in needed if a not in have]
        return {"target": name, "text": text, "status": "NOT EVALUATED",
                "detail": f"needs {', '.join(absent)} in the results" if absent else f"no seed with runs of {runs_of}"}

    # 1. best latent arm >= baseline + 3 points, and no worse than RandAugment
    text1 = "best latent arm >= baseline + 3 points and no worse than RandAugment"
    latent = [a for a in LATENT_ARMS if a in have]
    compared = {}  # latent arm -> (seeds, paired means with baseline and RandAugment)
    for arm in latent:
        seeds, paired = _paired(runs, ["baseline", "randaugment", arm])
        if seeds:
            compared[arm] = (seeds, paired)
    if not compared:
        out.append(missing("Target 1", text1, ["baseline", "randaugment"] + ([] if latent else ["a latent arm"]),
                           "baseline, RandAugment and a latent arm"))
    else:
        # the arms with the most seeds shared with the baseline and RandAugment are ranked, by their margin: a margin
        # on seed 0 alone is not comparable with one over seeds 0-2 (a time-limited call leaves its last arms with
        # fewer seeds)
        def rank(arm: str) -> tuple[int, float]:
            seeds, paired = compared[arm]
            return len(seeds), paired[arm]["accuracy"][0] - paired["baseline"]["accuracy"][0]

        best = max(compared, key=rank)
        seeds, paired = compared[best]
        fewer = [f"{a} ({len(compared[a][0])})" for a in compared if len(compared[a][0]) < len(seeds)]
        b, r, l = (paired[a]["accuracy"][0] for a in ("baseline", "randaugment", best))
        met = _at_least(l - b, 0.03) and _at_least(l - r, 0.0)
        out.append({"target": "Target 1", "text": text1, "status": "MET" if met else "MISSED", "best_latent_arm": best,
                    "seeds": seeds,
                    # differences to 2 decimals: rounded to 1, +2.96 read "+3.0 points, needs +3.0" and MISSED
                    "detail": f"best latent arm {best}: {_pts(l)}; baseline {_pts(b)} ({_diff(l - b)} points, "
                              f"needs +3.00); RandAugment {_pts(r)} ({_diff(l - r)} points, needs >= 0); "
                              f"{_on_seeds(seeds, paired)}"
                              + (f"; not ranked, with fewer seeds: {', '.join(fewer)}" if fewer else "")})
    # 2. VarMixup: lower ECE and higher corruption accuracy than the baseline
    text2 = "VarMixup has lower ECE and higher corruption accuracy than the baseline"
    needed = ["baseline", "varmixup"]
    seeds, paired = _paired(runs, needed, ("accuracy", "ece", "corruption_accuracy"))
    if not seeds:
        out.append(missing("Target 2", text2, needed, "both, with corruption accuracy"))
    else:
        (e_vm, _), (e_b, _) = paired["varmixup"]["ece"], paired["baseline"]["ece"]
        (c_vm, _), (c_b, _) = paired["varmixup"]["corruption_accuracy"], paired["baseline"]["corruption_accuracy"]
        lower_ece, higher_corr = not _at_least(e_vm - e_b, 0.0), not _at_least(c_b - c_vm, 0.0)
        out.append({"target": "Target 2", "text": text2, "status": "MET" if lower_ece and higher_corr else "MISSED",
                    "seeds": seeds,
                    "detail": f"ECE {100 * e_vm:.2f} vs baseline {100 * e_b:.2f} ({_diff(e_vm - e_b, 3)}, "
                              f"{'lower' if lower_ece else 'not lower'}); corruption accuracy "
                              f"{_pts(c_vm)} vs {_pts(c_b)} ({_diff(c_vm - c_b)} points, "
                              f"{'higher' if higher_corr else 'not higher'}); "
                              f"{_on_seeds(seeds)}"})
    # 3. ISDA beats the baseline
    text3 = "ISDA beats the baseline"
    needed = ["baseline", "isda"]
    seeds, paired = _paired(runs, needed)
    if not seeds:
        out.append(missing("Target 3", text3, needed, "both"))
    else:
        i, b = paired["isda"]["accuracy"][0], paired["baseline"]["accuracy"][0]
        out.append({"target": "Target 3", "text": text3, "status": "MISSED" if _at_least(b - i, 0.0) else "MET",
                    "seeds": seeds,
                    "detail": f"ISDA {_pts(i)} vs baseline {_pts(b)} ({_diff(i - b)} points); "
                              f"{_on_seeds(seeds, paired)}"})
    for v in out:
        if v["status"] != "NOT EVALUATED" and len(v["seeds"]) < MIN_SEEDS:
            v["provisional"] = f"{len(v['seeds'])} seed{'s' if len(v['seeds']) > 1 else ''}; the issue asks for " \
                               f"at least {MIN_SEEDS}"
    return out


def _provenance(cfg: dict) -> str:
    """When, how and from which commit the results were made; for a merge, the commit of each file merged."""
    text = f"Made {cfg['date']} by `{cfg['command']}` at commit {cfg['commit'] or 'not recorded'}"
    if "merged_from" in cfg:
        commits = cfg.get("merged_commits") or [None] * len(cfg["merged_from"])  # older merges recorded none
        text += "; merged from " + ", ".join(f"{path} (commit {commit or 'not recorded'})"
                                             for path, commit in zip(cfg["merged_from"], commits))
    return text + "."


def delta_vs_baseline(runs: dict, arm: str, seeds: list[int]) -> str:
    """The arm's mean accuracy minus the baseline's, in points, on the seeds both have (a table's means are over
    each arm's own seeds: an arm short of the baseline's best seed would otherwise look worse than it did); those
    seeds are named when they are fewer than the table's ``seeds``. ``runs``: arm (sweep_report: row) -> seed -> run."""
    shared, _ = _paired(runs, ["baseline", arm])
    if not shared:
        return "-"
    mean, std = _mean_std([runs[arm][str(s)]["accuracy"] - runs["baseline"][str(s)]["accuracy"] for s in shared])
    # + 0.0: differences that cancel up to float rounding (0.08 - 0.09 and 0.07 - 0.06) read "+0.0", not "-0.0"
    delta = f"{round(100 * mean, 1) + 0.0:+.1f}" + ("" if arm == "baseline" else _pm(std))  # std of the differences
    return delta if len(shared) == len(seeds) else f"{delta} (seed{'s' if len(shared) > 1 else ''} " \
        f"{', '.join(map(str, shared))})"


def arm_settings(cfg: dict, arm: str) -> str:
    """The method settings ``arm``'s runs were made with, as ``key=value`` (those left at None, the default, omitted)."""
    values = [(k, v) for k in ARM_SETTINGS.get(arm, []) if (v := setting(cfg, k)) is not None]
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in values)


def _settings_lines(cfg: dict, runs: dict) -> list[str]:
    """One line per arm with settings or a codec, in the table's order: what its runs were made with (a table row
    names the arm only). A codec arm whose runs (older ones, taken as they are by --merge) recorded no checkpoint
    says so."""
    lines = []
    for arm in (a for a in ARMS if runs.get(a)):
        by_seed, kind = runs[arm], CODEC_OF_ARM.get(arm)
        parts = [arm_settings(cfg, arm)]
        if kind is not None:
            codec = next((r["codec"] for r in by_seed.values() if "codec" in r), None)  # one per arm: check_codecs
            unrecorded = sorted((s for s, r in by_seed.items() if "codec" not in r), key=int)
            text = f"{kind} {codec['name']} (fingerprint {codec['sha256'][:12]})" if codec else \
                f"{kind} checkpoint not recorded"
            if codec and unrecorded:
                text += f", not recorded for seed{'s' if len(unrecorded) > 1 else ''} {', '.join(unrecorded)}"
            parts.append(text)
        if any(parts):
            lines.append(f"- {arm}: " + "; ".join(p for p in parts if p))
    return ["", "Settings of each arm (flags as in results.json's config; checkpoints by name and Codec.fingerprint(), "
                "the sha256 of config and weights, not the file's sha256 that `latent-transforms list -v` shows):",
            "", *lines] if lines else []


def format_report(results: dict) -> str:
    cfg, summary = results["config"], results["summary"]
    seeds = sorted({s for v in summary.values() for s in v["seeds"]})
    held_out = f" ({cfg['n_val']} held out for validation)" if cfg["n_val"] else ""
    # the runs' own devices: a --resume or --merge may gather runs made on several
    devices = sorted({r.get("device_name") or cfg["device_name"] for rs in results["runs"].values()
                      for r in rs.values()} or {cfg["device_name"]})
    lines = [SMOKE_BANNER, ""] if cfg["smoke"] else []
    lines += [f"CIFAR ResNet-18 (width {cfg['width']}), {cfg['epochs']} epoch{'s' if cfg['epochs'] != 1 else ''}, batch {cfg['batch_size']}, "
              f"one-cycle SGD lr {cfg['lr']}, {cfg['precision']} on {' / '.join(devices)}; "
              f"trained on {cfg['n_train']} images of {cfg['source_train']}"
              f"{held_out}; evaluated on "
              f"{cfg['n_eval']} {'held-out validation' if cfg['eval_on'] == 'val' else 'test'} images; "
              f"seeds {', '.join(map(str, seeds))}.", "", _provenance(cfg), "",
              "| arm | accuracy (mean ± std) | Δ vs baseline (paired ± std) | ECE % (15 bins) | corruption accuracy | s / epoch | "
              "time vs baseline |",
              "|---|---|---|---|---|---|---|"]
    base = summary.get("baseline")
    for arm, s in summary.items():
        delta = delta_vs_baseline(results["runs"], arm, seeds)  # "-" without a baseline run
        corr = "-" if s["corruption_accuracy_mean"] is None else \
            f"{_pts(s['corruption_accuracy_mean'])}{_pm(s['corruption_accuracy_std'])}"
        ratio = f"{s['seconds_per_epoch'] / base['seconds_per_epoch']:.1f}x" if base else "-"
        n = f" (n={len(s['seeds'])})" if len(s["seeds"]) != len(seeds) else ""
        lines.append(f"| {arm} ({ARMS[arm]}){n} | {_pts(s['accuracy_mean'])}{_pm(s['accuracy_std'])} | "
                     f"{delta} | {100 * s['ece_mean']:.2f}{_pm(s['ece_std'], 2)} | {corr} | "
                     f"{s['seconds_per_epoch']:.2f} | {ratio} |")
    lines += _settings_lines(cfg, results["runs"])
    if len(devices) > 1:
        lines += ["", f"The runs were made on {len(devices)} devices ({'; '.join(devices)}): s / epoch and time vs "
                      f"baseline average over them; compare times of runs made on one device only."]
    if any(s["per_corruption"] for s in summary.values()):
        lines += ["", "Corruption accuracy, per corruption (mean over severities " + ", ".join(map(str, SEVERITIES))
                  + " and seeds):", "", "| arm | " + " | ".join(CORRUPTIONS) + " |",
                  "|---|" + "---|" * len(CORRUPTIONS)]
        for arm, s in summary.items():
            lines.append(f"| {arm} | " + " | ".join(_pts(s["per_corruption"][k]) if k in s["per_corruption"] else "-"
                                                     for k in CORRUPTIONS) + " |")
    lines += ["", "Accuracy per seed (a spread here is what the ± above summarises):", "",
              "| arm | " + " | ".join(f"seed {seed}" for seed in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for arm in summary:
        by_seed = results["runs"][arm]
        lines.append(f"| {arm} | " + " | ".join(_pts(by_seed[str(seed)]["accuracy"]) if str(seed) in by_seed else "-"
                                                 for seed in seeds) + " |")
    codes = {r.get("code_sha256") for by_seed in results["runs"].values() for r in by_seed.values()}
    if len(codes) > 1:
        lines += ["", f"These runs were made by {len(codes)} versions of the benchmark and library code (each run's "
                      f"code_sha256 in results.json{'; older runs recorded none' if None in codes else ''})."]
    shards = max((r["shard"][1] for by_seed in results["runs"].values() for r in by_seed.values() if r.get("shard")),
                 default=1)
    if shards > 1:
        lines += ["", f"These runs were made in {shards} shards (--shard), which scripts/gpu_session.sh runs at the "
                      f"same time on one device: s / epoch and time vs baseline include their contention."]
    diverged = [f"{arm} seed {seed} ({r['nonfinite_predictions']} of its predictions)"
                for arm, by_seed in results["runs"].items() for seed, r in by_seed.items()
                if r.get("nonfinite_predictions")]
    if diverged:
        lines += ["", "DIVERGED (non-finite outputs, scored as uniform guesses): " + "; ".join(diverged) + "."]
    lines += ["", "Targets of the issue (each compared on the seeds its arms share; latent arms: " + ", ".join(LATENT_ARMS) + "):"]
    if cfg["smoke"]:
        lines.append("(smoke run: the verdicts below only show that they are computed)")
    elif cfg["eval_on"] != "test":
        lines.append("(scored on the held-out validation split, for tuning: not the issue's test-set evidence)")
    lines.append("")  # a Markdown list after a blank line: docs/results.md quotes this text
    for v in results["targets"]:
        status = v["status"] + (f" (provisional: {v['provisional']})" if v.get("provisional") else "")
        lines.append(f"- {v['target']} ({v['text']}): {status} -- {v['detail']}")
    return "\n".join(lines)


# -- reliability diagram (PIL) ------------------------------------------------------------------------------
def draw_reliability(summary_bins: dict[str, dict], eces: dict[str, float], path: Path,
                     format: str | None = None) -> Path:
    """One panel per arm: accuracy per confidence bin (bars) against the diagonal, pooled over seeds."""
    from PIL import Image, ImageDraw

    arms = list(summary_bins)
    cols = min(3, max(1, len(arms)))
    rows = math.ceil(len(arms) / cols) if arms else 1
    pw, ph, m = 260, 270, 36  # panel size, margin
    canvas = Image.new("RGB", (cols * pw, rows * ph), "white")
    draw = ImageDraw.Draw(canvas)
    for i, arm in enumerate(arms):
        ox, oy = (i % cols) * pw, (i // cols) * ph
        x0, y0, size = ox + m, oy + 28, pw - m - 14
        b = summary_bins[arm]
        n = len(b["count"])
        draw.text((ox + 8, oy + 6), f"{arm}  ECE {100 * eces[arm]:.2f}%", fill="black")
        draw.rectangle([x0, y0, x0 + size, y0 + size], outline="black")
        for j in range(n):
            cnt = b["count"][j]
            if cnt <= 0:
                continue
            acc, conf = b["correct_sum"][j] / cnt, b["confidence_sum"][j] / cnt
            left, right = x0 + size * j / n, x0 + size * (j + 1) / n
            top_acc, top_conf = y0 + size * (1 - acc), y0 + size * (1 - conf)
            draw.rectangle([left, top_acc, right, y0 + size], fill=(70, 110, 200), outline="white")
            draw.rectangle([left, min(top_acc, top_conf), right, max(top_acc, top_conf)], outline=(220, 60, 60))
        draw.line([x0, y0 + size, x0 + size, y0], fill=(120, 120, 120), width=1)
        draw.text((x0, y0 + size + 4), "0", fill="black")
        draw.text((x0 + size - 30, y0 + size + 4), "conf 1", fill="black")
        draw.text((ox + 4, y0 - 2), "acc", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format=format)
    return path


def pooled_bins(runs: dict) -> dict[str, dict]:
    out = {}
    for arm in ARMS:
        if not runs.get(arm):
            continue
        rel = [r["reliability"] for r in runs[arm].values()]
        out[arm] = {k: [sum(v) for v in zip(*(r[k] for r in rel))] for k in rel[0]}
    return out


# -- driver ---------------------------------------------------------------------------------------------------
ARG_KEYS = ("smoke", "train", "test", "train_size", "val_fraction", "eval_on", "epochs", "batch_size", "lr",
                    "weight_decay", "width", "precision", "glow", "vae", "noise_eps", "adv_eps", "adv_steps",
                    "adv_step_size", "latent_p", "varmixup_alpha", "varmixup_p", "isda_lambda0", "isda_covariance",
                    "ra_ops", "ra_magnitude", "mixup_alpha", "smoke_images", "varmixup_keep_detail", "latent_levels",
                    "no_corruptions")
# besides the flags: the images themselves (hashed after subsetting and the split) and the evaluation protocol
FINGERPRINT_KEYS = ARG_KEYS + ("data_sha256", "protocol")
# settings added after results files were first written, with the value those older files imply
FINGERPRINT_DEFAULTS = {"varmixup_keep_detail": False, "latent_levels": None,  # data_sha256, protocol: None
                        "no_corruptions": False}


def protocol() -> dict:
    """How runs are seeded and scored, beyond the flags: runs made otherwise must not be resumed or merged into one
    table."""
    return {"ece_bins": ECE_BINS, "split_seed": SPLIT_SEED, "seed_streams": SEED_STREAMS, "severities": list(SEVERITIES),
            "corruptions": {k: list(v) for k, v in CORRUPTIONS.items()}}


def data_sha256(data: dict) -> str:
    """sha256 of the training and evaluation tensors a run sees (after subsetting and the validation split)."""
    return hub.sha256_tensors(*(data[key] for key in ("x_train", "y_train", "x_eval", "y_eval")))


def code_sha256() -> str:
    """sha256 of this benchmark's and the library's Python sources, recorded with every run."""
    h = hashlib.sha256()
    library = Path(hub.__file__).parent
    for path in sorted(Path(__file__).resolve().parent.glob("*.py")) + sorted(library.rglob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()


def git_commit() -> str | None:
    """This checkout's commit (``-dirty`` appended when tracked files differ from it); else $GIT_COMMIT, for a copy
    of the tree without .git (such as the device machine's); else None."""
    try:
        proc = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=40", "--exclude=*"],
                              cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=30)
        if proc.returncode == 0:
            return proc.stdout.strip()
    except (OSError, subprocess.SubprocessError):  # no git, or it hung: the fallback below
        pass
    return os.environ.get("GIT_COMMIT") or None


def provenance(argv: list[str] | None) -> dict:
    """When and how this call ran: the UTC date, the command line (``argv``: the arguments of a call from Python) and
    the git commit."""
    command = sys.argv if argv is None else [Path(__file__).name, *argv]
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"), "command": shlex.join(command),
            "commit": git_commit()}


def setting(fingerprint: dict, key: str):
    """A fingerprint's value for ``key``, or the value an older file without it implies. ``glow``/``vae`` left out
    outside ``--smoke`` read as the default checkpoint's name: ``--glow glow-cifar10`` is the default, not another
    setting (which checkpoint a run used is checked by its sha256, see :func:`check_codecs`)."""
    value = fingerprint.get(key, FINGERPRINT_DEFAULTS.get(key))
    if key in ("glow", "vae") and value is None and not fingerprint.get("smoke"):
        return f"{key}-cifar10"
    return value


def setting_differences(fingerprint: dict, reference: dict, keys, its: str, reference_s: str) -> str:
    """The ``keys`` whose setting differs between ``fingerprint`` (a file's) and ``reference``, a flag's with both
    values (``"epochs 10 there, 9 now"`` for ``its="there", reference_s="now"``; the data's sha256 and the protocol
    by name): a refusal naming the key alone left the user to dig the file's value out of its JSON."""
    return "; ".join(k if k not in ARG_KEYS else f"{k} {setting(fingerprint, k)!r} {its}, {reference[k]!r} {reference_s}"
                     for k in keys if setting(fingerprint, k) != reference[k])


def make_fingerprint(args: argparse.Namespace, data_hash: str) -> dict:
    """What this call's runs depend on: the flags (:data:`ARG_KEYS`), the data's sha256 and the protocol."""
    given = {**{k: getattr(args, k) for k in ARG_KEYS}, "data_sha256": data_hash, "protocol": protocol()}
    return {k: setting(given, k) for k in FINGERPRINT_KEYS}


def shard_spec(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N) with 0 <= I < N."""
    try:
        index, count = map(int, text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N, e.g. 0/6, got {text!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"shard {text}: N must be >= 1 (the number of shards)")
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"shard {text}: I must be in 0..N-1")
    return index, count


# what heads a report of --smoke runs (sweep_report.py's too)
SMOKE_BANNER = ("**SMOKE RUN**: tiny model, tiny data, a few epochs, random-init codecs unless given. It checks the "
                "pipeline end to end; the numbers mean nothing.")
# --smoke's defaults; one thread: predictable on a busy shared CPU (more threads thrash there)
# 2 epochs: ISDA's strength grows as lambda0 * epoch / epochs from 0, so in a 1-epoch smoke it never acted
SMOKE_DEFAULTS = {"epochs": 2, "seeds": [0], "width": 4, "batch_size": 32, "threads": 1}


def parse_args(argv=None) -> argparse.Namespace:
    p = argument_parser(__doc__)
    d = p.add_argument_group("data")
    d.add_argument("--train", default="cifar10",
                   help="cifar10 (torchvision download), cifar10-5k (its 5,000-image subset that the docs' figures "
                        "use), npz:PATH or folder:PATH")
    d.add_argument("--test", default="cifar10",
                   help="cifar10 (also cifar10-5k's test set), npz:PATH or folder:PATH; not read with --eval-on val")
    d.add_argument("--data-root", help=f"download folder for cifar10 (default: {DEFAULT_DATA_ROOT})")
    d.add_argument("--train-size", type=POSITIVE_INT, help="class-balanced subset of the training images (before the val split)")
    d.add_argument("--val-fraction", type=float, default=0.1,
                   help="fraction of the training images held out, per class, fixed seed")
    d.add_argument("--eval-on", choices=("val", "test"), default="test",
                   help="score on the held-out validation images (for tuning) or the test set")
    t = p.add_argument_group("training")
    t.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS), metavar="ARM",
                   help="subset of: " + " ".join(ARMS) + " (default: all)")
    t.add_argument("--seeds", type=SEED, nargs="+", default=[0, 1, 2], metavar="SEED",
                   help="the seed values, not their number: --seeds 0 1 2 runs three seeds, --seeds 3 one, seed 3 "
                        "(`latent-transforms demo --seeds N` is a number)")
    t.add_argument("--epochs", type=POSITIVE_INT, default=40,
                   help="the default is the short GPU recipe: 40 epochs of one-cycle SGD gave a ResNet-18 78.9%% on "
                        "the 5k subset in about 22 s per run on an H100, as reported in issue 9")
    t.add_argument("--batch-size", type=POSITIVE_INT, default=128, help="training images per step")
    t.add_argument("--lr", type=POSITIVE_FLOAT, default=0.1, help="one-cycle peak learning rate")
    t.add_argument("--weight-decay", type=option(check_number, float), default=5e-4, help="SGD weight decay")
    t.add_argument("--width", type=POSITIVE_INT, default=64, help="ResNet-18 base width")
    add_device_argument(t)
    t.add_argument("--precision", choices=("bf16", "fp32"),
                   help="classifier precision (default: bf16 on CUDA, fp32 otherwise); codecs always run in fp32")
    c = p.add_argument_group("codecs and method settings")
    c.add_argument("--glow",
                   help="Glow: hub name or .safetensors path (default: glow-cifar10; smoke: tiny random-init)")
    c.add_argument("--vae", help="VAE: hub name or .safetensors path (default: vae-cifar10; smoke: tiny random-init)")
    c.add_argument("--noise-eps", type=float, default=CIFAR_NOISE_EPS,
                   help="LatentNoise L2 radius (default: the library's for a codec of 3x32x32 images, all "
                        "levels perturbed, %(default)s; official CIFAR: 20)")
    c.add_argument("--adv-eps", type=float, default=library_default(LatentAdversarial, "eps"),
                   help="LatentAdversarial L2 radius (default: the library's, %(default)s; official CIFAR: 1.0)")
    c.add_argument("--adv-steps", type=int, default=library_default(LatentAdversarial, "steps"),
                   help="LatentAdversarial PGD steps (default: the library's, %(default)s; official CIFAR: 3)")
    c.add_argument("--adv-step-size", type=float, default=library_default(LatentAdversarial, "step_size"),
                   help="LatentAdversarial PGD step size (default: the library's, %(default)s; official CIFAR: 0.5)")
    c.add_argument("--latent-p", type=float, default=1.0, help="share of samples LatentNoise/Adversarial replace")
    c.add_argument("--latent-levels", type=int, nargs="+", metavar="LEVEL",
                   help="latent levels LatentNoise/Adversarial perturb, coarsest first (default: all, as the paper)")
    c.add_argument("--varmixup-alpha", type=float, default=1.0, help="VarMixup's Beta(alpha, alpha) mixing weights")
    c.add_argument("--varmixup-p", type=float, default=library_default(VarMixup, "p"),
                   help="share of samples VarMixup replaces (default: the library's, %(default)s, chosen on the val "
                        "split)")
    # the help set after: Python 3.10's BooleanOptionalAction appended a second "(default: True)" to it
    c.add_argument("--varmixup-keep-detail", action=argparse.BooleanOptionalAction,
                   default=library_default(VarMixup, "keep_detail")).help = (
        "VarMixup(keep_detail=...): add back the mixed reconstruction residuals (default: the library's, %(default)s)")
    c.add_argument("--isda-lambda0", type=float, default=0.5, help="ISDA's strength at the end of training "
                                                                   "(official CIFAR: 0.5)")
    c.add_argument("--isda-covariance", choices=("full", "diagonal"), default="full",
                   help="the class-conditional feature covariance ISDA estimates")
    c.add_argument("--ra-ops", type=int, default=2, help="RandAugment num_ops")
    c.add_argument("--ra-magnitude", type=int, default=9, help="RandAugment magnitude")
    c.add_argument("--mixup-alpha", type=float, default=1.0, help="MixUp's Beta(alpha, alpha) mixing weights")
    o = p.add_argument_group("output")
    o.add_argument("--out", default="runs/accuracy", help="output folder")
    o.add_argument("--resume", action="store_true",
                   help="keep the runs already in OUT/results.json (same settings) and only run the missing ones")
    o.add_argument("--merge", nargs="+", metavar="RESULTS_JSON",
                   help="train nothing: combine the runs of --arms (default all) of several results.json files "
                        "(e.g. one per seed or per machine) into one report in OUT; data and schedule must match, "
                        "and each arm's settings and checkpoint among its merged runs; takes no other option but "
                        "--arms, --out and --no-progress")
    o.add_argument("--done", nargs="*", default=[], metavar="RESULTS_JSON",
                   help="runs in these results.json files (same settings) count as finished: neither run nor shared "
                        "out by --shard (give every shard all shards' files, as they were before the call)")
    o.add_argument("--shard", type=shard_spec, metavar="I/N",
                   help="run only shard I (0..N-1) of the runs to do, split into N of about equal expected time "
                        "(by arm: " + ", ".join(f"{a} {c:g}" for a, c in ARM_COST.items()) + " baseline runs)")
    o.add_argument("--time-budget", type=POSITIVE_FLOAT, metavar="SECONDS",
                   help="start no run that would end after SECONDS from the start of this call (its time is "
                        "estimated from the longest finished run of the same arm, else from another arm's, scaled by "
                        "the costs of --shard and by 1.5), then write the report of what is done; with --resume, a later call "
                        "runs the rest")
    o.add_argument("--no-corruptions", action="store_true",
                   help="skip the corruption accuracy (a setting: --resume, --done and --merge keep runs made the same "
                        "way)")
    o.add_argument("--no-progress", action="store_true", help="no progress bars (the runs', each run's training)")
    o.add_argument("--smoke", action="store_true",
                   help="pipeline check on the CPU in < 2 min: 200 random images for cifar10 and cifar10-5k (the "
                        "first 200 of an npz: or folder: spec), tiny random-init codecs unless --glow/--vae, and "
                        "these defaults instead of the others: " + smoke_defaults_help(SMOKE_DEFAULTS))
    o.add_argument("--threads", type=THREADS, help="CPU threads for torch (default: torch's; smoke: 1)")
    o.add_argument("--smoke-images", type=POSITIVE_INT, default=200, help=argparse.SUPPRESS)
    args = parse_args_with_smoke(p, SMOKE_DEFAULTS, argv=argv)  # its settings are defaults: an option given wins
    if args.merge:  # it trains nothing: --seeds, --shard, --resume, --epochs... given with it were silently ignored
        kept = {"merge": args.merge, "arms": args.arms, "out": args.out, "no_progress": args.no_progress}
        base = vars(p.parse_args(["--merge", *args.merge]))
        ignored = [f"--{k.replace('_', '-')}" for k, v in vars(args).items() if k not in kept and v != base[k]]
        if ignored:
            p.error(f"--merge trains nothing and takes only --arms, --out and --no-progress: leave out {', '.join(ignored)} (the "
                    f"settings are those of the files merged)")
    if args.precision is None:
        args.precision = "bf16" if args.device.startswith("cuda") else "fp32"
    if not 0 <= args.val_fraction < 1:
        p.error("--val-fraction must be in [0, 1)")
    if args.train_size is not None and (args.train_size % NUM_CLASSES or args.train_size < NUM_CLASSES):
        p.error(f"--train-size must be a multiple of the {NUM_CLASSES} classes (a class-balanced subset), got "
                f"{args.train_size}")  # 155 trained on 150 images, 5 on none
    for flag, value in (("--latent-p", args.latent_p), ("--varmixup-p", args.varmixup_p)):
        if not 0 < value <= 1:  # p=0 made the arm the baseline under another name
            p.error(f"{flag} must be in (0, 1], got {value:g}")
    for flag, values in (("--arms", args.arms), ("--seeds", args.seeds), ("--latent-levels", args.latent_levels or [])):
        # each would run twice, one result kept; under --shard the final --merge refused them (a level twice is the
        # level once to the library, another setting to --resume and --merge)
        refuse_repeats(p, flag, values)
    return args


def check_codecs(runs: dict, codec_ids: dict[str, dict], where: str) -> None:
    """Refuse runs made with another checkpoint than ``codec_ids`` (kind -> {"name", "sha256"}) says."""
    for arm, by_seed in runs.items():
        kind = CODEC_OF_ARM.get(arm)
        if kind is None:
            continue
        for seed, r in by_seed.items():
            used, want = r.get("codec"), codec_ids.get(kind)
            if used is None or want is None or used["sha256"] != want["sha256"]:
                was = (f"an unrecorded {kind} checkpoint" if used is None
                       else f"the {kind} {used['name']} (sha256 {used['sha256'][:12]})")
                now = "another checkpoint" if want is None else f"{want['name']} (sha256 {want['sha256'][:12]})"
                raise SystemExit(f"{where}: {arm} seed {seed} was trained with {was}, not {now}; "
                                 f"use another --out, or leave that arm out")


def common_codecs(runs: dict, where: str) -> dict[str, dict]:
    """kind -> {"name", "sha256"}: the one checkpoint per kind that every recorded run of ``runs`` used.

    Refuses runs made with different checkpoints; runs written before the checkpoints were recorded (no ``codec``
    entry) cannot be checked and are taken as they are.
    """
    recorded = {a: {s: r for s, r in by_seed.items() if "codec" in r} for a, by_seed in runs.items()}
    codec_ids: dict[str, dict] = {}
    for arm, by_seed in recorded.items():
        for r in by_seed.values():
            if arm in CODEC_OF_ARM:
                codec_ids.setdefault(CODEC_OF_ARM[arm], r["codec"])
    check_codecs(recorded, codec_ids, where)
    return codec_ids


def arm_setting_keys(arm: str) -> list[str]:
    """The fingerprint keys an arm's runs depend on: its method settings and its codec."""
    return ARM_SETTINGS[arm] + ([CODEC_OF_ARM[arm]] if arm in CODEC_OF_ARM else [])


def merge_results(paths: list[str], arms: list[str]) -> tuple[dict, dict, dict]:
    """-> (fingerprint, config, runs): the runs of ``arms`` in several results.json files, one report.

    Data and schedule must match across files; an arm's own settings (and checkpoint) must match among the runs
    that are merged, so a folder's other arms may have been made with other settings.
    """
    loaded = [read_results(p, "--merge") for p in paths]
    arm_keys = {k for a in ARMS for k in arm_setting_keys(a)}
    shared = [k for k in FINGERPRINT_KEYS if k not in arm_keys]
    fingerprint = {k: setting(loaded[0]["fingerprint"], k) for k in FINGERPRINT_KEYS}
    runs: dict = {}
    set_by: dict[str, str] = {}  # arm setting -> the file whose merged runs fixed its value
    for p, res in zip(paths, loaded):
        fp = res["fingerprint"]
        diff = setting_differences(fp, fingerprint, shared, "there", "in the first")
        if diff:
            raise SystemExit(f"--merge: {p} was made with other data or schedule than {paths[0]} ({diff})")
        for arm, by_seed in res["runs"].items():
            if arm not in arms:
                continue
            for k in arm_setting_keys(arm):
                if k in set_by and setting(fp, k) != fingerprint[k]:
                    raise SystemExit(f"--merge: the {arm} runs of {p} were made with {k}={setting(fp, k)!r}, those "
                                     f"of {set_by[k]} with {fingerprint[k]!r}; merge one of them (--arms)")
                set_by.setdefault(k, p)
                fingerprint[k] = setting(fp, k)
            for seed, r in by_seed.items():
                if seed in runs.get(arm, {}):
                    raise SystemExit(f"--merge: {arm} seed {seed} is in more than one file (again in {p})")
                runs.setdefault(arm, {})[seed] = r
    if not runs:
        raise SystemExit(f"--merge: none of the files has runs of {', '.join(arms)}")
    codec_ids = common_codecs(runs, "--merge")
    config = {**loaded[0]["config"], **fingerprint, "merged_from": list(paths), "codecs": codec_ids,
              "merged_commits": [res["config"].get("commit") for res in loaded],
              "device_name": " / ".join(sorted({res["config"]["device_name"] for res in loaded}))}
    return fingerprint, config, runs


def runs_to_do(arms: list[str], seeds: list[int], runs: dict) -> list[tuple[str, int]]:
    """The (arm, seed) runs not in ``runs``, seed by seed: a call cut short leaves every arm with the same seeds."""
    return [(a, s) for s in seeds for a in arms if str(s) not in runs.get(a, {})]


def shard_runs(todo: list[tuple[str, int]], index: int, count: int) -> list[tuple[str, int]]:
    """Shard ``index`` of ``count`` of ``todo`` (seed by seed, as ``runs_to_do`` lists them), in the order it runs them.

    Seed by seed, the costliest runs of a seed first, each run goes to the shard with the least expected work so far
    (``ARM_COST``; the lowest index on ties): the shards end at about the same time and, cut short, still have made
    about the same seeds. The split depends on ``todo`` alone, so shards given the same finished runs agree on it.
    """
    by_seed = itertools.groupby(todo, key=lambda run: run[1])
    order = [run for _, runs in by_seed for run in sorted(runs, key=lambda run: -ARM_COST[run[0]])]
    load, mine = [0.0] * count, []
    for arm, seed in order:
        k = min(range(count), key=load.__getitem__)
        load[k] += ARM_COST[arm]
        if k == index:
            mine.append((arm, seed))
    return mine


def all_runs(*runs_dicts: dict) -> dict:
    """arm -> seed -> run, over several results files' runs."""
    out: dict = {}
    for runs in runs_dicts:
        for arm, by_seed in runs.items():
            out.setdefault(arm, {}).update(by_seed)
    return out


def run_times(runs: dict, device_name: str) -> dict[str, list[float]]:
    """Wall seconds of the finished ``runs`` made on ``device_name``, per arm (older files did not record them)."""
    took = {a: [r["wall_seconds"] for r in rs.values() if r.get("device_name") == device_name and "wall_seconds" in r]
            for a, rs in runs.items()}
    return {a: ts for a, ts in took.items() if ts}


def expected_seconds(arm: str, took: dict[str, list[float]]) -> float:
    """The wall seconds a run of ``arm`` is expected to take: the longest finished run of its arm, else the longest
    of any other arm scaled by ``ARM_COST`` (arms differ several-fold) and by ``BORROWED_MARGIN``; 0 before any run
    has finished.

    ``took``: wall seconds (training and evaluation) of finished runs on this device, per arm.
    """
    if took.get(arm):
        return max(took[arm])
    return max((max(ts) * ARM_COST[arm] / ARM_COST[a] * BORROWED_MARGIN for a, ts in took.items() if ts), default=0.0)


def fits_budget(arm: str, took: dict[str, list[float]], elapsed: float, budget: float) -> bool:
    """Whether a run of ``arm`` started ``elapsed`` seconds into this call should end within ``budget`` seconds
    (``took``: see ``expected_seconds``; this call's runs, and with ``--resume`` or ``--done`` earlier calls')."""
    return elapsed + expected_seconds(arm, took) <= budget


def _not_run(pending: list[tuple[str, int]]) -> str:
    return ", ".join(f"{a} seed {s}" for a, s in pending)


def write_report(out: Path, fingerprint: dict, config: dict, runs: dict, start: float, header: str = "",
                 echo: bool = True) -> dict:
    """Summary and verdicts of ``runs``: OUT/results.json, OUT/results.md (``header`` first) and OUT/reliability.png;
    ``echo`` prints the report. The report is rewritten after every run, so a call killed mid-way leaves one of
    what it finished."""
    summary = summarise(runs)
    results = {"format": FORMAT, "fingerprint": fingerprint, "config": config, "runs": runs, "summary": summary,
               "targets": verdicts(runs), "wall_seconds": time.perf_counter() - start}
    results_path = out / "results.json"
    write_json(results_path, results)
    report = f"{header}\n\n{format_report(results)}" if header else format_report(results)
    write_text(out / "results.md", report + "\n")
    with hub.atomic_path(out / "reliability.png") as tmp:
        draw_reliability(pooled_bins(runs), {a: s["ece_mean"] for a, s in summary.items()}, Path(tmp), format="PNG")
    if echo:
        print(report)
        print(f"\nWrote {results_path}, {out / 'results.md'}, {out / 'reliability.png'} in "
              f"{time.perf_counter() - start:.0f} s.")
    return results


def warm_up(args, codecs: dict, x_train: torch.Tensor, y_train: torch.Tensor, device: torch.device,
            arms: set[str]) -> None:
    """cuDNN autotuning, lazy CUDA init and the CPU's first-call costs before any timed run, so that the first arm's
    s/epoch is fair: the classifier on full batches and the last, partial one; the codecs at both sizes; the latent
    attack's backward through the flow and the classifier; VarMixup at every number of selected images a batch is
    likely to hold (it encodes and decodes only those, and cuDNN tunes each new size once)."""
    torch.manual_seed(0)
    n = min(len(x_train), 2 * args.batch_size + len(x_train) % args.batch_size)
    model = build_classifier(NUM_CLASSES, args.width, device, args.precision)
    fit_classifier(model, x_train[:n], y_train[:n], epochs=1, batch_size=args.batch_size, progress=False)
    attack = [a for a in ("latent-adversarial", "randaugment+latent-adversarial") if a in arms][:1]
    adversarial = make_augment(attack[0], args, codecs, seed=0).steps[-1] if attack else None
    batches = {args.batch_size, len(x_train) % args.batch_size} - {0}
    for size in batches:
        for codec in codecs.values():
            with torch.no_grad():
                codec.decode(codec.encode(x_train[:size]))
        if adversarial is not None:
            adversarial(x_train[:size], y_train[:size], model)
    if "varmixup" in arms:
        mix = make_augment("varmixup", args, codecs, seed=0).steps[-1]
        p, mix.p = mix.p, 1.0  # every image of the slice: one call per count
        for count in sorted({k for b in batches for k in likely_counts(b, p)}):
            mix(x_train[:count], y_train[:count])


def likely_counts(n: int, p: float, sigmas: float = 4.0) -> range:
    """The numbers of images, out of ``n`` each selected with probability ``p``, within ``sigmas`` standard deviations
    of the mean (at least 1): the batch sizes VarMixup's codec sees."""
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    return range(max(1, math.floor(mean - sigmas * sd)), min(n, math.ceil(mean + sigmas * sd)) + 1)


def read_results(path: str | Path, flag: str, keys: tuple[str, ...] = ("fingerprint", "config", "runs")) -> dict:
    """A results.json this script wrote (an object with ``keys``); anything else is refused, naming ``flag`` and the
    file."""
    try:
        res = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"{flag}: cannot read {path} as a results.json of accuracy.py ({e})") from None
    if not isinstance(res, dict) or not all(isinstance(res.get(k), dict) for k in keys):
        raise SystemExit(f"{flag}: {path} is not a results.json of accuracy.py (no {', '.join(keys)})")
    return res


def load_runs(path: Path, fingerprint: dict, flag: str, remedy: str) -> dict:
    """The runs of the results file ``path``; one made with other settings is refused, naming ``flag`` and
    ``remedy``."""
    old = read_results(path, flag, ("fingerprint", "runs"))
    diff = setting_differences(old["fingerprint"], fingerprint, FINGERPRINT_KEYS, "there", "now")
    if diff:
        raise SystemExit(f"{flag}: {path} was made with other settings ({diff}); {remedy}")
    return old.get("runs", {})


def main(argv=None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    out = output_folder(args.out, "--out")
    if args.merge:
        target = out / "results.json"
        if any(Path(p).resolve() == target.resolve() for p in args.merge):
            raise ValueError(f"--out {out} would overwrite {target}, one of the files merged; give another --out")
        if target.is_file() and "merged_from" not in read_results(target, "--merge").get("config", {}):
            raise ValueError(f"{target} holds runs made there, not a merge: --merge would replace them; give another "
                             f"--out")
        fingerprint, config, runs = merge_results(args.merge, args.arms)
        return write_report(out, fingerprint, {**config, **provenance(argv)}, runs, start)
    device = setup_device(args.device, args.threads)
    results_path = out / "results.json"
    if results_path.is_file() and not args.resume:  # its runs were replaced by this call's after its first run
        raise ValueError(f"{results_path} holds earlier runs; pass --resume to keep them and add these, or give "
                         f"another --out")
    if results_path.is_file() and "merged_from" in read_results(results_path, "--resume", ()).get("config", {}):
        # runs added to a merged report are in none of its sources: the next merge (gpu_session.sh's) drops them
        raise ValueError(f"{results_path} is a merged report (of {out}/shard-*/ and the like): run into another "
                         f"--out and merge it in with --merge")

    data = load_data(args)
    fingerprint = make_fingerprint(args, data_sha256(data))
    runs: dict = {}
    if args.resume and results_path.is_file():
        runs = load_runs(results_path, fingerprint, "--resume", "use another --out or the same settings")
    done = {p: load_runs(Path(p), fingerprint, "--done", "leave it out or use the same settings") for p in args.done}
    finished = all_runs(runs, *done.values())

    todo = runs_to_do(args.arms, args.seeds, finished)
    if args.shard:
        todo = shard_runs(todo, *args.shard)
    needed = {CODEC_OF_ARM[a] for a in {a for a, _ in todo} | set(finished) if a in CODEC_OF_ARM}
    codecs, codec_names = {}, {}
    if needed:
        tiny = tiny_codecs() if args.smoke else (None, None)
        for kind, tiny_codec, given in (("glow", tiny[0], args.glow), ("vae", tiny[1], args.vae)):
            if kind not in needed:
                continue
            if given is None and args.smoke:
                codecs[kind], name = tiny_codec.to(device), f"tiny random-init {kind} (smoke)"
                codec_names[kind] = {"name": name, "sha256": tiny_codec.fingerprint()}
                continue
            name = given or f"{kind}-cifar10"
            try:
                codecs[kind] = load_codec(kind, name, device)
            except Exception as e:  # noqa: BLE001 - say which codec and how to give one
                raise SystemExit(f"cannot load the {kind} codec {name!r} ({type(e).__name__}: {e}); pass --{kind} "
                                 f"NAME|PATH, or leave out the arms that need it") from None
            codec_names[kind] = {"name": name, "sha256": codecs[kind].fingerprint()}
    check_codecs(runs, codec_names, f"--resume: {results_path}")
    for path, done_runs in done.items():  # a run made with another checkpoint is not this one done
        check_codecs(done_runs, codec_names, f"--done: {path}")
    for arm in dict.fromkeys(a for a, _ in todo):  # a bad setting fails now, not after the runs before its arm
        try:
            make_augment(arm, args, codecs, 0)
        except (ValueError, TypeError) as e:
            raise SystemExit(f"the {arm} arm cannot be built with these settings: {e}") from None

    device_name = describe_device(device)
    config = {**fingerprint, "device": str(device), "device_name": device_name, "torch": torch.__version__,
              "n_train": len(data["y_train"]), "n_val": data["n_val"], "n_eval": len(data["y_eval"]),
              "source_train": data["source_train"], "source_test": data["source_test"], "codecs": codec_names,
              "corruptions": {k: dict(zip(map(str, SEVERITIES), v)) for k, v in CORRUPTIONS.items()},
              "format": FORMAT, **provenance(argv)}

    x_train, y_train = data["x_train"].to(device), data["y_train"].to(device)
    x_eval, y_eval = data["x_eval"].to(device), data["y_eval"].to(device)
    data = {**data, "x_train": x_train, "y_train": y_train, "x_eval": x_eval, "y_eval": y_eval}
    with exact_math(device.type):  # no TF32 in kornia's blur and JPEG: the same images in every call
        corrupted = {} if args.no_corruptions or not todo else corrupted_sets(x_eval)

    if todo:  # the first run was timed cold on the CPU too (25-35% slower in smoke runs)
        warm_up(args, codecs, x_train, y_train, device, {a for a, _ in todo})
    took, code, done = run_times(finished, device_name), code_sha256(), 0
    for i, (arm, seed) in enumerate(progress_bar(todo, desc="runs", disable=args.no_progress)):
        if args.time_budget is not None and not fits_budget(arm, took, time.perf_counter() - start, args.time_budget):
            print(f"--time-budget {args.time_budget:g} s: stopping before {arm} seed {seed}; not run: "
                  f"{_not_run(todo[i:])}")
            break
        run_start = time.perf_counter()
        r = run_one(arm, seed, args, data, codecs, corrupted, device)
        r.update(wall_seconds=time.perf_counter() - run_start, device_name=device_name,  # for later --time-budget
                 code_sha256=code, shard=args.shard)
        took.setdefault(arm, []).append(r["wall_seconds"])
        if arm in CODEC_OF_ARM:
            r["codec"] = codec_names[CODEC_OF_ARM[arm]]
        runs.setdefault(arm, {})[str(seed)] = r
        if todo[i + 1:]:
            write_report(out, fingerprint, config, runs, start, echo=False,
                         header=f"**PARTIAL**: written while the call was still running; not yet run: "
                                f"{_not_run(todo[i + 1:])}.")
        done = i + 1

    if todo and not runs:  # --time-budget stopped the call before its first run
        print(f"No run finished: nothing written to {out}.")
        return {}
    if not runs:  # nothing was to do here: a report all the same, as --merge and --done expect one of every shard
        header = "**NO RUNS**: every run asked for is in another --shard or a --done file."
    elif done < len(todo):
        header = (f"**INCOMPLETE**: --time-budget {args.time_budget:g} s stopped the call; not run: "
                  f"{_not_run(todo[done:])}.")
    else:
        header = ""
    return write_report(out, fingerprint, config, runs, start, header=header)


if __name__ == "__main__":
    run_script(main)
