"""The generated model has one body: `forward` checks its inputs at the boundary, computes
the outputs, and the losses on request (`return_losses=True`, or `losses()` over the same
pass), so a runtime error in a loss is noted with its spec line like one in an output."""

from __future__ import annotations

import re
import warnings

import pytest
import torch

from mmgraph.backends.torch.codegen import generate
from mmgraph.build import load
from mmgraph.compiler import build_graph
from mmgraph.errors import InputError

from conftest import ROOT, SPECS
from tiny import TINY

CLASSIFIER = """\
model m {
  input x: Seq[B, T, 8]
  input target: Seq[B, T, 4]
  input label: Labels[B, T]
  connector proj: linear(out=4)
  head cls: classifier(classes=3)
  y = proj(x)
  logits = cls(y)
  output y, logits
  loss fit = mse(y, target)
  loss ce = cross_entropy(logits, label) * 0.5
}
"""


@pytest.fixture
def classifier(tmp_path):
    spec = tmp_path / "m.mmg"
    spec.write_text(CLASSIFIER)
    torch.manual_seed(0)
    return load(spec).eval()


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return load(ROOT / "specs" / "clip.mmg", **TINY["clip"]).eval()


def clip_inputs(batch=2, text_batch=None, size=32):
    return {"image": torch.randn(batch, 3, size, size),
            "text": torch.randint(0, 64, (text_batch or batch, 8))}


def classifier_inputs(batch=2, length=5):
    return {"x": torch.randn(batch, length, 8), "target": torch.randn(batch, length, 4),
            "label": torch.randint(0, 3, (batch, length))}


# ------------------------------------------------------------------ one body

@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_the_model_class_computes_each_value_once(spec):
    g = build_graph(spec)
    source = generate(g, str(spec)).source
    model = source[source.index("(mm.GeneratedModel):"):]
    methods = re.findall(r"\n    def (\w+)", model)
    want = ["__init__", "forward"] + (["generation_context", "generation_step"]
                                      if g.decoding is not None else [])
    assert methods == want, "__init__ and forward, and a generating model's two steps"
    forward = model.split("\n    def generation_context")[0]  # the steps repeat some lines
    marked = [line.strip() for line in forward.splitlines() if re.search(r"\.mmg:\d+$", line)]
    assert len(marked) == len(set(marked)), "a line of forward is written twice"


def test_clip_forward_calls_each_layer_once():
    source = generate(build_graph(ROOT / "specs" / "clip.mmg"), "specs/clip.mmg").source
    for layer in ("vision", "texter", "img_proj", "txt_proj", "itc"):
        assert source.count(f"self.{layer}(") == 1, layer
    assert "def losses" not in source


def test_forward_returns_outputs_and_on_request_the_losses(classifier):
    x = classifier_inputs()
    outputs = classifier(**x)
    assert set(outputs) == {"y", "logits"}
    same, losses = classifier(**x, return_losses=True)
    for k in outputs:
        torch.testing.assert_close(same[k], outputs[k])
    # the losses are what the spec says, computed from the outputs by hand
    fit = torch.nn.functional.mse_loss(outputs["y"], x["target"])
    ce = torch.nn.functional.cross_entropy(outputs["logits"].reshape(-1, 3),
                                           x["label"].reshape(-1))
    torch.testing.assert_close(losses["fit"], fit)
    torch.testing.assert_close(losses["ce"], ce)
    torch.testing.assert_close(losses["total"], fit + 0.5 * ce)
    assert classifier.losses(**x).keys() == losses.keys()
    torch.testing.assert_close(classifier.losses(**x)["total"], losses["total"])


def test_clip_losses_match_the_contrastive_layer_on_the_outputs(clip):
    x = clip_inputs()
    with torch.no_grad():
        outputs, losses = clip(**x, return_losses=True)
        expected = clip.itc(outputs["img"], b=outputs["txt"])
    torch.testing.assert_close(losses["itc"], expected)
    torch.testing.assert_close(losses["total"], expected)


def test_forward_accepts_loss_only_inputs_and_goes_without_them(classifier):
    x = classifier_inputs()
    with_all = classifier(**x)  # a batch as the trainer has it: every input
    without = classifier(x=x["x"])  # inference: only what the outputs read
    torch.testing.assert_close(with_all["logits"], without["logits"])
    with pytest.raises(InputError, match=r"the losses need input 'target' \(m\.mmg:3\)"):
        classifier(x=x["x"], label=x["label"], return_losses=True)


def test_losses_of_a_model_without_losses_is_refused(tmp_path):
    spec = tmp_path / "plain.mmg"
    spec.write_text("model plain {\n  input x: Seq[B, T, 8]\n  connector p: linear(out=4)\n"
                    "  y = p(x)\n  output y\n}\n")
    model = load(spec)
    assert set(model(x=torch.randn(2, 3, 8))) == {"y"}
    with pytest.raises(NotImplementedError, match="declares no loss"):
        model.losses(x=torch.randn(2, 3, 8))


# ------------------------------------------------------------------ the boundary check

def test_a_wrong_image_size_names_the_input_its_line_and_both_shapes(clip):
    ran = []
    hook = clip.vision.register_forward_pre_hook(lambda *_: ran.append(1))
    try:
        with pytest.raises(InputError) as exc:
            clip(**clip_inputs(size=33))
    finally:
        hook.remove()
    assert str(exc.value) == ("input 'image' (clip.mmg:26) expects Image<image>[B, 3, 32, 32], "
                              "got shape [2, 3, 33, 33]: axis 2 must be 32")
    assert not ran, "the check runs before any layer"


def test_a_batch_size_that_differs_between_inputs(clip):
    with pytest.raises(InputError) as exc:
        clip(**clip_inputs(batch=2, text_batch=3))
    assert str(exc.value) == ("input 'text' (clip.mmg:27) expects Tokens<text>[B, 8], got "
                              "shape [3, 8]: B is 3 here but 2 in input 'image'")


def test_a_symbolic_dim_that_differs_between_inputs(classifier):
    x = classifier_inputs()
    x["target"] = torch.randn(2, 6, 4)
    with pytest.raises(InputError, match=r"input 'target' \(m\.mmg:3\) .* T is 6 here but 5 in "
                                         r"input 'x'"):
        classifier(**x, return_losses=True)
    assert set(classifier(**classifier_inputs(batch=3, length=7))) == {"y", "logits"}


@pytest.mark.parametrize("name, value, message", [
    ("text", torch.zeros(2, 8), "got dtype float32: needs an integer tensor (i64)"),
    ("image", torch.zeros(2, 3, 32, 32, dtype=torch.long),
     "got dtype int64: needs a floating-point tensor (f32)"),
    ("image", torch.zeros(3, 32, 32), "got shape [3, 32, 32]: rank 3, not 4"),
    ("text", [[1, 2]], "got list, not a tensor"),
])
def test_wrong_dtype_kind_rank_or_type(clip, name, value, message):
    x = clip_inputs()
    x[name] = value
    with pytest.raises(InputError) as exc:
        clip(**x)
    assert str(exc.value).startswith(f"input '{name}' (clip.mmg:")
    assert str(exc.value).endswith(message)


def test_precision_within_a_dtype_kind_is_accepted(clip):
    x = clip_inputs()
    x["text"] = x["text"].int()
    x["image"] = x["image"].double()
    clip.double()
    try:
        assert set(clip(**x)) == {"img", "txt"}
    finally:
        clip.float()


def test_the_check_stays_out_of_a_trace(clip):
    """An ONNX export traces the model: a check there would bake its shapes into the trace
    (torch warns that it converts a traced value to a Python bool)."""
    x = clip_inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.trace(clip, (x["image"], x["text"]), strict=False)


# ------------------------------------------------------------------ errors in the losses

def test_an_error_while_computing_a_loss_names_its_spec_line(classifier):
    x = classifier_inputs()
    x["label"][0, 0] = 9  # class 9 of 3: cross_entropy fails in the loss line
    for run in (lambda: classifier(**x, return_losses=True), lambda: classifier.losses(**x)):
        with pytest.raises(IndexError) as exc:
            run()
        assert any("raised while computing the value of m.mmg:11 (generated code: ce = "
                   in note for note in exc.value.__notes__)
