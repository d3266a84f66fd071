"""Channel gating vs static pruning at equal MACs (`decomp.pruning.channel_gating`), on the CNN of the early-exit
benchmark: `tests.benchmarks.models.group_cnn(32)` trained on digits. For each keep level, gates on the
first three conv blocks (each block's output channels chosen per input, read by the next block), trained
with the backbone (FBS: saliency-scaled top-k, L1 on the saliencies); then measured input by input on the
sliced form (only the kept channels computed; MACs counted by torch's flop counter on what ran). The static
baseline prunes the same three coupling groups uniformly (decomp's structured pruning, L1 criterion) to the
width whose MACs come closest to the gated model's mean, and is fine-tuned for the same epochs with the
same optimiser. Also: the bytes per input of the activation at the early-exit benchmark's cut (after the
second block) with only the kept channels.

At smoke size: fewer epochs, one keep level.
"""

import statistics

import pytest
import torch
from torch.utils.data import DataLoader

from decomp.data import load_data
from decomp.pruning import GroupChoice, PruningPlan, apply_plan, copy_model, find_groups
from decomp.pruning.channel_gating import GatedModel, _macs, gating_report, train_gates
from decomp.pruning.train import TrainConfig, evaluate, train
from tests.benchmarks import size
from tests.benchmarks.models import group_cnn
from tests.benchmarks.record import record

pytestmark = [pytest.mark.benchmark, pytest.mark.usefixtures("local_ray")]

EPOCHS, TUNE = size.pick(full=(15, 10), smoke=(2, 1))
KEEPS = size.pick(full=(0.5, 0.25, 0.125), smoke=(0.5,))
MICRO, WIRED = (1, 60), size.pick(full=120, smoke=60)  # micro-batch sizes on Ray, test images sent through
SEEDS = size.pick(full=(0, 1, 2), smoke=(0,))  # gate initialisation and batch order of the fine-tunes
LAYERS = ("0", "3", "6")  # the producers gated (their groups: '0', '3', '6'); '3' feeds the exit benchmark's cut
PENALTY = 1e-3


def _static(model, x, target_macs: float, tune: TrainConfig, train_loader):
    """The uniform structured prune of LAYERS' groups whose MACs per input come closest to `target_macs`,
    fine-tuned: (model, kept share, MACs per input)."""
    index = find_groups(model, (x,))
    widths = {g.id: g.channels for g in index}
    best = None
    for kept in range(1, widths[LAYERS[0]] + 1):
        share = kept / widths[LAYERS[0]]
        plan = PruningPlan(groups=tuple(GroupChoice(g, keep_ratio=share) for g in LAYERS))
        pruned = apply_plan(model, plan, (x,), index=index).module
        macs = _macs(pruned, x[:1])[1]
        if best is None or abs(macs - target_macs) < abs(best[2] - target_macs):
            best = (pruned, share, macs)
    pruned, share, macs = best
    train(pruned, train_loader, tune)
    return pruned, share, macs


def _sent(gated, images, micro: int) -> dict[bool, float]:
    """Bytes per input part 0 sends to part 1 on Ray, the model cut at the gated activation conv 6 reads, with
    the runner's `sparse` off and on (the outputs checked equal to the model's)."""
    import networkx as nx

    from cluster.runners import RayRunner, loaders_for
    from decomp.build import build_graph
    from decomp.partition import PartitionPlan, split_model

    x = images[:micro]
    graph = build_graph(gated, (x,))
    conv = next(n for n in graph.compute_nodes() if graph[n].get("module") == "backbone.6")
    (cut,) = graph.nx.predecessors(conv)
    first = {cut, *nx.ancestors(graph.nx, cut)}
    plan = PartitionPlan.from_assignment({n: 0 if n in first else 1 for n in graph.compute_nodes()}, "dag", graph=graph)
    split = split_model(gated, (x,), plan)
    batches = [[images[i : i + micro]] for i in range(0, len(images) - micro + 1, micro)]
    sent = {}
    for sparse in (False, True):
        with RayRunner(split.layout, loaders_for(split.modules), sparse=sparse) as runner:
            outputs = list(runner.map(batches))
            sent[sparse] = runner.stats()[0]["bytes_out"] / (len(batches) * micro)
        with torch.no_grad():
            for (out,), (b,) in zip(outputs, batches, strict=True):
                torch.testing.assert_close(out, gated(b))
    return sent


def test_channel_gating_vs_static_pruning(tmp_path):
    data = load_data("digits").with_validation(0.2)
    test = DataLoader(data.test, batch_size=256)
    model = group_cnn(32)
    train_loader = DataLoader(data.train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    train(model, train_loader, TrainConfig(epochs=EPOCHS, lr=3e-3, schedule="cosine"))
    dense_accuracy = evaluate(model, test)
    x = next(iter(test))[0][:4]
    rows = []
    for keep in KEEPS:
        runs = []
        for seed in SEEDS:
            loader = DataLoader(data.train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed))
            tune = TrainConfig(epochs=TUNE, lr=3e-3, schedule="cosine", seed=seed)
            torch.manual_seed(seed)
            gated = GatedModel(copy_model(model), (x,), keep, LAYERS)
            losses = train_gates(gated, loader, tune, penalty=PENALTY)
            report = gating_report(gated, test)
            static, share, static_macs = _static(model, x, report.macs, tune, loader)
            runs.append((report, losses, share, static_macs, evaluate(static, test)))
            if seed == SEEDS[0]:
                images = torch.cat([x for x, _ in test])
                wire = {micro: _sent(gated, images[:WIRED], micro) for micro in MICRO}
        rows.append((keep, runs, wire))
    dense_macs = rows[0][1][0][0].dense_macs

    def spread(values) -> str:
        values = [100 * v for v in values]
        return f"{statistics.mean(values):.2f}% ({min(values):.2f}-{max(values):.2f})"

    lines = [
        "## Channel gating vs static pruning at equal MACs (digits CNN, CPU)",
        "",
        f"`group_cnn(32)` trained {EPOCHS} epochs on digits (test accuracy {100 * dense_accuracy:.2f}%, "
        f"{dense_macs / 1e6:.2f}M MACs per input). Gated: per-input gates on the output channels of conv layers "
        f"{', '.join(LAYERS)} (each read by the next conv), at most `keep` of each layer's channels open, trained "
        f"{TUNE} epochs with the backbone (L1 {PENALTY:g} on the saliencies); measured on the test split input "
        "by input, computing only the kept channels (MACs counted on what ran, gates included). Static: the same "
        "three coupling groups pruned uniformly (L1) to the width closest in MACs, fine-tuned the same "
        f"{TUNE} epochs.",
        "",
        "| keep (gated) | gated accuracy | gated MACs per input | channels open per input (for any input) of layers "
        f"{', '.join(LAYERS)} | same as mask form | static kept | static MACs | static accuracy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for keep, runs, _ in rows:
        report, _, share, static_macs, _ = runs[0]
        channels = ", ".join(f"{mean:.1f} ({ever}) of {width}" for mean, ever, width in report.channels.values())
        lines.append(
            f"| {keep:g} | **{spread(r[0].accuracy for r in runs)}** | {report.macs / 1e6:.3f}M "
            f"({100 * report.macs / dense_macs:.0f}%) | {channels} | "
            f"{100 * min(r[0].same_as_mask for r in runs):.1f}% | {100 * share:.0f}% | {static_macs / 1e6:.3f}M "
            f"({100 * static_macs / dense_macs:.0f}%) | **{spread(r[4] for r in runs)}** |"
        )
    lines += [
        "",
        f"Accuracy: mean over seeds {', '.join(map(str, SEEDS))} (min-max) on the {len(data.test)} test images "
        f"(one image is {100 / len(data.test):.2f} point); MACs and channels: seed {SEEDS[0]}.",
        "",
        f"Sent between parts (seed {SEEDS[0]}): the gated model split in 2 after the second block's gated "
        f"activation (the early-exit benchmark's cut), run on Ray over {WIRED} test images; bytes per input part 0 "
        "sent, with the runner sending activations dense and with `sparse` (open channels and their indices), "
        "and what the sliced form's open channels take:",
        "",
        "| keep | " + " | ".join(f"micro-batch {m}: dense / sparse" for m in MICRO) + " | open channels, sliced form |",
        "|---|" + "---|" * len(MICRO) + "---|",
    ]
    for keep, runs, wire in rows:
        open_bytes, dense_bytes = runs[0][0].bytes["3"]
        cells = " | ".join(f"{wire[m][False] / 1024:.1f} / **{wire[m][True] / 1024:.1f} KiB**" for m in MICRO)
        lines.append(f"| {keep:g} | {cells} | {open_bytes / 1024:.1f} of {dense_bytes / 1024:.1f} KiB |")
    record("channel-gating", lines)
    print("\n".join(lines))
    for _, runs, wire in rows:
        assert wire[1][True] < wire[1][False]
        for report, losses, _, static_macs, _ in runs:
            assert report.same_as_mask == 1.0 and report.macs < dense_macs
            assert losses[-1] <= losses[0] and static_macs < dense_macs
