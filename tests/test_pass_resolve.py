"""Pass `resolve`: names, duplicates, constants vs values, cycles."""

from helpers import errors, graph


def test_statement_order_does_not_matter():
    g = graph("""
        model m {
          output y
          y = f(x)
          layer f: linear(out=4)
          input x: Vec[B, 8]
        }
    """)
    assert str(g.nodes["y"].type) == "Vec[B, 4]"


def test_constants_are_lines_that_use_no_graph_value():
    g = graph("""
        model m {
          input x: Vec[B, 8]
          half = width / 2
          width = 16
          layer f: linear(out=half)
          y = f(x)
          output y
        }
    """)
    assert g.consts["half"] == 8
    assert str(g.nodes["y"].type) == "Vec[B, 8]"


def test_unknown_name_suggests_the_closest():
    (e,) = errors("""
        model m {
          input image: Vec[B, 8]
          layer f: linear(out=4)
          output f(imgae) as y
        }
    """)
    assert e == ("E101", 5, 12, "unknown name 'imgae'")


def test_cycle_reports_its_path():
    (e,) = errors("""
        model m {
          input x: Vec[B, 8]
          layer f: linear(out=8)
          a = f(b) + x
          b = f(a)
          output a
        }
    """)
    assert e[0] == "E401" and e[3] == "cycle in graph: a -> b -> a"


def test_several_independent_errors_in_one_run():
    errs = errors("""
        model m {
          input x: Vec[B, 8]
          layer f: linaer(out=8)
          layer g: linear(out=8, biass=true)
          output g(x) as y
          output q as z
        }
    """)
    assert [e[0] for e in errs] == ["E201", "E101"]
