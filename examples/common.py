"""Pieces the examples share: the tiny random codecs of ``--smoke`` runs, synthetic data, the data options
(``--train``/``--test`` specs), device choice.

Nothing here is part of the library; copy what you need. The classifier of the examples is the library's reference
CIFAR ResNet-18, ``latent_transforms.models.CifarResNet18`` (it standardises its input itself, after augmentation).
"""
from __future__ import annotations

import argparse
import contextlib

import torch

from latent_transforms.data import CIFAR10_SPECS, DEFAULT_DATA_ROOT, check_data_root_used
from latent_transforms.validation import POSITIVE_INT


def tiny_glow(image_shape=(3, 32, 32), seed: int = 0):
    """A random-init, frozen Glow for ``--smoke`` runs (a trained one comes from ``hub.load``).

    ActNorm initialises itself from the first batch it sees, so it is shown one batch of random images before
    freezing. With the same ``seed`` every process builds the same codec (needed under DDP).
    """
    from latent_transforms.codecs import Glow

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        glow = Glow(image_shape, levels=2, steps=1, hidden=16).init_actnorm(torch.rand(32, *image_shape))
    return glow.freeze()


def tiny_vae(image_shape=(3, 32, 32), seed: int = 0):
    """A random-init, frozen ConvVAE for ``--smoke`` runs."""
    from latent_transforms.codecs import ConvVAE

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vae = ConvVAE(image_shape, latent_dim=16, hidden=8)
    return vae.freeze()


def synthetic_images(n: int = 64, image_shape=(3, 32, 32), num_classes: int = 10, seed: int = 0):
    """``n`` random images in [0, 1] with class-dependent brightness (so there is something to learn) and labels."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % num_classes
    x = 0.25 * torch.rand(n, *image_shape, generator=g) + 0.7 * (y.float() / num_classes).view(-1, 1, 1, 1)
    return x.clamp(0, 1), y


@contextlib.contextmanager
def one_line_errors(parser: argparse.ArgumentParser, option: str):
    """End the script with ``prog: error: OPTION: message`` (exit 2) for what a user gave wrong: an unknown or
    missing checkpoint, a device that is not here, images that cannot be read; not a traceback."""
    from latent_transforms.hub import HubError

    try:
        yield
    except (ValueError, LookupError, OSError, HubError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e  # a KeyError's str() is its repr
        parser.exit(2, f"{parser.prog}: error: {option}: {message}\n")


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    """Add ``--device`` (for :func:`pick_device`)."""
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda if there is one)")


def pick_device(parser: argparse.ArgumentParser, name: str) -> torch.device:
    """``--device`` (cpu, cuda, cuda:N or auto) as a device that exists here."""
    from latent_transforms.validation import resolve_device

    with one_line_errors(parser, "--device"):
        return resolve_device(name, auto=True)


def add_codec_arg(parser: argparse.ArgumentParser) -> None:
    """Add ``--codec`` (for :func:`load_codec`), a Glow or a VAE: the latent transforms of the examples take either."""
    parser.add_argument("--codec", default="glow-cifar10",
                        help="hub name or .safetensors path of a codec, a Glow or a VAE (default: glow-cifar10; "
                             "glow-digits or vae-digits for --train digits)")


def load_codec(parser: argparse.ArgumentParser, option: str, name: str, device: torch.device):
    """``hub.load(name, device)``: a checkpoint name or ``.safetensors`` path given as ``option``."""
    from latent_transforms import hub

    with one_line_errors(parser, f"{option} {name}"):
        return hub.load(name, device=device)


# -- data: the --train/--test/--data-root options every example takes -----------------------------------------
def add_data_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--train``, ``--test`` and ``--data-root`` (data specs, see ``latent_transforms.data``) to ``parser``."""
    parser.add_argument("--train", default="cifar10",
                        help="cifar10 (default), cifar10-5k (its 5,000-image subset), digits (scikit-learn's 8x8 "
                             "greyscale digits), npz:PATH or folder:PATH (one subfolder per class)")
    parser.add_argument("--test", help="test images: npz:PATH, folder:PATH, cifar10, digits or none (no test set); "
                                       "default: the cifar10 test split when training on cifar10 or cifar10-5k, else "
                                       "none")
    parser.add_argument("--data-root", help=f"download dir for CIFAR-10 (default: {DEFAULT_DATA_ROOT})")


def example_data(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """(x_train, y_train, x_test, y_test) for the options of :func:`add_data_args` (x_test, y_test None: no test set).

    With ``args.smoke``: 64 + 32 synthetic images. Images are (N, C, H, W) float in [0, 1], labels (N,) int64.
    Data that cannot be loaded (a missing file, images without labels, CIFAR-10 that cannot be downloaded, e.g.
    offline) ends the script with a one-line message, not a traceback.
    """
    if args.smoke:
        return (*synthetic_images(64), *synthetic_images(32, seed=1))
    test = None if args.test == "none" else args.test or ("cifar10" if args.train in CIFAR10_SPECS else None)
    try:
        check_data_root_used(args.data_root, {"--train": args.train, "--test": test})
    except ValueError as e:
        parser.error(str(e))
    x_train, y_train = _labelled_images(parser, "--train", args.train, "train", args.data_root)
    x_test, y_test = _labelled_images(parser, "--test", test, "test", args.data_root) if test else (None, None)
    return x_train, y_train, x_test, y_test


def _labelled_images(parser, option: str, spec: str, split: str, data_root):
    from latent_transforms.data import load_images

    try:
        x, y, _ = load_images(spec, split, data_root)
    except ValueError as e:  # the library's message names the file or the CIFAR-10 folder and what went wrong
        hint = "; here: --train npz:PATH --test npz:PATH (see the docstring) or --data-root DIR"
        hint = hint if spec in CIFAR10_SPECS else ""
        parser.exit(2, f"{parser.prog}: error: {option} {spec}: {e}{hint}\n")
    if y is None:
        parser.exit(2, f"{parser.prog}: error: {option} {spec}: no labels (an npz archive needs an array y)\n")
    return x, y


def add_width_arg(parser: argparse.ArgumentParser) -> None:
    """Add ``--width``, the base width of the examples' ResNet-18."""
    parser.add_argument("--width", type=POSITIVE_INT, default=64,
                        help="ResNet-18 base width (default: 64, the usual 11 M parameters)")


# -- --smoke: its sizes are defaults (an option given beside it wins); the data and codecs it makes replace options --
def add_smoke_arg(parser: argparse.ArgumentParser, what: str, defaults: dict) -> None:
    """Add ``--smoke`` (``what`` it runs on) to ``parser``; its help lists ``defaults`` (dest -> value)."""
    sizes = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in defaults.items())
    parser.add_argument("--smoke", action="store_true", help=f"{what}; {sizes} unless given (CPU, seconds)")


def parse_args(parser: argparse.ArgumentParser, smoke_defaults: dict, replaced: tuple[str, ...],
               argv: list[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args(argv)``, where ``--smoke`` makes ``smoke_defaults`` (dest -> value) the defaults and the
    options ``replaced`` (``"--train"``: what --smoke makes itself) must be left out: given, they end the script with
    a one-line error (they were ignored in silence; ``--smoke --images DIR`` wrote its random PNGs into DIR)."""
    args = parser.parse_args(argv)
    if not args.smoke:
        return args
    unset = object()
    dests = {option: option[2:].replace("-", "_") for option in replaced}
    parser.set_defaults(**smoke_defaults, **dict.fromkeys(dests.values(), unset))
    args = parser.parse_args(argv)
    given = [option for option, dest in dests.items() if getattr(args, dest) is not unset]
    if given:
        parser.error(f"--smoke makes its own data and codecs: leave out {', '.join(given)}")
    for dest in dests.values():
        setattr(args, dest, None)
    return args


def count_correct(model, x: torch.Tensor, y: torch.Tensor, device, batch_size: int = 500) -> int:
    """How many of the images ``x`` the model (in eval mode) classifies as ``y``, in batches, without gradients."""
    with torch.no_grad():
        return sum(int((model(x[i:i + batch_size].to(device)).argmax(1) == y[i:i + batch_size].to(device)).sum())
                   for i in range(0, len(x), batch_size))
