"""`mmgraph export` and `mmgraph bench` through the CLI."""

from __future__ import annotations

import json

from mmgraph.cli import main

from conftest import ROOT
from tiny import TINY

SET = [f"--set={k}={v}" for k, v in TINY["llava"].items()]


def test_export_for_tensorrt_writes_onnx_report_and_build_scripts(tmp_path, capsys):
    code = main(["export", str(ROOT / "specs" / "llava.mmg"), *SET, "--target",
                 "jetson-orin", "-o", str(tmp_path)])
    assert code == 0
    err = capsys.readouterr().err
    assert "TensorRT 10.3" in err and "build_engine.sh" in err
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["tensorrt"]["version"] == "10.3"
    assert all(r["ok"] for r in manifest["tensorrt"]["compatibility"].values())
    script = (tmp_path / "build_engine.sh").read_text()
    assert "--minShapes=v:1x4x32,prompt:1x1" in script and "--saveEngine=text.engine" in script
    assert (tmp_path / "visual.fp16.onnx").exists()


def test_export_for_triton_writes_a_valid_repository(tmp_path):
    assert main(["export", str(ROOT / "specs" / "llava.mmg"), *SET, "--target", "triton",
                 "-o", str(tmp_path), "--json"]) == 0
    from mmgraph.export.triton import validate_repository

    assert validate_repository(tmp_path / "triton") == []
    assert (tmp_path / "triton" / "llava" / "config.pbtxt").exists()


def test_export_errors_are_for_people(tmp_path, capsys):
    assert main(["export", str(ROOT / "specs" / "llava.mmg"), *SET, "--target", "tensorrt",
                 "-o", str(tmp_path)]) == 1
    assert "no export target 'tensorrt'; did you mean" in capsys.readouterr().err


def test_bench_compares_backends_on_the_same_inputs(tmp_path, capsys):
    main(["export", str(ROOT / "specs" / "clip.mmg"),
          *[f"--set={k}={v}" for k, v in TINY["clip"].items()], "-o", str(tmp_path)])
    capsys.readouterr()
    assert main(["bench", str(tmp_path), "--runs", "5", "--no-compile", "--dims", "B=2",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dims"]["B"] == 2
    for part in report["parts"]:
        assert set(part["backends"]) >= {"torch", "onnxruntime"}
        assert part["backends"]["torch"]["ratio_to_torch"] == 1.0
        assert part["backends"]["onnxruntime"]["p50_ms"] > 0
