"""Connectors as torch modules: projectors, Q-Former, Perceiver resampler, pooling, token
merging (the faces of mmgraph/components/connectors.py)."""

from __future__ import annotations

import torch
from torch import nn

from mmgraph.components.nn.encoders import pool_sequence
from mmgraph.components.nn.layers import Attention, FeedForward, make_act


class Linear(nn.Linear):
    """`linear(out=...)`: an nn.Linear over the last axis (its weights keep torch's names)."""

    def __init__(self, *, in_width: int, out: int, bias: bool):
        super().__init__(in_width, out, bias=bias)


class MLP(nn.Module):
    """Linear layers with an activation between them: LLaVA's `mlp2x_gelu` is layers=2."""

    def __init__(self, *, in_width: int, out: int, hidden: int | None, layers: int, act: str,
                 bias: bool):
        super().__init__()
        hidden = hidden or out
        sizes = [in_width] + [hidden] * (layers - 1) + [out]
        mods: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
            mods.append(nn.Linear(a, b, bias=bias))
            if i < layers - 1:
                mods.append(make_act("silu" if act == "swiglu" else
                                     "gelu" if act == "geglu" else act))
        self.net = nn.Sequential(*mods)

    def forward(self, x):
        return self.net(x)


class QFormerLayer(nn.Module):
    """BERT-style post-norm layer over the queries, with cross-attention to the features."""

    def __init__(self, width, heads, mlp, kv_width, cross: bool, post_norm: bool):
        super().__init__()
        self.post_norm = post_norm
        self.attn = Attention(width, heads)
        self.attn_norm = nn.LayerNorm(width, eps=1e-12)
        self.cross = Attention(width, heads, kv_width=kv_width) if cross else None
        self.cross_norm = nn.LayerNorm(width, eps=1e-12) if cross else None
        self.ffn = FeedForward(width, mlp, "gelu")
        self.ffn_norm = nn.LayerNorm(width, eps=1e-12)

    def forward(self, q, feats):
        if self.post_norm:
            q = self.attn_norm(q + self.attn(q))
            if self.cross is not None:
                q = self.cross_norm(q + self.cross(q, feats))
            return self.ffn_norm(q + self.ffn(q))
        q = q + self.attn(self.attn_norm(q))
        if self.cross is not None:
            q = q + self.cross(self.cross_norm(q), feats)
        return q + self.ffn(self.ffn_norm(q))


class QFormer(nn.Module):
    """BLIP-2's querying transformer: learnable queries that self-attend and cross-attend to
    image features every `cross_every` layers (layers 0, k, 2k, ...)."""

    def __init__(self, *, in_width: int, queries: int, width: int, depth: int, heads: int,
                 mlp: int | None, cross_every: int, window: int | None, vocab: int,
                 post_norm: bool):
        super().__init__()
        self.window = window
        self.queries = nn.Parameter(torch.randn(queries, width) * 0.02)
        self.norm = nn.LayerNorm(width, eps=1e-12)
        self.words = nn.Embedding(vocab, width) if vocab else None
        self.layers = nn.ModuleList([
            QFormerLayer(width, heads, mlp or 4 * width, in_width, i % cross_every == 0,
                         post_norm)
            for i in range(depth)])

    def forward(self, x):
        b = x.shape[0]
        if self.window:  # window-level Q-Former: the same queries over each window
            w = self.window
            x = x.reshape(b * (x.shape[1] // w), w, x.shape[2])
        q = self.norm(self.queries.expand(x.shape[0], -1, -1).to(x.dtype))
        for layer in self.layers:
            q = layer(q, x)
        return q.reshape(b, -1, q.shape[-1])


class PerceiverLayer(nn.Module):
    def __init__(self, width, heads, dim_head, ff_mult):
        super().__init__()
        self.norm_media = nn.LayerNorm(width)
        self.norm_latents = nn.LayerNorm(width)
        self.attn = Attention(width, heads, dim_head=dim_head, bias=False)
        self.ffn_norm = nn.LayerNorm(width)
        self.ffn = FeedForward(width, width * ff_mult, "gelu", bias=False)

    def forward(self, latents, media):
        kv = torch.cat([self.norm_media(media), self.norm_latents(latents)], dim=1)
        latents = latents + self.attn(self.norm_latents(latents), kv)
        return latents + self.ffn(self.ffn_norm(latents))


class PerceiverResampler(nn.Module):
    """Flamingo: a fixed set of latents attends to (features ++ latents), `depth` times."""

    def __init__(self, *, in_width: int, latents: int, depth: int, heads: int, dim_head: int,
                 ff_mult: int):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(latents, in_width) * 0.02)
        self.layers = nn.ModuleList([PerceiverLayer(in_width, heads, dim_head, ff_mult)
                                     for _ in range(depth)])
        self.norm = nn.LayerNorm(in_width)

    def forward(self, x):
        lat = self.latents.expand(x.shape[0], -1, -1).to(x.dtype)
        for layer in self.layers:
            lat = layer(lat, x)
        return self.norm(lat)


class Pool(nn.Module):
    """Sequence to vector; `attention` mode learns one query (CoCa-style attentional pooling)."""

    def __init__(self, *, in_width: int, mode: str, heads: int):
        super().__init__()
        self.mode = mode
        if mode == "attention":
            self.query = nn.Parameter(torch.randn(1, in_width) * 0.02)
            self.attn = Attention(in_width, heads)

    def forward(self, x, mask=None, tokens=None):
        if self.mode == "attention":
            q = self.query.expand(x.shape[0], 1, -1).to(x.dtype)
            return self.attn(q, x, mask=mask)[:, 0]
        return pool_sequence(x, self.mode, tokens=tokens, mask=mask)


def token_merge(x, *, ratio: int, mode: str):
    """Average groups of `ratio` neighbouring tokens (a fixed, export-friendly merge)."""
    b, n, d = x.shape
    return x.view(b, n // ratio, ratio, d).mean(2)


class PromptTokens(nn.Module):
    """Learnable prompt tokens, one set shared by every example of the batch."""

    def __init__(self, *, n: int, width: int):
        super().__init__()
        self.tokens = nn.Parameter(torch.randn(n, width) * 0.02)

    def forward(self, like):
        return self.tokens.expand(like.shape[0], -1, -1)
