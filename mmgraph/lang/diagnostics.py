"""One diagnostic type, one renderer, one exception.

Every mistake in a spec, at any stage, becomes a `Diagnostic` with a code from `CODES`, a span,
a message and a hint. `render` prints it the way compilers do:

    specs/clip.mmg:12:19: error[E201]: unknown component 'vti'
       |
    12 |   encoder vision: vti(patch=32)
       |                   ^^^
       = hint: did you mean 'vit'?
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from mmgraph.errors import UserError
from mmgraph.lang.span import Span

# Every code a user can see, with the one-line title that docs/language.md lists.
CODES: dict[str, str] = {
    # E0xx: reading the file and syntax
    "E001": "cannot read spec file",
    "E002": "unexpected token",
    "E003": "unexpected end of file",
    "E004": "unexpected character",
    "E005": "missing closing bracket",
    "E006": "misplaced statement",
    "E007": "invalid number",
    "E008": "nesting too deep",
    "E009": "invalid escape in string",
    # E1xx: names, scopes and imports
    "E101": "unknown name",
    "E102": "duplicate definition",
    "E103": "import failed",
    "E104": "import cycle",
    "E105": "unknown model",
    "E106": "bad override",
    "E107": "no model in file",
    "E108": "value used as constant",
    # E2xx: components, blocks and parameters
    "E201": "unknown component",
    "E202": "unknown parameter",
    "E203": "invalid parameter value",
    "E204": "missing parameter",
    "E205": "wrong arguments",
    "E206": "bad modifier",
    "E207": "bad repeat",
    "E208": "recursive block",
    "E209": "pretrained checkpoint disagrees",
    "E210": "bad pretrained checkpoint",
    # E3xx: types and shapes
    "E301": "shape mismatch",
    "E302": "wrong kind of value",
    "E303": "bad type",
    "E304": "dimension must be an integer",
    "E305": "bad slice",
    "E306": "bad constant expression",
    "E307": "dtype mismatch",
    # E4xx: graph structure
    "E401": "cycle in graph",
    "E403": "no outputs",
    "E404": "bad loss",
    "E405": "unused value",
    "E406": "bad output",
    # E5xx: train block
    "E501": "bad train setting",
    "E502": "bad stage",
    "E503": "unknown trainable",
    # E6xx: export block
    "E601": "bad dim range",
    "E602": "bad part",
    "E603": "bad export setting",
    "E701": "model cannot generate text",
    # E9xx: mmgraph itself
    "E901": "internal error",
}


@dataclass(frozen=True)
class Note:
    """A secondary location: 'defined here', one step of a cycle, ..."""

    span: Span | None
    message: str


@dataclass(frozen=True)
class Diagnostic:
    code: str
    message: str
    span: Span | None = None
    hint: str | None = None
    severity: str = "error"
    notes: tuple[Note, ...] = ()

    def __post_init__(self):
        if self.code not in CODES:
            raise ValueError(f"diagnostic code {self.code!r} is not in CODES")

    def to_json(self) -> dict:
        s = self.span
        return {
            "file": s.path if s else None,
            "line": s.line if s else None,
            "col": s.col if s else None,
            "end_line": s.end_line if s else None,
            "end_col": s.end_col if s else None,
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "hint": self.hint,
            "notes": [{"file": n.span.path if n.span else None,
                       "line": n.span.line if n.span else None,
                       "col": n.span.col if n.span else None,
                       "message": n.message} for n in self.notes],
        }

    def sort_key(self):
        s = self.span
        return (s.path, s.line, s.col) if s else ("", 0, 0)


class SpecError(UserError):
    """Raised by any stage with one or more diagnostics. Never shown as a traceback."""

    def __init__(self, diagnostics: Iterable[Diagnostic]):
        self.diagnostics = list(diagnostics)
        super().__init__("\n".join(render(d) for d in self.diagnostics))


def error(code: str, message: str, span: Span | None = None, hint: str | None = None,
          notes: Iterable[Note] = ()) -> SpecError:
    """Shorthand for raising one diagnostic: `raise error("E101", ...)`."""
    return SpecError([Diagnostic(code, message, span, hint, notes=tuple(notes))])


def shorten(text: str, keep: int = 24) -> str:
    """A long literal as `12345678901…` with its length, so a message stays one line."""
    return text if len(text) <= keep else f"{text[:keep - 4]}… ({len(text)} characters)"


EXCERPT_WIDTH = 120  # a longer source line is shown as a window around the caret


def _excerpt(span: Span) -> list[str]:
    text = span.source.line(span.line)
    number = str(span.line)
    pad = " " * len(number)
    start = max(span.col, 1)
    if span.end_line == span.line and span.end_col > span.col:
        width = span.end_col - span.col
    else:
        width = max(len(text) - start + 1, 1)
    width = max(1, min(width, max(len(text) - start + 1, 1)))
    if len(text) > EXCERPT_WIDTH:
        text, start, width = _window(text, start, width)
    return [
        f"{pad} |",
        f"{number} | {text}",
        f"{pad} | {' ' * (start - 1)}{'^' * width}",
    ]


def _window(text: str, start: int, width: int) -> tuple[str, int, int]:
    """A long line cut to about EXCERPT_WIDTH characters around the caret, with `…` where
    it was cut; returns the shown text and the caret's new start and width."""
    width = min(width, EXCERPT_WIDTH // 2)
    begin = max(0, start - 1 - (EXCERPT_WIDTH - width) // 2)
    end = min(len(text), begin + EXCERPT_WIDTH)
    begin = max(0, end - EXCERPT_WIDTH)
    shown = ("…" if begin else "") + text[begin:end] + ("…" if end < len(text) else "")
    return shown, start - begin + (1 if begin else 0), width


def render(d: Diagnostic, *, excerpt: bool = True) -> str:
    """The human form of one diagnostic: header line, source excerpt with caret, notes, hint."""
    where = f"{d.span}: " if d.span else ""
    lines = [f"{where}{d.severity}[{d.code}]: {d.message}"]
    if d.span and excerpt:
        lines += _excerpt(d.span)
    for note in d.notes:
        where = f"{note.span}: " if note.span else ""
        lines.append(f"   = note: {where}{note.message}")
    if d.hint:
        lines.append(f"   = hint: {d.hint}")
    return "\n".join(lines)


def render_all(diagnostics: Iterable[Diagnostic]) -> str:
    return "\n\n".join(render(d) for d in diagnostics)


@dataclass
class DiagnosticSink:
    """Collects independent errors so one run reports all of them, not only the first."""

    diagnostics: list[Diagnostic] = field(default_factory=list)

    def add(self, err: SpecError | Diagnostic) -> None:
        if isinstance(err, Diagnostic):
            self.diagnostics.append(err)
        else:
            self.diagnostics.extend(err.diagnostics)

    @property
    def has_errors(self) -> bool:
        return any(d.severity == "error" for d in self.diagnostics)

    def raise_if_errors(self) -> None:
        if self.has_errors:
            raise SpecError(sorted(self.diagnostics, key=Diagnostic.sort_key))
