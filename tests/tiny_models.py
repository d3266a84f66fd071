"""Tiny inline models for unit tests: a residual add, a concat, a depthwise conv, a flatten -> linear."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Branches(nn.Module):
    """Two parallel convolutions concatenated on channels."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.left = nn.Conv2d(c, c, 1)
        self.right = nn.Conv2d(c, c, 3, padding=1, bias=False)

    def forward(self, x):
        return torch.cat([self.left(x), self.right(x)], dim=1)


class TinyNet(nn.Module):
    """stem conv -> depthwise conv + residual add -> concat branches -> 1x1 fuse -> pool -> flatten -> linear."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.branches = Branches(8)
        self.fuse = nn.Conv2d(16, 8, 1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(8 * 2 * 2, classes)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = x + self.dw(x)
        x = self.fuse(self.branches(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def tiny_macs(h: int = 8, w: int = 8, classes: int = 10) -> int:
    """Hand count of TinyNet's multiply-accumulates at batch 1."""
    positions = h * w
    stem = positions * 8 * 3 * 9
    dw = positions * 8 * 1 * 9
    left = positions * 8 * 8
    right = positions * 8 * 8 * 9
    fuse = positions * 8 * 16
    fc = classes * 32
    return stem + dw + left + right + fuse + fc


def tiny_net(classes: int = 10):
    """Factory for `python:tests.tiny_models:tiny_net` specs: (module, example_inputs)."""
    return TinyNet(classes), torch.randn(1, 3, 8, 8)


class Gate(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace this."""

    def forward(self, x):
        if x.sum() > 0:
            return x
        return -x


class GatedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.gate = Gate()

    def forward(self, x):
        return self.gate(self.conv(x))


class TiedNet(nn.Module):
    """Embedding and output projection share one weight; a functional linear reads a bare parameter."""

    def __init__(self, vocab: int = 20, dim: int = 6) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mix = nn.Parameter(torch.randn(dim, dim))
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        h = F.linear(self.embed(ids), self.mix)
        return self.head(h)


class AttentionNet(nn.Module):
    """nn.MultiheadAttention kept whole by the fx tracer, then a linear head."""

    def __init__(self, dim: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        y, _ = self.attn(x, x, x, need_weights=False)
        return self.head(y)


def brightness_batches(
    n: int = 96,
    seed: int = 0,
    shape: tuple[int, ...] = (1, 8, 8),
    classes: int = 3,
    batch: int = 16,
    noise: float = 0.3,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Labelled images whose class is their mean brightness (class c around c): easy from the first conv on.
    Batches of (images, labels)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.randn(n, *shape, generator=g) * noise + y.float().view(-1, *([1] * len(shape)))
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]
