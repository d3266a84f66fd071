"""Model factories for benchmarks, loadable as specs (`python:tests.benchmarks.models:mlp`)."""

import torch
from torch import nn


def mlp(hidden: int = 1024, seed: int = 0):
    """The MLP of the latency benchmarks: 784-hidden-hidden-10 on 1x28x28 images."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10)
    )
    return model.eval(), torch.randn(1, 1, 28, 28)
