"""Fusion layers as torch modules: attention of every kind, MoE, modality-routed layers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmgraph.components.nn.layers import Attention, Block, FeedForward, make_norm


class LayerNorm(nn.LayerNorm):
    def __init__(self, *, in_width: int, eps: float = 1e-5, bias: bool = True):
        super().__init__(in_width, eps=eps, bias=bias)


class RMSNorm(nn.Module):
    def __init__(self, *, in_width: int, eps: float = 1e-6):
        super().__init__()
        self.norm = make_norm("rms", in_width, eps)

    def forward(self, x):
        return self.norm(x)


class TanhGate(nn.Module):
    """x * tanh(alpha): alpha starts at 0, so a gated branch starts switched off."""

    def __init__(self, *, init: float = 0.0):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x):
        return x * torch.tanh(self.alpha)


class SelfAttention(nn.Module):
    def __init__(self, *, in_width: int, heads: int, kv_heads: int | None = None,
                 causal: bool = False, bias: bool = True, pos: str = "none",
                 dropout: float = 0.0):
        super().__init__()
        self.attn = Attention(in_width, heads, kv_heads=kv_heads, bias=bias, causal=causal,
                              pos=pos, dropout=dropout)

    def forward(self, x, mask=None):
        return self.attn(x, mask=mask)


class CrossAttention(nn.Module):
    def __init__(self, *, in_width: int, ctx_width: int, heads: int, kv_width: int | None = None,
                 bias: bool = True, dropout: float = 0.0):
        super().__init__()
        self.attn = Attention(in_width, heads, kv_width=ctx_width, bias=bias, dropout=dropout)

    def forward(self, x, ctx, mask=None):
        return self.attn(x, ctx, mask=mask)


class GatedCrossAttention(nn.Module):
    """Flamingo's gated cross-attention dense block (gates at 0 leave the LM unchanged)."""

    def __init__(self, *, in_width: int, ctx_width: int, heads: int, dim_head: int = 64,
                 ff_mult: int = 4, kv_width: int | None = None):
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

    def __init__(self, *, in_width: int, heads: int, ffn: bool = True):
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


class FFN(nn.Module):
    def __init__(self, *, in_width: int, mult: float = 4.0, hidden: int | None = None,
                 act: str = "gelu", bias: bool = True, dropout: float = 0.0):
        super().__init__()
        self.ffn = FeedForward(in_width, hidden or int(in_width * mult), act, bias, dropout)

    def forward(self, x):
        return self.ffn(x)


class MoEFFN(nn.Module):
    """Top-k mixture of expert FFNs (Mixtral-style renormalised weights). Returns the output
    and the Switch-Transformer load-balancing loss: E * sum_e(fraction_e * mean_prob_e)."""

    def __init__(self, *, in_width: int, experts: int, top_k: int = 2, hidden: int | None = None,
                 mult: float = 4.0, act: str = "gelu", router_bias: bool = False,
                 capacity_factor: float | None = None):
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
    compiler derives it from the concat that built the sequence.
    """

    def __init__(self, modalities, frozen_modalities, make):
        super().__init__()
        self.modalities = list(modalities)
        self.per = nn.ModuleDict({m: make() for m in self.modalities})
        for m in frozen_modalities:
            self.per[m].requires_grad_(False)

    def route(self, x, segments, fn):
        outs, start = [], 0
        for index, length in segments:
            piece = x[:, start:start + length]
            outs.append(fn(self.per[self.modalities[index]], piece))
            start += length
        return torch.cat(outs, dim=1)


class ModalityFFN(_Routed):
    def __init__(self, *, in_width: int, modalities, frozen_modalities=(),
                 hidden: int | None = None, mult: float = 4.0, act: str = "swiglu"):
        super().__init__(modalities, frozen_modalities, lambda: nn.ModuleDict({
            "norm": make_norm("rms", in_width),
            "ffn": FeedForward(in_width, hidden or int(in_width * mult), act, bias=False)}))

    def forward(self, x, segments):
        return self.route(x, segments, lambda m, piece: m["ffn"](m["norm"](piece)))


class ModalityAttention(nn.Module):
    """Shared self-attention over the joint sequence; Q/K/V/O projections and the pre-norm
    are per modality (LlamaFusion)."""

    def __init__(self, *, in_width: int, heads: int, modalities, frozen_modalities=(),
                 kv_heads: int | None = None, causal: bool = True, pos: str = "rope"):
        super().__init__()
        self.modalities = list(modalities)
        self.per = nn.ModuleDict({m: nn.ModuleDict({
            "norm": make_norm("rms", in_width),
            "attn": Attention(in_width, heads, kv_heads=kv_heads, bias=False, causal=causal,
                              pos=pos)}) for m in self.modalities})
        for m in frozen_modalities:
            self.per[m].requires_grad_(False)
        self.heads, self.kv_heads = heads, kv_heads or heads
        self.dim_head = in_width // heads
        self.causal, self.pos = causal, pos

    def forward(self, x, segments, mask=None):
        from mmgraph.components.nn.layers import apply_rope, rope_tables

        b, n, _ = x.shape
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
        if self.pos == "rope":
            cos, sin = rope_tables(n, self.dim_head, 10000.0, x.device, q.dtype)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.kv_heads != self.heads:
            k = k.repeat_interleave(self.heads // self.kv_heads, 1)
            v = v.repeat_interleave(self.heads // self.kv_heads, 1)
        if q.dtype != torch.float32 and torch.onnx.is_in_onnx_export():
            from mmgraph.components.nn.layers import softmax_fp32_attention

            out = softmax_fp32_attention(q, k, v, causal=self.causal)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        out = out.transpose(1, 2).reshape(b, n, -1)
        pieces, start = [], 0
        for index, length in segments:
            pieces.append(self.per[self.modalities[index]]["attn"].o(out[:, start:start + length]))
            start += length
        return torch.cat(pieces, 1)


class TransformerLayer(nn.Module):
    def __init__(self, *, in_width: int, heads: int, ctx_width: int | None = None,
                 kv_heads: int | None = None, mlp: int | None = None, act: str = "gelu",
                 norm: str = "layer", causal: bool = False, cross: bool = False,
                 pos: str = "none", post_norm: bool = False, bias: bool = True,
                 dropout: float = 0.0):
        super().__init__()
        self.block = Block(in_width, heads, mlp=mlp, act=act, norm=norm, causal=causal,
                           cross=cross, kv_width=ctx_width, kv_heads=kv_heads, pos=pos,
                           post_norm=post_norm, bias=bias, dropout=dropout)

    def forward(self, x, ctx=None, mask=None):
        return self.block(x, ctx=ctx, mask=mask)


class Transformer(nn.Module):
    def __init__(self, *, in_width: int, depth: int, heads: int, ctx_width: int | None = None,
                 kv_heads: int | None = None, mlp: int | None = None, act: str = "gelu",
                 norm: str = "layer", causal: bool = False, cross: bool = False,
                 pos: str = "none", post_norm: bool = False, bias: bool = True,
                 dropout: float = 0.0, final_norm: bool = True, width: int | None = None):
        super().__init__()
        self.layers = nn.ModuleList([
            Block(in_width, heads, mlp=mlp, act=act, norm=norm, causal=causal, cross=cross,
                  kv_width=ctx_width, kv_heads=kv_heads, pos=pos, post_norm=post_norm,
                  bias=bias, dropout=dropout) for _ in range(depth)])
        self.norm = make_norm(norm, in_width) if final_norm else None

    def forward(self, x, ctx=None, mask=None):
        for layer in self.layers:
            x = layer(x, ctx=ctx, mask=mask)
        return self.norm(x) if self.norm is not None else x
