"""Pictures of a review: the Pareto front (every pair of objectives, front ids labelled where they do not
overlap) with the hypervolume over trials, one candidate's partition drawn on the model graph, and the
self-contained HTML page that holds a picture and its tables (the figure as a base64 PNG: opens offline,
mails as one file)."""

from __future__ import annotations

import base64
import html
import io
import math
from collections import Counter
from itertools import combinations
from pathlib import Path
from typing import NamedTuple

import networkx as nx
import numpy as np

from cluster import review as rv
from cluster.candidate_view import CandidateView
from cluster.units import label, per_sample, unit_scale
from decomp.coarsen import coarsen

__all__ = ["Tab", "front_figure", "partition_figure", "plan_figure", "write_picture"]


class Tab(NamedTuple):
    """A table of a review: title, column headings, rows of cells, and a note on how to read it."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str = ""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def front_figure(review: rv.Review):
    """The front against every complete trial: 2-D for two objectives, 3-D for three, every pair for more
    (values against trial number for one), plus the hypervolume over trials. Quantities costed per micro-batch
    are drawn per sample; front candidates are labelled with their ids (`label_points`) up to 20 of them."""
    plt = _pyplot()
    m = len(review.objectives)
    complete = [r for r in review.rows if r.evaluation.ok]
    listed = {r.candidate.id for r in review.front} | {i for ids in review.same_plans.values() for i in ids}
    groups = {
        "dominated": ([r for r in review.rows if r.feasible and r.candidate.id not in listed], "#9ecae1", "o"),
        "infeasible": ([r for r in complete if not r.feasible], "#fc9272", "x"),
        "front": (review.front, "#08519c", "o"),
    }

    def shown(chosen, i):
        name = review.objectives[i].name
        return np.array([per_sample(name, r.evaluation.values[i], review.batch_size) for r in chosen])

    scales = [unit_scale(o.name, shown(complete, i), label(o.name)) for i, o in enumerate(review.objectives)]
    panels: list = ["trial"] if m == 1 else ["3d"] if m == 3 else list(combinations(range(m), 2))
    cols = min(len(panels) + 1, 3)
    rows = math.ceil((len(panels) + 1) / cols)
    fig = plt.figure(figsize=(5.2 * cols, 4.4 * rows))

    def values(chosen, i):
        return shown(chosen, i) * scales[i][0]

    pairs = []
    for k, panel in enumerate(panels):
        ax = fig.add_subplot(rows, cols, k + 1, projection="3d" if panel == "3d" else None)
        for kind, (chosen, colour, marker) in groups.items():
            if not chosen:
                continue
            if panel == "trial":
                ax.scatter([r.trial for r in chosen], values(chosen, 0), c=colour, marker=marker, label=kind)
            elif panel == "3d":
                ax.scatter(*(values(chosen, i) for i in range(3)), c=colour, marker=marker, label=kind)
            else:
                ax.scatter(values(chosen, panel[0]), values(chosen, panel[1]), c=colour, marker=marker, label=kind)
        if panel == "trial":
            ax.set_xlabel("trial")
            ax.set_ylabel(scales[0][1])
        elif panel == "3d":
            ax.set_xlabel(scales[0][1])
            ax.set_ylabel(scales[1][1])
            ax.set_zlabel(scales[2][1])
        else:
            ax.set_xlabel(scales[panel[0]][1])
            ax.set_ylabel(scales[panel[1]][1])
            pairs.append((ax, panel))
        if k == 0:
            ax.legend(fontsize=8)
    ax = fig.add_subplot(rows, cols, len(panels) + 1)
    if review.hypervolume:
        trials, volumes = zip(*review.hypervolume, strict=True)
        ax.step(trials, volumes, where="post", color="#08519c")
    ax.set_xlabel("trial")
    ax.set_ylabel("hypervolume")
    ax.set_title(f"normaliser: {review.normalizer_source}", fontsize=8)
    counts = review.counts()
    fig.suptitle(f"{review.study_name}: {counts['front']} non-dominated of {counts['complete']} complete trials")
    fig.tight_layout()  # before labelling: labels are placed in the final pixel positions of their points
    if 0 < len(review.front) <= 20:
        ids = [str(r.candidate.id) for r in review.front]
        for ax, (i, j) in pairs:
            label_points(ax, values(review.front, i), values(review.front, j), ids)
    return fig


# label candidates around a marker: 8 directions at growing distances (points), first the nearest free one
_DIRECTIONS = [(1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1)]
_RADII = (4.0, 10.0, 18.0, 28.0)
_MARKER = 4.0  # half the side of the box a marker keeps free of labels (points)
_GAP = 1.5  # space kept around a label (points): "4" beside "7" must not read "47"


def label_points(ax, xs, ys, texts: list[str], fontsize: float = 7) -> list:
    """Label each point (`xs`, `ys` in data units) with its text so that no two labels overlap and no label
    covers a labelled point: points drawn on one spot share one label ("3, 17"); each label takes the
    nearest free place around its point (a thin line joins it to a point it had to move away from), or,
    where none is free, the place that overlaps least. Call after the figure's layout is final."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    scale = fig.dpi / 72.0  # display pixels per point
    spots = ax.transData.transform(np.column_stack([xs, ys]))
    merged: list[tuple[np.ndarray, list[str]]] = []
    for spot, text in zip(spots, texts, strict=True):
        same = next((m for m in merged if np.abs(m[0] - spot).max() <= 2 * scale), None)
        if same is None:
            merged.append((spot, [text]))
        else:
            same[1].append(text)
    pad, gap = _MARKER * scale, _GAP * scale
    taken = [(x - pad, y - pad, x + pad, y + pad) for (x, y), _ in merged]
    frame = ax.get_window_extent(renderer).padded(-pad)  # clear of the spines too
    placed = []
    for (x, y), names in sorted(merged, key=lambda m: (m[0][0], -m[0][1])):
        text = ", ".join(names)
        probe = ax.text(0, 0, text, fontsize=fontsize)
        extent = probe.get_window_extent(renderer)
        probe.remove()
        best = None
        for radius in _RADII:
            for dx, dy in _DIRECTIONS:
                box = _box(x + dx * radius * scale, y + dy * radius * scale, dx, dy, extent.width, extent.height, gap)
                cost = sum(_overlap(box, other) for other in taken) + _outside(box, frame)
                if best is None or cost < best[0]:
                    best = (cost, radius, dx, dy, box)
            if best[0] == 0:
                break
        _, radius, dx, dy, box = best
        line = {"arrowstyle": "-", "lw": 0.5, "color": "#777777", "shrinkA": 0, "shrinkB": 3}
        note = ax.annotate(
            text,
            ax.transData.inverted().transform((x, y)),
            xytext=(dx * radius, dy * radius),
            textcoords="offset points",
            fontsize=fontsize,
            ha={1: "left", -1: "right", 0: "center"}[dx],
            va={1: "bottom", -1: "top", 0: "center"}[dy],
            arrowprops=line if radius > _RADII[0] else None,
        )
        taken.append(box)
        placed.append(note)
    return placed


def _box(x: float, y: float, dx: int, dy: int, width: float, height: float, gap: float) -> tuple[float, ...]:
    """The pixel box of a label anchored at (x, y) on the side of its point that (dx, dy) points to, `gap`
    wider on every side."""
    left = x if dx > 0 else x - width if dx < 0 else x - width / 2
    bottom = y if dy > 0 else y - height if dy < 0 else y - height / 2
    return left - gap, bottom - gap, left + width + gap, bottom + height + gap


def _overlap(a, b) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def _outside(box, frame) -> float:
    """Area of `box` outside the axes' frame."""
    inside = _overlap(box, (frame.x0, frame.y0, frame.x1, frame.y1))
    return (box[2] - box[0]) * (box[3] - box[1]) - inside


def partition_figure(view: CandidateView, max_ops: int = 40):
    """The run's model graph coloured by the candidate's parts (`plan_figure`)."""
    row = view.row
    title = f"candidate {row.candidate.id} (trial {row.trial}): {view.plan.parts} parts, {view.plan.mode}"
    return plan_figure(view.graph, view.plan, title, max_ops)


def plan_figure(graph, plan, title: str, max_ops: int = 40):
    """`graph` coloured by the parts of `plan`: every op for small graphs, else blocks of ops (a block whose ops
    lie in several parts takes its majority colour, outlined and labelled with its parts)."""
    plt = _pyplot()
    part = plan.part_of()
    if len(graph.compute_nodes()) <= max_ops:
        g = graph.nx.copy()
        parts_of = {n: Counter([part[n]]) if n in part else Counter() for n in g}
    else:
        blocks = coarsen(graph, blocks=max_ops // 2)
        g = blocks.nx.copy()
        parts_of = {b: Counter(part[m] for m in blocks[b].get("members", ()) if m in part) for b in g}
    for layer, nodes in enumerate(nx.topological_generations(g)):
        for n in nodes:
            g.nodes[n]["layer"] = layer
    # within a generation, ops in part order: each part's ops keep to one band across the picture
    rank = {n: (parts_of[n].most_common(1)[0][0] if parts_of[n] else -1, str(n)) for n in g}
    by_layer: dict[int, list] = {}
    for n in g:
        by_layer.setdefault(g.nodes[n]["layer"], []).append(n)
    pos = {}
    for layer, nodes in by_layer.items():
        for i, n in enumerate(sorted(nodes, key=rank.__getitem__)):
            pos[n] = (float(layer), (len(nodes) - 1) / 2 - i)
    palette = plt.get_cmap("tab10")
    colours, edges, labels = [], [], {}
    for n in g:
        counts = parts_of[n]
        colours.append(palette(counts.most_common(1)[0][0] % 10) if counts else "#d9d9d9")
        edges.append("black" if len(counts) > 1 else "none")
        labels[n] = f"{n}\n(parts {','.join(map(str, sorted(counts)))})" if len(counts) > 1 else n
    generations = max(nx.get_node_attributes(g, "layer").values(), default=0) + 1
    widest = max(Counter(nx.get_node_attributes(g, "layer").values()).values(), default=1)
    fig, ax = plt.subplots(figsize=(min(max(8.0, 0.9 * generations), 24.0), max(3.0, 1.2 * widest)))
    nx.draw_networkx_edges(g, pos, ax=ax, arrowsize=8, edge_color="#888888")
    nx.draw_networkx_nodes(g, pos, ax=ax, node_color=colours, edgecolors=edges, linewidths=2, node_size=420)
    nx.draw_networkx_labels(g, pos, labels, ax=ax, font_size=6)
    ops = Counter(part.values())
    handles = [
        plt.Line2D([], [], marker="o", ls="", color=palette(p % 10), label=f"part {p}: {ops[p]} ops")
        for p in range(plan.parts)
    ]
    ax.legend(handles=handles, fontsize=8, loc="best")
    ax.set_title(title)
    ax.axis("off")
    fig.tight_layout()
    return fig


def write_picture(fig, path: Path, title: str, tables: list[Tab]) -> None:
    """Save `fig` as a PNG, or as a self-contained HTML page holding the figure and `tables`."""
    plt = _pyplot()
    try:
        if path.suffix.lower() == ".png":
            fig.savefig(path, dpi=120)
            return
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=120)
    finally:
        plt.close(fig)
    image = base64.b64encode(buffer.getvalue()).decode("ascii")
    path.write_text(_page(title, image, tables), encoding="utf-8")


def _page(title: str, png_base64: str, tables: list[Tab]) -> str:
    esc = html.escape
    body = [f"<h1>{esc(title)}</h1>", f'<img alt="{esc(title)}" src="data:image/png;base64,{png_base64}">']
    for tab in tables:
        head = "".join(f"<th>{esc(c)}</th>" for c in tab.columns)
        cells = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>" for row in tab.rows)
        body.append(f"<table><caption>{esc(tab.title)}</caption><tr>{head}</tr>{cells}</table>")
        if tab.note:
            body.append("<p>" + "<br>".join(esc(line) for line in tab.note.splitlines()) + "</p>")
    style = (
        "body{font-family:sans-serif;margin:2em}img{max-width:100%}table{border-collapse:collapse;margin:1.5em 0}"
        "caption{font-weight:bold;text-align:left;padding:.3em 0}td,th{border:1px solid #ccc;padding:.2em .6em;"
        "text-align:right}td:first-child,th:first-child{text-align:left}"
    )
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{esc(title)}</title><style>{style}</style>'
        f"</head><body>{''.join(body)}</body></html>\n"
    )
