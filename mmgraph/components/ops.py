"""Weightless operations: normalisation, activations, stop-gradient, joining, masking, batch
tricks."""

from __future__ import annotations

from mmgraph.components.common import PosInt, Prob, tags_of
from mmgraph.components.registry import Component, Params, Port, Training, register
from mmgraph.ir import types as T


class _Elementwise(Component):
    category = "op"
    has_weights = False
    inputs = (Port("x"),)
    sequence = "pointwise"

    def infer(self, p, x, ctx):
        t = x["x"]
        if t.dtype not in T.FLOAT_DTYPES:
            ctx.fail(f"{ctx.name} works on floating-point values but {ctx.source('x')} gives "
                     f"{t}", "x", code="E307",
                     hint="embed token ids first, e.g. with token_embedding(...)")
        return t


def _elementwise(name: str, summary: str) -> type[Component]:
    cls = type(name.title().replace("_", ""), (_Elementwise,),
               {"name": name, "summary": summary, "__module__": __name__,
                "torch": f"mmgraph.components.nn.ops:{name}"})
    return register(cls)


for _name, _summary in [
    ("l2norm", "Scale each vector to unit length along the width"),
    ("gelu", "GELU activation"),
    ("relu", "ReLU activation"),
    ("silu", "SiLU activation"),
    ("tanh", "tanh activation"),
    ("sigmoid", "Logistic sigmoid"),
    ("softmax", "Softmax over the last axis"),
    ("detach", "Stop gradients (teachers, momentum targets)"),
]:
    _elementwise(_name, _summary)


@register
class Dropout(_Elementwise):
    name = "dropout"
    summary = "Dropout (identity at inference)"
    torch = "mmgraph.components.nn.ops:dropout"

    class Params(Params):
        p: Prob = 0.1

    def torch_call_args(self, p, x, node, graph):
        return {"training": Training()}


@register
class BatchConcat(Component):
    name = "batch_concat"
    category = "op"
    summary = "Stack values along the batch axis (positive and negative pairs for ITM)"
    has_weights = False
    inputs = (Port("xs", variadic=True),)
    torch = "mmgraph.components.nn.ops:batch_concat"

    def infer(self, p, x, ctx):
        parts = x["xs"]
        if len(parts) < 2:
            ctx.fail(f"{ctx.name} needs at least two values", "xs", code="E205")
        first = parts[0]
        for i, t in enumerate(parts[1:], 1):
            if t.kind != first.kind or t.rank != first.rank:
                ctx.fail(f"{ctx.name} stacks values of one kind, but {ctx.source('xs0')} gives "
                         f"{first} and {ctx.source(f'xs{i}')} gives {t}", f"xs{i}", code="E302")
            for axis in range(1, t.rank):
                ctx.expect_same("xs0", first.dims[axis], f"xs{i}", t.dims[axis],
                                first.axes[axis] + " size")
        b = sum((t.dims[0] for t in parts), T.sympy.Integer(0))
        return first.with_(dims=(b,) + first.dims[1:], tags=tags_of(*parts))


@register
class HardNegatives(Component):
    name = "hard_negatives"
    category = "op"
    summary = ("For each example, pick a hard negative partner from the batch by similarity "
               "of a and b (ALBEF's ITM sampling); returns `pick` reordered")
    has_weights = False
    inputs = (Port("a"), Port("b"), Port("pick"))
    torch = "mmgraph.components.nn.ops:hard_negatives"

    def infer(self, p, x, ctx):
        a, b, pick = x["a"], x["b"], x["pick"]
        ctx.expect_kind("a", a, "Vec")
        ctx.expect_kind("b", b, "Vec")
        ctx.expect_same("a", a.width, "b", b.width, "width")
        ctx.expect_same("a", a.dim("B"), "pick", pick.dims[0], "batch")
        return pick


@register
class MaskTokens(Component):
    name = "mask_tokens"
    category = "op"
    summary = ("BERT-style masking of token ids for MLM: returns the corrupted ids; extra "
               "output `mask` marks the positions to predict")
    has_weights = False
    inputs = (Port("tokens"),)
    torch = "mmgraph.components.nn.ops:mask_tokens"

    class Params(Params):
        prob: Prob = 0.15
        mask_id: int = 103
        vocab: PosInt | None = None

    def outputs(self, p):
        return ("out", "mask")

    def infer(self, p, x, ctx):
        t = x["tokens"]
        ctx.expect_kind("tokens", t, "Tokens")
        return {"out": t, "mask": T.make("Mask", (t.dim("B"), t.dim("T")), tags=t.tags)}


@register
class MaskFeatures(Component):
    name = "mask_features"
    category = "op"
    summary = ("Masked region modelling (LXMERT/UNITER): while training, zero each feature "
               "vector with probability `prob`; extra output `mask` marks the zeroed ones "
               "(none at inference)")
    has_weights = False
    inputs = (Port("x"),)
    torch = "mmgraph.components.nn.ops:mask_features"

    class Params(Params):
        prob: Prob = 0.15

    def outputs(self, p):
        return ("out", "mask")

    def infer(self, p, x, ctx):
        t = x["x"]
        ctx.expect_kind("x", t, "Seq")
        if t.dtype not in T.FLOAT_DTYPES:
            ctx.fail(f"{ctx.name} masks feature vectors but {ctx.source('x')} gives {t}",
                     "x", code="E307", hint="mask token ids with mask_tokens(...)")
        return {"out": t, "mask": T.make("Mask", (t.dim("B"), t.dim("N")), tags=t.tags)}

    def torch_call_args(self, p, x, node, graph):
        return {"training": Training()}


@register
class TokenMask(Component):
    name = "token_mask"
    category = "op"
    summary = ("Keep a random subset of `keep` tokens (MAE/MultiMAE); extra output `mask` is "
               "true for the dropped ones. Concatenate modalities first to mask across them.")
    has_weights = False
    inputs = (Port("x"),)
    torch = "mmgraph.components.nn.ops:token_mask"

    class Params(Params):
        keep: PosInt

    def outputs(self, p):
        return ("out", "mask")

    def infer(self, p, x, ctx):
        t = x["x"]
        ctx.expect_kind("x", t, "Seq")
        n = t.dim("N")
        if n.is_Integer and p.keep > int(n):
            ctx.fail(f"{ctx.name} keeps {p.keep} tokens but {ctx.source('x')} has only {n}: {t}",
                     "x")
        return {"out": t.with_(dims=(t.dim("B"), T.sympy.Integer(p.keep), t.width)),
                "mask": T.make("Mask", (t.dim("B"), n), tags=t.tags)}

    def torch_call_args(self, p, x, node, graph):
        return {"training": Training()}


@register
class Concat(Component):
    name = "concat"
    category = "op"
    summary = "Join sequences along the token axis; the result carries every input's modality"
    has_weights = False
    inputs = (Port("xs", variadic=True),)
    torch = "mmgraph.components.nn.ops:concat"
    sequence = "joins"

    def torch_call_args(self, p, x, node, graph):
        """While generating, the leading inputs that do not depend on the tokens (a picture's
        tokens before the text) are joined on the first step only."""
        joins = dict(graph.decoding.joins) if graph.decoding is not None else {}
        return {"context_parts": joins[node.name]} if node.name in joins else {}

    def infer(self, p, x, ctx):
        parts = x["xs"]
        if len(parts) < 2:
            ctx.fail(f"{ctx.name} needs at least two sequences", "xs", code="E205")
        first = parts[0]
        for i, t in enumerate(parts):
            ctx.expect_kind(f"xs{i}", t, "Seq", "Mask", "Tokens")
            if t.kind != first.kind:
                ctx.fail(f"{ctx.name} joins values of one kind, but {ctx.source('xs0')} gives "
                         f"{first} and {ctx.source(f'xs{i}')} gives {t}", f"xs{i}", code="E302")
            ctx.expect_same("xs0", first.dims[0], f"xs{i}", t.dims[0], "batch")
            if t.kind == "Seq":
                ctx.expect_same("xs0", first.width, f"xs{i}", t.width, "width")
        n = sum((t.dims[1] for t in parts), T.sympy.Integer(0))
        dims = (first.dims[0], n) + first.dims[2:]
        segments: list | None = []
        for t in parts:
            if t.segments is not None:
                segments.extend(t.segments)
            elif len(t.tags) == 1:
                segments.append((next(iter(t.tags)), t.dims[1]))
            else:
                segments = None
                break
        return first.with_(dims=dims, tags=tags_of(*parts),
                           segments=tuple(segments) if segments else None)


@register
class ConcatWidth(Component):
    name = "concat_width"
    category = "op"
    summary = "Join values along the width (feature) axis"
    has_weights = False
    inputs = (Port("xs", variadic=True),)
    torch = "mmgraph.components.nn.ops:concat_width"
    sequence = "pointwise"

    def infer(self, p, x, ctx):
        parts = x["xs"]
        if len(parts) < 2:
            ctx.fail(f"{ctx.name} needs at least two values", "xs", code="E205")
        first = parts[0]
        for i, t in enumerate(parts):
            ctx.expect_kind(f"xs{i}", t, "Seq", "Vec")
            if t.kind != first.kind or t.rank != first.rank:
                ctx.fail(f"{ctx.name} joins values of one kind, but {ctx.source('xs0')} gives "
                         f"{first} and {ctx.source(f'xs{i}')} gives {t}", f"xs{i}", code="E302")
            for axis in range(t.rank - 1):
                ctx.expect_same("xs0", first.dims[axis], f"xs{i}", t.dims[axis],
                                first.axes[axis] + " size")
        width = sum((t.width for t in parts), T.sympy.Integer(0))
        return first.with_(dims=first.dims[:-1] + (width,), tags=tags_of(*parts))
