"""A sweep of synthetic layers to profile on a device before its op model (`decomp.latency.opmodel`) prices
architectures nobody profiled there: blocks of the ops networks are made of, at shapes drawn from the
ranges real networks use, none of them an architecture.

- convolution blocks: dense, depthwise and grouped convolutions (kernels 1-7, strides 1-2, 3-1024
  channels, 7-112 pixels a side), each followed by a normalisation and one of the common activations,
  some with a residual add, a squeeze-excite gate (pool, two 1x1 convolutions, sigmoid, multiply) or a
  channel concatenation;
- matrix blocks: Linear layers on 2-, 3- and 4-dimensional inputs (rows from 1 to 3136), LayerNorm,
  GELU, residual adds, and multi-head attention over 49-197 tokens;
- pooling: max and average pools, adaptive average pools, flatten.

`profile_sweep(table, ...)` times every block's ops in place (the way `profile_ops` times a model's) and
adds the signatures the table lacks. Drawn from a seeded generator: the same sweep on every machine.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from decomp.latency.table import OpTable, profile_ops

__all__ = ["profile_sweep", "sweep_blocks"]

_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.GELU)
_MAX_MACS = 4e8  # per convolution at batch 1: keeps the sweep to about a minute on one CPU thread


class _ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, groups: int, act: type, extra: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=extra == "bias")
        self.norm = nn.BatchNorm2d(cout)
        self.act = act()
        self.extra = extra
        self.residual = extra == "add" and cin == cout and stride == 1
        if extra == "se":
            hidden = max(8, cout // 4)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc1 = nn.Conv2d(cout, hidden, 1)
            self.fc2 = nn.Conv2d(hidden, cout, 1)
            self.gate = nn.Hardsigmoid() if act is nn.Hardswish else nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.norm(self.conv(x)))
        if self.extra == "se":
            y = y * self.gate(self.fc2(torch.relu(self.fc1(self.pool(y)))))
        elif self.residual:
            y = y + x
        elif self.extra == "cat":
            y = torch.cat([y, y], dim=1)
        return y


class _MatrixBlock(nn.Module):
    def __init__(self, width: int, hidden: int, heads: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True) if heads else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn is not None:
            h = self.norm(x)
            x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


class _Pools(nn.Module):
    def __init__(self, k: int) -> None:
        super().__init__()
        self.max = nn.MaxPool2d(k, 2, k // 2)
        self.avg = nn.AvgPool2d(2, 2)
        self.adaptive = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.avg(self.max(x))
        return self.flat(self.adaptive(y)) + self.flat(self.adaptive(x))


def sweep_blocks(
    batches: Sequence[int] = (1, 8), blocks: int = 400, seed: int = 0
) -> Iterator[tuple[str, nn.Module, torch.Tensor]]:
    """(description, block, input) for every synthetic block of the sweep at each batch size."""
    rng = random.Random(seed)
    channels = (3, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 384, 512, 768, 1024)
    sides = (7, 14, 28, 56, 112)
    specs = []
    for i in range(blocks):
        kind = ("conv", "conv", "conv", "matrix", "pool")[i % 5]
        if kind == "conv":
            cin, side = rng.choice(channels), rng.choice(sides)
            style = rng.choice(("dense", "dense", "depthwise", "grouped"))
            k = rng.choice((1, 1, 3, 3, 5, 7)) if style == "dense" else rng.choice((3, 3, 5, 7))
            if style == "depthwise":
                cin = max(cin, 8)
                cout, groups = cin, cin
            else:
                cout = rng.choice(channels[1:])
                groups = 1
                if style == "grouped":
                    groups = rng.choice((2, 4, 8, 16, 32))
                    cin, cout = max(cin, groups) // groups * groups, max(cout, groups) // groups * groups
            stride = rng.choice((1, 1, 1, 2))
            macs = cout * (side // stride) ** 2 * cin // groups * k * k
            if macs > _MAX_MACS:
                continue
            act = rng.choice(_ACTIVATIONS)
            extra = rng.choice(("none", "add", "se", "cat", "bias"))
            specs.append(
                (
                    f"conv {cin}->{cout} k{k} s{stride} g{groups} {side}px {act.__name__} {extra}",
                    _ConvBlock,
                    (cin, cout, k, stride, groups, act, extra),
                    (cin, side, side),
                )
            )
        elif kind == "matrix":
            width = rng.choice((64, 96, 128, 192, 256, 384, 512, 768, 1024))
            hidden = width * rng.choice((2, 4))
            rows = rng.choice(((1,), (49,), (50,), (196,), (197,), (7, 7), (14, 14), (28, 28), (56, 56)))
            heads = rng.choice((0, 0, width // 64)) if len(rows) == 1 and rows[0] > 1 else 0
            if math.prod(rows) * width * hidden > 4 * _MAX_MACS:
                continue
            specs.append(
                (
                    f"matrix {width}x{hidden} rows {rows} heads {heads}",
                    _MatrixBlock,
                    (width, hidden, heads),
                    (*rows, width),
                )
            )
        else:
            c, side = rng.choice(channels[1:]), rng.choice(sides[1:])
            specs.append((f"pools {c}x{side}px", _Pools, (rng.choice((2, 3)),), (c, side, side)))
    for batch in batches:
        for what, block, args, shape in specs:
            torch.manual_seed(0)
            yield f"{what} batch {batch}", block(*args).eval(), torch.randn(batch, *shape)


def profile_sweep(
    table: OpTable,
    threads: int | None = None,
    batches: Sequence[int] = (1, 8),
    blocks: int = 400,
    repeats: int = 5,
    seed: int = 0,
) -> int:
    """Profile the sweep's blocks (`sweep_blocks`) in place into `table`; returns the signatures added."""
    added = 0
    for _, block, x in sweep_blocks(batches, blocks, seed):
        added += profile_ops(block, (x,), table, threads=threads, repeats=repeats)[1]
    return added
