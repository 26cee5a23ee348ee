"""The pass manager: which pass failed, and bugs reported as E901 instead of tracebacks."""

from mmgraph.ir import passes
from mmgraph.ir.passes import NamedPass

from helpers import check


def test_the_failing_pass_is_named():
    result = check("model m { input x: Vec[B, 8]\n layer f: linear(out=4)\n output f(y) as z }")
    assert result.failed_pass == "resolve"
    result = check("model m { input x: Vec[B, 8]\n layer f: linear(out=4, input=9)\n"
                   " output f(x) as z }")
    assert result.failed_pass == "infer"


def test_a_crash_in_a_pass_becomes_an_internal_error_diagnostic(monkeypatch):
    def broken(c):
        raise KeyError("boom")

    patched = [p if p.name != "verify" else NamedPass("verify", broken, "") for p in
               passes.PASSES]
    monkeypatch.setattr("mmgraph.compiler.PASSES", patched)
    result = check("model m { input x: Vec[B, 8]\n output x }")
    (d,) = result.errors
    assert d.code == "E901" and "internal error in pass 'verify': KeyError" in d.message
    assert result.failed_pass == "verify"


def test_warnings_do_not_fail_the_check():
    result = check("model m { input x: Vec[B, 8]\n input unused: Vec[B, 2]\n output x }")
    assert result.ok
    assert [(d.code, d.severity, d.message) for d in result.warnings] == [
        ("E405", "warning", "input 'unused' is never used")]
