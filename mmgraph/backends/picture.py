"""Pictures of a checked graph: Graphviz DOT and Mermaid text, SVG/PNG through Graphviz.

Each box shows a value's layer, its component, its output type and whether it trains;
colours tell the role. Blocks and repeats are collapsed to one box per declared layer
(`lm: repeat x32`) unless `expand=True`, so a 7B model still fits on a screen.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from mmgraph.components import registry
from mmgraph.ir.graph import Graph

ROLE_COLOURS = {
    "input": "#e8e8e8", "encoder": "#9ecae1", "connector": "#fdd0a2", "fusion": "#cbc9e2",
    "decoder": "#a1d99b", "head": "#fcbba1", "layer": "#d9d9d9", "op": "#ffffff",
    "loss": "#fff7bc", "output": "#f0f0f0",
}


@dataclass
class Box:
    id: str
    title: str
    component: str
    type: str
    role: str
    trainable: str  # "trainable" | "frozen" | "lora" | "" (no weights)


def _group(name: str, expand: bool) -> str:
    return name if expand or "." not in name else name.split(".")[0]


def boxes(g: Graph, expand: bool = False) -> tuple[list[Box], list[tuple[str, str, str]]]:
    """The boxes and labelled edges of the picture."""
    out: dict[str, Box] = {}
    members: dict[str, list[str]] = {}
    for node in g.nodes.values():
        gid = _group(node.name, expand)
        members.setdefault(gid, []).append(node.name)
    for gid, names in members.items():
        last = g.nodes[names[-1]]
        typ = str(last.type) if last.type else "?"
        if len(names) > 1:
            insts = {g.nodes[n].target for n in names if g.nodes[n].op == "call"}
            reps = {i.split(".")[1] for i in insts if i.count(".") >= 1 and
                    i.split(".")[1].isdigit()}
            comp = f"repeat x{len(reps)}" if reps else "block"
            frozen = [g.instances[i].frozen for i in insts if g.instances[i].role != "op"]
            role = _top_role(g, gid)
            state = "" if not frozen else ("frozen" if all(frozen) else
                                          "partly frozen" if any(frozen) else "trainable")
            out[gid] = Box(gid, gid, comp, typ, role, state)
            continue
        node = last
        if node.op == "input":
            out[gid] = Box(gid, node.name, "input", typ, "input", "")
        elif node.op == "call":
            inst = g.instances[node.target]
            state = "" if not registry.get(inst.component).has_weights else \
                "lora" if inst.lora else "frozen" if inst.frozen else "trainable"
            title = node.name if node.name == inst.name else f"{node.name} = {inst.name}"
            out[gid] = Box(gid, title, inst.component, typ, inst.role, state)
        else:
            out[gid] = Box(gid, node.name, node.op, typ, "op", "")
    edges = []
    seen = set()
    for node in g.nodes.values():
        dst = _group(node.name, expand)
        for ref in node.refs():
            src = _group(ref.node, expand)
            if src != dst and (src, dst) not in seen:
                seen.add((src, dst))
                edges.append((src, dst, "" if ref.port == "out" else ref.port))
    for name, ref in g.outputs.items():
        oid = f"output:{name}"
        out[oid] = Box(oid, f"output {name}", "", str(g.type_of(ref)), "output", "")
        edges.append((_group(ref.node, expand), oid, ""))
    for term in g.losses.values():
        lid = _group(term.value.node, expand)
        out[lid].role = "loss"
        if term.weight != 1.0:
            out[lid].title += f" (x{term.weight:g})"
    return list(out.values()), edges


def _top_role(g: Graph, gid: str) -> str:
    """The role a block or repeat was declared with (`decoder lm: repeat(...)`)."""
    if gid in g.decls:
        return g.decls[gid].role
    return g.instances[gid].role if gid in g.instances else "layer"


def _dot_id(s: str) -> str:
    return '"' + s.replace('"', '\\"') + '"'


def _html(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_dot(g: Graph, expand: bool = False) -> str:
    bs, edges = boxes(g, expand)
    lines = [f"digraph {_dot_id(g.name)} {{", "  rankdir=TB;",
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=9];']
    for b in bs:
        rows = [f"<b>{_html(b.title)}</b>"]
        if b.component:
            rows.append(_html(f"{b.role}: {b.component}" if b.role not in ("op", "input")
                              else b.component))
        rows.append(f"<i>{_html(b.type)}</i>")
        if b.trainable:
            rows.append(_html(b.trainable))
        colour = ROLE_COLOURS.get(b.role, "#ffffff")
        border = ', color="#3182bd", penwidth=2' if b.trainable == "lora" else \
            ', style="rounded,filled,dashed"' if b.trainable == "frozen" else ""
        lines.append(f'  {_dot_id(b.id)} [label=<{"<br/>".join(rows)}>, '
                     f'fillcolor="{colour}"{border}];')
    for src, dst, label in edges:
        attr = f" [label={_dot_id(label)}]" if label else ""
        lines.append(f"  {_dot_id(src)} -> {_dot_id(dst)}{attr};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _mmd_id(s: str) -> str:
    return "n_" + "".join(c if c.isalnum() else "_" for c in s)


def _mmd_text(s: str) -> str:
    return s.replace('"', "'").replace("<", "‹").replace(">", "›")


def to_mermaid(g: Graph, expand: bool = False) -> str:
    bs, edges = boxes(g, expand)
    lines = ["flowchart TD"]
    for b in bs:
        parts = [f"<b>{_mmd_text(b.title)}</b>"]
        if b.component:
            parts.append(_mmd_text(b.component))
        parts.append(f"<i>{_mmd_text(b.type)}</i>")
        if b.trainable:
            parts.append(b.trainable)
        lines.append(f'  {_mmd_id(b.id)}["{"<br/>".join(parts)}"]:::{b.role.replace(" ", "_")}')
    for src, dst, label in edges:
        arrow = f"-->|{_mmd_text(label)}|" if label else "-->"
        lines.append(f"  {_mmd_id(src)} {arrow} {_mmd_id(dst)}")
    for role, colour in ROLE_COLOURS.items():
        lines.append(f"  classDef {role} fill:{colour},stroke:#555")
    return "\n".join(lines) + "\n"


class GraphvizMissing(RuntimeError):
    pass


def render(g: Graph, out: str | Path, expand: bool = False) -> Path:
    """Write the picture; the suffix picks the format (.dot .mmd .svg .png)."""
    out = Path(out)
    suffix = out.suffix.lower()
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".dot":
        out.write_text(to_dot(g, expand))
    elif suffix in (".mmd", ".mermaid"):
        out.write_text(to_mermaid(g, expand))
    elif suffix in (".svg", ".png"):
        dot = shutil.which("dot")
        if dot is None:
            raise GraphvizMissing(
                f"cannot write {out}: Graphviz's `dot` program is not installed. Install it "
                "(Debian/Ubuntu: apt-get install graphviz; macOS: brew install graphviz), or "
                "write .dot or .mmd, which need nothing")
        subprocess.run([dot, f"-T{suffix[1:]}", "-o", str(out)], input=to_dot(g, expand),
                       text=True, check=True, capture_output=True)
    else:
        raise ValueError(f"unknown picture format {suffix!r}: use .svg, .png, .dot or .mmd")
    return out
