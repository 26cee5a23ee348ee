"""Per-modality LoRA (Arcana): `lora(..., modalities=["image"])` adapts only the tokens of the
named modalities. The tokens' modalities come from the layer's input type: a sequence built
by `concat` knows its layout (its `segments`), and a value of one modality is that modality
throughout. Checked once the types are known (after each call's type rule)."""

from __future__ import annotations

from mmgraph.ir import types as T
from mmgraph.ir.graph import Graph, Node
from mmgraph.lang.diagnostics import error


def layout(t: T.TensorType) -> tuple[tuple[str, int | None], ...] | None:
    """(modality, length) of each run of tokens of `t`, in order (a length the spec leaves
    free is None); None when `t` does not say which token is which."""
    if t.segments is not None:
        return tuple((tag, int(n) if n.is_Integer else None) for tag, n in t.segments)
    if len(t.tags) == 1:
        (tag,) = t.tags
        return ((tag, None),)
    return None


def describe(runs) -> str:
    """`image 4, then text (the rest)`: a layout as the diagnostics say it."""
    if runs is None:
        return "of unknown modalities"
    return ", then ".join(f"{tag} {n}" if n is not None else f"{tag} (the rest)"
                          for tag, n in runs)


def module_of(g: Graph, name: str) -> str:
    """The instance whose module a layer runs: itself, or the one its `shared(x)` (its own,
    or its block's) ties it to, whose adapters it then runs too."""
    seen = {name}
    while g.instances[name].shared and g.instances[name].shared in g.instances and \
            g.instances[name].shared not in seen:
        name = g.instances[name].shared
        seen.add(name)
    return name


def check(g: Graph, node: Node) -> None:
    """The layer's input must say which tokens are which, and hold a modality it adapts."""
    if node.op != "call" or not node.inputs:
        return
    inst = g.instances[node.target]
    module = module_of(g, node.target)
    lora = inst.lora or g.instances[module].lora
    if lora is None or not lora.modalities:
        return
    port, ref = node.inputs[0]
    t = g.type_of(ref)
    runs = layout(t)
    span = lora.modalities_span or node.span
    if runs is None:
        raise error("E206", f"lora modalities={list(lora.modalities)} on '{inst.name}': its "
                            f"input {port} is {t}, whose tokens' modalities are not known",
                    span, hint="give it a sequence built by concat(...), which records which "
                               "tokens are which")
    if "ctx" in dict(node.inputs) and {"k", "v", "all"} & set(lora.targets):
        raise error("E206", f"lora modalities={list(lora.modalities)} on '{inst.name}': its "
                            "k and v projections also read the cross-attention context, whose "
                            "tokens are not laid out as its own", span,
                    hint='adapt the other projections: targets=["q", "o"] (or the '
                         "feed-forward's)")
    for other in g.nodes.values():  # the adapters are built for one layout: the first call's
        if other is not node and other.op == "call" and other.types and other.inputs and \
                module_of(g, other.target) == module:
            first = layout(g.type_of(other.inputs[0][1]))
            if first != runs:
                raise error("E206", f"lora modalities={list(lora.modalities)} on "
                                    f"'{inst.name}': its tokens are {describe(runs)} here but "
                                    f"{describe(first)} at an earlier call", node.span,
                            hint="the adapters follow one layout: declare one layer per "
                                 "layout")
    if not {tag for tag, _ in runs} & set(lora.modalities):
        raise error("E206", f"lora modalities={list(lora.modalities)} on '{inst.name}': its "
                            f"input {port} is {t}, which has no such tokens, so the adapters "
                            "would never act", span,
                    hint=f"its tokens are: {', '.join(tag for tag, _ in runs)}")
