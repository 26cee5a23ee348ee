"""Validate a spec's `name=value` lists (component parameters, train and export settings)
against pydantic schemas, turning every problem into a diagnostic a person can act on:
the offending argument's span, what was given, what is allowed, and a 'did you mean'."""

from __future__ import annotations

import types as pytypes
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from mmgraph.ir import types as T
from mmgraph.ir.consts import BUILTIN_CONSTS, evaluate
from mmgraph.lang import ast
from mmgraph.lang.diagnostics import Diagnostic, Note, SpecError, shorten
from mmgraph.lang.span import Span
from mmgraph.suggest import closest


@dataclass(frozen=True)
class Codes:
    unknown: str  # a name the schema does not have
    bad: str  # a value the schema rejects
    missing: str  # a required name not given
    twice: str  # a name given twice


PARAMS = Codes("E202", "E203", "E204", "E205")


class Settings(BaseModel):
    """Base of the train/stage/export setting schemas: unknown names are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def to_plain(value: Any) -> Any:
    """Spec lists become tuples, so schemas can be strict and values hashable."""
    if isinstance(value, list):
        return tuple(to_plain(v) for v in value)
    return value


def show(v: Any) -> str:
    """A value the way the spec writes it."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(show(x) for x in v) + "]"
    return repr(v)


def evaluate_symbolic(expr, env: dict[str, Any]) -> Any:
    """Constant evaluation where a bare unknown name is a symbol: `precision = bf16`."""
    if isinstance(expr, ast.Name) and expr.id not in env and expr.id not in BUILTIN_CONSTS:
        return expr.id
    if isinstance(expr, ast.ListExpr):
        return [evaluate_symbolic(i, env) for i in expr.items]
    return evaluate(expr, env)


def _literal_values(annotation) -> list:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return list(args)
    return [v for a in args for v in _literal_values(a)]


def _is_sequence(annotation) -> bool:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    return origin is tuple or any(_is_sequence(a) for a in args)


def describe_type(annotation: Any, metadata: list | tuple = ()) -> str:
    """A parameter's type in words, for hints and `mmgraph components NAME`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return describe_type(args[0], args[1:])
    if origin is typing.Literal:
        return "one of " + ", ".join(f'"{a}"' if isinstance(a, str) else str(a) for a in args)
    if origin in (typing.Union, pytypes.UnionType):
        rest = [a for a in args if a is not type(None)]
        text = " or ".join(describe_type(a) for a in rest)
        return text + " (or none)" if len(rest) < len(args) else text
    if origin is tuple:
        plural = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}
        if not args:
            return "a list"
        what = plural.get(args[0], "values")
        fixed = Ellipsis not in args
        return f"a list of {len(args)} {what}" if fixed and len(args) > 1 else f"a list of {what}"
    bounds = []
    for m in metadata:
        for attr, word in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            value = getattr(m, attr, None)
            if value is not None:
                bounds.append(f"{word} {value}")
        for sub in getattr(m, "metadata", []):
            for attr, word in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
                value = getattr(sub, attr, None)
                if value is not None:
                    bounds.append(f"{word} {value}")
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    text = names.get(annotation, getattr(annotation, "__name__", str(annotation)))
    return text + (f" {' and '.join(bounds)}" if bounds else "")


def describe_field(field) -> str:
    """A pydantic field's type in words: `an integer > 0`, `one of "mean", "cls"`."""
    return describe_type(field.annotation, field.metadata)


def _message(err: dict, field, given: Any) -> tuple[str, str | None]:
    """(message, hint) for one pydantic error about a value that was given."""
    kind = err["type"]
    # `none` is the default of optional settings, never what a person meant to write
    allowed = describe_field(field).replace(" (or none)", "") if field is not None else None
    hint = None
    if kind == "literal_error":
        values = _literal_values(field.annotation) if field is not None else []
        match = closest(str(given), [str(v) for v in values]) if isinstance(given, str) else None
        hint = f"did you mean \"{match}\"?" if match else None
        return f"must be {allowed} (got {show(given)})", hint
    if kind in ("tuple_type", "list_type"):
        return f"must be {allowed}, written [...] (got {show(given)})", None
    if kind in ("missing",) and isinstance(given, tuple):
        return f"must be {allowed} (got {show(given)}, too few items)", None
    if kind in ("too_short", "too_long"):
        return f"must be {allowed} (got {show(given)})", None
    msg = err["msg"].removeprefix("Value error, ")
    msg = msg[0].lower() + msg[1:] if msg else msg
    if kind.endswith(("_type", "_parsing")) or kind in ("greater_than", "greater_than_equal",
                                                         "less_than", "less_than_equal"):
        return f"must be {allowed} (got {show(given)})", None
    return f"{msg} (got {show(given)})", None


def validate(schema: type[BaseModel], items: list[tuple[ast.Ident, ast.Expr]],
             env: dict[str, Any], what: str, codes: Codes, where: Span | None,
             symbols: bool = False, strict: bool = True, sizes: bool = False):
    """Evaluate `name = value` pairs and validate them; returns (model, {name: (ident, expr)}).

    `what` names the thing in messages ("vit", "stage 'align'"); `where` is the span for
    problems of the whole list (a missing name). With `symbols`, bare names are strings.
    With `sizes` (component parameters), no integer may exceed `types.MAX_SIZE`.
    """
    fields = schema.model_fields
    values: dict[str, Any] = {}
    given: dict[str, tuple[ast.Ident, ast.Expr]] = {}
    problems: list[Diagnostic] = []
    for ident, expr in items:
        if ident.name in given:
            kind = "setting" if symbols else "parameter"
            problems.append(Diagnostic(
                codes.twice, f"{kind} '{ident.name}' of {what} is given twice", ident.span,
                notes=(Note(given[ident.name][0].span, "first given here"),)))
            continue
        try:
            value = evaluate_symbolic(expr, env) if symbols else \
                evaluate(expr, env, what="a parameter")
        except SpecError as exc:
            problems.extend(exc.diagnostics)
            continue
        value = to_plain(value)
        if sizes and _largest_int(value) > T.MAX_SIZE:
            problems.append(Diagnostic(
                codes.bad, f"{what} parameter '{ident.name}': {shorten(show(value))} is too large "
                           f"(at most {T.MAX_SIZE:,}, 2**31 - 1)", expr.span,
                hint="no size past 2**31 - 1 can be allocated; check the number or the "
                     "constant it comes from"))
            continue
        field = fields.get(ident.name)
        if field is not None and isinstance(value, str) and _is_sequence(field.annotation):
            value = (value,)  # `trainable = all` means [all]
        values[ident.name] = value
        given[ident.name] = (ident, expr)
    if problems:
        raise SpecError(problems)
    try:
        return schema.model_validate(values, strict=strict), given
    except ValidationError as exc:
        suggested = set()
        for err in exc.errors():
            if err["type"] == "extra_forbidden":
                name = str(err["loc"][0])
                match = closest(name, [f for f in fields if f not in given])
                suggested.add(match)
                problems.append(Diagnostic(
                    codes.unknown, f"{what} has no {'setting' if symbols else 'parameter'} "
                                   f"'{name}'", given[name][0].span,
                    hint=f"did you mean '{match}'?" if match else
                    (f"it takes: {', '.join(fields)}" if fields else f"{what} takes none")))
        for err in exc.errors():
            loc = [str(p) for p in err["loc"]]
            name = loc[0] if loc else None
            if err["type"] == "extra_forbidden":
                continue
            if err["type"] == "missing" and name not in given:
                if name in suggested:
                    continue  # the misspelt name above is this one
                problems.append(Diagnostic(codes.missing, f"{what} needs parameter '{name}'",
                                           where, hint=f"add {name}=..."))
            elif name in given:
                message, hint = _message(err, fields.get(name), values[name])
                kind = "setting" if symbols else "parameter"
                problems.append(Diagnostic(codes.bad, f"{what} {kind} '{name}': {message}",
                                           given[name][1].span, hint=hint or _hint(fields, name)))
            else:  # a check across several values (a model validator)
                msg = err["msg"].removeprefix("Value error, ")
                problems.append(Diagnostic(codes.bad, f"{what}: {msg}", where))
        raise SpecError(problems) from None


def _largest_int(value: Any) -> int:
    """The largest magnitude of the integers in a value (0 when there are none)."""
    if isinstance(value, tuple):
        return max((_largest_int(v) for v in value), default=0)
    return abs(value) if isinstance(value, int) and not isinstance(value, bool) else 0


def _hint(fields, name: str) -> str | None:
    field = fields.get(name)
    return None if field is None else f"'{name}' takes {describe_field(field)}"


def kwargs(call_kwargs) -> list[tuple[ast.Ident, ast.Expr]]:
    return [(k.name, k.value) for k in call_kwargs]


def settings(items) -> list[tuple[ast.Ident, ast.Expr]]:
    return [(s.name, s.value) for s in items]
