"""CTC loss (the face of mmgraph/components/ctc.py): torch's own, with lengths read from the
padding and the frame mask."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmgraph.errors import InputError


def ctc(logits, targets, mask=None, *, blank: int, pad: int, zero_infinity: bool):
    """Mean over the batch of each transcript's negative log-likelihood divided by its length
    (torch's reduction="mean"). Each example is its own: no look across processes."""
    b, t, _ = logits.shape
    log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # [T, B, V]
    if mask is None:
        frames = torch.full((b,), t, dtype=torch.long, device=logits.device)
    else:
        frames = mask.bool().sum(1).long()
    real = targets != pad
    if pad != blank and (real & (targets == blank)).any():
        raise InputError(f"ctc: a transcript holds the blank id {blank}, which CTC keeps for "
                         "'no token here' (set blank to an id the tokenizer never gives)")
    if (real[:, 1:] & ~real[:, :-1]).any():
        raise InputError(f"ctc: a transcript has tokens after the padding id {pad}: pad "
                         "transcripts at the end")
    lengths = real.sum(1).long()
    return F.ctc_loss(log_probs, targets.masked_fill(targets == pad, blank).long(), frames,
                      lengths, blank=blank, reduction="mean", zero_infinity=zero_infinity)
