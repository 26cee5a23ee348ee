"""A spec file with its imports: the set of modules, constants and blocks a model can see.

`import "common.mmg"` brings that file's top-level constants and blocks into scope. Imports
are files only, nothing is executed, and they stay inside the project: a path is relative to
the importing file, names a `.mmg` file, and its real path (links followed) lies in the root
spec's folder tree or in one of the explicit library folders (`lib_dirs`, `--lib DIR`), where
a path is also looked up when no such file is next to the importing one. Anything else is
refused with E103 before the file is opened, so a refused file is never read nor echoed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mmgraph import escape
from mmgraph.lang import ast
from mmgraph.lang.diagnostics import Diagnostic, DiagnosticSink, Note, SpecError, error
from mmgraph.lang.parser import Unreadable, parse, parse_file, read_spec


@dataclass
class Program:
    root: ast.Module
    modules: dict[str, ast.Module] = field(default_factory=dict)
    consts: dict[str, ast.Const] = field(default_factory=dict)
    blocks: dict[str, ast.Block] = field(default_factory=dict)


def load_program(path: str | Path | None = None, text: str | None = None,
                 lib_dirs: Iterable[str | Path] = ()) -> Program:
    """Parse a spec (from a file, or `text` named `path`) and everything it imports.

    `lib_dirs` are folders outside the root spec's folder that imports may also read."""
    sink = DiagnosticSink()
    if "\0" in str(path or ""):  # no file system takes it; realpath would raise
        raise error("E001", f"cannot read {escape.one_line(path)}: a file name cannot hold "
                            "a NUL character", hint="rename the file")
    if text is not None:
        root = parse(text, str(path or "<string>"))
    else:
        root = parse_file(path)
    program = Program(root)
    loader = _Loader(program, Path(root.path).parent, [Path(d) for d in lib_dirs], sink)
    loader.load(root, [os.path.realpath(root.path)])
    _collect(program, sink)
    sink.raise_if_errors()
    return program


def _inside(real: str, folders: list[str]) -> bool:
    return any(os.path.commonpath([real, f]) == f for f in folders)


class _Loader:
    """Finds, confines and parses the files a program imports, each once."""

    def __init__(self, program: Program, root_dir: Path, lib_dirs: list[Path],
                 sink: DiagnosticSink):
        self.program, self.lib_dirs, self.sink = program, lib_dirs, sink
        self.project = os.path.realpath(root_dir)
        self.libs = [os.path.realpath(d) for d in lib_dirs]
        self.loaded: set[str] = set()  # real paths
        for d in lib_dirs:
            if not os.path.isdir(d):
                sink.add(Diagnostic("E103", f"library folder {d} is not a folder", None,
                                    hint="--lib takes an existing folder of .mmg files"))

    def load(self, module: ast.Module, chain: list[str]) -> None:
        """Add `module` and, depth first, what it imports; `chain` holds the real paths
        of the files importing it, to find cycles."""
        self.program.modules[module.path] = module
        self.loaded.add(chain[-1])
        for imp in module.imports:
            found = self.locate(imp, Path(module.path))
            if found is None:
                continue
            shown, real = found
            if real in chain:
                cycle = " -> ".join([Path(c).name for c in chain] + [Path(shown).name])
                self.sink.add(Diagnostic("E104", f"import cycle: {cycle}", imp.path.span,
                                         hint="move the shared blocks into a file both can "
                                              "import"))
                continue
            if real in self.loaded:
                continue
            try:
                imported = parse(read_spec(real), shown)
            except Unreadable as exc:
                self.refuse(imp, f"{exc}", "import .mmg spec files (UTF-8 text)")
                continue
            except SpecError as exc:  # a mistake in a spec of the project: shown as usual
                for d in exc.diagnostics:
                    self.sink.add(d)
                continue
            self.load(imported, chain + [real])

    def locate(self, imp: ast.Import, importer: Path) -> tuple[str, str] | None:
        """(the path to show, the real path) of an import, or None after a diagnostic."""
        text = imp.path.value
        control = next((c for c in text if ord(c) < 32 or ord(c) == 127), None)
        if not text.strip():
            return self.refuse(imp, "the path is empty", "write the file's name, e.g. "
                                                         "\"common.mmg\"")
        if control is not None:
            return self.refuse(imp, f"the path contains the control character {control!r}",
                               "an import path is a plain file name")
        allowed = [self.project, *self.libs]
        if os.path.isabs(text) and not _inside(os.path.realpath(text), self.libs):
            return self.refuse(imp, "an import path is relative to the importing file, "
                                    "not absolute", self.outside_hint())
        if not text.endswith(".mmg"):
            return self.refuse(imp, "only .mmg spec files can be imported",
                               "name the spec file, e.g. \"common.mmg\"")
        if os.path.isabs(text):
            candidates = [Path(text)]
        else:
            candidates = [importer.parent / text] + [d / text for d in self.lib_dirs]
        for candidate in candidates:
            real = os.path.realpath(candidate)
            if _inside(real, allowed) and os.path.lexists(candidate):
                if not real.endswith(".mmg"):
                    return self.refuse(imp, "it links to a file that is not a .mmg spec",
                                       "import .mmg spec files")
                return str(candidate), real
        if not _inside(os.path.realpath(candidates[0]), allowed):
            return self.refuse(imp, "it is outside the project folder", self.outside_hint())
        return self.refuse(imp, f"no such file next to {importer.name}",
                           "import paths are relative to the importing file; looked for "
                           + " and ".join(str(c) for c in candidates)
                           + ("" if self.lib_dirs else
                              "; a shared folder elsewhere can be named with --lib DIR"))

    def outside_hint(self) -> str:
        return (f"imports stay inside {self.project} (the root spec's folder) and its "
                "subfolders: write a relative path, or allow a library folder with --lib DIR")

    def refuse(self, imp: ast.Import, why: str, hint: str) -> None:
        shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in imp.path.value)
        self.sink.add(Diagnostic("E103", f"cannot import \"{shown}\": {why}", imp.path.span,
                                 hint=hint))


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
