"""Connectionist temporal classification: a transcript's loss under every alignment of its
tokens to the frames (AVSR's CTC branch, speech recognition), no frame labels needed."""

from __future__ import annotations

from mmgraph.components.common import NonNegInt
from mmgraph.components.registry import Component, Params, Port, register
from mmgraph.ir import types as T


@register
class CTC(Component):
    name = "ctc"
    category = "loss"
    summary = ("CTC loss of per-frame Logits[B, T, V] against transcripts Tokens[B, S] padded "
               "at the end with `pad`; `blank` is a class of the vocabulary; `mask` marks "
               "the frames that count")
    has_weights = False
    inputs = (Port("logits"), Port("targets"), Port("mask", optional=True))
    torch = "mmgraph.components.nn.ctc:ctc"

    class Params(Params):
        blank: NonNegInt = 0
        pad: int = -100  # the id that fills the end of shorter transcripts
        zero_infinity: bool = False  # an impossible alignment gives 0, not inf

    def infer(self, p, x, ctx):
        lg, tok = x["logits"], x["targets"]
        ctx.expect_kind("logits", lg, "Logits")
        ctx.expect_kind("targets", tok, "Tokens")
        if lg.rank != 3:
            ctx.fail(f"{ctx.name} needs per-frame logits Logits[B, T, V] but "
                     f"{ctx.source('logits')} gives {lg}", "logits", code="E302")
        ctx.expect_same("logits", lg.dim("B"), "targets", tok.dim("B"), "batch")
        frames, vocab, length = lg.dim("N"), lg.width, tok.dim("T")
        if vocab.is_Integer and p.blank >= int(vocab):
            ctx.fail(f"{ctx.name}: blank={p.blank} is not a class of {ctx.source('logits')}, "
                     f"which scores {vocab} classes", param="blank", code="E203",
                     hint="the blank is one of the vocabulary's ids, usually 0")
        if (frames - length).is_negative:
            ctx.fail(f"{ctx.name}: {T.format_dim(frames)} frames cannot align a transcript of "
                     f"{T.format_dim(length)} tokens ({ctx.source('logits')} gives {lg}, "
                     f"{ctx.source('targets')} gives {tok})", "targets",
                     hint="CTC emits at most one token per frame: downsample the frames less")
        if "mask" in x:
            ctx.expect_kind("mask", x["mask"], "Mask")
            ctx.expect_same("logits", frames, "mask", x["mask"].dim("N"), "frame count")
        return T.SCALAR
