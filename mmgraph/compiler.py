"""The front end as public functions: spec text or file in, checked IR graphs out.

`check_file` never raises for a mistake in a spec: it returns every diagnostic. `build_graph`
raises a `SpecError` instead, for callers that want the graph or nothing (backends).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmgraph.ir.graph import Graph
from mmgraph.ir.passes import PASSES, Compilation, PassFailed, run_passes
from mmgraph.ir.program import Program, load_program
from mmgraph.lang.diagnostics import Diagnostic, SpecError, error


@dataclass
class CheckResult:
    path: str
    graphs: dict[str, Graph] = field(default_factory=dict)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    failed_pass: str | None = None

    @property
    def ok(self) -> bool:
        return not any(d.severity == "error" for d in self.diagnostics)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "warning"]


def parse_override(text: str) -> tuple[str, Any]:
    """`NAME=VALUE` from the command line; VALUE is an int, float, true/false or a string."""
    if "=" not in text:
        raise ValueError(f"--set expects NAME=VALUE, got {text!r}")
    name, raw = (part.strip() for part in text.split("=", 1))
    if not name.isidentifier():
        raise ValueError(f"--set: {name!r} is not a constant name")
    return name, parse_value(raw)


def parse_value(raw: str) -> Any:
    if raw in ("true", "false"):
        return raw == "true"
    for conv in (int, float):
        try:
            return conv(raw.replace("_", ""))
        except ValueError:
            pass
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        return raw[1:-1]
    return raw


def _unique(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    seen, out = set(), []
    for d in sorted(diagnostics, key=Diagnostic.sort_key):
        key = (d.code, d.message, d.span)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def check_program(program: Program, overrides: dict[str, Any] | None = None,
                  model: str | None = None) -> CheckResult:
    result = CheckResult(program.root.path)
    models = program.root.models
    if not models and model is None:
        return _check_library(program, result)
    if model is not None:
        models = [m for m in models if m.name.name == model]
        if not models:
            names = [m.name.name for m in program.root.models]
            result.diagnostics.append(error("E105", f"no model '{model}' in {program.root.path}",
                                            hint=f"models: {', '.join(names) or 'none'}"
                                            ).diagnostics[0])
            return result
    for m in models:
        c = Compilation(program, m, dict(overrides or {}))
        try:
            run_passes(c, PASSES)
        except PassFailed as exc:
            result.failed_pass = result.failed_pass or exc.pass_name
        except RecursionError:  # a pathologically deep expression in a later stage
            c.sink.add(Diagnostic("E008", "expressions are nested too deeply", m.name.span,
                                  hint="split the expression into named constants or values"))
            result.failed_pass = result.failed_pass or "check"
        result.diagnostics.extend(c.sink.diagnostics)
        if not c.sink.has_errors:
            result.graphs[m.name.name] = c.graph
    result.diagnostics = _unique(result.diagnostics)
    return result


def _check_library(program: Program, result: CheckResult) -> CheckResult:
    """A file without a model is a library for `import`: check its blocks' names and say so."""
    from mmgraph.ir.passes import resolve
    from mmgraph.lang import ast

    c = Compilation(program, ast.Model(ast.Ident("<library>", None), (), None))
    resolve.check_blocks(c)
    result.diagnostics.extend(c.sink.diagnostics)
    result.diagnostics.append(Diagnostic(
        "E107", f"{Path(program.root.path).name} defines no model, so only its blocks' names "
                "were checked", None, severity="warning",
        hint="blocks are type-checked where a model uses them; `import` this file from one"))
    result.diagnostics = _unique(result.diagnostics)
    return result


def check_file(path: str | Path, overrides: dict[str, Any] | None = None,
               model: str | None = None, lib_dirs: Iterable[str | Path] = ()) -> CheckResult:
    """Parse and check every model of a spec file (or just `model`); imports may also read
    the folders in `lib_dirs`."""
    try:
        program = load_program(path, lib_dirs=lib_dirs)
    except SpecError as exc:
        return CheckResult(str(path), diagnostics=_unique(exc.diagnostics), failed_pass="parse")
    return check_program(program, overrides, model)


def check_text(text: str, path: str = "<string>", overrides: dict[str, Any] | None = None,
               model: str | None = None, lib_dirs: Iterable[str | Path] = ()) -> CheckResult:
    try:
        program = load_program(path, text=text, lib_dirs=lib_dirs)
    except SpecError as exc:
        return CheckResult(path, diagnostics=_unique(exc.diagnostics), failed_pass="parse")
    return check_program(program, overrides, model)


def build_graph(path: str | Path, overrides: dict[str, Any] | None = None,
                model: str | None = None, lib_dirs: Iterable[str | Path] = ()) -> Graph:
    """The checked graph of one model, or a SpecError with every error."""
    result = check_file(path, overrides, model, lib_dirs)
    if not result.ok:
        raise SpecError(result.errors)
    if len(result.graphs) != 1:
        names = ", ".join(result.graphs) or "none"
        raise error("E105" if result.graphs else "E107",
                    f"{path} defines {len(result.graphs)} models ({names}); name one",
                    hint="pass model=NAME")
    return next(iter(result.graphs.values()))
