"""Search vs random across model families (issue 24): every searcher against random and against the baselines
alone, on four families, pipeline and DAG partitions over the 4-device CPU host, budgets 100 and 300, 3 seeds.

Families: resnet18 (the searcher settings, `test_search_joint.SETTINGS`, were chosen on it), mobilenet_v2,
vit_b_16 and GPT-2 (124M, from its config, 64 tokens, traced with torch.export): held out. The space: a keep
level per coupling group x the partition (`JointConfig(mode, blocks=12)`); objectives MACs, predicted latency
of 4 micro-batches (op times measured here, 1 thread), bytes between parts, accuracy proxy. One normaliser per
(family, mode): the bounds of 500 random genomes and the baselines. A budget-100 run is the first 100
evaluations of the budget-300 run (no searcher's behaviour depends on the budget). The baselines' hypervolume is
that of the space's baselines alone (the unpruned model in each part count), which every searcher asks first.

Issue targets (reported, not asserted): every searcher's mean >= random's in every cell; the best searcher
>= 1.2x random averaged over the cells; every front >= the baselines'.

At smoke size: resnet18 only, pipeline, budget 20, one seed.
"""

import statistics

import numpy as np
import pytest
import torch

from decomp.build import build_graph
from decomp.latency import CostModel, LatencyModel
from decomp.latency.cluster import load_cluster
from decomp.pruning import annotate_graph, channel_importance, find_groups
from decomp.specs import load_model
from decomp.timing import annotate_op_times, op_times
from search.joint import JointConfig, JointSpace
from search.objectives import CostEvaluator, objectives_for
from search.pareto import Normalizer, hypervolume, minimized
from search.records import Candidate
from search.registry import make_searcher, searcher_names
from tests.benchmarks import size
from tests.benchmarks.record import record
from tests.benchmarks.searching import drive
from tests.benchmarks.test_search_joint import OBJECTIVES, SETTINGS

pytestmark = pytest.mark.benchmark

FAMILIES = {
    "resnet18": ("torchvision:resnet18", None),
    "mobilenet_v2": ("torchvision:mobilenet_v2", None),
    "vit_b_16": ("torchvision:vit_b_16", None),
    "gpt2": ("hf:gpt2", [(1, 64)]),
}
CHOSEN = size.pick(full=tuple(FAMILIES), smoke=("resnet18",))
MODES = size.pick(full=("pipeline", "dag"), smoke=("pipeline",))
BUDGETS = size.pick(full=(100, 300), smoke=(20,))
SEEDS = size.pick(full=(0, 1, 2), smoke=(0,))
BATCH, BOUNDS_SAMPLE = 4, size.pick(full=500, smoke=50)


def _problem(spec: str, shapes):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    loaded = load_model(spec, input_shapes=shapes)
    module, inputs, tracer = loaded.module, loaded.example_inputs, loaded.tracer
    graph = build_graph(module, inputs, tracer)
    index = find_groups(module, inputs)
    annotate_graph(graph, index)
    annotate_op_times(graph, op_times(module, inputs, tracer=tracer, repeats=3, threads=1))
    importances = {g.id: channel_importance(index, g.id, "l1").tolist() for g in index}
    model = CostModel(graph, LatencyModel(load_cluster("cpu-host-x4")), micro_batches=4, importances=importances)
    return graph, CostEvaluator(model)


def _told(name, space, evaluator, objectives, seed, budget):
    searcher = make_searcher(name, space, objectives, seed=seed, **SETTINGS.get(name, {}))
    return [e.values if e.ok else None for _, e in drive(searcher, evaluator, objectives, budget, BATCH)]


def test_searchers_against_random_across_families():
    objectives = objectives_for(OBJECTIVES)
    names = sorted(searcher_names(), key=lambda n: (n != "random", n))
    cells = {}  # (family, mode, budget) -> {searcher: mean HV}, with "baselines"
    below_baselines = []
    for family in CHOSEN:
        graph, evaluator = _problem(*FAMILIES[family])
        for mode in MODES:
            space = JointSpace(graph, 4, JointConfig(mode=mode, blocks=12))
            rng = np.random.default_rng(12345)
            sample = [space.sample(rng) for _ in range(BOUNDS_SAMPLE)] + space.baselines()
            reference = [
                evaluator.evaluate(Candidate(i, "ref", g, *space.decode(g)), objectives) for i, g in enumerate(sample)
            ]
            normalizer = Normalizer.from_points(minimized([e.values for e in reference if e.ok], objectives))
            base = reference[BOUNDS_SAMPLE:]
            baselines = hypervolume(minimized([e.values for e in base if e.ok], objectives), normalizer)
            runs = {n: [_told(n, space, evaluator, objectives, s, max(BUDGETS)) for s in SEEDS] for n in names}
            for budget in BUDGETS:
                means = {"baselines": baselines}
                for n in names:
                    volumes = []
                    for values in runs[n]:
                        kept = [v for v in values[:budget] if v is not None]
                        volumes.append(hypervolume(minimized(kept, objectives), normalizer))
                        if volumes[-1] < baselines - 1e-12:
                            below_baselines.append(f"{n} {family} {mode} {budget}")
                    means[n] = statistics.fmean(volumes)
                cells[family, mode, budget] = means
    lines = [
        "## Searchers vs random across model families (4 CPU devices)",
        "",
        f"Objectives {', '.join(OBJECTIVES)}; searcher settings as in the resnet18 joint benchmark (held out: "
        f"{', '.join(f for f in CHOSEN if f != 'resnet18') or 'none'}); seeds {', '.join(map(str, SEEDS))}; "
        f"asked {BATCH} at a time. Mean hypervolume over the seeds as a multiple of random's in the same cell "
        f"(one normaliser per family and mode: {BOUNDS_SAMPLE} random genomes and the baselines).",
        "",
        "| family | mode | budget | random | " + " | ".join(n for n in names if n != "random") + " | baselines alone |",
        "|---|---|---|---|" + "---|" * (len(names) - 1) + "---|",
    ]
    for (family, mode, budget), means in cells.items():
        r = means["random"]
        ratios = " | ".join(f"{means[n] / r:.2f}x" for n in names if n != "random")
        lines.append(f"| {family} | {mode} | {budget} | {r:.4f} | {ratios} | {means['baselines'] / r:.2f}x |")
    per_searcher = {n: [m[n] / m["random"] for m in cells.values()] for n in names if n != "random"}
    best = max(per_searcher, key=lambda n: statistics.fmean(per_searcher[n]))
    losing = sorted({n for n, rs in per_searcher.items() if min(rs) < 1.0})
    lines += [
        "",
        f"Best searcher averaged over the {len(cells)} cells: **{best} {statistics.fmean(per_searcher[best]):.2f}x** "
        f"random (target 1.2x). Below random in some cell: {', '.join(losing) or 'none'} (target: none); lowest "
        + ", ".join(f"{n} {min(rs):.2f}x" for n, rs in per_searcher.items())
        + f". Runs whose front is below the baselines alone: {len(below_baselines)}"
        + (
            f" ({'; '.join(below_baselines[:6])}{' ...' if len(below_baselines) > 6 else ''})"
            if below_baselines
            else ""
        )
        + " (target: none).",
    ]
    record("search-families", lines)
    print("\n".join(lines))
    assert all(v > 0 for m in cells.values() for v in m.values()), cells
