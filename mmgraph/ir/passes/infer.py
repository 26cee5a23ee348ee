"""Pass `infer`: the type and shape of every value, in dependency order.

Each `call` runs its component's type rule; arithmetic, slicing and block-input binding have
their rules here. A failed node reports once; the values depending on it are skipped rather
than reported again, so one mistake gives one diagnostic. Afterwards the graph's nodes are in
that dependency order, which later passes and backends walk as is.
"""

from __future__ import annotations

import sympy

from mmgraph.components import registry
from mmgraph.components.common import tags_of
from mmgraph.components.registry import RuleContext, TypeRuleError, spec_folder
from mmgraph.ir import lora_modalities
from mmgraph.ir import types as T
from mmgraph.ir.graph import Graph, Node
from mmgraph.ir.passes.base import Compilation
from mmgraph.lang.diagnostics import Diagnostic, Note, SpecError, error
from mmgraph.suggest import did_you_mean


def run(c: Compilation) -> None:
    g = c.graph
    failed = c.failed
    bindings: dict[int, dict[sympy.Symbol, sympy.Expr]] = {}
    order = g.toposort()
    for name in order:
        node = g.nodes[name]
        if node.op == "input":
            continue
        deps = [r.node for r in node.refs()]
        if any(d in failed for d in deps):
            failed.add(name)
            continue
        try:
            check_ports(g, node)
            node.types = infer_node(g, node, bindings)
            check_sizes(g, node, args={p: g.type_of(r) for p, r in node.inputs})
            lora_modalities.check(g, node)
        except SpecError as exc:
            c.sink.add(exc)
            failed.add(name)
    for out_name, ref in g.outputs.items():
        if ref.node not in failed and ref.port not in g.nodes[ref.node].types:
            c.sink.add(_no_port(g, ref, g.output_spans[out_name]))
    for term in g.losses.values():
        if term.value.node not in failed and term.value.port not in g.nodes[term.value.node].types:
            c.sink.add(_no_port(g, term.value, term.span))
    g.nodes = {name: g.nodes[name] for name in order}


def check_sizes(g: Graph, node: Node, args: dict[str, T.TensorType]) -> None:
    """No value past what can be allocated, and no layer whose largest weight matrix would
    be: the layer's two largest sizes (its integer parameters and the widths it takes and
    gives) multiplied, an estimate that needs no torch."""
    for port, t in node.types.items():
        why = T.oversize(t)
        if why:
            what = node.name if port == "out" else f"{node.name}.{port}"
            raise error("E304", f"'{what}' would be {t}, too large: {why}", node.span,
                        hint="check the sizes of the layers and inputs that make it")
    if node.op != "call":
        return
    inst = g.instances[node.target]
    if not registry.get(inst.component).has_weights:
        return
    # the layer's sizes, each once: its integer parameters, the widths it takes, and the
    # widths it gives unless a parameter or an input already has that size
    sizes: list[tuple[int, str | None]] = []
    for field, value in inst.params.model_dump().items():
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                sizes.append((v, field))
    sizes += [(w, None) for w in map(_width, args.values()) if w]
    for width in map(_width, node.types.values()):
        if width and width not in {v for v, _ in sizes}:
            sizes.append((width, None))
    if len(sizes) < 2:
        return
    (a, field_a), (b, field_b) = sorted(sizes, key=lambda s: s[0], reverse=True)[:2]
    if a * b > T.MAX_WEIGHTS:
        span = inst.param_spans.get(field_a or field_b, inst.span)
        raise error("E203", f"'{inst.name}' ({inst.component}) is too large: its sizes {a:,} "
                            f"and {b:,} make a weight matrix of {a * b:.2e} numbers, more "
                            "than 2**40", span,
                    hint="no layer that large can be allocated; check its parameters and "
                         "the width of its input")


def _width(t: T.TensorType | None) -> int | None:
    return T.smallest(t.dims[-1]) if t is not None and t.dims else None


def _no_port(g: Graph, ref, span) -> Diagnostic:
    node = g.nodes[ref.node]
    ports = list(node.types)
    return Diagnostic("E302", f"{ref.node} has no output '{ref.port}'", span,
                      hint=did_you_mean(ref.port, ports) or f"its outputs are: {', '.join(ports)}")


def check_ports(g: Graph, node: Node) -> None:
    """A `.port` reference must name an output of the node it points at."""
    for port, ref in node.inputs:
        src = g.nodes[ref.node]
        if ref.port not in src.types:
            span = node.meta.get("arg_spans", {}).get(port, node.span)
            raise SpecError([_no_port(g, ref, span)])


def infer_node(g: Graph, node: Node, bindings) -> dict[str, T.TensorType]:
    args = {port: g.type_of(ref) for port, ref in node.inputs}
    if node.op == "call":
        return infer_call(g, node, args)
    if node.op == "bind":
        return {"out": infer_bind(g, node, args["x"], bindings)}
    if node.op in ("add", "sub", "mul", "div"):
        return {"out": infer_arith(g, node, args)}
    if node.op in ("slice", "select"):
        return {"out": infer_index(g, node, args["x"])}
    raise error("E901", f"unknown node op '{node.op}'", node.span)


def infer_call(g: Graph, node: Node, args) -> dict[str, T.TensorType]:
    inst = g.instances[node.target]
    comp = registry.get(inst.component)
    x: dict = {}
    sources: dict[str, str] = {}
    variadic = next((p.name for p in comp.inputs if p.variadic), None)
    for port, ref in node.inputs:
        sources[port] = ref.node if ref.port == "out" else f"{ref.node}.{ref.port}"
        if variadic and port.startswith(variadic) and port[len(variadic):].isdigit():
            x.setdefault(variadic, []).append(args[port])
        else:
            x[port] = args[port]
    if variadic:
        x.setdefault(variadic, [])
    ctx = RuleContext(inst.name, sources, spec_folder(inst.span))
    try:
        out = comp.infer(inst.params, x, ctx)
        # the sizes its torch face is built with must be numbers (an input's width...):
        # refused here rather than by `compile`
        comp.torch_args(inst.params, x, ctx)
    except TypeRuleError as exc:
        if exc.param is not None:  # a bad parameter: point at it where the layer is declared
            span = inst.param_spans.get(exc.param, inst.span)
            raise SpecError([Diagnostic(exc.code, exc.message, span, hint=exc.hint)]) from None
        threaded = node.meta.get("threaded", {}).get(exc.port)
        if threaded is not None:
            raise repeat_error(g, node, exc.port, threaded, args[exc.port]) from None
        spans = node.meta.get("arg_spans", {})
        port = exc.port if exc.port in spans else f"{exc.port}0"
        span = spans.get(port) or node.span
        notes = ()
        src = dict(node.inputs).get(port)
        if src is not None and g.nodes[src.node].span.line != span.line:
            what = "declared" if g.nodes[src.node].op == "input" else "computed"
            notes = (Note(g.nodes[src.node].span, f"'{src.node}' is {what} here"),)
        raise SpecError([Diagnostic(exc.code, exc.message, span, hint=exc.hint,
                                    notes=notes)]) from None
    if isinstance(out, T.TensorType):
        out = {"out": out}
    expected = comp.outputs(inst.params)
    if tuple(out) != tuple(expected):
        raise error("E901", f"type rule of '{comp.name}' returned ports {list(out)} but declares "
                            f"{list(expected)}", node.span)
    return out


def repeat_error(g: Graph, node: Node, port: str, threaded, got: T.TensorType) -> SpecError:
    """A repetition's output fed back as the next one's input does not fit it."""
    decl, span, first_input = threaded
    took = g.type_of(first_input)
    return SpecError([Diagnostic(
        "E207", f"repeat '{decl}' feeds each repetition's output back in as '{port}', but a "
                f"repetition turns {took} into {got}", span,
        hint="a repeated layer must give back what it takes; move the layer that changes "
             "the shape out of the repeat")])


def infer_bind(g: Graph, node: Node, actual: T.TensorType, bindings) -> T.TensorType:
    """A block input: the argument must fit the declared type; free symbols bind per call."""
    declared: T.TensorType = node.attrs["expect"]
    env = bindings.setdefault(node.meta["group"], {})
    block = node.meta["block"]
    arg_span = node.meta["arg_span"]
    port = node.name.rsplit(".", 1)[-1]
    source = node.inputs[0][1].node
    where = (Note(node.span, f"block '{block}' declares input '{port}' here"),)

    def fail(message, code="E301"):
        threaded = node.meta.get("threaded", {}).get("x")
        if threaded is not None:
            raise repeat_error(g, node, port, threaded, actual)
        raise SpecError([Diagnostic(code, message, arg_span, notes=where)])

    if declared.kind != "Tensor" and actual.kind != declared.kind:
        fail(f"block '{block}' input '{port}' expects {declared} but {source} gives {actual}",
             code="E302")
    if actual.rank != declared.rank:
        fail(f"block '{block}' input '{port}' expects {declared} but {source} gives {actual}",
             code="E302")
    for axis, (want, got) in enumerate(zip(declared.dims, actual.dims)):
        want = want.subs(env)
        free = [s for s in want.free_symbols if s not in env]
        if len(free) == 1 and want == free[0]:
            env[free[0]] = got
            continue
        if not free and T.differ(want, got):
            fail(f"block '{block}' input '{port}' expects {declared.axes[axis]} = "
                 f"{T.format_dim(want)} but {source} gives {actual}")
    if declared.dtype != actual.dtype and declared.dtype != T.KINDS[declared.kind].dtype:
        raise SpecError([Diagnostic("E307", f"block '{block}' input expects dtype "
                                            f"{declared.dtype} but gets {actual}", arg_span,
                                    notes=where)])
    return actual


def infer_arith(g: Graph, node: Node, args) -> T.TensorType:
    symbol = {"add": "+", "sub": "-", "mul": "*", "div": "/"}[node.op]
    if "x" in args:  # value with a constant
        t = args["x"]
        if t.dtype not in T.FLOAT_DTYPES:
            raise error("E307", f"'{symbol}' with a constant needs a floating-point value, but "
                                f"{node.inputs[0][1].node} is {t}", node.span)
        return t
    a, b = args["a"], args["b"]
    na, nb = node.inputs[0][1].node, node.inputs[1][1].node
    # different ranks: a per-example (or per-token) value applied to a bigger one (MoVA's
    # expert weights, a gate `Tensor[B]` on `Seq[B, N, D]`, a context `Vec[B, D]` added to
    # every token)
    plan = T.broadcast_plan(a, b) if a.rank != b.rank else None
    if plan is None or plan[1] is None:
        if a.kind != b.kind and "Tensor" not in (a.kind, b.kind) and \
                {a.kind, b.kind} != {"Seq", "Vec"}:  # a Vec may broadcast over a Seq's tokens
            raise error("E302", f"cannot {node.op} {a} ({na}) and {b} ({nb}): different kinds",
                        node.span)
        if plan is not None:
            small, big = (a, b) if plan[0] == 0 else (b, a)
            ns, nbig = (na, nb) if plan[0] == 0 else (nb, na)
            raise error("E301", f"cannot {node.op} {a} ({na}) and {b} ({nb}): {small} ({ns}) "
                                f"does not broadcast over {big} ({nbig})", node.span,
                        hint="a smaller value broadcasts when it is a Vec[B, D] on a "
                             "Seq[B, N, D], or a Tensor whose dims are the leading dims of the "
                             "other (a per-example gate Tensor[B])")
        for axis, (da, db) in enumerate(zip(a.dims, b.dims)):
            if T.differ(da, db):
                raise error("E301", f"cannot {node.op} {na} and {nb}: {a.axes[axis]} is "
                                    f"{T.format_dim(da)} in {a} but {T.format_dim(db)} in {b}",
                            node.span, hint="elementwise arithmetic needs equal shapes")
    if a.dtype != b.dtype:
        raise error("E307", f"cannot {node.op} {a} and {b}: dtypes differ", node.span)
    out = a if plan is None or plan[0] == 1 else b  # the bigger operand's type
    return out.with_(tags=tags_of(a, b))


_INDEXABLE = {"Seq": "Vec", "Tokens": "Labels", "Mask": None, "Logits": "Logits"}


def infer_index(g: Graph, node: Node, t: T.TensorType) -> T.TensorType:
    src = node.inputs[0][1].node
    if t.kind not in _INDEXABLE or t.rank < 2 or (t.kind == "Logits" and t.rank != 3):
        raise error("E305", f"only sequences can be sliced or indexed (on the token axis), but "
                            f"{src} is {t}", node.span)
    n = t.dims[1]
    if node.op == "select":
        i = node.attrs["index"]
        if n.is_Integer and not -int(n) <= i < int(n):
            raise error("E305", f"index {i} is out of range for {t} ({src})", node.span)
        kind = _INDEXABLE[t.kind]
        if kind is None:
            raise error("E305", f"a Mask cannot be indexed to one position ({src})", node.span)
        return T.make(kind, (t.dims[0],) + t.dims[2:], t.dtype, t.tags)
    start, stop = node.attrs["start"], node.attrs["stop"]

    def resolve(bound, default):
        if bound is None:
            return default
        return n + bound if bound < 0 else sympy.Integer(bound)

    lo, hi = resolve(start, sympy.Integer(0)), resolve(stop, n)
    if n.is_Integer:
        lo, hi = min(max(lo, 0), n), min(max(hi, 0), n)
    elif stop is not None and stop > 0:
        hi = sympy.Min(hi, n)  # `x[:100]` of a sequence of unknown length N: min(100, N) tokens
    length = sympy.expand(hi - lo)
    if length.is_number and length <= 0:
        raise error("E305", f"slice [{_b(start)}:{_b(stop)}] of {t} ({src}) is empty", node.span)
    return t.with_(dims=(t.dims[0], length) + t.dims[2:])


def _b(x):
    return "" if x is None else str(x)
