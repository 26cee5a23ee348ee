"""ONNX parts: every zoo spec exports at a tiny size and matches PyTorch in onnxruntime at the
min, opt and max of its dim ranges; manifests describe the parts; targets are data."""

from __future__ import annotations

import json

import onnx
import pytest

from mmgraph.compiler import build_graph
from mmgraph.export import targets
from mmgraph.export.onnx_parts import export, plan_parts

from conftest import ROOT
from tiny import TINY


@pytest.mark.parametrize("name", sorted(TINY))
def test_every_zoo_spec_exports_and_matches_pytorch(name, tmp_path, record_property):
    manifest = export(ROOT / "specs" / f"{name}.mmg", tmp_path, targets.load("onnx"),
                      overrides=TINY[name], log=lambda _: None)
    assert manifest["parts"]
    for part in manifest["parts"]:
        model = onnx.load(str(tmp_path / part["onnx"]))
        onnx.checker.check_model(model, full_check=True)
        assert [i.name for i in model.graph.input] == [i["name"] for i in part["inputs"]]
        assert [o.name for o in model.graph.output] == [o["name"] for o in part["outputs"]]
        for output, errors in part["parity"]["fp32"].items():
            assert set(errors["at"]) == {"min", "opt", "max"}, output
            assert errors["max_abs"] <= 1e-4, (part["name"], output, errors)
    written = json.loads((tmp_path / "manifest.json").read_text())
    assert written["model"] == manifest["model"] and written["opset"] == 18
    record_property("parts", len(manifest["parts"]))
    record_property("max_abs", max(e["max_abs"] for part in manifest["parts"]
                                   for e in part["parity"]["fp32"].values()))


def test_llava_parts_follow_the_export_block(tmp_path):
    manifest = export(ROOT / "specs" / "llava.mmg", tmp_path, targets.load("onnx"),
                      overrides=TINY["llava"], log=lambda _: None)
    visual, text = manifest["parts"]
    assert (visual["name"], [i["name"] for i in visual["inputs"]]) == ("visual", ["image"])
    assert [i["name"] for i in text["inputs"]] == ["v", "prompt"]
    prompt = text["inputs"][1]
    assert prompt["shape"] == ["B", "T"] and prompt["dtype"] == "int64"
    assert (prompt["min"], prompt["opt"], prompt["max"]) == ([1, 1], [1, 256], [8, 2048])
    assert text["outputs"][0]["shape"] == ["B", "4 + T", 64]
    dims = {d.dim_param for d in onnx.load(str(tmp_path / "text.onnx")).graph.input[1]
            .type.tensor_type.shape.dim}
    assert dims == {"B", "T"}  # dynamic axes named after the spec's dims
    assert text["nodes"]["simplified"] <= text["nodes"]["exported"]


def test_a_model_without_export_block_is_one_part():
    g = build_graph(ROOT / "specs" / "clip.mmg", TINY["clip"])
    g.export = None
    (part,) = plan_parts(g)
    assert part.inputs == ["image", "text"] and part.outputs == ["img", "txt"]


def test_targets_are_declarative_files():
    assert {"onnx", "onnxruntime-gpu", "tensorrt-fp16", "tensorrt-fp32", "jetson-orin",
            "triton"} <= set(targets.names())
    jetson = targets.load("jetson-orin")
    assert (jetson.runtime, jetson.tensorrt, jetson.opset) == ("tensorrt", "10.3", 18)
    with pytest.raises(targets.TargetError, match="did you mean 'onnx'"):
        targets.load("onxx")


def test_fp16_writes_the_precision_into_the_graph_and_records_parity(tmp_path):
    manifest = export(ROOT / "specs" / "llava.mmg", tmp_path, targets.load("onnxruntime-gpu"),
                      overrides=TINY["llava"], log=lambda _: None)
    for part in manifest["parts"]:
        half = onnx.shape_inference.infer_shapes(onnx.load(str(tmp_path / part["onnx_fp16"])))
        types = {v.name: v.type.tensor_type.elem_type
                 for v in [*half.graph.value_info, *half.graph.output, *half.graph.input]}
        kept = [n for n in half.graph.node if n.op_type in ("Softmax", "LayerNormalization")]
        assert kept and all(types[n.output[0]] == onnx.TensorProto.FLOAT for n in kept)
        weights = [w.data_type for w in half.graph.initializer if len(w.dims) == 2]
        assert weights and all(t == onnx.TensorProto.FLOAT16 for t in weights)
        assert [i.type.tensor_type.elem_type for i in half.graph.input] == \
            [onnx.TensorProto.FLOAT if i["dtype"] == "float32" else onnx.TensorProto.INT64
             for i in part["inputs"]]
        for errors in part["parity"]["fp16"].values():
            assert 0 < errors["max_abs"] < 1e-2  # measured and recorded, not hidden


def _stable(manifest: dict) -> dict:
    """The manifest without what varies by machine (timings, errors, versions, paths)."""
    out = json.loads(json.dumps(manifest))
    for key in ("seconds", "torch", "spec"):
        out.pop(key, None)
    out["files"] = sorted(out["files"])  # their bytes and hashes vary with torch and onnx
    for part in out["parts"]:
        part.pop("seconds")
        part["parity"] = {precision: sorted(outputs) for precision, outputs
                          in part["parity"].items()}
    generate = out.get("generate") or {}
    generate.pop("seconds", None)
    for graph in (generate.get(k) for k in ("context", "prefill", "decode")):
        if graph and "parity" in graph:
            graph["parity"] = {precision: sorted(outputs) for precision, outputs
                               in graph["parity"].items()}
    return out


def test_manifest_matches_golden(tmp_path):
    from conftest import GOLDEN, check_golden

    manifest = export(ROOT / "specs" / "llava.mmg", tmp_path, targets.load("onnx"),
                      overrides=TINY["llava"], log=lambda _: None)
    check_golden(GOLDEN / "export" / "llava.manifest.json",
                 json.dumps(_stable(manifest), indent=2, sort_keys=True) + "\n")
