"""The Triton target: a model repository that Triton's own config schema accepts.

A tiny 2-part ONNX pair (visual: image -> v, text: v, prompt -> logits) stands in for an
export; the configs are parsed back with Triton's ModelConfig and the ensemble is run
step by step with onnxruntime, so the mappings are shown to be executable, not just
well-formed.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("tritonclient", reason="Triton's model config schema ships in tritonclient")

from google.protobuf import text_format  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

from mmgraph.export.triton import (  # noqa: E402
    model_config_pb2,
    triton_dtype,
    validate_repository,
    write_repository,
)
from mmgraph.runtime.manifest import ManifestError  # noqa: E402

from conftest import GOLDEN, check_golden  # noqa: E402

VOCAB, WIDTH, TOKENS = 10, 24, 2  # v is [B, TOKENS, WIDTH]: the image's 3*4*4 = 48 values

MANIFEST = {
    "model": "tiny", "target": "triton", "precision": "fp32", "opset": 18,
    "dims": {"B": {"min": 1, "opt": 1, "max": 8}, "T": {"min": 1, "opt": 4, "max": 16}},
    "parts": [
        {"name": "visual", "onnx": "visual.onnx",
         "inputs": [{"name": "image", "dtype": "float32", "shape": ["B", 3, 4, 4]}],
         "outputs": [{"name": "v", "dtype": "float32", "shape": ["B", TOKENS, WIDTH]}]},
        {"name": "text", "onnx": "text.onnx",
         "inputs": [{"name": "v", "dtype": "float32", "shape": ["B", TOKENS, WIDTH]},
                    {"name": "prompt", "dtype": "int64", "shape": ["B", "T"]}],
         "outputs": [{"name": "logits", "dtype": "float32",
                      "shape": ["B", f"{TOKENS} + T", WIDTH]}]},
    ],
}


def _save(graph, path):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.fixture
def dist(tmp_path):
    """dist/ with visual.onnx (a reshape) and text.onnx (embed the prompt, append to v)."""
    out = tmp_path / "dist"
    out.mkdir()
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    _save(helper.make_graph(
        [helper.make_node("Reshape", ["image", "shape"], ["v"])], "visual",
        [helper.make_tensor_value_info("image", f32, ["B", 3, 4, 4])],
        [helper.make_tensor_value_info("v", f32, ["B", TOKENS, WIDTH])],
        [helper.make_tensor("shape", i64, [3], [0, TOKENS, WIDTH])]), out / "visual.onnx")
    table = np.arange(VOCAB * WIDTH, dtype=np.float32).reshape(VOCAB, WIDTH)
    _save(helper.make_graph(
        [helper.make_node("Gather", ["table", "prompt"], ["embedded"]),
         helper.make_node("Concat", ["v", "embedded"], ["logits"], axis=1)], "text",
        [helper.make_tensor_value_info("v", f32, ["B", TOKENS, WIDTH]),
         helper.make_tensor_value_info("prompt", i64, ["B", "T"])],
        [helper.make_tensor_value_info("logits", f32, ["B", "L", WIDTH])],
        [onnx.numpy_helper.from_array(table, "table")]), out / "text.onnx")
    (out / "manifest.json").write_text(json.dumps(MANIFEST))
    return out


@pytest.fixture
def repo(dist, tmp_path):
    return write_repository(MANIFEST, dist, tmp_path / "repo")


def parse(path):
    return text_format.Parse(path.read_text(), model_config_pb2().ModelConfig())


def io(tensors):
    pb2 = model_config_pb2()
    return [(t.name, pb2.DataType.Name(t.data_type), list(t.dims)) for t in tensors]


def test_repository_layout(repo, dist):
    files = sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file())
    assert files == ["tiny/config.pbtxt",
                     "tiny_text/1/model.onnx", "tiny_text/config.pbtxt",
                     "tiny_visual/1/model.onnx", "tiny_visual/config.pbtxt"]
    assert (repo / "tiny_visual/1/model.onnx").read_bytes() == \
        (dist / "visual.onnx").read_bytes()


def test_part_configs(repo):
    visual = parse(repo / "tiny_visual/config.pbtxt")
    assert (visual.name, visual.platform, visual.max_batch_size) == \
        ("tiny_visual", "onnxruntime_onnx", 8)
    assert io(visual.input) == [("image", "TYPE_FP32", [3, 4, 4])]
    assert io(visual.output) == [("v", "TYPE_FP32", [TOKENS, WIDTH])]
    assert visual.HasField("dynamic_batching")
    # onnxruntime on the CPU (the default providers) must load on a CPU-only server
    assert [(g.count, g.kind) for g in visual.instance_group] == \
        [(1, visual.instance_group[0].KIND_CPU)]

    text = parse(repo / "tiny_text/config.pbtxt")
    assert io(text.input) == [("v", "TYPE_FP32", [TOKENS, WIDTH]),
                              ("prompt", "TYPE_INT64", [-1])]
    assert io(text.output) == [("logits", "TYPE_FP32", [-1, WIDTH])]


def test_ensemble_config(repo):
    ensemble = parse(repo / "tiny/config.pbtxt")
    assert (ensemble.platform, ensemble.max_batch_size) == ("ensemble", 8)
    assert io(ensemble.input) == [("image", "TYPE_FP32", [3, 4, 4]),
                                  ("prompt", "TYPE_INT64", [-1])]
    assert io(ensemble.output) == [("logits", "TYPE_FP32", [-1, WIDTH])]
    steps = [(s.model_name, dict(s.input_map), dict(s.output_map))
             for s in ensemble.ensemble_scheduling.step]
    assert steps == [("tiny_visual", {"image": "image"}, {"v": "v"}),
                     ("tiny_text", {"v": "v", "prompt": "prompt"}, {"logits": "logits"})]
    assert not ensemble.instance_group and not ensemble.HasField("dynamic_batching")


def test_ensemble_runs_step_by_step(repo):
    """Feed the ensemble inputs through the steps as Triton would, with onnxruntime."""
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(0)
    tensors = {"image": rng.standard_normal((2, 3, 4, 4), dtype=np.float32),
               "prompt": rng.integers(0, VOCAB, (2, 5))}
    ensemble = parse(repo / "tiny/config.pbtxt")
    for step in ensemble.ensemble_scheduling.step:
        session = ort.InferenceSession(str(repo / step.model_name / "1/model.onnx"))
        feeds = {key: tensors[value] for key, value in step.input_map.items()}
        results = session.run(list(step.output_map), feeds)
        tensors.update({step.output_map[k]: r for k, r in zip(step.output_map, results)})
    logits = tensors["logits"]
    assert logits.shape == (2, TOKENS + 5, WIDTH)
    np.testing.assert_array_equal(logits[:, :TOKENS].reshape(2, -1),
                                  tensors["image"].reshape(2, -1))


def test_good_repository_validates(repo):
    assert validate_repository(repo) == []


def _edit(path, old, new):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_wrong_tensor_name_in_ensemble_step(repo):
    _edit(repo / "tiny/config.pbtxt", 'key: "prompt"', 'key: "tokens"')
    problems = validate_repository(repo)
    assert any("'tiny_text' has no input 'tokens'" in p for p in problems), problems
    assert any("input 'prompt' of 'tiny_text' is not mapped" in p for p in problems), problems


def test_step_calling_a_missing_model(repo):
    _edit(repo / "tiny/config.pbtxt", 'model_name: "tiny_visual"', 'model_name: "tiny_vision"')
    problems = validate_repository(repo)
    assert any("'tiny_vision', not in the repository" in p for p in problems), problems


def test_bad_dtype_string_is_rejected_by_the_schema(repo):
    _edit(repo / "tiny_text/config.pbtxt", "TYPE_INT64", "TYPE_LONG")
    problems = validate_repository(repo)
    assert len(problems) == 1 and "tiny_text/config.pbtxt: not a valid Triton ModelConfig" \
        in problems[0], problems
    assert "TYPE_LONG" in problems[0]


def test_disagreeing_dtypes_between_steps(repo):
    _edit(repo / "tiny_text/config.pbtxt", "TYPE_FP32", "TYPE_FP16")  # v, fed from visual
    problems = validate_repository(repo)
    assert any("tiny_text.v <- v: data type TYPE_FP16 vs TYPE_FP32" in p for p in problems)
    assert any("input 'v' is float32 in the graph, TYPE_FP16 in the config" in p
               for p in problems), problems


def test_unknown_field_and_garbage_are_rejected(repo):
    _edit(repo / "tiny_visual/config.pbtxt", "max_batch_size: 8", "max_batch: 8")
    (repo / "tiny_text/config.pbtxt").write_text("name: tiny_text {{ not protobuf")
    problems = validate_repository(repo)
    assert [p.split(":")[0] for p in problems] == ["tiny_text/config.pbtxt",
                                                   "tiny_visual/config.pbtxt"]
    assert all("not a valid Triton ModelConfig" in p for p in problems)


def test_instance_kind_follows_the_providers(dist, tmp_path):
    repo = write_repository(MANIFEST, dist, tmp_path / "gpu",
                            providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    for part in ("visual", "text"):
        config = parse(repo / f"tiny_{part}/config.pbtxt")
        assert [g.kind for g in config.instance_group] == [config.instance_group[0].KIND_GPU]
    assert validate_repository(repo) == []


def test_tensorrt_variant_without_engines(dist, tmp_path):
    repo = write_repository(MANIFEST, dist, tmp_path / "trt", backend="tensorrt")
    for part in ("visual", "text"):
        config = parse(repo / f"tiny_{part}/config.pbtxt")
        assert config.platform == "tensorrt_plan" and config.max_batch_size == 8
        assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU  # plans
        assert not (repo / f"tiny_{part}/1/model.plan").exists()
        readme = (repo / f"tiny_{part}/1/README.txt").read_text()
        assert "build_engine.sh" in readme and f"tiny_{part}/1/model.plan" in readme
    assert validate_repository(repo) == []  # pending engines are documented, not broken
    (repo / "tiny_text/1/README.txt").unlink()
    assert validate_repository(repo) == ["tiny_text/config.pbtxt: 1/model.plan is missing"]


def test_tensorrt_variant_copies_built_engines(dist, tmp_path):
    (dist / "visual.engine").write_bytes(b"plan")
    repo = write_repository(MANIFEST, dist, tmp_path / "trt", backend="tensorrt")
    assert (repo / "tiny_visual/1/model.plan").read_bytes() == b"plan"
    assert not (repo / "tiny_visual/1/README.txt").exists()
    assert (repo / "tiny_text/1/README.txt").exists()


def test_fp16_export_deploys_the_fp16_file(dist, tmp_path):
    manifest = copy.deepcopy(MANIFEST)
    manifest["precision"] = "fp16"
    (dist / "text.fp16.onnx").write_bytes((dist / "text.onnx").read_bytes())
    manifest["parts"][1]["onnx_fp16"] = "text.fp16.onnx"
    (dist / "text.onnx").unlink()  # so only the fp16 file can have been copied
    repo = write_repository(manifest, dist, tmp_path / "repo")
    assert (repo / "tiny_text/1/model.onnx").read_bytes() == \
        (dist / "text.fp16.onnx").read_bytes()
    assert validate_repository(repo) == []


def test_unbatched_part_gets_full_dims(dist, tmp_path):
    """One tensor without a leading B: that part and the ensemble cannot batch."""
    manifest = copy.deepcopy(MANIFEST)
    manifest["parts"][1]["inputs"][1]["shape"] = ["T"]
    repo = write_repository(manifest, dist, tmp_path / "repo")
    text = parse(repo / "tiny_text/config.pbtxt")
    assert text.max_batch_size == 0 and not text.HasField("dynamic_batching")
    assert io(text.input) == [("v", "TYPE_FP32", [-1, TOKENS, WIDTH]),
                              ("prompt", "TYPE_INT64", [-1])]
    assert parse(repo / "tiny_visual/config.pbtxt").max_batch_size == 8
    ensemble = parse(repo / "tiny/config.pbtxt")
    assert ensemble.max_batch_size == 0
    assert io(ensemble.input)[0] == ("image", "TYPE_FP32", [-1, 3, 4, 4])
    # the ONNX graph's prompt is still rank 2, which the check notices
    assert validate_repository(repo) == [
        "tiny_text/config.pbtxt: 1/model.onnx: input 'prompt' has rank 2 in the graph, "
        "1 in the config"]


def test_manifest_errors(dist, tmp_path):
    manifest = copy.deepcopy(MANIFEST)
    manifest["parts"][0]["inputs"][0]["dtype"] = "complex64"
    with pytest.raises(ValueError, match="complex64"):
        write_repository(manifest, dist, tmp_path / "a")
    with pytest.raises(ValueError, match="backend"):
        write_repository(MANIFEST, dist, tmp_path / "b", backend="openvino")
    with pytest.raises(ManifestError, match="visual.onnx .part 'visual'. is missing"):
        write_repository(MANIFEST, tmp_path, tmp_path / "c")
    manifest = copy.deepcopy(MANIFEST)
    (tmp_path / "outside.onnx").write_bytes((dist / "visual.onnx").read_bytes())
    manifest["parts"][0]["onnx"] = "../outside.onnx"
    with pytest.raises(ManifestError, match="leads outside the export folder"):
        write_repository(manifest, dist, tmp_path / "d")


@pytest.mark.parametrize("dtype, name", [("float32", "TYPE_FP32"), ("torch.float16", "TYPE_FP16"),
                                         ("f16", "TYPE_FP16"), ("i64", "TYPE_INT64"),
                                         ("int64", "TYPE_INT64"), ("int32", "TYPE_INT32"),
                                         ("bool", "TYPE_BOOL"), ("bfloat16", "TYPE_BF16")])
def test_dtypes(dtype, name):
    assert triton_dtype(dtype) == name
    assert model_config_pb2().DataType.Value(name)  # a name Triton's schema knows


def test_ensemble_config_matches_golden(repo):
    check_golden(GOLDEN / "triton" / "tiny.config.pbtxt",
                 (repo / "tiny/config.pbtxt").read_text())
