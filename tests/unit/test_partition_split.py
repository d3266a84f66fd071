"""Splitting a model by a PartitionPlan: the parts compose to the original model, whatever the plan."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from decomp import build_graph
from decomp.errors import InvalidPlanError
from decomp.partition.plan import PartitionPlan, quotient, repair
from decomp.partition.split import flat_outputs, split_model
from decomp.pruning import apply_plan, find_groups, plan_for_ratio
from tests.tiny_prunable import Split as ShapeSplit  # a tuple (torch.split) and sizes that must not cross parts


class ResidualBlock(nn.Module):
    """conv-bn-relu-conv-bn plus a 1x1 shortcut, added, then pool -> flatten -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.shortcut = nn.Conv2d(3, 8, 1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        y = F.relu(y + self.shortcut(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


class Parallel(nn.Module):
    """A stem, two parallel branches concatenated on channels, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.left = nn.Conv2d(6, 4, 1)
        self.right = nn.Sequential(nn.Conv2d(6, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        s = torch.relu(self.stem(x))
        return self.head(torch.cat([self.left(s), self.right(s)], dim=1))


class TwoHeads(nn.Module):
    """Returns a dict of two tensors made in different places."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        features = torch.flatten(F.adaptive_avg_pool2d(torch.relu(self.conv(x)), 1), 1)
        return {"logits": self.fc(features), "features": features}


class InPlace(nn.Module):
    """`a` is read by a multiply and then changed in place by a ReLU (legal in eager mode, in that order)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        a = self.conv(x)
        b = a * 2
        c = F.relu(a, inplace=True)
        return b + c


class Checked(nn.Module):
    """Reads sizes off its input and asserts one of them."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        n, c, h, w = x.shape
        torch._assert(h == 8, "height must be 8")
        return self.conv(x).reshape(n, -1)


def _image() -> tuple[torch.Tensor, ...]:
    return (torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)),)


def _model(cls) -> nn.Module:
    torch.manual_seed(0)
    return cls().eval()


def _pipeline(graph, parts: int) -> PartitionPlan:
    n = len(graph.compute_nodes())
    return PartitionPlan.pipeline(graph, [n * k // parts for k in range(1, parts)])


def _assert_composes(model, inputs, plan, tracer="fx"):
    split = split_model(model, inputs, plan, tracer=tracer)
    with torch.no_grad():
        expected = flat_outputs(model(*inputs))
        got = split(*inputs)
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a.shape == b.shape
        assert float((a - b).abs().max()) <= 1e-5
    return split


@pytest.mark.parametrize("cls", [ResidualBlock, Parallel, TwoHeads, InPlace, ShapeSplit])
@pytest.mark.parametrize("parts", [2, 3])
def test_pipeline_split_composes_to_the_model(cls, parts):
    model, inputs = _model(cls), _image()
    plan = _pipeline(build_graph(model, inputs), parts)
    split = _assert_composes(model, inputs, plan)
    assert len(split.modules) == len(split.layout.parts) == parts
    assert [p.name for p in split.layout.parts] == [f"part_{k}" for k in range(parts)]


@pytest.mark.parametrize("cls", [ResidualBlock, Parallel, TwoHeads, InPlace, ShapeSplit])
def test_any_dag_plan_composes_to_the_model(cls):
    """Every op in its own part modulo 3, repaired into an acyclic plan: parts interleave in topological order."""
    model, inputs = _model(cls), _image()
    graph = build_graph(model, inputs)
    plan = repair(graph, {n: i % 3 for i, n in enumerate(graph.compute_nodes())})
    assert plan.mode == "dag"
    _assert_composes(model, inputs, plan)


def test_parallel_branches_run_in_parts_that_do_not_talk_to_each_other():
    model, inputs = _model(Parallel), _image()
    graph = build_graph(model, inputs)
    nodes = graph.compute_nodes()
    side = {
        n: 1 if graph[n]["module"].startswith("left") else 2 if graph[n]["module"].startswith("right") else None
        for n in nodes
    }
    cat = nodes.index("cat")
    assignment = {n: side[n] if side[n] is not None else (0 if i < cat else 3) for i, n in enumerate(nodes)}
    plan = PartitionPlan.from_assignment(assignment, "dag", graph=graph).validate(graph)
    edges = set(quotient(graph, plan).edges)
    assert (1, 2) not in edges and (2, 1) not in edges and {(0, 1), (0, 2), (1, 3), (2, 3)} <= edges
    split = _assert_composes(model, inputs, plan)
    by_name = {p.name: p for p in split.layout.parts}
    assert by_name["part_1"].inputs == by_name["part_2"].inputs == ("relu",)
    assert by_name["part_3"].inputs == ("left", "right_1")
    assert split.layout.parts[0].name == "part_0" and split.layout.parts[-1].name == "part_3"


def test_tensor_names_are_placeholders_producers_and_output_leaves():
    model, inputs = _model(TwoHeads), _image()
    graph = build_graph(model, inputs)
    plan = PartitionPlan.pipeline(graph, ["flatten"])
    split = _assert_composes(model, inputs, plan)
    layout = split.layout
    assert layout.inputs == ("x",)
    assert layout.outputs == ("fc", "flatten")  # dict leaves in key order: logits, features
    assert layout.parts[0].outputs == ("adaptive_avg_pool2d",)
    assert layout.parts[1].inputs == ("adaptive_avg_pool2d",)
    assert layout.edges()[0] == (None, 0, "x")


def test_pruned_model_splits_and_composes():
    model, inputs = _model(ResidualBlock), _image()
    pruned = apply_plan(model, plan_for_ratio(find_groups(model, inputs), 0.5), inputs, "physical").module
    assert pruned.conv1.out_channels == 4
    for parts in (2, 3):
        _assert_composes(pruned, inputs, _pipeline(build_graph(pruned, inputs), parts))


def test_a_part_that_changes_its_input_in_place_works_on_a_copy():
    model, inputs = _model(InPlace), _image()
    graph = build_graph(model, inputs)
    plan = PartitionPlan.from_assignment({"conv": 0, "relu": 1, "mul": 2, "add": 2}, "dag", graph=graph)
    split = _assert_composes(model, inputs, plan)
    with torch.no_grad():
        tensors = split.tensors(*inputs)
        assert torch.equal(tensors["conv"], model.conv(*inputs))  # still the conv output, not its ReLU


def test_only_tensors_cross_parts():
    model, inputs = _model(ShapeSplit), _image()
    graph = build_graph(model, inputs)
    kinds = {graph[n]["kind"] for n in graph.compute_nodes()}
    assert {"split", "getitem", "floordiv"} <= kinds
    plan = repair(graph, {n: i % 3 for i, n in enumerate(graph.compute_nodes())})
    split = _assert_composes(model, inputs, plan)
    with torch.no_grad():
        assert all(isinstance(v, torch.Tensor) for v in split.tensors(*inputs).values())


def test_parts_carry_their_own_weights_with_the_export_tracer():
    model, inputs = _model(ResidualBlock), _image()
    graph = build_graph(model, inputs, tracer="export")
    split = _assert_composes(model, inputs, _pipeline(graph, 2), tracer="export")
    for part, module in zip(split.layout.parts, split.modules, strict=True):
        placeholders = [n.target for n in module.graph.nodes if n.op == "placeholder"]
        assert tuple(placeholders) == part.inputs  # activations only, no weights
        assert not any(n.op == "call_module" for n in module.graph.nodes)  # no `_guards_fn` left behind
    params = sum(p.numel() for m in split.modules for p in m.parameters())
    assert params == sum(p.numel() for p in model.parameters())


def test_device_hints_reach_the_layout():
    model, inputs = _model(Parallel), _image()
    graph = build_graph(model, inputs)
    plan = PartitionPlan.pipeline(graph, [2], devices=("cpu", "cuda:1"))
    split = split_model(model, inputs, plan)
    assert [p.device for p in split.layout.parts] == ["cpu", "cuda:1"]


def test_a_plan_for_another_model_is_rejected_by_name():
    inputs = _image()
    plan = _pipeline(build_graph(_model(Parallel), inputs), 2)
    with pytest.raises(InvalidPlanError, match="another model"):
        split_model(_model(ResidualBlock), inputs, plan)


def test_a_part_left_with_only_size_checks_is_dropped():
    model, inputs = _model(Checked), _image()
    graph = build_graph(model, inputs)
    sizes = {n for n in graph.compute_nodes() if graph[n]["shape"] is None}
    assert sizes == {"getattr_1", "getitem", "getitem_2", "eq"}
    plan = PartitionPlan.from_assignment({n: 0 if n in sizes else 1 for n in graph.compute_nodes()}, "dag", graph=graph)
    split = _assert_composes(model, inputs, plan)
    assert [p.name for p in split.layout.parts] == ["part_1"]  # its sizes moved to their reader
