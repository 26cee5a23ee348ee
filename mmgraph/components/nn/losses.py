"""Losses with weights: the contrastive loss learns its temperature."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Contrastive(nn.Module):
    """Symmetric InfoNCE (CLIP). `logit_scale` = log(1 / temperature), learnable or fixed.

    With `queue > 0`, the embeddings of earlier batches are kept (detached) as extra
    negatives, MoCo/ALBEF style.
    """

    def __init__(self, *, in_width: int, temperature: float = 0.07, learnable: bool = True,
                 queue: int = 0):
        super().__init__()
        scale = torch.tensor(math.log(1.0 / temperature))
        if learnable:
            self.logit_scale = nn.Parameter(scale)
        else:
            self.register_buffer("logit_scale", scale)
        self.queue = queue
        if queue:
            self.register_buffer("queue_a", F.normalize(torch.randn(queue, in_width), dim=-1))
            self.register_buffer("queue_b", F.normalize(torch.randn(queue, in_width), dim=-1))
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def forward(self, a, b):
        scale = self.logit_scale.exp().clamp(max=100)
        if self.queue:
            all_a = torch.cat([a, self.queue_a.to(a.dtype)])
            all_b = torch.cat([b, self.queue_b.to(b.dtype)])
        else:
            all_a, all_b = a, b
        logits_ab = scale * a @ all_b.t()
        logits_ba = scale * b @ all_a.t()
        labels = torch.arange(len(a), device=a.device)
        loss = (F.cross_entropy(logits_ab.float(), labels) +
                F.cross_entropy(logits_ba.float(), labels)) / 2
        if self.queue and self.training:
            self._enqueue(a.detach(), b.detach())
        return loss

    @torch.no_grad()
    def _enqueue(self, a, b):
        n, ptr = len(a), int(self.queue_ptr)
        idx = (torch.arange(n, device=a.device) + ptr) % self.queue
        self.queue_a[idx] = a.to(self.queue_a.dtype)
        self.queue_b[idx] = b.to(self.queue_b.dtype)
        self.queue_ptr.fill_((ptr + n) % self.queue)
