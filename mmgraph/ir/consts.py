"""Constant expressions: parameter values, repeat counts, dims of types.

A spec never executes code: this is a tiny evaluator over the AST for numbers, strings,
booleans, lists, arithmetic and a few pure functions. Dims of types are evaluated to sympy
expressions, where a name that is no constant becomes a free symbol (`B`, `T`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import sympy

from mmgraph.ir import types as T
from mmgraph.lang import ast
from mmgraph.lang.diagnostics import error
from mmgraph.suggest import did_you_mean

BUILTIN_CONSTS: dict[str, Any] = {"true": True, "false": False, "none": None}

CONST_FUNCTIONS: dict[str, Callable] = {
    "min": min, "max": max, "int": int, "round": round,
    "ceil": math.ceil, "floor": math.floor,
}

_OPS: dict[str, Callable] = {
    "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
    "/": lambda a, b: a / b, "//": lambda a, b: a // b, "%": lambda a, b: a % b,
    "**": lambda a, b: a ** b,
}


def _arith(op: str, a: Any, b: Any, node: ast.BinOp) -> Any:
    numeric = (int, float, sympy.Expr)
    if op == "+" and isinstance(a, str) and isinstance(b, str):
        return a + b
    if not (isinstance(a, numeric) and isinstance(b, numeric)) or isinstance(a, bool) \
            or isinstance(b, bool):
        raise error("E306", f"'{op}' needs two numbers, not {_describe(a)} and {_describe(b)}",
                    node.span)
    if op in ("/", "//", "%") and b == 0:
        raise error("E306", "division by zero", node.span)
    if op == "**" and abs(b) > 64 and abs(a) > 1 and \
            float(abs(b)) * math.log10(float(abs(a))) > 308:
        raise error("E306", f"{a} ** {b} is too large a number", node.span)
    try:
        result = _OPS[op](a, b)
    except (ZeroDivisionError, OverflowError) as exc:
        raise error("E306", f"cannot compute {a} {op} {b}: {exc}", node.span) from None
    if isinstance(result, float) and not math.isfinite(result):
        raise error("E306", f"{a} {op} {b} is too large a number", node.span)
    if isinstance(result, complex):
        raise error("E306", f"{a} {op} {b} is not a real number", node.span)
    if op == "/" and isinstance(a, int) and isinstance(b, int) and result == int(result):
        return int(result)  # 768 / 12 is the integer 64, as a researcher means it
    return result


def _describe(v: Any) -> str:
    if isinstance(v, bool):
        return f"the boolean {str(v).lower()}"
    if isinstance(v, str):
        return f'the string "{v}"'
    if isinstance(v, list):
        return "a list"
    return repr(v)


def evaluate(expr: ast.Expr, env: Mapping[str, Any], *, what: str = "a constant") -> Any:
    """Evaluate a constant expression; names come from `env` (and true/false/none)."""
    if isinstance(expr, ast.Num):
        return expr.value
    if isinstance(expr, ast.Str):
        return expr.value
    if isinstance(expr, ast.Name):
        if expr.id in env:
            return env[expr.id]
        if expr.id in BUILTIN_CONSTS:
            return BUILTIN_CONSTS[expr.id]
        raise error("E101", f"unknown name '{expr.id}'", expr.span,
                    hint=did_you_mean(expr.id, list(env) + list(BUILTIN_CONSTS))
                    or f"{what} can use numbers, strings, true/false and defined constants")
    if isinstance(expr, ast.ListExpr):
        return [evaluate(i, env, what=what) for i in expr.items]
    if isinstance(expr, ast.Neg):
        v = evaluate(expr.operand, env, what=what)
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise error("E306", f"cannot negate {_describe(v)}", expr.span)
        return -v
    if isinstance(expr, ast.BinOp):
        return _arith(expr.op, evaluate(expr.left, env, what=what),
                      evaluate(expr.right, env, what=what), expr)
    if isinstance(expr, ast.Call) and expr.func.name in CONST_FUNCTIONS:
        if expr.kwargs:
            raise error("E306", f"{expr.func.name}() takes no keyword arguments",
                        expr.kwargs[0].span)
        args = [evaluate(a, env, what=what) for a in expr.args]
        try:
            return CONST_FUNCTIONS[expr.func.name](*args)
        except (TypeError, ValueError, OverflowError) as exc:
            raise error("E306", f"{expr.func.name}(): {exc}", expr.span) from None
    raise error("E306", f"{what} must be a constant expression", expr.span,
                hint="only numbers, strings, true/false, lists, arithmetic and "
                     "min/max/int/round/ceil/floor are allowed here")


def evaluate_dim(expr: ast.Expr, env: Mapping[str, Any]) -> sympy.Expr:
    """A dim of a type: an integer, a constant, or an expression over free symbols."""
    if isinstance(expr, ast.Name) and expr.id not in env:
        return T.sym(expr.id)
    if isinstance(expr, ast.Name):
        value = env[expr.id]
        if isinstance(value, bool) or not isinstance(value, (int, sympy.Expr)):
            raise error("E304", f"dimension '{expr.id}' is {_describe(value)}, not an integer",
                        expr.span)
        return sympy.sympify(value)
    if isinstance(expr, ast.Num):
        if not isinstance(expr.value, int):
            raise error("E304", f"dimension {expr.value} is not an integer", expr.span)
        return sympy.Integer(expr.value)
    if isinstance(expr, ast.BinOp) and expr.op in ("+", "-", "*", "/", "//"):
        a, b = evaluate_dim(expr.left, env), evaluate_dim(expr.right, env)
        if expr.op in ("/", "//") and b == 0:
            raise error("E306", "division by zero", expr.span)
        if expr.op == "//":
            return sympy.floor(a / b)
        result = _OPS[expr.op](a, b)
        if result.is_number and not result.is_Integer:
            raise error("E304", f"dimension {T.format_dim(a)} {expr.op} {T.format_dim(b)} is "
                                f"not a whole number ({float(result):g})", expr.span,
                        hint="use // to round down, or sizes that divide exactly")
        return result
    raise error("E304", "a dimension must be an integer, a name or arithmetic of those",
                getattr(expr, "span", None))
