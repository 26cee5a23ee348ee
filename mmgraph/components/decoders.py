"""Decoders: language models and other generators of token sequences or reconstructions."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from mmgraph.components.common import (
    ATTENTION,
    Act,
    InputWidthSized,
    NonNegInt,
    Norm,
    PosFloat,
    PosInt,
    causal_if_asked,
    check_heads,
    check_taps,
    ctx_width,
    in_width,
    seq,
    tags_of,
    tap_port,
)
from mmgraph.components.registry import Component, Params, Port, register
from mmgraph.ir import types as T


@register
class CausalLM(Component):
    name = "causal_lm"
    category = "decoder"
    lora_targets = ATTENTION
    summary = ("Decoder-only language model (LLaMA/OPT style). Takes prefix embeddings and/or "
               "token ids; outputs logits over prefix + tokens, extra output `hidden`")
    inputs = (Port("tokens", optional=True), Port("prefix", optional=True),
              Port("mask", optional=True))
    torch = "mmgraph.components.nn.decoders:CausalLM"
    sequence = "causal"
    context_ports = ("prefix",)

    class Params(Params):
        vocab: PosInt
        width: PosInt
        depth: NonNegInt
        heads: PosInt
        kv_heads: PosInt | None = None
        ffn: PosInt | None = None
        norm: Norm = "rms"
        pos: Literal["rope", "learned", "none"] = "rope"
        act: Act = "swiglu"
        bias: bool = False
        tied: bool = False
        max_len: PosInt = 4096
        pos_offset: NonNegInt = 0  # OPT keeps 2 extra learned positions
        rope_theta: float = 10000.0
        norm_eps: PosFloat | None = None  # the norms' epsilon; 1e-6 (rms), 1e-5 (layer) if None
        # extra outputs `layerK` / `backK`: block K's hidden states (before the final norm),
        # counted from the first / the last, as vit's taps (eP-ALM, EVE read LM layers)
        taps: tuple[int, ...] = ()

        @model_validator(mode="after")
        def _kv(self):
            if self.kv_heads is not None and self.heads % self.kv_heads:
                raise ValueError(f"heads={self.heads} is not a multiple of "
                                 f"kv_heads={self.kv_heads}")
            check_taps(self.taps, self.depth)
            return self

    def outputs(self, p):
        return ("out", "hidden") + tuple(tap_port(k) for k in p.taps)

    def infer(self, p, x, ctx):
        check_heads(ctx, p.width, p.heads)
        if "tokens" not in x and "prefix" not in x:
            ctx.fail(f"{ctx.name} needs tokens=..., prefix=... or both", None, code="E205",
                     hint="e.g. lm(prefix=visual_tokens, tokens=prompt)")
        b, n, tags = None, T.sympy.Integer(0), frozenset()
        if "prefix" in x:
            pre = x["prefix"]
            ctx.expect_kind("prefix", pre, "Seq")
            ctx.expect_dim("prefix", pre, "D", p.width, "prefix width")
            b, n, tags = pre.dim("B"), n + pre.dim("N"), tags | pre.tags
        if "tokens" in x:
            tok = x["tokens"]
            ctx.expect_kind("tokens", tok, "Tokens")
            if b is not None:
                ctx.expect_same("prefix", b, "tokens", tok.dim("B"), "batch")
            b, n, tags = tok.dim("B"), n + tok.dim("T"), tags | tok.tags
        if n.is_Integer and int(n) > p.max_len:
            ctx.fail(f"{ctx.name} takes at most max_len={p.max_len} positions but gets {n}",
                     "prefix" if "prefix" in x else "tokens")
        return {"out": T.make("Logits", (b, n, p.vocab), tags=tags),
                "hidden": seq(b, n, p.width, tags),
                **{tap_port(k): seq(b, n, p.width, tags) for k in p.taps}}


@register
class TransformerDecoder(Component):
    name = "transformer_decoder"
    category = "decoder"
    lora_targets = ATTENTION
    summary = ("Transformer decoder over query/token embeddings with cross-attention to ctx "
               "(DETR, captioning, MultiMAE decoders)")
    inputs = (Port("x"), Port("ctx", optional=True), Port("mask", optional=True))
    torch = "mmgraph.components.nn.decoders:TransformerDecoder"
    sequence_rule = causal_if_asked
    context_ports = ("ctx",)

    class Params(Params):
        depth: PosInt
        heads: PosInt
        mlp: PosInt | None = None
        act: Act = "gelu"
        causal: bool = False
        width: PosInt | None = None

    def infer(self, p, x, ctx):
        t = x["x"]
        ctx.expect_kind("x", t, "Seq")
        if p.width is not None:
            ctx.expect_dim("x", t, "D", p.width, "width")
        if t.width.is_Integer:
            check_heads(ctx, int(t.width), p.heads)
        tags = t.tags
        if "ctx" in x:
            ctx.expect_kind("ctx", x["ctx"], "Seq")
            ctx.expect_same("x", t.dim("B"), "ctx", x["ctx"].dim("B"), "batch")
            tags = tags_of(t, x["ctx"])
        return t.with_(tags=tags)

    def torch_args(self, p, x, ctx):
        return {"in_width": in_width(ctx, x), **ctx_width(ctx, x),
                **p.model_dump(exclude={"width"})}


@register
class ObjectQueries(Component):
    name = "object_queries"
    category = "decoder"
    summary = "Learnable object queries (DETR), repeated over the batch of a reference value"
    inputs = (Port("like"),)
    torch = "mmgraph.components.nn.decoders:ObjectQueries"

    class Params(Params):
        n: PosInt = 100
        width: PosInt

    def infer(self, p, x, ctx):
        ref = x["like"]
        return seq(ref.dims[0], p.n, p.width, {"regions"})


@register
class MAEDecoder(InputWidthSized, Component):
    name = "mae_decoder"
    category = "decoder"
    lora_targets = ATTENTION
    summary = ("Masked-autoencoder decoder: visible tokens plus mask tokens back to a full image "
               "of patches (MultiMAE's per-task decoders)")
    inputs = (Port("x"), Port("ctx", optional=True))
    torch = "mmgraph.components.nn.decoders:MAEDecoder"

    class Params(Params):
        width: PosInt = 256
        depth: NonNegInt = 2
        heads: PosInt = 8
        patch: PosInt = 16
        size: PosInt = 224
        channels: PosInt = 3
        cross: bool = False  # cross-attend to all modalities' tokens (MultiMAE)

    def infer(self, p, x, ctx):
        t = x["x"]
        ctx.expect_kind("x", t, "Seq")
        check_heads(ctx, p.width, p.heads)
        if p.size % p.patch:
            ctx.fail(f"{ctx.name}: size {p.size} is not a multiple of patch {p.patch}",
                     code="E304")
        if "ctx" in x:
            ctx.expect_kind("ctx", x["ctx"], "Seq")
        return T.make("Image", (t.dim("B"), p.channels, p.size, p.size), tags=t.tags)
