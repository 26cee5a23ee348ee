"""The one way spec-derived text reaches generated code: Python, shell and protobuf text.

A spec, its file's name and the names of the files it imports are data. Generated sources
are built from values, never from pasted text: a string becomes a literal (`py_literal`,
repr-based), text in a comment or docstring becomes one printable line (`one_line`,
`docstring_text`), a name becomes a valid identifier (`py_name`; templates check it again
with `identifier`), a shell word is quoted (`sh_word`) and a protobuf text string is C-escaped
(`pbtxt_string`). `TEMPLATE_FILTERS` gives jinja2 templates the same functions, so a template
has no other way to print text.
"""

from __future__ import annotations

import keyword
import math
import re
import shlex

_SPACES = re.compile(r" {2,}")
_NOT_NAME = re.compile(r"[^0-9A-Za-z_]")


def one_line(text) -> str:
    """Text for a comment or a docstring: one line of printable characters.

    Every character Python's tokenizer or `str.splitlines` could end a line at (newline,
    carriage return, NUL, form feed, U+0085, U+2028...), every other control or unprintable
    character and lone surrogates become their backslash escape, so the text stays readable
    and can never start a statement. Runs of spaces shrink to one, which keeps the two-space
    separator of the spec-line comments unambiguous.
    """
    out = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
                  for ch in str(text))
    return _SPACES.sub(" ", out)


def docstring_text(text) -> str:
    """`one_line` text that can sit between triple double quotes: backslashes and quotes are
    escaped, so neither `\"\"\"` nor a trailing backslash can end the docstring early."""
    return one_line(text).replace("\\", "\\\\").replace('"', '\\"')


def py_literal(value) -> str:
    """Python source for a plain value from the spec (str, int, float, bool, None, and
    tuples, lists and dicts of them): repr of the value, never the text it came from."""
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, int):
        return repr(int(value))
    if isinstance(value, float):
        value = float(value)
        return repr(value) if math.isfinite(value) else f'float("{value}")'
    if isinstance(value, str):
        return _py_string(str(value))
    if isinstance(value, tuple):
        inner = ", ".join(py_literal(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, list):
        return "[" + ", ".join(py_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{py_literal(k)}: {py_literal(v)}"
                               for k, v in value.items()) + "}"
    raise TypeError(f"no Python literal for a {type(value).__name__} from the spec")


def _py_string(text: str) -> str:
    """repr, in double quotes: unprintable characters (line breaks, NUL, U+2028, lone
    surrogates...) as repr escapes them, so the literal is one line of encodable text."""
    return '"' + "".join(
        "\\" + ch if ch in '"\\' else ch if ch.isprintable() else repr(ch)[1:-1]
        for ch in text) + '"'


def py_name(name, reserved=frozenset()) -> str:
    """A valid Python identifier for any text, unchanged for an ordinary ASCII name.

    Other characters become `_`, a leading digit (or nothing) gets a `_` in front, and a
    keyword or a `reserved` name gets a `_` behind -- as does a name that only differs from
    one by trailing underscores (`class_` becomes `class__`), so `class` and `class_` stay two
    names.
    """
    text = _NOT_NAME.sub("_", str(name))
    if not text or text[0].isdigit():
        text = "_" + text
    stem = text.rstrip("_")
    if keyword.iskeyword(stem) or stem in reserved:
        text += "_"
    return text


def identifier(name: str) -> str:
    """`name`, refused unless it is already a valid identifier (for names built by `py_name`;
    mangling them again would not give the same name)."""
    if not str(name).isidentifier() or keyword.iskeyword(name):
        raise ValueError(f"{name!r} is not a Python identifier")
    return name


def sh_word(text) -> str:
    """One shell word, quoted when it needs it (`shlex.quote`)."""
    return shlex.quote(str(text))


def pbtxt_string(text) -> str:
    """A protobuf text-format string literal: printable ASCII as is, quotes and backslashes
    escaped, every other UTF-8 byte as an octal escape (what protobuf's own CEscape does)."""
    out = []
    for byte in str(text).encode("utf-8", "backslashreplace"):
        ch = chr(byte)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= byte < 0x7F:
            out.append(ch)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


TEMPLATE_FILTERS = {
    "py": py_literal,        # a Python literal
    "ident": identifier,     # a Python identifier, built by py_name
    "line": one_line,        # a comment's text (Python, shell or protobuf text)
    "doc": docstring_text,   # text inside """...""" in Python
    "sh": sh_word,           # a shell word
    "pbtxt": pbtxt_string,   # a protobuf text string
}
