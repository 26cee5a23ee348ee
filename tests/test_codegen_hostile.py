"""A spec never runs code (issue 8, item 1): hostile file names, imported files' names, names
and strings reach generated Python, shell and protobuf text only as literals, identifiers and
one-line comments. Also item 10: an export part through one stream of a two-output block.

The property test builds one small spec around hostile values and asserts that the generated
module compiles to the same AST shape as for benign values, that executing it defines the
class and nothing else (no PWNED file), that the values come back unchanged from the
literals, and that a runtime error still names the spec's file and line.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import json
import keyword
import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mmgraph
from mmgraph import escape
from mmgraph.backends.torch.codegen import RESERVED, generate
from mmgraph.backends.torch.load import module_from_source
from mmgraph.cli import main
from mmgraph.compiler import check_text
from mmgraph.errors import InputError
from mmgraph.ir.reserved import why_reserved, why_reserved_input

from conftest import ROOT

TINY = ROOT / "tests" / "bad_inputs" / "tiny.mmg"
PAYLOAD = '__import__("pathlib").Path("PWNED").touch()'
HOSTILE_SPEC_NAME = 'x""";__import__("os").system("touch PWNED");""".mmg'
HOSTILE_IMPORT_NAME = "n\n__import__('os').system('touch PWNED')\n#.mmg"

# pieces that have broken out of a string, comment or docstring somewhere
NASTY = ['"""', "'''", '"', "'", "\\", "\n", "\r", "\r\n", "\x00", "\t", "\x0b", "\x0c",
         "\x1c", "\x85", "\u2028", "\u2029", "\ufeff", "\udcff", "#", "é", "\U0001f600", " ",
         "   ", "\\\n", ");", "{", "}", "$(", "`", PAYLOAD, f"\n{PAYLOAD}\n#",
         f'""";{PAYLOAD};"""']

hostile_text = st.lists(st.sampled_from(NASTY) | st.text(max_size=3), min_size=1,
                        max_size=6).map("".join)
# a file name in a folder: no "/" and (for the root, whose folder imports are resolved in) no NUL
hostile_file = hostile_text.map(lambda t: t.replace("/", "_").replace("\x00", "_")[:60])
# an imported file's name (import paths may not hold control characters), written with the
# spec string escapes every parser knows
_SPEC_ESCAPES = {'"': '\\"', "\\": "\\\\"}
lib_file = st.lists(st.sampled_from(['"""', "'''", '"', "\\", "#", " ", ");", f'""";{PAYLOAD};"""',
                                     f"\\{PAYLOAD}#"])
                    | st.text(st.characters(min_codepoint=32, max_codepoint=126,
                                            blacklist_characters="/"), max_size=3),
                    min_size=1, max_size=5).map("".join)

# names the grammar lets through that Python or the generated code care about (`as`, `import`
# and `layer` cannot start a spec statement)
NAMES = sorted((set(keyword.kwlist) | set(keyword.softkwlist) | RESERVED
                | {"class_", "None_", "lambda__", "exec", "print", "int", "losses", "x", "y"})
               - {"as", "import", "layer"})


def spec_text(lib: str, names: dict[str, str]) -> str:
    lib_literal = "".join(_SPEC_ESCAPES.get(ch, ch) for ch in lib)
    return (f'import "{lib_literal}"\n'
            'tag = "t"\n'
            f'model {names["model"]} {{\n'
            f'  input {names["input"]}: Tokens[B, 8]\n'
            f'  connector {names["layer"]}: prompt_tokens(n=2, width=4, modality=tag)\n'
            f'  decoder {names["block"]}: blk()\n'
            f'  {names["value"]} = {names["layer"]}({names["input"]})\n'
            f'  {names["out"]} = {names["block"]}({names["value"]})\n'
            f'  output {names["out"]}\n'
            f'  loss {names["loss"]} = mse({names["out"]}, {names["out"]})\n'
            '}\n')


# layers become module attributes and inputs forward's parameters, so `check` refuses the
# names those cannot carry (E102, tested below)
LAYER_NAMES = [n for n in NAMES if why_reserved(n) is None]
INPUT_NAMES = [n for n in NAMES if why_reserved_input(n) is None]


@st.composite
def role_names(draw) -> list[str]:
    """Distinct names for ROLES: the layers' and the input's from names they may have."""
    layer, block = draw(st.lists(st.sampled_from(LAYER_NAMES), min_size=2, max_size=2,
                                 unique=True))
    given = draw(st.sampled_from([n for n in INPUT_NAMES if n not in (layer, block)]))
    rest = [n for n in NAMES if n not in (layer, block, given)]
    others = draw(st.lists(st.sampled_from(rest), min_size=len(ROLES) - 3,
                           max_size=len(ROLES) - 3, unique=True))
    return others[:1] + [given, layer, block] + others[1:]


LIB = "block blk() {\n  input a: Seq[B, T, D]\n  layer l: linear(out=4)\n  output l(a)\n}\n"
ROLES = ("model", "input", "layer", "block", "value", "out", "loss")
BENIGN = dict(zip(ROLES, ("m", "x", "p", "b", "v", "o", "l"), strict=True))


def shape(node):
    """The AST's structure: node types and nesting, without names, strings or numbers."""
    if isinstance(node, list):
        return tuple(shape(n) for n in node)
    return (type(node).__name__,
            tuple(shape(getattr(node, f)) for f in node._fields
                  if isinstance(getattr(node, f), ast.AST | list)))


def generated(folder: Path, root: str, lib: str, names: dict[str, str], tag: str):
    (folder / lib).write_text(LIB, encoding="utf-8")
    path = str(folder / root)
    result = check_text(spec_text(lib, names), path, overrides={"tag": tag})
    assert result.ok, [str(d) for d in result.errors]
    [g] = result.graphs.values()
    return g, generate(g, path), path


@pytest.fixture(scope="module")
def benign_shape(tmp_path_factory):
    _, gen, _ = generated(tmp_path_factory.mktemp("benign"), "m.mmg", "lib.mmg", BENIGN, "t")
    return shape(ast.parse(gen.source))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(root=hostile_file, lib=lib_file, tag=hostile_text,
       names=role_names())
def test_hostile_spec_generates_the_same_module_and_runs_nothing(tmp_path_factory, benign_shape,
                                                                  root, lib, tag, names):
    folder = tmp_path_factory.mktemp("hostile")
    root, lib = root + ".mmg", lib + ".mmg"
    if root == lib:
        lib = "lib_" + lib
    names = dict(zip(ROLES, names, strict=True))
    with contextlib.chdir(folder):
        g, gen, path = generated(folder, root, lib, names, tag)
        source = gen.source
        source.encode("utf-8")  # writable as a file
        assert "\x00" not in source
        assert len(source.splitlines()) == source.count("\n"), "a line break besides \\n"
        assert shape(ast.parse(source)) == benign_shape

        module = module_from_source(gen, f"<mmgraph {path}>")
        defined = {k for k in vars(module) if not k.startswith("__")}
        cls = getattr(module, gen.class_name)
        assert defined == {"torch", "nn", "mm", gen.class_name, "Blk"}
        assert not Path("PWNED").exists()
        # the values come back from their literals unchanged
        assert cls.spec == path
        [out_type] = cls.outputs.values()
        assert tag in out_type

        model = cls()
        tokens = torch.zeros(2, 8, dtype=torch.long)
        [out] = model(tokens).values()
        assert out.shape == (2, 2, 4)
        assert set(model.losses(tokens)) == {names["loss"], "total"}
        with pytest.raises(InputError, match="not a tensor"):  # refused at the boundary
            model("not a tensor")
        first_layer = next(model.children())  # the layer of spec line 7
        first_layer.register_forward_pre_hook(lambda *_: 1 / 0)
        with pytest.raises(ZeroDivisionError) as exc:
            model(tokens)
        where = f"{escape.one_line(Path(path).name).strip()}:7"
        assert any(f"value of {where} (generated code: " in n for n in exc.value.__notes__)
        assert not Path("PWNED").exists()


@pytest.mark.parametrize("layer", ["forward", "losses", "to", "__private", "_modules", "class",
                                   "torch", "graph"])
def test_layer_named_like_a_module_attribute_is_a_diagnostic(tmp_path, layer):
    spec = tmp_path / "m.mmg"
    spec.write_text(f"model m {{\n  input x: Tensor[B, 8]\n  connector {layer}: linear(out=4)\n"
                    f"  y = {layer}(x)\n  output y\n}}\n")
    result = mmgraph.check_file(spec)  # `check` refuses it, not only code generation
    [d] = result.errors
    assert (d.code, d.span.line, d.span.col) == ("E102", 3, 13)
    assert f"layer '{layer}'" in d.message and d.hint == "rename the layer"
    with pytest.raises(mmgraph.SpecError):
        mmgraph.load(spec)


@pytest.mark.parametrize("name", ["self", "return_losses", "torch", "class_", "lambda"])
def test_input_named_like_a_forward_parameter_is_a_diagnostic(tmp_path, name):
    """An input is a parameter of the generated forward and the key a batch passes it by, so
    a name the generated code would rename is refused where it is declared."""
    spec = tmp_path / "m.mmg"
    spec.write_text(f"model m {{\n  input {name}: Tensor[B, 8]\n  layer p: linear(out=4)\n"
                    f"  y = p({name})\n  output y\n}}\n")
    errors = [d for d in mmgraph.check_file(spec).errors if d.code == "E102"]
    assert [(d.span.line, d.span.col) for d in errors] == [(2, 9)]
    assert f"input '{name}'" in errors[0].message and errors[0].hint == "rename the input"


def test_reserved_names_cover_the_installed_torch():
    """The torch-free list `check` uses must hold every attribute of a generated module."""
    from mmgraph.components import nn as mm
    from mmgraph.ir.reserved import MODULE_ATTRIBUTES

    have = {n for n in dir(mm.GeneratedModel()) if not n.startswith("__")}
    assert have <= MODULE_ATTRIBUTES, sorted(have - MODULE_ATTRIBUTES)


# ------------------------------------------------------------------ the escape functions

@settings(max_examples=300, deadline=None)
@given(text=hostile_text)
def test_escapes_hold_for_any_text(text):
    name = escape.py_name(text, RESERVED)
    assert name.isidentifier() and not keyword.iskeyword(name) and name not in RESERVED
    assert ast.literal_eval(escape.py_literal(text)) == text
    line = escape.one_line(text)
    assert line.isprintable() and "  " not in line
    doc = ast.parse(f'"""{escape.docstring_text(text)}"""')
    assert [type(n) for n in doc.body] == [ast.Expr]
    assert shlex.split(escape.sh_word(text.replace("\x00", ""))) == [text.replace("\x00", "")]


def test_py_name_keeps_ordinary_names_and_separates_the_mangled_ones():
    assert [escape.py_name(n, RESERVED) for n in ("vision", "class", "class_", "self", "7up",
                                                   "a-b", "", "match")] == \
        ["vision", "class_", "class__", "self_", "_7up", "a_b", "_", "match"]


def test_py_literal_of_numbers_and_containers():
    value = (1, -2.5, float("inf"), None, True, ["a", ("b",)], {"k": "v"})
    assert eval(escape.py_literal(value), {"__builtins__": {"float": float}}) == value
    with pytest.raises(TypeError, match="no Python literal"):
        escape.py_literal(object())


def test_pbtxt_string_round_trips_through_protobuf():
    text_format = pytest.importorskip("google.protobuf.text_format")
    from google.protobuf import descriptor_pb2

    for text in NASTY:
        message = text_format.Parse(f"name: {escape.pbtxt_string(text)}",
                                    descriptor_pb2.FileDescriptorProto())
        expected = text.encode("utf-8", "backslashreplace").decode("utf-8")
        assert message.name == expected, text


# ------------------------------------------------------------------ file names, end to end

def _copy_tiny(folder: Path, name: str) -> Path:
    path = folder / name
    shutil.copy(TINY, path)
    return path


def test_hostile_spec_name_through_load_compile_and_stats(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    spec = _copy_tiny(tmp_path, HOSTILE_SPEC_NAME)
    model = mmgraph.load(spec)
    assert type(model).spec == str(spec)
    assert main(["compile", HOSTILE_SPEC_NAME, "-o", "out"]) == 0
    source = (tmp_path / "out" / "tiny.py").read_text(encoding="utf-8")
    compile(source, "tiny.py", "exec")
    assert '"""model tiny (x\\"\\"\\";__import__(\\"os\\")' in source
    assert main(["stats", HOSTILE_SPEC_NAME]) == 0
    capsys.readouterr()
    assert not (tmp_path / "PWNED").exists()


def _importer(folder: Path, import_literal: str) -> Path:
    spec = folder / "m.mmg"
    spec.write_text(f"import {import_literal}\n"
                    "model m {\n  input x: Tokens[B, 8]\n"
                    "  connector p: prompt_tokens(n=2, width=4)\n"
                    "  decoder b: blk()\n  y = b(p(x))\n  output y\n}\n")
    return spec


def test_hostile_imported_file_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'l""";__import__("os").system("touch PWNED");#\\.mmg').write_text(LIB)
    spec = _importer(tmp_path,
                     '"l\\"\\"\\";__import__(\\"os\\").system(\\"touch PWNED\\");#\\\\.mmg"')
    model = mmgraph.load(spec)
    assert model(torch.zeros(1, 8, dtype=torch.long))["y"].shape == (1, 2, 4)
    assert main(["stats", "m.mmg"]) == 0
    assert main(["compile", "m.mmg", "-o", "out"]) == 0
    capsys.readouterr()
    source = (tmp_path / "out" / "m.py").read_text()
    assert 'block blk (l\\"\\"\\";__import__(\\"os\\").system(\\"touch PWNED\\");#\\\\.mmg:1)' \
        in source
    assert not (tmp_path / "PWNED").exists()


def test_imported_file_name_with_line_breaks(tmp_path, monkeypatch, capsys):
    """The issue's own probe: refused as an import path, or compiled; never run."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / HOSTILE_IMPORT_NAME).write_text(LIB)
    _importer(tmp_path, '"n\\n__import__(\'os\').system(\'touch PWNED\')\\n#.mmg"')
    for command in ("check", "stats", "compile"):
        assert main([command, "m.mmg"]) in (0, 1), capsys.readouterr()
    assert not (tmp_path / "PWNED").exists()


# ------------------------------------------------------------------ export templates

HOSTILE_PART = 'v"; touch PWNED; echo "$(touch PWNED)`touch PWNED`\'\n#'
HOSTILE_INPUT = "im age$(touch PWNED)"


def _parts(name: str, onnx: str, input_name: str) -> list[dict]:
    return [{"name": name, "onnx": onnx,
             "inputs": [{"name": input_name, "dtype": "float32", "shape": ["B", 3],
                         "min": [1, 3], "opt": [1, 3], "max": [4, 3]}],
             "outputs": [{"name": "img", "dtype": "float32", "shape": ["B", 4]}]}]


def test_build_scripts_quote_hostile_names(tmp_path, monkeypatch):
    from mmgraph.export.tensorrt import build_script

    monkeypatch.chdir(tmp_path)
    target = {"name": 'trt"""\n' + PAYLOAD + "\\", "precision": "fp32", "tensorrt": "10.3\n#"}
    onnx = "p q'$(touch PWNED).onnx"
    sh, py = build_script(_parts(HOSTILE_PART, onnx, HOSTILE_INPUT), target, tmp_path / "h")
    _, benign_py = build_script(_parts("v", "v.onnx", "image"),
                                {"name": "t", "precision": "fp32", "tensorrt": "10.3"},
                                tmp_path / "b")
    assert shape(ast.parse(py.read_text())) == shape(ast.parse(benign_py.read_text()))
    assert ast.get_docstring(ast.parse(py.read_text())).startswith('Build TensorRT engines')

    # run the shell script with a trtexec that only records its arguments
    fake = tmp_path / "trtexec"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\n"
                    "open('args.json', 'w').write(json.dumps(sys.argv[1:]))\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    run = subprocess.run(["bash", str(sh)], env={**os.environ, "TRTEXEC": str(fake)},
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    args = json.loads((sh.parent / "args.json").read_text())
    assert f"--onnx={onnx}" in args and f"--saveEngine={HOSTILE_PART}.engine" in args
    assert f"--minShapes={HOSTILE_INPUT}:1x3" in args
    assert not list(tmp_path.rglob("PWNED"))


def test_triton_config_keeps_hostile_names_as_strings(tmp_path):
    pytest.importorskip("tritonclient")
    from google.protobuf import text_format

    from mmgraph.export.triton import model_config_pb2, write_repository

    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "v.onnx").write_bytes(b"onnx")
    model, part = 'm"\r\nname: "é', 'p\\"} name: "x'
    manifest = {"model": model, "precision": "fp32", "dims": {"B": {"min": 1, "max": 4}},
                "parts": _parts(part, "v.onnx", HOSTILE_INPUT)}
    out = write_repository(manifest, dist, tmp_path / "repo")
    text = (out / f"{model}_{part}" / "config.pbtxt").read_text()
    config = text_format.Parse(text, model_config_pb2().ModelConfig())
    assert config.name == f"{model}_{part}"
    assert [t.name for t in config.input] == [HOSTILE_INPUT]


# ------------------------------------------------------------------ item 10: one stream of two

TWO_STREAMS = """
block pair() {
  input a: Seq[B, T, D]
  input b: Seq[B, T, D]
  layer la: linear(out=8)
  layer lb: linear(out=8)
  output la(a), lb(b)
}

model two {
  input x: Tokens[B, 4]
  input y: Tokens[B, 4]
  layer ex: token_embedding(vocab=10, width=8)
  layer ey: token_embedding(vocab=10, width=8)
  decoder stack: repeat(pair(), times=2)
  l, r = stack(ex(x), ey(y))
  p = pool(l, mode="mean")
  q = pool(r, mode="mean")
  output p, q
  export {
    dim B = 1..4 @ 1
    part left: x -> p
    part right: y -> q
  }
}
"""


def test_part_through_one_stream_of_a_two_output_repeat(tmp_path):
    from mmgraph.export.onnx_parts import part_module, plan_parts

    spec = tmp_path / "two.mmg"
    spec.write_text(TWO_STREAMS)
    torch.manual_seed(0)
    model = mmgraph.load(spec).eval()
    g = model.graph
    x, y = torch.randint(0, 10, (2, 4)), torch.randint(0, 10, (2, 4))
    whole = model(x=x, y=y)
    left, right = (part_module(model, g, str(spec), plan) for plan in plan_parts(g))
    torch.testing.assert_close(left(x)["p"], whole["p"])
    torch.testing.assert_close(right(y)["q"], whole["q"])


def test_forward_that_uses_one_stream_of_a_two_output_repeat(tmp_path):
    spec = tmp_path / "one.mmg"
    spec.write_text(TWO_STREAMS.replace("  q = pool(r, mode=\"mean\")\n", "")
                    .replace("output p, q", "output p").replace("    part right: y -> q\n", ""))
    model = mmgraph.load(spec).eval()
    required = [p.name for p in inspect.signature(model.forward).parameters.values()
                if p.default is p.empty]
    assert required == ["x"]  # y feeds only the stream no output needs
    x = torch.randint(0, 10, (2, 4))
    ex = model.ex(x)
    expected = model.pool(model.stack[1].la(model.stack[0].la(ex)))
    torch.testing.assert_close(model(x=x)["p"], expected)
