"""`mmgraph compile` and `mmgraph stats` through the CLI."""

from __future__ import annotations

import json

from mmgraph.cli import main

from conftest import ROOT


def test_compile_writes_module_and_ir(tmp_path, capsys):
    code = main(["compile", str(ROOT / "specs" / "llava.mmg"), "-o", str(tmp_path),
                 "--set", "width=64", "--set", "depth=2"])
    assert code == 0
    py, ir = tmp_path / "llava.py", tmp_path / "llava.ir.txt"
    source = py.read_text()
    assert "class Llava(mm.GeneratedModel):" in source
    assert "self.lm = mm.decoders.CausalLM(" in source
    assert "vocab=32064,\n            width=64,\n            depth=2," in source
    assert ir.read_text().startswith("model llava\n")
    assert f"wrote {py}" in capsys.readouterr().out


def test_compile_reports_spec_errors(tmp_path, capsys):
    bad = tmp_path / "bad.mmg"
    bad.write_text("model m {\n  input x: Vec[B, 8]\n  output f(x) as y\n}\n")
    assert main(["compile", str(bad), "-o", str(tmp_path)]) == 1
    assert "bad.mmg:3:10: error[E201]" in capsys.readouterr().err


def test_stats_json_has_the_documented_fields(capsys):
    assert main(["stats", str(ROOT / "specs" / "clip.mmg"), "--dims", "B=2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"] == "clip"
    assert data["params"] == {"total": 151_277_313, "trainable": 151_277_313}
    assert data["flops"] > 0 and data["dims"] == {"B": 2}
    assert [n["name"] for n in data["nodes"]] == ["vision", "texter", "img_proj", "txt_proj",
                                                  "itc"]


def test_stats_table_and_frozen_counts(capsys):
    assert main(["stats", str(ROOT / "specs" / "llava.mmg"), "--dims", "B=1,T=32"]) == 0
    out = capsys.readouterr().out
    assert "7,063,427,072 total, 6,759,919,616 trainable" in out
    assert "at B=1, T=32" in out


def test_stats_flops_grow_with_the_batch(capsys):
    main(["stats", str(ROOT / "specs" / "clip.mmg"), "--dims", "B=1", "--json"])
    one = json.loads(capsys.readouterr().out)["flops"]
    main(["stats", str(ROOT / "specs" / "clip.mmg"), "--dims", "B=4", "--json"])
    four = json.loads(capsys.readouterr().out)["flops"]
    assert four == 4 * one


def test_stats_bad_dims_is_a_usage_error(capsys):
    assert main(["stats", str(ROOT / "specs" / "clip.mmg"), "--dims", "B=x"]) == 2
    assert "--dims expects NAME=INT" in capsys.readouterr().err


def test_stats_of_a_batchnorm_backbone_at_batch_one(tmp_path, capsys):
    """Stats count the inference pass (eval mode): in training mode BatchNorm refuses a 1 x 1
    grid of one example, which made `stats --dims B=1` an internal error."""
    spec = tmp_path / "bn.mmg"
    spec.write_text('model bn {\n  input image: Image[B, 3, 32, 32]\n'
                    '  encoder cnn: hf_backbone(family="resnet", depths=[1, 1, 1, 1], '
                    'widths=[8, 8, 8, 8], embedding=8, output="pooled")\n'
                    '  v = cnn(image)\n  output v\n}\n')
    assert main(["stats", str(spec), "--dims", "B=1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"]["total"] == 1800
