"""Encoders and tokenizers: raw modality tensors in, token sequences or vectors out."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from mmgraph.components.common import (
    ATTENTION,
    Act,
    NonNegInt,
    Norm,
    PosFloat,
    PosInt,
    Prob,
    check_heads,
    check_taps,
    fixed,
    grid,
    in_width,
    seq,
    tap_port,
    vec,
)
from mmgraph.components.registry import Component, Params, Port, register
from mmgraph.ir import types as T


def patch_count(ctx, img, patch: int, floor: bool):
    """The number of patches of an image: whole patches only with `floor` (a stride-`patch`
    conv drops the rest, as SigLIP-384/14 does), else the sides must be multiples (E304)."""
    if floor:
        return T.sympy.floor(img.dim("H") / patch) * T.sympy.floor(img.dim("W") / patch)
    return ctx.exact_div("image", img.dim("H"), patch, "image height") * \
        ctx.exact_div("image", img.dim("W"), patch, "image width")


class _TransformerParams(Params):
    width: PosInt
    depth: NonNegInt
    heads: PosInt
    mlp: PosInt | None = None  # hidden size of the FFN; 4 * width when omitted
    act: Act = "gelu"
    norm: Norm = "layer"
    dropout: Prob = 0.0


@register
class ViT(Component):
    name = "vit"
    category = "encoder"
    lora_targets = ATTENTION
    summary = "Vision Transformer: patch embedding, class token, learned positions, pre-norm blocks"
    inputs = (Port("image"),)
    torch = "mmgraph.components.nn.encoders:ViT"

    class Params(_TransformerParams):
        patch: PosInt
        channels: PosInt | None = None  # taken from the input when omitted
        cls_token: bool = True
        pos: Literal["learned", "sincos2d"] = "learned"
        pre_norm: bool = False  # a LayerNorm before the blocks (CLIP's pre_layrnorm)
        post_norm: bool = True
        patch_bias: bool = True
        select_layer: int = -1  # which block's output `out` is (-2: the penultimate, as LLaVA)
        pool: Literal["none", "cls", "mean"] = "none"
        drop_cls: bool = False  # drop the class token from a sequence output
        # extra outputs: `layerK`, the output of block K (1-based), for a tap K > 0; `backK`,
        # the K-th block from the end (`back1` the last), for a tap -K, which follows
        # `--set depth=N` (EVE, mmMamba tap layers relative to the depth)
        taps: tuple[int, ...] = ()
        norm_eps: PosFloat | None = None  # the norms' epsilon; 1e-5 (layer), 1e-6 (rms) if None
        # drop the pixels past the last whole patch (SigLIP-384/14: 27 x 27 patches) instead of
        # refusing an image whose size is not a multiple of the patch
        floor: bool = False

        @model_validator(mode="after")
        def _consistent(self):
            if self.pool == "cls" and not self.cls_token:
                raise ValueError("pool=\"cls\" needs cls_token=true")
            if self.depth and not -self.depth <= self.select_layer <= self.depth:
                raise ValueError(f"select_layer={self.select_layer} is outside depth "
                                 f"{self.depth}")
            check_taps(self.taps, self.depth)
            return self

    def outputs(self, p):
        return ("out",) + tuple(tap_port(k) for k in p.taps)

    def infer(self, p, x, ctx):
        img = x["image"]
        ctx.expect_kind("image", img, "Image")
        check_heads(ctx, p.width, p.heads)
        if p.channels is not None:
            ctx.expect_dim("image", img, "C", p.channels, "channels")
        n = patch_count(ctx, img, p.patch, p.floor)
        tags = img.tags
        full = seq(img.dim("B"), n + (1 if p.cls_token else 0), p.width, tags)
        if p.pool != "none":
            out = vec(img.dim("B"), p.width, tags)
        elif p.drop_cls and p.cls_token:
            out = seq(img.dim("B"), n, p.width, tags)
        else:
            out = full
        return {"out": out, **{tap_port(k): full for k in p.taps}}

    def torch_args(self, p, x, ctx):
        img = x["image"]  # `channels` is checked against it
        return {"in_channels": fixed(ctx, "image", img, "C", "channel count"),
                "grid": grid(ctx, "image", img, p.patch),
                **p.model_dump(exclude={"channels", "floor"})}  # the conv drops the rest


@register
class TextTransformer(Component):
    name = "text_transformer"
    category = "encoder"
    lora_targets = ATTENTION
    summary = "Text Transformer: token + position embeddings, causal or bidirectional blocks"
    inputs = (Port("tokens"), Port("mask", optional=True))
    torch = "mmgraph.components.nn.encoders:TextTransformer"

    class Params(_TransformerParams):
        vocab: PosInt
        max_len: PosInt = 77
        causal: bool = False
        pool: Literal["none", "eot", "cls", "mean", "last"] = "none"
        type_vocab: NonNegInt = 0  # BERT's token-type embeddings
        post_norm_blocks: bool = False  # BERT-style post-LN blocks instead of pre-LN

    def infer(self, p, x, ctx):
        tok = x["tokens"]
        ctx.expect_kind("tokens", tok, "Tokens")
        check_heads(ctx, p.width, p.heads)
        t = tok.dim("T")
        if t.is_Integer and int(t) > p.max_len:
            ctx.fail(f"{ctx.name} takes at most max_len={p.max_len} tokens but "
                     f"{ctx.source('tokens')} gives {tok}", "tokens")
        if "mask" in x:
            ctx.expect_kind("mask", x["mask"], "Mask")
            ctx.expect_same("tokens", t, "mask", x["mask"].dim("N"), "length")
        if p.pool != "none":
            return vec(tok.dim("B"), p.width, tok.tags)
        return seq(tok.dim("B"), t, p.width, tok.tags)


@register
class AudioEncoder(Component):
    name = "audio_encoder"
    category = "encoder"
    lora_targets = ATTENTION
    summary = "Whisper-style audio encoder: log-mel in, two conv layers (stride 2), Transformer"
    inputs = (Port("mel"),)
    torch = "mmgraph.components.nn.encoders:AudioEncoder"

    class Params(_TransformerParams):
        mels: PosInt = 80
        max_frames: PosInt = 3000
        pool: Literal["none", "mean"] = "none"

    def infer(self, p, x, ctx):
        mel = x["mel"]
        ctx.expect_kind("mel", mel, "Mel")
        check_heads(ctx, p.width, p.heads)
        ctx.expect_dim("mel", mel, "M", p.mels, "mel bins")
        frames = ctx.exact_div("mel", mel.dim("F"), 2, "frame count")
        if p.pool == "mean":
            return vec(mel.dim("B"), p.width, mel.tags)
        return seq(mel.dim("B"), frames, p.width, mel.tags)


@register
class VideoEncoder(Component):
    name = "video_encoder"
    category = "encoder"
    lora_targets = ATTENTION
    summary = "Per-frame ViT with learned temporal position embeddings over frames"
    inputs = (Port("video"),)
    torch = "mmgraph.components.nn.encoders:VideoEncoder"

    class Params(_TransformerParams):
        patch: PosInt
        max_frames: PosInt = 32
        frame_pool: Literal["cls", "mean", "none"] = "cls"  # one token per frame, or all patches
        pool: Literal["none", "mean"] = "none"

    def infer(self, p, x, ctx):
        v = x["video"]
        ctx.expect_kind("video", v, "Video")
        check_heads(ctx, p.width, p.heads)
        f = v.dim("F")
        if f.is_Integer and int(f) > p.max_frames:
            ctx.fail(f"{ctx.name} takes at most max_frames={p.max_frames} frames but "
                     f"{ctx.source('video')} gives {v}", "video")
        n = ctx.exact_div("video", v.dim("H"), p.patch, "frame height") * \
            ctx.exact_div("video", v.dim("W"), p.patch, "frame width")
        tokens = f if p.frame_pool != "none" else f * n
        if p.pool == "mean":
            return vec(v.dim("B"), p.width, v.tags)
        return seq(v.dim("B"), tokens, p.width, v.tags)

    def torch_args(self, p, x, ctx):
        v = x["video"]
        return {"in_channels": fixed(ctx, "video", v, "C", "channel count"),
                "grid": grid(ctx, "video", v, p.patch), **p.model_dump()}


@register
class PatchEmbed(Component):
    name = "patch_embed"
    category = "encoder"
    summary = "Image tokenizer: non-overlapping patches projected to tokens, optional positions"
    inputs = (Port("image"),)
    torch = "mmgraph.components.nn.encoders:PatchEmbed"

    class Params(Params):
        patch: PosInt
        width: PosInt
        pos: Literal["none", "learned", "sincos2d"] = "learned"
        cls_token: bool = False
        classes: PosInt | None = None  # the input holds class ids (a segmentation map)
        class_width: PosInt = 64  # their embedding width before patching
        bias: bool = True
        floor: bool = False  # drop the pixels past the last whole patch, as vit's

    def infer(self, p, x, ctx):
        img = x["image"]
        ctx.expect_kind("image", img, "Image")
        if p.classes is not None:
            if img.dtype in T.FLOAT_DTYPES:
                ctx.fail(f"{ctx.name} has classes={p.classes}, so it embeds class ids, but "
                         f"{ctx.source('image')} gives floats: {img}", "image", code="E307",
                         hint="declare the input with an integer dtype, e.g. Image<i64>[...]")
            ctx.expect_dim("image", img, "C", 1, "one channel of class ids, got")
        elif img.dtype not in T.FLOAT_DTYPES:
            ctx.fail(f"{ctx.name} expects pixels but {ctx.source('image')} gives {img}", "image",
                     code="E307", hint="set classes=N to embed a map of class ids")
        n = patch_count(ctx, img, p.patch, p.floor)
        return seq(img.dim("B"), n + (1 if p.cls_token else 0), p.width, img.tags)

    def torch_args(self, p, x, ctx):
        img = x["image"]
        return {"in_channels": fixed(ctx, "image", img, "C", "channel count"),
                "grid": grid(ctx, "image", img, p.patch), **p.model_dump(exclude={"floor"})}


@register
class TokenEmbedding(Component):
    name = "token_embedding"
    category = "encoder"
    summary = "Token ids to embeddings, with optional learned positions"
    inputs = (Port("tokens"),)
    torch = "mmgraph.components.nn.encoders:TokenEmbedding"
    sequence = "pointwise"

    class Params(Params):
        vocab: PosInt
        width: PosInt
        pos: Literal["none", "learned"] = "none"
        max_len: PosInt = 2048

    def infer(self, p, x, ctx):
        tok = x["tokens"]
        ctx.expect_kind("tokens", tok, "Tokens")
        return seq(tok.dim("B"), tok.dim("T"), p.width, tok.tags)


@register
class PointTokenizer(Component):
    name = "point_tokenizer"
    category = "encoder"
    summary = "Point cloud to tokens: farthest-point groups, k-NN neighbourhoods, a shared MLP"
    inputs = (Port("points"),)
    torch = "mmgraph.components.nn.encoders:PointTokenizer"

    class Params(Params):
        groups: PosInt
        neighbours: PosInt = 32
        width: PosInt

    def infer(self, p, x, ctx):
        pts = x["points"]
        ctx.expect_kind("points", pts, "Points")
        n = pts.dim("N")
        if n.is_Integer and int(n) < p.groups:
            ctx.fail(f"{ctx.name} makes {p.groups} groups but {ctx.source('points')} gives only "
                     f"{n} points: {pts}", "points")
        return seq(pts.dim("B"), p.groups, p.width, pts.tags)

    def torch_args(self, p, x, ctx):
        features = fixed(ctx, "points", x["points"], 2, "point feature count")
        return {"in_features": features, **p.model_dump()}


@register
class MelPatchEmbed(Component):
    name = "mel_patch_embed"
    category = "encoder"
    summary = "Audio tokenizer: a log-mel spectrogram cut into square patches (AST-style)"
    inputs = (Port("mel"),)
    torch = "mmgraph.components.nn.encoders:MelPatchEmbed"

    class Params(Params):
        patch: PosInt = 16
        stride: PosInt | None = None  # AST overlaps patches (stride 10); default: the patch
        width: PosInt

    def infer(self, p, x, ctx):
        mel = x["mel"]
        ctx.expect_kind("mel", mel, "Mel")
        stride = p.stride or p.patch
        counts = []
        for axis, what in (("M", "mel bins"), ("F", "frame count")):
            size = mel.dim(axis)
            if size.is_Integer and int(size) < p.patch:
                ctx.fail(f"{ctx.name}: {what} {size} is smaller than the patch {p.patch}", "mel",
                         code="E304")
            counts.append(T.sympy.floor((size - p.patch) / stride) + 1)
        return seq(mel.dim("B"), counts[0] * counts[1], p.width, mel.tags)


@register
class FeatureEmbed(Component):
    name = "feature_embed"
    category = "encoder"
    lora_targets = ("self",)  # the component is its own linear layer(s)
    summary = "Precomputed features (regions, time series, tabular) to tokens: a linear map"
    inputs = (Port("x"), Port("boxes", optional=True))
    torch = "mmgraph.components.nn.encoders:FeatureEmbed"

    class Params(Params):
        width: PosInt

    def infer(self, p, x, ctx):
        v = x["x"]
        ctx.expect_kind("x", v, "Seq", "Points", "Tensor")
        if v.rank != 3:
            ctx.fail(f"{ctx.name} expects [B, N, features] but {ctx.source('x')} gives {v}", "x")
        tags = v.tags
        if "boxes" in x:
            ctx.expect_kind("boxes", x["boxes"], "Boxes")
            ctx.expect_same("x", v.dims[1], "boxes", x["boxes"].dim("N"), "number of regions")
            tags |= x["boxes"].tags
        return seq(v.dims[0], v.dims[1], p.width, tags)

    def torch_args(self, p, x, ctx):
        return {"in_width": in_width(ctx, x), "with_boxes": "boxes" in x, **p.model_dump()}
