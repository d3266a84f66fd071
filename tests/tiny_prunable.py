"""Tiny inline models, one per coupling case structured pruning must handle."""

from __future__ import annotations

import torch
from torch import nn


class Residual(nn.Module):
    """Two convs whose outputs are added: their output channels are one group."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(3, 8, 1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(torch.relu(self.bn_a(self.a(x)) + self.b(x)))


class Concat(nn.Module):
    """Concat on channels: each branch is its own group, mapped to its slice of the next conv's inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Conv2d(3, 6, 1)
        self.right = nn.Conv2d(3, 10, 3, padding=1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.head(torch.cat([self.left(x), self.right(x)], dim=1))


class Split(nn.Module):
    """A conv's output split in two halves: one passes through, the other through a conv; then concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.branch = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        a, b = torch.split(y, y.shape[1] // 2, dim=1)
        return self.head(torch.cat([a, self.branch(b)], dim=1))


class Depthwise(nn.Module):
    """A depthwise conv couples its input and output channels; a grouped conv follows."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(3, 8, 1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.grouped(self.dw(self.expand(x))))


class FlattenLinear(nn.Module):
    """Conv channels flattened into a linear layer's inputs (each channel owns H*W inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.hidden = nn.Linear(6 * 4 * 4, 12)
        self.out = nn.Linear(12, 5)

    def forward(self, x):
        return self.out(torch.relu(self.hidden(torch.flatten(self.conv(x), 1))))


class LayerNormMLP(nn.Module):
    """Linear -> LayerNorm -> Linear on token features."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(8, 16)
        self.norm = nn.LayerNorm(16)
        self.down = nn.Linear(16, 8)

    def forward(self, x):
        return self.down(torch.relu(self.norm(self.up(x))))


CASES = {
    "residual": (Residual, (2, 3, 8, 8)),
    "concat": (Concat, (2, 3, 8, 8)),
    "split": (Split, (2, 3, 8, 8)),
    "depthwise": (Depthwise, (2, 3, 8, 8)),
    "flatten_linear": (FlattenLinear, (2, 3, 4, 4)),
    "layernorm": (LayerNormMLP, (2, 5, 8)),
}
