"""The rl searcher's policy network and the small torch pieces around it (see `search.searchers.rl`)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

__all__ = [
    "DTYPE",
    "MAX_STD",
    "MIN_STD",
    "REACH",
    "Policy",
    "bounded_mean",
    "normal_log_prob",
    "tensor_from_json",
    "tensor_to_json",
    "to_unit",
]

DTYPE = torch.float64
REACH = 0.55  # float means live in [0.5 - REACH, 0.5 + REACH]: the bounds are reachable, never left far behind
MIN_STD, MAX_STD = 0.01, 1.0


class Policy(nn.Module):
    """Preference- and gene-conditioned MLP: (w, gene, previous value) -> Gaussian and categorical heads."""

    def __init__(self, genes: int, objectives: int, hidden: int, embed: int, choices: int, gen: torch.Generator):
        super().__init__()
        d_in = objectives + embed + 1

        def uniform(*shape: int, scale: float) -> nn.Parameter:
            return nn.Parameter(torch.empty(*shape, dtype=DTYPE).uniform_(-scale, scale, generator=gen))

        self.embedding = uniform(genes, embed, scale=1.0)
        self.w1, self.b1 = uniform(hidden, d_in, scale=d_in**-0.5), uniform(hidden, scale=d_in**-0.5)
        self.w2, self.b2 = uniform(hidden, hidden, scale=hidden**-0.5), uniform(hidden, scale=hidden**-0.5)
        # small output weights: the initial policy is the same broad distribution for every gene and w
        self.w3 = uniform(2 + choices, hidden, scale=0.01 * hidden**-0.5)
        self.b3 = nn.Parameter(torch.zeros(2 + choices, dtype=DTYPE))

    def forward(self, w: torch.Tensor, gene: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        x = torch.cat([w, self.embedding[gene], prev[:, None]], dim=1)
        x = torch.tanh(nn.functional.linear(x, self.w1, self.b1))
        x = torch.tanh(nn.functional.linear(x, self.w2, self.b2))
        return nn.functional.linear(x, self.w3, self.b3)


def bounded_mean(raw: torch.Tensor) -> torch.Tensor:
    """A float gene's mean on [0, 1] from the network's raw output, kept within REACH of the middle."""
    return 0.5 + REACH * torch.tanh(raw / REACH)


def to_unit(a: torch.Tensor, choices: int) -> torch.Tensor:
    """An action as a value on [0, 1], the next gene's 'previous value' input."""
    return a / (choices - 1) if choices else torch.clamp(a, 0.0, 1.0)


def normal_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return -0.5 * ((x - mean) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)


def tensor_to_json(value: Any) -> Any:
    """A tensor as nested lists with its dtype (for Adam's state); anything else as it is."""
    if isinstance(value, torch.Tensor):
        return {"tensor": value.tolist(), "dtype": str(value.dtype).removeprefix("torch.")}
    return value


def tensor_from_json(value: Any) -> Any:
    if isinstance(value, dict) and "tensor" in value:
        return torch.tensor(value["tensor"], dtype=getattr(torch, value["dtype"]))
    return value
