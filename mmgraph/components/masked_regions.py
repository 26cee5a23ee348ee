"""Masked region modelling's losses (LXMERT, UNITER): what a model predicts at the regions
that `mask_features` hid, scored at those regions only. `masked_reconstruction` scores image
patches; regions are a sequence of feature vectors with their own targets: the features
themselves (regression), the detector's label (classification) or its class distribution
(UNITER's MRC-kl)."""

from __future__ import annotations

from typing import Literal

from mmgraph.components.registry import Component, Params, Port, register
from mmgraph.ir import types as T


@register
class MaskedRegions(Component):
    name = "masked_regions"
    category = "loss"
    summary = ("Masked region modelling at the masked regions only: feature regression "
               "(metric mse or smooth_l1), the detector's label (ce, Labels[B, N]) or its "
               "class distribution (kl, probabilities)")
    has_weights = False
    inputs = (Port("pred"), Port("target"), Port("mask"))
    torch = "mmgraph.components.nn.masked_regions:masked_regions"

    class Params(Params):
        metric: Literal["mse", "smooth_l1", "ce", "kl"] = "mse"

    def infer(self, p, x, ctx):
        pred, target, mask = x["pred"], x["target"], x["mask"]
        ctx.expect_kind("pred", pred, "Seq", "Logits")
        if pred.rank != 3:
            ctx.fail(f"{ctx.name} needs one prediction per region, [B, N, D], but "
                     f"{ctx.source('pred')} gives {pred}", "pred", code="E302")
        ctx.expect_kind("mask", mask, "Mask")
        ctx.expect_same("pred", pred.dims[0], "mask", mask.dim("B"), "batch")
        ctx.expect_same("pred", pred.dims[1], "mask", mask.dim("N"), "region count")
        if p.metric == "ce":
            ctx.expect_kind("target", target, "Labels")
            if target.rank != 2:
                ctx.fail(f"{ctx.name}: metric=\"ce\" needs one label per region, Labels[B, N], "
                         f"but {ctx.source('target')} gives {target}", "target", code="E302")
        elif target.rank != 3 or target.dtype not in T.FLOAT_DTYPES:
            ctx.fail(f"{ctx.name}: metric=\"{p.metric}\" needs a target per region of "
                     f"{ctx.source('pred')}'s shape, but {ctx.source('target')} gives {target}",
                     "target", code="E302",
                     hint="use metric=\"ce\" for one class id per region")
        for axis in range(target.rank):
            what = ("batch", "region count", "width")[axis]
            ctx.expect_same("pred", pred.dims[axis], "target", target.dims[axis], what)
        return T.SCALAR
