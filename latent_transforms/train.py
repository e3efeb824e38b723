"""Train your own codec (a Glow flow or a ConvVAE) on a tensor of images, resumably, with no pickle anywhere.

``train_codec(kind, x_train, out_dir, ...)`` trains, checkpoints its full training state (model, optimizer, RNG,
step count) to ``out_dir/<name>.state.safetensors`` every ``checkpoint_every`` steps, on a time budget, on
Ctrl-C, SIGTERM or SIGUSR1 (at a step boundary) and at the end, resumes from that file when it is there, and finally
writes

* ``out_dir/<name>.safetensors``: the codec (``hub.save_checkpoint``; load with ``hub.load(path)``),
* ``out_dir/<name>.json``: config, training data and settings, steps, wall time, device, metrics (on the test
  set, or on 1,000 training images spread over the set without one) and a ready-made registry entry,
* ``out_dir/<name>.png``: labelled rows of up to 16 of those images, their reconstructions and samples.

``eval_codec(codec, x)`` computes those metrics (bits/dim for flows, MSE/KL for VAEs). The command line
``latent-transforms train`` (docs/training.md) runs it on an image folder, an ``.npz`` file or a named dataset.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import itertools
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from types import FrameType
from typing import Any, cast

import torch

from . import hub
from .codecs import Codec, ConvVAE, Glow, build_codec, exact_math
from .data import DEFAULT_DATA_ROOT, SPLIT_SPECS
from .modelutils import describe_device, device_memory, process_memory, threads_for_this_cpu
from .pixel_shift import random_shift_flip
from .progress import progress_bar
from .torch_defaults import cpu_as_default_device
from .validation import (POSITIVE_FLOAT, POSITIVE_INT, THREADS, MissingFileError, WrongTypeError, check_bool,
                         check_count, check_images, check_number, expanded_path, flag_of, image_side, is_int,
                         make_folder, option, output_folder, resolve_device, spelled_as_flags, state_mismatch,
                         shown, values_read)

__all__ = ["train_codec", "eval_codec", "default_config", "save_training_state", "load_training_state", "STATE_FORMAT"]

STATE_FORMAT = "latent-transforms-train-state/1"
_ACTNORM_INIT_BATCH = 512  # at most: on a CPU, no more than _STEP_PEAK_FACTOR times the largest batch that fits
_EVAL_BATCH = 256  # eval_codec's; train_codec's final metrics on a CPU: no more than the largest batch that fits
# a CPU training step's peak memory (VmHWM of 2-step train_codec runs on 1x8x8 to 3x64x64 images at batches of 8 to 256,
# torch 2.14, glibc; audit 418, benchmarks/train_memory.py): what its forward keeps for the backward pass (_step_bytes)
# times up to 1.79, as the backward's transient gradients come on top and the second step's forward finds only part of
# the first's memory free (1.11 at a batch of 256 3x32x32 images, whose tensors are past glibc's 32 MB mmap threshold:
# given back when freed), and up to 22 MB of working memory besides the libraries, weights, gradients, optimizer state
_STEP_PEAK_FACTOR = 2
_STEP_WORKING_BYTES = 64 * 2**20
# seeds in [0, 2**32), as NumPy's: the batch order seeds a generator with seed * 1_000_003 + epoch
_MAX_SEED = 2**32 - 1
# a run's length in steps: int64's largest, no run's end; past a float's range (10**400), the progress bar ended the
# run in an OverflowError that named no setting ("int too large to convert to float"), or, without it, trained on
_MAX_STEPS = 2**63 - 1
# Adam and Adamax move each weight by up to about lr a step: beyond 1, only overflow (lr 1e38: a traceback)
_MAX_LR = 1.0
_ROUNDTRIP_TOL = 1e-3  # max |decode(encode(x)) - x| a stored flow may have (else fp16 falls back to fp32)
_VAE_FP16_TOL = 1e-2  # max |reconstruction(fp16 copy) - reconstruction(fp32)| for a VAE
_MIN_VAE_KL = 1.0  # nats per image: a VAE whose latent carries less has collapsed (vae-digits carries 3.7)
# a VAE padded to this many times its images' pixels or more is warned of (8x256 images: 32 times, 256x256); a square
# side just past a power of two stays under it (33x33 padded to 64x64: 3.8 times)
_MAX_VAE_PADDING = 4
_MAX_NONFINITE_IN_A_ROW = 20
# A run of known length logs about 100 history entries; one of training minutes alone (no step count) logs every 50
# steps and, once it holds twice this many, merges them in pairs and logs half as often: its history, in every
# training state's metadata and the final JSON, grew without bound (a state past safetensors' 100 MB header, about
# 40 million steps, could not be read back to resume, and each save took longer as it grew)
_HISTORY_ENTRIES, _MINUTES_LOG_EVERY = 100, 50
# the integer settings a codec's parameter count is a polynomial in: (lowest value, degree)
_SIZE_SETTINGS = {"glow": {"steps": (1, 1), "hidden": (1, 2)},
                  "vae": {"decoder_blocks": (0, 1), "hidden": (1, 2), "latent_dim": (1, 1)}}
# a flow's parameter count f in its levels L: f(L) = 8 f(L-1) - 21 f(L-2) + 22 f(L-3) - 8 f(L-4), these coefficients
# of f(L-4) to f(L-1) (_parameter_count)
_LEVELS_RECURRENCE = (-8, 22, -21, 8)
# the size settings a refusal names when past these; a flow within all of them is built unchecked (1.7 GB of weights
# at most for RGB images, besides its priors' 2 numbers a pixel value; the check builds 6 tiny flows, 24 past 4 levels:
# 0.9 s and 2 to 7 s on a busy 2-core CPU), a VAE always checked (12 tiny VAEs, 0.07 s there): at a width of 1024 one
# has 3.5 GB of weights for 32x32 images and 19 GB for 4096x4096 ones, 105 GB with 64 decoder blocks
_USUAL_SIZES = {"glow": {"levels": 4, "steps": 64, "hidden": 1024},
                "vae": {"decoder_blocks": 64, "hidden": 1024, "latent_dim": 4096}}
# the training state's file is out_dir/<name>.state.safetensors: a run name may not end so (its checkpoint would be it)
_STATE_SUFFIX = ".state"
# what stops a run at the next step boundary, saved: Ctrl-C, the usual termination, and SLURM's warning before the
# time limit (`#SBATCH --signal=USR1@120`); no SIGUSR1 on Windows
_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, name))


# -- what differs per codec kind -----------------------------------------------------------------------
@dataclass(frozen=True)
class _TrainingRecipe:
    """How ``train_codec`` builds, trains, evaluates and reports one codec kind: an entry of ``_RECIPES``."""

    name: str  # the kind as train_codec and the CLI take it
    label: str  # the kind as messages name it ("... is a VAE setting")
    settings: tuple[str, ...]  # train_codec's codec settings of this kind (another kind's must be None)
    settings_note: str  # ends the message refusing another kind's setting for this one
    base_config: Callable[[int, int, int], dict[str, Any]]  # (height, width, num_bins) -> config before overrides
    optimizer: Callable[..., torch.optim.Optimizer]  # called as (params, lr=...)
    grad_clip: float | None  # the default max gradient norm
    actnorm: bool  # a fresh codec initialises its ActNorm layers from _ACTNORM_INIT_BATCH training images
    sample_temperature: float  # of the samples in the PNG
    bar_metrics: dict[str, str]  # the progress bar's smoothed training metrics, each with its format
    # eval_codec on one batch: (codec, xb, generator) -> (metrics summed over xb, metrics maximal over xb)
    batch_metrics: Callable[[Codec, torch.Tensor, torch.Generator], tuple[dict[str, float], dict[str, float]]]
    quality: dict[str, int]  # the registry entry's quality metrics (of eval_codec), each with the decimals it keeps
    # (codec, its float16 copy, probe images) -> (the copy's error, the most allowed, what the error is); the
    # tolerance is a module constant read at each call (_ROUNDTRIP_TOL, _VAE_FP16_TOL), so that it can be set
    fp16_error: Callable[[Codec, Codec, torch.Tensor], tuple[float, float, str]]
    # (trained codec, its eval_codec metrics) -> why its latent is not worth using (a warning), or None
    weakness: Callable[[Codec, dict[str, float]], str | None]
    # (height, width) of the images -> why this kind costs far more on them than their pixels (a warning before the
    # training), or None
    size_cost: Callable[[int, int], str | None]


def _glow_config(h: int, w: int, num_bins: int) -> dict[str, int]:
    """Up to 3 levels, as many as halve the image (H, W) to a side of 2 or more (at least 1)."""
    levels = 0
    while levels < 3 and h % 2 ** (levels + 1) == 0 and w % 2 ** (levels + 1) == 0 and min(h, w) // 2 ** (levels + 1) >= 2:
        levels += 1
    return {"levels": max(levels, 1), "steps": 8, "hidden": 128, "num_bins": int(num_bins)}


def _roundtrip_err(codec: Codec, x: torch.Tensor) -> float:
    with torch.no_grad():
        xb = x.to(codec.device, codec.dtype)
        return float((codec.decode(codec.encode(xb)) - xb).abs().max())


def _glow_batch_metrics(codec: Codec, xb: torch.Tensor, gen: torch.Generator
                        ) -> tuple[dict[str, float], dict[str, float]]:
    """``bits_per_dim`` summed over ``xb`` (B, C, H, W) (uniform dequantisation noise from ``gen``), and the
    batch's ``roundtrip_max_err``, as ``(sums, maxes)``."""
    glow = cast(Glow, codec)  # _RECIPES["glow"]'s
    device = codec.device
    noise = torch.rand(xb.shape, generator=gen, device="cpu", dtype=torch.float32).to(device, codec.dtype)
    x_deq = (torch.round(xb * (glow.num_bins - 1)) + noise) / glow.num_bins
    with exact_math(device.type):
        bpd = glow.bits_per_dim(x_deq)
    return {"bits_per_dim": float(bpd.sum())}, {"roundtrip_max_err": _roundtrip_err(codec, xb)}


def _vae_batch_metrics(codec: Codec, xb: torch.Tensor, gen: torch.Generator
                       ) -> tuple[dict[str, float], dict[str, float]]:
    """``mse``, ``kl``, ``rec`` and ``nelbo`` summed over ``xb`` (B, C, H, W) (one posterior sample from ``gen``), as
    ``(sums, {})``."""
    vae = cast(ConvVAE, codec)  # _RECIPES["vae"]'s
    terms = vae.elbo_terms(xb, generator=gen)
    rec, kl = terms["rec"], terms["kl"]
    mse = (codec.decode([terms["mu"]]) - xb).pow(2).flatten(1).mean(1)
    per_image = {"mse": mse, "kl": kl, "rec": rec, "nelbo": rec + vae.beta * kl}
    return {key: float(v.sum()) for key, v in per_image.items()}, {}


def _glow_weakness(codec: Codec, metrics: dict[str, float]) -> str | None:
    """A flow no better than uniform noise over its ``num_bins`` levels (log2(num_bins) bits/dim) learnt nothing."""
    uniform = math.log2(cast(Glow, codec).num_bins)  # _RECIPES["glow"]'s
    if not metrics["bits_per_dim"] < uniform:
        return (f"the flow models its images no better than uniform noise ({metrics['bits_per_dim']:.4g} bits/dim; "
                f"uniform over {codec.num_bins} levels: {uniform:.4g}): its latent is not worth perturbing; train "
                f"longer")
    return None


def _vae_weakness(codec: Codec, metrics: dict[str, float]) -> str | None:
    """A VAE whose latent carries less than ``_MIN_VAE_KL`` nats per image has collapsed: its decodes barely depend on
    the image."""
    if not metrics["kl"] >= _MIN_VAE_KL:
        return (f"the VAE's latent carries almost nothing about its images (KL {metrics['kl']:.3g} nats per image, "
                f"under {_MIN_VAE_KL:g}: posterior collapse): its decodes barely depend on the input, so VarMixup "
                f"would mix near-copies of one image; train longer or lower the KL weight (beta, now {codec.beta:g})")
    return None


def _vae_size_cost(h: int, w: int) -> str | None:
    """A VAE's networks work at a square power-of-two side (``ConvVAE.padded_side``): an image of other proportions
    (8x256, or vectors as 1xD) costs the padded square's pixels, ``_MAX_VAE_PADDING`` times its own or more."""
    side = ConvVAE.padded_side(h, w)
    if side * side < _MAX_VAE_PADDING * h * w:
        return None
    other = "a flow (kind 'flow') takes them as they are" if h % 2 == 0 and w % 2 == 0 else \
        "a flow takes even sides; a codec of your own takes them at their size " \
        "(docs/training.md#your-own-model-as-a-codec)"
    return (f"a VAE pads {h}x{w} images to {side}x{side}, {side * side / (h * w):.3g} times their pixels, and costs "
            f"as much per image (the augmentation too, on every call): {other}")


def _glow_fp16_error(codec: Codec, stored: Codec, probe: torch.Tensor) -> tuple[float, float, str]:
    """``(error, tolerance, what the error is)`` of ``stored``, a float16 copy of ``codec``, on ``probe``
    (B, C, H, W): its own round trip."""
    return _roundtrip_err(stored, probe), _ROUNDTRIP_TOL, "decode(encode(x)) errs by"


def _vae_fp16_error(codec: Codec, stored: Codec, probe: torch.Tensor) -> tuple[float, float, str]:
    """``(error, tolerance, what the error is)`` of ``stored``, a float16 copy of ``codec``, on ``probe``
    (B, C, H, W): its reconstructions against ``codec``'s."""
    with torch.no_grad():
        p = probe.to(stored.device)
        err = float((stored.decode(stored.encode(p)) - codec.decode(codec.encode(p))).abs().max())
    return err, _VAE_FP16_TOL, "its reconstructions differ from fp32 by"


# by codec kind (``codec.kind``)
_RECIPES = {
    "glow": _TrainingRecipe(
        name="flow", label="flow (Glow)", settings=("levels", "steps", "hidden"),
        settings_note="; a flow's latent has the size of the image", base_config=_glow_config,
        optimizer=torch.optim.Adamax, grad_clip=50.0, actnorm=True, sample_temperature=0.7,
        bar_metrics={"bits/dim": ".3f"}, batch_metrics=_glow_batch_metrics, quality={"bits_per_dim": 4},
        fp16_error=_glow_fp16_error, weakness=_glow_weakness, size_cost=lambda h, w: None),
    "vae": _TrainingRecipe(
        name="vae", label="VAE", settings=("latent_dim", "hidden", "beta", "latent_side", "decoder_blocks"),
        settings_note="", base_config=lambda h, w, num_bins: {"latent_dim": 64, "hidden": 64, "beta": 1.0},
        optimizer=torch.optim.Adam, grad_clip=None, actnorm=False, sample_temperature=1.0,
        bar_metrics={"loss": ".2f", "mse": ".4f", "kl": ".2f"}, batch_metrics=_vae_batch_metrics,
        quality={"mse": 5, "kl": 3}, fp16_error=_vae_fp16_error, weakness=_vae_weakness, size_cost=_vae_size_cost),
}
# train_codec's kind, or the codec kind itself -> the codec kind
_KINDS = {**{recipe.name: kind for kind, recipe in _RECIPES.items()}, **{kind: kind for kind in _RECIPES}}


# -- configs ------------------------------------------------------------------------------------------
def default_config(kind: str, image_shape: tuple[int, int, int], num_bins: int = 256,
                   **overrides: Any) -> dict[str, Any]:
    """The codec config ``train_codec`` builds: library defaults, a level count that fits the image, overrides.

    ``kind``: ``"flow"`` (or ``"glow"``) or ``"vae"``; ``image_shape``: (C, H, W); ``num_bins``: the images' intensity
    levels (a flow's dequantisation and bits/dim; unused by a VAE). ``overrides`` with value ``None`` are ignored.
    """
    codec_kind = _codec_kind(kind)
    c, h, w = (int(s) for s in image_shape)
    config = {"kind": codec_kind, "image_shape": [c, h, w], **_RECIPES[codec_kind].base_config(h, w, num_bins)}
    config.update({k: v for k, v in overrides.items() if v is not None})
    with torch.random.fork_rng(devices=[]):  # the codecs' random init drew from the caller's global RNG
        _refuse_too_big(config)  # its tiny codecs too
        return build_codec(config).config  # validates and fills in every default


def _refuse_too_big(config: dict[str, Any]) -> None:
    """Refuse a codec whose float32 weights alone exceed this machine's memory (in all, not free; a codec is built on
    the CPU, then moved): a flow's steps and a VAE's decoder blocks are built one by one, so 10**20 steps built for
    hours, and a width of 30,000 allocated until the system killed the process, before any allocation failed; so did
    a VAE of a width of 1024 with 64 decoder blocks (105 GB), and a flow's levels double the channels of its largest
    1x1 convolutions each (12 levels for 4096x4096 images: 55 GB). Tiny codecs, a few thousand parameters each
    besides a flow's priors, give the count exactly (``_parameter_count``). A flow within ``_USUAL_SIZES`` skips the
    check; a setting that is not an int, or levels the images do not take, is left for ``build_codec`` to name."""
    kind, (c, h, w) = config["kind"], config["image_shape"]
    usual = _USUAL_SIZES[kind]
    lowest = {"levels": 1, **{k: low for k, (low, _) in _SIZE_SETTINGS[kind].items()}}
    values = {k: config.get(k, lowest[k]) for k in usual}
    memory = device_memory(torch.device("cpu"))
    if not all(is_int(v) and v >= lowest[k] for k, v in values.items()) or memory is None:
        return
    if kind == "glow" and (all(v <= usual[k] for k, v in values.items()) or values["levels"] > Glow.most_levels(h, w)):
        return
    try:
        n = _parameter_count({**config, **values})
    except ValueError:  # a setting the tiny codecs refuse as the codec itself would (decoder blocks without
        return          # up-samplings): build_codec names it with the value given
    if 4 * n > memory:
        named = [f"{k} {v}" for k, v in values.items() if v > usual[k]] or [f"{k} {v}" for k, v in values.items()]
        listed = " and ".join(filter(None, [", ".join(named[:-1]), named[-1]]))
        raise ValueError(f"{listed} make{'s' if len(named) == 1 else ''} a codec of {_three_digits(n)} parameters for "
                         f"{c}x{h}x{w} images, {_three_digits(4 * n, 10**9)} GB of float32 weights alone, more than "
                         f"this machine's {memory / 1e9:.3g} GB of memory")


def _three_digits(count: int, per: int = 1) -> str:
    """``count / per`` as ``f"{x:.3g}"`` writes it, also past a float's range (a flow of 10**400 steps: the refusal
    ended in an OverflowError, "int too large to convert to float")."""
    try:
        return f"{count / per:.3g}"
    except OverflowError:
        exponent = math.floor(math.log10(count) - math.log10(per))
        digits = f"{count / (per * 10**exponent):.3g}"
        if digits == "10":  # 9.995 and up (or an exponent one short, log10 rounded down): the next power of ten
            digits, exponent = "1", exponent + 1
        return f"{digits}e+{exponent}"


def _batch_that_fits(config: dict[str, Any], batch_size: int, num_images: int, copy: int = 0) -> int:
    """The largest batch whose CPU training step fits this machine's memory (in all, as ``_refuse_too_big``), by the
    estimate of ``_step_memory``, or ``num_images`` where the memory is not known; ``ValueError`` if ``batch_size``
    (or all the ``num_images`` when fewer) does not fit: the system would kill the process in its first steps.
    ``copy``: the bytes of the float32 copy of the training images the run makes (of another dtype or device), which
    the process does not hold yet."""
    memory = device_memory(torch.device("cpu"))
    if memory is None:
        return num_images
    per_image, (state, held) = _step_memory(config)
    held += copy
    fixed = state + held
    fits = max(0, (memory - fixed) // per_image)
    need = fixed + min(batch_size, num_images) * per_image
    if need > memory:
        c, h, w = config["image_shape"]
        fix = f"a batch of at most {fits} fits by this estimate" if fits else \
            "not even one image fits: use smaller images or codec"
        raise ValueError(f"batch_size {batch_size} needs about {need / 1e9:.3g} GB for a training step "
                         f"({per_image / 1e6:.3g} MB for each {c}x{h}x{w} image, {_STEP_PEAK_FACTOR} times what its "
                         f"forward keeps for the backward pass; {state / 1e9:.3g} GB of weights, gradients and "
                         f"optimizer state; {held / 1e9:.3g} GB that this process holds"
                         f"{', the float32 copy of the training images' if copy else ''} and the step's working "
                         f"memory), more than this machine's {memory / 1e9:.3g} GB of memory; {fix}")
    return min(fits, num_images)


def _step_memory(config: dict[str, Any]) -> tuple[int, tuple[int, int]]:
    """(bytes an image, (bytes of the codec's state, bytes besides)) of the peak memory of a CPU training step of the
    codec of ``config``: ``_STEP_PEAK_FACTOR`` times what its forward keeps of an image (``_step_bytes``), its weights
    with their gradients and optimizer state, and what this process holds already (the libraries, its codec and
    optimizer loaded by ``_step_bytes``, and the training images) with ``_STEP_WORKING_BYTES``."""
    kept, state = _step_bytes(json.dumps(config, sort_keys=True))
    return _STEP_PEAK_FACTOR * kept, (state, (process_memory() or 0) + _STEP_WORKING_BYTES)


@functools.lru_cache(maxsize=64)
def _step_bytes(config_json: str) -> tuple[int, int]:
    """(bytes an image, bytes besides) that a training step of the codec of ``config_json`` (JSON, keys sorted: the
    cache's key) needs at least: what its loss's forward keeps for the backward pass, measured on one random image
    (``saved_tensors_hooks``; the weights it keeps not counted there), and its state with the gradients and an
    optimizer's two moments (Adam, Adamax), whose libraries its building loads (torch._dynamo: 0.15 GB). The backward
    pass's transient gradients and the data come on top (``_step_memory``)."""
    config = json.loads(config_json)
    with torch.random.fork_rng(devices=[]):
        codec = build_codec(config)
        weights = {p.untyped_storage().data_ptr() for p in codec.parameters()}
        kept: dict[int, int] = {}

        def keep(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            if storage.data_ptr() not in weights:
                kept[storage.data_ptr()] = storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t), values_read():  # random, in [0, 1)
            codec.loss(torch.rand(1, *config["image_shape"], device="cpu"))
        with cpu_as_default_device():  # as _build does
            _RECIPES[config["kind"]].optimizer(codec.parameters(), lr=1e-3)
    state = sum(t.numel() * t.element_size() for t in codec.state_dict().values())
    return sum(kept.values()), state + 3 * sum(p.numel() * p.element_size() for p in codec.parameters())


def _parameter_count(config: dict[str, Any]) -> int:
    """The parameter count of the codec of ``config``, which gives every setting of ``_SIZE_SETTINGS`` as an int: a
    polynomial of the given degree in each, interpolated (Lagrange, exact in integers) from the codecs built at the
    lowest values, ``degree + 1`` of them per setting. A flow's is a 4**L + b 2**L + c L + d in its levels L (each
    level's steps act on twice the channels of the next, their weights quadratic in the channels; its priors hold 2
    numbers a pixel value at any L): past 4 levels, it follows from the counts at 1 to 4 (``_LEVELS_RECURRENCE``)."""
    if config["kind"] == "glow" and config["levels"] > len(_LEVELS_RECURRENCE):
        counts = [_parameter_count({**config, "levels": levels}) for levels in range(1, len(_LEVELS_RECURRENCE) + 1)]
        for _ in range(config["levels"] - len(_LEVELS_RECURRENCE)):
            counts = counts[1:] + [sum(a * f for a, f in zip(_LEVELS_RECURRENCE, counts))]
        return counts[-1]
    sizes = _SIZE_SETTINGS[config["kind"]]
    total = Fraction(0)
    for point in itertools.product(*(range(low, low + degree + 1) for low, degree in sizes.values())):
        weight = Fraction(1)
        for k, node in zip(sizes, point):
            low, degree = sizes[k]
            weight *= math.prod(Fraction(int(config[k]) - other, node - other)
                                for other in range(low, low + degree + 1) if other != node)
        if not weight:  # a setting at one of its nodes: the codecs at the others are not needed (nor built: a
            continue    # VAE without up-samplings takes no decoder blocks)
        built = build_codec({**config, **dict(zip(sizes, point))})
        total += weight * sum(p.numel() for p in built.parameters())
    return int(total)


def _codec_kind(kind: str) -> str:
    if kind not in _KINDS:
        raise ValueError(f"kind must be {' or '.join(repr(r.name) for r in _RECIPES.values())}, got {shown(kind)}")
    return _KINDS[kind]


# -- training state as safetensors ----------------------------------------------------------------------
def save_training_state(path: str | os.PathLike[str], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        info: dict[str, Any], extra_tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Write model + optimizer state + ``info`` (JSON-able) to one safetensors file at ``path``, atomically.

    Tensors go in as ``model/<key>``, ``optim/<param index>/<key>`` and ``extra/<key>`` (of ``extra_tensors``); the
    optimizer's non-tensor state and ``param_groups`` and ``info`` go in the metadata as JSON, with the sha256 of the
    tensors (safetensors has no checksum: a flipped bit would load silently). No pickle. A leading ``~`` of ``path`` is
    expanded.
    """
    path = expanded_path(path, f"path {str(path)!r}")

    def cpu(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to("cpu", copy=True).contiguous()

    tensors = {f"model/{k}": cpu(v) for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in opt["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{idx}/{key}"] = cpu(value)
            else:
                try:
                    json.dumps(value)
                except (TypeError, ValueError):  # LBFGS's lists of tensors: json's own error named neither
                    raise ValueError(f"{type(optimizer).__name__}'s state {key!r} (of parameter {idx}) is a "
                                     f"{type(value).__name__} holding what is neither a tensor nor JSON data; a "
                                     f"training state holds tensors and JSON values only (no pickle)") from None
                scalars.setdefault(str(idx), {})[key] = value
    for key, value in (extra_tensors or {}).items():
        tensors[f"extra/{key}"] = cpu(value)
    metadata = {
        "format": STATE_FORMAT,
        "info": json.dumps(info),
        "optim_param_groups": json.dumps(opt["param_groups"]),
        "optim_scalars": json.dumps(scalars),
        **hub.checksum_metadata(tensors),
    }
    hub.write_safetensors(path, tensors, metadata)


@dataclass(frozen=True)
class _NotSaved:
    """The saved side of a setting a training state lacks; ``implied``: the value a state of its age had
    (``_SETTINGS_ADDED_LATER``), or None."""
    implied: object = None


_Differences = list[tuple[str, object, object]]  # (setting, saved value, value now)


def _difference(key: str, saved: object, now: object) -> _Differences:
    """``[(key, A, B)]`` (saved A, now B); for two dicts (a codec config), only the entries that differ: ``("hidden",
    16, 32)`` rather than both dicts whole."""
    if isinstance(saved, dict) and isinstance(now, dict):
        return [(str(k), saved.get(k, "(none)"), now.get(k, "(none)"))
                for k in sorted(set(saved) | set(now), key=str) if saved.get(k) != now.get(k)]
    return [(key, saved, now)]


class _OtherSettings(ValueError):
    """A training state at ``state_path`` saved with other settings: ``differences`` are ``(setting, saved, now)``,
    ``("lr", 0.001, 0.002)`` (``saved`` a ``_NotSaved`` where the state lacks it); the message names the settings as
    ``train_codec``'s parameters (and codec config keys), ``spelled`` as the command line's flags."""

    def __init__(self, state_path: Path, differences: _Differences) -> None:
        self.state_path, self.differences = state_path, differences
        super().__init__(self.spelled(str, "--no-resume (resume=False in Python)"))

    def __reduce__(self) -> tuple[type, tuple[Path, _Differences]]:  # pickled (a worker's error): rebuilt
        return type(self), (self.state_path, self.differences)

    def spelled(self, spell: Callable[[str], str], no_resume: str = "--no-resume",
                value: Callable[[object], str] = repr) -> str:
        """The message, each setting named as ``spell(setting)`` and each value written as ``value(v)``:
        ``"lr: saved 0.001, now 0.002"``."""
        def how(saved: object, now: object) -> str:
            if not isinstance(saved, _NotSaved):
                return f"saved {value(saved)}, now {value(now)}"
            predates = "" if saved.implied is None else f" (the state predates it: {value(saved.implied)})"
            return f"not saved{predates}, now {value(now)}"

        listed = "; ".join(f"{spell(setting)}: {how(saved, now)}" for setting, saved, now in self.differences)
        return (f"{self.state_path} is a run with other settings ({listed}); resume with the same settings, "
                f"or start afresh with {no_resume} or another --name or --out")


def load_training_state(path: str | os.PathLike[str]
                        ) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any], dict[str, torch.Tensor]]:
    """Read the file at ``path`` written by ``save_training_state``: ``(model_state, optimizer_state_dict, info,
    extra_tensors)``.

    Raises ``ValueError`` naming the file if it is not a complete, well-formed training state.
    """
    from safetensors import SafetensorError

    path = expanded_path(path, f"path {str(path)!r}")
    if not path.is_file():
        raise MissingFileError(f"no training state file at {path}")
    try:
        metadata, tensors = hub.read_safetensors(path)
    except SafetensorError as e:
        raise _bad_state(path, f"not a readable safetensors file ({e})") from None
    if metadata.get("format") != STATE_FORMAT:
        raise _bad_state(path, f"metadata 'format' is {metadata.get('format')!r}, not {STATE_FORMAT!r}")
    if not hub.matches_checksum(metadata, tensors):  # states written before 2026-12-02 have none
        raise _bad_state(path, "its tensors do not match the sha256 saved with them (corrupted on disk or in a copy)")
    fields = {}
    for key, kind in (("info", dict), ("optim_param_groups", list), ("optim_scalars", dict)):
        if key not in metadata:
            raise _bad_state(path, f"metadata {key!r} is missing")
        try:
            fields[key] = json.loads(metadata[key])
        # ValueError: also an int of over 4,300 digits; RecursionError: arrays nested thousands deep
        except (ValueError, RecursionError):
            raise _bad_state(path, f"metadata {key!r} is not JSON") from None
        if not isinstance(fields[key], kind):
            raise _bad_state(path, f"metadata {key!r} is a JSON {type(fields[key]).__name__}, not a {kind.__name__}")
    model_state: dict[str, torch.Tensor] = {}
    extra: dict[str, torch.Tensor] = {}
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        group, _, rest = key.partition("/")
        idx, _, name = rest.partition("/")
        if group == "model" and rest:
            model_state[rest] = value
        elif group == "extra" and rest:
            extra[rest] = value
        elif group == "optim" and idx.isdecimal() and name:
            opt_state.setdefault(int(idx), {})[name] = value
        else:
            raise _bad_state(path, f"unexpected tensor {key!r}")
    for idx, scalars in fields["optim_scalars"].items():
        if not idx.isdecimal() or not isinstance(scalars, dict):
            raise _bad_state(path, f"metadata 'optim_scalars' has an entry {idx!r}: {scalars!r}")
        opt_state.setdefault(int(idx), {}).update(scalars)
    optim = {"state": opt_state, "param_groups": fields["optim_param_groups"]}
    return model_state, optim, fields["info"], extra


def _bad_state(path: str | os.PathLike[str], why: str) -> ValueError:
    return ValueError(f"{path} is not a valid training state: {why}; delete it, or start afresh with resume=False "
                      f"(--no-resume) or another name/out dir")


# -- evaluation --------------------------------------------------------------------------------------------
def _nan_max(a: float, b: float) -> float:
    """``max(a, b)``, NaN if either is NaN (Python's ``max(0.0, nan)`` is 0.0: a diverged codec looked exact)."""
    return math.nan if math.isnan(a) or math.isnan(b) else max(a, b)


@torch.no_grad()
def eval_codec(codec: Codec, x: torch.Tensor, batch_size: int = _EVAL_BATCH, seed: int = 0) -> dict[str, float]:
    """Test metrics of a codec on images ``x`` (N, C, H, W) in [0, 1] (moved to the codec's device ``batch_size`` at a
    time); ``seed`` seeds the random draws (noise, posterior samples), so a call repeats its figures.

    Flows: ``bits_per_dim`` (uniform dequantisation noise, one seeded draw per image, averaged over the set) and
    ``roundtrip_max_err`` (max |decode(encode(x)) - x|). VAEs: ``mse`` (per pixel, decoding the posterior mean),
    ``kl`` (nats per image), ``rec`` (Bernoulli reconstruction nats per image, one posterior sample) and
    ``nelbo`` (rec + beta * kl). Other codecs: the means of the metrics their ``loss`` reports.
    """
    check_images(x)
    device = codec.device
    codec.check_image_shape(x)  # on any device: x moves to the codec's a batch at a time
    gen = torch.Generator(device="cpu").manual_seed(seed)
    recipe = _RECIPES.get(codec.kind)
    was_training = codec.training
    codec.eval()
    sums: dict[str, float] = {}
    maxes: dict[str, float] = {}
    n = x.shape[0]
    try:
        with values_read():  # x's values read above, once: not again batch by batch
            for start in range(0, n, batch_size):
                xb = x[start:start + batch_size].to(device, codec.dtype)
                if recipe is not None:
                    batch_sums, batch_maxes = recipe.batch_metrics(codec, xb, gen)
                else:  # a codec train_codec does not train: the metrics its loss reports
                    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                        torch.manual_seed(seed + start)
                        loss, metrics = codec.loss(xb)
                    batch_sums = {key: float(v) * xb.shape[0] for key, v in {"loss": loss, **metrics}.items()}
                    batch_maxes = {}
                for key, v in batch_sums.items():
                    sums[key] = sums.get(key, 0.0) + v
                for key, v in batch_maxes.items():
                    maxes[key] = _nan_max(maxes.get(key, 0.0), v)
    finally:
        codec.train(was_training)
    out = {k: v / n for k, v in sums.items()}
    out.update(maxes)
    return out


# -- training ------------------------------------------------------------------------------------------------
class WeightEMA:
    """Exponential moving average of a model's floating-point state (parameters and float buffers).

    ``update`` after each optimizer step: ``shadow <- d * shadow + (1 - d) * current`` with
    ``d = min(decay, (1 + n) / (10 + n))`` after ``n`` earlier updates, so early averages do not cling to the
    initial weights. ``shadow`` is a state-dict subset: load it with ``model.load_state_dict(..., strict=False)``.
    """

    def __init__(self, model: torch.nn.Module, decay: float, shadow: dict[str, torch.Tensor] | None = None,
                 num_updates: int = 0):
        decay = check_number("decay", decay, high=1.0, low_open=True, high_open=True)
        state = model.state_dict()
        floats = [k for k, v in state.items() if v.is_floating_point()]
        if shadow is None:
            shadow = {k: state[k].detach().clone() for k in floats}
        elif sorted(shadow) != sorted(floats):
            raise ValueError(f"the saved weight average does not match the model's float state: "
                             f"{state_mismatch({k: state[k] for k in floats}, shadow)}")
        self.decay, self.shadow, self.num_updates = decay, shadow, num_updates

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        # a fresh state_dict each step, not aliases kept from __init__: a module may swap a tensor's storage
        # (ActNorm's data-dependent init assigns .data); one fused lerp over all tensors, as timm's ModelEmaV3
        state = model.state_dict()
        torch._foreach_lerp_(list(self.shadow.values()), [state[k] for k in self.shadow], 1 - d)
        self.num_updates += 1


def total_norm(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of all ``tensors`` together (as ``clip_grad_norm_`` measures gradients), a 0-d tensor: no host
    sync."""
    return cast(torch.Tensor, torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors])))


def _lr_factor(step: int, warmup: int, progress: float) -> float:
    """Linear warm-up over ``warmup`` steps or the first fifth of the run, whichever ends first, then cosine decay to
    0 as ``progress`` goes 0 -> 1. (A run of a known step count has its warm-up capped at a fifth of its steps
    already; a run of ``max_minutes`` alone ends its warm-up by a fifth of its time: a short one never reached the
    peak, 1.6e-4 of 1e-3 in 113 steps over 1.5 minutes.)"""
    warm = min(1.0, max((step + 1) / warmup, 5 * progress)) if warmup > 0 else 1.0
    return warm * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def _run_length(length: dict[str, Any]) -> str:
    return f"{length['total_steps']} steps" if length["total_steps"] is not None else f"{length['budget_s'] / 60:g} min"


def _warm_up(length: dict[str, Any]) -> str:
    return f"{length['warmup']} steps" + ("" if length["total_steps"] is not None else " (at most a fifth of the time)")


def _describe_schedule(schedule: list[dict[str, Any]], step: int) -> str:
    """The LR schedule the run's ``step`` steps followed; one part per run length that trained steps."""
    ends = [s["from_step"] for s in schedule[1:]] + [step]
    parts = [(s, end) for s, end in zip(schedule, ends) if end > s["from_step"]]
    texts = [f"linear warm-up {_warm_up(s)}, cosine decay to 0 over {_run_length(s)}" for s, _ in parts]
    if len(texts) == 1:
        return texts[0]
    return "; ".join(f"steps {s['from_step']}-{end}: {t}" for (s, end), t in zip(parts, texts))


def _merged_in_pairs(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``history`` with each two entries in a row made one: the second's step, ``elapsed_s`` and lr, and each other
    value the mean of the two weighted by their steps (an entry holds the mean since the one before); an odd last
    entry is kept as it is."""
    merged: list[dict[str, Any]] = []
    before = 0
    for first, second in zip(history[0::2], history[1::2]):
        n1, n2 = max(first["step"] - before, 0), max(second["step"] - first["step"], 0)
        means = {k: (v * n1 + second[k] * n2) / (n1 + n2) if n1 + n2 else second[k] for k, v in first.items()
                 if k not in ("step", "elapsed_s", "lr") and k in second}
        merged.append({**second, **means})
        before = second["step"]
    return merged + history[len(merged) * 2:]


def _spread(n: int, k: int) -> torch.Tensor:
    """``min(n, k)`` positions spread evenly over ``range(n)``, first and last included."""
    return torch.linspace(0, n - 1, min(n, k), dtype=torch.float64, device="cpu").round().long()


@torch.no_grad()
def _save_grid(codec: Codec, x: torch.Tensor, path: Path, n: int, temperature: float, seed: int) -> None:
    """Write the run's picture to ``path`` (PNG): ``n`` of the images ``x`` (N, C, H, W) spread over them, their
    reconstructions and ``n`` samples, a labelled row each (``visualize.draw_rows``), upscaled to 32 pixels or more."""
    from .visualize import draw_rows

    device = codec.device
    orig = x[_spread(x.shape[0], n)].to(device, codec.dtype)
    rec = codec.reconstruct(orig)
    gen = torch.Generator(device=device).manual_seed(seed)
    samples = codec.sample(orig.shape[0], temperature=temperature, generator=gen)
    rows = {"originals": orig, "reconstructions": rec, f"samples, temperature {temperature:g}": samples}
    # a NaN pixel (a weak codec's sample) drawn black, not an error of draw_rows ending the run at its picture
    rows = {label: images.float().cpu().nan_to_num(0.0).clamp(0, 1) for label, images in rows.items()}
    c, h, w = orig.shape[1:]
    if c not in (1, 3):  # draw_rows draws grey or RGB: the channels of each image in grey side by side, (N, 1, H, C*W)
        rows = {(f"{label}, {c} channels" if label == "originals" else label):
                images.transpose(1, 2).reshape(len(images), 1, h, c * w) for label, images in rows.items()}
    picture = draw_rows(rows, cell=h * math.ceil(32 / min(h, w)))
    with hub.atomic_path(path) as tmp:
        picture.save(tmp, format="png")


def _check_train_args(x_train: torch.Tensor, x_test: torch.Tensor | None, name: str, *, epochs: float | None,
                      max_steps: int | None, max_minutes: float | None, lr: float, warmup_steps: int,
                      grad_clip: float | None, batch_size: int, checkpoint_every: int, translate: int,
                      ema_decay: float | None, seed: int, flags: dict[str, object],
                      data_description: object = None) -> None:
    """Raise ``ValueError`` on bad images (N, C, H, W), run lengths, training settings, file stem or data description
    (``flags``: the ``True``/``False`` settings by name)."""
    for images, label in [(x_train, "x_train")] + ([(x_test, "x_test")] if x_test is not None else []):
        check_images(images, label)  # x_test is optional; x_train None is refused here
        if images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):  # no codec takes images 1 or 3 pixels wide
            raise ValueError(f"{label} of shape {tuple(images.shape)} looks channels-last (N, H, W, C); images are "
                             f"(N, C, H, W): pass {label}.permute(0, 3, 1, 2)")
    if x_test is not None and x_test.shape[1:] != x_train.shape[1:]:
        raise ValueError(f"x_test images are {tuple(x_test.shape[1:])}, x_train images {tuple(x_train.shape[1:])}")
    if epochs is not None and max_steps is not None:
        raise ValueError("give epochs or max_steps, not both")
    if epochs is None and max_steps is None and max_minutes is None:
        raise ValueError("give the length of the run: epochs, max_steps or max_minutes")
    if epochs is not None:
        check_number("epochs", epochs, low_open=True)
    if max_steps is not None:
        check_count("max_steps", max_steps, low=1, high=_MAX_STEPS)
    if max_minutes is not None:
        check_number("max_minutes", max_minutes, low_open=True)
    check_number("lr", lr, high=_MAX_LR, low_open=True)
    check_count("warmup_steps", warmup_steps)
    if grad_clip is not None:
        check_number("grad_clip", grad_clip, low_open=True)
    check_count("batch_size", batch_size, low=1)
    check_count("checkpoint_every", checkpoint_every, low=1)
    if ema_decay is not None:
        check_number("ema_decay", ema_decay, high=1.0, low_open=True, high_open=True)
    check_count("seed", seed, high=_MAX_SEED)
    for flag, value in flags.items():
        check_bool(flag, value)
    h, w = x_train.shape[2:]
    if check_count("translate", translate) >= min(h, w):
        raise ValueError(f"translate must be < {min(h, w)} ({image_side(h, w)}), got {translate}")
    hub.check_file_stem(name)
    if name.lower().endswith(_STATE_SUFFIX):  # NAME.state.safetensors is the state file of the run NAME
        raise ValueError(f"name {name!r} ends in {_STATE_SUFFIX!r}: its checkpoint, {name}.safetensors, would be the "
                         f"training state file of a run named {name[:-len(_STATE_SUFFIX)]!r}; pick another name")
    if data_description is not None:  # saved with the training state: a bad one lost the steps of the call
        try:
            json.dumps(data_description, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as e:
            try:
                shown = repr(data_description)
            except (ValueError, RecursionError):  # nested too deep, an int of over 4,300 digits: its repr fails too
                shown = f"a {type(data_description).__name__} ({e})"
            raise WrongTypeError(f"data_description must be a str or a dict of JSON values (it goes into the JSON and "
                                 f"the training state), got {shown}") from None


def _refuse_other_kind_settings(codec_kind: str, settings: dict[str, Any], spell: Callable[[str], str] = str) -> None:
    """``ValueError`` naming (as ``spell(name)``) each setting of another codec kind that is not None."""
    own = _RECIPES[codec_kind]
    for other in _RECIPES.values():
        given = [spell(n) for n in other.settings if n not in own.settings and settings.get(n) is not None]
        if len(given) == 1:
            raise ValueError(f"{given[0]} is a {other.label} setting{own.settings_note}")
        if given:
            raise ValueError(f"{', '.join(given[:-1])} and {given[-1]} are {other.label} settings{own.settings_note}")


def _codec_config(codec_kind: str, image_shape: tuple[int, int, int], num_bins: int, config: dict[str, Any] | None,
                  settings: dict[str, Any]) -> dict[str, Any]:
    """``default_config()`` with the codec ``settings`` (by name) of ``codec_kind`` (another kind's must be None),
    then ``config``."""
    _refuse_other_kind_settings(codec_kind, settings)
    overrides = {n: settings[n] for n in _RECIPES[codec_kind].settings}
    return default_config(codec_kind, image_shape, num_bins, **{**overrides, **(config or {})})


# settings that training states saved before they existed lack, with the value such a state had (None: unknown, so
# the state resumes without their check)
_SETTINGS_ADDED_LATER = {"data_sha256": None, "translate": 0}


def _new_info(codec_kind: str, settings: dict[str, Any], steps_per_epoch: int) -> dict[str, Any]:
    """The ``info`` (JSON-able, saved with the training state) of a run that starts at step 0."""
    return {"kind": codec_kind, **settings, "optimizer": _RECIPES[codec_kind].optimizer.__name__,
            "steps_per_epoch": steps_per_epoch, "step": 0, "train_time_s": 0.0, "nonfinite_steps": 0,
            "history": [], "calls": 0, "schedule": []}


_SavedState = tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, torch.Tensor]]  # (model, optimizer, extra) states


def _load_resume(state_path: Path, settings: dict[str, Any]) -> tuple[dict[str, Any], _SavedState]:
    """``(info, (model_state, optimizer_state, extra_tensors))`` of the training state to resume.

    Raises ``ValueError`` if it was saved with other ``settings`` or its ``info`` lacks a field.
    """
    model_state, optim_state, info, extra = load_training_state(state_path)
    implied = {k: v for k, v in _SETTINGS_ADDED_LATER.items() if v is not None and k not in info}
    info = {**implied, **info}
    mismatch = [d for k, v in settings.items() if info.get(k) != v and (k in info or k not in _SETTINGS_ADDED_LATER)
                for d in ([(k, _NotSaved(info[k]), v)] if k in implied else
                          _difference(k, info[k], v) if k in info else [(k, _NotSaved(), v)])]
    if mismatch:
        raise _OtherSettings(state_path, mismatch)
    missing = [k for k in ("step", "train_time_s", "nonfinite_steps", "history", "calls", "schedule") if k not in info]
    if missing:
        raise _bad_state(state_path, f"its info lacks {', '.join(missing)}")
    time_s = info["train_time_s"]
    wrong = [k for k in ("step", "nonfinite_steps", "calls") if type(info[k]) is not int or info[k] < 0] + \
        (["train_time_s"] if type(time_s) not in (int, float) or not 0 <= time_s < math.inf else []) + \
        [k for k in ("history", "schedule") if not isinstance(info[k], list)]
    if wrong:  # a hand-edited info: a negative step trained from it
        raise _bad_state(state_path, f"its info has {', '.join(f'{k} {info[k]!r}' for k in wrong)} (counts are ints "
                                     f">= 0, train_time_s a number >= 0, history and schedule lists)")
    return info, (model_state, optim_state, extra)


def _build(codec_kind: str, cfg: dict[str, Any], dev: torch.device, lr: float, seed: int, x: torch.Tensor,
           saved: _SavedState | None, state_path: Path, init_batch: int) -> tuple[Codec, torch.optim.Optimizer]:
    """The seeded codec and its kind's optimizer (``_RECIPES``), fresh or restored from ``saved``.

    A fresh codec with ActNorm (a flow) initialises it from ``init_batch`` random images of ``x`` (N, C, H, W); a
    resumed run (``saved``: model state, optimizer state, extra tensors) gets back its weights, optimizer state and
    RNG state. Call it inside the run's ``torch.random.fork_rng``.
    """
    torch.manual_seed(seed)
    codec = build_codec(cfg).to(dev)
    params = [p for p in codec.parameters() if p.requires_grad]
    recipe = _RECIPES[codec_kind]
    if saved is None and recipe.actnorm:  # ActNorm initialises from the first batch it sees: a big one
        g = torch.Generator().manual_seed(seed)
        glow = cast(Glow, codec)  # the recipe with ActNorm
        glow.init_actnorm(x[torch.randperm(x.shape[0], generator=g, device="cpu")[:init_batch].to(dev)])
    with cpu_as_default_device():  # torch 2.6 to 2.8 import torch._dynamo at a first optimizer: not under "meta"
        optimizer = recipe.optimizer(params, lr=lr)
    if saved is not None:
        model_state, optim_state, extra = saved
        try:
            codec.load_state_dict(model_state)
            optimizer.load_state_dict(optim_state)
            torch.set_rng_state(extra["rng_cpu"])
            if dev.type == "cuda" and "rng_cuda" in extra:
                torch.cuda.set_rng_state(extra["rng_cuda"], dev)
        except (KeyError, RuntimeError, TypeError, ValueError) as e:
            raise _bad_state(state_path, f"{type(e).__name__}: {' '.join(str(e).split())}") from None
    return codec, optimizer


def _weight_ema(codec: Codec, decay: float, saved: _SavedState | None, num_updates: int, dev: torch.device
                ) -> WeightEMA:
    """A ``WeightEMA`` of ``codec``, continuing the average saved as ``ema/<key>`` extra tensors if any."""
    extra = saved[2] if saved else {}
    shadow = {k[len("ema/"):]: v.to(dev) for k, v in extra.items() if k.startswith("ema/")}
    return WeightEMA(codec, decay, shadow or None, num_updates)


@dataclass
class _TrainingRun:
    """The training loop of one ``train_codec`` call, with its LR schedule and training-state checkpoints.

    ``info`` (JSON-able) carries the run over calls: settings, step, training time, history and schedule. A
    history entry holds the step, ``elapsed_s`` (wall seconds of training so far, summed over calls, as
    ``train_time_s``), the lr, and the mean loss and metrics since the previous entry. The run's length is
    ``total_steps`` optimizer steps or, when that is None, ``budget_s`` seconds of training.
    """

    codec: Codec
    optimizer: torch.optim.Optimizer
    ema: WeightEMA | None
    info: dict[str, Any]
    state_path: Path
    x: torch.Tensor  # (N, C, H, W) float32 training images on ``device``
    device: torch.device
    recipe: _TrainingRecipe
    batch_size: int
    steps_per_epoch: int
    seed: int
    flips: bool
    translate: int
    lr: float
    warmup: int
    grad_clip: float | None
    total_steps: int | None
    budget_s: float | None
    checkpoint_every: int
    loss_fn: Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]  # codec.loss, or its torch.compile
    nonfinite_in_a_row: int = field(default=0, init=False)
    stop_signal: int | None = field(default=None, init=False)  # one of _STOP_SIGNALS, received while training

    def checkpoint(self) -> None:
        """Save codec, optimizer, RNG state, weight average and ``info`` to ``state_path``."""
        extra = {"rng_cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            extra["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        if self.ema is not None:
            extra.update({f"ema/{k}": v for k, v in self.ema.shadow.items()})
            self.info["ema_updates"] = self.ema.num_updates
        save_training_state(self.state_path, self.codec, self.optimizer, self.info, extra)

    def finished(self) -> bool:
        """Whether the whole run, over every call, has reached its length."""
        if self.total_steps is not None:
            return cast(int, self.info["step"]) >= self.total_steps
        return cast(float, self.info["train_time_s"]) >= cast(float, self.budget_s)  # one of the two is set

    def follow_length(self, say: Callable[..., None]) -> None:
        """Make the LR schedule follow this call's run length: record it in ``info["schedule"]`` from this step."""
        length = {"total_steps": self.total_steps, "budget_s": self.budget_s, "warmup": self.warmup}
        schedule, step = self.info["schedule"], self.info["step"]
        if schedule and schedule[-1]["from_step"] == step:  # no step was trained with that length
            schedule.pop()
        if not schedule or {k: schedule[-1][k] for k in length} != length:
            if schedule:
                say(f"the run's length changed from {_run_length(schedule[-1])} to {_run_length(length)} at step "
                    f"{step}: " + ("already reached, nothing to train" if self.finished() else
                                   "the learning-rate schedule follows the new length from here"))
            schedule.append({"from_step": step, **length})

    def run(self, started: float, limit_s: float | None, bar_desc: str | None, say: Callable[..., None]) -> bool:
        """Train to the end of the run, or until ``limit_s`` seconds after ``started`` (``time.perf_counter()``), but
        at least one step: a limit shorter than the call's set-up would otherwise train nothing on every call.

        Checkpoints every ``checkpoint_every`` steps and at the end; shows a tqdm bar titled ``bar_desc`` unless it
        is None. The first of ``_STOP_SIGNALS`` (see ``_stop_signals_deferred``) ends the loop at the next step
        boundary, like the time limit, and is left in ``stop_signal``. Returns whether the run is complete.
        """
        step = self.info["step"]
        self.codec.train()
        bar = None
        if bar_desc is not None:
            bar = progress_bar(total=self.total_steps, initial=min(step, self.total_steps or step), unit="step",
                               dynamic_ncols=True, desc=bar_desc, file=sys.stderr)
        smoothed: dict[str, float] = {}
        log_every = max(1, self.total_steps // 100) if self.total_steps is not None else \
            self.info.get("history_every", _MINUTES_LOG_EVERY)  # as the history's merges left it
        open_window = self.info.get("history_window", {"n": 0, "sums": {}})  # since the last entry, as saved
        window: dict[str, float] = dict(open_window["sums"])
        window_n = open_window["n"]
        perm, perm_epoch = None, -1
        t_last = time.perf_counter()
        # the caller's signal handlers back and the bar closed also on an exception
        with self._stop_signals_deferred(say), (bar if bar is not None else contextlib.nullcontext()):
            while not self.finished() and self.stop_signal is None:
                epoch, pos = divmod(step, self.steps_per_epoch)
                if epoch != perm_epoch:
                    perm, perm_epoch = self._epoch_order(epoch), epoch
                assert perm is not None  # drawn at the first step (perm_epoch -1)
                xb = self._batch(perm, pos)
                progress = step / self.total_steps if self.total_steps is not None else \
                    self.info["train_time_s"] / self.budget_s
                lr_now = self.lr * _lr_factor(step, self.warmup, progress)
                loss, metrics = self._update(xb, lr_now, step)
                step += 1
                now = time.perf_counter()
                self.info["train_time_s"] += now - t_last
                t_last = now
                self.info["step"] = step
                values = {"loss": float(loss.detach()), **{k: float(v) for k, v in metrics.items()}}
                if math.isfinite(values["loss"]):
                    for k, v in values.items():
                        smoothed[k] = v if k not in smoothed else 0.95 * smoothed[k] + 0.05 * v
                        window[k] = window.get(k, 0.0) + v
                    window_n += 1
                if step % log_every == 0 and window_n:
                    self.info["history"].append({"step": step, "elapsed_s": round(self.info["train_time_s"], 3),
                                                 "lr": lr_now, **{k: v / window_n for k, v in window.items()}})
                    window, window_n = {}, 0
                    if self.total_steps is None and len(self.info["history"]) >= 2 * _HISTORY_ENTRIES:
                        self.info["history"] = _merged_in_pairs(self.info["history"])
                        log_every = self.info["history_every"] = 2 * log_every
                self.info["history_window"] = {"n": window_n, "sums": dict(window)}  # a resume completes it
                if bar is not None:
                    bar.update(1)
                    if step % 5 == 0 or step == 1:
                        shown = {k: f"{smoothed.get(k, math.nan):{fmt}}" for k, fmt in self.recipe.bar_metrics.items()}
                        shown["lr"] = f"{lr_now:.1e}"
                        if self.budget_s is not None:  # a run of max_minutes: the bar has no total to count down
                            shown["left"] = f"{max(0.0, self.budget_s - self.info['train_time_s']) / 60:.1f} min"
                        bar.set_postfix(shown, refresh=False)
                if step % self.checkpoint_every == 0:
                    self.checkpoint()
                    t_last = time.perf_counter()
                if limit_s is not None and time.perf_counter() - started >= limit_s:
                    break
            self.info["complete"] = self.finished()
            self.checkpoint()  # a KeyboardInterrupt raised mid-step saves nothing: the state would mix two steps
        return cast(bool, self.info["complete"])

    @contextlib.contextmanager
    def _stop_signals_deferred(self, say: Callable[..., None]) -> Iterator[None]:
        """While open, in the main thread, the first of ``_STOP_SIGNALS`` (those not ignored) sets ``stop_signal``
        for the loop to stop at the next step boundary; a later SIGINT is handled at once by the caller's handler
        (Python's raises ``KeyboardInterrupt``), a later SIGTERM or SIGUSR1 is only reported. On leaving, also on an
        exception, every handler is the caller's again. Another thread changes nothing: only the main thread gets
        signals and may set their handlers.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        callers = {s: signal.getsignal(s) for s in _STOP_SIGNALS}
        callers = {s: h for s, h in callers.items() if h not in (signal.SIG_IGN, None)}  # None: set outside Python

        def stop(signum: int, frame: FrameType | None) -> None:
            name = signal.Signals(signum).name
            if self.stop_signal is None:
                self.stop_signal = signum
                again = "Ctrl-C again" if signum == signal.SIGINT else "Ctrl-C or SIGINT"
                now = f" ({again} to stop at once, losing the steps since the last save)" if signal.SIGINT in callers \
                    else ""  # Ctrl-C ignored, as in a shell's background job
                say(f"\n{name}: saving the training state after this step{now}", file=sys.stderr, flush=True)
            elif signum == signal.SIGINT:  # Ctrl-C after a stop signal: stop now, as without this run
                signal.signal(signum, callers[signum])
                signal.raise_signal(signum)
            else:  # from a supervisor, whose next word is SIGKILL: the save it waits for goes on
                say(f"\n{name}: already stopping by {signal.Signals(self.stop_signal).name} after this step; "
                    f"ignored", file=sys.stderr, flush=True)

        # all set for the whole run: a handler that put the others back raced a signal at the same instant
        for s in callers:
            signal.signal(s, stop)
        try:
            yield
        finally:
            for s, handler in callers.items():
                signal.signal(s, handler)

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        """(N,) the seeded order of the training images in ``epoch``, on ``device``."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.x.shape[0], generator=gen, device="cpu").to(self.device)

    def _batch(self, perm: torch.Tensor, pos: int) -> torch.Tensor:
        """(B, C, H, W) the ``pos``-th batch of the epoch order ``perm``, each image randomly shifted by up to
        ``translate`` pixels (reflection padding) and flipped if ``flips``."""
        bs = self.batch_size
        xb = self.x[perm[pos * bs:(pos + 1) * bs]]
        return random_shift_flip(xb, self.translate, self.flips, padding="reflect")

    def _update(self, xb: torch.Tensor, lr_now: float, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One optimizer step at ``lr_now`` on the loss of ``xb`` (B, C, H, W); returns ``codec.loss(xb)``.

        A non-finite loss or gradient skips the update (the schedule goes on; a NaN gradient would have made every
        weight NaN, clipped or not); ``_MAX_NONFINITE_IN_A_ROW`` of them in a row raise ``FloatingPointError``.
        """
        for group in self.optimizer.param_groups:
            group["lr"] = lr_now
        with values_read():  # the data set's, read once before training (shifts and flips keep them in [0, 1])
            loss, metrics = self.loss_fn(xb)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = self.optimizer.param_groups[0]["params"]
        norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip) if self.grad_clip is not None else \
            total_norm(p.grad for p in params if p.grad is not None)
        if torch.isfinite(loss) & torch.isfinite(norm):  # one host sync
            with cpu_as_default_device():  # Adamax (and torch 2.4's Adam) make step counters on the default device
                self.optimizer.step()
            if self.ema is not None:
                self.ema.update(self.codec)
            self.nonfinite_in_a_row = 0
        else:
            self.info["nonfinite_steps"] += 1
            self.nonfinite_in_a_row += 1
            if self.nonfinite_in_a_row >= _MAX_NONFINITE_IN_A_ROW:
                raise FloatingPointError(
                    f"{self.nonfinite_in_a_row} non-finite losses or gradients in a row at step {step}; lower the "
                    f"learning rate (lr={self.lr}) or grad_clip and start afresh (--no-resume), or check the data"
                )
        return loss, metrics


def _store(codec: Codec, recipe: _TrainingRecipe, ckpt: Path, fp16: bool, probe: torch.Tensor, name: str,
           dev: torch.device, say: Callable[..., None]) -> tuple[Codec, str, torch.dtype, str | None]:
    """Save ``codec`` to ``ckpt`` and load it back: as float16 if ``fp16`` and that copy stays accurate on the
    images ``probe`` (B, C, H, W), else as float32.

    Returns ``(stored codec, sha256, dtype, fallback)``; ``fallback`` says why fp16 was rejected, else None.
    """
    meta = {"name": name, "trained_by": "latent_transforms.train"}
    fallback = None
    if fp16:
        big = hub.weights_beyond(codec, torch.float16)
        why = f"weights beyond the float16 range: {', '.join(big[:3])}{' ...' if len(big) > 3 else ''}" if big else None
        if why is None:
            sha = hub.save_checkpoint(codec, ckpt, dtype=torch.float16, extra_metadata=meta)
            stored = hub.load_checkpoint(ckpt, dev)
            why = _fp16_inaccuracy(codec, stored, recipe, probe)
            if why is None:
                return stored, sha, torch.float16, None
        fallback = f"fp16 copy rejected ({why}); stored fp32"
        say(fallback)
    sha = hub.save_checkpoint(codec, ckpt, dtype=torch.float32, extra_metadata=meta)
    return hub.load_checkpoint(ckpt, dev), sha, torch.float32, fallback


def _fp16_inaccuracy(codec: Codec, stored: Codec, recipe: _TrainingRecipe, probe: torch.Tensor) -> str | None:
    """Why ``stored``, the float16 copy of ``codec``, is not accurate enough on ``probe`` (B, C, H, W), or None."""
    err, tol, what = recipe.fp16_error(codec, stored, probe)
    return None if err <= tol else f"{what} {err:.2e} > {tol}"


def _refuse_diverged(metrics: dict[str, float], run: _TrainingRun, ckpt: Path) -> None:
    """Raise ``FloatingPointError`` (and delete ``ckpt``) if a test metric is not finite: the weights diverged."""
    bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
    if bad:
        _diverged(run, ckpt, f"test {', '.join(bad)} not finite")


def _diverged(run: _TrainingRun, ckpt: Path, what: str) -> None:
    """Delete ``ckpt`` and raise ``FloatingPointError``: the run diverged, as ``what`` shows."""
    ckpt.unlink(missing_ok=True)
    raise FloatingPointError(
        f"the run diverged: {what} (non-finite training losses: {run.info['nonfinite_steps']}); no checkpoint "
        f"written, the training state stays in {run.state_path}; lower lr (--lr, now {run.lr:g}) or grad_clip "
        f"(--grad-clip) and start afresh (--no-resume)"
    )


def _report(run: _TrainingRun, stored: Codec, *, name: str, ckpt: Path, sha: str, dtype: torch.dtype,
            fallback: str | None, x_train: torch.Tensor, trained_by: dict[str, Any], ema_decay: float | None,
            metrics: dict[str, float], eval_on: str, test_set: bool, notes: str) -> dict[str, Any]:
    """The JSON report of a finished run: file, config, training settings and history, metrics (``evaluated_on``
    says on what), and a ready-made registry entry (quality ``test_*`` with a test set, ``train_*`` without).
    ``trained_by``: the ``device``, ``data`` description and ``compiled`` (the loss) of the last call that trained.
    ``notes``: the registry entry's (a warning about the codec)."""
    n, info, step = x_train.shape[0], run.info, run.info["step"]
    data_description, device = trained_by["data"], trained_by["device"]
    on = "test" if test_set else "train"  # without a test set, the figures are of training images: named so
    quality = {f"{on}_{key}": round(metrics[key], decimals) for key, decimals in run.recipe.quality.items()}
    # 3 significant figures: a run of seconds is not 0 minutes
    quality.update(train_device_minutes=float(f"{info['train_time_s'] / 60:.3g}"), train_device=device)
    size = ckpt.stat().st_size
    trained_on = data_description if isinstance(data_description, str) else json.dumps(data_description)
    return {
        "name": name,
        "file": ckpt.name,
        "sha256": sha,
        "size": size,
        "dtype": str(dtype).replace("torch.", ""),
        "fp16_fallback": fallback,
        "config": stored.config,
        "num_parameters": sum(p.numel() for p in stored.parameters()),
        "training": {
            "data": data_description,
            "num_images": n,
            "image_shape": list(x_train.shape[1:]),
            "steps": step,
            "epochs": round(step / run.steps_per_epoch, 3),
            "batch_size": run.batch_size,
            "optimizer": info["optimizer"],
            "lr": run.lr,
            "schedule": _describe_schedule(info["schedule"], step),
            "grad_clip": run.grad_clip,
            "ema_decay": ema_decay,
            "flips": run.flips,
            "translate": run.translate,
            "compiled": trained_by["compiled"],
            "seed": run.seed,
            # a state saved before the init batch was capped (_batch_that_fits) was initialised from up to 512
            "actnorm_init_batch": info.get("actnorm_init_batch", min(_ACTNORM_INIT_BATCH, n)) if run.recipe.actnorm
            else None,
            "nonfinite_steps": info["nonfinite_steps"],
            "train_time_s": round(info["train_time_s"], 1),
            "calls": info["calls"],
            "device": device,
            "torch": torch.__version__,
            "history": info["history"],
        },
        # significant digits: a round-trip error of 4e-7 rounded to 6 decimals read 0.0
        "metrics": {"evaluated_on": eval_on, **{k: float(f"{v:.6g}") for k, v in metrics.items()}},
        "registry_entry": {"file": ckpt.name, "sha256": sha, "size": size, "config": stored.config,
                           "trained_on": trained_on, "quality": quality, "notes": notes},
        "load": f'latent_transforms.hub.load("{ckpt}")',
    }


def _say_written(say: Callable[..., None], report: dict[str, Any], ckpt: Path, js: Path, png: Path,
                 metrics: dict[str, float]) -> None:
    """Tell where the final files went, the metrics (on the test set, or on training images without one), and how to
    load the codec and register it by name."""
    import shlex

    name, size = report["name"], report["size"]
    say(f"wrote {ckpt} ({size / 1e6:.2f} MB, {report['dtype']}), {js} and {png}")
    say(f"metrics on {report['metrics']['evaluated_on']}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    say(f"load it:      codec = latent_transforms.hub.load({str(ckpt)!r})")
    registry = hub.registry_for_messages()  # a broken user registry: `register` will name it
    # a finished run run again, registered before: under its own name, or another (`register --name`)
    known = sorted((n != name, n) for n, e in registry.items() if e.get("sha256") == report["sha256"])
    if known:
        say(f"registered:   as {known[0][1]!r}, this checkpoint: codec = latent_transforms.hub.load({known[0][1]!r})")
        return
    taken = set(registry) | {Path(e["file"]).stem for e in registry.values()}
    reg_name = name
    while reg_name in taken:  # e.g. the default glow-digits: a shipped checkpoint's name (and file)
        reg_name = f"my-{reg_name}"
    command = f"latent-transforms register {shlex.quote(str(js))}"
    if reg_name == name:
        say(f"register it:  {command}")
        say(f"              then, in any process: codec = latent_transforms.hub.load({reg_name!r})")
    else:
        yours = name in registry and name not in hub.registry_for_messages(shipped_only=True) and \
            all(Path(e["file"]).stem != name for n, e in registry.items() if n != name)
        or_replace = "; or replace yours: --overwrite instead of --name" if yours else ""
        say(f"register it:  {command} --name {shlex.quote(reg_name)}")
        say(f"              ({name!r} is a registered checkpoint's name{or_replace}), then, in any process:")
        say(f"              codec = latent_transforms.hub.load({reg_name!r})")


@contextlib.contextmanager
def _only_run_writing(out: Path, name: str) -> Iterator[bool]:
    """Hold ``out/.<name>.lock`` (``fcntl.flock``, where it exists) for the run: a second run with the same folder
    and name, which would write the same state and final files, is refused at once. The lock file is removed at the
    end (a lock taken on a file removed meanwhile is taken again on the new one); a process killed meanwhile leaves
    it, and the next run takes it. Where the file system refuses ``flock`` (some NFS, FUSE or Lustre mounts), the run
    goes on without a lock, as it did before there was one. Yields whether the lock is held."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield False
        return
    path = out / f".{name}.lock"
    fd: int | None
    while True:
        try:  # not through a link: one who can write a shared output folder would choose what the run creates
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
            raise ValueError(f"{path} is a symbolic link, never a train run's lock file: remove it (can others write "
                             f"to {out}?)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = os.stat(path).st_ino == os.fstat(fd).st_ino  # else the run before removed it meanwhile
        except BlockingIOError:
            os.close(fd)
            raise ValueError(f"another train run is writing {out / name}.* (it holds {path}); wait for it to end, or "
                             f"give another name or output folder") from None
        except FileNotFoundError:
            locked = False
        except OSError:  # a file system without flock (ENOLCK, EOPNOTSUPP: some NFS, FUSE, Lustre mounts): no lock
            os.close(fd)
            path.unlink(missing_ok=True)
            fd = None
            break
        if locked:
            break
        os.close(fd)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            path.unlink(missing_ok=True)
            os.close(fd)


def train_codec(
    kind: str,
    x_train: torch.Tensor,
    out_dir: str | os.PathLike[str],
    *,
    name: str | None = None,
    num_bins: int = 256,
    levels: int | None = None,
    steps: int | None = None,
    hidden: int | None = None,
    latent_dim: int | None = None,
    beta: float | None = None,
    latent_side: int | None = None,
    decoder_blocks: int | None = None,
    config: dict[str, Any] | None = None,
    epochs: float | None = None,
    max_steps: int | None = None,
    max_minutes: float | None = None,
    batch_size: int = 64,
    lr: float = 1e-3,
    warmup_steps: int = 200,
    grad_clip: float | None = None,
    ema_decay: float | None = None,
    seed: int = 0,
    flips: bool = False,
    translate: int = 0,
    compile: bool = False,
    resume: bool = True,
    x_test: torch.Tensor | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    fp16: bool = False,
    checkpoint_every: int = 500,
    data_description: str | dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train a codec on ``x_train`` (N, C, H, W) float in [0, 1]; checkpoint, resume, and write the final files.

    Args:
        kind: ``"flow"`` (Glow; Adamax; ``"glow"``, the codec's ``kind``, is accepted too) or ``"vae"`` (ConvVAE;
            Adam).
        x_train: (N, C, H, W) float in [0, 1], the training images (``data.load_images``).
        out_dir: where ``<name>.state.safetensors`` (training state) and the final ``<name>.safetensors``,
            ``<name>.json`` and ``<name>.png`` go (created if missing).
        name: file stem; default ``"glow"`` or ``"vae"``.
        num_bins: intensity levels of the data (17 for sklearn digits, 256 for 8-bit images); flows only.
        levels: Glow's L (flows only). Defaults of the codec settings: see ``default_config()``.
        steps: Glow's K (flows only).
        hidden: the coupling networks' width (flows) or the convolution width (VAEs).
        latent_dim: the VAE's latent size (channels of a spatial latent).
        beta: the VAE's KL weight.
        latent_side: the side of the VAE's spatial latent (default: a vector latent).
        decoder_blocks: residual blocks after each of the VAE decoder's up-samplings (default 0).
        config: further codec config overrides.
        epochs: length of the whole run in epochs (over every resumed call); it fixes the LR schedule.
        max_steps: length of the whole run in optimizer steps, instead of ``epochs``.
        max_minutes: with ``epochs``/``max_steps``, this call's time limit (stop cleanly, save, resume later;
            each call trains at least one step);
            alone, the length of the whole run in training minutes (the LR schedule follows the time spent).
        batch_size: training batch size.
        lr: peak learning rate, in (0, 1], reached after ``warmup_steps`` of linear warm-up (capped at a fifth of
            the run: of its steps when ``epochs`` or ``max_steps`` sets its length, of its time with ``max_minutes``
            alone), then decayed with a cosine to 0 at the end of the run.
        warmup_steps: linear warm-up length.
        grad_clip: max gradient norm (default 50 for flows, none for VAEs).
        ema_decay: keep an exponential moving average of the weights with this decay (e.g. 0.999) and save
            and evaluate the averaged weights (``WeightEMA``); default: the last weights.
        seed: seeds weights, batches, dequantisation noise, flips and shifts; an int in [0, 2**32).
        flips: random horizontal flips (leave off for digits and text).
        translate: shift each training image by a random number of pixels in ``[-translate, translate]`` along
            each axis, filling in by reflection (0: no shifts).
        compile: run the loss (forward and backward) through ``torch.compile`` (a Glow's loss is one graph; the
            first step compiles: about 70 s for glow-cifar10's architecture on a CPU). Same math, other random
            dequantisation noise; not a setting a resumed run must keep. On a CPU each step was 1.24x slower
            (docs/checkpoints.md).
        resume: continue from ``out_dir/<name>.state.safetensors`` if present (same config, training images
            (count and content), batch size, seed, ``ema_decay``, ``lr``, ``warmup_steps``, ``grad_clip``,
            ``flips`` and ``translate`` required; the run's
            length may change: the LR schedule follows the new length from the current step on, and the JSON's
            ``schedule`` says which steps followed which length); ``False`` starts afresh and overwrites it.
        x_test: (M, C, H, W) float in [0, 1], images for the final metrics and the PNG; default: up to 1,000
            training images.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``.
        progress: show a tqdm bar and print where the files went and how to load them.
        fp16: store the final weights as float16 (half the file), kept only if the fp16 copy still
            round-trips within 1e-3 (flows) or reconstructs within 1e-2 of fp32 (VAEs); else fp32.
        checkpoint_every: steps between training-state checkpoints.
        data_description: what the data was, for the JSON (e.g. ``"digits (train split)"``); the JSON keeps that of
            the last call that trained a step (as it keeps its device), not of a finished run run again.

    Ctrl-C (SIGINT), SIGTERM or SIGUSR1 while training, in the main thread, stops the run at the end of the current
    step and saves the training state; then (the lock file removed) the signal is handled as it would have been
    without this call: Ctrl-C raises ``KeyboardInterrupt``, SIGTERM and SIGUSR1 end the process (unless you set
    handlers of your own; if yours returns, so does this call, not complete). The first one stands: a Ctrl-C after
    it acts at once, a SIGTERM or SIGUSR1 after it changes nothing (the save goes on). Signals outside the training
    loop act as usual; a JSON never sits beside a checkpoint it does not describe.

    Returns a dict: ``complete`` (False when stopped by ``max_minutes`` or a signal before the end of the run; then
    only the state file was written), ``step``, ``total_steps``, ``epochs_done``, ``wall_time_s`` (this call),
    ``train_time_s`` (all calls), ``nonfinite_steps`` (steps skipped for a non-finite loss or gradient, all calls), ``state``, and when complete ``codec`` (the frozen stored codec), ``checkpoint``,
    ``json``, ``png``, ``sha256``, ``dtype``, ``metrics``. A run whose final metrics are not finite (it diverged)
    raises ``FloatingPointError`` instead, leaving only the state file.
    """
    t_call = time.perf_counter()
    codec_kind = _codec_kind(kind)
    name = codec_kind if name is None else name  # "" is refused below, not replaced
    _check_train_args(x_train, x_test, name, epochs=epochs, max_steps=max_steps, max_minutes=max_minutes, lr=lr,
                      warmup_steps=warmup_steps, grad_clip=grad_clip, batch_size=batch_size,
                      checkpoint_every=checkpoint_every, translate=translate, ema_decay=ema_decay, seed=seed,
                      flags={"flips": flips, "compile": compile, "resume": resume, "progress": progress, "fp16": fp16},
                      data_description=data_description)
    dev = resolve_device(device, auto=True)
    if dev.type == "meta":
        raise ValueError("device 'meta' holds shapes, not values: train on cpu or cuda")
    cfg = _codec_config(codec_kind, cast(tuple[int, int, int], tuple(x_train.shape[1:])), num_bins, config, dict(
        levels=levels, steps=steps, hidden=hidden, latent_dim=latent_dim, beta=beta, latent_side=latent_side,
        decoder_blocks=decoder_blocks))
    recipe = _RECIPES[codec_kind]
    cost = recipe.size_cost(*x_train.shape[2:])
    if cost is not None:
        warnings.warn(cost, stacklevel=2)
    n = x_train.shape[0]
    # on a CPU a step past the memory is killed by the system, silently (on a GPU torch raises its out-of-memory error)
    # x_dev below: a float32 copy of the images, unless they are float32 on the CPU (held by the process already)
    copy = 0 if x_train.device.type == "cpu" and x_train.dtype == torch.float32 else x_train.numel() * 4
    fits = _batch_that_fits(cfg, batch_size, n, copy) if dev.type == "cpu" else n
    # the ActNorm init's forward, without gradient, keeps less than the kept bytes of its images, which the step's
    # estimate counts _STEP_PEAK_FACTOR times: the defaults' 512 images wherever they did before that factor
    init_batch = min(_ACTNORM_INIT_BATCH, n, fits * _STEP_PEAK_FACTOR)
    bs = min(batch_size, n)
    steps_per_epoch = n // bs  # the last incomplete batch of each epoch is dropped
    if epochs is not None and epochs * steps_per_epoch > _MAX_STEPS:  # round() refused inf; a finite count trained on
        raise ValueError(f"epochs {epochs:g} make more than {_MAX_STEPS} steps ({steps_per_epoch} an epoch, of "
                         f"batches of {bs}), a run's most")
    out = make_folder(output_folder(out_dir))  # ~ expanded, as hub.load does; made once every setting is known good
    with contextlib.ExitStack() as lock:
        locked = lock.enter_context(_only_run_writing(out, name))
        state_path = out / f"{name}{_STATE_SUFFIX}.safetensors"
        for written in (state_path, *(out / f"{name}.{ext}" for ext in ("safetensors", "json", "png"))):
            # the temp files of a run killed while it saved (its previous file is whole); any age under the lock
            hub.remove_abandoned_parts(written, min_age_s=0 if locked else None)

        total_steps = max_steps if max_steps is not None else (
            max(1, round(epochs * steps_per_epoch)) if epochs is not None else None)
        # max_minutes: the run's length if no step count gives it (then given: _check_train_args), else the call's limit
        minutes_s = None if max_minutes is None else max_minutes * 60
        budget_s, call_limit_s = (minutes_s, None) if total_steps is None else (None, minutes_s)
        clip = grad_clip if grad_clip is not None else recipe.grad_clip
        say = print if progress else (lambda *a, **k: None)
        warmup = min(warmup_steps, total_steps // 5) if total_steps is not None else warmup_steps
        settings = {"config": cfg, "batch_size": bs, "seed": seed, "num_images": n, "ema_decay": ema_decay, "lr": lr,
                    "warmup_steps": warmup_steps, "grad_clip": clip, "flips": flips, "translate": translate,
                    "data_sha256": hub.sha256_tensors(x_train.to(torch.float32))}  # the same images, not only as many
        if resume and state_path.is_file():
            info, saved = _load_resume(state_path, settings)
        else:
            info, saved = _new_info(codec_kind, settings, steps_per_epoch), None
            if recipe.actnorm:
                info["actnorm_init_batch"] = init_batch

        x_dev = x_train.to(dev, torch.float32)
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            codec, optimizer = _build(codec_kind, cfg, dev, lr, seed, x_dev, saved, state_path, init_batch)
            ema = None if ema_decay is None else _weight_ema(codec, ema_decay, saved, info.get("ema_updates", 0), dev)
            info["calls"] += 1
            run = _TrainingRun(codec, optimizer, ema, info, state_path, x=x_dev, device=dev, recipe=recipe,
                               batch_size=bs, steps_per_epoch=steps_per_epoch, seed=seed, flips=flips,
                               translate=translate, lr=lr,
                               warmup=warmup, grad_clip=clip, total_steps=total_steps, budget_s=budget_s,
                               checkpoint_every=checkpoint_every,
                               loss_fn=torch.compile(codec.loss) if compile else codec.loss)
            # how the checkpoint was trained, as the report says: by the last call that trained a step, not by a call
            # that trains nothing (a finished run run again, with another thread count or data description)
            this_call = {"device": describe_device(dev), "compiled": compile, "data": data_description if
                         data_description is not None else f"{n} images of shape {tuple(x_train.shape[1:])}"}
            if saved is not None:
                done = ": the run is finished, nothing to train; writing its final files again" if run.finished() \
                    else ""
                say(f"resuming {state_path} at step {info['step']} ({info['train_time_s'] / 60:.1f} min trained){done}")
            if not run.finished():
                info["training_call"] = this_call
            run.follow_length(say)
            complete = run.run(t_call, call_limit_s, f"{name} ({codec_kind}, {dev.type})" if progress else None, say) \
                and run.stop_signal is None

        step = info["step"]
        result = {"complete": complete, "step": step, "total_steps": total_steps,
                  "epochs_done": step / steps_per_epoch, "train_time_s": info["train_time_s"],
                  "state": str(state_path), "nonfinite_steps": info["nonfinite_steps"]}
        if not complete:
            result["wall_time_s"] = time.perf_counter() - t_call
            of = f"/{total_steps}" if total_steps is not None else ""
            why = f"by {signal.Signals(run.stop_signal).name}" if run.stop_signal is not None else \
                f"after {max_minutes} min (max_minutes)"
            say(f"stopped at step {step}{of} {why}; the training state is in {state_path}: run the same command "
                f"again to continue", flush=True)
            if run.stop_signal is not None:  # now handled as it would have been: KeyboardInterrupt, exit, the caller's
                lock.close()  # first: an exit by the signal would leave the lock file
                signal.raise_signal(run.stop_signal)
            return result

        # -- final files ----------------------------------------------------------------------------------------
        if ema is not None:
            codec.load_state_dict(ema.shadow, strict=False)
        codec.eval()
        if x_test is None:
            x_eval = x_train[_spread(n, 1000)]  # a folder of class folders is read class by class
            eval_on = f"{x_eval.shape[0]} training images spread over the set (no test set given)"
        else:
            x_eval, eval_on = x_test, f"{x_test.shape[0]} test images"
        ckpt, js, png = (out / f"{name}.{ext}" for ext in ("safetensors", "json", "png"))
        for old in (js, png):  # never an old JSON (or picture) beside a new checkpoint; the JSON comes last
            old.unlink(missing_ok=True)
        try:
            stored, sha, dtype, fallback = _store(codec, recipe, ckpt, fp16, x_eval[:256], name, dev, say)
        except torch.linalg.LinAlgError as e:  # weights so far gone that a 1x1 convolution cannot be inverted
            _diverged(run, ckpt, f"a weight the codec inverts is singular ({e})")
        # no bigger a batch than a training step that fits, where the memory allows fewer than all the training images
        # (eval of 256 3x64x64 images by a VAE: 1.0 GB more, against 0.4 GB for its step of 8 images)
        metrics = eval_codec(stored, x_eval, batch_size=min(_EVAL_BATCH, fits) if fits < n else _EVAL_BATCH, seed=seed)
        _refuse_diverged(metrics, run, ckpt)
        _save_grid(stored, x_eval, png, n=min(16, x_eval.shape[0]), temperature=recipe.sample_temperature, seed=seed)
        weakness = recipe.weakness(stored, metrics)
        report = _report(run, stored, name=name, ckpt=ckpt, sha=sha, dtype=dtype, fallback=fallback, x_train=x_train,
                         trained_by=info.get("training_call", this_call), ema_decay=ema_decay, metrics=metrics,
                         eval_on=eval_on, test_set=x_test is not None, notes=weakness or "")
        with hub.atomic_path(js) as tmp:
            Path(tmp).write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")  # strict JSON: no NaN
        wall = time.perf_counter() - t_call
        _say_written(say, report, ckpt, js, png, metrics)
        if weakness is not None:
            warnings.warn(f"{ckpt.name}: {weakness}", stacklevel=2)
        result.update({"codec": stored, "checkpoint": str(ckpt), "json": str(js), "png": str(png), "sha256": sha,
                       "dtype": dtype, "metrics": metrics, "wall_time_s": wall})
        return result


# -- command line -----------------------------------------------------------------------------------------------
def register_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``train`` to an argparse subparsers object (``args.func(args)`` runs it); returns its parser."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "train", help="train your own codec (Glow flow or VAE) on images",
        description="Train a codec; resumable (run the same command again), writes OUT/NAME.{safetensors,json,png}.",
    )
    p.add_argument("kind", choices=[r.name for r in _RECIPES.values()],
                   help="flow: Glow (exact round trip); vae: ConvVAE")
    p.add_argument("--data", required=True, metavar="SPEC",
                   help="digits | cifar10 | cifar10-5k | npz:PATH | folder:PATH")
    p.add_argument("--test-data", metavar="SPEC",
                   help="test images (default: the test split of digits/cifar10/cifar10-5k, else 1,000 training images "
                        "spread over the set)")
    p.add_argument("--data-root", metavar="DIR",
                   help=f"download dir for cifar10 and cifar10-5k, only with them (default: {DEFAULT_DATA_ROOT})")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--name", help="file stem (default: glow-DATA or vae-DATA)")
    g = p.add_argument_group("codec")
    g.add_argument("--levels", type=POSITIVE_INT, help="flow: number of levels L (default: up to 3, fitting the image)")
    g.add_argument("--steps", type=POSITIVE_INT, help="flow: steps per level K (default 8)")
    g.add_argument("--hidden", type=POSITIVE_INT, help="coupling width (flow, default 128) or first conv width (vae, default 64)")
    g.add_argument("--latent-dim", type=POSITIVE_INT, help="vae: latent size (default 64)")
    g.add_argument("--beta", type=option(check_number, float), help="vae: KL weight (default 1)")
    g.add_argument("--latent-side", type=POSITIVE_INT,
                   help="vae: side of a spatial latent, a power of two <= the image side (default: a vector latent)")
    g.add_argument("--decoder-blocks", type=option(check_count), metavar="N",
                   help="vae: residual blocks after each up-sampling of the decoder (default 0)")
    g = p.add_argument_group("training")
    length = g.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=POSITIVE_FLOAT, help="length of the whole run in epochs")
    length.add_argument("--max-steps", type=option(check_count, low=1, high=_MAX_STEPS),
                        help="length of the whole run in optimizer steps")
    g.add_argument("--max-minutes", type=POSITIVE_FLOAT,
                   help="with --epochs/--max-steps: this call's time limit (then resume); alone: the run's length")
    g.add_argument("--batch-size", type=POSITIVE_INT, default=64,
                   help="training images per step (default 64; all of them where there are fewer)")
    g.add_argument("--lr", type=option(check_number, float, high=_MAX_LR, low_open=True), default=1e-3,
                   help=f"peak learning rate, at most {_MAX_LR:g} (default 1e-3)")
    g.add_argument("--grad-clip", type=POSITIVE_FLOAT, help="max gradient norm (default 50 for flows, none for VAEs)")
    g.add_argument("--ema", type=option(check_number, float, high=1.0, low_open=True, high_open=True), metavar="DECAY",
                   help="save an exponential moving average of the weights with this decay in (0, 1), e.g. "
                        "0.999 (default: none, the last weights)")
    g.add_argument("--seed", type=option(check_count, high=_MAX_SEED), default=0,
                   help="seeds weights, batches, noise, flips and shifts: an int in [0, 2**32) (default 0)")
    g.add_argument("--flips", action="store_true", help="random horizontal flips (not for digits or text)")
    g.add_argument("--translate", type=option(check_count), default=0, metavar="PIXELS",
                   help="random shifts of up to PIXELS (< the image side) along each axis, reflection padding "
                        "(default 0: none)")
    g.add_argument("--compile", action="store_true", help="torch.compile the training loss (forward and backward)")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    g.add_argument("--threads", type=THREADS,
                   help="CPU threads for torch (torch.set_num_threads; default: torch's, 1 where other jobs keep the "
                        "CPU busy, which is faster then)")
    g.add_argument("--checkpoint-every", type=POSITIVE_INT, default=500, metavar="STEPS",
                   help="save the training state (to resume from) every STEPS steps (default 500)")
    g.add_argument("--no-resume", action="store_true", help="start afresh even if a training state exists")
    g.add_argument("--fp16", action="store_true", help="store float16 weights if they stay accurate (else fp32)")
    g.add_argument("--quiet", action="store_true", help="no progress bar and no messages (errors still go to stderr)")
    p.set_defaults(func=_cmd_train)
    return p


def _cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    from .data import check_data_root_used, describe_spec, load_images

    if args.epochs is None and args.max_steps is None and args.max_minutes is None:
        raise ValueError("give the length of the run: --epochs, --max-steps or --max-minutes")
    check_data_root_used(args.data_root, {"--data": args.data, "--test-data": args.test_data})
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    elif _runs_on_cpu(args.device):
        chosen = threads_for_this_cpu(torch.get_num_threads(), quiet=args.quiet)
        if chosen != torch.get_num_threads():  # otherwise torch's threads are left as they are
            torch.set_num_threads(chosen)
    x, _, num_bins = load_images(args.data, "train", args.data_root)
    builtin = args.data in SPLIT_SPECS
    test_spec = args.test_data or (args.data if builtin else None)
    x_test = None
    if test_spec is not None:
        x_test, _, test_bins = load_images(test_spec, "test", args.data_root)
        if test_bins != num_bins:
            raise ValueError(f"--test-data has {test_bins} intensity levels, --data {num_bins}")
        if x_test.shape[1:] != x.shape[1:]:  # e.g. a folder: of grey images, one of them colour, is RGB
            raise ValueError(f"--test-data images are {tuple(x_test.shape[1:])}, --data images {tuple(x.shape[1:])} "
                             f"(channels, height, width)")
    codec_kind = _KINDS[args.kind]
    name = f"{codec_kind}-{describe_spec(args.data)}" if args.name is None else args.name  # "" refused, not replaced
    split = " (train split)" if builtin else ""
    description = f"{args.data}{split}: {x.shape[0]} images {tuple(x.shape[1:])}"
    if test_spec is not None:
        description += f"; tested on {test_spec}{' (test split)' if test_spec in SPLIT_SPECS else ''}"
    kwargs = {setting: getattr(args, setting) for setting in _RECIPES[codec_kind].settings}
    _refuse_other_kind_settings(codec_kind, vars(args), spell=flag_of)
    options = dict(**kwargs, epochs=args.epochs, max_steps=args.max_steps, max_minutes=args.max_minutes,
                   batch_size=args.batch_size, lr=args.lr, grad_clip=args.grad_clip, ema_decay=args.ema, seed=args.seed,
                   flips=args.flips, translate=args.translate, compile=args.compile, device=args.device, fp16=args.fp16,
                   checkpoint_every=args.checkpoint_every)
    try:
        return train_codec(args.kind, x, args.out, name=name, num_bins=num_bins, **options,
                           resume=not args.no_resume, x_test=x_test, progress=not args.quiet,
                           data_description=description)
    except ValueError as e:  # "translate must be < 8": the command line has --translate
        raise _spelled_as_flags(e, ["name", *options]) from None


def _runs_on_cpu(device: str) -> bool:
    """Whether ``--device`` means the CPU here (a device that is not one: False, and train_codec names it)."""
    try:
        return resolve_device(device, auto=True).type == "cpu"
    except ValueError:
        return False


# the settings of a training state that the command line gives by --data, by their name in the state
_DATA_SETTINGS = {"num_images": "number of --data images", "data_sha256": "--data images' sha256"}


def _spelled_as_flags(e: ValueError, parameters: list[str]) -> ValueError:
    """``validation.spelled_as_flags`` with ``train``'s flags (``ema_decay`` is ``--ema``). A resume refused for other
    settings names each setting that is one of ``parameters`` as its flag, and a value None as "(left out)"."""
    if isinstance(e, _OtherSettings):  # a setting the command line has no flag for (warmup_steps) keeps its name
        return ValueError(e.spelled(lambda s: _flag(s) if s in parameters else _DATA_SETTINGS.get(s, s),
                                    value=lambda v: "(left out)" if v is None else repr(v)))
    return spelled_as_flags(e, parameters, _flag)


def _flag(parameter: str) -> str:
    return "--ema" if parameter == "ema_decay" else flag_of(parameter)
