"""The structure expansion flattens stays in typed IR fields: declarations, block and repeat
calls, named values, train and export plans. No spec AST reaches a backend, and the dump
shows blocks and repeats."""

from __future__ import annotations

import dataclasses

import pytest
from pydantic import BaseModel

from mmgraph.compiler import check_file
from mmgraph.ir.graph import BlockCall, Declaration, Graph, Ref
from mmgraph.lang import ast

from conftest import SPECS
from helpers import graph

SRC = """\
block pair(width) {
  input x: Seq[B, N, D]
  layer a: linear(out=width)
  layer b: repeat(linear(out=width), times=2) frozen
  output b(a(x))
}
model m {
  input x: Seq[B, N, 8]
  decoder body: repeat(pair(width=8), times=2)
  layer twin: pair(width=8) shared(one)
  layer one: pair(width=8)
  y = body(x)
  output one(y) as u, twin(y) as v
}
"""


def test_declarations_are_typed_and_keep_no_ast():
    g = graph(SRC)
    assert not hasattr(g, "meta")
    body = g.decls["body"]
    assert isinstance(body, Declaration)
    assert (body.role, body.block, body.component, body.times) == ("decoder", "pair", None, 2)
    assert (body.span.line, body.block_span.line) == (9, 1)
    inner = g.decls["body.1.b"]
    assert (inner.component, inner.times, inner.frozen, inner.frozen_by) == \
        ("linear", 2, True, "body.1.b")
    # `shared` is what a declaration's own shared(x) ties it to, not what it inherits
    assert g.decls["twin"].shared == "one" and g.decls["twin.a"].shared is None
    assert g.instances["twin.a"].shared == "one.a"


def test_calls_record_each_copy_and_the_calls_inside_it():
    g = graph(SRC)
    body, one, twin = g.calls
    assert all(isinstance(c, BlockCall) for c in g.calls)
    assert (body.decl, body.block, body.times, body.threaded) == ("body", "pair", 2, 1)
    assert [e.prefix for e in body.expansions] == ["body.0", "body.1"]
    (inner,) = body.expansions[1].calls
    assert (inner.decl, inner.component, inner.times) == ("body.1.b", "linear", 2)
    assert inner.inputs == [("x", Ref("body.1.a"))]
    assert [c.decl for c in g.block_calls()] == [
        "body", "body.0.b", "body.1.b", "one", "one.b", "twin", "twin.b"]
    assert (one.times, twin.times) == (0, 0)
    assert g.values["y"] == body.outputs[0] == Ref("body.1.b.1")


def test_the_dump_shows_blocks_and_repeats_where_they_start():
    lines = graph(SRC).dump(spans=False).splitlines()
    assert "  decoder body = repeat(pair, times=2)" in lines
    assert "  layer body.0.b = repeat(linear, times=2) frozen" in lines
    assert "  layer twin = pair(...) shared(one)" in lines
    start = lines.index("  repeat body = pair(x=%x) x2, threading x -> %body.1.b.1")
    assert lines[start + 1].startswith("  %body.0.x : ")
    start = lines.index("  repeat body.0.b = linear(x=%body.0.a) x2, threading x -> %body.0.b.1")
    assert lines[start - 1].startswith("  %body.0.a : ") and \
        lines[start + 1].startswith("  %body.0.b.0 : ")
    assert "  block one = pair(x=%body.1.b.1) -> %one.b.1" in lines


def _ast_reachable(obj, path: str, seen: set[int]) -> str | None:
    """The path to the first spec AST node reachable from `obj`, or None."""
    if id(obj) in seen or isinstance(obj, (str, int, float, bool, type(None))):
        return None
    seen.add(id(obj))
    if type(obj).__module__ == ast.__name__:
        return path
    if isinstance(obj, dict):
        items = [(f"{path}[{k!r}]", v) for k, v in obj.items()]
    elif isinstance(obj, (list, tuple, set, frozenset)):
        items = [(f"{path}[{i}]", v) for i, v in enumerate(obj)]
    elif isinstance(obj, BaseModel):
        items = [(f"{path}.{k}", getattr(obj, k)) for k in type(obj).model_fields]
    elif dataclasses.is_dataclass(obj) or isinstance(obj, Graph):
        items = [(f"{path}.{k}", v) for k, v in vars(obj).items()]
    else:
        return None
    for where, value in items:
        found = _ast_reachable(value, where, seen)
        if found:
            return found
    return None


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_no_spec_ast_reaches_the_backends(spec):
    for g in check_file(spec).graphs.values():
        assert _ast_reachable(g, "graph", set()) is None
