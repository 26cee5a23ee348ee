"""`hf_backbone`: a transformers vision backbone built from its config, without timm or
torchvision: ResNet, ConvNeXt and Swin (transformers' ResNetBackbone, ConvNextBackbone and
SwinBackbone, asked for their stages through `out_features`) and EfficientNet (the stage ends
among EfficientNetModel's hidden states, as ALIGN's image tower uses them).

timm needs a torchvision built for the installed torch, which is not always there (a CPU
torch of another build); transformers builds these four families from their configs alone.

The type comes from the spec's parameters: each family's channels and stride per level are
computed here the way transformers' modelling code sizes them, so `mmgraph check` imports
neither torch nor transformers. `weights` names a local transformers model folder; checking
reads its config.json only, to refuse a folder of another family or size."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from mmgraph.components.backbones import (
    check_image,
    chosen_levels,
    level_outputs,
    level_types,
)
from mmgraph.components.common import PosFloat, PosInt, fixed
from mmgraph.components.registry import Component, Params, Port, register
from mmgraph.ir.hf_config import read_hf_config

Family = Literal["resnet", "convnext", "swin", "efficientnet"]

# Each family's parameters and their defaults: transformers' own config defaults (ResNet-50,
# ConvNeXt-T, Swin-T, EfficientNet-B7), so that a parameter left out means what it means to
# transformers. A parameter another family does not have is refused.
DEFAULTS: dict[str, dict[str, object]] = {
    "resnet": {"depths": (3, 4, 6, 3), "widths": (256, 512, 1024, 2048), "embedding": 64,
               "block": "bottleneck"},
    "convnext": {"depths": (3, 3, 9, 3), "widths": (96, 192, 384, 768)},
    "swin": {"depths": (2, 2, 6, 2), "embedding": 96, "heads": (3, 6, 12, 24), "window": 7},
    "efficientnet": {"width_coefficient": 2.0, "depth_coefficient": 3.1},
}

# the spec's names of the config fields, as transformers names them
CONFIG_NAMES = {"depths": "depths", "widths": "hidden_sizes", "heads": "num_heads",
                "window": "window_size", "block": "layer_type",
                "width_coefficient": "width_coefficient",
                "depth_coefficient": "depth_coefficient"}
EMBEDDING_NAME = {"resnet": "embedding_size", "swin": "embed_dim"}

# EfficientNet's base network (transformers' EfficientNetConfig defaults, which every
# published B0-B7 and ALIGN keeps): output channels, stride and blocks of its seven stages
EFFICIENTNET_STAGES = ((16, 1, 1), (24, 2, 2), (40, 2, 2), (80, 2, 3), (112, 1, 3),
                       (192, 2, 4), (320, 1, 1))
DEPTH_DIVISOR = 8


def round_filters(channels: int, width_coefficient: float) -> int:
    """transformers' EfficientNet `round_filters`: channels scaled by the width coefficient,
    rounded to a multiple of 8 and never more than 10% down."""
    scaled = channels * width_coefficient
    out = max(DEPTH_DIVISOR, int(scaled + DEPTH_DIVISOR / 2) // DEPTH_DIVISOR * DEPTH_DIVISOR)
    return int(out + DEPTH_DIVISOR if out < 0.9 * scaled else out)


def resolved(p) -> dict[str, object]:
    """The family's parameters, the spec's values over the family's defaults."""
    return {k: (getattr(p, k) if getattr(p, k) is not None else v)
            for k, v in DEFAULTS[p.family].items()}


def feature_levels(p) -> tuple[tuple[int, int], ...]:
    """(channels, stride) of each level, shallow to deep. Level 0 is the stem (transformers'
    "stem"), levels 1.. its stages ("stage1"..); EfficientNet's last level is its top 1x1
    convolution to round_filters(1280) channels (EfficientNetModel's last_hidden_state)."""
    f = resolved(p)
    if p.family == "efficientnet":
        wc = f["width_coefficient"]
        out, stride = [(round_filters(32, wc), 2)], 2
        for channels, s, _ in EFFICIENTNET_STAGES:
            stride *= s
            out.append((round_filters(channels, wc), stride))
        return tuple(out) + ((round_filters(1280, wc), stride),)
    if p.family == "swin":
        widths = tuple(f["embedding"] * 2 ** i for i in range(len(f["depths"])))
        stem = f["embedding"]
    else:  # resnet: a stride-4 stem (conv and max-pool); convnext: a 4x4 patchify conv
        widths = f["widths"]
        stem = f["embedding"] if p.family == "resnet" else widths[0]
    return ((stem, 4),) + tuple((w, 4 * 2 ** i) for i, w in enumerate(widths))


def config_fields(p, image_size: tuple[int, int] | None = None) -> dict[str, object]:
    """The spec's config fields under transformers' names (the face builds the config from
    them; checking compares them with a weights folder's config.json)."""
    f = resolved(p)
    out = {CONFIG_NAMES[k]: (list(v) if isinstance(v, tuple) else v) for k, v in f.items()
           if k != "embedding"}
    if "embedding" in f:
        out[EMBEDDING_NAME[p.family]] = f["embedding"]
    if p.family == "convnext":
        out["num_stages"] = len(f["depths"])
    if p.family == "efficientnet":  # the top norm is sized by hidden_dim, the conv by this
        out["hidden_dim"] = round_filters(1280, f["width_coefficient"])
    if p.family == "swin" and image_size is not None:
        out["image_size"] = list(image_size)
    return out


@register
class HFBackbone(Component):
    name = "hf_backbone"
    category = "encoder"
    summary = ("A transformers vision backbone built from its config (ResNet, ConvNeXt, Swin, "
               "EfficientNet; no timm): its chosen stages as grids, token sequences or pooled "
               "vectors")
    inputs = (Port("image"),)
    torch = "mmgraph.components.nn.hf_backbones:HFBackbone"

    class Params(Params):
        family: Family
        depths: tuple[PosInt, ...] | None = None  # blocks per stage (resnet, convnext, swin)
        widths: tuple[PosInt, ...] | None = None  # channels per stage (resnet, convnext)
        embedding: PosInt | None = None  # the stem's channels (resnet), embed_dim (swin)
        heads: tuple[PosInt, ...] | None = None  # attention heads per stage (swin)
        window: PosInt | None = None  # attention window (swin)
        block: Literal["bottleneck", "basic"] | None = None  # resnet's layer_type
        width_coefficient: PosFloat | None = None  # efficientnet
        depth_coefficient: PosFloat | None = None  # efficientnet
        # levels: 0 the stem, 1.. the stages (efficientnet: 1..7, and 8 its top conv);
        # negative from the deepest. `out` is the last listed, every other one `levelK`
        stages: tuple[int, ...] = (-1,)
        output: Literal["grid", "tokens", "pooled"] = "grid"
        weights: str | None = Field(default=None, min_length=1)  # a local transformers folder

        @model_validator(mode="after")
        def _family_fields(self):
            own = DEFAULTS[self.family]
            foreign = [k for k in ("depths", "widths", "embedding", "heads", "window", "block",
                                   "width_coefficient", "depth_coefficient")
                       if getattr(self, k) is not None and k not in own]
            if foreign:
                raise ValueError(f"{', '.join(foreign)} {'is' if len(foreign) == 1 else 'are'}"
                                 f" not a parameter of family \"{self.family}\" (its "
                                 f"parameters: {', '.join(own)})")
            f = resolved(self)
            for k in ("widths", "heads"):
                if k in f and len(f[k]) != len(f["depths"]):
                    raise ValueError(f"{k} gives one entry per stage, but it has {len(f[k])} "
                                     f"and depths {len(f['depths'])}")
            if self.family == "swin":
                for i, h in enumerate(f["heads"]):
                    if (f["embedding"] * 2 ** i) % h:
                        raise ValueError(f"swin stage {i + 1} is {f['embedding'] * 2 ** i} "
                                         f"wide, not divisible by its {h} heads")
            return self

    def levels(self, p, ctx=None) -> tuple[int, ...] | None:
        """`stages` as non-negative levels; None (or a diagnostic) when out of range."""
        return chosen_levels(ctx, p.stages, len(feature_levels(p)), "stages",
                             f"this {p.family} has levels", " (0 the stem)")

    def outputs(self, p):
        return level_outputs(self.levels(p) or ())

    def infer(self, p, x, ctx):
        img = x["image"]
        levels = self.levels(p, ctx)
        table = feature_levels(p)
        check_image(ctx, img, table[levels[-1]][1], f"level {levels[-1]} of this {p.family}")
        if p.weights is not None:
            self.check_folder(p, ctx)
        types = level_types(img, table, levels, p.output)
        return {"out": types[-1], **{f"level{i}": t for i, t in zip(levels, types[:-1])}}

    def check_folder(self, p, ctx) -> Path:
        """The weights folder must hold a config.json of this family and of the spec's sizes,
        and a model.safetensors: a wrong folder is a diagnostic naming it, before any build."""
        folder = ctx.resolve(p.weights)

        def fail(message, hint=None):
            ctx.fail(f"{ctx.name}: {message}", hint=hint, code="E210", param="weights")

        cfg = read_hf_config(folder, fail, "weights folder",
                             "weights is a local transformers model folder (config.json and "
                             "model.safetensors), relative to the spec's folder; nothing is "
                             "downloaded")
        if cfg.get("model_type") != p.family:
            fail(f"{folder} holds a {cfg.get('model_type')!r} model, not a {p.family}")
        for key, want in config_fields(p).items():
            got = cfg.get(key, want if key == "hidden_dim" else None)
            if got != want:
                fail(f"{folder}/config.json has {key}={got!r} but the spec declares {want!r}",
                     "declare the folder's sizes in the spec (the type is computed from them)")
        if not (folder / "model.safetensors").is_file():
            fail(f"{folder} has no model.safetensors",
                 "save the model with save_pretrained(folder) (safetensors is its default)")
        return folder

    def torch_args(self, p, x, ctx):
        img = x["image"]
        size = (fixed(ctx, "image", img, "H", "image height"),
                fixed(ctx, "image", img, "W", "image width"))
        config = config_fields(p, size)
        config["num_channels"] = fixed(ctx, "image", img, "C", "channel count")
        return {"family": p.family, "config": config, "levels": self.levels(p, ctx),
                "output": p.output,
                "weights": str(ctx.resolve(p.weights)) if p.weights else None}
