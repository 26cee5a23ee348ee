"""Pass `constants`: evaluate the file's and the model's constants, applying `--set` overrides.

Constants may be written in any order; each is evaluated after the constants it uses. An
override replaces a constant's value before anything that depends on it is evaluated, so
`--set width=64` shrinks every layer whose size is written in terms of `width`.
"""

from __future__ import annotations

from typing import Any

import networkx as nx

from mmgraph.ir.consts import evaluate
from mmgraph.ir.graph import cycle_edges
from mmgraph.ir.passes.base import Compilation
from mmgraph.ir.passes.resolve import walk
from mmgraph.lang import ast
from mmgraph.lang.diagnostics import Diagnostic, DiagnosticSink, Note, SpecError
from mmgraph.suggest import did_you_mean


def evaluate_all(defs: dict[str, tuple[ast.Ident, ast.Expr]], env: dict[str, Any],
                 overrides: dict[str, Any], sink: DiagnosticSink) -> dict[str, Any]:
    """Evaluate named constant expressions in dependency order into `env` (returned)."""
    g = nx.DiGraph()
    for name, (_, expr) in defs.items():
        g.add_node(name)
        for e in walk(expr):
            if isinstance(e, ast.Name) and e.id in defs and e.id != name:
                g.add_edge(e.id, name)
            elif isinstance(e, ast.Name) and e.id == name and name not in overrides:
                sink.add(Diagnostic("E306", f"constant '{name}' is defined in terms of itself",
                                    e.span))
                return env
    edges = cycle_edges(g)
    if edges:
        cycle = [u for u, _ in edges]
        ident = defs[cycle[0]][0]
        sink.add(Diagnostic("E306", f"constants depend on each other in a loop: "
                                    f"{' -> '.join(cycle + [cycle[0]])}", ident.span,
                            notes=tuple(Note(defs[n][0].span, f"'{n}' defined here")
                                        for n in cycle[1:])))
        return env
    failed: set[str] = set()
    for name in nx.topological_sort(g):
        if name in overrides:
            env[name] = overrides[name]
            continue
        ident, expr = defs[name]
        if any(isinstance(e, ast.Name) and e.id in failed for e in walk(expr)):
            failed.add(name)
            continue
        try:
            env[name] = evaluate(expr, env)
        except SpecError as exc:
            sink.add(exc)
            failed.add(name)
    return env


def run(c: Compilation) -> None:
    file_defs = {n: (k.name, k.value) for n, k in c.program.consts.items()}
    model_defs = {a.targets[0].name: (a.targets[0], a.value) for a in c.model.body
                  if isinstance(a, ast.Assign) and a.targets[0].name in c.const_values}
    known = set(file_defs) | set(model_defs)
    for name in set(file_defs) & set(model_defs):
        c.sink.add(Diagnostic("E102", f"model '{c.model.name.name}' redefines the file's "
                                      f"constant '{name}'", model_defs[name][0].span,
                              severity="warning",
                              notes=(Note(file_defs[name][0].span, "the file's definition"),),
                              hint="the model's value wins inside the model; rename one to "
                                   "avoid confusion"))
    for name in c.overrides:
        if name not in known:
            c.sink.add(Diagnostic(
                "E106", f"--set {name}: model '{c.model.name.name}' has no constant '{name}'",
                None, hint=did_you_mean(name, known) or
                (f"its constants are: {', '.join(sorted(known))}" if known else
                 "this spec defines no constants")))
    env = evaluate_all(file_defs, {}, {k: v for k, v in c.overrides.items() if k in file_defs},
                       c.sink)
    env = evaluate_all(model_defs, env,
                       {k: v for k, v in c.overrides.items() if k in model_defs}, c.sink)
    c.consts = env
