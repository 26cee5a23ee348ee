"""Source files and spans: where in a spec a construct came from.

Every AST node, IR node and diagnostic carries a `Span`, so that any stage can point a
person back at the exact characters of the spec that caused it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Source:
    """The text of one spec file. `path` is what diagnostics print."""

    path: str
    text: str = field(repr=False, compare=False)

    def line(self, number: int) -> str:
        """The 1-based line `number`, without its newline ('' past the end).

        Lines end at '\\n' only, as the parser counts them (not at form feeds and the other
        breaks `str.splitlines` knows)."""
        lines = self.text.split("\n")
        return lines[number - 1] if 1 <= number <= len(lines) else ""


@dataclass(frozen=True)
class Span:
    """A range of characters in a source: 1-based lines and columns, end column exclusive."""

    source: Source
    line: int
    col: int
    end_line: int
    end_col: int

    @property
    def path(self) -> str:
        return self.source.path

    def __str__(self) -> str:
        return f"{self.source.path}:{self.line}:{self.col}"

    def to(self, other: Span) -> Span:
        """The span from the start of `self` to the end of `other`."""
        return Span(self.source, self.line, self.col, other.end_line, other.end_col)

    @staticmethod
    def of_meta(source: Source, meta) -> Span:
        """Build a span from Lark's propagated positions (a tree's `meta` or a Token)."""
        return Span(source, meta.line, meta.column, meta.end_line, meta.end_column)
