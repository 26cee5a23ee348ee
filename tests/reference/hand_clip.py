"""CLIP written by hand in plain PyTorch, the way the paper's reference code reads: the
yardstick for the compiled module (same weights in, same numbers out) and for the overhead
benchmark. Independent of mmgraph on purpose: attention is spelled out, nothing imported."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, causal: bool):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.ln_1 = nn.LayerNorm(width)
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)
        self.ln_2 = nn.LayerNorm(width)
        self.c_fc = nn.Linear(width, 4 * width)
        self.gelu = QuickGELU()
        self.c_proj = nn.Linear(4 * width, width)

    def attention(self, x):
        b, n, d = x.shape
        h, dh = self.heads, d // self.heads
        q = self.q_proj(x).view(b, n, h, dh).transpose(1, 2)
        k = self.k_proj(x).view(b, n, h, dh).transpose(1, 2)
        v = self.v_proj(x).view(b, n, h, dh).transpose(1, 2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(dh)
        if self.causal:
            mask = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(mask, float("-inf"))
        out = scores.softmax(-1) @ v
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))

    def forward(self, x):
        x = x + self.attention(self.ln_1(x))
        return x + self.c_proj(self.gelu(self.c_fc(self.ln_2(x))))


class VisionTransformer(nn.Module):
    def __init__(self, image: int, patch: int, width: int, layers: int, heads: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch, stride=patch, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width) * 0.02)
        self.positional_embedding = nn.Parameter(torch.randn((image // patch) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads, False)
                                        for _ in range(layers)])
        self.ln_post = nn.LayerNorm(width)

    def forward(self, image):
        x = self.conv1(image).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding
        x = self.ln_pre(x)
        for block in self.resblocks:
            x = block(x)
        return self.ln_post(x[:, 0])


class CLIP(nn.Module):
    def __init__(self, embed: int, image: int, patch: int, vision_width: int, vision_layers: int,
                 vision_heads: int, context: int, vocab: int, text_width: int, text_layers: int,
                 text_heads: int):
        super().__init__()
        self.visual = VisionTransformer(image, patch, vision_width, vision_layers, vision_heads)
        self.token_embedding = nn.Embedding(vocab, text_width)
        self.positional_embedding = nn.Parameter(torch.randn(context, text_width) * 0.01)
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(text_width, text_heads, True)
                                        for _ in range(text_layers)])
        self.ln_final = nn.LayerNorm(text_width)
        self.visual_projection = nn.Linear(vision_width, embed, bias=False)
        self.text_projection = nn.Linear(text_width, embed, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, image):
        return F.normalize(self.visual_projection(self.visual(image)), dim=-1)

    def encode_text(self, text):
        x = self.token_embedding(text) + self.positional_embedding[: text.shape[1]]
        for block in self.resblocks:
            x = block(x)
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0]), text.argmax(dim=-1)]  # the end-of-text token
        return F.normalize(self.text_projection(x), dim=-1)

    def forward(self, image, text):
        return {"img": self.encode_image(image), "txt": self.encode_text(text)}


def _block_names(ours: str, theirs: str) -> dict[str, str]:
    pairs = {"norm1": "ln_1", "attn.q": "q_proj", "attn.k": "k_proj", "attn.v": "v_proj",
             "attn.o": "out_proj", "norm2": "ln_2", "ffn.fc1": "c_fc", "ffn.fc2": "c_proj"}
    out = {}
    for a, b in pairs.items():
        for p in ("weight", "bias"):
            out[f"{ours}.{a}.{p}"] = f"{theirs}.{b}.{p}"
    return out


def name_map(vision_layers: int, text_layers: int) -> dict[str, str]:
    """The compiled module's parameter names to this module's."""
    m = {"vision.patch_embed.weight": "visual.conv1.weight", "vision.cls": "visual.class_embedding",
         "vision.pos": "visual.positional_embedding", "texter.tokens.weight":
         "token_embedding.weight", "texter.pos.weight": "positional_embedding",
         "img_proj.weight": "visual_projection.weight", "txt_proj.weight":
         "text_projection.weight", "itc.logit_scale": "logit_scale"}
    for p in ("weight", "bias"):
        m[f"vision.norm_pre.{p}"] = f"visual.ln_pre.{p}"
        m[f"vision.norm_post.{p}"] = f"visual.ln_post.{p}"
        m[f"texter.norm.{p}"] = f"ln_final.{p}"
    for i in range(vision_layers):
        m.update(_block_names(f"vision.blocks.layers.{i}", f"visual.resblocks.{i}"))
    for i in range(text_layers):
        m.update(_block_names(f"texter.blocks.layers.{i}", f"resblocks.{i}"))
    return m


def from_compiled(compiled: nn.Module, reference: CLIP, vision_layers: int,
                  text_layers: int) -> CLIP:
    """Copy the compiled module's weights into the hand-written one; every weight maps."""
    names = name_map(vision_layers, text_layers)
    ours = dict(compiled.named_parameters())
    assert set(ours) == set(names), sorted(set(ours) ^ set(names))
    theirs = dict(reference.named_parameters())
    assert set(theirs) == set(names.values()), sorted(set(theirs) ^ set(names.values()))
    with torch.no_grad():
        for a, b in names.items():
            theirs[b].copy_(ours[a])
    return reference


def matching(compiled: nn.Module, sizes: dict) -> CLIP:
    """A hand-written CLIP of the spec's `--set` sizes holding the compiled module's weights."""
    reference = CLIP(embed=sizes["embed"], image=sizes["image_size"], patch=sizes["patch"],
                     vision_width=sizes["width"], vision_layers=sizes["depth"],
                     vision_heads=sizes["heads"], context=sizes["context"],
                     vocab=sizes["vocab"], text_width=sizes["text_width"],
                     text_layers=sizes["text_depth"], text_heads=sizes["text_heads"])
    return from_compiled(compiled, reference, sizes["depth"], sizes["text_depth"]).eval()
