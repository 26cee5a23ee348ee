"""Adding a component is one class and one test (docs/language.md §13). The proof: a gated
linear layer defined in this file and nowhere else (its schema, type rule and torch face) is
checked, compiled, trained and exported to ONNX like a built-in component."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mmgraph
from mmgraph.backends.torch.codegen import generate
from mmgraph.compiler import build_graph, check_file
from mmgraph.components import registry
from mmgraph.components.common import PosInt, in_width, with_width
from mmgraph.components.registry import Component, Params, Port
from mmgraph.export import targets
from mmgraph.export.onnx_parts import export


class GatedLinear(nn.Module):
    """The torch face: value(x) * sigmoid(gate(x)), a GLU projection of the width."""

    def __init__(self, *, in_width: int, out: int, bias: bool):
        super().__init__()
        self.value = nn.Linear(in_width, out, bias=bias)
        self.gate = nn.Linear(in_width, out, bias=bias)

    def forward(self, x):
        return self.value(x) * torch.sigmoid(self.gate(x))


class GLU(Component):
    name = "glu_recipe"
    category = "connector"
    summary = "A gated linear projection of the width"
    inputs = (Port("x"),)
    lora_targets = ("value", "gate")
    torch = f"{__name__}:GatedLinear"  # imported only when a model is built

    class Params(Params):
        out: PosInt
        bias: bool = True

    def infer(self, p, x, ctx):
        ctx.expect_kind("x", x["x"], "Seq", "Vec")
        return with_width(x["x"], p.out)

    def torch_args(self, p, x, ctx):
        return {"in_width": in_width(ctx, x), **p.model_dump()}


SPEC = """model recipe {
  input x: Seq[B, N, 16]
  input y: Seq[B, N, 8]
  connector glu: glu_recipe(out=8)
  h = glu(x)
  output h
  loss fit = mse(h, y)
}
"""


@pytest.fixture
def recipe(tmp_path):
    registry.get("linear")  # the built-ins first, then ours beside them
    registry.register(GLU)
    spec = tmp_path / "recipe.mmg"
    spec.write_text(SPEC)
    yield spec
    del registry.REGISTRY[GLU.name]


def test_check_types_the_new_component(recipe, tmp_path):
    result = check_file(recipe)
    assert result.ok, [str(d) for d in result.errors]
    assert "%h : Seq[B, N, 8] = call glu(x=%x)" in result.graphs["recipe"].dump()
    bad = tmp_path / "bad.mmg"
    bad.write_text(SPEC.replace("Seq[B, N, 16]", "Tokens[B, N]"))
    [error] = check_file(bad).errors
    assert error.code == "E302" and "glu expects" in error.message


def test_compile_train_and_export(recipe, tmp_path):
    source = generate(build_graph(recipe), str(recipe)).source
    assert 'self.glu = mm.face("glu_recipe")(in_width=16, out=8, bias=True)' in source

    torch.manual_seed(0)
    model = mmgraph.load(recipe)
    x, y = torch.randn(2, 5, 16), torch.randn(2, 5, 8)
    outputs, losses = model(x, y, return_losses=True)
    assert outputs["h"].shape == (2, 5, 8)
    losses["total"].backward()
    assert all(p.grad is not None for p in model.glu.parameters())

    manifest = export(recipe, tmp_path / "dist", targets.load("onnx"), log=lambda _: None)
    [part] = manifest["parts"]
    errors = part["parity"]["fp32"]["h"]
    assert set(errors["at"]) == {"min", "opt", "max"} and errors["max_abs"] <= 1e-4
