"""Connectors: map one representation space into another (projectors, Q-Formers, resamplers)."""

from __future__ import annotations

from typing import Literal

from mmgraph.components.common import (
    ATTENTION,
    Act,
    InputWidthSized,
    NonNegInt,
    PosInt,
    check_heads,
    in_width,
    seq,
    vec,
    with_width,
)
from mmgraph.components.registry import Component, Params, Port, register


def _expect_features(ctx, port, t):
    ctx.expect_kind(port, t, "Seq", "Vec", "Tensor", "Points")
    if t.rank < 2:
        ctx.fail(f"{ctx.name} expects a tensor with a feature axis but {ctx.source(port)} "
                 f"gives {t}", port, code="E302")


@register
class Linear(Component):
    name = "linear"
    category = "connector"
    lora_targets = ("self",)  # the component is its own linear layer(s)
    summary = "One linear map of the last axis (the width)"
    inputs = (Port("x"),)
    torch = "mmgraph.components.nn.connectors:Linear"
    sequence = "pointwise"

    class Params(Params):
        out: PosInt
        bias: bool = True
        input: PosInt | None = None  # the expected input width, checked when given

    def infer(self, p, x, ctx):
        t = x["x"]
        _expect_features(ctx, "x", t)
        if p.input is not None:
            ctx.expect_dim("x", t, -1, p.input, "width")
        return with_width(t, p.out)

    def torch_args(self, p, x, ctx):
        return {"in_width": in_width(ctx, x), **p.model_dump(exclude={"input"})}


@register
class MLP(Component):
    name = "mlp"
    category = "connector"
    lora_targets = ("self",)  # the component is its own linear layer(s)
    summary = "A stack of linear layers with an activation between them (LLaVA's projector)"
    inputs = (Port("x"),)
    torch = "mmgraph.components.nn.connectors:MLP"
    sequence = "pointwise"

    class Params(Params):
        out: PosInt
        hidden: PosInt | None = None  # defaults to `out`
        layers: PosInt = 2
        act: Act = "gelu"
        bias: bool = True
        input: PosInt | None = None

    def infer(self, p, x, ctx):
        t = x["x"]
        _expect_features(ctx, "x", t)
        if p.input is not None:
            ctx.expect_dim("x", t, -1, p.input, "width")
        return with_width(t, p.out)

    def torch_args(self, p, x, ctx):
        return {"in_width": in_width(ctx, x), **p.model_dump(exclude={"input"})}


@register
class QFormer(Component):
    name = "qformer"
    category = "connector"
    lora_targets = ATTENTION
    summary = ("BLIP-2 Q-Former: learnable queries, self-attention, cross-attention to the "
               "features every `cross_every` layers")
    inputs = (Port("x"),)
    torch = "mmgraph.components.nn.connectors:QFormer"

    class Params(Params):
        queries: PosInt = 32
        width: PosInt = 768
        depth: PosInt = 12
        heads: PosInt = 12
        mlp: PosInt | None = None
        cross_every: PosInt = 2
        kv_width: PosInt | None = None  # the features' width; checked against the input
        window: PosInt | None = None  # window-level Q-Former (SALMONN): queries per window
        vocab: NonNegInt = 0  # word embeddings for the text side (0: queries only)
        post_norm: bool = True

    def infer(self, p, x, ctx):
        t = x["x"]
        ctx.expect_kind("x", t, "Seq")
        check_heads(ctx, p.width, p.heads)
        if p.kv_width is not None:
            ctx.expect_dim("x", t, "D", p.kv_width, "feature width")
        n = p.queries
        if p.window is not None:
            n = ctx.exact_div("x", t.dim("N"), p.window, "sequence length") * p.queries
        return seq(t.dim("B"), n, p.width, t.tags)

    def torch_args(self, p, x, ctx):
        return {"in_width": in_width(ctx, x), **p.model_dump(exclude={"kv_width"})}


@register
class PerceiverResampler(Component):
    name = "perceiver_resampler"
    category = "connector"
    lora_targets = ATTENTION
    summary = "Flamingo's Perceiver resampler: a fixed number of latents cross-attend to features"
    inputs = (Port("x"),)
    torch = "mmgraph.components.nn.connectors:PerceiverResampler"

    class Params(Params):
        latents: PosInt = 64
        depth: PosInt = 6
        heads: PosInt = 8
        dim_head: PosInt = 64
        ff_mult: PosInt = 4
        width: PosInt | None = None  # the features' width; checked against the input

    def infer(self, p, x, ctx):
        t = x["x"]
        ctx.expect_kind("x", t, "Seq")
        if p.width is not None:
            ctx.expect_dim("x", t, "D", p.width, "width")
        return seq(t.dim("B"), p.latents, t.dim("D"), t.tags)

    def torch_args(self, p, x, ctx):
        return {"in_width": in_width(ctx, x), **p.model_dump(exclude={"width"})}


@register
class Pool(InputWidthSized, Component):
    name = "pool"
    category = "connector"
    summary = ("A sequence to one vector: class token, mean, last token, end-of-text token "
               "(the largest id in `tokens`, as CLIP), or attention pooling")
    inputs = (Port("x"), Port("mask", optional=True), Port("tokens", optional=True))
    torch = "mmgraph.components.nn.connectors:Pool"

    class Params(Params):
        mode: Literal["cls", "mean", "last", "eot", "attention"] = "mean"
        heads: PosInt = 8

    def infer(self, p, x, ctx):
        t = x["x"]
        ctx.expect_kind("x", t, "Seq")
        if (p.mode == "eot") != ("tokens" in x):
            ctx.fail(f"{ctx.name}: mode=\"eot\" needs tokens=... (and only it uses them)",
                     "x", code="E205", hint="e.g. pool(h, tokens=text, mode=\"eot\")")
        if "tokens" in x:
            ctx.expect_kind("tokens", x["tokens"], "Tokens")
            ctx.expect_same("x", t.dim("N"), "tokens", x["tokens"].dim("T"), "length")
        if "mask" in x:
            ctx.expect_kind("mask", x["mask"], "Mask")
            ctx.expect_same("x", t.dim("N"), "mask", x["mask"].dim("N"), "length")
        return vec(t.dim("B"), t.dim("D"), t.tags)


@register
class TokenMerge(Component):
    name = "token_merge"
    category = "connector"
    summary = "Merge neighbouring tokens: N tokens become N / ratio (SimVLG-style)"
    has_weights = False
    inputs = (Port("x"),)
    torch = "mmgraph.components.nn.connectors:token_merge"

    class Params(Params):
        ratio: PosInt = 2
        mode: Literal["mean", "similarity"] = "similarity"

    def infer(self, p, x, ctx):
        t = x["x"]
        ctx.expect_kind("x", t, "Seq")
        n = ctx.exact_div("x", t.dim("N"), p.ratio, "sequence length")
        return seq(t.dim("B"), n, t.dim("D"), t.tags, t.dtype)


@register
class PromptTokens(Component):
    name = "prompt_tokens"
    category = "connector"
    summary = "Learnable prompt tokens, repeated over the batch of a reference value"
    inputs = (Port("like"),)
    torch = "mmgraph.components.nn.connectors:PromptTokens"

    class Params(Params):
        n: PosInt
        width: PosInt
        modality: str = "prompt"

    def infer(self, p, x, ctx):
        ref = x["like"]
        if ref.rank == 0:
            ctx.fail(f"{ctx.name} needs a batched value to take its batch size from, but "
                     f"{ctx.source('like')} gives {ref}", "like", code="E302")
        return seq(ref.dims[0], p.n, p.width, {p.modality})

    def torch_args(self, p, x, ctx):
        return p.model_dump(exclude={"modality"})
