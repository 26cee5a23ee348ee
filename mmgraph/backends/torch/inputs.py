"""Example inputs for a checked graph: the right kinds, dtypes and shapes, random values.

Used by `mmgraph stats` (on the meta device), the tests, the benchmarks and the exporters.
"""

from __future__ import annotations

import sympy
import torch

from mmgraph.errors import UsageError
from mmgraph.ir import types as T
from mmgraph.ir.graph import Graph
from mmgraph.suggest import did_you_mean

TORCH_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16,
                "f64": torch.float64, "i64": torch.int64, "i32": torch.int32,
                "i16": torch.int16, "i8": torch.int8, "u8": torch.uint8, "bool": torch.bool}


def concrete_shape(t: T.TensorType, dims: dict[str, int], default: int = 1) -> tuple[int, ...]:
    """The type's shape with its free symbols set from `dims` (others: `default`)."""
    subs = {s: dims.get(str(s), default) for d in t.dims for s in d.free_symbols}
    out = []
    for d in t.dims:
        value = sympy.sympify(d).subs(subs)
        if not value.is_Integer:
            value = sympy.floor(value)
        out.append(int(value))
    return tuple(out)


def free_dim_names(g: Graph) -> list[str]:
    """The symbols the model's input types leave free (B, T, ...), in first-use order."""
    names: dict[str, None] = {}
    for name in g.inputs:
        for d in g.nodes[name].type.dims:
            for s in sorted(d.free_symbols, key=str):
                names.setdefault(str(s))
    return list(names)


def validate_dims(g: Graph, dims: dict[str, int], flag: str = "--dims") -> None:
    """Refuse sizes given for dims the model does not have, and sizes that make an input
    empty: a typo must not be ignored, and a zero-sized batch must not reach the layers."""
    free = free_dim_names(g)
    for name in dims:
        if name not in free:
            hint = did_you_mean(name, free)
            have = ", ".join(free) or "none"
            raise UsageError(f"{flag}: model '{g.name}' has no free dim '{name}' (its inputs' "
                             f"free dims: {have})" + (f"; {hint}" if hint else ""))
    for name in g.inputs:
        t = g.nodes[name].type
        shape = concrete_shape(t, {**default_dims(g), **dims})
        if any(n < 1 for n in shape):
            raise UsageError(f"{flag}: input '{name}' would have shape {list(shape)} "
                             f"(type {t}); every size must be at least 1")


def default_dims(g: Graph) -> dict[str, int]:
    """The export block's opt sizes where the spec gives them."""
    if g.export is None:
        return {}
    return {name: r.opt for name, r in g.export.dims.items()}


def example_inputs(g: Graph, dims: dict[str, int] | None = None, *, device="cpu",
                   int_high: int = 16, seed: int = 0, names=None) -> dict[str, torch.Tensor]:
    """Random tensors for the graph's inputs. Integer inputs (token ids, labels, class maps)
    are drawn below `int_high`, which keeps them valid for any vocabulary of that size."""
    dims = {**default_dims(g), **(dims or {})}
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name in g.inputs if names is None else names:
        t = g.nodes[name].type
        shape = concrete_shape(t, dims)
        dtype = TORCH_DTYPES[t.dtype]
        if device == "meta":
            out[name] = torch.empty(shape, dtype=dtype, device="meta")
        elif t.dtype == "bool":
            out[name] = torch.ones(shape, dtype=torch.bool)
        elif t.dtype in T.FLOAT_DTYPES:
            out[name] = torch.randn(shape, generator=gen).to(dtype)
        else:
            high = 2 if t.kind == "Labels" else int_high
            out[name] = torch.randint(0, high, shape, generator=gen).to(dtype)
        if device not in ("cpu", "meta"):
            out[name] = out[name].to(device)
    return out
