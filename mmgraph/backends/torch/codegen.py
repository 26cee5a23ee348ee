"""Checked IR to readable PyTorch source: one nn.Module per model and per block.

The model's `__init__` builds its layers; `forward` is straight-line code in the checked
graph's order (a `for` loop over each `repeat`), taking the spec's inputs by name and
returning a dict of outputs; `losses` computes the declared losses. Every line of the
generated methods ends with a comment naming its spec line, which is also how runtime errors
are mapped back to the spec (see `mmgraph.components.nn.generated`).

Nothing here re-checks the language: the IR arrives checked, with every type known. Nothing
here trusts its text either: every name, string, type and file name from the spec reaches the
source through `mmgraph.escape` (a literal, an identifier, or one sanitised comment line), so
a spec or its file's name can never add a statement.
"""

from __future__ import annotations

import functools
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import networkx as nx

from mmgraph import escape
from mmgraph.components import registry
from mmgraph.ir import types as T
from mmgraph.ir.graph import BlockCall, Graph, Instance, Node, Ref
from mmgraph.ir.reserved import CODEGEN_NAMES
from mmgraph.lang.diagnostics import error

# names the generated code itself uses (`sum` in losses, `float("inf")` literals); keywords
# are escape.py_name's own business
RESERVED = CODEGEN_NAMES  # names the generated source uses itself
WIDTH = 96  # wrap generated lines longer than this


@dataclass
class Method:
    signature: str
    doc: str
    body: list[str]


@dataclass
class ClassSource:
    name: str
    base: str
    doc: str
    attributes: list[str] = field(default_factory=list)
    init: list[str] = field(default_factory=list)
    methods: list[Method] = field(default_factory=list)


@dataclass
class Generated:
    source: str
    class_name: str
    module_name: str


def camel(name: str) -> str:
    """A class name: `xattn_group` -> `XattnGroup`, a valid identifier whatever the name."""
    return py_name("".join(part[:1].upper() + part[1:]
                           for part in re.split(r"[_\W]+", name) if part))


def py_name(name: str) -> str:
    return escape.py_name(name, RESERVED)


literal = escape.py_literal


def where(span) -> str:
    """`file.mmg:12` for a comment or docstring: the file's name as one sanitised line, with
    no space at either end (the spec-line mark is the comment's text after its last two
    spaces, see `mmgraph.components.nn.generated`)."""
    return f"{escape.one_line(Path(span.path).name).strip()}:{span.line}"


def call_text(fn: str, args: list[str], kwargs: list[tuple[str, str]], lead: str = "") -> str:
    """`lead + fn(args, k=v)`, wrapped one argument per line when too long."""
    parts = args + [f"{k}={v}" for k, v in kwargs]
    one = f"{lead}{fn}({', '.join(parts)})"
    if len(one) <= WIDTH or not parts:
        return one
    return f"{lead}{fn}(\n" + "".join(f"    {p},\n" for p in parts) + ")"


@functools.cache
def builtin(component: str) -> bool:
    return type(registry.get(component)).__module__.startswith("mmgraph.components.")


def torch_class(component: str):
    """A component's torch module class (or, without weights, its function)."""
    from mmgraph.components import nn as mm

    comp = registry.get(component)
    if not builtin(component):
        return mm.plugin(component)
    return getattr(mm, type(comp).__name__) if comp.has_weights else \
        getattr(mm.ops, component)


def module_expr(component: str) -> str:
    """How generated code names a component's module class or weightless function."""
    if builtin(component):
        comp = registry.get(component)
        return f"mm.{type(comp).__name__}" if comp.has_weights else f"mm.ops.{component}"
    return f"mm.plugin({literal(component)})"


def derived_args(component: str, inputs: dict[str, T.TensorType], where,
                 patch: int | None = None) -> dict:
    """Sizes a torch module needs that the spec leaves to the checker (input widths...)."""
    comp = registry.get(component)
    accepted = set(inspect.signature(torch_class(component).__init__).parameters)
    first = inputs.get(comp.inputs[0].name)
    out: dict = {}

    def concrete(d, what):
        if not d.is_Integer:
            raise error("E304", f"{component} needs a fixed {what} to size its weights, but it "
                                f"is {T.format_dim(d)}", where,
                        hint="give the dimension a number in the spec or with --set")
        return int(d)

    if first is not None:
        if "in_width" in accepted and first.rank >= 1:
            out["in_width"] = concrete(first.width, "input width")
        if first.kind in ("Image", "Video"):
            if "in_channels" in accepted:
                out["in_channels"] = concrete(first.dim("C"), "channel count")
            if "grid" in accepted and patch:
                out["grid"] = (concrete(first.dim("H"), "image height") // patch,
                               concrete(first.dim("W"), "image width") // patch)
        if first.kind == "Points" and "in_features" in accepted:
            out["in_features"] = concrete(first.dims[2], "point feature count")
    if "ctx" in inputs and "ctx_width" in accepted:
        out["ctx_width"] = concrete(inputs["ctx"].width, "context width")
    if "boxes" in inputs and "with_boxes" in accepted:
        out["with_boxes"] = True
    return out


class ScopeCode:
    """Code for one scope: the model, or one expansion of a block.

    `module` is the expression of the module owning the scope's layers, and `names` the
    variable of each computed value: an expansion inlined into its caller (see `inline_code`)
    reaches its layers through the call's module and shares the caller's variables.
    """

    def __init__(self, gen: ModelCodegen, prefix: str, nodes: list[str], calls: list[BlockCall],
                 values: dict[str, Ref], inputs: list[str], module: str = "self",
                 names: dict[Ref, str] | None = None, var_prefix: str = ""):
        self.gen, self.g = gen, gen.g
        self.prefix = prefix
        self.module, self.var_prefix = module, var_prefix
        self.calls = calls
        self.inputs = inputs
        inner = {n for c in calls for e in c.expansions for n in e.nodes}
        self.owner = {n: c for c in calls for e in c.expansions for n in e.nodes}
        node_set = set(nodes)
        self.position = {n: i for i, n in enumerate(self.g.nodes)}  # graph order, once
        self.direct = [n for n in self.g.nodes if n in node_set and n not in inner
                       and self.g.nodes[n].op not in ("input", "bind")]
        self.alias: dict[Ref, str] = {}
        for name, ref in values.items():
            self.alias.setdefault(ref, py_name(name))
        self.names: dict[Ref, str] = {} if names is None else names

    # ------------------------------------------------------------ naming
    def local(self, name: str) -> str:
        return name[len(self.prefix) + 1:] if self.prefix else name

    def var(self, ref: Ref) -> str:
        if ref in self.names:
            return self.names[ref]
        node = self.g.nodes[ref.node]
        if ref.node in self.owner:
            call = self.owner[ref.node]
            name = self.alias.get(ref)
            if name is None:
                i = call.outputs.index(ref) if ref in call.outputs else 0
                base = py_name(self.var_prefix + self.local(call.decl))
                name = base if len(call.outputs) == 1 else f"{base}_{i}"
        else:
            base = py_name(self.var_prefix + self.local(node.name))
            name = base if ref.port == "out" else f"{base}_{py_name(ref.port)}"
        self.names[ref] = name
        return name

    def attr(self, full: str) -> str:
        local = self.local(full)
        if not local:  # the copy of a repeated component is the module itself
            return self.module
        return f"{self.module}.{py_name(local)}"  # check refused names that need rewriting

    # ------------------------------------------------------------ __init__
    def init_lines(self) -> list[str]:
        lines: list[str] = []
        built: set[str] = set()
        decls = self.g.meta["decls"]
        direct_instances = []
        for n in self.direct:
            node = self.g.nodes[n]
            if node.op == "call" and node.target not in direct_instances:
                direct_instances.append(node.target)
        for name in self.g.instances:  # declared but never called
            if name.rpartition(".")[0] == self.prefix and name not in direct_instances and \
                    not any(name == c.decl or name.startswith(c.decl + ".") for c in self.calls):
                direct_instances.append(name)
        order = {name: i for i, name in enumerate(self.g.instances)}
        for name in sorted(direct_instances, key=order.get):
            inst = self.g.instances[name]
            if not registry.get(inst.component).has_weights:
                continue
            lines.extend(self.build_instance(inst, decls.get(name)))
            built.add(name)
        for call in self.calls:
            if call.decl in built:
                continue
            built.add(call.decl)
            lines.extend(self.build_call(call, decls.get(call.decl)))
        return lines

    def constructor(self, inst: Instance) -> str:
        node = next((n for n in self.g.nodes.values() if n.op == "call" and
                     n.target == inst.name), None)
        if node is None:
            return ""
        types = {port: self.g.type_of(ref) for port, ref in node.inputs}
        comp = registry.get(inst.component)
        if comp.inputs[0].variadic:
            types = {comp.inputs[0].name: types.get(f"{comp.inputs[0].name}0")}
        kwargs = {**derived_args(inst.component, types, inst.span,
                                 patch=getattr(inst.params, "patch", None)),
                  **inst.params.model_dump(exclude_defaults=True)}
        return call_text(module_expr(inst.component), [],
                         [(k, literal(v)) for k, v in kwargs.items()])

    def build_instance(self, inst: Instance, decl) -> list[str]:
        target = self.attr(inst.name)
        own_shared = decl is not None and decl.shared_target is not None
        if own_shared:
            return [f"{target} = {self.attr(decl.shared)}  # shared weights"]
        ctor = self.constructor(inst)
        if not ctor:
            return [f"# {escape.one_line(inst.name)} is declared but never called, so it is "
                    "not built"]
        if inst.lora:
            ctor = self.with_lora(ctor, inst)
        lines = [f"{target} = {ctor}"]
        if inst.frozen and inst.meta.get("frozen_by") == inst.name:
            lines.append(f"mm.freeze({target})")
        return lines

    @staticmethod
    def with_lora(ctor: str, inst: Instance) -> str:
        lo = inst.lora
        return call_text("mm.lora", [ctor], [("r", literal(lo.r)), ("alpha", literal(lo.alpha)),
                                             ("targets", literal(tuple(lo.targets)))])

    def build_call(self, call: BlockCall, decl) -> list[str]:
        target = self.attr(call.decl)
        if decl is not None and decl.shared_target is not None:
            return [f"{target} = {self.attr(decl.shared)}  # shared weights"]
        if call.block is not None:
            cls = self.gen.block_class(call)
            make = f"{cls}()"
        else:
            first = self.g.instances[call.expansions[0].prefix]
            make = self.constructor(first)
            if first.lora:
                make = self.with_lora(make, first)
        if call.times:
            line = f"{target} = nn.ModuleList([{make} for _ in range({int(call.times)})])"
            if len(line) > WIDTH:
                inner = make.replace("\n", "\n    ")
                line = (f"{target} = nn.ModuleList([\n    {inner}\n"
                        f"    for _ in range({int(call.times)})\n])")
        else:
            line = f"{target} = {make}"
        lines = [line]
        if decl is not None and decl.frozen and decl.frozen_by == decl.name:
            lines.append(f"mm.freeze({target})")
        return lines

    # ------------------------------------------------------------ forward / losses
    def items_in_order(self, wanted: set[str]) -> list:
        """Direct nodes and nested calls, in dependency order, limited to what `wanted` needs."""
        dag = nx.DiGraph()
        order: dict = {}
        for n in self.direct:
            if n in wanted:
                dag.add_node(("node", n))
                order[("node", n)] = self.position[n]
        for i, call in enumerate(self.calls):
            if any(n in wanted for e in call.expansions for n in e.nodes):
                key = ("call", i)
                dag.add_node(key)
                order[key] = self.position[call.expansions[0].nodes[0]]

        def item_of(ref: Ref):
            if ref.node in self.owner:
                return ("call", self.calls.index(self.owner[ref.node]))
            return ("node", ref.node) if ("node", ref.node) in dag else None

        for key in list(dag.nodes):
            refs = (self.g.nodes[key[1]].refs() if key[0] == "node" else
                    (ref for _, ref in self.calls[key[1]].inputs))
            for ref in refs:
                src = item_of(ref)
                if src is not None and src != key and src in dag:
                    dag.add_edge(src, key)
        return list(nx.lexicographical_topological_sort(dag, key=order.__getitem__))

    def statements(self, wanted: set[str]) -> list[str]:
        lines: list[str] = []
        for kind, key in self.items_in_order(wanted):
            if kind == "node":
                lines.extend(self.node_code(self.g.nodes[key]))
            elif all(ref in self.names or ref.node in wanted for _, ref in self.calls[key].inputs):
                lines.extend(self.call_code(self.calls[key]))
            else:
                lines.extend(self.inline_code(self.calls[key], wanted))
        return lines

    def inline_code(self, call: BlockCall, wanted: set[str]) -> list[str]:
        """A call of which only some streams are wanted, so not all its inputs exist here (an
        export part `x -> p` through a block with outputs for x and y): the wanted nodes of
        each copy, reaching into the call's layers (`self.stack[0].la(ex)`)."""
        module = self.attr(call.decl)
        var_prefix = f"{self.var_prefix}{self.local(call.decl)}_"
        lines: list[str] = []
        for i, e in enumerate(call.expansions):
            for bind in e.inputs:
                if bind in wanted:
                    [(_, bound)] = self.g.nodes[bind].inputs
                    self.names[Ref(bind)] = self.var(bound)
            copy = ScopeCode(self.gen, e.prefix, e.nodes, e.calls, e.values, e.inputs,
                             module=f"{module}[{i}]" if call.times else module,
                             names=self.names, var_prefix=var_prefix)
            lines.extend(copy.statements(wanted))
        return lines

    def comment(self, node_or_span, typ=None) -> str:
        """`  # <type>  <file>:<line>`, the spec-line mark that runtime errors are mapped by
        (`mmgraph.components.nn.generated`); both parts are sanitised single lines."""
        span = node_or_span.span if hasattr(node_or_span, "span") else node_or_span
        t = f"{escape.one_line(typ)}  " if typ is not None else ""
        return f"  # {t}{where(span)}"

    def node_code(self, node: Node) -> list[str]:
        out = self.var(Ref(node.name))
        if node.op == "call":
            inst = self.g.instances[node.target]
            comp = registry.get(inst.component)
            ports = comp.outputs(inst.params)
            targets = ", ".join(self.var(Ref(node.name, p)) for p in ports)
            args, kwargs = self.call_args(node, comp)
            if comp.has_weights:
                fn = self.attr(inst.name)
            else:
                fn = module_expr(comp.name)
                params = inst.params.model_dump(exclude_defaults=True)
                kwargs += [(k, literal(v)) for k, v in params.items()]
                if "training" in inspect.signature(torch_class(comp.name)).parameters:
                    kwargs.append(("training", "self.training"))
            if comp.name == "moe_aux":
                args += self.moe_modules(node)
            if comp.name in ("modality_ffn", "modality_attention"):
                kwargs.append(("segments", self.segments(node, inst)))
            text = call_text(fn, args, kwargs, lead=f"{targets} = ")
        elif node.op in ("add", "sub", "mul", "div"):
            sym = {"add": "+", "sub": "-", "mul": "*", "div": "/"}[node.op]
            if "scalar" in node.attrs:
                scalar = literal(node.attrs["scalar"])
                text = f"{out} = {self.var(node.inputs[0][1])} {sym} {scalar}"
            else:
                a, b = (self.var(r) for _, r in node.inputs)
                text = f"{out} = {a} {sym} {b}"
        elif node.op == "slice":
            lo, hi = node.attrs["start"], node.attrs["stop"]
            text = (f"{out} = {self.var(node.inputs[0][1])}[:, {'' if lo is None else int(lo)}:"
                    f"{'' if hi is None else int(hi)}]")
        elif node.op == "select":
            text = f"{out} = {self.var(node.inputs[0][1])}[:, {int(node.attrs['index'])}]"
        else:
            raise ValueError(f"no code for op {node.op!r}")
        return self.with_comment(text, node)

    def with_comment(self, text: str, node: Node) -> list[str]:
        lines = text.split("\n")
        lines[0] += self.comment(node, node.type)
        return lines

    def call_args(self, node: Node, comp) -> tuple[list[str], list[tuple[str, str]]]:
        args, kwargs = [], []
        variadic = next((p.name for p in comp.inputs if p.variadic), None)
        # the first input goes by position when it is required (vit(image)); optional ones
        # by name, as the spec writes them (lm(prefix=v, tokens=prompt))
        first = comp.inputs[0].name if not comp.inputs[0].optional else None
        for port, ref in node.inputs:
            if variadic and port.startswith(variadic) or port == first:
                args.append(self.var(ref))
            else:
                kwargs.append((port, self.var(ref)))
        return args, kwargs

    def moe_modules(self, node: Node) -> list[str]:
        """The submodules of this scope holding the MoE layers upstream of a moe_aux."""
        mods: list[str] = []
        for name in sorted(self.g.ancestors(node.name), key=self.position.__getitem__):
            up = self.g.nodes[name]
            if up.op == "call" and self.g.instances[up.target].component == "moe_ffn":
                top = f"{self.module}.{py_name(self.local(up.target).split('.')[0])}"
                if top not in mods:
                    mods.append(top)
        return mods

    def segments(self, node: Node, inst: Instance) -> str:
        t = self.g.type_of(node.inputs[0][1])
        x = self.var(node.inputs[0][1])
        modalities = list(inst.params.modalities)
        known = sum(int(n) for _, n in t.segments if n.is_Integer)
        parts = []
        for tag, n in t.segments:
            length = str(int(n)) if n.is_Integer else f"{x}.shape[1] - {known}"
            parts.append(f"({modalities.index(tag)}, {length})")
        return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"

    def call_code(self, call: BlockCall) -> list[str]:
        outs = [self.var(r) for r in call.outputs]
        target = self.attr(call.decl)
        ins = [self.var(ref) for _, ref in call.inputs]
        span = call.span
        lhs = ", ".join(outs)
        if not call.times:
            text = call_text(target, ins, [], lead=f"{lhs} = ")
            lines = text.split("\n")
            lines[0] += self.comment(span)
            return lines
        threaded = call.threaded or 1
        shared = ins[threaded:]
        lines = []
        if outs[:threaded] != ins[:threaded]:
            lines.append(f"{', '.join(outs[:threaded])} = {', '.join(ins[:threaded])}")
        if call.block is None:  # repeat of a component: keyword inputs after the first
            names = [p for p, _ in call.inputs]
            kwargs = [(names[i], v) for i, v in enumerate(ins) if i >= 1]
            inner = call_text("layer", outs[:1], kwargs, lead=f"{outs[0]} = ")
        else:
            inner = call_text("layer", outs[:threaded] + shared, [], lead=f"{lhs} = ")
        lines.append(f"for layer in {target}:" + self.comment(span))
        lines.extend("    " + line for line in inner.split("\n"))
        return lines


class ModelCodegen:
    def __init__(self, g: Graph, spec: str):
        self.g, self.spec = g, spec
        self.blocks: list[ClassSource] = []
        self.block_names: dict[str, str] = {}  # class source -> class name

    def block_class(self, call: BlockCall) -> str:
        """The class for a block call (made from its first expansion), shared when equal."""
        e = call.expansions[0]
        scope = ScopeCode(self, e.prefix, e.nodes, e.calls, e.values, e.inputs)
        params = [py_name(scope.local(b)) for b in e.inputs]
        init = scope.init_lines()
        wanted = set(e.nodes)
        body = scope.statements(wanted)
        outs = [scope.var(r) for r in e.outputs]
        body.append(f"return {', '.join(outs)}")
        block = self.g.meta["decls"].get(call.decl)
        block_name = call.block
        ast_block = block.block if block is not None else None
        at = f" ({where(ast_block.span)})" if ast_block else ""
        cls = ClassSource("", "nn.Module", f"block {block_name}{at}", [], init or ["pass"],
                          [Method(f"forward(self, {', '.join(params)})", "", body)])
        key = repr((cls.init, cls.methods[0].signature, cls.methods[0].body, block_name))
        if key in self.block_names:
            return self.block_names[key]
        name = camel(block_name)
        taken = set(self.block_names.values()) | {camel(self.g.name)}
        base, i = name, 2
        while name in taken:
            name, i = f"{base}{i}", i + 1
        cls.name = name
        self.block_names[key] = name
        self.blocks.append(cls)
        return name

    def model_class(self) -> ClassSource:
        g = self.g
        scope = ScopeCode(self, "", list(g.nodes), g.meta["calls"], g.meta.get("values", {}),
                          list(g.inputs))
        out_nodes = {r.node for r in g.outputs.values()}
        forward_nodes = g.upstream(out_nodes)
        loss_nodes = {t.value.node for t in g.losses.values()}
        loss_nodes = g.upstream(loss_nodes)
        init = scope.init_lines()
        fwd_inputs = [py_name(n) for n in g.inputs if n in forward_nodes]
        all_inputs = [py_name(n) for n in g.inputs]
        body = scope.statements(forward_nodes)
        body.append("return {" + ", ".join(f"{literal(k)}: {scope.var(r)}"
                                            for k, r in g.outputs.items()) + "}")
        methods = [Method(f"forward(self, {', '.join(fwd_inputs)})",
                          "The model's outputs by name.", body)]
        if g.losses:
            scope.names.clear()
            lbody = scope.statements(loss_nodes)
            terms = [f"{literal(k)}: {scope.var(t.value)}" for k, t in g.losses.items()]
            lbody.append("losses = {" + ", ".join(terms) + "}")
            lbody.append('losses["total"] = sum(self.loss_weights[name] * value '
                         "for name, value in losses.items())")
            lbody.append("return losses")
            methods.append(Method(f"losses(self, {', '.join(all_inputs)})",
                                  "Each declared loss, unweighted, and their weighted 'total'.",
                                  lbody))
        attrs = [
            f"spec = {literal(self.spec)}",
            dict_text("inputs", [(n, literal(str(g.nodes[n].type))) for n in g.inputs]),
            dict_text("outputs", [(k, literal(str(g.type_of(r)))) for k, r in g.outputs.items()]),
            dict_text("loss_weights", [(k, literal(t.weight)) for k, t in g.losses.items()]),
        ]
        return ClassSource(camel(g.name), "mm.GeneratedModel",
                           f"model {g.name} ({where(g.span)})",
                           attrs, init, methods)

    def render(self) -> Generated:
        model = self.model_class()  # builds the block classes it uses on the way
        from mmgraph.version import __version__

        classes = [_indent_continuations(c) for c in self.blocks + [model]]
        source = templates().get_template("module.py.j2").render(
            version=__version__, spec=self.spec, model=self.g.name, classes=classes)
        return Generated(source, model.name, f"mmgraph_generated_{py_name(self.g.name)}")


@functools.cache
def templates() -> jinja2.Environment:
    """The module templates, with `mmgraph.escape`'s filters: the only way they print text."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("mmgraph.backends.torch", "templates"),
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined)
    env.filters.update(escape.TEMPLATE_FILTERS)
    return env


def dict_text(name: str, items: list[tuple[str, str]]) -> str:
    """`name = {"k": v, ...}`, one item per line when too long."""
    parts = [f"{literal(k)}: {v}" for k, v in items]
    one = f"{name} = {{{', '.join(parts)}}}"
    if len(one) <= WIDTH:
        return one
    return f"{name} = {{\n" + "".join(f"    {p},\n" for p in parts) + "}"


def _indent_continuations(cls: ClassSource) -> ClassSource:
    """Template lines are single lines; multi-line statements keep their inner indent."""
    def fix(lines, depth):
        out = []
        for line in lines:
            first, *rest = line.split("\n")
            out.append(first + "".join("\n" + " " * depth + r if r else "\n" for r in rest))
        return out

    cls.attributes = fix(cls.attributes, 4)
    cls.init = fix(cls.init, 8)
    for m in cls.methods:
        m.body = fix(m.body, 8)
    return cls


def generate(g: Graph, spec: str) -> Generated:
    """The PyTorch source of a checked graph."""
    return ModelCodegen(g, spec).render()


def generate_part(g: Graph, spec: str, name: str, inputs: list[str], outputs: list[str],
                  nodes: list[str]) -> Generated:
    """A module computing one export part from its inputs: it borrows the model's layers
    (`mm.ExportPart`) and runs only the part's own nodes."""
    gen = ModelCodegen(g, spec)
    scope = ScopeCode(gen, "", list(g.nodes), g.meta["calls"], g.meta.get("values", {}),
                      list(g.inputs))
    values = {**g.meta.get("values", {}), **g.outputs}
    for value in inputs:
        scope.names[values[value]] = py_name(value)
    body = scope.statements(set(nodes))
    body.append("return {" + ", ".join(f"{literal(o)}: {scope.var(values[o])}" for o in outputs)
                + "}")
    cls = ClassSource(f"{camel(g.name)}{camel(name)}Part", "mm.ExportPart",
                      f"part {name} of model {g.name}: {', '.join(inputs)} -> "
                      f"{', '.join(outputs)}", [], [],
                      [Method(f"forward(self, {', '.join(py_name(i) for i in inputs)})", "",
                              body)])
    from mmgraph.version import __version__

    source = templates().get_template("part.py.j2").render(
        version=__version__, spec=spec, model=g.name, part=name,
        classes=[_indent_continuations(cls)])
    return Generated(source, cls.name, f"mmgraph_part_{py_name(g.name)}_{py_name(name)}")
