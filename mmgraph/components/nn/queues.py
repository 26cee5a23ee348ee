"""The torch face of `feature_queue` (mmgraph/components/queues.py)."""

from __future__ import annotations

import torch
from torch import nn

from mmgraph.components.nn.global_batch import gather


class FeatureQueue(nn.Module):
    """A ring of the last `size` feature rows. A call returns the rows held before it, oldest
    first, detached; in training mode it then adds `x` (every process's, under DDP/FSDP, so
    all processes hold the same queue of the global batch). Buffers, so checkpoints keep the
    queue and its write position, and a resumed run continues it exactly."""

    def __init__(self, *, size: int, width: int):
        super().__init__()
        self.size = size
        self.register_buffer("features", torch.zeros(size, width))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        if self.features.device.type == "meta":  # shape-only runs (`mmgraph stats`)
            return self.features.to(x.dtype)
        ptr = int(self.ptr)
        past = torch.roll(self.features, -ptr, dims=0).to(x.dtype)  # a copy, oldest first
        if self.training:
            ring_write(self.ptr, ptr, [(self.features, gather(x)[-self.size:])])
        return past


@torch.no_grad()
def ring_write(ptr_buffer: torch.Tensor, ptr: int, pairs) -> None:
    """Write each (ring buffer, rows) pair's rows at `ptr`, wrapping, then advance
    `ptr_buffer`: the one write of feature_queue's ring and of contrastive's queues."""
    size, n = len(pairs[0][0]), len(pairs[0][1])
    idx = (torch.arange(n, device=pairs[0][1].device) + ptr) % size
    for buffer, rows in pairs:
        buffer[idx] = rows.to(buffer.dtype)
    ptr_buffer.fill_((ptr + n) % size)
