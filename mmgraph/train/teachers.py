"""EMA (momentum) teachers: the layers a spec declares `ema_of(x, decay=d)`.

A teacher is a frozen copy of x that the optimizer never steps. It starts as x's weights
when a run starts (not when it resumes: then the checkpoint holds it), and after every
optimizer step it moves towards x: t = d * t + (1 - d) * x, for its parameters and its
floating-point buffers (integer buffers, e.g. counters, are copied), as ALBEF's momentum
encoders, MoCo's key encoder and timm's ModelEmaV2 do. Its weights are part of the model's
state, so checkpoints save them and a resume continues the average exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mmgraph.ir.graph import Graph


@dataclass
class Teacher:
    name: str
    source: str
    decay: float
    pairs: list[tuple[torch.Tensor, torch.Tensor]]  # (teacher tensor, source tensor)


def teachers(model: nn.Module, g: Graph) -> list[Teacher]:
    """The model's teachers, each with its tensors paired to its source's by name."""
    out = []
    for inst in g.instances.values():
        if not inst.ema_of:
            continue
        mine, theirs = model.get_submodule(inst.name), model.get_submodule(inst.ema_of)
        source = dict(theirs.named_parameters()) | dict(theirs.named_buffers())
        pairs = [(t, source[k]) for k, t in
                 [*mine.named_parameters(), *mine.named_buffers()] if k in source]
        out.append(Teacher(inst.name, inst.ema_of, inst.ema_decay, pairs))
    return out


@torch.no_grad()
def start(found: list[Teacher]) -> None:
    """Each teacher becomes a copy of its source."""
    for teacher in found:
        for t, s in teacher.pairs:
            t.copy_(s)


@torch.no_grad()
def update(found: list[Teacher]) -> None:
    """One EMA step of every teacher (after the optimizer's step)."""
    for teacher in found:
        for t, s in teacher.pairs:
            if t.is_floating_point():
                t.lerp_(s.to(t.dtype), 1 - teacher.decay)  # t + (1-d)(s - t) = d t + (1-d) s
            else:
                t.copy_(s)
