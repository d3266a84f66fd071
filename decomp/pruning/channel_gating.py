"""Input-dependent channel gating: runtime dynamic pruning (Feature Boosting and Suppression, Gao et al.,
ICLR 2019; Runtime Neural Pruning, Lin et al., NeurIPS 2017). Per input, a cheap predictor decides which
output channels of a convolution take part; the channels it switches off are neither computed by that
layer nor read by the next one.

A gated *site* is a Conv2d (the producer) whose output runs through per-channel ops only (BatchNorm,
elementwise activations, pooling, dropout) into exactly one Conv2d (the consumer), both ungrouped. Its
gate reads the producer's input: global average pool, Linear, ReLU give a saliency per output channel
(s >= 0); at most the `keep` share of channels with the largest saliencies stay open (gate 1), the rest
are multiplied by 0 where the consumer reads them (so any per-channel op between is exact); a saliency of
0 closes a channel too, so the channels open may vary per input below the cap. The gates start out
ranking channels by their filter's L1 norm (what static L1 pruning keeps) plus a term of the input, and
learn both in training (Feature Boosting and Suppression scales each channel by its saliency; here the gate is a pure
selection and the saliency gets the gradient straight through, which trained better on our benchmark).

- `GatedModel(model, example_inputs, keep, layers=None)`: the model traced with torch.fx with a gate per
  site (`layers`: producer module names; default every eligible site). Its forward computes every channel
  and zeroes the gated ones ("mask" form): it trains, traces, splits and exports like any model.
- `GatedModel.sliced(x)`: the same outputs, computing per input only the channels its gates keep (the
  producer's weight rows and BatchNorm entries, the consumer's weight columns sliced; batch 1 on CPU is
  where this pays).
- `train_gates(gated, loader, config, penalty)`: backbone and gates trained together (FBS), with an L1
  penalty on the saliencies driving more of them to 0.
- `gating_report(gated, loader)`: measured on the sliced form, per input: MACs (counted by
  `torch.utils.flop_counter` on what actually ran), the accuracy, whether the predictions equal the mask
  form's, and per site the mean channels kept and the bytes of its activation with only those channels.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from decomp.errors import InvalidPlanError
from decomp.pruning.train import Callback, TrainConfig, train
from decomp.tracing import per_channel, trace

__all__ = ["ChannelGate", "GatedModel", "GatingReport", "gating_report", "train_gates"]

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]

# per-channel ops a gated site may have between its two convolutions, beyond the elementwise ones
_SITE_MODULES = (nn.BatchNorm2d, nn.Dropout2d, nn.MaxPool2d, nn.AvgPool2d)
_SITE_FUNCTIONS = frozenset({F.max_pool2d, F.avg_pool2d})


class ChannelGate(nn.Module):
    """Saliency per output channel from the producer's input (pool, Linear, ReLU); the gate is 1 on the `keep`
    largest saliencies (ties and zeros aside) and 0 elsewhere. Training passes the gradient of the gate's
    value to the saliencies as if the gate were 1 + s - s (straight-through), so the predictor learns which
    channels to open while what a kept channel carries stays the layer's own output."""

    def __init__(self, inputs: int, channels: int, keep: int, importance: torch.Tensor | None = None) -> None:
        super().__init__()
        self.keep = keep
        self.fc = nn.Linear(inputs, channels)
        with torch.no_grad():  # at first ranked by `importance` (mean 1) moved by the input (PyTorch's init)
            self.fc.bias.copy_(importance / importance.mean() if importance is not None else torch.ones(channels))
        self.saliency: torch.Tensor | None = None  # the last training batch's, for the L1 penalty

    def train(self, mode: bool = True) -> ChannelGate:
        if not mode:
            self.saliency = None  # a training batch's graph is not kept past training (nor deep-copied)
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decide(x.mean(dim=(2, 3)))

    def decide(self, pooled: torch.Tensor) -> torch.Tensor:
        """The gate from the input's channel means (batch, inputs)."""
        s = F.relu(self.fc(pooled))
        top = s.topk(self.keep, dim=1).indices
        open_ = torch.zeros_like(s).scatter(1, top, 1.0) * (s > 0)
        if self.training:
            self.saliency = s
            return open_ * (1.0 + s - s.detach())
        return open_


@dataclass(frozen=True)
class _Site:
    producer: str  # fx node names
    chain: tuple[str, ...]
    consumer: str
    gate: str = ""
    multiply: str = ""


def _plain_conv(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    m = modules.get(node.target) if node.op == "call_module" else None
    return isinstance(m, nn.Conv2d) and m.groups == 1 and m.padding_mode == "zeros" and len(node.args) == 1


def _sites(gm: fx.GraphModule) -> tuple[dict[str, _Site], dict[str, str]]:
    """Eligible sites by producer module name, and why each other Conv2d is not one."""
    modules = dict(gm.named_modules())
    sites, refused = {}, {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.Conv2d):
            continue
        if not _plain_conv(node, modules):
            refused[node.target] = "grouped, or padded other than with zeros"
            continue
        chain, last = [], node
        while len(last.users) == 1 and per_channel(next(iter(last.users)), gm, _SITE_MODULES, _SITE_FUNCTIONS):
            last = next(iter(last.users))
            chain.append(last.name)
        users = list(last.users)
        if len(users) != 1 or not _plain_conv(users[0], modules):
            seen = ", ".join(u.name for u in users) or "nothing"
            refused[node.target] = f"its output (after per-channel ops) feeds {seen}, not one ungrouped Conv2d"
            continue
        sites[node.target] = _Site(node.name, tuple(chain), users[0].name)
    return sites, refused


class GatedModel(nn.Module):
    """`model` with a `ChannelGate` per site (see the module docstring); forward is the mask form."""

    def __init__(
        self,
        model: nn.Module,
        example_inputs: tuple[torch.Tensor, ...],
        keep: float,
        layers: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 < keep <= 1.0:
            raise InvalidPlanError(f"keep must be in (0, 1], got {keep}")
        inputs = tuple(example_inputs)
        if len(inputs) != 1:
            raise InvalidPlanError(f"channel gates take models of one input; this one takes {len(inputs)}")
        was_training = model.training
        gm = trace(model.eval(), inputs, tracer="fx")
        model.train(was_training)
        found, refused = _sites(gm)
        names = list(found) if layers is None else list(layers)
        wrong = {n: refused.get(n, "no Conv2d of that name") for n in names if n not in found}
        if wrong or not names:
            why = "; ".join(f"{n}: {r}" for n, r in wrong.items()) or "the model has no eligible site"
            raise InvalidPlanError(
                f"cannot gate {why}. Gate a Conv2d whose output runs through per-channel ops (BatchNorm, "
                f"activations, pooling) into one ungrouped Conv2d; eligible here: {', '.join(found) or 'none'}"
            )
        nodes = {n.name: n for n in gm.graph.nodes}
        modules = dict(gm.named_modules())
        self.keep = keep
        self.sites: list[_Site] = []
        for k, name in enumerate(names):
            site = found[name]
            producer = nodes[site.producer]
            conv = modules[producer.target]
            gate_name = f"gate_{k}"
            importance = conv.weight.detach().abs().flatten(1).sum(1)  # L1 of each output channel's filter
            width = max(1, round(keep * conv.out_channels))
            gm.add_submodule(gate_name, ChannelGate(conv.in_channels, conv.out_channels, width, importance))
            with gm.graph.inserting_before(producer):
                gate = gm.graph.call_module(gate_name, (producer.args[0],))
            last = nodes[site.chain[-1]] if site.chain else producer
            with gm.graph.inserting_after(last):
                view = gm.graph.call_function(operator.getitem, (gate, (slice(None), slice(None), None, None)))
            with gm.graph.inserting_after(view):
                multiply = gm.graph.call_function(torch.mul, (last, view))
            last.replace_all_uses_with(multiply, delete_user_cb=lambda user, m=multiply: user is not m)
            self.sites.append(_Site(site.producer, site.chain, site.consumer, gate.name, multiply.name))
        gm.graph.lint()
        gm.recompile()
        self.layers = tuple(names)
        self.backbone = gm

    def forward(self, x: torch.Tensor):
        return self.backbone(x)

    def gates(self) -> list[ChannelGate]:
        return [self.backbone.get_submodule(f"gate_{k}") for k in range(len(self.sites))]

    @torch.no_grad()
    def sliced(self, x: torch.Tensor):
        """The outputs computed input by input with only the kept channels (eval mode)."""
        if self.training:
            raise InvalidPlanError("the sliced form runs in eval mode; call .eval() first")
        return torch.cat([_Sliced(self).run(x[i : i + 1]) for i in range(x.shape[0])])


class _Compact:
    """A (1, channels, ...) activation holding only the channels listed (of its dense dim 1)."""

    __slots__ = ("tensor", "channels")

    def __init__(self, tensor: torch.Tensor, channels: torch.Tensor) -> None:
        self.tensor, self.channels = tensor, channels


def _conv(conv: nn.Conv2d, x: torch.Tensor, rows: torch.Tensor | None, columns: torch.Tensor | None) -> torch.Tensor:
    weight, bias = conv.weight, conv.bias
    if rows is not None:
        weight, bias = weight[rows], (bias[rows] if bias is not None else None)
    if columns is not None:
        weight = weight[:, columns]
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation)


class _Sliced(fx.Interpreter):
    """Runs a `GatedModel`'s graph on one input with its sites' activations compact."""

    def __init__(self, gated: GatedModel) -> None:
        super().__init__(gated.backbone)
        self.modules = dict(gated.backbone.named_modules())
        self.roles: dict[str, tuple[str, _Site]] = {}
        for site in gated.sites:
            self.roles.setdefault(site.consumer, ("consumer", site))
            self.roles[site.producer] = ("producer", site)  # a consumer may produce the next site
            self.roles.update((c, ("chain", site)) for c in site.chain)
            self.roles[site.multiply] = ("multiply", site)
            self.roles[site.gate] = ("gate", site)
        self.nodes = {n.name: n for n in gated.backbone.graph.nodes}
        self.kept: dict[str, torch.Tensor] = {}  # per site: the channels its gate opened
        self.compact_bytes: dict[str, int] = {}  # per site: its gated activation, the open channels only
        self.dense_bytes: dict[str, int] = {}  # and with every channel

    def run_node(self, n: fx.Node):
        role = self.roles.get(n.name)
        if role is None:
            return super().run_node(n)
        kind, site = role
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        x = args[0]
        columns = x.channels if isinstance(x, _Compact) else None
        tensor = x.tensor if isinstance(x, _Compact) else x
        if kind == "gate":  # reads the producer's input; channels a compact input lacks have mean 0
            gate, pooled = self.modules[n.target], tensor.mean(dim=(2, 3))
            if columns is not None:
                pooled = pooled.new_zeros(1, gate.fc.in_features).index_copy(1, columns, pooled)
            return gate.decide(pooled)
        if kind == "producer":
            gate = self.env[self.nodes[site.gate]][0]
            rows = gate.nonzero().flatten()
            if rows.numel() == 0:  # every gate closed: compute one channel, multiplied by 0 below
                rows = torch.zeros(1, dtype=torch.long)
            self.kept[site.producer] = gate != 0
            return _Compact(_conv(self.modules[n.target], tensor, rows, columns), rows)
        if kind == "consumer":
            return _conv(self.modules[n.target], tensor, None, columns)
        if kind == "multiply":
            out = tensor * args[1][:, columns]
            self.compact_bytes[site.producer] = out.element_size() * out[0].numel()
            self.dense_bytes[site.producer] = self.compact_bytes[site.producer] // len(columns) * args[1].shape[1]
            return _Compact(out, columns)
        if n.op == "call_module" and isinstance(self.modules[n.target], nn.BatchNorm2d):
            bn = self.modules[n.target]
            out = F.batch_norm(
                tensor,
                bn.running_mean[columns],
                bn.running_var[columns],
                bn.weight[columns],
                bn.bias[columns],
                False,
                0.0,
                bn.eps,
            )
        elif n.op == "call_module":
            out = self.modules[n.target](tensor)
        elif n.op == "call_function":
            out = n.target(tensor, *args[1:], **kwargs)
        else:
            out = getattr(tensor, n.target)(*args[1:], **kwargs)
        return _Compact(out, columns)


class _SaliencyPenalty(Callback):
    def __init__(self, gated: GatedModel, penalty: float) -> None:
        self.gated, self.weight = gated, penalty

    def penalty(self) -> torch.Tensor | float:
        terms = [g.saliency.abs().mean() for g in self.gated.gates() if g.saliency is not None]
        return self.weight * sum(terms) if terms else 0.0


def train_gates(
    gated: GatedModel, loader: Batches, config: TrainConfig | None = None, penalty: float = 1e-3
) -> list[float]:
    """Train the backbone and the gates together (cross-entropy plus `penalty` x mean saliency per gate);
    mean loss per epoch."""
    if penalty < 0:
        raise InvalidPlanError(f"penalty must be >= 0, got {penalty}")
    return train(gated, loader, config or TrainConfig(), callbacks=[_SaliencyPenalty(gated, penalty)])


@dataclass(frozen=True)
class GatingReport:
    """A `GatedModel` measured input by input on its sliced form."""

    keep: float
    accuracy: float
    macs: float  # per input, mean, as counted on what ran (gates included)
    dense_macs: float  # per input, the model without gates
    same_as_mask: float  # share of inputs whose sliced prediction equals the mask form's
    channels: dict[str, tuple[float, int, int]]  # per site: mean channels open, channels open for some input, width
    bytes: dict[str, tuple[float, int]]  # per site: mean bytes of its activation with the kept channels, dense

    def to_json(self) -> dict:
        return asdict(self)


def _macs(fn, *args) -> tuple[object, float]:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        out = fn(*args)
    return out, counter.get_total_flops() / 2


@torch.no_grad()
def gating_report(gated: GatedModel, loader: Batches, dense: nn.Module | None = None) -> GatingReport:
    """Run `loader`'s inputs one by one through the sliced form (see the module docstring). `dense`: the model
    whose MACs per input are reported beside (default: the traced model with the gates taken out)."""
    gated.eval()
    correct = same = seen = 0
    macs = 0.0
    kept = {s.producer: 0.0 for s in gated.sites}
    ever = {s.producer: None for s in gated.sites}
    sent = {s.producer: 0.0 for s in gated.sites}
    dense_bytes: dict[str, int] = {}
    dense_macs = None
    for x, y in loader:
        masked = gated(x).argmax(-1)
        for i in range(x.shape[0]):
            run = _Sliced(gated)
            out, counted = _macs(run.run, x[i : i + 1])
            macs += counted
            prediction = int(out.argmax(-1))
            correct += prediction == int(y[i])
            same += prediction == int(masked[i])
            for p in kept:
                kept[p] += int(run.kept[p].sum())
                ever[p] = run.kept[p] if ever[p] is None else ever[p] | run.kept[p]
                sent[p] += run.compact_bytes[p]
            dense_bytes = run.dense_bytes
            seen += 1
        if dense_macs is None:
            reference = dense if dense is not None else _without_gates(gated)
            dense_macs = _macs(reference, x[:1])[1]
    if not seen:
        raise InvalidPlanError("gating_report needs at least one input")
    modules = dict(gated.backbone.named_modules())
    nodes = {n.name: n for n in gated.backbone.graph.nodes}
    channels, sizes = {}, {}
    for s in gated.sites:
        name = nodes[s.producer].target
        channels[name] = (kept[s.producer] / seen, int(ever[s.producer].sum()), modules[name].out_channels)
        sizes[name] = (sent[s.producer] / seen, dense_bytes[s.producer])
    return GatingReport(
        keep=gated.keep,
        accuracy=correct / seen,
        macs=macs / seen,
        dense_macs=float(dense_macs),
        same_as_mask=same / seen,
        channels=channels,
        bytes=sizes,
    )


def _without_gates(gated: GatedModel) -> nn.Module:
    """The traced model with the gates and their multiplies taken out (what the model costs ungated)."""
    import copy

    gm = copy.deepcopy(gated.backbone)
    nodes = {n.name: n for n in gm.graph.nodes}
    for s in gated.sites:
        multiply = nodes[s.multiply]
        view = multiply.args[1]
        multiply.replace_all_uses_with(multiply.args[0])
        gm.graph.erase_node(multiply)
        gm.graph.erase_node(view)
        gm.graph.erase_node(nodes[s.gate])
    gm.recompile()
    return gm
