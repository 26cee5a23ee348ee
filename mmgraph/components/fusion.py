"""Fusion and transformer building blocks: attention of every kind, FFNs, MoE, routed layers."""

from __future__ import annotations

from pydantic import Field, model_validator

from mmgraph.components.common import (
    ATTENTION,
    FEEDFORWARD,
    Act,
    Norm,
    Pos,
    PosInt,
    Prob,
    check_heads,
    tags_of,
)
from mmgraph.components.registry import Component, Params, Port, register
from mmgraph.ir import types as T


def _expect_seq_or_vec(ctx, port, t):
    ctx.expect_kind(port, t, "Seq", "Vec")


def _ctx_width(ctx, p_kv, ctx_t):
    if p_kv is not None:
        ctx.expect_dim("ctx", ctx_t, "D", p_kv, "context width")


@register
class LayerNorm(Component):
    name = "layer_norm"
    category = "layer"
    summary = "LayerNorm over the width"
    inputs = (Port("x"),)

    class Params(Params):
        eps: float = 1e-5
        bias: bool = True

    def infer(self, p, x, ctx):
        _expect_seq_or_vec(ctx, "x", x["x"])
        return x["x"]


@register
class RMSNorm(Component):
    name = "rms_norm"
    category = "layer"
    summary = "RMSNorm over the width"
    inputs = (Port("x"),)

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

    class Params(Params):
        init: float = 0.0

    def infer(self, p, x, ctx):
        return x["x"]


@register
class SelfAttention(Component):
    name = "self_attention"
    category = "layer"
    lora_targets = ("q", "k", "v", "o")
    summary = "Multi-head self-attention, causal or bidirectional, optional grouped KV heads"
    inputs = (Port("x"), Port("mask", optional=True))

    class Params(Params):
        heads: PosInt
        kv_heads: PosInt | None = None
        causal: bool = False
        bias: bool = True
        pos: Pos = "none"
        dropout: Prob = 0.0

    def infer(self, p, x, ctx):
        t = x["x"]
        ctx.expect_kind("x", t, "Seq")
        if t.width.is_Integer:
            check_heads(ctx, int(t.width), p.heads)
        if "mask" in x:
            ctx.expect_kind("mask", x["mask"], "Mask")
        return t


@register
class CrossAttention(Component):
    name = "cross_attention"
    category = "fusion"
    lora_targets = ("q", "k", "v", "o")
    summary = "Queries from x attend to keys/values from ctx (any length, projected width)"
    inputs = (Port("x"), Port("ctx"), Port("mask", optional=True))

    class Params(Params):
        heads: PosInt
        kv_width: PosInt | None = None  # ctx's width; checked when given
        bias: bool = True
        dropout: Prob = 0.0

    def infer(self, p, x, ctx):
        q, c = x["x"], x["ctx"]
        ctx.expect_kind("x", q, "Seq")
        ctx.expect_kind("ctx", c, "Seq")
        ctx.expect_same("x", q.dim("B"), "ctx", c.dim("B"), "batch")
        _ctx_width(ctx, p.kv_width, c)
        if q.width.is_Integer:
            check_heads(ctx, int(q.width), p.heads)
        if "mask" in x:
            ctx.expect_kind("mask", x["mask"], "Mask")
            ctx.expect_same("ctx", c.dim("N"), "mask", x["mask"].dim("N"), "context length")
        return q.with_(tags=tags_of(q, c))


@register
class GatedCrossAttention(Component):
    name = "gated_cross_attention"
    category = "fusion"
    lora_targets = ATTENTION
    summary = ("Flamingo's gated cross-attention dense block: tanh-gated cross-attention and "
               "tanh-gated FFN, gates at 0 so the frozen LM starts unchanged")
    inputs = (Port("x"), Port("ctx"), Port("mask", optional=True))

    class Params(Params):
        heads: PosInt
        dim_head: PosInt = 64
        ff_mult: PosInt = 4
        kv_width: PosInt | None = None

    def infer(self, p, x, ctx):
        q, c = x["x"], x["ctx"]
        ctx.expect_kind("x", q, "Seq")
        ctx.expect_kind("ctx", c, "Seq")
        ctx.expect_same("x", q.dim("B"), "ctx", c.dim("B"), "batch")
        _ctx_width(ctx, p.kv_width, c)
        return q.with_(tags=tags_of(q, c))


@register
class CoAttention(Component):
    name = "co_attention"
    category = "fusion"
    lora_targets = ATTENTION
    summary = ("Two streams attend to each other (LXMERT/ViLBERT): outputs `out` (a attended "
               "to b) and `other` (b attended to a)")
    inputs = (Port("a"), Port("b"))

    class Params(Params):
        heads: PosInt
        ffn: bool = True

    def outputs(self, p):
        return ("out", "other")

    def infer(self, p, x, ctx):
        a, b = x["a"], x["b"]
        ctx.expect_kind("a", a, "Seq")
        ctx.expect_kind("b", b, "Seq")
        ctx.expect_same("a", a.dim("B"), "b", b.dim("B"), "batch")
        ctx.expect_same("a", a.width, "b", b.width, "width")
        both = tags_of(a, b)
        return {"out": a.with_(tags=both), "other": b.with_(tags=both)}


@register
class FFN(Component):
    name = "ffn"
    category = "layer"
    lora_targets = FEEDFORWARD
    summary = "Position-wise feed-forward network (GELU, ReLU or gated SwiGLU/GeGLU)"
    inputs = (Port("x"),)

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
class MoEFFN(Component):
    name = "moe_ffn"
    category = "fusion"
    lora_targets = FEEDFORWARD
    summary = ("Mixture-of-experts FFN with a top-k router; extra output `aux` is the "
               "load-balancing loss")
    inputs = (Port("x"),)

    class Params(Params):
        experts: PosInt
        top_k: PosInt = 2
        hidden: PosInt | None = None
        mult: float = 4.0
        act: Act = "gelu"
        router_bias: bool = False
        capacity_factor: float | None = None

        @model_validator(mode="after")
        def _k_le_experts(self):
            if self.top_k > self.experts:
                raise ValueError(f"top_k={self.top_k} is more than experts={self.experts}")
            return self

    def outputs(self, p):
        return ("out", "aux")

    def infer(self, p, x, ctx):
        t = x["x"]
        ctx.expect_kind("x", t, "Seq")
        return {"out": t, "aux": T.SCALAR}


class _RoutedParams(Params):
    modalities: tuple[str, ...]
    frozen_modalities: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _subset(self):
        extra = set(self.frozen_modalities) - set(self.modalities)
        if extra:
            raise ValueError(f"frozen_modalities {sorted(extra)} are not among modalities "
                             f"{list(self.modalities)}")
        return self


def _check_routed(ctx, p, t):
    ctx.expect_kind("x", t, "Seq")
    missing = sorted(t.tags - set(p.modalities))
    if missing:
        ctx.fail(f"{ctx.name} routes {list(p.modalities)} but {ctx.source('x')} also carries "
                 f"{missing}: {t}", "x",
                 hint=f"add {missing} to modalities=[...] so every token has weights")
    if len(t.tags) > 1 and t.segments is None:
        ctx.fail(f"{ctx.name} needs to know which tokens of {ctx.source('x')} belong to which "
                 f"modality, but {t} was not built by concat of single-modality sequences",
                 "x", hint="build the sequence with concat(image_tokens, text_tokens)")
    unknown = [length for _, length in (t.segments or ()) if not length.is_Integer]
    if len(unknown) > 1:
        ctx.fail(f"{ctx.name}: at most one modality segment may have a symbolic length, but "
                 f"{ctx.source('x')} has {len(unknown)}", "x")


@register
class ModalityFFN(Component):
    name = "modality_ffn"
    category = "fusion"
    lora_targets = FEEDFORWARD
    summary = "Modality-routed FFN: each token goes through its own modality's FFN (LlamaFusion)"
    inputs = (Port("x"),)

    class Params(_RoutedParams):
        hidden: PosInt | None = None
        mult: float = 4.0
        act: Act = "swiglu"

    def infer(self, p, x, ctx):
        _check_routed(ctx, p, x["x"])
        return x["x"]


@register
class ModalityAttention(Component):
    name = "modality_attention"
    category = "fusion"
    lora_targets = ATTENTION
    summary = ("Self-attention shared across modalities with per-modality Q/K/V/O projections "
               "and norms (LlamaFusion)")
    inputs = (Port("x"), Port("mask", optional=True))

    class Params(_RoutedParams):
        heads: PosInt
        kv_heads: PosInt | None = None
        causal: bool = True
        pos: Pos = "rope"

    def infer(self, p, x, ctx):
        _check_routed(ctx, p, x["x"])
        return x["x"]


@register
class TransformerLayer(Component):
    name = "transformer_layer"
    category = "layer"
    lora_targets = ATTENTION
    summary = ("One Transformer block: self-attention (+ optional cross-attention to ctx) and "
               "FFN, pre- or post-norm")
    inputs = (Port("x"), Port("ctx", optional=True), Port("mask", optional=True))

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

    def infer(self, p, x, ctx):
        return _transformer_rule(self, p, x, ctx)


@register
class Transformer(Component):
    name = "transformer"
    category = "layer"
    lora_targets = ATTENTION
    summary = "A stack of `depth` Transformer blocks with a final norm (a shared encoder)"
    inputs = (Port("x"), Port("ctx", optional=True), Port("mask", optional=True))

    class Params(TransformerLayer.Params):
        depth: PosInt
        final_norm: bool = True
        width: PosInt | None = None  # checked against the input when given

    def infer(self, p, x, ctx):
        if p.width is not None:
            ctx.expect_dim("x", x["x"], -1, p.width, "width")
        return _transformer_rule(self, p, x, ctx)


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
    return t


@register
class Concat(Component):
    name = "concat"
    category = "op"
    summary = "Join sequences along the token axis; the result carries every input's modality"
    has_weights = False
    inputs = (Port("xs", variadic=True),)

    def infer(self, p, x, ctx):
        parts = x["xs"]
        if len(parts) < 2:
            ctx.fail(f"{ctx.name} needs at least two sequences", "xs", code="E205")
        first = parts[0]
        for i, t in enumerate(parts):
            ctx.expect_kind(f"xs{i}", t, "Seq", "Mask", "Tokens")
            if t.kind != first.kind:
                ctx.fail(f"{ctx.name} joins values of one kind, but {ctx.source('xs0')} gives "
                         f"{first} and {ctx.source(f'xs{i}')} gives {t}", f"xs{i}", code="E302")
            ctx.expect_same("xs0", first.dims[0], f"xs{i}", t.dims[0], "batch")
            if t.kind == "Seq":
                ctx.expect_same("xs0", first.width, f"xs{i}", t.width, "width")
        n = sum((t.dims[1] for t in parts), T.sympy.Integer(0))
        dims = (first.dims[0], n) + first.dims[2:]
        segments: list | None = []
        for t in parts:
            if t.segments is not None:
                segments.extend(t.segments)
            elif len(t.tags) == 1:
                segments.append((next(iter(t.tags)), t.dims[1]))
            else:
                segments = None
                break
        return first.with_(dims=dims, tags=tags_of(*parts),
                           segments=tuple(segments) if segments else None)


@register
class ConcatWidth(Component):
    name = "concat_width"
    category = "op"
    summary = "Join values along the width (feature) axis"
    has_weights = False
    inputs = (Port("xs", variadic=True),)

    def infer(self, p, x, ctx):
        parts = x["xs"]
        if len(parts) < 2:
            ctx.fail(f"{ctx.name} needs at least two values", "xs", code="E205")
        first = parts[0]
        for i, t in enumerate(parts):
            ctx.expect_kind(f"xs{i}", t, "Seq", "Vec")
            if t.kind != first.kind or t.rank != first.rank:
                ctx.fail(f"{ctx.name} joins values of one kind, but {ctx.source('xs0')} gives "
                         f"{first} and {ctx.source(f'xs{i}')} gives {t}", f"xs{i}", code="E302")
            for axis in range(t.rank - 1):
                ctx.expect_same("xs0", first.dims[axis], f"xs{i}", t.dims[axis],
                                first.axes[axis] + " size")
        width = sum((t.width for t in parts), T.sympy.Integer(0))
        return first.with_(dims=first.dims[:-1] + (width,), tags=tags_of(*parts))
