"""Torch faces of mmgraph/components/vision_grids.py: InternVL's pixel shuffle and Cambrian's
spatial vision aggregator (local 2-D cross-attention)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mmgraph.errors import InputError


def pixel_shuffle(x, *, ratio: int):
    """InternVL's `pixel_shuffle` (ps_version v2) of a square grid of tokens: the token at row
    i, column j of each r x r block lands at width offset (i * r + j) * D. The four steps are
    InternVL's own, so its checkpoints' projector weights read the same layout."""
    b, n, d = x.shape
    side = math.isqrt(n)
    if side * side != n or side % ratio:
        raise InputError(f"pixel_shuffle(ratio={ratio}) folds a square grid of tokens whose "
                         f"side is a multiple of {ratio}, but it was given {n} tokens")
    x = x.reshape(b, side, side, d)
    x = x.reshape(b, side, side // ratio, d * ratio)  # fold r neighbouring columns
    x = x.permute(0, 2, 1, 3)
    x = x.reshape(b, side // ratio, side // ratio, d * ratio * ratio)  # and r rows
    x = x.permute(0, 2, 1, 3)
    return x.reshape(b, -1, d * ratio * ratio)


class LocalCrossAttention(nn.Module):
    """G x G learnable queries; query (u, v) attends to window (u, v) of every feature grid
    (a grid of R x C features has windows of R/G x C/G), keys of all grids joined. Each grid
    has its own normed key and value projections, as Cambrian's MultiKVCrossAttention, and
    (window_pos) its own learned embedding of the positions inside a window; the queries are
    normed before their projection and the result is added back to them."""

    def __init__(self, *, ctx_shapes: tuple[tuple[int, int, int], ...], grid: int, width: int,
                 heads: int, bias: bool, window_pos: bool):
        super().__init__()
        self.shapes, self.grid, self.heads = tuple(tuple(s) for s in ctx_shapes), grid, heads
        self.queries = nn.Parameter(torch.randn(grid * grid, width) * 0.02)
        self.q_norm = nn.LayerNorm(width)
        self.q = nn.Linear(width, width, bias=bias)
        self.kv_norms = nn.ModuleList([nn.LayerNorm(c) for _, _, c in self.shapes])
        self.k = nn.ModuleList([nn.Linear(c, width, bias=bias) for _, _, c in self.shapes])
        self.v = nn.ModuleList([nn.Linear(c, width, bias=bias) for _, _, c in self.shapes])
        self.o = nn.Linear(width, width, bias=bias)
        self.window_pos = nn.ParameterList([
            nn.Parameter(torch.randn((r // grid) * (c // grid), ch) * 0.02)
            for r, c, ch in self.shapes]) if window_pos else None

    def windows(self, x, shape):
        """[B, R*C, D] or [B, D, R, C] -> [B * G*G, (R/G) * (C/G), D], window by window."""
        rows, cols, _ = shape
        g = self.grid
        if x.dim() == 4:
            x = x.flatten(2).transpose(1, 2)
        b, _, d = x.shape
        x = x.reshape(b, g, rows // g, g, cols // g, d).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(b * g * g, (rows // g) * (cols // g), d)

    def forward(self, *ctx):
        b = ctx[0].shape[0]
        g2, width = self.queries.shape
        dim_head = width // self.heads
        queries = self.queries.to(ctx[0].dtype).expand(b, g2, width)
        q = self.q(self.q_norm(queries)).reshape(b * g2, 1, self.heads, dim_head)
        keys, values = [], []
        for i, (x, shape) in enumerate(zip(ctx, self.shapes)):
            w = self.windows(x, shape)
            if self.window_pos is not None:
                w = w + self.window_pos[i].to(w.dtype)
            w = self.kv_norms[i](w)
            keys.append(self.k[i](w))
            values.append(self.v[i](w))
        k = torch.cat(keys, 1).reshape(b * g2, -1, self.heads, dim_head)
        v = torch.cat(values, 1).reshape(b * g2, -1, self.heads, dim_head)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                             v.transpose(1, 2))  # [B*G*G, heads, 1, dh]
        return queries + self.o(out.transpose(1, 2).reshape(b, g2, width))
