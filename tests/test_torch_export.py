"""The compiled module works under torch.compile and torch.export (tiny clip and llava)."""

from __future__ import annotations

import pytest
import torch

from mmgraph.backends.torch.inputs import example_inputs
from mmgraph.build import load

from conftest import ROOT
from tiny import DIMS, TINY


def tiny(name):
    torch.manual_seed(0)
    model = load(ROOT / "specs" / f"{name}.mmg", **TINY[name]).eval()
    args = model.forward.__code__.co_varnames[1:model.forward.__code__.co_argcount]
    x = example_inputs(model.graph, DIMS, int_high=4, names=list(args))
    return model, x


@pytest.mark.parametrize("name", ["clip", "llava"])
def test_torch_export(name):
    model, x = tiny(name)
    with torch.no_grad():
        expected = model(**x)
        exported = torch.export.export(model, (), kwargs=x)
        got = exported.module()(**x)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["clip", "llava"])
def test_torch_compile(name):
    model, x = tiny(name)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        expected = model(**x)
        got = compiled(**x)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-5)
