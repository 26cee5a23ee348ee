"""Decoders as torch modules (the faces of mmgraph/components/decoders.py)."""

from __future__ import annotations

import torch
from torch import nn

from mmgraph.components.nn import cache as kv_cache
from mmgraph.components.nn.layers import Block, init_linear_like_bert, make_norm, sincos_2d


class CausalLM(nn.Module):
    """Decoder-only LM (LLaMA with norm="rms", pos="rope", act="swiglu"; OPT with
    norm="layer", pos="learned", act="relu", bias=True, tied=True, pos_offset=2).

    Prefix embeddings (visual tokens) are placed before the embedded token ids; returns the
    logits over every position and the last hidden states.
    """

    def __init__(self, *, vocab: int, width: int, depth: int, heads: int, kv_heads: int | None,
                 ffn: int | None, norm: str, pos: str, act: str, bias: bool, tied: bool,
                 max_len: int, pos_offset: int, rope_theta: float, norm_eps: float | None,
                 taps: tuple[int, ...]):
        super().__init__()
        self.pos_offset = pos_offset
        self.taps = tuple(k if k > 0 else depth + 1 + k for k in taps)  # -1: the last block
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(max_len + pos_offset, width) if pos == "learned" else None
        self.layers = nn.ModuleList([
            Block(width, heads, mlp=ffn or 4 * width, act=act, norm=norm, causal=True,
                  kv_heads=kv_heads, pos="rope" if pos == "rope" else "none", bias=bias,
                  rope_theta=rope_theta, eps=norm_eps) for _ in range(depth)])
        self.norm = make_norm(norm, width, norm_eps)
        self.head = None if tied else nn.Linear(width, vocab, bias=False)
        init_linear_like_bert(self)

    def forward(self, tokens=None, prefix=None, mask=None):
        cache = kv_cache.current()  # generating: the prefix is read on the first step only
        parts = []
        if prefix is not None and (cache is None or cache.at_start):
            parts.append(prefix)
        if tokens is not None:
            parts.append(self.embed(tokens))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        if self.pos is not None:
            n = x.shape[1]
            if cache is None:
                x = x + self.pos.weight[self.pos_offset:self.pos_offset + n]
            else:
                x = x + self.pos(cache.positions(n).long() + self.pos_offset)
        tapped = {}
        for i, layer in enumerate(self.layers):
            x = layer(x, mask=mask)
            if i + 1 in self.taps:
                tapped[i + 1] = x
        hidden = self.norm(x)
        weight = self.embed.weight if self.head is None else self.head.weight
        if self.taps:
            return (hidden @ weight.t(), hidden, *(tapped[k] for k in self.taps))
        return hidden @ weight.t(), hidden


class TransformerDecoder(nn.Module):
    """Pre-norm blocks over x with cross-attention to ctx (when given), and a final norm."""

    def __init__(self, *, in_width: int, ctx_width: int | None = None, depth: int, heads: int,
                 mlp: int | None, act: str, causal: bool):
        super().__init__()
        self.layers = nn.ModuleList([
            Block(in_width, heads, mlp=mlp, act=act, causal=causal, cross=ctx_width is not None,
                  kv_width=ctx_width) for _ in range(depth)])
        self.norm = nn.LayerNorm(in_width)

    def forward(self, x, ctx=None, mask=None):
        for layer in self.layers:
            x = layer(x, ctx=ctx, mask=mask)
        return self.norm(x)


class ObjectQueries(nn.Module):
    def __init__(self, *, n: int, width: int):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(n, width) * 0.02)

    def forward(self, like):
        return self.queries.expand(like.shape[0], -1, -1)


class MAEDecoder(nn.Module):
    """MultiMAE-style decoder: mask tokens with fixed positions for every patch of the output
    image cross-attend to the encoder's tokens, then self-attention blocks, then a linear map
    to pixels (or class scores) per patch."""

    def __init__(self, *, in_width: int, width: int, depth: int, heads: int, patch: int,
                 size: int, channels: int, cross: bool):
        super().__init__()
        self.patch, self.size, self.channels = patch, size, channels
        grid = size // patch
        self.context = nn.Linear(in_width, width)
        self.mask_token = nn.Parameter(torch.zeros(width))
        self.register_buffer("pos", sincos_2d(grid, grid, width), persistent=False)
        self.cross = Block(width, heads, cross=True, kv_width=width)
        self.blocks = nn.ModuleList([Block(width, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, patch * patch * channels)

    def forward(self, x, ctx=None):
        b = x.shape[0]
        memory = self.context(x)
        q = (self.mask_token + self.pos).expand(b, -1, -1).to(memory.dtype)
        h = self.cross(q, ctx=memory)
        for block in self.blocks:
            h = block(h)
        p, g, c = self.patch, self.size // self.patch, self.channels
        pixels = self.out(self.norm(h)).view(b, g, g, p, p, c)
        return pixels.permute(0, 5, 1, 3, 2, 4).reshape(b, c, self.size, self.size)
