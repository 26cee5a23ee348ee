"""Heads: the last layers that turn features into logits, boxes or predictions."""

from __future__ import annotations

from mmgraph.components.common import InputWidthSized, PosInt
from mmgraph.components.registry import Component, Layers, Params, Port, register
from mmgraph.ir import types as T
from mmgraph.lang.diagnostics import Diagnostic
from mmgraph.suggest import did_you_mean


def _logits(ctx, t, classes):
    ctx.expect_kind("x", t, "Seq", "Vec")
    if t.kind == "Vec":
        return T.make("Logits", (t.dim("B"), classes), tags=t.tags)
    return T.make("Logits", (t.dim("B"), t.dim("N"), classes), tags=t.tags)


class _Head(InputWidthSized, Component):
    """A head is its own linear layer(s), sized by the width of its input."""

    category = "head"
    lora_targets = ("self",)
    inputs = (Port("x"),)
    sequence = "pointwise"


@register
class Classifier(_Head):
    name = "classifier"
    summary = "Linear (or MLP) classifier: Vec -> Logits[B, classes], Seq -> per-token logits"
    torch = "mmgraph.components.nn.heads:Classifier"

    class Params(Params):
        classes: PosInt
        hidden: PosInt | None = None
        bias: bool = True

    def infer(self, p, x, ctx):
        return _logits(ctx, x["x"], p.classes)


@register
class LMHead(_Head):
    name = "lm_head"
    summary = "Per-token vocabulary logits (MLM, captioning)"
    torch = "mmgraph.components.nn.heads:LMHead"

    class Params(Params):
        vocab: PosInt
        bias: bool = False
        transform: bool = False  # BERT's dense + act + norm before the decoder
        tie: str | None = None  # a token_embedding layer whose weight is the decoder's

    def infer(self, p, x, ctx):
        ctx.expect_kind("x", x["x"], "Seq")
        return _logits(ctx, x["x"], p.vocab)

    def verify(self, node, graph):
        """`tie` names a token_embedding layer of the same model or block, called somewhere,
        with the head's vocabulary and input width: its [vocab, width] weight is the head's."""
        inst = graph.instances[node.target]
        p = inst.params
        if p.tie is None:
            return []
        span = inst.param_spans.get("tie", inst.span)
        scope = node.target.rpartition(".")[0]
        target = f"{scope}.{p.tie}" if scope else p.tie
        other = graph.instances.get(target)
        if other is None:
            here = [n[len(scope) + 1:] if scope else n for n, i in graph.instances.items()
                    if n.rpartition(".")[0] == scope and i.component == "token_embedding"]
            return [Diagnostic("E203", f"{inst.name}: tie=\"{p.tie}\" names no layer declared "
                                       "here", span,
                               hint=did_you_mean(p.tie, here) or
                               "name a token_embedding layer of the same model or block")]
        if other.component != "token_embedding":
            return [Diagnostic("E203", f"{inst.name} ties its weight to '{p.tie}', a "
                                       f"{other.component} layer; tie takes a token_embedding "
                                       "layer, whose weight is [vocab, width]", span)]
        if not any(n.op == "call" and n.target == target for n in graph.nodes.values()):
            return [Diagnostic("E203", f"{inst.name} ties its weight to '{p.tie}', which is "
                                       "declared but never called, so it is never built", span,
                               hint=f"call {p.tie} (the tokens' embedding), or leave tie out")]
        problems = []
        if other.params.vocab != p.vocab:
            problems.append(f"vocab={p.vocab} vs {other.params.vocab}")
        width = graph.type_of(node.inputs[0][1]).width
        if width.is_Integer and int(width) != other.params.width:
            problems.append(f"input width {int(width)} vs width={other.params.width}")
        if problems:
            return [Diagnostic("E203", f"{inst.name} ties its weight to '{p.tie}', but they "
                                       f"differ: {', '.join(problems)}", span,
                               hint="a tied head reads the embedding's [vocab, width] weight, "
                                    "so both sizes must agree")]
        if inst.lora is not None:
            return [Diagnostic("E206", f"{inst.name} ties its weight to '{p.tie}' and has no "
                                       "linear weight of its own to adapt", inst.span,
                               hint="put lora(...) on the layers around it, or leave tie out")]
        return []

    def torch_call_args(self, p, x, node, graph):
        if p.tie is None:
            return {}
        scope = node.target.rpartition(".")[0]
        return {"embedding": Layers((f"{scope}.{p.tie}" if scope else p.tie,))}


@register
class ITMHead(_Head):
    name = "itm_head"
    summary = "Image-text matching head: two logits (match / no match) from a fused vector"
    torch = "mmgraph.components.nn.heads:ITMHead"

    def infer(self, p, x, ctx):
        ctx.expect_kind("x", x["x"], "Vec")
        return _logits(ctx, x["x"], 2)


@register
class Regression(_Head):
    name = "regression"
    summary = "Linear regression head: Vec[B, D] -> Vec[B, out] (e.g. fMRI voxels)"
    torch = "mmgraph.components.nn.heads:Regression"

    class Params(Params):
        out: PosInt
        hidden: PosInt | None = None

    def infer(self, p, x, ctx):
        t = x["x"]
        ctx.expect_kind("x", t, "Vec", "Seq")
        return t.with_(dims=t.dims[:-1] + (T.sympy.Integer(p.out),))


@register
class BoxHead(_Head):
    name = "box_head"
    summary = "3-layer MLP predicting one box per token (DETR/MDETR)"
    torch = "mmgraph.components.nn.heads:BoxHead"

    class Params(Params):
        hidden: PosInt | None = None

    def infer(self, p, x, ctx):
        t = x["x"]
        ctx.expect_kind("x", t, "Seq")
        return T.make("Boxes", (t.dim("B"), t.dim("N"), 4), tags=t.tags)
