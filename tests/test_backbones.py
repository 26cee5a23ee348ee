"""Backbones of issue 13: `timm_backbone` (timm's image models, typed from a table that must
equal timm's own feature_info) and `conv_frontend` (wav2vec2's convolutional feature encoder,
against transformers' Wav2Vec2FeatureEncoder with the same weights). The type rules and their
diagnostics run without timm; the faces are compared with timm itself where it imports."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from mmgraph.build import load
from mmgraph.components.timm_features import FEATURES

from helpers import errors, graph


def _timm():
    try:  # timm needs a torchvision built for this torch: a mismatched one raises at import
        import timm
    except Exception:  # noqa: BLE001
        return None
    return timm


timm = _timm()
needs_timm = pytest.mark.skipif(timm is None, reason="timm (mmgraph[vision]) is not importable")


def _load(tmp_path, src, name="m.mmg"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(src))
    return load(path).eval()


def _line(g, value):
    return next(line for line in g.dump().splitlines() if line.strip().startswith(f"%{value} "))


RESNET = """
model m {
  input image: Image[B, 3, 64, 96]
  encoder cnn: timm_backbone(model="resnet18", out_indices=[2, 3, 4])
  y = cnn(image)
  output y
}
"""


# ---------------------------------------------------------------- timm_backbone: types

def test_levels_are_typed_from_the_table():
    g = graph(RESNET)
    assert "%y : Tensor<image>[B, 512, 2, 3] {.level2: Tensor<image>[B, 128, 8, 12], " \
           ".level3: Tensor<image>[B, 256, 4, 6]}" in _line(g, "y")
    tokens = graph(RESNET.replace('out_indices=[2, 3, 4]', 'out_indices=[-2], output="tokens"'))
    assert "%y : Seq<image>[B, 24, 256]" in _line(tokens, "y")
    pooled = graph(RESNET.replace('"resnet18", out_indices=[2, 3, 4]',
                                  '"convnext_tiny.fb_in22k", output="pooled"'))
    assert "%y : Vec<image>[B, 768]" in _line(pooled, "y")


def test_levels_are_extra_outputs():
    src = RESNET.replace("y = cnn(image)\n  output y", "y = cnn(image)\n  z = y.level2\n"
                         "  output y, z")
    assert "output z = %y.level2" in graph(src).dump()


@pytest.mark.parametrize("change, code, col, message", [
    (('"resnet18"', '"resnet19"'), "E203", 36,
     "cnn: 'resnet19' is not a timm architecture mmgraph can type"),
    (("[2, 3, 4]", "[2, 5]"), "E203", 60, "cnn: resnet18 has feature levels 0..4, not 5"),
    (("[2, 3, 4]", "[3, 2]"), "E203", 60, "cnn: out_indices must name levels from shallow to "
                                          "deep, each once, but [3, 2] gives levels [3, 2]"),
    (("64, 96", "64, 100"), "E304", 11,
     "cnn: image width 100 is not a multiple of 32, the stride of resnet18's feature level 4"),
    (("Image[B, 3, 64, 96]", "Image<i64>[B, 3, 64, 96]"), "E307", 11,
     "cnn expects pixels but image gives Image<image,i64>[B, 3, 64, 96]"),
    (("out_indices=[2, 3, 4]", 'weights="nowhere.safetensors"'), "E210", 56, None),
    (("out_indices=[2, 3, 4]", 'weights="w.pth"'), "E210", 56,
     "cnn: weights must be a .safetensors file, not w.pth"),
])
def test_timm_backbone_diagnostics(change, code, col, message):
    [(got_code, line, got_col, got)] = errors(RESNET.replace(*change))
    assert (got_code, got_col) == (code, col), got
    assert line == (4 if code in ("E203", "E210") else 5)
    if message:
        assert got == message
    else:
        assert got.startswith("cnn: weights file ") and got.endswith("does not exist")


def test_an_unknown_model_gets_a_suggestion():
    from mmgraph.compiler import check_text

    [d] = check_text(RESNET.replace('"resnet18"', '"convnext_tinny"'), "t.mmg").errors
    assert d.hint == "did you mean 'convnext_tiny'?"


def test_checking_a_backbone_imports_neither_torch_nor_timm(tmp_path):
    spec = tmp_path / "m.mmg"
    spec.write_text(RESNET)
    code = ("import sys; from mmgraph.compiler import check_file; "
            f"r = check_file({str(spec)!r}); assert r.ok, r.errors; "
            "bad = [m for m in ('torch', 'timm', 'torchvision') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- timm_backbone: faces

@needs_timm
@pytest.mark.parametrize("name", sorted(FEATURES))
def test_table_equals_timms_feature_info(name):
    """Built on the meta device: no memory, no time, no weights."""
    with torch.device("meta"):
        model = timm.create_model(name, features_only=True)
    info = model.feature_info
    got = tuple(zip(info.channels(), info.reduction()))
    assert FEATURES[name] == got, f'fix mmgraph/components/timm_features.py:\n    "{name}": {got},'


FACES = [  # (model, image size, out_indices, output)
    ("resnet18", (64, 96), [1, 2, 3, 4], "grid"),
    ("efficientnet_b0", (64, 64), [-1], "tokens"),
    ("tf_efficientnet_b0", (64, 96), [2, 3], "grid"),  # TensorFlow's "same" padding (ALIGN)
    ("convnext_atto", (64, 32), [0, 3], "pooled"),
    ("swin_tiny_patch4_window7_224", (64, 64), [1, 3], "tokens"),
]


@needs_timm
@pytest.mark.parametrize("name, size, levels, output", FACES)
def test_face_equals_timm_features_only(tmp_path, name, size, levels, output):
    torch.manual_seed(0)
    src = f"""
    model m {{
      input image: Image[B, 3, {size[0]}, {size[1]}]
      encoder cnn: timm_backbone(model="{name}", out_indices={levels}, output="{output}")
      y = cnn(image)
      output y
    }}
    """
    model = _load(tmp_path, src)
    extra = {"img_size": size} if name.startswith("swin") else {}
    ref = timm.create_model(name, features_only=True, out_indices=tuple(levels), **extra).eval()
    ref.load_state_dict(model.cnn.body.state_dict())
    image = torch.randn(2, 3, *size)
    with torch.no_grad():
        got = model.cnn(image)
        want = ref(image)
    got = got if isinstance(got, tuple) else (got,)
    got = got[1:] + got[:1]  # out is the deepest level, the others follow it
    assert len(got) == len(want)
    for level, a, b in zip(levels, got, want):
        if name.startswith("swin"):
            b = b.permute(0, 3, 1, 2)
        if output == "tokens":
            b = b.flatten(2).transpose(1, 2)
        elif output == "pooled":
            b = b.mean((2, 3))
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"{name} level {level}")
    y = model(image)["y"]
    channels, stride = FEATURES[name][levels[-1] % len(FEATURES[name])]
    h, w = size[0] // stride, size[1] // stride
    want_shape = {"grid": (2, channels, h, w), "tokens": (2, h * w, channels),
                  "pooled": (2, channels)}[output]
    assert tuple(y.shape) == want_shape


@needs_timm
@pytest.mark.parametrize("name", ["resnet18", "convnext_atto"])
def test_gradients_reach_every_weight(tmp_path, name):
    model = _load(tmp_path, RESNET.replace('"resnet18", out_indices=[2, 3, 4]',
                                           f'"{name}", out_indices=[1, -1]')).train()
    out = model(torch.randn(2, 3, 64, 96))["y"]
    out.pow(2).mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


@needs_timm
def test_weights_come_from_a_local_safetensors_file(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(1)
    full = timm.create_model("resnet18", num_classes=7).eval()  # a classifier checkpoint
    save_file(full.state_dict(), str(tmp_path / "r18.safetensors"))
    model = _load(tmp_path, RESNET.replace("out_indices=[2, 3, 4]",
                                           'weights="r18.safetensors"'))
    image = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(model(image)["y"], full.forward_features(image), rtol=0,
                                   atol=0)


@needs_timm
def test_swin_weights_at_another_image_size_are_resized_by_timm(tmp_path):
    """Weights of a 224 px Swin into a 64 px backbone: timm's own loader resizes the relative
    position tables (its windows shrink to the 2 x 2 last stage), exactly as timm does alone."""
    from safetensors.torch import save_file

    name = "swin_tiny_patch4_window7_224"
    torch.manual_seed(2)
    save_file({k: v.contiguous() for k, v in timm.create_model(name).state_dict().items()},
              str(tmp_path / "swin.safetensors"))
    model = _load(tmp_path, RESNET.replace('"resnet18", out_indices=[2, 3, 4]',
                                           f'"{name}", weights="swin.safetensors"')
                  .replace("64, 96", "64, 64"))
    ref = timm.create_model(name, features_only=True, out_indices=(3,), img_size=(64, 64),
                            pretrained=True,
                            pretrained_cfg_overlay={"file": str(tmp_path / "swin.safetensors")})
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = ref.eval()(image)[0].permute(0, 3, 1, 2)
        torch.testing.assert_close(model(image)["y"], want, rtol=0, atol=0)


@needs_timm
def test_weights_of_another_model_are_refused_naming_the_file(tmp_path):
    from safetensors.torch import save_file

    from mmgraph.components.nn.backbones import BackboneError

    other = timm.create_model("convnext_atto")
    save_file(other.state_dict(), str(tmp_path / "c.safetensors"))
    with pytest.raises(BackboneError, match=r"could not load .*c\.safetensors into resnet18: "
                                            r"100 tensors missing \(bn1.bias, "):
        _load(tmp_path, RESNET.replace("out_indices=[2, 3, 4]", 'weights="c.safetensors"'))


@needs_timm
@pytest.mark.parametrize("name", ["resnet18", "convnext_atto"])
def test_onnx_export_matches_pytorch(tmp_path, name):
    from mmgraph.export import targets
    from mmgraph.export.onnx_parts import export

    spec = tmp_path / "m.mmg"
    spec.write_text(RESNET.replace('"resnet18", out_indices=[2, 3, 4]',
                                   f'"{name}", out_indices=[-2, -1], output="tokens"'))
    manifest = export(spec, tmp_path / "dist", targets.load("onnx"), log=lambda *a: None)
    (part,) = manifest["parts"]
    for errs in part["parity"]["fp32"].values():
        assert errs["max_abs"] < 1e-4, part["parity"]


@pytest.mark.parametrize("failure", [
    ImportError("No module named 'timm'"),
    RuntimeError("operator torchvision::nms does not exist"),  # torchvision for another torch
])
def test_without_timm_building_says_how_to_install(monkeypatch, failure):
    import builtins

    from mmgraph.components.nn import backbones

    real = builtins.__import__

    def no_timm(name, *args, **kwargs):
        if name == "timm":
            raise failure
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_timm)
    with pytest.raises(backbones.BackboneError, match=rf'{type(failure).__name__}: .*'
                                                      r'pip install "mmgraph\[vision\]"'):
        backbones.TimmBackbone(model="resnet18", out_indices=(4,), output="grid", weights=None,
                               in_channels=3, image_size=(64, 64))


# ---------------------------------------------------------------- conv_frontend

FRONTEND = """
model m {
  input wave: Audio[B, 400]
  encoder feat: conv_frontend(channels=[8, 8, 12], kernels=[10, 3, 2], strides=[5, 2, 2])
  y = feat(wave)
  output y
}
"""


def test_conv_frontend_types():
    assert "%y : Seq<audio>[B, 19, 12]" in _line(graph(FRONTEND), "y")  # 400 -> 79 -> 39 -> 19
    sym = graph(FRONTEND.replace("400", "S"))
    # floor((n - kernel) / stride) + 1 per layer, simplified by sympy
    assert "%y : Seq<audio>[B, 1 + floor(floor(floor(S/5)/2)/2 - 3/2), 12]" in _line(sym, "y")
    wav2vec2 = graph(FRONTEND.replace("400", "16000").replace(
        "channels=[8, 8, 12], kernels=[10, 3, 2], strides=[5, 2, 2]", ""))
    assert "%y : Seq<audio>[B, 49, 512]" in _line(wav2vec2, "y")  # 20 ms frames of 1 s


@pytest.mark.parametrize("change, code, message", [
    (("400", "9"), "E304", "feat: 9 samples leave 9 frames before conv layer 0, shorter than "
                           "its kernel 10"),
    (("400", "20"), "E304", "feat: 20 samples leave 1 frames before conv layer 2, shorter than "
                            "its kernel 2"),
    (("kernels=[10, 3, 2]", "kernels=[10, 3]"), "E203", "channels, kernels and strides give "
     "one entry per layer, but they have 3, 2 and 3"),
])
def test_conv_frontend_diagnostics(change, code, message):
    [(got_code, _, _, got)] = errors(FRONTEND.replace(*change))
    assert got_code == code and message in got, got


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_conv_frontend_equals_transformers_wav2vec2(tmp_path, norm):
    transformers = pytest.importorskip("transformers")
    from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2FeatureEncoder

    torch.manual_seed(0)
    cfg = transformers.Wav2Vec2Config(conv_dim=(8, 8, 12), conv_kernel=(10, 3, 2),
                                      conv_stride=(5, 2, 2), feat_extract_norm=norm,
                                      conv_bias=True)
    ref = Wav2Vec2FeatureEncoder(cfg).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # norms' weights and biases away from 1 and 0
    model = _load(tmp_path, FRONTEND.replace("2])", f'2], norm="{norm}", bias=true)'))
    model.feat.load_state_dict(ref.state_dict())  # transformers' names, as they are
    wave = torch.randn(2, 400)
    with torch.no_grad():
        torch.testing.assert_close(model(wave)["y"], ref(wave).transpose(1, 2), rtol=0, atol=0)


def test_conv_frontend_onnx_export_matches_pytorch(tmp_path):
    from mmgraph.export import targets
    from mmgraph.export.onnx_parts import export

    spec = tmp_path / "m.mmg"
    spec.write_text(FRONTEND.replace("2])", '2], norm="layer")'))
    manifest = export(spec, tmp_path / "dist", targets.load("onnx"), log=lambda *a: None)
    (part,) = manifest["parts"]
    assert part["parity"]["fp32"]["y"]["max_abs"] < 1e-5, part["parity"]
