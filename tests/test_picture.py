"""Pictures of the checked graph: DOT and Mermaid text, SVG/PNG when Graphviz exists."""

import shutil

import pytest

from mmgraph.backends.picture import GraphvizMissing, boxes, render, to_dot, to_mermaid
from mmgraph.compiler import build_graph

from conftest import ROOT


@pytest.fixture(scope="module")
def flamingo():
    return build_graph(ROOT / "specs" / "flamingo.mmg")


def test_blocks_and_repeats_collapse_to_one_box(flamingo):
    bs, edges = boxes(flamingo)
    by_id = {b.id: b for b in bs}
    assert by_id["lm"].component == "repeat x8"
    assert by_id["lm"].role == "decoder"
    assert by_id["lm"].trainable == "partly frozen"  # gated xattn trains, LM layers frozen
    assert by_id["vision"].trainable == "frozen" and by_id["media"].trainable == "trainable"
    assert by_id["media"].title == "media = resampler"
    assert ("media", "lm", "") in edges
    assert by_id["lm_loss"].role == "loss"


def test_expanded_picture_shows_every_layer(flamingo):
    bs, _ = boxes(flamingo, expand=True)
    assert any(b.id == "lm.7.xattn" for b in bs)


def test_dot_and_mermaid_carry_roles_types_and_state(flamingo):
    dot = to_dot(flamingo)
    assert dot.startswith('digraph "flamingo"')
    assert "Seq&lt;image&gt;[B, 64, 1024]" in dot  # the resampler's output type
    assert "encoder: vit" in dot and "frozen" in dot
    mmd = to_mermaid(flamingo)
    assert mmd.startswith("flowchart TD") and "classDef decoder" in mmd
    assert "n_media -->" in mmd


def test_render_writes_text_formats(tmp_path, flamingo):
    assert render(flamingo, tmp_path / "g.dot").read_text() == to_dot(flamingo)
    assert render(flamingo, tmp_path / "g.mmd").read_text() == to_mermaid(flamingo)
    with pytest.raises(ValueError):
        render(flamingo, tmp_path / "g.bmp")


@pytest.mark.skipif(shutil.which("dot") is None,
                    reason="Graphviz's dot is not installed; SVG/PNG need it")
def test_svg_through_graphviz(tmp_path, flamingo):
    out = render(flamingo, tmp_path / "g.svg")
    assert out.read_text().lstrip().startswith(("<?xml", "<svg"))


@pytest.mark.skipif(shutil.which("dot") is not None,
                    reason="Graphviz is installed here; this checks the message without it")
def test_svg_without_graphviz_says_so(tmp_path, flamingo):
    with pytest.raises(GraphvizMissing, match="Graphviz's `dot` program is not installed"):
        render(flamingo, tmp_path / "g.svg")
