"""Layers that read a sequence of vision tokens as the 2-D grid it came from: InternVL's pixel
shuffle (2-D neighbours folded into the width) and Cambrian's spatial vision aggregator
(queries on a coarse grid, each attending only to its own window of finer feature grids).

A vision feature grid arrives as `Seq[B, S*S, D]` (a square grid of tokens, row by row, as
`vit(drop_cls=true)` gives it) or, for the aggregator, as `Tensor[B, C, H, W]` (a feature map,
as `timm_backbone(output="grid")` gives it)."""

from __future__ import annotations

import math

from mmgraph.components.common import PosInt, check_heads, fixed, seq, tags_of
from mmgraph.components.registry import Component, Params, Port, register


def square_side(ctx, port: str, n) -> int | None:
    """The side S of a square grid of `n` tokens, None when n is symbolic; E304 when n is a
    number that is not a square."""
    if not n.is_Integer:
        return None
    side = math.isqrt(int(n))
    if side * side != int(n):
        ctx.fail(f"{ctx.name} reads the {n} tokens of {ctx.source(port)} as a square grid, "
                 f"but {n} is not a square number", port, code="E304",
                 hint="drop the class token first (vit(..., drop_cls=true)) or pass a "
                      "Tensor[B, C, H, W] feature map")
    return side


@register
class PixelShuffle(Component):
    name = "pixel_shuffle"
    category = "connector"
    summary = ("InternVL's pixel shuffle: each r x r block of a square token grid becomes one "
               "token r**2 times as wide (Seq[B, N, D] -> Seq[B, N/r**2, D*r**2])")
    inputs = (Port("x"),)
    has_weights = False
    torch = "mmgraph.components.nn.vision_grids:pixel_shuffle"

    class Params(Params):
        ratio: PosInt = 2  # InternVL's downsample_ratio 0.5 is ratio=2

    def infer(self, p, x, ctx):
        t = x["x"]
        ctx.expect_kind("x", t, "Seq")
        side = square_side(ctx, "x", t.dim("N"))
        if side is not None and side % p.ratio:
            ctx.fail(f"{ctx.name}: the {side}x{side} token grid of {ctx.source('x')} is not a "
                     f"multiple of ratio={p.ratio}", "x", code="E304")
        n = ctx.exact_div("x", t.dim("N"), p.ratio ** 2, "token count")
        return seq(t.dim("B"), n, t.width * p.ratio ** 2, t.tags, t.dtype)


@register
class LocalCrossAttention(Component):
    name = "local_cross_attention"
    category = "connector"
    summary = ("Cambrian's spatial vision aggregator: learnable queries on a grid x grid "
               "lattice, each attending only to its own window of one or more feature grids")
    inputs = (Port("ctx", variadic=True),)
    torch = "mmgraph.components.nn.vision_grids:LocalCrossAttention"

    class Params(Params):
        grid: PosInt  # G: G*G queries; every feature grid's side must be a multiple of G
        width: PosInt
        heads: PosInt = 8
        bias: bool = True
        # a learned embedding per position inside a window, per input, added to its features
        # (Cambrian's pos_embed_i: keys know where in the window they sit)
        window_pos: bool = True

    def windows(self, p, ctx, port: str, t) -> tuple[int, int, int]:
        """(rows, columns, channels) of one feature grid, each side a multiple of `grid`."""
        ctx.expect_kind(port, t, "Seq", "Tensor")
        if t.kind == "Tensor" and t.rank != 4:
            ctx.fail(f"{ctx.name} expects a feature map Tensor[B, C, H, W] or a token grid "
                     f"Seq[B, N, D] for '{port}' but {ctx.source(port)} gives {t}", port,
                     code="E302")
        if t.kind == "Seq":
            side = square_side(ctx, port, t.dim("N"))
            if side is None:
                fixed(ctx, port, t, "N", "token count")
            rows = cols = side
            channels = fixed(ctx, port, t, -1, "feature width")
        else:
            rows = fixed(ctx, port, t, 2, "feature map height")
            cols = fixed(ctx, port, t, 3, "feature map width")
            channels = fixed(ctx, port, t, 1, "channel count")
        for size, what in ((rows, "height"), (cols, "width")):
            if size % p.grid:
                ctx.fail(f"{ctx.name}: the {rows}x{cols} feature grid of {ctx.source(port)} has "
                         f"a {what} that is not a multiple of grid={p.grid}", port, code="E304",
                         hint="each query reads a window of (H/grid) x (W/grid) features")
        return rows, cols, channels

    def infer(self, p, x, ctx):
        check_heads(ctx, p.width, p.heads)
        parts = x["ctx"]
        for i, t in enumerate(parts):
            self.windows(p, ctx, f"ctx{i}", t)
            ctx.expect_same("ctx0", parts[0].dims[0], f"ctx{i}", t.dims[0], "batch")
        return seq(parts[0].dims[0], p.grid * p.grid, p.width, tags_of(*parts))

    def torch_args(self, p, x, ctx):
        shapes = [self.windows(p, ctx, f"ctx{i}", t) for i, t in enumerate(x["ctx"])]
        return {"ctx_shapes": tuple(shapes), **p.model_dump()}

