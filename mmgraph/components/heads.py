"""Heads: the last layers that turn features into logits, boxes or predictions."""

from __future__ import annotations

from mmgraph.components.common import PosInt
from mmgraph.components.registry import Component, Params, Port, register
from mmgraph.ir import types as T


def _logits(ctx, t, classes):
    ctx.expect_kind("x", t, "Seq", "Vec")
    if t.kind == "Vec":
        return T.make("Logits", (t.dim("B"), classes), tags=t.tags)
    return T.make("Logits", (t.dim("B"), t.dim("N"), classes), tags=t.tags)


@register
class Classifier(Component):
    name = "classifier"
    category = "head"
    lora_targets = ("self",)  # the component is its own linear layer(s)
    summary = "Linear (or MLP) classifier: Vec -> Logits[B, classes], Seq -> per-token logits"
    inputs = (Port("x"),)

    class Params(Params):
        classes: PosInt
        hidden: PosInt | None = None
        bias: bool = True

    def infer(self, p, x, ctx):
        return _logits(ctx, x["x"], p.classes)


@register
class LMHead(Component):
    name = "lm_head"
    category = "head"
    lora_targets = ("self",)  # the component is its own linear layer(s)
    summary = "Per-token vocabulary logits (MLM, captioning)"
    inputs = (Port("x"),)

    class Params(Params):
        vocab: PosInt
        bias: bool = False
        transform: bool = False  # BERT's dense + act + norm before the decoder

    def infer(self, p, x, ctx):
        ctx.expect_kind("x", x["x"], "Seq")
        return _logits(ctx, x["x"], p.vocab)


@register
class ITMHead(Component):
    name = "itm_head"
    category = "head"
    lora_targets = ("self",)  # the component is its own linear layer(s)
    summary = "Image-text matching head: two logits (match / no match) from a fused vector"
    inputs = (Port("x"),)

    def infer(self, p, x, ctx):
        ctx.expect_kind("x", x["x"], "Vec")
        return _logits(ctx, x["x"], 2)


@register
class Regression(Component):
    name = "regression"
    category = "head"
    lora_targets = ("self",)  # the component is its own linear layer(s)
    summary = "Linear regression head: Vec[B, D] -> Vec[B, out] (e.g. fMRI voxels)"
    inputs = (Port("x"),)

    class Params(Params):
        out: PosInt
        hidden: PosInt | None = None

    def infer(self, p, x, ctx):
        t = x["x"]
        ctx.expect_kind("x", t, "Vec", "Seq")
        return t.with_(dims=t.dims[:-1] + (T.sympy.Integer(p.out),))


@register
class BoxHead(Component):
    name = "box_head"
    category = "head"
    lora_targets = ("self",)  # the component is its own linear layer(s)
    summary = "3-layer MLP predicting one box per token (DETR/MDETR)"
    inputs = (Port("x"),)

    class Params(Params):
        hidden: PosInt | None = None

    def infer(self, p, x, ctx):
        t = x["x"]
        ctx.expect_kind("x", t, "Seq")
        return T.make("Boxes", (t.dim("B"), t.dim("N"), 4), tags=t.tags)
