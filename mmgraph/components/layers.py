"""Transformer layers: norms, a gate, self-attention, feed-forward, whole Transformer blocks."""

from __future__ import annotations

from pydantic import Field

from mmgraph.components.common import (
    ATTENTION,
    FEEDFORWARD,
    Act,
    InputWidthSized,
    NonNegInt,
    Norm,
    Pos,
    PosInt,
    Prob,
    check_heads,
    ctx_width,
    in_width,
    tags_of,
)
from mmgraph.components.registry import Component, Params, Port, register


def _expect_seq_or_vec(ctx, port, t):
    ctx.expect_kind(port, t, "Seq", "Vec")


def _attention_sequence(self, p) -> str:
    """`sequence_rule` of the attention layers: causal attention generates, unless a prefix
    attends both ways (the KV cache's steps are causal from the first position)."""
    return "causal" if p.causal and not p.prefix else "mixing"


def _attention_options(p, x, ctx) -> None:
    """The checks of `prefix` and of the `positions` input, shared by the attention layers."""
    t = x["x"]
    if p.prefix and not p.causal:
        ctx.fail(f"{ctx.name}: prefix={p.prefix} makes the first positions attend to each "
                 "other in causal attention, but causal=false already attends everywhere",
                 code="E203", param="prefix", hint="set causal=true, or leave prefix out")
    n = t.dim("N")
    if p.prefix and n.is_Integer and p.prefix > int(n):
        ctx.fail(f"{ctx.name}: prefix={p.prefix} is longer than the {int(n)} positions of "
                 f"{ctx.source('x')}", code="E203", param="prefix")
    if "positions" in x:
        pos = x["positions"]
        if p.pos == "none":
            ctx.fail(f"{ctx.name} is given positions but has pos=\"none\", which reads none",
                     "positions", code="E205",
                     hint='set pos="rope" (or "alibi") to place the positions it is given')
        if pos.kind != "Tensor" or pos.rank != 2 or pos.dtype == "bool":
            ctx.fail(f"{ctx.name} expects Tensor[B, N] positions (one number per position, "
                     f"fractions allowed) for 'positions' but {ctx.source('positions')} gives "
                     f"{pos}", "positions", code="E302")
        ctx.expect_same("x", t.dim("B"), "positions", pos.dim(0), "batch")
        ctx.expect_same("x", n, "positions", pos.dim(1), "number of positions")


@register
class LayerNorm(InputWidthSized, Component):
    name = "layer_norm"
    category = "layer"
    summary = "LayerNorm over the width"
    inputs = (Port("x"),)
    torch = "mmgraph.components.nn.layers:LayerNorm"
    sequence = "pointwise"

    class Params(Params):
        eps: float = 1e-5
        bias: bool = True

    def infer(self, p, x, ctx):
        _expect_seq_or_vec(ctx, "x", x["x"])
        return x["x"]


@register
class RMSNorm(InputWidthSized, Component):
    name = "rms_norm"
    category = "layer"
    summary = "RMSNorm over the width"
    inputs = (Port("x"),)
    torch = "mmgraph.components.nn.layers:RMSNorm"
    sequence = "pointwise"

    class Params(Params):
        eps: float = 1e-6

    def infer(self, p, x, ctx):
        _expect_seq_or_vec(ctx, "x", x["x"])
        return x["x"]


@register
class TanhGate(Component):
    name = "tanh_gate"
    category = "layer"
    summary = "Multiply by tanh(alpha), alpha learnable and 0 at init (Flamingo's gates)"
    inputs = (Port("x"),)
    torch = "mmgraph.components.nn.layers:TanhGate"
    sequence = "pointwise"

    class Params(Params):
        init: float = 0.0

    def infer(self, p, x, ctx):
        return x["x"]


@register
class SelfAttention(InputWidthSized, Component):
    name = "self_attention"
    category = "layer"
    lora_targets = ("q", "k", "v", "o")
    summary = "Multi-head self-attention, causal or bidirectional, optional grouped KV heads"
    inputs = (Port("x"), Port("mask", optional=True), Port("positions", optional=True))
    torch = "mmgraph.components.nn.layers:SelfAttention"
    sequence_rule = _attention_sequence

    class Params(Params):
        heads: PosInt
        kv_heads: PosInt | None = None
        causal: bool = False
        bias: bool = True
        pos: Pos = "none"
        dropout: Prob = 0.0
        prefix: NonNegInt = 0  # causal: the first `prefix` positions see each other

    def infer(self, p, x, ctx):
        t = x["x"]
        ctx.expect_kind("x", t, "Seq")
        if t.width.is_Integer:
            check_heads(ctx, int(t.width), p.heads)
        if "mask" in x:
            ctx.expect_kind("mask", x["mask"], "Mask")
        _attention_options(p, x, ctx)
        return t


@register
class FFN(InputWidthSized, Component):
    name = "ffn"
    category = "layer"
    lora_targets = FEEDFORWARD
    summary = "Position-wise feed-forward network (GELU, ReLU or gated SwiGLU/GeGLU)"
    inputs = (Port("x"),)
    torch = "mmgraph.components.nn.layers:FFN"
    sequence = "pointwise"

    class Params(Params):
        mult: float = Field(4.0, gt=0)
        hidden: PosInt | None = None
        act: Act = "gelu"
        bias: bool = True
        dropout: Prob = 0.0

    def infer(self, p, x, ctx):
        _expect_seq_or_vec(ctx, "x", x["x"])
        return x["x"]


@register
class TransformerLayer(Component):
    name = "transformer_layer"
    category = "layer"
    lora_targets = ATTENTION
    summary = ("One Transformer block: self-attention (+ optional cross-attention to ctx) and "
               "FFN, pre- or post-norm")
    inputs = (Port("x"), Port("ctx", optional=True), Port("mask", optional=True),
              Port("positions", optional=True))
    torch = "mmgraph.components.nn.layers:TransformerLayer"
    sequence_rule = _attention_sequence
    context_ports = ("ctx",)

    class Params(Params):
        heads: PosInt
        kv_heads: PosInt | None = None
        mlp: PosInt | None = None
        act: Act = "gelu"
        norm: Norm = "layer"
        causal: bool = False
        cross: bool = False
        pos: Pos = "none"
        post_norm: bool = False
        bias: bool = True
        dropout: Prob = 0.0
        parallel: bool = False  # GPT-J: x + attn(ln(x)) + ffn(ln(x)), one norm
        prefix: NonNegInt = 0  # causal: the first `prefix` positions see each other

    def infer(self, p, x, ctx):
        return _transformer_rule(self, p, x, ctx)

    def torch_args(self, p, x, ctx):
        return {"in_width": in_width(ctx, x), **ctx_width(ctx, x), **p.model_dump()}


@register
class Transformer(Component):
    name = "transformer"
    category = "layer"
    lora_targets = ATTENTION
    summary = "A stack of `depth` Transformer blocks with a final norm (a shared encoder)"
    inputs = (Port("x"), Port("ctx", optional=True), Port("mask", optional=True),
              Port("positions", optional=True))
    torch = "mmgraph.components.nn.layers:Transformer"
    sequence_rule = _attention_sequence
    context_ports = ("ctx",)

    class Params(TransformerLayer.Params):
        depth: PosInt
        final_norm: bool = True
        width: PosInt | None = None  # checked against the input when given

    def infer(self, p, x, ctx):
        if p.width is not None:
            ctx.expect_dim("x", x["x"], -1, p.width, "width")
        return _transformer_rule(self, p, x, ctx)

    def torch_args(self, p, x, ctx):
        return {"in_width": in_width(ctx, x), **ctx_width(ctx, x),
                **p.model_dump(exclude={"width"})}


def _transformer_rule(comp, p, x, ctx):
    t = x["x"]
    ctx.expect_kind("x", t, "Seq")
    if t.width.is_Integer:
        check_heads(ctx, int(t.width), p.heads)
    if p.cross and "ctx" not in x:
        ctx.fail(f"{ctx.name} has cross=true but is called without ctx", "x", code="E205",
                 hint="pass the sequence to attend to: name(x, ctx=features)")
    if "ctx" in x:
        if not p.cross:
            ctx.fail(f"{ctx.name} is given ctx but has cross=false", "ctx", code="E205",
                     hint="set cross=true to add cross-attention")
        ctx.expect_kind("ctx", x["ctx"], "Seq")
        ctx.expect_same("x", t.dim("B"), "ctx", x["ctx"].dim("B"), "batch")
        t = t.with_(tags=tags_of(t, x["ctx"]))
    if "mask" in x:
        ctx.expect_kind("mask", x["mask"], "Mask")
    if p.parallel and (p.post_norm or p.cross):
        ctx.fail(f"{ctx.name}: parallel=true is GPT-J's pre-norm block without "
                 f"cross-attention, so it cannot be {'post_norm' if p.post_norm else 'cross'}"
                 "=true", code="E203", param="parallel",
                 hint="use parallel=true alone, or one of the others")
    _attention_options(p, x, ctx)
    return t
