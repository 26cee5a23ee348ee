"""Set prediction (DETR/MDETR): a fixed number of predicted objects is matched one to one
with each image's ground-truth objects by the Hungarian algorithm, and only then scored, so
the order of the predictions does not matter."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from mmgraph.components.registry import Component, Params, Port, register
from mmgraph.ir import types as T

NonNegFloat = Annotated[float, Field(ge=0.0)]


@register
class SetLoss(Component):
    name = "set_loss"
    category = "loss"
    summary = ("DETR's set loss: predictions Logits[B, Q, C + 1] (last class: no object) and "
               "Boxes[B, Q, 4] matched to targets Labels[B, M] and Boxes[B, M, 4] (Hungarian, "
               "class + L1 + GIoU cost), then CE + L1 + GIoU on the matches; targets labelled "
               "`ignore_index` are padding")
    has_weights = False
    inputs = (Port("logits"), Port("boxes"), Port("labels"), Port("target_boxes"))
    torch = "mmgraph.components.nn.sets:set_loss"

    class Params(Params):
        class_weight: NonNegFloat = 1.0  # DETR's cost and loss weights
        l1_weight: NonNegFloat = 5.0
        giou_weight: NonNegFloat = 2.0
        no_object_weight: NonNegFloat = 0.1  # the CE weight of the no-object class (eos_coef)
        format: Literal["cxcywh", "xyxy"] = "cxcywh"  # box_head predicts cxcywh
        ignore_index: int = -100

    def infer(self, p, x, ctx):
        lg, bx, lb, tb = x["logits"], x["boxes"], x["labels"], x["target_boxes"]
        ctx.expect_kind("logits", lg, "Logits")
        ctx.expect_kind("boxes", bx, "Boxes")
        ctx.expect_kind("labels", lb, "Labels")
        ctx.expect_kind("target_boxes", tb, "Boxes")
        if lg.rank != 3:
            ctx.fail(f"{ctx.name} needs one score vector per predicted object, Logits[B, Q, "
                     f"C + 1], but {ctx.source('logits')} gives {lg}", "logits", code="E302")
        if lb.rank != 2:
            ctx.fail(f"{ctx.name} needs the objects' classes per image, Labels[B, M], but "
                     f"{ctx.source('labels')} gives {lb}", "labels", code="E302")
        ctx.expect_same("logits", lg.dim("B"), "boxes", bx.dim("B"), "batch")
        ctx.expect_same("logits", lg.dim("N"), "boxes", bx.dim("N"), "number of predictions")
        ctx.expect_same("logits", lg.dim("B"), "labels", lb.dim("B"), "batch")
        ctx.expect_same("labels", lb.dim("N"), "target_boxes", tb.dim("N"), "number of objects")
        ctx.expect_same("labels", lb.dim("B"), "target_boxes", tb.dim("B"), "batch")
        queries, objects = lg.dim("N"), lb.dim("N")
        if (queries - objects).is_negative:
            ctx.fail(f"{ctx.name}: {T.format_dim(queries)} predictions cannot match "
                     f"{T.format_dim(objects)} objects one to one ({ctx.source('logits')} "
                     f"gives {lg})", "labels",
                     hint="predict at least as many objects as an image holds (more queries)")
        classes = lg.width
        if classes.is_Integer and int(classes) < 2:
            ctx.fail(f"{ctx.name} needs at least one class and the no-object class, but "
                     f"{ctx.source('logits')} scores {classes}", "logits")
        return T.SCALAR
