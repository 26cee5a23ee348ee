"""Pass `infer`: shapes through components, arithmetic, slicing and block inputs."""

import json

import pytest

from mmgraph.cli import main

from helpers import errors, graph


def test_symbolic_lengths_flow_through_prefix_and_slices():
    g = graph("""
        model m {
          input img: Seq<image>[B, 16, 32]
          input text: Tokens[B, T]
          decoder lm: causal_lm(vocab=100, width=32, depth=1, heads=4)
          logits = lm(prefix=img, tokens=text)
          text_part = logits[16:]
          first = logits[0]
          output logits, text_part, first
        }
    """)
    assert str(g.nodes["logits"].type) == "Logits<image,text>[B, 16 + T, 100]"
    assert str(g.nodes["logits"].types["hidden"]) == "Seq<image,text>[B, 16 + T, 32]"
    assert str(g.nodes["text_part"].type) == "Logits<image,text>[B, T, 100]"
    assert str(g.nodes["first"].type) == "Logits<image,text>[B, 100]"


def test_concat_unions_modalities_and_adds_lengths():
    g = graph("""
        model m {
          input a: Seq<image>[B, 4, 8]
          input b: Seq<text>[B, T, 8]
          output concat(a, b) as ab
        }
    """)
    assert str(g.nodes["ab"].type) == "Seq<image,text>[B, 4 + T, 8]"


def test_width_mismatch_names_both_sides_and_points_at_the_argument():
    (e,) = errors("""
        model m {
          input image: Image[B, 3, 224, 224]
          encoder vision: vit(patch=16, width=768, depth=1, heads=12)
          connector proj: linear(out=64, input=1024)
          v = vision(image)
          output proj(v) as p
        }
    """)
    assert e == ("E301", 7, 15, "proj expects width 1024 but v gives Seq<image>[B, 197, 768]")


def test_image_not_divisible_by_patch():
    (e,) = errors("""
        model m {
          input image: Image[B, 3, 225, 224]
          encoder vision: vit(patch=16, width=64, depth=1, heads=4)
          output vision(image) as v
        }
    """)
    assert e[0] == "E304" and e[3] == "vision: image height 225 is not a multiple of 16"


def test_residual_add_needs_equal_shapes():
    (e,) = errors("""
        model m {
          input x: Seq[B, 4, 8]
          layer up: linear(out=16)
          output x + up(x) as y
        }
    """)
    assert e[0] == "E301" and e[3] == ("cannot add x and up: D is 8 in Seq[B, 4, 8] but 16 in "
                                       "Seq[B, 4, 16]")


def test_block_inputs_bind_free_symbols_consistently():
    src = """
        block mix(width) {
          input x: Seq[B, N, width]
          input ctx: Seq[B, M, width]
          fusion attn: cross_attention(heads=2)
          output x + attn(x, ctx)
        }
        model m {
          input a: Seq[B, 5, 8]
          input c: Seq[B, 9, CW]
          layer blk: mix(width=8)
          output blk(a, c) as y
        }
    """
    (e,) = errors(src.replace("CW", "16"))
    assert e[0] == "E301"
    assert e[3] == "block 'mix' input 'ctx' expects D = 8 but c gives Seq[B, 9, 16]"
    g = graph(src.replace("CW", "8"))
    assert str(g.type_of(g.outputs["y"])) == "Seq[B, 5, 8]"


def test_next_token_checks_the_prefix_offset():
    (e,) = errors("""
        model m {
          input img: Seq<image>[B, 16, 32]
          input text: Tokens[B, T]
          decoder lm: causal_lm(vocab=100, width=32, depth=1, heads=4)
          logits = lm(prefix=img, tokens=text)
          output logits
          loss l = next_token(logits, text, skip=8)
        }
    """)
    assert e[0] == "E301"
    assert e[3] == ("l: logits cover 16 + T positions but skip=8 prefix positions plus T tokens "
                    "make 8 + T")


def test_a_failed_value_is_reported_once():
    errs = errors("""
        model m {
          input x: Tokens[B, T]
          layer f: linear(out=4)
          a = f(x)
          b = f(a)
          output b
        }
    """)
    assert [e[0] for e in errs] == ["E302"]


def test_extra_output_ports():
    g = graph("""
        model m {
          input x: Seq[B, 4, 8]
          layer moe: moe_ffn(experts=4, top_k=2)
          h = moe(x)
          output h
          loss balance = moe_aux(h) * 0.01
        }
    """)
    assert str(g.nodes["h"].types["aux"]) == "Scalar[]"
    assert g.losses["balance"].weight == 0.01



# Sizes a torch face is built with (an input's width, channels, image size, point features)
# must be numbers: `check` refuses a symbolic one at the argument, as `compile` used to.
# (declarations, the call in `output CALL as y`, column of the argument, message)
SIZED_BY_INPUT = {
    "input width": ("input x: Seq[B, N, D]\n  layer f: linear(out=8)", "f(x)", 12,
                    "f needs a fixed input width to size its weights, but it is D"),
    "context width": ("input x: Seq[B, N, 64]\n  input c: Seq[B, M, E]\n"
                      "  layer f: cross_attention(heads=4)", "f(x, c)", 15,
                      "f needs a fixed context width to size its weights, but it is E"),
    "channel count": ("input x: Image[B, C, 224, 224]\n"
                      "  layer f: vit(patch=16, width=64, depth=1, heads=4)", "f(x)", 12,
                      "f needs a fixed channel count to size its weights, but it is C"),
    "image height": ("input x: Image[B, 3, H, 224]\n"
                     "  layer f: vit(patch=16, width=64, depth=1, heads=4)", "f(x)", 12,
                     "f needs a fixed image height to size its weights, but it is H"),
    "image width": ("input x: Video[B, 8, 3, 224, W]\n"
                    "  layer f: video_encoder(patch=16, width=64, depth=1, heads=4)", "f(x)",
                    12, "f needs a fixed image width to size its weights, but it is W"),
    "point features": ("input x: Points[B, N, F]\n"
                       "  layer f: point_tokenizer(groups=8, width=64)", "f(x)", 12,
                       "f needs a fixed point feature count to size its weights, but it is F"),
}


@pytest.mark.parametrize("case", SIZED_BY_INPUT)
def test_check_refuses_a_symbolic_size_the_weights_are_made_with(case, tmp_path, capsys):
    decls, call, col, message = SIZED_BY_INPUT[case]
    spec = tmp_path / "m.mmg"
    spec.write_text(f"model m {{\n  {decls}\n  output {call} as y\n}}\n")
    assert main(["check", "--json", str(spec)]) == 1
    (d,) = json.loads(capsys.readouterr().out)["diagnostics"]
    line = decls.count("\n") + 3
    assert (d["code"], d["line"], d["col"], d["message"]) == ("E304", line, col, message)
