"""Batches of an epoch in a seeded order that can resume at any batch (exact resume), read by
a `torch.utils.data.DataLoader` with worker processes.

The order is a function of (seed, epoch) only, and an example is a function of its index
only (nothing random happens while reading one), so which worker reads which batch does not
change a single bit: a run with N workers, and one stopped and resumed at any batch, see the
same batches as a run without workers.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Sampler

from mmgraph.train.sources import DataError, FileRef

MAX_AUTO_WORKERS = 4  # automatic workers: enough to keep decoding ahead of a small model


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
    """The batches of one epoch in a seeded order, from batch `start` on (for exact resume),
    read in this process."""
    for indices in EpochSampler(len(dataset), batch_size, seed, epoch, start, drop_last):
        yield collate([dataset[i] for i in indices])


class EpochSampler(Sampler[list[int]]):
    """The index lists of one epoch's batches from batch `start` on; `set` moves it to another
    epoch (a DataLoader with persistent workers keeps one sampler and re-reads it)."""

    def __init__(self, n: int, batch_size: int = 1, seed: int = 0, epoch: int = 0,
                 start: int = 0, drop_last: bool = True):
        self.n, self.drop_last = n, drop_last
        self.set(batch_size, seed, epoch, start)

    def set(self, batch_size: int, seed: int, epoch: int, start: int = 0) -> None:
        if batch_size < 1:
            raise DataError(f"batch size must be at least 1, got {batch_size}")
        self.batch_size, self.seed, self.epoch, self.start = batch_size, seed, epoch, start

    def __len__(self) -> int:
        return max(0, len_batches(self.n, self.batch_size, self.drop_last) - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        order = epoch_order(self.n, self.seed, self.epoch).tolist()
        size = self.batch_size
        for b in range(self.start, len_batches(self.n, size, self.drop_last)):
            yield order[b * size:(b + 1) * size]


def auto_workers(source) -> int:
    """Worker processes when the train setting `workers` is not given: none for examples held
    in memory (starting workers costs more than it saves), else up to MAX_AUTO_WORKERS when
    examples are files to decode (images, audio)."""
    if len(source) == 0 or not any(isinstance(v, FileRef) for v in source.raw(0).values()):
        return 0
    return max(0, min(MAX_AUTO_WORKERS, (os.cpu_count() or 1) - 1))


class ReadFailure:
    """A DataError met in a worker, sent back as its message: the DataLoader would otherwise
    re-raise it with the worker's traceback pasted into the text."""

    def __init__(self, message: str):
        self.message = message


class _Reading:
    """The dataset as workers read it: a DataError becomes a ReadFailure."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        try:
            return self.dataset[i]
        except DataError as exc:
            return ReadFailure(str(exc))


def _collate(items):
    failed = next((item for item in items if isinstance(item, ReadFailure)), None)
    return failed if failed is not None else collate(items)


class Loader:
    """One DataLoader for a whole run: `epoch(...)` gives the batches of one epoch from batch
    `start` on. Workers (if any) start once and persist across epochs and stages; the
    DataLoader's seeds come from its own generator, never from the global RNG, so reading
    data does not move the training's random numbers."""

    def __init__(self, dataset, workers: int = 0, seed: int = 0, pin_memory: bool = False,
                 drop_last: bool = True):
        if workers < 0:
            raise DataError(f"workers must be 0 or more, got {workers}")
        self.workers = workers
        self.sampler = EpochSampler(len(dataset), drop_last=drop_last)
        if workers:
            # a tokenizer's own thread pool must not be shared across a fork
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.loader = DataLoader(
            _Reading(dataset), batch_sampler=self.sampler, num_workers=workers,
            collate_fn=_collate, pin_memory=pin_memory, persistent_workers=workers > 0,
            prefetch_factor=4 if workers else None,
            generator=torch.Generator().manual_seed(seed))

    def epoch(self, batch_size: int, seed: int, epoch: int,
              start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        self.sampler.set(batch_size, seed, epoch, start)
        for batch in self.loader:
            if isinstance(batch, ReadFailure):
                raise DataError(batch.message)
            yield batch

    def close(self) -> None:
        """Stop the worker processes now rather than when the loader is collected."""
        iterator = getattr(self.loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self.loader._iterator = None
