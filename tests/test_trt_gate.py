"""The TensorRT gate against NVIDIA's documented restrictions: one ONNX model per discrepancy,
built with onnx.helper, accepted or rejected for the named TensorRT version, with the message.

Sources are in mmgraph/export/trt_ops.py's docstring (operators.md on 8.6-GA, 10.1-GA and
10.15; the Changelog; the importers).
"""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from mmgraph.export import trt_ops  # noqa: E402
from mmgraph.export.tensorrt import check_compatibility  # noqa: E402

LAYERS = {"lm.0.attn": "llm.mmg:12", "vision": "clip.mmg:35"}
F = TensorProto.FLOAT


def _vi(name, shape, dtype=F):
    return helper.make_tensor_value_info(name, dtype, shape)


def _save(tmp_path, nodes, inputs, outputs, inits=(), opset=18, name="m.onnx"):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset <= 18 else 10
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def _errors(path, version, op):
    report = check_compatibility(path, version, layers=LAYERS)
    return [f for f in report.errors if f.op == op], report


def _one_error(path, version, op, *words):
    errors, report = _errors(path, version, op)
    assert len(errors) == 1, report.render()
    for word in words:
        assert word in errors[0].problem, errors[0].problem
    return errors[0]


# -- 2. false accepts ----------------------------------------------------------------------------


def _attention(tmp_path, rank=4, extra_inputs=(), outputs=("y",), opset=23, **attrs):
    shape = [1, 2, 8, 16] if rank == 4 else [1, 8, 32]
    inputs = [_vi(n, shape) for n in ("q", "k", "v")] + [_vi(n, [1, 2, 4, 16])
                                                         for n in extra_inputs if n]
    node_inputs = ["q", "k", "v"] + [""] + list(extra_inputs) if extra_inputs else ["q", "k", "v"]
    if rank == 3:
        attrs.update(q_num_heads=2, kv_num_heads=2)
    node = helper.make_node("Attention", node_inputs, list(outputs),
                            name="/lm/0/attn/Attention", **attrs)
    outs = [_vi(o, None) for o in outputs if o]
    return _save(tmp_path, [node], inputs, outs, opset=opset, name=f"attn{rank}.onnx")


@pytest.mark.parametrize("version", ["10.14", "10.15"])
def test_attention_needs_4d(tmp_path, version):
    errors, report = _errors(_attention(tmp_path, rank=3), version, "Attention")
    assert [e.problem.split(";")[0] for e in errors] == [
        f"input '{n}' ({n.lower()}) is 3D" for n in "QKV"], report.render()
    assert all("must be 4D" in e.problem for e in errors)
    assert errors[0].spec == "llm.mmg:12"  # the spec line of the attention layer
    assert "llm.mmg:12" in check_compatibility(_attention(tmp_path, rank=3), version,
                                               layers=LAYERS).render()
    assert check_compatibility(_attention(tmp_path, rank=4), version).ok


@pytest.mark.parametrize("version", ["10.14", "10.15"])
def test_attention_past_inputs_and_present_outputs_are_rejected(tmp_path, version):
    path = _attention(tmp_path, extra_inputs=("past_k", "past_v"))
    errors, report = _errors(path, version, "Attention")
    assert sorted(e.problem.split(" (")[0] for e in errors) == [
        "input 'past_key'", "input 'past_value'"], report.render()
    path = _attention(tmp_path, outputs=("y", "present_k", "present_v"))
    errors, _ = _errors(path, version, "Attention")
    assert {e.problem.split(" (")[0] for e in errors} == {"output 'present_key'",
                                                          "output 'present_value'"}
    _one_error(_attention(tmp_path, softcap=30.0), version, "Attention", "softcap=30.0")


def test_scatternd_reduction(tmp_path):
    def model(reduction):
        node = helper.make_node("ScatterND", ["x", "idx", "upd"], ["y"], name="/lm/ScatterND",
                                reduction=reduction)
        idx = numpy_helper.from_array(np.array([[0], [2]], np.int64), "idx")
        return _save(tmp_path, [node], [_vi("x", [4, 3]), _vi("upd", [2, 3])],
                     [_vi("y", [4, 3])], [idx], opset=17, name=f"scatter_{reduction}.onnx")

    for version in ("8.6", "10.3", "10.13", "10.15"):
        _one_error(model("add"), version, "ScatterND", "reduction='add'", "`reduction`")
        assert check_compatibility(model("none"), version).ok


def test_topk_sorted_and_k_bound(tmp_path):
    def model(k, sorted_=1):
        kk = numpy_helper.from_array(np.array([k], np.int64), "k")
        node = helper.make_node("TopK", ["x", "k"], ["v", "i"], name="/lm/TopK", sorted=sorted_)
        return _save(tmp_path, [node], [_vi("x", [1, 5000])],
                     [_vi("v", None), _vi("i", None, TensorProto.INT64)], [kk],
                     name=f"topk_{k}_{sorted_}.onnx")

    for version in ("10.3", "10.15"):
        _one_error(model(3840), version, "TopK", "'K' (k) is 3840", "less than 3840")
        _one_error(model(8, sorted_=0), version, "TopK", "sorted=0", "`sorted` must be 1")
        assert check_compatibility(model(3839), version).ok


def test_layernorm_only_first_output(tmp_path):
    scale = numpy_helper.from_array(np.ones(8, np.float32), "scale")
    node = helper.make_node("LayerNormalization", ["x", "scale"], ["y", "mean"],
                            name="/vision/LayerNormalization")
    path = _save(tmp_path, [node], [_vi("x", [2, 8])], [_vi("y", [2, 8]), _vi("mean", None)],
                 [scale], opset=17)
    for version in ("8.6", "10.3", "10.15"):
        f = _one_error(path, version, "LayerNormalization", "output 'Mean'", "first output")
        assert f.spec == "clip.mmg:35"


def test_rotary_embedding_position_ids_int64(tmp_path):
    def model(dtype):
        node = helper.make_node("RotaryEmbedding", ["x", "cos", "sin", "pos"], ["y"],
                                name="/lm/0/attn/RotaryEmbedding")
        inputs = [_vi("x", [1, 2, 8, 16]), _vi("cos", [8, 8]), _vi("sin", [8, 8]),
                  _vi("pos", [1, 8], dtype)]
        return _save(tmp_path, [node], inputs, [_vi("y", [1, 2, 8, 16])], opset=23,
                     name=f"rope_{dtype}.onnx")

    _one_error(model(TensorProto.INT32), "10.15", "RotaryEmbedding", "is INT32", "INT64")
    assert check_compatibility(model(TensorProto.INT64), "10.15").ok
    _one_error(model(TensorProto.INT64), "10.14", "RotaryEmbedding",
               "supported from TensorRT 10.15")


def test_if_branches_must_have_the_same_rank(tmp_path):
    then = helper.make_graph([helper.make_node("Identity", ["x"], ["t"], name="/lm/then/Id")],
                             "then", [], [_vi("t", [2, 4])])
    flat = numpy_helper.from_array(np.array([8], np.int64), "flat")
    other = helper.make_graph([helper.make_node("Reshape", ["x", "flat"], ["e"],
                                                name="/lm/else/Reshape")],
                              "else", [], [_vi("e", [8])], initializer=[flat])
    node = helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other,
                            name="/lm/If")
    path = _save(tmp_path, [node], [_vi("c", [], TensorProto.BOOL), _vi("x", [2, 4])],
                 [_vi("y", None)], opset=17)
    _one_error(path, "10.3", "If", "2D in then_branch, 1D in else_branch", "same rank")
    _one_error(path, "8.6", "If", "broadcastable")


def test_loop_scan_outputs_need_a_static_trip_count(tmp_path):
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"], name="/lm/body/cond"),
         helper.make_node("Add", ["acc_in", "x"], ["acc_out"], name="/lm/body/Add"),
         helper.make_node("Identity", ["acc_out"], ["scan"], name="/lm/body/scan")],
        "body", [_vi("i", [], TensorProto.INT64), _vi("cond_in", [], TensorProto.BOOL),
                 _vi("acc_in", [4])],
        [_vi("cond_out", [], TensorProto.BOOL), _vi("acc_out", [4]), _vi("scan", [4])])

    def model(trip_const):
        inits = [numpy_helper.from_array(np.array(True), "true")]
        inputs = [_vi("x", [4]), _vi("acc0", [4])]
        if trip_const:
            inits.append(numpy_helper.from_array(np.array(3, np.int64), "n"))
        else:
            inputs.append(_vi("n", [], TensorProto.INT64))
        node = helper.make_node("Loop", ["n", "true", "acc0"], ["acc", "scans"], body=body,
                                name="/lm/Loop")
        return _save(tmp_path, [node], inputs, [_vi("acc", [4]), _vi("scans", None)], inits,
                     opset=17, name=f"loop_{trip_const}.onnx")

    _one_error(model(False), "10.15", "Loop", "not a build-time constant", "cannot be dynamic")
    assert check_compatibility(model(True), "10.15").ok


@pytest.mark.parametrize("equation,shapes,word", [
    ("...ij,...jk->...ik", ([2, 3, 4], [2, 4, 5]), "ellipsis"),
    ("ii->i", ([4, 4],), "diagonal"),
    ("ij,ij->ij", ([1, 4], [3, 4]), "broadcasts"),
])
def test_einsum_on_8_6(tmp_path, equation, shapes, word):
    names = [f"x{i}" for i in range(len(shapes))]
    node = helper.make_node("Einsum", names, ["y"], equation=equation, name="/lm/Einsum")
    path = _save(tmp_path, [node], [_vi(n, s) for n, s in zip(names, shapes)], [_vi("y", None)],
                 opset=17, name=f"einsum_{word}.onnx")
    _one_error(path, "8.6", "Einsum", word, "not supported")
    assert check_compatibility(path, "10.3").ok
    plain = helper.make_node("Einsum", ["a", "b"], ["y"], equation="ij,jk->ik", name="/lm/E")
    path = _save(tmp_path, [plain], [_vi("a", [2, 3]), _vi("b", [3, 4])], [_vi("y", None)],
                 opset=17, name="einsum_plain.onnx")
    assert check_compatibility(path, "8.6").ok


def test_integer_pow_follows_the_changelog(tmp_path):
    node = helper.make_node("Pow", ["x", "e"], ["y"], name="/lm/Pow")
    path = _save(tmp_path, [node], [_vi("x", [4], TensorProto.INT32),
                                    _vi("e", [4], TensorProto.INT32)],
                 [_vi("y", [4], TensorProto.INT32)])
    errors, report = _errors(path, "10.3", "Pow")
    assert len(errors) == 2 and all("10.8" in e.problem for e in errors), report.render()
    assert check_compatibility(path, "10.13").ok


def test_fp4_arrives_in_10_8(tmp_path):
    q = helper.make_tensor("wq", TensorProto.FLOAT4E2M1, [4], [0.5, 1.0, 1.5, 2.0])
    scale = numpy_helper.from_array(np.array(1.0, np.float32), "s")
    node = helper.make_node("DequantizeLinear", ["wq", "s"], ["y"], name="/lm/DQ")
    path = _save(tmp_path, [node], [], [_vi("y", [4])], [q, scale], opset=23)
    errors, report = _errors(path, "10.3", "initializer")
    assert len(errors) == 1 and "added in 10.8" in errors[0].problem, report.render()
    assert not [f for f in check_compatibility(path, "10.15").errors if f.op == "initializer"]


# -- 3. false rejects ----------------------------------------------------------------------------


def test_conv_with_a_computed_bias_is_accepted(tmp_path):
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Relu", ["b_in"], ["b"], name="/vision/Relu"),
             helper.make_node("Conv", ["x", "w", "b"], ["y"], name="/vision/Conv")]
    path = _save(tmp_path, nodes, [_vi("x", [1, 3, 8, 8]), _vi("b_in", [4])],
                 [_vi("y", None)], [w], opset=17)
    for version in trt_ops.VERSIONS:  # convMultiInput on every branch
        report = check_compatibility(path, version)
        assert not [f for f in report.findings if f.op == "Conv"], report.render()


def test_resize_with_tensor_scales_is_accepted_on_8_6(tmp_path):
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest",
                              name="/vision/up/Resize")]
    path = _save(tmp_path, nodes, [_vi("x", [1, 3, 8, 8]), _vi("scales", [4])],
                 [_vi("y", None)], opset=17)
    report = check_compatibility(path, "8.6")
    assert report.ok and not [f for f in report.findings if f.op == "Resize"], report.render()


# -- 4. opsets -----------------------------------------------------------------------------------


@pytest.mark.parametrize("version,documented,derived", [
    ("8.6", 17, False), ("10.3", 20, True), ("10.14", 24, False), ("10.15", 24, False)])
def test_max_opsets_say_where_they_come_from(tmp_path, version, documented, derived):
    table = trt_ops.VERSIONS[version]
    assert table.max_opset == documented
    assert table.opset_source.startswith("derived" if derived else "documented")
    relu = [helper.make_node("Relu", ["x"], ["y"], name="/lm/Relu")]
    at = _save(tmp_path, relu, [_vi("x", [4])], [_vi("y", [4])], opset=documented,
               name=f"at_{version}.onnx")
    report = check_compatibility(at, version)
    assert report.ok and any(table.opset_source in n for n in report.notes)
    above = _save(tmp_path, relu, [_vi("x", [4])], [_vi("y", [4])], opset=documented + 1,
                  name=f"above_{version}.onnx")
    _one_error(above, version, "opset", f"> {documented}")
    assert trt_ops.VERSIONS["10.13"].max_opset is None


# -- the spec line, for what the exporters write ---------------------------------------------


def test_findings_name_the_spec_line_of_exported_parts(tmp_path):
    from mmgraph.export.tensorrt import spec_location

    # an exported part holds the model under `part` (the legacy exporter's node names)
    layers = {"lm": "llava.mmg:33"}
    assert spec_location("/part/lm/layers.0/attn/q/MatMul", layers) == ("lm", "llava.mmg:33")
    assert spec_location("/part/MatMul", layers) == (None, None)
    # the dynamo exporter names nodes node_*, and keeps the module path in the metadata
    node = helper.make_node("Attention", ["q", "q", "q"], ["y"], name="node_sdpa")
    entry = node.metadata_props.add()
    entry.key, entry.value = "pkg.torch.onnx.name_scopes", \
        "['', 'part', 'part.lm', 'part.lm.layers.0.attn', 'scaled_dot_product_attention']"
    path = _save(tmp_path, [node], [_vi("q", [1, 8, 32])], [_vi("y", None)], opset=23)
    report = check_compatibility(path, "10.13", layers=layers)
    [f] = [f for f in report.errors if f.op == "Attention"]
    assert (f.instance, f.spec) == ("lm", "llava.mmg:33") and "llava.mmg:33" in report.render()
