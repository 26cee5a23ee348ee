"""Parameter vocabulary shared by many components, and small type-rule helpers."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from mmgraph.ir import types as T
from mmgraph.ir.types import TensorType

PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
Prob = Annotated[float, Field(ge=0.0, le=1.0)]
Act = Literal["gelu", "quick_gelu", "relu", "silu", "swiglu", "geglu", "tanh"]
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
