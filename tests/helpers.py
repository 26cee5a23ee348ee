"""Small helpers for tests that check spec text written inline."""

from __future__ import annotations

import textwrap

from mmgraph.compiler import CheckResult, check_text


def check(src: str, path: str = "t.mmg", **overrides) -> CheckResult:
    return check_text(textwrap.dedent(src), path, overrides or None)


def graph(src: str, **overrides):
    result = check(src, **overrides)
    assert result.ok, "\n".join(f"{d.span}: {d.code} {d.message}" for d in result.errors)
    (g,) = result.graphs.values()
    return g


def errors(src: str, **overrides) -> list[tuple[str, int, int, str]]:
    """(code, line, col, message) of every error."""
    result = check(src, **overrides)
    return [(d.code, d.span.line if d.span else 0, d.span.col if d.span else 0, d.message)
            for d in result.errors]
