"""`mmgraph stats`: parameters, FLOPs and memory of a spec at full size, without weights.

The generated model is built on PyTorch's meta device (shapes only, no memory), so a 7B
spec costs seconds. FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` over one
forward pass on meta tensors of the requested dims, not by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.flop_counter import FlopCounterMode

from mmgraph.backends.torch.inputs import concrete_shape, example_inputs, validate_dims
from mmgraph.components import registry
from mmgraph.ir.graph import Graph

BYTES = {"f32": 4, "f16": 2, "bf16": 2, "f64": 8, "i64": 8, "i32": 4, "i16": 2, "i8": 1,
         "u8": 1, "bool": 1}


@dataclass
class NodeStats:
    name: str
    role: str
    component: str
    type: str
    params: int
    trainable: bool


@dataclass
class Stats:
    model: str
    params_total: int
    params_trainable: int
    flops: int
    dims: dict[str, int]
    param_bytes: int
    activation_bytes: int
    nodes: list[NodeStats] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "params": {"total": self.params_total, "trainable": self.params_trainable},
            "flops": self.flops,
            "dims": self.dims,
            "memory": {"params_bytes": self.param_bytes,
                       "activations_bytes": self.activation_bytes},
            "nodes": [vars(n) for n in self.nodes],
        }


def _unique_params(module: torch.nn.Module):
    seen = set()
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            yield p


def default_stat_dims(g) -> dict[str, int]:
    dims = {"B": 1}
    if g.export is not None:
        dims.update({n: r.opt for n, r in g.export.dims.items()})
    for name in g.inputs:
        for d in g.nodes[name].type.dims:
            for s in d.free_symbols:
                dims.setdefault(str(s), 32)
    return dims


def compute(cls: type, g: Graph, dims: dict[str, int] | None = None) -> Stats:
    """Stats of a generated model class (`mmgraph.build.load_class`) at `dims`."""
    validate_dims(g, dims or {})
    with torch.device("meta"):
        m = cls()
    use = {**default_stat_dims(g), **(dims or {})}
    params = list(_unique_params(m))
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    param_bytes = sum(p.numel() * p.element_size() for p in params)

    counter = FlopCounterMode(display=False)
    with counter:  # (no no_grad: the module tracker wants autograd on; meta costs nothing)
        if g.outputs:  # the inference pass: eval mode (BatchNorm refuses one value in training)
            m.eval()(**example_inputs(g, use, device="meta"))
        else:  # a model with losses only: count the pass that computes them
            m.losses(**example_inputs(g, use, device="meta"))
    flops = counter.get_total_flops()

    out_nodes = {r.node for r in g.outputs.values()}
    forward_nodes = g.upstream(out_nodes)
    activations = 0
    for name in forward_nodes:
        for t in g.nodes[name].types.values():
            n = 1
            for size in concrete_shape(t, use):
                n *= size
            activations += n * BYTES[t.dtype]

    nodes = []
    tops: list[str] = []
    for name in g.instances:  # one row per top-level layer; a block or repeat is one row
        top = name.split(".")[0]
        if top not in tops and registry.get(g.instances[name].component).has_weights:
            tops.append(top)
    for top in tops:
        try:
            sub = m.get_submodule(top)
        except AttributeError:
            continue
        sub_params = list(_unique_params(sub))
        inst = g.instances.get(top)
        if inst is not None:
            role, component = inst.role, inst.component
        else:
            decl = g.decls.get(top)
            role = decl.role if decl else "layer"
            what = (decl and (decl.block or decl.component)) or "block"
            component = f"{what} x{decl.times}" if decl and decl.times else what
        last = [n for n in g.nodes.values() if n.op == "call" and
                (n.target == top or n.target.startswith(top + "."))]
        nodes.append(NodeStats(top, role, component,
                               str(last[-1].type) if last and last[-1].type else "-",
                               sum(p.numel() for p in sub_params),
                               any(p.requires_grad for p in sub_params)))
    return Stats(g.name, total, trainable, flops, use, param_bytes, activations, nodes)


def human(n: float, unit: str = "") -> str:
    for suffix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}{unit}"
    return f"{n:.0f} {unit}".rstrip()


def table(s: Stats) -> str:
    dims = ", ".join(f"{k}={v}" for k, v in s.dims.items())
    rows = [("layer", "role", "component", "output", "params", "trains")]
    for n in s.nodes:
        rows.append((n.name, n.role, n.component, n.type, f"{n.params:,}",
                     "yes" if n.trainable else "no"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i != 4 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines += [
        "",
        f"model {s.model}",
        f"  parameters   {s.params_total:,} total, {s.params_trainable:,} trainable",
        f"  forward      {human(s.flops, 'FLOP')} at {dims}",
        f"  memory       {human(s.param_bytes, 'B')} of parameters, "
        f"~{human(s.activation_bytes, 'B')} of activations (graph values, forward)",
    ]
    return "\n".join(lines)
