"""Fusion as torch modules: cross- and co-attention, mixtures of experts, modality-routed
layers (the faces of mmgraph/components/fusion.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmgraph.components.nn import cache as kv_cache
from mmgraph.components.nn.layers import (
    Attention,
    Block,
    FeedForward,
    apply_rope,
    attend_cached,
    make_norm,
    rope_tables,
    softmax_fp32_attention,
)
from mmgraph.components.nn.modifiers import pin_frozen


class CrossAttention(nn.Module):
    def __init__(self, *, in_width: int, ctx_width: int, heads: int, bias: bool, dropout: float):
        super().__init__()
        self.attn = Attention(in_width, heads, kv_width=ctx_width, bias=bias, dropout=dropout)

    def forward(self, x, ctx, mask=None):
        return self.attn(x, ctx, mask=mask)


class GatedCrossAttention(nn.Module):
    """Flamingo's gated cross-attention dense block (gates at 0 leave the LM unchanged)."""

    def __init__(self, *, in_width: int, ctx_width: int, heads: int, dim_head: int,
                 ff_mult: int):
        super().__init__()
        self.norm = nn.LayerNorm(in_width)
        self.attn = Attention(in_width, heads, kv_width=ctx_width, dim_head=dim_head, bias=False)
        self.attn_gate = nn.Parameter(torch.tensor(0.0))
        self.ffn_norm = nn.LayerNorm(in_width)
        self.ffn = FeedForward(in_width, in_width * ff_mult, "gelu", bias=False)
        self.ffn_gate = nn.Parameter(torch.tensor(0.0))

    def forward(self, x, ctx, mask=None):
        x = x + torch.tanh(self.attn_gate) * self.attn(self.norm(x), ctx, mask=mask)
        return x + torch.tanh(self.ffn_gate) * self.ffn(self.ffn_norm(x))


class CoAttention(nn.Module):
    """Two streams, each attending to the other (ViLBERT/LXMERT co-attention layer)."""

    def __init__(self, *, in_width: int, heads: int, ffn: bool):
        super().__init__()
        self.a_block = Block(in_width, heads, cross=True)
        self.b_block = Block(in_width, heads, cross=True)
        if not ffn:  # attention only: no feed-forward weights at all, so none go unused
            for block in (self.a_block, self.b_block):
                block.ffn = block.norm2 = None

    @staticmethod
    def _attend(block: Block, x, ctx):
        """Block's pre-norm forward, with its feed-forward sub-layer when it has one."""
        x = x + block.attn(block.norm1(x))
        x = x + block.cross(block.norm_cross(x), ctx)
        return x if block.ffn is None else x + block.ffn(block.norm2(x))

    def forward(self, a, b):
        return self._attend(self.a_block, a, b), self._attend(self.b_block, b, a)


class MoEFFN(nn.Module):
    """Top-k mixture of expert FFNs (Mixtral-style renormalised weights). Returns the output
    and the Switch-Transformer load-balancing loss: E * sum_e(fraction_e * mean_prob_e)."""

    def __init__(self, *, in_width: int, experts: int, top_k: int, hidden: int | None,
                 mult: float, act: str, router_bias: bool, capacity_factor: float | None):
        super().__init__()
        self.top_k = top_k
        hidden = hidden or int(in_width * mult)
        self.router = nn.Linear(in_width, experts, bias=router_bias)
        self.experts = nn.ModuleList([FeedForward(in_width, hidden, act) for _ in range(experts)])
        self.aux = None

    def forward(self, x):
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        probs = F.softmax(self.router(flat), dim=-1, dtype=torch.float32)
        weights, chosen = probs.topk(self.top_k, dim=-1)
        weights = (weights / weights.sum(-1, keepdim=True)).to(x.dtype)
        out = torch.zeros_like(flat)
        if flat.device.type == "meta":  # shape-only runs (`mmgraph stats`): the expected load
            load = max(1, flat.shape[0] * self.top_k // len(self.experts))
            for expert in self.experts:
                out[:load] += expert(flat[:load])
            self.aux = probs.sum() * 0
            return out.reshape(shape), self.aux
        for e, expert in enumerate(self.experts):
            hit = chosen == e  # [T, k]
            rows = hit.any(-1).nonzero(as_tuple=True)[0]
            if rows.numel():
                w = (weights * hit).sum(-1)[rows, None]
                out[rows] += w * expert(flat[rows])
        fraction = F.one_hot(chosen, len(self.experts)).float().sum(1).mean(0) / self.top_k
        aux = len(self.experts) * (fraction * probs.mean(0)).sum()
        self.aux = aux  # for moe_aux(...) over a whole tower
        return out.reshape(shape), aux


class _Routed(nn.Module):
    """Per-modality copies of a sub-layer; each token goes through its modality's copy.

    `segments` is the layout of the sequence: (modality index, length) pairs in order, as the
    compiler derives it from the concat that built the sequence; one length may be None, the
    rest of the sequence.
    """

    def __init__(self, modalities, frozen_modalities, make):
        super().__init__()
        self.modalities = list(modalities)
        self.per = nn.ModuleDict({m: make() for m in self.modalities})
        for m in frozen_modalities:
            pin_frozen(self.per[m])

    def route(self, x, segments, fn):
        outs, start = [], 0
        for index, length in kv_cache.held_runs(segments, x.shape[1]):
            piece = x[:, start:start + length]
            outs.append(fn(self.per[self.modalities[index]], piece))
            start += length
        return torch.cat(outs, dim=1)


class ModalityFFN(_Routed):
    def __init__(self, *, in_width: int, modalities, frozen_modalities, hidden: int | None,
                 mult: float, act: str):
        super().__init__(modalities, frozen_modalities, lambda: nn.ModuleDict({
            "norm": make_norm("rms", in_width),
            "ffn": FeedForward(in_width, hidden or int(in_width * mult), act, bias=False)}))

    def forward(self, x, segments):
        return self.route(x, segments, lambda m, piece: m["ffn"](m["norm"](piece)))


class ModalityAttention(nn.Module):
    """Shared self-attention over the joint sequence; Q/K/V/O projections and the pre-norm
    are per modality (LlamaFusion)."""

    def __init__(self, *, in_width: int, heads: int, modalities, frozen_modalities,
                 kv_heads: int | None, causal: bool, pos: str):
        super().__init__()
        self.modalities = list(modalities)
        self.per = nn.ModuleDict({m: nn.ModuleDict({
            "norm": make_norm("rms", in_width),
            "attn": Attention(in_width, heads, kv_heads=kv_heads, bias=False, causal=causal,
                              pos=pos)}) for m in self.modalities})
        for m in frozen_modalities:
            pin_frozen(self.per[m])
        self.heads, self.kv_heads = heads, kv_heads or heads
        self.dim_head = in_width // heads
        self.causal, self.pos = causal, pos

    def forward(self, x, segments, mask=None):
        b, n, _ = x.shape
        segments = kv_cache.held_runs(segments, n)
        qs, ks, vs, start = [], [], [], 0
        for index, length in segments:
            layer = self.per[self.modalities[index]]
            h = layer["norm"](x[:, start:start + length])
            a = layer["attn"]
            qs.append(a.q(h))
            ks.append(a.k(h))
            vs.append(a.v(h))
            start += length
        q = torch.cat(qs, 1).view(b, n, self.heads, self.dim_head).transpose(1, 2)
        k = torch.cat(ks, 1).view(b, n, self.kv_heads, self.dim_head).transpose(1, 2)
        v = torch.cat(vs, 1).view(b, n, self.kv_heads, self.dim_head).transpose(1, 2)
        cache = kv_cache.current()
        if cache is not None:  # a generation step: attend over the cached positions
            out = attend_cached(q, k, v, cache, pos=self.pos, rope_theta=10000.0)
            return self.project_out(out, segments)
        if self.pos == "rope":
            cos, sin = rope_tables(n, self.dim_head, 10000.0, x.device, q.dtype)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.kv_heads != self.heads:
            k = k.repeat_interleave(self.heads // self.kv_heads, 1)
            v = v.repeat_interleave(self.heads // self.kv_heads, 1)
        if q.dtype != torch.float32 and torch.onnx.is_in_onnx_export():
            out = softmax_fp32_attention(q, k, v, causal=self.causal)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.project_out(out, segments)

    def project_out(self, out, segments):
        """Each run's heads [B, H, N, Dh] through its modality's output projection."""
        b, _, n, _ = out.shape
        out = out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head)
        pieces, start = [], 0
        for index, length in segments:
            pieces.append(self.per[self.modalities[index]]["attn"].o(out[:, start:start + length]))
            start += length
        return torch.cat(pieces, 1)
