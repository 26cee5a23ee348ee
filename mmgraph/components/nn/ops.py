"""Weightless operations as functions (the faces of mmgraph/components/ops.py).

The generated code calls these directly (`mm.ops.l2norm(x)`); a component without weights
needs no module. Inputs come by position (or by port name when optional), parameters by
keyword. Functions with several outputs return a tuple in the component's port order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmgraph.components.nn import cache as kv_cache
from mmgraph.components.nn.global_batch import gather, gather_with_grad, world


def l2norm(x):
    return F.normalize(x.float(), dim=-1).to(x.dtype)  # the reduction in fp32


def gelu(x):
    return F.gelu(x)


def relu(x):
    return F.relu(x)


def silu(x):
    return F.silu(x)


def tanh(x):
    return torch.tanh(x)


def sigmoid(x):
    return torch.sigmoid(x)


def softmax(x):
    return torch.softmax(x, dim=-1)


def detach(x):
    return x.detach()


def dropout(x, *, p: float, training: bool):
    return F.dropout(x, p=p, training=training)


def concat(*xs, context_parts: int = 0):
    """Along positions. While generating, the first `context_parts` inputs (computed once per
    request) are joined on the first step only: later steps hold only new positions."""
    cache = kv_cache.current()
    if cache is not None and not cache.at_start:
        xs = xs[context_parts:]
    return torch.cat(xs, dim=1) if len(xs) > 1 else xs[0]


def concat_width(*xs):
    return torch.cat(xs, dim=-1)


def batch_concat(*xs):
    return torch.cat(xs, dim=0)


def hard_negatives(a, b, pick):
    """ALBEF: for row i, sample a partner j != i with probability softmax(a_i . b_j).

    Under data-parallel training the partner comes from the global batch: every process draws
    for all rows alike (same seed) and keeps its own, and `pick` is gathered with gradients,
    so N processes sample and learn as one process on the same batch."""
    rank, _ = world()
    all_a, all_b = gather(a), gather(b)
    with torch.no_grad():
        sim = all_a @ all_b.t()
        sim.fill_diagonal_(float("-inf"))
        weights = torch.softmax(sim.float(), dim=1)
        idx = torch.multinomial(weights, 1).squeeze(1)[rank * len(a):(rank + 1) * len(a)]
    return gather_with_grad(pick)[idx]


def _drawn(draw, like, generator, shape=None):
    """`draw(shape)` for this process's rows of the global batch: every process draws for all
    rows alike and keeps its own, so N processes mask as one would (same seed everywhere)."""
    rank, size = world()
    shape = tuple(like.shape if shape is None else shape)
    rows = shape[0]
    out = draw((rows * size,) + shape[1:], device=like.device, generator=generator)
    return out[rank * rows:(rank + 1) * rows]


def mask_tokens(tokens, *, prob: float, mask_id: int, vocab: int | None,
                generator: torch.Generator | None = None):
    """BERT masking: pick `prob` of the positions; of those 80% become [MASK], 10% a random
    token, 10% stay. Returns the corrupted ids and the mask of picked positions."""
    picked = _drawn(torch.rand, tokens, generator) < prob
    roll = _drawn(torch.rand, tokens, generator)
    out = tokens.masked_fill(picked & (roll < 0.8), mask_id)
    if vocab:
        random = _drawn(lambda shape, **kw: torch.randint(vocab, shape, **kw), tokens, generator)
        out = torch.where(picked & (roll >= 0.8) & (roll < 0.9), random, out)
    return out, picked


def mask_features(x, *, prob: float, training: bool,
                  generator: torch.Generator | None = None):
    """LXMERT/UNITER: while training, each feature vector (a region) is zeroed with
    probability `prob`, drawn for the global batch like `mask_tokens`. Returns the masked
    features and the mask of zeroed positions; at inference nothing is masked."""
    if not training:
        return x, torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
    picked = _drawn(torch.rand, x, generator, shape=x.shape[:2]) < prob
    return x.masked_fill(picked[..., None], 0), picked


def token_mask(x, *, keep: int, training: bool, generator: torch.Generator | None = None):
    """Keep `keep` tokens per example (MAE): a random subset while training, evenly spaced
    tokens in eval mode (deterministic, so exported graphs agree with PyTorch). Returns the
    kept tokens and a mask that is true for the dropped positions."""
    b, n, d = x.shape
    if training:
        scores = _drawn(torch.rand, x, generator, shape=(b, n))
    else:  # rank tokens by a fixed stride pattern: 0, n/keep, 2n/keep, ... first
        pos = torch.arange(n, device=x.device, dtype=torch.float32)
        scores = (pos * keep) % n + pos / n
        scores = scores.expand(b, n)
    kept = scores.argsort(dim=1)[:, :keep].sort(dim=1).values
    positions = torch.arange(n, device=x.device)
    mask = ~(kept[:, :, None] == positions[None, None, :]).any(dim=1)  # (export-friendly)
    return torch.gather(x, 1, kept[..., None].expand(-1, -1, d)), mask
