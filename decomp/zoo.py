"""Small reference models for examples and benchmarks: LeNet-300-100 and LeNet-5 (Han et al. 2015).

Use them as model specs: `python:decomp.zoo:lenet_300_100`, `python:decomp.zoo:lenet5`.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["lenet_300_100", "lenet5"]


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
