"""What the passes share: the compilation state, and the manager that runs them in order.

Each pass is a small function `run(c: Compilation)` in its own module, registered by name.
A pass reports problems into `c.sink` (several independent ones per run) or raises a
`SpecError`; the manager stops after the first pass that found errors, since later passes
rely on earlier ones, and turns any unexpected Python exception into an E901 diagnostic that
names the pass, so a bug in mmgraph never shows a person a traceback.

What a pass may assume is what the passes before it ensure: after each pass that leaves a
graph, the graph lints clean (`Graph.lint`), and once a pass found no errors its
postconditions (`ensures`) hold, then and after every later pass. A broken one is a bug in
the pass just run, reported as E901 too.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mmgraph.ir.graph import Graph
from mmgraph.ir.program import Program
from mmgraph.lang import ast
from mmgraph.lang.diagnostics import Diagnostic, DiagnosticSink, SpecError


@dataclass
class Compilation:
    """Everything the passes know about one model while it is being checked."""

    program: Program
    model: ast.Model
    overrides: dict[str, Any] = field(default_factory=dict)
    consts: dict[str, Any] = field(default_factory=dict)  # file + model constants, evaluated
    const_values: set[str] = field(default_factory=set)  # model assigns that are constants
    graph: Graph | None = None
    failed: set[str] = field(default_factory=set)  # nodes `infer` could not type (reported)
    sink: DiagnosticSink = field(default_factory=DiagnosticSink)
    timings: dict[str, float] = field(default_factory=dict)


Pass = Callable[[Compilation], None]
Postcondition = Callable[[Graph], list[str]]  # the problems found; none when it holds


@dataclass(frozen=True)
class NamedPass:
    name: str
    run: Pass
    doc: str
    # the next pass may still run after errors here (it skips what failed), so that one run
    # reports independent mistakes of both passes
    recoverable: bool = False
    ensures: tuple[Postcondition, ...] = ()  # hold from here on, once it found no errors


def every_node_typed(g: Graph) -> list[str]:
    """Every node has a type, and every edge, output and loss names a typed port."""
    problems = [f"{n.name} has no type" for n in g.nodes.values() if "out" not in n.types]
    edges = [(n.name, ref) for n in g.nodes.values() for ref in n.refs()]
    edges += [(f"output {name}", ref) for name, ref in g.outputs.items()]
    edges += [(f"loss {t.name}", t.value) for t in g.losses.values()]
    problems += [f"{user}: {ref} is not a typed port" for user, ref in edges
                 if ref.node in g.nodes and ref.port not in g.nodes[ref.node].types]
    return problems


def in_dependency_order(g: Graph) -> list[str]:
    """`nodes` lists every node after the nodes it reads, so backends walk it as is."""
    seen: set[str] = set()
    problems = []
    for node in g.nodes.values():
        problems += [f"{node.name} comes before its input {ref}" for ref in node.refs()
                     if ref.node not in seen and ref.node in g.nodes]
        seen.add(node.name)
    return problems


class PassFailed(SpecError):
    """The diagnostics of the pass that stopped the pipeline, with that pass's name."""

    def __init__(self, pass_name: str, diagnostics):
        self.pass_name = pass_name
        super().__init__(diagnostics)


def run_passes(c: Compilation, passes: list[NamedPass]) -> Compilation:
    import time

    carried_errors: str | bool = False  # the recoverable pass that found errors, if any
    ensured: list[Postcondition] = [Graph.lint]
    for p in passes:
        start = time.perf_counter()
        try:
            p.run(c)
        except SpecError as exc:
            c.sink.add(exc)
        except RecursionError:
            raise
        except Exception as exc:  # a bug in mmgraph: report it as one, never a traceback
            where = traceback.extract_tb(exc.__traceback__)[-1]
            c.sink.add(Diagnostic(
                "E901", f"internal error in pass '{p.name}': {type(exc).__name__}: {exc} "
                        f"(at {where.filename.rsplit('/', 1)[-1]}:{where.lineno})",
                c.model.span, hint="this is a bug in mmgraph; please report it with the spec"))
        c.timings[p.name] = time.perf_counter() - start
        if c.sink.has_errors and (not p.recoverable or carried_errors):
            raise PassFailed(carried_errors or p.name,
                             sorted(c.sink.diagnostics, key=Diagnostic.sort_key))
        if not c.sink.has_errors:
            ensured += p.ensures
        broken = [problem for ensure in ensured if c.graph is not None
                  for problem in ensure(c.graph)]
        if broken:
            c.sink.add(Diagnostic(
                "E901", f"internal error in pass '{p.name}': it left the IR broken: {broken[0]}"
                        + (f" (and {len(broken) - 1} more)" if len(broken) > 1 else ""),
                c.model.span, hint="this is a bug in mmgraph; please report it with the spec"))
            raise PassFailed(p.name, sorted(c.sink.diagnostics, key=Diagnostic.sort_key))
        carried_errors = carried_errors or (p.name if c.sink.has_errors else False)
    return c
