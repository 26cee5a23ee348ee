"""A spec file with its imports: the set of modules, constants and blocks a model can see.

`import "common.mmg"` brings that file's top-level constants and blocks into scope (paths are
relative to the importing file). Imports are files only: nothing is executed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from mmgraph.lang import ast
from mmgraph.lang.diagnostics import Diagnostic, DiagnosticSink, Note, SpecError
from mmgraph.lang.parser import parse, parse_file


@dataclass
class Program:
    root: ast.Module
    modules: dict[str, ast.Module] = field(default_factory=dict)
    consts: dict[str, ast.Const] = field(default_factory=dict)
    blocks: dict[str, ast.Block] = field(default_factory=dict)


def load_program(path: str | Path | None = None, text: str | None = None) -> Program:
    """Parse a spec (from a file, or `text` named `path`) and everything it imports."""
    sink = DiagnosticSink()
    if text is not None:
        root = parse(text, str(path or "<string>"))
    else:
        root = parse_file(path)
    program = Program(root)
    _load_imports(program, root, [root.path], sink)
    _collect(program, sink)
    sink.raise_if_errors()
    return program


def _load_imports(program: Program, module: ast.Module, chain: list[str],
                  sink: DiagnosticSink) -> None:
    program.modules[module.path] = module
    base = Path(module.path).parent
    for imp in module.imports:
        target = base / imp.path.value
        key = str(target)
        if key in chain or str(target.resolve()) in [str(Path(c).resolve()) for c in chain]:
            cycle = " -> ".join([Path(c).name for c in chain] + [target.name])
            sink.add(Diagnostic("E104", f"import cycle: {cycle}", imp.path.span,
                                hint="move the shared blocks into a file both can import"))
            continue
        if key in program.modules:
            continue
        if not target.is_file():
            sink.add(Diagnostic("E103", f"cannot import \"{imp.path.value}\": no such file "
                                        f"next to {Path(module.path).name}", imp.path.span,
                                hint=f"import paths are relative to the importing file; "
                                     f"looked for {target}"))
            continue
        try:
            imported = parse_file(target)
        except SpecError as exc:
            for d in exc.diagnostics:  # a file that cannot be read: point at the import
                sink.add(d if d.span else replace(d, span=imp.path.span))
            continue
        _load_imports(program, imported, chain + [key], sink)


def _collect(program: Program, sink: DiagnosticSink) -> None:
    """Gather top-level constants and blocks; a name may be defined once across all files."""
    seen: dict[str, ast.Ident] = {}
    for module in program.modules.values():
        for item in module.items:
            if isinstance(item, (ast.Const, ast.Block)):
                name = item.name
                if name.name in seen:
                    first = seen[name.name]
                    sink.add(Diagnostic("E102", f"'{name.name}' is defined twice", name.span,
                                        notes=(Note(first.span, "first defined here"),),
                                        hint="rename one of them"))
                    continue
                seen[name.name] = name
                if isinstance(item, ast.Const):
                    program.consts[name.name] = item
                else:
                    program.blocks[name.name] = item
    model_names: dict[str, ast.Ident] = {}
    for model in program.root.models:
        if model.name.name in model_names:
            sink.add(Diagnostic("E102", f"model '{model.name.name}' is defined twice",
                                model.name.span,
                                notes=(Note(model_names[model.name.name].span,
                                            "first defined here"),)))
        model_names[model.name.name] = model.name
