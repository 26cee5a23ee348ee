"""examples/caption_digits.mmg end to end at CI speed: the spec checks and can generate, a few
training steps give a run folder, `mmgraph generate` captions examples/seven.png from it with
the same tokens as model.generate, and the export folder generates the same tokens through
onnxruntime. (The caption naming the digit needs the full training: examples/caption_accuracy.py
measures it; README.md, "Generate text".)"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image

from mmgraph.build import load_class
from mmgraph.cli import main
from mmgraph.train.run import load_trained
from mmgraph.train.tokenize import ByteTokenizer

from conftest import ROOT

sys.path.insert(0, str(ROOT / "examples"))

import caption_accuracy  # noqa: E402
import make_digit_png  # noqa: E402

SPEC = ROOT / "examples" / "caption_digits.mmg"
SEVEN = ROOT / "examples" / "seven.png"
NEW = 12  # new tokens per generation: enough to compare, few enough to be quick


def generated(capsys, *argv) -> list[int]:
    """The ids `mmgraph generate ... --json` prints for one prompt."""
    capsys.readouterr()
    assert main(["generate", *map(str, argv), "--max-new-tokens", str(NEW), "--json"]) == 0
    return json.loads(capsys.readouterr().out)["generated"][0]["ids"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder of the example trained a handful of steps on the built-in digits."""
    out = tmp_path_factory.mktemp("caption") / "run"
    assert main(["train", str(SPEC), "--dims", "T=40", "--out", str(out), "--max-steps", "3",
                 "--train", "batch_size=8", "--quiet"]) == 0
    return out


def test_spec_checks_and_generates_from_bos():
    cls, g = load_class(SPEC)
    assert g.decoding is not None, g.decoding_problem
    assert g.decoding.tokens == "text" and g.decoding.context_inputs == ("image",)
    assert g.decoding.vocab >= ByteTokenizer.vocab_size
    # BOS, then the longest caption (32 bytes) and EOS fit after the visual tokens
    visual = g.type_of(g.values["v"]).dims[1]
    assert g.decoding.max_len >= int(visual) + 1 + 33


def test_seven_png_is_the_script_output(tmp_path):
    index = make_digit_png.write_digit(7, tmp_path / "seven.png")
    ours = np.asarray(Image.open(SEVEN))
    assert ours.shape == (8, 8) and ours.dtype == np.uint8
    assert np.array_equal(ours, np.asarray(Image.open(tmp_path / "seven.png")))
    from mmgraph.train.sources import DigitsSource
    assert DigitsSource("test")[index]["label"] == 7


def test_named_digit():
    assert caption_accuracy.named_digit("a photo of the digit seven") == 7
    assert caption_accuracy.named_digit("a handwritten 7") == 7
    assert caption_accuracy.named_digit("the number zero, not 3") == 0
    assert caption_accuracy.named_digit("a picture of someone") is None  # "one" inside a word


def test_generate_cli_matches_model_generate(run, capsys):
    ids = generated(capsys, SPEC, "--checkpoint", run, "--image", SEVEN)
    model, g, _ = load_trained(SPEC, run)
    image = caption_accuracy.image_tensor(g, Image.open(SEVEN))[None]
    tok = ByteTokenizer()
    direct = model.generate([[tok.bos_id]], image=image, max_new_tokens=NEW,
                            stop=(tok.eos_id,))[0]
    assert ids == direct
    assert model.generate([[tok.bos_id]], image=image, max_new_tokens=NEW, stop=(tok.eos_id,),
                          cache=False)[0] == direct


def test_export_folder_generates_the_same_tokens(run, tmp_path, capsys):
    dist = tmp_path / "dist"
    assert main(["export", str(SPEC), "--checkpoint", str(run), "-o", str(dist)]) == 0
    from_torch = generated(capsys, SPEC, "--checkpoint", run, "--image", SEVEN)
    assert generated(capsys, dist, "--image", SEVEN) == from_torch
