"""Batches of an epoch in a seeded order that can resume at any batch (exact resume)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch

from mmgraph.train.sources import DataError


def len_batches(n: int, batch_size: int, drop_last: bool = True) -> int:
    """How many batches an epoch of n examples gives."""
    return n // batch_size if drop_last else math.ceil(n / batch_size)


def collate(items: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack examples into batch tensors (the batch axis first)."""
    return {k: torch.stack([item[k] for item in items]) for k in items[0]}


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled order of an epoch: a function of (seed, epoch) only."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))


def batches(dataset, batch_size: int, seed: int, epoch: int, start: int = 0,
            drop_last: bool = True) -> Iterator[dict[str, torch.Tensor]]:
    """The batches of one epoch in a seeded order, from batch `start` on (for exact resume).

    No worker processes: the order and contents depend only on (seed, epoch, start).
    """
    if batch_size < 1:
        raise DataError(f"batch size must be at least 1, got {batch_size}")
    n = len(dataset)
    order = epoch_order(n, seed, epoch).tolist()
    for b in range(start, len_batches(n, batch_size, drop_last)):
        yield collate([dataset[i] for i in order[b * batch_size:(b + 1) * batch_size]])
