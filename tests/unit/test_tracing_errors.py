"""Bad models and bad inputs get errors that name the place and the fix."""

import pytest
import torch

from decomp import InputShapeError, TracingError, build_graph
from tests.tiny_models import Gate, GatedNet, TinyNet


def test_untraceable_module_is_named_with_the_fix():
    with pytest.raises(TracingError) as info:
        build_graph(GatedNet(), torch.randn(1, 3, 8, 8))
    message = str(info.value)
    assert "gate (Gate)" in message  # the module where tracing broke
    assert "tiny_models.py" in message and "if x.sum() > 0" in message  # the line
    assert "--leaf-module" in message and "--tracer export" in message  # what to do


@pytest.mark.parametrize("leaf", ["Gate", "gate", Gate])
def test_leaf_module_makes_it_traceable(leaf):
    graph = build_graph(GatedNet().eval(), torch.randn(1, 3, 8, 8), leaf_modules=[leaf])
    assert graph["gate"]["kind"] == "Gate" and graph["gate"]["shape"] == [1, 4, 6, 6]


def test_wrong_input_shape_names_the_layer():
    with pytest.raises(InputShapeError) as info:
        build_graph(TinyNet().eval(), torch.randn(1, 1, 8, 8))
    message = str(info.value)
    assert "layer stem (Conv2d)" in message and "(1, 1, 8, 8)" in message and "--input-shape" in message


def test_wrong_number_of_inputs():
    with pytest.raises(InputShapeError, match="takes 1 inputs"):
        build_graph(TinyNet().eval(), (torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)))


def test_unknown_tracer():
    with pytest.raises(TracingError, match="unknown tracer 'jit'; choose one of fx, export"):
        build_graph(TinyNet(), torch.randn(1, 3, 8, 8), tracer="jit")


def test_export_failure_names_module():
    with pytest.raises(TracingError) as info:
        build_graph(TinyNet().eval(), torch.randn(1, 2, 8, 8), tracer="export")
    assert "stem (Conv2d)" in str(info.value) and "--input-shape" in str(info.value)
