"""Every zoo spec compiles at a tiny size, runs forward and backward on random inputs, and
agrees with the checker: output shapes are the inferred types, every trainable parameter gets
a gradient and every frozen one none."""

from __future__ import annotations

import pytest
import torch

from mmgraph.backends.torch.codegen import generate
from mmgraph.backends.torch.inputs import concrete_shape, example_inputs
from mmgraph.build import load
from mmgraph.compiler import build_graph

from conftest import GOLDEN, ROOT, SPECS, check_golden
from tiny import DIMS, TINY


def test_every_spec_has_a_tiny_size():
    assert sorted(TINY) == sorted(p.stem for p in SPECS)


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_forward_and_backward(name):
    torch.manual_seed(0)
    model = load(ROOT / "specs" / f"{name}.mmg", **TINY[name])
    g = model.graph
    x = example_inputs(g, DIMS, int_high=4)
    model.train()
    out, losses = model(**x, return_losses=True)
    assert set(out) == set(g.outputs)
    for key, ref in g.outputs.items():
        assert tuple(out[key].shape) == concrete_shape(g.type_of(ref), DIMS), key
    assert set(losses) == set(g.losses) | {"total"}
    assert torch.isfinite(losses["total"])
    losses["total"].backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"trainable {pname} got no gradient"
        else:
            assert p.grad is None, f"frozen {pname} got a gradient"
    frozen = {n for n, i in g.instances.items() if i.frozen and i.lora is None}
    for pname, p in model.named_parameters():
        if any(pname.startswith(f + ".") for f in frozen):
            assert not p.requires_grad, f"{pname} belongs to a frozen layer"


@pytest.mark.parametrize("name", ["clip", "llava", "flamingo"])
def test_generated_code_matches_golden(name):
    g = build_graph(ROOT / "specs" / f"{name}.mmg")
    source = generate(g, f"specs/{name}.mmg").source
    check_golden(GOLDEN / "codegen" / f"{name}.py", source)
    compile(source, f"{name}.py", "exec")  # and it is valid Python


def test_generated_code_imports_only_torch_and_mmgraph_components():
    for spec in SPECS:
        source = generate(build_graph(spec), str(spec)).source
        imports = [line for line in source.splitlines() if line.startswith(("import", "from"))]
        assert imports == ["import torch", "from torch import nn",
                           "from mmgraph.components import nn as mm"], spec


def test_every_forward_line_points_at_the_spec():
    source = generate(build_graph(ROOT / "specs" / "llava.mmg"), "specs/llava.mmg").source
    body = source.split("def forward")[1].split("\n    def ")[0].splitlines()[2:]
    bookkeeping = ("self.check_inputs(", "outputs = {", "if not return_losses:", "return ",
                   "losses = {", 'losses["total"] = ')
    statements = [line for line in body if line.strip() and
                  not line.strip().startswith(bookkeeping)]
    assert len(statements) == 4 and all("llava.mmg:" in line for line in statements)
    step = source.split("def generation_step")[1].splitlines()[2:]
    assert any("self.lm(" in line and "llava.mmg:39" in line for line in step)


def test_runtime_errors_name_the_spec_line(tmp_path):
    model = load(ROOT / "specs" / "clip.mmg", **TINY["clip"])
    image = torch.randn(2, 3, 32, 32)
    text = torch.full((2, 8), 10_000)  # token ids beyond the tiny vocabulary
    with pytest.raises(IndexError) as exc:
        model(image=image, text=text)
    notes = getattr(exc.value, "__notes__", [])
    assert any("clip.mmg:38" in n and "self.texter(text)" in n for n in notes), notes


def test_load_and_compile_write_the_same_source(tmp_path):
    from mmgraph.build import write

    py, ir = write(ROOT / "specs" / "clip.mmg", tmp_path, TINY["clip"])
    g = build_graph(ROOT / "specs" / "clip.mmg", TINY["clip"])
    assert py.read_text() == generate(g, str(ROOT / "specs" / "clip.mmg")).source
    assert ir.read_text() == g.dump()
