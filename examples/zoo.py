"""The main job on the embedded default: check every spec of the model zoo and draw it.

Run with `make demo` (or `python examples/zoo.py [OUT_DIR]`). For each spec in specs/ it
prints the check result and the inferred output types, and writes the graph as Mermaid and
DOT text (and SVG when Graphviz is installed) under build/zoo/. Nothing is downloaded.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from mmgraph.backends.picture import render
from mmgraph.compiler import check_file
from mmgraph.components import registry
from mmgraph.lang.diagnostics import render_all

ROOT = Path(__file__).resolve().parents[1]


def main(out_dir: Path) -> int:
    specs = sorted((ROOT / "specs").glob("*.mmg"))
    formats = [".mmd", ".dot"] + ([".svg"] if shutil.which("dot") else [])
    failures = 0
    print(f"checking {len(specs)} specs; pictures go to {out_dir} ({', '.join(formats)})")
    if ".svg" not in formats:
        print("  (Graphviz's `dot` is not installed, so no SVG; .dot and .mmd need nothing)")
    for spec in specs:
        start = time.perf_counter()
        result = check_file(spec)
        ms = (time.perf_counter() - start) * 1000
        if not result.ok:
            failures += 1
            print(render_all(result.diagnostics), file=sys.stderr)
            continue
        for name, g in result.graphs.items():
            layers = sum(1 for i in g.instances.values()
                         if registry.get(i.component).has_weights)
            print(f"\n{spec.relative_to(ROOT)}: ok in {ms:.0f} ms — model {name}: "
                  f"{len(g.nodes)} values, {layers} layers with weights, losses: "
                  f"{', '.join(g.losses) or 'none'}")
            for out, ref in g.outputs.items():
                print(f"  output {out:14} {g.type_of(ref)}")
            for fmt in formats:
                render(g, out_dir / f"{name}{fmt}")
    print(f"\n{len(specs) - failures} of {len(specs)} specs check clean")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "build" / "zoo"))
