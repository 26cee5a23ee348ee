"""The spec front end trusts nothing (issue 8): one test group per fixed item.

Imports stay inside the project and never read a refused file; strings keep their UTF-8 and
bad escapes are diagnostics; absurd literals and sizes are diagnostics at check time; check
time is linear in the number of constants; and the item-10 regressions (co_attention without
its FFN, LoRA targets, hints for free dims and undeclared inputs).
"""

from __future__ import annotations

import cProfile
import os
import pstats
import subprocess
import sys

import pytest

from mmgraph.compiler import check_file, check_text
from mmgraph.ir import program as program_module
from mmgraph.lang import parser as parser_module
from mmgraph.lang.diagnostics import render
from mmgraph.lang.parser import Unreadable, parse, read_spec

from conftest import ROOT

MODEL = "model m {\n  input a: Tensor[B, w]\n  output a\n}\n"


def _errors(result):
    return [(d.code, d.span.line if d.span else 0, d.span.col if d.span else 0)
            for d in result.errors]


def _spec(path, imports, body=MODEL):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f'import "{i}"\n' for i in imports) + body, encoding="utf-8")
    return path


# ---------------------------------------------------------------- 1. imports stay inside

@pytest.fixture
def no_reads(monkeypatch):
    """Fail the test if the loader reads any file after the root spec."""
    def refuse(path):
        raise AssertionError(f"{path} was read")
    monkeypatch.setattr(program_module, "read_spec", refuse)


@pytest.mark.parametrize("target", ["/etc/passwd", "/etc/shadow.mmg", "/proc/self/environ",
                                    "../x.mmg", "../../etc/passwd", "a/../../x.mmg"])
def test_refused_imports_are_never_read(tmp_path, no_reads, target):
    spec = _spec(tmp_path / "proj" / "m.mmg", [target])
    result = check_file(spec)
    assert _errors(result) == [("E103", 1, 8)], result.diagnostics
    assert not any("root:" in render(d) for d in result.diagnostics)


def test_a_link_out_of_the_project_is_refused(tmp_path, no_reads):
    (tmp_path / "secret.mmg").write_text("w = 4\n")
    spec = _spec(tmp_path / "proj" / "m.mmg", ["s.mmg"])
    os.symlink(tmp_path / "secret.mmg", tmp_path / "proj" / "s.mmg")
    [d] = check_file(spec).errors
    assert d.code == "E103" and "outside the project folder" in d.message


def test_lib_dirs_allow_a_folder_outside_and_are_searched(tmp_path):
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "common.mmg").write_text("w = 4\n")
    by_search = _spec(tmp_path / "proj" / "a.mmg", ["common.mmg"])
    by_path = _spec(tmp_path / "proj" / "b.mmg", ["../shared/common.mmg"])
    absolute = _spec(tmp_path / "proj" / "c.mmg", [str(tmp_path / "shared" / "common.mmg")])
    for spec in (by_search, by_path, absolute):
        assert not check_file(spec).ok, spec  # refused without the library folder
        result = check_file(spec, lib_dirs=[tmp_path / "shared"])
        assert result.ok, result.diagnostics


def test_the_same_file_under_two_names_is_loaded_once(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "c.mmg").write_text("w = 4\n")
    os.symlink("c.mmg", tmp_path / "lib" / "alias.mmg")
    spec = _spec(tmp_path / "m.mmg", ["lib/c.mmg", "lib/../lib/c.mmg", "lib/alias.mmg"])
    assert check_file(spec).ok


def test_read_spec_refuses_what_is_no_regular_file(tmp_path):
    os.mkfifo(tmp_path / "fifo.mmg")  # no writer: a blocking open would hang here
    (tmp_path / "dir.mmg").mkdir()
    os.symlink("loop.mmg", tmp_path / "loop.mmg")
    reasons = {}
    for path in ["fifo.mmg", "dir.mmg", "loop.mmg", "/dev/zero", "missing.mmg"]:
        with pytest.raises(Unreadable) as exc:
            read_spec(tmp_path / path)
        reasons[path] = str(exc.value)
    assert "not a regular file" in reasons["fifo.mmg"] == reasons["/dev/zero"]
    assert "folder" in reasons["dir.mmg"]
    assert "link loop" in reasons["loop.mmg"]
    assert "no such file" in reasons["missing.mmg"]


def test_read_spec_caps_the_size_and_wants_utf8(tmp_path, monkeypatch):
    monkeypatch.setattr(parser_module, "MAX_SPEC_BYTES", 16)
    (tmp_path / "big.mmg").write_text("x = 1\n" * 10)
    (tmp_path / "latin.mmg").write_bytes(b"x = \"caf\xe9\"\n")
    with pytest.raises(Unreadable, match="larger than"):
        read_spec(tmp_path / "big.mmg")
    with pytest.raises(Unreadable, match=r"not UTF-8 text \(byte 8\)"):
        read_spec(tmp_path / "latin.mmg")


def test_root_spec_problems_are_e001_and_import_problems_e103(tmp_path):
    os.mkfifo(tmp_path / "f.mmg")
    assert [d.code for d in check_file(tmp_path / "f.mmg").errors] == ["E001"]
    spec = _spec(tmp_path / "m.mmg", ["f.mmg"])
    assert _errors(check_file(spec)) == [("E103", 1, 8)]


def test_control_characters_in_an_import_path_are_refused_and_shown_escaped(tmp_path):
    spec = tmp_path / "m.mmg"
    spec.write_text('import "a\\nb\\u0000.mmg"\n' + MODEL)
    [d] = check_file(spec).errors
    assert d.code == "E103" and "\\n" in d.message and "\n" not in d.message


# ---------------------------------------------------------------- 2. strings keep their UTF-8

def test_strings_keep_utf8_and_decode_the_documented_escapes():
    [const] = parse('x = "é \\u00e9 \\t\\n\\r \\" \\\' \\\\"').consts
    assert const.value.value == "é é \t\n\r \" ' \\"


def test_a_non_ascii_import_is_found(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "é.mmg").write_text("w = 4\n", encoding="utf-8")
    assert check_file(_spec(tmp_path / "m.mmg", ["lib/é.mmg"])).ok


@pytest.mark.parametrize("literal,col", [('"\\x41"', 6), ('"ab\\q"', 8), ('"\\u12"', 6),
                                         ('"\\ud800"', 6), ('"\\u"', 6)])
def test_bad_escapes_are_e009_at_the_backslash(literal, col):
    result = check_text(f"x = {literal}\n" + MODEL.replace("w", "4"), "t.mmg")
    assert _errors(result) == [("E009", 1, col)], result.diagnostics


# ---------------------------------------------------------------- 3. numbers and sizes

@pytest.mark.parametrize("literal", ["9" * 100_000, "1e999", "9223372036854775808",
                                     "1" + "0" * 4400])
def test_absurd_literals_are_e007(literal):
    result = check_text(f"w = {literal}\n" + MODEL, "t.mmg")
    [d] = result.errors
    assert (d.code, d.span.line, d.span.col) == ("E007", 1, 5)
    assert len(d.message) < 100  # the literal is shortened, not echoed


def test_largest_integer_literal_is_fine():
    assert parse("x = 9223372036854775807").consts[0].value.value == 2**63 - 1


@pytest.mark.parametrize("text,expected", [
    # a parameter past int32, through a constant: at the argument
    ("w = 1e11\nmodel m {\n  input x: Tensor[B, 8]\n  layer p: linear(out=w)\n"
     "  output p(x) as y\n}\n", ("E203", 4, 23)),
    # the same through arithmetic of constants
    ("w = 10 ** 11\nmodel m {\n  input x: Tensor[B, 8]\n  layer p: linear(out=w)\n"
     "  output p(x) as y\n}\n", ("E203", 4, 23)),
    # a dim past int32
    ("w = 10 ** 11\nmodel m {\n  input x: Tensor[B, w]\n  output x\n}\n", ("E304", 3, 22)),
    # a value past 2**40 numbers
    ("n = 2**21\nmodel m {\n  input x: Tensor[B, n, n]\n  output x\n}\n", ("E304", 3, 12)),
    # a weight matrix past 2**40 numbers: both sizes fit int32
    ("w = 2**31 - 1\nmodel m {\n  input x: Tensor[B, w]\n  layer p: linear(out=w)\n"
     "  output p(x) as y\n}\n", ("E203", 4, 23)),
    # inside a repeat of a block
    ("block b(w) {\n  input x: Tensor[B, 8]\n  layer p: linear(out=w)\n  output p(x)\n}\n"
     "model m {\n  input x: Tensor[B, 8]\n  layer r: b(w=2**40)\n  output r(x) as y\n}\n",
     ("E203", 3, 23)),
])
def test_sizes_past_what_can_be_allocated_are_refused_at_check(text, expected):
    result = check_text(text, "t.mmg")
    assert _errors(result)[:1] == [expected], [render(d) for d in result.diagnostics]
    assert all(d.code != "E901" for d in result.diagnostics)


def test_large_but_allocatable_sizes_pass():
    # a 262k vocab at width 8192, and a norm over 2**21 features (2**21 weights, not 2**42)
    text = ("vocab = 262_144\nwide = 2**21\nmodel m {\n  input t: Tokens[B, 8192]\n"
            "  input h: Vec[B, wide]\n"
            "  decoder lm: causal_lm(vocab=vocab, width=8192, depth=2, heads=64, max_len=8192)\n"
            "  layer n: layer_norm()\n  output lm(tokens=t) as y, n(h) as z\n}\n")
    result = check_text(text, "t.mmg")
    assert result.ok, [render(d) for d in result.diagnostics]


def test_size_checks_keep_check_free_of_torch():
    code = ("import sys\nfrom mmgraph.compiler import check_text\n"
            "r = check_text('w = 1e11\\nmodel m {\\n  input x: Tensor[B, 8]\\n"
            "  layer p: linear(out=w)\\n  output p(x) as y\\n}\\n')\n"
            "assert [d.code for d in r.errors] == ['E203'], r.diagnostics\n"
            "assert 'torch' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


# ---------------------------------------------------------------- 4. linear in constants

def _model_constants(n: int) -> str:
    lines = [f"  c_{i} = c_{i + 1} + 1" for i in range(n)] + [f"  c_{n} = 4"]
    return "model m {\n  input x: Tensor[B, c_0]\n" + "\n".join(lines) + "\n  output x\n}\n"


def _value_chain(n: int) -> str:
    lines = [f"  v_{i} = v_{i + 1} + x" for i in range(n)] + [f"  v_{n} = x * 2"]
    return "model m {\n  input x: Tensor[B, 4]\n" + "\n".join(lines) + "\n  output v_0\n}\n"


def _calls(text: str) -> int:
    """Python function calls made by checking `text` once it is parsed (deterministic)."""
    program = program_module.load_program("t.mmg", text=text)
    from mmgraph.compiler import check_program

    profile = cProfile.Profile()
    profile.enable()
    result = check_program(program)
    profile.disable()
    assert result.ok, result.diagnostics
    return pstats.Stats(profile).total_calls


@pytest.mark.parametrize("make", [_model_constants, _value_chain], ids=["constants", "values"])
def test_check_work_grows_linearly(make):
    # each line is defined before the line it uses, the order that made the fixpoint,
    # `list.index` and networkx's find_cycle quadratic; doubling the lines must about double
    # the work, where quadratic work would quadruple it
    small, large = _calls(make(500)), _calls(make(1000))
    assert large < 2.6 * small, (small, large)


def test_twenty_thousand_model_constants_check():
    lines = [f"  c_{i} = {i}" for i in range(20_000)]
    text = "model m {\n  input x: Tensor[B, c_7]\n" + "\n".join(lines) + "\n  output x\n}\n"
    assert check_text(text, "t.mmg").ok


# ---------------------------------------------------------------- 5. item 10

def test_co_attention_without_ffn_runs_in_torch():
    torch = pytest.importorskip("torch")
    from mmgraph.components.nn.fusion import CoAttention

    torch.manual_seed(0)
    full = CoAttention(in_width=16, heads=2, ffn=True)
    bare = CoAttention(in_width=16, heads=2, ffn=False)
    a, b = torch.randn(2, 5, 16), torch.randn(2, 3, 16)
    out, other = bare(a, b)
    assert out.shape == a.shape and other.shape == b.shape
    (out.sum() + other.sum()).backward()
    assert all(p.grad is not None for p in bare.parameters())  # no unused weights
    assert sum(p.numel() for p in bare.parameters()) < sum(p.numel() for p in full.parameters())
    # with its FFN it computes what the transformer Block computes
    x, y = full(a, b)
    assert torch.equal(x, full.a_block(a, ctx=b)) and torch.equal(y, full.b_block(b, ctx=a))


@pytest.mark.parametrize("mod,expected,hint", [
    ('lora(targets=["q", "value"])', ("E206", 3, 58), "q, k, v, o"),
    ('lora(targets=["q", "vv"])', ("E206", 3, 58), "did you mean 'v'?"),
])
def test_lora_targets_name_linear_layers(mod, expected, hint):
    text = (f"model m {{\n  input x: Seq[B, T, 64]\n  layer a: transformer_layer(heads=4) {mod}"
            "\n  output a(x) as y\n}\n")
    result = check_text(text, "t.mmg")
    [d] = result.errors
    assert (d.code, d.span.line, d.span.col) == expected and hint in d.hint


def test_lora_targets_that_exist_pass():
    text = ('model m {\n  input x: Seq[B, T, 64]\n  layer a: transformer_layer(heads=4) '
            'lora(targets=["q", "v", "fc1"])\n  layer p: linear(out=8) lora(r=2)\n'
            '  output p(a(x)) as y\n}\n')
    assert check_text(text, "t.mmg").ok


def test_a_free_dim_as_a_parameter_says_so():
    text = ("block tower(width) {\n  input x: Seq[B, N, width]\n  layer l: linear(out=width)\n"
            "  output l(x)\n}\nmodel m {\n  input x: Seq[B, T, 64]\n"
            "  encoder t: tower(width=T)\n  output t(x) as y\n}\n")
    [d] = check_text(text, "t.mmg").errors
    assert (d.code, d.span.line, d.span.col) == ("E101", 8, 26)
    assert "free dim" in d.hint and "T = 32" in d.hint


def test_an_undeclared_input_suggests_declaring_it():
    text = "model m {\n  input image: Image[B, 3, 8, 8]\n  output l2norm(audio) as a\n}\n"
    [d] = check_text(text, "t.mmg").errors
    assert d.code == "E101" and "`input audio: " in d.hint
