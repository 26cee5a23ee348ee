"""Pass `resolve`: every name in the model (and in every block) refers to something.

Reports unknown names and components with 'did you mean', duplicate definitions, statements
in the wrong place, and cycles between values (with the cycle's path). It also decides which
`x = ...` lines are constants: those whose right side uses no graph value.
"""

from __future__ import annotations

from collections.abc import Iterator

import networkx as nx

from mmgraph.components import registry
from mmgraph.ir import types as T
from mmgraph.ir.consts import BUILTIN_CONSTS, CONST_FUNCTIONS
from mmgraph.ir.graph import cycle_edges
from mmgraph.ir.passes.base import Compilation
from mmgraph.ir.reserved import why_reserved, why_reserved_input
from mmgraph.lang import ast
from mmgraph.lang.diagnostics import Diagnostic, DiagnosticSink, Note
from mmgraph.suggest import closest, did_you_mean


def walk(expr) -> Iterator:
    """Every sub-expression of `expr`, itself included."""
    yield expr
    if isinstance(expr, ast.BinOp):
        yield from walk(expr.left)
        yield from walk(expr.right)
    elif isinstance(expr, ast.Neg):
        yield from walk(expr.operand)
    elif isinstance(expr, ast.ListExpr):
        for i in expr.items:
            yield from walk(i)
    elif isinstance(expr, ast.Call):
        for a in expr.args:
            yield from walk(a)
        for k in expr.kwargs:
            yield from walk(k.value)
    elif isinstance(expr, ast.Index):
        yield from walk(expr.value)
        if isinstance(expr.index, ast.Slice):
            for part in (expr.index.start, expr.index.stop):
                if part is not None:
                    yield from walk(part)
        else:
            yield from walk(expr.index)
    elif isinstance(expr, ast.Attr):
        yield from walk(expr.value)


def uses_values(expr, values: set[str]) -> bool:
    """True when `expr` computes on the graph (calls a non-constant function or names a value)."""
    for e in walk(expr):
        if isinstance(e, ast.Call) and e.func.name not in CONST_FUNCTIONS:
            return True
        if isinstance(e, (ast.Index, ast.Attr)):
            return True
        if isinstance(e, ast.Name) and e.id in values:
            return True
    return False


def classify_assigns(body, seed_values: set[str]) -> tuple[list[ast.Assign], list[ast.Assign]]:
    """Split a body's assignments into (constants, values): an assignment is a value when it
    computes on the graph or names a value, directly or through other assignments.

    A worklist over "who uses this name", so the time is linear in the body's size (a
    fixpoint that rescans every assignment is quadratic in the number of constants)."""
    assigns = [s for s in body if isinstance(s, ast.Assign)]
    users: dict[str, list[int]] = {}
    is_value = [False] * len(assigns)
    pending: list[int] = []
    for i, a in enumerate(assigns):
        if len(a.targets) > 1 or uses_values(a.value, seed_values):
            is_value[i] = True
            pending.append(i)
        for name in {e.id for e in walk(a.value) if isinstance(e, ast.Name)}:
            users.setdefault(name, []).append(i)
    while pending:
        for t in assigns[pending.pop()].targets:
            for j in users.pop(t.name, ()):
                if not is_value[j]:
                    is_value[j] = True
                    pending.append(j)
    consts = [a for a, v in zip(assigns, is_value) if not v]
    vals = [a for a, v in zip(assigns, is_value) if v]
    return consts, vals


class BodyChecker:
    """Checks one model or block body against the names it can see."""

    def __init__(self, c: Compilation, sink: DiagnosticSink, owner: str, is_block: bool,
                 params: tuple[ast.BlockParam, ...] = ()):
        self.c, self.sink, self.owner, self.is_block = c, sink, owner, is_block
        self.params = {p.name.name: p.name for p in params}
        self.defined: dict[str, ast.Ident] = dict(self.params)
        self.kind: dict[str, str] = {name: "constant" for name in self.params}
        self.duplicates: set[str] = set()
        self.free_dims: set[str] = set()  # names in input types that are no constant

    def define(self, ident: ast.Ident, kind: str) -> None:
        if ident.name in self.defined:
            first = self.defined[ident.name]
            self.duplicates.add(ident.name)
            hint = (f"a value is defined once; give the new one its own name, e.g. "
                    f"{ident.name}2" if kind == "value" else "choose another name")
            self.sink.add(Diagnostic(
                "E102", f"'{ident.name}' is already defined in {self.owner}", ident.span,
                notes=(Note(first.span, "first defined here"),), hint=hint))
            return
        self.defined[ident.name] = ident
        self.kind[ident.name] = kind

    def check(self, body) -> set[str]:
        for stmt in body:
            if isinstance(stmt, ast.Input):
                self.define(stmt.name, "input")
                why = why_reserved_input(stmt.name.name)
                if why and not self.is_block:  # a block's inputs are arguments, not parameters
                    self.sink.add(Diagnostic(
                        "E102", f"input '{stmt.name.name}' cannot be a parameter of the "
                                f"generated forward: {why}", stmt.name.span,
                        hint="rename the input"))
                self.check_type(stmt.type)
                self.free_dims |= {e.id for d in stmt.type.dims for e in walk(d)
                                   if isinstance(e, ast.Name)}
            elif isinstance(stmt, ast.Instance):
                self.define(stmt.name, "instance")
                why = why_reserved(stmt.name.name)
                if why:
                    self.sink.add(Diagnostic(
                        "E102", f"layer '{stmt.name.name}' cannot be an attribute of the "
                                f"generated module: {why}", stmt.name.span,
                        hint="rename the layer"))
            elif isinstance(stmt, ast.Loss):
                if self.is_block:
                    self.misplaced(stmt, "loss")
                self.define(stmt.name, "loss")
            elif isinstance(stmt, (ast.Train, ast.Export)) and self.is_block:
                self.misplaced(stmt, "train" if isinstance(stmt, ast.Train) else "export")
        inputs = {n for n, k in self.kind.items() if k == "input"}
        const_assigns, value_assigns = classify_assigns(body, inputs)
        for a in const_assigns:
            self.define(a.targets[0], "constant")
        for a in value_assigns:
            for t in a.targets:
                self.define(t, "value")
        self.check_cycles(value_assigns)
        self.free_dims -= set(self.defined) | set(self.c.program.consts)

        const_ids = {id(a) for a in const_assigns}  # a set: `in` a list is quadratic
        for stmt in body:
            if isinstance(stmt, ast.Instance):
                self.check_declaration(stmt)
            elif isinstance(stmt, ast.Assign):
                self.check_expr(stmt.value, const_only=id(stmt) in const_ids)
            elif isinstance(stmt, ast.Output):
                for item in stmt.items:
                    self.check_expr(item.value)
            elif isinstance(stmt, ast.Loss):
                self.check_expr(stmt.value)
        return {a.targets[0].name for a in const_assigns}

    def misplaced(self, stmt, what: str) -> None:
        self.sink.add(Diagnostic("E006", f"a block cannot contain `{what}`", stmt.span,
                                 hint=f"put `{what}` in the model that uses the block"))

    def check_type(self, t: ast.TypeExpr) -> None:
        if t.kind.name not in T.KINDS:
            self.sink.add(Diagnostic("E303", f"unknown type '{t.kind.name}'", t.kind.span,
                                     hint=did_you_mean(t.kind.name, T.KINDS) or
                                     "types are " + ", ".join(T.KINDS)))
        dtypes = [tag for tag in t.tags if tag.name in T.DTYPES or tag.name in T.DTYPE_ALIASES]
        if len(dtypes) > 1:
            self.sink.add(Diagnostic("E303", "a type has one dtype", dtypes[1].span))
        for tag in t.tags:
            if tag.name in T.DTYPES or tag.name in T.DTYPE_ALIASES or tag.name in T.MODALITIES:
                continue
            dtype = closest(tag.name, T.DTYPES + tuple(T.DTYPE_ALIASES))
            if dtype:
                self.sink.add(Diagnostic("E303", f"unknown dtype '{tag.name}'", tag.span,
                                         hint=f"did you mean '{dtype}'? dtypes are "
                                              f"{', '.join(T.DTYPES)}"))
                continue
            modality = closest(tag.name, T.MODALITIES)
            if modality:
                self.sink.add(Diagnostic(
                    "E303", f"'{tag.name}' is not a known modality", tag.span,
                    severity="warning", hint=f"did you mean '{modality}'? (custom modality "
                                             "tags are allowed)"))

    def callables(self) -> list[str]:
        return (registry.names() + list(self.c.program.blocks) + list(CONST_FUNCTIONS) +
                [n for n, k in self.kind.items() if k == "instance"])

    def check_declaration(self, stmt: ast.Instance) -> None:
        call = stmt.call
        if call.func.name == "repeat":
            if not call.args or not isinstance(call.args[0], ast.Call):
                self.sink.add(Diagnostic("E207", "repeat needs a component or block call first",
                                         call.span,
                                         hint="e.g. repeat(transformer_layer(heads=8), times=6)"))
                return
            call = call.args[0]
            for kw in stmt.call.kwargs:
                self.check_expr(kw.value, const_only=True)
        name = call.func.name
        if registry.get(name) is None and name not in self.c.program.blocks:
            self.sink.add(Diagnostic("E201", f"unknown component '{name}'", call.func.span,
                                     hint=did_you_mean(name, registry.names() +
                                                       list(self.c.program.blocks))
                                     or "see `mmgraph components` for the list"))
        for kw in call.kwargs:
            self.check_expr(kw.value, const_only=True)
        for arg in call.args:
            self.sink.add(Diagnostic("E205", f"parameters of '{name}' are given by name",
                                     arg.span, hint=f"write name=value, e.g. "
                                                    f"{self.example_param(name)}=..."))

    def example_param(self, name: str) -> str:
        """A parameter of component or block `name` to show in a hint."""
        comp = registry.get(name)
        if comp is not None:
            fields = comp.Params.model_fields
            required = [f for f, info in fields.items() if info.is_required()]
            return (required or list(fields) or ["width"])[0]
        block = self.c.program.blocks.get(name)
        return block.params[0].name.name if block and block.params else "width"

    def check_expr(self, expr, const_only: bool = False) -> None:
        for e in walk(expr):
            if isinstance(e, ast.Name):
                if e.id in BUILTIN_CONSTS or e.id in self.c.program.consts:
                    continue
                kind = self.kind.get(e.id)
                if kind is None:
                    self.sink.add(Diagnostic("E101", f"unknown name '{e.id}'", e.span,
                                             hint=self.unknown_hint(e.id, const_only)))
                elif kind == "instance":
                    self.sink.add(Diagnostic("E302", f"'{e.id}' is a layer, not a value",
                                             e.span, hint=f"call it: {e.id}(...)"))
                elif kind == "loss":
                    self.sink.add(Diagnostic("E302", f"'{e.id}' is a loss, not a value",
                                             e.span, hint="losses cannot feed other values"))
                elif const_only and kind in ("input", "value"):
                    self.sink.add(Diagnostic("E108", f"'{e.id}' is a graph value, but a "
                                                     "constant is needed here", e.span,
                                             hint="parameters must be known before any "
                                                  "tensor exists"))
            elif isinstance(e, ast.Call):
                name = e.func.name
                if name in CONST_FUNCTIONS:
                    continue
                if name == "repeat":
                    self.sink.add(Diagnostic(
                        "E207", "repeat(...) declares layers and cannot be called inline",
                        e.func.span, hint="declare it: decoder lm: repeat(block(...), times=N)"))
                elif self.kind.get(name) not in ("instance",) and registry.get(name) is None \
                        and name not in self.c.program.blocks:
                    known = self.kind.get(name)
                    if known:
                        self.sink.add(Diagnostic("E302", f"'{name}' is a {known}, not a layer; "
                                                         "it cannot be called", e.func.span))
                    else:
                        self.sink.add(Diagnostic(
                            "E201", f"unknown component or layer '{name}'", e.func.span,
                            hint=did_you_mean(name, self.callables())
                            or "declare it first, e.g. `layer NAME: component(...)`"))

    def unknown_hint(self, name: str, const_only: bool) -> str:
        """What an unknown name most likely is: a free dim where a number is needed, a typo,
        or an input the body forgot to declare."""
        if name in self.free_dims:
            return (f"'{name}' is a free dim of an input type, known only when data arrives; "
                    f"a parameter needs a number: write one, or define a constant "
                    f"`{name} = 32` (and use it in the types too)")
        typo = did_you_mean(name, list(self.kind) + list(self.c.program.consts))
        if const_only:
            return typo or "a parameter can use numbers, strings, true/false and constants"
        return typo or (f"if it is an input, declare it with its type, e.g. "
                         f"`input {name}: Tensor[B, 64]`")

    def check_cycles(self, value_assigns: list[ast.Assign]) -> None:
        # a name defined twice is already an error; its "cycle" would only repeat it
        value_assigns = [a for a in value_assigns
                         if not any(t.name in self.duplicates for t in a.targets)]
        producers = {t.name: a for a in value_assigns for t in a.targets}
        g = nx.DiGraph()
        for a in value_assigns:
            for t in a.targets:
                g.add_node(t.name)
                for e in walk(a.value):
                    if isinstance(e, ast.Name) and e.id in producers:
                        g.add_edge(e.id, t.name)
        edges = cycle_edges(g)
        if not edges:
            return
        path = [u for u, _ in edges] + [edges[0][0]]
        first = producers[path[0]]
        notes = tuple(Note(producers[v].span, f"'{v}' uses '{u}'")
                      for u, v in zip(path, path[1:]))
        self.sink.add(Diagnostic("E401", f"cycle in graph: {' -> '.join(path)}", first.span,
                                 notes=notes, hint="a value cannot depend on itself; break the "
                                                   "loop or use repeat(...) for recurrence"))


def block_uses(block: ast.Block) -> set[str]:
    """Names of callables a block's body mentions (declarations and inline calls)."""
    return {e.func.name for stmt in block.body for e in _exprs(stmt) if isinstance(e, ast.Call)}


def check_blocks(c: Compilation) -> None:
    """Every block body's names, outputs, and no block that contains itself."""
    blocks = c.program.blocks
    for block in blocks.values():
        BodyChecker(c, c.sink, f"block '{block.name.name}'", is_block=True,
                    params=block.params).check(block.body)
        if block.name.name in registry.names():
            c.sink.add(Diagnostic("E102", f"block '{block.name.name}' has the name of a "
                                          "built-in component", block.name.span,
                                  hint="rename the block"))
        if not any(isinstance(s, ast.Output) for s in block.body):
            c.sink.add(Diagnostic("E403", f"block '{block.name.name}' has no output",
                                  block.name.span, hint="end the block with `output VALUE`"))
    g = nx.DiGraph()
    for name, block in blocks.items():
        g.add_node(name)
        for used in block_uses(block) & set(blocks):
            g.add_edge(name, used)
    for cycle in nx.simple_cycles(g):
        first = min(cycle, key=lambda n: (blocks[n].span.path, blocks[n].span.line))
        i = cycle.index(first)
        path = cycle[i:] + cycle[:i]
        callee = path[1] if len(path) > 1 else first
        use = next(e.func for stmt in blocks[first].body for e in _exprs(stmt)
                   if isinstance(e, ast.Call) and e.func.name == callee)
        through = "" if len(path) == 1 else \
            " through " + " and ".join(f"'{n}'" for n in path[1:])
        c.sink.add(Diagnostic(
            "E208", f"block '{first}' uses itself{through}", use.span,
            notes=(Note(blocks[first].name.span, f"'{first}' is defined here"),),
            hint="a block cannot contain itself; use repeat(...) to stack copies of a block"))


def _exprs(stmt):
    """Every sub-expression of a statement."""
    if isinstance(stmt, ast.Instance):
        yield from walk(stmt.call)
    elif isinstance(stmt, (ast.Assign, ast.Loss)):
        yield from walk(stmt.value)
    elif isinstance(stmt, ast.Output):
        for item in stmt.items:
            yield from walk(item.value)


def run(c: Compilation) -> None:
    checker = BodyChecker(c, c.sink, f"model '{c.model.name.name}'", is_block=False)
    c.const_values = checker.check(c.model.body)
    if not any(isinstance(s, (ast.Output, ast.Loss)) for s in c.model.body):
        c.sink.add(Diagnostic("E403", f"model '{c.model.name.name}' has no output and no loss",
                              c.model.name.span,
                              hint="add `output VALUE` (or a `loss`) so the graph computes "
                                   "something"))
    check_blocks(c)
