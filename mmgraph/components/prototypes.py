"""Prototype learning: embeddings are assigned to learnable prototypes with balanced codes
(Sinkhorn-Knopp), and each view predicts the other view's codes (SwAV's swapped prediction,
the form SkySense's geo-context prototypes build on)."""

from __future__ import annotations

from mmgraph.components.common import PosFloat, PosInt, fixed
from mmgraph.components.registry import Component, Params, Port, register
from mmgraph.ir import types as T


@register
class Prototypes(Component):
    name = "prototypes"
    category = "loss"
    summary = ("SwAV's swapped prediction: two views `a` and `b` (Vec[B, D], or Seq whose "
               "tokens count as examples) scored against `prototypes` learnable unit vectors; "
               "each view predicts the other's Sinkhorn codes over the global batch")
    inputs = (Port("a"), Port("b"))
    torch = "mmgraph.components.nn.prototypes:Prototypes"
    has_weights = True  # the prototypes

    class Params(Params):
        prototypes: PosInt
        temperature: PosFloat = 0.1  # SwAV's
        epsilon: PosFloat = 0.05  # the entropic regularisation of the codes
        iterations: PosInt = 3  # Sinkhorn-Knopp iterations

    def infer(self, p, x, ctx):
        a, b = x["a"], x["b"]
        ctx.expect_kind("a", a, "Vec", "Seq")
        ctx.expect_kind("b", b, "Vec", "Seq")
        if a.kind != b.kind:
            ctx.fail(f"{ctx.name} compares two views of one kind, but {ctx.source('a')} gives "
                     f"{a} and {ctx.source('b')} gives {b}", "b", code="E302")
        for axis in range(a.rank):
            ctx.expect_same("a", a.dims[axis], "b", b.dims[axis], f"{a.axes[axis]} size")
        return T.SCALAR

    def torch_args(self, p, x, ctx):
        return {"in_width": fixed(ctx, "a", x["a"], -1, "embedding width"), **p.model_dump()}
