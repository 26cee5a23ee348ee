"""Similarity logits (the face of mmgraph/components/similarity.py)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def add_logit_scale(module: nn.Module, temperature: float, learnable: bool) -> None:
    """CLIP's `logit_scale` = log(1 / temperature): a parameter when it learns, else a
    buffer (so a checkpoint's value loads either way)."""
    scale = torch.tensor(math.log(1.0 / temperature))
    if learnable:
        module.logit_scale = nn.Parameter(scale)
    else:
        module.register_buffer("logit_scale", scale)


class Similarity(nn.Module):
    """`scale * a @ b.T` with `scale = exp(logit_scale)` = 1 / temperature, CLIP's form, so a
    pretrained `logit_scale` loads as it is. Cosine (normalised) unless asked otherwise."""

    def __init__(self, *, temperature: float, learnable: bool, normalize: bool):
        super().__init__()
        add_logit_scale(self, temperature, learnable)
        self.normalize, self.learnable = normalize, learnable

    def forward(self, a, b):
        if self.normalize:  # the reduction in fp32, as l2norm
            a = F.normalize(a.float(), dim=-1).to(a.dtype)
            b = F.normalize(b.float(), dim=-1).to(b.dtype)
        scale = self.logit_scale.exp()
        if self.learnable:  # CLIP's bound on a learned scale; a fixed one is what was asked
            scale = scale.clamp(max=100)
        return scale.to(a.dtype) * (a @ b.t())
