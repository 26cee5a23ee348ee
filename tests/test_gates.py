"""Broadcasting arithmetic, per-example gates and routing (issue 13 item 5): MoVA's
context-aware router over vision experts (`gate(out=K, act="softmax")` + `mixture`), a
per-example gate `Tensor[B]` on a sequence, and MultiModN's missing-modality gate."""

from __future__ import annotations

import pytest
import torch

import mmgraph
from mmgraph.export import targets
from mmgraph.export.onnx_parts import export
from tests.helpers import docs_example, errors, graph

MOVA = """model mova {
  input ctx: Vec[B, 16]
  input a: Seq[B, N, 8]
  input b: Seq[B, N, 8]
  input c: Seq[B, N, 8]
  input has_b: Tensor<bool>[B]
  layer router: gate(out=3, act="softmax")
  layer keep: gate()
  w = router(ctx)
  m = mixture(w, a, modality_gate(b, has_b), c)
  y = m * keep(ctx)
  output y, w
}
"""


@pytest.fixture
def mova(tmp_path):
    spec = tmp_path / "mova.mmg"
    spec.write_text(MOVA)
    return spec


# ---- broadcasting arithmetic ---------------------------------------------------------------

BROADCAST = """
model m {
  input x: Seq[B, N, 8]
  input c: Vec[B, 8]
  input g: Tensor[B]
  input t: Tensor[B, N]
  a = x * c
  b = x + g
  d = c - x
  e = g * c
  f = x / t
  output a, b, d, e, f
}
"""


def test_broadcast_types():
    dump = graph(BROADCAST).dump()
    for line in ["%a : Seq[B, N, 8] = mul(%x, %c)", "%b : Seq[B, N, 8] = add(%x, %g)",
                 "%d : Seq[B, N, 8] = sub(%c, %x)", "%e : Vec[B, 8] = mul(%g, %c)",
                 "%f : Seq[B, N, 8] = div(%x, %t)"]:
        assert line in dump


def test_broadcast_diagnostics():
    assert errors("""
    model m {
      input x: Seq[B, N, 8]
      input c: Vec[B, 4]
      input h: Tensor<f16>[B]
      a = x * c
      d = x * h
      output a, d
    }
    """) == [
        ("E301", 6, 7, "cannot mul Seq[B, N, 8] (x) and Vec[B, 4] (c): Vec[B, 4] (c) does not "
                       "broadcast over Seq[B, N, 8] (x)"),
        ("E307", 7, 7, "cannot mul Seq[B, N, 8] and Tensor<f16>[B]: dtypes differ")]
    # a per-token gate must have the sequence's length
    [(code, line, col, message)] = errors("""
    model m {
      input x: Seq[B, 4, 8]
      input k: Tensor[B, 5]
      y = x * k
      output y
    }
    """)
    assert (code, line, col) == ("E301", 5, 7) and "does not broadcast" in message


def test_broadcast_numbers(tmp_path):
    spec = tmp_path / "b.mmg"
    spec.write_text(BROADCAST)
    model = mmgraph.load(spec)
    torch.manual_seed(0)
    x, c, g, t = torch.randn(2, 3, 8), torch.randn(2, 8), torch.randn(2), torch.rand(2, 3) + 1
    out = model(x, c, g, t)
    torch.testing.assert_close(out["a"], x * c.unsqueeze(1), rtol=0, atol=0)
    torch.testing.assert_close(out["b"], x + g.view(2, 1, 1), rtol=0, atol=0)
    torch.testing.assert_close(out["d"], c.unsqueeze(1) - x, rtol=0, atol=0)
    torch.testing.assert_close(out["e"], g.view(2, 1) * c, rtol=0, atol=0)
    torch.testing.assert_close(out["f"], x / t.unsqueeze(-1), rtol=0, atol=0)


# ---- gate, mixture, modality_gate ----------------------------------------------------------

def test_gate_mixture_types(mova):
    g = graph(MOVA)
    dump = g.dump()
    assert "%w : Tensor[B, 3] = call router(x=%ctx)" in dump
    assert "%keep : Tensor[B] = call keep(x=%ctx)" in dump
    assert ("%m : Seq[B, N, 8] = call mixture(weights=%w, experts0=%a, "
            "experts1=%modality_gate, experts2=%c)") in dump
    assert "%y : Seq[B, N, 8] = mul(%m, %keep)" in dump


def test_gate_diagnostics():
    assert errors("""
    model m {
      input ctx: Vec[B, 16]
      input a: Seq[B, N, 8]
      input b: Seq[B, N, 4]
      input m: Mask[B, N]
      layer r: gate(out=1, act="softmax")
      layer r3: gate(out=3, act="softmax")
      y = mixture(r3(ctx), a, a)
      z = mixture(r3(ctx), a, b, a)
      u = modality_gate(a, m)
      v = gate(a)
      q = mixture(r3(ctx), a)
      output y, z, u, v, q
    }
    """) == [
        ("E203", 7, 12, 'gate: act="softmax" over out=1 weight is always 1; use '
                        'act="sigmoid" or out=K for K experts'),
        ("E301", 9, 24, "mixture needs the same number of experts (K of the weights "
                        "Tensor[B, K], and the experts given) from r3 and a, but they give 3 "
                        "and 2"),
        ("E301", 10, 27, "mixture_1 needs the same D size from a and b, but they give 8 and 4"),
        ("E302", 11, 24, "modality_gate expects a per-example flag Tensor<bool>[B] for "
                         "'present' but m gives Mask[B, N]"),
        ("E302", 12, 12, "gate expects Vec[B, D] for 'x' but a gives Seq[B, N, 8]"),
        ("E205", 13, 15, "mixture_2 mixes at least two experts but is given 1")]


def test_gate_mixture_numbers_match_a_hand_computation(mova):
    torch.manual_seed(0)
    model = mmgraph.load(mova)
    ctx = torch.randn(2, 16)
    a, b, c = (torch.randn(2, 3, 8) for _ in range(3))
    b[1] = float("nan")  # a missing modality's features may be garbage: they must vanish
    has_b = torch.tensor([True, False])
    out = model(ctx, a, b, c, has_b)
    w = torch.softmax(ctx @ model.router.proj.weight.T + model.router.proj.bias, dim=-1)
    keep = torch.sigmoid(ctx @ model.keep.proj.weight.T + model.keep.proj.bias)[:, 0]
    b_seen = torch.where(has_b.view(2, 1, 1), b, torch.zeros(()))
    want = sum(w[:, k].view(2, 1, 1) * e for k, e in enumerate([a, b_seen, c]))
    want = want * keep.view(2, 1, 1)
    torch.testing.assert_close(out["w"], w)
    torch.testing.assert_close(out["y"], want)
    assert torch.isfinite(out["y"]).all()
    out["y"].sum().backward()
    assert model.router.proj.weight.grad is not None and model.keep.proj.weight.grad is not None


def test_onnx_parity(mova, tmp_path):
    manifest = export(mova, tmp_path / "dist", targets.load("onnx"), log=lambda _: None)
    [part] = manifest["parts"]
    for name in ("y", "w"):
        errs = part["parity"]["fp32"][name]
        assert set(errs["at"]) == {"min", "opt", "max"} and errs["max_abs"] <= 1e-5


def test_broadcast_onnx_parity(tmp_path):
    spec = tmp_path / "b.mmg"
    spec.write_text(BROADCAST)
    [part] = export(spec, tmp_path / "dist", targets.load("onnx"), log=lambda _: None)["parts"]
    assert all(part["parity"]["fp32"][n]["max_abs"] <= 1e-6 for n in "abdef")


def test_the_docs_examples_check_as_printed():
    """docs/language.md's gates-and-routing example: every IR line it prints."""
    src, printed = docs_example("model mova {")
    dump = graph(src).dump()
    for line in printed.strip("\n").splitlines():
        assert line.strip() in dump
    assert "%y : Seq[B, N, 64] = mul(" in graph(docs_example("y = (x + ctx) * g(ctx)")[0]).dump()
