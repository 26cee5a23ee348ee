"""Per-frame maps (mmgraph/components/frames.py): the type rules carry B * F, the faces equal
hand-written loops over frames and locations, and an X-CLIP/TimeSformer-like spec exports to
ONNX with parity at several batch sizes."""

from __future__ import annotations

import textwrap

import pytest
import torch

import mmgraph
from mmgraph.components import registry
from mmgraph.components.nn import frames as faces
from mmgraph.errors import InputError
from mmgraph.export import targets
from mmgraph.export.onnx_parts import export
from mmgraph.export.tensorrt import check_compatibility

from helpers import check, errors, graph

# X-CLIP: a ViT per frame, its class embeddings as a sequence over frames, a temporal
# transformer. TimeSformer: attention within each frame, then along time at each location.
# SkySense-style: a pooled vector joined to tokens as one more token.
XCLIP = """
model xclip_ish {
  input clip: Video[B, 4, 3, 32, 32]

  encoder frame: vit(patch=16, width=32, depth=1, heads=2, pool="cls")
  encoder patches: patch_embed(patch=16, width=32)
  layer temporal: transformer(depth=1, heads=2)
  layer space: transformer_layer(heads=2)
  layer time: transformer_layer(heads=2)

  f = frames_to_batch(clip)
  e = frame(f)
  v = batch_to_frames(e, frames=4)
  t = temporal(v)
  p = batch_to_frames(space(patches(f)), frames=4)
  l = locations_to_batch(p, frames=4)
  d = batch_to_locations(time(l), locations=4)
  s = frames_to_batch(d, frames=4)
  c = concat(vec_to_seq(e), s)
  output t, p, d, s, c
}
"""


def _types(g):
    return {name: str(g.type_of(ref)) for name, ref in g.outputs.items()} | {
        v: str(g.type_of(g.values[v])) for v in ("f", "e", "v", "l")}


def test_types_carry_the_frames_through_the_batch():
    g = graph(XCLIP)
    assert _types(g) == {
        "f": "Image<video>[4 * B, 3, 32, 32]",
        "e": "Vec<video>[4 * B, 32]",
        "v": "Seq<video>[B, 4, 32]",
        "t": "Seq<video>[B, 4, 32]",
        "p": "Seq<video>[B, 16, 32]",
        "l": "Seq<video>[4 * B, 4, 32]",
        "d": "Seq<video>[B, 16, 32]",
        "s": "Seq<video>[4 * B, 4, 32]",
        "c": "Seq<video>[4 * B, 5, 32]",
    }


def test_types_of_each_layout():
    g = graph("""
    model m {
      input img: Image[6, 3, 8, 8]
      input tens: Tensor[B, 5, 7, 2]
      input seq: Seq[B * 3, 4, 8]
      output batch_to_frames(img, frames=3) as video
      output frames_to_batch(tens, frames=5) as flat
      output batch_to_frames(frames_to_batch(tens), frames=5) as back
      output batch_to_frames(seq, frames=3) as joined
      output batch_to_locations(seq, locations=3) as located
    }""")
    out = {name: str(g.type_of(ref)) for name, ref in g.outputs.items()}
    assert out == {"video": "Video<image>[2, 3, 3, 8, 8]", "flat": "Tensor[5 * B, 7, 2]",
                   "back": "Tensor[B, 5, 7, 2]", "joined": "Seq[B, 12, 8]",
                   "located": "Seq[B, 12, 8]"}


@pytest.mark.parametrize("kind, call, want", [
    ("Seq[B, 10, 8]", "frames_to_batch(x)",
     ("E204", 3, 26, "frames_to_batch needs frames=F to cut x's tokens (Seq[B, 10, 8]) "
                     "into F frames")),
    ("Seq[B, 10, 8]", "frames_to_batch(x, frames=4)",
     ("E304", 3, 26, "frames_to_batch: token count 10 is not a multiple of 4")),
    ("Video[B, 4, 3, 8, 8]", "frames_to_batch(x, frames=3)",
     ("E203", 3, 36, "frames_to_batch: frames=3 but x has 4 frames: "
                     "Video<video>[B, 4, 3, 8, 8]")),
    ("Mask[B, 4]", "frames_to_batch(x)",
     ("E302", 3, 26, "frames_to_batch expects Video[B, F, C, H, W] or Seq[B, N, D] or "
                     "Tensor[...] for 'x' but x gives Mask[B, 4]")),
    ("Tensor[B]", "frames_to_batch(x)",
     ("E303", 3, 26, "frames_to_batch needs a batch and a frame axis but x gives Tensor[B]")),
    ("Vec[6, 8]", "batch_to_frames(x, frames=4)",
     ("E304", 3, 26, "batch_to_frames: batch 6 is not a multiple of 4")),
    ("Tokens[B, 4]", "batch_to_frames(x, frames=4)",
     ("E302", 3, 26, "batch_to_frames expects Vec[B, D] or Seq[B, N, D] or "
                     "Image[B, C, H, W] or Tensor[...] for 'x' but x gives Tokens<text>[B, 4]")),
    ("Vec[B, 8]", "batch_to_frames(x)",
     ("E204", 3, 10, "batch_to_frames needs parameter 'frames'")),
    ("Vec[B, 8]", "batch_to_frames(x, frames=0)",
     ("E203", 3, 36, "batch_to_frames parameter 'frames': must be an integer > 0 (got 0)")),
    ("Seq[B, 10, 8]", "locations_to_batch(x, frames=3)",
     ("E304", 3, 29, "locations_to_batch: token count 10 is not a multiple of 3")),
    ("Seq[6, 10, 8]", "batch_to_locations(x, locations=4)",
     ("E304", 3, 29, "batch_to_locations: batch 6 is not a multiple of 4")),
    ("Seq[B, 10, 8]", "vec_to_seq(x)",
     ("E302", 3, 21, "vec_to_seq expects Vec[B, D] for 'x' but x gives Seq[B, 10, 8]")),
])
def test_diagnostics_point_at_the_argument(kind, call, want):
    assert errors(f"model m {{\n  input x: {kind}\n  output {call} as y\n}}\n") == [want]


def test_faces_equal_hand_written_loops():
    torch.manual_seed(0)
    b, f, n, d = 2, 3, 5, 4
    video = torch.randn(b, f, 3, 6, 6)
    flat = faces.frames_to_batch(video, frames=None, split_tokens=False)
    for i in range(b):
        for j in range(f):
            assert torch.equal(flat[i * f + j], video[i, j])
    assert torch.equal(faces.batch_to_frames(flat, frames=f, join_tokens=False), video)

    tokens = torch.randn(b, f * n, d)  # frame-major: frame j's token k at j * n + k
    per_frame = faces.frames_to_batch(tokens, frames=f, split_tokens=True)
    per_location = faces.locations_to_batch(tokens, frames=f)
    assert per_frame.shape == (b * f, n, d) and per_location.shape == (b * n, f, d)
    for i in range(b):
        for j in range(f):
            for k in range(n):
                assert torch.equal(per_frame[i * f + j, k], tokens[i, j * n + k])
                assert torch.equal(per_location[i * n + k, j], tokens[i, j * n + k])
    assert torch.equal(faces.batch_to_frames(per_frame, frames=f, join_tokens=True), tokens)
    assert torch.equal(faces.batch_to_locations(per_location, locations=n), tokens)

    vectors = torch.randn(b * f, d)
    seq = faces.batch_to_frames(vectors, frames=f, join_tokens=False)
    assert torch.equal(seq, torch.stack([vectors[i * f:(i + 1) * f] for i in range(b)]))
    assert torch.equal(faces.vec_to_seq(vectors), vectors[:, None, :])


@pytest.fixture(scope="module")
def xclip(tmp_path_factory):
    path = tmp_path_factory.mktemp("frames") / "xclip.mmg"
    path.write_text(textwrap.dedent(XCLIP))
    return path


def test_a_per_frame_model_equals_a_loop_over_frames(xclip):
    torch.manual_seed(0)
    model = mmgraph.load(xclip).eval()
    clip = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        out = model(clip=clip)
        by_frame = torch.stack([model.frame(clip[:, j]) for j in range(4)], dim=1)
        assert torch.allclose(model.temporal(by_frame), out["t"], atol=1e-6)
        # attention along time at location k reads tokens k, 4 + k, 8 + k, 12 + k
        p = out["p"]
        for k in range(4):
            assert torch.allclose(out["d"][:, k::4], model.time(p[:, k::4]), atol=1e-6)
        # and within frame j, tokens 4j .. 4j + 3
        for j in range(4):
            row = out["s"].reshape(2, 4, 4, 32)[:, j]
            assert torch.equal(row, out["d"][:, 4 * j:4 * j + 4])
        assert torch.equal(out["c"][:, 1:], out["s"])


@pytest.mark.parametrize("target", ["onnx", "onnxruntime-fused"])
def test_onnx_export_keeps_the_batch_dynamic(xclip, tmp_path, target):
    """Traced (opset 18) and through torch.export with fused attention (opset 23)."""
    manifest = export(xclip, tmp_path, targets.load(target), log=lambda _: None)
    [part] = manifest["parts"]
    shapes = {o["name"]: o["shape"] for o in part["outputs"]}
    assert shapes["s"] == ["4 * B", 4, 32] and shapes["t"] == ["B", 4, 32]
    for output, errs in part["parity"]["fp32"].items():
        assert {at["dims"]["B"] for at in errs["at"].values()} == {1, 2, 4}, output
        assert errs["max_abs"] <= 1e-4, (output, errs)
    # reshapes and transposes with a dynamic batch: nothing TensorRT's parser refuses
    assert check_compatibility(tmp_path / part["onnx"], "10.15").findings == []


def test_a_batch_not_known_to_be_a_multiple_is_refused():
    """`B * F` by 8 (a symbolic frame count against a fixed one) or a free `B` by 4 would type
    the result `B * F/8`: refused, with the way out."""
    hint = ("give the frames a number (a file constant such as `frames = 8`, used in the "
            "input's type and as frames=frames), or write the batch as a product, e.g. "
            "Vec[B * 8, D]")
    src = """
    model m {
      input clip: Video[B, F, 3, 32, 32]
      input x: Vec[B, 8]
      input s: Seq[B, N, 8]
      output batch_to_frames(frames_to_batch(clip), frames=8) as a
      output batch_to_frames(x, frames=4) as b
      output locations_to_batch(s, frames=2) as c
    }"""
    result = check(src)
    got = [(d.code, d.span.line, d.span.col, d.message, d.hint) for d in result.errors]
    assert got == [
        ("E304", 6, 26, "batch_to_frames: batch B * F is not a known multiple of 8", hint),
        ("E304", 7, 26, "batch_to_frames_1: batch B is not a known multiple of 4", hint),
        ("E304", 8, 29, "locations_to_batch: token count N is not a known multiple of 2",
         "write the token count as a product of the frames, e.g. Seq[B, 8 * N, D]")]
    g = graph(src.replace("F, 3", "8, 3").replace("Vec[B, 8]", "Vec[B * 4, 8]")
              .replace("Seq[B, N, 8]", "Seq[B, 2 * N, 8]"))
    out = {name: str(g.type_of(ref)) for name, ref in g.outputs.items()}
    assert out == {"a": "Video<video>[B, 8, 3, 32, 32]", "b": "Seq[B, 4, 8]",
                   "c": "Seq[B * N, 2, 8]"}


def test_faces_refuse_sizes_that_are_no_multiple():
    with pytest.raises(InputError, match=r"batch_to_frames\(frames=4\): the batch is 6, "
                                         r"not a multiple of 4"):
        faces.batch_to_frames(torch.randn(6, 8), frames=4, join_tokens=False)
    with pytest.raises(InputError, match=r"locations_to_batch\(frames=4\): the token count "
                                         r"is 6"):
        faces.locations_to_batch(torch.randn(1, 6, 8), frames=4)


def test_components_are_listed():
    for name in ("frames_to_batch", "batch_to_frames", "locations_to_batch",
                 "batch_to_locations", "vec_to_seq"):
        comp = registry.get(name)
        assert comp.category == "op" and not comp.has_weights and comp.sequence == "mixing"


def test_the_docs_example_checks_as_printed():
    """docs/language.md's "Per-frame maps and reshapes" example: every IR line it prints."""
    from mmgraph.compiler import check_text

    from helpers import docs_example

    source, printed = docs_example("model video_frames {")
    result = check_text(source, "frames.mmg")
    assert result.ok, [str(d) for d in result.errors]
    dump = result.graphs["video_frames"].dump()
    assert printed.strip()
    for line in printed.strip().splitlines():
        assert line + "  # frames.mmg:" in dump, line
