"""Compile a spec to a torch module in memory, or write its source to disk."""

from __future__ import annotations

import linecache
import sys
import types
from collections.abc import Iterable
from pathlib import Path

from mmgraph.backends.torch.codegen import Generated, generate
from mmgraph.compiler import build_graph
from mmgraph.escape import one_line
from mmgraph.ir.graph import Graph


def compile_source(spec: str | Path, overrides: dict | None = None,
                   model: str | None = None, lib_dirs: Iterable[str | Path] = ()
                   ) -> tuple[Graph, Generated]:
    g = build_graph(spec, overrides, model, lib_dirs)
    return g, generate(g, str(spec))


def module_from_source(gen: Generated, filename: str) -> types.ModuleType:
    """Execute generated source as a module. The source is registered with linecache so
    tracebacks (and the spec-line notes) show the generated lines; `filename` (it holds the
    spec's path) is made one printable line first."""
    filename = one_line(filename)
    module = types.ModuleType(gen.module_name)
    module.__file__ = filename
    linecache.cache[filename] = (len(gen.source), None, gen.source.splitlines(True), filename)
    code = compile(gen.source, filename, "exec")
    exec(code, module.__dict__)  # exec: only the source just generated from the checked IR
    sys.modules[gen.module_name] = module
    return module


def load_class(spec: str | Path, model: str | None = None, *,
               lib_dirs: Iterable[str | Path] = (), **overrides):
    """The generated model class (not yet instantiated) and its graph. `lib_dirs`: folders
    outside the spec's own tree that its imports may read (`--lib`)."""
    g, gen = compile_source(spec, overrides, model, lib_dirs)
    module = module_from_source(gen, f"<mmgraph {spec}>")
    return getattr(module, gen.class_name), g


def load(spec: str | Path, model: str | None = None, *, lib_dirs: Iterable[str | Path] = (),
         **overrides):
    """The spec's model, instantiated: the same source `mmgraph compile` writes."""
    cls, g = load_class(spec, model, lib_dirs=lib_dirs, **overrides)
    instance = cls()
    instance.graph = g  # the checked IR it came from, for trainers and exporters
    return instance


def write(spec: str | Path, out_dir: str | Path, overrides: dict | None = None,
          model: str | None = None, lib_dirs: Iterable[str | Path] = ()) -> tuple[Path, Path]:
    """Write `<model>.py` and `<model>.ir.txt` into out_dir."""
    g, gen = compile_source(spec, overrides, model, lib_dirs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    py = out / f"{g.name}.py"
    ir = out / f"{g.name}.ir.txt"
    py.write_text(gen.source, encoding="utf-8")
    ir.write_text(g.dump(), encoding="utf-8", errors="backslashreplace")
    return py, ir
