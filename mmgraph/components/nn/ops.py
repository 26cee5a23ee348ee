"""Weightless operations and weightless losses as functions.

The generated code calls these directly (`mm.ops.l2norm(x)`); a component without weights
needs no module. Functions with several outputs return a tuple in the component's port order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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


def dropout(x, p: float = 0.1, training: bool = False):
    return F.dropout(x, p=p, training=training)


def concat(*xs):
    return torch.cat(xs, dim=1)


def concat_width(*xs):
    return torch.cat(xs, dim=-1)


def batch_concat(*xs):
    return torch.cat(xs, dim=0)


def token_merge(x, ratio: int = 2, mode: str = "similarity"):
    """Average groups of `ratio` neighbouring tokens (a fixed, export-friendly merge)."""
    b, n, d = x.shape
    return x.view(b, n // ratio, ratio, d).mean(2)


def hard_negatives(a, b, pick):
    """ALBEF: for row i, sample a partner j != i with probability softmax(a_i . b_j)."""
    with torch.no_grad():
        sim = a @ b.t()
        sim.fill_diagonal_(float("-inf"))
        weights = torch.softmax(sim.float(), dim=1)
        idx = torch.multinomial(weights, 1).squeeze(1)
    return pick[idx]


def mask_tokens(tokens, prob: float = 0.15, mask_id: int = 103, vocab: int | None = None,
                generator: torch.Generator | None = None):
    """BERT masking: pick `prob` of the positions; of those 80% become [MASK], 10% a random
    token, 10% stay. Returns the corrupted ids and the mask of picked positions."""
    picked = torch.rand(tokens.shape, device=tokens.device, generator=generator) < prob
    roll = torch.rand(tokens.shape, device=tokens.device, generator=generator)
    out = tokens.masked_fill(picked & (roll < 0.8), mask_id)
    if vocab:
        random = torch.randint(vocab, tokens.shape, device=tokens.device, generator=generator)
        out = torch.where(picked & (roll >= 0.8) & (roll < 0.9), random, out)
    return out, picked


def token_mask(x, keep: int, training: bool = False, generator: torch.Generator | None = None):
    """Keep `keep` tokens per example (MAE): a random subset while training, evenly spaced
    tokens in eval mode (deterministic, so exported graphs agree with PyTorch). Returns the
    kept tokens and a mask that is true for the dropped positions."""
    b, n, d = x.shape
    if training:
        scores = torch.rand(b, n, device=x.device, generator=generator)
    else:  # rank tokens by a fixed stride pattern: 0, n/keep, 2n/keep, ... first
        pos = torch.arange(n, device=x.device, dtype=torch.float32)
        scores = (pos * keep) % n + pos / n
        scores = scores.expand(b, n)
    kept = scores.argsort(dim=1)[:, :keep].sort(dim=1).values
    positions = torch.arange(n, device=x.device)
    mask = ~(kept[:, :, None] == positions[None, None, :]).any(dim=1)  # (export-friendly)
    return torch.gather(x, 1, kept[..., None].expand(-1, -1, d)), mask


# ---------------------------------------------------------------- weightless losses

def itm(pos, neg):
    """Matching: positives are class 1, negatives class 0."""
    logits = torch.cat([pos, neg], dim=0)
    labels = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))]).long().to(pos.device)
    return F.cross_entropy(logits.float(), labels)


def next_token(logits, tokens, mask=None, skip: int = 0, ignore_index: int = -100):
    """Logits at position skip + i - 1 predict token i (i >= 1)."""
    pred = logits[:, skip:-1] if tokens.shape[1] > 1 else logits[:, skip:skip]
    target = tokens[:, 1:]
    if mask is not None:
        target = target.masked_fill(~mask[:, 1:].bool(), ignore_index)
    return F.cross_entropy(pred.reshape(-1, pred.shape[-1]).float(), target.reshape(-1),
                           ignore_index=ignore_index)


def mlm(logits, tokens, mask):
    target = tokens.masked_fill(~mask.bool(), -100)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1),
                           ignore_index=-100)


def _patch_mask(mask, size_hw, patch):
    """A per-patch mask [B, N] to a per-pixel mask [B, 1, H, W]."""
    h, w = size_hw
    grid = mask.view(mask.shape[0], h // patch, w // patch).to(torch.float32)
    return grid.repeat_interleave(patch, 1).repeat_interleave(patch, 2)[:, None]


def masked_reconstruction(pred, target, mask=None, metric: str = "mse", norm_pix: bool = False,
                          patch: int = 16):
    if metric == "ce":
        per = F.cross_entropy(pred.float(), target[:, 0].long(), reduction="none")[:, None]
    else:
        target = target.to(pred.dtype)
        if norm_pix:
            mean = target.mean(dim=(-2, -1), keepdim=True)
            std = target.std(dim=(-2, -1), keepdim=True)
            target = (target - mean) / (std + 1e-6)
        per = (pred - target).pow(2) if metric == "mse" else (pred - target).abs()
        per = per.float().mean(1, keepdim=True)
    if mask is None or pred.dim() != 4:
        return per.mean()
    m = _patch_mask(mask, pred.shape[-2:], patch)
    return (per * m).sum() / m.sum().clamp(min=1)


def cross_entropy(logits, labels, label_smoothing: float = 0.0, ignore_index: int = -100):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                           label_smoothing=label_smoothing, ignore_index=ignore_index)


def kl_distill(student, teacher, temperature: float = 1.0):
    t = temperature
    return F.kl_div(F.log_softmax(student.float() / t, -1), F.softmax(teacher.float() / t, -1),
                    reduction="batchmean") * t * t


def feature_distill(student, teacher, metric: str = "cosine"):
    teacher = teacher.detach()
    if metric == "cosine":
        return (1 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()
    if metric == "mse":
        return F.mse_loss(student.float(), teacher.float())
    return F.smooth_l1_loss(student.float(), teacher.float())


def mse(pred, target):
    return F.mse_loss(pred.float(), target.float())


def moe_aux(x, *modules):
    """The sum of the load-balancing losses that the MoE layers inside `modules` computed in
    this forward pass (the compiler passes the submodules upstream of x)."""
    from mmgraph.components.nn.fusion import MoEFFN

    losses = [m.aux for mod in modules for m in mod.modules()
              if isinstance(m, MoEFFN) and m.aux is not None]
    return torch.stack([a.float() for a in losses]).sum() if losses else x.sum() * 0
