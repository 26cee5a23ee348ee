"""Token-level alignment losses: they align the tokens of two sequences (words and regions,
object queries and phrases, two views of one image) inside each example, where `contrastive`
aligns whole examples across the batch."""

from __future__ import annotations

from mmgraph.components.common import PosFloat, PosInt
from mmgraph.components.registry import Component, Params, Port, register
from mmgraph.ir import types as T


class _TokenLoss(Component):
    category = "loss"
    has_weights = False

    def _pair(self, x, ctx):
        a, b = x["a"], x["b"]
        ctx.expect_kind("a", a, "Seq")
        ctx.expect_kind("b", b, "Seq")
        ctx.expect_same("a", a.dim("B"), "b", b.dim("B"), "batch")
        ctx.expect_same("a", a.width, "b", b.width, "embedding width")
        return a, b


@register
class TokenContrastive(_TokenLoss):
    name = "token_contrastive"
    summary = ("Token-level InfoNCE inside each example (MDETR's contrastive alignment): each "
               "token of `a` against every token of `b` and back, positives from `positive` "
               "(Tensor<bool>[B, N, M]) or, without it, the token at the same position")
    inputs = (Port("a"), Port("b"), Port("positive", optional=True))
    torch = "mmgraph.components.nn.alignment:token_contrastive"

    class Params(Params):
        temperature: PosFloat = 0.07  # MDETR's
        normalize: bool = True

    def infer(self, p, x, ctx):
        a, b = self._pair(x, ctx)
        n, m = a.dim("N"), b.dim("N")
        if "positive" not in x:
            ctx.expect_same("a", n, "b", m, "token count (without `positive`, token i of a "
                                            "pairs with token i of b)")
            return T.SCALAR
        pos = x["positive"]
        if pos.kind != "Tensor" or pos.rank != 3:
            ctx.fail(f"{ctx.name} expects the pairs that match as Tensor<bool>[B, N, M] for "
                     f"'positive' but {ctx.source('positive')} gives {pos}", "positive",
                     code="E302")
        ctx.expect_same("a", a.dim("B"), "positive", pos.dims[0], "batch")
        ctx.expect_same("a", n, "positive", pos.dims[1], "token count of a")
        ctx.expect_same("b", m, "positive", pos.dims[2], "token count of b")
        return T.SCALAR


@register
class WordRegionOT(_TokenLoss):
    name = "word_region_ot"
    summary = ("UNITER's word-region alignment: the optimal-transport distance (IPOT) between "
               "words `a` and regions `b` under a cosine cost; with `matched` (Labels[B], 1 "
               "for a true pair) matched pairs are pulled together and others pushed apart")
    inputs = (Port("a"), Port("b"), Port("a_mask", optional=True),
              Port("b_mask", optional=True), Port("matched", optional=True))
    torch = "mmgraph.components.nn.alignment:word_region_ot"

    class Params(Params):
        beta: PosFloat = 0.5  # UNITER's proximal step, iterations and inner steps
        iterations: PosInt = 50
        k: PosInt = 1

    def infer(self, p, x, ctx):
        a, b = self._pair(x, ctx)
        for port, t in (("a_mask", a), ("b_mask", b)):
            if port in x:
                ctx.expect_kind(port, x[port], "Mask")
                ctx.expect_same(port[0], t.dim("N"), port, x[port].dim("N"), "token count")
                ctx.expect_same(port[0], t.dim("B"), port, x[port].dim("B"), "batch")
        if "matched" in x:
            m = x["matched"]
            ctx.expect_kind("matched", m, "Labels")
            if m.rank != 1:
                ctx.fail(f"{ctx.name} expects one label per pair, Labels[B], for 'matched' but "
                         f"{ctx.source('matched')} gives {m}", "matched", code="E302")
            ctx.expect_same("a", a.dim("B"), "matched", m.dims[0], "batch")
        return T.SCALAR
