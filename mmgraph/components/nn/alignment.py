"""Token-level alignment losses (the faces of mmgraph/components/alignment.py).

Both compare tokens inside each example, so they gather nothing across processes; a mean
over the global batch's count keeps N processes equal to one (`share_of_mean`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmgraph.components.nn.global_batch import share_of_mean


def token_contrastive(a, b, positive=None, *, temperature: float, normalize: bool):
    """MDETR's contrastive alignment (`loss_contrastive_align`): for each token of `a` with a
    positive, -mean log-softmax over b's tokens of its positives, and the same from b's side;
    the two sums halved and divided by the number of a's tokens with a positive (MDETR's
    matched boxes). Without `positive`, token i of a matches token i of b."""
    if normalize:
        a, b = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
    logits = a.float() @ b.float().transpose(1, 2) / temperature  # [B, N, M]
    if positive is None:
        n = logits.shape[1]
        pos = torch.eye(n, dtype=torch.bool, device=logits.device).expand_as(logits)
    else:
        pos = positive.bool()
    pos_logits = logits.masked_fill(~pos, 0)
    rows, cols = pos.any(2), pos.any(1)
    a_to_b = (logits.logsumexp(2) - pos_logits.sum(2) / pos.sum(2).clamp(min=1))
    b_to_a = (logits.logsumexp(1) - pos_logits.sum(1) / pos.sum(1).clamp(min=1))
    total = (a_to_b.masked_fill(~rows, 0).sum() + b_to_a.masked_fill(~cols, 0).sum()) / 2
    return share_of_mean(total, rows.sum())


def cosine_cost(a, b):
    """1 - cos(a_i, b_j): [B, N, M]."""
    return 1 - F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).transpose(1, 2)


@torch.no_grad()
def ipot(cost, a_keep, b_keep, *, beta: float, iterations: int, k: int):
    """The optimal-transport plan [B, N, M] between uniform weights on the kept tokens of each
    side, by the inexact proximal point method (Xie et al. 2019) as UNITER runs it: each
    outer step solves a Sinkhorn problem with kernel exp(-cost / beta) times the previous
    plan, `k` inner steps each."""
    joint = a_keep[:, :, None] & b_keep[:, None, :]
    n_len = a_keep.sum(1, keepdim=True).to(cost.dtype)  # [B, 1]
    m_len = b_keep.sum(1, keepdim=True).to(cost.dtype)
    kernel = torch.exp(-cost / beta) * joint
    plan = joint.to(cost.dtype)
    sigma = a_keep.to(cost.dtype) / n_len  # [B, N]
    delta = b_keep.to(cost.dtype) / m_len

    def inverse(x, keep):  # 1 / x on kept tokens, 0 on padding
        return torch.where(keep, 1 / torch.where(keep, x, 1), 0)

    for _ in range(iterations):
        q = kernel * plan
        for _ in range(k):
            delta = inverse(m_len * torch.einsum("bnm,bn->bm", q, sigma), b_keep)
            sigma = inverse(n_len * torch.einsum("bnm,bm->bn", q, delta), a_keep)
        plan = sigma[:, :, None] * q * delta[:, None, :]
    return plan


def ot_distance(a, b, a_keep, b_keep, *, beta: float, iterations: int, k: int):
    """UNITER's `optimal_transport_dist`: <cost, plan> per example, the plan found on the
    detached cost, so gradients reach the features through the cost alone."""
    cost = cosine_cost(a, b) * (a_keep[:, :, None] & b_keep[:, None, :])
    plan = ipot(cost.detach(), a_keep, b_keep, beta=beta, iterations=iterations, k=k)
    return (cost * plan).sum((1, 2))


def word_region_ot(a, b, a_mask=None, b_mask=None, matched=None, *, beta: float,
                   iterations: int, k: int):
    """UNITER's WRA loss: the mean OT distance; with `matched`, (sum over matched pairs - sum
    over the others) / pairs, as UNITER trains it next to ITM."""
    a_keep = (a_mask.bool() if a_mask is not None
              else torch.ones(a.shape[:2], dtype=torch.bool, device=a.device))
    b_keep = (b_mask.bool() if b_mask is not None
              else torch.ones(b.shape[:2], dtype=torch.bool, device=b.device))
    dist = ot_distance(a, b, a_keep, b_keep, beta=beta, iterations=iterations, k=k)
    if matched is not None:
        dist = torch.where(matched == 1, dist, -dist)
    return share_of_mean(dist.sum(), torch.tensor(len(dist), device=dist.device))
