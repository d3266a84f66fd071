"""The `decomp` app object, its consoles, and the options several commands share (declared once here).

Commands live in `cluster.cli` (model, split, run, profile, calibrate), `cluster.cli_search` (search) and
`cluster.cli_review` (pareto, dashboard, export); each registers itself on `app` when imported, and
`cluster.cli` imports them all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

__all__ = ["InputShapes", "JsonOut", "ModelSpec", "Weights", "app", "console", "err_console", "write_json"]

app = typer.Typer(
    help="decomp: prune and partition neural networks, searched jointly, run in parallel.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)

ModelSpec = Annotated[str, typer.Argument(help="torchvision:NAME, hf:MODEL_TYPE or python:pkg.module:factory")]
InputShapes = Annotated[
    Optional[list[str]], typer.Option("--input-shape", help="e.g. 1,3,224,224; repeat for several inputs")
]
PlanPicture = Annotated[Optional[Path], typer.Option(help="draw the model graph coloured by part to this PNG")]
Weights = Annotated[Optional[Path], typer.Option(help="a .safetensors file or a saved state dict")]
JsonOut = Annotated[Optional[Path], typer.Option("--json", help="also write the result as JSON to this file")]
# how an export's parts run on Ray (decomp run, decomp serve)
Transport = Annotated[
    str,
    typer.Option(
        help="how tensors travel between parts: auto (NCCL between parts with a GPU each, else the object store), "
        "nccl, gloo (CPU parts, Ray Direct Transport) or object-store"
    ),
]
Replicas = Annotated[
    Optional[int],
    typer.Option(help="copies of the pipeline side by side, batches dealt in turn (default: what the search priced)"),
]
Sparse = Annotated[
    bool,
    typer.Option(
        help="send activations whose channels are at least half zero as their nonzero channels and indices (the "
        "closed channels of a channel-gated model; object store only)"
    ),
]
Placement = Annotated[
    str,
    typer.Option(
        help="how each copy's parts spread over nodes: PACK, SPREAD, STRICT_PACK or STRICT_SPREAD (a part whose "
        "device names a node, e.g. n1/cpu, runs on that node)"
    ),
]


@app.callback()
def _root() -> None:
    """decomp: prune and partition neural networks, searched jointly, run in parallel."""


def write_json(path: Path | None, data: Any) -> None:
    """Write `data` as indented JSON to `path` (the `--json` option) and say so; nothing when `path` is None."""
    if path is not None:
        path.write_text(json.dumps(data, indent=1))
        console.print(f"wrote {path}")
