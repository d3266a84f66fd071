"""A plain training loop for fine-tuning and retraining pruned models on the user's own data.

Masks from `apply_plan(..., mode="mask")` (torch.nn.utils.prune) keep pruned weights at zero while
the survivors train on from their values (Han et al.: retrain, don't re-initialise). Extras plug in
as callbacks: a penalty added to the loss, and hooks after each step and at each epoch start.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from decomp.errors import DecompError

__all__ = [
    "Callback",
    "TrainConfig",
    "distillation_loss",
    "evaluate",
    "recalibrate_batchnorm",
    "train",
    "weight_penalty",
]

_OPTIMIZERS = ("adam", "sgd")
_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """How to train. `l1`/`l2` weigh penalties on conv/linear weights; `distill` weighs the
    distillation loss from a teacher (0: off) at `temperature`; `schedule`: the learning rate stays
    (`constant`) or is annealed from `lr` towards 0 over the epochs (`cosine`, stepped per epoch)."""

    epochs: int = 1
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    l1: float = 0.0
    l2: float = 0.0
    distill: float = 0.0
    temperature: float = 4.0
    seed: int = 0
    schedule: str = "constant"

    def __post_init__(self) -> None:
        if self.optimizer not in _OPTIMIZERS:
            raise DecompError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(_OPTIMIZERS)}")
        if self.schedule not in _SCHEDULES:
            raise DecompError(f"unknown learning-rate schedule {self.schedule!r}; choose constant or cosine")
        if self.epochs < 0 or self.lr <= 0 or self.l1 < 0 or self.l2 < 0 or self.temperature <= 0:
            raise DecompError(f"epochs, l1, l2 must be >= 0 and lr, temperature > 0; got {self}")
        if not 0.0 <= self.distill <= 1.0:
            raise DecompError(f"distill weight must be in [0, 1], got {self.distill}")


class Callback:
    """Hooks into `train`; every method is optional to override."""

    def parameters(self) -> Iterable[nn.Parameter]:
        """Extra parameters to train with the model's (e.g. learnable gates)."""
        return []

    def penalty(self) -> torch.Tensor | float:
        """Added to the loss of every step."""
        return 0.0

    def on_step(self, step: int) -> None:
        """After each optimizer step (step counts from 1)."""

    def on_epoch_start(self, epoch: int) -> None:
        """Before each epoch (epoch counts from 0)."""


def weight_penalty(model: nn.Module, l1: float, l2: float) -> torch.Tensor | float:
    """l1 * sum|w| + l2 * sum w^2 over conv and linear weights (as the forward pass sees them)."""
    if not l1 and not l2:
        return 0.0
    total = 0.0
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
            total = total + l1 * m.weight.abs().sum() + l2 * m.weight.pow(2).sum()
    return total


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Knowledge distillation (Hinton et al. 2015): KL divergence of the softened distributions, scaled by T^2."""
    soft = F.log_softmax(student / temperature, dim=-1)
    target = F.softmax(teacher / temperature, dim=-1)
    return F.kl_div(soft, target, reduction="batchmean") * temperature**2


def train(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    config: TrainConfig = TrainConfig(),
    teacher: nn.Module | None = None,
    callbacks: Sequence[Callback] = (),
) -> list[float]:
    """Train `model` in place with cross-entropy (plus penalties and distillation); mean loss per epoch."""
    if config.distill and teacher is None:
        raise DecompError("distill > 0 needs a teacher model (e.g. the unpruned model)")
    torch.manual_seed(config.seed)
    params = [p for p in model.parameters() if p.requires_grad] + [p for cb in callbacks for p in cb.parameters()]
    if config.optimizer == "adam":
        optimizer = torch.optim.Adam(params, lr=config.lr)
    else:
        optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum)
    cosine = config.schedule == "cosine" and config.epochs > 0
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.epochs) if cosine else None
    if teacher is not None:
        teacher.eval()
    losses, step = [], 0
    for epoch in range(config.epochs):
        for cb in callbacks:
            cb.on_epoch_start(epoch)
        model.train()
        total, batches = 0.0, 0
        for inputs, targets in loader:
            logits = model(inputs)
            loss = F.cross_entropy(logits, targets)
            if config.distill:
                with torch.no_grad():
                    soft_targets = teacher(inputs)
                loss = (1 - config.distill) * loss + config.distill * distillation_loss(
                    logits, soft_targets, config.temperature
                )
            loss = loss + weight_penalty(model, config.l1, config.l2) + sum(cb.penalty() for cb in callbacks)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            for cb in callbacks:
                cb.on_step(step)
            total, batches = total + float(loss.detach()), batches + 1
        losses.append(total / max(batches, 1))
        if scheduler is not None:
            scheduler.step()
    model.eval()
    return losses


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Top-1 accuracy in [0, 1]."""
    model.eval()
    correct = seen = 0
    for inputs, targets in loader:
        correct += int((model(inputs).argmax(-1) == targets).sum())
        seen += len(targets)
    return correct / seen if seen else 0.0


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor | tuple[torch.Tensor, ...]]) -> int:
    """Adaptive BN (Li et al., EagleEye, ECCV 2020): re-estimate every BatchNorm layer's running statistics as
    the plain average over `batches` of training inputs, with no gradient step. Pruning shifts the statistics
    a layer sees; scoring a pruned model with the stale ones ranks candidates badly, with fresh ones the score
    tracks the accuracy after fine-tuning. Only the norms run in train mode (dropout stays off). Returns the
    number of BatchNorm layers recalibrated (0: the model has none and is unchanged); the model ends in eval
    mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    model.eval()
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
        m.train()
    seen = 0
    try:
        for batch in batches:
            inputs = batch if isinstance(batch, tuple) else (batch,)
            model(*inputs)
            seen += 1
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
            m.eval()
    if not seen:
        raise DecompError("recalibrating BatchNorm needs at least one batch of training inputs, got none")
    return len(norms)
