"""Parse .mmg text into the AST, with syntax errors classified for people.

`parse_tree` stops at Lark's tree, `parse` goes on to the AST; both are public so tests can
stop at either stage.
"""

from __future__ import annotations

import functools
import math
import os
import stat
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import (
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
    VisitError,
)

from mmgraph.errors import describe_os_error
from mmgraph.lang import ast
from mmgraph.lang.diagnostics import SpecError, error, shorten
from mmgraph.lang.span import Source, Span


def grammar_text() -> str:
    """The grammar, from the installed package or, in a source checkout, from grammar/."""
    try:
        return resources.files("mmgraph.grammar").joinpath("mmg.lark").read_text()
    except (ModuleNotFoundError, FileNotFoundError, TypeError):
        return (Path(__file__).resolve().parents[2] / "grammar" / "mmg.lark").read_text()


@functools.lru_cache(maxsize=1)
def parser() -> Lark:
    """The LALR parser, built once per process (and its tables cached on disk by Lark)."""
    return Lark(grammar_text(), parser="lalr", lexer="contextual", propagate_positions=True,
                maybe_placeholders=True, cache=True)


def parse_tree(text: str, path: str = "<string>") -> Tree:
    """Text to Lark tree; a syntax error becomes a classified E0xx diagnostic."""
    source = Source(path, text)
    try:
        return parser().parse(text)
    except UnexpectedInput as exc:
        raise _syntax_error(source, exc) from None
    except RecursionError:
        raise _too_deep(source) from None


def parse(text: str, path: str = "<string>") -> ast.Module:
    """Text to AST."""
    source = Source(path, text)
    tree = parse_tree(text, path)
    try:
        return _ToAst(source).transform(tree)
    except VisitError as exc:  # a SpecError raised while building the AST (a bad number)
        if isinstance(exc.orig_exc, SpecError):
            raise exc.orig_exc from None
        if isinstance(exc.orig_exc, RecursionError):
            raise _too_deep(source) from None
        raise
    except RecursionError:
        raise _too_deep(source) from None


def _too_deep(source: Source):
    return error("E008", "expressions are nested too deeply", Span(source, 1, 1, 1, 2),
                 hint="split the expression into named constants or values")


MAX_SPEC_BYTES = 4 * 2**20  # far above any real spec; a bound on what a mistake can make us read


class Unreadable(Exception):
    """Why a spec file cannot be read, in words that never quote the file's content."""


def read_spec(path: str | Path) -> str:
    """The UTF-8 text of a spec file, refusing what is no regular file or too large.

    The file is opened without blocking and checked with fstat before any byte is read, so
    a FIFO never hangs and a device such as /dev/zero is never read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
        raise Unreadable(_os_reason(exc)) from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise Unreadable("it is a folder, not a file")
        if not stat.S_ISREG(mode):
            raise Unreadable("it is not a regular file (a FIFO, device or socket)")
        chunks, size = [], 0
        while size <= MAX_SPEC_BYTES and (chunk := os.read(fd, MAX_SPEC_BYTES + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise Unreadable(_os_reason(exc)) from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > MAX_SPEC_BYTES:
        raise Unreadable(f"it is larger than {MAX_SPEC_BYTES // 2**20} MiB, "
                         "the most a spec may be")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Unreadable(f"it is not UTF-8 text (byte {exc.start})") from None


def _os_reason(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return describe_os_error(OSError(exc.errno, exc.strerror))  # without the file name
    return "the path contains a NUL character"


def parse_file(path: str | Path) -> ast.Module:
    """Read and parse the spec at `path`; a file that cannot be read is an E001."""
    try:
        text = read_spec(path)
    except Unreadable as exc:
        raise error("E001", f"cannot read {path}: {exc}",
                    hint="check the path; specs are UTF-8 text files") from None
    return parse(text, str(path))


# ---------------------------------------------------------------- syntax errors

@dataclass(frozen=True)
class Mistake:
    """A known kind of syntax mistake; `at_previous` puts the caret on the last token read
    (e.g. under `Image` in `input x: Image`) instead of on the token that could not follow."""

    code: str
    message: str
    hint: str
    at_previous: bool = False


# Known mistakes, each with snippets that fail the same way. A real error is matched to them
# by the parser state it failed in (the idea of lark's match_examples, keyed on the state
# alone so that a mistake is recognised however deep in the file it is).
_KNOWN_MISTAKES: dict[Mistake, list[str]] = {
    Mistake("E002", "expected ':' after the instance name",
            "declare an instance as `encoder NAME: component(param=value)`"): [
        "model m { encoder v vit() }",
        "model m { connector p linear(out=4) }",
    ],
    Mistake("E002", "parameters are written name=value, not name: value", "write `patch=32`"): [
        "model m { encoder v: vit(patch: 32) }",
        "x = f(a: 1)",
    ],
    Mistake("E002", "missing ',' between arguments",
            "separate arguments with commas: `f(a=1, b=2)`"): [
        "model m { encoder v: vit(patch=32 width=768) }",
        "model m { encoder v: vit(a=1, b=2 c=3) }",
        "model m { x = f(a b) }",
        "model m { x = f(a, b c) }",
    ],
    Mistake("E002", "a type needs its dimensions in brackets",
            "write e.g. `Image[B, 3, 224, 224]` or `Tokens[B, T]`", at_previous=True): [
        "model m { input x: Image }",
        "model m { input x: Image input y: Tokens[B, T] }",
        "model m { input x: Image<depth> }",
    ],
    Mistake("E006", "this statement belongs inside a `model` or `block`",
            "wrap it in `model NAME { ... }`", at_previous=True): [
        "input x: Image[B, 3, 8, 8]",
        "output x",
        "encoder v: vit()",
        "loss l = f(x)",
    ],
    Mistake("E006", "`train` and `export` blocks belong inside a `model`",
            "move it into the model it configures", at_previous=True): [
        "train { lr = 1 }",
        "export { precision = fp32 }",
    ],
    Mistake("E002", "a loss needs a name", "write `loss NAME = component(...)`"): [
        "model m { loss = contrastive(a, b) }",
    ],
    Mistake("E002", "a dim range is written `dim NAME = low..high @ opt`",
            "e.g. `dim B = 1..8 @ 1`"): [
        "model m { export { dim B = 1:8 } }",
        "model m { export { dim B = 1 to 8 } }",
        "model m { export { dim B = 1, 8 } }",
    ],
    Mistake("E002", "a part is written `part NAME: inputs -> outputs`",
            "e.g. `part visual: image -> v`"): [
        "model m { export { part v: image v } }",
        "model m { export { part v image -> v } }",
        "model m { export { part v: image => v } }",
    ],
    Mistake("E002", "a stage needs a name and a body in braces",
            "write `stage NAME { trainable = [proj]; lr = 1e-3 }`"): [
        "model m { train { stage { lr = 1 } } }",
        "model m { train { stage a lr = 1 } }",
    ],
    Mistake("E002", "expected a value after '='", "give the setting or assignment a value",
            at_previous=True): [
        "model m { x = }",
        "x = ",
        "model m { train { lr = } }",
        "model m { export { precision = } }",
    ],
    Mistake("E002", "an instance declaration needs a component call",
            "write e.g. `encoder vision: vit(patch=16)`; a component takes parentheses even "
            "with no parameters", at_previous=True): [
        "model m { encoder v: vit }",
        "model m { head h: linear frozen }",
        "model m { encoder v: vit input x: Image[B, 3, 8, 8] }",
    ],
}

_STATEMENT_KEYWORDS = {"input", "output", "encoder", "connector", "fusion", "decoder", "head",
                       "layer", "loss", "train", "export", "model", "block", "import", "stage",
                       "part", "dim"}


@functools.lru_cache(maxsize=1)
def _mistake_table() -> dict[int, Mistake]:
    """Parser state (where each known mistake fails) to the mistake."""
    table: dict[int, Mistake] = {}
    for mistake, examples in _KNOWN_MISTAKES.items():
        for example in examples:
            try:
                parser().parse(example)
            except UnexpectedToken as exc:
                table.setdefault(exc.state.position, mistake)
            except UnexpectedInput:
                pass
    return table


_TOKEN_NAMES = {
    "LPAR": "'('", "RPAR": "')'", "LSQB": "'['", "RSQB": "']'", "LBRACE": "'{'",
    "RBRACE": "'}'", "COLON": "':'", "COMMA": "','", "EQUAL": "'='", "SEMICOLON": "';'",
    "NAME": "a name", "NUMBER": "a number", "STRING": "a string", "DOT": "'.'",
    "PLUS": "'+'", "MINUS": "'-'", "STAR": "'*'", "SLASH": "'/'", "MORETHAN": "'>'",
    "LESSTHAN": "'<'", "$END": "end of file", "AT": "'@'", "PERCENT": "'%'",
}


def _token_name(t: str) -> str:
    if t in _TOKEN_NAMES:
        return _TOKEN_NAMES[t]
    try:
        pattern = parser().get_terminal(t).pattern
        if pattern.type == "str":
            return f"'{pattern.value}'"
    except KeyError:
        pass
    return t.lower()


def _expected(exc: UnexpectedInput) -> str:
    names = sorted({_token_name(t) for t in getattr(exc, "expected", None) or ()})
    names = [n for n in names if not n.startswith("__")]
    if not names:
        return ""
    if len(names) > 8:
        return "expected a statement or expression here"
    return "expected " + ", ".join(names)


def _unclosed(text: str, upto: int | None = None) -> tuple[str, int, int] | None:
    """The innermost bracket still open at offset `upto` (default: end), as (char, line, col)."""
    stack: list[tuple[str, int, int]] = []
    pairs = {")": "(", "]": "[", "}": "{"}
    in_string = in_comment = False
    line, col = 1, 0
    for ch in text[:upto]:
        col += 1
        if ch == "\n":
            line, col, in_comment = line + 1, 0, False
            continue
        if in_comment:
            continue
        if in_string:
            in_string = ch != '"'
            continue
        if ch == "#":
            in_comment = True
        elif ch == '"':
            in_string = True
        elif ch in "([{":
            stack.append((ch, line, col))
        elif ch in ")]}" and stack and stack[-1][0] == pairs[ch]:
            stack.pop()
    return stack[-1] if stack else None


def _point(source: Source, line: int, col: int, width: int = 1) -> Span:
    return Span(source, line, col, line, col + max(width, 1))


def _token_span(source: Source, tok: Token) -> Span:
    return _point(source, tok.line, tok.column, len(str(tok)))


def _keyword(tok) -> bool:
    """A token of a keyword terminal (`encoder`, `input`, ...), as opposed to a name."""
    return isinstance(tok, Token) and str(tok) in _STATEMENT_KEYWORDS | {"frozen", "lora",
                                                                        "shared", "pretrained",
                                                                        "ema_of",
                                                                        "repeat"} \
        and tok.type != "NAME"


def _syntax_error(source: Source, exc: UnexpectedInput):
    if isinstance(exc, UnexpectedCharacters):
        return _bad_character(source, exc)
    token = getattr(exc, "token", None)
    at_end = isinstance(exc, UnexpectedEOF) or (token is not None and token.type == "$END")
    stack = list(exc.state.value_stack) if getattr(exc, "state", None) else []
    previous = next((t for t in reversed(stack) if isinstance(t, Token)), None)

    if at_end:
        open_ = _unclosed(source.text)
        if open_:
            ch, line, col = open_
            closing = {"(": ")", "[": "]", "{": "}"}[ch]
            return error("E005", f"'{ch}' is never closed", _point(source, line, col),
                         hint=f"add the missing '{closing}'")
    elif token is not None:
        # a statement keyword inside an open '(' or '[': the bracket was never closed
        if str(token) in _STATEMENT_KEYWORDS and token.type != "NAME":
            open_ = _unclosed(source.text, token.start_pos)
            if open_ and open_[0] in "([":
                ch, line, col = open_
                return error("E005", f"'{ch}' is never closed", _point(source, line, col),
                             hint=f"add the missing '{')' if ch == '(' else ']'}' before "
                                  f"line {token.line}")
        # `0.1.5`: a number glued to another number by a dot
        text = source.text
        if token.type == "NUMBER" and token.start_pos >= 2 and \
                text[token.start_pos - 1] == "." and text[token.start_pos - 2].isdigit():
            begin = token.start_pos - 1
            while begin > 0 and (text[begin - 1].isdigit() or text[begin - 1] in "._"):
                begin -= 1
            number = text[begin:token.end_pos]
            line_start = text.rfind("\n", 0, begin) + 1
            return error("E007", f"invalid number '{number}'",
                         _point(source, token.line, begin - line_start + 1, len(number)),
                         hint="a number has at most one decimal point")
        # `encoder = ...`: a keyword where a name was meant (unless a known mistake fits)
        if token.type == "EQUAL" and _keyword(previous) and \
                exc.state.position not in _mistake_table():
            return error("E002", f"'{previous}' is a keyword and cannot be used as a name",
                         _token_span(source, previous),
                         hint=f"choose another name, e.g. {previous}_out")
        # `lr =` followed by the next setting: the next name was taken as lr's value
        if token.type == "EQUAL" and len(stack) >= 3 and isinstance(stack[-1], Token) and \
                stack[-1].type == "NAME" and isinstance(stack[-2], Token) and \
                stack[-2].type == "EQUAL":
            return error("E002", "expected a value after '='", _token_span(source, stack[-2]),
                         hint=f"give `{stack[-3]}` a value" if isinstance(stack[-3], Token)
                         else "give the setting a value")
    state = getattr(exc, "state", None)
    mistake = _mistake_table().get(state.position) if state is not None else None
    if mistake:
        where = previous if mistake.at_previous and previous is not None else token
        if where is None or where.type == "$END":
            lines = source.text.splitlines() or [""]
            span = _point(source, len(lines), len(lines[-1]) + 1)
        else:
            span = _token_span(source, where)
        return error(mistake.code, mistake.message, span, hint=mistake.hint)
    if at_end:
        lines = source.text.splitlines() or [""]
        return error("E003", "unexpected end of file",
                     _point(source, len(lines), len(lines[-1]) + 1), hint=_expected(exc) or None)
    shown = f"'{token}'"
    hint = _expected(exc) or None
    if str(token) in _STATEMENT_KEYWORDS and token.type != "NAME":
        hint = (hint + "; " if hint else "") + f"'{token}' is a keyword"
    return error("E002", f"unexpected {shown}", _token_span(source, token), hint=hint)


def _bad_character(source: Source, exc: UnexpectedCharacters):
    ch = source.text[exc.pos_in_stream] if exc.pos_in_stream < len(source.text) else "?"
    hint = None
    if ch == "'":
        hint = 'strings use double quotes: "text"'
    elif ch == '"':
        hint = "this string is not closed on its line"
    return error("E004", f"unexpected character {ch!r}", _point(source, exc.line, exc.column),
                 hint=hint or _expected(exc) or None)


# ---------------------------------------------------------------- tree to AST

MAX_INT_LITERAL = 2**63 - 1  # int64, what every backend can hold


def _number(text: str) -> int | float | None:
    """The value of a number literal; None when it is too large to be one (an integer past
    int64, a float past the double range). Digits are counted before converting, so a
    100,000-digit literal costs nothing (and never meets Python's int-string limit)."""
    clean = text.replace("_", "")
    if any(c in clean for c in ".eE"):
        value = float(clean)
        if not math.isfinite(value):
            return None
        return int(value) if value.is_integer() and "." not in clean and value < 2**53 else value
    if len(clean.lstrip("0")) > len(str(MAX_INT_LITERAL)):
        return None
    value = int(clean)
    return value if value <= MAX_INT_LITERAL else None


_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t", "r": "\r"}


def _unquote(source: Source, tok: Token) -> str:
    r"""The value of a string literal: its characters as written (UTF-8 kept), with the
    escapes \\ \" \' \n \t \r and \uXXXX; any other escape is an E009 at its column."""
    text, out, i = str(tok)[1:-1], [], 0
    while i < len(text):
        ch = text[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        code = text[i + 1]  # the grammar ends no string on a lone backslash
        col = tok.column + 1 + i
        if code in _ESCAPES:
            out.append(_ESCAPES[code])
            i += 2
            continue
        if code == "u":
            digits = text[i + 2:i + 6]
            if len(digits) == 4 and all(c in "0123456789abcdefABCDEF" for c in digits) \
                    and not 0xD800 <= int(digits, 16) <= 0xDFFF:
                out.append(chr(int(digits, 16)))
                i += 6
                continue
            raise error("E009", "\\u needs four hex digits of a character, e.g. \\u00e9",
                        _point(source, tok.line, col, 2 + len(digits)),
                        hint="write \\\\u for a backslash followed by 'u'")
        raise error("E009", f"unknown escape '\\{code}' in a string",
                    _point(source, tok.line, col, 2),
                    hint="strings know \\\\ \\\" \\' \\n \\t \\r and \\uXXXX; "
                         "write \\\\ for a backslash")
    return "".join(out)


@v_args(meta=True, inline=True)
class _ToAst(Transformer):
    """One method per grammar rule; each returns its AST class."""

    def __init__(self, source: Source):
        super().__init__()
        self.source = source

    # helpers
    def _span(self, meta) -> Span:
        return Span.of_meta(self.source, meta)

    def _ident(self, tok: Token) -> ast.Ident:
        return ast.Ident(str(tok), Span.of_meta(self.source, tok))

    # file level
    def start(self, meta, *items):
        return ast.Module(self.source.path, tuple(i for i in items if i is not None))

    def empty(self, meta, *_):
        return None

    def import_stmt(self, meta, path):
        span = Span.of_meta(self.source, path)
        return ast.Import(ast.Str(_unquote(self.source, path), span), self._span(meta))

    def const_def(self, meta, name, value):
        return ast.Const(self._ident(name), value, self._span(meta))

    def model_def(self, meta, name, *body):
        return ast.Model(self._ident(name), tuple(b for b in body if b is not None),
                         self._span(meta))

    def block_def(self, meta, name, params, *body):
        return ast.Block(self._ident(name), params or (),
                         tuple(b for b in body if b is not None), self._span(meta))

    def block_params(self, meta, *params):
        return tuple(params)

    def block_param(self, meta, name, default):
        return ast.BlockParam(self._ident(name), default, self._span(meta))

    # body
    def input_decl(self, meta, name, type_):
        return ast.Input(self._ident(name), type_, self._span(meta))

    def output_stmt(self, meta, *items):
        return ast.Output(tuple(items), self._span(meta))

    def output_item(self, meta, value, alias):
        return ast.OutputItem(value, self._ident(alias) if alias else None, self._span(meta))

    def role(self, meta, tok):
        return str(tok)

    def instance_decl(self, meta, role, name, call, *mods):
        return ast.Instance(role, self._ident(name), call, tuple(mods), self._span(meta))

    def mod_frozen(self, meta, *_):
        return ast.Modifier("frozen", (), (), None, self._span(meta))

    def mod_lora(self, meta, args):
        pos, kw = args if args else ((), ())
        return ast.Modifier("lora", pos, kw, None, self._span(meta))

    def mod_shared(self, meta, name):
        return ast.Modifier("shared", (), (), self._ident(name), self._span(meta))

    def mod_pretrained(self, meta, args):
        pos, kw = args if args else ((), ())
        return ast.Modifier("pretrained", pos, kw, None, self._span(meta))

    def mod_ema_of(self, meta, args):
        pos, kw = args
        return ast.Modifier("ema_of", pos, kw, None, self._span(meta))

    def assign(self, meta, targets, value):
        return ast.Assign(targets, value, self._span(meta))

    def target_names(self, meta, *names):
        return tuple(self._ident(n) for n in names)

    def loss_stmt(self, meta, name, value):
        return ast.Loss(self._ident(name), value, self._span(meta))

    # train / export
    def train_block(self, meta, *stmts):
        stmts = [s for s in stmts if s is not None]
        return ast.Train(tuple(s for s in stmts if isinstance(s, ast.Setting)),
                         tuple(s for s in stmts if isinstance(s, ast.Stage)), self._span(meta))

    def stage(self, meta, name, *settings):
        return ast.Stage(self._ident(name), tuple(s for s in settings if s is not None),
                         self._span(meta))

    def setting(self, meta, name, value):
        return ast.Setting(self._ident(name), value, self._span(meta))

    def export_block(self, meta, *stmts):
        stmts = [s for s in stmts if s is not None]
        return ast.Export(tuple(s for s in stmts if isinstance(s, ast.DimRange)),
                          tuple(s for s in stmts if isinstance(s, ast.Part)),
                          tuple(s for s in stmts if isinstance(s, ast.Setting)),
                          self._span(meta))

    def dim_range(self, meta, name, low, high, opt):
        return ast.DimRange(self._ident(name), low, high, opt, self._span(meta))

    def part(self, meta, name, inputs, outputs):
        return ast.Part(self._ident(name), inputs, outputs, self._span(meta))

    def name_list(self, meta, *names):
        return tuple(self._ident(n) for n in names)

    # types
    def type_expr(self, meta, kind, tags, dims):
        return ast.TypeExpr(self._ident(kind), tags or (), dims or (), self._span(meta))

    def type_tags(self, meta, *names):
        return tuple(self._ident(n) for n in names)

    def dim_list(self, meta, *dims):
        return tuple(dims)

    # expressions
    def _bin(op):  # noqa: N805 - a factory for the binary-operator methods below
        def method(self, meta, left, right):
            return ast.BinOp(op, left, right, self._span(meta))
        return method

    add, sub, mul, div = _bin("+"), _bin("-"), _bin("*"), _bin("/")
    floordiv, mod, pow = _bin("//"), _bin("%"), _bin("**")

    def neg(self, meta, operand):
        return ast.Neg(operand, self._span(meta))

    def index(self, meta, value, sub):
        return ast.Index(value, sub, self._span(meta))

    def slice(self, meta, start, stop):
        return ast.Slice(start, stop, self._span(meta))

    def at(self, meta, value):
        return value

    def attr(self, meta, value, name):
        return ast.Attr(value, self._ident(name), self._span(meta))

    def number(self, meta, tok):
        span = Span.of_meta(self.source, tok)
        value = _number(str(tok))
        if value is None:
            raise error("E007", f"number '{shorten(str(tok))}' is too large", span,
                        hint=f"integers are at most 2**63 - 1 ({MAX_INT_LITERAL}), other "
                             "numbers at most about 1.8e308")
        return ast.Num(value, span)

    def string(self, meta, tok):
        return ast.Str(_unquote(self.source, tok), Span.of_meta(self.source, tok))

    def name(self, meta, tok):
        return ast.Name(str(tok), Span.of_meta(self.source, tok))

    def list(self, meta, *items):
        return ast.ListExpr(tuple(i for i in items if i is not None), self._span(meta))

    def call(self, meta, func, args):
        pos, kw = args if args else ((), ())
        return ast.Call(self._ident(func), pos, kw, self._span(meta))

    def args(self, meta, *items):
        pos = tuple(i for i in items if not isinstance(i, ast.KwArg))
        kw = tuple(i for i in items if isinstance(i, ast.KwArg))
        return pos, kw

    def kwarg(self, meta, name, value):
        return ast.KwArg(self._ident(name), value, self._span(meta))
