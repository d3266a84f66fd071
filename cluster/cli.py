"""The `decomp` command line: the entry point, and the commands on one model or export (graph, train, prune, split,
run, profile, calibrate). The search and review commands live in `cluster.cli_search` and `cluster.cli_review`."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from cluster import cli_review, cli_search, cli_serve  # noqa: F401 - importing registers their commands on `app`
from cluster.cli_app import (
    InputShapes,
    JsonOut,
    ModelSpec,
    Placement,
    PlanPicture,
    Replicas,
    Sparse,
    Transport,
    Weights,
    app,
    console,
    err_console,
    write_json,
)
from decomp.errors import DecompError, SpecError

__all__ = ["app", "main"]


@app.command()
def graph(
    model: ModelSpec,
    input_shape: InputShapes = None,
    depth: Annotated[Optional[int], typer.Option(help="group ops into blocks by this module depth")] = None,
    blocks: Annotated[Optional[int], typer.Option(help="group ops into about this many blocks")] = None,
    weights: Weights = None,
    tracer: Annotated[Optional[str], typer.Option(help="fx or export (default: what suits the spec)")] = None,
    leaf_module: Annotated[
        Optional[list[str]], typer.Option("--leaf-module", help="module class or path to keep whole (fx tracer)")
    ] = None,
    json_path: JsonOut = None,
    png: Annotated[Optional[Path], typer.Option(help="draw the block graph to this PNG")] = None,
    groups: Annotated[bool, typer.Option(help="find the coupling groups structured pruning can remove")] = True,
) -> None:
    """Trace MODEL into a costed graph and summarise it per block."""
    from cluster.render import auto_blocks, block_table, draw_blocks
    from decomp.build import build_graph
    from decomp.coarsen import coarsen
    from decomp.pruning import annotate_graph, find_groups
    from decomp.specs import load_model, parse_input_shape

    shapes = [parse_input_shape(s) for s in input_shape] if input_shape else None
    with console.status(f"tracing {model} ..."):
        loaded = load_model(model, weights=weights, input_shapes=shapes)
        inputs = loaded.example_inputs
        op_graph = build_graph(loaded.module, inputs, tracer or loaded.tracer, leaf_module or (), name=model)
        if groups:
            try:
                annotate_graph(op_graph, find_groups(loaded.module, inputs))
            except DecompError as err:
                console.print(f"[yellow]no coupling groups:[/] {err}")
        block_graph = auto_blocks(op_graph) if depth is None and blocks is None else coarsen(op_graph, depth, blocks)
    console.print(block_table(op_graph, block_graph))
    write_json(json_path, op_graph.to_json())
    if png is not None:
        draw_blocks(block_graph, png)
        console.print(f"wrote {png}")


@app.command()
def train(
    model: ModelSpec,
    data: Annotated[str, typer.Option(help="mnist, digits, synthetic?..., python:pkg.module:factory")],
    out: Annotated[Path, typer.Option(help="folder for weights.safetensors and summary.json")],
    epochs: Annotated[int, typer.Option(help="passes over the training data")] = 10,
    lr: Annotated[float, typer.Option(help="learning rate")] = 1e-3,
    batch_size: Annotated[int, typer.Option(help="samples per training step")] = 64,
    optimizer: Annotated[str, typer.Option(help="adam or sgd")] = "adam",
    schedule: Annotated[
        str, typer.Option(help="cosine (the rate annealed to 0 over the epochs) or constant")
    ] = "cosine",
    momentum: Annotated[float, typer.Option(help="sgd's momentum")] = 0.9,
    weight_decay: Annotated[float, typer.Option(help="decay of conv and linear weights (an L2 penalty)")] = 0.0,
    shift: Annotated[float, typer.Option(help="augment: move each training image by up to this many pixels")] = 0.0,
    rotate: Annotated[float, typer.Option(help="augment: turn each training image by up to this many degrees")] = 0.0,
    scale: Annotated[float, typer.Option(help="augment: resize each training image by up to this share")] = 0.0,
    seed: Annotated[int, typer.Option(help="seeds the initial weights, the batch order and the augmentation")] = 0,
    validation: Annotated[
        float, typer.Option(help="hold out this share of the training data and report its accuracy")
    ] = 0.0,
    weights: Weights = None,
    json_path: JsonOut = None,
) -> None:
    """Train MODEL on --data (from scratch, or on from --weights) and write its weights and a summary to --out."""
    from decomp.training import TrainRequest, run_train

    request = TrainRequest(
        model,
        data,
        epochs,
        lr,
        batch_size,
        optimizer,
        schedule,
        momentum,
        weight_decay,
        shift,
        rotate,
        scale,
        seed,
        str(weights) if weights else None,
        validation,
    )
    with console.status(f"training {model} on {data} ...") as status:
        summary = run_train(request, out, note=lambda text: status.update(f"training {model} on {data}: {text} ..."))
    result = Table(title=f"{model} trained on {data}")
    result.add_column("what")
    result.add_column("value", justify="right")
    result.add_row("test accuracy", f"{summary.start_accuracy:.2%} -> {summary.test_accuracy:.2%}")
    if summary.validation_accuracy is not None:
        result.add_row("validation accuracy", f"{summary.validation_accuracy:.2%}")
    result.add_row("mean loss, first -> last epoch", f"{summary.losses[0]:.4f} -> {summary.losses[-1]:.4f}")
    result.add_row("training samples x epochs", f"{summary.train_samples} x {len(summary.losses)}")
    result.add_row("seconds", f"{summary.seconds:.1f}")
    console.print(result)
    console.print(f"wrote {out}/weights.safetensors, summary.json")
    write_json(json_path, summary.to_json())


@app.command()
def prune(
    model: ModelSpec,
    out: Annotated[Path, typer.Option(help="folder for weights.safetensors, plan.json, summary.json")],
    method: Annotated[str, typer.Option(help="l1, l2, fpgm, bn_scale, taylor (channels); magnitude, han, nm")] = "l1",
    ratio: Annotated[Optional[float], typer.Option(help="share removed: channels, or weights for magnitude")] = None,
    quality: Annotated[Optional[float], typer.Option(help="han: threshold = quality x std per layer")] = None,
    pattern: Annotated[Optional[str], typer.Option(help="nm: N:M pattern such as 2:4")] = None,
    data: Annotated[Optional[str], typer.Option(help="mnist, digits, synthetic?..., python:pkg.module:factory")] = None,
    finetune_epochs: Annotated[int, typer.Option(help="epochs of fine-tuning after (each) pruning step")] = 0,
    iterations: Annotated[int, typer.Option(help="prune -> retrain rounds (magnitude, han, nm)")] = 1,
    scope: Annotated[str, typer.Option(help="local (same ratio per group) or global ranking")] = "local",
    round_to: Annotated[int, typer.Option(help="keep channel counts multiples of this")] = 1,
    lr: Annotated[float, typer.Option(help="fine-tuning learning rate")] = 1e-3,
    distill: Annotated[float, typer.Option(help="weight of distillation from the unpruned model, 0..1")] = 0.0,
    keep: Annotated[
        Optional[list[str]], typer.Option(help="a coupling group or module path to leave whole (repeatable)")
    ] = None,
    weights: Weights = None,
    json_path: JsonOut = None,
) -> None:
    """Prune MODEL once (or iteratively) without a search, and write the result to --out."""
    from cluster.render import prune_table
    from decomp.pruning.job import PruneRequest, run_prune

    request = PruneRequest(
        model,
        method,
        ratio,
        quality,
        pattern,
        data,
        finetune_epochs,
        iterations,
        scope,
        round_to,
        lr,
        weights=str(weights) if weights else None,
        distill=distill,
        keep=tuple(keep or ()),
    )
    with console.status(f"pruning {model} ({method}) ..."):
        summary = run_prune(request, out)
    console.print(prune_table(summary))
    console.print(f"wrote {out}/weights.safetensors, plan.json, summary.json")
    write_json(json_path, summary.to_json())


@app.command()
def split(
    model: Annotated[str, typer.Argument(help="model spec (as for graph); with --pruned, may be left as ''")],
    out: Annotated[Path, typer.Option(help="export folder to write (must not exist or be empty)")],
    parts: Annotated[int, typer.Option(help="number of parts")] = 2,
    mode: Annotated[
        str, typer.Option(help="pipeline (optimal DP cut points) or dag (graph partitioning)")
    ] = "pipeline",
    plan: Annotated[Optional[Path], typer.Option(help="a partition plan JSON to use instead of a baseline")] = None,
    pruned: Annotated[Optional[Path], typer.Option(help="a decomp prune --out folder: split its pruned model")] = None,
    method: Annotated[str, typer.Option(help="dag mode: auto, metis or kl")] = "auto",
    input_shape: InputShapes = None,
    weights: Weights = None,
    onnx: Annotated[bool, typer.Option(help="also write part_K.onnx (needs the onnx package)")] = False,
    balance: Annotated[
        str,
        typer.Option(
            help="pipeline stages balance: macs; time (op times profiled here); run (those times tuned by "
            "running candidate splits as Ray actors)"
        ),
    ] = "macs",
    threads: Annotated[int, typer.Option(help="torch threads per stage, for --balance time / run")] = 1,
    tune_steps: Annotated[int, typer.Option(help="--balance run: candidate splits to run at most")] = 4,
    width: Annotated[
        Optional[list[str]],
        typer.Option(
            help="split a layer's channels across the parts: LAYER:WAYS (gathered) or LAYER:WAYS:NEXT (paired with "
            "the layer reading them, summed); repeat for several; with --mode dag and --parts WAYS"
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing export folder")] = False,
    png: PlanPicture = None,
    json_path: JsonOut = None,
) -> None:
    """Split MODEL into parts with a baseline plan (or --plan, or --width), export them to --out and verify."""
    from cluster.render import split_table
    from decomp.partition.job import SplitRequest, run_split
    from decomp.partition.width import parse_width

    request = SplitRequest(
        model,
        parts,
        mode,
        plan=str(plan) if plan else None,
        pruned=str(pruned) if pruned else None,
        method=method,
        **_loading(weights, input_shape),
        onnx=onnx,
        balance=balance,
        threads=threads,
        tune_steps=tune_steps,
        width=tuple(parse_width(w) for w in width or ()),
    )
    run_stages = None
    if balance == "run":
        from cluster.runtime import stage_seconds

        run_stages = functools.partial(stage_seconds, threads=threads)
    with console.status(f"splitting {model or pruned} into {parts} parts ({mode}) ..."):
        summary = run_split(request, out, overwrite=overwrite, run_stages=run_stages)
    console.print(split_table(summary))
    console.print(f"wrote {summary.out} (verified: max abs diff {summary.max_abs_diff:.3g})")
    _draw_plan(png, summary.graph, summary.plan, f"{model or pruned}: {summary.plan.parts} parts ({summary.plan.mode})")
    write_json(json_path, summary.to_json())


def _draw_plan(png: Path | None, graph, plan, title: str) -> None:
    if png is None:
        return
    from cluster.figures import plan_figure, write_picture

    write_picture(plan_figure(graph, plan, title), png, title, [])
    console.print(f"wrote {png}")


def _loading(weights: Path | None, input_shape: list[str] | None) -> dict[str, Any]:
    """The weights and input shapes options of a request that loads a model."""
    from decomp.specs import parse_input_shape

    return {
        "weights": str(weights) if weights else None,
        "input_shapes": tuple(parse_input_shape(s) for s in input_shape or ()),
    }


@app.command()
def decompose(
    model: Annotated[str, typer.Argument(help="model spec (as for graph), traced with torch.fx")],
    chain: Annotated[str, typer.Option(help="module paths, comma-separated: first layer, layers run per group, last")],
    groups: Annotated[int, typer.Option(help="independent branches to cut the chain into")],
    out: Annotated[Path, typer.Option(help="export folder to write (must not exist or be empty)")],
    weights: Weights = None,
    input_shape: InputShapes = None,
    data: Annotated[
        Optional[str], typer.Option(help="score and fine-tune on: mnist, digits, python:pkg.module:factory")
    ] = None,
    finetune_epochs: Annotated[int, typer.Option(help="epochs with the weights between groups held at zero")] = 0,
    lr: Annotated[float, typer.Option(help="fine-tuning learning rate")] = 1e-3,
    batch_size: Annotated[int, typer.Option(help="fine-tuning batch size")] = 64,
    overwrite: Annotated[bool, typer.Option(help="replace an existing export folder")] = False,
    png: PlanPicture = None,
    json_path: JsonOut = None,
) -> None:
    """Cut a chain of MODEL's layers into independent branches (weights between channel groups pruned), one
    part per branch; fine-tune on --data; export to --out and verify."""
    from decomp.partition.decompose import DecomposeRequest, run_decompose

    request = DecomposeRequest(
        model,
        tuple(p.strip() for p in chain.split(",") if p.strip()),
        groups,
        **_loading(weights, input_shape),
        data=data,
        finetune_epochs=finetune_epochs,
        lr=lr,
        batch_size=batch_size,
    )
    with console.status(f"decomposing {chain} of {model} into {groups} branches ..."):
        summary = run_decompose(request, out, overwrite=overwrite)
    (p0, p1), (m0, m1) = summary.params, summary.macs
    console.print(
        f"{groups} branches on {summary.parts} parts: parameters {p0:,} -> {p1:,} ({100 * p1 / p0:.0f}%), MACs "
        f"{m0 / 1e6:.2f}M -> {m1 / 1e6:.2f}M ({100 * m1 / m0:.0f}%); bytes to parts {summary.bytes_to_parts:,}, "
        f"between branches inside the chain {summary.bytes_between_branches}"
    )
    if summary.accuracy is not None:
        console.print("accuracy " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in summary.accuracy.items()))
    else:
        console.print("no --data: the weights between groups are zeroed without fine-tuning; the export computes that")
    console.print(f"wrote {summary.out} (verified: max abs diff {summary.max_abs_diff:.3g})")
    _draw_plan(png, summary.graph, summary.plan, f"{model}: {chain} in {groups} branches, one part each")
    write_json(json_path, summary.to_json())


@app.command()
def exits(
    model: Annotated[
        str, typer.Argument(help="a trained classifier's model spec (as for graph), traced with torch.fx")
    ],
    at: Annotated[str, typer.Option(help="the op (fx node name, as decomp graph lists them) to put the exit after")],
    data: Annotated[str, typer.Option(help="data to train the head and measure on: mnist, digits, python:...")],
    out: Annotated[Path, typer.Option(help="export folder to write (must not exist or be empty)")],
    weights: Weights = None,
    input_shape: InputShapes = None,
    head_epochs: Annotated[int, typer.Option(help="epochs training the exit head (the backbone frozen)")] = 10,
    lr: Annotated[float, typer.Option(help="head learning rate")] = 1e-2,
    max_drop: Annotated[float, typer.Option(help="accuracy the exit may cost, a share (0.005: half a point)")] = 0.005,
    confidence: Annotated[float, typer.Option(help="confidence that the drop stays within --max-drop")] = 0.9,
    validation: Annotated[float, typer.Option(help="share of the training split to calibrate on")] = 0.2,
    overwrite: Annotated[bool, typer.Option(help="replace an existing export folder")] = False,
    png: PlanPicture = None,
    json_path: JsonOut = None,
) -> None:
    """Put an early exit after op --at of MODEL: train its head, calibrate its threshold on a validation split
    for --max-drop, measure it on the test split, export the model split at the exit (2 parts) and verify.
    `decomp eval OUT` then scores the export with the exit as the runtime applies it."""
    from decomp.partition.exit_job import ExitRequest, run_exits

    request = ExitRequest(
        model,
        at,
        data,
        **_loading(weights, input_shape),
        head_epochs=head_epochs,
        lr=lr,
        max_drop=max_drop,
        confidence=confidence,
        validation=validation,
    )
    with console.status(f"training and calibrating an exit after {at} of {model} ..."):
        summary = run_exits(request, out, overwrite=overwrite)
    test = summary.test
    threshold = "closed (no threshold keeps the budget)" if summary.threshold > 1 else f"{summary.threshold:.3f}"
    console.print(
        f"exit after {at}: threshold {threshold}; on the test split {100 * test['exit_share'][0]:.1f}% of inputs "
        f"leave there, accuracy {100 * test['accuracy']:.2f}% (the model's own {100 * test['final_accuracy']:.2f}%), "
        f"MACs per input {test['macs'] / 1e6:.3g}M of {test['full_macs'] / 1e6:.3g}M, bytes per input not sent "
        f"across the cut {test['bytes_not_sent'][0]:,.0f}"
    )
    console.print(f"wrote {summary.out} (verified: max abs diff {summary.max_abs_diff:.3g}); score it with")
    console.print(f"  decomp eval {summary.out} --local")
    _draw_plan(png, summary.graph, summary.plan, f"{model}: exit after {at}, 2 parts")
    write_json(json_path, summary.to_json())


@app.command()
def run(
    export: Annotated[Path, typer.Argument(help="an export folder written by decomp split or decomp export")],
    batch_size: Annotated[
        Optional[int], typer.Option(help="samples per batch (default: what the search priced, else the export's)")
    ] = None,
    micro_batches: Annotated[
        Optional[int],
        typer.Option(help="cut each batch into this many pipelined micro-batches (default: what the search priced)"),
    ] = None,
    batches: Annotated[int, typer.Option(help="batches to measure (after one warm-up batch)")] = 10,
    threads: Annotated[int, typer.Option(help="torch threads per part")] = 1,
    local: Annotated[bool, typer.Option(help="run the parts in this process instead of Ray actors")] = False,
    transport: Transport = "auto",
    replicas: Replicas = None,
    placement: Placement = "PACK",
    sparse: Sparse = False,
    json_path: JsonOut = None,
) -> None:
    """Run an export on random inputs, one Ray actor per part, and report throughput, latency and busy time."""
    from cluster.render import run_table
    from cluster.runtime import run_export

    where = "in this process" if local else "on Ray"
    with console.status(f"running {export} {where} ...") as status:
        report = run_export(
            export,
            batch_size,
            micro_batches,
            batches,
            threads,
            local,
            transport=transport,
            replicas=replicas,
            placement=placement,
            progress=lambda step: status.update(f"{export}: {step} ..."),
            sparse=sparse,
        )
    console.print(run_table(report))
    write_json(json_path, report.to_json())


@app.command()
def profile(
    model: ModelSpec,
    device: Annotated[str, typer.Option(help="cpu, or cuda / cuda:N where torch sees a GPU")] = "cpu",
    threads: Annotated[int, typer.Option(help="torch threads to profile and measure with")] = 1,
    table: Annotated[
        Optional[Path], typer.Option(help="op table file (default: per device under ~/.cache/decomp)")
    ] = None,
    input_shape: InputShapes = None,
    weights: Weights = None,
    repeats: Annotated[int, typer.Option(help="timed forward passes of the whole model")] = 20,
    sweep: Annotated[
        bool, typer.Option(help="first profile the layer sweep the op model learns from (once per device, ~3 min)")
    ] = False,
    unseen: Annotated[
        bool,
        typer.Option(help="do not profile MODEL's ops: predict it as an architecture this device never ran"),
    ] = False,
    json_path: JsonOut = None,
) -> None:
    """Profile MODEL's ops into this device's latency table, then print predicted vs measured latency.

    Ops a table lacks (an architecture nobody profiled here, a pruned shape) are priced by an op model
    learned from the table; --sweep gives it a sweep of synthetic layers to learn from, --unseen checks
    how well it prices MODEL."""
    from decomp.latency.job import ProfileRequest, run_profile
    from decomp.specs import parse_input_shape

    request = ProfileRequest(
        model,
        device,
        threads,
        str(table) if table else None,
        tuple(parse_input_shape(s) for s in input_shape or ()),
        str(weights) if weights else None,
        repeats,
        sweep,
        unseen,
    )
    doing = "pricing" if unseen else "profiling"
    with console.status(f"{doing} {model} on {device} ({threads} threads{', layer sweep first' if sweep else ''}) ..."):
        summary = run_profile(request)
    swept = f"layer sweep added {summary.sweep_added} signatures; " if sweep else ""
    console.print(
        f"{model}: {summary.ops} ops, {summary.ops_profiled_now} profiled now "
        f"({summary.profile_seconds:.1f} s); {swept}table {summary.table} holds {summary.table_entries} entries"
    )
    source = (
        f"{summary.ops_learned} ops priced by the op model, none of the model's ops timed"
        if unseen
        else "sum of the table's op times"
    )
    console.print(
        f"predicted {1000 * summary.predicted_s:.2f} ms | measured {1000 * summary.measured_s:.2f} ms "
        f"| error {100 * summary.error:+.1f}% ({source})"
    )
    write_json(json_path, summary.to_json())


@app.command()
def calibrate(
    models: Annotated[list[str], typer.Argument(help="model specs whose candidates to run (as for graph)")],
    ratios: Annotated[str, typer.Option(help="structured prune ratios, comma-separated")] = "0,0.5",
    holdout: Annotated[
        str, typer.Option(help="prune ratios to measure and predict but not fit on (out-of-sample check)")
    ] = "",
    parts: Annotated[str, typer.Option(help="pipeline part counts, comma-separated (those you will run)")] = "1,2",
    batch_size: Annotated[int, typer.Option(help="samples per batch")] = 8,
    micro_batches: Annotated[int, typer.Option(help="micro-batches per batch")] = 4,
    batches: Annotated[int, typer.Option(help="timed batches per candidate and round")] = 6,
    min_seconds: Annotated[
        float, typer.Option(help="each timed run streams batches for at least this long (noise of short runs)")
    ] = 1.0,
    rounds: Annotated[int, typer.Option(help="rounds interleaved over the candidates; the fastest is kept")] = 2,
    threads: Annotated[int, typer.Option(help="torch threads per part")] = 1,
    runtime: Annotated[str, typer.Option(help="ray (one actor per part) or local (in-process, --parts 1)")] = "ray",
    table: Annotated[Optional[Path], typer.Option(help="op table file (default: this device's)")] = None,
    out: Annotated[Optional[Path], typer.Option(help="calibration file (default: beside the op table)")] = None,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster address (default: a local Ray)")] = None,
    json_path: JsonOut = None,
) -> None:
    """Run candidates of MODELS through the runtime and fit this device's latency calibration."""
    from cluster.calibrate import CalibrateRequest, run_calibration

    try:
        ratio_list = tuple(float(r) for r in ratios.split(","))
        holdout_list = tuple(float(r) for r in holdout.split(",") if r.strip())
        part_list = tuple(int(k) for k in parts.split(","))
    except ValueError:
        raise SpecError(
            f"--ratios, --holdout and --parts take comma-separated numbers, got {ratios!r}, {holdout!r}, {parts!r}"
        ) from None
    request = CalibrateRequest(
        tuple(models),
        ratio_list,
        holdout_list,
        part_list,
        batch_size,
        micro_batches,
        batches,
        rounds,
        threads,
        runtime,
        str(table) if table else None,
        str(out) if out else None,
        min_seconds=min_seconds,
    )
    if runtime == "ray":
        from cluster.connect import connect

        connect(address)
    with console.status("calibrating ...") as status:
        summary = run_calibration(request, note=status.update)
    result = Table(title=f"calibration for {summary.device} ({runtime})")
    for column in ("candidate", "measured samples/s", "predicted samples/s", "error", "fitted on"):
        result.add_column(column)
    for row in summary.candidates:
        result.add_row(
            row.candidate,
            f"{row.measured:.2f}",
            f"{row.predicted:.2f}",
            f"{100 * row.error:+.1f}%",
            "held out" if row.held_out else "yes",
        )
    console.print(result)
    terms = ", ".join(f"{k}={v:.3g}" for k, v in summary.calibration.to_json().items())
    held = summary.holdout_mape
    held_text = f"; held-out MAPE {100 * held:.1f}%" if held is not None else ""
    console.print(
        f"fitted {terms}; in-sample MAPE {100 * summary.mape:.1f}%{held_text}; saved {summary.calibration_file}"
    )
    write_json(json_path, summary.to_json())


def main() -> None:
    """Console entry point: run the app and turn decomp errors into one clear message and exit code 2."""
    try:
        app()
    except DecompError as err:
        err_console.print(f"[bold red]error:[/] {type(err).__name__}: {err}", markup=True, highlight=False)
        sys.exit(2)
