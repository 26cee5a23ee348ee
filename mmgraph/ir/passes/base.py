"""What the passes share: the compilation state, and the manager that runs them in order.

Each pass is a small function `run(c: Compilation)` in its own module, registered by name.
A pass reports problems into `c.sink` (several independent ones per run) or raises a
`SpecError`; the manager stops after the first pass that found errors, since later passes
rely on earlier ones, and turns any unexpected Python exception into an E901 diagnostic that
names the pass, so a bug in mmgraph never shows a person a traceback.
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
    sink: DiagnosticSink = field(default_factory=DiagnosticSink)
    timings: dict[str, float] = field(default_factory=dict)


Pass = Callable[[Compilation], None]


@dataclass(frozen=True)
class NamedPass:
    name: str
    run: Pass
    doc: str
    # the next pass may still run after errors here (it skips what failed), so that one run
    # reports independent mistakes of both passes
    recoverable: bool = False


class PassFailed(SpecError):
    """The diagnostics of the pass that stopped the pipeline, with that pass's name."""

    def __init__(self, pass_name: str, diagnostics):
        self.pass_name = pass_name
        super().__init__(diagnostics)


def run_passes(c: Compilation, passes: list[NamedPass]) -> Compilation:
    import time

    carried_errors: str | bool = False  # the recoverable pass that found errors, if any
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
        carried_errors = carried_errors or (p.name if c.sink.has_errors else False)
    return c
