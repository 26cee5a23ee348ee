"""Per-modality LoRA (Arcana): `lora(..., modalities=["image"])` adds the adapters' term at
the image tokens of a routed sequence only."""

from __future__ import annotations

import torch
from torch import nn

from mmgraph.build import load
from mmgraph.components.nn.modifiers import LoRALinear

from helpers import errors, graph

ARCANA = """
model arcana {
  input image: Seq<image>[B, 4, 16]
  input words: Seq<text>[B, T, 16]
  x = concat(image, words)
  layer ff: ffn() lora(r=2, alpha=4, targets=["fc1", "fc2"], modalities=["image"])
  y = ff(x)
  output y
}
"""


def test_lora_linear_adds_its_term_at_the_adapted_modality_only():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    layer = LoRALinear(base, r=2, alpha=4.0, modalities=("image",),
                       segments=(("text", 2), ("image", None), ("text", 1)))
    nn.init.normal_(layer.lora_b)
    x = torch.randn(3, 7, 6)
    got = layer(x)
    plain = x @ base.weight.t() + base.bias
    delta = 2.0 * (x @ layer.lora_a.t() @ layer.lora_b.t())  # alpha / r = 2
    mask = torch.tensor([0, 0, 1, 1, 1, 1, 0.0]).view(1, 7, 1)  # image: positions 2..5
    torch.testing.assert_close(got, plain + mask * delta)
    assert not torch.allclose(got[:, 2:6], plain[:, 2:6])


def test_in_a_model_image_tokens_get_the_adapter_and_text_tokens_the_base_layer(tmp_path):
    spec = tmp_path / "arcana.mmg"
    spec.write_text(ARCANA)
    every = tmp_path / "every.mmg"
    every.write_text(ARCANA.replace(', modalities=["image"]', ""))
    torch.manual_seed(0)
    model, full = load(spec).eval(), load(every).eval()
    for name, p in model.named_parameters():
        if name.endswith("lora_b"):
            nn.init.normal_(p)
    full.load_state_dict(model.state_dict())
    base = load(every).eval()
    base.load_state_dict({k: (torch.zeros_like(v) if k.endswith("lora_b") else v)
                          for k, v in model.state_dict().items()})
    gen = torch.Generator().manual_seed(1)
    image, words = torch.randn(2, 4, 16, generator=gen), torch.randn(2, 3, 16, generator=gen)
    with torch.no_grad():
        y = model(image=image, words=words)["y"]
        y_all = full(image=image, words=words)["y"]
        y_base = base(image=image, words=words)["y"]
    torch.testing.assert_close(y[:, :4], y_all[:, :4])  # the image tokens: adapted
    torch.testing.assert_close(y[:, 4:], y_base[:, 4:])  # the text tokens: base layer only
    assert not torch.allclose(y_all[:, 4:], y_base[:, 4:])  # (the adapters do change them)


def test_modalities_are_shown_and_mistakes_named_where_written():
    g = graph(ARCANA)
    assert g.instances["ff"].lora.modalities == ("image",)
    assert 'modalities=["image"])' in g.dump(spans=False)
    assert errors(ARCANA.replace('modalities=["image"]', 'modalities=["imag"]')) == [
        ("E206", 6, 73, "lora modalities: 'imag' is no modality")]
    assert errors(ARCANA.replace('modalities=["image"]', 'modalities=["audio"]')) == [
        ("E206", 6, 73, "lora modalities=['audio'] on 'ff': its input x is "
                        "Seq<image,text>[B, 4 + T, 16], which has no such tokens, so the "
                        "adapters would never act")]
    mixed = ARCANA.replace("input words: Seq<text>[B, T, 16]",
                           "input words: Seq<image,text>[B, T, 16]").replace(
        "x = concat(image, words)", "x = words")
    assert errors(mixed) == [
        ("E206", 6, 73, "lora modalities=['image'] on 'ff': its input x is "
                        "Seq<image,text>[B, T, 16], whose tokens' modalities are not known")]


def test_the_docs_example_checks():
    from helpers import docs_example

    g = graph(docs_example("model arcana {")[0])
    assert g.instances["ff"].lora.modalities == ("image",) and g.instances["ff"].frozen


def test_hf_export_refuses_to_merge_per_modality_adapters(tmp_path):
    import pytest

    from mmgraph.backends.torch.hf_export import HFExportError, _merged

    spec = tmp_path / "arcana.mmg"
    spec.write_text(ARCANA)
    with pytest.raises(HFExportError, match="ff.ffn.fc1: its LoRA adapts some modalities"):
        _merged(load(spec))


def test_onnx_export_matches_pytorch_with_trained_adapters(tmp_path, monkeypatch):
    """Adapters that are not zero (as after training), exported at the min, opt and max of
    the free text length: the token mask follows the length in the ONNX graph too."""
    from mmgraph.export import targets
    from mmgraph.export.onnx_parts import export

    original = LoRALinear.__init__

    def trained(self, *args, **kwargs):
        original(self, *args, **kwargs)
        with torch.no_grad():
            self.lora_b.normal_()

    monkeypatch.setattr(LoRALinear, "__init__", trained)
    spec = tmp_path / "arcana.mmg"
    spec.write_text(ARCANA.replace("  output y\n", "  output y\n  export {\n    dim B = 1..4 @ 2\n"
                                   "    dim T = 1..9 @ 5\n  }\n"))
    manifest = export(spec, tmp_path / "out", targets.load("onnx"), log=lambda _: None)
    (part,) = manifest["parts"]
    errors_at = part["parity"]["fp32"]["y"]
    assert set(errors_at["at"]) == {"min", "opt", "max"}
    assert errors_at["max_abs"] <= 1e-4, errors_at


def test_one_layer_called_on_two_layouts_is_refused_at_the_second_call():
    src = ARCANA.replace("  y = ff(x)\n", "  y = ff(x)\n  z = ff(concat(words, image))\n")
    assert errors(src) == [
        ("E206", 8, 7, "lora modalities=['image'] on 'ff': its tokens are text (the rest), "
                       "then image 4 here but image 4, then text (the rest) at an earlier "
                       "call")]
    same = ARCANA.replace("  y = ff(x)\n", "  y = ff(x)\n  z = ff(concat(image, words))\n")
    assert errors(same) == []


def test_cross_attention_context_projections_are_refused(tmp_path):
    src = ARCANA.replace("  input words: Seq<text>[B, T, 16]\n",
                         "  input words: Seq<text>[B, T, 16]\n  input c: Seq<audio>[B, 3, 16]\n"
                         ).replace('layer ff: ffn() lora(r=2, alpha=4, targets=["fc1", "fc2"], ',
                                   'layer ff: transformer_layer(heads=2, cross=true) lora(r=2, '
                                   'targets=["q", "v"], ').replace("y = ff(x)", "y = ff(x, ctx=c)")
    ((code, line, _, message),) = errors(src)
    assert (code, line) == ("E206", 7) and message == (
        "lora modalities=['image'] on 'ff': its k and v projections also read the "
        "cross-attention context, whose tokens are not laid out as its own")
    fine = src.replace('targets=["q", "v"]', 'targets=["q", "o"]')
    assert errors(fine) == []
    path = tmp_path / "cross.mmg"
    path.write_text(fine)
    y = load(path)(image=torch.randn(2, 4, 16), words=torch.randn(2, 3, 16),
                   c=torch.randn(2, 3, 16))["y"]
    assert y.shape == (2, 7, 16)
