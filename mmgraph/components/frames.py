"""Per-frame maps as reshapes the checker follows: frames folded into the batch and back,
each spatial location's frames as one short sequence and back, one vector as a sequence.

Video models run a frame model over every frame (X-CLIP, Video-LLaMA: a ViT or Q-Former per
frame, then a temporal model over the frames) and attend along time at each location
(TimeSformer's divided attention). Rather than a `map over an axis` construct, these are
weightless ops whose type rules carry the product dims (`B * 8`) exactly, so that any
component can be the per-frame model and sympy proves the batch comes back as `B`.

Token layouts: a video's tokens are frame-major, `Seq[B, F * N, D]` holds frame 0's N tokens,
then frame 1's, ... (as `batch_to_frames` of per-frame sequences gives them).
"""

from __future__ import annotations

from mmgraph.components.common import PosInt
from mmgraph.components.registry import Component, Params, Port, register
from mmgraph.ir import types as T


class _Reshape(Component):
    category = "op"
    has_weights = False
    inputs = (Port("x"),)


def _split(ctx, value, by: int, what: str, hint: str):
    """`value / by` (B from B * F), E304 when it is not a multiple: provably (6 by 4), or a
    whole dim whose quotient is not whole (`B * F` by 8, a free `B` by 4), which would type
    the result with a fraction the runtime cannot keep. A dim that is already a fraction
    (`H/16`) is left to the checks that made it."""
    q = ctx.exact_div("x", value, by, what)
    value = T.sympy.sympify(value)
    if value.free_symbols and _denominator(value) == 1 and _denominator(q) != 1:
        ctx.fail(f"{ctx.name}: {what} {T.format_dim(value)} is not a known multiple of {by}",
                 "x", code="E304", hint=hint)
    return q


def _denominator(d):
    return T.sympy.fraction(T.sympy.together(d))[1]


def _batch_of(ctx, t: T.TensorType, by: int, param: str):
    return _split(ctx, t.dims[0], by, "batch",
                  f"give the {param} a number (a file constant such as `{param} = 8`, used "
                  f"in the input's type and as {param}={param}), or write the batch as a "
                  "product, e.g. Vec[B * 8, D]")


def _tokens_of(ctx, t: T.TensorType, by: int):
    return _split(ctx, t.dim("N"), by, "token count",
                  "write the token count as a product of the frames, e.g. Seq[B, 8 * N, D]")


@register
class FramesToBatch(_Reshape):
    name = "frames_to_batch"
    summary = ("Fold the frames into the batch so a per-frame model sees one frame per row: "
               "Video[B, F, C, H, W] -> Image[B * F, C, H, W], Seq[B, F * N, D] -> "
               "Seq[B * F, N, D] (frames=F), Tensor[B, F, ...] -> Tensor[B * F, ...]")
    torch = "mmgraph.components.nn.frames:frames_to_batch"

    class Params(Params):
        frames: PosInt | None = None  # needed for a Seq; checked against a Video's F

    def infer(self, p, x, ctx):
        t = x["x"]
        ctx.expect_kind("x", t, "Video", "Seq", "Tensor")
        if t.kind == "Seq":
            if p.frames is None:
                ctx.fail(f"{ctx.name} needs frames=F to cut {ctx.source('x')}'s tokens "
                         f"({t}) into F frames", "x", code="E204",
                         hint="e.g. frames_to_batch(x, frames=8) for Seq[B, 8 * N, D]")
            n = _tokens_of(ctx, t, p.frames)
            return t.with_(dims=(t.dim("B") * p.frames, n, t.width), segments=None)
        if t.rank < 2:
            ctx.fail(f"{ctx.name} needs a batch and a frame axis but {ctx.source('x')} gives "
                     f"{t}", "x", code="E303")
        f = t.dims[1]
        if p.frames is not None and T.differ(f, T.sympy.Integer(p.frames)):
            ctx.fail(f"{ctx.name}: frames={p.frames} but {ctx.source('x')} has "
                     f"{T.format_dim(f)} frames: {t}", code="E203", param="frames")
        dims = (t.dims[0] * f,) + t.dims[2:]
        if t.kind == "Video":
            return T.make("Image", dims, t.dtype, t.tags)
        return t.with_(dims=dims)

    def torch_args(self, p, x, ctx):
        return {"frames": p.frames, "split_tokens": x["x"].kind == "Seq"}


@register
class BatchToFrames(_Reshape):
    name = "batch_to_frames"
    summary = ("Unfold frames from the batch after a per-frame model: Vec[B * F, D] -> "
               "Seq[B, F, D], Seq[B * F, N, D] -> Seq[B, F * N, D] (frame-major), "
               "Image[B * F, C, H, W] -> Video[B, F, C, H, W], Tensor[B * F, ...] -> "
               "Tensor[B, F, ...]")
    torch = "mmgraph.components.nn.frames:batch_to_frames"

    class Params(Params):
        frames: PosInt

    def infer(self, p, x, ctx):
        t = x["x"]
        ctx.expect_kind("x", t, "Vec", "Seq", "Image", "Tensor")
        if t.rank < 1:
            ctx.fail(f"{ctx.name} needs a batch axis but {ctx.source('x')} gives {t}", "x",
                     code="E303")
        b = _batch_of(ctx, t, p.frames, "frames")
        f = T.sympy.Integer(p.frames)
        if t.kind == "Vec":
            return T.make("Seq", (b, f, t.width), t.dtype, t.tags)
        if t.kind == "Seq":
            return t.with_(dims=(b, f * t.dim("N"), t.width), segments=None)
        if t.kind == "Image":
            return T.make("Video", (b, f) + t.dims[1:], t.dtype, t.tags)
        return t.with_(dims=(b, f) + t.dims[1:])

    def torch_args(self, p, x, ctx):
        return {"frames": p.frames, "join_tokens": x["x"].kind == "Seq"}


@register
class LocationsToBatch(_Reshape):
    name = "locations_to_batch"
    summary = ("Attention along time at each location (TimeSformer): Seq[B, F * N, D] "
               "(frame-major) -> Seq[B * N, F, D], one row per location holding its F frames; "
               "batch_to_locations undoes it")
    torch = "mmgraph.components.nn.frames:locations_to_batch"

    class Params(Params):
        frames: PosInt

    def infer(self, p, x, ctx):
        t = x["x"]
        ctx.expect_kind("x", t, "Seq")
        n = _tokens_of(ctx, t, p.frames)
        return t.with_(dims=(t.dim("B") * n, T.sympy.Integer(p.frames), t.width),
                       segments=None)


@register
class BatchToLocations(_Reshape):
    name = "batch_to_locations"
    summary = ("Undo locations_to_batch: Seq[B * N, F, D] -> Seq[B, F * N, D] (frame-major), "
               "N = locations per frame")
    torch = "mmgraph.components.nn.frames:batch_to_locations"

    class Params(Params):
        locations: PosInt

    def infer(self, p, x, ctx):
        t = x["x"]
        ctx.expect_kind("x", t, "Seq")
        b = _batch_of(ctx, t, p.locations, "locations")
        return t.with_(dims=(b, t.dim("N") * p.locations, t.width), segments=None)


@register
class VecToSeq(_Reshape):
    name = "vec_to_seq"
    summary = ("One vector as a sequence of one token, Vec[B, D] -> Seq[B, 1, D] (to concat a "
               "pooled embedding with tokens, or feed it to a sequence layer)")
    torch = "mmgraph.components.nn.frames:vec_to_seq"

    def infer(self, p, x, ctx):
        t = x["x"]
        ctx.expect_kind("x", t, "Vec")
        return T.make("Seq", (t.dim("B"), T.sympy.Integer(1), t.width), t.dtype, t.tags)
