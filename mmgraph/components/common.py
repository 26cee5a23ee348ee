"""Parameter vocabulary shared by many components, and small helpers for their type rules
and for the sizes their torch faces are built with."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from mmgraph.ir import types as T
from mmgraph.ir.types import TensorType

PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
Prob = Annotated[float, Field(ge=0.0, le=1.0)]
PosFloat = Annotated[float, Field(gt=0.0)]
Act = Literal["gelu", "gelu_tanh", "quick_gelu", "relu", "silu", "swiglu", "geglu", "tanh"]
Norm = Literal["layer", "rms"]
Pos = Literal["none", "rope", "alibi"]  # positions applied inside attention


def tags_of(*types: TensorType) -> frozenset[str]:
    """Modality tags flow by union: a value carries every modality that reached it."""
    out: frozenset[str] = frozenset()
    for t in types:
        out |= t.tags
    return out


def seq(b, n, d, tags, dtype="f32") -> TensorType:
    return T.make("Seq", (b, n, d), dtype, tags)


def vec(b, d, tags, dtype="f32") -> TensorType:
    return T.make("Vec", (b, d), dtype, tags)


def with_width(t: TensorType, width) -> TensorType:
    """The same value with its last axis (the width) replaced."""
    return t.with_(dims=t.dims[:-1] + (T.sympy.sympify(width),))


ATTENTION = ("q", "k", "v", "o", "fc1", "fc2", "gate", "up", "down")  # lora targets
FEEDFORWARD = ("fc1", "fc2", "gate", "up", "down")


def check_heads(ctx, width: int, heads: int, what: str = "width") -> None:
    if width % heads:
        divisors = [h for h in range(1, min(width, 64) + 1) if width % h == 0]
        near = min(divisors, key=lambda h: abs(h - heads))
        ctx.fail(f"{ctx.name}: {what} {width} is not divisible by heads={heads}", code="E203",
                 param="heads", hint=f"choose heads so that {what} / heads is a whole number, "
                                     f"e.g. heads={near}")


def fixed(ctx, port: str, t: TensorType, axis: str | int, what: str) -> int:
    """A size the weights are made with (an input's width, channel count...): a number, or
    E304 when the spec leaves it symbolic."""
    d = t.dim(axis)
    if not d.is_Integer:
        ctx.fail(f"{ctx.name} needs a fixed {what} to size its weights, but it is "
                 f"{T.format_dim(d)}", port, code="E304",
                 hint="give the dimension a number in the spec or with --set")
    return int(d)


def in_width(ctx, x: dict, port: str = "x") -> int:
    """The width of input `port`, which sizes the layer's first weights."""
    return fixed(ctx, port, x[port], -1, "input width")


class InputWidthSized:
    """Mixin for components whose face takes every parameter plus `in_width`, the width of
    input `x` that sizes its first weights (norms, linear layers, FFNs, ...)."""

    def torch_args(self, p, x, ctx):
        return {"in_width": in_width(ctx, x), **p.model_dump()}


def causal_if_asked(self, p) -> str:
    """`Component.sequence_rule` of a layer with a `causal` parameter: causal attention can
    generate one token at a time, bidirectional attention cannot."""
    return "causal" if p.causal else "mixing"


def ctx_width(ctx, x: dict) -> dict:
    """`{"ctx_width": ...}` when the call has a context to attend to, else nothing."""
    return {"ctx_width": fixed(ctx, "ctx", x["ctx"], -1, "context width")} if "ctx" in x else {}


def grid(ctx, port: str, t: TensorType, patch: int) -> tuple[int, int]:
    """The patch grid (rows, columns) of an image or video input."""
    return (fixed(ctx, port, t, "H", "image height") // patch,
            fixed(ctx, port, t, "W", "image width") // patch)


def tap_port(k: int) -> str:
    """The output port of tap k: `layerK` counts blocks from the first, `backK` from the
    last, so that a spec's `f.back2` stays the penultimate block whatever the depth."""
    return f"layer{k}" if k > 0 else f"back{-k}"


def check_taps(taps: tuple[int, ...], depth: int) -> None:
    """Taps name blocks 1..depth or -depth..-1 (raised as E203 by the params' validator)."""
    for k in taps:
        if not (1 <= k <= depth or -depth <= k <= -1):
            raise ValueError(f"tap {k} is outside 1..{depth} and -{depth}..-1 (depth {depth})")
    ports = [tap_port(k) for k in taps]
    if len(set(ports)) != len(ports):
        raise ValueError(f"taps {list(taps)} name a block twice")

