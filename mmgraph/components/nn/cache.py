"""The KV cache of one generation request, and the switch that makes layers use it.

While `with decoding(cache):` is active, every causal self-attention call appends its new keys
and values to the cache and attends over all of them, positions continue from the cached
ones, a decoder's prefix (visual tokens) is read only on the first step, and cross-attention
projects its context once and reuses it. Outside the switch nothing changes: training and
`forward` never see a cache.

The cache is ambient (a context variable) rather than an argument so that the generated
modules, blocks and `repeat` stacks need no cache plumbing: the attention calls of a step take
the slots in the order they run, and that order is fixed by the graph. The same objects are
traced into the prefill and decode ONNX graphs, whose past key/value inputs fill the slots.

Masks: `token_mask` [B, tokens so far] is 1 for a real token and 0 for left padding; keys before
the tokens (a prefix) are always real. Positions count real keys only, so a left-padded prompt
gets the same positions, and the same tokens, as the prompt alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

# A module global rather than a ContextVar: torch.compile traces a global read (and guards on
# it), while ContextVar.get breaks its graph. One generation step runs at a time per process.
_ACTIVE: KVCache | None = None


def current() -> KVCache | None:
    """The cache of the generation step running now, or None (training, plain forward)."""
    return _ACTIVE


@contextmanager
def decoding(cache: KVCache) -> Iterator[KVCache]:
    """Run one prefill or decode step with `cache`: `begin` it, then let the layers use it."""
    global _ACTIVE
    cache.begin()
    before, _ACTIVE = _ACTIVE, cache
    try:
        yield cache
    finally:
        _ACTIVE = before


def window(x: torch.Tensor, start: int | None, stop: int | None, *, before: int):
    """`x[:, start:stop]` by absolute position while generating. `x` holds `before` positions
    ahead of the tokens' and, in a one-token step, only its newest positions: the slice is
    taken of those it holds. Outside generation it is the plain slice."""
    cache = current()
    if cache is None:
        return x[:, start:stop]
    held_from = before + cache.token_mask.shape[1] - x.shape[1]  # the first position x holds
    lo = None if start is None else max(start - held_from, 0)
    hi = None if stop is None else max(stop - held_from, 0)
    return x[:, lo:hi]


def runs_held(runs: list[tuple[int, int]], held: int) -> list[tuple[int, int]]:
    """The (modality, length) runs of the last `held` positions of a sequence laid out as
    `runs`: what a generation step holds of a sequence routed by modality."""
    skip = sum(length for _, length in runs) - held
    out = []
    for index, length in runs:
        take = min(length, max(length - skip, 0))
        skip = max(skip - length, 0)
        if take:
            out.append((index, take))
    return out


def runs(segments, n) -> list[tuple[int, int]]:
    """(modality index, length) pairs of a sequence of n tokens, its one None length (the
    modality whose length the spec leaves free) filled in."""
    known = sum(length for _, length in segments if length is not None)
    return [(index, n - known if length is None else length) for index, length in segments]


def held_runs(segments, n):
    """The runs of a routed sequence of n positions; while generating, of the positions a
    step holds (the free-length run is the tokens', which grow by one each step)."""
    cache = current()
    if cache is None:
        return runs(segments, n)
    known = sum(length for _, length in segments if length is not None)
    return runs_held(runs(segments, known + cache.token_mask.shape[1]), n)


class KVCache:
    """Past keys/values per cached self-attention call (in call order), projected context
    keys/values per cross-attention call, and the token mask."""

    def __init__(self, token_mask: torch.Tensor,
                 past: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
                 cross: list[tuple[torch.Tensor, torch.Tensor]] | None = None):
        self.token_mask = token_mask.bool()
        self.self_kv: list[tuple[torch.Tensor, torch.Tensor]] = list(past or [])
        self.cross_kv: list[tuple[torch.Tensor, torch.Tensor]] = list(cross or [])
        self._slot = self._cross_slot = 0
        self.past = 0  # keys cached before this step (an int, or a traced size)
        self.at_start = True
        self._memo = {}

    def begin(self) -> None:
        self._slot = self._cross_slot = 0
        self._memo: dict = {}  # positions and masks, the same for every layer of a step
        self.at_start = not self.self_kv  # the first step (prefill): nothing cached yet
        self.past = self.self_kv[0][0].shape[2] if self.self_kv else 0

    def extend_tokens(self, new_mask: torch.Tensor) -> None:
        """The mask columns of the next step's new tokens (1 = real)."""
        self.token_mask = torch.cat([self.token_mask, new_mask.bool()], dim=1)
        self._memo = {}

    # ------------------------------------------------------------ positions and masks
    def key_mask(self, keys: int) -> torch.Tensor:
        """[B, keys] True for a real key: keys before the tokens (a prefix) are real."""
        extra = keys - self.token_mask.shape[1]
        if isinstance(extra, int) and extra <= 0:
            return self.token_mask[:, -keys:] if extra < 0 else self.token_mask
        prefix = self.token_mask.new_ones(self.token_mask.shape[0], extra)
        return torch.cat([prefix, self.token_mask], dim=1)

    def _once(self, key: tuple, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """`compute()` once per step: every attention layer of a step asks the same."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def key_positions(self, keys: int) -> torch.Tensor:
        """[B, keys] the position of each key, counting real keys only, as float32: the
        type TensorRT computes CumSum and Clip in (exact up to 2**24 positions)."""
        def compute():
            counted = self.key_mask(keys).to(torch.float32).cumsum(1)
            return (counted - 1).clamp(min=0)
        return self._once(("positions", keys), compute)

    def positions(self, new: int) -> torch.Tensor:
        """[B, new] the positions of this step's `new` positions (float32; `.long()` to
        index a table of learned positions)."""
        total = self.past + new
        return self.key_positions(total)[:, total - new:]

    def attention_bias(self, new: int, keys: int, dtype) -> torch.Tensor:
        return self._once(("bias", new, keys, dtype),
                          lambda: self._attention_bias(new, keys, dtype))

    def _attention_bias(self, new: int, keys: int, dtype) -> torch.Tensor:
        """[B, 1, new, keys] 0 where a query may attend, -inf elsewhere: real keys at or
        before the query (causal), and always the query itself, so that a padding row stays
        finite (its output is never read)."""
        device = self.token_mask.device
        key_index = torch.arange(keys, device=device)
        query_index = torch.arange(new, device=device) + (keys - new)
        causal = key_index[None, :] <= query_index[:, None]
        itself = key_index[None, :] == query_index[:, None]
        allowed = (self.key_mask(keys)[:, None, :] & causal[None]) | itself[None]
        bias = torch.zeros(allowed.shape, device=device, dtype=dtype)
        return bias.masked_fill(~allowed, float("-inf"))[:, None]

    # ------------------------------------------------------------ slots
    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This call's past keys/values with the new ones appended (and stored)."""
        i = self._slot
        self._slot += 1
        if i < len(self.self_kv):
            past_k, past_v = self.self_kv[i]
            k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
            self.self_kv[i] = (k, v)
        else:
            self.self_kv.append((k, v))
        return k, v

    def context(self, project: Callable[[], tuple[torch.Tensor, torch.Tensor]]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """This cross-attention call's context keys/values: projected on the first step,
        reused after."""
        i = self._cross_slot
        self._cross_slot += 1
        if i == len(self.cross_kv):
            self.cross_kv.append(project())
        return self.cross_kv[i]
