"""tools/zoo_table.py writes docs/zoo.md from a zoo run's report and from nothing else: marks,
numbers, published counts and the partial specs' gaps all come from the report."""

from __future__ import annotations

import importlib.util

from conftest import ROOT

_spec = importlib.util.spec_from_file_location("zoo_table", ROOT / "tools" / "zoo_table.py")
zoo_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(zoo_table)

REPORT = {"exit_status": 1, "specs": {
    "clip": {"paper": 'CLIP (Radford et al., 2021) — "Learning Transferable Visual Models".',
             "seed": None, "fidelity": "faithful", "left_out": "",
             "published": [{"kind": "total", "count": 151277313, "tolerance": 0.0,
                            "source": "transformers CLIPModel"}],
             "tests": {
                 "test_zoo::test_paper_size_stats": {"outcome": "passed", "params": 151277313,
                                                     "trainable": 151277313, "flops": 9},
                 "test_zoo::test_published_parameter_count-total": {"outcome": "passed"},
                 "test_export_onnx::test_every_zoo_spec_exports_and_matches_pytorch": {
                     "outcome": "passed", "max_abs": 2.2e-7, "parts": 2},
                 "test_compile_zoo::test_tiny_forward_and_backward": {
                     "outcome": "failed", "error": "AssertionError: trainable w got no grad"}}},
    "albef": {"paper": 'ALBEF (Li et al., 2021) — "Align before Fuse".', "seed": 8,
              "fidelity": "partial", "left_out": "noisy-text filtering is data work",
              "published": [], "tests": {}},
}}


def test_the_table_says_what_the_report_says():
    text, pages = zoo_table.render(REPORT)
    rows = {line.split(" | ")[2]: line for line in text.splitlines() if "[`" in line}
    clip = rows["[`clip`](../specs/clip.mmg) ([picture](zoo/clip.md))"]
    assert "| 151 M |" in clip and "151 M total ✓" in clip and "| faithful |" in clip
    assert "✓ 2.2e-07" in clip and "✗ failed" in clip and "not run" in clip
    assert text.index("`albef`") < text.index("`clip`")  # seeds first, by number
    assert "- `albef`: noisy-text filtering is data work" in text
    assert "| `clip` | total | 151,277,313 | 151,277,313 | ±0.0% | transformers CLIPModel |" in text
    assert "- `clip` test_compile_zoo::test_tiny_forward_and_backward: AssertionError: " \
           "trainable w got no grad" in text
    assert "1 of the 78 seed systems" in text
    assert "This run: 1 failed, 3 passed zoo test results; 1 specs faithful, 1 partial." in text


def test_each_spec_gets_a_picture_page():
    _, pages = zoo_table.render(REPORT)
    assert set(pages) == {"clip", "albef"}
    assert "```mermaid\nflowchart" in pages["clip"]
    assert "151,277,313 parameters at the paper's size" in pages["clip"]
