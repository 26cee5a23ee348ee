"""Convolutional and hierarchical backbones: timm's image models with their chosen feature
levels as typed outputs (MDETR's ResNet, ALIGN's EfficientNet, Cambrian's ConvNeXt, SkySense's
Swin), and wav2vec2's convolutional feature encoder over raw waveforms (AVSR, speech towers).

`timm_backbone` is typed from a table of each supported architecture's feature levels
(mmgraph/components/timm_features.py), so `mmgraph check` imports neither torch nor timm;
tests/test_backbones.py builds every architecture in the table with timm and compares."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mmgraph.components.common import PosInt, fixed, seq, vec
from mmgraph.components.registry import Component, Params, Port, register
from mmgraph.components.timm_features import FEATURES, architecture
from mmgraph.ir import types as T
from mmgraph.suggest import did_you_mean


def chosen_levels(ctx, asked: tuple[int, ...], n: int, param: str, has: str,
                  note: str = "") -> tuple[int, ...] | None:
    """The levels `param` asks for (negative from the deepest) as 0..n-1, shallow to deep, each
    once; None (or, with a ctx, a diagnostic `<has> 0..n-1<note>, not i`) when one is out of
    range."""
    out = []
    for i in asked:
        if not -n <= i < n:
            if ctx is not None:
                ctx.fail(f"{ctx.name}: {has} 0..{n - 1}{note}, not {i}", param=param,
                         code="E203")
            return None
        out.append(i % n)
    if ctx is not None and (not out or any(a >= b for a, b in zip(out, out[1:]))):
        ctx.fail(f"{ctx.name}: {param} must name levels from shallow to deep, each once, but "
                 f"{list(asked)} gives levels {out}", param=param, code="E203")
    return tuple(out)


def check_image(ctx, img, stride: int, level: str) -> None:
    """A backbone's input: floating-point pixels whose height and width are multiples of the
    deepest chosen level's stride (`level` names that level in the message)."""
    ctx.expect_kind("image", img, "Image")
    if img.dtype not in T.FLOAT_DTYPES:
        ctx.fail(f"{ctx.name} expects pixels but {ctx.source('image')} gives {img}",
                 "image", code="E307")
    for axis, what in (("H", "image height"), ("W", "image width")):
        size = img.dim(axis)
        if not T.is_integral(size / stride):
            ctx.fail(f"{ctx.name}: {what} {T.format_dim(size)} is not a multiple of "
                     f"{stride}, the stride of {level}", "image", code="E304")


def level_types(img, table, levels, output: str) -> list:
    """The type of each chosen level of a backbone over `img`: a grid Tensor[B, C, H/s, W/s],
    tokens Seq[B, (H/s)(W/s), C] (row by row) or the spatial mean Vec[B, C]."""
    b, h, w = img.dim("B"), img.dim("H"), img.dim("W")
    types = []
    for i in levels:
        channels, stride = table[i]
        if output == "grid":
            types.append(T.make("Tensor", (b, channels, h / stride, w / stride),
                                tags=img.tags))
        elif output == "tokens":
            types.append(seq(b, (h / stride) * (w / stride), channels, img.tags))
        else:
            types.append(vec(b, channels, img.tags))
    return types


def level_outputs(levels) -> tuple[str, ...]:
    """`out` is the deepest chosen level; each other one is `levelK`."""
    return ("out",) + tuple(f"level{i}" for i in levels[:-1])


@register
class TimmBackbone(Component):
    name = "timm_backbone"
    category = "encoder"
    summary = ("A timm image model (ResNet, EfficientNet, ConvNeXt, Swin) as a backbone: its "
               "chosen feature levels as grids, token sequences or pooled vectors")
    inputs = (Port("image"),)
    torch = "mmgraph.components.nn.backbones:TimmBackbone"

    class Params(Params):
        model: str = Field(min_length=1)  # a timm name: "resnet50", "convnext_tiny.fb_in1k"
        # timm's feature levels (model.feature_info), negative from the deepest; `out` is the
        # last listed level, every other one an extra output `levelK`
        out_indices: tuple[int, ...] = (-1,)
        output: Literal["grid", "tokens", "pooled"] = "grid"
        weights: str | None = Field(default=None, min_length=1)  # a local .safetensors file

    def levels(self, p, ctx=None) -> tuple[int, ...] | None:
        """`out_indices` as non-negative levels; None for a model not in the table."""
        table = FEATURES.get(architecture(p.model))
        if table is None:
            if ctx is not None:
                hint = did_you_mean(architecture(p.model), FEATURES)
                ctx.fail(f"{ctx.name}: '{p.model}' is not a timm architecture mmgraph can type",
                         param="model", code="E203",
                         hint=hint or "supported: " + ", ".join(sorted(FEATURES)) + " (add "
                              "one to mmgraph/components/timm_features.py)")
            return None
        return chosen_levels(ctx, p.out_indices, len(table), "out_indices",
                             f"{p.model} has feature levels")

    def outputs(self, p):
        return level_outputs(self.levels(p) or ())

    def infer(self, p, x, ctx):
        img = x["image"]
        levels = self.levels(p, ctx)
        table = FEATURES[architecture(p.model)]
        check_image(ctx, img, table[levels[-1]][1],
                    f"{p.model}'s feature level {levels[-1]}")
        if p.weights is not None:
            path = ctx.resolve(p.weights)
            if path.suffix != ".safetensors":
                ctx.fail(f"{ctx.name}: weights must be a .safetensors file, not {path.name}",
                         param="weights", code="E210",
                         hint="convert a .pth checkpoint with safetensors.torch.save_file")
            if not path.is_file():
                ctx.fail(f"{ctx.name}: weights file {path} does not exist"
                         if not path.exists() else f"{ctx.name}: weights {path} is not a file",
                         param="weights", code="E210",
                         hint="weights is a local .safetensors file of the timm model, "
                              "relative to the spec's folder; nothing is downloaded")
        types = level_types(img, table, levels, p.output)
        return {"out": types[-1], **{f"level{i}": t for i, t in zip(levels, types[:-1])}}

    def torch_args(self, p, x, ctx):
        img = x["image"]
        size = (fixed(ctx, "image", img, "H", "image height"),
                fixed(ctx, "image", img, "W", "image width"))
        return {"model": p.model, "out_indices": self.levels(p, ctx), "output": p.output,
                "weights": str(ctx.resolve(p.weights)) if p.weights else None,
                "in_channels": fixed(ctx, "image", img, "C", "channel count"),
                "image_size": size}


@register
class ConvFrontend(Component):
    name = "conv_frontend"
    category = "encoder"
    summary = ("wav2vec2's feature encoder: a stack of strided 1-D convolutions over a raw "
               "waveform, Audio[B, S] -> Seq[B, N, channels]")
    inputs = (Port("audio"),)
    torch = "mmgraph.components.nn.backbones:ConvFrontend"

    class Params(Params):
        # wav2vec2-base: 7 layers of 512 channels, 20 ms hop at 16 kHz (stride 320 in all)
        channels: tuple[PosInt, ...] = (512,) * 7
        kernels: tuple[PosInt, ...] = (10, 3, 3, 3, 3, 2, 2)
        strides: tuple[PosInt, ...] = (5, 2, 2, 2, 2, 2, 2)
        # "group": a GroupNorm (one group per channel) after the first conv only (wav2vec2
        # base); "layer": a LayerNorm after every conv (wav2vec2 large-lv60, HuBERT large)
        norm: Literal["group", "layer"] = "group"
        bias: bool = False  # wav2vec2's conv_bias
        act: Literal["gelu", "gelu_tanh", "quick_gelu", "relu", "silu", "tanh"] = "gelu"

        @model_validator(mode="after")
        def _one_length(self):
            if not len(self.channels) == len(self.kernels) == len(self.strides):
                raise ValueError(f"channels, kernels and strides give one entry per layer, but "
                                 f"they have {len(self.channels)}, {len(self.kernels)} and "
                                 f"{len(self.strides)}")
            if not self.channels:
                raise ValueError("conv_frontend needs at least one layer")
            return self

    def infer(self, p, x, ctx):
        a = x["audio"]
        ctx.expect_kind("audio", a, "Audio")
        n = a.dim("S")
        for i, (k, s) in enumerate(zip(p.kernels, p.strides)):
            if n.is_Integer and int(n) < k:
                ctx.fail(f"{ctx.name}: {T.format_dim(a.dim('S'))} samples leave {int(n)} frames "
                         f"before conv layer {i}, shorter than its kernel {k}", "audio",
                         code="E304")
            n = T.sympy.floor((n - k) / s) + 1
        return seq(a.dim("B"), n, p.channels[-1], a.tags)
