"""What the benchmark scripts share: the bf16 wrapper around the library's CIFAR ResNet-18, per-sample crop+flip on the device,
per-sample RandAugment, tiny random-init codecs for smoke runs, atomic JSON and text writes, the parser whose ``--help``
gives every default (``argument_parser``), ``--smoke``'s defaults (``parse_args_with_smoke``), how a script ends on
a user's mistake (``run_script``; an output folder is checked by ``latent_transforms.validation.output_folder``), and
how a figure times a call (``timed``, ``median_seconds``)."""
from __future__ import annotations

import argparse
import copy
import inspect
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from latent_transforms import hub
from latent_transforms.latent_noise import default_eps
from latent_transforms.models import CifarResNet18, digits_cnn
from latent_transforms.pixel_shift import random_shift_flip
from latent_transforms.validation import check_count, option, resolve_device


def run_script(main) -> None:
    """Run a script's ``main()``: a user's mistake that surfaces as ``ValueError``, ``LookupError`` or ``OSError`` (data
    that cannot be read, an unknown checkpoint, an output path that is a file), or a script's own refusal
    ``SystemExit("message")``, ends it with one line, ``SCRIPT: error: message``, exit 2 (as argparse's errors)."""
    try:
        main()
    except (ValueError, LookupError, OSError) as e:
        print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)  # an unknown checkpoint's str() unquoted
        raise SystemExit(2) from None
    except SystemExit as e:
        if not isinstance(e.code, str):  # argparse's exits, an exit status: as they are
            raise
        print(f"{Path(sys.argv[0]).name}: error: {e.code}", file=sys.stderr)  # was the bare message, exit 1
        raise SystemExit(2) from None
    except KeyboardInterrupt:  # one line, not a traceback; what was written stays (accuracy.py: --resume goes on)
        print(f"{Path(sys.argv[0]).name}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None


def first_paragraph(doc: str) -> str:
    """A script docstring's first paragraph on one line: its ``--help`` description."""
    return " ".join(doc.split("\n\n")[0].split())


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """``--help`` with each option's default, `` (default: X)`` after its help (a list as typed: ``0 1 2``), unless
    the help gives it already (``%(default)s``, or ``(default: ...)`` in words: ``--arms``' ``(default: all)``). An
    option whose default is None, False or empty (not given, a flag off) shows none: its help says in words what it
    means. argparse shows nothing of an option without help: every option with a default needs one."""

    def _get_help_string(self, action: argparse.Action) -> str:  # called for the options that have help
        text, default = action.help, action.default
        unset = default is None or default is False or default is argparse.SUPPRESS or default == []
        if unset or "%(default)" in text or "(default:" in text:
            return text
        return f"{text} (default: {as_typed(default).replace('%', '%%')})"


def as_typed(value) -> str:
    """An option's value as typed on the command line: a list as ``0 1 2``."""
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def smoke_defaults_help(defaults: dict) -> str:
    """``--smoke``'s defaults as its help lists them: ``{"batch_size": 8, "seeds": [0]}`` ->
    ``--batch-size 8, --seeds 0``."""
    return ", ".join(f"--{k.replace('_', '-')} {as_typed(v)}" for k, v in defaults.items())


def argument_parser(doc: str) -> argparse.ArgumentParser:
    """A script's parser: its docstring's first paragraph as the description, every default in ``--help``."""
    return argparse.ArgumentParser(description=first_paragraph(doc), formatter_class=DefaultsHelpFormatter)


SEED = option(check_count, high=2**64 - 1)  # --seeds' type: torch.manual_seed's range ("Overflow when unpacking
# long long" past it, naming no option, after the codecs had loaded)


def refuse_repeats(parser: argparse.ArgumentParser, flag: str, values: list) -> None:
    """``parser.error`` if ``values`` (``flag``'s) names one more than once: each copy would run again, to the same
    result (a seed's row twice, counted twice in a mean)."""
    twice = sorted({str(v) for v in values if values.count(v) > 1})
    if twice:
        parser.error(f"{flag} names {', '.join(twice)} more than once")


SMOKE_IMAGES = 200  # --smoke's images: the first of the data set (calibrate_eps.py, codec_quality.py)


def parse_args_with_smoke(parser: argparse.ArgumentParser, smoke_defaults: dict, required: tuple[str, ...] = (),
                          argv=None) -> argparse.Namespace:
    """``parser``'s arguments, where ``--smoke`` (a flag of ``parser``) makes ``smoke_defaults`` the defaults (an
    option given beside it wins) and the options ``required`` (``"--codec"``) may be left out: without ``--smoke``
    they must be given."""
    args = parser.parse_args(argv)
    if args.smoke:
        parser.set_defaults(**smoke_defaults)
        args = parser.parse_args(argv)
    missing = [flag for flag in required if getattr(args, flag[2:].replace("-", "_")) is None]
    if missing and not args.smoke:
        parser.error(f"the following arguments are required (unless --smoke): {', '.join(missing)}")
    return args


def load_codec(kind: str, name: str, device: torch.device):
    """``hub.load(name, device)``, which must be a ``kind`` codec (``"glow"`` or ``"vae"``): ``--glow vae-cifar10``
    trained LatentNoise on the VAE without a word."""
    codec = hub.load(name, device=device)
    if codec.kind != kind:
        raise ValueError(f"it is a {codec.kind} codec; --{kind} takes a {kind}")
    return codec


def output_stem(spec: str) -> str:
    """The stem of a codec's output files: a hub name as given, a checkpoint file with its folder
    (``runs/b3/vae.safetensors`` -> ``b3-vae``): candidates often share a file name. A bare file name takes the
    current folder's name (``vae.safetensors`` run in ``b3/``: ``b3-vae``, not ``-vae``)."""
    path = Path(spec)
    if not path.is_file():
        return spec
    folder = path.absolute().parent.name
    return f"{folder}-{path.stem}" if folder else path.stem


def write_json(path: Path, obj: dict) -> None:
    """Write ``obj`` to a temporary file beside ``path``, then rename it over ``path``: a killed script never leaves
    half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with hub.atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=1)


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` as ``write_json`` writes, through a temporary file renamed over it; in UTF-8, not
    the locale's encoding (Windows' cp1252 has no "Δ": the report was lost at the end of the run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with hub.atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def add_device_argument(parser) -> None:
    """``--device``: cpu, cuda, cuda:N or auto (the default), "auto" resolved as it is parsed (the defaults that
    depend on the device read its name), as ``latent-transforms train --device`` resolves it."""
    def device_name(value: str) -> str:
        return str(resolve_device(value, auto=True)) if value == "auto" else value

    parser.add_argument("--device", default="auto", type=device_name,
                        help="cpu, cuda, cuda:N or auto: cuda when available, as in `latent-transforms train`")


def setup_device(name: str, threads: int | None) -> torch.device:
    """The benchmark device (``--device``'s value: auto is one of its choices); CPU threads if given; on CUDA cuDNN
    autotuning and TF32 for the classifier only (codecs turn TF32 off for themselves)."""
    try:
        device = resolve_device(name, auto=True)
    except ValueError as e:  # one line, not torch's traceback
        raise SystemExit(f"--device: {e}") from None
    if threads:
        torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
    return device


# -- timing -------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    """Wait for ``device``'s queued work (CUDA); a CPU call has finished when it returns."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call of ``fn``, the device synchronised before and after."""
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls (``timed``) after ``warmup`` untimed ones (a first call's
    allocations, cuDNN's autotuning)."""
    times = [timed(fn, device) for _ in range(warmup + repeats)]
    return statistics.median(times[warmup:])


class Autocast(nn.Module):
    """Runs the wrapped classifier under autocast (bf16 on a GPU) and returns float32 logits.

    Wrapping the classifier itself, rather than the training step, keeps the codecs in float32 (a flow is only
    invertible in fp32) while every classifier call, including those inside LatentAdversarial's attack, is bf16.
    """

    def __init__(self, net: nn.Module, dtype: torch.dtype | None):
        super().__init__()
        self.net, self.dtype = net, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            return self.net(x).float()


def build_classifier(num_classes: int, width: int, device: torch.device, precision: str) -> nn.Module:
    """The ResNet-18 on ``device``; on CUDA channels-last; ``precision`` "bf16" wraps it in bf16 autocast."""
    channels_last = device.type == "cuda"
    net = CifarResNet18(num_classes, width, channels_last=channels_last).to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return Autocast(net, torch.bfloat16 if precision == "bf16" else None)


DIGITS_SHAPE = (1, 8, 8)  # the digits data set's images


def clean_classifier_model(image_shape: tuple[int, ...], width: int) -> nn.Module:
    """The untrained classifier the calibration scripts train on clean images of ``image_shape``: the small digits
    CNN for digits, else a CIFAR ResNet-18 of ``width``."""
    return digits_cnn() if tuple(image_shape) == DIGITS_SHAPE else CifarResNet18(width=width)


# -- pixel augmentations ------------------------------------------------------------------------------
class RandomCropFlip:
    """Per-sample random crop (zero padding ``pad``) and horizontal flip, as one gather on the data's device.

    ``x: (B, C, H, W) -> (B, C, H, W)``; draws from its own generator (seeded), so every arm sees the same crops.
    """

    def __init__(self, seed: int, device: torch.device, pad: int = 4):
        self.pad = pad
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return random_shift_flip(x, self.pad, flips=True, padding="zeros", generator=self.generator)


class PerSampleRandAugment(nn.Module):
    """torchvision v2 ``RandAugment`` drawn per image (as in a DataLoader), not once per batch.

    A batched call of a torchvision v2 transform applies one set of ops to the whole batch; this loops over the
    images instead (slower, but the usual semantics). Uses torch's global RNG, like torchvision.
    """

    def __init__(self, num_ops: int = 2, magnitude: int = 9):
        super().__init__()
        from torchvision.transforms import v2

        self.ra = v2.RandAugment(num_ops=num_ops, magnitude=magnitude)
        if not 0 <= magnitude < self.ra.num_magnitude_bins:  # torchvision fails only when it draws an op
            raise ValueError(f"RandAugment magnitude must be in [0, {self.ra.num_magnitude_bins - 1}], got {magnitude}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.ra(xi) for xi in x])


# -- codecs -------------------------------------------------------------------------------------------
def tiny_codecs(seed: int = 0, shape=(3, 32, 32)):
    """Tiny random-init frozen Glow and VAE for smoke runs (ActNorm initialised on random data, then frozen)."""
    from latent_transforms.codecs import ConvVAE, Glow

    torch.manual_seed(seed)
    glow = Glow(shape, levels=2, steps=1, hidden=8).init_actnorm(torch.rand(32, *shape))
    vae = ConvVAE(shape, latent_dim=8, hidden=8)
    return glow.freeze(), vae.freeze()


def random_init_codec(kind: str, shape=(3, 32, 32), seed: int = 0):
    """A random-init frozen codec of the library's default CIFAR size (for timing only; its samples are noise)."""
    from latent_transforms.codecs import ConvVAE, Glow

    torch.manual_seed(seed)
    if kind == "glow":
        codec = Glow(shape, levels=3, steps=8, hidden=128).init_actnorm(torch.rand(64, *shape))
    else:
        codec = ConvVAE(shape, latent_dim=64, hidden=64)
    return codec.freeze()


def compiled_copy(codec, setting: str, **compile_kwargs):
    """A copy of ``codec`` with ``compile_fast_path(**compile_kwargs)``. torch.compile checks its mode and backend when
    called: its refusal (a ``RuntimeError``, a traceback) becomes a ``ValueError`` that names ``setting``, the option as
    given (``"--backend nosuch"``)."""
    try:
        return copy.deepcopy(codec).compile_fast_path(**compile_kwargs)
    except RuntimeError as e:
        raise ValueError(f"{setting}: {' '.join(str(e).split())}") from None


def library_default(cls: type, name: str):
    """A method's default setting, so that benchmarks measure what users get (calibrated: docs/calibration.md)."""
    return inspect.signature(cls).parameters[name].default


# LatentNoise's default eps depends on the codec (0.18 per coordinate); the CIFAR-10 benchmarks' codecs take
# 3x32x32 images: an L2 eps of 10, a number recorded with each run
CIFAR_NOISE_EPS = default_eps("l2", 3 * 32 * 32)
