"""DETR's set loss (the face of mmgraph/components/sets.py): Hungarian matching with scipy's
`linear_sum_assignment` on the CPU, then cross-entropy, L1 and GIoU on the matched pairs.

The matching is per image, so nothing is gathered across processes; only the box count that
the L1 and GIoU sums are divided by is the global batch's (DETR's all-reduced `num_boxes`)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mmgraph.components.nn.global_batch import share_of_mean
from mmgraph.errors import InputError


def xyxy(boxes, fmt: str):
    """Boxes as corners (x0, y0, x1, y1) from `fmt` ("cxcywh" or "xyxy")."""
    if fmt == "xyxy":
        return boxes
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def generalized_box_iou(a, b):
    """Pairwise GIoU of corner boxes a [N, 4] and b [M, 4]: IoU minus the share of the
    smallest enclosing box that the union leaves empty (Rezatofighi et al. 2019)."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    iou = inter / union
    lt = torch.min(a[:, None, :2], b[None, :, :2])
    rb = torch.max(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    enclosing = wh[..., 0] * wh[..., 1]
    return iou - (enclosing - union) / enclosing


@torch.no_grad()
def hungarian_match(logits, boxes, labels, target_boxes, *, class_weight: float,
                    l1_weight: float, giou_weight: float, fmt: str):
    """For one image: (prediction indices, target indices) of the assignment of least total
    cost, class (-probability of the target's class) + L1 + (-GIoU), each weighted."""
    from scipy.optimize import linear_sum_assignment

    prob = logits.float().softmax(-1)
    cost = (class_weight * -prob[:, labels]
            + l1_weight * torch.cdist(boxes.float(), target_boxes.float(), p=1)
            + giou_weight * -generalized_box_iou(xyxy(boxes.float(), fmt),
                                                 xyxy(target_boxes.float(), fmt)))
    cost = cost.cpu().numpy()
    if not np.isfinite(cost).all():
        raise InputError("set_loss: a matching cost is not a number: boxes of no area, or "
                         f"boxes that are not {fmt} (format=\"{fmt}\")?")
    rows, cols = linear_sum_assignment(cost)
    device = logits.device
    return (torch.as_tensor(rows, dtype=torch.long, device=device),
            torch.as_tensor(cols, dtype=torch.long, device=device))


def set_loss(logits, boxes, labels, target_boxes, *, class_weight: float, l1_weight: float,
             giou_weight: float, no_object_weight: float, format: str, ignore_index: int):
    """class_weight * CE + l1_weight * L1 + giou_weight * (1 - GIoU), DETR's loss with its
    matcher's costs. Unmatched predictions are the no-object class (the last one)."""
    b, q, classes = logits.shape
    real = labels[labels != ignore_index]
    if len(real) and (real.min() < 0 or real.max() >= classes - 1):
        bad = int(real.min() if real.min() < 0 else real.max())
        raise InputError(f"set_loss: target label {bad} is not one of the {classes - 1} object "
                         f"classes 0..{classes - 2} (logit {classes - 1} is no object; "
                         f"ignore_index={ignore_index} pads)")
    target_classes = torch.full((b, q), classes - 1, dtype=torch.long, device=logits.device)
    pred, true = [], []
    for i in range(b):
        keep = labels[i] != ignore_index
        lab, tgt = labels[i][keep].long(), target_boxes[i][keep]
        if len(lab) == 0:
            continue
        rows, cols = hungarian_match(logits[i], boxes[i], lab, tgt, class_weight=class_weight,
                                     l1_weight=l1_weight, giou_weight=giou_weight, fmt=format)
        target_classes[i, rows] = lab[cols]
        pred.append(boxes[i][rows])
        true.append(tgt[cols])
    weight = torch.ones(classes, device=logits.device)
    weight[-1] = no_object_weight
    per = F.cross_entropy(logits.float().transpose(1, 2), target_classes, weight,
                          reduction="none")  # weighted, as DETR's mean; of the global batch
    ce = share_of_mean(per.sum(), weight[target_classes].sum(), floor=1e-12)
    if pred:
        src, tgt = torch.cat(pred).float(), torch.cat(true).float()
        l1 = F.l1_loss(src, tgt, reduction="none").sum()
        giou = (1 - torch.diag(generalized_box_iou(xyxy(src, format), xyxy(tgt, format)))).sum()
        count = torch.tensor(len(src), device=logits.device)
    else:  # no object in this slice of the batch: still part of the graph, worth 0
        l1 = giou = boxes.float().sum() * 0
        count = torch.tensor(0, device=logits.device)
    # DETR's num_boxes, one reduction of the count for both sums
    l1, giou = share_of_mean(torch.stack([l1, giou]), count).unbind()
    return class_weight * ce + l1_weight * l1 + giou_weight * giou
