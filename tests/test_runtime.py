"""Sessions: the same answers from torch and onnxruntime, clear errors for bad inputs, and a
pipeline that chains export parts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmgraph.build import load
from mmgraph.export import targets
from mmgraph.export.onnx_parts import export
from mmgraph.runtime import InputError, Pipeline, TensorSpec, TorchSession, open_export

from conftest import ROOT
from tiny import TINY


@pytest.fixture(scope="module")
def llava_dist(tmp_path_factory):
    out = tmp_path_factory.mktemp("llava")
    export(ROOT / "specs" / "llava.mmg", out, targets.load("onnx"), overrides=TINY["llava"],
           log=lambda _: None)
    return out


def feed(batch=2, length=5):
    gen = torch.Generator().manual_seed(1)
    return {"image": torch.randn(batch, 3, 28, 28, generator=gen).numpy(),
            "prompt": torch.randint(0, 8, (batch, length), generator=gen).numpy()}


def test_pipeline_of_parts_equals_the_whole_model(llava_dist):
    pipeline = open_export(llava_dist)
    assert [i.name for i in pipeline.inputs] == ["image", "prompt"]
    x = feed()
    got = pipeline.run(**x)
    torch.manual_seed(0)
    model = load(ROOT / "specs" / "llava.mmg", **TINY["llava"]).eval()
    with torch.no_grad():
        want = model(image=torch.from_numpy(x["image"]), prompt=torch.from_numpy(x["prompt"]))
    np.testing.assert_allclose(got["logits"], want["logits"].numpy(), atol=1e-4)
    assert set(got) == {"logits"}  # the intermediate `v` is not a pipeline output


@pytest.mark.parametrize("change,message", [
    (lambda x: x.update(prompt=x["prompt"][0]),
     "input 'prompt': expected rank 2 ['B', 'T'], got shape [5]"),
    (lambda x: x.update(image=x["image"].astype(np.float64)),
     "input 'image': expected dtype float32, got float64"),
    (lambda x: x.update(image=x["image"][:, :, :14]),
     "input 'image': axis 2 must be 28, got 14 (shape [2, 3, 14, 28])"),
    (lambda x: x.update(prompt=np.zeros((2, 4096), dtype=np.int64)),
     "input 'prompt': dim T = 4096 is outside the exported range 1..2048"),
    (lambda x: x.update(prompt=np.zeros((3, 5), dtype=np.int64)),
     "input 'prompt': dim B is 3 here but 2 in input 'image'"),
    (lambda x: x.pop("prompt"), "the pipeline needs input 'prompt' (int64 ['B', 'T'])"),
    (lambda x: x.update(promt=x["prompt"]), "the pipeline has no input 'promt'; did you mean"),
])
def test_bad_inputs_are_named(llava_dist, change, message):
    x = feed()
    change(x)
    with pytest.raises(InputError) as exc:
        open_export(llava_dist).run(**x)
    assert message in str(exc.value)


def test_torch_and_onnx_sessions_agree(llava_dist):
    import json

    manifest = json.loads((llava_dist / "manifest.json").read_text())
    part = manifest["parts"][0]
    torch.manual_seed(0)
    model = load(ROOT / "specs" / "llava.mmg", **TINY["llava"]).eval()
    from mmgraph.export.onnx_parts import part_module, plan_parts

    plan = plan_parts(model.graph)[0]
    module = part_module(model, model.graph, "llava", plan)
    session = TorchSession(module, [TensorSpec.of(i) for i in part["inputs"]],
                           [TensorSpec.of(o) for o in part["outputs"]], manifest["dims"],
                           "visual")
    x = {"image": feed()["image"]}
    onnx_out = open_export(llava_dist).sessions[0].run(**x)
    np.testing.assert_allclose(session.run(**x)["v"], onnx_out["v"], atol=1e-4)
    assert isinstance(open_export(llava_dist), Pipeline)
