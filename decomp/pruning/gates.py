"""Programmable pruning with learnable channel gates whose rate and strategy follow a schedule.

Every channel of a chosen coupling group gets a gate g (initially 1) that scales the channel where
its consumer layers read it, which is the same as scaling the channel itself. A schedule of stages
says, from a given epoch on, how the gates are driven:
  `l1`   adds penalty x sum|g| to the loss (network slimming on the gates),
  `hard` additionally holds the `rate` share of each group's smallest gates at exactly 0.
`finish()` folds the gates into the consumers' weights and returns the plan that removes the
`rate` share of channels with the smallest gates; for gates held at 0 that removal is exact.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from decomp.errors import InvalidPlanError
from decomp.pruning.groups import GroupIndex, pruned_side
from decomp.pruning.layers import weight_dims
from decomp.pruning.plan import GroupChoice, PruningPlan
from decomp.pruning.train import Callback

__all__ = ["GateStage", "ChannelGates"]

STRATEGIES = ("l1", "hard")


@dataclass(frozen=True)
class GateStage:
    """From `epoch` on: drive the gates by `strategy` towards closing `rate` of each group's channels."""

    epoch: int
    strategy: str = "l1"
    rate: float = 0.5
    penalty: float = 1e-3

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise InvalidPlanError(f"unknown gate strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if not 0.0 <= self.rate < 1.0 or self.penalty < 0 or self.epoch < 0:
            raise InvalidPlanError(f"gate stage needs epoch >= 0, rate in [0, 1), penalty >= 0; got {self}")


def _in_dim(layer: nn.Module) -> tuple[int, int]:
    """(dim of the input tensor holding channels, dim of the weight reading them)."""
    dims = weight_dims(layer)
    if dims is not None:
        return -1, dims[1]
    if isinstance(layer, nn.Linear):
        return -1, 1
    if isinstance(layer, nn.modules.conv._ConvNd) and layer.groups == 1 and not layer.transposed:
        return 1, 1
    raise InvalidPlanError(f"channel gates cannot feed a {type(layer).__name__}; leave its group out of the gates")


class ChannelGates(Callback):
    """Learnable gates on `groups` (default: every channel group without slices) driven by `schedule`."""

    def __init__(
        self,
        model: nn.Module,
        index: GroupIndex,
        groups: Sequence[str] | None = None,
        schedule: Sequence[GateStage] = (GateStage(0),),
    ):
        if not schedule or sorted(s.epoch for s in schedule) != [s.epoch for s in schedule]:
            raise InvalidPlanError("the gate schedule needs stages in order of their epoch")
        default = [g.id for g in index if g.kind == "channels" and g.slices == 1]
        chosen = list(groups) if groups is not None else default
        self.schedule, self.stage = list(schedule), schedule[0]
        self.gates = nn.ParameterDict()
        self._readers: list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]] = []  # group, layer, positions, channel
        self._hooks = []
        for gid in chosen:
            if index[gid].kind != "channels" or index[gid].slices > 1:
                raise InvalidPlanError(f"group {gid} cannot be gated (heads or grouped-convolution slices)")
            self.gates[gid.replace(".", "/")] = nn.Parameter(torch.ones(index[gid].channels))
            for item in index.tp_group(gid):
                if pruned_side(item.dep.handler) == "in" and isinstance(item.dep.target.module, nn.Module):
                    self._gate_reader(gid, item.dep.target.module, [int(getattr(i, "idx", i)) for i in item.idxs])
        self.history: list[tuple[int, GateStage]] = []

    def _gate_reader(self, gid: str, layer: nn.Module, positions: list[int]) -> None:
        channels = len(self.gates[gid.replace(".", "/")])
        source = torch.arange(channels).repeat_interleave(len(positions) // channels)  # flatten: k inputs each
        entry = (gid, layer, torch.tensor(positions), source)
        self._readers.append(entry)
        in_dim, _ = _in_dim(layer)

        def scale(module, args):
            x = args[0]
            factor = torch.ones(x.shape[in_dim], dtype=x.dtype)
            factor = factor.index_put((entry[2],), self.gate(gid)[entry[3]])
            shape = [1] * x.dim()
            shape[in_dim] = -1
            return (x * factor.view(shape), *args[1:])

        self._hooks.append(layer.register_forward_pre_hook(scale))

    def gate(self, gid: str) -> torch.Tensor:
        return self.gates[gid.replace(".", "/")]

    def parameters(self):
        """The gate parameters: give them to the optimizer (train() picks them up via the model)."""
        return self.gates.parameters()

    def penalty(self) -> torch.Tensor | float:
        return self.stage.penalty * sum(g.abs().sum() for g in self.gates.values())

    def on_epoch_start(self, epoch: int) -> None:
        position = bisect.bisect_right([s.epoch for s in self.schedule], epoch) - 1
        self.stage = self.schedule[max(position, 0)]
        self.history.append((epoch, self.stage))
        self._hold()

    def on_step(self, step: int) -> None:
        self._hold()

    def _closed(self, gate: torch.Tensor, rate: float) -> torch.Tensor:
        count = int(rate * len(gate))
        return (
            torch.topk(gate.detach().abs(), count, largest=False).indices
            if count
            else torch.tensor([], dtype=torch.long)
        )

    def _hold(self) -> None:
        if self.stage.strategy != "hard":
            return
        with torch.no_grad():
            for gate in self.gates.values():
                gate[self._closed(gate, self.stage.rate)] = 0.0

    def finish(self) -> PruningPlan:
        """Fold the gates into the consumers' weights, remove the hooks, return the plan closing `rate`."""
        with torch.no_grad():
            for gid, layer, positions, source in self._readers:
                _, weight_dim = _in_dim(layer)
                shape = [1] * layer.weight.dim()
                shape[weight_dim] = -1
                factor = torch.ones(layer.weight.shape[weight_dim]).index_put((positions,), self.gate(gid)[source])
                layer.weight.mul_(factor.view(shape))
        for hook in self._hooks:
            hook.remove()
        choices = []
        for key, gate in self.gates.items():
            closed = set(self._closed(gate, self.stage.rate).tolist())
            keep = tuple(i for i in range(len(gate)) if i not in closed)
            choices.append(GroupChoice(key.replace("/", "."), keep=keep))
        return PruningPlan(groups=tuple(choices))
