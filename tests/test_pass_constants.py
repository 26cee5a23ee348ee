"""Pass `constants`: evaluation order, overrides, errors."""

from helpers import errors, graph

SRC = """
width = 4 * base
base = 16
model m {
  heads = width / 16
  input x: Seq[B, 3, width]
  layer attn: self_attention(heads=heads)
  output attn(x) as y
}
"""


def test_constants_evaluate_in_dependency_order():
    g = graph(SRC)
    assert (g.consts["width"], g.consts["base"], g.consts["heads"]) == (64, 16, 4)
    assert isinstance(g.consts["heads"], int)  # 64 / 16 is the integer 4


def test_overrides_change_everything_downstream():
    g = graph(SRC, base=8)
    assert g.consts["width"] == 32 and g.consts["heads"] == 2
    assert str(g.nodes["y"].type) == "Seq[B, 3, 32]"


def test_unknown_override_suggests_a_name():
    errs = errors(SRC, widht=8)
    assert errs == [("E106", 0, 0, "--set widht: model 'm' has no constant 'widht'")]


def test_self_reference_and_loops():
    errs = errors("a = b + 1\nb = a\nmodel m { input x: Vec[B, 2]\n output x }")
    assert errs[0][0] == "E306" and "loop" in errs[0][3]


def test_division_by_zero_and_type_errors_point_at_the_expression():
    errs = errors('w = 8 / 0\nz = "a" * 2\nmodel m { input x: Vec[B, 2]\n output x }')
    assert errs == [("E306", 1, 5, "division by zero"),
                    ("E306", 2, 5, "'*' needs two numbers, not the string \"a\" and 2")]
