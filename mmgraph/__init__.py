"""mmgraph: write a multimodal model as a typed graph, check it, compile it, train and export it.

The language layers (`mmgraph.lang`, `mmgraph.ir`, `mmgraph.components`) are pure Python and
import no torch, so checking a spec is fast enough for an editor.
"""

from mmgraph.compiler import CheckResult, build_graph, check_file, check_text
from mmgraph.lang.diagnostics import Diagnostic, SpecError

__all__ = ["CheckResult", "Diagnostic", "SpecError", "build_graph", "check_file", "check_text"]
