"""Early exits (BranchyNet, 2016): a small classifier head on an intermediate activation (a partition
boundary, where an input that exits need not be sent to the next device), and a confidence rule that lets
an input stop there.

- `ExitModel(model, inputs, at)`: the model traced with torch.fx, returning its final logits and, for every
  op named in `at`, an exit head's logits on that op's output (head: global average pool over the
  spatial or token dimensions, then a Linear to the classes).
- `train_exits(exits, loader, epochs)`: the heads trained with the backbone frozen (cross-entropy on the
  labels, plus distillation from the final output with `distill`).
- `calibrate_exits(exits, loader, max_drop, confidence)`: per exit a threshold on the softmax's top
  probability, the lowest (most inputs leave early) that keeps the accuracy of exiting at the first
  confident exit within `max_drop` of the final output's on the loader's samples (a validation split, not
  the test split) with the given confidence (an upper bound on the measured drop, not the drop itself:
  on new inputs it is another draw); exits are calibrated in order, each with the earlier ones fixed.
- `exit_report(exits, thresholds, loader)`: on other samples, the share leaving at each exit, the accuracy,
  MACs per input on average (each input pays the backbone up to where it leaves plus the heads it passed)
  and the bytes per input the cut's activation would have sent on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import networkx as nx
import torch
import torch.nn.functional as F
from torch import nn

from decomp.build import graph_from_module
from decomp.errors import InvalidPlanError
from decomp.partition.plan import PartitionPlan
from decomp.pruning.train import distillation_loss
from decomp.tracing import trace

__all__ = [
    "ExitModel",
    "ExitOutputs",
    "ExitReport",
    "calibrate_exits",
    "exit_outputs",
    "exit_plan",
    "exit_report",
    "train_exits",
]

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


class _Head(nn.Module):
    """Global average over every dimension but batch and channels (dim 1 of an image, the last of tokens)."""

    def __init__(self, channels: int, classes: int, tokens: bool, dims: int) -> None:
        super().__init__()
        # the dimensions pooled, fixed here so the head traces (torch.fx, export) without reading x's rank
        self.pooled = tuple(range(1, dims - 1)) if tokens else tuple(range(2, dims))
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=self.pooled))


class ExitModel(nn.Module):
    """`model` with exit heads after the ops `at` (fx node names, in the order the model reaches them).
    `forward` returns (final logits, [exit logits, ...])."""

    def __init__(self, model: nn.Module, example_inputs: tuple[torch.Tensor, ...], at: Sequence[str]) -> None:
        super().__init__()
        inputs = tuple(example_inputs)
        if len(inputs) != 1:
            raise InvalidPlanError(f"early exits take models of one input; this one takes {len(inputs)}")
        gm = trace(model, inputs, tracer="fx")
        nodes = {n.name: n for n in gm.graph.nodes}
        missing = [a for a in at if a not in nodes]
        if missing or not at:
            known = [n.name for n in gm.graph.nodes if n.op not in ("placeholder", "output")][:8]
            raise InvalidPlanError(
                f"no op {', '.join(missing) or '(none given)'} in the model; ops are e.g. {', '.join(known)}"
            )
        graph = graph_from_module(gm)
        self.at = tuple(at)
        output = next(n for n in gm.graph.nodes if n.op == "output")
        (final,) = output.args
        output.args = ((final, *(nodes[a] for a in at)),)
        gm.recompile()
        self.backbone = gm
        with torch.no_grad():
            logits, *activations = gm(*inputs)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            raise InvalidPlanError("early exits need a classifier: the model must return (batch, classes) logits")
        classes = logits.shape[1]
        heads = []
        for name, act in zip(at, activations, strict=True):
            if not isinstance(act, torch.Tensor) or act.dim() < 2:
                raise InvalidPlanError(f"op {name} makes no (batch, channels, ...) tensor to attach an exit to")
            tokens = act.dim() == 3  # (batch, tokens, features)
            heads.append(_Head(act.shape[-1] if tokens else act.shape[1], classes, tokens, act.dim()))
        self.heads = nn.ModuleList(heads)
        # what an input pays up to each exit (its share of the backbone's MACs) and what the cut would send on
        order = graph.compute_nodes()
        batch = inputs[0].shape[0]
        macs = [graph[n].get("macs", 0) for n in order]
        self.total_macs = sum(macs) / batch
        self.macs_to = [sum(macs[: order.index(a) + 1]) / batch for a in at]
        self.head_macs = [h.fc.in_features * h.fc.out_features for h in heads]
        self.cut_bytes = [a.element_size() * a[0].numel() for a in activations]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        out = self.backbone(x)  # indexed, not unpacked: the model traces (torch.fx) for a split and export
        return out[0], [head(out[k + 1]) for k, head in enumerate(self.heads)]


def train_exits(
    exits: ExitModel,
    loader: Batches,
    epochs: int = 10,
    lr: float = 1e-2,
    distill: float = 0.0,
    temperature: float = 4.0,
    seed: int = 0,
) -> list[float]:
    """Train the exit heads with the backbone frozen (Adam): per head cross-entropy on the labels, with
    `distill` > 0 that share of it a distillation from the final output; mean loss per epoch."""
    if epochs < 0 or lr <= 0 or not 0.0 <= distill <= 1.0:
        raise InvalidPlanError(f"epochs must be >= 0, lr > 0 and distill in [0, 1]; got {epochs}, {lr}, {distill}")
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(exits.heads.parameters(), lr=lr)
    exits.eval()
    losses = []
    for _ in range(epochs):
        exits.heads.train()
        total, batches = 0.0, 0
        for x, y in loader:
            with torch.no_grad():
                final, *activations = exits.backbone(x)
            loss = torch.zeros(())
            for head, activation in zip(exits.heads, activations, strict=True):
                logits = head(activation)
                term = F.cross_entropy(logits, y)
                if distill:
                    term = (1 - distill) * term + distill * distillation_loss(logits, final, temperature)
                loss = loss + term
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, batches = total + float(loss.detach()), batches + 1
        losses.append(total / max(batches, 1))
    exits.eval()
    return losses


@dataclass(frozen=True)
class ExitOutputs:
    """An `ExitModel`'s softmax outputs on a set of samples: the final output's, each exit's, the labels."""

    final: torch.Tensor
    exits: list[torch.Tensor]
    labels: torch.Tensor


def exit_outputs(exits: ExitModel, loader: Batches) -> ExitOutputs:
    """Run `loader` through `exits` once: what `calibrate_exits` and `exit_report` read (pass it to them to
    try many thresholds without running the model again)."""
    finals, per_exit, labels = [], [[] for _ in exits.at], []
    exits.eval()
    with torch.no_grad():
        for x, y in loader:
            final, logits = exits(x)
            finals.append(final.softmax(-1))
            for k, lg in enumerate(logits):
                per_exit[k].append(lg.softmax(-1))
            labels.append(y)
    return ExitOutputs(torch.cat(finals), [torch.cat(p) for p in per_exit], torch.cat(labels))


def _outputs(exits: ExitModel, data: Batches | ExitOutputs) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    out = data if isinstance(data, ExitOutputs) else exit_outputs(exits, data)
    return out.final, out.exits, out.labels


def _decide(
    final: torch.Tensor, exits: list[torch.Tensor], thresholds: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions with early exits, and where each input left (exit index, or len(exits) for the end)."""
    left = torch.full((final.shape[0],), len(exits), dtype=torch.long)
    prediction = final.argmax(-1)
    for k in reversed(range(len(thresholds))):  # the first confident exit wins: assign from the last one back
        confident = exits[k].max(-1).values >= thresholds[k]
        left = torch.where(confident, torch.tensor(k), left)
        prediction = torch.where(confident, exits[k].argmax(-1), prediction)
    return prediction, left


def calibrate_exits(
    exits: ExitModel, loader: Batches | ExitOutputs, max_drop: float = 0.005, confidence: float = 0.9
) -> list[float]:
    """Per exit, the lowest threshold on the top softmax probability that keeps the accuracy within `max_drop`
    of the final output's on `loader` (see the module docstring), with `confidence`: the drop measured on
    these samples is an estimate, so what must stay within `max_drop` is its one-sided upper bound at that
    confidence (the mean of the paired per-sample differences plus z standard errors; 0.5: the estimate
    itself). A threshold above 1 closes an exit."""
    if not 0.0 < confidence < 1.0:
        raise InvalidPlanError(f"confidence must be in (0, 1), got {confidence}")
    from scipy.stats import norm

    z = float(norm.ppf(confidence))
    final, probs, labels = _outputs(exits, loader)
    right = (final.argmax(-1) == labels).float()
    thresholds: list[float] = []
    for k in range(len(probs)):
        candidates = sorted(set(probs[k].max(-1).values.tolist())) + [1.01]
        chosen = 1.01
        for t in candidates:  # ascending: the first that holds lets the most inputs leave
            prediction, _ = _decide(final, probs[: k + 1], [*thresholds, t])
            lost = right - (prediction == labels).float()  # 1 where the exit got wrong what the end got right
            bound = float(lost.mean()) + z * float(lost.std(unbiased=True)) / len(lost) ** 0.5 if len(lost) > 1 else 0.0
            if bound <= max_drop:
                chosen = t
                break
        thresholds.append(chosen)
    return thresholds


@dataclass(frozen=True)
class ExitReport:
    """Early exits measured on a set of inputs."""

    thresholds: tuple[float, ...]
    exit_share: tuple[float, ...]  # per exit, the share of inputs leaving there (the rest run to the end)
    accuracy: float  # with exits
    final_accuracy: float  # the model's own
    macs: float  # per input on average, heads included
    full_macs: float  # per input without exits
    bytes_not_sent: tuple[float, ...]  # per exit's cut, per input on average

    def to_json(self) -> dict:
        return asdict(self)


def exit_report(exits: ExitModel, thresholds: Sequence[float], loader: Batches | ExitOutputs) -> ExitReport:
    """What the exits with `thresholds` do on `loader`'s inputs, or on outputs `exit_outputs` gave (see the
    module docstring)."""
    final, probs, labels = _outputs(exits, loader)
    prediction, left = _decide(final, probs, thresholds)
    n = len(labels)
    shares = [float((left == k).float().mean()) for k in range(len(thresholds))]
    macs = torch.full((n,), exits.total_macs + sum(exits.head_macs))
    for k in reversed(range(len(thresholds))):
        macs = torch.where(left == k, torch.tensor(exits.macs_to[k] + sum(exits.head_macs[: k + 1])), macs)
    # an input leaving at exit k is not sent on from any cut at or after k
    not_sent = [sum(shares[: k + 1]) * exits.cut_bytes[k] for k in range(len(thresholds))]
    return ExitReport(
        thresholds=tuple(thresholds),
        exit_share=tuple(shares),
        accuracy=float((prediction == labels).float().mean()),
        final_accuracy=float((final.argmax(-1) == labels).float().mean()),
        macs=float(macs.mean()),
        full_macs=exits.total_macs,
        bytes_not_sent=tuple(not_sent),
    )


def exit_plan(graph, exits: ExitModel) -> PartitionPlan:
    """A 2-part plan of `graph` (`build_graph(exits, inputs)`) cut at the first exit: the backbone up to the
    exit's op and the exit head on part 0, the rest on part 1. The model's outputs are (final logits, exit
    logits): part 0 makes the exit's, part 1 the final."""
    tap = _first_tap(graph, exits)
    first = {tap, *nx.ancestors(graph.nx, tap)} | _head_nodes(graph, "heads.")
    part = {n: 0 if n in first else 1 for n in graph.compute_nodes()}
    return PartitionPlan.from_assignment(part, "dag", graph=graph)


def _head_nodes(graph, prefix: str) -> set[str]:
    """Compute nodes run inside the modules under `prefix` (`heads.`: every exit head, `heads.0.`: the first)."""
    return {n for n in graph.compute_nodes() if f"{graph[n].get('module', '')}.".startswith(prefix)}


def _first_tap(graph, exits: ExitModel) -> str:
    """The node of `graph` whose output the first exit head reads."""
    heads = _head_nodes(graph, "heads.0.")
    sources = {u for n in heads for u in graph.nx.predecessors(n) if u not in heads}
    if len(sources) != 1:
        raise InvalidPlanError(f"cannot find where exit {exits.at[0]} reads the backbone (found {sorted(sources)})")
    return sources.pop()
