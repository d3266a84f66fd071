"""The decomposition search space: for each region of a model (a chain of layers, as `decomp decompose`
takes it), whether it stays whole and is cut along the depth only (pipeline cuts), is split along its
width (tensor parallel: the chain's first layer column-split, the next row-split, W ways on W devices), or
is decomposed into G independent groups (the weights between groups pruned, each group a branch on its
own device, fine-tuned); together with the pipeline cuts of the model where no region is split.

Genes: `kind:<region>` (an index into `options`, ("depth", 1) first) per region, then the genes of a
pipeline `JointSpace` with pruning fixed (`parts`, `cut:<i>`). A genome whose regions all stay whole
decodes to that pipeline plan; one that splits or groups a region decodes to no plan here: its model is
another graph (`split_width` rewrites it), which `DecompositionEvaluator` builds and places with
`width_plan` (way k of a split on device k); its pipeline genes are then set to one canonical value by
`repair`, so the searchers see one genome per distinct candidate.

`DecompositionEvaluator` evaluates a candidate: each distinct choice of kinds once (cached): the model
rewritten, its graph with op times measured here, and its accuracy on the data's test split (the model's
own where nothing is grouped: depth cuts and width splits compute what the model does; where regions are
grouped, after fine-tuning with the weights between groups held at zero, once per choice of groups);
then the cost model's metrics (`decomp.latency.CostModel`: MACs, bytes sent between parts, predicted
latency) of the candidate's plan on that graph, with `accuracy` among them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from decomp.build import build_graph
from decomp.errors import SearchError
from decomp.latency import CostModel, LatencyModel
from decomp.partition.plan import PartitionPlan
from decomp.pruning.plan import PruningPlan
from search.joint import JointConfig, JointSpace
from search.objectives import CostEvaluator
from search.records import Candidate, Gene
from search.space import Genome, Space

__all__ = ["DEFAULT_OPTIONS", "DecompositionEvaluator", "DecompositionSpace"]

DEFAULT_OPTIONS = (("depth", 1), ("width", 2), ("width", 4), ("group", 2), ("group", 4))
KINDS = ("depth", "width", "group")


class DecompositionSpace(Space):
    """See the module docstring. `regions`: chains of module paths (first layer, layers run per group,
    last layer); `options`: the (kind, ways) a region may take, ("depth", 1) first; `devices`: the most
    parts (a split or grouping of more ways than devices is not offered)."""

    def __init__(
        self,
        graph,
        regions: Sequence[Sequence[str]],
        devices: int,
        options: Sequence[tuple[str, int]] = DEFAULT_OPTIONS,
    ) -> None:
        self.regions = tuple(tuple(r) for r in regions)
        if not self.regions or any(len(r) < 2 for r in self.regions):
            raise SearchError("give at least one region of two or more layers (first layer, ..., last layer)")
        options = tuple((str(k), int(w)) for k, w in options)
        bad = [o for o in options if o[0] not in KINDS or o[1] < 1]
        if bad or not options or options[0] != ("depth", 1):
            raise SearchError(
                f"options are (kind, ways) with kind in {', '.join(KINDS)}, ('depth', 1) first; got {options}"
            )
        self.options, self.devices = tuple(o for o in options if o[1] <= devices), devices
        self.joint = JointSpace(graph, devices, JointConfig(levels=(1.0,), mode="pipeline", min_parts=1))
        kinds = [Gene(f"kind:{i}", 0, len(self.options) - 1, integer=True) for i in range(len(self.regions))]
        super().__init__([*kinds, *self.joint.genes])

    def kinds_of(self, genome: Sequence[float]) -> tuple[tuple[str, int], ...]:
        """The (kind, ways) of each region."""
        return tuple(self.options[int(genome[i])] for i in range(len(self.regions)))

    def _whole(self, genome: Sequence[float]) -> bool:
        return all(kind == "depth" for kind, _ in self.kinds_of(genome))

    def parts_needed(self, kinds: Sequence[tuple[str, int]]) -> int:
        """Parts the regions' splits take (`width_plan`: each split region gets as many parts as the most ways
        of any), at least 1."""
        split = [ways for kind, ways in kinds if kind != "depth"]
        return len(split) * max(split) if split else 1

    def repair(self, genome: Sequence[float]) -> Genome:
        """Clip; regions whose splits would need more parts than there are devices are made whole (the last
        ones first); with every region whole the pipeline genes say what `JointSpace.repair` says, else they
        take one canonical value (they are not used)."""
        genome = list(self.clip(genome))
        r = len(self.regions)
        for i in reversed(range(r)):
            if self.parts_needed(self.kinds_of(genome)) <= self.devices:
                break
            genome[i] = 0
        rest = self.joint.repair(genome[r:]) if self._whole(genome) else self.joint.repair(self.joint.lows)
        return tuple(genome[:r]) + tuple(rest)

    def decode(self, genome: Genome) -> tuple[PruningPlan | None, PartitionPlan | None]:
        if not self._whole(genome):
            return None, None
        return self.joint.decode(tuple(genome[len(self.regions) :]))

    def baselines(self) -> list[Genome]:
        """The model whole in one part and in the pipelines the joint space starts from, and each option
        of each region alone."""
        r = len(self.regions)
        whole = [tuple([0] * r) + tuple(g) for g in self.joint.baselines()]
        alone = []
        for i in range(r):
            for k in range(1, len(self.options)):
                genome = [0] * r
                genome[i] = k
                alone.append(self.repair(genome + list(self.joint.lows)))
        return [self.repair(g) for g in whole] + alone

    def start(self, rng: np.random.Generator) -> Genome:
        return tuple([0] * len(self.regions)) + tuple(self.joint.start(rng))


@dataclass
class _Variant:
    cost: CostModel
    accuracy: float
    plan: PartitionPlan | None  # the width plan of a rewritten model; None: the pipeline genes say


class DecompositionEvaluator(CostEvaluator):
    """Evaluates `DecompositionSpace` candidates (see the module docstring). `train`/`test`: loaders of
    (inputs, labels); `finetune`: how grouped models are fine-tuned (`decomp.pruning.train.TrainConfig`).
    `space` may be swapped for another space over the same regions (e.g. depth only): the variants built
    so far are kept. `evaluate` is `CostEvaluator`'s, on these metrics."""

    def __init__(
        self,
        model: nn.Module,
        example_inputs: tuple[torch.Tensor, ...],
        space: DecompositionSpace,
        latency_model: LatencyModel,
        train,
        test,
        finetune,
        micro_batches: int = 4,
        seed: int = 0,
    ) -> None:
        self.network, self.inputs, self.space = model.eval(), tuple(example_inputs), space
        self.latency_model, self.micro_batches, self.seed = latency_model, micro_batches, seed
        self.train, self.test, self.finetune = train, test, finetune
        self._variants: dict[tuple[tuple[str, int], ...], _Variant] = {}
        self._tuned: dict[tuple[tuple[str, int], ...], tuple[nn.Module, dict[int, object], float]] = {}

    def variant(self, kinds: tuple[tuple[str, int], ...]) -> _Variant:
        """The model rewritten for `kinds`, its cost model and accuracy (built once per distinct choice)."""
        if kinds not in self._variants:
            self._variants[kinds] = self._build(kinds)
        return self._variants[kinds]

    def _grouped(self, kinds) -> tuple[nn.Module, dict[int, object], float]:
        """The model with the grouped regions of `kinds` decomposed and fine-tuned, their `WidthSplit`s by
        region, and its test accuracy: once per choice of groups (depth cuts and width splits leave the
        model's function alone, so they share it)."""
        from decomp.partition.branches import apply_masks, group_masks, group_split
        from decomp.pruning.apply import copy_model, make_permanent
        from decomp.pruning.train import evaluate, train

        key = tuple(k if k[0] == "group" else ("depth", 1) for k in kinds)
        if key not in self._tuned:
            module = copy_model(self.network).eval()
            splits = {}
            for i, (region, (kind, ways)) in enumerate(zip(self.space.regions, key, strict=True)):
                if kind == "group":
                    splits[i] = group_split(module, region, ways, seed=self.seed)
                    apply_masks(module, group_masks(module, splits[i]))
            if splits:
                train(module, self.train, self.finetune)
                make_permanent(module)
            self._tuned[key] = (module.eval(), splits, evaluate(module, self.test))
        return self._tuned[key]

    def _build(self, kinds) -> _Variant:
        from decomp.partition.width import WidthSplit, split_width, width_plan
        from decomp.timing import annotate_op_times, op_times

        module, grouped, accuracy = self._grouped(kinds)
        splits = []
        for i, (region, (kind, ways)) in enumerate(zip(self.space.regions, kinds, strict=True)):
            if kind == "width":
                splits.append(WidthSplit(region[0], ways, then=region[1]))
            elif kind == "group":
                splits.append(grouped[i])
        plan = None
        if splits:
            decomposed = split_width(module, self.inputs, splits)
            module = decomposed.module
            graph = build_graph(module, self.inputs)
            plan = width_plan(graph, decomposed)
        else:
            graph = build_graph(module, self.inputs)
        annotate_op_times(graph, op_times(module, self.inputs[0], repeats=3, threads=1))
        return _Variant(CostModel(graph, self.latency_model, micro_batches=self.micro_batches), accuracy, plan)

    def __call__(self, candidate: Candidate) -> dict[str, float]:
        variant = self.variant(self.space.kinds_of(candidate.genome))
        plan = variant.plan if variant.plan is not None else candidate.partition
        metrics = dict(variant.cost(None, plan).metrics())
        metrics["accuracy"] = variant.accuracy
        return metrics
