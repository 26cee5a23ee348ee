"""Transformer layers as torch modules: the building blocks every component shares (norms,
attention, FFN, blocks) and the faces of the layer components (mmgraph/components/layers.py).

Plain modules in the style of nanoGPT: one concept each, `forward` reads top to bottom.
Linear layers are named `q`, `k`, `v`, `o` (attention) and `fc1`/`fc2` or `gate`/`up`/`down`
(FFN) everywhere, so that `lora(targets=[...])` means the same thing in every component.
"""

from __future__ import annotations

import contextvars

import torch
import torch.nn.functional as F
from torch import nn

from mmgraph.components.nn import cache as kv_cache


class RMSNorm(nn.Module):
    """`rms_norm`, and the norm of every block with norm="rms"."""

    def __init__(self, *, in_width: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(in_width))

    def forward(self, x):
        dtype = x.dtype  # normalise in fp32 whatever the activations' precision
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


def make_norm(kind: str, width: int, eps: float | None = None) -> nn.Module:
    if kind == "rms":
        return RMSNorm(in_width=width, eps=eps or 1e-6)
    return nn.LayerNorm(width, eps=eps or 1e-5)


class QuickGELU(nn.Module):
    """CLIP's GELU approximation: x * sigmoid(1.702 x)."""

    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


def make_act(name: str) -> nn.Module:
    return {"gelu": nn.GELU(), "gelu_tanh": nn.GELU(approximate="tanh"),  # SigLIP's, GPT-2's
            "quick_gelu": QuickGELU(), "relu": nn.ReLU(), "silu": nn.SiLU(),
            "tanh": nn.Tanh()}[name]


# ---------------------------------------------------------------- positions

def rope_tables(length: int, dim: int, theta: float, device, dtype):
    """cos/sin tables of rotary embeddings for positions 0..length-1."""
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))
    t = torch.arange(length, device=device, dtype=torch.float32)
    freqs = torch.outer(t, inv)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rope_at(positions, dim: int, theta: float, dtype):
    """cos/sin of rotary embeddings at given positions [B, N]: [B, 1, N, dim], the same
    arithmetic as `rope_tables` (a KV-cached step starts past position 0)."""
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, device=positions.device,
                                        dtype=torch.float32) / dim))
    freqs = positions.to(torch.float32)[..., None] * inv
    emb = torch.cat([freqs, freqs], dim=-1)[:, None]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x, cos, sin):
    """Rotate the halves of each head's features (LLaMA's layout). x: [B, H, N, Dh]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def alibi_bias(heads: int, n: int, device, dtype):
    """ALiBi: a per-head linear penalty on distance (MPT, BLOOM). [H, N, N]."""
    slopes = torch.tensor([2 ** (-8 * (i + 1) / heads) for i in range(heads)], device=device)
    pos = torch.arange(n, device=device)
    distance = (pos[None, :] - pos[:, None]).clamp(max=0).float()
    return (slopes[:, None, None] * distance[None]).to(dtype)


def alibi_between(heads: int, query_pos, key_pos, dtype):
    """`alibi_bias` for given query [B, N] and key [B, M] positions: [B, H, N, M]."""
    slopes = torch.tensor([2 ** (-8 * (i + 1) / heads) for i in range(heads)],
                          device=query_pos.device)
    distance = (key_pos[:, None, :] - query_pos[:, :, None]).clamp(max=0).float()
    return (slopes[None, :, None, None] * distance[:, None]).to(dtype)


# ---------------------------------------------------------------- attention

class Attention(nn.Module):
    """Multi-head attention. Queries from x; keys/values from ctx (cross) or x (self).

    Supports grouped KV heads, causal masking, rotary or ALiBi positions, and a key padding
    mask (true = attend). Uses PyTorch's fused scaled_dot_product_attention.
    """

    def __init__(self, width: int, heads: int, kv_width: int | None = None,
                 kv_heads: int | None = None, dim_head: int | None = None, bias: bool = True,
                 causal: bool = False, pos: str = "none", rope_theta: float = 10000.0,
                 dropout: float = 0.0, out_bias: bool | None = None, prefix: int = 0):
        super().__init__()
        self.heads, self.kv_heads = heads, kv_heads or heads
        self.dim_head = dim_head or width // heads
        self.causal, self.pos, self.rope_theta, self.dropout = causal, pos, rope_theta, dropout
        self.prefix = prefix  # causal: the first `prefix` positions also see each other
        inner, kv_inner = self.heads * self.dim_head, self.kv_heads * self.dim_head
        kv_width = kv_width or width
        self.q = nn.Linear(width, inner, bias=bias)
        self.k = nn.Linear(kv_width, kv_inner, bias=bias)
        self.v = nn.Linear(kv_width, kv_inner, bias=bias)
        self.o = nn.Linear(inner, width, bias=bias if out_bias is None else out_bias)

    def forward(self, x, ctx=None, mask=None, positions=None):
        """`positions` [B, N] (fractional allowed) replace 0..N-1 for rotary/ALiBi positions."""
        cache = kv_cache.current()
        if cache is not None and ctx is None and self.causal:
            if positions is not None:
                raise NotImplementedError("attention given explicit positions cannot take "
                                          "generation steps yet: the KV cache counts them")
            return self.cached_step(x, cache)
        b, n, _ = x.shape
        src = x if ctx is None else ctx
        m = src.shape[1]
        q = self.q(x).view(b, n, self.heads, self.dim_head).transpose(1, 2)
        if cache is not None:  # cross-attention while generating: project the context once
            k, v = cache.context(lambda: self.keys_values(src))
        else:
            k, v = self.keys_values(src)
        if self.pos == "rope" and ctx is None:
            if positions is None:
                cos, sin = rope_tables(n, self.dim_head, self.rope_theta, x.device, q.dtype)
            else:
                cos, sin = rope_at(positions, self.dim_head, self.rope_theta, q.dtype)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.kv_heads != self.heads:
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        bias = None
        if self.pos == "alibi" and ctx is None:
            bias = alibi_bias(self.heads, n, x.device, q.dtype)[None] if positions is None \
                else alibi_between(self.heads, positions, positions, q.dtype)
        if mask is not None:  # [B, M] true = attend
            pad = torch.zeros(b, 1, 1, m, device=x.device, dtype=q.dtype)
            pad = pad.masked_fill(~mask[:, None, None, :].bool(), float("-inf"))
            bias = pad if bias is None else bias + pad
        causal = self.causal and ctx is None
        if causal and (bias is not None or self.prefix):
            tri = torch.ones(n, m, device=x.device, dtype=torch.bool).tril()
            if self.prefix:  # prefix-LM: keys of the prefix are visible to every query
                tri = tri | (torch.arange(m, device=x.device) < self.prefix)[None, :]
            if bias is None:
                bias = torch.zeros(1, 1, n, m, device=x.device, dtype=q.dtype)
            bias = bias.masked_fill(~tri, float("-inf"))
            causal = False
        if q.dtype != torch.float32 and torch.onnx.is_in_onnx_export():
            out = softmax_fp32_attention(q, k, v, bias, causal)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=causal,
                                                 dropout_p=self.dropout if self.training
                                                 else 0.0)
        return self.o(out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head))

    def keys_values(self, src):
        b, m, _ = src.shape
        k = self.k(src).view(b, m, self.kv_heads, self.dim_head).transpose(1, 2)
        v = self.v(src).view(b, m, self.kv_heads, self.dim_head).transpose(1, 2)
        return k, v

    def cached_step(self, x, cache):
        """Causal self-attention of a generation step: the new positions attend to the
        cached keys/values and themselves; positions continue from the cache."""
        b, n, _ = x.shape
        q = self.q(x).view(b, n, self.heads, self.dim_head).transpose(1, 2)
        k, v = self.keys_values(x)
        out = attend_cached(q, k, v, cache, pos=self.pos, rope_theta=self.rope_theta)
        return self.o(out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head))


def attend_cached(q, k, v, cache, *, pos: str, rope_theta: float):
    """Attention of a generation step's new queries [B, H, N, Dh] over the cached keys and
    values with the new ones [B, Hkv, N, Dh] appended to the cache: rotary or ALiBi positions
    from where the cache is, causal, padding keys masked."""
    heads, n = q.shape[1], q.shape[2]
    if pos == "rope":
        cos, sin = rope_at(cache.positions(n), q.shape[-1], rope_theta, q.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    k, v = cache.extend(k, v)
    m = k.shape[2]
    if k.shape[1] != heads:
        k = k.repeat_interleave(heads // k.shape[1], dim=1)
        v = v.repeat_interleave(heads // v.shape[1], dim=1)
    bias = cache.attention_bias(n, m, q.dtype)
    if pos == "alibi":
        bias = bias + alibi_between(heads, cache.positions(n), cache.key_positions(m), q.dtype)
    if q.dtype != torch.float32 and torch.onnx.is_in_onnx_export():
        return softmax_fp32_attention(q, k, v, bias)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


# True while exporting for a runtime that has ONNX's fused `Attention` op (opset 23+, see
# mmgraph/backends/torch/fused_attention.py): attention then goes out whole, as
# scaled_dot_product_attention, which the dynamo exporter writes as one `Attention` node.
FUSED_ATTENTION = contextvars.ContextVar("mmgraph_fused_attention", default=False)


def softmax_fp32_attention(q, k, v, bias=None, causal: bool = False):
    """Attention written out with the softmax in fp32: what an fp16 ONNX graph must say so
    that TensorRT's strongly typed build keeps it accurate. Exported as a fused `Attention`
    node, the exporter states the softmax precision on the node instead."""
    if FUSED_ATTENTION.get():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=causal)
    scores = (q @ k.transpose(-2, -1)).float() * (q.shape[-1] ** -0.5)
    if bias is not None:
        scores = scores + bias.float()
    if causal:
        n, m = scores.shape[-2:]
        tri = torch.ones(n, m, device=q.device, dtype=torch.bool).tril()
        scores = scores.masked_fill(~tri, float("-inf"))
    return scores.softmax(-1).to(q.dtype) @ v


class FeedForward(nn.Module):
    """Position-wise FFN: fc1 -> act -> fc2, or gated (SwiGLU/GeGLU): down(act(gate) * up)."""

    def __init__(self, width: int, hidden: int, act: str = "gelu", bias: bool = True,
                 dropout: float = 0.0, out: int | None = None):
        super().__init__()
        self.gated = act in ("swiglu", "geglu")
        out = out or width
        if self.gated:
            self.gate = nn.Linear(width, hidden, bias=bias)
            self.up = nn.Linear(width, hidden, bias=bias)
            self.down = nn.Linear(hidden, out, bias=bias)
            self.act = nn.SiLU() if act == "swiglu" else nn.GELU()
        else:
            self.fc1 = nn.Linear(width, hidden, bias=bias)
            self.act = make_act(act)
            self.fc2 = nn.Linear(hidden, out, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        if self.gated:
            return self.drop(self.down(self.act(self.gate(x)) * self.up(x)))
        return self.drop(self.fc2(self.act(self.fc1(x))))


class Block(nn.Module):
    """A Transformer block: self-attention, optional cross-attention, FFN.

    Pre-norm (GPT/ViT/LLaMA) by default; `post_norm=True` gives BERT's layout, where each
    sub-layer is followed by its LayerNorm. `parallel=True` gives GPT-J's: attention and FFN
    read the same normed input and both add to the residual, x + attn(ln(x)) + ffn(ln(x)).
    """

    def __init__(self, width: int, heads: int, mlp: int | None = None, act: str = "gelu",
                 norm: str = "layer", causal: bool = False, cross: bool = False,
                 kv_width: int | None = None, kv_heads: int | None = None, pos: str = "none",
                 post_norm: bool = False, bias: bool = True, dropout: float = 0.0,
                 eps: float | None = None, rope_theta: float = 10000.0,
                 parallel: bool = False, prefix: int = 0):
        super().__init__()
        self.post_norm, self.parallel = post_norm, parallel
        self.norm1 = make_norm(norm, width, eps)
        self.attn = Attention(width, heads, kv_heads=kv_heads, bias=bias, causal=causal,
                              pos=pos, rope_theta=rope_theta, dropout=dropout, prefix=prefix)
        self.cross = None
        if cross:
            self.norm_cross = make_norm(norm, width, eps)
            self.cross = Attention(width, heads, kv_width=kv_width, bias=bias, dropout=dropout)
        self.norm2 = None if parallel else make_norm(norm, width, eps)  # GPT-J: one norm
        self.ffn = FeedForward(width, mlp or 4 * width, act, bias, dropout)

    def forward(self, x, ctx=None, mask=None, positions=None):
        if self.parallel:
            h = self.norm1(x)
            return x + self.attn(h, mask=mask, positions=positions) + self.ffn(h)
        if self.post_norm:
            x = self.norm1(x + self.attn(x, mask=mask, positions=positions))
            if self.cross is not None:
                x = self.norm_cross(x + self.cross(x, ctx))
            return self.norm2(x + self.ffn(x))
        x = x + self.attn(self.norm1(x), mask=mask, positions=positions)
        if self.cross is not None:
            x = x + self.cross(self.norm_cross(x), ctx)
        return x + self.ffn(self.norm2(x))


# ---------------------------------------------------------------- the layer components

class LayerNorm(nn.LayerNorm):
    def __init__(self, *, in_width: int, eps: float, bias: bool):
        super().__init__(in_width, eps=eps, bias=bias)


class TanhGate(nn.Module):
    """x * tanh(alpha): alpha starts at 0, so a gated branch starts switched off."""

    def __init__(self, *, init: float):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x):
        return x * torch.tanh(self.alpha)


class SelfAttention(nn.Module):
    def __init__(self, *, in_width: int, heads: int, kv_heads: int | None, causal: bool,
                 bias: bool, pos: str, dropout: float, prefix: int):
        super().__init__()
        self.attn = Attention(in_width, heads, kv_heads=kv_heads, bias=bias, causal=causal,
                              pos=pos, dropout=dropout, prefix=prefix)

    def forward(self, x, mask=None, positions=None):
        return self.attn(x, mask=mask, positions=positions)


class FFN(nn.Module):
    def __init__(self, *, in_width: int, mult: float, hidden: int | None, act: str, bias: bool,
                 dropout: float):
        super().__init__()
        self.ffn = FeedForward(in_width, hidden or int(in_width * mult), act, bias, dropout)

    def forward(self, x):
        return self.ffn(x)


class TransformerLayer(nn.Module):
    def __init__(self, *, in_width: int, ctx_width: int | None = None, heads: int,
                 kv_heads: int | None, mlp: int | None, act: str, norm: str, causal: bool,
                 cross: bool, pos: str, post_norm: bool, bias: bool, dropout: float,
                 parallel: bool, prefix: int):
        super().__init__()
        self.block = Block(in_width, heads, mlp=mlp, act=act, norm=norm, causal=causal,
                           cross=cross, kv_width=ctx_width, kv_heads=kv_heads, pos=pos,
                           post_norm=post_norm, bias=bias, dropout=dropout, parallel=parallel,
                           prefix=prefix)

    def forward(self, x, ctx=None, mask=None, positions=None):
        return self.block(x, ctx=ctx, mask=mask, positions=positions)


class Transformer(nn.Module):
    def __init__(self, *, in_width: int, ctx_width: int | None = None, depth: int, heads: int,
                 kv_heads: int | None, mlp: int | None, act: str, norm: str, causal: bool,
                 cross: bool, pos: str, post_norm: bool, bias: bool, dropout: float,
                 parallel: bool, prefix: int, final_norm: bool):
        super().__init__()
        self.layers = nn.ModuleList([
            Block(in_width, heads, mlp=mlp, act=act, norm=norm, causal=causal, cross=cross,
                  kv_width=ctx_width, kv_heads=kv_heads, pos=pos, post_norm=post_norm,
                  bias=bias, dropout=dropout, parallel=parallel, prefix=prefix)
            for _ in range(depth)])
        self.norm = make_norm(norm, in_width) if final_norm else None

    def forward(self, x, ctx=None, mask=None, positions=None):
        for layer in self.layers:
            x = layer(x, ctx=ctx, mask=mask, positions=positions)
        return self.norm(x) if self.norm is not None else x


# ---------------------------------------------------------------- initialisation and positions

def init_linear_like_bert(module: nn.Module, std: float = 0.02) -> None:
    """Normal(0, 0.02) weights and zero biases, as BERT/GPT/ViT initialise."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)


def sincos_2d(grid_h: int, grid_w: int, width: int) -> torch.Tensor:
    """Fixed 2D sine-cosine position embeddings (MAE). [grid_h * grid_w, width]."""
    quarter = width // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32) / max(quarter, 1)))
    ys, xs = torch.meshgrid(torch.arange(grid_h, dtype=torch.float32),
                            torch.arange(grid_w, dtype=torch.float32), indexing="ij")
    parts = []
    for coord in (ys.flatten(), xs.flatten()):
        angles = coord[:, None] * omega[None]
        parts += [angles.sin(), angles.cos()]
    emb = torch.cat(parts, dim=1)
    if emb.shape[1] < width:
        emb = F.pad(emb, (0, width - emb.shape[1]))
    return emb

