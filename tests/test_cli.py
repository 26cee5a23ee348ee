"""The `mmgraph` command line, through `mmgraph.cli.main(argv)` and once as a real process.

Exit codes: 0 ok, 1 errors in a spec, 2 usage errors (argparse's own errors exit with 2 via
SystemExit; mmgraph's usage errors return 2); 3 is an internal error, which no test accepts.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mmgraph.cli import main

from conftest import ROOT, SPECS

CLIP = ROOT / "specs" / "clip.mmg"
LLAVA = ROOT / "specs" / "llava.mmg"
JSON_KEYS = {"file", "line", "col", "end_line", "end_col", "code", "severity", "message", "hint"}
ROLES = ("encoder", "connector", "fusion", "decoder", "head", "layer")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """main(argv) -> (exit code, stdout, stderr); argparse's SystemExit counts as the code."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def bad_clip(tmp_path: Path) -> tuple[Path, int, int]:
    """clip.mmg with `vit` misspelt as `vti`: the spec, and the line and column of `vti`."""
    text = CLIP.read_text().replace("encoder vision: vit(", "encoder vision: vti(", 1)
    spec = tmp_path / "bad_clip.mmg"
    spec.write_text(text)
    for number, line in enumerate(text.splitlines(), 1):
        if "vti(" in line:
            return spec, number, line.index("vti(") + 1
    raise AssertionError("no vti( in the mutated spec")


def top_level_layers(spec: Path) -> list[str]:
    """Names of the layers declared in the models' bodies (not inside block definitions)."""
    text = spec.read_text()
    names = []
    for model in re.finditer(r"^model\s+\w+\s*\{(.*?)^\}", text, re.S | re.M):
        names += re.findall(rf"^\s*(?:{'|'.join(ROLES)})\s+(\w+)\s*:", model.group(1), re.M)
    return names


# ---------------------------------------------------------------- check: exit codes and output

def test_check_zoo_exits_0_and_reports_every_spec(capsys):
    code, out, err = run(capsys, "check", *SPECS)
    assert code == 0, err
    for spec in SPECS:
        assert re.search(rf"^{re.escape(str(spec))}: ok \(model \w+: \d+ values", out, re.M), out
    assert "error" not in err


def test_check_bad_spec_exits_1_with_located_excerpt(capsys, tmp_path):
    spec, line, col = bad_clip(tmp_path)
    code, out, err = run(capsys, "check", spec)
    assert code == 1
    header = f"{spec}:{line}:{col}: error[E201]: unknown component 'vti'"
    assert header in err, err
    lines = err.splitlines()
    i = lines.index(header)
    source = spec.read_text().splitlines()[line - 1]
    # header, ` |`, `N | source`, ` | ^^^` — the caret under exactly `vti`.
    assert lines[i + 2] == f"{line} | {source}"
    gutter = " " * len(str(line)) + " | "
    caret = lines[i + 3]
    assert caret.startswith(gutter), caret
    marks = caret[len(gutter):]
    assert marks == " " * (col - 1) + "^^^", repr(caret)
    assert source[col - 1:col - 1 + len("vti")] == "vti"
    assert "did you mean 'vit'?" in err
    assert f"{spec}: 1 error" in err
    assert out == ""


def test_check_syntax_error_exits_1(capsys, tmp_path):
    spec = tmp_path / "syntax.mmg"
    spec.write_text("model m {\n  input a: Tensor[B, 4]\n  output a\n")  # no closing brace
    code, _, err = run(capsys, "check", spec)
    assert code == 1
    assert re.search(rf"^{re.escape(str(spec))}:\d+:\d+: error\[E00\d\]", err, re.M), err


def test_check_missing_file_exits_1_with_e001(capsys, tmp_path):
    code, _, err = run(capsys, "check", tmp_path / "nope.mmg")
    assert code == 1
    assert "error[E001]" in err


def test_check_non_utf8_file_exits_1_with_e001(tmp_path):
    # Known bug: parse_file formats `exc.strerror`, which UnicodeDecodeError lacks, so an
    # AttributeError escapes check_file (the CLI reports it as an internal error, exit 3).
    # Strict on purpose: it should be E001, exit 1.
    spec = tmp_path / "latin1.mmg"
    spec.write_bytes(b"x = 1  # caf\xe9\n")
    proc = subprocess.run([sys.executable, "-m", "mmgraph", "check", str(spec)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 1, proc.stderr
    assert f"error[E001]: cannot read {spec}" in proc.stderr


def test_check_several_specs_each_reported(capsys, tmp_path):
    spec, _, _ = bad_clip(tmp_path)
    code, out, err = run(capsys, "check", CLIP, spec, LLAVA)
    assert code == 1
    assert f"{CLIP}: ok" in out
    assert f"{LLAVA}: ok" in out
    assert f"{spec}: 1 error" in err
    assert "error[E201]" in err


def test_check_no_warnings_flag_is_accepted(capsys):
    code, out, _ = run(capsys, "check", "--no-warnings", CLIP)
    assert code == 0 and f"{CLIP}: ok" in out


# ---------------------------------------------------------------- usage errors

@pytest.mark.parametrize("argv", [
    ["check", str(CLIP), "--bogus"],                  # unknown option (argparse)
    ["frobnicate", str(CLIP)],                        # unknown command (argparse)
    [],                                               # no command (argparse)
    ["check"],                                        # no spec (argparse)
    ["check", str(CLIP), "--set", "embed"],           # --set without '='
    ["check", str(CLIP), "--set", "1x=3"],            # --set of a non-identifier
    ["check", str(CLIP), "--plugin", "/nonexistent/plugin.py"],
    ["graph", str(CLIP)],                             # graph without -o
], ids=["unknown-option", "unknown-command", "no-command", "no-spec", "set-without-eq",
        "set-bad-name", "missing-plugin", "graph-without-output"])
def test_usage_errors_exit_2(capsys, argv):
    code, out, err = run(capsys, *argv)
    assert code == 2, (out, err)
    assert "error" in err


def test_set_without_equals_message(capsys):
    code, _, err = run(capsys, "check", CLIP, "--set", "embed")
    assert code == 2
    assert "--set expects NAME=VALUE, got 'embed'" in err


def test_set_unknown_constant_is_spec_error_e106(capsys):
    # Documented behaviour: the name is well-formed, so it is the spec's mistake (exit 1),
    # not a usage error, and the hint lists the spec's constants.
    code, _, err = run(capsys, "check", CLIP, "--set", "nope=3")
    assert code == 1
    assert "error[E106]" in err
    assert "has no constant 'nope'" in err
    assert "embed" in err  # the hint lists the constants


def test_set_unknown_constant_json_has_no_span(capsys):
    code, out, _ = run(capsys, "check", "--json", CLIP, "--set", "nope=3")
    assert code == 1
    [d] = json.loads(out)["diagnostics"]
    assert d["code"] == "E106" and d["line"] is None and d["file"] is None


# ---------------------------------------------------------------- --json

def test_json_ok(capsys):
    code, out, _ = run(capsys, "check", "--json", CLIP, LLAVA)
    assert code == 0
    payload = json.loads(out)
    assert payload["ok"] is True
    assert [f["file"] for f in payload["files"]] == [str(CLIP), str(LLAVA)]
    assert all(f["ok"] for f in payload["files"])
    assert "clip" in payload["files"][0]["models"]
    assert payload["diagnostics"] == [] or all(
        d["severity"] != "error" for d in payload["diagnostics"])


def test_json_diagnostics_have_every_key(capsys, tmp_path):
    spec, line, col = bad_clip(tmp_path)
    other = tmp_path / "two_errors.mmg"
    other.write_text("model m {\n  input a: Tensor[B, 4]\n  output zz\n}\nmodel m { }\n")
    code, out, _ = run(capsys, "check", "--json", CLIP, spec, other)
    assert code == 1
    payload = json.loads(out)
    assert payload["ok"] is False
    assert [f["ok"] for f in payload["files"]] == [True, False, False]
    diags = payload["diagnostics"]
    assert diags
    for d in diags:
        assert JSON_KEYS <= set(d), d  # extra keys (e.g. notes) are fine
        assert d["severity"] in ("error", "warning")
        assert re.fullmatch(r"E\d{3}", d["code"])
    files = {d["file"] for d in diags}
    assert {str(spec), str(other)} <= files
    e201 = [d for d in diags if d["code"] == "E201"]
    assert e201 and (e201[0]["file"], e201[0]["line"], e201[0]["col"]) == (str(spec), line, col)
    assert e201[0]["end_line"] == line and e201[0]["end_col"] == col + 3
    assert e201[0]["hint"] == "did you mean 'vit'?"


# ---------------------------------------------------------------- --verbose and --set

def test_verbose_prints_every_value_type(capsys):
    code, out, _ = run(capsys, "check", "--verbose", LLAVA)
    assert code == 0
    assert re.search(r"^\s*%logits : Logits<image,text>\[B, 576 \+ T, 32064\]", out, re.M), out
    assert re.search(r"^\s*%v : Seq<image>\[B, 576, 4096\]", out, re.M), out
    values = re.findall(r"^\s*%(\w+) :", out, re.M)
    assert {"image", "prompt", "vision", "v", "logits"} <= set(values)


def test_set_override_changes_inferred_types(capsys):
    code, out, _ = run(capsys, "check", "-v", CLIP)
    assert code == 0
    assert re.search(r"^\s*%img : Vec<image>\[B, 512\]", out, re.M)
    code, out, _ = run(capsys, "check", "-v", CLIP, "--set", "embed=64")
    assert code == 0
    assert re.search(r"^\s*%img : Vec<image>\[B, 64\]", out, re.M), out
    assert re.search(r"^\s*%txt : Vec<text>\[B, 64\]", out, re.M), out


def test_set_several_overrides(capsys):
    code, out, _ = run(capsys, "check", "-v", CLIP, "--set", "width=64", "--set",
                       "text_width=32", "--set", "depth=2", "--set", "heads=4",
                       "--set", "text_heads=4")
    assert code == 0, out
    assert re.search(r"^\s*%vision : Vec<image>\[B, 64\]", out, re.M), out
    assert re.search(r"^\s*%texter : Vec<text>\[B, 32\]", out, re.M), out


def test_set_override_can_break_a_spec(capsys):
    # patch=5 does not divide the 224-px image: a spec error, reported as such.
    code, _, err = run(capsys, "check", CLIP, "--set", "patch=5")
    assert code == 1
    assert "error[E304]" in err and "not a multiple of 5" in err


# ---------------------------------------------------------------- a real process

def test_subprocess_check(tmp_path):
    spec, line, col = bad_clip(tmp_path)
    ok = subprocess.run([sys.executable, "-m", "mmgraph", "check", *map(str, SPECS)],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count(": ok (") == len(SPECS)
    bad = subprocess.run([sys.executable, "-m", "mmgraph", "check", str(spec)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    assert f"{spec}:{line}:{col}: error[E201]" in bad.stderr
    assert "Traceback" not in bad.stderr
    usage = subprocess.run([sys.executable, "-m", "mmgraph", "check", "--bogus", str(CLIP)],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert usage.returncode == 2
    assert "Traceback" not in usage.stderr


def test_check_does_not_import_torch():
    code = ("import sys\n"
            "from mmgraph.cli import main\n"
            "assert main(['check', 'specs/clip.mmg']) == 0\n"
            "assert 'torch' not in sys.modules, 'mmgraph check imported torch'\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------- graph

@pytest.mark.parametrize("suffix", [".dot", ".mmd"])
@pytest.mark.parametrize("spec", SPECS, ids=[s.stem for s in SPECS])
def test_graph_text_formats_name_every_layer(capsys, tmp_path, spec, suffix):
    out_file = tmp_path / f"{spec.stem}{suffix}"
    code, out, err = run(capsys, "graph", spec, "-o", out_file)
    assert code == 0, err
    assert f"wrote {out_file}" in out
    text = out_file.read_text()
    layers = top_level_layers(spec)
    assert layers, f"no layers found in {spec}"
    missing = [name for name in layers if name not in text]
    assert not missing, f"{out_file.name} lacks {missing}"
    if suffix == ".dot":
        assert text.startswith("digraph")
    else:
        assert text.startswith("flowchart")


def test_graph_unknown_format_exits_2(capsys, tmp_path):
    code, _, err = run(capsys, "graph", CLIP, "-o", tmp_path / "x.txt")
    assert code == 2
    assert "unknown picture format" in err


def test_graph_bad_spec_exits_1(capsys, tmp_path):
    spec, _, _ = bad_clip(tmp_path)
    out_file = tmp_path / "x.dot"
    code, _, err = run(capsys, "graph", spec, "-o", out_file)
    assert code == 1
    assert "error[E201]" in err
    assert not out_file.exists()


@pytest.mark.skipif(shutil.which("dot") is None,
                    reason="Graphviz `dot` is not installed: the SVG branch cannot run here")
def test_graph_svg_with_graphviz(capsys, tmp_path):
    out_file = tmp_path / "clip.svg"
    code, _, err = run(capsys, "graph", CLIP, "-o", out_file)
    assert code == 0, err
    text = out_file.read_text()
    assert "<svg" in text
    for name in top_level_layers(CLIP):
        assert name in text


@pytest.mark.skipif(shutil.which("dot") is not None,
                    reason="Graphviz `dot` is installed: the missing-Graphviz branch is "
                           "covered by test_graph_svg_graphviz_missing_simulated")
def test_graph_svg_without_graphviz(capsys, tmp_path):
    code, _, err = run(capsys, "graph", CLIP, "-o", tmp_path / "clip.svg")
    assert code == 2
    assert "Graphviz" in err and "not installed" in err


def test_graph_svg_graphviz_missing_simulated(capsys, tmp_path, monkeypatch):
    from mmgraph.backends import picture

    monkeypatch.setattr(picture.shutil, "which", lambda name: None)
    out_file = tmp_path / "clip.svg"
    code, _, err = run(capsys, "graph", CLIP, "-o", out_file)
    assert code == 2
    assert "Graphviz" in err and "not installed" in err
    assert not out_file.exists()


# ---------------------------------------------------------------- components

def test_components_lists_by_category(capsys):
    code, out, _ = run(capsys, "components")
    assert code == 0
    for category in ("encoder:", "connector:", "decoder:", "loss:"):
        assert re.search(rf"^{category}$", out, re.M), category
    for name in ("vit", "linear", "mlp", "causal_lm", "contrastive"):
        assert re.search(rf"^  {name}\s", out, re.M), name


def test_components_vit_shows_parameters(capsys):
    code, out, _ = run(capsys, "components", "vit")
    assert code == 0
    assert out.startswith("vit (encoder): ")
    assert re.search(r"^  inputs: image", out, re.M)
    for param in ("patch", "width", "depth", "heads", "pool"):
        assert re.search(rf"^  {param}: ", out, re.M), param
    assert re.search(r"^  patch: .*\(required\)", out, re.M)


def test_components_unknown_name_suggests(capsys):
    code, out, err = run(capsys, "components", "vti")
    assert code == 2
    assert "no component 'vti'" in err
    assert "did you mean 'vit'?" in err


# ---------------------------------------------------------------- plugins

PLUGIN = '''
from mmgraph.components.common import with_width
from mmgraph.components.registry import Component, Params, Port, register


@register
class Widen(Component):
    name = "widen_for_test"
    category = "connector"
    summary = "Multiply the width by an integer factor (test plugin)"
    inputs = (Port("x"),)

    class Params(Params):
        factor: int = 2

    def infer(self, p, x, ctx):
        t = x["x"]
        if p.factor < 1:
            ctx.fail(f"{ctx.name}: factor must be >= 1", code="E203")
        return with_width(t, t.dims[-1] * p.factor)
'''

PLUGIN_SPEC = '''
model widened {
  input x: Tensor[B, 8]
  connector w: widen_for_test(factor=3)
  y = w(x)
  output y
}
'''


@pytest.fixture
def fresh_registry(monkeypatch):
    """A function that resets the registry to the built-ins, so that each `--plugin` load in
    this process starts clean and no plugin component leaks into the other tests."""
    from mmgraph.components import registry

    registry.names()  # load the built-ins into the real registry first
    builtins = dict(registry.REGISTRY)

    def reset():
        monkeypatch.setattr(registry, "REGISTRY", dict(builtins))
        monkeypatch.delitem(sys.modules, "mmgraph_plugin_widen_plugin", raising=False)

    reset()
    return reset


def test_plugin_registers_a_component(capsys, tmp_path, fresh_registry):
    plugin = tmp_path / "widen_plugin.py"
    plugin.write_text(textwrap.dedent(PLUGIN))
    spec = tmp_path / "widened.mmg"
    spec.write_text(PLUGIN_SPEC)

    code, _, err = run(capsys, "check", spec)
    assert code == 1
    assert "error[E201]: unknown component 'widen_for_test'" in err

    code, out, err = run(capsys, "check", "-v", spec, "--plugin", plugin)
    assert code == 0, err
    assert re.search(r"^\s*%y : Tensor\S*\[B, 24\]", out, re.M), out

    fresh_registry()
    code, out, _ = run(capsys, "components", "widen_for_test", "--plugin", plugin)
    assert code == 0
    assert out.startswith("widen_for_test (connector): Multiply the width")
    assert re.search(r"^  factor: .*\(default 2\)", out, re.M), out

    fresh_registry()
    spec.write_text(PLUGIN_SPEC.replace("factor=3", "factor=0"))
    code, _, err = run(capsys, "check", spec, "--plugin", plugin)
    assert code == 1
    assert "factor must be >= 1" in err


def test_plugin_through_a_real_process(tmp_path):
    plugin = tmp_path / "widen_plugin.py"
    plugin.write_text(textwrap.dedent(PLUGIN))
    spec = tmp_path / "widened.mmg"
    spec.write_text(PLUGIN_SPEC)
    proc = subprocess.run([sys.executable, "-m", "mmgraph", "check", "-v", str(spec),
                           "--plugin", str(plugin)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^\s*%y : Tensor\S*\[B, 24\]", proc.stdout, re.M), proc.stdout


# Plugin failures: an error message and exit 2 (a usage error), never a traceback or an
# "internal error". Loading the same file twice may also simply succeed (exit 0).

BROKEN_PLUGINS = {
    # `--plugin p.py --plugin p.py`: the second exec makes a new class with the same name, and
    # register() complains "component 'widen_for_test' is registered twice
    # (mmgraph_plugin_widen_plugin and mmgraph_plugin_widen_plugin)".
    "same-file-twice": (PLUGIN, 2, {0, 2}),
    # A plugin that does not import.
    "syntax-error": ("this is not python(\n", 1, {2}),
    # A plugin reusing a built-in name.
    "builtin-name": ('from mmgraph.components.registry import Component, register\n'
                     '@register\nclass V(Component):\n    name = "vit"\n'
                     '    category = "encoder"\n', 1, {2}),
}


@pytest.mark.parametrize("source,times,expected", list(BROKEN_PLUGINS.values()),
                         ids=list(BROKEN_PLUGINS))
def test_plugin_failures_are_reported_not_raised(tmp_path, source, times, expected):
    plugin = tmp_path / "widen_plugin.py"
    plugin.write_text(textwrap.dedent(source))
    argv = [sys.executable, "-m", "mmgraph", "check", str(CLIP)]
    argv += ["--plugin", str(plugin)] * times
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode in expected, proc.stderr
    if proc.returncode == 2:
        assert str(plugin) in proc.stderr or plugin.name in proc.stderr, proc.stderr
