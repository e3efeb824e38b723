"""An ordinary CIFAR-10 ResNet-18 training loop; semantic augmentation is added by ONE line.

    python examples/one_line.py                        # CIFAR-10 (downloaded by torchvision), glow-cifar10 codec
    python examples/one_line.py --method adversarial   # LatentAdversarial (the paper's LA-adv) instead of LatentNoise
    python examples/one_line.py --train npz:train.npz --test npz:test.npz
    D=../shared/data/cifar10                           # offline, from the repo root: the shared CIFAR-10 npz files
    python examples/one_line.py --train npz:$D/train-5k.npz --test npz:$D/test.npz
    python examples/one_line.py --smoke                # 64 synthetic images, a tiny random Glow, 1 epoch (CPU, seconds)

Everything except the line marked ``<- the one line`` is a plain PyTorch loop: a DataLoader with random crop and
flip, SGD, cross-entropy. The model standardises its input itself (first layer), so the augmentation sees images
in [0, 1]. In ``eval()`` mode the augmentation is the identity, so evaluation needs no change either.

Real CIFAR-10 runs are GPU jobs: through glow-cifar10 a batch of 128 (``--width 8``) took about 20 s on a 2-core
CPU (Intel Xeon, shared with other jobs, 2026-12-06); ``--smoke`` runs anywhere.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2
from tqdm import tqdm

from common import (add_codec_arg, add_data_args, add_device_arg, add_smoke_arg, add_width_arg, count_correct,
                    example_data, load_codec, parse_args, pick_device, tiny_glow)
from latent_transforms import LatentAdversarial, LatentNoise
from latent_transforms.models import CifarResNet18
from latent_transforms.validation import POSITIVE_FLOAT, POSITIVE_INT

SMOKE = {"epochs": 1, "batch_size": 16, "width": 8}  # --smoke's sizes (an option given beside it wins)


class Images(Dataset):
    """(N, C, H, W) float images in [0, 1] and labels, with a per-sample pixel transform."""

    def __init__(self, x, y, transform=None):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        x = self.x[i]
        return (self.transform(x) if self.transform else x), self.y[i]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_args(parser)                        # --train, --test, --data-root
    add_codec_arg(parser)
    parser.add_argument("--method", choices=["noise", "adversarial", "none"], default="noise", help="default: noise")
    parser.add_argument("--epochs", type=POSITIVE_INT, default=200,
                        help="default: 200, the CIFAR schedule of the flow paper's code")
    parser.add_argument("--batch-size", type=POSITIVE_INT, default=128, help="default: 128")
    parser.add_argument("--lr", type=POSITIVE_FLOAT, default=0.1, help="initial learning rate (default: 0.1)")
    add_width_arg(parser)
    add_device_arg(parser)
    add_smoke_arg(parser, "64 synthetic images, a tiny random Glow", SMOKE)
    args = parse_args(parser, SMOKE, ("--train", "--test", "--data-root", "--codec"))
    if args.smoke:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    device = pick_device(parser, args.device)
    torch.manual_seed(0)

    # -- data --------------------------------------------------------------------------------------------
    x_train, y_train, x_test, y_test = example_data(parser, args)     # (N, 3, 32, 32) in [0, 1], (N,) labels
    num_classes = int(y_train.max()) + 1
    crop_flip = v2.Compose([v2.RandomCrop(x_train.shape[-2:], padding=4, padding_mode="reflect"),  # images' own size
                            v2.RandomHorizontalFlip()])
    loader = DataLoader(Images(x_train, y_train, crop_flip), batch_size=args.batch_size, shuffle=True,
                        drop_last=len(x_train) >= args.batch_size)   # a set smaller than a batch is one batch

    # -- model, optimiser: the CIFAR recipe of the flow paper's code, okyksl/flow-lp (SGD, Nesterov, wd 5e-4) ---
    model = CifarResNet18(num_classes, width=args.width).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(   # at 30%, 60% and 80% of training, never before epoch 1
        optimizer, [max(1, int(args.epochs * f)) for f in (0.3, 0.6, 0.8)], gamma=0.2)

    # -- the augmentation ---------------------------------------------------------------------------------
    if args.method != "none":
        codec = (tiny_glow() if args.smoke else load_codec(parser, "--codec", args.codec, device)).to(device)
    if args.method == "noise":
        augment = LatentNoise(codec)           # L2 noise of norm 10 (calibrated; the official CIFAR-10 setting is 20)
    elif args.method == "adversarial":
        augment = LatentAdversarial(codec)     # L2 PGD, eps 1, one step (calibrated; official: 3 steps of 0.5)
    else:
        augment = None
    print(f"augmentation: {augment!r}")

    for epoch in range(args.epochs):
        model.train()
        start, total, seen = time.perf_counter(), 0.0, 0
        for x, y in tqdm(loader, f"epoch {epoch + 1}/{args.epochs}", leave=False):   # a bar on stderr
            x, y = x.to(device), y.to(device)
            if augment is not None:
                x, y = augment(x, y, model)                     # <- the one line
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, seen = total + loss.item() * len(x), seen + len(x)
        stats = f", augmentation {augment.stats}" if augment is not None else ""
        print(f"epoch {epoch + 1}/{args.epochs}: lr {scheduler.get_last_lr()[0]:g}, loss {total / seen:.3f}, "
              f"{time.perf_counter() - start:.1f} s{stats}")
        scheduler.step()

    if x_test is not None:
        model.eval()   # the augmentation is not called here (in eval() mode it would be the identity anyway)
        correct = count_correct(model, x_test, y_test, device)
        print(f"test accuracy: {100 * correct / len(x_test):.2f}% on {len(x_test)} images")


if __name__ == "__main__":
    main()
