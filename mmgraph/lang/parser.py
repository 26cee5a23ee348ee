"""Parse .mmg text into the AST, with syntax errors classified for people.

`parse_tree` stops at Lark's tree, `parse` goes on to the AST; both are public so tests can
stop at either stage.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from mmgraph.lang import ast
from mmgraph.lang.diagnostics import error
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


def parse(text: str, path: str = "<string>") -> ast.Module:
    """Text to AST."""
    source = Source(path, text)
    tree = parse_tree(text, path)
    return _ToAst(source).transform(tree)


def parse_file(path: str | Path) -> ast.Module:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise error("E001", f"cannot read {path}: {exc.strerror or exc}",
                    hint="check the path; specs are UTF-8 text files") from None
    return parse(text, str(path))


# ---------------------------------------------------------------- syntax errors

# Known mistakes, each a few snippets that fail the same way. Lark re-parses them and matches
# the parser state of the real error against theirs (lark's error_reporting_lalr example).
_KNOWN_MISTAKES: dict[tuple[str, str, str], list[str]] = {
    ("E002", "expected ':' after the instance name",
     "declare an instance as `encoder NAME: component(param=value)`"): [
        "model m { encoder v vit() }",
        "model m { connector p linear(out=4) }",
    ],
    ("E002", "parameters are written name=value, not name: value",
     "write `patch=32`"): [
        "model m { encoder v: vit(patch: 32) }",
        "x = f(a: 1)",
    ],
    ("E002", "missing ',' between arguments",
     "separate arguments with commas: `f(a=1, b=2)`"): [
        "model m { encoder v: vit(patch=32 width=768) }",
        "model m { encoder v: vit(a=1, b=2 c=3) }",
        "model m { x = f(a b) }",
    ],
    ("E002", "a type needs its dimensions in brackets",
     "write e.g. `Image[B, 3, 224, 224]` or `Tokens[B, T]`"): [
        "model m { input x: Image }",
        "model m { input x: Image input y: Tokens[B, T] }",
        "model m { input x: Seq }",
    ],
    ("E006", "this statement belongs inside a `model` or `block`",
     "wrap it in `model NAME { ... }`"): [
        "input x: Image[B, 3, 8, 8]",
        "output x",
        "encoder v: vit()",
        "loss l = f(x)",
        "train { lr = 1 }",
        "export { precision = fp32 }",
    ],
    ("E002", "a loss needs a name",
     "write `loss NAME = component(...)`"): [
        "model m { loss = contrastive(a, b) }",
    ],
    ("E002", "a dim range is written `dim NAME = low..high @ opt`",
     "e.g. `dim B = 1..8 @ 1`"): [
        "model m { export { dim B = 1:8 } }",
        "model m { export { dim B = 1 to 8 } }",
        "model m { export { dim B = 1, 8 } }",
    ],
    ("E002", "a part is written `part NAME: inputs -> outputs`",
     "e.g. `part visual: image -> v`"): [
        "model m { export { part v: image v } }",
        "model m { export { part v image -> v } }",
        "model m { export { part v: image => v } }",
    ],
    ("E002", "a stage needs a name and a body in braces",
     "write `stage NAME { trainable = [proj]; lr = 1e-3 }`"): [
        "model m { train { stage { lr = 1 } } }",
        "model m { train { stage a lr = 1 } }",
    ],
    ("E002", "expected a value after '='",
     "give the setting or assignment a value"): [
        "model m { x = }",
        "x = ",
        "model m { train { lr = } }",
    ],
    ("E002", "an instance declaration needs a component call",
     "write e.g. `encoder vision: vit(patch=16)`; a component takes parentheses even with no parameters"): [
        "model m { encoder v: vit }",
        "model m { head h: linear frozen }",
    ],
}


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
    if t.startswith("__ANON") or t.isupper():
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


def _unclosed(text: str) -> tuple[str, int, int] | None:
    """The last bracket left open at end of file, as (char, line, col)."""
    stack: list[tuple[str, int, int]] = []
    pairs = {")": "(", "]": "[", "}": "{"}
    in_string = in_comment = False
    line, col = 1, 0
    for ch in text:
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


def _syntax_error(source: Source, exc: UnexpectedInput):
    if isinstance(exc, UnexpectedEOF) or (
            isinstance(exc, UnexpectedToken) and exc.token.type == "$END"):
        open_ = _unclosed(source.text)
        lines = source.text.splitlines() or [""]
        end = _point(source, len(lines), len(lines[-1]) + 1)
        if open_:
            ch, line, col = open_
            closing = {"(": ")", "[": "]", "{": "}"}[ch]
            return error("E005", f"'{ch}' is never closed", _point(source, line, col),
                         hint=f"add the missing '{closing}'")
        return error("E003", "unexpected end of file", end, hint=_expected(exc) or None)
    if isinstance(exc, UnexpectedCharacters):
        ch = source.text[exc.pos_in_stream] if exc.pos_in_stream < len(source.text) else "?"
        hint = None
        if ch == "'":
            hint = 'strings use double quotes: "text"'
        elif ch in "{}" and exc.allowed:
            hint = _expected(exc)
        return error("E004", f"unexpected character {ch!r}",
                     _point(source, exc.line, exc.column),
                     hint=hint or _expected(exc) or None)
    assert isinstance(exc, UnexpectedToken)
    token = exc.token
    span = _point(source, token.line, token.column, len(str(token)))
    label = exc.match_examples(parser().parse, _KNOWN_MISTAKES, use_accepts=True)
    if label:
        code, message, hint = label
        return error(code, message, span, hint=hint)
    shown = "end of file" if token.type == "$END" else f"'{token}'"
    return error("E002", f"unexpected {shown}", span, hint=_expected(exc) or None)


# ---------------------------------------------------------------- tree to AST

def _number(text: str) -> int | float:
    clean = text.replace("_", "")
    if any(c in clean for c in ".eE"):
        value = float(clean)
        return int(value) if value.is_integer() and "." not in clean and value < 2**53 else value
    return int(clean)


def _unquote(text: str) -> str:
    return bytes(text[1:-1], "utf-8").decode("unicode_escape")


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
        return ast.Import(ast.Str(_unquote(str(path)), span), self._span(meta))

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
        return ast.Num(_number(str(tok)), Span.of_meta(self.source, tok))

    def string(self, meta, tok):
        return ast.Str(_unquote(str(tok)), Span.of_meta(self.source, tok))

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
