"""Opset-23 targets export attention as ONNX's fused `Attention` op (torch's dynamo exporter
with onnxscript), within TensorRT's restrictions (4D Q/K/V, no past inputs), with parity
against PyTorch; other targets keep the decomposed MatMul/Softmax form."""

from __future__ import annotations

from collections import Counter

import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
from onnx import TensorProto  # noqa: E402
from test_fp16_compute import _types, fp32_compute  # noqa: E402

from mmgraph.export import targets  # noqa: E402
from mmgraph.export.onnx_parts import export  # noqa: E402
from mmgraph.export.tensorrt import check_compatibility  # noqa: E402

from conftest import ROOT  # noqa: E402
from tiny import TINY  # noqa: E402


def test_onnxruntime_target_fuses_attention_with_parity(tmp_path):
    target = targets.load("onnxruntime-fused")
    assert target.opset == 23
    manifest = export(ROOT / "specs" / "llava.mmg", tmp_path, target, overrides=TINY["llava"],
                      log=lambda _: None)
    layers = manifest["layers"]
    for part in manifest["parts"]:
        model = onnx.load(str(tmp_path / part["onnx"]))
        ops = Counter(n.op_type for n in model.graph.node)
        assert ops["Attention"] >= 1 and ops["Softmax"] == 0, (part["name"], ops)
        # the spec's dim names, not torch.export's s0, s1
        assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "B"
        for errors in part["parity"]["fp32"].values():  # export fails over the tolerance
            assert errors["max_abs"] <= target.tolerance
        for version in ("10.14", "10.15"):  # 4D Q/K/V, no past inputs: TensorRT's rules
            report = check_compatibility(tmp_path / part["onnx"], version, layers)
            assert report.ok and not report.warnings, report.render()
        old = check_compatibility(tmp_path / part["onnx"], "10.13", layers)
        assert any(f.op == "Attention" for f in old.errors)  # hence decomposed there
    # generation graphs: keys/values concatenated explicitly, through the same gate
    for graph in ("prefill", "decode"):
        onnx_file = tmp_path / manifest["generate"][graph]["onnx"]
        assert check_compatibility(onnx_file, "10.15").ok


def test_tensorrt_fp16_target_fuses_attention_in_fp16(tmp_path):
    target = targets.load("tensorrt-fused-fp16")
    assert (target.tensorrt, target.opset, target.precision) == ("10.15", 23, "fp16")
    manifest = export(ROOT / "specs" / "clip.mmg", tmp_path, target, overrides=TINY["clip"],
                      log=lambda _: None)
    for part in manifest["parts"]:
        model = onnx.load(str(tmp_path / part["onnx_fp16"]))
        types = _types(model)
        attention = [n for n in model.graph.node if n.op_type == "Attention"]
        assert attention
        for node in attention:
            assert [types[i] for i in node.input[:3]] == [TensorProto.FLOAT16] * 3
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert attrs["softmax_precision"] == TensorProto.FLOAT
        assert fp32_compute(model, target.fp32_compute) == []
        assert manifest["tensorrt"]["compatibility"][part["name"]]["ok"]
        for errors in part["parity"]["fp16"].values():
            assert 0 < errors["max_abs"] < 5e-2


def test_bench_of_a_spec_runs_opset_18_and_23_side_by_side():
    from mmgraph.export.bench import bench, table

    report = bench(ROOT / "specs" / "clip.mmg", runs=3, warmup=1, compile=False,
                   overrides=TINY["clip"], log=lambda _: None)
    assert report["opset"] == 18
    for part in report["parts"]:
        assert {"onnxruntime", "onnxruntime@23"} <= set(part["backends"])
        assert part["backends"]["onnxruntime@23"]["p50_ms"] > 0
    assert "onnxruntime opset 23 (fused Attention) / opset 18: p50 x" in table(report)
