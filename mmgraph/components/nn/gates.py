"""The torch faces of mmgraph/components/gates.py: per-example gates and routing."""

from __future__ import annotations

import torch
from torch import nn


class Gate(nn.Module):
    """A linear map of the context vector to K logits, then a sigmoid or a softmax over K;
    out=1 gives one gate per example, Tensor[B]."""

    def __init__(self, *, in_width: int, out: int, act: str):
        super().__init__()
        self.proj = nn.Linear(in_width, out)
        self.act = act

    def forward(self, x):
        z = self.proj(x)
        w = torch.softmax(z, dim=-1) if self.act == "softmax" else torch.sigmoid(z)
        return w.squeeze(-1) if self.proj.out_features == 1 else w


def mixture(weights, *experts):
    """sum_k weights[:, k] * experts[k], each weight broadcast over the expert's other axes."""
    out = None
    for k, e in enumerate(experts):
        w = weights[:, k].reshape((-1,) + (1,) * (e.dim() - 1)).to(e.dtype)
        out = w * e if out is None else out + w * e
    return out


def modality_gate(x, present):
    """x where the example has the modality, zeros where it does not (no NaN leaks: a
    `where`, not a multiplication, so a missing modality's garbage features vanish)."""
    keep = present.reshape((-1,) + (1,) * (x.dim() - 1)).to(torch.bool)
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))
