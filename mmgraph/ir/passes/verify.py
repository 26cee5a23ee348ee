"""Pass `verify`: whole-graph rules after typing; it reads the graph and changes nothing.

Every loss is a Scalar; layers tied with `shared(...)` have the same component and
parameters; each component's own `verify` hook runs (e.g. `moe_aux` needs a MoE layer
upstream). Unused inputs, values and layers are reported as warnings.
"""

from __future__ import annotations

from mmgraph.components import registry
from mmgraph.ir.passes.base import Compilation
from mmgraph.ir.schema import show
from mmgraph.lang.diagnostics import Diagnostic, Note


def run(c: Compilation) -> None:
    g = c.graph

    for term in g.losses.values():
        t = g.type_of(term.value)
        if t is not None and t.kind != "Scalar":
            c.sink.add(Diagnostic("E404", f"loss '{term.name}' must be a Scalar, but "
                                          f"{term.value.node} gives {t}",
                                  g.nodes[term.value.node].span,
                                  hint="use a loss component such as contrastive(...) or "
                                       "cross_entropy(...)"))

    for inst in g.instances.values():
        if inst.shared:
            other = g.instances.get(inst.shared)
            if other is None:
                continue
            if other.component != inst.component:
                differs = f"{inst.component} vs {other.component}"
            else:
                mine, theirs = inst.params.model_dump(), other.params.model_dump()
                differs = ", ".join(f"{k}={show(mine[k])} vs {show(theirs[k])}"
                                    for k in mine if mine[k] != theirs[k])
            if differs:
                c.sink.add(Diagnostic(
                    "E206", f"'{inst.name}' shares weights with '{other.name}', but they differ: "
                            f"{differs}", inst.span,
                    notes=(Note(other.span, f"'{other.name}' is declared here"),),
                    hint="tied layers need the same component and parameters"))

    for node in g.nodes.values():
        if node.op == "call" and node.name not in c.failed:
            comp = registry.get(g.instances[node.target].component)
            for d in comp.verify(node, g):
                c.sink.add(d)

    _warn_unused(c)


def _warn_unused(c: Compilation) -> None:
    g = c.graph
    used = {r.node for n in g.nodes.values() for r in n.refs()}
    used |= {r.node for r in g.outputs.values()}
    used |= {t.value.node for t in g.losses.values()}
    named = {r.node for r in g.values.values()}
    for node in g.nodes.values():
        if node.name in used:
            continue
        if node.op == "input":
            c.sink.add(Diagnostic("E405", f"input '{node.name}' is never used", node.span,
                                  severity="warning", hint="remove it or feed it to a layer"))
        elif node.name in named:
            c.sink.add(Diagnostic("E405", f"value '{node.name}' is computed but never used",
                                  node.span, severity="warning",
                                  hint="output it, use it in a loss, or remove it"))
    unused_inputs = set()
    for node in g.nodes.values():
        if node.op == "bind" and node.name not in used:
            key = (node.meta["block"], node.name.rsplit(".", 1)[-1])
            if key not in unused_inputs:
                unused_inputs.add(key)
                c.sink.add(Diagnostic("E405", f"input '{key[1]}' of block '{key[0]}' is never "
                                              "used", node.span, severity="warning",
                                      hint="remove it from the block, or use it"))
    made = {call.decl for call in g.block_calls()}
    for name, decl in g.decls.items():
        if (decl.block is not None or decl.times) and name not in made and "." not in name:
            c.sink.add(Diagnostic("E405", f"layer '{name}' is declared but never called",
                                  decl.span, severity="warning",
                                  hint=f"call it, e.g. y = {name}(x), or remove it"))
    called = {n.target for n in g.nodes.values() if n.op == "call"}
    for inst in g.instances.values():
        if inst.name not in called and not inst.anonymous and \
                inst.name.rsplit(".", 1)[0] not in made:
            c.sink.add(Diagnostic("E405", f"layer '{inst.name}' is declared but never called",
                                  inst.span, severity="warning",
                                  hint=f"call it, e.g. y = {inst.name}(x), or remove it"))
