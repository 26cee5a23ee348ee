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
import re
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import networkx as nx

from mmgraph import escape
from mmgraph.components import registry
from mmgraph.ir import lora_modalities
from mmgraph.ir import types as T
from mmgraph.ir.graph import BlockCall, Expansion, Graph, Instance, Node, Ref
from mmgraph.ir.reserved import CODEGEN_NAMES

# names the generated code itself uses (`sum` in losses, `float("inf")` literals); keywords
# are escape.py_name's own business
RESERVED = CODEGEN_NAMES  # names the generated source uses itself
WIDTH = 96  # wrap generated lines longer than this
FACES = "mmgraph.components.nn"  # the torch faces' package, which generated code imports as `mm`


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


def face_expr(comp: registry.Component) -> str:
    """How generated code names a component's torch face: by its path in the faces' package
    (`mm.connectors.MLP`, `mm.ops.l2norm`), else through the registry (`mm.face("name")`,
    a plugin's, which must be loaded when the generated module runs)."""
    face = comp.torch
    path = face if isinstance(face, str) else \
        f"{getattr(face, '__module__', '')}:{getattr(face, '__qualname__', '')}"
    module, _, attribute = path.partition(":")
    package, _, submodule = module.rpartition(".")
    if package == FACES and attribute.isidentifier():
        return f"mm.{submodule}.{attribute}"
    return f"mm.face({literal(comp.name)})"


def input_types(g: Graph, node: Node, comp: registry.Component) -> dict:
    """The types of a call's inputs by port, as the component's type rule saw them (a
    variadic port's as a list)."""
    x: dict = {}
    variadic = next((p.name for p in comp.inputs if p.variadic), None)
    for port, ref in node.inputs:
        if variadic and port.startswith(variadic):
            x.setdefault(variadic, []).append(g.type_of(ref))
        else:
            x[port] = g.type_of(ref)
    return x


def copy_position(call: BlockCall, ref: Ref) -> tuple[int, int] | None:
    """(copy, output) of a repeat's earlier copy that `ref` is an output of, or None."""
    if not call.times or ref in call.outputs:
        return None
    for i, e in enumerate(call.expansions):
        if ref in e.outputs:
            return i, e.outputs.index(ref)
    return None


def layout_of(g: Graph, node: Node):
    """The `segments` argument of a modality-routed layer's call (the token layout of its
    input: (modality index, length) runs), or None for any other node. It is per call: a
    block's copies, and the calls of one block layer, may see different layouts."""
    if node.op != "call":
        return None
    inst = g.instances[node.target]
    comp = registry.get(inst.component)
    return comp.torch_call_args(inst.params, input_types(g, node, comp), node, g).get("segments")


def routed_calls(g: Graph, e: Expansion) -> list[tuple[tuple[str, int], str]]:
    """(key, node) of each modality-routed call inside a block copy, nested blocks' too. The
    key, (layer name within the copy, how many calls of it came before), is the same in every
    copy and every call of the block, so a call site finds the parameter it feeds."""
    out, seen = [], {}
    for n in e.nodes:
        node = g.nodes[n]
        if layout_of(g, node) is None:
            continue
        target = node.target
        local = target[len(e.prefix) + 1:] if target.startswith(e.prefix + ".") else target
        seen[local] = seen.get(local, -1) + 1
        out.append(((local, seen[local]), n))
    return out


def layout_params(g: Graph, e: Expansion) -> list[tuple[str, str]]:
    """(parameter, node): the keyword parameters of a block class's forward that carry the
    layouts of its routed layers (`skill_segments`), for the copy `e`. Every copy and call of
    the block names them alike: the names come from the layers' names, and one taken by a
    value is lengthened by `_` (which the expander's `_1` suffixes never end with)."""
    def local(name: str) -> str:
        return name[len(e.prefix) + 1:] if name.startswith(e.prefix + ".") else name

    taken = {py_name(local(n)) for n in e.nodes} | {py_name(v) for v in e.values} | \
        {py_name(local(c.decl)) for c in e.calls}
    out = []
    for (layer, i), n in routed_calls(g, e):
        name = py_name(f"{layer.replace('.', '_')}{'' if i == 0 else f'_{i + 1}'}_segments")
        while name in taken:
            name += "_"
        taken.add(name)
        out.append((name, n))
    return out


def face_args(inst: Instance, x: dict) -> list[tuple[str, str]]:
    """The face's keyword arguments (`torch_args`) as literals: every parameter, and the
    sizes its weights need from the input types (which `infer` checked are numbers)."""
    ctx = registry.RuleContext(inst.name, {}, registry.spec_folder(inst.span))
    args = registry.get(inst.component).torch_args(inst.params, x, ctx)
    return [(k, literal(v)) for k, v in args.items()]


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
        # node -> the forward parameter holding its layout, in a block class (else literals)
        self.layouts: dict[str, str] = {}

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
                tap = copy_position(call, ref)
                if tap is not None:  # `y.back2`: one repetition's output, kept by the loop
                    base, i = f"{base}_copy{tap[0]}", tap[1]
                name = base if len(call.outputs) == 1 else f"{base}_{i}"
                if tap is not None:
                    name = self.unused_name(name)
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
        decls = self.g.decls
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
        comp = registry.get(inst.component)
        return call_text(face_expr(comp), [],
                         face_args(inst, input_types(self.g, node, comp)))

    def build_instance(self, inst: Instance, decl) -> list[str]:
        target = self.attr(inst.name)
        own_shared = decl is not None and decl.shared is not None
        if own_shared:
            return [f"{target} = {self.attr(decl.shared)}  # shared weights"]
        ctor = self.constructor(inst)
        if not ctor:
            return [f"# {escape.one_line(inst.name)} is declared but never called, so it is "
                    "not built"]
        if inst.lora:
            ctor = self.with_lora(ctor, inst)
        lines = [f"{target} = {ctor}"]
        if inst.frozen and inst.frozen_by == inst.name:
            lines.append(f"mm.freeze({target})")
        return lines

    def with_lora(self, ctor: str, inst: Instance) -> str:
        lo = inst.lora
        layout = self.lora_layout(inst)
        kwargs = [("r", literal(lo.r)), ("alpha", literal(lo.alpha)),
                  ("targets", literal(tuple(lo.targets)))]
        if layout is not None:  # per-modality adapters: which tokens they act on
            kwargs += [("modalities", literal(tuple(lo.modalities))),
                       ("segments", literal(tuple(layout)))]
        return call_text("mm.lora", [ctor], kwargs)

    def lora_layout(self, inst: Instance):
        """The token layout a per-modality LoRA needs, from the layer's first call's input;
        None when the adapters act on every token (no modalities, or only one kind of
        token, which they adapt: the type rule refused the other cases)."""
        if inst.lora is None or not inst.lora.modalities:
            return None
        node = next((n for n in self.g.nodes.values() if n.op == "call" and
                     n.target == inst.name and n.inputs), None)
        if node is None:
            return None
        runs = lora_modalities.layout(self.g.type_of(node.inputs[0][1]))
        return runs if runs is not None and len(runs) > 1 else None

    def build_call(self, call: BlockCall, decl) -> list[str]:
        target = self.attr(call.decl)
        if decl is not None and decl.shared is not None:
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
        """Code for the `wanted` nodes. Calls already computed (their outputs have names) are
        not repeated, so a second call can add what the losses need to the outputs' code."""
        lines: list[str] = []
        for kind, key in self.items_in_order(wanted):
            if kind == "node":
                lines.extend(self.node_code(self.g.nodes[key]))
                continue
            call = self.calls[key]
            done = [ref in self.names for ref in call.outputs]
            if all(done):
                continue
            if not any(done) and all(ref in self.names or ref.node in wanted
                                     for _, ref in call.inputs):
                lines.extend(self.call_code(call))
            else:
                lines.extend(self.inline_code(call, wanted))
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
            x = input_types(self.g, node, comp)
            if comp.has_weights:
                fn = self.attr(inst.name)
            else:  # a function: the declaration's arguments come with every call
                fn = face_expr(comp)
                kwargs += face_args(inst, x)
            extra = comp.torch_call_args(inst.params, x, node, self.g)
            kwargs += [(k, self.layouts[node.name] if k == "segments" and node.name in
                        self.layouts else self.call_value(v)) for k, v in extra.items()]
            text = call_text(fn, args, kwargs, lead=f"{targets} = ")
        elif node.op in ("add", "sub", "mul", "div"):
            sym = {"add": "+", "sub": "-", "mul": "*", "div": "/"}[node.op]
            if "scalar" in node.attrs:
                scalar = literal(node.attrs["scalar"])
                text = f"{out} = {self.var(node.inputs[0][1])} {sym} {scalar}"
            else:
                a, b = (self.var(r) for _, r in node.inputs)
                a, b = self.broadcast(node, a, b)
                text = f"{out} = {a} {sym} {b}"
        elif node.op == "slice":
            lo, hi = node.attrs["start"], node.attrs["stop"]
            leads = dict(self.g.decoding.slices) if self.g.decoding is not None else {}
            if node.name in leads:  # by absolute position, so a generation step can run it
                text = call_text("mm.cache.window", [self.var(node.inputs[0][1]),
                                                     literal(lo), literal(hi)],
                                 [("before", literal(leads[node.name]))], lead=f"{out} = ")
            else:
                text = (f"{out} = {self.var(node.inputs[0][1])}"
                        f"[:, {'' if lo is None else int(lo)}:{'' if hi is None else int(hi)}]")
        elif node.op == "select":
            text = f"{out} = {self.var(node.inputs[0][1])}[:, {int(node.attrs['index'])}]"
        else:
            raise ValueError(f"no code for op {node.op!r}")
        return self.with_comment(text, node)

    def unused_name(self, name: str) -> str:
        """`name`, or `name_1`, `name_2`...: a variable no value of the graph is called."""
        taken = {py_name(self.var_prefix + self.local(n)) for n in self.g.nodes} | \
            set(self.alias.values()) | set(self.names.values())
        out, k = name, 0
        while out in taken:
            k += 1
            out = f"{name}_{k}"
        return out

    def broadcast(self, node: Node, a: str, b: str) -> tuple[str, str]:
        """The smaller operand of a broadcasting `+ - * /` with its size-1 axes inserted, as
        the type rule (`types.broadcast_plan`) decided: `v[:, None]` for a Vec over a Seq's tokens,
        `g[:, None, None]` for a per-example gate Tensor[B] on a Seq."""
        ta, tb = (self.g.type_of(r) for _, r in node.inputs)
        if ta.rank == tb.rank:
            return a, b
        which, how = T.broadcast_plan(ta, tb)
        small, big = (ta, tb) if which == 0 else (tb, ta)
        if how == "tokens":
            index = ":, None"
        elif how == "trailing":
            index = ", ".join([":"] * small.rank + ["None"] * (big.rank - small.rank))
        else:
            return a, b
        return (f"{a}[{index}]", b) if which == 0 else (a, f"{b}[{index}]")

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

    def call_value(self, value) -> str:
        """A `torch_call_args` value as code: the modules of some layers (the top-level
        submodules of this scope holding them), the training flag, or a literal."""
        if isinstance(value, registry.Layers):
            mods = list(dict.fromkeys(f"{self.module}.{py_name(self.local(n).split('.')[0])}"
                                      for n in value.names))
            return "(" + ", ".join(mods) + ("," if len(mods) == 1 else "") + ")"
        if isinstance(value, registry.Training):
            return "self.training"
        return literal(value)

    def layout_kwargs(self, call: BlockCall, e: Expansion) -> list[tuple[str, str]]:
        """The layouts one copy `e` of a call feeds its routed layers, as keyword arguments:
        literals worked out from this copy's own types, or, inside a block class, the
        parameters the block's caller fed it. A repeated routed component takes its own
        `segments`."""
        if call.block is None:
            params = [("segments", n) for _, n in routed_calls(self.g, e)]
        else:
            params = layout_params(self.g, e)
        return [(name, self.layouts[n] if n in self.layouts else
                 literal(layout_of(self.g, self.g.nodes[n]))) for name, n in params]

    def call_code(self, call: BlockCall) -> list[str]:
        outs = [self.var(r) for r in call.outputs]
        target = self.attr(call.decl)
        ins = [self.var(ref) for _, ref in call.inputs]
        span = call.span
        lhs = ", ".join(outs)
        if not call.times:
            text = call_text(target, ins, self.layout_kwargs(call, call.expansions[0]),
                             lead=f"{lhs} = ")
            lines = text.split("\n")
            lines[0] += self.comment(span)
            return lines
        threaded = call.threaded or 1
        shared = ins[threaded:]
        lines = []
        if outs[:threaded] != ins[:threaded]:
            lines.append(f"{', '.join(outs[:threaded])} = {', '.join(ins[:threaded])}")
        # the copies' layouts: one keyword each, or per copy when the copies differ
        layouts = [self.layout_kwargs(call, e) for e in call.expansions]
        loop = f"for layer in {target}:"
        if any(kw != layouts[0] for kw in layouts):
            copy = self.unused_name("copy")
            loop = f"for {copy}, layer in enumerate({target}):"
            layouts[0] = [(k, "(" + ", ".join(kw[j][1] for kw in layouts) + f")[{copy}]")
                          for j, (k, _) in enumerate(layouts[0])]
        if call.block is None:  # repeat of a component: keyword inputs after the first
            names = [p for p, _ in call.inputs]
            kwargs = [(names[i], v) for i, v in enumerate(ins) if i >= 1]
            inner = call_text("layer", outs[:1], kwargs + layouts[0], lead=f"{outs[0]} = ")
        else:
            inner = call_text("layer", outs[:threaded] + shared, layouts[0], lead=f"{lhs} = ")
        lines.append(loop + self.comment(span))
        lines.extend("    " + line for line in inner.split("\n"))
        inside = {n for e in call.expansions for n in e.nodes}  # the next copy's inputs
        used = {r for n in self.g.nodes.values() if n.name not in inside for r in n.refs()} | \
            set(self.g.outputs.values()) | {t.value for t in self.g.losses.values()}
        for i, e in enumerate(call.expansions[:-1]):  # the copies a spec taps (`y.back2`)
            for j, ref in enumerate(e.outputs):
                if ref in used:
                    lines.append(f"    if layer is {target}[{i}]:")
                    lines.append(f"        {self.var(ref)} = {outs[j]}")
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
        routed = layout_params(self.g, e)  # each call feeds its own layouts (see call_code)
        scope.layouts = {n: name for name, n in routed}
        if routed:
            params += ["*"] + [name for name, _ in routed]
        init = scope.init_lines()
        wanted = set(e.nodes)
        body = scope.statements(wanted)
        outs = [scope.var(r) for r in e.outputs]
        body.append(f"return {', '.join(outs)}")
        decl = self.g.decls.get(call.decl)
        block_name = call.block
        at = f" ({where(decl.block_span)})" if decl is not None else ""
        cls = ClassSource("", "nn.Module", f"block {block_name}{at}", [], init or ["pass"],
                          [Method(call_text("forward", ["self"] + params, [])
                                  .replace("\n", "\n    "), "", body)])
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
        scope = ScopeCode(self, "", list(g.nodes), g.calls, g.values,
                          list(g.inputs))
        out_nodes = g.upstream({r.node for r in g.outputs.values()})
        init = scope.init_lines()
        forward = self.forward_method(scope, out_nodes)
        attrs = [
            f"spec = {literal(self.spec)}",
            items_text("inputs", [self.declared_input(n, loss_only=n not in out_nodes)
                                  for n in g.inputs]),
            dict_text("outputs", [(k, literal(str(g.type_of(r)))) for k, r in g.outputs.items()]),
            dict_text("loss_weights", [(k, literal(t.weight)) for k, t in g.losses.items()]),
        ]
        methods = [forward]
        if g.decoding is not None:
            plan = g.decoding
            attrs.append(dict_text("decoding", [
                ("tokens", literal(plan.tokens)), ("logits", literal(plan.logits)),
                ("vocab", literal(plan.vocab)), ("context", literal(list(plan.context_inputs))),
                ("max_len", literal(plan.max_len))]))
            methods += self.generation_methods(plan)
        elif g.decoding_problem is not None:
            why = f"{g.decoding_problem.message} ({where(g.decoding_problem.span)})"
            attrs.append(f"cannot_generate = {literal(why)}")
        return ClassSource(camel(g.name), "mm.GeneratedModel",
                           f"model {g.name} ({where(g.span)})",
                           attrs, init, methods)

    def generation_methods(self, plan) -> list[Method]:
        """`generation_context` (what a request computes once: the values the steps read) and
        `generation_step` (the logits of new tokens; attention layers use the ambient KV
        cache, see mm.cache), which `generate` and the prefill/decode exports run."""
        g = self.g
        frontier = [Ref(n, p) for n, p in plan.frontier]
        scope = ScopeCode(self, "", list(g.nodes), g.calls, g.values, list(g.inputs))
        body = scope.statements(set(plan.context_nodes))
        names = [scope.var(r) for r in frontier]
        body.append(f"return ({''.join(n + ', ' for n in names).rstrip()})")
        context = Method(
            call_text("generation_context", ["self"] + [py_name(i) for i in plan.context_inputs],
                      []).replace("\n", "\n    "),
            "The values every generation step reads, computed once per request.", body)
        step_scope = ScopeCode(self, "", list(g.nodes), g.calls, g.values, list(g.inputs))
        for ref, name in zip(frontier, names):
            step_scope.names[ref] = name
        body = step_scope.statements(set(plan.step_nodes))
        body.append(f"return {step_scope.var(g.outputs[plan.logits])}")
        step = Method(
            call_text("generation_step", ["self"] + names + [py_name(plan.tokens)],
                      []).replace("\n", "\n    "),
            "Logits of the new tokens; run inside mm.cache.decoding(cache).", body)
        return [context, step]

    def forward_method(self, scope: ScopeCode, out_nodes: set[str]) -> Method:
        """One body, nanoGPT-style: check the inputs, compute the outputs, and only when
        asked (`return_losses=True`) go on to what the losses need. An input only the
        losses read defaults to None, so inference goes without it."""
        g = self.g
        loss_only = [n for n in g.inputs if n not in out_nodes]
        ordered = [n for n in g.inputs if n in out_nodes] + loss_only
        params = [py_name(n) + ("=None" if n in loss_only else "") for n in ordered]
        if g.losses:
            params += ["*", "return_losses=False"]
        signature = call_text("forward", ["self"] + params, []).replace("\n", "\n    ")
        check = dict_text("", [(n, py_name(n)) for n in ordered], lead="self.check_inputs(")
        body = [check + (", return_losses)" if g.losses else ")")]
        body += scope.statements(out_nodes)
        outputs = [(k, scope.var(r)) for k, r in g.outputs.items()]
        if not g.losses:
            body.append(dict_text("", outputs, lead="return "))
            return Method(signature, "The model's outputs by name.", body)
        body.append(dict_text("outputs", outputs))
        body.append("if not return_losses:\n    return outputs")
        body += scope.statements(g.upstream({t.value.node for t in g.losses.values()}) -
                                 out_nodes)
        body.append(dict_text("losses", [(k, scope.var(t.value)) for k, t in g.losses.items()]))
        body.append('losses["total"] = sum(self.loss_weights[name] * value '
                    "for name, value in losses.items())")
        body.append("return outputs, losses")
        return Method(signature, "Outputs by name; with return_losses, also each loss and their "
                                 "weighted 'total'.", body)

    def declared_input(self, name: str, loss_only: bool) -> str:
        """`"name": mm.DeclaredInput(...)`: what `forward`'s boundary check compares with."""
        node = self.g.nodes[name]
        dims = tuple(int(d) if d.is_Integer else T.format_dim(d) for d in node.type.dims)
        return call_text("mm.DeclaredInput",
                         [literal(str(node.type)), literal(dims), literal(node.type.dtype),
                          literal(where(node.span))],
                         [("loss_only", "True")] if loss_only else [], lead=f"{literal(name)}: ")

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


def items_text(name: str, items: list[str]) -> str:
    """`name = {` and one `"key": value` a line (each as `call_text` wrapped it), `}`."""
    lines = "".join(f"    {line}\n" for item in items for line in f"{item},".split("\n"))
    return f"{name} = {{\n{lines}}}"


def dict_text(name: str, items: list[tuple[str, str]], lead: str = "{name} = ") -> str:
    """`name = {"k": v, ...}` (or another `lead`), one item per line when too long."""
    lead = lead.format(name=name)
    parts = [f"{literal(k)}: {v}" for k, v in items]
    one = f"{lead}{{{', '.join(parts)}}}"
    if len(one) <= WIDTH:
        return one
    return f"{lead}{{\n" + "".join(f"    {p},\n" for p in parts) + "}"


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
    (`mm.GeneratedPart`) and runs only the part's own nodes."""
    gen = ModelCodegen(g, spec)
    scope = ScopeCode(gen, "", list(g.nodes), g.calls, g.values,
                      list(g.inputs))
    values = {**g.values, **g.outputs}
    for value in inputs:
        scope.names[values[value]] = py_name(value)
    body = scope.statements(set(nodes))
    body.append("return {" + ", ".join(f"{literal(o)}: {scope.var(values[o])}" for o in outputs)
                + "}")
    cls = ClassSource(f"{camel(g.name)}{camel(name)}Part", "mm.GeneratedPart",
                      f"part {name} of model {g.name}: {', '.join(inputs)} -> "
                      f"{', '.join(outputs)}", [], [],
                      [Method(f"forward(self, {', '.join(py_name(i) for i in inputs)})", "",
                              body)])
    from mmgraph.version import __version__

    source = templates().get_template("part.py.j2").render(
        version=__version__, spec=spec, model=g.name, part=name,
        classes=[_indent_continuations(cls)])
    return Generated(source, cls.name, f"mmgraph_part_{py_name(g.name)}_{py_name(name)}")
