"""Reference classifiers used by the demo, the examples and the benchmarks."""
from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CifarResNet18", "digits_cnn"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


# -- the classifier -----------------------------------------------------------------------------------
class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet18(nn.Module):
    """ResNet-18 for 32x32 images: 3x3 stride-1 stem, no max-pool, 4 stages of 2 BasicBlocks, global pool, ``fc``.

    Takes x: (B, 3, H, W) float in [0, 1] and standardises it inside (``mean``/``std``, CIFAR-10's by default), after
    any augmentation; returns ``(B, num_classes)`` logits.
    ``width`` is the first stage's channel count (64 for the real ResNet-18; smaller for smoke runs).
    ``channels_last`` converts the input to channels-last memory format (call ``.to(memory_format=...)`` too).
    The final layer is the ``nn.Linear`` named ``fc`` (what ISDA hooks).
    """

    mean: torch.Tensor  # buffers
    std: torch.Tensor

    def __init__(self, num_classes: int = 10, width: int = 64, channels_last: bool = False,
                 mean: tuple[float, float, float] = CIFAR10_MEAN, std: tuple[float, float, float] = CIFAR10_STD):
        super().__init__()
        self.channels_last = channels_last
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks, cin = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            cout = width * 2**i
            blocks += [_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.layers(self.stem(x))
        return cast(torch.Tensor, self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))


def digits_cnn(num_classes: int = 10) -> nn.Module:
    """A small CNN for 1x8x8 digits: ``x: (B, 1, 8, 8)`` float in [0, 1] -> ``(B, num_classes)`` logits; its last
    layer is the ``nn.Linear`` ISDA hooks."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))
