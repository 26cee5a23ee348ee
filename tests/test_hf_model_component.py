"""`hf_model(path=..., output=...)`: a local transformers folder as one layer. Checking reads
only config.json (the output type comes from it); the torch face gives transformers' own
outputs exactly; problems with the folder are diagnostics at the `path` argument."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmgraph.backends.torch.load import model_class
from mmgraph.compiler import build_graph
from mmgraph.lang.diagnostics import SpecError

transformers = pytest.importorskip("transformers", reason="transformers is not installed")


def _bert(folder: Path):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=48,
                                  max_position_embeddings=16)
    m = transformers.BertModel(cfg).eval()
    m.save_pretrained(folder, safe_serialization=True)
    return m


def _vit(folder: Path):
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=48, image_size=16, patch_size=4)
    m = transformers.ViTModel(cfg).eval()
    m.save_pretrained(folder, safe_serialization=True)
    return m


TEXT = """
model m {{
  input text: Tokens[B, 12]
  encoder enc: hf_model(path="{path}", output="{output}")
  y = enc(text)
  output y
}}
"""

IMAGE = """
model m {{
  input image: Image[B, 3, 16, 16]
  encoder enc: hf_model(path="{path}", output="{output}")
  y = enc(image)
  output y
}}
"""


def _spec(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "spec.mmg"
    p.write_text(text, encoding="utf-8")
    return p


def _model(spec: Path):
    g = build_graph(spec, {}, None, ())
    return model_class(g, spec)().eval(), g


@pytest.mark.parametrize("output,want", [("last_hidden_state", "Seq<text>[B, 12, 32]"),
                                         ("pooler_output", "Vec<text>[B, 32]")])
def test_bert_types_and_forward_exactly(tmp_path, output, want):
    ref = _bert(tmp_path / "bert")
    spec = _spec(tmp_path, TEXT.format(path="bert", output=output))  # relative to the spec
    model, g = _model(spec)
    assert str(g.type_of(g.outputs["y"])) == want
    ids = torch.randint(0, 50, (2, 12))
    with torch.no_grad():
        got = model(text=ids)
        exp = getattr(ref(input_ids=ids), output)
    got = got["y"] if isinstance(got, dict) else got
    assert torch.equal(got, exp)


@pytest.mark.parametrize("output,want", [("last_hidden_state", "Seq<image>[B, 17, 32]"),
                                         ("pooler_output", "Vec<image>[B, 32]")])
def test_vit_types_and_forward_exactly(tmp_path, output, want):
    ref = _vit(tmp_path / "vit")
    spec = _spec(tmp_path, IMAGE.format(path="vit", output=output))
    model, g = _model(spec)
    assert str(g.type_of(g.outputs["y"])) == want
    img = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        got = model(image=img)
        exp = getattr(ref(pixel_values=img), output)
    got = got["y"] if isinstance(got, dict) else got
    assert torch.equal(got, exp)
