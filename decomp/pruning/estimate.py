"""What a structured pruning plan would cost, computed on the costed graph without pruning the model.

A search prices thousands of candidates; pruning each physically (Torch-Pruning, then tracing again)
takes seconds, this takes well under a millisecond on a resnet50-size graph. `Estimator(graph)` reads a
costed, group-annotated graph (`decomp.pruning.annotate_graph`) once and compiles a rule per op; then
`estimator(plan)` propagates a kept-channel fraction per tensor along the graph:

- a group's producer ops (node attribute `group`) output the share of the group's channels the plan
  keeps, counted as `apply_plan` would keep them (`kept_count` with the plan's `round_to`, the group's
  `slices` and `multiple`; heads for head groups);
- element-wise, normalisation, pooling, reshaping and indexing ops pass their input's fraction on; a
  multi-input element-wise op (a residual add) takes its widest same-shape input's; a concat averages
  its inputs' fractions weighted by their sizes along the concatenated dimension;
- a convolution or linear layer's MACs and weights scale by in-fraction x out-fraction, a depthwise
  convolution's (input and output in one group) by the fraction once, its bias and a norm's affine
  parameters by the out-fraction; a layer outside every group (a classifier) keeps its outputs;
- activation bytes (node `out_bytes`, edge `bytes`) scale by the tensor's fraction, measured op
  `seconds` by the op's MAC fraction (ops with MACs) or by the fraction of bytes it reads and writes.

Unstructured sparsity and N:M patterns in the plan leave dense costs as they are; `Estimate.
nonzero_params` counts the weights they zero. Limits: shapes stay those of the unpruned model (a
pruned graph's op signatures differ); an op that reduces over the channel dimension (a mean over
channels) passes the fraction on; a tensor split on its channels passes the whole tensor's fraction to
every piece; an attention score matrix between head-pruned tensors counts as pruned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import networkx as nx
import numpy as np

from decomp.errors import GraphError, InvalidPlanError
from decomp.graph import IO_OPS, ModelGraph
from decomp.pruning.plan import PruningPlan, parse_pattern

__all__ = ["Estimate", "Estimator", "estimate_pruned", "kept_fractions"]

_CONCAT = ("cat", "concat", "concatenate", "stack")
# rule codes: how an op's output fraction follows from its inputs
_FIXED, _GROUP, _PASS, _WIDEST, _CONCAT_RULE = range(5)


def kept_fractions(graph: ModelGraph, plan: PruningPlan) -> dict[str, float]:
    """Share of each group's channels (heads for head groups) `plan` keeps, exactly as `apply_plan`
    would count them; groups the plan leaves out keep everything (1.0)."""
    groups = graph.nx.graph.get("groups") or {}
    if plan.groups and not groups:
        raise GraphError(
            "the graph has no coupling groups; annotate it with "
            "decomp.pruning.annotate_graph(graph, find_groups(model, inputs)) first"
        )
    out = dict.fromkeys(groups, 1.0)
    for choice in plan.groups:
        group = groups.get(choice.group)
        if group is None:
            known = ", ".join(list(groups)[:6])
            raise InvalidPlanError(f"the model has no coupling group {choice.group!r} (groups: {known}, ...)")
        channels, slices = group["channels"], group.get("slices", 1)
        if choice.keep is not None:
            kept = len(choice.keep)
        else:
            width = channels // slices
            step = max(1, math.lcm(plan.round_to, group.get("multiple", 1)) // slices)
            kept = choice.kept_count(width, step) * slices
        out[choice.group] = kept / channels
    return out


@dataclass(frozen=True, eq=False)
class Estimate:
    """Costs of a pruned candidate. Arrays follow `Estimator.nodes` (every node, topological order) or
    `Estimator.edges`; values are floats (exact channel counts times per-channel costs)."""

    fractions: dict[str, float]  # kept share per group
    out_fraction: np.ndarray  # kept share of each node's output tensor(s)
    in_fraction: np.ndarray  # how much narrower each output's inputs get (weighted ops; 1 for depthwise)
    macs: np.ndarray
    params: np.ndarray
    param_bytes: np.ndarray
    out_bytes: np.ndarray
    edge_bytes: np.ndarray
    seconds: np.ndarray | None  # scaled measured op times, when the graph has them
    time_fraction: np.ndarray  # the factor `seconds` were scaled by
    nonzero_params: float  # parameters left nonzero after the plan's unstructured sparsity and N:M patterns

    @property
    def total_macs(self) -> float:
        return float(self.macs.sum())

    @property
    def total_params(self) -> float:
        return float(self.params.sum())

    @property
    def total_param_bytes(self) -> float:
        return float(self.param_bytes.sum())


class Estimator:
    """Compiled cost rules of one costed, group-annotated graph; call it with a plan for an `Estimate`."""

    def __init__(self, graph: ModelGraph) -> None:
        if graph.level != "op":
            raise GraphError("estimate pruning on the op graph, not a block graph (coarsen after estimating)")
        self.graph = graph
        g = graph.nx
        self.nodes = graph.order()
        self.index = {n: i for i, n in enumerate(self.nodes)}
        self.edges = [(u, v) for u, v in g.edges]
        self.groups = dict(g.graph.get("groups") or {})
        attr = lambda name: np.array([g.nodes[n].get(name, 0) or 0 for n in self.nodes], dtype=np.float64)  # noqa: E731
        self.base_macs, self.base_params = attr("macs"), attr("params")
        self.base_param_bytes, self.base_out_bytes = attr("param_bytes"), attr("out_bytes")
        self.base_edge_bytes = np.array([g.edges[e].get("bytes", 0) for e in self.edges], dtype=np.float64)
        self.edge_source = np.array([self.index[u] for u, _ in self.edges], dtype=np.intp)
        self.edge_target = np.array([self.index[v] for _, v in self.edges], dtype=np.intp)
        seconds = [g.nodes[n].get("seconds") for n in self.nodes]
        self.base_seconds = np.array([s or 0.0 for s in seconds]) if any(s is not None for s in seconds) else None
        self._compile()

    # -- construction ------------------------------------------------------------------------------
    def _inputs(self, node: str) -> list[str]:
        """Predecessors that pass a tensor (edges with a shape), in the order the graph lists them."""
        g = self.graph.nx
        return [u for u in g.predecessors(node) if g.edges[u, node].get("shape") is not None]

    def _compile(self) -> None:
        g = self.graph.nx
        n = len(self.nodes)
        sources: list[frozenset[str]] = [frozenset()] * n  # groups whose pruning reaches each tensor
        self.rules: list[tuple[int, int, object, float]] = []  # (node, code, operand, share)
        self.mac_factors: list[tuple[tuple[int, ...], str | None]] = [((), None)] * n
        self.weight_share = np.ones(n)  # share of a node's params that scale like its MACs (the rest: output)
        self.depthwise = np.zeros(n, dtype=bool)
        for i, name in enumerate(self.nodes):
            d = g.nodes[name]
            if d["op"] in IO_OPS or d.get("shape") is None:
                continue
            inputs = [self.index[u] for u in self._inputs(name)]
            merged = frozenset().union(*(sources[j] for j in inputs)) if inputs else frozenset()
            code, operand, share, src = self._rule(name, d, inputs, sources, merged)
            sources[i] = src
            if code != _FIXED:
                self.rules.append((i, code, operand, share))
            if d.get("macs", 0) > 0:
                self._mac_rule(i, name, d, code, inputs, sources)
        self._weight_layers()

    def _rule(self, name, d, inputs, sources, merged):
        group = d.get("group")
        info = self.groups.get(group) if group is not None else None
        has_macs = d.get("macs", 0) > 0
        if info is not None and (has_macs or not merged):
            if info.get("kind") == "heads" and group in merged:
                return _FIXED, None, 1.0, frozenset()  # a head group's consumer (output projection)
            return _GROUP, group, self._group_share(d, info), frozenset((group,))
        if has_macs and d.get("params", 0) > 0:
            return _FIXED, None, 1.0, frozenset()  # a layer outside every group keeps its outputs
        if not inputs:
            return _FIXED, None, 1.0, frozenset()
        if has_macs:  # parameter-free products (attention): pruned when every pruned operand is pruned alike
            pruned = [j for j in inputs if sources[j]]
            if pruned and all(sources[j] == sources[pruned[0]] for j in pruned):
                return _PASS, pruned[0], 1.0, sources[pruned[0]]
            return _FIXED, None, 1.0, frozenset()
        if len(inputs) == 1:
            return _PASS, inputs[0], 1.0, sources[inputs[0]]
        if d["kind"] in _CONCAT:
            return _CONCAT_RULE, self._concat_weights(name, inputs), 1.0, merged
        shape = d.get("shape")
        same = [j for j in inputs if self.graph.nx.edges[self.nodes[j], name].get("shape") == shape]
        return _WIDEST, tuple(same or inputs), 1.0, merged

    def _group_share(self, d, info) -> float:
        """Share of a producer's output channels that belong to its group (1 unless the group is narrower,
        as when only part of a layer's outputs is coupled)."""
        dim = self._channel_dim(d)
        if dim is None or info.get("kind") == "heads":
            return 1.0
        width = d["shape"][dim]
        return min(1.0, info["channels"] / width) if width else 1.0

    @staticmethod
    def _channel_dim(d) -> int | None:
        """The output dimension a weighted op's channels lie on (None for ops without MACs or unknown kinds)."""
        shape, kind = d.get("shape"), str(d.get("kind", ""))
        if not shape or not isinstance(shape[0], int) or d.get("macs", 0) <= 0:
            return None
        if kind == "Conv1D" or kind.lower() in ("linear", "addmm"):  # transformers' Conv1D is a linear layer
            return len(shape) - 1
        if kind.lower().startswith("conv") and len(shape) >= 2:
            return 1
        return None

    def _concat_weights(self, name: str, inputs: list[int]) -> tuple[tuple[int, float], ...]:
        g = self.graph.nx
        out = g.nodes[name]["shape"]
        shapes = [g.edges[self.nodes[j], name]["shape"] for j in inputs]
        dims = [
            k
            for k in range(len(out))
            if all(isinstance(s, list) and len(s) == len(out) for s in shapes) and any(s[k] != out[k] for s in shapes)
        ]
        if len(dims) == 1:
            return tuple((j, float(s[dims[0]])) for j, s in zip(inputs, shapes, strict=True))
        return tuple((j, 1.0) for j in inputs)  # stacked or unknown: equal weights

    def _mac_rule(self, i: int, name: str, d, code: int, inputs: list[int], sources) -> None:
        """Which fractions an op's MACs scale by: its distinct input tensors' and its output group's."""
        reps: list[int] = []
        for j in inputs:
            if sources[j] and all(sources[j] != sources[r] for r in reps):
                reps.append(j)
        group = d.get("group") if code == _GROUP else None
        if group is not None and any(group in sources[j] for j in reps) and self._grouped_conv(name, d):
            self.depthwise[i] = True
            self.mac_factors[i] = ((), group)
            return
        if code == _PASS and d.get("params", 0) == 0:  # parameter-free product: the shared fraction, once
            self.mac_factors[i] = (tuple(reps[:1]), None)
            return
        self.mac_factors[i] = (tuple(reps), group)

    def _grouped_conv(self, name: str, d) -> bool:
        """A convolution whose every output reads fewer than all input channels (depthwise or grouped)."""
        if self._channel_dim(d) != 1 or not d.get("shape"):
            return False
        inputs = self._inputs(name)
        shape = self.graph.nx.edges[inputs[0], name]["shape"] if inputs else None
        if not shape or len(shape) < 2:
            return False
        per_output = d["macs"] / math.prod(d["shape"])
        return per_output < shape[1] or per_output % shape[1] != 0

    def _weight_layers(self) -> None:
        """Split each weighted op's parameters into weights (scale like MACs) and the rest (bias: like the
        output), from MACs = outputs x inputs per output: weights = MACs x out-channels / output size."""
        g = self.graph.nx
        self.layer_nodes: dict[str, list[int]] = {}
        self.inputs_per_output = np.zeros(len(self.nodes))
        for i, name in enumerate(self.nodes):
            d = g.nodes[name]
            dim = self._channel_dim(d)
            if dim is None or not d.get("params"):
                if d.get("params") and d.get("macs", 0) == 0:
                    self.weight_share[i] = 0.0  # norms, embeddings: per-channel parameters
                continue
            numel = math.prod(d["shape"])
            weights = d["macs"] * d["shape"][dim] / numel
            bias = d["params"] - weights
            if bias in (0, d["shape"][dim]):
                self.weight_share[i] = weights / d["params"]
                self.inputs_per_output[i] = d["macs"] / numel
                self.layer_nodes.setdefault(d["module"], []).append(i)

    # -- evaluation --------------------------------------------------------------------------------
    def __call__(self, plan: PruningPlan) -> Estimate:
        fractions = kept_fractions(self.graph, plan)
        frac = [1.0] * len(self.nodes)
        for i, code, operand, share in self.rules:
            if code == _GROUP:
                frac[i] = 1.0 - share * (1.0 - fractions[operand])
            elif code == _PASS:
                frac[i] = frac[operand]
            elif code == _WIDEST:
                frac[i] = max(frac[j] for j in operand)
            else:
                frac[i] = sum(frac[j] * w for j, w in operand) / sum(w for _, w in operand)
        out = np.array(frac)
        inner = np.ones(len(self.nodes))
        mac = np.ones(len(self.nodes))
        for i, (factors, group) in enumerate(self.mac_factors):
            if factors or group is not None:
                inner[i] = math.prod(frac[j] for j in factors)
                mac[i] = inner[i] * (frac[i] if group is not None else 1.0)
        param_frac = self.weight_share * mac + (1.0 - self.weight_share) * out
        edge_bytes = self.base_edge_bytes * out[self.edge_source]
        out_bytes = self.base_out_bytes * out
        time_fraction = self._time_fraction(mac, out_bytes, edge_bytes)
        params = self.base_params * param_frac
        return Estimate(
            fractions=fractions,
            out_fraction=out,
            in_fraction=inner,
            macs=self.base_macs * mac,
            params=params,
            param_bytes=self.base_param_bytes * param_frac,
            out_bytes=out_bytes,
            edge_bytes=edge_bytes,
            seconds=None if self.base_seconds is None else self.base_seconds * time_fraction,
            time_fraction=time_fraction,
            nonzero_params=float(params.sum()) - self._zeroed(plan, mac),
        )

    def _time_fraction(self, mac: np.ndarray, out_bytes: np.ndarray, edge_bytes: np.ndarray) -> np.ndarray:
        n = len(self.nodes)
        moved = out_bytes + np.bincount(self.edge_target, weights=edge_bytes, minlength=n)
        base = self.base_out_bytes + np.bincount(self.edge_target, weights=self.base_edge_bytes, minlength=n)
        by_bytes = np.divide(moved, base, out=np.ones(n), where=base > 0)
        return np.where(self.base_macs > 0, mac, by_bytes)

    def _zeroed(self, plan: PruningPlan, mac: np.ndarray) -> float:
        """Weights the plan's unstructured sparsity and N:M patterns set to zero (after channel removal)."""
        zeroed = 0.0
        for item in plan.layers:
            nodes = self.layer_nodes.get(item.layer)
            if not nodes:
                raise InvalidPlanError(f"the graph has no weighted op of layer {item.layer!r} to sparsify")
            if item.sparsity is not None:
                share = item.sparsity
            else:
                n, m = parse_pattern(item.pattern)
                share = 1.0 - n / m
            zeroed += share * sum(self.base_params[i] * self.weight_share[i] * mac[i] for i in nodes)
        return zeroed

    def pruned_inputs_per_output(self, estimate: Estimate, layer: str) -> int:
        """How many inputs each output of `layer` reads after channel pruning (what an N:M pattern groups)."""
        nodes = self.layer_nodes.get(layer)
        if not nodes:
            raise InvalidPlanError(f"the graph has no weighted op of layer {layer!r}")
        i = nodes[0]
        return int(round(self.inputs_per_output[i] * estimate.in_fraction[i]))

    # -- a scaled graph ----------------------------------------------------------------------------
    def graph_of(self, estimate: Estimate) -> ModelGraph:
        """A copy of the graph with the estimate's costs on it (ints, as a traced graph holds them)."""
        g = nx.DiGraph(self.graph.nx)
        nodes = g.nodes
        for i, name in enumerate(self.nodes):
            d = nodes[name]  # nx.DiGraph(graph) copied the attribute dicts
            d["macs"], d["params"] = round(estimate.macs[i]), round(estimate.params[i])
            d["param_bytes"], d["out_bytes"] = round(estimate.param_bytes[i]), round(estimate.out_bytes[i])
            if estimate.seconds is not None and "seconds" in d:
                d["seconds"] = float(estimate.seconds[i])
        for k, (u, v) in enumerate(self.edges):
            g.edges[u, v]["bytes"] = round(estimate.edge_bytes[k])
        g.graph["totals"] = {
            "params": sum(d["params"] for _, d in g.nodes(data=True)),
            "macs": sum(d["macs"] for _, d in g.nodes(data=True)),
            "activation_bytes": sum(d["out_bytes"] for _, d in g.nodes(data=True) if d["op"] not in IO_OPS),
        }
        return ModelGraph(g)


def estimate_pruned(graph: ModelGraph, plan: PruningPlan) -> ModelGraph:
    """A copy of `graph` costed as the model pruned by `plan` would be (see the module docstring). For
    many plans on one graph, build an `Estimator` once and call it."""
    estimator = Estimator(graph)
    return estimator.graph_of(estimator(plan))
