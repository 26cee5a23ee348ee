"""A spec file to a PyTorch model: the compiler checks it, the torch backend generates it.

This is where the front end meets the torch backend, so that neither imports the other; the
CLI, training and export start from a spec here.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from mmgraph.backends.torch.load import model_class, write_source
from mmgraph.backends.torch.pretrained import load_pretrained
from mmgraph.compiler import build_graph
from mmgraph.ir.graph import Graph


def load_class(spec: str | Path, model: str | None = None, *,
               lib_dirs: Iterable[str | Path] = (), **overrides) -> tuple[type, Graph]:
    """The generated model class (not yet instantiated) and its graph. `lib_dirs`: folders
    outside the spec's own tree that its imports may read (`--lib`)."""
    g = build_graph(spec, overrides, model, lib_dirs)
    return model_class(g, spec), g


def instantiate(cls: type, g: Graph, *, pretrained: bool = True):
    """A new model of a generated class, with the graph it came from and, unless asked not
    to, the weights of its `pretrained(...)` declarations (read from their local folders;
    any missing, unexpected or mis-shaped tensor is named in a PretrainedError). Every
    place that makes a model to use (load, train, export) makes it here; one about to take
    a checkpoint's weights passes pretrained=False."""
    instance = cls()
    instance.graph = g  # the checked IR it came from, for trainers and exporters
    if pretrained:
        load_pretrained(instance, g)
    return instance


def load(spec: str | Path, model: str | None = None, *, lib_dirs: Iterable[str | Path] = (),
         pretrained: bool = True, **overrides):
    """The spec's model, instantiated: the same source `mmgraph compile` writes, with the
    weights of its pretrained declarations unless pretrained=False."""
    cls, g = load_class(spec, model, lib_dirs=lib_dirs, **overrides)
    return instantiate(cls, g, pretrained=pretrained)


def write(spec: str | Path, out_dir: str | Path, overrides: dict | None = None,
          model: str | None = None, lib_dirs: Iterable[str | Path] = ()) -> tuple[Path, Path]:
    """Write `<model>.py` and `<model>.ir.txt` into out_dir."""
    return write_source(build_graph(spec, overrides, model, lib_dirs), spec, out_dir)
