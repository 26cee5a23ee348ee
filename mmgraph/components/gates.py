"""Per-example gates and conditional routing: a gate computed from a context vector, a
weighted mixture of expert outputs (MoVA's context-aware router over vision experts), and a
gate that zeroes a modality where an example lacks it (MultiModN's missing modalities).

The gates' outputs are plain `Tensor[B]` / `Tensor[B, K]` values, so they also combine with
`*` and `+` in a spec: a `Tensor[B]` broadcasts over a `Seq[B, N, D]` (see the infer pass's
arithmetic)."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from mmgraph.components.common import PosInt, in_width, tags_of
from mmgraph.components.registry import Component, Params, Port, register
from mmgraph.ir import types as T


@register
class Gate(Component):
    name = "gate"
    category = "layer"
    summary = ("A per-example gate from a context vector: Vec[B, D] -> Tensor[B] (out=1, "
               "sigmoid) or Tensor[B, K] weights (out=K, softmax or sigmoid), MoVA's router")
    inputs = (Port("x"),)
    torch = "mmgraph.components.nn.gates:Gate"

    class Params(Params):
        out: PosInt = 1  # K: one gate, or one weight per expert
        act: Literal["sigmoid", "softmax"] = "sigmoid"

        @model_validator(mode="after")
        def _softmax_needs_choices(self):
            if self.act == "softmax" and self.out == 1:
                raise ValueError("act=\"softmax\" over out=1 weight is always 1; use "
                                 "act=\"sigmoid\" or out=K for K experts")
            return self

    def infer(self, p, x, ctx):
        t = x["x"]
        ctx.expect_kind("x", t, "Vec")
        b = t.dim("B")
        dims = (b,) if p.out == 1 else (b, p.out)
        return T.make("Tensor", dims, t.dtype, t.tags)

    def torch_args(self, p, x, ctx):
        return {"in_width": in_width(ctx, x), **p.model_dump()}


@register
class Mixture(Component):
    name = "mixture"
    category = "op"
    summary = ("Weighted sum of K expert outputs of one type with per-example weights "
               "Tensor[B, K] (MoVA's routed vision experts): sum_k w[:, k] * expert_k")
    inputs = (Port("weights"), Port("experts", variadic=True))
    has_weights = False
    torch = "mmgraph.components.nn.gates:mixture"

    def infer(self, p, x, ctx):
        w, experts = x["weights"], x.get("experts", [])
        if len(experts) < 2:
            ctx.fail(f"{ctx.name} mixes at least two experts but is given {len(experts)}",
                     "weights", code="E205", hint="mixture(weights, expert_a, expert_b, ...)")
        first = experts[0]
        for i, t in enumerate(experts[1:], 1):
            if t.kind != first.kind or t.rank != first.rank or t.dtype != first.dtype:
                ctx.fail(f"{ctx.name} mixes experts of one type, but {ctx.source('experts0')} "
                         f"gives {first} and {ctx.source(f'experts{i}')} gives {t}",
                         f"experts{i}", code="E302")
            for axis in range(t.rank):
                ctx.expect_same("experts0", first.dims[axis], f"experts{i}", t.dims[axis],
                                first.axes[axis] + " size")
        if w.kind != "Tensor" or w.rank != 2 or w.dtype not in T.FLOAT_DTYPES:
            ctx.fail(f"{ctx.name} expects weights Tensor[B, K] (e.g. from gate(out=K, "
                     f"act=\"softmax\")) but {ctx.source('weights')} gives {w}", "weights",
                     code="E302")
        ctx.expect_same("weights", w.dims[1], "experts0", len(experts),
                        "number of experts (K of the weights Tensor[B, K], and the experts "
                        "given)")
        if first.rank:
            ctx.expect_same("weights", w.dims[0], "experts0", first.dims[0], "batch")
        return first.with_(tags=tags_of(*experts))


@register
class ModalityGate(Component):
    name = "modality_gate"
    category = "op"
    summary = ("Zero a modality's features for the examples that lack it: x * present, "
               "present a per-example Tensor<bool>[B] (MultiModN's missing modalities)")
    inputs = (Port("x"), Port("present"))
    has_weights = False
    torch = "mmgraph.components.nn.gates:modality_gate"

    def infer(self, p, x, ctx):
        t, present = x["x"], x["present"]
        ctx.expect_kind("x", t, "Seq", "Vec")
        if t.dtype not in T.FLOAT_DTYPES:
            ctx.fail(f"{ctx.name} gates floating-point features but {ctx.source('x')} gives "
                     f"{t}", "x", code="E307")
        if present.kind != "Tensor" or present.rank != 1:
            ctx.fail(f"{ctx.name} expects a per-example flag Tensor<bool>[B] for 'present' but "
                     f"{ctx.source('present')} gives {present}", "present", code="E302",
                     hint="a Mask has a token axis; declare e.g. `input has_audio: "
                          "Tensor<bool>[B]`")
        ctx.expect_same("x", t.dim("B"), "present", present.dims[0], "batch")
        return t
