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


def docs_example(text: str) -> tuple[str, str]:
    """The ```mmg block of docs/language.md that holds `text` (written once in the docs), and
    the text of the next ``` block after it (the IR the docs print for it, where they do)."""
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[1] / "docs" / "language.md").read_text()
    at = docs.index(text)
    start = docs.rindex("```mmg\n", 0, at) + len("```mmg\n")
    end = docs.index("```", at)
    after = docs[docs.index("```\n", end + 3) + 4:]
    return docs[start:end], after[:after.index("```")]
