"""Pass `parts`: the `export` block — dim ranges, parts as closed subgraphs, settings.

Every free dim of the model's inputs needs a range (it becomes an ONNX dynamic axis and a
TensorRT optimisation profile), with 1 <= min <= opt <= max. A part `name: ins -> outs`
computes its outputs from exactly the listed inputs: a graph input it needs but does not
list is an error, and so is a listed input its outputs do not depend on.
"""

from __future__ import annotations

from mmgraph.ir import schema
from mmgraph.ir.consts import evaluate
from mmgraph.ir.graph import DimRange, ExportPart, ExportPlan, Graph, Ref
from mmgraph.ir.passes.base import Compilation
from mmgraph.ir.schema import Codes, validate
from mmgraph.ir.settings import ExportSettings
from mmgraph.lang import ast
from mmgraph.lang.diagnostics import Diagnostic, Note, SpecError, error
from mmgraph.suggest import closest, did_you_mean


def free_dims(g: Graph) -> dict[str, ast.Input | None]:
    """Symbol names used by the model's input types, with the input that uses them first."""
    out: dict[str, str] = {}
    for name in g.inputs:
        for d in g.nodes[name].type.dims:
            for s in sorted(d.free_symbols, key=str):
                out.setdefault(str(s), name)
    return out


def check_dims(c: Compilation, node: ast.Export) -> dict[str, DimRange]:
    g = c.graph
    symbols = free_dims(g)
    ranges: dict[str, DimRange] = {}
    meant: set[str] = set()  # dims a misspelt range was probably for
    named = {d.name.name for d in node.dims}
    unranged = [s for s in symbols if s not in named]
    unknown = [d.name.name for d in node.dims if d.name.name not in symbols]
    for d in node.dims:
        name = d.name.name
        if name in ranges:
            c.sink.add(Diagnostic("E601", f"dim {name} has two ranges", d.name.span,
                                  notes=(Note(ranges[name].span, "first range here"),)))
            continue
        if name not in symbols:
            match = closest(name, unranged)
            if match is None and len(unknown) == 1 and len(unranged) == 1:
                match = unranged[0]  # the one dim without a range is what it was meant for
            meant.add(match)
            c.sink.add(Diagnostic(
                "E601", f"dim {name} is not a dimension of any input", d.name.span,
                hint=f"did you mean '{match}'?" if match else
                (f"the inputs' free dims are: {', '.join(symbols)}" if symbols else
                 "every input of this model has a fixed shape")))
            continue
        try:
            lo = evaluate(d.low, c.consts, what="a dim bound")
            hi = evaluate(d.high, c.consts, what="a dim bound")
            opt = evaluate(d.opt, c.consts, what="a dim bound") if d.opt is not None else lo
        except SpecError as exc:
            c.sink.add(exc)
            continue
        bad = next(((v, e) for v, e in ((lo, d.low), (hi, d.high), (opt, d.opt or d.low))
                    if isinstance(v, bool) or not isinstance(v, int)), None)
        if bad is not None:
            c.sink.add(Diagnostic("E601", f"dim {name}: bounds must be integers, got "
                                          f"{schema.show(bad[0])}", bad[1].span))
            continue
        if lo < 1:
            c.sink.add(Diagnostic("E601", f"dim {name}: the smallest size must be at least 1, "
                                          f"got {lo}", d.low.span))
        elif hi < lo:
            c.sink.add(Diagnostic("E601", f"dim {name}: range {lo}..{hi} is empty", d.span,
                                  hint=f"write {name} = {hi}..{lo}?"))
        elif not lo <= opt <= hi:
            c.sink.add(Diagnostic("E601", f"dim {name}: opt {opt} is outside {lo}..{hi}",
                                  (d.opt or d.low).span,
                                  hint="the opt size is what TensorRT tunes for; pick one "
                                       "inside the range"))
        else:
            ranges[name] = DimRange(name, lo, hi, opt, d.span)
    for name, user in symbols.items():
        if name not in ranges and name not in meant and \
                not any(r.name.name == name for r in node.dims):
            c.sink.add(Diagnostic("E601", f"dim {name} (of input '{user}') has no range",
                                  node.span, hint=f"add `dim {name} = 1..N @ opt` to export"))
    return ranges


def check_parts(c: Compilation, node: ast.Export) -> list[ExportPart]:
    g = c.graph
    values = _value_names(c)
    parts: list[ExportPart] = []
    seen: dict[str, ast.Ident] = {}
    nxg = g.nx_graph()
    for p in node.parts:
        if p.name.name in seen:
            c.sink.add(Diagnostic("E602", f"part '{p.name.name}' is defined twice", p.name.span,
                                  notes=(Note(seen[p.name.name].span, "first defined here"),)))
            continue
        seen[p.name.name] = p.name
        try:
            ins = [_resolve(values, i, "input") for i in p.inputs]
            outs = [_resolve(values, o, "output") for o in p.outputs]
        except SpecError as exc:
            c.sink.add(exc)
            continue
        cut = {ref.node for ref in ins}
        needed: set[str] = set()
        stack = [ref.node for ref in outs]
        while stack:
            n = stack.pop()
            if n in needed:
                continue
            needed.add(n)
            if n not in cut:
                stack.extend(pred for pred in nxg.predecessors(n))
        missing = [n for n in needed - cut if g.nodes[n].op == "input"]
        if missing:
            c.sink.add(Diagnostic(
                "E602", f"part '{p.name.name}' needs input '{missing[0]}', which it does not "
                        "list", p.span,
                hint=f"add it: part {p.name.name}: "
                     f"{', '.join([i.name for i in p.inputs] + [missing[0]])} -> "
                     f"{', '.join(o.name for o in p.outputs)}"))
            continue
        unused = [i for i, ref in zip(p.inputs, ins) if ref.node not in needed]
        if unused:
            c.sink.add(Diagnostic("E602", f"part '{p.name.name}' lists input '{unused[0].name}' "
                                          "but its outputs do not depend on it",
                                  unused[0].span, hint="remove it from the part's inputs"))
            continue
        order = [n for n in g.nodes if n in needed and n not in cut]
        parts.append(ExportPart(p.name.name, [i.name for i in p.inputs],
                                [o.name for o in p.outputs], order, p.span))
    return parts


def _value_names(c: Compilation) -> dict[str, Ref]:
    """Names a part may mention: the model's inputs, named values and outputs."""
    return {**c.graph.values, **c.graph.outputs}


def _resolve(values: dict[str, Ref], ident: ast.Ident, what: str) -> Ref:
    if ident.name not in values:
        raise error("E602", f"part {what} '{ident.name}' is not a value of the model",
                    ident.span, hint=did_you_mean(ident.name, values))
    return values[ident.name]


def run(c: Compilation) -> None:
    node = next((s for s in c.model.body if isinstance(s, ast.Export)), None)
    if node is None:
        return
    try:
        settings, _ = validate(ExportSettings, schema.settings(node.settings), c.consts,
                               "export", Codes("E603", "E603", "E603", "E603"), node.span,
                               symbols=True)
    except SpecError as exc:
        c.sink.add(exc)
        settings = None
    ranges = check_dims(c, node)
    parts = check_parts(c, node)
    if settings is not None:
        c.graph.export = ExportPlan(ranges, parts, settings.model_dump(exclude_none=True),
                                    node.span)
