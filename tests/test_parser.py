"""Parsing: AST shapes and spans. Syntax errors are covered by the bad-spec corpus."""

import pytest

from mmgraph.lang import ast
from mmgraph.lang.diagnostics import SpecError
from mmgraph.lang.parser import parse

SRC = """\
import "lib.mmg"
width = 2 * 384   # a constant
model m {
  input x: Image<depth, f16>[B, 1, 224, 224]
  encoder v: vit(patch=16, width=width) frozen lora(r=4) shared(u)
  a, b = split(x[1:], x[0], x.aux)
  output a as first, b
  loss l = 0.5 * mse(a, b)
  train { lr = 1e-3; stage s { trainable = [v]; epochs = 1 } }
  export { dim B = 1..8 @ 2; part p: x -> a; precision = fp16 }
}
"""


def test_every_construct_parses_into_its_ast_class():
    m = parse(SRC, "t.mmg")
    imp, const, model = m.items
    assert isinstance(imp, ast.Import) and imp.path.value == "lib.mmg"
    assert const.name.name == "width" and isinstance(const.value, ast.BinOp)
    inp, inst, assign, out, loss, train, export = model.body
    assert [t.name for t in inp.type.tags] == ["depth", "f16"]
    assert len(inp.type.dims) == 4
    assert inst.role == "encoder" and inst.call.func.name == "vit"
    assert [mod.kind for mod in inst.modifiers] == ["frozen", "lora", "shared"]
    assert inst.modifiers[2].target.name == "u"
    assert [t.name for t in assign.targets] == ["a", "b"]
    sl, idx, attr = assign.value.args
    assert isinstance(sl.index, ast.Slice) and sl.index.stop is None
    assert isinstance(idx, ast.Index) and idx.index.value == 0
    assert isinstance(attr, ast.Attr) and attr.attr.name == "aux"
    assert out.items[0].alias.name == "first" and out.items[1].alias is None
    assert isinstance(loss.value, ast.BinOp) and loss.value.op == "*"
    assert train.settings[0].name.name == "lr" and train.stages[0].name.name == "s"
    d = export.dims[0]
    assert (d.low.value, d.high.value, d.opt.value) == (1, 8, 2)
    assert export.parts[0].inputs[0].name == "x" and export.settings[0].name.name == "precision"


def test_spans_are_one_based_and_point_at_the_token():
    m = parse(SRC, "t.mmg")
    inst = m.models[0].body[1]
    assert (inst.name.span.line, inst.name.span.col, inst.name.span.end_col) == (5, 11, 12)
    assert (inst.call.func.span.line, inst.call.func.span.col) == (5, 14)
    assert str(inst.call.span) == "t.mmg:5:14"


@pytest.mark.parametrize("text,value", [("1_000", 1000), ("1e-3", 1e-3), ("2.5", 2.5),
                                        ("1e3", 1000), ("7", 7)])
def test_numbers(text, value):
    m = parse(f"x = {text}")
    assert m.consts[0].value.value == value


def test_range_is_not_a_float():
    m = parse("model m { export { dim B = 1..8 } }")
    d = m.models[0].body[0].dims[0]
    assert (d.low.value, d.high.value, d.opt) == (1, 8, None)


def test_syntax_error_is_a_spec_error_with_position():
    with pytest.raises(SpecError) as exc:
        parse("model m {\n  encoder v vit()\n}", "t.mmg")
    (d,) = exc.value.diagnostics
    assert (d.code, d.span.line, d.span.col) == ("E002", 2, 13)
    assert d.message == "expected ':' after the instance name"
