"""Pass `parts`: dim ranges and parts as closed subgraphs."""

from helpers import errors, graph

SRC = """
model m {
  input image: Image[B, 3, 32, 32]
  input text: Tokens[B, T]
  encoder vision: vit(patch=16, width=32, depth=1, heads=2)
  connector proj: linear(out=32)
  decoder lm: causal_lm(vocab=50, width=32, depth=1, heads=2)
  v = proj(vision(image))
  logits = lm(prefix=v, tokens=text)
  output logits
  export {
    EXPORT
  }
}
"""


def plan(text):
    return graph(SRC.replace("EXPORT", text)).export


def test_parts_list_the_nodes_they_compute():
    p = plan("dim B = 1..8 @ 2\n dim T = 1..64\n part visual: image -> v\n"
             " part text: v, text -> logits\n precision = fp16")
    visual, text = p.parts
    assert visual.nodes == ["vision", "v"] and text.nodes == ["logits"]
    assert (p.dims["B"].min, p.dims["B"].opt, p.dims["B"].max) == (1, 2, 8)
    assert p.dims["T"].opt == 1  # opt defaults to min
    assert p.settings["precision"] == "fp16"


def test_a_part_must_list_every_input_it_needs():
    (e,) = errors(SRC.replace("EXPORT", "dim B = 1..8\n dim T = 1..8\n part text: text -> logits"))
    assert e[0] == "E602"
    assert e[3] == "part 'text' needs input 'image', which it does not list"


def test_a_part_must_use_every_input_it_lists():
    (e,) = errors(SRC.replace("EXPORT", "dim B = 1..8\n dim T = 1..8\n"
                                        " part visual: image, text -> v"))
    assert e[3] == "part 'visual' lists input 'text' but its outputs do not depend on it"


def test_dim_ranges_are_checked():
    errs = errors(SRC.replace("EXPORT", "dim B = 8..1\n dim T = 1..8 @ 9\n dim Q = 1..2"))
    assert [e[3] for e in errs] == ["dim B: range 8..1 is empty",
                                    "dim T: opt 9 is outside 1..8",
                                    "dim Q is not a dimension of any input"]


def test_every_free_dim_needs_a_range():
    (e,) = errors(SRC.replace("EXPORT", "dim B = 1..8"))
    assert e[3] == "dim T (of input 'text') has no range"
