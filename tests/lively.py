"""Weights under which a randomly initialised real model's outputs depend on its inputs.

Comparing a transformed model (split, exported, pruned) with the original to 1e-5 only tests something
when the original's outputs move by far more than that with its input. At their own initialisation
several torchvision models do not: vit_b_16's head is zero (every output 0), googlenet's truncated
normal (std 0.01) leaves the classifier a constant (no input changes it), mobilenet_v2's outputs are
~1e-9. `lively` re-draws every weight so activations keep their scale through the network, and
`spread` measures how far the outputs move between two inputs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from decomp.partition.split import flat_outputs
from decomp.pruning import recalibrate_batchnorm

NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def lively(model: nn.Module, inputs: tuple[torch.Tensor, ...], seed: int = 0, batch: int = 8) -> nn.Module:
    """Re-draw `model`'s parameters in place (seeded) and return it in eval mode: matrices and kernels
    N(0, 1/fan_in), norm scales U(0.5, 1.5), biases and other tensors (embeddings, class tokens, layer
    scales) N(0, 0.1); then batch-norm running statistics are recomputed on `batch` random inputs shaped
    like `inputs` (only the norms in train mode: no dropout, no auxiliary heads), so each normalises what
    it sees."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                if isinstance(module, NORMS) and name == "weight":
                    p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
                elif name != "bias" and p.dim() >= 2:
                    fan_in = math.prod(p.shape[1:]) if p.dim() > 2 else p.shape[1]
                    p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    recalibrate_batchnorm(model, [_like(inputs, batch, gen) for _ in range(2)])  # ends in eval mode
    return model


def spread(model: nn.Module, inputs: tuple[torch.Tensor, ...], seed: int = 1) -> float:
    """The largest absolute change of any output between `inputs` and other random inputs of their shape."""
    with torch.no_grad():
        other = _like(inputs, None, torch.Generator().manual_seed(seed))
        a, b = flat_outputs(model(*inputs)), flat_outputs(model(*other))
    return max(float((x.float() - y.float()).abs().max()) for x, y in zip(a, b, strict=True))


def _like(inputs: tuple[torch.Tensor, ...], batch: int | None, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    out = []
    for x in inputs:
        shape = (batch, *x.shape[1:]) if batch else x.shape
        if x.is_floating_point():
            out.append(torch.randn(shape, generator=gen, dtype=x.dtype))
        else:  # token ids: within the range the example uses
            out.append(torch.randint(0, int(x.max()) + 1, shape, generator=gen, dtype=x.dtype))
    return tuple(out)
