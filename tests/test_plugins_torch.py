"""A plugin's components compile, train and export like built-in ones: the plugin gives the
torch face (`torch`, here the class or function itself), generated code reaches it through
`mm.face("name")`."""

from __future__ import annotations

import textwrap

import pytest
import torch

from mmgraph.build import load, write
from mmgraph.components import registry

PLUGIN = '''
import torch
from torch import nn

from mmgraph.components.common import PosInt, in_width, seq
from mmgraph.components.registry import Component, Params, Port, register


def pixel_shuffle(x, *, ratio: int):
    b, n, d = x.shape
    return x.reshape(b, n // ratio ** 2, d * ratio ** 2)


class Scale(nn.Module):
    def __init__(self, *, in_width: int, init: float):
        super().__init__()
        self.gain = nn.Parameter(torch.full((in_width,), init))

    def forward(self, x):
        return x * self.gain


@register
class PixelShuffle(Component):
    name = "pixel_shuffle_t"
    category = "connector"
    inputs = (Port("x"),)
    has_weights = False
    torch = pixel_shuffle

    class Params(Params):
        ratio: PosInt = 2

    def infer(self, p, x, ctx):
        t = x["x"]
        n = ctx.exact_div("x", t.dim("N"), p.ratio ** 2, "token count")
        return seq(t.dim("B"), n, t.width * p.ratio ** 2, t.tags, t.dtype)


@register
class ScaleComponent(Component):
    name = "scale_t"
    category = "layer"
    inputs = (Port("x"),)
    torch = Scale

    class Params(Params):
        init: float = 1.0

    def infer(self, p, x, ctx):
        return x["x"]

    def torch_args(self, p, x, ctx):
        return {"in_width": in_width(ctx, x), **p.model_dump()}
'''

SPEC = """
model plugged {
  input x: Seq[B, 8, 4]
  layer gain: scale_t(init=2.0)
  output gain(pixel_shuffle_t(x, ratio=2)) as y
}
"""


@pytest.fixture
def plugin(tmp_path):
    path = tmp_path / "plug_t.py"
    path.write_text(PLUGIN)
    before = dict(registry.REGISTRY)
    registry.load_plugin(path)
    yield
    registry.REGISTRY.clear()
    registry.REGISTRY.update(before)


def test_plugin_components_compile_and_run(plugin, tmp_path):
    spec = tmp_path / "plugged.mmg"
    spec.write_text(textwrap.dedent(SPEC))
    py, _ = write(spec, tmp_path)
    source = py.read_text()
    assert 'mm.face("scale_t")(in_width=16, init=2.0)' in source
    assert 'mm.face("pixel_shuffle_t")(x, ratio=2)' in source
    model = load(spec)
    x = torch.randn(3, 8, 4)
    y = model(x=x)["y"]
    assert y.shape == (3, 2, 16)
    torch.testing.assert_close(y, 2.0 * x.reshape(3, 2, 16))
    y.sum().backward()
    assert model.gain.gain.grad is not None


def test_a_plugin_with_the_old_face_attributes_is_told_the_new_name(tmp_path):
    path = tmp_path / "old_t.py"
    path.write_text(PLUGIN.replace("torch = Scale", "torch_module = Scale"))
    before = dict(registry.REGISTRY)
    try:
        with pytest.raises(TypeError, match="`torch_module` is now `torch`"):
            registry.load_plugin(path)
    finally:
        registry.REGISTRY.clear()
        registry.REGISTRY.update(before)


def test_a_plugin_without_a_face_checks_but_does_not_build(plugin, tmp_path):
    face = registry.get("scale_t").torch
    type(registry.get("scale_t")).torch = None
    try:
        spec = tmp_path / "plugged.mmg"
        spec.write_text(textwrap.dedent(SPEC))
        with pytest.raises(NotImplementedError, match="'scale_t' has no torch face"):
            load(spec)
    finally:
        type(registry.get("scale_t")).torch = face
