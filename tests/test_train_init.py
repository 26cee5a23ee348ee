"""`mmgraph train --init DIR`: a fresh run (new optimizer, step 0) that starts from the weights
of an mmgraph run folder or checkpoint, matched by tensor name and shape."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from mmgraph.backends.torch.weights import CheckpointError, find
from mmgraph.build import instantiate, load_class
from mmgraph.cli import main
from mmgraph.errors import UsageError, UserError
from mmgraph.train.run import init_weights, train

from conftest import ROOT

SPEC = ROOT / "examples" / "clip_digits.mmg"
SMALL = {"width": 16, "depth": 1, "heads": 2, "text_width": 16, "text_depth": 1, "embed": 8,
         "context": 40}


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    out = tmp_path_factory.mktemp("first")
    train(SPEC, out=out, overrides=SMALL, max_steps=3, quiet=True)
    return out


def test_init_loads_every_weight(first):
    cls, g = load_class(SPEC, **SMALL)
    model = instantiate(cls, g)
    path = init_weights(first, model)
    assert path == find(first)
    saved = load_file(str(path / "model.safetensors"))
    state = model.state_dict()
    assert saved and all(torch.equal(state[k], v) for k, v in saved.items())


def test_a_run_from_init_starts_at_step_zero(first, tmp_path):
    result = train(SPEC, out=tmp_path, overrides=SMALL, max_steps=2, quiet=True, init=first)
    assert result["init"] == str(find(first))
    state = json.loads((find(tmp_path) / "state.json").read_text())
    assert state["position"]["global_step"] == 2  # counted from 0, not from the first run's 3


def test_a_changed_spec_is_refused_naming_the_tensors(first, tmp_path):
    with pytest.raises(CheckpointError) as info:
        train(SPEC, out=tmp_path / "run", overrides={**SMALL, "embed": 12}, max_steps=1,
              quiet=True, init=first)
    text = str(info.value)
    assert "does not fit the spec's model" in text
    assert "[8, 16] in the checkpoint, [12, 16] in the model" in text
    assert not (tmp_path / "run").exists()  # refused before the folder is touched


def test_a_missing_tensor_is_named(first):
    cls, g = load_class(SPEC, **SMALL)
    model = instantiate(cls, g)
    model.register_parameter("extra", torch.nn.Parameter(torch.zeros(2)))
    with pytest.raises(CheckpointError, match="'extra' is missing from the checkpoint"):
        init_weights(first, model)


def test_a_hugging_face_folder_points_to_pretrained(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    cls, g = load_class(SPEC, **SMALL)
    with pytest.raises(UserError, match=r"pretrained\(PATH, part=\.\.\.\)"):
        init_weights(tmp_path, instantiate(cls, g))


def test_init_and_resume_together_are_refused(first, tmp_path):
    with pytest.raises(UsageError, match="give one of them"):
        train(SPEC, out=tmp_path, overrides=SMALL, max_steps=1, quiet=True, init=first,
              resume=True)


def test_the_cli_flag(first, tmp_path, capsys):
    sets = [f"--set={k}={v}" for k, v in SMALL.items()]
    code = main(["train", str(SPEC), *sets, "--max-steps", "1", "--quiet", "--out",
                 str(tmp_path), "--init", str(first)])
    assert code == 0
    assert f"started from the weights of {find(first)}" in capsys.readouterr().out
