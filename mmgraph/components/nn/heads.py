"""Heads as torch modules (the faces of mmgraph/components/heads.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmgraph.components.nn.layers import make_act


class Classifier(nn.Module):
    def __init__(self, *, in_width: int, classes: int, hidden: int | None, bias: bool):
        super().__init__()
        if hidden:
            self.net = nn.Sequential(nn.Linear(in_width, hidden), nn.GELU(),
                                     nn.Linear(hidden, classes, bias=bias))
        else:
            self.net = nn.Linear(in_width, classes, bias=bias)

    def forward(self, x):
        return self.net(x)


class LMHead(nn.Module):
    """Vocabulary logits; `transform=True` adds BERT's dense + GELU + LayerNorm first.

    Tied (`tie="embed"`), the head has no decoder weight of its own: each call is given the
    token_embedding module and multiplies by its weight, so one tensor serves both and gets
    both gradients (the generated code passes it as `embedding=(self.embed,)`)."""

    def __init__(self, *, in_width: int, vocab: int, bias: bool, transform: bool,
                 tie: str | None):
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(in_width, in_width), nn.GELU(),
                                       nn.LayerNorm(in_width, eps=1e-12)) if transform else None
        self.decoder = nn.Linear(in_width, vocab, bias=bias) if tie is None else None
        self.bias = nn.Parameter(torch.zeros(vocab)) if tie is not None and bias else None

    def forward(self, x, embedding=None):
        if self.transform is not None:
            x = self.transform(x)
        if self.decoder is not None:
            return self.decoder(x)
        (tied,) = embedding
        return F.linear(x, tied.embed.weight, self.bias)


class ITMHead(nn.Linear):
    def __init__(self, *, in_width: int):
        super().__init__(in_width, 2)


class Regression(nn.Module):
    def __init__(self, *, in_width: int, out: int, hidden: int | None):
        super().__init__()
        self.net = nn.Linear(in_width, out) if not hidden else nn.Sequential(
            nn.Linear(in_width, hidden), nn.GELU(), nn.Linear(hidden, out))

    def forward(self, x):
        return self.net(x)


class BoxHead(nn.Module):
    """DETR's box MLP: 3 layers, sigmoid to normalised (cx, cy, w, h)."""

    def __init__(self, *, in_width: int, hidden: int | None):
        super().__init__()
        hidden = hidden or in_width
        self.net = nn.Sequential(nn.Linear(in_width, hidden), make_act("relu"),
                                 nn.Linear(hidden, hidden), make_act("relu"),
                                 nn.Linear(hidden, 4))

    def forward(self, x):
        return self.net(x).sigmoid()

