"""The abstract syntax tree: one frozen dataclass per grammar construct, each with its span.

The AST is exactly what the spec says, nothing inferred. `mmgraph.ir.lower` turns it into
the typed graph IR.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from mmgraph.lang.span import Span


@dataclass(frozen=True)
class Ident:
    """A name as written, with its own span (for carets under just the name)."""

    name: str
    span: Span


# ---------------------------------------------------------------- expressions

@dataclass(frozen=True)
class Num:
    value: int | float
    span: Span


@dataclass(frozen=True)
class Str:
    value: str
    span: Span


@dataclass(frozen=True)
class Name:
    id: str
    span: Span


@dataclass(frozen=True)
class ListExpr:
    items: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True)
class BinOp:
    op: str  # one of + - * / // % **
    left: Expr
    right: Expr
    span: Span


@dataclass(frozen=True)
class Neg:
    operand: Expr
    span: Span


@dataclass(frozen=True)
class KwArg:
    name: Ident
    value: Expr
    span: Span


@dataclass(frozen=True)
class Call:
    func: Ident
    args: tuple[Expr, ...]
    kwargs: tuple[KwArg, ...]
    span: Span


@dataclass(frozen=True)
class Slice:
    start: Expr | None
    stop: Expr | None
    span: Span


@dataclass(frozen=True)
class Index:
    value: Expr
    index: Expr | Slice
    span: Span


@dataclass(frozen=True)
class Attr:
    value: Expr
    attr: Ident
    span: Span


Expr = Union[Num, Str, Name, ListExpr, BinOp, Neg, Call, Index, Attr]

# ---------------------------------------------------------------- statements


@dataclass(frozen=True)
class TypeExpr:
    kind: Ident
    tags: tuple[Ident, ...]
    dims: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True)
class Input:
    name: Ident
    type: TypeExpr
    span: Span


@dataclass(frozen=True)
class OutputItem:
    value: Expr
    alias: Ident | None
    span: Span


@dataclass(frozen=True)
class Output:
    items: tuple[OutputItem, ...]
    span: Span


@dataclass(frozen=True)
class Modifier:
    kind: str  # frozen | lora | shared | pretrained | ema_of
    args: tuple[Expr, ...]
    kwargs: tuple[KwArg, ...]
    target: Ident | None
    span: Span


@dataclass(frozen=True)
class Instance:
    role: str
    name: Ident
    call: Call
    modifiers: tuple[Modifier, ...]
    span: Span


@dataclass(frozen=True)
class Assign:
    targets: tuple[Ident, ...]
    value: Expr
    span: Span


@dataclass(frozen=True)
class Loss:
    name: Ident
    value: Expr
    span: Span


@dataclass(frozen=True)
class Setting:
    name: Ident
    value: Expr
    span: Span


@dataclass(frozen=True)
class Stage:
    name: Ident
    settings: tuple[Setting, ...]
    span: Span


@dataclass(frozen=True)
class Train:
    settings: tuple[Setting, ...]
    stages: tuple[Stage, ...]
    span: Span


@dataclass(frozen=True)
class DimRange:
    name: Ident
    low: Expr
    high: Expr
    opt: Expr | None
    span: Span


@dataclass(frozen=True)
class Part:
    name: Ident
    inputs: tuple[Ident, ...]
    outputs: tuple[Ident, ...]
    span: Span


@dataclass(frozen=True)
class Export:
    dims: tuple[DimRange, ...]
    parts: tuple[Part, ...]
    settings: tuple[Setting, ...]
    span: Span


BodyStmt = Union[Input, Output, Instance, Assign, Loss, Train, Export]


@dataclass(frozen=True)
class BlockParam:
    name: Ident
    default: Expr | None
    span: Span


@dataclass(frozen=True)
class Block:
    name: Ident
    params: tuple[BlockParam, ...]
    body: tuple[BodyStmt, ...]
    span: Span


@dataclass(frozen=True)
class Model:
    name: Ident
    body: tuple[BodyStmt, ...]
    span: Span


@dataclass(frozen=True)
class Import:
    path: Str
    span: Span


@dataclass(frozen=True)
class Const:
    name: Ident
    value: Expr
    span: Span


@dataclass(frozen=True)
class Module:
    """One parsed file."""

    path: str
    items: tuple[Import | Const | Block | Model, ...]

    @property
    def imports(self) -> list[Import]:
        return [i for i in self.items if isinstance(i, Import)]

    @property
    def consts(self) -> list[Const]:
        return [i for i in self.items if isinstance(i, Const)]

    @property
    def blocks(self) -> list[Block]:
        return [i for i in self.items if isinstance(i, Block)]

    @property
    def models(self) -> list[Model]:
        return [i for i in self.items if isinstance(i, Model)]
