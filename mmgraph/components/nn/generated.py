"""The base class of generated models: maps a runtime error back to the spec line.

Every line of a generated `forward`/`losses` ends with `# <type>  <spec file>:<line>`. When
an exception escapes the model, the innermost frame that ran generated code tells which
line it was, and the exception gets a note naming the spec's file, line and source text.
The exception itself (type, message, traceback) is left as it was.
"""

from __future__ import annotations

import linecache
import re
import traceback

import torch
from torch import nn

_MARK = re.compile(r"#.*?(\S+\.mmg):(\d+)\s*$")


class GeneratedModel(nn.Module):
    spec: str = ""
    inputs: dict[str, str] = {}
    outputs: dict[str, str] = {}
    loss_weights: dict[str, float] = {}

    def __call__(self, *args, **kwargs):
        if torch.compiler.is_compiling():
            return super().__call__(*args, **kwargs)
        try:
            return super().__call__(*args, **kwargs)
        except Exception as exc:
            _note_spec_line(exc, type(self).__module__)
            raise

    @classmethod
    def forward_inputs(cls) -> list[str]:
        """The inputs `forward` takes (a loss's targets are only `losses`' inputs)."""
        code = cls.forward.__code__
        return list(code.co_varnames[1:code.co_argcount])

    def losses(self, **inputs):  # generated models with losses override this
        raise NotImplementedError(f"{type(self).__name__} declares no loss")


def _note_spec_line(exc: BaseException, module: str) -> None:
    if getattr(exc, "_mmgraph_noted", False):
        return
    spec_line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        text = linecache.getline(frame.filename, frame.lineno)
        match = _MARK.search(text)
        if match and frame.filename.startswith(("<mmgraph", "/")):
            spec_line = (match.group(1), int(match.group(2)), text.strip())
    if spec_line is None:
        return
    path, line, code = spec_line
    exc.add_note(f"mmgraph: raised while computing the value of {path}:{line} "
                 f"(generated code: {code.split('  #')[0]})")
    exc._mmgraph_noted = True


class ExportPart(nn.Module):
    """Base of generated export parts: the model's top-level layers, borrowed (not copied),
    so a part computes with exactly the weights the model has."""

    def __init__(self, model: nn.Module):
        super().__init__()
        for name, child in model.named_children():
            self.add_module(name, child)
