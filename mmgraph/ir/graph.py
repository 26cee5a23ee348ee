"""The typed graph IR: instances (things with weights) and nodes (values computed from them).

A `Graph` is one model with blocks and repeats already expanded. It keeps two tables:

- `instances`: every module the model owns (declared with a role, or anonymous for an inline
  call such as `layer_norm(x)`), with its component, validated parameters and modifiers;
- `nodes`: the values, in dependency order. A node is an `input`, a `call` of an instance, a
  block input's `bind`, or elementwise/slicing arithmetic. Each node has typed output ports
  (`out`, plus extras such as a MoE layer's `aux`), so an edge is a `Ref` to one port of one
  node.

and the structure the expansion flattened, which backends build modules from: `decls` (the
declared layers), `calls` (each block or repeat call with the copies it expanded to),
`values` (the model's names for values), and the `train` and `export` plans.

networkx holds the topology (toposort, cycles, reachability); the stable text form from
`dump()` is both the debugging view and what golden tests compare:

    decoder lm = repeat(xattn_group, times=8)                          # flamingo.mmg:46
    %img : Vec<image>[B, 512] = call img_proj(%vision)                 # clip.mmg:17
    repeat lm = xattn_group(x=%embed, media=%media) x8, threading x -> %lm.7.lm_layers.3
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from mmgraph.ir.types import TensorType
from mmgraph.lang.span import Span


def cycle_edges(g: nx.DiGraph) -> list[tuple] | None:
    """The edges of one cycle of `g`, or None, in time linear in its size.

    `nx.find_cycle(g)` without a source restarts its search from every node, which is
    quadratic on a long chain; here the search starts inside a strongly connected component
    that holds a cycle, and only when there is one."""
    if nx.is_directed_acyclic_graph(g):
        return None
    cyclic: set = set()
    for component in nx.strongly_connected_components(g):
        node = next(iter(component))
        if len(component) > 1 or g.has_edge(node, node):
            cyclic |= component
    sub = g.subgraph(cyclic)
    source = next(n for n in g if n in cyclic)  # the first in spec order, as before
    return list(nx.find_cycle(sub, source=source))


@dataclass(frozen=True)
class Ref:
    """One output port of one node."""

    node: str
    port: str = "out"

    def __str__(self) -> str:
        return f"%{self.node}" if self.port == "out" else f"%{self.node}.{self.port}"


@dataclass
class Lora:
    r: int
    alpha: float
    targets: tuple[str, ...]
    dropout: float = 0.0
    # Arcana's per-modality LoRA: the adapters act on these modalities' tokens only (empty:
    # on every token); `modalities_span` is where the spec says so, for diagnostics
    modalities: tuple[str, ...] = ()
    modalities_span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Pretrained:
    """Weights for one declaration from a local Hugging Face folder: `pretrained(PATH,
    part="vision_model")`. `family` names the data table that maps the checkpoint's config keys
    and tensor names onto the component's (clip_vision, clip_text, llama, vit, bert, ...)."""

    path: str  # the folder, absolute (relative paths are resolved against the spec's folder)
    part: str | None  # the checkpoint's submodule prefix; None: the whole checkpoint
    family: str
    span: Span


@dataclass
class Instance:
    """A module of the model: a component with bound parameters, or a weightless op."""

    name: str  # dotted for instances inside blocks: `lm.3.attn`
    role: str  # encoder | connector | fusion | decoder | head | layer | op | loss
    component: str
    params: Any  # the component's validated pydantic Params
    span: Span
    frozen: bool = False
    lora: Lora | None = None
    shared: str | None = None  # name of the instance whose weights this one ties to
    anonymous: bool = False
    block: str | None = None  # the block definition this instance came from, if any
    frozen_by: str | None = None  # the declaration whose `frozen` froze it (itself, or a block)
    param_spans: dict[str, Span] = field(default_factory=dict)  # each given parameter's value
    ema_of: str | None = None  # `ema_of(x, decay=d)`: a frozen copy of x the trainer averages
    ema_decay: float | None = None
    pretrained: Pretrained | None = None  # weights from a local Hugging Face folder

    @property
    def trainable(self) -> bool:
        return not self.frozen

    def params_text(self, *, defaults: bool = False) -> str:
        """`k=v, ...` of the parameters; only those that differ from the defaults unless asked."""
        return ", ".join(f"{k}={v}" for k, v in self.param_items(defaults=defaults))

    def param_items(self, *, defaults: bool = False) -> list[tuple[str, str]]:
        """(name, value as text) of the parameters, as `params_text` writes them."""
        data = self.params.model_dump(exclude_defaults=not defaults) \
            if hasattr(self.params, "model_dump") else {}
        return [(k, _fmt(v)) for k, v in data.items()]


@dataclass
class Node:
    name: str
    op: str  # input | call | bind | add | sub | mul | div | slice | select
    inputs: list[tuple[str, Ref]]  # (port name of the callee, value) in call order
    span: Span
    target: str | None = None  # the instance for `call`, the input name for `input`
    attrs: dict = field(default_factory=dict)
    types: dict[str, TensorType] = field(default_factory=dict)  # output port -> type
    meta: dict = field(default_factory=dict)  # expand's notes for infer (spans, bindings)

    @property
    def type(self) -> TensorType | None:
        return self.types.get("out")

    def refs(self) -> Iterator[Ref]:
        for _, ref in self.inputs:
            yield ref


@dataclass
class Expansion:
    """One inlined copy of a block (or one repetition of a repeated component)."""

    prefix: str  # the instance prefix: `lm.3`
    nodes: list[str] = field(default_factory=list)  # every node made inside, nested too
    inputs: list[str] = field(default_factory=list)  # its `bind` nodes, in the block's order
    outputs: list[Ref] = field(default_factory=list)
    values: dict[str, Ref] = field(default_factory=dict)  # names given inside the block
    calls: list[BlockCall] = field(default_factory=list)  # block/repeat calls made inside


@dataclass
class BlockCall:
    """A call of a block or repeat layer: what backends turn into one submodule call."""

    decl: str  # the declared layer's full name
    block: str | None  # the block's name, or None for a repeated component
    component: str | None
    times: int  # 0: a plain block call
    inputs: list[tuple[str, Ref]]  # (port, value outside) as bound for the first copy
    threaded: int  # how many leading inputs each repetition feeds to the next
    outputs: list[Ref]
    span: Span
    expansions: list[Expansion] = field(default_factory=list)

    def text(self) -> str:
        """`repeat lm = xattn_group(x=%embed) x8, threading x -> %lm.7.out`"""
        args = ", ".join(f"{port}={ref}" for port, ref in self.inputs)
        kind = "repeat" if self.times else "block"
        head = f"{kind} {self.decl} = {self.block or self.component}({args})"
        if self.times:
            head += f" x{self.times}"
            if self.threaded:
                head += ", threading " + ", ".join(p for p, _ in self.inputs[:self.threaded])
        return f"{head} -> {', '.join(map(str, self.outputs))}"


@dataclass
class Declaration:
    """A declared layer (`decoder lm: repeat(block(...), times=8)`): one component, a block,
    or a repeat of either. Backends build each as one module attribute."""

    name: str  # full dotted name: `lm.0.lm_layers` inside the block copy `lm.0`
    role: str
    span: Span
    component: str | None = None  # the component, for a component or a repeat of one
    block: str | None = None  # the block's name, for a block or a repeat of one
    block_span: Span | None = None  # where that block is defined
    times: int = 0  # > 0 for a repeat
    frozen: bool = False
    frozen_by: str | None = None  # the declaration whose `frozen` froze it (itself, or a block)
    shared: str | None = None  # the layer its own `shared(x)` ties its weights to

    def text(self) -> str:
        """`decoder lm = repeat(xattn_group, times=8) frozen`"""
        what = self.block or self.component
        rhs = f"repeat({what}, times={self.times})" if self.times else f"{what}(...)"
        mods = (" frozen" if self.frozen else "") + \
            (f" shared({self.shared})" if self.shared else "")
        return f"{self.role} {self.name} = {rhs}{mods}"


@dataclass
class LossTerm:
    name: str
    value: Ref
    weight: float
    span: Span


@dataclass
class Stage:
    name: str
    settings: dict[str, Any]
    trainable: list[str]  # instance names, resolved from the stage's `trainable` list
    span: Span


@dataclass
class TrainPlan:
    settings: dict[str, Any]
    stages: list[Stage]
    span: Span | None = None


@dataclass
class DimRange:
    name: str
    min: int
    max: int
    opt: int
    span: Span


@dataclass
class ExportPart:
    name: str
    inputs: list[str]  # value names
    outputs: list[str]
    nodes: list[str]  # the nodes the part computes, in order
    span: Span


@dataclass(frozen=True)
class DecodePlan:
    """How the model generates text one token at a time (see mmgraph/ir/passes/decoding.py)."""

    tokens: str  # the Tokens input that grows by one token per step
    logits: str  # the output read for the next token: Logits[B, ... + T, V]
    vocab: int  # the logits' last dim
    context_inputs: tuple[str, ...]  # the other inputs the logits need (image, audio...)
    frontier: tuple[tuple[str, str], ...]  # (node, port) of context values the step reads
    context_nodes: tuple[str, ...]  # nodes computing the frontier from the context inputs
    step_nodes: tuple[str, ...]  # nodes computing the logits from the frontier and tokens
    max_len: int | None  # the most positions a decoder of the step takes (its max_len)
    # concat nodes of the step and how many of their leading inputs are context (read on the
    # first step only); slice nodes of the step and the positions their input has before the
    # tokens (a one-token step slices by absolute position)
    joins: tuple[tuple[str, int], ...] = ()
    slices: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class DecodeProblem:
    """Why the model cannot generate, and where."""

    message: str
    span: Span


@dataclass
class ExportPlan:
    dims: dict[str, DimRange]
    parts: list[ExportPart]
    settings: dict[str, Any]
    span: Span | None = None


class Graph:
    """One model, expanded and (after the passes) fully typed."""

    def __init__(self, name: str, span: Span):
        self.name = name
        self.span = span
        self.consts: dict[str, Any] = {}
        self.instances: dict[str, Instance] = {}
        self.nodes: dict[str, Node] = {}
        self.inputs: list[str] = []  # node names of the inputs, in spec order
        self.outputs: dict[str, Ref] = {}
        self.output_spans: dict[str, Span] = {}
        self.losses: dict[str, LossTerm] = {}
        self.train: TrainPlan | None = None
        # the layers with weights that train when no stage names its own (set by trainability)
        self.trainable_by_default: list[str] = []
        self.export: ExportPlan | None = None
        self.decoding: DecodePlan | None = None  # None: see decoding_problem
        self.decoding_problem: DecodeProblem | None = None
        # the model's own block and repeat calls; those made inside a copy hang off it
        self.calls: list[BlockCall] = []
        self.decls: dict[str, Declaration] = {}  # every declared layer, by full name
        self.values: dict[str, Ref] = {}  # the model's named values (inputs, assignments)

    # ------------------------------------------------------------ building
    def add_node(self, node: Node) -> Node:
        if node.name in self.nodes:
            raise ValueError(f"duplicate node name {node.name!r}")
        self.nodes[node.name] = node
        return node

    def add_instance(self, inst: Instance) -> Instance:
        if inst.name in self.instances:
            raise ValueError(f"duplicate instance name {inst.name!r}")
        self.instances[inst.name] = inst
        return inst

    # ------------------------------------------------------------ topology
    def nx_graph(self) -> nx.DiGraph:
        g = nx.DiGraph()
        for node in self.nodes.values():
            g.add_node(node.name)
            for ref in node.refs():
                g.add_edge(ref.node, node.name)
        return g

    def find_cycle(self) -> list[str] | None:
        edges = cycle_edges(self.nx_graph())
        return [u for u, _ in edges] + [edges[0][0]] if edges else None

    def toposort(self) -> list[str]:
        """Nodes in dependency order, ties broken by spec order (stable dumps)."""
        order = {name: i for i, name in enumerate(self.nodes)}
        return list(nx.lexicographical_topological_sort(self.nx_graph(), key=order.__getitem__))

    def ancestors(self, name: str) -> set[str]:
        return nx.ancestors(self.nx_graph(), name)

    def upstream(self, names) -> set[str]:
        """`names` and every node they depend on (what computing them takes)."""
        g = self.nx_graph()
        out = set(names)
        for name in names:
            out |= nx.ancestors(g, name)
        return out

    def users(self) -> dict[str, list[str]]:
        users: dict[str, list[str]] = {name: [] for name in self.nodes}
        for node in self.nodes.values():
            for ref in node.refs():
                users.setdefault(ref.node, []).append(node.name)
        return users

    def type_of(self, ref: Ref) -> TensorType | None:
        node = self.nodes.get(ref.node)
        return node.types.get(ref.port) if node else None

    def lint(self) -> list[str]:
        """Structural invariants every pass must keep; returns the problems found."""
        problems = []
        seen: set[str] = set()
        ordered = True  # every node after its inputs: then there is no cycle to look for
        for node in self.nodes.values():
            for ref in node.refs():
                if ref.node not in self.nodes:
                    problems.append(f"{node.name}: input {ref} is not a node")
                ordered = ordered and ref.node in seen
            seen.add(node.name)
            if node.op == "call" and node.target not in self.instances:
                problems.append(f"{node.name}: calls unknown instance {node.target!r}")
        for name, ref in self.outputs.items():
            if ref.node not in self.nodes:
                problems.append(f"output {name}: {ref} is not a node")
        for name, ref in self.values.items():
            if ref.node not in self.nodes:
                problems.append(f"value {name}: {ref} is not a node")
        for inst in self.instances.values():
            if inst.shared and inst.shared not in self.instances:
                problems.append(f"{inst.name}: shared with unknown instance {inst.shared!r}")
        for decl in self.decls.values():
            if decl.shared and decl.shared not in self.decls:
                problems.append(f"{decl.name}: shared with unknown layer {decl.shared!r}")
        for call in self.block_calls():
            refs = [r for _, r in call.inputs] + call.outputs
            missing = [str(r) for r in refs if r.node not in self.nodes] + \
                [f"%{n}" for e in call.expansions for n in e.nodes if n not in self.nodes]
            if missing:
                problems.append(f"call {call.decl}: {missing[0]} is not a node")
        cycle = None if ordered else self.find_cycle()
        if cycle:
            problems.append(f"cycle: {' -> '.join(cycle)}")
        return problems

    # ------------------------------------------------------------ text form
    def dump(self, *, spans: bool = True) -> str:
        """The stable one-line-per-entry text form used by golden tests and `--verbose`."""
        out = [f"model {self.name}"]
        for k, v in self.consts.items():
            out.append(f"  const {k} = {_fmt(v)}")
        for decl in self.decls.values():  # components show as their instances below
            if decl.block or decl.times:
                out.append(f"  {decl.text()}" + (_where(decl.span) if spans else ""))
        for inst in self.instances.values():
            if inst.anonymous and inst.role == "op":
                continue
            mods = []
            if inst.frozen:
                mods.append("frozen")
            if inst.lora:
                mods.append(f"lora(r={inst.lora.r}, alpha={_fmt(inst.lora.alpha)}, "
                            f"targets={_fmt(inst.lora.targets)}" +
                            (f", modalities={_fmt(inst.lora.modalities)})"
                             if inst.lora.modalities else ")"))
            if inst.shared:
                mods.append(f"shared({inst.shared})")
            if inst.ema_of:
                mods.append(f"ema_of({inst.ema_of}, decay={_fmt(inst.ema_decay)})")
            mod = (" " + " ".join(mods)) if mods else ""
            out.append(f"  {inst.role} {inst.name} = {inst.component}({inst.params_text()}){mod}")
        starts = self.call_starts()
        for node in self.nodes.values():
            for call in starts.get(node.name, ()):
                out.append(f"  {call.text()}" + (_where(call.span) if spans else ""))
            out.append("  " + self.node_line(node, spans=spans))
        for name, ref in self.outputs.items():
            out.append(f"  output {name} = {ref}")
        for term in self.losses.values():
            out.append(f"  loss {term.name} = {_fmt(term.weight)} * {term.value}")
        if self.train:
            settings = ", ".join(f"{k}={_fmt(v)}" for k, v in self.train.settings.items()
                                 if v is not None)
            out.append(f"  train {{{settings}}}")
            for st in self.train.stages:
                settings = ", ".join(f"{k}={_fmt(v)}" for k, v in st.settings.items()
                                     if k != "trainable")
                out.append(f"    stage {st.name} trainable=[{', '.join(st.trainable)}] "
                           f"{{{settings}}}")
        if self.export:
            settings = ", ".join(f"{k}={_fmt(v)}" for k, v in self.export.settings.items())
            out.append(f"  export {{{settings}}}")
            for d in self.export.dims.values():
                out.append(f"    dim {d.name} = {d.min}..{d.max} @ {d.opt}")
            for p in self.export.parts:
                out.append(f"    part {p.name}: {', '.join(p.inputs)} -> {', '.join(p.outputs)}"
                           f"  [{len(p.nodes)} nodes]")
        return "\n".join(out) + "\n"

    def node_line(self, node: Node, *, spans: bool = True) -> str:
        types = node.types
        head = f"%{node.name} : {types.get('out', '?')}"
        extra = [f".{p}: {t}" for p, t in types.items() if p != "out"]
        if extra:
            head += " {" + ", ".join(extra) + "}"
        args = ", ".join(str(r) if port.startswith("_") or node.op != "call" else
                         f"{port}={r}" for port, r in node.inputs)
        if node.op == "input":
            rhs = f"input {node.target}"
        elif node.op == "call":
            rhs = f"call {node.target}({args})"
        else:
            attrs = "".join(f", {k}={_fmt(v)}" for k, v in node.attrs.items())
            rhs = f"{node.op}({args}{attrs})"
        return f"{head} = {rhs}{_where(node.span) if spans else ''}"

    def call_starts(self) -> dict[str, list[BlockCall]]:
        """Each block or repeat call under the first of its nodes, outer calls first: where
        the dump prints the call's line."""
        starts: dict[str, list[BlockCall]] = {}
        position = {name: i for i, name in enumerate(self.nodes)}
        for call in self.block_calls():
            inside = [n for e in call.expansions for n in e.nodes if n in position]
            if inside:
                starts.setdefault(min(inside, key=position.__getitem__), []).append(call)
        return starts

    def block_calls(self) -> Iterator[BlockCall]:
        """Every block and repeat call, those inside a copy after the call that made it."""
        def walk(calls: list[BlockCall]) -> Iterator[BlockCall]:
            for call in calls:
                yield call
                for e in call.expansions:
                    yield from walk(e.calls)
        return walk(self.calls)


def _where(span: Span) -> str:
    return f"  # {span.path.rsplit('/', 1)[-1]}:{span.line}"


def _fmt(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, float):
        return repr(v)
    return str(v)
