"""mmgraph: write a multimodal model as a typed graph, check it, compile it, train and export it.

The language layers (`mmgraph.lang`, `mmgraph.ir`, `mmgraph.components`) are pure Python and
import no torch, so checking a spec is fast enough for an editor.
"""

from mmgraph.compiler import CheckResult, build_graph, check_file, check_text
from mmgraph.lang.diagnostics import Diagnostic, SpecError
from mmgraph.version import __version__


def load(spec, model: str | None = None, **overrides):
    """The spec's model as a ready-to-train torch.nn.Module (imports torch).

    Keyword arguments override the spec's constants: `load("specs/llava.mmg", width=64)`.
    """
    from mmgraph.build import load as _load

    return _load(spec, model=model, **overrides)


__all__ = ["CheckResult", "Diagnostic", "SpecError", "__version__", "build_graph", "check_file",
           "check_text", "load"]
