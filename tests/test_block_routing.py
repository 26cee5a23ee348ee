"""Modality-routed layers inside a block route every call of the block by that call's own
input: the block's forward takes each routed layer's layout (`skill_segments=...`) from its
call site, never the first call's layout baked into the class. A per-modality LoRA's adapters
are built for one layout, so a module it lives in called on another is refused (E206)."""

from __future__ import annotations

import torch

from mmgraph.build import load, write

from helpers import errors

REPRO = """
block skill_layer() { input x: Seq[B, N, D]
  layer skill: modality_ffn(modalities=["text", "image"], act="gelu")
  output x + skill(x) }
model m { input a: Seq<text>[B, 4, 16]  input b: Seq<image>[B, 4, 16]
  layer stack: skill_layer()  ya = stack(a)  yb = stack(b)  output ya, yb }
"""

# the same block called on text, on image, and (through a shared layer) on text + image
MIXED = """
block skill_layer() { input x: Seq[B, N, D]
  layer skill: modality_ffn(modalities=["text", "image"], act="gelu")
  output x + skill(x) }
model m { input a: Seq<text>[B, 4, 16]  input b: Seq<image>[B, 3, 16]
  layer stack: skill_layer()  layer again: skill_layer() shared(stack)
  ya = stack(a)  yb = stack(b)  yab = stack(concat(a, b))  yba = again(concat(b, a))
  output ya, yb, yab, yba }
"""

# nested blocks, a repeat of a block and a repeat of a routed component, inside one block
NESTED = """
block skill_layer() { input x: Seq[B, N, D]
  layer skill: modality_ffn(modalities=["text", "image"], act="gelu")
  output x + skill(skill(x)) }
block outer() { input x: Seq[B, N, D]
  layer inner: skill_layer()
  layer rep: repeat(skill_layer(), times=2)
  layer rf: repeat(modality_ffn(modalities=["text", "image"], act="gelu"), times=2)
  output rf(rep(inner(x))) }
model m { input a: Seq<text>[B, 4, 16]  input b: Seq<image>[B, 3, 16]
  layer stack: outer()
  ya = stack(a)  yb = stack(b)  yab = stack(concat(a, b))  output ya, yb, yab }
"""

ATTENTION_BLOCK = """
block mixer() { input x: Seq[B, N, D]
  layer attn: modality_attention(heads=2, modalities=["text", "image"])
  output x + attn(x) }
model m { input a: Seq<text>[B, 4, 16]  input b: Seq<image>[B, 3, 16]
  layer stack: mixer()
  ya = stack(a)  yb = stack(b)  yba = stack(concat(b, a))  output ya, yb, yba }
"""

ATTENTION_DIRECT = """
model m { input a: Seq<text>[B, 4, 16]  input b: Seq<image>[B, 3, 16]
  layer attn: modality_attention(heads=2, modalities=["text", "image"])
  ya = a + attn(a)  yb = b + attn(b)  ba = concat(b, a)  yba = ba + attn(ba)
  output ya, yb, yba }
"""


def loaded(tmp_path, src: str, name: str = "m"):
    spec = tmp_path / f"{name}.mmg"
    spec.write_text(src)
    torch.manual_seed(0)
    return load(spec).eval()


def ffn(layer, modality: str, x):
    """The routed FFN's own submodules for one modality: norm, then feed-forward."""
    per = layer.per[modality]
    return per["ffn"](per["norm"](x))


def inputs(b_len: int = 4):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(2, 4, 16, generator=gen), torch.randn(2, b_len, 16, generator=gen)


def test_each_call_of_a_block_routes_by_its_own_input(tmp_path):
    model = loaded(tmp_path, REPRO)
    source = write(tmp_path / "m.mmg", tmp_path / "out")[0].read_text()
    assert "def forward(self, x, *, skill_segments):" in source
    assert "self.stack(b, skill_segments=((1, 4),))" in source  # the image layout, its own
    a, b = inputs()
    with torch.no_grad():
        out = model(a=a, b=b)
        skill = model.stack.skill
        torch.testing.assert_close(out["ya"], a + ffn(skill, "text", a))
        torch.testing.assert_close(out["yb"], b + ffn(skill, "image", b))
        assert not torch.allclose(out["yb"], b + ffn(skill, "text", b))


def test_a_block_called_on_a_concat_routes_each_run_and_a_shared_layer_follows_its_call(
        tmp_path):
    model = loaded(tmp_path, MIXED)
    a, b = inputs(3)
    with torch.no_grad():
        out = model(a=a, b=b)
        skill = model.stack.skill
        assert model.again is model.stack
        torch.testing.assert_close(out["ya"], a + ffn(skill, "text", a))
        torch.testing.assert_close(out["yb"], b + ffn(skill, "image", b))
        ab, ba = torch.cat([a, b], 1), torch.cat([b, a], 1)
        torch.testing.assert_close(
            out["yab"], ab + torch.cat([ffn(skill, "text", a), ffn(skill, "image", b)], 1))
        torch.testing.assert_close(
            out["yba"], ba + torch.cat([ffn(skill, "image", b), ffn(skill, "text", a)], 1))


def test_nested_blocks_and_repeats_route_each_copy_by_its_call(tmp_path):
    model = loaded(tmp_path, NESTED)
    a, b = inputs(3)

    def skill_layer(block, modality, x):
        return x + ffn(block.skill, modality, ffn(block.skill, modality, x))

    def outer(modality, x):
        x = skill_layer(model.stack.inner, modality, x)
        for block in model.stack.rep:
            x = skill_layer(block, modality, x)
        for layer in model.stack.rf:
            x = ffn(layer, modality, x)
        return x

    with torch.no_grad():
        out = model(a=a, b=b)
        torch.testing.assert_close(out["ya"], outer("text", a))
        torch.testing.assert_close(out["yb"], outer("image", b))
        torch.testing.assert_close(out["yab"], torch.cat([outer("text", a),
                                                          outer("image", b)], 1))


def test_modality_attention_in_a_block_matches_direct_calls(tmp_path):
    """Each call of the block equals the same layer called directly, whose layout was
    always its own call's."""
    model = loaded(tmp_path, ATTENTION_BLOCK, "block")
    direct = loaded(tmp_path, ATTENTION_DIRECT, "direct")
    direct.load_state_dict({k.removeprefix("stack."): v for k, v in model.state_dict().items()})
    a, b = inputs(3)
    with torch.no_grad():
        got, want = model(a=a, b=b), direct(a=a, b=b)
    for name in ("ya", "yb", "yba"):
        torch.testing.assert_close(got[name], want[name])


LORA_BLOCK = """
block adapted() { input x: Seq[B, N, D]
  layer ff: ffn() lora(r=2, alpha=4, targets=["fc1", "fc2"], modalities=["image"])
  output x + ff(x) }
model m { input a: Seq<text>[B, 4, 16]  input b: Seq<image>[B, 3, 16]
  layer stack: adapted()
  ya = stack(concat(b, a))  yb = stack(concat(a, b))  output ya, yb }
"""

LORA_SHARED = """
model m { input a: Seq<text>[B, 4, 16]  input b: Seq<image>[B, 3, 16]
  layer ff: ffn() lora(r=2, alpha=4, targets=["fc1", "fc2"], modalities=["image"])
  layer ff2: ffn() shared(ff)
  ya = ff(concat(b, a))  yb = ff2(concat(a, b))  output ya, yb }
"""

TWO_LAYOUTS = ("lora modalities=['image'] on '{}': its tokens are text 4, then image 3 here "
               "but image 3, then text 4 at an earlier call")


def test_per_modality_lora_in_a_block_called_on_two_layouts_is_refused():
    assert errors(LORA_BLOCK) == [("E206", 4, 14, TWO_LAYOUTS.format("stack.ff"))]
    assert errors(LORA_BLOCK.replace("yb = stack(concat(a, b))", "yb = stack(concat(b, a))")) \
        == []


def test_per_modality_lora_reached_through_shared_is_refused_on_another_layout():
    """`shared(x)` runs x's module, adapters and their layout included."""
    via_block = LORA_BLOCK.replace(
        "  layer stack: adapted()\n",
        "  layer stack: adapted()  layer again: adapted() shared(stack)\n",
    ).replace("yb = stack(", "yb = again(")
    assert errors(via_block) == [("E206", 4, 14, TWO_LAYOUTS.format("again.ff"))]
    assert errors(LORA_SHARED) == [("E206", 5, 31, TWO_LAYOUTS.format("ff2"))]
    assert errors(LORA_SHARED.replace("ff2(concat(a, b))", "ff2(concat(b, a))")) == []
