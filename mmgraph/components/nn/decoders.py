"""Decoders and heads as torch modules."""

from __future__ import annotations

import torch
from torch import nn

from mmgraph.components.nn.layers import (
    Block,
    FeedForward,
    init_linear_like_bert,
    make_act,
    make_norm,
    sincos_2d,
)


class CausalLM(nn.Module):
    """Decoder-only LM (LLaMA with norm="rms", pos="rope", act="swiglu"; OPT with
    norm="layer", pos="learned", act="relu", bias=True, tied=True, pos_offset=2).

    Prefix embeddings (visual tokens) are placed before the embedded token ids; returns the
    logits over every position and the last hidden states.
    """

    def __init__(self, *, vocab: int, width: int, depth: int, heads: int,
                 kv_heads: int | None = None, ffn: int | None = None, norm: str = "rms",
                 pos: str = "rope", act: str = "swiglu", bias: bool = False, tied: bool = False,
                 max_len: int = 4096, pos_offset: int = 0, rope_theta: float = 10000.0):
        super().__init__()
        self.pos_offset = pos_offset
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(max_len + pos_offset, width) if pos == "learned" else None
        self.layers = nn.ModuleList([
            Block(width, heads, mlp=ffn or 4 * width, act=act, norm=norm, causal=True,
                  kv_heads=kv_heads, pos="rope" if pos == "rope" else "none", bias=bias,
                  rope_theta=rope_theta) for _ in range(depth)])
        self.norm = make_norm(norm, width)
        self.head = None if tied else nn.Linear(width, vocab, bias=False)
        init_linear_like_bert(self)

    def forward(self, tokens=None, prefix=None, mask=None):
        parts = []
        if prefix is not None:
            parts.append(prefix)
        if tokens is not None:
            parts.append(self.embed(tokens))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        if self.pos is not None:
            n = x.shape[1]
            x = x + self.pos.weight[self.pos_offset:self.pos_offset + n]
        for layer in self.layers:
            x = layer(x, mask=mask)
        hidden = self.norm(x)
        weight = self.embed.weight if self.head is None else self.head.weight
        return hidden @ weight.t(), hidden


class TransformerDecoder(nn.Module):
    """Pre-norm blocks over x with cross-attention to ctx (when given), and a final norm."""

    def __init__(self, *, in_width: int, depth: int, heads: int, ctx_width: int | None = None,
                 mlp: int | None = None, act: str = "gelu", causal: bool = False,
                 width: int | None = None):
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
    def __init__(self, *, width: int, n: int = 100):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(n, width) * 0.02)

    def forward(self, like):
        return self.queries.expand(like.shape[0], -1, -1)


class MAEDecoder(nn.Module):
    """MultiMAE-style decoder: mask tokens with fixed positions for every patch of the output
    image cross-attend to the encoder's tokens, then self-attention blocks, then a linear map
    to pixels (or class scores) per patch."""

    def __init__(self, *, in_width: int, width: int = 256, depth: int = 2, heads: int = 8,
                 patch: int = 16, size: int = 224, channels: int = 3, cross: bool = False,
                 ctx_width: int | None = None):
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


class Classifier(nn.Module):
    def __init__(self, *, in_width: int, classes: int, hidden: int | None = None,
                 bias: bool = True):
        super().__init__()
        if hidden:
            self.net = nn.Sequential(nn.Linear(in_width, hidden), nn.GELU(),
                                     nn.Linear(hidden, classes, bias=bias))
        else:
            self.net = nn.Linear(in_width, classes, bias=bias)

    def forward(self, x):
        return self.net(x)


class LMHead(nn.Module):
    """Vocabulary logits; `transform=True` adds BERT's dense + GELU + LayerNorm first."""

    def __init__(self, *, in_width: int, vocab: int, bias: bool = False,
                 transform: bool = False):
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(in_width, in_width), nn.GELU(),
                                       nn.LayerNorm(in_width, eps=1e-12)) if transform else None
        self.decoder = nn.Linear(in_width, vocab, bias=bias)

    def forward(self, x):
        if self.transform is not None:
            x = self.transform(x)
        return self.decoder(x)


class ITMHead(nn.Linear):
    def __init__(self, *, in_width: int):
        super().__init__(in_width, 2)


class Regression(nn.Module):
    def __init__(self, *, in_width: int, out: int, hidden: int | None = None):
        super().__init__()
        self.net = nn.Linear(in_width, out) if not hidden else nn.Sequential(
            nn.Linear(in_width, hidden), nn.GELU(), nn.Linear(hidden, out))

    def forward(self, x):
        return self.net(x)


class BoxHead(nn.Module):
    """DETR's box MLP: 3 layers, sigmoid to normalised (cx, cy, w, h)."""

    def __init__(self, *, in_width: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or in_width
        self.net = nn.Sequential(nn.Linear(in_width, hidden), make_act("relu"),
                                 nn.Linear(hidden, hidden), make_act("relu"),
                                 nn.Linear(hidden, 4))

    def forward(self, x):
        return self.net(x).sigmoid()


__all__ = ["BoxHead", "CausalLM", "Classifier", "FeedForward", "ITMHead", "LMHead",
           "MAEDecoder", "ObjectQueries", "Regression", "TransformerDecoder"]
