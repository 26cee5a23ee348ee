"""An fp16 target computes in fp16: in every zoo spec's fp16 export, every MatMul, Gemm and Conv
takes fp16 inputs (a strongly typed TensorRT build then runs them in fp16), norms stay fp32,
and the fp16-vs-fp32 parity is recorded in the manifest.

Before this held, onnxruntime's CPU provider, used to simplify the exported graph, inserted
Casts to FLOAT around every fp16 op it has no fp16 kernel for, and those were saved: the graph
stored fp16 weights and computed in fp32.
"""

from __future__ import annotations

import math

import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto  # noqa: E402

from mmgraph.export import targets  # noqa: E402
from mmgraph.export.onnx_parts import export  # noqa: E402

from conftest import ROOT  # noqa: E402
from tiny import TINY  # noqa: E402

COMPUTE = ("MatMul", "Gemm", "Conv")
KEPT_FP32 = ("LayerNormalization",)  # norms, as onnx exports them whole


def _types(model) -> dict[str, int]:
    graph = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*graph.value_info, *graph.input, *graph.output]}
    types.update({i.name: i.data_type for i in graph.initializer})
    return types


def fp32_compute(model, allowed: tuple[str, ...] = ()) -> list[str]:
    """MatMul/Gemm/Conv nodes with an input that is not fp16, less the target's exceptions."""
    types = _types(model)
    return [f"{n.op_type} {n.name} {[TensorProto.DataType.Name(types.get(i, 0)) for i in n.input]}"
            for n in model.graph.node
            if n.op_type in COMPUTE and not n.name.startswith(allowed or ("\0",))
            and any(i and types.get(i) != TensorProto.FLOAT16 for i in n.input)]


@pytest.mark.parametrize("name", sorted(TINY))
def test_every_zoo_spec_fp16_export_computes_in_fp16(name, tmp_path, record_property):
    target = targets.load("tensorrt-fp16")
    manifest = export(ROOT / "specs" / f"{name}.mmg", tmp_path, target, overrides=TINY[name],
                      log=lambda _: None)
    for part in manifest["parts"]:
        model = onnx.load(str(tmp_path / part["onnx_fp16"]))
        assert sum(n.op_type in COMPUTE for n in model.graph.node) > 0
        assert fp32_compute(model, target.fp32_compute) == [], part["name"]
        types = _types(model)
        for node in model.graph.node:
            if node.op_type in KEPT_FP32:
                assert types[node.input[0]] == TensorProto.FLOAT, node.name
        for output, errors in part["parity"]["fp16"].items():  # recorded, not hidden
            assert math.isfinite(errors["max_abs"]) and 0 < errors["max_abs"] < 5e-2, output
        assert part["parity"]["fp32"]  # and the fp32 graph still proves itself
    record_property("max_abs", max(e["max_abs"] for part in manifest["parts"]
                                   for e in part["parity"]["fp16"].values()))


def test_the_check_sees_a_graph_that_casts_back_to_fp32():
    import numpy as np
    from onnx import helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 4), np.float16), "w")
    nodes = [helper.make_node("Cast", ["w"], ["w32"], to=TensorProto.FLOAT, name="/p/Cast"),
             helper.make_node("Cast", ["x"], ["x32"], to=TensorProto.FLOAT, name="/p/Cast_1"),
             helper.make_node("MatMul", ["x32", "w32"], ["y"], name="/p/lm/MatMul")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 10, [2, 4])],
                              [helper.make_tensor_value_info("y", 1, [2, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert len(fp32_compute(model)) == 1
    assert fp32_compute(model, ("/p/lm",)) == []  # a deliberate exception named by the target
