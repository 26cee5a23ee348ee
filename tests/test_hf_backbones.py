"""`hf_backbone`: transformers' ResNet, ConvNeXt, Swin and EfficientNet as typed backbones
without timm. The types, computed from the parameters alone, must equal the shapes the real
modules give; the outputs must equal transformers' own models' with the same weights; the
parameter counts at published sizes must equal transformers' models built on the meta
device; local folders load offline and wrong ones are refused naming the folder."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import textwrap

import pytest
import torch
import transformers as tf
from safetensors.torch import save_file

from mmgraph.backends.torch.inputs import concrete_shape
from mmgraph.backends.torch.stats import compute
from mmgraph.build import load, load_class
from mmgraph.compiler import check_file
from mmgraph.components.nn.hf_backbones import HFBackboneError

from helpers import errors, graph

TINY = {  # family: (parameters, transformers config of the same sizes)
    "resnet": ("depths=[1, 2, 1, 1], widths=[16, 24, 32, 40], embedding=8",
               dict(depths=[1, 2, 1, 1], hidden_sizes=[16, 24, 32, 40], embedding_size=8)),
    "resnet_basic": ('depths=[1, 1], widths=[8, 16], embedding=8, block="basic"',
                     dict(depths=[1, 1], hidden_sizes=[8, 16], embedding_size=8,
                          layer_type="basic")),
    "convnext": ("depths=[1, 1, 2], widths=[8, 16, 24]",
                 dict(depths=[1, 1, 2], hidden_sizes=[8, 16, 24], num_stages=3)),
    "swin": ("depths=[1, 2, 1], embedding=8, heads=[1, 2, 2], window=2",
             dict(depths=[1, 2, 1], embed_dim=8, num_heads=[1, 2, 2], window_size=2)),
    "efficientnet": ("width_coefficient=0.25, depth_coefficient=0.3",
                     dict(width_coefficient=0.25, depth_coefficient=0.3, hidden_dim=320)),
}
STAGES = ("stem", "stage1", "stage2", "stage3", "stage4")
MODELS = {"resnet": (tf.ResNetConfig, tf.ResNetBackbone),
          "convnext": (tf.ConvNextConfig, tf.ConvNextBackbone),
          "swin": (tf.SwinConfig, tf.SwinBackbone),
          "efficientnet": (tf.EfficientNetConfig, tf.EfficientNetModel)}


def family(name):
    return name.split("_")[0]


def spec(name, stages, output="grid", size=(64, 96), extra=""):
    return textwrap.dedent(f"""
    model m {{
      input image: Image[B, 3, {size[0]}, {size[1]}]
      encoder cnn: hf_backbone(family="{family(name)}", {TINY[name][0]}, stages={stages},
                               output="{output}"{extra})
      y = cnn(image)
      output y
    }}
    """)


def _load(tmp_path, src):
    path = tmp_path / "m.mmg"
    path.write_text(src)
    return load(path)


def _outputs(got):
    """The face's outputs shallow to deep (it gives the deepest first, as `out`)."""
    got = got if isinstance(got, tuple) else (got,)
    return list(got[1:]) + [got[0]]


def reference(name, stages, size):
    """transformers' own model of the same config, and a function giving its levels."""
    config_class, model_class = MODELS[family(name)]
    config = config_class(**TINY[name][1], **({"image_size": list(size)}
                                               if family(name) == "swin" else {}))
    if family(name) == "efficientnet":
        model = model_class(config)
        repeats = [math.ceil(config.depth_coefficient * n) for n in config.num_block_repeats]
        ends = [0] + [sum(repeats[:i + 1]) for i in range(len(repeats))]

        def levels(x):
            out = model(x, output_hidden_states=True)
            return [out.last_hidden_state if i == len(ends) else out.hidden_states[ends[i]]
                    for i in stages]
        return model, levels
    config.out_features = [STAGES[i] for i in stages]
    model = model_class(config)
    return model, lambda x: list(model(x).feature_maps)


# stages as levels (0 the stem); the deepest chosen level decides where the model is cut
CASES = [("resnet", [0, 2, 4], "grid"), ("resnet", [1, 2], "tokens"),
         ("resnet_basic", [2], "pooled"), ("convnext", [0, 1, 3], "tokens"),
         ("convnext", [2], "grid"), ("swin", [1, 3], "grid"), ("swin", [0, 2], "pooled"),
         ("efficientnet", [0, 3, 7, 8], "grid"), ("efficientnet", [2, 5], "tokens"),
         ("efficientnet", [7], "pooled")]


@pytest.mark.parametrize("name, stages, output", CASES)
def test_types_equal_the_modules_shapes_and_outputs_equal_transformers(tmp_path, name, stages,
                                                                       output):
    torch.manual_seed(0)
    model = _load(tmp_path, spec(name, stages, output)).eval()
    g = model.graph
    image = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        got = _outputs(model.cnn(image))
    node = g.nodes[g.outputs["y"].node]
    types = [node.types[f"level{i}"] for i in stages[:-1]] + [node.types["out"]]
    assert [tuple(t.shape) for t in got] == [concrete_shape(t, {"B": 2}) for t in types]

    ref, levels = reference(name, stages, (64, 96))
    # ours is transformers' model cut after the deepest chosen stage: its tensors are a subset
    assert not model.cnn.model.load_state_dict(ref.state_dict(), strict=False).missing_keys
    ref.eval()
    with torch.no_grad():
        got = _outputs(model.cnn(image))
        want = levels(image)
    for level, a, b in zip(stages, got, want):
        if output == "tokens":
            b = b.flatten(2).transpose(1, 2)
        elif output == "pooled":
            b = b.mean((2, 3))
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"{name} level {level}")


@pytest.mark.parametrize("name, stages", [("resnet", [2]), ("convnext", [1, 2]),
                                          ("swin", [2]), ("efficientnet", [4])])
def test_every_weight_left_gets_a_gradient(tmp_path, name, stages):
    """Stages deeper than the deepest chosen one are cut, so nothing trains without use."""
    model = _load(tmp_path, spec(name, stages)).train()
    sum(y.pow(2).mean() for y in _outputs(model.cnn(torch.randn(2, 3, 64, 96)))).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


# ------------------------------------------------------------------- published sizes

PAPER = {  # spec parameters, transformers config, published parameter count without head
    # ResNet-50 (He et al. 2016): 25,557,032 with its 1000-class fc (2048 x 1000 + 1000)
    "resnet50": ('family="resnet"', tf.ResNetConfig(), 25_557_032 - 2_049_000),
    # EfficientNet-B7 (Tan & Le 2019, 66M): google/efficientnet-b7 has 66,347,960 with its
    # 1000-class classifier (2560 x 1000 + 1000)
    "efficientnet_b7": ('family="efficientnet", stages=[8]', tf.EfficientNetConfig(),
                        66_347_960 - 2_561_000),
    # ConvNeXt-T (Liu et al. 2022, 28.6M): 28,589,128 with its final norm and 1000-class
    # head (768 x 1000 + 1000 + 2 x 768); the backbone adds its own stage-4 norm (2 x 768)
    "convnext_t": ('family="convnext"', tf.ConvNextConfig(hidden_sizes=[96, 192, 384, 768]),
                   28_589_128 - 769_000),
    # Swin-T (Liu et al. 2021, 28M): microsoft/swin-tiny-patch4-window7-224 has 28,288,354
    # with its 1000-class head; the backbone's stage-4 norm stands where the final norm was
    "swin_t": ('family="swin"', tf.SwinConfig(image_size=[224, 224]), 28_288_354 - 769_000),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_parameter_count_at_paper_size_equals_transformers(tmp_path, name):
    params, config, published = PAPER[name]
    path = tmp_path / "m.mmg"
    path.write_text(f"model m {{\n  input image: Image[B, 3, 224, 224]\n"
                    f"  encoder cnn: hf_backbone({params})\n  y = cnn(image)\n  output y\n}}\n")
    cls, g = load_class(path)
    stats = compute(cls, g, {"B": 1})
    model_class = MODELS[params.split('"')[1]][1]
    with torch.device("meta"):
        ref = model_class(config)
    # the backbone computes Swin's final norm but returns the stage's own norm: mmgraph
    # leaves out the norm no output reads
    want = sum(p.numel() for n, p in ref.named_parameters() if not n.startswith("swin.layernorm"))
    assert stats.params_total == want
    if published is not None:
        assert stats.params_total == published


# ------------------------------------------------------------------- local weights

def save_tiny(folder, name, head=True, seed=1):
    """A tiny transformers model saved as a model folder (config.json, model.safetensors);
    a classifier checkpoint, as published ones are."""
    torch.manual_seed(seed)
    config_class, _ = MODELS[family(name)]
    config = config_class(**TINY[name][1], num_labels=5)
    model_class = {"resnet": tf.ResNetForImageClassification,
                   "convnext": tf.ConvNextForImageClassification,
                   "swin": tf.SwinForImageClassification,
                   "efficientnet": tf.EfficientNetForImageClassification}[family(name)]
    model = model_class(config).eval()
    with torch.no_grad():  # batch norms' statistics away from 0 and 1
        for n, b in model.named_buffers():
            if "running" in n:
                b.uniform_(0.5, 1.5)
    model.save_pretrained(folder)
    return model


@pytest.mark.parametrize("name, stages", [("resnet", [1, 4]), ("convnext", [3]),
                                          ("swin", [2, 3]), ("efficientnet", [3, 7])])
def test_local_weights_give_transformers_outputs(tmp_path, monkeypatch, name, stages):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    save_tiny(tmp_path / "w", name)
    model = _load(tmp_path, spec(name, stages, extra=', weights="w"')).eval()
    image = torch.randn(2, 3, 64, 96)
    if family(name) == "efficientnet":
        ref = tf.EfficientNetModel.from_pretrained(tmp_path / "w").eval()
        ends = model.cnn.ends
        with torch.no_grad():
            want = [ref(image, output_hidden_states=True).hidden_states[ends[i]]
                    for i in stages]
    else:
        features = [STAGES[i] for i in stages]
        size = {"image_size": [64, 96]} if name == "swin" else {}
        ref = MODELS[family(name)][1].from_pretrained(tmp_path / "w", out_features=features,
                                                      **size).eval()
        with torch.no_grad():
            want = list(ref(image).feature_maps)
    with torch.no_grad():
        got = _outputs(model.cnn(image))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_weights_of_another_model_are_refused_naming_the_folder(tmp_path):
    save_tiny(tmp_path / "w", "resnet")
    other = tf.ConvNextModel(tf.ConvNextConfig(**TINY["convnext"][1]))
    save_file({k: v.contiguous() for k, v in other.state_dict().items()},
              str(tmp_path / "w" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(HFBackboneError, match=r"could not load .*/w: \d+ tensors missing"):
        _load(tmp_path, spec("resnet", [4], extra=', weights="w"'))


@pytest.mark.parametrize("make, message", [
    (None, r"cnn: no weights folder .*/nowhere"),
    ("convnext", r"cnn: .*/w holds a 'convnext' model, not a resnet"),
    ("resnet_basic", r"cnn: .*/w/config.json has depths=\[1, 1\] but the spec declares "
                     r"\[1, 2, 1, 1\]"),
    ("no_weights", r"cnn: .*/w has no model.safetensors"),
])
def test_a_wrong_folder_is_a_diagnostic_naming_it(tmp_path, make, message):
    if make == "no_weights":
        save_tiny(tmp_path / "w", "resnet")
        (tmp_path / "w" / "model.safetensors").unlink()
    elif make is not None:
        save_tiny(tmp_path / "w", make)
    folder = "nowhere" if make is None else "w"
    src = spec("resnet", [4], extra=f', weights="{folder}"')
    path = tmp_path / "m.mmg"
    path.write_text(src)
    [d] = check_file(path).errors
    assert d.code == "E210"
    assert re.fullmatch(message, d.message), d.message


# ------------------------------------------------------------------- checking

def test_levels_are_typed_from_the_parameters():
    g = graph(spec("efficientnet", [0, 8]).replace(
        "width_coefficient=0.25, depth_coefficient=0.3", "").replace(", stages", "stages"))
    line = next(x for x in g.dump().splitlines() if x.strip().startswith("%y "))
    # EfficientNet-B7: a 64-channel stem at stride 2, its top conv to 2560 channels
    assert "%y : Tensor<image>[B, 2560, 2, 3] {.level0: Tensor<image>[B, 64, 32, 48]}" in line


@pytest.mark.parametrize("change, code, message", [
    (("stages=[0, 2]", "stages=[5]"), "E203", "cnn: this resnet has levels 0..4 (0 the stem), "
                                              "not 5"),
    (("stages=[0, 2]", "stages=[2, 1]"), "E203", "cnn: stages must name levels from shallow "
                                                 "to deep, each once, but [2, 1] gives levels "
                                                 "[2, 1]"),
    (("64, 96", "64, 100"), "E304", "cnn: image width 100 is not a multiple of 8, the stride "
                                    "of level 2 of this resnet"),
    (("embedding=8", "embedding=8, window=3"), "E203", "window is not a parameter of family "
                                                       "\"resnet\""),
    (("widths=[16, 24, 32, 40]", "widths=[16, 24]"), "E203", "widths gives one entry per "
                                                             "stage, but it has 2 and depths 4"),
])
def test_diagnostics(change, code, message):
    [(got_code, _, _, got)] = errors(spec("resnet", [0, 2]).replace(*change))
    assert got_code[:3] == code[:3] and message in got, got


def test_checking_imports_neither_torch_nor_transformers(tmp_path):
    path = tmp_path / "m.mmg"
    path.write_text(spec("swin", [1, 3]))
    code = ("import sys; from mmgraph.compiler import check_file; "
            f"r = check_file({str(path)!r}); assert r.ok, r.errors; "
            "bad = [m for m in ('torch', 'transformers', 'timm') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------- export

@pytest.mark.parametrize("name, stages", [("resnet", [3, 4]), ("efficientnet", [5, 7])])
def test_onnx_export_matches_pytorch(tmp_path, name, stages):
    from mmgraph.export import targets
    from mmgraph.export.onnx_parts import export

    path = tmp_path / "m.mmg"
    path.write_text(spec(name, stages, "tokens"))
    manifest = export(path, tmp_path / "dist", targets.load("onnx"), log=lambda *a: None)
    (part,) = manifest["parts"]
    for errs in part["parity"]["fp32"].values():
        assert errs["max_abs"] < 1e-4, json.dumps(part["parity"])


def test_a_random_efficientnet_keeps_its_features_alive(tmp_path):
    """transformers initialises EfficientNet's convs and batch-norm scales from N(0, 0.02),
    meant to be overwritten by a checkpoint: from scratch, the features of even a tiny one
    underflowed to exactly 0 in eval mode. The face initialises as the TF reference does."""
    torch.manual_seed(0)
    model = _load(tmp_path, spec("efficientnet", [7], "pooled")).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 3, 64, 96))["y"]
    # eval mode at unit running statistics still shrinks a random network's features about
    # fourfold per stage (7e-5 here), but no longer to exactly 0 as transformers' init did
    assert y.abs().max() > 1e-5
    bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(bool((m.weight == 1).all()) for m in bn)
