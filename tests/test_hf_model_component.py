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


# ---------------------------------------------------------------- problems with the folder

@pytest.mark.parametrize("make,message", [
    (lambda d: None, "no model folder"),
    (lambda d: d.mkdir(), "has no config.json"),
    (lambda d: (d.mkdir(), (d / "config.json").write_text("[1]")), "holds no JSON object"),
    (lambda d: (d.mkdir(), (d / "config.json").write_bytes(b'{"a": "\\xff"}'[:0] + b"\xff")),
     "not UTF-8"),
    (lambda d: (d.mkdir(), (d / "config.json").write_text('{"model_type": "gpt2"}')),
     "model_type 'gpt2' is not one hf_model can type"),
])
def test_folder_problems_are_diagnostics_at_the_path(tmp_path, make, message):
    make(tmp_path / "m")
    spec = _spec(tmp_path, TEXT.format(path="m", output="last_hidden_state"))
    with pytest.raises(SpecError) as info:
        build_graph(spec, {}, None, ())
    (d,) = info.value.diagnostics
    assert message in d.message, d.message
    line = TEXT.splitlines().index('  encoder enc: hf_model(path="{path}", output="{output}")')
    assert (d.span.line, d.span.col) == (line + 1, TEXT.splitlines()[line].index('"') + 1)


def test_checking_imports_neither_torch_nor_transformers(tmp_path):
    import subprocess
    import sys

    _bert(tmp_path / "bert")
    spec = _spec(tmp_path, TEXT.format(path="bert", output="last_hidden_state"))
    code = ("import sys; from mmgraph.compiler import build_graph; "
            f"g = build_graph({str(spec)!r}, {{}}, None, ()); print(g.type_of(g.outputs['y'])); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "Seq<text>[B, 12, 32]"


@pytest.mark.parametrize("make,spec", [(_bert, TEXT), (_vit, IMAGE)])
def test_onnx_export_matches_pytorch(tmp_path, make, spec):
    """The wrapped BertModel and ViTModel export with torch.onnx (measured: max abs diff
    7.2e-7 for the tiny BERT)."""
    from mmgraph.export import targets
    from mmgraph.export.onnx_parts import export

    make(tmp_path / "m")
    manifest = export(_spec(tmp_path, spec.format(path="m", output="last_hidden_state")),
                      tmp_path / "dist", targets.load("onnx"), log=lambda *a: None)
    (part,) = manifest["parts"]
    assert part["parity"]["fp32"]["y"]["max_abs"] < 1e-5


def test_a_wrapped_model_that_fails_to_export_names_the_layer(tmp_path, monkeypatch):
    from mmgraph.export import targets
    from mmgraph.export.onnx_parts import ExportError, export

    _bert(tmp_path / "m")

    def refuse(*args, **kwargs):
        raise RuntimeError("Unsupported: ONNX export of operator foo\nsecond line")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    spec = _spec(tmp_path, TEXT.format(path="m", output="last_hidden_state"))
    with pytest.raises(ExportError) as info:
        export(spec, tmp_path / "dist", targets.load("onnx"), log=lambda *a: None)
    msg = str(info.value)
    assert "\n" not in msg
    assert "part 'm' could not be exported to ONNX" in msg
    assert "hf_model layer 'enc' (spec.mmg:4)" in msg
    assert "RuntimeError: Unsupported: ONNX export of operator foo second line" in msg
