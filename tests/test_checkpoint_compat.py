"""A checkpoint written before a component gained a parameter still loads when the spec
leaves that parameter at its default; any real difference is still refused, named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmgraph.backends.torch.weights import CheckpointError
from mmgraph.cli import main
from mmgraph.train.run import load_trained

from tiny import TINY

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "llava.mmg"
SIZES = {**TINY["llava"], "vocab": 259}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("compat") / "run"
    sets = [a for k, v in SIZES.items() for a in ("--set", f"{k}={v}")]
    assert main(["train", str(SPEC), *sets, "--max-steps", "1", "--dims", "T=8", "--out",
                 str(out), "--quiet"]) == 0
    return out


def rewrite_fingerprints(run: Path, edit) -> None:
    for state in run.glob("checkpoints/*/state.json"):
        data = json.loads(state.read_text())
        data["fingerprint"] = edit(data["fingerprint"])
        state.write_text(json.dumps(data))


def test_a_parameter_added_later_at_its_default_is_no_difference(run):
    def older(fp):  # as mmgraph wrote it before vit had `floor`
        fp["layers"]["vision"] = fp["layers"]["vision"].replace(", floor=false", "")
        fp["hash"] = "0" * 16
        for key in ("items", "at_default"):
            fp.pop(key, None)
        return fp

    rewrite_fingerprints(run, older)
    model, g, _ = load_trained(SPEC, run, SIZES)
    assert g.name == "llava"


def test_a_different_value_is_still_refused_naming_the_layer(run):
    def deeper(fp):
        fp["layers"]["lm"] = fp["layers"]["lm"].replace("depth=2", "depth=3")
        fp["hash"] = "1" * 16
        return fp

    rewrite_fingerprints(run, deeper)
    with pytest.raises(CheckpointError, match=r"layer 'lm': checkpoint has causal_lm\("
                                              r"vocab=259, width=32, depth=3"):
        load_trained(SPEC, run, SIZES)
