"""gru, lstm and mamba: type rules with their diagnostics, numerical parity with their
references (torch.nn.GRU/LSTM, transformers' MambaMixer with the same weights), a hybrid
Mamba/attention stack built from `repeat` over a block, and ONNX export with parity at
several sequence lengths (the scan is an ONNX Loop, not unrolled)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

import mmgraph
from mmgraph.export import targets
from mmgraph.export.onnx_parts import export

from helpers import errors, graph

RNN_SPEC = """model m {
  input x: Seq[B, N, 12]
  layer g: gru(hidden=8, layers=2, bidirectional=true)
  layer l: lstm(hidden=6)
  out, last = g(x)
  seq, state = l(x)
  output out, last, seq, state
}
"""


def test_recurrent_types_have_the_last_state_as_an_extra_output():
    g = graph(RNN_SPEC)
    types = {name: str(g.type_of(ref)) for name, ref in g.outputs.items()}
    assert types == {"out": "Seq[B, N, 16]", "last": "Vec[B, 16]",
                     "seq": "Seq[B, N, 6]", "state": "Vec[B, 6]"}


def test_recurrent_diagnostics_name_the_place():
    assert errors("""model m {
  input x: Vec[B, 12]
  layer g: gru()
  y = g(x)
  output y
}""") == [("E302", 4, 9, "g expects Seq[B, N, D] for 'x' but x gives Vec[B, 12]")]
    assert errors("""model m {
  input x: Seq[B, N, 12]
  layer l: lstm(dropout=0.1)
  y = l(x)
  output y
}""") == [("E203", 3, 25, "l: dropout applies between stacked layers, and layers=1 has "
                          "none")]
    assert errors("""model m {
  input x: Seq[B, N, 12]
  layer s: mamba(state=0)
  y = s(x)
  output y
}""")[0][:3] == ("E203", 3, 24)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_gru_and_lstm_match_torch(kind):
    torch.manual_seed(0)
    model = _load(RNN_SPEC)
    face = model.g if kind == "gru" else model.l
    ref = (nn.GRU(12, 8, num_layers=2, batch_first=True, bidirectional=True) if kind == "gru"
           else nn.LSTM(12, 6, batch_first=True))
    ref.load_state_dict(face.state_dict())
    x = torch.randn(3, 7, 12)
    got = model(x=x)
    want, h = ref(x)
    h = h if kind == "gru" else h[0]
    last = torch.cat([h[-2], h[-1]], -1) if kind == "gru" else h[-1]
    out, state = ("out", "last") if kind == "gru" else ("seq", "state")
    torch.testing.assert_close(got[out], want, rtol=0, atol=0)
    torch.testing.assert_close(got[state], last, rtol=0, atol=0)
    # the forward direction's last state is its last output
    torch.testing.assert_close(got[state][:, :8 if kind == "gru" else 6],
                               got[out][:, -1, :8 if kind == "gru" else 6])


def test_mamba_matches_transformers_mamba_mixer_with_the_same_weights():
    transformers = pytest.importorskip("transformers")
    from transformers.models.mamba.modeling_mamba import MambaMixer

    torch.manual_seed(0)
    cfg = transformers.MambaConfig(hidden_size=16, state_size=4, conv_kernel=3, expand=2,
                                   time_step_rank=3, use_bias=True, num_hidden_layers=1,
                                   vocab_size=8)
    ref = MambaMixer(cfg, 0).eval()
    with torch.no_grad():  # random weights everywhere, so that every path matters
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    model = _load("""model m {
  input x: Seq[B, N, 16]
  layer s: mamba(state=4, conv=3, expand=2, dt_rank=3, bias=true)
  y = s(x)
  output y
}
""")
    model.s.load_state_dict(ref.state_dict())  # the same names: weights load as they are
    x = torch.randn(2, 9, 16)
    with torch.no_grad():
        want = ref(x)  # on CPU: transformers' reference PyTorch scan
        got = model(x=x)["y"]
    assert want.abs().max() > 0.5
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_mamba_is_causal_and_trains():
    torch.manual_seed(0)
    model = _load("""model m {
  input x: Seq[B, N, 8]
  layer s: mamba(state=4)
  y = s(x)
  output y
}
""")
    x = torch.randn(2, 6, 8)
    y = model(x=x)["y"]
    x2 = x.clone()
    x2[:, 4:] += 1.0  # changing later positions leaves earlier outputs alone
    torch.testing.assert_close(model(x=x2)["y"][:, :4], y[:, :4], rtol=0, atol=0)
    y.pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


HYBRID = """block hybrid(heads) {
  input x: Seq[B, N, D]
  layer ssm: mamba(state=4, conv=2)
  layer attn: transformer_layer(heads=heads, causal=true, norm="rms", pos="rope")
  h = x + ssm(rms_norm(x))
  output attn(h)
}

model jamba_ish {
  input tokens: Tokens[B, T]
  layer embed: token_embedding(vocab=32, width=16)
  layer stack: repeat(hybrid(heads=2), times=2)
  head out: lm_head(vocab=32)
  logits = out(stack(embed(tokens)))
  output logits
  export {
    dim B = 1..3 @ 2
    dim T = 1..9 @ 5
  }
}
"""


def test_a_hybrid_stack_alternates_mamba_and_attention_layers():
    g = graph(HYBRID)
    layers = [(name, inst.component) for name, inst in g.instances.items()
              if name.startswith("stack.") and inst.component in ("mamba", "transformer_layer")]
    assert layers == [("stack.0.ssm", "mamba"), ("stack.0.attn", "transformer_layer"),
                      ("stack.1.ssm", "mamba"), ("stack.1.attn", "transformer_layer")]
    assert str(g.type_of(g.outputs["logits"])) == "Logits<text>[B, T, 32]"
    # mamba keeps no state between generation steps, so the stack says it cannot generate
    assert g.decoding is None
    assert "stack.0.ssm" in g.decoding_problem.message


@pytest.mark.parametrize("spec", [RNN_SPEC, HYBRID], ids=["gru_lstm", "hybrid_mamba"])
def test_recurrent_layers_export_to_onnx_with_parity(spec, tmp_path):
    path = tmp_path / "m.mmg"
    path.write_text(spec)
    manifest = export(path, tmp_path / "out", targets.load("onnx"), log=lambda _: None)
    (part,) = manifest["parts"]
    for output, err in part["parity"]["fp32"].items():
        assert set(err["at"]) == {"min", "opt", "max"}, output
        assert err["max_abs"] <= 1e-4, (output, err)
    if spec is HYBRID:  # lengths 1, 5 and 9 from one export: the scan is a Loop
        assert [err["at"][k]["dims"]["T"] for k in ("min", "opt", "max")
                for err in [part["parity"]["fp32"]["logits"]]] == [1, 5, 9]
        import onnx

        from mmgraph.export.tensorrt import check_compatibility
        onnx_path = tmp_path / "out" / part["onnx"]
        ops = {n.op_type for n in onnx.load(str(onnx_path)).graph.node}
        assert "Loop" in ops and not any(op.startswith("Sequence") for op in ops)
        # the loop carries fixed-shape values only: TensorRT's importer takes it
        report = check_compatibility(onnx_path, "10.13")
        assert report.ok, [f.problem for f in report.errors]


def _load(src: str):
    """A torch model from spec text (written to a temporary file, as `load` reads files)."""
    folder = Path(tempfile.mkdtemp())
    (folder / "m.mmg").write_text(src)
    return mmgraph.load(folder / "m.mmg")
