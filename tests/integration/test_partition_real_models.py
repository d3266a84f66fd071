"""Split -> export -> load -> run on real architectures equals the unpartitioned model (float32, 1e-5).

Every model runs K=2 and K=4, a pipeline and a DAG plan, unpruned and pruned (30% of the channels,
physically removed) across its two cases. The models get `lively` weights first (their own initialisation leaves
some all but constant, which any split would match to 1e-5), and each case checks that the outputs move
by far more than the tolerance when the input changes. Small inputs keep the file to a few minutes.
"""

from __future__ import annotations

from functools import cache
from itertools import combinations

import networkx as nx
import pytest
import torch

from decomp import build_graph, load_model
from decomp.partition.export import export_split, load_export, verify_export
from decomp.partition.manifest import read_manifest
from decomp.partition.plan import PartitionPlan, quotient
from decomp.partition.split import flat_outputs, split_model
from decomp.pruning import apply_plan, find_groups, plan_for_ratio
from tests.lively import lively, spread

pytestmark = pytest.mark.slow

GPT2 = "hf:gpt2?n_layer=2&n_embd=128&n_head=4&vocab_size=1000&n_positions=64"
SHAPES = {GPT2: (1, 16), "torchvision:vit_b_16": (1, 3, 224, 224)}
# DAG plans with a block's branches in parts that run side by side: (block, prefixes of the side branch)
BRANCHES = {
    "torchvision:resnet50": ("layer3.0", ("layer3.0.downsample",)),
    "torchvision:googlenet": ("inception4a", ("inception4a.branch3", "inception4a.branch4")),
}
CASES = [  # spec, parts, plan (pipeline | branches | parallel | levels), pruned: per model both plan kinds,
    # K=2 and K=4, unpruned and pruned across its two cases
    ("torchvision:resnet50", 4, "pipeline", False),
    ("torchvision:resnet50", 2, "branches", True),
    ("torchvision:mobilenet_v2", 4, "levels", False),  # chain-like: any valid DAG plan is contiguous
    ("torchvision:mobilenet_v2", 2, "pipeline", True),
    ("torchvision:googlenet", 4, "branches", False),
    ("torchvision:googlenet", 2, "pipeline", True),
    ("torchvision:densenet121", 2, "levels", False),  # chain-like, as mobilenet_v2
    ("torchvision:densenet121", 4, "pipeline", True),
    ("torchvision:vit_b_16", 4, "pipeline", False),
    ("torchvision:vit_b_16", 2, "levels", True),  # chain-like once attention is a leaf module
    (GPT2, 4, "parallel", False),  # the attention mask apart from the queries and keys
    (GPT2, 2, "pipeline", True),
]
TOLERANCE = 1e-5


@cache
def _model(spec: str, pruned: bool):
    loaded = load_model(spec, input_shapes=[SHAPES.get(spec, (1, 3, 64, 64))])
    model, inputs = lively(loaded.module, loaded.example_inputs), loaded.example_inputs
    plan = None
    if pruned:
        result = apply_plan(model, plan_for_ratio(find_groups(model, inputs), 0.3), inputs, "physical")
        model, plan = result.module, result.plan
    return model, inputs, loaded.tracer, plan


def _pipeline(graph, parts: int) -> PartitionPlan:
    n = len(graph.compute_nodes())
    return PartitionPlan.pipeline(graph, [n * k // parts for k in range(1, parts)])


def _levels(graph, parts: int) -> PartitionPlan:
    """Parts by depth from the inputs: ops on parallel paths share a part, so parts interleave in
    topological order (a DAG plan, not a pipeline) and tensors only flow to deeper parts."""
    depth: dict[str, int] = {}
    for n in graph.order():
        depth[n] = 1 + max((depth[p] for p in graph.nx.predecessors(n)), default=-1)
    nodes = graph.compute_nodes()
    low, high = min(depth[n] for n in nodes), max(depth[n] for n in nodes)
    assignment = {n: (depth[n] - low) * parts // (high - low + 1) for n in nodes}
    return PartitionPlan.from_assignment(assignment, "dag", graph=graph).validate(graph)


def _branches(graph, parts: int, block: str, side: tuple[str, ...]) -> PartitionPlan:
    """K=4: before the block | its main branches | its side branches | the merge and after, with the
    two middle parts side by side. K=2: the side branches join the first part (not a pipeline)."""
    nodes = graph.compute_nodes()
    inside = [i for i, n in enumerate(nodes) if (graph[n]["module"] or "").startswith(f"{block}.")]
    start = inside[0]
    merge = next(i for i in range(start, len(nodes)) if not (graph[nodes[i]]["module"] or "").startswith(f"{block}."))
    is_side = {n: (graph[n]["module"] or "").startswith(side) for n in nodes}
    if parts == 4:
        where = lambda i, n: 0 if i < start else 3 if i >= merge else 2 if is_side[n] else 1  # noqa: E731
    else:
        where = lambda i, n: 0 if i < start or (i < merge and is_side[n]) else 1  # noqa: E731
    assignment = {n: where(i, n) for i, n in enumerate(nodes)}
    return PartitionPlan.from_assignment(assignment, "dag", graph=graph).validate(graph)


def _parallel(graph, parts: int) -> PartitionPlan:
    """Find the merge whose two groups of inputs have the most tensor ops of their own (ancestors of
    one group only) and put those in two parts; their common ancestors go first, the rest last. K=2
    joins the second group to the first part."""
    g, nodes = graph.nx, graph.compute_nodes()
    best: tuple[int, set, set, set] = (0, set(), set(), set())
    for merge in nodes:
        inputs = [p for p in g.predecessors(merge) if p in nodes]
        if len(inputs) < 2:
            continue
        half = len(inputs) // 2
        a = set().union(*({p} | nx.ancestors(g, p) for p in inputs[:half])).intersection(nodes)
        b = set().union(*({p} | nx.ancestors(g, p) for p in inputs[half:])).intersection(nodes)
        score = min(sum(graph[n]["shape"] is not None for n in side) for side in (a - b, b - a))
        if a & b and score > best[0]:
            best = (score, a - b, b - a, a & b)
    _, left, right, common = best
    if parts == 4:
        assignment = {n: 0 if n in common else 1 if n in left else 2 if n in right else 3 for n in nodes}
    else:
        assignment = {n: 0 if n in common or n in right else 1 for n in nodes}
    return PartitionPlan.from_assignment(assignment, "dag", graph=graph).validate(graph)


def _side_by_side(graph, plan: PartitionPlan) -> bool:
    """Whether two parts have no path between them (they can run in parallel)."""
    q = quotient(graph, plan)
    return any(not nx.has_path(q, a, b) and not nx.has_path(q, b, a) for a, b in combinations(q.nodes, 2))


def _contiguous(graph, plan: PartitionPlan) -> bool:
    part = plan.part_of()
    seen = [part[n] for n in graph.compute_nodes()]
    return all(b >= a for a, b in zip(seen, seen[1:], strict=False))


@pytest.mark.parametrize(("spec", "parts", "kind", "pruned"), CASES)
def test_exported_parts_reproduce_the_model(tmp_path, spec, parts, kind, pruned):
    model, inputs, tracer, pruning_plan = _model(spec, pruned)
    assert spread(model, inputs) > 1000 * TOLERANCE  # the outputs depend on the input: the check can fail
    graph = build_graph(model, inputs, tracer=tracer)
    if kind == "branches":
        plan = _branches(graph, parts, *BRANCHES[spec])
    else:
        plan = {"pipeline": _pipeline, "levels": _levels, "parallel": _parallel}[kind](graph, parts)
    assert plan.parts == parts
    if kind in ("branches", "parallel"):  # a DAG no pipeline can express
        assert _side_by_side(graph, plan) if parts == 4 else not _contiguous(graph, plan)
    split = split_model(model, inputs, plan, tracer=tracer)
    folder = export_split(split, tmp_path / "export", source=spec, pruning_plan=pruning_plan)
    assert verify_export(folder, model, inputs) <= TOLERANCE
    manifest = read_manifest(folder)
    assert len(manifest.parts) == parts and (manifest.pruning_plan is not None) == pruned
    if tracer == "export":  # torch.export traces at a fixed batch size; the parts inherit it
        assert manifest.batch == "static"
        return
    assert manifest.batch == "dynamic"
    doubled = tuple(torch.cat([x, x]) for x in inputs)
    with torch.no_grad():
        got, expected = load_export(folder)(*doubled), flat_outputs(model(*doubled))
    assert max(float((a - b).abs().max()) for a, b in zip(got, expected, strict=True)) <= TOLERANCE


@pytest.mark.parametrize(
    ("spec", "parts", "mode"),
    [("torchvision:googlenet", 4, "dag"), (GPT2, 2, "dag"), ("torchvision:resnet50", 4, "pipeline")],
)
def test_baseline_split_jobs_on_real_models(tmp_path, spec, parts, mode):
    """`decomp split`'s baselines (METIS + repair in DAG mode, the DP in pipeline mode) end to end."""
    from decomp.partition.job import SplitRequest, run_split

    shape = SHAPES.get(spec, (1, 3, 64, 64))
    model, inputs, _, _ = _model(spec, False)
    torch.save(model.state_dict(), tmp_path / "weights.pt")  # lively weights, given as a user gives theirs
    request = SplitRequest(spec, parts, mode, weights=str(tmp_path / "weights.pt"), input_shapes=(shape,))
    summary = run_split(request, tmp_path / "out")
    assert summary.max_abs_diff <= TOLERANCE and len(summary.metrics.parts) == parts
    with torch.no_grad():  # the export is of these weights, not of a fresh initialisation
        got, expected = load_export(tmp_path / "out")(*inputs), flat_outputs(model(*inputs))
    assert max(float((a - b).abs().max()) for a, b in zip(got, expected, strict=True)) <= TOLERANCE
    assert summary.metrics.balance < 2.0  # the baselines balance MACs
    manifest = read_manifest(tmp_path / "out")
    assert manifest.partition_plan.mode == mode and len(manifest.parts) == summary.parts_in_export
