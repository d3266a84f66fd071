"""Reviewing a run: `decomp pareto` (front table, JSON, hypervolume, PNG/HTML, one candidate), `decomp export`
(pruned, split, verified, runnable) and `decomp dashboard` (optuna-dashboard on the run's storage), on run
folders built by hand from a tiny model's joint space and cost evaluator."""

import io
import json
import re
import shutil
import wsgiref.util
from dataclasses import replace
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.text import Text
from typer.testing import CliRunner

import cluster.cli_review  # noqa: F401 - registers pareto, dashboard and export on the app
from cluster import dashboard as dash
from cluster import review as rv
from cluster.cli import app
from cluster.config import JobConfig
from cluster.figures import label_points
from cluster.runs import NORMALIZER_ATTR, open_study, read_run_config, storage_of, write_run_config
from cluster.units import format_value
from decomp import build_graph, load_model
from decomp.errors import SpecError
from decomp.latency import CostModel
from decomp.partition import load_export, read_manifest
from decomp.pruning import annotate_graph, apply_plan, channel_importance, find_groups
from search.joint import JointConfig, JointSpace
from search.objectives import CostEvaluator
from search.pareto import Normalizer, hypervolume, minimized
from search.records import Candidate, Evaluation
from search.study import create_study, record_trial

TINY = "python:tests.tiny_models:tiny_net"
OBJECTIVES = ["accuracy_proxy", "macs", "comm_bytes"]  # accuracy_proxy is maximised
TRIALS, FAILED = 12, 3  # candidate 3 fails, as a worker would report it
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny():
    """The tiny model's costed, group-annotated graph, its joint space, evaluator and 12 candidates."""
    loaded = load_model(TINY)
    graph = build_graph(loaded.module, loaded.example_inputs, loaded.tracer, name=TINY)
    annotate_graph(graph, find_groups(loaded.module, loaded.example_inputs))
    space = JointSpace(graph, 2, JointConfig(levels=(1.0, 0.75, 0.5), max_parts=2))
    rng = np.random.default_rng(0)
    candidates = []
    for i in range(TRIALS):
        genome = space.sample(rng)
        pruning, partition = space.decode(genome)
        candidates.append(Candidate(i, "nsga2" if i % 2 else "random", genome, pruning, partition))
    index = find_groups(loaded.module, loaded.example_inputs)
    importances = {gid: channel_importance(index, gid, "l1").tolist() for gid in graph.nx.graph["groups"]}
    evaluator = CostEvaluator(CostModel(graph, micro_batches=4, importances=importances))
    memory = sorted(evaluator(c)["peak_memory"] for c in candidates)
    return space, evaluator, candidates, memory[len(memory) * 3 // 4]  # a bound that some candidates break


def make_run(folder: Path, tiny, objectives=OBJECTIVES, normalizer: bool = False) -> Path:
    """A run folder as a search leaves it: config.yaml and a journal study with every candidate recorded."""
    space, evaluator, candidates, bound = tiny
    config = JobConfig(
        name="tiny",
        model=TINY,
        objectives=objectives,
        constraints=[{"name": "peak_memory", "max": bound}],
        space={"levels": [1.0, 0.75, 0.5], "max_parts": 2},
        budget={"evaluations": TRIALS},
        run={"folder": str(folder)},
    )
    write_run_config(folder, config)
    config = read_run_config(folder)
    objs, constraints = config.objective_records(), config.constraint_records()
    study = create_study(objs, storage_of(folder, config), config.name)
    for c in candidates:
        e = (
            Evaluation.failed(c.id, "worker died: out of memory")
            if c.id == FAILED
            else evaluator.evaluate(c, objs, constraints)
        )
        record_trial(study, c, e, objs, constraints, space)
    if normalizer:
        points = minimized([evaluator.evaluate(c, objs).values for c in candidates], objs)
        study.set_user_attr(NORMALIZER_ATTR, Normalizer.from_points(points, margin=0.1).to_json())
    return folder


@pytest.fixture(scope="module")
def run(tiny, tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("runs") / "tiny", tiny)


def feasible_points(tiny, objectives=OBJECTIVES) -> dict[int, np.ndarray]:
    """Objective values (maximised ones negated) of the complete trials within the memory bound."""
    _, evaluator, candidates, bound = tiny
    metrics = {c.id: evaluator(c) for c in candidates if c.id != FAILED}
    sign = {"accuracy_proxy": -1.0, "throughput": -1.0}
    return {
        i: np.array([sign.get(n, 1.0) * m[n] for n in objectives])
        for i, m in metrics.items()
        if m["peak_memory"] <= bound
    }


def expected_front(tiny, objectives=OBJECTIVES) -> set[int]:
    """Candidate ids of the non-dominated feasible trials, by brute force (independent of moocore)."""
    points = feasible_points(tiny, objectives)
    return {i for i, p in points.items() if not any(np.all(q <= p) and np.any(q < p) for q in points.values())}


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_pareto_lists_the_front_and_writes_json_and_png(run, tiny, tmp_path):
    result = invoke("pareto", run, "--json", tmp_path / "front.json", "--plot", tmp_path / "front.png")
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "front.json").read_text())
    front = expected_front(tiny)
    assert 1 < len(front) < TRIALS - 1  # some trials dominated or infeasible: the test means something
    assert {row["candidate_id"] for row in data["front"]} == front
    assert all(row["feasible"] and set(row["values"]) == set(OBJECTIVES) for row in data["front"])
    infeasible = TRIALS - 1 - len(feasible_points(tiny))
    assert infeasible > 0
    assert data["counts"] == {
        "trials": TRIALS,
        "complete": TRIALS - 1,
        "failed": 1,
        "infeasible": infeasible,
        "front": len(front),
    }
    columns, rows = rv.front_rows(rv.review_run(run))
    assert {int(r[0]) for r in rows} == front and columns == ["id", "parts", "proxy ↑", "MACs ↓", "comm ↓"]
    assert f"Pareto front ({len(front)} candidates)" in result.output
    assert all({"trial", "searcher", "constraints", "metrics", "per_sample"} <= set(row) for row in data["front"])
    assert "fixed from all 11 complete trials (the study stores none)" in " ".join(result.output.split())
    volumes = [h["hypervolume"] for h in data["hypervolume"]]
    assert [h["trial"] for h in data["hypervolume"]] == list(range(TRIALS)) and volumes == sorted(volumes)
    assert volumes[-1] > 0
    assert (tmp_path / "front.png").read_bytes().startswith(PNG)


def test_hypervolume_uses_the_studys_normaliser(tiny, tmp_path):
    folder = make_run(tmp_path / "run", tiny, normalizer=True)
    review = rv.review_run(folder)
    _, study = open_study(folder)
    normalizer = Normalizer.from_json(study.user_attrs[NORMALIZER_ATTR])
    assert review.normalizer == normalizer and review.normalizer_source == "the study's"
    points = minimized([r.evaluation.values for r in review.front], review.objectives)
    assert review.hypervolume[-1][1] == pytest.approx(hypervolume(points, normalizer))


@pytest.mark.parametrize("objectives", [["macs", "comm_bytes"], ["accuracy_proxy", "macs", "comm_bytes", "throughput"]])
def test_front_pictures_for_two_and_four_objectives_and_html(tiny, tmp_path, objectives):
    folder = make_run(tmp_path / "run", tiny, objectives)
    result = invoke("pareto", folder, "--plot", tmp_path / "front.html", "--json", tmp_path / "front.json")
    assert result.exit_code == 0, result.output
    page = (tmp_path / "front.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and 'src="data:image/png;base64,' in page and "<script" not in page
    ids = {row["candidate_id"] for row in json.loads((tmp_path / "front.json").read_text())["front"]}
    assert ids == expected_front(tiny, objectives)
    assert all(f"<tr><td>{i}</td>" in page for i in ids)  # the front table is on the page too


def test_candidate_shows_keep_ratios_and_draws_its_partition(run, tiny, tmp_path):
    _, _, candidates, _ = tiny
    chosen = next(c for c in candidates if c.pruning.groups and c.partition.parts == 2 and c.id != FAILED)
    out = tmp_path / "candidate.json"
    result = invoke("pareto", run, "--candidate", chosen.id, "--json", out, "--plot", tmp_path / "part.png")
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    asked = {g.group: g.keep_ratio for g in chosen.pruning.groups}
    groups = {g["group"]: g for g in data["groups"]}
    assert set(groups) == {"stem", "branches.left", "branches.right", "fuse"}
    for gid, g in groups.items():
        assert g["asked"] == asked.get(gid, 1.0)
        assert g["kept"] == round(g["keep_ratio"] * g["channels"]) and abs(g["keep_ratio"] - g["asked"]) < 0.13
    assert [p["ops"] for p in data["partition"]] == [len(m) for m in chosen.partition.members()]
    assert data["partition_plan"] == chosen.partition.to_json() and data["candidate_id"] == chosen.id
    assert "keep ratio per coupling group" in result.output and "branches.left" in result.output
    assert (tmp_path / "part.png").read_bytes().startswith(PNG)
    result = invoke("pareto", run, "--candidate", chosen.id, "--plot", tmp_path / "part.html")
    assert result.exit_code == 0, result.output
    assert "keep ratio per coupling group" in (tmp_path / "part.html").read_text()


def test_export_prunes_splits_verifies_and_runs(run, tiny, tmp_path):
    front = expected_front(tiny)
    _, _, candidates, _ = tiny
    chosen = next(c for c in candidates if c.id in front and c.pruning.groups and c.partition.parts == 2)
    out = tmp_path / "export"
    result = invoke("export", run, "--candidate", chosen.id, "--out", out, "--json", tmp_path / "summary.json")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["max_abs_diff"] <= 1e-5 and summary["parts"] == 2
    assert summary["params_after"] < summary["params_before"]
    manifest = read_manifest(out)
    assert manifest.partition_plan.to_json() == chosen.partition.to_json() and manifest.source == TINY
    assert manifest.expected_costs["search"]["candidate_id"] == chosen.id
    loaded = load_model(TINY)
    pruned = apply_plan(loaded.module, chosen.pruning, loaded.example_inputs).module
    x = torch.randn(3, *loaded.example_inputs[0].shape[1:])
    (got,) = load_export(out)(x)
    with torch.no_grad():
        torch.testing.assert_close(got, pruned(x), rtol=0, atol=1e-5)
    ran = invoke("run", out, "--local", "--batches", 2)
    assert ran.exit_code == 0, ran.output
    assert "throughput" in ran.output
    scored = invoke("eval", out, "--local")  # the run measured no accuracy: the export names no data
    assert isinstance(scored.exception, SpecError) and "records no data" in str(scored.exception)
    assert "--data mnist" in str(scored.exception) and "measured_on" not in manifest.expected_costs["search"]


def test_errors_name_the_problem(run, tiny, tmp_path):
    result = invoke("pareto", run, "--candidate", 999)
    assert isinstance(result.exception, SpecError)
    assert "no candidate 999; candidates on the front:" in str(result.exception)
    assert str(min(expected_front(tiny))) in str(result.exception)
    result = invoke("export", run, "--candidate", FAILED, "--out", tmp_path / "x")
    assert isinstance(result.exception, SpecError) and "worker died: out of memory" in str(result.exception)
    assert not (tmp_path / "x").exists()
    result = invoke("export", tmp_path, "--candidate", 0, "--out", tmp_path / "y")
    assert isinstance(result.exception, SpecError) and "is not a run folder (no config.yaml)" in str(result.exception)
    result = invoke("pareto", run, "--plot", tmp_path / "front.svg")
    assert isinstance(result.exception, SpecError) and "--plot writes .png or .html" in str(result.exception)


def _get(wsgi_app, path: str):
    """GET `path` from a WSGI app in-process: (status, parsed JSON body)."""
    environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}
    wsgiref.util.setup_testing_defaults(environ)
    status = []
    body = b"".join(wsgi_app(environ, lambda s, headers, exc_info=None: status.append(s)))
    return status[0], json.loads(body)


def test_dashboard_serves_the_runs_study_on_loopback(run, monkeypatch):
    wsgi_app = dash.dashboard_app(run)
    status, data = _get(wsgi_app, "/api/studies")
    assert status == "200 OK"
    (study,) = data["study_summaries"]
    assert study["study_name"] == "tiny" and study["directions"] == ["maximize", "minimize", "minimize"]
    status, detail = _get(wsgi_app, f"/api/studies/{study['study_id']}")
    assert status == "200 OK" and len(detail["trials"]) == TRIALS
    served = []
    monkeypatch.setattr(dash, "serve", lambda app_, host, port: served.append((app_, host, port)))
    result = invoke("dashboard", run)
    assert result.exit_code == 0, result.output
    assert served[0][1:] == ("127.0.0.1", 8080) and callable(served[0][0])
    assert "http://127.0.0.1:8080/" in result.output and "warning" not in result.output
    result = invoke("dashboard", run, "--host", "0.0.0.0", "--port", 8999)
    assert served[1][1:] == ("0.0.0.0", 8999) and "anyone who reaches it" in result.output


def test_a_moved_run_folder_reviews_the_same(run, tmp_path):
    copy = tmp_path / "moved"
    shutil.copytree(run, copy)  # config.yaml still names the old folder: the review reads the one it is given
    assert rv.review_json(rv.review_run(copy))["front"] == rv.review_json(rv.review_run(run))["front"]


BATCH, MICRO = 16, 4  # the measured run's graph is costed at micro-batches of 16 samples


def make_measured_run(
    folder: Path, tiny, repeat: int | None = None, unpruned: float | None = None, bound: float | None = None
) -> Path:
    """A run as a search with accuracy at three fidelity levels leaves it: accuracy (validation), test accuracy
    and the level reached per candidate, beside the cheap metrics; `repeat`: one more candidate with the plans
    of that one (its genome asked again) and its result; `unpruned`: one more, the unpruned model in one part,
    at that accuracy; `bound`: the peak-memory bound, if not the one some candidates break."""
    space, evaluator, candidates, memory = tiny
    bound = memory if bound is None else bound
    config = JobConfig(
        name="measured",
        model=TINY,
        data="digits",
        objectives=["accuracy", "macs", "latency_s", "comm_bytes"],
        constraints=[{"name": "peak_memory", "max": bound}],
        space={"levels": [1.0, 0.75, 0.5], "max_parts": 2},
        budget={"evaluations": TRIALS},
        latency={"batch_size": BATCH, "micro_batches": MICRO},
        accuracy={"finetune_epochs": 1, "short_epochs": 0.5},
        run={"folder": str(folder)},
    )
    write_run_config(folder, config)
    config = read_run_config(folder)
    objs, constraints = config.objective_records(), config.constraint_records()
    study = create_study(objs, storage_of(folder, config), config.name)
    extra = [] if repeat is None else [replace(candidates[repeat], id=TRIALS)]
    if unpruned is not None:
        genome = space.baselines()[0]
        extra.append(Candidate(TRIALS + 1, "nsga2", genome, *space.decode(genome)))
    for c in [*candidates, *extra]:
        m = evaluator(c)
        accuracy = unpruned if c.id == TRIALS + 1 else 0.5 + 0.45 * m["accuracy_proxy"]
        metrics = m | {"accuracy": accuracy, "test_accuracy": accuracy - 0.01, "level": float(c.id % 3)}
        e = Evaluation.of(c.id, [metrics[o.name] for o in objs], [m["peak_memory"]], metrics)
        record_trial(study, c, e, objs, constraints, space)
    return folder


def test_the_front_table_fits_80_columns_with_levels_test_accuracy_and_macs_per_sample(tiny, tmp_path):
    folder = make_measured_run(tmp_path / "run", tiny)
    result = CliRunner().invoke(app, ["pareto", str(folder), "--json", str(tmp_path / "f.json")], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    review = rv.review_run(folder)
    columns, rows = rv.front_rows(review)
    assert columns == ["id", "parts", "level", "val acc ↑", "MACs ↓", "latency ↓", "comm ↓", "test acc"]
    assert len(rows) > 2
    for cells in rows:  # each candidate on one line, every cell whole, in column order
        pattern = r"\s+".join(re.escape(c) for c in cells)
        assert sum(bool(re.search(pattern, line)) for line in lines) == 1, (cells, result.output)
    data = json.loads((tmp_path / "f.json").read_text())
    assert data["costed_at"] == {"batch_size": BATCH, "micro_batches": MICRO}
    for cells, row in zip(rows, data["front"], strict=True):
        macs = row["values"]["macs"]
        assert row["per_sample"] == {"macs": macs / BATCH, "comm_bytes": row["values"]["comm_bytes"] / BATCH}
        assert cells[4] == format_value("macs", macs / BATCH, compact=True) != format_value("macs", macs, True)
        assert cells[2] == ("bn", "short", "full")[row["candidate_id"] % 3] == row["level"]
        assert cells[7] == f"{100 * row['metrics']['test_accuracy']:.2f}%"
    note = " ".join(result.output.split())
    assert f"latency: a batch of {MICRO} micro-batches of {BATCH}" in note and "per sample: MACs, comm" in note
    assert "level: the fidelity the candidate reached (bn < short < full)" in note
    assert f"every candidate meets peak_memory ≤ {format_value('peak_memory', tiny[3], compact=True)}" in note


def test_the_front_lists_a_candidate_asked_again_once(tiny, tmp_path):
    front = sorted(expected_front(tiny))
    folder = make_measured_run(tmp_path / "run", tiny, repeat=front[0])
    review = rv.review_run(folder)
    ids = [r.candidate.id for r in review.front]
    assert front[0] in ids and TRIALS not in ids and review.same_plans == {front[0]: [TRIALS]}
    result = CliRunner().invoke(app, ["pareto", str(folder), "--json", str(tmp_path / "f.json")], env={"COLUMNS": "80"})
    assert f"same plans as a listed candidate, not listed: {TRIALS} (= {front[0]})" in " ".join(result.output.split())
    rows = {r["candidate_id"]: r for r in json.loads((tmp_path / "f.json").read_text())["front"]}
    assert rows[front[0]]["same_plans"] == [TRIALS]
    result = invoke("pareto", folder, "--candidate", TRIALS, "--json", tmp_path / "c.json")
    assert f"on the front (listed as {front[0]}: the same plans)" in " ".join(result.output.split())
    assert json.loads((tmp_path / "c.json").read_text())["same_plans_as"] == front[0]


def test_the_note_names_the_unpruned_model_where_the_front_leaves_it_out(tiny, tmp_path):
    best = rv.review_run(make_measured_run(tmp_path / "plain", tiny))
    top = max(r.evaluation.metrics["accuracy"] for r in best.front)
    cases = [  # accuracy, peak-memory bound, on the front, why not
        (top - 0.2, 2**40, False, "a listed candidate is as good in every objective and better in one"),
        (1.0, None, False, "it does not meet peak_memory"),
        (1.0, 2**40, True, None),
    ]
    for i, (accuracy, bound, listed, why) in enumerate(cases):
        review = rv.review_run(make_measured_run(tmp_path / str(i), tiny, unpruned=accuracy, bound=bound))
        assert review.unpruned().candidate.id == TRIALS + 1
        assert (TRIALS + 1 in [r.candidate.id for r in review.front]) == listed
        note = " ".join(rv.front_note(review).split())
        mentioned = f"the unpruned model (candidate {TRIALS + 1}: val acc {100 * accuracy:.2f}%" in note
        assert mentioned != listed and (why is None or f"is not on the front: {why}" in note)


def _boxes(fig, texts):
    """Where the texts are drawn (an annotation's own extent would take in its leader line)."""
    fig.canvas.draw()  # annotations take their places when drawn
    renderer = fig.canvas.get_renderer()
    return [Text.get_window_extent(t, renderer) for t in texts]


def test_front_labels_do_not_overlap_each_other_or_the_points():
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    xs = np.concatenate([rng.normal(50, 2.0, 14), [10.0, 90.0, 90.0]])  # a tight cluster, two points on one spot
    ys = np.concatenate([rng.normal(50, 2.0, 14), [10.0, 90.0, 90.0]])
    ids = [str(i) for i in range(len(xs))]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(xs, ys)
    fig.tight_layout()
    spots = list(zip(ids, xs, ys, strict=True))
    naive = [ax.annotate(i, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points") for i, x, y in spots]
    boxes = _boxes(fig, naive)
    assert any(a.overlaps(b) for a, b in combinations(boxes, 2))  # as labels were placed before: overlapping
    for t in naive:
        t.remove()
    placed = label_points(ax, xs, ys, ids)
    texts = [t.get_text() for t in placed]
    assert "15, 16" in texts and sorted(i for t in texts for i in t.split(", ")) == sorted(ids)  # one per spot
    boxes = _boxes(fig, placed)
    assert not any(a.padded(1.0).overlaps(b.padded(1.0)) for a, b in combinations(boxes, 2))  # and apart
    points = ax.transData.transform(np.column_stack([xs, ys]))
    pad = 2.0 * fig.dpi / 72  # a marker's radius (default size 6 points)
    for box in boxes:
        assert not any(
            box.x0 < x + pad and x - pad < box.x1 and box.y0 < y + pad and y - pad < box.y1 for x, y in points
        )
    plt.close(fig)
