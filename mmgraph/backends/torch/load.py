"""Checked IR to a torch module in memory, or its source on disk."""

from __future__ import annotations

import linecache
import sys
import types
from pathlib import Path

from mmgraph.backends.torch.codegen import Generated, generate
from mmgraph.escape import one_line
from mmgraph.ir.graph import Graph


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


def model_class(g: Graph, spec: str | Path) -> type:
    """The generated model class of a checked graph (not yet instantiated); `spec` is the
    file it came from, named in the source and its tracebacks."""
    gen = generate(g, str(spec))
    return getattr(module_from_source(gen, f"<mmgraph {spec}>"), gen.class_name)


def write_source(g: Graph, spec: str | Path, out_dir: str | Path) -> tuple[Path, Path]:
    """Write `<model>.py` and `<model>.ir.txt` of a checked graph into out_dir."""
    source = generate(g, str(spec)).source
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    py = out / f"{g.name}.py"
    ir = out / f"{g.name}.ir.txt"
    py.write_text(source, encoding="utf-8")
    ir.write_text(g.dump(), encoding="utf-8", errors="backslashreplace")
    return py, ir
