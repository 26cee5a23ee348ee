"""TensorRT export: the operator-table check, the build scripts, and (on a GPU) a real engine."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from mmgraph.export import trt_ops  # noqa: E402
from mmgraph.export.tensorrt import (  # noqa: E402
    TensorRTUnavailable,
    build_engines,
    build_script,
    check_compatibility,
    engine_available,
    spec_location,
)


def _save(tmp_path, nodes, inputs, outputs, inits=(), opset=18, name="m.onnx"):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset <= 18 else 10
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def _vi(name, dtype=TensorProto.FLOAT, shape=("B", 4)):
    return helper.make_tensor_value_info(name, dtype, list(shape))


def _mlp(tmp_path, opset=18):
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "vision.proj.weight")
    nodes = [helper.make_node("MatMul", ["x", "vision.proj.weight"], ["h"],
                              name="/vision/blocks/layers.0/attn/MatMul"),
             helper.make_node("Relu", ["h"], ["y"], name="/vision/blocks/layers.0/Relu")]
    return _save(tmp_path, nodes, [_vi("x")], [_vi("y")], [w], opset=opset)


def test_supported_graph_is_ok_for_10x(tmp_path):
    path = _mlp(tmp_path)
    for version in ("10.3", "10.13", "10.14", "10.15"):
        report = check_compatibility(path, version)
        assert report.ok, report.render()
        assert report.findings == []
        assert report.ops == {"MatMul": 1, "Relu": 1}
    assert '"ok": true' in report.to_json()
    assert "OK" in report.render()


def test_op_added_after_8_6_is_flagged_for_8_6_only(tmp_path):
    # Hardmax: N in the 8.5/8.6 table, supported in 10.x (Changelog: added in 9.2).
    path = _save(tmp_path, [helper.make_node("Hardmax", ["x"], ["y"], name="/lm/Hardmax")],
                 [_vi("x")], [_vi("y")], opset=17)
    old = check_compatibility(path, "8.6")
    assert not old.ok
    [f] = old.errors
    assert f.op == "Hardmax" and "8.6" in f.problem and "supported from TensorRT 10.3" in f.problem
    assert check_compatibility(path, "10.3").ok


def test_attention_opset23_needs_10_14(tmp_path):
    q = helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, 2, 8, 16])
    nodes = [helper.make_node("Attention", ["q", "q", "q"], ["y"], name="/lm/0/attn/Attention")]
    path = _save(tmp_path, nodes, [q], [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                      [1, 2, 8, 16])], opset=23)
    jetson = check_compatibility(path, "10.3", layers={"lm.0.attn": "llm.mmg:12"})
    assert not jetson.ok
    problems = {f.op: f for f in jetson.errors}
    assert "supported from TensorRT 10.14" in problems["Attention"].problem
    assert problems["Attention"].spec == "llm.mmg:12"
    assert "opset 23 > 20" in problems["opset"].problem  # JetPack 6: re-export without Attention
    assert not check_compatibility(path, "10.13").ok
    assert check_compatibility(path, "10.14").ok
    assert check_compatibility(path, "10.15").ok


def test_double_tensor_is_an_error(tmp_path):
    path = _save(tmp_path, [helper.make_node("Relu", ["x"], ["y"], name="/vision/Relu")],
                 [_vi("x", TensorProto.DOUBLE)], [_vi("y", TensorProto.DOUBLE)])
    report = check_compatibility(path, "10.13")
    assert not report.ok
    assert any(f.op == "input" and f.node == "x" and "DOUBLE" in f.problem for f in report.errors)


def test_int64_input_warns_where_the_parser_casts_it(tmp_path):
    path = _save(tmp_path, [helper.make_node("Identity", ["ids"], ["y"], name="/text/Identity")],
                 [_vi("ids", TensorProto.INT64)], [_vi("y", TensorProto.INT64)], opset=17)
    old = check_compatibility(path, "8.6")
    assert old.ok
    assert any(f.severity == "warning" and f.node == "ids" and "cast to INT32" in f.problem
               for f in old.findings)
    assert check_compatibility(path, "10.3").findings == []  # INT64 is native since 9.0


def test_resize_with_computed_scales(tmp_path):
    # 8.6-GA's importer takes tensor scales (resizeShapeTensor); 10.x adds a documented caveat.
    shape_in = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    f = helper.make_tensor_value_info("factor", TensorProto.FLOAT, [4])
    two = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "two")
    nodes = [helper.make_node("Mul", ["factor", "two"], ["scales"], name="/vision/up/Mul"),
             helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest",
                              name="/vision/up/Resize")]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    path = _save(tmp_path, nodes, [shape_in, f], [out], [two], opset=17)
    old = check_compatibility(path, "8.6", layers={"vision": "clip.mmg:35"})
    assert old.ok and not [f for f in old.findings if f.op == "Resize"], old.render()
    new = check_compatibility(path, "10.13")
    assert new.ok and any(w.op == "Resize" and "iota" in w.problem for w in new.warnings)


def test_constant_input_computed_from_constants_is_a_warning(tmp_path):
    # 8.6: Squeeze `axes` must be an initializer; computed from constants only, it folds.
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    zero = numpy_helper.from_array(np.array([0], np.int64), "zero")
    nodes = [helper.make_node("Add", ["zero", "zero"], ["axes"], name="/vision/Add"),
             helper.make_node("Squeeze", ["x", "axes"], ["y"], name="/vision/Squeeze")]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    path = _save(tmp_path, nodes, [x], [out], [zero], opset=17, name="folded.onnx")
    report = check_compatibility(path, "8.6")
    assert report.ok and any("fold" in w.problem for w in report.warnings), report.render()


def test_findings_name_the_spec_node(tmp_path):
    layers = {"vision": "clip.mmg:35", "vision.blocks": "clip.mmg:40", "lm.3.attn": "x.mmg:9"}
    assert spec_location("/vision/blocks/layers.0/attn/MatMul", layers) == \
        ("vision.blocks", "clip.mmg:40")
    assert spec_location("/vision/proj/MatMul", layers) == ("vision", "clip.mmg:35")
    assert spec_location("/lm/3/attn/Softmax", layers) == ("lm.3.attn", "x.mmg:9")
    assert spec_location("/lm/30/attn/Softmax", layers) == (None, None)
    assert spec_location("vision.proj.weight", layers) == ("vision", "clip.mmg:35")

    path = _mlp(tmp_path, opset=21)  # above 8.6's opset 17
    report = check_compatibility(path, "8.6", layers={"vision": "clip.mmg:35"})
    matmul = [f for f in report.findings if f.node == "/vision/blocks/layers.0/attn/MatMul"]
    assert not matmul  # MatMul is fine; the opset is the error
    assert any(f.op == "opset" for f in report.errors)
    dbl = _save(tmp_path, [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.DOUBLE,
                                            name="/vision/blocks/layers.0/attn/Cast")],
                [_vi("x")], [_vi("y", TensorProto.DOUBLE)], name="dbl.onnx")
    [f] = check_compatibility(dbl, "10.3", layers={"vision": "clip.mmg:35"}).errors
    assert f.node == "y" and f.op == "output"
    assert "clip.mmg:35" not in (f.spec or "")  # an output name is not a module path


def test_subgraphs_are_walked(tmp_path):
    then = helper.make_graph([helper.make_node("Hardmax", ["x"], ["t"], name="/lm/Hardmax")],
                             "then", [], [_vi("t")])
    other = helper.make_graph([helper.make_node("Relu", ["x"], ["e"], name="/lm/Relu")],
                              "else", [], [_vi("e")])
    cond = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    node = helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other, name="/lm/If")
    path = _save(tmp_path, [node], [cond, _vi("x")], [_vi("y")], opset=17)
    report = check_compatibility(path, "8.6", layers={"lm": "m.mmg:3"})
    assert report.ops == {"Hardmax": 1, "If": 1, "Relu": 1}
    [f] = report.errors
    assert f.node == "/lm/Hardmax" and f.spec == "m.mmg:3"


def test_torch_exported_module(tmp_path):
    torch = pytest.importorskip("torch")

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(8, 8)
            self.norm = torch.nn.LayerNorm(8)

        def forward(self, x):
            return torch.softmax(self.norm(self.proj(x)), dim=-1)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vision = Block()

        def forward(self, x):
            return self.vision(x)

    path = tmp_path / "tiny.onnx"
    torch.onnx.export(Model().eval(), (torch.randn(2, 8),), str(path), dynamo=False,
                      opset_version=18, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "B"}, "y": {0: "B"}})
    report = check_compatibility(path, "10.3", layers={"vision": "tiny.mmg:7"})
    assert report.ok, report.render()
    assert "LayerNormalization" in report.ops
    old = check_compatibility(path, "8.6", layers={"vision": "tiny.mmg:7"})
    assert not old.ok  # opset 18 > 17
    assert all(f.spec in (None, "tiny.mmg:7") for f in old.findings)


def test_version_resolution():
    assert trt_ops.resolve("10.3.0.30")[0].version == "10.3"
    table, note = trt_ops.resolve("10.8")
    assert table.version == "10.3" and "lower bound" in note
    with pytest.raises(ValueError):
        trt_ops.resolve("7.2")
    assert trt_ops.versions_supporting("Attention") == ["10.14", "10.15"]
    assert trt_ops.VERSIONS["8.6"].int64 == "cast" and trt_ops.VERSIONS["10.3"].int64 == "native"


PARTS = [{
    "name": "visual", "onnx": "visual.onnx",
    "inputs": [
        {"name": "image", "dtype": "float32", "shape": ["B", 3, 16, 16],
         "min": [1, 3, 16, 16], "opt": [1, 3, 16, 16], "max": [64, 3, 16, 16]},
        {"name": "mask", "dtype": "float32", "shape": ["B", "T"],
         "min": [1, 1], "opt": [4, 8], "max": [64, 77]},
    ],
    "outputs": [{"name": "img", "dtype": "float32", "shape": ["B", 64]}],
}]
TARGET = {"name": "tensorrt-fp16", "precision": "fp16", "tensorrt": "10.13",
          "workspace_mb": 2048, "opset": 18}


def test_build_engine_sh(tmp_path):
    sh, py = build_script(PARTS, TARGET, tmp_path)
    text = sh.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    for flag in ("--onnx=visual.onnx", "--saveEngine=visual.engine",
                 "--minShapes=image:1x3x16x16,mask:1x1",
                 "--optShapes=image:1x3x16x16,mask:4x8",
                 "--maxShapes=image:64x3x16x16,mask:64x77",
                 "--fp16", "--memPoolSize=workspace:2048M", "--timingCacheFile=timing.cache"):
        assert flag in text, flag
    assert "--bf16" not in text and "x86_64" not in text and "/usr/local/cuda" not in text
    assert os.stat(sh).st_mode & stat.S_IXUSR
    compile(py.read_text(), str(py), "exec")
    assert "set_memory_pool_limit" in py.read_text()

    sh, _ = build_script(PARTS, {**TARGET, "precision": "bf16"}, tmp_path / "bf16")
    assert "--bf16" in sh.read_text() and "--fp16" not in sh.read_text()
    sh, _ = build_script(PARTS, {**TARGET, "precision": "fp32"}, tmp_path / "fp32")
    assert "--fp16" not in sh.read_text()


def test_fp16_graph_is_strongly_typed(tmp_path):
    parts = [{**PARTS[0], "inputs": [{**i, "dtype": "float16"} for i in PARTS[0]["inputs"]]}]
    sh, py = build_script(parts, TARGET, tmp_path)
    assert "--stronglyTyped" in sh.read_text() and "--fp16" not in sh.read_text()
    assert '"strongly_typed": true' in py.read_text()


def test_dynamic_input_without_profile_is_refused(tmp_path):
    part = {"name": "p", "onnx": "p.onnx", "inputs": [{"name": "x", "shape": ["B", 4]}]}
    with pytest.raises(ValueError, match="min/opt/max"):
        build_script([part], TARGET, tmp_path)


def test_build_engines_without_tensorrt(tmp_path):
    ok, why = engine_available()
    if ok:
        pytest.skip("TensorRT and a GPU are present here")
    assert why
    with pytest.raises(TensorRTUnavailable, match="build_engine.sh"):
        build_engines(PARTS, TARGET, tmp_path)


_GPU_OK, _GPU_WHY = engine_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _GPU_OK, reason="needs an NVIDIA GPU and the tensorrt package")
def test_build_and_run_engine(tmp_path):
    import json

    import tensorrt as trt
    import torch

    w = numpy_helper.from_array(np.eye(4, dtype=np.float32) * 2, "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="/vision/MatMul"),
             helper.make_node("Relu", ["h"], ["y"], name="/vision/Relu")]
    _save(tmp_path, nodes, [_vi("x")], [_vi("y")], [w], opset=17, name="tiny.onnx")
    part = {"name": "tiny", "onnx": "tiny.onnx",
            "inputs": [{"name": "x", "dtype": "float32", "shape": ["B", 4],
                        "min": [1, 4], "opt": [2, 4], "max": [8, 4]}],
            "outputs": [{"name": "y", "dtype": "float32", "shape": ["B", 4]}]}
    target = {"name": "tensorrt-fp32", "precision": "fp32", "tensorrt": trt.__version__,
              "workspace_mb": 256}
    [engine_path] = build_engines([part], target, tmp_path)
    manifest = json.loads((tmp_path / "tiny.engine.json").read_text())
    assert manifest["tensorrt"] == trt.__version__ and manifest["profiles"][0][0]["max"] == [8, 4]

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    context = engine.create_execution_context()
    x = torch.tensor([[1.0, -2.0, 3.0, -4.0], [0.5, 0.5, -0.5, 0.0]], device="cuda")
    y = torch.empty_like(x)
    context.set_input_shape("x", tuple(x.shape))
    context.set_tensor_address("x", x.data_ptr())
    context.set_tensor_address("y", y.data_ptr())
    stream = torch.cuda.Stream()
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    torch.testing.assert_close(y, torch.relu(x * 2))
