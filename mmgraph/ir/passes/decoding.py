"""Pass `decoding`: can the model generate text one token at a time, and how (`DecodePlan`).

Generation runs the model one new token at a time. That is possible when the logits output
depends on one Tokens input only through layers that treat positions one by one (`pointwise`:
linear maps, norms, embeddings, heads, cross-attention to values that do not depend on the
tokens) or attend only backwards (`causal`: self-attention that keeps past keys and values in a
KV cache). Everything the logits need that does not depend on the tokens (the visual part of a
VLM) is the request's *context*: computed once, read by every step.

Each component says how it treats positions (`Component.sequence_rule`, `context_ports`), so
this pass needs no list of names. A model that cannot generate gets no plan but a
`DecodeProblem` naming the layer and why; `generate` and `export` report it when asked to
generate, and checking or training the model is unaffected.
"""

from __future__ import annotations

import networkx as nx

from mmgraph.components import registry
from mmgraph.ir.graph import DecodePlan, DecodeProblem, Graph, Node, Ref
from mmgraph.ir.passes.base import Compilation
from mmgraph.lang.span import Span


def run(c: Compilation) -> None:
    g = c.graph
    g.decoding, g.decoding_problem = None, None
    found = plan(g)
    if isinstance(found, DecodePlan):
        g.decoding = found
    else:
        g.decoding_problem = found


def plan(g: Graph) -> DecodePlan | DecodeProblem:
    choice = _logits_and_tokens(g)
    if isinstance(choice, DecodeProblem):
        return choice
    logits, tokens = choice
    needed = g.upstream({g.outputs[logits].node})
    dynamic = ({tokens} | nx.descendants(g.nx_graph(), tokens)) & needed
    joins: list[tuple[str, int]] = []
    slices: list[tuple[str, int]] = []
    for name in g.nodes:  # graph order: the first problem in the spec is reported
        if name in dynamic and name != tokens:
            problem = _step_problem(g, g.nodes[name], dynamic, tokens, joins, slices)
            if problem is not None:
                return problem
    source = {n.name: n.inputs[0][1] for n in g.nodes.values() if n.op == "bind"}

    def through_binds(ref: Ref) -> Ref:
        while ref.node in source:
            ref = source[ref.node]
        return ref

    frontier: list[Ref] = []
    for name in g.nodes:
        if name in dynamic:
            for ref in g.nodes[name].refs():
                ref = through_binds(ref)
                if ref.node not in dynamic and ref not in frontier:
                    frontier.append(ref)
    context = g.upstream({r.node for r in frontier})
    limits = [getattr(g.instances[g.nodes[n].target].params, "max_len", None)
              for n in dynamic if g.nodes[n].op == "call"]
    return DecodePlan(
        tokens=tokens, logits=logits, vocab=int(g.type_of(g.outputs[logits]).dims[-1]),
        context_inputs=tuple(n for n in g.inputs if n in context),
        frontier=tuple((r.node, r.port) for r in frontier),
        context_nodes=tuple(n for n in g.nodes if n in context),
        step_nodes=tuple(n for n in g.nodes if n in dynamic),
        max_len=min((m for m in limits if isinstance(m, int)), default=None),
        joins=tuple(joins), slices=tuple(slices))


def _lead(g: Graph, ref: Ref, tokens: str) -> int | None:
    """How many positions of `ref` come before the tokens' (its length minus T), or None
    when that is not a fixed number."""
    length = g.type_of(ref).dims[1]
    lead = length - g.nodes[tokens].type.dims[1]
    return int(lead) if lead.is_Integer and int(lead) >= 0 else None


def _logits_and_tokens(g: Graph) -> tuple[str, str] | DecodeProblem:
    """The first output of kind Logits[B, N, V] whose positions N grow with a Tokens input."""
    for out, ref in g.outputs.items():
        t = g.type_of(ref)
        if t is None or t.kind != "Logits" or len(t.dims) != 3 or not t.dims[-1].is_Integer:
            continue
        ancestors = g.ancestors(ref.node) | {ref.node}
        for name in g.inputs:
            it = g.nodes[name].type
            if name in ancestors and it.kind == "Tokens" and len(it.dims) == 2 and \
                    it.dims[1].free_symbols & t.dims[1].free_symbols:
                return out, name
    return DecodeProblem(f"model {g.name} has no output Logits[B, N, V] whose positions N grow "
                         "with a Tokens input, so there is no text to generate", g.span)


def _step_problem(g: Graph, node: Node, dynamic: set[str], tokens: str,
                  joins: list[tuple[str, int]],
                  slices: list[tuple[str, int]]) -> DecodeProblem | None:
    """Why `node` cannot run one token at a time, or None. A join it can step through is
    added to `joins` (with its first tokens-dependent input), a slice to `slices` (with the
    positions before the tokens'), so the plan needs no second walk."""
    span: Span = node.span
    if node.op in ("input", "bind"):
        return None
    if node.op in ("add", "sub", "mul", "div"):
        for _, ref in node.inputs:
            t = g.type_of(ref)
            per_position = t is not None and (t.kind == "Seq" or
                                               (t.kind == "Tensor" and len(t.dims) >= 2))
            if ref.node not in dynamic and per_position:
                return DecodeProblem(
                    f"this {node.op} combines the generated tokens' sequence with a sequence "
                    f"that does not depend on {tokens} position by position, which a "
                    "one-token step cannot reproduce", span)
        return None
    if node.op == "select":
        return DecodeProblem(
            f"this select picks one position of a value computed from {tokens}; a "
            "one-token generation step sees only the newest position", span)
    if node.op == "slice":
        lead = _lead(g, node.inputs[0][1], tokens)
        if lead is None:
            return DecodeProblem(
                f"this slice cuts a value whose length is not a fixed number of positions "
                f"plus those of {tokens}, so a generation step cannot tell which positions "
                "it holds", span)
        slices.append((node.name, lead))
        return None
    if node.op != "call":
        return DecodeProblem(f"generation cannot step through a '{node.op}' node", span)
    inst = g.instances[node.target]
    comp = registry.get(inst.component)
    layer = f"layer '{inst.name}' ({inst.component})"
    rule = comp.sequence_rule(inst.params)
    if rule == "joins":
        ports = [ref.node in dynamic for _, ref in node.inputs]
        if True in ports and False in ports[ports.index(True):]:
            return DecodeProblem(
                f"{layer} puts a value that does not depend on {tokens} after the tokens' "
                "positions; generation can only join such values before them (a prefix)",
                span)
        joins.append((node.name, ports.index(True)))
        return None
    if rule == "mixing":
        if getattr(inst.params, "causal", None) is False:
            why = "has causal=false: each position attends to later ones too"
        elif getattr(inst.params, "prefix", 0):
            why = f"has prefix={inst.params.prefix}: its first positions attend to later ones"
        else:
            why = comp.sequence_why
        return DecodeProblem(
            f"{layer} {why}, so the logits of a token would depend on tokens not generated "
            f"yet: model {g.name} cannot generate one token at a time", span)
    if rule == "causal" and any(port == "positions" for port, _ in node.inputs):
        return DecodeProblem(
            f"{layer} takes explicit positions, which a KV-cached generation step cannot "
            "take yet (it counts positions itself)", span)
    for port, ref in node.inputs:
        if port in comp.context_ports and ref.node in dynamic:
            return DecodeProblem(
                f"{layer} reads '{port}' from a value that depends on {tokens}; generation "
                f"needs its '{port}' computed once per request, before the first token", span)
    return None
