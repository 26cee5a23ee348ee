"""Masked region modelling's losses (the face of mmgraph/components/masked_regions.py)."""

from __future__ import annotations

import torch.nn.functional as F

from mmgraph.components.nn.global_batch import share_of_mean


def masked_regions(pred, target, mask, *, metric: str):
    """A loss per region, averaged over the masked regions of the global batch (UNITER's
    MRFR = mse, MRC = ce, MRC-kl = kl; LXMERT's feature regression = smooth_l1). No masked
    region gives 0."""
    if metric == "ce":
        per = F.cross_entropy(pred.float().transpose(1, 2), target.long(), reduction="none")
    elif metric == "kl":
        per = F.kl_div(F.log_softmax(pred.float(), dim=-1), target.float(),
                       reduction="none").sum(-1)
    elif metric == "mse":
        per = (pred.float() - target.float()).pow(2).mean(-1)
    else:
        per = F.smooth_l1_loss(pred.float(), target.float(), reduction="none").mean(-1)
    m = mask.bool()
    return share_of_mean(per.masked_fill(~m, 0).sum(), m.sum())
