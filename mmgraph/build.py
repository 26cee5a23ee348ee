"""A spec file to a PyTorch model: the compiler checks it, the torch backend generates it.

This is where the front end meets the torch backend, so that neither imports the other; the
CLI, training and export start from a spec here.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from mmgraph.backends.torch.load import model_class, write_source
from mmgraph.compiler import build_graph
from mmgraph.ir.graph import Graph


def load_class(spec: str | Path, model: str | None = None, *,
               lib_dirs: Iterable[str | Path] = (), **overrides) -> tuple[type, Graph]:
    """The generated model class (not yet instantiated) and its graph. `lib_dirs`: folders
    outside the spec's own tree that its imports may read (`--lib`)."""
    g = build_graph(spec, overrides, model, lib_dirs)
    return model_class(g, spec), g


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
    return write_source(build_graph(spec, overrides, model, lib_dirs), spec, out_dir)
