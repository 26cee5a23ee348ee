"""Issue 8, export and runtime: an export folder, its inputs, its targets and its output path
are checked, and every mistake is a UserError naming the file, the field, the input or the
value, never a raw onnxruntime, pydantic or OS error."""

from __future__ import annotations

import errno
import json
import os
import shutil

import numpy as np
import pytest

from mmgraph.cli import main
from mmgraph.errors import UserError
from mmgraph.export import targets
from mmgraph.export.onnx_parts import ExportError, export, token_vocab
from mmgraph.runtime import InputError, OnnxSession, Session, TensorSpec, open_export
from mmgraph.runtime.manifest import ManifestError, open_folder

from conftest import ROOT
from tiny import TINY

TINY_SPEC = ROOT / "tests" / "bad_inputs" / "tiny.mmg"  # image [B,3,16,16], text [B,40] vocab 259


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("trust") / "dist"
    export(TINY_SPEC, out, targets.load("onnx"), log=lambda _: None)
    return out


@pytest.fixture
def dist(exported, tmp_path):
    """A copy of the export that a test may damage."""
    return shutil.copytree(exported, tmp_path / "dist")


def edit(dist, change):
    path = dist / "manifest.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def feed(batch=2, text=None):
    rng = np.random.default_rng(0)
    return {"image": rng.standard_normal((batch, 3, 16, 16), dtype=np.float32),
            "text": rng.integers(0, 259, (batch, 40)) if text is None else text}


# ------------------------------------------------------------------ the manifest


def test_manifest_records_format_files_and_vocab(exported):
    folder = open_folder(exported)
    manifest = folder.manifest
    assert manifest.format == 1 and [p.name for p in manifest.parts] == ["visual", "textual"]
    assert set(manifest.files) == {"visual.onnx", "textual.onnx"}
    assert manifest.files["visual.onnx"].bytes == (exported / "visual.onnx").stat().st_size
    (text,) = manifest.parts[1].inputs
    assert (text.kind, text.vocab) == ("Tokens", 259)
    assert manifest.parts[0].inputs[0].vocab is None  # an image has no vocabulary
    assert os.path.isabs(manifest.spec)  # bench finds it from any folder


@pytest.mark.parametrize("name", ["zipper", "llava", "albef"])
def test_every_token_input_gets_its_own_vocab(name):
    from mmgraph.compiler import build_graph

    g = build_graph(ROOT / "specs" / f"{name}.mmg", TINY[name])
    vocabs = {i: token_vocab(g, i) for i in g.inputs if g.nodes[i].type.kind == "Tokens"}
    want = {"zipper": {"text": 64, "speech": 32}, "llava": {"prompt": 64},
            "albef": {"text": 128}}[name]
    assert vocabs == want


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "manifest.json").write_text("{nope"), "manifest.json:1:2: not valid JSON"),
    (lambda d: (d / "manifest.json").write_text("[" * 100_000), "nests too deeply"),
    (lambda d: (d / "manifest.json").write_text("[]"), "a JSON list, not an object"),
    (lambda d: edit(d, lambda m: m.pop("dims")), "manifest.json: dims: Field required"),
    (lambda d: edit(d, lambda m: m.update(format=7)), "has format 7; this mmgraph reads format 1"),
    (lambda d: edit(d, lambda m: m["parts"][0].update(outputs="img")),
     "parts[0].outputs: Input should be a valid list"),
    (lambda d: edit(d, lambda m: m["dims"]["B"].update(opt=True)),
     "dims.B.opt: Input should be a valid integer"),
])
def test_a_damaged_manifest_names_the_file_and_field(dist, damage, message):
    damage(dist)
    with pytest.raises(ManifestError) as exc:
        open_export(dist)
    assert message in str(exc.value) and str(dist / "manifest.json") in str(exc.value)


@pytest.mark.parametrize("onnx", ["../x.onnx", "/etc/passwd", "a/../../x.onnx", ""])
def test_part_paths_stay_inside_the_folder(dist, onnx):
    (dist.parent / "x.onnx").write_bytes((dist / "visual.onnx").read_bytes())
    edit(dist, lambda m: m["parts"][0].update(onnx=onnx))
    with pytest.raises(ManifestError, match="part 'visual': .* is not a file name inside"):
        open_export(dist)


def test_a_link_leading_out_is_refused(dist):
    (dist / "visual.onnx").unlink()
    (dist / "visual.onnx").symlink_to("/etc/passwd")
    with pytest.raises(ManifestError, match=r"visual.onnx \(part 'visual'\) leads outside"):
        open_export(dist)


def test_a_link_inside_the_folder_is_fine(dist):
    (dist / "keep").mkdir()
    (dist / "visual.onnx").rename(dist / "keep" / "visual.onnx")
    (dist / "visual.onnx").symlink_to("keep/visual.onnx")
    assert set(open_export(dist).run(**feed())) == {"img", "txt"}


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.unlink(), "is missing"),
    (lambda p: os.truncate(p, 10), "has 10 bytes but"),
    (lambda p: p.write_bytes(p.read_bytes()[:-1] + b"\0"), "does not match the sha256"),
])
def test_a_damaged_onnx_file_is_named(dist, damage, message):
    damage(dist / "textual.onnx")
    with pytest.raises(ManifestError, match=rf"textual.onnx \(part 'textual'\) {message}"):
        open_export(dist)


def test_onnxruntime_errors_are_wrapped(tmp_path):
    garbage = tmp_path / "x.onnx"
    garbage.write_bytes(b"\x08\x07garbage")
    with pytest.raises(ManifestError, match="x.onnx: onnxruntime cannot load it"):
        OnnxSession(garbage, [], [TensorSpec("y", "float32", (1,))])


def test_a_file_of_another_part_is_refused(dist):
    edit(dist, lambda m: m["parts"][0].update(onnx="textual.onnx"))
    with pytest.raises(ManifestError, match=r"takes inputs \['text'\], but its manifest entry"):
        open_export(dist)


def test_fp16_of_an_fp32_export_is_refused(exported):
    with pytest.raises(ManifestError, match="no fp16 ONNX file for part 'visual'"):
        open_export(exported, precision="fp16")


# ------------------------------------------------------------------ runtime inputs


@pytest.mark.parametrize("bad, message", [
    (-1, "input 'text': token id -1 at [1, 7] is outside the valid range 0..258 (vocab 259)"),
    (259, "input 'text': token id 259 at [1, 7] is outside the valid range 0..258"),
    (10**9, "token id 1000000000 at [1, 7]"),
])
def test_token_ids_are_range_checked(exported, bad, message):
    text = np.zeros((2, 40), dtype=np.int64)
    text[1, 7] = bad
    with pytest.raises(InputError) as exc:
        open_export(exported).run(**feed(text=text))
    assert message in str(exc.value)


def test_the_last_token_id_is_fine(exported):
    out = open_export(exported).run(**feed(text=np.full((2, 40), 258, dtype=np.int64)))
    assert out["txt"].shape == (2, 8)


def test_negative_ids_are_refused_without_a_vocab():
    session = Session([TensorSpec("ids", "int64", ("B",), kind="Tokens")], [])
    with pytest.raises(InputError, match=r"token id -3 at \[1\] is outside the valid range 0"):
        session.validate({"ids": np.array([0, -3])})


@pytest.mark.parametrize("change, message", [
    (lambda x: x.update(text=x["text"].astype(np.int32)), "expected dtype int64, got int32"),
    (lambda x: x.update(text=x["text"][0]), "input 'text': expected rank 2"),
    (lambda x: x.update(image=x["image"][:, :, :8]), "axis 2 must be 16, got 8"),
    (lambda x: x.update(image=np.zeros((9, 3, 16, 16), np.float32)),
     "dim B = 9 is outside the exported range 1..4"),
    (lambda x: x.pop("text"), "needs input 'text'"),
    (lambda x: x.update(txet=x["text"]), "has no input 'txet'; did you mean 'text'"),
    (lambda x: x.update(text=[[1, 2], [3]]), "input 'text' cannot be read as an array"),
])
def test_bad_inputs_are_input_errors(exported, change, message):
    x = feed()
    change(x)
    with pytest.raises(InputError) as exc:
        open_export(exported).run(**x)
    assert isinstance(exc.value, UserError) and message in str(exc.value)


# ------------------------------------------------------------------ bench


def test_bench_on_a_damaged_manifest_exits_1_naming_it(dist, capsys):
    edit(dist, lambda m: m["parts"][1]["inputs"][0].update(dtype="complex64"))
    assert main(["bench", str(dist), "--runs", "1", "--no-compile"]) == 1
    err = capsys.readouterr().err
    assert f"{dist / 'manifest.json'}: parts[1].inputs[0].dtype" in err


def test_bench_dims_stay_in_the_exported_range(exported, capsys):
    assert main(["bench", str(exported), "--runs", "1", "--no-compile", "--dims", "B=5"]) == 2
    assert "--dims B=5 is outside the range 1..4" in capsys.readouterr().err


# ------------------------------------------------------------------ Triton


def _instance_kinds(repo):
    return {p.parent.name: line.split(":")[1].strip()
            for p in repo.glob("*/config.pbtxt")
            for line in p.read_text().splitlines() if line.strip().startswith("kind:")}


@pytest.mark.parametrize("providers, kind", [
    ("", "KIND_CPU"),  # the triton target: onnxruntime on the CPU
    ('providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]\n', "KIND_GPU"),
])
def test_triton_instance_kind_follows_the_target(tmp_path, providers, kind):
    pytest.importorskip("tritonclient")
    target = tmp_path / "t.toml"
    target.write_text('name = "t"\ndescription = "t"\nruntime = "triton"\nopset = 18\n'
                      f'precision = "fp32"\n{providers}')
    export(TINY_SPEC, tmp_path / "dist", targets.load(str(target)), log=lambda _: None)
    assert _instance_kinds(tmp_path / "dist" / "triton") == {"tiny_visual": kind,
                                                           "tiny_textual": kind}


def test_triton_tensorrt_plans_need_the_gpu():
    from mmgraph.export.triton import instance_kind

    assert instance_kind("tensorrt", ["CPUExecutionProvider"]) == "KIND_GPU"
    assert instance_kind("onnxruntime", ["CPUExecutionProvider"]) == "KIND_CPU"


# ------------------------------------------------------------------ the export's output


def test_export_into_a_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("notes")
    with pytest.raises(ExportError, match="out is a file, not a folder"):
        export(TINY_SPEC, tmp_path / "out", targets.load("onnx"), log=lambda _: None)
    assert (tmp_path / "out").read_text() == "notes"


def test_an_unwritable_folder_is_named_before_any_work(tmp_path, monkeypatch):
    import mmgraph.export.onnx_parts as onnx_parts

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(onnx_parts.tempfile, "TemporaryFile", denied)
    monkeypatch.setattr(onnx_parts, "load_class", lambda *a, **k: pytest.fail("too late"))
    with pytest.raises(ExportError, match="cannot write .*out: permission denied"):
        export(TINY_SPEC, tmp_path / "out", targets.load("onnx"), log=lambda _: None)


def test_a_full_disk_names_the_file_and_leaves_no_manifest(exported, tmp_path, monkeypatch):
    import torch

    out = shutil.copytree(exported, tmp_path / "out")  # an older export being replaced

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch.onnx, "export", full)
    with pytest.raises(ExportError, match="cannot write .*visual.onnx: the disk is full"):
        export(TINY_SPEC, out, targets.load("onnx"), log=lambda _: None)
    assert not (out / "manifest.json").exists()  # no manifest vouches for half-written files


def test_the_manifest_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    import mmgraph.export.onnx_parts as onnx_parts

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx_parts.os, "replace", full)
    with pytest.raises(ExportError, match="cannot write .*manifest.json: the disk is full"):
        export(TINY_SPEC, tmp_path / "out", targets.load("onnx"), log=lambda _: None)
    assert not (tmp_path / "out" / "manifest.json").exists()


# ------------------------------------------------------------------ targets and checkpoints


@pytest.mark.parametrize("text, message", [
    ("name = [", "not valid TOML"),
    ('name = "t"\nfoo = 1\n', "unknown keys ['foo']; a target has name, description"),
    ('name = "t"\n', "description: Field required"),
    ('name = "t"\ndescription = "t"\nruntime = "onnxruntime"\nopset = 18.5\n'
     'precision = "fp32"\n', "opset: Input should be a valid integer"),
    ('name = "t"\ndescription = "t"\nruntime = "onnxruntime"\nopset = 18\n'
     'precision = "fp32"\nworkspace_mb = 0\n', "workspace_mb: Input should be greater than 0"),
])
def test_target_files_are_validated(tmp_path, text, message):
    path = tmp_path / "t.toml"
    path.write_text(text)
    with pytest.raises(targets.TargetError) as exc:
        targets.load(str(path))
    assert str(path) in str(exc.value) and message in str(exc.value)


def test_an_unknown_target_lists_the_available_ones():
    with pytest.raises(targets.TargetError, match="no export target 'gpu' .*targets: jetson-orin"):
        targets.load("gpu")


def test_an_opset_torch_cannot_write_is_an_export_error(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text('name = "t"\ndescription = "t"\nruntime = "onnxruntime"\nopset = 99\n'
                    'precision = "fp32"\n')
    with pytest.raises(ExportError, match="opset 99 is outside the opsets torch"):
        export(TINY_SPEC, tmp_path / "out", targets.load(str(path)), log=lambda _: None)


def test_export_maps_checkpoint_errors(tmp_path, capsys):
    (tmp_path / "notarun").mkdir()
    assert main(["export", str(TINY_SPEC), "--checkpoint", str(tmp_path / "notarun"),
                 "-o", str(tmp_path / "out")]) == 1
    assert "no checkpoint in" in capsys.readouterr().err
