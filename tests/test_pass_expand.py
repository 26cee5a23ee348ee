"""Pass `expand`: blocks, repeats, inline layers, shared weights, parameter validation."""

from helpers import errors, graph

BLOCK = """
block res(width, mult=4) {
  input x: Seq[B, N, width]
  layer ff: ffn(mult=mult)
  output x + ff(layer_norm(x))
}
"""


def test_repeat_expands_blocks_with_dotted_names_and_threads_the_value():
    g = graph(BLOCK + """
        model m {
          input x: Seq[B, 10, 32]
          layer stack: repeat(res(width=32), times=3)
          y = stack(x)
          output y
        }
    """)
    ffns = [n for n, i in g.instances.items() if i.component == "ffn"]
    assert ffns == ["stack.0.ff", "stack.1.ff", "stack.2.ff"]
    norms = [n for n, i in g.instances.items() if i.component == "layer_norm"]
    assert norms == ["stack.0.layer_norm", "stack.1.layer_norm", "stack.2.layer_norm"]
    # each repetition's input is the previous one's output
    bind1 = g.nodes["stack.1.x"]
    assert bind1.op == "bind" and bind1.inputs[0][1].node.startswith("stack.0.")
    assert all(i.block == "res" for n, i in g.instances.items() if n.startswith("stack."))


def test_a_layer_called_twice_shares_weights():
    g = graph("""
        model m {
          input a: Vec[B, 8]
          input b: Vec[B, 8]
          encoder tower: linear(out=4)
          output tower(a) as ea, tower(b) as eb
        }
    """)
    calls = [n for n in g.nodes.values() if n.op == "call"]
    assert [c.target for c in calls] == ["tower", "tower"]
    assert len([i for i in g.instances.values() if i.component == "linear"]) == 1


def test_repeat_of_a_component_threads_only_its_first_input():
    g = graph("""
        model m {
          input x: Seq[B, 5, 16]
          input ctx: Seq[B, 7, 32]
          layer dec: repeat(transformer_layer(heads=2, cross=true), times=2)
          y = dec(x, ctx=ctx)
          output y
        }
    """)
    first, second = g.nodes["dec.0"], g.nodes["dec.1"]
    assert g.values["y"].node == "dec.1"  # y names the repeat's last output
    assert dict(first.inputs)["ctx"].node == "ctx"
    assert dict(second.inputs)["x"].node == "dec.0"
    assert dict(second.inputs)["ctx"].node == "ctx"
    assert str(second.type) == "Seq[B, 5, 16]"


def test_frozen_and_lora_reach_every_layer_of_a_block():
    g = graph(BLOCK + """
        model m {
          input x: Seq[B, 10, 32]
          layer blk: res(width=32) frozen lora(r=4, alpha=8, targets=["fc1", "fc2"])
          output blk(x) as y
        }
    """)
    inner = {n: i for n, i in g.instances.items() if n.startswith("blk.")}
    assert inner and all(i.frozen for i in inner.values())
    assert inner["blk.ff"].lora.r == 4
    assert inner["blk.layer_norm"].lora is None  # lora adapts linear layers; a norm has none


def test_lora_on_a_layer_without_linear_layers_is_an_error():
    (e,) = errors("""
        model m {
          input x: Seq[B, 10, 32]
          layer norm: layer_norm() lora(r=4)
          output norm(x) as y
        }
    """)
    assert e == ("E206", 4, 28, "lora adapts linear layers, and layer_norm has none")


def test_shared_ties_every_layer_of_a_repeated_block_in_any_order():
    g = graph(BLOCK + """
        model m {
          input a: Seq[B, 10, 32]
          input b: Seq[B, 10, 32]
          encoder tb: repeat(res(width=32), times=2) shared(ta)
          encoder ta: repeat(res(width=32), times=2)
          output ta(a) as ya, tb(b) as yb
        }
    """)
    assert g.instances["tb.1.ff"].shared == "ta.1.ff"
    assert g.instances["tb.0.layer_norm"].shared == "ta.0.layer_norm"


def test_bad_parameters_point_at_the_argument():
    errs = errors("""
        model m {
          input x: Image[B, 3, 224, 224]
          encoder v: vit(patch=16, width=768, depth=12, heads=12, pool="max")
          output v(x) as y
        }
    """)
    (code, line, col, msg), = errs
    assert (code, line, col) == ("E203", 4, 64)
    assert msg == 'vit parameter \'pool\': must be one of "none", "cls", "mean" (got "max")'


def test_missing_and_unknown_parameters():
    errs = errors("""
        model m {
          input x: Vec[B, 8]
          layer f: linear(outt=4)
          output f(x) as y
        }
    """)
    # the misspelt name is the missing one: one error, not two
    assert errs == [("E202", 4, 19, "linear has no parameter 'outt'")]


def test_strings_are_not_numbers():
    (e,) = errors("""
        model m {
          input x: Vec[B, 8]
          layer f: linear(out="4")
          output f(x) as y
        }
    """)
    assert e[0] == "E203" and "'out'" in e[3]


def test_inline_component_keywords_split_into_inputs_and_parameters():
    g = graph("""
        model m {
          input h: Seq[B, 6, 8]
          input t: Tokens[B, 6]
          output pool(h, tokens=t, mode="eot") as v
        }
    """)
    node = g.nodes["v"]
    assert [p for p, _ in node.inputs] == ["x", "tokens"]
    assert g.instances[node.target].params.mode == "eot"
