"""Joint decomposition search vs depth-only (issue target: the joint search's fronts at least as good as
depth-and-branch-only search, hypervolume under one normaliser, 3 seeds).

The model: `tests.benchmarks.models.group_cnn(32, blocks=7)` trained on digits, a chain of seven conv blocks
(no branches of its own, so branch placement adds nothing to depth cuts here), on the 4-device CPU host
`cpu-host-x4`. Joint space (`search.decomposition.DecompositionSpace`): each of two regions (conv 0 -> 3 ->
6 and conv 9 -> 12 -> 15) stays whole, or is split along its width (2 or 4 ways), or is decomposed into 2
or 4 groups (fine-tuned; independent branches, one per device); where both stay whole the model is cut
along its depth (1-4 pipeline stages). Depth-only: the same space with both regions always whole.
Objectives: test accuracy, predicted latency of a batch of 64 in 4 micro-batches (op times measured here,
1 thread), bytes sent between parts, MACs. Every searcher runs both spaces for the same budget and seeds;
hypervolume of all told points, normalised by the bounds of every point evaluated in this run (reference
1.1 per objective).

At smoke size: a smaller budget, one seed, fewer fine-tuning epochs; the hypervolumes must be above zero.
"""

import statistics
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from decomp.build import build_graph
from decomp.data import load_data
from decomp.latency import LatencyModel
from decomp.latency.cluster import load_cluster
from decomp.pruning.train import TrainConfig, evaluate, train
from search.decomposition import DEFAULT_OPTIONS, DecompositionEvaluator, DecompositionSpace
from search.objectives import objectives_for
from search.pareto import Normalizer, hypervolume, minimized
from search.registry import make_searcher, searcher_names
from tests.benchmarks import size
from tests.benchmarks.models import group_cnn
from tests.benchmarks.record import record
from tests.benchmarks.searching import drive

pytestmark = pytest.mark.benchmark

BUDGET, BATCH, SEEDS = size.pick(full=40, smoke=12), 4, size.pick(full=(0, 1, 2), smoke=(0,))
EPOCHS, TUNE = size.pick(full=(15, 5), smoke=(2, 1))
BLOCKS, REGIONS = 7, (("0", "3", "6"), ("9", "12", "15"))  # conv layers of blocks 1-3 and 4-6 of 7
OBJECTIVES = ("accuracy", "latency_s", "comm_bytes", "macs")
SETTINGS = {"nsga2": {"population": 8}, "skopt": {"max_points": 40, "n_restarts_optimizer": 0}}


def _run(name, space, evaluator, objectives, seed):
    searcher = make_searcher(name, space, objectives, seed=seed, **SETTINGS.get(name, {}))
    return [(space.kinds_of(c.genome), e) for c, e in drive(searcher, evaluator, objectives, BUDGET, BATCH)]


def test_joint_decomposition_search_vs_depth_only():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    data = load_data("digits").with_validation(0.2)
    train_loader = DataLoader(data.train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    test = DataLoader(data.test, batch_size=256)
    model = group_cnn(32, blocks=BLOCKS)
    train(model, train_loader, TrainConfig(epochs=EPOCHS, lr=3e-3, schedule="cosine"))
    dense = evaluate(model, test)
    x = next(iter(test))[0][:64]
    graph = build_graph(model.eval(), (x,))
    latency = LatencyModel(load_cluster("cpu-host-x4"))
    spaces = {
        "joint": DecompositionSpace(graph, REGIONS, 4, DEFAULT_OPTIONS),
        "depth only": DecompositionSpace(graph, REGIONS, 4, (("depth", 1),)),
    }
    finetune = TrainConfig(epochs=TUNE, lr=1e-3, schedule="cosine")
    evaluator = DecompositionEvaluator(model, (x,), spaces["joint"], latency, train_loader, test, finetune)
    objectives = objectives_for(OBJECTIVES)
    runs = {}
    names = sorted(searcher_names(), key=lambda n: (n != "random", n))
    for name in names:
        for label, space in spaces.items():
            evaluator.space = space
            runs[name, label] = [_run(name, space, evaluator, objectives, seed) for seed in SEEDS]
    everything = [e.values for told in runs.values() for run in told for _, e in run if e.ok]
    normalizer = Normalizer.from_points(minimized(everything, objectives))

    def volume(run) -> float:
        return hypervolume(minimized([e.values for _, e in run if e.ok], objectives), normalizer)

    volumes = {key: [volume(run) for run in told] for key, told in runs.items()}
    lines = [
        "## Joint decomposition search vs depth only (digits CNN, 4 CPU devices)",
        "",
        f"`group_cnn(32, blocks={BLOCKS})` trained {EPOCHS} epochs on digits ({100 * dense:.2f}% test accuracy); "
        f"regions {' and '.join(' -> '.join(r) for r in REGIONS)} each whole, width-split (2, 4 ways) or grouped "
        f"(2, 4; fine-tuned {TUNE} epochs), depth cuts (1-4 stages) where both are whole, on `cpu-host-x4`. "
        f"Objectives {', '.join(OBJECTIVES)} (a batch of 64 in 4 micro-batches); "
        f"{BUDGET} evaluations per run, asked {BATCH} at a time, seeds {', '.join(map(str, SEEDS))}; hypervolume "
        "of all told points under one normaliser (every point of this run).",
        "",
        "| searcher | joint: hypervolume (mean) | depth only | joint / depth only |",
        "|---|---|---|---|",
    ]
    ratios = []
    for name in names:
        joint, depth = statistics.fmean(volumes[name, "joint"]), statistics.fmean(volumes[name, "depth only"])
        ratios.append(joint / depth)
        lines.append(f"| {name} | {joint:.4f} | {depth:.4f} | **{joint / depth:.2f}x** |")
    variants = sorted(evaluator._variants.items(), key=lambda kv: [DEFAULT_OPTIONS.index(k) for k in kv[0]])
    lines += [
        "",
        "What each choice evaluated gives (accuracy measured on the test split; MACs of the batch of 64):",
        "",
        "| regions as | accuracy | MACs | parts |",
        "|---|---|---|---|",
        *[
            f"| {_label(kinds)} | {100 * v.accuracy:.2f}% | {v.cost.graph.totals.macs / 1e6:.0f}M | "
            f"{v.plan.parts if v.plan is not None else '1-4 (the pipeline genes)'} |"
            for kinds, v in variants
        ],
    ]
    front_kinds = _front_kinds(runs, objectives)
    lines += ["", f"Choices on the joint runs' fronts (points, all searchers and seeds): {front_kinds}."]
    if size.is_full():
        _figure(runs, objectives, Path(__file__).resolve().parents[2] / "docs" / "decomposition_front.png")
        lines += ["", "![points and joint front, by kind](docs/decomposition_front.png)"]
    record("search-decomposition", lines)
    print("\n".join(lines))
    assert all(v > 0 for vs in volumes.values() for v in vs), volumes
    if size.is_full():
        worse = [n for n, r in zip(names, ratios, strict=True) if r < 1.0]
        assert not worse, f"joint fronts below depth-only for {', '.join(worse)}: {volumes}"


def _figure(runs, objectives, path) -> None:
    """Every evaluated point (depth-only runs grey; joint runs coloured by what the regions became) in MACs vs
    latency and bytes vs latency, the joint runs' overall front ringed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from search.pareto import non_dominated

    points = {}  # (label, values) -> kind, deduplicated
    for (_, label), told in runs.items():
        for run in told:
            for kinds, e in run:
                if e.ok:
                    kind = "depth only" if label == "depth only" else _kind(kinds)
                    points.setdefault((kind, e.values), kind)
    joint = [v for (k, v) in points if k != "depth only"]
    front = {tuple(v) for v, keep in zip(joint, non_dominated(minimized(joint, objectives)), strict=True) if keep}
    at = {o.name: i for i, o in enumerate(objectives)}
    colours = {"depth only": "#bdbdbd", "whole": "#3182bd", "width": "#fd8d3c", "group": "#31a354", "mixed": "#756bb1"}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (x, xlabel, scale) in zip(
        axes,
        [("macs", "MACs (M, batch of 64)", 1e-6), ("comm_bytes", "bytes sent between parts (MB)", 1e-6)],
        strict=True,
    ):
        for kind, colour in colours.items():
            chosen = [v for (k, v) in points if k == kind]
            if chosen:
                ax.scatter(
                    [v[at[x]] * scale for v in chosen],
                    [v[at["latency_s"]] * 1e3 for v in chosen],
                    s=18,
                    c=colour,
                    label=kind,
                    alpha=0.8,
                )
        ringed = [v for v in front]
        ax.scatter(
            [v[at[x]] * scale for v in ringed],
            [v[at["latency_s"]] * 1e3 for v in ringed],
            s=60,
            facecolors="none",
            edgecolors="black",
            label="joint front",
        )
        ax.set_xlabel(xlabel)
        ax.set_ylabel("predicted latency (ms)")
    axes[0].legend(fontsize=8)
    fig.suptitle("Joint decomposition search vs depth cuts only (7-block CNN, 4 CPU devices)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _kind(kinds) -> str:
    used = {kind for kind, _ in kinds}
    if used == {"depth"}:
        return "whole"
    used.discard("depth")
    return used.pop() if len(used) == 1 else "mixed"


def _label(kinds) -> str:
    return ", ".join("whole" if kind == "depth" else f"{kind} {ways}" for kind, ways in kinds)


def _front_kinds(runs, objectives) -> str:
    from search.pareto import non_dominated

    counts: dict[str, int] = {}
    for (_, label), told in runs.items():
        if label != "joint":
            continue
        for run in told:
            ok = [(k, e) for k, e in run if e.ok]
            mask = non_dominated(minimized([e.values for _, e in ok], objectives))
            for (kinds, _), keep in zip(ok, mask, strict=True):
                if keep:
                    key = _label(kinds)
                    counts[key] = counts.get(key, 0) + 1
    return "; ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) or "none"
