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


class _MlpBlock(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


def mlp_stack(width: int = 768, hidden: int = 3072, blocks: int = 2, tokens: int = 64, batch: int = 32, seed: int = 0):
    """Transformer MLP blocks (pre-norm, residual) on `batch` x `tokens` x `width` activations."""
    torch.manual_seed(seed)
    model = nn.Sequential(*(_MlpBlock(width, hidden) for _ in range(blocks)))
    return model.eval(), torch.randn(batch, tokens, width)


def group_cnn(width: int = 32, channels: int = 1, classes: int = 10, seed: int = 0, blocks: int = 4) -> nn.Module:
    """`blocks` 3x3 conv blocks (width, then 2x width) with BatchNorm and ReLU, pooled, one Linear: the CNN the
    group decomposition benchmark cuts into branches (4 blocks: layers `0`, `3`, `6`, `9`; block i's conv is
    layer 3i)."""
    torch.manual_seed(seed)
    w = width
    layers = []
    for i in range(blocks):
        layers += [nn.Conv2d(channels if i == 0 else (w if i == 1 else 2 * w), w if i == 0 else 2 * w, 3, padding=1)]
        layers += [nn.BatchNorm2d(w if i == 0 else 2 * w), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * w if blocks > 1 else w, classes))


def group_cnn_spec(width: int = 32, side: int = 8, seed: int = 0):
    """`group_cnn` as a model spec (`python:tests.benchmarks.models:group_cnn_spec`): (module, example inputs)."""
    return group_cnn(width, seed=seed).eval(), torch.randn(1, 1, side, side)
