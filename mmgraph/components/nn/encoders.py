"""Encoders and tokenizers as torch modules (the faces of mmgraph/components/encoders.py;
their constructor arguments are those components' parameters plus sizes the checker derived
from the input types)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmgraph.components.nn import cache as kv_cache
from mmgraph.components.nn.layers import Block, init_linear_like_bert, make_norm, sincos_2d


class Blocks(nn.Module):
    """A stack of Transformer blocks that can stop early (`select_layer`) or tap layers."""

    def __init__(self, depth: int, **block_args):
        super().__init__()
        self.layers = nn.ModuleList([Block(**block_args) for _ in range(depth)])

    def forward(self, x, ctx=None, mask=None, stop: int | None = None, taps=()):
        tapped = {}
        for i, layer in enumerate(self.layers):
            if stop is not None and i >= stop:
                break
            x = layer(x, ctx=ctx, mask=mask)
            if taps and i + 1 in taps:
                tapped[i + 1] = x
        return x, tapped


class ViT(nn.Module):
    """Vision Transformer: conv patch embedding, class token, positions, pre-norm blocks."""

    def __init__(self, *, in_channels: int, grid: tuple[int, int], width: int, depth: int,
                 heads: int, mlp: int | None, act: str, norm: str, dropout: float, patch: int,
                 cls_token: bool, pos: str, pre_norm: bool, post_norm: bool, patch_bias: bool,
                 select_layer: int, pool: str, drop_cls: bool, taps: tuple[int, ...],
                 norm_eps: float | None):
        super().__init__()
        self.pool, self.drop_cls = pool, drop_cls
        self.taps = tuple(k if k > 0 else depth + 1 + k for k in taps)  # -1: the last block
        self.stop = depth + 1 + select_layer if select_layer < 0 else select_layer
        self.patch_embed = nn.Conv2d(in_channels, width, patch, stride=patch, bias=patch_bias)
        n = grid[0] * grid[1] + (1 if cls_token else 0)
        self.cls = nn.Parameter(torch.zeros(width)) if cls_token else None
        if pos == "learned":
            self.pos = nn.Parameter(torch.randn(n, width) * 0.02)
        else:
            table = sincos_2d(grid[0], grid[1], width)
            if cls_token:
                table = torch.cat([torch.zeros(1, width), table])
            self.register_buffer("pos", table, persistent=False)
        self.norm_pre = make_norm(norm, width, norm_eps) if pre_norm else None
        self.blocks = Blocks(depth, width=width, heads=heads, mlp=mlp, act=act, norm=norm,
                             dropout=dropout, eps=norm_eps)
        self.norm_post = make_norm(norm, width, norm_eps) if post_norm else None
        init_linear_like_bert(self)

    def forward(self, image):
        x = self.patch_embed(image).flatten(2).transpose(1, 2)  # [B, N, D]
        if self.cls is not None:
            x = torch.cat([self.cls.expand(x.shape[0], 1, -1).to(x.dtype), x], dim=1)
        x = x + self.pos.to(x.dtype)
        if self.norm_pre is not None:
            x = self.norm_pre(x)
        last = self.stop == len(self.blocks.layers)
        # a tap past `select_layer` (taps=[-1] with select_layer=-2) runs the blocks on to it
        run, before = max((self.stop, *self.taps)), x
        x, tapped = self.blocks(x, stop=run, taps=self.taps + (self.stop,))
        if run != self.stop:
            x = tapped[self.stop] if self.stop > 0 else before
        if self.pool == "cls":
            out = x[:, 0]
        elif self.pool == "mean":
            out = x[:, 1:].mean(1) if self.cls is not None else x.mean(1)
        else:
            out = x[:, 1:] if self.drop_cls and self.cls is not None else x
        # CLIP normalises the pooled token; timm the whole last layer; neither an earlier one
        if self.norm_post is not None and (self.pool != "none" or last):
            out = self.norm_post(out)
        if self.taps:
            return (out, *(tapped[k] for k in self.taps))
        return out


def eot_pool(x, tokens):
    """The hidden state at each sequence's end-of-text token (its largest id), as CLIP."""
    idx = tokens.argmax(dim=-1)
    return x[torch.arange(x.shape[0], device=x.device), idx]


def pool_sequence(x, mode: str, tokens=None, mask=None):
    """With a mask (true = a real token), `cls` takes the first real token and `last` the
    last one, so left- and right-padded batches pool the token an unpadded example would."""
    if mode in ("cls", "last") and mask is not None:
        # float ranks: TensorRT's ArgMax (TopK) takes floating-point inputs
        rank = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=torch.float32)
        rank = rank if mode == "last" else rank.flip(0)
        index = (mask.to(torch.float32) * rank).argmax(1)
        return x[torch.arange(x.shape[0], device=x.device), index]
    if mode == "cls":
        return x[:, 0]
    if mode == "last":
        return x[:, -1]
    if mode == "eot":
        return eot_pool(x, tokens)
    if mask is not None:
        m = mask.to(torch.float32).unsqueeze(-1)
        return ((x.float() * m).sum(1) / m.sum(1).clamp(min=1)).to(x.dtype)
    return x.float().mean(1).to(x.dtype)  # reductions in fp32


class TextTransformer(nn.Module):
    """Token + position embeddings, causal or bidirectional blocks, optional pooling.

    Pre-norm blocks end with a final LayerNorm (CLIP); BERT-style post-norm blocks start with
    an embedding LayerNorm instead, and may add token-type embeddings.
    """

    def __init__(self, *, width: int, depth: int, heads: int, mlp: int | None, act: str,
                 norm: str, dropout: float, vocab: int, max_len: int, causal: bool, pool: str,
                 type_vocab: int, post_norm_blocks: bool):
        super().__init__()
        self.pool, self.post = pool, post_norm_blocks
        self.tokens = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(max_len, width)
        self.types = nn.Embedding(type_vocab, width) if type_vocab else None
        eps = 1e-12 if post_norm_blocks else None
        self.blocks = Blocks(depth, width=width, heads=heads, mlp=mlp, act=act, norm=norm,
                             causal=causal, post_norm=post_norm_blocks, dropout=dropout, eps=eps)
        self.norm = make_norm(norm, width, eps)
        init_linear_like_bert(self)

    def forward(self, tokens, mask=None):
        n = tokens.shape[1]
        x = self.tokens(tokens) + self.pos.weight[:n]
        if self.types is not None:
            x = x + self.types.weight[0]
        if self.post:
            x = self.norm(x)
        x, _ = self.blocks(x, mask=mask)
        if not self.post:
            x = self.norm(x)
        if self.pool == "none":
            return x
        return pool_sequence(x, self.pool, tokens=tokens, mask=mask)


class AudioEncoder(nn.Module):
    """Whisper-style: two convs over log-mel frames (the second with stride 2), positions,
    pre-norm blocks, final norm."""

    def __init__(self, *, width: int, depth: int, heads: int, mlp: int | None, act: str,
                 norm: str, dropout: float, mels: int, max_frames: int, pool: str):
        super().__init__()
        self.pool = pool
        self.conv1 = nn.Conv1d(mels, width, 3, padding=1)
        self.conv2 = nn.Conv1d(width, width, 3, stride=2, padding=1)
        self.pos = nn.Parameter(torch.randn(max_frames // 2, width) * 0.02)
        self.blocks = Blocks(depth, width=width, heads=heads, mlp=mlp, act=act, norm=norm,
                             dropout=dropout)
        self.norm = make_norm(norm, width)

    def forward(self, mel):
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        x = x + self.pos[: x.shape[1]].to(x.dtype)
        x, _ = self.blocks(x)
        x = self.norm(x)
        return x.mean(1) if self.pool == "mean" else x


class VideoEncoder(nn.Module):
    """Each frame through a ViT, one token (or all patches) per frame, plus learned temporal
    positions."""

    def __init__(self, *, in_channels: int, grid: tuple[int, int], width: int, depth: int,
                 heads: int, mlp: int | None, act: str, norm: str, dropout: float, patch: int,
                 max_frames: int, frame_pool: str, pool: str):
        super().__init__()
        self.frame_pool, self.pool = frame_pool, pool
        self.frames = ViT(in_channels=in_channels, grid=grid, width=width, depth=depth,
                          heads=heads, mlp=mlp, act=act, norm=norm, dropout=dropout, patch=patch,
                          cls_token=True, pos="learned", pre_norm=False, post_norm=True,
                          patch_bias=True, select_layer=-1, pool=frame_pool, drop_cls=True,
                          taps=(), norm_eps=None)
        self.temporal = nn.Parameter(torch.zeros(max_frames, width))

    def forward(self, video):
        b, f = video.shape[:2]
        x = self.frames(video.flatten(0, 1))  # [B*F, D] or [B*F, N, D]
        if self.frame_pool != "none":
            x = x.view(b, f, -1) + self.temporal[:f].to(x.dtype)
        else:
            x = x.view(b, f, x.shape[1], -1) + self.temporal[:f, None].to(x.dtype)
            x = x.flatten(1, 2)
        return x.mean(1) if self.pool == "mean" else x


class PatchEmbed(nn.Module):
    """Image (or class-id map) to patch tokens, with optional class token and positions."""

    def __init__(self, *, in_channels: int, grid: tuple[int, int], patch: int, width: int,
                 pos: str, cls_token: bool, classes: int | None, class_width: int, bias: bool):
        super().__init__()
        self.classes = classes
        if classes is not None:
            self.class_embed = nn.Embedding(classes, class_width)
            in_channels = class_width
        self.proj = nn.Conv2d(in_channels, width, patch, stride=patch, bias=bias)
        self.cls = nn.Parameter(torch.zeros(width)) if cls_token else None
        n = grid[0] * grid[1] + (1 if cls_token else 0)
        if pos == "learned":
            self.pos = nn.Parameter(torch.randn(n, width) * 0.02)
        elif pos == "sincos2d":
            table = sincos_2d(grid[0], grid[1], width)
            if cls_token:
                table = torch.cat([torch.zeros(1, width), table])
            self.register_buffer("pos", table, persistent=False)
        else:
            self.pos = None

    def forward(self, image):
        if self.classes is not None:
            image = self.class_embed(image[:, 0].long()).permute(0, 3, 1, 2)
        x = self.proj(image).flatten(2).transpose(1, 2)
        if self.cls is not None:
            x = torch.cat([self.cls.expand(x.shape[0], 1, -1).to(x.dtype), x], dim=1)
        if self.pos is not None:
            x = x + self.pos.to(x.dtype)
        return x


class TokenEmbedding(nn.Module):
    def __init__(self, *, vocab: int, width: int, pos: str, max_len: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(max_len, width) if pos == "learned" else None

    def forward(self, tokens):
        x = self.embed(tokens)
        if self.pos is not None:
            cache = kv_cache.current()  # generating: positions continue from the cache
            if cache is None:
                x = x + self.pos.weight[: tokens.shape[1]]
            else:
                x = x + self.pos(cache.positions(tokens.shape[1]).long())
        return x


class PointTokenizer(nn.Module):
    """Point-BERT/Meta-Transformer style: farthest-point centres, k nearest neighbours
    around each, a shared MLP over the local offsets with max pooling, plus centre positions."""

    def __init__(self, *, in_features: int, groups: int, neighbours: int, width: int):
        super().__init__()
        self.groups, self.k = groups, neighbours
        self.local = nn.Sequential(nn.Linear(in_features, 128), nn.GELU(), nn.Linear(128, 256),
                                   nn.GELU(), nn.Linear(256, width))
        self.centre = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, width))

    @staticmethod
    def farthest_points(xyz, m):
        b, n, _ = xyz.shape
        chosen = torch.zeros(b, m, dtype=torch.long, device=xyz.device)
        dist = torch.full((b, n), float("inf"), device=xyz.device)
        far = torch.zeros(b, dtype=torch.long, device=xyz.device)
        rows = torch.arange(b, device=xyz.device)
        for i in range(m):
            chosen[:, i] = far
            d = ((xyz - xyz[rows, far][:, None]) ** 2).sum(-1)
            dist = torch.minimum(dist, d)
            far = dist.argmax(-1)
        return chosen

    def forward(self, points):
        xyz = points[..., :3]
        rows = torch.arange(points.shape[0], device=points.device)[:, None]
        centres = xyz[rows, self.farthest_points(xyz, self.groups)]  # [B, G, 3]
        k = min(self.k, points.shape[1])
        knn = torch.cdist(centres, xyz).topk(k, largest=False).indices  # [B, G, k]
        local = points[rows[..., None], knn]  # [B, G, k, C]
        local = torch.cat([local[..., :3] - centres[:, :, None], local[..., 3:]], dim=-1)
        return self.local(local).max(dim=2).values + self.centre(centres)


class MelPatchEmbed(nn.Module):
    """AST-style audio tokens: (possibly overlapping) square patches of a log-mel map."""

    def __init__(self, *, patch: int, stride: int | None, width: int):
        super().__init__()
        self.proj = nn.Conv2d(1, width, patch, stride=stride or patch)

    def forward(self, mel):
        return self.proj(mel[:, None]).flatten(2).transpose(1, 2)


class FeatureEmbed(nn.Module):
    """Precomputed features (and optionally their boxes) to tokens."""

    def __init__(self, *, in_width: int, with_boxes: bool, width: int):
        super().__init__()
        self.proj = nn.Linear(in_width, width)
        self.box = nn.Linear(4, width) if with_boxes else None
        self.norm = nn.LayerNorm(width)

    def forward(self, x, boxes=None):
        h = self.proj(x)
        if self.box is not None and boxes is not None:
            h = h + self.box(boxes)
        return self.norm(h)
