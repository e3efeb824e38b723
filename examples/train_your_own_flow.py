"""Train a Glow on your own folder of images, then augment with it.

    python examples/train_your_own_flow.py --images path/to/images --out runs/my-flow --epochs 50
    python examples/train_your_own_flow.py --smoke      # 64 random 16x16 PNGs in a temp folder, a tiny flow, 10 steps

The folder holds same-sized PNG/JPEG images, flat or one subfolder per class (as torchvision's ImageFolder).
``train_codec`` checkpoints as it goes (run the same command again to resume; ``--no-resume`` starts afresh) and writes
``OUT/NAME.safetensors`` (the codec), ``OUT/NAME.json`` (settings, metrics, a ready-made registry entry) and
``OUT/NAME.png`` (labelled rows: training images, their reconstructions, samples). The same is available from the shell:

    latent-transforms train flow --data folder:path/to/images --out runs/my-flow --epochs 50

Then ``hub.load("runs/my-flow/NAME.safetensors")`` gives the frozen codec for any latent transform.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common import add_device_arg, one_line_errors, parse_args, pick_device
from latent_transforms import LatentNoise, hub
from latent_transforms.data import load_images
from latent_transforms.train import train_codec
from latent_transforms.validation import POSITIVE_FLOAT, check_number, option
from latent_transforms.visualize import save_rows


def write_random_pngs(folder: Path, n: int = 64, size: int = 16, seed: int = 0) -> None:
    """``n`` small RGB images of soft random blobs, for the smoke run."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cy, cx, r = rng.uniform(0.25, 0.75, 2).tolist() + [rng.uniform(0.1, 0.3)]
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
        colour = rng.uniform(0, 1, 3)
        image = 0.15 + 0.7 * blob[..., None] * colour + 0.05 * rng.standard_normal((size, size, 3))
        Image.fromarray((255 * image.clip(0, 1)).astype(np.uint8)).save(folder / f"{i:03d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", help="a folder of same-sized images (flat or one subfolder per class)")
    parser.add_argument("--out", help="output folder: the training state to resume from and the codec (default: "
                                      "runs/my-flow; with --smoke, a temp folder deleted at the end)")
    parser.add_argument("--name", default="my-flow", help="file stem of the codec (default: my-flow)")
    parser.add_argument("--epochs", type=POSITIVE_FLOAT, default=50,
                        help="training epochs (default: 50; --smoke: 10 steps, 2.5 epochs)")
    parser.add_argument("--eps", type=option(check_number, float), default=5.0,
                        help="LatentNoise size (>= 0) for the final picture (default: 5)")
    add_device_arg(parser)
    parser.add_argument("--no-resume", action="store_true",
                        help="start afresh even if OUT holds a training state (default: resume it)")
    parser.add_argument("--smoke", action="store_true",
                        help="64 random PNGs in a temp folder, a tiny flow, 10 training steps (CPU, seconds)")
    args = parse_args(parser, {"epochs": None}, ("--images",))
    if not args.smoke and not args.images:
        parser.error("--images is required (or --smoke)")
    device = pick_device(parser, args.device)

    with tempfile.TemporaryDirectory() as tmp:
        images = Path(args.images) if args.images else Path(tmp) / "images"
        out = Path(args.out) if args.out else Path(tmp) / "out" if args.smoke else Path("runs/my-flow")
        if args.smoke:
            torch.set_num_threads(min(2, torch.get_num_threads()))
            write_random_pngs(images)
        with one_line_errors(parser, "--images"):
            x, _, num_bins = load_images(f"folder:{images}")     # (N, C, H, W) float in [0, 1]
        print(f"{len(x)} images of shape {tuple(x.shape[1:])} from {images}")

        # 1. train (resumable: the training state is saved to OUT/NAME.state.safetensors as it goes)
        length = dict(epochs=args.epochs) if args.epochs else dict(max_steps=10)   # --smoke: 10 steps unless --epochs
        size = dict(levels=2, steps=2, hidden=16, batch_size=16, **length) if args.smoke else length
        with one_line_errors(parser, "training"):  # e.g. images of a size the flow cannot take, or --out holding
            result = train_codec("flow", x, out, name=args.name, num_bins=num_bins, device=device,  # another run
                                 progress=not args.smoke, data_description=f"folder:{images}",
                                 resume=not args.no_resume, **size)  # its errors name --no-resume
        print(f"trained {result['step']} steps in {result['train_time_s']:.1f} s; metrics {result['metrics']}")
        print(f"codec: {result['checkpoint']}  picture: {result['png']}")

        # 2. load it like any checkpoint (safetensors: loading never runs code) and augment with it
        codec = hub.load(result["checkpoint"])
        augment = LatentNoise(codec, eps=args.eps, generator=0)
        batch = x[::max(1, len(x) // 8)][:8]                    # 8 images spread over the folder (sorted by class)
        x2, _ = augment(batch, None)                             # no labels needed: y=None gives None back
        picture = save_rows({"original": batch, f"LatentNoise eps={args.eps:g}": x2}, out / f"{args.name}-noise.png")
        print(f"mean |change| {float((x2 - batch).abs().mean()):.4f}; augmentation stats {augment.stats}; "
              f"picture {picture}")
        if args.out is None and args.smoke:
            print("(--smoke without --out: the files were written to a temp folder and are now deleted)")


if __name__ == "__main__":
    main()
