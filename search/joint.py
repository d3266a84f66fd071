"""The joint search space: how much of each coupling group to keep, which layers take an N:M pattern,
and how the model is split over devices, as one genome.

Genes (names as `Space.names` lists them; fixed choices get no gene):

- pruning, `encoding="per_group"`: `keep:<group>`, an index into `levels` (keep ratios, most kept
  first) per coupling group, in topological order. Hundreds of groups make hundreds of dimensions,
  which Bayesian and evolutionary samplers handle poorly, so `encoding="compact"` has `keep`, one
  global level index, plus `offset:<s>` in [-offset, offset] per stage, a stage being a contiguous
  span of groups in topological order; a group's level is the global one plus its stage's offset,
  clamped to the levels. `levels=(1.0,)` (or any single level) fixes pruning: only the partition is
  searched.
- N:M, with `nm_pattern` (e.g. '2:4'): `nm:<layer>` on/off per weighted layer whose inputs per output
  are a multiple of M. After channel pruning a layer whose inputs per output are no longer a multiple
  of M stays dense (the gene is ignored).
- partition: `parts` in [min_parts, max_parts] (no gene when they are equal). Pipeline mode:
  `cut:<i>` floats in [0, 1] for i < max_parts - 1, positions along the topological order of compute
  nodes; with k parts the first k - 1 are used, sorted, each stage non-empty. DAG mode: `part:<block>`
  integers per block of the coarsened graph (`decomp.coarsen`), taken modulo the part count, made
  acyclic by `decomp.partition.plan.repair` and renumbered by first appearance; a DAG plan may end
  with fewer parts than asked when repair merges some. With `partitioner="dp"` (pipeline mode: a
  bi-level search) there are no cut genes: each candidate's cuts are the optimal pipeline of its
  pruned costs (`decomp.partition.baselines.pipeline_cuts`: least bottleneck, then fewest bytes).

`repair` writes what decoding will use back into the genome (sorted cuts, exact cut positions, the
repaired and renumbered block parts), so `decode(repair(g))` is the plan `repair` settled on and
`repair(repair(g)) == repair(g)`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import networkx as nx
import numpy as np

from decomp.coarsen import coarsen
from decomp.errors import SearchError
from decomp.graph import ModelGraph
from decomp.partition.baselines import StageCost, pipeline_cuts, received_matrix
from decomp.partition.plan import PartitionPlan, expand, quotient, repair
from decomp.pruning.estimate import Estimator
from decomp.pruning.plan import CRITERIA, GroupChoice, LayerSparsity, PruningPlan, parse_pattern
from search.records import Gene
from search.space import Genome, Space

__all__ = ["DEFAULT_LEVELS", "ENCODINGS", "PARTITIONERS", "PARTITION_MODES", "JointConfig", "JointSpace"]

DEFAULT_LEVELS = (1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25)
ENCODINGS = ("per_group", "compact")
PARTITION_MODES = ("pipeline", "dag")
PARTITIONERS = ("genes", "dp")


@dataclass(frozen=True)
class JointConfig:
    """How a `JointSpace` is laid out (see the module docstring). `max_parts` defaults to the device
    count; `stages` and `offset` shape the compact encoding; `blocks` is the DAG mode's block count;
    `round_to` and `criterion` go into every decoded `PruningPlan`."""

    levels: tuple[float, ...] = DEFAULT_LEVELS
    encoding: str = "per_group"
    stages: int = 4
    offset: int = 2
    nm_pattern: str | None = None
    min_parts: int = 1
    max_parts: int | None = None
    mode: str = "pipeline"
    blocks: int = 16
    round_to: int = 1
    criterion: str = "l1"
    partitioner: str = "genes"

    def __post_init__(self) -> None:
        levels = tuple(sorted({float(v) for v in self.levels}, reverse=True))
        if not levels or not all(0.0 < v <= 1.0 for v in levels):
            raise SearchError(f"keep levels must be in (0, 1], got {self.levels}; e.g. (1.0, 0.75, 0.5)")
        object.__setattr__(self, "levels", levels)
        if self.encoding not in ENCODINGS:
            raise SearchError(f"unknown pruning encoding {self.encoding!r}; choose one of {', '.join(ENCODINGS)}")
        if self.mode not in PARTITION_MODES:
            raise SearchError(f"unknown partition mode {self.mode!r}; choose one of {', '.join(PARTITION_MODES)}")
        if self.stages < 1 or self.offset < 0 or self.blocks < 1:
            raise SearchError(
                f"need stages >= 1, offset >= 0 and blocks >= 1, got {self.stages}, {self.offset}, {self.blocks}"
            )
        if self.min_parts < 1 or (self.max_parts is not None and self.max_parts < self.min_parts):
            raise SearchError(f"need 1 <= min_parts <= max_parts, got {self.min_parts} and {self.max_parts}")
        if self.nm_pattern is not None:
            parse_pattern(self.nm_pattern)
        if self.criterion not in CRITERIA:
            raise SearchError(f"unknown criterion {self.criterion!r}; choose one of {', '.join(CRITERIA)}")
        if self.round_to < 1:
            raise SearchError(f"round_to must be >= 1, got {self.round_to}")
        if self.partitioner not in PARTITIONERS:
            raise SearchError(f"unknown partitioner {self.partitioner!r}; choose one of {', '.join(PARTITIONERS)}")
        if self.partitioner == "dp" and self.mode != "pipeline":
            raise SearchError("the dp partitioner cuts pipelines; for mode 'dag' use partitioner 'genes'")


class JointSpace(Space):
    """Pruning x partition genomes over one costed, group-annotated op graph and `devices` devices."""

    def __init__(self, graph: ModelGraph, devices: int, config: JointConfig = JointConfig()) -> None:
        if graph.level != "op":
            raise SearchError("build the joint space on the op graph; it coarsens for DAG mode itself")
        if devices < 1:
            raise SearchError(f"devices must be >= 1, got {devices}")
        self.graph, self.config, self.devices = graph, config, devices
        self.nodes = graph.compute_nodes()
        self.max_parts = config.max_parts or devices
        if self.max_parts > devices or config.min_parts > self.max_parts:
            raise SearchError(
                f"parts must lie in 1..{devices} (the devices), got min_parts={config.min_parts}, "
                f"max_parts={self.max_parts}"
            )
        self.estimator = Estimator(graph)
        self.dp = config.partitioner == "dp"
        self.cut_genes = config.mode == "pipeline" and not self.dp  # pipeline cuts searched as genes
        self.searched = len(config.levels) > 1  # one level: pruning fixed, no pruning genes
        self.groups = self._ordered_groups() if self.searched or config.levels[0] < 1.0 else []
        self.stages = _spans(self.groups, config.stages)
        self.nm_layers = self._nm_layers()
        self.blocks = None
        if config.mode == "dag" and self.max_parts > 1:
            self.blocks = coarsen(graph, blocks=min(config.blocks, len(self.nodes)))
            self.block_names = self.blocks.compute_nodes()
        if self.max_parts > (len(self.block_names) if self.blocks is not None else len(self.nodes)):
            raise SearchError(f"cannot split the graph into {self.max_parts} parts; it has too few ops or blocks")
        super().__init__(self._genes())
        self._at = {name: i for i, name in enumerate(self.names)}

    # -- layout ------------------------------------------------------------------------------------
    def _ordered_groups(self) -> list[str]:
        groups = self.graph.nx.graph.get("groups") or {}
        if not groups:
            raise SearchError(
                "the graph has no coupling groups to prune; annotate it with decomp.pruning.annotate_graph"
                "(graph, find_groups(model, inputs)), or give levels=(1.0,) to search partitions only"
            )
        first: dict[str, float] = dict.fromkeys(groups, math.inf)  # groups no op names keep their order
        for position, name in enumerate(self.graph.order()):
            group = self.graph[name].get("group")
            if group in groups:
                first[group] = min(first[group], position)
        return sorted(groups, key=first.__getitem__)  # a stable sort

    def _nm_layers(self) -> list[str]:
        if self.config.nm_pattern is None:
            return []
        _, m = parse_pattern(self.config.nm_pattern)
        est = self.estimator
        return [
            layer
            for layer, nodes in est.layer_nodes.items()
            if not any(est.depthwise[i] for i in nodes) and est.inputs_per_output[nodes[0]] % m == 0
        ]

    def _genes(self) -> list[Gene]:
        top = len(self.config.levels) - 1
        genes: list[Gene] = []
        if self.searched and self.config.encoding == "per_group":
            genes += [Gene(f"keep:{g}", 0, top, integer=True) for g in self.groups]
        elif self.searched:
            genes.append(Gene("keep", 0, top, integer=True))
            if self.config.offset > 0 and len(self.stages) > 1:
                r = self.config.offset
                genes += [Gene(f"offset:{s}", -r, r, integer=True) for s in range(len(self.stages))]
        genes += [Gene(f"nm:{layer}", 0, 1, integer=True) for layer in self.nm_layers]
        if self.config.min_parts < self.max_parts:
            genes.append(Gene("parts", self.config.min_parts, self.max_parts, integer=True))
        if self.max_parts > 1 and self.cut_genes:
            genes += [Gene(f"cut:{i}", 0.0, 1.0) for i in range(self.max_parts - 1)]
        elif self.max_parts > 1 and self.blocks is not None:
            genes += [Gene(f"part:{b}", 0, self.max_parts - 1, integer=True) for b in self.block_names]
        return genes

    def _value(self, genome: Sequence[float], name: str, default: float) -> float:
        i = self._at.get(name)
        return default if i is None else genome[i]

    def _parts(self, genome: Sequence[float]) -> int:
        return int(self._value(genome, "parts", self.max_parts))

    # -- repair ------------------------------------------------------------------------------------
    def repair(self, genome: Sequence[float]) -> Genome:
        """Clip, then make the partition genes say exactly what decoding will use."""
        genome = list(self.clip(genome))
        k = self._parts(genome)
        if self.cut_genes:
            self._repair_cuts(genome, k)
        elif self.blocks is not None and self.max_parts > 1:
            plan = self._block_plan(genome, k)
            part = plan.part_of()
            for b in self.block_names:
                genome[self._at[f"part:{b}"]] = part[b]
            if "parts" in self._at:
                genome[self._at["parts"]] = self.genes[self._at["parts"]].clip(plan.parts)
        return tuple(genome)

    def _cut_positions(self, genome: Sequence[float], k: int) -> list[int]:
        """The k - 1 active cuts as strictly increasing positions in 1..N-1."""
        n = len(self.nodes)
        wanted = sorted(math.floor(genome[self._at[f"cut:{i}"]] * n + 0.5) for i in range(k - 1))
        positions: list[int] = []
        for i, p in enumerate(wanted):  # at least one node per stage, room for the stages after
            positions.append(min(max(p, positions[-1] + 1 if positions else 1), n - (k - 1 - i)))
        return positions

    def _repair_cuts(self, genome: list[float], k: int) -> None:
        for i, p in enumerate(self._cut_positions(genome, k)):
            genome[self._at[f"cut:{i}"]] = p / len(self.nodes)

    def _block_plan(self, genome: Sequence[float], k: int) -> PartitionPlan:
        """Blocks -> parts (labels modulo k), repaired when the parts form a cycle, renumbered."""
        labels = {b: int(genome[self._at[f"part:{b}"]]) % k for b in self.block_names}
        plan = PartitionPlan.from_assignment(labels, "dag", graph=self.blocks)
        if not nx.is_directed_acyclic_graph(quotient(self.blocks, plan)):
            plan = repair(self.blocks, labels, "dag")
        return plan

    # -- local search ------------------------------------------------------------------------------
    def start(self, rng: np.random.Generator) -> Genome:
        """Nothing pruned (the first level), no N:M, every device used, the parts balanced by MACs: a
        contiguous split of the compute nodes (pipeline) or of the blocks (DAG) in topological order."""
        return self._unpruned(self.max_parts)

    def _unpruned(self, k: int) -> Genome:
        """Nothing pruned, no N:M, `k` parts balanced by MACs (see `start`)."""
        genome = [0.0] * len(self.genes)
        if "parts" in self._at:
            genome[self._at["parts"]] = k
        if self.cut_genes:
            positions = _balanced([self.graph[n]["macs"] for n in self.nodes], k)
            for i, p in enumerate(positions):
                genome[self._at[f"cut:{i}"]] = p / len(self.nodes)
        elif self.blocks is not None and k > 1:
            positions = [0, *_balanced([self.blocks[b]["macs"] for b in self.block_names], k)]
            for b, name in enumerate(self.block_names):
                genome[self._at[f"part:{name}"]] = sum(b >= p for p in positions) - 1
        return self.repair(genome)

    def baselines(self) -> list[Genome]:
        """The unpruned model in one part, then split as `start` splits it into each other part count the
        space allows (fewest parts first): the references every front should hold."""
        low = self.config.min_parts if "parts" in self._at else self.max_parts
        out: list[Genome] = []
        for k in range(low, self.max_parts + 1):
            genome = self._unpruned(k)
            if genome not in out:
                out.append(genome)
        return out

    def moves(self, genome: Genome, step: float = 0.1) -> list[Genome]:
        """Neighbours for a local search: one level more or less pruning of one group (or stage), one N:M
        switch flipped, one part more or less, one used pipeline cut shifted by one node or by `step` of
        the nodes (or one block moved to the next part). Cuts the part count leaves unused are not moved,
        so no two neighbours decode alike for that reason."""
        genome = self.repair(genome)
        n, k = len(self.nodes), self._parts(genome)
        unused = {f"cut:{i}" for i in range(k - 1, self.max_parts - 1)}
        out: dict[Genome, None] = {}
        for i, gene in enumerate(self.genes):
            if gene.fixed or gene.name in unused:
                continue
            if gene.name.startswith("cut:"):
                deltas = {1 / n, max(1, round(step * n)) / n}
            else:
                deltas = {1.0}
            for delta in deltas:
                for sign in (-1.0, 1.0):
                    moved = list(genome)
                    moved[i] = genome[i] + sign * delta
                    out.setdefault(self.repair(moved), None)
        out.pop(genome, None)
        return list(out)

    # -- decode ------------------------------------------------------------------------------------
    def levels_of(self, genome: Sequence[float]) -> dict[str, float]:
        """Each group's keep ratio."""
        levels, top = self.config.levels, len(self.config.levels) - 1
        if not self.searched:
            return dict.fromkeys(self.groups, levels[0])
        if self.config.encoding == "per_group":
            return {g: levels[int(genome[self._at[f"keep:{g}"]])] for g in self.groups}
        base = int(genome[self._at["keep"]])
        out = {}
        for s, stage in enumerate(self.stages):
            index = min(top, max(0, base + int(self._value(genome, f"offset:{s}", 0))))
            out.update(dict.fromkeys(stage, levels[index]))
        return out

    def decode(self, genome: Genome) -> tuple[PruningPlan, PartitionPlan]:
        """The pruning plan (groups kept at 1.0 are left out) and the op-level partition plan."""
        genome = self.repair(genome)
        choices = tuple(GroupChoice(g, keep_ratio=r) for g, r in self.levels_of(genome).items() if r < 1.0)
        pruning = PruningPlan(groups=choices, criterion=self.config.criterion, round_to=self.config.round_to)
        if self.nm_layers:
            pruning = self._with_nm(pruning, genome)
        return pruning, self._partition(genome, pruning)

    def _with_nm(self, plan: PruningPlan, genome: Genome) -> PruningPlan:
        chosen = [layer for layer in self.nm_layers if int(genome[self._at[f"nm:{layer}"]])]
        if not chosen:
            return plan
        _, m = parse_pattern(self.config.nm_pattern)
        estimate = self.estimator(plan)
        layers = tuple(
            LayerSparsity(layer, pattern=self.config.nm_pattern)
            for layer in chosen
            if self.estimator.pruned_inputs_per_output(estimate, layer) % m == 0
        )
        return PruningPlan(plan.groups, layers, plan.criterion, plan.round_to)

    def _partition(self, genome: Genome, pruning: PruningPlan) -> PartitionPlan:
        k = self._parts(genome)
        if k == 1:
            return PartitionPlan.from_assignment(dict.fromkeys(self.nodes, 0), self.config.mode, graph=self.graph)
        if self.dp:
            return self._dp_pipeline(pruning, k)
        if self.blocks is None:
            return PartitionPlan.pipeline(self.graph, self._cut_positions(genome, k))
        return expand(self._block_plan(genome, k), self.blocks)

    def _dp_pipeline(self, pruning: PruningPlan, k: int) -> PartitionPlan:
        """The k-stage pipeline with the least bottleneck, then the fewest bytes, for the pruned candidate: each
        op's pruned time (measured seconds scaled, where the graph has them; else MACs) and each tensor's
        pruned size (`pipeline_cuts`)."""
        estimate = self.estimator(pruning)
        at = [self.estimator.index[n] for n in self.nodes]
        measured = estimate.seconds is not None
        work = (estimate.seconds if measured else estimate.macs)[at]
        kept = {n: float(estimate.out_fraction[i]) for n, i in self.estimator.index.items()}
        cuts = pipeline_cuts(work, received_matrix(self.graph, kept), k, StageCost(measured=measured))
        return PartitionPlan.pipeline(self.graph, cuts)


def _balanced(weights: Sequence[float], k: int) -> list[int]:
    """k - 1 cut positions that split `weights` (in order) into k runs of about equal sum, each non-empty."""
    total = float(sum(weights))
    if total <= 0:
        return [round(i * len(weights) / k) for i in range(1, k)]
    cumulative = np.concatenate([[0.0], np.cumsum(weights) / total])  # share before each position
    positions: list[int] = []
    for i in range(1, k):
        after = int(np.searchsorted(cumulative, i / k))  # first position whose prefix reaches the target
        p = after - 1 if i / k - cumulative[after - 1] < cumulative[after] - i / k else after
        positions.append(min(max(p, positions[-1] + 1 if positions else 1), len(weights) - (k - i)))
    return positions


def _spans(items: list[str], count: int) -> list[list[str]]:
    """`items` cut into at most `count` contiguous spans of near-equal length (none empty)."""
    count = min(count, len(items))
    bounds = [round(i * len(items) / count) for i in range(count + 1)] if count else []
    return [items[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
