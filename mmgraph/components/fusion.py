"""Fusion: one stream attending to another, mixtures of experts, modality-routed layers."""

from __future__ import annotations

from pydantic import model_validator

from mmgraph.components.common import (
    ATTENTION,
    FEEDFORWARD,
    Act,
    InputWidthSized,
    Pos,
    PosInt,
    Prob,
    causal_if_asked,
    check_heads,
    ctx_width,
    in_width,
    tags_of,
)
from mmgraph.components.registry import Component, Params, Port, register
from mmgraph.ir import types as T


def _ctx_width(ctx, p_kv, ctx_t):
    if p_kv is not None:
        ctx.expect_dim("ctx", ctx_t, "D", p_kv, "context width")


@register
class CrossAttention(Component):
    name = "cross_attention"
    category = "fusion"
    lora_targets = ("q", "k", "v", "o")
    summary = "Queries from x attend to keys/values from ctx (any length, projected width)"
    inputs = (Port("x"), Port("ctx"), Port("mask", optional=True))
    torch = "mmgraph.components.nn.fusion:CrossAttention"
    sequence = "pointwise"
    context_ports = ("ctx",)

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

    def torch_args(self, p, x, ctx):
        return {"in_width": in_width(ctx, x), **ctx_width(ctx, x),
                **p.model_dump(exclude={"kv_width"})}


@register
class GatedCrossAttention(Component):
    name = "gated_cross_attention"
    category = "fusion"
    lora_targets = ATTENTION
    summary = ("Flamingo's gated cross-attention dense block: tanh-gated cross-attention and "
               "tanh-gated FFN, gates at 0 so the frozen LM starts unchanged")
    inputs = (Port("x"), Port("ctx"), Port("mask", optional=True))
    torch = "mmgraph.components.nn.fusion:GatedCrossAttention"
    sequence = "pointwise"
    context_ports = ("ctx",)

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

    def torch_args(self, p, x, ctx):
        return {"in_width": in_width(ctx, x), **ctx_width(ctx, x),
                **p.model_dump(exclude={"kv_width"})}


@register
class CoAttention(Component):
    name = "co_attention"
    category = "fusion"
    lora_targets = ATTENTION
    summary = ("Two streams attend to each other (LXMERT/ViLBERT): outputs `out` (a attended "
               "to b) and `other` (b attended to a)")
    inputs = (Port("a"), Port("b"))
    torch = "mmgraph.components.nn.fusion:CoAttention"

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

    def torch_args(self, p, x, ctx):
        return {"in_width": in_width(ctx, x, "a"), **p.model_dump()}


@register
class MoEFFN(InputWidthSized, Component):
    name = "moe_ffn"
    category = "fusion"
    lora_targets = FEEDFORWARD
    summary = ("Mixture-of-experts FFN with a top-k router; extra output `aux` is the "
               "load-balancing loss")
    inputs = (Port("x"),)
    torch = "mmgraph.components.nn.fusion:MoEFFN"

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
    if not t.tags:
        ctx.fail(f"{ctx.name} routes tokens by modality, but {ctx.source('x')} carries none: "
                 f"{t}", "x", hint="declare the input's modality, e.g. Seq<text>[B, N, D]")
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


class _Routed(InputWidthSized, Component):
    """A layer with weights per modality, called with the sequence's layout."""

    def torch_call_args(self, p, x, node, graph):
        """`segments`: (modality index, length) of each run of tokens, in order, as the concat
        that built the sequence left them; a symbolic length is None (the rest)."""
        t = x["x"]
        runs = t.segments if t.segments is not None else [(tag, t.dim("N")) for tag in t.tags]
        return {"segments": tuple((p.modalities.index(tag), int(n) if n.is_Integer else None)
                                  for tag, n in runs)}


@register
class ModalityFFN(_Routed):
    name = "modality_ffn"
    category = "fusion"
    lora_targets = FEEDFORWARD
    summary = "Modality-routed FFN: each token goes through its own modality's FFN (LlamaFusion)"
    inputs = (Port("x"),)
    torch = "mmgraph.components.nn.fusion:ModalityFFN"
    sequence = "pointwise"

    class Params(_RoutedParams):
        hidden: PosInt | None = None
        mult: float = 4.0
        act: Act = "swiglu"

    def infer(self, p, x, ctx):
        _check_routed(ctx, p, x["x"])
        return x["x"]


@register
class ModalityAttention(_Routed):
    name = "modality_attention"
    category = "fusion"
    lora_targets = ATTENTION
    summary = ("Self-attention shared across modalities with per-modality Q/K/V/O projections "
               "and norms (LlamaFusion)")
    inputs = (Port("x"), Port("mask", optional=True))
    torch = "mmgraph.components.nn.fusion:ModalityAttention"
    sequence_rule = causal_if_asked

    class Params(_RoutedParams):
        heads: PosInt
        kv_heads: PosInt | None = None
        causal: bool = True
        pos: Pos = "rope"

    def infer(self, p, x, ctx):
        _check_routed(ctx, p, x["x"])
        return x["x"]
