"""ISDA as a drop-in: ``x, y = isda(x, y, model)`` before the forward, then plain cross-entropy.

    python examples/isda_hook.py                 # CIFAR-10, CIFAR ResNet-18, 160 epochs, ISDA's CIFAR optimiser and LR
    D=../shared/data/cifar10                     # offline, from the repo root: the shared CIFAR-10 npz files
    python examples/isda_hook.py --train npz:$D/train-5k.npz --test npz:$D/test.npz
    python examples/isda_hook.py --smoke         # 64 synthetic images, a narrow ResNet, 2 epochs (CPU, seconds)

``isda(x, y, model)`` returns x and y unchanged and arms a one-shot hook on the model's final ``nn.Linear``
(``model.fc`` here). The next training forward updates the per-class feature covariances with that layer's input
and returns ISDA's augmented logits, so ``F.cross_entropy(model(x), y)`` *is* the ISDA loss. The strength follows
the official linear ramp ``lambda = lambda0 * epoch / epochs`` once you call ``isda.set_epoch`` every epoch (it is 0
until then, and during epoch 0). Validation forwards (model in eval mode) are untouched.

The statistics are buffers of the ``isda`` module: save them with your checkpoint (``isda.state_dict()``) to resume.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from common import (add_data_args, add_device_arg, add_smoke_arg, add_width_arg, count_correct, example_data,
                    parse_args, pick_device)
from latent_transforms import ISDA
from latent_transforms.models import CifarResNet18
from latent_transforms.validation import POSITIVE_INT, check_number, option

SMOKE = {"epochs": 2, "batch_size": 16, "width": 8}  # --smoke's sizes (an option given beside it wins)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_args(parser)                        # --train, --test, --data-root
    parser.add_argument("--epochs", type=POSITIVE_INT, default=160, help="default: 160, the official CIFAR schedule")
    parser.add_argument("--batch-size", type=POSITIVE_INT, default=128, help="default: 128")
    parser.add_argument("--lambda0", type=option(check_number, float), default=0.5,
                        help="ISDA's lambda0 (>= 0), where its ramp heads (default: 0.5, official CIFAR; or 0.25)")
    parser.add_argument("--covariance", choices=["full", "diagonal"], default="full", help="default: full")
    add_width_arg(parser)
    add_device_arg(parser)
    add_smoke_arg(parser, "64 synthetic images", SMOKE)
    args = parse_args(parser, SMOKE, ("--train", "--test", "--data-root"))
    if args.smoke:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    device = pick_device(parser, args.device)
    torch.manual_seed(0)

    x_train, y_train, x_test, y_test = example_data(parser, args)
    num_classes = int(y_train.max()) + 1
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=args.batch_size, shuffle=True,
                        drop_last=len(x_train) >= args.batch_size)   # a set smaller than a batch is one batch

    # The optimiser and LR schedule of the official ISDA CIFAR recipe (which trains ResNet-32/110, not ResNet-18):
    # SGD 0.1, Nesterov, wd 1e-4, steps at 50% and 75% of training (never before epoch 1).
    model = CifarResNet18(num_classes, width=args.width).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, [max(1, args.epochs // 2), max(1, args.epochs * 3 // 4)], gamma=0.1)
    isda = ISDA(num_classes=num_classes, lambda0=args.lambda0, covariance=args.covariance).to(device)
    print(isda)

    for epoch in range(args.epochs):
        isda.set_epoch(epoch, args.epochs)             # lambda = lambda0 * epoch / epochs (0 in the first epoch)
        model.train()
        start, total, seen = time.perf_counter(), 0.0, 0
        for x, y in tqdm(loader, f"epoch {epoch + 1}/{args.epochs}", leave=False):   # a bar on stderr
            x, y = x.to(device), y.to(device)
            x = torch.where(torch.rand(len(x), 1, 1, 1, device=device) < 0.5, x.flip(-1), x)   # flips
            x, y = isda(x, y, model)                    # <- the one line (x, y unchanged; arms the next forward)
            loss = F.cross_entropy(model(x), y)         # the ISDA loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, seen = total + loss.item() * len(x), seen + len(x)

        accuracy = ""
        if x_test is not None:
            model.eval()                                # validation: no hook is armed, plain logits
            accuracy = f"test accuracy {100 * count_correct(model, x_test, y_test, device) / len(x_test):.1f}%, "
        counts = isda.estimator.count
        print(f"epoch {epoch + 1}/{args.epochs}: lr {scheduler.get_last_lr()[0]:g}, lambda {isda.lam:.3f}, "
              f"loss {total / seen:.3f}, {accuracy}features seen per class {int(counts.min())}..{int(counts.max())}, "
              f"{time.perf_counter() - start:.1f} s")
        scheduler.step()

    # The class statistics are ordinary buffers: checkpoint them (safetensors, no pickle) to resume later.
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "isda.safetensors")
        save_file({k: v.contiguous() for k, v in isda.state_dict().items()}, path)
        resumed = ISDA(num_classes=num_classes, lambda0=args.lambda0, covariance=args.covariance)
        resumed.load_state_dict(load_file(path))
        assert torch.equal(resumed.estimator.cov.to(device), isda.estimator.cov)
        print(f"saved and reloaded the ISDA statistics: cov {tuple(resumed.estimator.cov.shape)}")


if __name__ == "__main__":
    main()
