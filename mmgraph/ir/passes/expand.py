"""Pass `expand`: lower the model's AST to the IR graph, expanding blocks and repeats.

- A declared component becomes an `Instance`; each call of it becomes a `call` node (two
  calls share weights, as in a siamese tower).
- An inline call of a component (`layer_norm(x)`) becomes an anonymous instance.
- A block is expanded in place under a dotted prefix (`lm.3.attn`); its inputs become `bind`
  nodes that carry the block's declared input types, checked by `infer`.
- `repeat(inner, times=N)` expands `inner` N times under `name.0` ... `name.N-1`, threading
  the first k inputs (k = number of outputs of inner) and sharing the rest.
- Parameters are validated against each component's pydantic schema here.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
from pydantic import Field

from mmgraph.components import registry
from mmgraph.components.common import PosInt, Prob
from mmgraph.components.registry import Component, Params
from mmgraph.ir import types as T
from mmgraph.ir.consts import CONST_FUNCTIONS, evaluate, evaluate_dim
from mmgraph.ir.graph import (
    BlockCall,
    Declaration,
    Expansion,
    Graph,
    Instance,
    Lora,
    LossTerm,
    Node,
    Pretrained,
    Ref,
)
from mmgraph.ir.passes import pretrained as checkpoint
from mmgraph.ir.passes.base import Compilation
from mmgraph.ir.passes.constants import evaluate_all
from mmgraph.ir.passes.resolve import classify_assigns, walk
from mmgraph.ir.schema import PARAMS, kwargs, show, to_plain, validate
from mmgraph.lang import ast
from mmgraph.lang.diagnostics import Diagnostic, SpecError, error, shorten
from mmgraph.lang.span import Span
from mmgraph.suggest import did_you_mean


@dataclass
class Decl:
    """A declared layer as the body sees it: a component, a block, or a repeat of either."""

    name: str  # full dotted name
    role: str
    span: Span
    component: Component | None = None
    params: Any = None
    block: ast.Block | None = None
    block_env: dict[str, Any] | None = None
    times: int = 0  # > 0 for repeat
    frozen: bool = False
    frozen_by: str | None = None  # the declaration whose `frozen` made this one frozen
    lora: Lora | None = None
    lora_span: Span | None = None
    lora_targets: dict[str, Span] = field(default_factory=dict)  # as written, when written
    shared: str | None = None
    shared_target: ast.Ident | None = None  # `shared(x)` as written, resolved after the body
    param_spans: dict[str, Span] = field(default_factory=dict)
    pretrained_mod: ast.Modifier | None = None  # `pretrained(...)` as written
    pretrained: Pretrained | None = None  # the checkpoint, once its config.json was read
    ema_mod: ast.Modifier | None = None  # `ema_of(x, decay=d)` as written, resolved after the body

    def declaration(self) -> Declaration:
        """What the IR keeps of it: no AST, and `shared` only where it says `shared(x)`."""
        return Declaration(
            self.name, self.role, self.span,
            component=self.component.name if self.component else None,
            block=self.block.name.name if self.block else None,
            block_span=self.block.span if self.block else None, times=self.times,
            frozen=self.frozen, frozen_by=self.frozen_by,
            shared=self.shared if self.shared_target is not None else None)


@dataclass
class Scope:
    prefix: str
    consts: dict[str, Any]
    values: dict[str, list[Ref]] = field(default_factory=dict)
    decls: dict[str, Decl] = field(default_factory=dict)
    anon: Counter = field(default_factory=Counter)
    failed: set[str] = field(default_factory=set)  # names whose definition already failed
    frozen: bool = False  # inherited from a frozen block instance
    frozen_by: str | None = None
    lora: Lora | None = None
    shared: str | None = None  # prefix of the block instance this expansion ties to

    def full(self, local: str) -> str:
        return f"{self.prefix}.{local}" if self.prefix else local


MAX_REPEAT = 1024  # a repeat is expanded in full, so its count is bounded


class LoraParams(Params):
    """`lora(...)`: rank, scale, which linear layers, dropout on the adapter's input."""

    r: PosInt = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("q", "k", "v", "o")
    dropout: Prob = 0.0
    modalities: tuple[str, ...] = ()  # adapt only these modalities' tokens (Arcana)


class EmaParams(Params):
    """`ema_of(x, decay=...)`: after each optimizer step, teacher = decay * teacher +
    (1 - decay) * x (ALBEF's momentum encoders, SkySense's EMA teacher)."""

    decay: float = Field(0.995, gt=0, lt=1)


def lora_fits(comp: Component, lora: Lora) -> bool:
    """True when the LoRA's targets name linear layers the component has."""
    if "self" in comp.lora_targets:  # linear, mlp, heads: their own linear layers
        return True
    return bool(comp.lora_targets) and ("all" in lora.targets or
                                        bool(set(lora.targets) & set(comp.lora_targets)))


def unknown_lora_target(what: str, available, given: dict[str, Span]) -> SpecError | None:
    """The first explicitly given LoRA target that names no linear layer of `what`, whose
    layers are `available` (a component that is itself one linear layer takes any)."""
    names = [t for t in dict.fromkeys(available) if t != "self"]
    if not names or "self" in available:
        return None
    for target, span in given.items():
        if target != "all" and target not in names:
            return error("E206", f"lora target '{target}' is no linear layer of {what}", span,
                         hint=did_you_mean(target, names) or
                         f"its linear layers are: {', '.join(names)} (or 'all')")
    return None


def lora_error(comp: Component, lora: Lora, span: Span) -> SpecError:
    if not comp.lora_targets:
        return error("E206", f"lora adapts linear layers, and {comp.name} has none", span,
                     hint="put lora(...) on an attention or feed-forward layer")
    return error("E206", f"lora targets {list(lora.targets)} name no linear layer of "
                         f"{comp.name}", span,
                 hint=f"its linear layers are: {', '.join(comp.lora_targets)} (or 'all')")


class Lowerer:
    def __init__(self, c: Compilation):
        self.c = c
        self.sink = c.sink
        self.g = Graph(c.model.name.name, c.model.span)
        self.binding_groups = 0
        self.calls: list[BlockCall] = self.g.calls  # where a call made now is recorded
        self.decls: dict[str, Decl] = {}  # every declared layer, nested ones too
        # a repeat's result node -> (the repeat's call, which of its outputs): `y.back2` on it
        # is that output of the copy before the last (each copy's outputs are in its expansions)
        self.copies: dict[str, tuple[BlockCall, int]] = {}

    # ---------------------------------------------------------------- bodies
    def lower_model(self) -> Graph:
        scope = Scope("", dict(self.c.consts))
        self.g.consts = {k: v for k, v in self.c.consts.items()}
        body = self.c.model.body
        for stmt in body:
            if isinstance(stmt, ast.Input):
                try:
                    self.lower_input(stmt, scope)
                except SpecError as exc:
                    self.sink.add(exc)
                    scope.failed.add(stmt.name.name)
        self.lower_body(body, scope)
        self.g.values = {k: v[0] for k, v in scope.values.items()}
        for stmt in body:
            if isinstance(stmt, ast.Output):
                for item in stmt.items:
                    self.lower_output(item, scope)
            elif isinstance(stmt, ast.Loss):
                self.lower_loss(stmt, scope)
        self.g.decls = {name: decl.declaration() for name, decl in self.decls.items()}
        return self.g

    def lower_body(self, body, scope: Scope) -> None:
        """Declarations, then value assignments in dependency order."""
        for stmt in body:
            if isinstance(stmt, ast.Instance):
                try:
                    self.declare(stmt, scope)
                except SpecError as exc:
                    self.sink.add(exc)
                    scope.failed.add(stmt.name.name)
        for local, decl in scope.decls.items():
            # `shared(x)` ties, `ema_of(x)` teaches: each resolves x within this body
            for modifier, resolve in ((decl.shared_target, self.tie), (decl.ema_mod, self.teach)):
                if modifier is None:
                    continue
                try:
                    resolve(local, decl, scope)
                except SpecError as exc:
                    self.sink.add(exc)
                    scope.failed.add(local)
        inputs = set(scope.values)
        _, value_assigns = classify_assigns(body, inputs)
        producer = {t.name: i for i, a in enumerate(value_assigns) for t in a.targets}
        order = nx.DiGraph()
        for i, a in enumerate(value_assigns):
            order.add_node(i)
            for e in walk(a.value):
                if isinstance(e, ast.Name) and e.id in producer:
                    order.add_edge(producer[e.id], i)
        for i in nx.lexicographical_topological_sort(order):
            a = value_assigns[i]
            try:
                self.lower_assign(a, scope)
            except SpecError as exc:
                self.sink.add(exc)
                scope.failed.update(t.name for t in a.targets)

    def lower_input(self, stmt: ast.Input, scope: Scope) -> None:
        t = self.eval_type(stmt.type, scope.consts)
        node = self.g.add_node(Node(stmt.name.name, "input", [], stmt.span,
                                    target=stmt.name.name, types={"out": t}))
        self.g.inputs.append(node.name)
        scope.values[stmt.name.name] = [Ref(node.name)]

    def eval_type(self, t: ast.TypeExpr, env: dict[str, Any]) -> T.TensorType:
        kind = T.KINDS[t.kind.name]
        dims = tuple(evaluate_dim(d, env) for d in t.dims)
        if kind.axes and kind.layout(len(dims)) is None:
            raise error("E303", f"{t.kind.name} has {len(dims)} dims but must be "
                                f"{kind.describe()}", t.span,
                        hint=f"{t.kind.name} is {kind.doc}")
        for i, d in enumerate(dims):
            if d.is_number and d <= 0:
                raise error("E304", f"dimension {T.format_dim(d)} must be positive",
                            t.dims[i].span)
            if (T.smallest(d) or 0) > T.MAX_SIZE:
                raise error("E304", f"dimension {shorten(T.format_dim(d))} is too large (at most "
                                    f"{T.MAX_SIZE:,}, 2**31 - 1)", t.dims[i].span,
                            hint="no size past 2**31 - 1 can be allocated")
        if kind.name == "Boxes" and not T.same_dim(dims[2], 4):
            raise error("E303", "Boxes have 4 coordinates per box", t.dims[2].span)
        dtype = next((T.DTYPE_ALIASES.get(tag.name, tag.name) for tag in t.tags
                      if tag.name in T.DTYPES or tag.name in T.DTYPE_ALIASES), None)
        tags = [tag.name for tag in t.tags
                if tag.name not in T.DTYPES and tag.name not in T.DTYPE_ALIASES]
        made = T.make(kind.name, dims, dtype, tags or None)
        too_large = T.oversize(made)
        if too_large:
            raise error("E304", f"{made} is too large: {too_large}", t.span,
                        hint="no value past 2**40 numbers can be allocated")
        return made

    # ---------------------------------------------------------------- declarations
    def declare(self, stmt: ast.Instance, scope: Scope) -> None:
        call, times = stmt.call, 0
        if call.func.name == "repeat":
            times_kw = next((k for k in call.kwargs if k.name.name == "times"), None)
            extra = [k for k in call.kwargs if k.name.name != "times"] + list(call.args[1:])
            if times_kw is None:
                raise error("E207", "repeat needs times=N", call.span,
                            hint="e.g. repeat(transformer_layer(heads=8), times=12)")
            if extra:
                raise error("E207", "repeat takes one layer and times=N", extra[0].span)
            times = evaluate(times_kw.value, scope.consts, what="times")
            if not isinstance(times, int) or isinstance(times, bool) or times < 1:
                raise error("E207", f"times must be a positive integer, got {show(times)}",
                            times_kw.value.span)
            if times > MAX_REPEAT:
                raise error("E207", f"times={times} is more repetitions than mmgraph expands "
                                    f"(at most {MAX_REPEAT})", times_kw.value.span,
                            hint="models this deep are written as a repeat of a block of "
                                 "several layers")
            call = call.args[0]
        decl = Decl(scope.full(stmt.name.name), stmt.role, stmt.span, times=times,
                    frozen=scope.frozen, frozen_by=scope.frozen_by, lora=scope.lora,
                    shared=f"{scope.shared}.{stmt.name.name}" if scope.shared else None)
        self.apply_modifiers(decl, stmt.modifiers, scope)
        name = call.func.name
        if decl.pretrained_mod is not None and (times or name in self.c.program.blocks):
            raise error("E206", "pretrained weights load into one component, not a "
                                f"{'repeat' if times else 'block'}", decl.pretrained_mod.span,
                        hint="put pretrained(...) on a declaration of a component such as "
                             "vit(...) or causal_lm(...)")
        if name in self.c.program.blocks:
            block = self.c.program.blocks[name]
            decl.block = block
            decl.block_env = self.block_env(block, call, scope)
        else:
            comp = registry.get(name)
            decl.component = comp
            items = kwargs(call.kwargs)
            written = {ident.name for ident, _ in items}
            bound = self.pretrained(decl, comp, scope) if decl.pretrained_mod else None
            if bound:  # parameters left out come from the checkpoint's config.json
                items += checkpoint.fills(bound, written, set(comp.Params.model_fields))
            decl.params, given = validate(comp.Params, items, scope.consts, name,
                                          PARAMS, call.span, sizes=True)
            decl.param_spans = {k: v[1].span for k, v in given.items() if k in written}
            if bound:
                problems = checkpoint.disagreements(bound, decl.params, decl.param_spans,
                                                    decl.name)
                if problems:
                    raise SpecError(problems)
                decl.pretrained = bound.pretrained
            if decl.lora and decl.lora_span and not lora_fits(comp, decl.lora):
                raise lora_error(comp, decl.lora, decl.lora_span)
            bad_target = unknown_lora_target(name, comp.lora_targets, decl.lora_targets)
            if bad_target:
                raise bad_target
            for i in range(times) if times else [None]:
                name = decl.name if i is None else f"{decl.name}.{i}"
                shared = None if i is None or not decl.shared else f"{decl.shared}.{i}"
                self.make_instance(decl, name, stmt.span, anonymous=False, shared=shared)
        scope.decls[stmt.name.name] = decl
        self.decls[decl.name] = decl

    def apply_modifiers(self, decl: Decl, mods, scope: Scope) -> None:
        seen = set()
        for m in mods:
            if m.kind in seen:
                raise error("E206", f"'{m.kind}' is given twice", m.span)
            seen.add(m.kind)
            if m.kind == "frozen":
                decl.frozen, decl.frozen_by = True, decl.name
            elif m.kind == "lora":
                if m.args:
                    raise error("E206", "lora takes its settings by name", m.args[0].span,
                                hint="e.g. lora(r=8, alpha=16)")
                decl.lora, decl.lora_targets = self.lora(m, scope)
                decl.lora_span = m.span
            elif m.kind == "shared":
                decl.shared_target = m.target
            elif m.kind == "pretrained":
                decl.pretrained_mod = m
            elif m.kind == "ema_of":
                decl.ema_mod = m
                decl.frozen, decl.frozen_by = True, decl.name  # the optimizer never steps it

    def pretrained(self, decl: Decl, comp: Component, scope: Scope) -> checkpoint.Bound:
        m = decl.pretrained_mod
        if not comp.has_weights:
            raise error("E206", f"{comp.name} has no weights to load", m.span,
                        hint="pretrained(...) goes on a layer with weights")
        if decl.shared_target is not None:
            raise error("E206", "a layer that shares another's weights cannot load its own",
                        m.span, hint="put pretrained(...) on the layer it shares with")
        return checkpoint.bind(m, comp.name, scope.consts, self.c.overrides)

    def tie(self, local: str, decl: Decl, scope: Scope) -> None:
        """Resolve `shared(x)`: x may be declared anywhere in the same body."""
        target = decl.shared_target
        if target.name == local:
            raise error("E206", f"'{local}' cannot share weights with itself", target.span,
                        hint="name another layer of the same component and parameters")
        if target.name not in scope.decls:
            raise error("E206", f"shared({target.name}): no layer '{target.name}' is declared "
                                "here", target.span,
                        hint=did_you_mean(target.name, scope.decls) or
                        "name a layer declared in the same model or block")
        other = scope.decls[target.name]
        decl.shared = other.name
        if decl.times != other.times or (decl.block is None) != (other.block is None):
            raise error("E206", f"'{local}' and '{target.name}' have different structure, so "
                                "their weights cannot be tied", target.span)
        for i in range(decl.times) if decl.times else [None]:
            name = decl.name if i is None else f"{decl.name}.{i}"
            if name in self.g.instances:
                self.g.instances[name].shared = other.name if i is None else f"{other.name}.{i}"

    def teach(self, local: str, decl: Decl, scope: Scope) -> None:
        """Resolve `ema_of(x, decay=d)`: x is a layer of the same body with the same component
        and parameters (the teacher is its averaged copy, weight for weight)."""
        m = decl.ema_mod
        if len(m.args) != 1 or not isinstance(m.args[0], ast.Name):
            raise error("E206", "ema_of takes the layer it averages, then decay=", m.span,
                        hint="e.g. ema_of(vision, decay=0.995)")
        target = m.args[0]
        p, _ = validate(EmaParams, kwargs(m.kwargs), scope.consts, "ema_of", PARAMS, m.span)
        if target.id == local:
            raise error("E206", f"'{local}' cannot be the moving average of itself",
                        target.span, hint="name the layer it follows")
        if target.id not in scope.decls:
            raise error("E206", f"ema_of({target.id}): no layer '{target.id}' is declared here",
                        target.span, hint=did_you_mean(target.id, scope.decls) or
                        "name a layer declared in the same model or block")
        other = scope.decls[target.id]
        if decl.block is not None or decl.times or other.block is not None or other.times:
            raise error("E206", "ema_of averages one layer; blocks and repeats are not "
                                "supported", m.span, hint="put ema_of on each layer")
        if decl.shared_target is not None:
            raise error("E206", "a layer that shares another's weights cannot be a moving "
                                "average", m.span)
        if other.component is None or decl.component is None or \
                other.component.name != decl.component.name or other.params != decl.params:
            mine = f"{decl.component.name}(...)" if decl.component else "?"
            theirs = f"{other.component.name}(...)" if other.component else "?"
            raise error("E206", f"'{local}' ({mine}) must be the same component with the same "
                                f"parameters as '{target.id}' ({theirs}) to average its "
                                "weights", target.span,
                        hint=f"declare it with the same call as '{target.id}'")
        inst = self.g.instances.get(decl.name)
        if inst is not None:
            inst.ema_of, inst.ema_decay = other.name, p.decay

    def lora(self, m: ast.Modifier, scope: Scope) -> tuple[Lora, dict[str, Span]]:
        """The adapter's settings, and its targets as written with their spans (none when
        the defaults apply)."""
        p, given = validate(LoraParams, kwargs(m.kwargs), scope.consts, "lora", PARAMS, m.span,
                            sizes=True)
        if "all" in p.targets and len(p.targets) > 1:
            raise error("E206", "lora targets: 'all' already covers every linear layer", m.span)
        if p.alpha <= 0:
            raise error("E206", "lora alpha must be positive", m.span)
        spans: dict[str, Span] = {}
        if "targets" in given:
            written = given["targets"][1]
            items = written.items if isinstance(written, ast.ListExpr) and \
                len(written.items) == len(p.targets) else [written] * len(p.targets)
            spans = {t: item.span for t, item in zip(p.targets, items)}
        where = given["modalities"][1].span if "modalities" in given else None
        for tag in p.modalities:
            if tag not in T.MODALITIES:
                raise error("E206", f"lora modalities: '{tag}' is no modality", where or m.span,
                            hint=did_you_mean(tag, T.MODALITIES) or
                            f"modalities are: {', '.join(T.MODALITIES)}")
        return Lora(p.r, p.alpha, p.targets, p.dropout, tuple(p.modalities), where), spans

    def block_env(self, block: ast.Block, call: ast.Call, scope: Scope) -> dict[str, Any]:
        """The block's parameters bound from a call: defaults first, then the given values."""
        params = {p.name.name: p for p in block.params}
        given: dict[str, Any] = {}
        problems = []
        for kw in call.kwargs:
            if kw.name.name not in params:
                problems.append(Diagnostic(
                    "E202", f"block '{block.name.name}' has no parameter '{kw.name.name}'",
                    kw.name.span, hint=did_you_mean(kw.name.name, params) or
                    f"its parameters are: {', '.join(params) or 'none'}"))
                continue
            try:
                given[kw.name.name] = evaluate(kw.value, scope.consts, what="a parameter")
            except SpecError as exc:
                problems.extend(exc.diagnostics)
        for p in params.values():
            if p.name.name not in given and p.default is None:
                problems.append(Diagnostic("E204", f"block '{block.name.name}' needs parameter "
                                                   f"'{p.name.name}'", call.span,
                                           hint=f"add {p.name.name}=..."))
        if problems:
            raise SpecError(problems)
        env = {k: v for k, v in self.c.consts.items()}
        defaults = {n: (p.name, p.default) for n, p in params.items() if n not in given}
        env.update(given)
        env = evaluate_all(defaults, env, {}, self.sink)
        # the block's own constant assignments
        consts, _ = classify_assigns(block.body, {s.name.name for s in block.body
                                                  if isinstance(s, ast.Input)})
        env = evaluate_all({a.targets[0].name: (a.targets[0], a.value) for a in consts},
                           env, {}, self.sink)
        return env

    def make_instance(self, decl: Decl, name: str, span: Span, anonymous: bool,
                      component: Component | None = None, params=None,
                      shared: str | None = None, param_spans=None) -> Instance:
        if name in self.g.instances:
            return self.g.instances[name]
        comp = component or decl.component
        role = decl.role if not anonymous else ("op" if not comp.has_weights else
                                                comp.category if comp.category != "op"
                                                else "layer")
        if comp.category == "loss":
            role = "loss"
        lora = decl.lora if decl.lora and lora_fits(comp, decl.lora) else None
        inst = Instance(name, role, comp.name, params if params is not None else decl.params,
                        span, frozen=decl.frozen, lora=lora,
                        shared=shared if shared is not None else decl.shared,
                        anonymous=anonymous, frozen_by=decl.frozen_by,
                        param_spans=dict(param_spans or decl.param_spans),
                        pretrained=decl.pretrained if not anonymous else None)
        return self.g.add_instance(inst)

    # ---------------------------------------------------------------- values
    def lower_assign(self, a: ast.Assign, scope: Scope) -> None:
        before = set(self.g.nodes)
        refs = self.value(a.value, scope)
        if len(a.targets) > 1:
            if len(refs) != len(a.targets):
                raise error("E205", f"{len(a.targets)} names on the left but the right side "
                                    f"gives {len(refs)} value(s)", a.span)
            for t, r in zip(a.targets, refs):
                scope.values[t.name] = [r]
            return
        target = a.targets[0].name
        ref = refs[0]
        if ref.node not in before and ref.port == "out" and self.owned(ref.node, scope):
            new = self.fresh(scope.full(target))
            self.rename(ref.node, new)
            refs = [Ref(new, r.port) if r.node == ref.node else r for r in refs]
        scope.values[target] = refs

    @staticmethod
    def owned(node: str, scope: Scope) -> bool:
        """True for a node made directly in `scope`, not inside a block or repeat it expanded
        (those keep their dotted names, so pictures and stages can group them)."""
        return node.rpartition(".")[0] == scope.prefix

    def rename(self, old: str, new: str) -> None:
        node = self.g.nodes.pop(old)
        node.name = new
        self.g.nodes[new] = node

    def fresh(self, base: str) -> str:
        if base not in self.g.nodes:
            return base
        i = 1
        while f"{base}_{i}" in self.g.nodes:
            i += 1
        return f"{base}_{i}"

    def lower_output(self, item: ast.OutputItem, scope: Scope) -> None:
        if item.alias is None and not isinstance(item.value, ast.Name):
            raise_into = Diagnostic("E406", "this output needs a name", item.span,
                                    hint="write `output EXPR as NAME`")
            self.sink.add(raise_into)
            return
        name = item.alias.name if item.alias else item.value.id
        if name in self.g.outputs:
            self.sink.add(Diagnostic("E406", f"output '{name}' is given twice", item.span))
            return
        try:
            before = set(self.g.nodes)
            refs = self.value(item.value, scope)
        except SpecError as exc:
            self.sink.add(exc)
            return
        if refs[0].node not in before and refs[0].port == "out" and self.owned(refs[0].node,
                                                                                scope):
            new = self.fresh(name)
            self.rename(refs[0].node, new)
            refs = [Ref(new, r.port) for r in refs]
        self.g.outputs[name] = refs[0]
        self.g.output_spans[name] = item.span

    def lower_loss(self, stmt: ast.Loss, scope: Scope) -> None:
        expr, weight = stmt.value, 1.0
        while isinstance(expr, ast.BinOp) and expr.op == "*":  # `2 * mse(a, b) * 0.5`
            for const_side, value_side in ((expr.left, expr.right), (expr.right, expr.left)):
                if not any(isinstance(e, (ast.Call, ast.Index, ast.Attr)) or
                           (isinstance(e, ast.Name) and e.id in scope.values)
                           for e in walk(const_side)):
                    try:
                        factor = evaluate(const_side, scope.consts, what="a loss weight")
                    except SpecError as exc:
                        self.sink.add(exc)
                        return
                    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or \
                            factor < 0:
                        self.sink.add(Diagnostic(
                            "E404", f"loss weight must be a non-negative number, got "
                                    f"{show(factor)}", const_side.span))
                        return
                    weight *= factor
                    expr = value_side
                    break
            else:
                break
        try:
            before = set(self.g.nodes)
            if isinstance(expr, ast.Call) and expr.func.name not in scope.decls:
                refs = self.call(expr, scope, name_hint=stmt.name.name)
            else:
                refs = self.value(expr, scope)
        except SpecError as exc:
            self.sink.add(exc)
            return
        if refs[0].node not in before and refs[0].node != stmt.name.name and \
                self.owned(refs[0].node, scope):
            new = self.fresh(stmt.name.name)
            self.rename(refs[0].node, new)
            refs = [Ref(new, r.port) for r in refs]
        self.g.losses[stmt.name.name] = LossTerm(stmt.name.name, refs[0], float(weight),
                                                 stmt.span)

    def value(self, e: ast.Expr, scope: Scope) -> list[Ref]:
        """Lower an expression that must be a graph value; returns its output refs."""
        out = self.expr(e, scope)
        if not isinstance(out, list):
            raise error("E302", f"expected a graph value here, but this is the constant "
                                f"{show(to_plain(out))}", e.span)
        return out

    def expr(self, e: ast.Expr, scope: Scope):
        """A list of refs for a graph value, or a Python value for a constant."""
        if isinstance(e, (ast.Name, ast.Call)) and \
                (e.id if isinstance(e, ast.Name) else e.func.name) in scope.failed:
            raise SpecError([])  # already reported where it was defined
        if isinstance(e, ast.Name):
            if e.id in scope.values:
                return scope.values[e.id]
            return evaluate(e, scope.consts)
        if isinstance(e, (ast.Num, ast.Str, ast.ListExpr)):
            return evaluate(e, scope.consts)
        if isinstance(e, ast.Call):
            return self.call(e, scope)
        if isinstance(e, ast.BinOp):
            return self.binop(e, scope)
        if isinstance(e, ast.Neg):
            v = self.expr(e.operand, scope)
            if not isinstance(v, list):
                return evaluate(e, scope.consts)
            return [self.node(scope, "mul", [("x", v[0])], e.span, attrs={"scalar": -1})]
        if isinstance(e, ast.Index):
            return self.index(e, scope)
        if isinstance(e, ast.Attr):
            v = self.value(e.value, scope)
            if v[0].port != "out":
                self._attr_err(e)
            return [self.copy_tap(v[0], e) or Ref(v[0].node, e.attr.name)]
        raise error("E306", "unsupported expression", e.span)

    def copy_tap(self, ref: Ref, e: ast.Attr) -> Ref | None:
        """`y.layerK` / `y.backK` on a repeat's result `y`: the output of its K-th copy from
        the first / from the last (`back1` is `y` itself), as `vit(taps=[...])` counts
        blocks; `backK` follows a `--set` of `times=`. None when it is no such tap (or the
        repeated component has an output of that name, which wins)."""
        m = re.fullmatch(r"(layer|back)([0-9]+)", e.attr.name)
        if m is None or ref.node not in self.copies:
            return None
        record, j = self.copies[ref.node]
        per_copy = [x.outputs for x in record.expansions]
        if any(r.port == e.attr.name for r in per_copy[-1]):
            return None
        times, k = len(per_copy), int(m[2])
        if not 1 <= k <= times:
            raise error("E302", f"'{record.decl}' repeats {times} time(s), so .{e.attr.name} is "
                                f"outside {m[1]}1..{m[1]}{times}", e.attr.span,
                        hint="layerK counts copies from the first, backK from the last")
        return per_copy[k - 1 if m[1] == "layer" else times - k][j]

    def _attr_err(self, e: ast.Attr):
        raise error("E302", f"'.{e.attr.name}' must follow a layer's main output", e.span)

    def node(self, scope: Scope, op: str, inputs, span: Span, target=None, attrs=None,
             base: str | None = None, meta=None, full_name: str | None = None) -> Ref:
        """Add a node named after `base` in the scope (or exactly `full_name`, made unique)."""
        name = self.fresh(full_name or scope.full(base or op))
        self.g.add_node(Node(name, op, list(inputs), span, target=target, attrs=attrs or {},
                             meta=meta or {}))
        return Ref(name)

    def binop(self, e: ast.BinOp, scope: Scope):
        a, b = self.expr(e.left, scope), self.expr(e.right, scope)
        if not isinstance(a, list) and not isinstance(b, list):
            return evaluate(e, scope.consts)
        ops = {"+": "add", "-": "sub", "*": "mul", "/": "div"}
        if e.op not in ops:
            raise error("E302", f"'{e.op}' is not defined on graph values", e.span,
                        hint="values support + - * / (elementwise, or with a constant)")
        if isinstance(a, list) and isinstance(b, list):
            return [self.node(scope, ops[e.op], [("a", a[0]), ("b", b[0])], e.span)]
        value, const = (a, b) if isinstance(a, list) else (b, a)
        if isinstance(const, bool) or not isinstance(const, (int, float)):
            raise error("E302", f"cannot combine a graph value with {show(to_plain(const))}",
                        e.span)
        if e.op in ("-", "/") and not isinstance(a, list):
            raise error("E302", f"'constant {e.op} value' is not supported", e.span,
                        hint="write the value first, e.g. x * 0.5")
        return [self.node(scope, ops[e.op], [("x", value[0])], e.span,
                          attrs={"scalar": const})]

    def index(self, e: ast.Index, scope: Scope):
        v = self.value(e.value, scope)
        if isinstance(e.index, ast.Slice):
            start = None if e.index.start is None else \
                evaluate(e.index.start, scope.consts, what="a slice bound")
            stop = None if e.index.stop is None else \
                evaluate(e.index.stop, scope.consts, what="a slice bound")
            for bound in (start, stop):
                if bound is not None and (isinstance(bound, bool) or not isinstance(bound, int)):
                    raise error("E305", f"slice bounds must be integers, got {show(bound)}",
                                e.index.span)
            return [self.node(scope, "slice", [("x", v[0])], e.span,
                              attrs={"start": start, "stop": stop})]
        i = evaluate(e.index, scope.consts, what="an index")
        if isinstance(i, bool) or not isinstance(i, int):
            raise error("E305", f"an index must be an integer, got {show(i)}", e.index.span)
        return [self.node(scope, "select", [("x", v[0])], e.span, attrs={"index": i})]

    # ---------------------------------------------------------------- calls
    def call(self, e: ast.Call, scope: Scope, name_hint: str | None = None):
        """A call of a declared layer, a block or a component (the last two inline)."""
        name = e.func.name
        if name in scope.decls:
            return self.call_decl(scope.decls[name], e, scope)
        if name in CONST_FUNCTIONS:
            return evaluate(e, scope.consts)
        if name in self.c.program.blocks:
            block = self.c.program.blocks[name]
            inputs = self.block_inputs(block)
            kw = [k for k in e.kwargs if k.name.name not in inputs]
            env = self.block_env(block, ast.Call(e.func, (), tuple(kw), e.span), scope)
            decl = Decl(self.anon_name(scope, name), "layer", e.span, block=block,
                        block_env=env, frozen=scope.frozen, frozen_by=scope.frozen_by,
                        lora=scope.lora)
            inputs_call = ast.Call(e.func, e.args,
                                   tuple(k for k in e.kwargs if k.name.name in inputs), e.span)
            return self.call_decl(decl, inputs_call, scope)
        comp = registry.get(name)
        ports = {p.name for p in comp.inputs}
        params_kw = [k for k in e.kwargs if k.name.name not in ports]
        p, given = validate(comp.Params, kwargs(params_kw), scope.consts, name, PARAMS, e.span,
                            sizes=True)
        inst_name = self.anon_name(scope, name_hint or name)
        shared = f"{scope.shared}.{inst_name[len(scope.prefix) + 1:]}" if scope.shared else None
        decl = Decl(inst_name, "layer", e.span, component=comp, params=p, frozen=scope.frozen,
                    frozen_by=scope.frozen_by, lora=scope.lora,
                    param_spans={k: v[1].span for k, v in given.items()})
        self.make_instance(decl, inst_name, e.span, anonymous=True, shared=shared)
        inputs_call = ast.Call(e.func, e.args,
                               tuple(k for k in e.kwargs if k.name.name in ports), e.span)
        return self.call_component(decl, inst_name, inputs_call, scope)

    def anon_name(self, scope: Scope, base: str) -> str:
        k = scope.anon[base]
        scope.anon[base] += 1
        return scope.full(base if k == 0 else f"{base}_{k}")

    @staticmethod
    def block_inputs(block: ast.Block) -> list[str]:
        return [s.name.name for s in block.body if isinstance(s, ast.Input)]

    def args(self, e: ast.Call, scope: Scope):
        pos = []
        for a in e.args:
            v = self.expr(a, scope)
            if not isinstance(v, list):
                raise error("E205", f"{e.func.name}: a constant cannot be an input "
                                    f"({show(to_plain(v))})", a.span,
                            hint="inputs are graph values; parameters are given by name")
            pos.append((v[0], a.span))
        kw = {}
        for k in e.kwargs:
            v = self.expr(k.value, scope)
            if not isinstance(v, list):
                raise error("E205", f"{e.func.name}: '{k.name.name}' is a parameter; set it "
                                    "where the layer is declared", k.span)
            kw[k.name.name] = (v[0], k.value.span, k.name.span)
        return pos, kw

    def bind(self, ports: list[tuple[str, bool, bool]], e: ast.Call, scope: Scope,
             what: str):
        """Match call arguments to input ports: [(port, ref, span)]."""
        pos, kw = self.args(e, scope)
        bound: list[tuple[str, Ref, Span]] = []
        names = [p for p, _, _ in ports]
        variadic = next((p for p, _, v in ports if v), None)
        fixed = [p for p, _, v in ports if not v]
        for i, (ref, span) in enumerate(pos):
            if variadic and i >= len(fixed):
                bound.append((f"{variadic}{i - len(fixed)}", ref, span))
            elif i < len(fixed):
                bound.append((fixed[i], ref, span))
            else:
                raise error("E205", f"{what} takes {len(fixed)} input(s) "
                                    f"({', '.join(fixed)}) but is given {len(pos)}", span)
        given = {b[0] for b in bound}
        for port, (ref, span, name_span) in kw.items():
            if port not in names:
                raise error("E205", f"{what} has no input '{port}'", name_span,
                            hint=did_you_mean(port, names) or
                            f"its inputs are: {', '.join(names)}")
            if port in given:
                raise error("E205", f"input '{port}' of {what} is given twice", name_span)
            bound.append((port, ref, span))
            given.add(port)
        missing = [p for p, opt, var in ports if not opt and not var and p not in given]
        if missing:
            raise error("E205", f"{what} needs input '{missing[0]}'", e.span,
                        hint=f"its inputs are: {', '.join(names)}")
        order = {p: i for i, p in enumerate(names)}
        bound.sort(key=lambda b: (order.get(b[0].rstrip("0123456789"), len(order)),
                                  int(b[0][len(variadic):]) if variadic and
                                  b[0].startswith(variadic) and b[0][len(variadic):].isdigit()
                                  else 0))
        return bound

    def call_component(self, decl: Decl, inst_name: str, e: ast.Call, scope: Scope,
                       args=None) -> list[Ref]:
        comp = decl.component
        ports = [(p.name, p.optional, p.variadic) for p in comp.inputs]
        if args is None:
            bound = self.bind(ports, e, scope, f"'{e.func.name}'")
        else:
            bound = args
        ref = self.node(scope, "call", [(p, r) for p, r, _ in bound], e.span, target=inst_name,
                        full_name=inst_name, meta={"arg_spans": {p: s for p, _, s in bound}})
        return [Ref(ref.node, port) for port in comp.outputs(self.g.instances[inst_name].params)]

    def call_decl(self, decl: Decl, e: ast.Call, scope: Scope) -> list[Ref]:
        if decl.block is None and not decl.times:
            return self.call_component(decl, decl.name, e, scope)
        if decl.block is not None:
            ports = [(s.name.name, False, False) for s in decl.block.body
                     if isinstance(s, ast.Input)]
        else:
            ports = [(p.name, p.optional, p.variadic) for p in decl.component.inputs]
        bound = self.bind(ports, e, scope, f"'{e.func.name}'")
        record = BlockCall(decl.name, decl.block.name.name if decl.block else None,
                           decl.component.name if decl.component else None, decl.times,
                           [(port, ref) for port, ref, _ in bound], 0, [], e.span)
        self.calls.append(record)
        if not decl.times:
            record.outputs = self.expand(decl, decl.name, bound, e, record)
            return record.outputs
        current = bound
        outs: list[Ref] = []
        threaded_refs: list[Ref] = []  # the previous repetition's outputs, fed back in
        for i in range(decl.times):
            prefix = f"{decl.name}.{i}"
            before = set(self.g.nodes)
            if decl.block is not None:
                outs = self.expand(decl, prefix, current, e, record)
            else:
                outs = self.call_component(decl, prefix, e, scope, args=current)
                record.expansions.append(Expansion(prefix, [outs[0].node], [], outs))
            if threaded_refs:  # tell `infer` which inputs are fed back
                first_inputs = {port: ref for port, ref, _ in bound}
                for name in set(self.g.nodes) - before:
                    node = self.g.nodes[name]
                    for port, ref in node.inputs:
                        if any(ref == r for r in threaded_refs):
                            own = node.name.rsplit(".", 1)[-1] if node.op == "bind" else port
                            node.meta.setdefault("threaded", {})[port] = (
                                decl.name, decl.span, first_inputs.get(own, bound[0][1]))
            # thread the first len(outs) inputs through the next repetition
            threaded = [(port, ref, span) for (port, _, span), ref
                        in zip(current, outs[:1] if decl.block is None else outs)]
            threaded_refs = [ref for _, ref, _ in threaded]
            current = threaded + current[len(threaded):]
        record.threaded, record.outputs = len(threaded_refs), outs
        for j, ref in enumerate(outs):
            self.copies[ref.node] = (record, j)
        return outs

    def expand(self, decl: Decl, prefix: str, bound, e: ast.Call,
               record: BlockCall) -> list[Ref]:
        """Inline one copy of a block under `prefix`, its inputs bound to `bound`."""
        self.binding_groups += 1
        expansion = Expansion(prefix)
        record.expansions.append(expansion)
        outer_calls, self.calls = self.calls, expansion.calls
        before = list(self.g.nodes)
        try:
            outs = self._expand(decl, prefix, bound, e, expansion)
        finally:
            self.calls = outer_calls
        seen = set(before)
        expansion.nodes = [n for n in self.g.nodes if n not in seen]
        expansion.outputs = outs
        return outs

    def _expand(self, decl: Decl, prefix: str, bound, e: ast.Call,
                expansion: Expansion) -> list[Ref]:
        block = decl.block
        inner = Scope(prefix, dict(decl.block_env), frozen=decl.frozen,
                      frozen_by=decl.frozen_by, lora=decl.lora,
                      shared=(decl.shared + prefix[len(decl.name):]) if decl.shared else None)
        by_port = {p: (r, s) for p, r, s in bound}
        for stmt in block.body:
            if isinstance(stmt, ast.Input):
                ref, span = by_port[stmt.name.name]
                declared = self.eval_type(stmt.type, inner.consts)
                node = self.node(inner, "bind", [("x", ref)], stmt.span, base=stmt.name.name,
                                 attrs={"expect": declared},
                                 meta={"group": self.binding_groups, "arg_span": span,
                                       "block": block.name.name})
                inner.values[stmt.name.name] = [node]
                expansion.inputs.append(node.node)
        self.lower_body(block.body, inner)
        expansion.values = {k: v[0] for k, v in inner.values.items()}
        outs: list[Ref] = []
        for stmt in block.body:
            if isinstance(stmt, ast.Output):
                for item in stmt.items:
                    outs.extend(self.value(item.value, inner)[:1])
        for inst in self.g.instances.values():
            if inst.name.startswith(prefix + ".") and inst.block is None:
                inst.block = block.name.name
        if not outs:
            raise error("E403", f"block '{block.name.name}' has no output", block.span)
        return outs


def check_block_lora_targets(c: Compilation, decls: dict[str, Decl]) -> None:
    """A block's `lora(targets=[...])` names linear layers of the components inside it."""
    g = c.graph
    for decl in decls.values():
        if decl.block is None or not decl.lora_targets:
            continue
        inside = [registry.get(i.component) for n, i in g.instances.items()
                  if n.startswith(decl.name + ".")]
        available = [t for comp in inside for t in comp.lora_targets if t != "self"]
        problem = unknown_lora_target(f"block '{decl.block.name.name}'", available,
                                      decl.lora_targets)
        if problem:
            c.sink.add(problem)


def run(c: Compilation) -> None:
    lowerer = Lowerer(c)
    c.graph = lowerer.lower_model()
    check_block_lora_targets(c, lowerer.decls)
