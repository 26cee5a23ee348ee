"""Losses as torch faces (of mmgraph/components/losses.py): functions, and a module for the
contrastive loss, which learns its temperature.

Under data-parallel training the losses that look across examples compute over the global
batch (mmgraph/components/nn/global_batch.py): contrastive negatives come from every process,
and token means divide by the global count, so N processes match one on the same batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmgraph.components.nn.fusion import MoEFFN
from mmgraph.components.nn.global_batch import gather_with_grad, share_of_mean, world
from mmgraph.components.nn.queues import ring_write
from mmgraph.components.nn.similarity import add_logit_scale


class Contrastive(nn.Module):
    """Symmetric InfoNCE (CLIP). `logit_scale` = log(1 / temperature), learnable or fixed.

    With `queue > 0`, the embeddings of earlier batches are kept (detached) as extra
    negatives, MoCo/ALBEF style.

    Under DDP/FSDP every process's embeddings are negatives (gathered with gradients); each
    process scores its own rows against all columns (open_clip's local_loss), so the mean of
    the processes' losses is the loss of the global batch. The queue takes the global batch.
    """

    def __init__(self, *, in_width: int, temperature: float, learnable: bool, queue: int):
        super().__init__()
        add_logit_scale(self, temperature, learnable)
        self.queue = queue
        if queue:
            self.register_buffer("queue_a", F.normalize(torch.randn(queue, in_width), dim=-1))
            self.register_buffer("queue_b", F.normalize(torch.randn(queue, in_width), dim=-1))
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def forward(self, a, b):
        scale = self.logit_scale.exp().clamp(max=100)
        rank, _ = world()
        batch_a, batch_b = gather_with_grad(a), gather_with_grad(b)  # the global batch
        if self.queue:
            all_a = torch.cat([batch_a, self.queue_a.to(a.dtype)])
            all_b = torch.cat([batch_b, self.queue_b.to(b.dtype)])
        else:
            all_a, all_b = batch_a, batch_b
        logits_ab = scale * a @ all_b.t()
        logits_ba = scale * b @ all_a.t()
        labels = torch.arange(len(a), device=a.device) + rank * len(a)
        loss = (F.cross_entropy(logits_ab.float(), labels) +
                F.cross_entropy(logits_ba.float(), labels)) / 2
        if self.queue and self.training:
            ring_write(self.queue_ptr, int(self.queue_ptr),
                       [(self.queue_a, batch_a.detach()), (self.queue_b, batch_b.detach())])
        return loss


def itm(pos, neg):
    """Matching: positives are class 1, negatives class 0."""
    logits = torch.cat([pos, neg], dim=0)
    labels = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))]).long().to(pos.device)
    return F.cross_entropy(logits.float(), labels)


def next_token(logits, tokens, mask=None, *, skip: int, ignore_index: int):
    """Logits at position skip + i - 1 predict token i (i >= 1). With a mask, only the tokens
    it marks are targets (a conversation's answers, never padding), and a batch without any
    gives 0 rather than the 0/0 of a plain mean."""
    pred = logits[:, skip:-1] if tokens.shape[1] > 1 else logits[:, skip:skip]
    target = tokens[:, 1:]
    if mask is not None:
        target = target.masked_fill(~mask[:, 1:].bool(), ignore_index).reshape(-1)
        per = F.cross_entropy(pred.reshape(-1, pred.shape[-1]).float(), target,
                              ignore_index=ignore_index, reduction="none")
        return share_of_mean(per.sum(), (target != ignore_index).sum())
    return token_mean(pred.reshape(-1, pred.shape[-1]).float(), target.reshape(-1),
                      ignore_index=ignore_index)


def token_mean(logits, target, *, ignore_index: int, label_smoothing: float = 0.0):
    """Cross-entropy averaged over the targets that count, of the global batch: processes
    holding more padding must not weigh as much as those holding more tokens."""
    if world()[1] == 1:
        return F.cross_entropy(logits, target, ignore_index=ignore_index,
                               label_smoothing=label_smoothing)
    per = F.cross_entropy(logits, target, ignore_index=ignore_index,
                          label_smoothing=label_smoothing, reduction="none")
    return share_of_mean(per.sum(), (target != ignore_index).sum())


def mlm(logits, tokens, mask):
    target = tokens.masked_fill(~mask.bool(), -100)
    return token_mean(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1),
                      ignore_index=-100)


def _patch_mask(mask, size_hw, patch):
    """A per-patch mask [B, N] to a per-pixel mask [B, 1, H, W]."""
    h, w = size_hw
    grid = mask.view(mask.shape[0], h // patch, w // patch).to(torch.float32)
    return grid.repeat_interleave(patch, 1).repeat_interleave(patch, 2)[:, None]


def masked_reconstruction(pred, target, mask=None, *, metric: str, norm_pix: bool, patch: int):
    if metric == "ce":
        per = F.cross_entropy(pred.float(), target[:, 0].long(), reduction="none")[:, None]
    else:
        target = target.to(pred.dtype)
        if norm_pix:
            mean = target.mean(dim=(-2, -1), keepdim=True)
            std = target.std(dim=(-2, -1), keepdim=True)
            target = (target - mean) / (std + 1e-6)
        per = (pred - target).pow(2) if metric == "mse" else (pred - target).abs()
        per = per.float().mean(1, keepdim=True)
    if mask is None or pred.dim() != 4:
        return per.mean()
    m = _patch_mask(mask, pred.shape[-2:], patch)
    if world()[1] == 1:
        return (per * m).sum() / m.sum().clamp(min=1)
    return share_of_mean((per * m).sum(), m.sum())  # masked pixels of the global batch


def cross_entropy(logits, labels, *, label_smoothing: float, ignore_index: int):
    return token_mean(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                      label_smoothing=label_smoothing, ignore_index=ignore_index)


def kl_distill(student, teacher, *, temperature: float):
    t = temperature
    return F.kl_div(F.log_softmax(student.float() / t, -1), F.softmax(teacher.float() / t, -1),
                    reduction="batchmean") * t * t


def feature_distill(student, teacher, *, metric: str):
    teacher = teacher.detach()
    if metric == "cosine":
        return (1 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()
    if metric == "mse":
        return F.mse_loss(student.float(), teacher.float())
    return F.smooth_l1_loss(student.float(), teacher.float())


def mse(pred, target):
    return F.mse_loss(pred.float(), target.float())


def moe_aux(x, *, layers):
    """The sum of the load-balancing losses that the MoE layers inside `layers` computed in
    this forward pass (the compiler passes the layers upstream of x)."""
    losses = [m.aux for layer in layers for m in layer.modules()
              if isinstance(m, MoEFFN) and m.aux is not None]
    return torch.stack([a.float() for a in losses]).sum() if losses else x.sum() * 0
