"""Similarity logits (the face of mmgraph/components/similarity.py)."""

from __future__ import annotations

import math

import torch
from torch import nn

from mmgraph.components.nn.ops import l2norm


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
        if self.normalize:
            a, b = l2norm(a), l2norm(b)
        scale = self.logit_scale.exp()
        if self.learnable:  # CLIP's bound on a learned scale; a fixed one is what was asked
            scale = scale.clamp(max=100)
        return scale.to(a.dtype) * (a @ b.t())
