"""What each pass leaves behind: lint after every pass, typed nodes in dependency order after
`infer`, a `verify` that changes nothing; a broken postcondition is E901 naming the pass."""

from __future__ import annotations

import random

import pytest

from mmgraph.compiler import check_file
from mmgraph.ir import passes
from mmgraph.ir.graph import Ref
from mmgraph.ir.passes import NamedPass, base, verify
from mmgraph.ir.program import load_program

from conftest import SPECS
from helpers import check

SRC = """
block mlp2(width) {
  input x: Seq[B, N, D]
  layer up: linear(out=width)
  output up(x)
}
model m {
  input x: Seq[B, N, 8]
  layer body: repeat(mlp2(width=8), times=2)
  y = body(x)
  z = y * 2.0
  output z
}
"""


def with_pass_after(after: str, name: str, fn) -> list[NamedPass]:
    out = []
    for p in passes.PASSES:
        out.append(p)
        if p.name == after:
            out.append(NamedPass(name, fn, "a test's pass"))
    return out


def internal_error(monkeypatch, pipeline):
    monkeypatch.setattr("mmgraph.compiler.PASSES", pipeline)
    result = check(SRC)
    (d,) = result.errors
    assert d.code == "E901"
    return result, d


def test_a_pass_that_leaves_a_dangling_edge_is_an_internal_error_naming_it(monkeypatch):
    def dangle(c):
        c.graph.nodes["z"].inputs[0] = ("x", Ref("gone"))

    result, d = internal_error(monkeypatch, with_pass_after("expand", "dangle", dangle))
    assert d.message == ("internal error in pass 'dangle': it left the IR broken: z: input "
                         "%gone is not a node")
    assert result.failed_pass == "dangle" and "bug in mmgraph" in d.hint


def test_a_pass_that_makes_a_cycle_is_an_internal_error_naming_it(monkeypatch):
    def loop(c):
        c.graph.nodes["body.0.x"].inputs[0] = ("x", Ref("z"))

    _, d = internal_error(monkeypatch, with_pass_after("expand", "loop", loop))
    assert d.message.startswith("internal error in pass 'loop': it left the IR broken: cycle: "
                                "body.0.x -> body.0.up -> body.1.x")


def test_lint_covers_the_structure_backends_read(monkeypatch):
    def drop_a_copy(c):
        del c.graph.nodes["body.1.up"]
        c.graph.nodes["z"].inputs[0] = ("x", Ref("body.0.up"))
        c.graph.values["y"] = Ref("body.0.up")

    _, d = internal_error(monkeypatch, with_pass_after("infer", "drop", drop_a_copy))
    assert d.message.endswith("it left the IR broken: call body: %body.1.up is not a node")


def test_after_infer_every_node_keeps_its_type(monkeypatch):
    def forget(c):
        c.graph.nodes["body.0.up"].types.clear()

    _, d = internal_error(monkeypatch, with_pass_after("verify", "forget", forget))
    assert d.message.startswith("internal error in pass 'forget': it left the IR broken: "
                                "body.0.up has no type (and 1 more)")


def test_after_infer_the_nodes_stay_in_dependency_order(monkeypatch):
    def shuffle(c):
        c.graph.nodes = dict(reversed(c.graph.nodes.items()))

    _, d = internal_error(monkeypatch, with_pass_after("infer", "shuffle", shuffle))
    assert "it left the IR broken: z comes before its input %body.1.up (and" in d.message


def test_postconditions_are_not_checked_against_a_pass_that_reported_errors():
    result = check("model m {\n input x: Seq[B, N, 8]\n layer f: linear(out=4, input=9)\n"
                   " output f(x) as y\n}")
    assert result.failed_pass == "infer"
    assert [d.code for d in result.errors] == ["E301"]


def test_infer_leaves_the_nodes_in_dependency_order():
    program = load_program("t.mmg", text=SRC)
    c = base.Compilation(program, program.root.models[0])
    pipeline = [p for p in passes.PASSES if p.name in ("resolve", "constants", "expand")]
    base.run_passes(c, pipeline)
    names = list(c.graph.nodes)
    random.Random(0).shuffle(names)
    c.graph.nodes = {n: c.graph.nodes[n] for n in names}
    assert base.in_dependency_order(c.graph)  # the shuffle broke it
    base.run_passes(c, [p for p in passes.PASSES if p.name == "infer"])
    assert base.in_dependency_order(c.graph) == []
    assert base.every_node_typed(c.graph) == []


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_verify_changes_nothing(spec):
    (g,) = check_file(spec).graphs.values()
    names = list(g.nodes)
    random.Random(0).shuffle(names)  # an order verify would have put right before
    g.nodes = {n: g.nodes[n] for n in names}
    before = g.dump()
    c = base.Compilation(None, None, graph=g)
    verify.run(c)
    assert g.dump() == before and list(g.nodes) == names
