"""Vision-token vocabulary of issue 13: tubelet_embed (a Conv3d patch embedding of clips),
floor-mode patching of vit/patch_embed (SigLIP-384/14), pixel_shuffle (InternVL) and
local_cross_attention (Cambrian's spatial vision aggregator). Types and diagnostics at their
spans; each torch face against torch's own op or a hand computation; ONNX export parity."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from mmgraph.build import load

from helpers import errors, graph


def _load(tmp_path, src):
    path = tmp_path / "m.mmg"
    path.write_text(src)
    return load(path).eval()


def _line(g, value):
    return next(line for line in g.dump().splitlines() if line.strip().startswith(f"%{value} "))


# ---------------------------------------------------------------- tubelet_embed

TUBELET = """
model m {
  input clip: Video[B, 8, 3, 32, 32]
  encoder tubes: tubelet_embed(patch=16, tubelet=2, width=24)
  y = tubes(clip)
  output y
}
"""


def test_tubelet_types_frames_times_patches():
    assert "%y : Seq<video>[B, 16, 24]" in _line(graph(TUBELET), "y")
    sym = graph(TUBELET.replace("Video[B, 8, 3, 32, 32]", "Video[B, 2 * F, 3, 16 * H, 16 * W]"))
    assert "Seq<video>[B, F * H * W, 24]" in _line(sym, "y")


def test_tubelet_refuses_a_frame_count_it_cannot_cut():
    assert errors(TUBELET.replace("Video[B, 8,", "Video[B, 7,")) == [
        ("E304", 5, 13, "tubes: frame count 7 is not a multiple of 2")]
    assert errors(TUBELET.replace("Video[B, 8, 3, 32, 32]", "Seq[B, 8, 3]"))[0][:3] == \
        ("E302", 5, 13)


def test_tubelet_is_torch_conv3d_and_a_hand_computation(tmp_path):
    torch.manual_seed(0)
    model = _load(tmp_path, TUBELET)
    clip = torch.randn(2, 8, 3, 32, 32)
    got = model(clip)["y"]
    w, b = model.tubes.proj.weight, model.tubes.proj.bias  # [24, 3, 2, 16, 16]
    ref = F.conv3d(clip.permute(0, 2, 1, 3, 4), w, b, stride=(2, 16, 16))
    torch.testing.assert_close(got, ref.flatten(2).transpose(1, 2), rtol=0, atol=0)
    # by hand: cut [t, p, p] tubes in (time, row, column) order, one matrix product
    tubes = clip.reshape(2, 4, 2, 3, 2, 16, 2, 16).permute(0, 1, 4, 6, 3, 2, 5, 7)
    hand = tubes.reshape(2, 16, 3 * 2 * 16 * 16) @ w.reshape(24, -1).T + b
    torch.testing.assert_close(got, hand, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- floor-mode patching

SIGLIP = """
model m {
  input image: Image[B, 3, 384, 384]
  encoder vision: vit(patch=14, width=32, depth=1, heads=4, cls_token=false, floor=true)
  y = vision(image)
  output y
}
"""


def test_floor_patching_keeps_whole_patches_only():
    assert "%y : Seq<image>[B, 729, 32]" in _line(graph(SIGLIP), "y")  # 27 x 27
    wide = graph(SIGLIP.replace("384, 384", "383, 397"))
    assert "%y : Seq<image>[B, 756, 32]" in _line(wide, "y")  # 27 x 28


def test_without_floor_a_size_off_the_patch_is_still_refused():
    assert errors(SIGLIP.replace(", floor=true", "")) == [
        ("E304", 5, 14, "vision: image height 384 is not a multiple of 14")]


def test_floor_patch_embed_is_a_stride_patch_conv(tmp_path):
    torch.manual_seed(0)
    src = """
    model m {
      input image: Image[B, 3, 33, 47]
      encoder tok: patch_embed(patch=14, width=16, pos="none", floor=true)
      y = tok(image)
      output y
    }
    """
    assert "%y : Seq<image>[B, 6, 16]" in _line(graph(src), "y")  # 2 x 3
    model = _load(tmp_path, src)
    image = torch.randn(2, 3, 33, 47)
    ref = F.conv2d(image, model.tok.proj.weight, model.tok.proj.bias, stride=14)
    torch.testing.assert_close(model(image)["y"], ref.flatten(2).transpose(1, 2), rtol=0,
                               atol=0)


def test_floor_vit_reads_only_the_whole_patches(tmp_path):
    """The dropped border cannot change the output: same tokens for 384 px as for the 378 px
    image cropped to its 27 whole patches."""
    torch.manual_seed(0)
    model = _load(tmp_path, SIGLIP)
    image = torch.randn(1, 3, 384, 384)
    cropped = image.clone()
    cropped[..., 378:, :] = 7.0
    cropped[..., :, 378:] = -7.0
    torch.testing.assert_close(model(image)["y"], model(cropped)["y"], rtol=0, atol=0)


def test_floor_vit_loads_siglip_and_matches_transformers(tmp_path):
    """A SigLIP whose image size is not a multiple of its patch (18 = 4 * 4 + 2, as 384 =
    27 * 14 + 6): transformers' conv drops the border too, and the weights load as they are."""
    transformers = pytest.importorskip("transformers")
    from mmgraph.backends.torch.load import model_class
    from mmgraph.backends.torch.pretrained import load_pretrained
    from mmgraph.compiler import build_graph
    from mmgraph.ir.graph import Pretrained

    torch.manual_seed(0)
    config = transformers.SiglipVisionConfig(hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=4, intermediate_size=48,
                                             image_size=18, patch_size=4)
    hf = transformers.SiglipVisionModel(config).eval()
    hf.save_pretrained(tmp_path / "siglip", safe_serialization=True)
    spec = tmp_path / "s.mmg"
    spec.write_text("""
model s {
  input image: Image[B, 3, 18, 18]
  encoder vision: vit(patch=4, width=32, depth=2, heads=4, mlp=48, act="gelu_tanh",
                      cls_token=false, norm_eps=1e-6, floor=true)
  output vision(image) as out
}
""")
    g = build_graph(spec, {}, None, ())
    inst = g.instances["vision"]
    inst.pretrained = Pretrained(str(tmp_path / "siglip"), None, "siglip_vision", inst.span)
    model = model_class(g, spec)()
    model.graph = g
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the attention-pooling head it does not use
        load_pretrained(model, g)
    image = torch.randn(2, 3, 18, 18)
    with torch.no_grad():
        ours = model.eval()(image=image)["out"]
        theirs = hf(pixel_values=image).last_hidden_state
    assert ours.shape == (2, 16, 32)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- pixel_shuffle

SHUFFLE = """
model m {
  input x: Seq[B, 16, 8]
  connector fold: pixel_shuffle(ratio=2)
  y = fold(x)
  output y
}
"""


def internvl_pixel_shuffle(x, scale_factor=0.5):
    """InternVL's InternVLChatModel.pixel_shuffle (ps_version 'v2'), as published."""
    n, w, h, c = x.size()
    x = x.view(n, w, int(h * scale_factor), int(c / scale_factor))
    x = x.permute(0, 2, 1, 3).contiguous()
    x = x.view(n, int(h * scale_factor), int(w * scale_factor),
               int(c / (scale_factor * scale_factor)))
    return x.permute(0, 2, 1, 3).contiguous()


def internvl_extract(vit_embeds, scale_factor=0.5):
    """InternVL's extract_feature around it: tokens -> square grid -> shuffle -> tokens."""
    h = w = int(vit_embeds.shape[1] ** 0.5)
    vit_embeds = vit_embeds.reshape(vit_embeds.shape[0], h, w, -1)
    vit_embeds = internvl_pixel_shuffle(vit_embeds, scale_factor)
    return vit_embeds.reshape(vit_embeds.shape[0], -1, vit_embeds.shape[-1])


def test_pixel_shuffle_types():
    assert "%y : Seq[B, 4, 32]" in _line(graph(SHUFFLE), "y")
    three = graph(SHUFFLE.replace("ratio=2", "ratio=3").replace("16, 8", "36, 8"))
    assert "%y : Seq[B, 4, 72]" in _line(three, "y")


@pytest.mark.parametrize("shape, message", [
    ("15, 8", "fold reads the 15 tokens of x as a square grid, but 15 is not a square number"),
    ("36, 8", "fold: the 6x6 token grid of x is not a multiple of ratio=4"),
])
def test_pixel_shuffle_refuses_grids_it_cannot_fold(shape, message):
    src = SHUFFLE.replace("16, 8", shape).replace("ratio=2", "ratio=4" if "36" in shape else
                                                  "ratio=2")
    assert errors(src) == [("E304", 5, 12, message)]


def test_pixel_shuffle_is_internvls(tmp_path):
    from mmgraph.components.nn.vision_grids import pixel_shuffle

    torch.manual_seed(0)
    x = torch.randn(2, 64, 6)  # an 8 x 8 grid
    torch.testing.assert_close(pixel_shuffle(x, ratio=2), internvl_extract(x), rtol=0, atol=0)
    # and what it means: token (u, v) holds the 2 x 2 block at rows 2u.., columns 2v..
    grid = x.reshape(2, 8, 8, 6)
    out = pixel_shuffle(x, ratio=2).reshape(2, 4, 4, 24)
    for i in range(2):
        for j in range(2):
            torch.testing.assert_close(out[..., (i * 2 + j) * 6:(i * 2 + j + 1) * 6],
                                       grid[:, i::2, j::2], rtol=0, atol=0)
    model = _load(tmp_path, SHUFFLE)
    y = torch.randn(3, 16, 8)
    torch.testing.assert_close(model(y)["y"], internvl_extract(y), rtol=0, atol=0)


def test_pixel_shuffle_of_a_grid_it_cannot_fold_at_run_time_is_an_input_error():
    """A symbolic token count is checked when the tensor arrives."""
    from mmgraph.components.nn.vision_grids import pixel_shuffle
    from mmgraph.errors import InputError

    assert "%y : Seq[B, N/4, 32]" in _line(graph(SHUFFLE.replace("16, 8", "N, 8")), "y")
    with pytest.raises(InputError, match="but it was given 15 tokens"):
        pixel_shuffle(torch.zeros(1, 15, 8), ratio=2)
    with pytest.raises(InputError, match="but it was given 36 tokens"):
        pixel_shuffle(torch.zeros(1, 36, 8), ratio=4)


# ---------------------------------------------------------------- local_cross_attention

SVA = """
model m {
  input fine: Seq[B, 36, 12]
  input coarse: Tensor[B, 10, 3, 3]
  connector sva: local_cross_attention(grid=3, width=16, heads=2)
  y = sva(fine, coarse)
  output y
}
"""


def test_local_cross_attention_types():
    assert "%y : Seq[B, 9, 16]" in _line(graph(SVA), "y")


@pytest.mark.parametrize("change, col, code, message", [
    (("Tensor[B, 10, 3, 3]", "Tensor[B, 10, 4, 3]"), 17, "E304",
     "sva: the 4x3 feature grid of coarse has a height that is not a multiple of grid=3"),
    (("Seq[B, 36, 12]", "Seq[B, 35, 12]"), 11, "E304",
     "sva reads the 35 tokens of fine as a square grid, but 35 is not a square number"),
    (("Tensor[B, 10, 3, 3]", "Tensor[B, 10, 3]"), 17, "E302",
     "sva expects a feature map Tensor[B, C, H, W] or a token grid Seq[B, N, D] for 'ctx1' "
     "but coarse gives Tensor[B, 10, 3]"),
    (("heads=2", "heads=3"), 0, "E203", "sva: width 16 is not divisible by heads=3"),
])
def test_local_cross_attention_diagnostics(change, col, code, message):
    [(got_code, line, got_col, got)] = errors(SVA.replace(*change))
    assert (got_code, got) == (code, message)
    assert line == (5 if code == "E203" else 6)
    if col:
        assert got_col == col


def test_local_cross_attention_by_hand(tmp_path):
    """Every query against its own windows, written out with loops: query (u, v) reads the
    2 x 2 window of the 6 x 6 grid and the 1 x 1 window of the 3 x 3 map at (u, v), each
    plus its input's window-position embedding."""
    torch.manual_seed(0)
    model = _load(tmp_path, SVA)
    sva = model.sva
    with torch.no_grad():  # make the norms' and biases' parameters count
        for p in sva.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    fine, coarse = torch.randn(2, 36, 12), torch.randn(2, 10, 3, 3)
    got = model(fine, coarse)["y"]

    def ln(x, norm):
        return F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps)

    heads, dh = 2, 8
    want = torch.zeros(2, 9, 16)
    fine_grid = fine.reshape(2, 6, 6, 12)
    for b in range(2):
        for u in range(3):
            for v in range(3):
                query = sva.queries[u * 3 + v]
                q = sva.q(ln(query, sva.q_norm))
                window0 = fine_grid[b, 2 * u:2 * u + 2, 2 * v:2 * v + 2].reshape(4, 12)
                window1 = coarse[b, :, u, v].reshape(1, 10)
                # each input's embedding of the positions in its window, row by row
                window0, window1 = window0 + sva.window_pos[0], window1 + sva.window_pos[1]
                w0, w1 = ln(window0, sva.kv_norms[0]), ln(window1, sva.kv_norms[1])
                k = torch.cat([sva.k[0](w0), sva.k[1](w1)])
                val = torch.cat([sva.v[0](w0), sva.v[1](w1)])
                out = []
                for h in range(heads):
                    s = slice(h * dh, (h + 1) * dh)
                    att = torch.softmax(k[:, s] @ q[s] / math.sqrt(dh), dim=0)
                    out.append(att @ val[:, s])
                want[b, u * 3 + v] = query + sva.o(torch.cat(out))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- ONNX

ALL = """
model m {
  input clip: Video[B, 2, 3, 32, 32]
  input image: Image[B, 3, 60, 60]
  encoder tubes: tubelet_embed(patch=16, tubelet=2, width=16)
  encoder tok: patch_embed(patch=14, width=16, floor=true)
  connector fold: pixel_shuffle(ratio=2)
  connector sva: local_cross_attention(grid=2, width=16, heads=2)
  t = tubes(clip)
  p = tok(image)
  f = fold(p)
  s = sva(p, t)
  output t, f, s
}
"""


def test_onnx_export_matches_pytorch(tmp_path):
    from mmgraph.export import targets
    from mmgraph.export.onnx_parts import export

    spec = tmp_path / "all.mmg"
    spec.write_text(ALL)
    g = graph(ALL)
    assert "Seq<image>[B, 16, 16]" in _line(g, "p")  # floor(60/14) = 4, 4 x 4
    manifest = export(spec, tmp_path / "dist", targets.load("onnx"), log=lambda *a: None)
    (part,) = manifest["parts"]
    for name in ("t", "f", "s"):
        assert part["parity"]["fp32"][name]["max_abs"] < 1e-5, (name, part["parity"])


def test_the_docs_example_checks_as_printed():
    """docs/language.md's "Backbones and vision grids" example: every IR line it prints."""
    from mmgraph.compiler import check_text

    from helpers import docs_example

    source, printed = docs_example("model vision_vocab {")
    result = check_text(source, "vis.mmg")
    assert result.ok, [str(d) for d in result.errors]
    dump = result.graphs["vision_vocab"].dump()
    for line in printed.strip().splitlines():
        assert line + "  # vis.mmg:" in dump, line
