"""Similarity logits between two batches: every example of one against every entry of the
other (zero-shot classification against class-prompt embeddings, prompt learning, retrieval
scores)."""

from __future__ import annotations

from mmgraph.components.common import PosFloat, tags_of
from mmgraph.components.registry import Component, Params, Port, register
from mmgraph.ir import types as T


@register
class Similarity(Component):
    name = "similarity"
    category = "head"
    summary = ("Scaled (cosine) similarity of every row of `a` with every row of `b`: "
               "Vec[B, D] x Vec[C, D] -> Logits[B, C] (zero-shot classes, prompt learning)")
    inputs = (Port("a"), Port("b"))
    torch = "mmgraph.components.nn.similarity:Similarity"
    sequence = "pointwise"
    # the learnable temperature when asked for; a layer either way, so its scale is saved
    has_weights = True

    class Params(Params):
        temperature: PosFloat = 1.0  # logits = a . b / temperature (CLIP's trained: 0.01)
        learnable: bool = False
        normalize: bool = True  # cosine: both sides to unit length first

    def infer(self, p, x, ctx):
        a, b = x["a"], x["b"]
        ctx.expect_kind("a", a, "Vec")
        ctx.expect_kind("b", b, "Vec")
        ctx.expect_same("a", a.width, "b", b.width, "embedding width")
        return T.make("Logits", (a.dims[0], b.dims[0]), a.dtype, tags_of(a, b))
