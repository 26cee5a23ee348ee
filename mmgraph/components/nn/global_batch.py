"""The global batch of data-parallel training, for the losses and ops that look across examples.

Under DDP or FSDP each process holds a slice of the batch. A loss whose value depends on the
other examples (contrastive negatives, hard-negative mining, a mean over unpadded tokens) would
silently change meaning: it would see only the slice. These helpers let such a loss compute
over the global batch, with gradients flowing back to the process that owns each example
(open_clip's `gather_with_grad`), so N processes give the loss and gradients of one process on
the same global batch.

Only a pass that builds gradients looks across processes: evaluation and validation (under
`torch.no_grad()`) may run on some ranks only, and a collective there would wait forever.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, number of processes) that share the batch; (0, 1) outside data-parallel training
    or in a pass without gradients."""
    if torch.is_grad_enabled() and dist.is_available() and dist.is_initialized():
        size = dist.get_world_size()
        if size > 1:
            return dist.get_rank(), size
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Every process's `x`, concatenated along dim 0 in rank order; the gradient of each slice
    goes back (summed over processes) to the process that gave it."""
    _, size = world()
    if size == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def gather(x: torch.Tensor) -> torch.Tensor:
    """Every process's `x` along dim 0, detached (for sampling, queues). Call it outside
    `torch.no_grad()`: a pass without gradients stays local (see `world`)."""
    _, size = world()
    if size == 1:
        return x.detach()
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts, dim=0)


def share_of_mean(total: torch.Tensor, count: torch.Tensor,
                  floor: float = 1.0) -> torch.Tensor:
    """This process's share of `sum / count` over the global batch: `size * total / count_all`.
    DDP and FSDP average gradients (and the trainer the logged values) over processes, so the
    shares average to the global mean even when processes hold different counts (padding,
    ignored tokens). `floor` bounds the count from below (a sum of weights may be under 1)."""
    _, size = world()
    count_all = count.detach().to(torch.float32).clone()
    if size > 1:
        dist.all_reduce(count_all)
    return total * size / count_all.clamp(min=floor)
