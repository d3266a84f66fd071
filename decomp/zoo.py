"""Small reference models for examples and benchmarks: LeNet-300-100 and LeNet-5 (Han et al. 2015), and a
small residual CNN with BatchNorm (the kind of network adaptive-BN scoring and channel pruning are about).

Use them as model specs: `python:decomp.zoo:lenet_300_100`, `python:decomp.zoo:lenet5`,
`python:decomp.zoo:residual_cnn?side=8` (scikit-learn's 8x8 digits) or `?side=28` (MNIST).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["lenet5", "lenet_300_100", "residual_cnn"]


def lenet_300_100(classes: int = 10, dropout: float = 0.0) -> tuple[nn.Module, torch.Tensor]:
    """784-300-100-classes fully connected with ReLU, on flat 28x28 images."""
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 300),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(300, 100),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(100, classes),
    )
    return model, torch.zeros(1, 784)


def lenet5(classes: int = 10, dropout: float = 0.0) -> tuple[nn.Module, torch.Tensor]:
    """Caffe's LeNet-5: conv 20@5x5, pool, conv 50@5x5, pool, fc 500, fc classes, on 1x28x28 images."""
    model = nn.Sequential(
        nn.Conv2d(1, 20, 5),
        nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(800, 500),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(500, classes),
    )
    return model, torch.zeros(1, 1, 28, 28)


class _Block(nn.Module):
    """conv-BN-ReLU-conv-BN plus the input, then ReLU: a basic residual block at constant width."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + x)


def residual_cnn(classes: int = 10, width: int = 16, side: int = 8) -> tuple[nn.Module, torch.Tensor]:
    """Stem conv-BN-ReLU to `width` channels, two residual blocks (the second after a 2x2 max pool), a wider
    conv-BN-ReLU, global average pool and a linear classifier, on 1x`side`x`side` images."""
    model = nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        _Block(width),
        nn.MaxPool2d(2),
        _Block(width),
        nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, classes),
    )
    return model, torch.zeros(1, 1, side, side)
