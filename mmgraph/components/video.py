"""Video tokenizers: clips of frames to token sequences over space and time."""

from __future__ import annotations

from mmgraph.components.common import PosInt, fixed, seq
from mmgraph.components.registry import Component, Params, Port, register
from mmgraph.ir import types as T


@register
class TubeletEmbed(Component):
    name = "tubelet_embed"
    category = "encoder"
    summary = ("Video tokenizer: non-overlapping tubelets of t frames x p x p pixels, each "
               "projected to one token (a Conv3d with stride = kernel, as ViViT/VideoMAE)")
    inputs = (Port("video"),)
    torch = "mmgraph.components.nn.video:TubeletEmbed"

    class Params(Params):
        patch: PosInt
        tubelet: PosInt = 2  # frames per token
        width: PosInt
        bias: bool = True

    def infer(self, p, x, ctx):
        v = x["video"]
        ctx.expect_kind("video", v, "Video")
        if v.dtype not in T.FLOAT_DTYPES:
            ctx.fail(f"{ctx.name} expects pixels but {ctx.source('video')} gives {v}", "video",
                     code="E307")
        f = ctx.exact_div("video", v.dim("F"), p.tubelet, "frame count")
        h = ctx.exact_div("video", v.dim("H"), p.patch, "frame height")
        w = ctx.exact_div("video", v.dim("W"), p.patch, "frame width")
        return seq(v.dim("B"), f * h * w, p.width, v.tags)

    def torch_args(self, p, x, ctx):
        return {"in_channels": fixed(ctx, "video", x["video"], "C", "channel count"),
                **p.model_dump()}
