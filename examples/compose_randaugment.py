"""Latent transforms inside kornia and torchvision v2 pipelines: before and after RandAugment, MixUp at the end.

    python examples/compose_randaugment.py               # CIFAR-10, glow-cifar10, 200 steps per pipeline
    D=../shared/data/cifar10                             # offline, from the repo root: the shared CIFAR-10 npz files
    python examples/compose_randaugment.py --train npz:$D/train-5k.npz --test npz:$D/test.npz
    python examples/compose_randaugment.py --smoke       # synthetic images, a tiny random Glow, 2 steps each (CPU)

``latent_transforms.Compose`` runs every step as ``x, y = step(x, y)``: latent transforms get the model, pixel
transforms get the images, mixes get the labels. The rules (docs/composition.md):

* order is the list order; labels are class indices until a step mixes them, soft (B, K) from then on;
* torchvision v2 draws one set of parameters per call (the whole batch gets the same RandAugment ops); kornia
  draws per sample (but for its RandAugment: its ops once per batch, at magnitude m for every image, only the
  direction of a rotation, shear or translation drawn per image);
* kornia's mixes (RandomMixUpV2, RandomCutMixV2) need class indices, so they come before any label-mixing
  step and need ``Compose(..., num_classes=K)``; torchvision's MixUp/CutMix accept either form;
* ISDA, if you use it, is the last step (it needs class indices and arms the next forward).
"""
from __future__ import annotations

import argparse

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from common import (add_codec_arg, add_data_args, add_device_arg, add_smoke_arg, add_width_arg, count_correct,
                    example_data, load_codec, parse_args, pick_device, tiny_glow)
from latent_transforms import Compose, ISDA, LatentAdversarial, LatentNoise
from latent_transforms.models import CifarResNet18
from latent_transforms.validation import POSITIVE_INT

SMOKE = {"steps": 2, "batch_size": 16, "width": 8}  # --smoke's sizes (an option given beside it wins)


def torchvision_pipeline(glow, num_classes: int, size: tuple[int, int]) -> Compose:
    return Compose([
        v2.RandomCrop(size, padding=4, padding_mode="reflect"),  # one crop for the whole batch (v2: per call)
        v2.RandomHorizontalFlip(),
        LatentNoise(glow, p=0.5),                                # latent step BEFORE RandAugment
        v2.RandAugment(),                                        # same ops for the whole batch
        LatentAdversarial(glow, steps=1, p=0.5),                 # latent step AFTER RandAugment (needs the model)
        v2.MixUp(num_classes=num_classes),                       # labels become soft (B, K) here
    ])


def kornia_pipeline(glow, num_classes: int, size: tuple[int, int]) -> Compose:
    return Compose([
        K.RandomCrop(size, padding=4, padding_mode="reflect"),       # per-sample crops
        K.RandomHorizontalFlip(),
        LatentNoise(glow, p=0.5),
        K.auto.RandAugment(n=2, m=10),
        LatentAdversarial(glow, steps=1, p=0.5),
        K.RandomMixUpV2(),            # kornia mix: takes class indices, so it comes after no other label mix
    ], num_classes=num_classes)      # needed to turn kornia's (B, 3) mix output into (B, K) soft labels


def isda_pipeline(glow, num_classes: int, size: tuple[int, int]) -> Compose:
    isda = ISDA(num_classes, lambda0=0.5)
    isda.set_progress(1.0)    # full strength for this demo; in training call isda.set_epoch(epoch, epochs)
    return Compose([
        v2.RandomCrop(size, padding=4, padding_mode="reflect"),
        v2.RandomHorizontalFlip(),
        LatentNoise(glow, p=0.5),
        v2.RandAugment(),
        isda,                     # ISDA last: it needs class indices and arms the very next model(x)
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_args(parser)                        # --train, --test, --data-root
    add_codec_arg(parser)
    parser.add_argument("--steps", type=POSITIVE_INT, default=200, help="training steps per pipeline (default: 200)")
    parser.add_argument("--batch-size", type=POSITIVE_INT, default=128, help="default: 128")
    add_width_arg(parser)
    add_device_arg(parser)
    add_smoke_arg(parser, "64 synthetic images, a tiny random Glow", SMOKE)
    args = parse_args(parser, SMOKE, ("--train", "--test", "--data-root", "--codec"))
    if args.smoke:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    device = pick_device(parser, args.device)
    torch.manual_seed(0)

    x_all, y_all, x_test, y_test = example_data(parser, args)
    num_classes = int(y_all.max()) + 1
    glow = (tiny_glow() if args.smoke else load_codec(parser, "--codec", args.codec, device)).to(device)

    size = tuple(x_all.shape[-2:])  # (H, W): the crops keep the images' size
    pipelines = [("torchvision v2", torchvision_pipeline(glow, num_classes, size)),
                 ("kornia", kornia_pipeline(glow, num_classes, size)),
                 ("torchvision v2 + ISDA", isda_pipeline(glow, num_classes, size))]
    for name, pipeline in pipelines:
        print(f"\n== {name}: {' -> '.join(type(step).__name__ for step in pipeline.steps)}")
        model = CifarResNet18(num_classes, width=args.width).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
        model.train()
        pipeline.train()
        for step in range(args.steps):
            idx = torch.randint(0, len(x_all), (args.batch_size,))
            x, y = x_all[idx].to(device), y_all[idx].to(device)
            x, y = pipeline(x, y, model)                    # labels come back (B, 10) soft after a mix
            loss = F.cross_entropy(model(x), y)             # soft labels are taken as probabilities
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step == 0 or (step + 1) % 50 == 0 or step + 1 == args.steps:
                print(f"step {step + 1}: x {tuple(x.shape)} in [{x.min():.2f}, {x.max():.2f}], "
                      f"y {tuple(y.shape)} {y.dtype}, loss {loss.item():.3f}")
        for step_module in pipeline.steps:
            if hasattr(step_module, "stats"):
                print(f"{type(step_module).__name__}: {step_module.stats}")
        model.eval()
        pipeline.eval()                                     # eval mode: the whole chain is the identity
        x, y = x_all[:4].to(device), y_all[:4].to(device)
        x2, y2 = pipeline(x, y, model)
        assert x2 is x and y2 is y
        if x_test is not None:
            correct = count_correct(model, x_test, y_test, device)
            print(f"test accuracy: {100 * correct / len(x_test):.2f}% on {len(x_test)} images")


if __name__ == "__main__":
    main()
