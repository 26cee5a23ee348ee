"""Pass `trainability`: train settings and what each stage trains."""

from helpers import errors, graph

SRC = """
model m {
  input x: Seq[B, 4, 8]
  encoder enc: transformer(depth=2, heads=2) frozen
  connector proj: linear(out=8)
  decoder dec: repeat(transformer_layer(heads=2), times=2)
  head cls: classifier(classes=3)
  output cls(pool(dec(proj(enc(x))))) as y
  train {
    lr = 1e-3
    STAGES
  }
}
"""


def stages(text):
    g = graph(SRC.replace("STAGES", text))
    return {s.name: s.trainable for s in g.train.stages}


def test_a_stage_without_a_list_trains_everything_not_frozen():
    assert stages("stage s { epochs = 1 }")["s"] == ["proj", "dec.0", "dec.1", "cls",
                                                      "pool"]


def test_roles_names_and_all():
    got = stages("""stage a { trainable = [proj] }
                    stage b { trainable = [decoder, head] }
                    stage c { trainable = [all] }""")
    assert got["a"] == ["proj"]
    assert got["b"] == ["dec.0", "dec.1", "cls"]
    assert "enc" not in got["c"]  # `all` keeps frozen layers frozen


def test_naming_a_frozen_layer_unfreezes_it_for_that_stage():
    assert stages("stage s { trainable = [enc] }")["s"] == ["enc"]


def test_unknown_names_and_settings():
    errs = errors(SRC.replace("STAGES", """stage s { trainable = [porj]; epoch = 2 }
                                          stage s { }
                                          optimiser = sgd"""))
    codes = [(e[0], e[3]) for e in errs]
    assert ("E501", "train has no setting 'optimiser'") in codes
    assert ("E502", "stage 's' has no setting 'epoch'") in codes
    assert ("E502", "stage 's' is defined twice") in codes


def test_trainable_names_are_checked():
    (e,) = errors(SRC.replace("STAGES", "stage s { trainable = [porj] }"))
    assert e == ("E503", 11, 28, "trainable lists 'porj', but the model has no layer of that "
                                 "name")


def test_bad_setting_values():
    (e,) = errors(SRC.replace("STAGES", "precision = fp8"))
    assert e[0] == "E501"
    assert e[3] == 'train setting \'precision\': must be one of "auto", "fp32", "bf16", "fp16" ' \
                   '(got "fp8")'
