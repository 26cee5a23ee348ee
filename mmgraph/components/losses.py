"""Losses: each returns a Scalar. Several losses, with weights, train one model."""

from __future__ import annotations

from typing import Literal

from mmgraph.components.common import NonNegInt, in_width
from mmgraph.components.registry import Component, Layers, Params, Port, register
from mmgraph.ir import types as T
from mmgraph.lang.diagnostics import Diagnostic


class _Loss(Component):
    category = "loss"
    has_weights = False


def _same_shape(ctx, pa, a, pb, b):
    if a.rank != b.rank:
        ctx.fail(f"{ctx.name} compares values of one shape, but {ctx.source(pa)} gives {a} and "
                 f"{ctx.source(pb)} gives {b}", pb)
    for axis in range(a.rank):
        ctx.expect_same(pa, a.dims[axis], pb, b.dims[axis], f"{a.axes[axis]} size")


@register
class Contrastive(_Loss):
    name = "contrastive"
    summary = "Symmetric InfoNCE between two batches of embeddings (CLIP/ALIGN/ITC)"
    inputs = (Port("a"), Port("b"))
    torch = "mmgraph.components.nn.losses:Contrastive"

    class Params(Params):
        temperature: float = 0.07
        learnable: bool = True
        queue: NonNegInt = 0  # size of a momentum queue of negatives (ALBEF, MoCo); 0: none

    has_weights = True  # the learnable temperature

    def infer(self, p, x, ctx):
        a, b = x["a"], x["b"]
        ctx.expect_kind("a", a, "Vec")
        ctx.expect_kind("b", b, "Vec")
        ctx.expect_same("a", a.width, "b", b.width, "embedding width")
        ctx.expect_same("a", a.dim("B"), "b", b.dim("B"), "batch")
        return T.SCALAR

    def torch_args(self, p, x, ctx):
        return {"in_width": in_width(ctx, x, "a"), **p.model_dump()}


@register
class ITM(_Loss):
    name = "itm"
    summary = "Image-text matching: cross-entropy with positives first, then negatives"
    inputs = (Port("pos"), Port("neg"))
    torch = "mmgraph.components.nn.losses:itm"

    def infer(self, p, x, ctx):
        for port in ("pos", "neg"):
            ctx.expect_kind(port, x[port], "Logits")
            ctx.expect_dim(port, x[port], -1, 2, "2 classes (match, no match), got")
        return T.SCALAR


@register
class NextToken(_Loss):
    name = "next_token"
    summary = ("Causal LM loss: logits at position i predict token i+1; `skip` prefix positions "
               "(e.g. visual tokens) have no targets; `mask` marks the tokens that are "
               "(training data fills a Mask input with a conversation's answer tokens)")
    inputs = (Port("logits"), Port("tokens"), Port("mask", optional=True))
    torch = "mmgraph.components.nn.losses:next_token"

    class Params(Params):
        skip: NonNegInt = 0
        ignore_index: int = -100

    def infer(self, p, x, ctx):
        lg, tok = x["logits"], x["tokens"]
        ctx.expect_kind("logits", lg, "Logits")
        ctx.expect_kind("tokens", tok, "Tokens")
        if lg.rank != 3:
            ctx.fail(f"{ctx.name} needs per-token logits Logits[B, N, V] but "
                     f"{ctx.source('logits')} gives {lg}", "logits", code="E302")
        ctx.expect_same("logits", lg.dim("B"), "tokens", tok.dim("B"), "batch")
        if "mask" in x:  # which tokens are targets (a conversation's answers, no padding)
            ctx.expect_kind("mask", x["mask"], "Mask")
            ctx.expect_same("tokens", tok.dim("T"), "mask", x["mask"].dim("N"), "length")
        n, t = lg.dim("N"), tok.dim("T")
        if T.differ(n, t + p.skip):
            ctx.fail(f"{ctx.name}: logits cover {T.format_dim(n)} positions but skip={p.skip} "
                     f"prefix positions plus {T.format_dim(t)} tokens make "
                     f"{T.format_dim(t + p.skip)}", "logits",
                     hint=f"set skip={T.format_dim(n - t)} if the prefix is that long")
        return T.SCALAR


@register
class MLM(_Loss):
    name = "mlm"
    summary = "Masked language modelling: cross-entropy at the masked positions only"
    inputs = (Port("logits"), Port("tokens"), Port("mask"))
    torch = "mmgraph.components.nn.losses:mlm"

    def infer(self, p, x, ctx):
        lg, tok, m = x["logits"], x["tokens"], x["mask"]
        ctx.expect_kind("logits", lg, "Logits")
        ctx.expect_kind("tokens", tok, "Tokens")
        ctx.expect_kind("mask", m, "Mask")
        if lg.rank != 3:
            ctx.fail(f"{ctx.name} needs per-token logits but {ctx.source('logits')} gives {lg}",
                     "logits", code="E302")
        ctx.expect_same("logits", lg.dim("N"), "tokens", tok.dim("T"), "length")
        ctx.expect_same("tokens", tok.dim("T"), "mask", m.dim("N"), "length")
        return T.SCALAR


@register
class MaskedReconstruction(_Loss):
    name = "masked_reconstruction"
    summary = ("Reconstruction loss (MSE, L1, or per-pixel cross-entropy for class maps) on "
               "the masked patches when a mask is given")
    inputs = (Port("pred"), Port("target"), Port("mask", optional=True))
    torch = "mmgraph.components.nn.losses:masked_reconstruction"

    class Params(Params):
        metric: Literal["mse", "l1", "ce"] = "mse"
        norm_pix: bool = False
        patch: int = 16

    def infer(self, p, x, ctx):
        pred, target = x["pred"], x["target"]
        if p.metric == "ce":  # pred holds class scores per pixel, target one class id
            if target.dtype in T.FLOAT_DTYPES:
                ctx.fail(f"{ctx.name}: metric=\"ce\" needs integer class ids but "
                         f"{ctx.source('target')} gives {target}", "target", code="E307")
            target = target.with_(dims=(target.dims[0], pred.dims[1]) + target.dims[2:],
                                  dtype=pred.dtype)
        _same_shape(ctx, "pred", pred, "target", target)
        if "mask" in x:
            ctx.expect_kind("mask", x["mask"], "Mask")
        return T.SCALAR


@register
class CrossEntropy(_Loss):
    name = "cross_entropy"
    summary = "Classification cross-entropy: Logits[B, V] with Labels[B] (or per token)"
    inputs = (Port("logits"), Port("labels"))
    torch = "mmgraph.components.nn.losses:cross_entropy"

    class Params(Params):
        label_smoothing: float = 0.0
        ignore_index: int = -100

    def infer(self, p, x, ctx):
        lg, lb = x["logits"], x["labels"]
        ctx.expect_kind("logits", lg, "Logits")
        ctx.expect_kind("labels", lb, "Labels", "Tokens")
        if lb.rank != lg.rank - 1:
            ctx.fail(f"{ctx.name}: labels must have one axis less than logits, but "
                     f"{ctx.source('logits')} gives {lg} and {ctx.source('labels')} gives {lb}",
                     "labels")
        for axis in range(lb.rank):
            ctx.expect_same("logits", lg.dims[axis], "labels", lb.dims[axis],
                            f"{lg.axes[axis]} size")
        return T.SCALAR


@register
class KLDistill(_Loss):
    name = "kl_distill"
    summary = "KL divergence from teacher to student logits at a temperature"
    inputs = (Port("student"), Port("teacher"))
    torch = "mmgraph.components.nn.losses:kl_distill"

    class Params(Params):
        temperature: float = 1.0

    def infer(self, p, x, ctx):
        ctx.expect_kind("student", x["student"], "Logits")
        ctx.expect_kind("teacher", x["teacher"], "Logits")
        _same_shape(ctx, "student", x["student"], "teacher", x["teacher"])
        return T.SCALAR


@register
class FeatureDistill(_Loss):
    name = "feature_distill"
    summary = "Match student features to (detached) teacher features: cosine or MSE"
    inputs = (Port("student"), Port("teacher"))
    torch = "mmgraph.components.nn.losses:feature_distill"

    class Params(Params):
        metric: Literal["cosine", "mse", "smooth_l1"] = "cosine"

    def infer(self, p, x, ctx):
        _same_shape(ctx, "student", x["student"], "teacher", x["teacher"])
        return T.SCALAR


@register
class MSE(_Loss):
    name = "mse"
    summary = "Mean squared error between two values of one shape"
    inputs = (Port("pred"), Port("target"))
    torch = "mmgraph.components.nn.losses:mse"

    def infer(self, p, x, ctx):
        _same_shape(ctx, "pred", x["pred"], "target", x["target"])
        return T.SCALAR


@register
class MoEAux(_Loss):
    name = "moe_aux"
    summary = ("Sum of the load-balancing losses of every moe_ffn that `x` depends on "
               "(put the model's output here to cover all of them)")
    inputs = (Port("x"),)
    torch = "mmgraph.components.nn.losses:moe_aux"

    def infer(self, p, x, ctx):
        return T.SCALAR

    def verify(self, node, graph):
        if _moe_layers(node, graph):
            return []
        return [Diagnostic("E404", f"moe_aux({node.inputs[0][1]}) has no moe_ffn layer "
                                   "upstream, so there is nothing to balance", node.span,
                           hint="pass a value computed through a moe_ffn layer")]

    def torch_call_args(self, p, x, node, graph):
        return {"layers": Layers(_moe_layers(node, graph))}


def _moe_layers(node, graph) -> tuple[str, ...]:
    """The moe_ffn layers that the value `node` sums the balancing losses of, in graph order."""
    upstream = graph.ancestors(node.name)
    calls = [graph.nodes[n] for n in graph.nodes if n in upstream and graph.nodes[n].op == "call"]
    return tuple(n.target for n in calls if graph.instances[n.target].component == "moe_ffn")
